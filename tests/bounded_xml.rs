//! Query answers a device cannot send: nested thousands of levels deep, or large enough to fill
//! the disk through the state file. Sent to the real binary in `serve`, where one such PUT used
//! to overflow a worker's stack and abort the process with every request in it.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// `update-server serve` on a free port over a fresh install tree; killed on drop.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("temporary root");
        let root = dir.path().to_path_buf();
        copy_install_tree(&root);
        write_basic_setup(&root);
        let port = free_port();
        let mut child = Command::new(binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--root"])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting update-server serve");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(child.try_wait().expect("waiting").is_none(), "serve exited at start");
            assert!(Instant::now() < deadline, "serve did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, port, _dir: dir, root }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("waiting for serve").is_none()
    }

    /// PUT `body` to `update.php?query`: the status and the body of the answer.
    fn put(&self, query: &str, body: &[u8]) -> (u16, String) {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10)).expect("connecting");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let head = format!(
            "PUT /update.php?{query} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        // a server that answers before reading all of the body may close early
        let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body));
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    fn state_file(&self) -> PathBuf {
        self.root.join("status").join(format!("{DEVICE_SN}.xml"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const QUERY: &str = "mode=query&id=admin&sn=00-90-33-3e-0c-57";

fn nested(levels: usize, inside: &str) -> String {
    format!("<info>{}{inside}{}</info>", "<a>".repeat(levels), "</a>".repeat(levels))
}

fn size_of(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn a_deeply_nested_answer_is_refused_and_the_server_lives_on() {
    let mut server = Server::start();
    for levels in [3_100, 100_000] {
        let (status, body) = server.put(QUERY, nested(levels, "").as_bytes());
        assert!(server.alive(), "serve survived {levels} levels");
        assert_eq!(status, 413, "{levels} levels: {body}");
        assert!(body.starts_with("# query answer refused: ") && body.contains("levels deep"), "{body}");
        assert!(!server.state_file().exists(), "nothing stored");
    }
    // the same process still serves devices: a real answer is stored, a poll is answered
    let (status, body) = server.put(QUERY, b"<info name='Lobby phone'><sys version='13r3'/></info>");
    assert_eq!((status, body.trim()), (200, "# queries admin for 00-90-33-3e-0c-57 saved"));
    let poll = http_get(server.port, &format!("/update.php?{DEVICE_QUERY}"), "127.0.0.1");
    assert_eq!(poll.status, 200);
    assert!(poll.body.contains("iresetn"), "{}", poll.body);
    assert!(server.alive());
}

#[test]
fn a_large_deep_and_wide_answer_leaves_no_state_file_beyond_the_cap() {
    const CAP: u64 = 1 << 20;
    let server = Server::start();
    // 60 levels (as deep as an answer may be) around 50,000 siblings: 850 KB sent
    let wide: String = (0..50_000).map(|i| format!("<b n=\"{i:08}\"/>")).collect();
    let answer = nested(59, &wide);
    assert!(answer.len() > 800_000 && answer.len() < 900_000, "{}", answer.len());
    let (status, body) = server.put(QUERY, answer.as_bytes());
    assert_eq!(status, 200, "{body}");
    let stored = size_of(&server.state_file());
    // the old writer indented each of the 50,000 siblings by 126 spaces: 7 MB
    assert!(stored <= answer.len() as u64 + 4096, "state of {stored} bytes for an answer of {}", answer.len());
    let before = fs::read(server.state_file()).unwrap();

    // another query's answer of 200 KB would take the state over its cap: refused, nothing changed
    let more: String = (0..12_000).map(|i| format!("<b n=\"{i:08}\"/>")).collect();
    let (status, body) = server.put("mode=query&id=certificates&sn=00-90-33-3e-0c-57", format!("<info>{more}</info>").as_bytes());
    assert_eq!(status, 413, "{body}");
    assert!(body.starts_with("# nothing stored: the device state would be "), "{body}");
    assert_eq!(fs::read(server.state_file()).unwrap(), before, "the old state is kept");
    for entry in fs::read_dir(server.root.join("status")).unwrap().flatten() {
        assert!(entry.metadata().unwrap().len() <= CAP, "{:?} is over the cap", entry.file_name());
    }
}
