//! Transport facts (issue 9 item 5) on every front door: lighttpd + CGI (the README's `mod_cgi`
//! block), lighttpd + FastCGI (the README's `fastcgi.server` block) and `serve`.
//!
//! * Old firmware speaks HTTP/1.0: every answer carries a `Content-Length` that is the length of
//!   its body, and none is chunked, over HTTP/1.0 and over a kept-alive HTTP/1.1 connection (the
//!   second request on it proves the framing). lighttpd buffers a backend's answer by default
//!   and then adds `Content-Length` itself; with `server.stream-response-body` it streams the
//!   answer and only passes on the length the backend sent. Both settings are tried.
//! * Firmware images under `fw/` are served whole with the query string ignored (`?SW=…`).
//! * The thread's walk of an SPA504G (7.3.7 and 7.4.3a with a `Linksys/` agent, 7.5.2b and
//!   7.6.1 with a `Cisco/` one) over HTTP/1.0 as old firmware sends it, each `Upgrade_Rule`
//!   fetched as the phone would, and the device's state file afterwards.
//! * An innovaphone phone below the via build of its path gets the via build, then the build
//!   the configuration names (`master/@firmware`), then nothing; a gateway, not on the phones'
//!   path, the target at once.
//!
//! Requests are written byte by byte here (no HTTP library), so the protocol version is the
//! one named and the raw head of every answer is seen.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use tempfile::TempDir;

/// Where the README's blocks put the install tree, and its URL path.
const README_WWW: &str = "/var/www/innovaphone";
const PREFIX: &str = "/mtls/update";
const HOST: &str = "update.example.com";

const CONFIG: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<config>
  <master info="none" firmware="134567" bootcode="none" user="admin" password="Test-Passw0rd"/>
  <fwstorage url="fw/{build}/{filename}"/>
  <status dir="status"/>
  <backup dir="backup"/>
  <upgrades>
    <path models="SPA301 SPA303 SPA501G SPA502G SPA504G SPA508G SPA509G"
          version="7.6.1" file="fw/cisco/spa50x-30x-7-6-1.bin" downgradelimit="7.6.1">
      <via version="7.5.2b" file="fw/cisco/spa50x-30x-7-5-2b.bin"/>
    </path>
    <path applies="phone"><via build="131504"/></path>
  </upgrades>
</config>
"#;

const FW_752B: &str = "fw/cisco/spa50x-30x-7-5-2b.bin";
const FW_761: &str = "fw/cisco/spa50x-30x-7-6-1.bin";
const SPA_STATE: &str = "status/58-bf-ea-11-04-e6.xml";
const SPA_737: &str = "Linksys/SPA504G-7.3.7 (58BFEA1104E6)(CCQ16380FYH)";
const INNOVAPHONE: &str = "innovaphone-IP232/13r3";
/// An IP222 poll: a small answer (the IP232 one carries a big snippet).
const SMALL_POLL: &str = "type=IP222&sn=00-90-33-11-22-33&hwid=IP222-11-22-33&ip=172.16.4.33&polling=0&phase=update";

/// Which front door answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Door {
    /// lighttpd running the binary per request (`mod_cgi`, the README's block).
    Cgi,
    /// lighttpd with the binary spawned by `mod_fastcgi` (`bin-path`).
    FastCgi,
    /// `update-server serve`.
    Serve,
}

/// lighttpd's `server.stream-response-body`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answers {
    /// 0, the default: a backend's answer is collected before it is sent on.
    Buffered,
    /// 2: sent on as it arrives, chunked over HTTP/1.1 unless the backend named a length.
    Streamed,
}

