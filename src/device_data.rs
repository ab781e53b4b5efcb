//! Requests in which a device hands us data: configuration backups, query answers and variable
//! dumps (`update.php?mode=backup|query|vardump`). Every argument is checked, the device's TLS
//! identity too when `forcetrust` is on, before anything is written.

use compact_str::{CompactString, ToCompactString};
use crate::certs::{self, TlsIdentity};
use crate::config::Config;
use crate::state::{self, LockedState};
use std::path::Path;

/// The answer to a device data request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

fn answer(status: u16, lines: &[String]) -> Answer {
    let mut body = String::new();
    for line in lines {
        body.push_str("# ");
        body.push_str(line);
        body.push_str("\r\n");
    }
    Answer { status, body }
}

fn refuse(status: u16, message: impl Into<String>) -> Answer {
    answer(status, &[format!("{} - exit", message.into())])
}

/// Query and vardump bodies are small XML or `vars read` output.
pub const SMALL_BODY_LIMIT: usize = 1024 * 1024;

/// What a data request needs besides its mode.
pub struct DataRequest<'a> {
    pub args: &'a [(CompactString, CompactString)],
    pub method: &'a str,
    pub body: &'a [u8],
    pub tls: &'a TlsIdentity,
    pub now: i64,
}

impl DataRequest<'_> {
    fn arg(&self, name: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
}

/// The largest body `mode` takes: `backup/@maxsize` for backups, [`SMALL_BODY_LIMIT`] for
/// query answers and variable dumps. The front doors learn it before they read the body.
pub fn body_limit(mode: &str, config: &Config) -> usize {
    if mode == "backup" {
        config.backup.as_ref().map_or(8 << 20, |b| b.maxsize)
    } else {
        SMALL_BODY_LIMIT
    }
}

pub fn handle(mode: &str, root: &Path, config: &Config, request: &DataRequest) -> Answer {
    if !matches!(request.method, "PUT" | "POST") {
        return refuse(405, format!("mode={mode} takes the data in a PUT request"));
    }
    let Some(serial) = request.arg("sn") else {
        return refuse(400, "missing argument sn");
    };
    // an innovaphone hwid names its device: a request naming another device's hwid must not
    // touch that device's backups (nor anything else), whoever sends it
    if let Some(hwid) = request.arg("hwid") {
        if crate::device::hwid_binding(hwid, serial) == crate::device::HwidBinding::Contradicts {
            return refuse(403, format!("hwid '{hwid}' does not belong to serial '{serial}'"));
        }
    }
    let limit = body_limit(mode, config);
    if request.body.len() > limit {
        return refuse(413, format!("body of {} bytes is larger than the {limit} bytes allowed", request.body.len()));
    }
    let Ok(body) = std::str::from_utf8(request.body) else {
        return refuse(400, "body is not UTF-8 text");
    };
    let answer = match mode {
        "backup" => backup(root, config, request, serial, body),
        "query" => query(root, config, request, serial, body),
        _ => vardump(root, config, request, serial, body),
    };
    // accepted device uploads, like polls, retire the state files of devices gone for
    // status/@expire (a refused request changes nothing)
    if let Some(status) = config.status.as_ref().filter(|_| answer.status == 200) {
        state::cleanup_expired(&root.join(&status.dir), request.now, status.expire);
    }
    answer
}

/// Opens the state of `serial`, refusing when `forcetrust` is on and the client certificate
/// does not name this device (checked before anything is written).
fn open_state(root: &Path, config: &Config, request: &DataRequest, serial: &str, hwid: Option<&str>) -> Result<Option<LockedState>, Answer> {
    let state = match &config.status {
        Some(status) => {
            let path = root.join(&status.dir).join(format!("{serial}.xml"));
            Some(LockedState::open(&path).map_err(|e| refuse(500, format!("cannot open device state: {e}")))?)
        }
        None => None,
    };
    if config.times.forcetrust {
        let known_hwid = state.as_ref().and_then(|s| s.state.child("device")).and_then(|d| d.attr("hwid")).map(String::from);
        let hwid = hwid.map(String::from).or(known_hwid).unwrap_or_default();
        if let Err(refusal) = certs::check_identity(request.tls, serial, &hwid, config) {
            return Err(refuse(403, format!("forcetrust: {refusal}")));
        }
    }
    Ok(state)
}

