//! The profile an identified SPA device gets (issue 9, items 1 to 3): an XML `<flat-profile>`
//! merged from the snippet files `scripts/<phase>-<class>-<env|serial>.xml` (the candidates,
//! order and grace rule of the innovaphone `.txt` snippets, SPEC §3), then what the server
//! itself sets: `Profile_Rule` back to this `update.php`, `Resync_Periodic`, and the next
//! firmware hop of the model's upgrade path.
//!
//! [`decide`] is pure (the poll's facts and the device's state in, the answer and the changed
//! state out; snippet files come through a lookup asked once); [`serve`] holds the state lock
//! and applies what it decided. A profile is sent whole or not at all: a snippet the server
//! cannot read, or a profile over the model's limit, is a 404 (the phone retries after its
//! `Resync_Error_Retry_Delay`), a log line and a message in the device's state.

use compact_str::ToCompactString;
use super::SpaDevice;
use crate::config::Config;
use crate::filecache::FileCache;
use crate::script::decide::{device_classes, expand_environments, SnippetFile};
use crate::script::{rewrite, snippets, Call};
use crate::state::{self, LockedState};
use crate::upgrades::{self, DowngradeLimit, SpaHop};
use crate::xml::{self, Element, Limits};
use std::path::Path;

/// One snippet file: far above a real profile (the largest SPA profile is some 60 kB), and
/// flat: `<flat-profile>` and its parameters.
pub const SNIPPET_LIMITS: Limits = Limits { bytes: 256 * 1024, depth: 3, nodes: 20_000 };
/// Any model's profile; [`profile_limit`] is lower for models with a known limit.
pub const MAX_PROFILE_BYTES: usize = 1 << 20;
/// Parameter and attribute names: the web UI's field names (`Line_Enable_1_`).
const MAX_NAME_BYTES: usize = 64;

/// What the server sets itself: a snippet's value for one of these is left out (a comment in
/// the profile says so), so the answer never says two things about them.
pub const SERVER_PARAMETERS: [&str; 5] = ["Profile_Rule", "Resync_Periodic", "Upgrade_Enable", "Upgrade_Rule", "Downgrade_Rev_Limit"];

pub const CONTENT_TYPE_XML: &str = "text/xml";
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=UTF-8";

/// The largest profile a model loads: the PAP2T's must stay below 64 kB (research notes §4).
pub fn profile_limit(model: &str) -> usize {
    match model {
        "PAP2T" => 64 * 1024 - 1,
        _ => MAX_PROFILE_BYTES,
    }
}

/// One flat-profile parameter as a snippet sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    pub name: String,
    /// `ua`, `group`, …: kept as written (the phone ignores those it does not know).
    pub attrs: Vec<(String, String)>,
    /// `None` for an empty-element tag (`<GPP_B/>`, `<Dial_Plan_1_ ua="ro"/>`): the phone
    /// leaves the value unchanged. `Some("")` (`<GPP_A></GPP_A>`) sets it empty.
    pub value: Option<String>,
    /// The snippet file it came from.
    pub from: String,
}

/// The answer to an SPA request and what becomes of the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// A line for the server log.
    pub log: Option<String>,
    /// Messages for the device's state log.
    pub notes: Vec<String>,
    /// Whether the state is saved (else it stays exactly as it was).
    pub save: bool,
}

