//! The update script (SPEC §3): what a polling device is told to do, and what is remembered
//! about it.

pub mod firmware;
pub mod output;
pub mod rewrite;
pub mod snippets;

use crate::certs::{self, CertificatePlan};
use crate::config::{Applies, Config};
use crate::device::Origin;
use crate::state::{self, LockedState};
use crate::xml::Element;
use firmware::{BuildChoice, FileType};
use output::Script;
use rewrite::{ArgValue, PollingSwitch, StateArgs};
use std::path::{Path, PathBuf};

/// What the web server told us about the request, beyond its arguments.
#[derive(Debug, Clone)]
pub struct Call {
    /// Request arguments in their order.
    pub args: Vec<(String, String)>,
    /// `http[s]://HTTP_HOST` + the folder of `SCRIPT_NAME`.
    pub base_url: String,
    pub host: String,
    pub script_name: String,
    pub https: bool,
    pub server_port: String,
    pub origin: Origin,
    pub tls: certs::TlsIdentity,
    pub now: i64,
}

impl Call {
    pub fn arg(&self, name: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Whether the request came over HTTPS on the configured HTTPS port (443 when unset).
    pub fn https_on(&self, httpsport: Option<&str>) -> bool {
        self.https && self.server_port == httpsport.unwrap_or("443")
    }

    /// A relative URL from the configuration made absolute (a value with `://` is kept).
    pub fn absolute(&self, url: &str) -> String {
        absolute_url(&self.base_url, url)
    }
}

/// A URL from the configuration (`fwstorage/@url`, `backup/@scfg`, `queries/@scfg`) made
/// absolute: a value naming a scheme (`://` after at least one character) is kept, any other
/// is a path below the base URL, joined with exactly one `/` (a value may start with one).
pub fn absolute_url(base_url: &str, url: &str) -> String {
    if url.find("://").is_some_and(|at| at > 0) {
        url.to_string()
    } else if url.starts_with('/') {
        format!("{base_url}{url}")
    } else {
        format!("{base_url}/{url}")
    }
}

/// The answer: HTTP status and the script text.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    pub body: String,
}

/// A fatal error: `# <message> - exit`, nothing is saved.
struct Bailout(String);

const REQUIRED: [&str; 4] = ["type", "sn", "hwid", "ip"];

/// Runs the update script for one device request; snippet files are read through `files`.
pub fn run(root: &Path, config: &Config, call: &Call, files: &crate::filecache::FileCache) -> Outcome {
    let mut script = Script::new();
    script.comment(format!(
        "update-server {} - configuration {} merged into config.xml",
        env!("CARGO_PKG_VERSION"),
        config.user_file
    ));
    let result = Run {
        root,
        config,
        call,
        file_cache: files,
        script: &mut script,
        state_args: StateArgs::from_request(call.arg("polling"), call.arg("phase")),
        current_phase: String::new(),
        following_phase: String::new(),
        rewrote: false,
    }
    .execute();
    match result {
        Ok(()) => Outcome { status: 200, body: script.into_text() },
        Err(Bailout(message)) => {
            eprintln!("update-server: {message}");
            script.comment(format!("{message} - exit"));
            Outcome { status: 200, body: script.into_text() }
        }
    }
}

/// Where the device's state lives for this request: a locked file, or (without `status/@dir`)
/// only in memory.
enum StateStore {
    File(LockedState),
    Memory(Element),
}

impl StateStore {
    fn doc(&mut self) -> &mut Element {
        match self {
            StateStore::File(locked) => &mut locked.state,
            StateStore::Memory(element) => element,
        }
    }

    fn save(self, notes: &[String], now: i64, logkeep: i64) -> Result<(), Bailout> {
        match self {
            StateStore::File(mut locked) => {
                for note in notes {
                    state::log(&mut locked.state, now, note);
                }
                state::prune_log(&mut locked.state, now, logkeep);
                locked.save().map_err(|e| Bailout(format!("cannot write device state: {e}")))
            }
            StateStore::Memory(_) => Ok(()),
        }
    }
}

struct Run<'a> {
    root: &'a Path,
    config: &'a Config,
    call: &'a Call,
    file_cache: &'a crate::filecache::FileCache,
    script: &'a mut Script,
    state_args: StateArgs,
    /// The phase of this poll and the one after it, recorded on the state's root element
    /// whenever the device's URL is rewritten.
    current_phase: String,
    following_phase: String,
    rewrote: bool,
}