/// Saves the state; `note` goes into the device's log (routine uploads log nothing, so a
/// device that uploads on every poll does not grow its state file).
fn save(state: Option<LockedState>, now: i64, logkeep: i64, note: Option<&str>) -> Result<(), Answer> {
    let Some(mut locked) = state else { return Ok(()) };
    locked.state.set_attr("seen", now.to_compact_string());
    state::mark_request(&mut locked.state, now);
    if let Some(note) = note {
        state::log(&mut locked.state, now, note);
    }
    state::prune_log(&mut locked.state, now, logkeep);
    locked.save().map_err(|e| match e {
        too_large @ state::SaveError::TooLarge { .. } => refuse(413, format!("nothing stored: {too_large}")),
        state::SaveError::Io(e) => refuse(500, format!("cannot write device state: {e}")),
    })
}

fn logkeep(config: &Config) -> i64 {
    config.status.as_ref().map_or(0, |s| s.logkeep)
}

fn backup(root: &Path, config: &Config, request: &DataRequest, serial: &str, body: &str) -> Answer {
    let Some(backup) = &config.backup else {
        return refuse(404, "backups are not enabled in the configuration");
    };
    let Some(hwid) = request.arg("hwid") else {
        return refuse(400, "missing argument hwid");
    };
    let mut state = match open_state(root, config, request, serial, Some(hwid)) {
        Ok(state) => state,
        Err(answer) => return answer,
    };
    let outcome = match crate::backup::store(root, backup, hwid, body, request.now) {
        Ok(outcome) => outcome,
        Err(e) => return refuse(500, format!("cannot store backup: {e}")),
    };
    let relative = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    let (stamp, note, worth_logging) = match &outcome {
        crate::backup::Outcome::Empty => return answer(200, &["empty backup discarded".into()]),
        crate::backup::Outcome::Unchanged { newest, time } => {
            (*time, format!("no change (newest {}) {time}", relative(newest)), false)
        }
        crate::backup::Outcome::Stored { path, removed } => {
            let mut note = format!("backup stored as {}", relative(path));
            for old in removed {
                note.push_str(&format!(", removed {}", relative(old)));
            }
            (request.now, note, true)
        }
    };
    if let Some(locked) = state.as_mut() {
        let device = state::device(&mut locked.state);
        device.set_attr("sn", serial);
        device.set_attr("backup", stamp.to_compact_string());
    }
    match save(state, request.now, logkeep(config), worth_logging.then_some(note.as_str())) {
        Ok(()) => answer(200, &[note]),
        Err(answer) => answer,
    }
}

fn query(root: &Path, config: &Config, request: &DataRequest, serial: &str, body: &str) -> Answer {
    let Some(id) = request.arg("id") else {
        return refuse(400, "missing argument id");
    };
    if !config.queries.iter().any(|q| q.id == id) {
        return refuse(400, "id is not one of the configured queries");
    }
    let parsed = match crate::queries::parse_answer(body) {
        Ok(parsed) => parsed,
        Err(refusal @ crate::queries::Refusal::Dtd) => return refuse(400, refusal.to_string()),
        Err(refusal @ crate::queries::Refusal::TooLarge(_)) => return refuse(413, refusal.to_string()),
        // the old server answered a malformed answer with a comment and status 200; devices
        // do not look at the status, so we keep that (conformance case query-put-invalid-xml)
        Err(refusal) => return refuse(200, refusal.to_string()),
    };
    let mut state = match open_state(root, config, request, serial, request.arg("hwid")) {
        Ok(state) => state,
        Err(answer) => return answer,
    };
    let Some(locked) = state.as_mut() else {
        return refuse(404, "device state (status/@dir) is not enabled in the configuration");
    };
    // a damaged state file was replaced by a fresh state: say so (it is in the log as well)
    let damage = locked.damage().map(|d| format!("device state {serial}.xml {d}; a fresh state replaces it"));
    state::device(&mut locked.state).set_attr("sn", serial);
    crate::queries::store_answer(&mut locked.state, id, parsed, request.now);
    // answers are the bulk of a state: one may fill it up to the cap, beyond that it is
    // refused and the stored state stays as it was
    locked.limit_size(state::MAX_STATE_BYTES);
    let note = format!("queries {id} for {serial} saved");
    // devices answer their queries on every poll: the answer itself is the record
    match save(state, request.now, logkeep(config), None) {
        Ok(()) => answer(200, &damage.into_iter().chain([note]).collect::<Vec<_>>()),
        Err(answer) => answer,
    }
}

