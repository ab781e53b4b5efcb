//! The update script's decisions (SPEC §3): from one poll's facts to the answer, the device's
//! new state and what happens to the server's files. Nothing here touches the file system,
//! takes a lock or reads a clock: the time is the request's, and what a step needs to look up
//! (snippet files, certificate files, the master's box info, the dynamic snippet program) comes
//! through [`Lookups`], asked only when the poll reaches that step, so a poll that stops in its
//! grace period never contacts the master. `super::run` gathers, calls [`decide`] and applies.

use compact_str::ToCompactString;
use super::firmware::{self, BuildChoice, FileType};
use crate::upgrades::BuildHop;
use super::output::Script;
use super::rewrite::{self, ArgValue, PollingSwitch, StateArgs};
use super::{snippets, Call};
use crate::certs::{self, CertificatePlan, RequestFile};
use crate::config::{Applies, Config, Master};
use crate::state;
use crate::xml::Element;

/// What the decisions look up, on demand.
pub trait Lookups {
    /// The candidate snippet files (`names`, in order) that exist in `dir`.
    fn snippet_files(&mut self, dir: &str, names: &[String]) -> Vec<SnippetFile>;
    /// What the server holds for the device's certificate request.
    fn certificate_files(&mut self, customcerts: &Element, serial: &str) -> certs::ServerFiles;
    /// The reverse DNS name of an address (the `{rdns}` CSR word).
    fn reverse_dns(&mut self, ip: &str) -> Option<String>;
    /// The master's firmware and boot code builds (box info, cache) and where they came from.
    fn master_builds(&mut self, master: &Master) -> Result<((String, String), crate::master::Source), String>;
    /// The dynamic snippet program's lines for this poll (SPEC §7).
    fn dynamic_lines(
        &mut self,
        exec: &str,
        state_xml: &str,
        environment: &[(String, String)],
        timeout: std::time::Duration,
    ) -> Result<crate::dynamic::Lines, String>;
    /// The CHECK signature of `pre`, the files and `post` ([`snippets::check_signature`]); a
    /// long-running server remembers it per snippet set instead of hashing on every poll.
    fn check_signature(&mut self, pre: &[String], files: &[SnippetFile], post: &[String]) -> String {
        snippets::check_signature(pre, files.iter().map(|f| f.content.as_slice()), post)
    }
}

/// How the poll ends for the device's state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Save the state as changed, its log extended by the answer's notes; expired state files
    /// of other devices are retired.
    Save,
    /// Leave the state file exactly as it was (missing arguments, a forcetrust refusal).
    Untouched,
    /// A fatal error: `# <message> - exit`, nothing saved.
    Bailout(String),
}

/// A change to the server's certificate files of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    Remove(RequestFile),
    /// Write the CSR's PEM from its DER.
    WritePemFromDer,
}

/// Everything one poll decided besides the answer text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub ending: Ending,
    /// Done even when the poll bails out later (the old server had done them by then).
    pub file_actions: Vec<FileAction>,
    /// A line for the server log.
    pub log: Option<String>,
}

/// The standard arguments every poll must carry.
pub const REQUIRED: [&str; 4] = ["type", "sn", "hwid", "ip"];

/// Whether the request lacks a standard argument (then no state is read or written).
pub fn lacks_arguments(call: &Call) -> bool {
    REQUIRED.iter().any(|name| call.arg(name).is_none())
}

/// Decides one poll: appends the answer to `script` and changes `state` (the device's state
/// as read; a fresh `<state/>` for a new device, or when the request lacks arguments).
pub fn decide(config: &Config, call: &Call, state: &mut Element, lookups: &mut dyn Lookups, script: &mut Script) -> Decision {
    let mut poll = Poll {
        config,
        call,
        lookups,
        script,
        state,
        state_args: StateArgs::from_request(call.arg("polling"), call.arg("phase")),
        current_phase: String::new(),
        following_phase: String::new(),
        rewrote: false,
        file_actions: Vec::new(),
        log: None,
    };
    let result = if lacks_arguments(call) { poll.missing_arguments() } else { poll.execute() };
    let ending = result.unwrap_or_else(|Bailout(message)| Ending::Bailout(message));
    Decision { ending, file_actions: poll.file_actions, log: poll.log }
}

/// A fatal error inside the steps.
struct Bailout(String);

struct Poll<'a> {
    config: &'a Config,
    call: &'a Call,
    lookups: &'a mut dyn Lookups,
    script: &'a mut Script,
    state: &'a mut Element,
    state_args: StateArgs,
    /// The phase of this poll and the one after it, recorded on the state's root element
    /// whenever the device's URL is rewritten.
    current_phase: String,
    following_phase: String,
    rewrote: bool,
    file_actions: Vec<FileAction>,
    log: Option<String>,
}

