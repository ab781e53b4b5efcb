//! The update script (SPEC §3): what a polling device is told to do, and what is remembered
//! about it. [`decide`] holds the decisions; this module gathers what they look up, holds the
//! device's state lock, and applies what they decided.

pub mod decide;
pub mod firmware;
pub mod output;
pub mod rewrite;
pub mod snippets;

use compact_str::CompactString;
use crate::certs;
use crate::config::{Config, Master};
use crate::device::Origin;
use crate::state::{self, LockedState};
use crate::xml::Element;
use decide::{Decision, Ending, FileAction, Lookups, SnippetFile};
use output::Script;
use std::path::Path;

/// What the web server told us about the request, beyond its arguments.
#[derive(Debug, Clone)]
pub struct Call {
    /// Request arguments in their order.
    pub args: Vec<(CompactString, CompactString)>,
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

/// Runs the update script for one device request; snippet files are read through `files`.
pub fn run(root: &Path, config: &Config, call: &Call, files: &crate::filecache::FileCache) -> Outcome {
    let mut script = new_script(config);
    let mut lookups = Disk { root, call, file_cache: files, master_from_cache_only: false };
    let serial = call.arg("sn").unwrap_or_default();
    // a request without the standard arguments reads and writes no state
    let mut locked = None;
    let mut scratch = Element::new("state");
    if let (false, Some(status)) = (decide::lacks_arguments(call), &config.status) {
        match LockedState::open(&state::device_file(root, &status.dir, serial)) {
            Ok(state) => {
                if let Some(damage) = state.damage() {
                    // the poll goes on with a fresh state (see LockedState::open); the note
                    // also starts the fresh state's log
                    script.note(format!("device state {serial}.xml {damage}; a fresh state replaces it"));
                }
                locked = Some(state);
            }
            Err(e) => return bailout(script, &format!("cannot open device state {}/{serial}.xml: {e}", status.dir)),
        }
    }
    let state = locked.as_mut().map_or(&mut scratch, |l| &mut l.state);
    let decision = decide::decide(config, call, state, &mut lookups, &mut script);
    apply(root, config, call, decision, locked, script)
}

/// A script that starts as every answer does: which configuration it comes from.
fn new_script(config: &Config) -> Script {
    let mut script = Script::new();
    script.comment_pieces(&[
        concat!("update-server ", env!("CARGO_PKG_VERSION"), " - configuration "),
        &config.user_file,
        " merged into config.xml",
    ]);
    script
}

/// What a poll would be answered and what it would change, found without changing anything.
#[derive(Debug, Clone)]
pub struct Preview {
    pub outcome: Outcome,
    /// The state file's changed lines, the certificate files, the log line, in words.
    pub changes: Vec<String>,
}

/// The update script for `call` as [`run`] would answer it now, with nothing written: the state
/// is read without a lock, the master only from its cache, and what [`apply`] would do is told
/// instead of done. A dynamic program runs as for a poll (its lines are part of the answer).
pub fn preview(root: &Path, config: &Config, call: &Call, files: &crate::filecache::FileCache) -> Preview {
    let mut script = new_script(config);
    let mut lookups = Disk { root, call, file_cache: files, master_from_cache_only: true };
    let serial = call.arg("sn").unwrap_or_default();
    let mut changes = Vec::new();
    let mut state = Element::new("state");
    let mut on_disk = String::new();
    let state_name = config.status.as_ref().map(|status| format!("{}/{serial}.xml", status.dir));
    if let (false, Some(name)) = (decide::lacks_arguments(call), &state_name) {
        match state::read_unlocked(&root.join(name)) {
            Ok((read, damage, text)) => {
                if let Some(damage) = damage {
                    script.note(format!("device state {serial}.xml {damage}; a fresh state replaces it"));
                }
                (state, on_disk) = (read, text);
            }
            Err(e) => {
                let message = format!("cannot open device state {name}: {e}");
                return Preview { outcome: bailout_outcome(script, &message), changes: vec![format!("server log: {message}")] };
            }
        }
    }
    let decision = decide::decide(config, call, &mut state, &mut lookups, &mut script);
    if let Some(line) = &decision.log {
        changes.push(format!("server log: {line}"));
    }
    if let Some(customcerts) = &config.customcerts {
        let dir = customcerts.attr("dir").unwrap_or("certs");
        for action in &decision.file_actions {
            changes.push(match action {
                FileAction::Remove(file) => format!("remove {dir}/{}", file.file_name(serial)),
                FileAction::WritePemFromDer => format!(
                    "write {dir}/{} from {dir}/{}",
                    certs::RequestFile::Pem.file_name(serial),
                    certs::RequestFile::Der.file_name(serial)
                ),
            });
        }
    }
    let outcome = match decision.ending {
        Ending::Bailout(message) => {
            changes.push(format!("server log: {message}"));
            changes.push("the state file stays as it is".into());
            bailout_outcome(script, &message)
        }
        Ending::Untouched => {
            changes.push("the state file stays as it is".into());
            Outcome { status: 200, body: script.into_text() }
        }
        Ending::Save => {
            if let (Some(name), Some(status)) = (&state_name, &config.status) {
                state::record(&mut state, call.now, &script.notes, status.logkeep);
                let lines = state::changed_lines(&on_disk, &state::render(&state));
                changes.push(if lines.is_empty() { format!("{name}: unchanged") } else { format!("{name}:") });
                changes.extend(lines.into_iter().map(|l| format!("  {l}")));
            }
            Outcome { status: 200, body: script.into_text() }
        }
    };
    Preview { outcome, changes }
}

/// Carries out what the poll decided: the certificate files, the state file, the cleanup.
fn apply(root: &Path, config: &Config, call: &Call, decision: Decision, locked: Option<LockedState>, mut script: Script) -> Outcome {
    if let Some(line) = &decision.log {
        eprintln!("update-server: {line}");
    }
    if let Some(customcerts) = &config.customcerts {
        let dir = root.join(customcerts.attr("dir").unwrap_or("certs"));
        let serial = call.arg("sn").unwrap_or_default();
        for action in &decision.file_actions {
            if let Err(e) = apply_file_action(&dir, serial, *action) {
                script.note(e);
            }
        }
    }
    match decision.ending {
        Ending::Bailout(message) => bailout(script, &message),
        Ending::Untouched => Outcome { status: 200, body: script.into_text() },
        Ending::Save => {
            let now = call.now;
            if let Some(mut locked) = locked {
                let logkeep = config.status.as_ref().map_or(0, |s| s.logkeep);
                state::record(&mut locked.state, now, &script.notes, logkeep);
                if let Err(e) = locked.save() {
                    return bailout(script, &format!("cannot write device state: {e}"));
                }
            }
            if let Some(status) = &config.status {
                state::cleanup_expired(&root.join(&status.dir), now, status.expire);
            }
            Outcome { status: 200, body: script.into_text() }
        }
    }
}

/// `# <message> - exit`: nothing saved, the message in the server log too.
fn bailout(script: Script, message: &str) -> Outcome {
    eprintln!("update-server: {message}");
    bailout_outcome(script, message)
}

fn bailout_outcome(mut script: Script, message: &str) -> Outcome {
    script.comment_args(format_args!("{message} - exit"));
    Outcome { status: 200, body: script.into_text() }
}

fn apply_file_action(dir: &Path, serial: &str, action: FileAction) -> Result<(), String> {
    let path = |file: certs::RequestFile| dir.join(file.file_name(serial));
    match action {
        FileAction::Remove(file) => {
            std::fs::remove_file(path(file)).map_err(|e| format!("cannot remove {}: {e}", path(file).display()))
        }
        FileAction::WritePemFromDer => {
            let (der_path, pem_path) = (path(certs::RequestFile::Der), path(certs::RequestFile::Pem));
            let der = std::fs::read(&der_path).map_err(|e| format!("cannot read {}: {e}", der_path.display()))?;
            state::write_atomically(&pem_path, certs::pem("CERTIFICATE REQUEST", &der).as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", pem_path.display()))
        }
    }
}

/// The candidate snippet files (`names`, in order) that exist in `<root>/<dir>`, read through
/// the cache; shared by the innovaphone script and the SPA profile.
pub fn existing_snippets(cache: &crate::filecache::FileCache, root: &Path, dir: &str, names: &[String]) -> Vec<SnippetFile> {
    cache
        .existing(&crate::filecache::path_in(root, &[dir]), names)
        .into_iter()
        .map(|(name, snippet)| SnippetFile {
            display_name: [dir, "/", &name].concat(),
            name,
            mtime: snippet.mtime,
            content: snippet.content,
        })
        .collect()
}

/// The lookups of a poll on this server: the install tree, the network, the dynamic program.
struct Disk<'a> {
    root: &'a Path,
    call: &'a Call,
    file_cache: &'a crate::filecache::FileCache,
    /// A preview asks no master: its builds come from the cache, however old.
    master_from_cache_only: bool,
}

impl Lookups for Disk<'_> {
    fn snippet_files(&mut self, dir: &str, names: &[String]) -> Vec<SnippetFile> {
        existing_snippets(self.file_cache, self.root, dir, names)
    }