/// Deterministic bytes of a firmware image (xorshift), so a test can compare every byte.
fn firmware_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The tree every door serves: the SPA configuration and snippets of tests/spa.rs, an
/// innovaphone snippet for everyone and a big one (about 200 kB, several FastCGI records and
/// more than a pipe holds) for IP232, two firmware images of a few hundred kB.
fn write_tree(tree: &Path) {
    copy_install_tree(tree);
    write_old_file(tree, "config/user-config.xml", CONFIG);
    write_old_file(
        tree,
        "scripts/update-all-default.xml",
        "<flat-profile>\n  <Line_Enable_1_>Yes</Line_Enable_1_>\n  <Station_Name>lobby</Station_Name>\n</flat-profile>\n",
    );
    write_old_file(
        tree,
        "scripts/update-spa50x-default.xml",
        "<flat-profile>\n  <Station_Name>SPA &amp; friends</Station_Name>\n  <Dial_Plan_1_ ua=\"ro\"/>\n</flat-profile>\n",
    );
    write_old_file(tree, "scripts/update-all-default.txt", "# snippet all-default\nconfig add CMD0 /location all-default\n");
    let big: String = std::iter::once("# snippet ip232-default\n".to_string())
        .chain((0..6000).map(|i| format!("config add CMD0 /location room-{i:06}\n")))
        .collect();
    write_old_file(tree, "scripts/update-ip232-default.txt", &big);
    for (file, len, seed) in [(FW_752B, 300_007, 0x752b), (FW_761, 250_001, 0x761)] {
        let path = tree.join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, firmware_bytes(len, seed)).unwrap();
    }
}

/// The first fenced block after the README line `heading`, with the README's paths replaced
/// by the test's.
fn readme_block(heading: &str, www: &Path) -> String {
    let readme = fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let after = readme.split_once(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("README has no {heading:?}")).1;
    let block = after.split_once("```\n").expect("a fenced block").1.split_once("```").expect("its end").0;
    block.replace(README_WWW, &www.display().to_string())
}

/// `update-server serve` in its own process group, killed on drop.
struct Serving {
    child: Child,
    output: PathBuf,
}