impl Run<'_> {
    fn execute(mut self) -> Result<(), Bailout> {
        let config = self.config;
        let call = self.call;
        self.script.comment("");

        // step 2: a device that does not send the standard arguments gets a URL that does
        let missing: Vec<&str> = REQUIRED.iter().copied().filter(|name| call.arg(name).is_none()).collect();
        if !missing.is_empty() {
            self.script.note(format!("missing arguments: {}", missing.join(", ")));
            // the state args the request lacks are given their first values; when it carries
            // both, nothing of its state changes and its own arguments keep their order
            if call.arg("phase").is_none() {
                self.state_args.set_phase(ArgValue::Text(config.phases[0].id.clone()));
            }
            if call.arg("polling").is_none() {
                self.state_args.set_polling(self.fast_polling());
            }
            // the old server compared polling with the request's only after this point: here
            // any changed state sends the polling commands
            self.rewrite_url(&missing, None, false);
            return Ok(());
        }
        let serial = call.arg("sn").unwrap_or_default();
        let device_type = call.arg("type").unwrap_or_default();
        let hwid = call.arg("hwid").unwrap_or_default();

        let mut store = self.open_state(serial)?;
        if let StateStore::File(locked) = &store {
            if let Some(damage) = locked.damage() {
                // the poll goes on with a fresh state (see LockedState::open); the note also
                // starts the fresh state's log
                self.script.note(format!("device state {serial}.xml {damage}; a fresh state replaces it"));
            }
        }
        let now = call.now;
        let logkeep = config.status.as_ref().map_or(0, |s| s.logkeep);
        {
            let doc = store.doc();
            doc.set_attr("seen", now.to_string());
            state::mark_request(doc, now);
        }

        // step 3: classes
        let classes = device_classes(config, device_type);
        {
            let device = state::device(store.doc());
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
                    return self.finish(store, now, logkeep);
                }
            },
        };
        let phase = &config.phases[phase_index];
        let next_phase = config.phases.get(phase_index + 1);
        state::device(store.doc()).set_attr("phase", phase.id.clone());
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
                return self.finish(store, now, logkeep);
            }
        };
        state::device(store.doc()).set_attr("environments", environments.join(", "));
        self.script.comment(format!(
            "phase: {}, nextphase: {}, environment: {}, type: {device_type}, classes: {}",
            phase.id,
            next_phase.map_or("", |p| p.id.as_str()),
            environments.join("+"),
            classes.join("+")
        ));
        self.script.blank();

        // step 7: a certificate step asked to skip the next poll's scripts
        if store.doc().attr("skipnext").is_some() {
            store.doc().remove_attr("skipnext");
            self.script.note("skipping this poll's scripts (certificate processing), queries only");
            // the device's URL stays as it is: the certificate step that set skipnext has put
            // it into fast polling already
            self.query_commands(&classes, &environments)?;
            return self.finish(store, now, logkeep);
        }

        // step 8: snippet files
        let dir = &config.times.dir;
        let names = snippets::candidate_names(
            &phase.files_of,
            config.phases.len() > 1,
            &classes,
            config.classes.len() > 1,
            serial,
            &environments,
            config.environments.len() > 1,
        );
        let files: Vec<SnippetFile> = self
            .file_cache
            .existing(&self.root.join(dir), &names)
            .into_iter()
            .map(|(name, snippet)| SnippetFile {
                display_name: format!("{dir}/{name}"),
                name,
                mtime: snippet.mtime,
                content: snippet.content,
            })
            .collect();
        self.script.comment(format!("existing files (from {dir}):"));
        for file in &files {
            self.script.comment(format!("> {}: {}", file.display_name, age_text(now - file.mtime)));
        }
        self.script.blank();
        self.script.comment(format!("possible further files (from {dir}):"));
        for name in names.iter().filter(|n| !files.iter().any(|f| &f.name == *n)) {
            self.script.comment(format!("{dir}/{name}"));
        }
        self.script.blank();

        // step 9: backup
        let https_on_port = call.https_on(config.times.httpsport.as_deref());
        let force_https = config.times.forcehttps || config.times.forcetrust;
        match &config.backup {
            Some(backup) if force_https && !call.https => {
                self.script.comment(format!("backups via {} suppressed: forcehttps is on and this is plain HTTP", backup.scfg))
            }
            Some(backup) => self.script.command(format!("mod cmd UP0 scfg {}", call.absolute(&backup.scfg))),
            None => self.script.comment("Backups not enabled in config"),
        }
        self.script.blank();

        // step 10: grace period, so that a half-edited set of snippets never reaches a device
        if let Some(newest) = files.iter().max_by_key(|f| f.mtime) {
            let age = now - newest.mtime;
            self.script.comment(format!("newest script ({}) {age}s old", newest.display_name));
            if age < config.times.grace {
                self.script.note(format!(
                    "files being updated ({} {age}s old, waiting for at least {}s to expire)",
                    newest.display_name, config.times.grace
                ));
                return self.finish(store, now, logkeep);
            }
        }
        self.script.blank();

        // step 11: the certificate step is decided (and acts on the server's request files)
        // now, its commands go out at step 15; then the queries
        let certificate = self.certificate_plan(store.doc(), serial, device_type)?;
        self.apply_certificate_files(&certificate, serial);
        {
            let device = state::device(store.doc());
            if let Some(status) = certificate.status() {
                device.set_attr("certstat", status);
            }
            if certificate.reset_request_state {
                device.set_attr("requestDownloaded", "false");
            }
        }
        if certificate.skip_next {
            store.doc().set_attr("skipnext", now.to_string());
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
        let requested_update = self.firmware(store.doc(), device_type, &classes, &environments)?;
        {
            let doc = store.doc();
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
            self.script.note(format!("certificates: {note} "));
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
            return self.finish(store, now, logkeep);
        }
        self.script.comment("no certificate cmds required - processing normal updates");

        // step 16: HTTPS and the device's TLS identity
        if force_https && !https_on_port {
            self.script.note("HTTPS required (forcehttps): moving the device to its HTTPS URL");
            self.state_args.set_polling(self.fast_polling());
            self.rewrite_if_needed(true);
            if config.times.forcetrust {
                return self.refuse_untrusted(store, serial, "plain HTTP, no client certificate");
            }
            return self.finish(store, now, logkeep);
        }
        if config.times.forcetrust {
            if let Err(refusal) = certs::check_identity(&call.tls, serial, hwid, config) {
                self.script.note(format!("forcetrust: {refusal} - nothing delivered"));
                return self.refuse_untrusted(store, serial, &refusal);
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
        let dynamic = match self.dynamic_lines(store.doc(), &classes, &environments) {
            Ok(lines) => lines,
            Err(failure) => {
                self.script.note(format!("dynamic snippets failed: {failure} - nothing delivered"));
                return self.finish(store, now, logkeep);
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
            let signature = snippets::check_signature(&pre, files.iter().map(|f| f.content.as_slice()), &post);
            if call.arg("CHECK") == Some(signature.as_str()) {
                // the steady state of every provisioned device: a comment, not a log entry
                self.script.comment(format!("CHECK {signature} matches - scripts already executed, nothing to deliver"));
                self.rewrite_if_needed(false);
                return self.finish(store, now, logkeep);
            }
            Some(signature)
        } else {
            None
        };

        // step 20: delivery
        self.script.commands(&pre);
        for file in &files {
            self.script.blank();
            self.script.comment(format!("    {}", file.display_name));
            self.script.comment("{ ");
            self.script.comment(format!("begin script '{}' ", file.display_name));
            self.script.raw_lines(&file.content);
            self.script.blank();
            self.script.comment(format!("end script '{}'", file.display_name));
            self.script.comment("}");
            let doc = store.doc();
            let entry = match doc.children.iter().position(|c| c.name == "config" && c.attr("filename") == Some(&file.display_name)) {
                Some(i) => &mut doc.children[i],
                None => {
                    doc.children.push(Element::new("config"));
                    let last = doc.children.len() - 1;
                    doc.children[last].set_attr("filename", file.display_name.clone());
                    &mut doc.children[last]
                }
            };
            entry.set_attr("delivered", now.to_string());
            entry.set_attr("version", file.mtime.to_string());
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
            self.script.command(format!("mod cmd UP1 check ser {signature}"));
        }
        self.script.comment("trigger reset if required");
        self.script.command("iresetn");
        self.finish(store, now, logkeep)
    }

    /// Ends a poll that forcetrust refused without touching the state: whoever sent it has not
    /// proven to be this device, so nothing it claims (type, address, log) may reach the
    /// device's row. The refusal goes to the server log instead (SPEC §1).
    fn refuse_untrusted(&mut self, store: StateStore, serial: &str, refusal: &str) -> Result<(), Bailout> {
        drop(store);
        // `serial` was validated (device::validate) and made canonical before the script ran:
        // it is safe to log as it is
        eprintln!(
            "update-server: forcetrust refused a poll for sn={serial} from {}: {refusal} (state left unchanged)",
            self.call.origin.ip
        );
        Ok(())
    }

    /// Saves the state with the phase the device goes on with, and cleans up old state files.
    fn finish(&mut self, mut store: StateStore, now: i64, logkeep: i64) -> Result<(), Bailout> {
        if self.rewrote {
            let doc = store.doc();
            doc.set_attr("phase", self.current_phase.clone());
            doc.set_attr("nextphase", self.following_phase.clone());
        }
        store.save(&self.script.notes, now, logkeep)?;
        if let Some(status) = &self.config.status {
            state::cleanup_expired(&self.root.join(&status.dir), now, status.expire);
        }
        Ok(())
    }

    fn open_state(&self, serial: &str) -> Result<StateStore, Bailout> {
        let Some(status) = &self.config.status else {
            return Ok(StateStore::Memory(Element::new("state")));
        };
        let path: PathBuf = self.root.join(&status.dir).join(format!("{serial}.xml"));
        LockedState::open(&path)
            .map(StateStore::File)
            .map_err(|e| Bailout(format!("cannot open device state {}/{serial}.xml: {e}", status.dir)))
    }

    /// Step 18: the operator's program for dynamic lines, when one is configured.
    fn dynamic_lines(&mut self, doc: &Element, classes: &[String], environments: &[String]) -> Result<crate::dynamic::Lines, String> {
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
                environment.push((format!("UPDATE_ARG_{name}"), value.clone()));
            }
        }
        let program = self.root.join(&dynamic.exec);
        let lines = crate::dynamic::run(
            &program,
            self.root,
            &state::render(doc),
            &environment,
            std::time::Duration::from_secs(dynamic.timeout_secs),
        )?;
        self.script.comment(format!(
            "dynamic snippets ({}): {} pre-line(s), {} post-line(s)",
            dynamic.exec,
            lines.pre.len(),
            lines.post.len()
        ));
        Ok(lines)
    }

    /// Step 11's certificate decisions, with what the server holds for the device read here.
    fn certificate_plan(&self, doc: &Element, serial: &str, device_type: &str) -> Result<CertificatePlan, Bailout> {
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
                words.rdns = words.stored_realip.as_deref().and_then(crate::net::reverse_lookup);
            }
            files.dir = customcerts.attr("dir").unwrap_or("certs").to_string();
            let dir = self.root.join(&files.dir);
            let exists = |file: certs::RequestFile| dir.join(format!("{serial}{}", file.suffix())).is_file();
            files.request_der = exists(certs::RequestFile::Der);
            files.request_pem = exists(certs::RequestFile::Pem);
            files.request_key = exists(certs::RequestFile::Key);
            files.signed_certificate = std::fs::read(dir.join(format!("{serial}{}", certs::RequestFile::Signed.suffix())))
                .ok()
                .and_then(|data| certs::der_of(&data));
            let pattern = customcerts.attr("CAkeys").unwrap_or("CAkey*");
            let mut chain: Vec<String> = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter(|name| glob_match(pattern, name))
                        .collect()
                })
                .unwrap_or_default();
            chain.sort();
            files.ca_chain = chain
                .into_iter()
                .filter_map(|name| {
                    let der = std::fs::read(dir.join(&name)).ok().and_then(|d| certs::der_of(&d))?;
                    Some((format!("{}/{name}", files.dir), der))
                })
                .collect();
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

    /// The certificate step's actions on the server's request files of the device.
    fn apply_certificate_files(&mut self, plan: &CertificatePlan, serial: &str) {
        let Some(customcerts) = &self.config.customcerts else { return };
        let dir = self.root.join(customcerts.attr("dir").unwrap_or("certs"));
        for file in &plan.remove {
            let path = dir.join(format!("{serial}{}", file.suffix()));
            if let Err(e) = std::fs::remove_file(&path) {
                self.script.note(format!("cannot remove {}: {e}", path.strip_prefix(self.root).unwrap_or(&path).display()));
            }
        }
        if plan.write_pem {
            let der_path = dir.join(format!("{serial}{}", certs::RequestFile::Der.suffix()));
            let pem_path = dir.join(format!("{serial}{}", certs::RequestFile::Pem.suffix()));
            match std::fs::read(&der_path) {
                Ok(der) => {
                    if let Err(e) = state::write_atomically(&pem_path, certs::pem("CERTIFICATE REQUEST", &der).as_bytes()) {
                        self.script.note(format!("cannot write {}: {e}", pem_path.display()));
                    }
                }
                Err(e) => self.script.note(format!("cannot read {}: {e}", der_path.display())),
            }
        }
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
            self.script.comment(format!("query '{}'", query.id));
            self.script.command(format!(
                "mod cmd UP0 scfg {}&id={} ser nop /always {}",
                self.call.absolute(&self.config.queries_scfg),
                query.id,
                crate::urlenc::rawurlencode(cmd)
            ));
            any = true;
        }
        if !any {
            self.script.comment(format!("no queries defined for any of callers classes: {}", classes.join("+")));
        }
        Ok(())
    }

    /// Steps 13 and 14: firmware and boot code commands. Returns whether an update was asked.
    fn firmware(&mut self, doc: &mut Element, device_type: &str, classes: &[String], environments: &[String]) -> Result<bool, Bailout> {
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
            let (builds, source) = crate::master::builds(self.root, master, self.call.now)
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
        let mut requested = false;
        let storage = self.call.absolute(&config.fwstorage_url);
        for (kind, wanted, excluded, running, element) in [
            (FileType::Prot, firmware, config.nofirmdev.contains(&model), self.call.arg("PROT"), "firmware"),
            (FileType::Boot, bootcode, config.nobootdev.contains(&model), self.call.arg("BOOT"), "bootcode"),
        ] {
            let what = if kind == FileType::Prot { "firmware" } else { "boot code" };
            let Some(wanted) = wanted else {
                self.script.comment(format!("no {what} update configured"));
                continue;
            };
            if excluded {
                self.script.comment(format!("{device_type} gets no {what} updates (no{}dev)", if kind == FileType::Prot { "firm" } else { "boot" }));
                continue;
            }
            if firmware::same_build(running, &wanted) {
                self.script.comment(format!("current {what} ({wanted}) is good"));
                continue;
            }
            self.script.note(format!("current {what} ({}) does not match required {what} ({wanted})", running.unwrap_or("")));
            let name = firmware::file_name(device_type, kind, &config.filenames);
            let url = firmware::storage_url(&storage, &wanted, device_type, kind, &name);
            self.script.command(format!("mod cmd UP0 {} {url} ser {wanted}", kind.as_str()));
            let entry = doc.child_or_insert(element);
            if kind == FileType::Prot {
                entry.set_attr("requested", wanted.clone());
            }
            entry.set_attr("requested-at", self.call.now.to_string());
            requested = true;
        }
        Ok(requested)
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
        self.script.comment(format!("new update URL {url}"));
        self.script.commands(rewrite::url_commands(&url));
        self.rewrote = true;
    }
}

