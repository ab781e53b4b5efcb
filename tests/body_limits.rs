//! Every front door knows the limit of a request's mode before it reads the body, so a body the
//! application would refuse is never held in memory: `backup/@maxsize` for backups, 1 MiB for
//! query answers and variable dumps, 16 MiB at most. Driven through the binary in each door:
//! CGI (with and without `CONTENT_LENGTH`), `serve`, and `fastcgi --listen`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use tempfile::TempDir;

const SN: &str = "00-90-33-3e-0c-57";
const HWID: &str = "IP232-3e-0c-57";
const MIB: usize = 1024 * 1024;

fn tree() -> TempDir {
    let root = tempfile::tempdir().unwrap();
    copy_install_tree(root.path());
    root
}

/// What a CGI run gave: the answer, whether the whole body could be written to it, and the
/// process's peak resident memory.
struct CgiRun {
    status: u16,
    body: String,
    body_written: bool,
    max_rss_kib: i64,
}

/// Runs the binary as CGI for a PUT of `query` with `times` × `chunk` on stdin;
/// `CONTENT_LENGTH` only when `declare_length`. The peak memory comes from wait4(2) (the body
/// is produced while it is written, so the forked test process does not count it).
// the child is reaped with wait4(2), which Child does not know about
#[allow(clippy::zombie_processes)]
fn cgi_put(root: &std::path::Path, query: &str, chunk: Vec<u8>, times: usize, declare_length: bool) -> CgiRun {
    let mut command = Command::new(binary());
    command
        .env_clear()
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", "PUT")
        .env("QUERY_STRING", query)
        .env("SCRIPT_NAME", "/update/update.php")
        .env("SCRIPT_FILENAME", root.join("update.php"))
        .env("HTTP_HOST", "update.example.com")
        .env("SERVER_PORT", "80")
        .env("REMOTE_ADDR", "172.16.4.57")
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if declare_length {
        command.env("CONTENT_LENGTH", (chunk.len() * times).to_string());
    }
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || (0..times).all(|_| stdin.write_all(&chunk).is_ok()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 reaps our own child and fills both out-parameters.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    let body_written = writer.join().unwrap();
    let out = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or(("", &out));
    let status = head.lines().find_map(|l| l.strip_prefix("Status: ")).and_then(|s| s.get(..3)?.parse().ok()).unwrap_or(200);
    CgiRun { status, body: body.to_string(), body_written, max_rss_kib: usage.ru_maxrss }
}

#[test]
fn cgi_refuses_a_body_over_the_mode_limit_without_holding_it() {
    let root = tree();
    let query = format!("mode=query&sn={SN}&id=admin");
    for declare_length in [true, false] {
        // 15 MiB: under the 16 MiB ceiling, far over the 1 MiB of a query answer
        let run = cgi_put(root.path(), &query, vec![b'<'; MIB], 15, declare_length);
        let what = if declare_length { "with CONTENT_LENGTH" } else { "without CONTENT_LENGTH" };
        eprintln!("{what}: peak {} KiB", run.max_rss_kib);
        assert!(run.max_rss_kib < 12 * 1024, "{what}: the body was not held ({} KiB peak)", run.max_rss_kib);
        assert_eq!(run.status, 413, "{what}: {}", run.body);
        assert!(run.body.starts_with("# request body too large"), "{what}: {}", run.body);
        assert!(run.body_written, "{what}: the rest of the body was read before the answer");
    }
}

#[test]
fn cgi_reads_a_body_without_content_length_to_its_end() {
    let root = tree();
    let body = b"config change CMD0 /name Reception\r\nvars create UPDATE/CHECK pb 3f\r\nconfig change PHONE /coder G722\r\n".to_vec();
    let run = cgi_put(root.path(), &format!("mode=backup&hwid={HWID}&sn={SN}"), body, 1, false);
    assert_eq!(run.status, 200, "{}", run.body);
    assert!(run.body.starts_with("# backup stored"), "{}", run.body);
    let stored = std::fs::read(root.path().join(format!("backup/{HWID}/{HWID}.0.txt"))).unwrap();
    assert_eq!(stored, b"config change CMD0 /name Reception\r\nconfig change PHONE /coder G722");
}

#[test]
fn serve_refuses_a_declared_body_over_the_mode_limit_before_it_arrives() {
    let root = tree();
    let port = free_port();
    let mut server = Command::new(binary());
    server
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--root"])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = server.spawn().unwrap();
    let mut stream = connect_when_up(|| TcpStream::connect(("127.0.0.1", port)));
    // 16 MiB - 1 announced for a backup (backup/@maxsize is 8 MiB); no body byte is sent
    let head = format!(
        "PUT /update.php?mode=backup&hwid={HWID}&sn={SN} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\r\n",
        16 * MIB - 1
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let started = Instant::now();
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while !reply.windows(4).any(|w| w == b"exit") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413 "), "refused before the body: {reply:?}");
    assert!(reply.contains("# request body too large: more than 8388608 bytes"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// `update-server serve` on a free port over `root`; killed on drop.
struct Serving(std::process::Child, u16);

impl Serving {
    fn start(root: &std::path::Path) -> Serving {
        let port = free_port();
        let child = Command::new(binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--root"])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        drop(connect_when_up(|| TcpStream::connect(("127.0.0.1", port))));
        Serving(child, port)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads an HTTP answer up to the end of its Content-Length body.
fn read_answer(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .expect("every answer has a Content-Length");
            if raw.len() >= end + 4 + length {
                return String::from_utf8_lossy(&raw[..end + 4 + length]).into_owned();
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&raw).into_owned(),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn serve_stores_a_chunked_backup_put_and_holds_it_to_the_mode_limit() {
    let root = tree();
    let server = Serving::start(root.path());
    let mut stream = TcpStream::connect(("127.0.0.1", server.1)).unwrap();
    let head = format!("PUT /update.php?mode=backup&hwid={HWID}&sn={SN} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    for part in ["config change CMD0 /name Reception\r\nvars create UPDATE/CHECK pb 3f\r\n", "config change PHONE /coder G722\r\n"] {
        stream.write_all(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes()).unwrap();
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    let answer = read_answer(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("# backup stored"), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("transfer-encoding"), "{answer}");
    let stored = std::fs::read(root.path().join(format!("backup/{HWID}/{HWID}.0.txt"))).unwrap();
    assert_eq!(stored, b"config change CMD0 /name Reception\r\nconfig change PHONE /coder G722");

    // 9 MiB in chunks for a backup of at most 8 MiB (backup/@maxsize): 413 once the limit is
    // passed, and the rest is read away so that the answer arrives
    let mut stream = TcpStream::connect(("127.0.0.1", server.1)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..(9 * MIB / chunk.len()) {
                if stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
                    || stream.write_all(&chunk).is_err()
                    || stream.write_all(b"\r\n").is_err()
                {
                    return false;
                }
            }
            stream.write_all(b"0\r\n\r\n").is_ok()
        })
    };
    let answer = read_answer(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("# request body too large: more than 8388608 bytes"), "{answer}");
    let _ = writer.join();
    assert_eq!(std::fs::read_dir(root.path().join(format!("backup/{HWID}"))).unwrap().count(), 1, "nothing more stored");
}

// ---- FastCGI -----------------------------------------------------------------------------------

fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    let mut out = vec![1, kind];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(content);
    out
}

fn params(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in pairs {
        assert!(name.len() < 128 && value.len() < 128);
        out.extend_from_slice(&[name.len() as u8, value.len() as u8]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Sends one backup PUT with a `size`-byte body over FastCGI; returns the STDOUT text.
fn fastcgi_put(port: u16, query: &str, size: usize) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let length = size.to_string();
    let pairs = [
        ("REQUEST_METHOD", "PUT"),
        ("SCRIPT_NAME", "/update/update.php"),
        ("QUERY_STRING", query),
        ("CONTENT_LENGTH", length.as_str()),
        ("REMOTE_ADDR", "172.16.4.57"),
    ];
    let mut head = record(1, 1, &[0, 1, 0, 0, 0, 0, 0, 0]);
    head.extend(record(4, 1, &params(&pairs)));
    head.extend(record(4, 1, &[]));
    stream.write_all(&head).unwrap();
    let chunk = vec![b'x'; 65535];
    let mut sent = 0;
    while sent < size {
        let n = chunk.len().min(size - sent);
        stream.write_all(&record(5, 1, &chunk[..n])).unwrap();
        sent += n;
    }
    stream.write_all(&record(5, 1, &[])).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn fastcgi_refuses_bodies_over_the_mode_limit_without_holding_them() {
    let root = tree();
    let port = free_port();
    let mut server = Command::new(binary());
    server
        .args(["fastcgi", "--listen", &format!("127.0.0.1:{port}"), "--root"])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = server.spawn().unwrap();
    drop(connect_when_up(|| TcpStream::connect(("127.0.0.1", port))));
    let query = format!("mode=backup&hwid={HWID}&sn={SN}");
    // eight devices at once, each with 15 MiB for a backup of at most 8 MiB
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let query = query.clone();
            std::thread::spawn(move || fastcgi_put(port, &query, 15 * MIB))
        })
        .collect();
    let answers: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let peak = peak_rss_kib(server.id());
    let _ = server.kill();
    let _ = server.wait();
    eprintln!("peak {peak} KiB");
    assert!(peak < 40 * 1024, "no body was held: peak {peak} KiB for 8 x 15 MiB refused");
    for answer in &answers {
        assert!(answer.contains("Status: 413"), "{answer}");
        assert!(answer.contains("# request body too large: more than 8388608 bytes"), "{answer}");
    }
    assert!(!root.path().join(format!("backup/{HWID}")).exists());
}