impl Serving {
    fn start(tree: &Path, port: u16, output: PathBuf) -> Serving {
        use std::os::unix::process::CommandExt;
        let out = fs::File::create(&output).unwrap();
        let child = Command::new(binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--root"])
            .arg(tree)
            .env_remove("UPDATE_SERVER_ROOT")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("starting update-server serve");
        let mut serving = Serving { child, output };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = serving.child.try_wait() {
                panic!("serve exited at start ({status}):\n{}", serving.logs());
            }
            if TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_millis(200)).is_ok() {
                return serving;
            }
            assert!(Instant::now() < deadline, "serve did not listen on {port}:\n{}", serving.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        format!("--- {}\n{}", self.output.display(), fs::read_to_string(&self.output).unwrap_or_default())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of a child this test started and has not reaped.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

enum Server {
    Lighttpd(Lighttpd),
    Serve(Serving),
}

/// One front door serving a temporary install tree at `…/www/mtls/update`.
struct Site {
    tree: PathBuf,
    port: u16,
    door: Door,
    server: Server,
    _tmp: TempDir,
}

impl Site {
    fn start(door: Door, answers: Answers) -> Site {
        let tmp = tempfile::Builder::new().prefix("update-server-transport-").tempdir().expect("temp dir");
        let www = tmp.path().join("www");
        let tree = www.join("mtls/update");
        fs::create_dir_all(&tree).unwrap();
        write_tree(&tree);
        let port = free_port();
        let error_log = tmp.path().join("lighttpd-error.log");
        let base = format!(
            "server.document-root = \"{www}\"\nserver.bind = \"127.0.0.1\"\nserver.port = {port}\n\
             server.errorlog = \"{log}\"\n\
             mimetype.assign = ( \".txt\" => \"text/plain\", \".xml\" => \"text/xml\", \".html\" => \"text/html\" )\n{stream}\n",
            www = www.display(),
            log = error_log.display(),
            stream = if answers == Answers::Streamed { "server.stream-response-body = 2\n" } else { "" },
        );
        let server = match door {
            Door::Serve => {
                assert_eq!(answers, Answers::Buffered, "serve has no such setting");
                Server::Serve(Serving::start(&tree, port, tmp.path().join("serve.out")))
            }
            Door::Cgi => {
                // as the README says: the binary in the install directory
                fs::copy(binary(), tree.join("update-server")).expect("copying the binary into the tree");
                let conf = format!("{base}{}", readme_block("### lighttpd as CGI (mod_cgi)", &www));
                Server::Lighttpd(start_lighttpd(tmp.path(), &conf, port, &error_log))
            }
            Door::FastCgi => {
                let conf = format!(
                    "{base}server.modules = ( \"mod_access\", \"mod_alias\", \"mod_fastcgi\" )\n{}",
                    deployment_block(PREFIX, &tree, &tmp.path().join("update-server.sock"), 2, true)
                );
                Server::Lighttpd(start_lighttpd(tmp.path(), &conf, port, &error_log))
            }
        };
        Site { tree, port, door, server, _tmp: tmp }
    }

    fn logs(&self) -> String {
        match &self.server {
            Server::Lighttpd(server) => server.logs(),
            Server::Serve(serving) => serving.logs(),
        }
    }

    /// The Host header a device sends (URLs in answers are built from it).
    fn host(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    fn base_url(&self) -> String {
        format!("http://{}{PREFIX}", self.host())
    }
}

fn start_lighttpd(dir: &Path, conf: &str, port: u16, error_log: &Path) -> Lighttpd {
    let path = dir.join("lighttpd.conf");
    fs::write(&path, conf).expect("writing lighttpd.conf");
    Lighttpd::start(&path, port, error_log)
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP client
// ---------------------------------------------------------------------------------------------

/// How an answer's body was delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    ContentLength,
    Chunked,
    /// Neither: the body runs to the end of the connection.
    Close,
}

/// One answer as it came over the wire.
struct Raw {
    /// Status line and headers as received.
    head: String,
    status: u16,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: Framing,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request as a device writes it.
#[derive(Clone)]
struct Ask {
    what: &'static str,
    method: &'static str,
    target: String,
    agent: &'static str,
    body: Vec<u8>,
}

impl Ask {
    fn get(what: &'static str, target: String, agent: &'static str) -> Ask {
        Ask { what, method: "GET", target, agent, body: Vec::new() }
    }

    /// The request bytes: `version` 0 or 1; `close` adds `Connection: close`.
    fn bytes(&self, host: &str, version: u8, close: bool) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.{version}\r\nHost: {host}\r\nUser-Agent: {}\r\n", self.method, self.target, self.agent);
        if self.method != "GET" {
            head.push_str(&format!("Content-Type: application/octet-stream\r\nContent-Length: {}\r\n", self.body.len()));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn connect(port: u16) -> BufReader<TcpStream> {
    let limit = Duration::from_secs(30);
    let stream = TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), limit).expect("connecting");
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.set_write_timeout(Some(limit)).unwrap();
    BufReader::new(stream)
}

/// Reads one answer: the head line by line, then the body as the head delimits it.
fn read_answer(reader: &mut BufReader<TcpStream>) -> Raw {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let read = reader.read_until(b'\n', &mut line).expect("reading an answer head");
        assert!(read > 0, "the connection ended inside an answer head: {:?}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let head = String::from_utf8(head).expect("an ASCII head");
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length = headers.iter().find(|(k, _)| k == "content-length").map(|(_, v)| v.parse::<usize>().expect("a numeric Content-Length"));
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let mut body = Vec::new();
    let framing = if chunked {
        // decoded, so that a failure can still show the body
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).expect("a chunk size");
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16).expect("a hex chunk size");
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).expect("a chunk");
            body.extend_from_slice(&chunk[..size]);
            if size == 0 {
                break;
            }
        }
        Framing::Chunked
    } else if let Some(length) = length {
        body.resize(length, 0);
        reader.read_exact(&mut body).expect("the body the Content-Length announced");
        Framing::ContentLength
    } else {
        reader.read_to_end(&mut body).expect("reading a body to the end of the connection");
        Framing::Close
    };
    Raw { head, status, headers, body, framing }
}

/// What follows once the server closes (nothing, if the last answer was framed honestly).
fn rest(mut reader: BufReader<TcpStream>) -> Vec<u8> {
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("reading to the end of the connection");
    rest
}

/// One request over HTTP/1.0, as old firmware sends it (no `Connection` header).
fn http10(port: u16, host: &str, ask: &Ask) -> Raw {
    let mut reader = connect(port);
    reader.get_mut().write_all(&ask.bytes(host, 0, false)).expect("sending");
    let answer = read_answer(&mut reader);
    if answer.framing == Framing::ContentLength {
        let rest = rest(reader);
        assert!(rest.is_empty(), "{}: {} bytes after the announced body over HTTP/1.0:\n{}", ask.what, rest.len(), answer.head);
    }
    answer
}

/// The request twice on one HTTP/1.1 connection: kept alive, then with `Connection: close`.
/// The second answer is only read when the first was delimited by its length.
fn http11_twice(port: u16, host: &str, ask: &Ask) -> (Raw, Option<Raw>) {
    let mut reader = connect(port);
    reader.get_mut().write_all(&ask.bytes(host, 1, false)).expect("sending");
    let first = read_answer(&mut reader);
    if first.framing != Framing::ContentLength {
        return (first, None);
    }
    reader.get_mut().write_all(&ask.bytes(host, 1, true)).expect("sending on the kept-alive connection");
    let second = read_answer(&mut reader);
    let rest = rest(reader);
    assert!(rest.is_empty(), "{}: {} bytes after the second answer's body over HTTP/1.1:\n{}", ask.what, rest.len(), second.head);
    (first, Some(second))
}

// ---------------------------------------------------------------------------------------------
// Content-Length on every answer
// ---------------------------------------------------------------------------------------------

/// What a transport test asks and what it expects back.
struct Case {
    ask: Ask,
    status: u16,
    /// The exact body, where it is known (firmware).
    body: Option<Vec<u8>>,
}

fn cases(site: &Site) -> Vec<Case> {
    let backup = b"config change CMD0 /name Reception /location Berlin\r\nconfig change UP1 /poll 15\r\n".to_vec();
    vec![
        Case {
            ask: Ask::get("innovaphone poll (big snippet)", format!("{PREFIX}/update.php?{DEVICE_QUERY}"), INNOVAPHONE),
            status: 200,
            body: None,
        },
        Case {
            ask: Ask::get("innovaphone poll (small)", format!("{PREFIX}/update.php?{SMALL_POLL}"), "innovaphone-IP222/13r3"),
            status: 200,
            body: None,
        },
        Case { ask: Ask::get("SPA profile", format!("{PREFIX}/update.php"), SPA_737), status: 200, body: None },
        Case {
            ask: Ask::get("SPA with a malformed agent", format!("{PREFIX}/update.php"), "Linksys/SPA504G-garbage"),
            status: 404,
            body: None,
        },
        Case { ask: Ask::get("admin page", format!("{PREFIX}/admin/admin.php"), "Mozilla/5.0"), status: 200, body: None },
        Case {
            ask: Ask {
                what: "backup PUT",
                method: "PUT",
                target: format!("{PREFIX}/update.php?mode=backup&hwid=IP232-3e-0c-57&sn={DEVICE_SN}"),
                agent: INNOVAPHONE,
                body: backup,
            },
            status: 200,
            body: None,
        },
        Case {
            ask: Ask::get("firmware with a cache buster", format!("{PREFIX}/{FW_752B}?SW=7.5.2b"), SPA_737),
            status: 200,
            body: Some(fs::read(site.tree.join(FW_752B)).unwrap()),
        },
    ]
}

/// The answer has the expected status and body, one `Content-Length` that is its body's
/// length, and no `Transfer-Encoding`.
fn check_framed(site: &Site, case: &Case, how: &str, answer: &Raw) -> Result<(), String> {
    let what = format!("{:?} door, {how}, {}", site.door, case.ask.what);
    if answer.status != case.status {
        return Err(format!("{what}: status {} (expected {}):\n{}{}", answer.status, case.status, answer.head, answer.text()));
    }
    if answer.framing != Framing::ContentLength || !answer.values("transfer-encoding").is_empty() {
        return Err(format!("{what}: answer delimited by {:?}, not by Content-Length:\n{}", answer.framing, answer.head));
    }
    let lengths = answer.values("content-length");
    if lengths != [answer.body.len().to_string()] {
        return Err(format!("{what}: Content-Length {lengths:?} for a body of {} bytes:\n{}", answer.body.len(), answer.head));
    }
    if let Some(expected) = &case.body {
        if &answer.body != expected {
            return Err(format!("{what}: the body is not the file's {} bytes ({} received)", expected.len(), answer.body.len()));
        }
    }
    // the same backup again is not stored twice
    if case.ask.what == "backup PUT" && !["# backup stored", "# no change (newest backup/"].iter().any(|a| answer.text().starts_with(a)) {
        return Err(format!("{what}: not a backup's answer:\n{}", answer.text()));
    }
    Ok(())
}

fn every_answer_carries_content_length(door: Door, answers: Answers) {
    let site = Site::start(door, answers);
    let host = site.host();
    let mut failures = Vec::new();
    for case in cases(&site) {
        let answer = http10(site.port, &host, &case.ask);
        failures.extend(check_framed(&site, &case, "HTTP/1.0", &answer).err());
        let (first, second) = http11_twice(site.port, &host, &case.ask);
        failures.extend(check_framed(&site, &case, "HTTP/1.1 kept alive", &first).err());
        match second {
            Some(second) => failures.extend(check_framed(&site, &case, "HTTP/1.1 second on the connection", &second).err()),
            None => failures.push(format!("{:?} door, {}: no second request on the HTTP/1.1 connection", site.door, case.ask.what)),
        }
    }
    assert!(failures.is_empty(), "{} failures ({answers:?} answers):\n{}\n{}", failures.len(), failures.join("\n"), site.logs());
}

#[test]
fn every_answer_carries_content_length_through_lighttpd_cgi() {
    every_answer_carries_content_length(Door::Cgi, Answers::Buffered);
}

#[test]
fn every_answer_carries_content_length_through_lighttpd_cgi_streaming() {
    every_answer_carries_content_length(Door::Cgi, Answers::Streamed);
}

#[test]
fn every_answer_carries_content_length_through_lighttpd_fastcgi() {
    every_answer_carries_content_length(Door::FastCgi, Answers::Buffered);
}

#[test]
fn every_answer_carries_content_length_through_lighttpd_fastcgi_streaming() {
    every_answer_carries_content_length(Door::FastCgi, Answers::Streamed);
}

#[test]
fn every_answer_carries_content_length_through_serve() {
    every_answer_carries_content_length(Door::Serve, Answers::Buffered);
}

// ---------------------------------------------------------------------------------------------
// The thread's walk, end to end
// ---------------------------------------------------------------------------------------------

/// Connects to the host and port of an absolute `http://` URL (which must be this site's) and
/// GETs its path over HTTP/1.0 with the URL's host in `Host`, as a phone does.
fn fetch_url(site: &Site, url: &str, agent: &'static str) -> Raw {
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("not an http:// URL: {url}"));
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let port: u16 = host.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(80);
    assert_eq!(port, site.port, "{url} does not lead back to the server that answered");
    http10(port, host, &Ask::get("Upgrade_Rule", path.to_string(), agent))
}

/// The text of `<name>…</name>` in a profile.
fn parameter<'a>(profile: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = profile.find(&open)? + open.len();
    let end = profile[start..].find(&format!("</{name}>"))?;
    Some(&profile[start..start + end])
}

