//! Bad requests and broken surroundings get a clear answer and change nothing outside
//! `status/` (the update script through the real binary in CGI mode).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_update-server");
const POLL: &str = "type=IP232&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57&ip=172.16.4.57&polling=0&phase=update";

/// A fresh install tree: the shipped config.xml, a user file and one snippet.
fn install_tree(user_config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.xml"), root.join("config.xml")).unwrap();
    std::fs::create_dir_all(root.join("config")).unwrap();
    std::fs::create_dir_all(root.join("scripts")).unwrap();
    std::fs::write(root.join("config/user-config.xml"), user_config).unwrap();
    std::fs::write(root.join("scripts/update-all-default.txt"), "config add CMD0 /location x\r\n").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    let file = std::fs::File::options().write(true).open(root.join("scripts/update-all-default.txt")).unwrap();
    file.set_modified(old).unwrap();
    dir
}

const GOOD_CONFIG: &str = "<config><master info=''/><status dir='status'/><backup dir='backup' nbackups='3'/></config>";

struct Answer {
    status: u16,
    body: String,
}

fn cgi(root: &Path, query: &str, body: Option<&[u8]>, content_length: Option<&str>) -> Answer {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", if body.is_some() { "PUT" } else { "GET" })
        .env("QUERY_STRING", query)
        .env("SCRIPT_NAME", "/update/update.php")
        .env("SCRIPT_FILENAME", root.join("update.php"))
        .env("HTTP_HOST", "update.example.com")
        .env("SERVER_PORT", "80")
        .env("REMOTE_ADDR", "172.16.4.57")
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(length) = content_length.map(String::from).or_else(|| body.map(|b| b.len().to_string())) {
        command.env("CONTENT_LENGTH", length);
    }
    let mut child = command.spawn().unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        if let Some(body) = body {
            // the server may refuse without reading: a broken pipe is an answer too
            let _ = stdin.write_all(body);
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or(("", &text));
    let status = head
        .lines()
        .find_map(|l| l.strip_prefix("Status: "))
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    Answer { status, body: body.to_string() }
}

/// Every file under `root` except the state folder, with its content.
fn snapshot_outside_status(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            if relative.starts_with("status") {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn commands(body: &str) -> Vec<&str> {
    body.lines().map(str::trim_end).filter(|l| !l.is_empty() && !l.trim_start().starts_with('#')).collect()
}

fn state_files(root: &Path) -> Vec<String> {
    match std::fs::read_dir(root.join("status")) {
        Ok(entries) => entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".xml")).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn refused_requests_change_nothing() {
    let tree = install_tree(GOOD_CONFIG);
    let root = tree.path();
    let before = snapshot_outside_status(root);
    let refusals: [(&str, &str); 7] = [
        ("unknown mode", "mode=format-c&sn=00-90-33-3e-0c-57"),
        ("traversal in sn", "type=IP232&sn=../../config/user-config&hwid=IP232-3e-0c-57&ip=1.2.3.4"),
        ("traversal in hwid", "type=IP232&sn=00-90-33-3e-0c-57&hwid=../../x&ip=1.2.3.4"),
        ("junk serial", "type=IP232&sn=hello-world&hwid=IP232-3e-0c-57&ip=1.2.3.4"),
        ("slash in type", "type=IP232/../../x&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57&ip=1.2.3.4"),
        ("traversal in env", "type=IP232&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57&ip=1.2.3.4&env=default,..%2F..%2Fx"),
        ("traversal in phase", "type=IP232&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57&ip=1.2.3.4&phase=..%2Fupdate"),
    ];
    for (what, query) in refusals {
        let answer = cgi(root, query, None, None);
        assert!((400..500).contains(&answer.status), "{what}: status {}", answer.status);
        assert!(answer.body.starts_with("# "), "{what}: answer is a comment: {}", answer.body);
        assert!(commands(&answer.body).is_empty(), "{what}: no commands");
        assert!(state_files(root).is_empty(), "{what}: no state written");
    }
    assert_eq!(snapshot_outside_status(root), before);
}

#[test]
fn oversized_body_is_refused_unread() {
    let tree = install_tree(GOOD_CONFIG);
    let root = tree.path();
    let before = snapshot_outside_status(root);
    let answer = cgi(root, "mode=backup&hwid=IP232-3e-0c-57&sn=00-90-33-3e-0c-57", Some(b"x"), Some("999999999999"));
    assert_eq!(answer.status, 413);
    assert!(answer.body.starts_with('#'));
    assert_eq!(snapshot_outside_status(root), before);
    assert!(state_files(root).is_empty());
}

#[test]
fn malformed_user_config_is_named_with_its_position() {
    let tree = install_tree("<config>\n  <master info=''/>\n  <status dir='status'>\n</config>\n");
    let root = tree.path();
    let before = snapshot_outside_status(root);
    let answer = cgi(root, POLL, None, None);
    assert!(answer.body.contains("config/user-config.xml:4:"), "names file and line: {}", answer.body);
    assert!(commands(&answer.body).is_empty());
    assert_eq!(snapshot_outside_status(root), before);
    assert!(state_files(root).is_empty());
}

#[test]
fn a_working_poll_writes_only_its_state() {
    let tree = install_tree(GOOD_CONFIG);
    let root = tree.path();
    let before = snapshot_outside_status(root);
    let answer = cgi(root, POLL, None, None);
    assert_eq!(answer.status, 200);
    assert!(commands(&answer.body).contains(&"config add CMD0 /location x"), "{}", answer.body);
    assert_eq!(state_files(root), ["00-90-33-3e-0c-57.xml"]);
    assert_eq!(snapshot_outside_status(root), before);
}

#[test]
fn a_silent_master_does_not_hold_the_poll() {
    // accepts connections and never answers
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(4) {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let config = format!(
        "<config><master info='http://127.0.0.1:{port}/CMD0/box_info.xml' timeout='1'/><status dir='status'/></config>"
    );
    let tree = install_tree(&config);
    let root = tree.path();
    let before = snapshot_outside_status(root);
    let started = Instant::now();
    let answer = cgi(root, POLL, None, None);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "poll took {took:?}");
    assert!(answer.body.contains("cannot get cached PBX info"), "{}", answer.body);
    assert!(commands(&answer.body).is_empty(), "a bailout delivers nothing: {}", answer.body);
    assert_eq!(snapshot_outside_status(root), before);
    assert!(state_files(root).is_empty(), "a bailout writes no state");
}

#[test]
fn unreachable_master_falls_back_to_the_cache() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = format!(
        "<config><master info='http://127.0.0.1:{port}/CMD0/box_info.xml' expire='0'/><status dir='status'/></config>"
    );
    let tree = install_tree(&config);
    let root = tree.path();
    std::fs::create_dir_all(root.join("cache")).unwrap();
    std::fs::write(root.join("cache/master-info.xml"), "<info><sys version='IP811[134600], Bootcode[134560], Hardware[302]'/></info>").unwrap();
    let answer = cgi(root, &format!("{POLL}&PROT=134600&BOOT=134000"), None, None);
    assert!(commands(&answer.body).contains(&"mod cmd UP0 boot http://update.example.com/update/fw/134560/ ser 134560"), "{}", answer.body);
}