impl Poll<'_> {
    /// Step 2: a device that does not send the standard arguments gets a URL that does.
    fn missing_arguments(&mut self) -> Result<Ending, Bailout> {
        let config = self.config;
        let call = self.call;
        self.script.comment("");
        let missing: Vec<&str> = REQUIRED.iter().copied().filter(|name| call.arg(name).is_none()).collect();
        self.script.note(format!("missing arguments: {}", missing.join(", ")));
        // the state args the request lacks are given their first values; when it carries
        // both, nothing of its state changes and its own arguments keep their order
        if call.arg("phase").is_none() {
            self.state_args.set_phase(ArgValue::Text(config.phases[0].id.clone()));
        }
        if call.arg("polling").is_none() {
            self.state_args.set_polling(self.fast_polling());
        }
        // the old server compared polling with the request's only after this point: here any
        // changed state sends the polling commands
        self.rewrite_url(&missing, None, false);
        Ok(Ending::Untouched)
    }

    /// Steps 3 to 20 for a device that sent every standard argument.
    fn execute(&mut self) -> Result<Ending, Bailout> {
        let config = self.config;
        let call = self.call;
        self.script.comment("");
        let serial = call.arg("sn").unwrap_or_default();
        let device_type = call.arg("type").unwrap_or_default();
        let hwid = call.arg("hwid").unwrap_or_default();

        let now = call.now;
        {
            let doc = &mut *self.state;
            doc.set_attr("seen", now.to_compact_string());
            state::mark_request(doc, now);
        }

        // step 3: classes
        let classes = device_classes(config, device_type);
        {
            let device = state::device(self.state);
            device.set_attr("sn", serial);
            device.set_attr("type", device_type);
            device.set_attr("classes", classes.join(", "));
            // step 4: address
            device.set_attr("ip", call.origin.ip.clone());
            device.set_attr("rp", if call.origin.reverse_proxied { "true" } else { "false" });
            device.set_attr("proxy", call.origin.proxy.clone());
        }

        // step 5: phase
        let requested_phase = call.arg("phase").filter(|p| !p.is_empty());
        let phase_index = match requested_phase {
            None => 0,
            Some(p) => match config.phases.iter().position(|phase| phase.id == p) {
                Some(i) => i,
                None => {
                    self.script.note(format!("invalid phase: '{p}'"));
                    return Ok(self.finish());
                }
            },
        };
        let phase = &config.phases[phase_index];
        let next_phase = config.phases.get(phase_index + 1);
        state::device(self.state).set_attr("phase", phase.id.clone());
        self.current_phase = phase.id.clone();
        self.following_phase = next_phase.map_or(String::new(), |p| p.id.clone());

        // step 6: environments
        let environments = match expand_environments(config, call.arg("env")) {
            Ok(list) => list,
            Err(unknown) => {
                self.script.note(format!(
                    "invalid environment: '{unknown}' ({})",
                    call.arg("env").unwrap_or_default()
                ));
                return Ok(self.finish());
            }
        };
        state::device(self.state).set_attr("environments", environments.join(", "));
        self.script.comment_pieces(&[
            "phase: ",
            &phase.id,
            ", nextphase: ",
            next_phase.map_or("", |p| p.id.as_str()),
            ", environment: ",
            &environments.join("+"),
            ", type: ",
            device_type,
            ", classes: ",
            &classes.join("+"),
        ]);
        self.script.blank();

        // step 7: a certificate step asked to skip the next poll's scripts
        if self.state.attr("skipnext").is_some() {
            self.state.remove_attr("skipnext");
            self.script.note("skipping this poll's scripts (certificate processing), queries only");
            // the device's URL stays as it is: the certificate step that set skipnext has put
            // it into fast polling already
            self.query_commands(&classes, &environments)?;
            return Ok(self.finish());
        }

        // step 8: snippet files
        let dir = &config.times.dir;
        let names = snippets::configured_candidates(config, "txt", &phase.files_of, &classes, serial, &environments);
        let files = self.lookups.snippet_files(dir, &names);
        self.script.comment_pieces(&["existing files (from ", dir, "):"]);
        let mut digits = itoa::Buffer::new();
        for file in &files {
            let (count, unit) = age_in_units(now - file.mtime);
            self.script.comment_pieces(&["> ", &file.display_name, ": ", digits.format(count), unit]);
        }
        self.script.blank();
        self.script.comment_pieces(&["possible further files (from ", dir, "):"]);
        for name in names.iter().filter(|n| !files.iter().any(|f| &f.name == *n)) {
            self.script.comment_pieces(&[dir, "/", name]);
        }
        self.script.blank();

        // step 9: backup
        let https_on_port = call.https_on(config.times.httpsport.as_deref());
        let force_https = config.times.forcehttps || config.times.forcetrust;
        match &config.backup {
            Some(backup) if force_https && !call.https => {
                self.script.comment_args(format_args!("backups via {} suppressed: forcehttps is on and this is plain HTTP", backup.scfg))
            }
            Some(backup) => self.script.command(["mod cmd UP0 scfg ", &call.absolute(&backup.scfg)].concat()),
            None => self.script.comment("Backups not enabled in config"),
        }
        self.script.blank();

        // step 10: grace period, so that a half-edited set of snippets never reaches a device
        if let Some(newest) = files.iter().max_by_key(|f| f.mtime) {
            let age = now - newest.mtime;
            self.script.comment_pieces(&["newest script (", &newest.display_name, ") ", itoa::Buffer::new().format(age), "s old"]);
            if age < config.times.grace {
                self.script.note(format!(
                    "files being updated ({} {age}s old, waiting for at least {}s to expire)",
                    newest.display_name, config.times.grace
                ));
                return Ok(self.finish());
            }
        }
        self.script.blank();

        // step 11: the certificate step is decided (and acts on the server's request files)
        // now, its commands go out at step 15; then the queries
        let certificate = self.certificate_plan(serial, device_type)?;
        self.file_actions.extend(certificate.remove.iter().map(|file| FileAction::Remove(*file)));
        if certificate.write_pem {
            self.file_actions.push(FileAction::WritePemFromDer);
        }
        {
            let device = state::device(self.state);
            if let Some(status) = certificate.status() {
                device.set_attr("certstat", status);
            }
            if certificate.reset_request_state {
                device.set_attr("requestDownloaded", "false");
            }
        }
        if certificate.skip_next {
            self.state.set_attr("skipnext", now.to_compact_string());
            self.script.notes.push("skipnext set".into());
        }
        self.query_commands(&classes, &environments)?;
        self.script.blank();

        // step 12: times
        if config.times.allow.is_some() || config.times.initial.is_some() {
            let mut parts = String::new();
            if let Some(allow) = &config.times.allow {
                if next_phase.is_some() && config.times.forcestaging {
                    self.script.comment("Skip restricted times, initial staging / forcestaging");
                } else {
                    parts.push_str(&format!(" /allow {allow}"));
                }
            }
            if let Some(initial) = &config.times.initial {
                parts.push_str(&format!(" /initial {initial}"));
            }
            // nothing left (an /allow held back while staging): no times command at all
            if !parts.is_empty() {
                self.script.comment("Restricted times");
                self.script.command(format!("mod cmd UP1 times {parts}"));
            }
        }

        // step 13 and 14: firmware and boot code
        let requested_update = self.firmware(device_type, &classes, &environments)?;
        {
            let doc = &mut *self.state;
            // a build the device did not report leaves the stored one as it was
            if let Some(build) = call.arg("PROT") {
                doc.child_or_insert("firmware").set_attr("build", build);
            }
            if let Some(build) = call.arg("BOOT") {
                doc.child_or_insert("bootcode").set_attr("build", build);
            }
            let device = state::device(doc);
            device.set_attr("hwid", hwid);
            device.set_attr("realip", call.arg("ip").unwrap_or_default());
        }
        if requested_update {
            self.script.comment("make sure remaining update scripts are executed with up-to-date firmware and update URL");
            self.script.command("iresetn");
        }

        // step 15: certificate commands take the whole poll
        for note in &certificate.notes {
            self.script.note(["certificates: ", note, " "].concat());
        }
        if let Some(commands) = &certificate.commands {
            for (comment, command) in commands {
                self.script.note(format!("certificates: {comment}"));
                self.script.command(command.clone());
            }
            self.state_args.set_polling(self.fast_polling());
            if !self.rewrite_if_needed(false) {
                self.script.commands(["config write", "config activate"]);
            }
            self.script.command("iresetn");
            self.script.note("certificate cmds need to process - no further cmds");
            return Ok(self.finish());
        }
        self.script.comment("no certificate cmds required - processing normal updates");

        // step 16: HTTPS and the device's TLS identity
        if force_https && !https_on_port {
            self.script.note("HTTPS required (forcehttps): moving the device to its HTTPS URL");
            self.state_args.set_polling(self.fast_polling());
            self.rewrite_if_needed(true);
            if config.times.forcetrust {
                return Ok(self.refuse_untrusted(serial, "plain HTTP, no client certificate"));
            }
            return Ok(self.finish());
        }
        if config.times.forcetrust {
            if let Err(refusal) = certs::check_identity(&call.tls, serial, hwid, config) {
                self.script.note(format!("forcetrust: {refusal} - nothing delivered"));
                return Ok(self.refuse_untrusted(serial, &refusal));
            }
            self.script.comment("forcetrust: client certificate identifies this device");
        }

        // step 17: phase advance
        match next_phase {
            Some(next) => {
                self.state_args.set_phase(ArgValue::Text(next.id.clone()));
                self.state_args.set_polling(self.fast_polling());
            }
            None => self.state_args.set_polling(ArgValue::Zero),
        }

        // step 18: dynamic snippets
        let dynamic = match self.dynamic_lines(&classes, &environments) {
            Ok(lines) => lines,
            Err(failure) => {
                self.script.note(format!("dynamic snippets failed: {failure} - nothing delivered"));
                return Ok(self.finish());
            }
        };
        let (pre, post) = (dynamic.pre, dynamic.post);
        let files: Vec<SnippetFile> = if dynamic.standard {
            files
        } else {
            self.script.comment("dynamic snippets: standard snippets not sent this time");
            Vec::new()
        };

        // step 19: CHECK, only once the device is in its last phase
        let signature = if next_phase.is_none() && config.times.check {
            let signature = self.lookups.check_signature(&pre, &files, &post);
            if call.arg("CHECK") == Some(signature.as_str()) {
                // the steady state of every provisioned device: a comment, not a log entry
                self.script.comment_pieces(&["CHECK ", &signature, " matches - scripts already executed, nothing to deliver"]);
                self.rewrite_if_needed(false);
                return Ok(self.finish());
            }
            Some(signature)
        } else {
            None
        };

        // step 20: delivery
        self.script.commands(&pre);
        for file in &files {
            self.script.blank();
            self.script.comment_pieces(&["    ", &file.display_name]);
            self.script.comment("{ ");
            self.script.comment_pieces(&["begin script '", &file.display_name, "' "]);
            self.script.raw_lines(&file.content);
            self.script.blank();
            self.script.comment_pieces(&["end script '", &file.display_name, "'"]);
            self.script.comment("}");
            let doc = &mut *self.state;
            let entry = match doc.children.iter().position(|c| c.name == "config" && c.attr("filename") == Some(&file.display_name)) {
                Some(i) => &mut doc.children[i],
                None => {
                    doc.children.push(Element::new("config"));
                    let last = doc.children.len() - 1;
                    doc.children[last].set_attr("filename", file.display_name.clone());
                    &mut doc.children[last]
                }
            };
            entry.set_attr("delivered", now.to_compact_string());
            entry.set_attr("version", file.mtime.to_compact_string());
        }
        self.script.commands(&post);
        self.script.blank();
        self.script.comment("end of all scripts ");
        self.script.blank();
        self.script.notes.push(format!("delivered {} script(s)", files.len()));
        if !self.rewrite_if_needed(false) {
            self.script.commands(["config write", "config activate"]);
        }
        if let Some(signature) = signature {
            self.script.comment("set CHECK var");
            self.script.command(["mod cmd UP1 check ser ", &signature].concat());
        }
        self.script.comment("trigger reset if required");
        self.script.command("iresetn");
        Ok(self.finish())
    }

    /// Ends a poll that forcetrust refused without touching the state: whoever sent it has not
    /// proven to be this device, so nothing it claims (type, address, log) may reach the
    /// device's row. The refusal goes to the server log instead (SPEC §1).
    fn refuse_untrusted(&mut self, serial: &str, refusal: &str) -> Ending {
        // `serial` was validated (device::validate) and made canonical before the script ran:
        // it is safe to log as it is
        self.log = Some(format!(
            "forcetrust refused a poll for sn={serial} from {}: {refusal} (state left unchanged)",
            self.call.origin.ip
        ));
        Ending::Untouched
    }

    /// The state is saved with the phase the device goes on with.
    fn finish(&mut self) -> Ending {
        if self.rewrote {
            self.state.set_attr("phase", self.current_phase.clone());
            self.state.set_attr("nextphase", self.following_phase.clone());
        }
        Ending::Save
    }

    /// Step 18: the operator's program for dynamic lines, when one is configured.
    fn dynamic_lines(&mut self, classes: &[String], environments: &[String]) -> Result<crate::dynamic::Lines, String> {
        let Some(dynamic) = &self.config.dynamic else {
            return Ok(crate::dynamic::Lines { standard: true, ..Default::default() });
        };
        let call = self.call;
        let mut environment: Vec<(String, String)> = vec![
            ("UPDATE_SN".into(), call.arg("sn").unwrap_or_default().into()),
            ("UPDATE_HWID".into(), call.arg("hwid").unwrap_or_default().into()),
            ("UPDATE_TYPE".into(), call.arg("type").unwrap_or_default().into()),
            ("UPDATE_IP".into(), call.arg("ip").unwrap_or_default().into()),
            ("UPDATE_REMOTE_ADDR".into(), call.origin.ip.clone()),
            ("UPDATE_PHASE".into(), self.current_phase.clone()),
            ("UPDATE_NEXTPHASE".into(), self.following_phase.clone()),
            ("UPDATE_CLASSES".into(), classes.join(",")),
            ("UPDATE_ENVIRONMENTS".into(), environments.join(",")),
            ("UPDATE_BASE_URL".into(), call.base_url.clone()),
            ("UPDATE_HTTPS".into(), if call.https { "on" } else { "off" }.into()),
        ];
        for (name, value) in &call.args {
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                environment.push((format!("UPDATE_ARG_{name}"), value.to_string()));
            }
        }
        let lines = self.lookups.dynamic_lines(
            &dynamic.exec,
            &state::render(self.state),
            &environment,
            std::time::Duration::from_secs(dynamic.timeout_secs),
        )?;
        self.script.comment_args(format_args!(
            "dynamic snippets ({}): {} pre-line(s), {} post-line(s)",
            dynamic.exec,
            lines.pre.len(),
            lines.post.len()
        ));
        Ok(lines)
    }

    /// Step 11's certificate decisions, with what the server holds for the device read here.
    fn certificate_plan(&mut self, serial: &str, device_type: &str) -> Result<CertificatePlan, Bailout> {
        let doc: &Element = self.state;
        let config = self.config;
        let customcerts = config.customcerts.as_ref().filter(|_| config.status.is_some());
        let device = doc.child("device");
        let stored = |name: &str| device.and_then(|d| d.attr(name)).filter(|v| !v.is_empty()).map(String::from);
        let mut words = certs::CsrWords {
            serial: serial.to_string(),
            device_type: device_type.to_string(),
            stored_realip: stored("realip"),
            stored_hwid: stored("hwid"),
            ip: self.call.origin.ip.clone(),
            proxy: Some(self.call.origin.proxy.clone()).filter(|p| !p.is_empty()),
            name: doc
                .child("queries")
                .and_then(|q| q.child("admin"))
                .and_then(|a| a.child("info"))
                .and_then(|i| i.attr("name"))
                .map(String::from),
            rdns: None,
        };
        let mut files = certs::ServerFiles::default();
        if let Some(customcerts) = customcerts {
            if certs::uses_rdns(customcerts) {
                words.rdns = words.stored_realip.as_deref().and_then(|ip| self.lookups.reverse_dns(ip));
            }
            files = self.lookups.certificate_files(customcerts, serial);
        }
        let vardump_base = format!("{}/update.php", self.call.base_url);
        certs::plan(&certs::CertificateFacts {
            state: doc,
            customcerts,
            forcetrust: config.times.forcetrust,
            words: &words,
            files: &files,
            vardump_base: &vardump_base,
            now: self.call.now,
        })
        .map_err(Bailout)
    }

    /// Step 11's query commands.
    fn query_commands(&mut self, classes: &[String], environments: &[String]) -> Result<(), Bailout> {
        let mut any = false;
        for query in &self.config.queries {
            if query.applies.is_empty() || !query.applies.iter().any(|a| applies_any(a, classes, environments)) {
                continue;
            }
            let cmd = query
                .cmd
                .as_deref()
                .ok_or_else(|| Bailout(format!("query '{}' has no cmd", query.id)))?;
            self.script.comment_args(format_args!("query '{}'", query.id));
            self.script.command(format!(
                "mod cmd UP0 scfg {}&id={} ser nop /always {}",
                self.call.absolute(&self.config.queries_scfg),
                query.id,
                crate::urlenc::rawurlencode(cmd)
            ));
            any = true;
        }
        if !any {
            self.script.comment_pieces(&["no queries defined for any of callers classes: ", &classes.join("+")]);
        }
        Ok(())
    }

    /// Steps 13 and 14: firmware and boot code commands. Returns whether an update was asked.
    fn firmware(&mut self, device_type: &str, classes: &[String], environments: &[String]) -> Result<bool, Bailout> {
        let config = self.config;
        let master = &config.master;
        if master.info.is_empty() {
            self.script.comment("no master device configured - no firmware updates");
            return Ok(false);
        }
        let firmware_choice = BuildChoice::parse(&master.firmware, false).map_err(|e| Bailout(format!("config: master/@firmware: {e}")))?;
        let bootcode_choice = BuildChoice::parse(&master.bootcode, true).map_err(|e| Bailout(format!("config: master/@bootcode: {e}")))?;
        // the box info is read whenever a master is named, even for fixed builds: an
        // unreachable master without a cache stops the poll, as it always did
        let master_builds = if master.info == "none" {
            for (choice, attribute) in [(&firmware_choice, "firmware"), (&bootcode_choice, "bootcode")] {
                if *choice == BuildChoice::Master {
                    return Err(Bailout(format!("Cannot use {attribute}='master' with no info available")));
                }
            }
            None
        } else {
            let (builds, source) = self.lookups.master_builds(master)
                .map_err(|e| Bailout(format!("cannot get cached PBX info: {e}")))?;
            match source {
                crate::master::Source::Cache => self.script.comment("using cached master info"),
                crate::master::Source::Online => self.script.comment("failed to use cached data (cache not current), retrieving info online"),
                crate::master::Source::StaleCache(why) => self.script.note(format!("master unreachable ({why}), using expired cache")),
            }
            Some(builds)
        };
        let (firmware, bootcode) = firmware::chosen_builds(&firmware_choice, &bootcode_choice, master_builds.as_ref());
        if !master.applies.iter().all(|a| applies_any(a, classes, environments)) {
            self.script.comment("master/applies does not match this device - no firmware updates");
            return Ok(false);
        }
        let model = device_type.to_lowercase();
        let hop = if config.nofirmdev.contains(&model) {
            PathHop::Unchanged
        } else {
            self.upgrade_path_hop(firmware.as_deref(), classes, environments)
        };
        let held_back = hop == PathHop::HeldBack;
        let (firmware, via) = match hop {
            PathHop::Unchanged => (firmware, None),
            PathHop::Via(build) => (Some(build.clone()), Some(build)),
            // the note said why: no firmware command
            PathHop::HeldBack => (None, None),
        };
        let mut requested = false;
        let storage = self.call.absolute(&config.fwstorage_url);
        for (kind, wanted, excluded, running, element) in [
            (FileType::Prot, firmware, config.nofirmdev.contains(&model), self.call.arg("PROT"), "firmware"),
            (FileType::Boot, bootcode, config.nobootdev.contains(&model), self.call.arg("BOOT"), "bootcode"),
        ] {
            let what = if kind == FileType::Prot { "firmware" } else { "boot code" };
            let Some(wanted) = wanted else {
                if !(held_back && kind == FileType::Prot) {
                    self.script.comment_args(format_args!("no {what} update configured"));
                }
                continue;
            };
            if excluded {
                self.script.comment_args(format_args!("{device_type} gets no {what} updates (no{}dev)", if kind == FileType::Prot { "firm" } else { "boot" }));
                continue;
            }
            if firmware::same_build(running, &wanted) {
                self.script.comment_args(format_args!("current {what} ({wanted}) is good"));
                // a via build asked before is behind the device now
                if let Some(entry) = self.state.child_mut(element).filter(|_| kind == FileType::Prot) {
                    entry.remove_attr("via");
                }
                continue;
            }
            self.script.note(format!("current {what} ({}) does not match required {what} ({wanted})", running.unwrap_or("")));
            let name = firmware::file_name(device_type, kind, &config.filenames);
            let url = firmware::storage_url(&storage, &wanted, device_type, kind, &name);
            self.script.command(format!("mod cmd UP0 {} {url} ser {wanted}", kind.as_str()));
            let entry = self.state.child_or_insert(element);
            if kind == FileType::Prot {
                entry.set_attr("requested", wanted.clone());
                match &via {
                    Some(build) => entry.set_attr("via", build.clone()),
                    None => entry.remove_attr("via"),
                }
            }
            entry.set_attr("requested-at", self.call.now.to_compact_string());
            requested = true;
        }
        Ok(requested)
    }

    /// What an `upgrades/path` that applies to the device (issue 9) makes of the firmware
    /// build chosen as without a path.
    fn upgrade_path_hop(&mut self, wanted: Option<&str>, classes: &[String], environments: &[String]) -> PathHop {
        let (Some(target), Some(path)) = (wanted, crate::upgrades::build_path(&self.config.upgrades, classes, environments)) else {
            return PathHop::Unchanged;
        };
        match path.decide(target, self.call.arg("PROT")) {
            BuildHop::Via(build) => {
                self.script.comment_args(format_args!("upgrade path: build {build} first, on the way to {target}"));
                PathHop::Via(build)
            }
            BuildHop::Master(_) | BuildHop::AtTarget => PathHop::Unchanged,
            BuildHop::Undecidable(reason) => {
                self.script.note(format!("upgrade path: {reason}"));
                PathHop::HeldBack
            }
        }
    }

    /// `times/@polling`, the value a state arg gets for fast polling.
    fn fast_polling(&self) -> ArgValue {
        ArgValue::Text(self.config.times.polling.to_string())
    }

    /// Step R when it is due: a state argument changed, or the device must move to HTTPS.
    /// Returns whether it ran.
    fn rewrite_if_needed(&mut self, force_https: bool) -> bool {
        if !self.state_args.changed && !force_https {
            return false;
        }
        self.rewrite_url(&[], self.call.arg("polling"), force_https);
        true
    }

    /// Step R: polling commands (when polling changed against `requested_polling`), the new URL with the state args first
    /// (when one changed), the missing required arguments, then the request's own.
    fn rewrite_url(&mut self, missing: &[&str], requested_polling: Option<&str>, force_https: bool) {
        let times = &self.config.times;
        if let Some(switch) = self.state_args.polling_switch(requested_polling) {
            self.script.comment(match switch {
                PollingSwitch::Off => "turn off fast polling".to_string(),
                PollingSwitch::On => format!("turn on fast polling ({})", self.state_args.polling.url_text()),
            });
            self.script.commands(rewrite::polling_commands(switch, times.polling, times.interval));
        }
        self.script.blank();
        let query = rewrite::query_string(&self.state_args.url_front(), missing, &self.call.args, &self.config.stdargs);
        let https_on_port = self.call.https_on(times.httpsport.as_deref());
        let mut location = if self.call.https { format!("https://{}", self.call.host) } else { format!("http://{}", self.call.host) };
        location.push_str(&self.call.script_name);
        if force_https && !https_on_port {
            location = format!("https://{}{}", rewrite::with_port(&self.call.host, times.httpsport.as_deref()), self.call.script_name);
            match rewrite::Substitution::parse(&times.httpsurlmod) {
                Ok(substitution) => location = substitution.apply(&location),
                Err(e) if times.httpsurlmod.is_empty() => drop(e),
                Err(e) => self.script.note(format!("times/@httpsurlmod ignored: {e}")),
            }
        }
        let url = format!("{location}?{query}");
        self.script.comment_args(format_args!("new update URL {url}"));
        self.script.commands(rewrite::url_commands(&url));
        self.rewrote = true;
    }
}