fn vardump(root: &Path, config: &Config, request: &DataRequest, serial: &str, body: &str) -> Answer {
    let Some(customcerts) = &config.customcerts else {
        return refuse(404, "certificate handling (customcerts/@dir) is not enabled in the configuration");
    };
    let Some(var) = request.arg("var") else {
        return refuse(400, "missing argument var");
    };
    let Some((file_name, procedure, pem_too)) = certs::vardump_target(var, serial) else {
        return refuse(400, "var must be X509/REQUEST or X509/REQUESTERROR");
    };
    let cert_dir = customcerts.attr("dir").unwrap_or("certs").trim_end_matches('/').to_string();
    let expected_file = format!("{cert_dir}/{file_name}");
    if request.arg("file").is_some_and(|f| f != expected_file) {
        return refuse(400, format!("file must be {expected_file}"));
    }
    match (request.arg("proc"), procedure) {
        (None, _) | (Some("var2bin"), certs::VarProc::Var2Bin) => {}
        _ => return refuse(400, "proc must be var2bin for X509/REQUEST and absent otherwise"),
    }
    match request.arg("postproc") {
        None => {}
        Some("createPemFromDer") if pem_too => {}
        Some(_) => return refuse(400, "postproc must be createPemFromDer for X509/REQUEST and absent otherwise"),
    }
    let Some(value) = certs::variable_value(body, var) else {
        return answer(200, &[format!("{var} not in the uploaded variables - nothing stored")]);
    };
    let data = match procedure {
        certs::VarProc::Plain => value.as_bytes().to_vec(),
        certs::VarProc::Var2Bin => match certs::hex_to_bytes(value) {
            Some(bytes) => bytes,
            None => return refuse(400, format!("{var} is not hex")),
        },
    };
    let mut state = match open_state(root, config, request, serial, request.arg("hwid")) {
        Ok(state) => state,
        Err(answer) => return answer,
    };
    let dir = root.join(&cert_dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return refuse(500, format!("cannot create {cert_dir}: {e}"));
    }
    let target = dir.join(&file_name);
    if let Err(e) = state::write_atomically(&target, &data) {
        return refuse(500, format!("cannot write {expected_file}: {e}"));
    }
    let mut lines = vec![format!("uploaded {expected_file} ({} bytes)", data.len())];
    if pem_too && request.arg("postproc").is_some() {
        let pem_path = target.with_extension("pem");
        if let Err(e) = state::write_atomically(&pem_path, certs::pem("CERTIFICATE REQUEST", &data).as_bytes()) {
            return refuse(500, format!("cannot write {}: {e}", pem_path.display()));
        }
        lines.push("sucessfully post-processed (with 'createPemFromDer')".into());
    }
    if let Some(locked) = state.as_mut() {
        let attribute = format!("var-{}", var.to_lowercase().replace('/', "-"));
        let device = state::device(&mut locked.state);
        device.set_attr("sn", serial);
        device.set_attr(&attribute, request.now.to_compact_string());
    }
    match save(state, request.now, logkeep(config), Some(&lines[0])) {
        Ok(()) => answer(200, &lines),
        Err(answer) => answer,
    }
}