/// Whether an `applies` entry matches: `*`, a class, or (with `env`) an environment.
fn applies_any(applies: &Applies, classes: &[String], environments: &[String]) -> bool {
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

/// Shell-style matching of a file name against `*` and `?` (the `CAkeys` attribute).
fn glob_match(pattern: &str, name: &str) -> bool {
    fn matches(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => matches(&p[1..], n) || (!n.is_empty() && matches(p, &n[1..])),
            (Some('?'), Some(_)) => matches(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => matches(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    matches(&p, &n)
}

/// A snippet file that exists.
struct SnippetFile {
    name: String,
    /// `<times/@dir>/<name>`, as stored in the state and shown to people.
    display_name: String,
    mtime: i64,
    content: std::sync::Arc<Vec<u8>>,
}

fn age_text(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} secs"),
        s if s < 7200 => format!("{} mins", s / 60),
        s if s < 172800 => format!("{} hours", s / 3600),
        s if s < 1209600 => format!("{} days", s / 86400),
        s => format!("{} weeks", s / 604800),
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

    #[test]
    fn relative_urls_join_the_base_with_one_slash() {
        let base = "http://h/mtls/update";
        assert_eq!(absolute_url(base, "fw/{build}/"), "http://h/mtls/update/fw/{build}/");
        assert_eq!(absolute_url(base, "/fw/{build}/"), "http://h/mtls/update/fw/{build}/");
        assert_eq!(absolute_url(base, "https://fw.example.com/x"), "https://fw.example.com/x");
        assert_eq!(absolute_url(base, ""), "http://h/mtls/update/");
    }

    #[test]
    fn glob_like_the_shell() {
        assert!(glob_match("CAkey*", "CAkey1.pem"));
        assert!(glob_match("CAkey?.der", "CAkey2.der"));
        assert!(!glob_match("CAkey*", "00-90-33-3e-0c-57-request.p10.der"));
    }
}