/// The firmware step's answer to an upgrade path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PathHop {
    /// No path applies, or none of its via builds is due: the build chosen as without a path.
    Unchanged,
    /// PROT is below this via build: the `prot` command names it.
    Via(String),
    /// PROT or the target is no build number: no firmware command, for a device must never be
    /// sent a build it may not be able to take.
    HeldBack,
}

/// Whether an `applies` entry matches: `*`, a class, or (with `env`) an environment.
pub fn applies_any(applies: &Applies, classes: &[String], environments: &[String]) -> bool {
    if applies.value == "*" {
        return true;
    }
    let pool = if applies.environment { environments } else { classes };
    pool.iter().any(|v| v.eq_ignore_ascii_case(&applies.value))
}

/// Every class whose models contain the type (case-insensitive), in configuration order,
/// then the lower-cased type itself.
pub fn device_classes(config: &Config, device_type: &str) -> Vec<String> {
    let model = device_type.to_lowercase();
    let mut classes: Vec<String> = config
        .classes
        .iter()
        .filter(|c| c.models.contains(&model))
        .map(|c| c.id.clone())
        .collect();
    if !classes.contains(&model) {
        classes.push(model);
    }
    classes
}

/// The listed environments (or the first configured one) with what they imply, in order and
/// without duplicates (SPEC §3.6 deviation: every listed environment applies). An unknown
/// name is returned as the error.
pub fn expand_environments(config: &Config, requested: Option<&str>) -> Result<Vec<String>, String> {
    let listed: Vec<&str> = match requested.filter(|r| !r.is_empty()) {
        Some(list) => list.split(',').map(str::trim).filter(|e| !e.is_empty()).collect(),
        None => vec![config.environments[0].id.as_str()],
    };
    let mut result: Vec<String> = Vec::new();
    fn add(config: &Config, name: &str, result: &mut Vec<String>) -> Result<(), String> {
        let env = config.environments.iter().find(|e| e.id == name).ok_or_else(|| name.to_string())?;
        if result.contains(&env.id) {
            return Ok(());
        }
        result.push(env.id.clone());
        for implied in &env.implies {
            add(config, implied, result)?;
        }
        Ok(())
    }
    for name in listed {
        add(config, name, &mut result)?;
    }
    Ok(result)
}

