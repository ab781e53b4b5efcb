//! Soak and crash safety: 100 parallel writers of one device (polls, backups, query answers)
//! against a real FastCGI process (`update-server fastcgi --listen unix:…`), which is killed
//! with SIGKILL in the middle. Afterwards every state and backup file is whole, and the next
//! process's cleanup leaves no temporary file behind.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use support::*;

const SN: &str = "00-90-33-3e-0c-57";
const HWID: &str = "IP232-3e-0c-57";
const WRITERS: usize = 100;
/// Lines of every backup body: a torn backup file would lack its last ones.
const BACKUP_LINES: usize = 200;

const CONFIG: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<config>
  <master info=""/>
  <status dir="status"/>
  <backup dir="backup" nbackups="3" minage="0"/>
  <queries><query id="soak" title="Soak"><cmd>mod cmd CMD0 xml-info</cmd><applies>*</applies></query></queries>
</config>
"#;

// ---- a minimal FastCGI client (one request per connection) ------------------------------

fn record(kind: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![1, kind, 0, 1];
    out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(content);
    out
}

fn stream(kind: u8, content: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = content.chunks(65535).flat_map(|c| record(kind, c)).collect();
    out.extend(record(kind, &[]));
    out
}

fn name_value(out: &mut Vec<u8>, text: &str) {
    if text.len() < 128 {
        out.push(text.len() as u8);
    } else {
        out.extend_from_slice(&(text.len() as u32 | 0x8000_0000).to_be_bytes());
    }
}