fn the_threads_walk(door: Door) {
    let site = Site::start(door, Answers::Buffered);
    let logs = || site.logs();
    let rule = format!("{}/update.php?mac=$MA&amp;phase=update", site.base_url());
    for (agent, query, hop) in [
        ("Linksys/SPA504G-7.3.7 (58BFEA1104E6)(CCQ16380FYH)", "", Some(FW_752B)),
        ("Linksys/SPA504G-7.4.3a (58BFEA1104E6)(CCQ16380FYH)", "", Some(FW_752B)),
        ("Cisco/SPA504G-7.5.2b (58BFEA1104E6)(CCQ16380FYH)", "?mac=58bfea1104e6&phase=update", Some(FW_761)),
        ("Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)", "?mac=58bfea1104e6&phase=update", None),
    ] {
        let version = agent.split('-').nth(1).and_then(|v| v.split(' ').next()).unwrap();
        let answer = http10(site.port, &site.host(), &Ask::get("SPA profile", format!("{PREFIX}/update.php{query}"), agent));
        let body = answer.text();
        let context = format!("{door:?} door, {agent}:\n{}{body}\n{}", answer.head, logs());
        assert_eq!(answer.status, 200, "{context}");
        assert_eq!(answer.framing, Framing::ContentLength, "{context}");
        assert_eq!(answer.header("content-length"), Some(answer.body.len().to_string().as_str()), "{context}");
        assert_eq!(answer.header("content-type"), Some("text/xml"), "{context}");
        assert!(body.starts_with("<flat-profile>") && body.trim_end().ends_with("</flat-profile>"), "{context}");
        // the merged snippets: the class snippet's Station_Name replaces the all-class one
        assert!(body.contains("<Line_Enable_1_>Yes</Line_Enable_1_>"), "{context}");
        assert!(body.contains("<Station_Name>SPA &amp; friends</Station_Name>") && !body.contains("lobby"), "{context}");
        assert!(body.contains("<Dial_Plan_1_ ua=\"ro\"/>"), "{context}");
        assert_eq!(parameter(&body, "Profile_Rule"), Some(rule.as_str()), "{context}");
        assert_eq!(parameter(&body, "Resync_Periodic"), Some("900"), "{context}");
        match hop {
            Some(file) => {
                assert_eq!(parameter(&body, "Upgrade_Enable"), Some("Yes"), "{context}");
                let url = parameter(&body, "Upgrade_Rule").unwrap_or_else(|| panic!("no Upgrade_Rule: {context}"));
                assert_eq!(url, format!("{}/{file}", site.base_url()), "{context}");
                // the phone fetches it with a cache buster
                let image = fetch_url(&site, &format!("{url}?SW={version}"), agent);
                let expected = fs::read(site.tree.join(file)).unwrap();
                assert_eq!(image.status, 200, "{door:?} door, {url}:\n{}\n{}", image.head, logs());
                assert_eq!(image.framing, Framing::ContentLength, "{door:?} door, {url}:\n{}", image.head);
                assert_eq!(image.header("content-length"), Some(expected.len().to_string().as_str()), "{}", image.head);
                assert!(image.body == expected, "{door:?} door, {url}: {} bytes, not the file's {}", image.body.len(), expected.len());
            }
            None => {
                assert_eq!(parameter(&body, "Upgrade_Enable"), Some("No"), "{context}");
                assert!(!body.contains("Upgrade_Rule"), "{context}");
            }
        }
        let state = fs::read_to_string(site.tree.join(SPA_STATE)).unwrap_or_else(|e| panic!("{SPA_STATE}: {e}\n{context}"));
        assert!(state.contains("sn=\"58-bf-ea-11-04-e6\"") && state.contains("type=\"SPA504G\""), "{agent}: {state}");
        assert!(state.contains(&format!("version=\"{version}\"")) && state.contains("serial=\"CCQ16380FYH\""), "{agent}: {state}");
    }
    let state = fs::read_to_string(site.tree.join(SPA_STATE)).unwrap();
    assert!(state.contains("firmware 7.3.7 -&gt; 7.5.2b, an intermediate version"), "{state}");
    assert!(state.contains("firmware 7.5.2b -&gt; 7.6.1 (fw/cisco/spa50x-30x-7-6-1.bin)"), "{state}");
    // one device, one state file, whatever the agent's prefix
    let states: Vec<_> = fs::read_dir(site.tree.join("status"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".xml"))
        .map(|e| e.file_name())
        .collect();
    assert_eq!(states.len(), 1, "{states:?}");
}