/// A snippet file that exists.
#[derive(Debug, Clone)]
pub struct SnippetFile {
    pub name: String,
    /// `<times/@dir>/<name>`, as stored in the state and shown to people.
    pub display_name: String,
    pub mtime: i64,
    pub content: std::sync::Arc<Vec<u8>>,
}

/// A file's age as the answer states it: a whole number of the largest unit that still
/// counts to at least two, and that unit with its leading space.
fn age_in_units(seconds: i64) -> (i64, &'static str) {
    match seconds {
        s if s < 120 => (s, " secs"),
        s if s < 7200 => (s / 60, " mins"),
        s if s < 172800 => (s / 3600, " hours"),
        s if s < 1209600 => (s / 86400, " days"),
        s => (s / 604800, " weeks"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::Element;

    fn config(user: &str) -> Config {
        let defaults = Element::parse_trusted(include_str!("../../config.xml")).unwrap();
        crate::config::build(defaults, &Element::parse(user).unwrap(), "user-config.xml").unwrap()
    }

    #[test]
    fn ages_are_counted_in_the_largest_unit_that_reaches_two() {
        let cases = [(0, 0, " secs"), (119, 119, " secs"), (120, 2, " mins"), (7199, 119, " mins"), (7200, 2, " hours"),
            (172_799, 47, " hours"), (172_800, 2, " days"), (1_209_599, 13, " days"), (1_209_600, 2, " weeks")];
        for (seconds, count, unit) in cases {
            assert_eq!(age_in_units(seconds), (count, unit), "{seconds} s");
        }
    }

    #[test]
    fn classes_in_configuration_order_then_the_type() {
        let c = config("<config><master info=''/></config>");
        assert_eq!(device_classes(&c, "IP232"), ["phone", "pre_opus_phone", "phone_newui", "ip232"]);
        assert_eq!(device_classes(&c, "IP0011"), ["gw", "pbx", "ip0011"]);
        assert_eq!(device_classes(&c, "unknown9"), ["unknown9"]);
        let c = config("<config><classes><class id='Lobby'><model>IP232</model></class></classes></config>");
        assert_eq!(device_classes(&c, "ip232").last().map(String::as_str), Some("ip232"));
        assert!(device_classes(&c, "ip232").contains(&"Lobby".to_string()));
    }

    #[test]
    fn environments_with_implications_without_duplicates() {
        let c = config(
            "<config><environments><environment id='berlin'><implies>germany</implies></environment>\
             <environment id='germany'/><environment id='munich'><implies>bavaria</implies><implies>germany</implies></environment>\
             <environment id='bavaria'/></environments></config>",
        );
        assert_eq!(expand_environments(&c, None).unwrap(), ["default"]);
        assert_eq!(expand_environments(&c, Some("berlin,munich")).unwrap(), ["berlin", "germany", "munich", "bavaria"]);
        assert_eq!(expand_environments(&c, Some("berlin,germany")).unwrap(), ["berlin", "germany"]);
        assert_eq!(expand_environments(&c, Some("berlin,hamburg")).unwrap_err(), "hamburg");
    }

    /// Lookups from memory: snippet files by name, certificate files, and a count of what was
    /// asked, so a test can tell that a step was never reached.
    #[derive(Default)]
    struct Memory {
        snippets: Vec<(String, i64, &'static str)>,
        certificate_files: certs::ServerFiles,
        master: Option<(String, String)>,
        master_lookups: usize,
        lookups: usize,
    }

    impl Lookups for Memory {
        fn snippet_files(&mut self, dir: &str, names: &[String]) -> Vec<SnippetFile> {
            self.lookups += 1;
            names
                .iter()
                .filter_map(|name| self.snippets.iter().find(|(n, _, _)| n == name))
                .map(|(name, mtime, text)| SnippetFile {
                    name: name.clone(),
                    display_name: format!("{dir}/{name}"),
                    mtime: *mtime,
                    content: std::sync::Arc::new(text.as_bytes().to_vec()),
                })
                .collect()
        }
        fn certificate_files(&mut self, customcerts: &Element, _serial: &str) -> certs::ServerFiles {
            self.lookups += 1;
            certs::ServerFiles { dir: customcerts.attr("dir").unwrap_or("certs").into(), ..self.certificate_files.clone() }
        }
        fn reverse_dns(&mut self, _ip: &str) -> Option<String> {
            self.lookups += 1;
            None
        }
        fn master_builds(&mut self, _master: &Master) -> Result<((String, String), crate::master::Source), String> {
            self.lookups += 1;
            self.master_lookups += 1;
            self.master.clone().map(|b| (b, crate::master::Source::Online)).ok_or_else(|| "unreachable".into())
        }
        fn dynamic_lines(
            &mut self,
            _exec: &str,
            _state_xml: &str,
            _environment: &[(String, String)],
            _timeout: std::time::Duration,
        ) -> Result<crate::dynamic::Lines, String> {
            self.lookups += 1;
            Err("no program in these tests".into())
        }
    }

    const NOW: i64 = 1_700_000_000;
    const POLL: &str = "type=IP232&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57&ip=172.16.4.57";

    fn call(query: &str) -> Call {
        Call {
            args: query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (k.into(), v.into())
                })
                .collect(),
            base_url: "http://update.example.com/mtls/update".into(),
            host: "update.example.com".into(),
            script_name: "/mtls/update/update.php".into(),
            https: false,
            server_port: "80".into(),
            origin: crate::device::Origin { ip: "172.16.4.57".into(), reverse_proxied: false, proxy: String::new() },
            tls: certs::TlsIdentity::default(),
            now: NOW,
        }
    }

    fn commands(script: Script) -> Vec<String> {
        script.into_text().lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
    }

    fn poll(config: &Config, query: &str, state: &mut Element, lookups: &mut Memory) -> (Decision, Vec<String>) {
        let mut script = Script::new();
        let decision = decide(config, &call(query), state, lookups, &mut script);
        (decision, commands(script))
    }

    #[test]
    fn a_last_phase_poll_delivers_its_snippets_then_check_stops_it() {
        let config = config("<config><master info=''/><status dir='status'/></config>");
        let mut lookups = Memory {
            snippets: vec![("update-phone-default.txt".into(), NOW - 1000, "config change CMD0 /name lobby\r\n")],
            ..Memory::default()
        };
        let mut state = Element::new("state");
        let (decision, sent) = poll(&config, &format!("{POLL}&phase=update&polling=0"), &mut state, &mut lookups);
        assert_eq!(decision.ending, Ending::Save);
        assert!(decision.file_actions.is_empty());
        let check = sent.iter().find_map(|c| c.strip_prefix("mod cmd UP1 check ser ")).expect("a CHECK value").to_string();
        assert!(sent.contains(&"config change CMD0 /name lobby".to_string()), "{sent:?}");
        let delivered = state.children_named("config").next().expect("a delivery entry");
        assert_eq!(delivered.attr("filename"), Some("scripts/update-phone-default.txt"));
        assert_eq!(delivered.attr("version"), Some((NOW - 1000).to_string().as_str()));

        // the next poll carries the signature: nothing is delivered again
        let (decision, sent) = poll(&config, &format!("{POLL}&phase=update&polling=0&CHECK={check}"), &mut state, &mut lookups);
        assert_eq!(decision.ending, Ending::Save);
        assert!(!sent.iter().any(|c| c.contains("/name lobby")), "{sent:?}");
    }

    /// An IP232 on 130178 with a path through 131504 to the master's 134567: the via build
    /// first, then the master's, then nothing; a PROT that is no build number gets no firmware
    /// command at all; the boot code goes as without a path.
    #[test]
    fn an_innovaphone_phone_walks_its_upgrade_path() {
        let config = config(
            "<config><master info='http://master.example.com/CMD0/box_info.xml'/><status dir='status'/>\
             <fwstorage url='http://fw.example.com/{build}/{filename}'/>\
             <upgrades><path applies='phone'><via build='131504'/></path></upgrades></config>",
        );
        let mut lookups = Memory { master: Some(("134567".into(), "134560".into())), ..Memory::default() };
        let mut state = Element::new("state");
        let prot = |build: &str| format!("{POLL}&phase=update&polling=0&PROT={build}&BOOT=134560");
        let firmware_commands = |sent: &[String]| sent.iter().filter(|c| c.contains(" prot ")).cloned().collect::<Vec<_>>();

        let (_, sent) = poll(&config, &prot("130178"), &mut state, &mut lookups);
        assert_eq!(firmware_commands(&sent), ["mod cmd UP0 prot http://fw.example.com/131504/ip232.bin ser 131504"], "{sent:?}");
        assert!(sent.contains(&"iresetn".to_string()), "{sent:?}");
        let firmware = state.child("firmware").unwrap();
        assert_eq!((firmware.attr("requested"), firmware.attr("via")), (Some("131504"), Some("131504")));

        let (_, sent) = poll(&config, &prot("131504"), &mut state, &mut lookups);
        assert_eq!(firmware_commands(&sent), ["mod cmd UP0 prot http://fw.example.com/134567/ip232.bin ser 134567"], "{sent:?}");
        let firmware = state.child("firmware").unwrap();
        assert_eq!((firmware.attr("requested"), firmware.attr("via")), (Some("134567"), None));

        let (_, sent) = poll(&config, &prot("134567"), &mut state, &mut lookups);
        assert!(firmware_commands(&sent).is_empty(), "{sent:?}");

        let mut fresh = Element::new("state");
        let (_, sent) = poll(&config, &prot("13r2"), &mut fresh, &mut lookups);
        assert!(firmware_commands(&sent).is_empty(), "{sent:?}");
        assert!(fresh.child("firmware").and_then(|f| f.attr("requested")).is_none());

        // a gateway is not on the phones' path: the master's build straight away
        let gateway = "type=IP0011&sn=00-90-33-3e-0c-58&hwid=IP0011-3e-0c-58&ip=172.16.4.58&phase=update&polling=0&PROT=130178";
        let (_, sent) = poll(&config, gateway, &mut Element::new("state"), &mut lookups);
        assert_eq!(firmware_commands(&sent), ["mod cmd UP0 prot http://fw.example.com/134567/ip0011.bin ser 134567"], "{sent:?}");
    }

    #[test]
    fn a_poll_in_its_grace_period_never_asks_the_master() {
        let config = config("<config><master info='http://master.example.com/CMD0/box_info.xml'/><status dir='status'/></config>");
        let mut lookups = Memory {
            snippets: vec![("update-all-default.txt".into(), NOW - 10, "config change CMD0 /name x\r\n")],
            master: Some(("134567".into(), "134560".into())),
            ..Memory::default()
        };
        let (decision, sent) = poll(&config, POLL, &mut Element::new("state"), &mut lookups);
        assert_eq!(decision.ending, Ending::Save);
        assert_eq!(lookups.master_lookups, 0);
        assert!(sent.is_empty(), "{sent:?}");
        // once the snippet is old enough the master names the firmware
        lookups.snippets[0].1 = NOW - 1000;
        let (_, sent) = poll(&config, &format!("{POLL}&PROT=130178&BOOT=134560"), &mut Element::new("state"), &mut lookups);
        assert_eq!(lookups.master_lookups, 1);
        assert!(sent.iter().any(|c| c.starts_with("mod cmd UP0 prot ") && c.ends_with(" ser 134567")), "{sent:?}");
    }

    #[test]
    fn missing_arguments_look_nothing_up_and_leave_the_state() {
        let config = config("<config><master info=''/><status dir='status'/></config>");
        let mut lookups = Memory::default();
        let mut state = Element::new("state");
        let (decision, sent) = poll(&config, "sn=00-90-33-3e-0c-57", &mut state, &mut lookups);
        assert_eq!(decision.ending, Ending::Untouched);
        assert_eq!(lookups.lookups, 0);
        assert!(state.children.is_empty() && state.attrs.is_empty());
        assert!(sent.iter().any(|c| c.starts_with("config add UP1 /url ")), "{sent:?}");
    }

    #[test]
    fn a_refused_forcetrust_poll_leaves_the_state_and_logs_why() {
        let config = config(
            "<config><master info=''/><status dir='status'/><times forcehttps='true' forcetrust='true'/>\
             <customcerts dir='certs'/></config>",
        );
        let mut lookups = Memory::default();
        let mut state = Element::new("state");
        let mut script = Script::new();
        let mut https_call = call(&format!("{POLL}&phase=update&polling=0"));
        https_call.https = true;
        https_call.server_port = "443".into();
        state.child_or_insert("queries").child_or_insert("certificates").child_or_insert("info");
        let decision = decide(&config, &https_call, &mut state, &mut lookups, &mut script);
        assert_eq!(decision.ending, Ending::Untouched);
        assert!(decision.log.as_deref().is_some_and(|l| l.contains("forcetrust refused")), "{:?}", decision.log);
    }

    #[test]
    fn a_good_certificate_retires_the_request_files_the_server_holds() {
        let config = config(
            "<config><master info=''/><status dir='status'/><customcerts dir='certs'/></config>",
        );
        let mut lookups = Memory {
            certificate_files: certs::ServerFiles { request_der: true, request_key: true, ..Default::default() },
            ..Memory::default()
        };
        let mut state = Element::parse(
            "<state><queries><certificates><info><servercert><certificate subject_cn='IP232-3e-0c-57' \
             issuer_cn='innovaphone Device Certification Authority' not_before='2019-01-01T00:00:00Z' \
             not_after='2099-01-01T00:00:00Z'/></servercert></info></certificates></queries></state>",
        )
        .unwrap();
        let (decision, _) = poll(&config, &format!("{POLL}&phase=update&polling=0"), &mut state, &mut lookups);
        assert_eq!(decision.ending, Ending::Save);
        assert_eq!(decision.file_actions, [FileAction::Remove(RequestFile::Der), FileAction::Remove(RequestFile::Key)]);
        let device = state.child("device").unwrap();
        assert_eq!(device.attr("certstat"), Some("removing CSR Key certs/00-90-33-3e-0c-57-request.der.key"));
        assert_eq!(device.attr("requestDownloaded"), Some("false"));
    }
}