    fn certificate_files(&mut self, customcerts: &Element, serial: &str) -> certs::ServerFiles {
        let mut files = certs::ServerFiles { dir: customcerts.attr("dir").unwrap_or("certs").to_string(), ..Default::default() };
        let dir = self.root.join(&files.dir);
        let path = |file: certs::RequestFile| dir.join(file.file_name(serial));
        files.request_der = path(certs::RequestFile::Der).is_file();
        files.request_pem = path(certs::RequestFile::Pem).is_file();
        files.request_key = path(certs::RequestFile::Key).is_file();
        files.signed_certificate = std::fs::read(path(certs::RequestFile::Signed)).ok().and_then(|data| certs::der_of(&data));
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
        files
    }

    fn reverse_dns(&mut self, ip: &str) -> Option<String> {
        crate::net::reverse_lookup(ip)
    }

    fn check_signature(&mut self, pre: &[String], files: &[SnippetFile], post: &[String]) -> String {
        let contents: Vec<&std::sync::Arc<Vec<u8>>> = files.iter().map(|f| &f.content).collect();
        self.file_cache.check_signature(pre, &contents, post)
    }

    fn master_builds(&mut self, master: &Master) -> Result<((String, String), crate::master::Source), String> {
        if self.master_from_cache_only {
            crate::master::builds_from_cache(self.root, master, self.call.now)
        } else {
            crate::master::builds(self.root, master, self.call.now)
        }
    }

    fn dynamic_lines(
        &mut self,
        exec: &str,
        state_xml: &str,
        environment: &[(String, String)],
        timeout: std::time::Duration,
    ) -> Result<crate::dynamic::Lines, String> {
        crate::dynamic::run(&self.root.join(exec), self.root, state_xml, environment, timeout)
    }
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


#[cfg(test)]
mod tests {
    use super::*;

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