#[test]
fn the_threads_walk_through_lighttpd_cgi() {
    the_threads_walk(Door::Cgi);
}

#[test]
fn the_threads_walk_through_lighttpd_fastcgi() {
    the_threads_walk(Door::FastCgi);
}

#[test]
fn the_threads_walk_through_serve() {
    the_threads_walk(Door::Serve);
}

// ---------------------------------------------------------------------------------------------
// An innovaphone phone on its upgrade path
// ---------------------------------------------------------------------------------------------

/// The `prot` commands of a poll answer.
fn prot_commands(answer: &str) -> Vec<String> {
    commands_of(answer).into_iter().filter(|c| c.starts_with("mod cmd UP0 prot ")).collect()
}

fn an_innovaphone_phone_walks_its_path(door: Door) {
    let site = Site::start(door, Answers::Buffered);
    let poll = |device: &str, prot: &str| {
        let query = format!("{device}&PROT={prot}");
        let answer = http10(site.port, &site.host(), &Ask::get("poll", format!("{PREFIX}/update.php?{query}"), INNOVAPHONE));
        let context = format!("{door:?} door, {query}:\n{}\n{}", answer.head, site.logs());
        assert_eq!((answer.status, answer.framing), (200, Framing::ContentLength), "{context}");
        (prot_commands(&answer.text()), context)
    };
    let phone = "type=IP222&sn=00-90-33-11-22-33&hwid=IP222-11-22-33&ip=172.16.4.33&polling=0&phase=update";
    let url = |build: &str, file: &str| format!("mod cmd UP0 prot {}/fw/{build}/{file} ser {build}", site.base_url());
    let (sent, context) = poll(phone, "130178");
    assert_eq!(sent, [url("131504", "ip222.bin")], "below the via build: the via build\n{context}");
    let state = fs::read_to_string(site.tree.join("status/00-90-33-11-22-33.xml")).unwrap();
    assert!(state.contains("via=\"131504\"") && state.contains("requested=\"131504\""), "{state}");
    let (sent, context) = poll(phone, "131504");
    assert_eq!(sent, [url("134567", "ip222.bin")], "at the via build: the target\n{context}");
    let state = fs::read_to_string(site.tree.join("status/00-90-33-11-22-33.xml")).unwrap();
    assert!(!state.contains("via=") && state.contains("requested=\"134567\""), "{state}");
    let (sent, context) = poll(phone, "134567");
    assert!(sent.is_empty(), "at the target: no firmware command\n{context}");

    let gateway = "type=IP0011&sn=00-90-33-44-55-66&hwid=IP0011-44-55-66&ip=172.16.4.66&polling=0&phase=update";
    let (sent, context) = poll(gateway, "130178");
    assert_eq!(sent, [url("134567", "ip0011.bin")], "a gateway is not on the phones' path\n{context}");
}

#[test]
fn an_innovaphone_phone_walks_its_path_through_lighttpd_cgi() {
    an_innovaphone_phone_walks_its_path(Door::Cgi);
}

#[test]
fn an_innovaphone_phone_walks_its_path_through_lighttpd_fastcgi() {
    an_innovaphone_phone_walks_its_path(Door::FastCgi);
}