/// Sends one request and returns the HTTP status of the answer (from its `Status:` header).
fn fastcgi(socket: &Path, root: &Path, method: &str, query: &str, body: &[u8]) -> std::io::Result<u16> {
    let mut connection = UnixStream::connect(socket)?;
    connection.set_read_timeout(Some(Duration::from_secs(30)))?;
    connection.set_write_timeout(Some(Duration::from_secs(30)))?;
    let script = root.join("update.php").display().to_string();
    let length = body.len().to_string();
    let pairs = [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("REQUEST_METHOD", method),
        ("QUERY_STRING", query),
        ("SCRIPT_NAME", "/update.php"),
        ("SCRIPT_FILENAME", script.as_str()),
        ("REQUEST_URI", "/update.php"),
        ("HTTP_HOST", "update.example.com"),
        ("SERVER_NAME", "update.example.com"),
        ("SERVER_PORT", "80"),
        ("REMOTE_ADDR", "172.16.4.57"),
        ("CONTENT_LENGTH", length.as_str()),
    ];
    let mut params = Vec::new();
    for (name, value) in pairs {
        name_value(&mut params, name);
        name_value(&mut params, value);
        params.extend_from_slice(name.as_bytes());
        params.extend_from_slice(value.as_bytes());
    }
    let mut request = record(1, &[0, 1, 0, 0, 0, 0, 0, 0]); // BEGIN_REQUEST, responder, close
    request.extend(stream(4, &params));
    request.extend(stream(5, body));
    connection.write_all(&request)?;
    let mut stdout = Vec::new();
    loop {
        let mut header = [0u8; 8];
        connection.read_exact(&mut header)?;
        let length = usize::from(u16::from_be_bytes([header[4], header[5]])) + usize::from(header[6]);
        let mut content = vec![0u8; length];
        connection.read_exact(&mut content)?;
        match header[1] {
            6 => stdout.extend_from_slice(&content[..usize::from(u16::from_be_bytes([header[4], header[5]]))]),
            3 => break,
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(&stdout);
    let status = text
        .lines()
        .find_map(|line| line.strip_prefix("Status: "))
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    Ok(status)
}

// ---- the FastCGI process ------------------------------------------------------------------

fn start(root: &Path, socket: &Path) -> Child {
    let child = Command::new(binary())
        .args(["fastcgi", "--listen", &format!("unix:{}", socket.display()), "--root", &root.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the FastCGI process");
    let started = Instant::now();
    while UnixStream::connect(socket).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "the FastCGI process did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// A child that is killed (SIGKILL) and reaped when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---- what the files must look like ----------------------------------------------------------

fn backup_body(tag: &str) -> String {
    let mut body: String = (0..BACKUP_LINES).map(|k| format!("config change CMD0 /line{k} {tag}\r\n")).collect();
    body.push_str(&format!("config change CMD0 /end {tag}\r\n"));
    body
}

/// A stored backup is the normalized form of exactly one body: all its lines, one tag.
fn assert_backup_whole(path: &Path) {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines.len(), BACKUP_LINES + 1, "{} is torn ({} lines)", path.display(), lines.len());
    let tag = lines[0].rsplit(' ').next().unwrap_or("");
    for (k, line) in lines[..BACKUP_LINES].iter().enumerate() {
        assert_eq!(*line, format!("config change CMD0 /line{k} {tag}"), "{} mixes bodies", path.display());
    }
    assert_eq!(lines[BACKUP_LINES], format!("config change CMD0 /end {tag}"), "{} lacks its end", path.display());
}

fn assert_state_whole(path: &Path) {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let document = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}\n{text}", path.display()));
    assert_eq!(document.root_element().tag_name().name(), "state", "{}", path.display());
    let device = document.root_element().children().find(|n| n.has_tag_name("device")).expect("a device element");
    assert_eq!(device.attribute("sn"), Some(SN));
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn is_temporary(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
}

fn set_mtime(path: &Path, time: SystemTime) {
    fs::File::options().write(true).open(path).and_then(|f| f.set_modified(time)).unwrap_or_else(|e| panic!("ageing {}: {e}", path.display()));
}

fn assert_all_whole(root: &Path) {
    let state_files: Vec<PathBuf> = files_under(&root.join("status")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "xml")).collect();
    assert_eq!(state_files, [root.join(format!("status/{SN}.xml"))], "one state file");
    for path in &state_files {
        assert_state_whole(path);
    }
    assert!(!root.join(format!("status/{SN}.xml.broken")).exists(), "no request ever saw a damaged state");
    let backups: Vec<PathBuf> = files_under(&root.join("backup")).into_iter().filter(|p| !is_temporary(p) && p.file_name().is_some_and(|n| n != ".keep")).collect();
    assert!(!backups.is_empty(), "backups were stored");
    for path in &backups {
        assert_backup_whole(path);
    }
}

/// 100 writers of one device against one FastCGI process, SIGKILL in the middle: no state
/// or backup file is torn, and after the next cleanup (a poll and a backup of a fresh
/// process, an hour later) no temporary file is left in the status or backup folder, neither
/// those the kill left nor older ones planted as a previous crash would have left them.
#[test]
fn a_hundred_writers_and_a_kill_leave_whole_files_and_no_temporaries() {
    let dir = tempfile::Builder::new().prefix("update-server-soak-").tempdir().expect("temp dir");
    let root = dir.path().to_path_buf();
    copy_install_tree(&root);
    write_old_file(&root, "config/user-config.xml", CONFIG);
    write_old_file(&root, "scripts/update-all-default.txt", "config add CMD0 /location all-default\r\n");
    let socket = root.join("fcgi.sock");
    let mut server = Running(start(&root, &socket));
    assert_eq!(fastcgi(&socket, &root, "GET", DEVICE_QUERY, b"").expect("first poll"), 200);

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (socket, root, stop, answered) = (socket.clone(), root.clone(), stop.clone(), answered.clone());
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let tag = format!("w{w}-{i}");
                    let result = match (w + i) % 3 {
                        0 => fastcgi(&socket, &root, "GET", DEVICE_QUERY, b""),
                        1 => fastcgi(&socket, &root, "PUT", &format!("mode=backup&hwid={HWID}&sn={SN}"), backup_body(&tag).as_bytes()),
                        _ => fastcgi(&socket, &root, "PUT", &format!("mode=query&id=soak&sn={SN}&hwid={HWID}"), format!("<info name=\"{tag}\"><a n=\"{i}\"/><b/></info>").as_bytes()),
                    };
                    match result {
                        Ok(status) => {
                            assert_eq!(status, 200, "{tag}");
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        // the process is gone (killed): connection refused or reset
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    while answered.load(Ordering::Relaxed) < 1000 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // SIGKILL while the writers are in full swing
    server.0.kill().expect("kill -9 of the FastCGI process");
    server.0.wait().expect("reaping it");
    let at_kill = answered.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("a writer saw a wrong answer");
    }
    assert!(at_kill >= 1000, "only {at_kill} requests were answered before the kill");
    assert_all_whole(&root);

    // what an earlier crash would have left: temporaries named as the writer names them
    let backup_dir = root.join(format!("backup/{HWID}"));
    fs::write(root.join(format!("status/.{SN}.xml.999999.0.tmp")), "<state><device").unwrap();
    fs::write(backup_dir.join(format!(".{HWID}.99.txt.999999.0.tmp")), "config change CMD0 /line0").unwrap();
    // an hour later: every temporary is old, and so is the hourly cleanup's stamp
    let hour_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    let temporaries: Vec<PathBuf> = files_under(&root).into_iter().filter(|p| is_temporary(p)).collect();
    for path in &temporaries {
        set_mtime(path, hour_ago);
    }
    let stamp = root.join("status/lastcleanup");
    if !stamp.exists() {
        fs::write(&stamp, "0").unwrap();
    }
    set_mtime(&stamp, hour_ago);

    eprintln!("soak: {at_kill} answers before the kill; {} temporary files after it, 2 of them planted", temporaries.len());
    let _next = Running(start(&root, &socket));
    assert_eq!(fastcgi(&socket, &root, "GET", DEVICE_QUERY, b"").expect("poll after the crash"), 200);
    let body = backup_body("after");
    assert_eq!(fastcgi(&socket, &root, "PUT", &format!("mode=backup&hwid={HWID}&sn={SN}"), body.as_bytes()).expect("backup after the crash"), 200);
    let left: Vec<PathBuf> = ["status", "backup"].iter().flat_map(|d| files_under(&root.join(d))).filter(|p| is_temporary(p)).collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "temporary files left after the cleanup (there were {})", temporaries.len());
    assert_all_whole(&root);
}