/// Reads a snippet file: `<flat-profile>` holding parameter elements, ASCII only.
pub fn parse_snippet(display_name: &str, content: &[u8]) -> Result<Vec<Parameter>, String> {
    let text = std::str::from_utf8(content).map_err(|e| format!("{display_name}: not UTF-8 (byte {})", e.valid_up_to()))?;
    if let Some(at) = text.bytes().position(|b| !b.is_ascii()) {
        return Err(format!("{display_name}: non-ASCII at byte {at} (SPA profiles are ASCII only)"));
    }
    let doc = xml::parse_document(text, &SNIPPET_LIMITS, false).map_err(|e| format!("{display_name}: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "flat-profile" || root.tag_name().namespace().is_some() {
        return Err(format!("{display_name}: the root element must be <flat-profile>"));
    }
    let mut parameters = Vec::new();
    for node in root.children() {
        if node.is_text() && !node.text().unwrap_or("").trim().is_empty() {
            return Err(format!("{display_name}: text outside a parameter element"));
        }
        if !node.is_element() {
            continue;
        }
        let name = node.tag_name().name();
        if !is_name(name) || node.tag_name().namespace().is_some() {
            return Err(format!("{display_name}: <{}> is not a parameter name (letters, digits, '_')", super::shown(name)));
        }
        if node.children().any(|c| c.is_element()) {
            return Err(format!("{display_name}: parameter <{name}> holds elements"));
        }
        let mut attrs = Vec::new();
        for attr in node.attributes() {
            if !is_name(attr.name()) || attr.namespace().is_some() {
                return Err(format!("{display_name}: <{name}> has an attribute that is not a plain name"));
            }
            attrs.push((attr.name().to_string(), attr.value().to_string()));
        }
        let self_closing = text[node.range()].ends_with("/>");
        let value: String = node.children().filter_map(|c| c.text()).collect();
        parameters.push(Parameter {
            name: name.to_string(),
            attrs,
            value: if self_closing { None } else { Some(value.trim().to_string()) },
            from: display_name.to_string(),
        });
    }
    Ok(parameters)
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Merges the parameters of the snippets in candidate order: a later one replaces an earlier
/// one of the same name where that stood (the phone too keeps the last of repeated tags). The
/// server's own parameters are left out and named in the second list.
pub fn merge(snippets: Vec<Vec<Parameter>>) -> (Vec<Parameter>, Vec<Parameter>) {
    let mut merged: Vec<Parameter> = Vec::new();
    let mut dropped = Vec::new();
    for parameter in snippets.into_iter().flatten() {
        if SERVER_PARAMETERS.contains(&parameter.name.as_str()) {
            dropped.push(parameter);
        } else if let Some(existing) = merged.iter_mut().find(|p| p.name == parameter.name) {
            *existing = parameter;
        } else {
            merged.push(parameter);
        }
    }
    (merged, dropped)
}

/// The profile text being built.
struct Profile {
    text: String,
}

impl Profile {
    fn new() -> Profile {
        Profile { text: "<flat-profile>\n".into() }
    }

    /// A comment: printable ASCII, no `--` (which would end it early).
    fn comment(&mut self, text: &str) {
        let mut clean: String = text.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
        while clean.contains("--") {
            clean = clean.replace("--", "- -");
        }
        self.text.push_str(&format!("<!-- {} -->\n", clean.trim_end_matches('-')));
    }

    fn parameter(&mut self, name: &str, attrs: &[(String, String)], value: Option<&str>) {
        self.text.push_str("  <");
        self.text.push_str(name);
        for (attr, attr_value) in attrs {
            self.text.push_str(&format!(" {attr}=\"{}\"", ascii_escape(attr_value, true)));
        }
        match value {
            None => self.text.push_str("/>\n"),
            Some(value) => self.text.push_str(&format!(">{}</{name}>\n", ascii_escape(value, false))),
        }
    }

    fn set(&mut self, name: &str, value: &str) {
        self.parameter(name, &[], Some(value));
    }

    fn finish(mut self) -> String {
        self.text.push_str("</flat-profile>\n");
        self.text
    }
}

/// XML-escaped, and ASCII only whatever the input: anything else as a character reference
/// would still be non-ASCII for the phone, so it becomes `?` (snippets are checked before, the
/// server's own values are ASCII by construction).
fn ascii_escape(text: &str, attribute: bool) -> String {
    let ascii: String = text.chars().map(|c| if c.is_ascii() && (c >= ' ' || c == '\t') { c } else { '?' }).collect();
    xml::escape(&ascii, attribute)
}

/// `Profile_Rule`: this `update.php`, HTTPS per forcehttps (the innovaphone rewrite's host,
/// port and `httpsurlmod`), `mac=$MA`, the phase to go on with and the environment asked.
pub fn profile_rule(config: &Config, call: &Call, phase: &str) -> String {
    let times = &config.times;
    let force_https = times.forcehttps || times.forcetrust;
    let location = if force_https && !call.https_on(times.httpsport.as_deref()) {
        let location = format!("https://{}{}", rewrite::with_port(&call.host, times.httpsport.as_deref()), call.script_name);
        match rewrite::Substitution::parse(&times.httpsurlmod) {
            Ok(substitution) => substitution.apply(&location),
            Err(_) => location,
        }
    } else {
        format!("{}://{}{}", if call.https { "https" } else { "http" }, call.host, call.script_name)
    };
    let mut query = format!("mac=$MA&phase={}", crate::urlenc::rawurlencode(phase));
    if let Some(env) = call.arg("env").filter(|e| !e.is_empty()) {
        query.push_str(&format!("&env={}", crate::urlenc::rawurlencode(env)));
    }
    format!("{location}?{query}")
}

/// `Resync_Periodic` in seconds: `times/@interval` is in minutes (the innovaphone `/poll`).
pub fn resync_seconds(config: &Config) -> i64 {
    config.times.interval.max(0).saturating_mul(60)
}

/// Decides one SPA request. `snippet_files` returns the candidate files (names in order) that
/// exist in a folder.
pub fn decide(
    config: &Config,
    call: &Call,
    device: &SpaDevice,
    state: &mut Element,
    snippet_files: &mut dyn FnMut(&str, &[String]) -> Vec<SnippetFile>,
) -> Answer {
    let now = call.now;
    let who = format!("SPA {} {} ({})", device.model, device.mac, call.origin.ip);
    if config.times.forcetrust {
        // only a device whose certificate names it gets anything, not even the rule to the
        // HTTPS URL: an SPA without a trusted certificate is not ours (research notes §4)
        let verdict = if call.https_on(config.times.httpsport.as_deref()) {
            crate::certs::check_spa_identity(&call.tls, &device.mac, &device.serial, config)
        } else {
            Err("plain HTTP, no client certificate (point the phone's Profile_Rule at the HTTPS URL)".to_string())
        };
        if let Err(refusal) = verdict {
            return Answer {
                status: 403,
                content_type: CONTENT_TYPE_TEXT,
                body: "# forcetrust: no trusted client certificate for this device\r\n".into(),
                log: Some(format!("{who}: forcetrust refused: {refusal} - 403, state left unchanged")),
                notes: Vec::new(),
                save: false,
            };
        }
    }
    let refuse = |message: String| Answer {
        status: 404,
        content_type: CONTENT_TYPE_TEXT,
        body: format!("# {message}\r\n"),
        log: Some(format!("{who}: {message} - 404")),
        notes: vec![format!("{message} - nothing delivered")],
        save: true,
    };
    state.set_attr("seen", now.to_compact_string());
    state::mark_request(state, now);
    let classes = device_classes(config, &device.model);
    {
        let d = state::device(state);
        d.set_attr("sn", device.mac.clone());
        d.set_attr("type", device.model.clone());
        d.set_attr("vendor", device.vendor.as_str());
        d.set_attr("serial", device.serial.clone());
        d.set_attr("version", device.firmware.clone());
        d.set_attr("classes", classes.join(", "));
        d.set_attr("ip", call.origin.ip.clone());
        d.set_attr("rp", if call.origin.reverse_proxied { "true" } else { "false" });
        d.set_attr("proxy", call.origin.proxy.clone());
    }

    let phase_index = match call.arg("phase").filter(|p| !p.is_empty()) {
        None => 0,
        Some(p) => match config.phases.iter().position(|phase| phase.id == p) {
            Some(i) => i,
            None => return refuse(format!("invalid phase: '{}'", super::shown(p))),
        },
    };
    let phase = &config.phases[phase_index];
    let next_phase = config.phases.get(phase_index + 1);
    let environments = match expand_environments(config, call.arg("env")) {
        Ok(list) => list,
        Err(unknown) => return refuse(format!("invalid environment: '{}'", super::shown(&unknown))),
    };
    state::device(state).set_attr("phase", phase.id.clone());
    state::device(state).set_attr("environments", environments.join(", "));

    let mut profile = Profile::new();
    profile.comment(&format!(
        "update-server {} - configuration {} merged into config.xml",
        env!("CARGO_PKG_VERSION"),
        config.user_file
    ));
    profile.comment(&format!(
        "{} {} firmware {} serial {} - phase: {}, nextphase: {}, environment: {}, classes: {}",
        device.model,
        device.mac,
        device.firmware,
        device.serial,
        phase.id,
        next_phase.map_or("", |p| p.id.as_str()),
        environments.join("+"),
        classes.join("+")
    ));

    // the snippets, with the grace rule of the innovaphone ones
    let dir = &config.times.dir;
    let names = snippets::configured_candidates(config, "xml", &phase.files_of, &classes, &device.mac, &environments);
    let files = snippet_files(dir, &names);
    let mut notes = Vec::new();
    if let Some(newest) = files.iter().max_by_key(|f| f.mtime) {
        let age = now - newest.mtime;
        if age < config.times.grace {
            let message = format!(
                "files being updated ({} {age}s old, waiting for at least {}s to expire)",
                newest.display_name, config.times.grace
            );
            // an empty flat-profile changes nothing on the phone; it asks again on its timer
            profile.comment(&format!("{message} - nothing delivered"));
            return Answer {
                status: 200,
                content_type: CONTENT_TYPE_XML,
                body: profile.finish(),
                log: None,
                notes: vec![message],
                save: true,
            };
        }
    }

    // HTTPS first, as for innovaphone devices: only the rule that moves the phone there
    let force_https = config.times.forcehttps || config.times.forcetrust;
    if force_https && !call.https_on(config.times.httpsport.as_deref()) {
        profile.comment("HTTPS required (forcehttps): only the profile rule to the HTTPS URL");
        profile.set("Profile_Rule", &profile_rule(config, call, &phase.id));
        profile.set("Resync_Periodic", &resync_seconds(config).to_string());
        notes.push("HTTPS required (forcehttps): moving the device to its HTTPS URL".to_string());
        return Answer { status: 200, content_type: CONTENT_TYPE_XML, body: profile.finish(), log: None, notes, save: true };
    }

    let mut parsed = Vec::new();
    for file in &files {
        match parse_snippet(&file.display_name, &file.content) {
            Ok(parameters) => parsed.push(parameters),
            Err(e) => return refuse(format!("snippet {e}")),
        }
    }
    let (parameters, dropped) = merge(parsed);
    profile.comment(&format!(
        "snippets: {}",
        if files.is_empty() { "none".to_string() } else { files.iter().map(|f| f.display_name.as_str()).collect::<Vec<_>>().join(" ") }
    ));
    for parameter in &parameters {
        profile.parameter(&parameter.name, &parameter.attrs, parameter.value.as_deref());
    }
    for parameter in &dropped {
        profile.comment(&format!("{} of {} left out: the server sets it", parameter.name, parameter.from));
    }

    // what the server sets
    let following = next_phase.unwrap_or(phase);
    profile.set("Profile_Rule", &profile_rule(config, call, &following.id));
    profile.set("Resync_Periodic", &resync_seconds(config).to_string());
    let mut hop_text = String::new();
    match upgrades::spa_path(&config.upgrades, &device.model) {
        None => profile.comment(&format!("no upgrade path for {}: firmware left as it is", device.model)),
        Some(path) => {
            let upgrade = path.decide(&device.firmware);
            match &upgrade.hop {
                SpaHop::Load { file, via } => {
                    profile.set("Upgrade_Enable", "Yes");
                    profile.set("Upgrade_Rule", &call.absolute(&file.file));
                    hop_text = file.version_text.clone();
                    notes.push(format!(
                        "firmware {} -> {}{} ({})",
                        super::shown(&device.firmware),
                        file.version_text,
                        if *via { ", an intermediate version" } else { "" },
                        file.file
                    ));
                }
                SpaHop::AtTarget => profile.set("Upgrade_Enable", "No"),
                SpaHop::AboveTarget => {
                    profile.comment(&format!("firmware above the target {}: no upgrade", path.target.version_text));
                    profile.set("Upgrade_Enable", "No");
                }
                SpaHop::Undecidable(reason) => {
                    profile.comment(reason);
                    profile.set("Upgrade_Enable", "No");
                    notes.push(reason.clone());
                }
            }
            match upgrade.downgrade_limit {
                DowngradeLimit::Unchanged => {}
                DowngradeLimit::Set(limit) => profile.set("Downgrade_Rev_Limit", limit),
                DowngradeLimit::Clear => profile.set("Downgrade_Rev_Limit", ""),
            }
        }
    }
    let body = profile.finish();
    let limit = profile_limit(&device.model);
    if body.len() > limit {
        return refuse(format!("the profile is {} bytes, over the {} bytes {} loads", body.len(), limit, device.model));
    }

    for file in &files {
        let entry = match state.children.iter().position(|c| c.name == "config" && c.attr("filename") == Some(&file.display_name)) {
            Some(i) => &mut state.children[i],
            None => {
                state.children.push(Element::new("config"));
                let last = state.children.len() - 1;
                &mut state.children[last]
            }
        };
        entry.set_attr("filename", file.display_name.clone());
        entry.set_attr("delivered", now.to_compact_string());
        entry.set_attr("version", file.mtime.to_compact_string());
    }
    {
        let d = state::device(state);
        d.set_attr("hop", hop_text);
        d.set_attr("profile", now.to_compact_string());
    }
    state.set_attr("phase", phase.id.clone());
    state.set_attr("nextphase", next_phase.map_or(String::new(), |p| p.id.clone()));
    // a profile is delivered on every resync: the state's `profile` time says so, the log
    // keeps what changes (the firmware hops, the refusals)
    Answer { status: 200, content_type: CONTENT_TYPE_XML, body, log: None, notes, save: true }
}

/// Serves an identified SPA device: its state file `status/<mac>.xml` locked for the request
/// (as innovaphone states), the snippets read through `cache`, the state saved atomically.
pub fn serve(root: &Path, config: &Config, call: &Call, device: &SpaDevice, cache: &FileCache) -> Answer {
    let mut lookup =
        |dir: &str, names: &[String]| -> Vec<SnippetFile> { crate::script::existing_snippets(cache, root, dir, names) };
    let Some(status) = &config.status else {
        let answer = decide(config, call, device, &mut Element::new("state"), &mut lookup);
        if let Some(line) = &answer.log {
            eprintln!("update-server: {line}");
        }
        return answer;
    };
    let file = format!("{}.xml", device.mac);
    let mut locked = match LockedState::open(&root.join(&status.dir).join(&file)) {
        Ok(locked) => locked,
        Err(e) => {
            eprintln!("update-server: SPA {}: cannot open device state {}/{file}: {e} - 404", device.mac, status.dir);
            return unreadable_state();
        }
    };
    let damage = locked.damage().map(|damage| format!("device state {file} {damage}; a fresh state replaces it"));
    let mut answer = decide(config, call, device, &mut locked.state, &mut lookup);
    if let Some(line) = &answer.log {
        eprintln!("update-server: {line}");
    }
    if !answer.save {
        return answer;
    }
    let now = call.now;
    state::record(&mut locked.state, now, damage.iter().chain(&answer.notes), status.logkeep);
    if let Err(e) = locked.save() {
        eprintln!("update-server: SPA {}: cannot write device state: {e} - 404", device.mac);
        answer = Answer {
            status: 404,
            content_type: CONTENT_TYPE_TEXT,
            body: "# cannot write the device state\r\n".into(),
            log: None,
            notes: Vec::new(),
            save: false,
        };
        return answer;
    }
    state::cleanup_expired(&root.join(&status.dir), now, status.expire);
    answer
}

/// A 404 for a state file that cannot be opened: nothing is sent rather than a profile the
/// server could not record.
fn unreadable_state() -> Answer {
    Answer {
        status: 404,
        content_type: CONTENT_TYPE_TEXT,
        body: "# cannot open the device state\r\n".into(),
        log: None,
        notes: Vec::new(),
        save: false,
    }
}

/// The answer [`serve`] would give now and what it would change, with nothing written (the
/// state read without a lock).
pub fn preview(root: &Path, config: &Config, call: &Call, device: &SpaDevice, cache: &FileCache) -> (Answer, Vec<String>) {
    let mut lookup =
        |dir: &str, names: &[String]| -> Vec<SnippetFile> { crate::script::existing_snippets(cache, root, dir, names) };
    let mut changes = Vec::new();
    let Some(status) = &config.status else {
        let answer = decide(config, call, device, &mut Element::new("state"), &mut lookup);
        changes.extend(answer.log.iter().map(|line| format!("server log: {line}")));
        return (answer, changes);
    };
    let name = format!("{}/{}.xml", status.dir, device.mac);
    let (mut state, damage, on_disk) = match state::read_unlocked(&root.join(&name)) {
        Ok(read) => read,
        Err(e) => {
            return (unreadable_state(), vec![format!("server log: SPA {}: cannot open device state {name}: {e} - 404", device.mac)]);
        }
    };
    let damage = damage.map(|damage| format!("device state {}.xml {damage}; a fresh state replaces it", device.mac));
    let answer = decide(config, call, device, &mut state, &mut lookup);
    changes.extend(answer.log.iter().map(|line| format!("server log: {line}")));
    if !answer.save {
        changes.push("the state file stays as it is".into());
        return (answer, changes);
    }
    state::record(&mut state, call.now, damage.iter().chain(&answer.notes), status.logkeep);
    let lines = state::changed_lines(&on_disk, &state::render(&state));
    changes.push(if lines.is_empty() { format!("{name}: unchanged") } else { format!("{name}:") });
    changes.extend(lines.into_iter().map(|l| format!("  {l}")));
    (answer, changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spa::{identify, Identification};

    const NOW: i64 = 1_700_000_000;
    const PATH: &str = "<upgrades><path models='SPA301 SPA303 SPA501G SPA502G SPA504G SPA508G SPA509G' \
        version='7.6.1' file='fw/cisco/spa50x-30x-7-6-1.bin' downgradelimit='7.6.1'>\
        <via version='7.5.2b' file='fw/cisco/spa50x-30x-7-5-2b.bin'/></path></upgrades>";

    fn config(user: &str) -> Config {
        let defaults = Element::parse_trusted(include_str!("../../config.xml")).unwrap();
        crate::config::build(defaults, &Element::parse(user).unwrap(), "user-config.xml").unwrap()
    }

    fn call(query: &str) -> Call {
        Call {
            args: crate::urlenc::parse_query(query),
            base_url: "http://up.example.com/update".into(),
            host: "up.example.com".into(),
            script_name: "/update/update.php".into(),
            https: false,
            server_port: "80".into(),
            origin: crate::device::Origin { ip: "10.0.0.5".into(), reverse_proxied: false, proxy: String::new() },
            tls: Default::default(),
            now: NOW,
        }
    }

    fn device(agent: &str) -> SpaDevice {
        match identify(Some(agent), Some("58bfea1104e6")) {
            Identification::Spa(device) => device,
            other => panic!("{other:?}"),
        }
    }

    fn run(config: &Config, query: &str, agent: &str, files: &[(&str, i64, &str)]) -> (Answer, Element, usize) {
        let mut state = Element::new("state");
        let mut asked = 0;
        let mut lookup = |dir: &str, names: &[String]| {
            asked += 1;
            names
                .iter()
                .filter_map(|name| files.iter().find(|(n, _, _)| n == name))
                .map(|(name, mtime, text)| SnippetFile {
                    name: name.to_string(),
                    display_name: format!("{dir}/{name}"),
                    mtime: *mtime,
                    content: std::sync::Arc::new(text.as_bytes().to_vec()),
                })
                .collect()
        };
        let answer = decide(config, &call(query), &device(agent), &mut state, &mut lookup);
        (answer, state, asked)
    }

    const OLD: i64 = NOW - 86_400;
    const LINKSYS_737: &str = "Linksys/SPA504G-7.3.7 (58BFEA1104E6)(CCQ16380FYH)";

    #[test]
    fn snippets_merge_in_candidate_order_and_the_server_has_the_last_word() {
        let c = config(&format!("<config><master info=''/>{PATH}</config>"));
        let files = [
            ("update-all-default.xml", OLD, "<flat-profile><Line_Enable_1_>Yes</Line_Enable_1_><Station_Name>all</Station_Name>\
                <Dial_Plan_1_ ua='ro'/><GPP_A></GPP_A><Upgrade_Rule>http://elsewhere/x.bin</Upgrade_Rule></flat-profile>"),
            ("update-spa50x-default.xml", OLD, "<flat-profile>\n  <Station_Name group='Phone/General'> a &lt;&amp;&gt; \"b\" </Station_Name>\n</flat-profile>"),
            ("update-spa504g-58_bf_ea_11_04_e6.xml", OLD, "<flat-profile><User_ID_1_>4711</User_ID_1_></flat-profile>"),
        ];
        let (answer, state, _) = run(&c, "", LINKSYS_737, &files);
        assert_eq!((answer.status, answer.content_type), (200, "text/xml"));
        let body = &answer.body;
        assert!(body.starts_with("<flat-profile>\n") && body.ends_with("</flat-profile>\n"), "{body}");
        // the later candidate's value, in the earlier one's place
        let position = |needle: &str| body.find(needle).unwrap_or_else(|| panic!("{needle} missing in {body}"));
        assert!(position("<Line_Enable_1_>Yes</Line_Enable_1_>") < position("<Station_Name group=\"Phone/General\">a &lt;&amp;&gt; \"b\"</Station_Name>"));
        assert!(!body.contains(">all<"));
        // an empty-element tag stays one (the phone keeps the value), an empty pair sets it empty
        assert!(body.contains("<Dial_Plan_1_ ua=\"ro\"/>") && body.contains("<GPP_A></GPP_A>"));
        assert!(body.contains("<User_ID_1_>4711</User_ID_1_>"));
        // the snippet's Upgrade_Rule is left out; the server's is the path's via
        assert!(!body.contains("elsewhere"));
        assert!(body.contains("<Profile_Rule>http://up.example.com/update/update.php?mac=$MA&amp;phase=update</Profile_Rule>"), "{body}");
        assert!(body.contains("<Resync_Periodic>900</Resync_Periodic>"));
        assert!(body.contains("<Upgrade_Enable>Yes</Upgrade_Enable>\n  <Upgrade_Rule>http://up.example.com/update/fw/cisco/spa50x-30x-7-5-2b.bin</Upgrade_Rule>"));
        // a via below the limit: the limit is cleared, not left to stop the path
        assert!(body.contains("<Downgrade_Rev_Limit></Downgrade_Rev_Limit>"));
        assert!(body.is_ascii());
        let d = state.child("device").unwrap();
        assert_eq!(
            [d.attr("sn"), d.attr("type"), d.attr("serial"), d.attr("version"), d.attr("hop"), d.attr("phase")],
            [Some("58-bf-ea-11-04-e6"), Some("SPA504G"), Some("CCQ16380FYH"), Some("7.3.7"), Some("7.5.2b"), Some("update")]
        );
        assert_eq!(d.attr("classes"), Some("spa50x, spa504g"));
        assert!(answer.save && answer.notes.iter().any(|n| n.contains("7.5.2b")), "{:?}", answer.notes);
        assert_eq!(state.children_named("config").count(), 3);
    }

    #[test]
    fn the_threads_walk() {
        let c = config(&format!("<config><master info=''/>{PATH}</config>"));
        for (agent, rule, limit) in [
            (LINKSYS_737, Some("spa50x-30x-7-5-2b.bin"), ""),
            ("Linksys/SPA504G-7.4.3a (58BFEA1104E6)(CCQ16380FYH)", Some("spa50x-30x-7-5-2b.bin"), ""),
            ("Cisco/SPA504G-7.5.2b (58BFEA1104E6)(CCQ16380FYH)", Some("spa50x-30x-7-6-1.bin"), "7.6.1"),
            ("Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)", None, "7.6.1"),
        ] {
            let (answer, _, _) = run(&c, "mac=58bfea1104e6", agent, &[]);
            let body = &answer.body;
            match rule {
                Some(file) => assert!(body.contains(&format!("<Upgrade_Enable>Yes</Upgrade_Enable>\n  <Upgrade_Rule>http://up.example.com/update/fw/cisco/{file}</Upgrade_Rule>")), "{agent}: {body}"),
                None => assert!(body.contains("<Upgrade_Enable>No</Upgrade_Enable>") && !body.contains("Upgrade_Rule"), "{agent}: {body}"),
            }
            assert!(body.contains(&format!("<Downgrade_Rev_Limit>{limit}</Downgrade_Rev_Limit>")), "{agent}: {body}");
        }
    }

    #[test]
    fn an_undecidable_version_gets_no_upgrade_a_comment_and_a_message() {
        let c = config(&format!("<config><master info=''/>{PATH}</config>"));
        let (answer, _, _) = run(&c, "", "Cisco/SPA504G-7.5.2b(XU1) (58BFEA1104E6)(CCQ16380FYH)", &[]);
        assert!(answer.body.contains("<Upgrade_Enable>No</Upgrade_Enable>") && !answer.body.contains("Upgrade_Rule"), "{}", answer.body);
        assert!(answer.body.contains("<!-- no upgrade: "), "{}", answer.body);
        assert!(answer.notes.iter().any(|n| n.starts_with("no upgrade: ")), "{:?}", answer.notes);
        // a model without a path: nothing about firmware at all
        let (answer, _, _) = run(&c, "", "Cisco/SPA525G-7.4.7 (CBT141900G7)", &[]);
        assert!(!answer.body.contains("Upgrade_"), "{}", answer.body);
    }

    #[test]
    fn phases_environments_and_https_shape_the_profile_rule() {
        let c = config(
            "<config><master info=''/><phases><phase id='staging' seq='100'/></phases>\
             <environments><environment id='berlin'/></environments></config>",
        );
        let (answer, state, _) = run(&c, "phase=staging&env=berlin", LINKSYS_737, &[("staging-all-berlin.xml", OLD, "<flat-profile><A>1</A></flat-profile>")]);
        assert!(answer.body.contains("<A>1</A>"), "{}", answer.body);
        assert!(answer.body.contains("update.php?mac=$MA&amp;phase=update&amp;env=berlin</Profile_Rule>"), "{}", answer.body);
        assert_eq!((state.attr("phase"), state.attr("nextphase")), (Some("staging"), Some("update")));
        let (answer, _, _) = run(&c, "phase=nope", LINKSYS_737, &[]);
        assert_eq!((answer.status, answer.save), (404, true));
        assert!(answer.body.starts_with('#') && answer.log.is_some());
        let (answer, _, _) = run(&c, "env=nowhere", LINKSYS_737, &[]);
        assert_eq!(answer.status, 404);

        let c = config("<config><master info=''/><times forcehttps='true' httpsport='8443'/></config>");
        let (answer, _, _) = run(&c, "", LINKSYS_737, &[("update-all-default.xml", OLD, "<flat-profile><A>1</A></flat-profile>")]);
        assert!(answer.body.contains("<Profile_Rule>https://up.example.com:8443/update/update.php?mac=$MA&amp;phase=update</Profile_Rule>"), "{}", answer.body);
        assert!(!answer.body.contains("<A>"), "only the move to HTTPS: {}", answer.body);
        let c = config("<config><master info=''/><times forcetrust='true'/><customcerts dir='certs' CAname='CN=x'/></config>");
        let (answer, state, asked) = run(&c, "", LINKSYS_737, &[]);
        assert_eq!((answer.status, answer.save, asked), (403, false, 0));
        assert!(state.children.is_empty());
    }

    /// With forcetrust, a verified certificate whose `S=` is the MAC or whose `L=` is the serial,
    /// issued by a CA of `CAname`, gets the profile; any other certificate, and plain HTTP, a
    /// 403 that leaves the state alone.
    #[test]
    fn forcetrust_serves_only_the_certificate_that_names_the_phone() {
        let c = config("<config><master info=''/><times forcetrust='true'/><customcerts dir='certs' CAname='Sipura CA Client Root'/></config>");
        let identity = |state: Option<&str>, locality: Option<&str>, issuer: &str, verify: &str| crate::certs::TlsIdentity {
            subject_state: state.map(String::from),
            subject_locality: locality.map(String::from),
            issuer: Some(issuer.into()),
            verify: Some(verify.into()),
            ..Default::default()
        };
        let served = |tls: crate::certs::TlsIdentity| {
            let mut https = call("");
            https.https = true;
            https.server_port = "443".into();
            https.tls = tls;
            let mut state = Element::new("state");
            let answer = decide(&c, &https, &device(LINKSYS_737), &mut state, &mut |_: &str, _: &[String]| Vec::new());
            if answer.status == 403 {
                assert!(!answer.save && state.children.is_empty() && state.attrs.is_empty(), "{answer:?}");
                assert!(answer.log.as_deref().is_some_and(|l| l.contains("forcetrust refused")), "{answer:?}");
            }
            answer.status
        };
        let root = "Sipura CA Client Root";
        assert_eq!(served(identity(Some("58bfea1104e6"), Some("CCQ16380FYH"), root, "SUCCESS")), 200);
        assert_eq!(served(identity(Some("58:BF:EA:11:04:E6"), None, root, "SUCCESS")), 200);
        assert_eq!(served(identity(Some("000e08abcdef"), Some("ccq16380fyh"), root, "SUCCESS")), 200);
        assert_eq!(served(identity(Some("000e08abcdef"), Some("88012BA01234"), root, "SUCCESS")), 403);
        assert_eq!(served(identity(Some("ciscogeneric"), Some("ciscogeneric"), root, "SUCCESS")), 403);
        assert_eq!(served(identity(Some("58bfea1104e6"), None, "Some Other CA", "SUCCESS")), 403);
        assert_eq!(served(identity(Some("58bfea1104e6"), None, root, "FAILED:unable to verify")), 403);
        assert_eq!(served(crate::certs::TlsIdentity::default()), 403);

        // a generic certificate only where the operator names it the wildcard
        let c = config("<config><master info=''/><times forcetrust='true'/><customcerts dir='certs' CAname='Sipura CA Client Root' CAwildcard='ciscogeneric'/></config>");
        let mut https = call("");
        https.https = true;
        https.server_port = "443".into();
        https.tls = identity(Some("ciscogeneric"), Some("ciscogeneric"), root, "SUCCESS");
        let answer = decide(&c, &https, &device(LINKSYS_737), &mut Element::new("state"), &mut |_: &str, _: &[String]| Vec::new());
        assert_eq!(answer.status, 200, "{answer:?}");
    }

    #[test]
    fn grace_holds_everything_back() {
        let c = config("<config><master info=''/><times interval='60'/></config>");
        let files = [("update-all-default.xml", OLD, "<flat-profile><A>1</A></flat-profile>"), ("update-spa50x-default.xml", NOW - 10, "<flat-profile><B>2</B></flat-profile>")];
        let (answer, _, _) = run(&c, "", LINKSYS_737, &files);
        assert_eq!(answer.status, 200);
        assert!(!answer.body.contains("<A>") && !answer.body.contains("Profile_Rule"), "{}", answer.body);
        assert!(answer.notes[0].starts_with("files being updated (scripts/update-spa50x-default.xml 10s old"), "{:?}", answer.notes);
        let (answer, _, _) = run(&c, "", LINKSYS_737, &files[..1]);
        assert!(answer.body.contains("<Resync_Periodic>3600</Resync_Periodic>"), "{}", answer.body);
    }

    #[test]
    fn bad_snippets_and_oversized_profiles_send_nothing() {
        let c = config("<config><master info=''/></config>");
        for bad in [
            "<flat-profile><Station_Name>caf\u{e9}</Station_Name></flat-profile>",
            "<flat-profile><A><B>1</B></A></flat-profile>",
            "<other><A>1</A></other>",
            "<flat-profile><A>1</A>",
            "<flat-profile>loose text<A>1</A></flat-profile>",
            "<!DOCTYPE x [<!ENTITY a 'b'>]><flat-profile><A>&a;</A></flat-profile>",
            "<flat-profile><A-B>1</A-B></flat-profile>",
        ] {
            let (answer, _, _) = run(&c, "", LINKSYS_737, &[("update-all-default.xml", OLD, bad)]);
            assert_eq!((answer.status, answer.content_type), (404, CONTENT_TYPE_TEXT), "{bad}");
            assert!(answer.body.starts_with("# snippet scripts/update-all-default.xml: ") && answer.log.is_some() && !answer.notes.is_empty(), "{bad}");
        }
        // PAP2T: below 64 kB, whole or not at all
        let big = format!("<flat-profile><A>{}</A></flat-profile>", "x".repeat(70_000));
        let pap2t = "Linksys/PAP2T-5.1.6 (88012BA01234)";
        let mut state = Element::new("state");
        let mut lookup = |dir: &str, names: &[String]| {
            names
                .iter()
                .filter(|n| n.as_str() == "update-pap2t-default.xml")
                .map(|name| SnippetFile {
                    name: name.clone(),
                    display_name: format!("{dir}/{name}"),
                    mtime: OLD,
                    content: std::sync::Arc::new(big.as_bytes().to_vec()),
                })
                .collect()
        };
        let Identification::Spa(device) = identify(Some(pap2t), Some("000e08abcdef")) else { panic!() };
        let answer = decide(&c, &call(""), &device, &mut state, &mut lookup);
        assert_eq!(answer.status, 404);
        assert!(answer.notes[0].contains("over the 65535 bytes PAP2T loads"), "{:?}", answer.notes);
        // the same profile for a model without a limit is sent
        let answer = decide(&c, &call(""), &device_of_spa942(), &mut Element::new("state"), &mut |_: &str, _: &[String]| {
            vec![SnippetFile { name: "x".into(), display_name: "scripts/x".into(), mtime: OLD, content: std::sync::Arc::new(big.as_bytes().to_vec()) }]
        });
        assert_eq!(answer.status, 200);
    }

    fn device_of_spa942() -> SpaDevice {
        match identify(Some("Linksys/SPA-942-6.1.5(a) (88019FA42805)"), Some("000e08abcdef")) {
            Identification::Spa(device) => device,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn comments_cannot_be_closed_early_and_values_stay_ascii() {
        let mut profile = Profile::new();
        profile.comment("a -- b --> c\u{e9}-");
        profile.set("X", "\u{e9}<");
        let text = profile.finish();
        assert!(text.contains("<!-- a - - b - -> c? -->"), "{text}");
        assert!(text.contains("<X>?&lt;</X>") && text.is_ascii(), "{text}");
    }
}
