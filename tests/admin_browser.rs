//! The admin page in a real browser: headless Chromium driven over WebDriver (chromedriver)
//! against `update-server serve` on 127.0.0.1 with a fixture of four devices. Logs in, checks
//! the rows, the filter, touch and delete on the right row, the log toggle, that a device name
//! with `<script>` stays text, and keeps a screenshot as `target/test-artifacts/admin-status.png`.
//!
//! WebDriver is plain JSON over HTTP; the few commands this test needs are spoken directly
//! (std `TcpStream` + `serde_json`), which spares the test an async runtime and an HTTP stack.
//! Needs Debian's `chromium` and `chromium-driver` (tools/test installs them).

mod support;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A child process of this test, killed (by its own pid) when the test ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}");
        }
        if TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 20 s");
}

/// The WebDriver session.
struct Driver {
    port: u16,
    session: String,
}

impl Driver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        call(self.port, method, &format!("/session/{}{path}", self.session), body)
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        raw_call(self.port, method, &format!("/session/{}{path}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn script(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    fn element(&self, css: &str) -> String {
        let found = self.call("POST", "/element", Some(json!({ "using": "css selector", "value": css })));
        found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap_or_else(|| panic!("no element {css}")).to_string()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/clear"), Some(json!({})));
        if !text.is_empty() {
            self.call("POST", &format!("/element/{id}/value"), Some(json!({ "text": text })));
        }
    }

    /// Waits until `script` (a function body returning a value) returns true.
    fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.script(script, json!([])) == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let html = self.script("return document.body ? document.body.innerHTML.slice(0, 3000) : ''", json!([]));
                panic!("timed out waiting for {what}; page: {html}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until a dialog (the delete confirmation) is open.
    fn wait_for_dialog(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_call("GET", "/alert/text", None).is_err() {
            assert!(Instant::now() < deadline, "the confirmation dialog did not open");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn visible_serials(&self) -> Vec<String> {
        let value = self.script(
            "return Array.from(document.querySelectorAll('#devices tr.device')).filter(function (r) { return !r.hidden && r.offsetParent !== null; }).map(function (r) { return r.getAttribute('data-sn'); });",
            json!([]),
        );
        serde_json::from_value(value).expect("a list of serials")
    }

    fn filter(&self, text: &str, expected: &[&str]) {
        self.type_into("#filter", text);
        let want = serde_json::to_string(expected).unwrap();
        self.wait_until(
            &format!("filter {text:?} to show {want}"),
            &format!(
                "var shown = Array.from(document.querySelectorAll('#devices tr.device')).filter(function (r) {{ return !r.hidden && r.offsetParent !== null; }}).map(function (r) {{ return r.getAttribute('data-sn'); }}); return JSON.stringify(shown) === {want:?};"
            ),
        );
        assert_eq!(self.visible_serials(), expected, "filter {text:?}");
    }
}

impl Drop for Driver {
    /// Ends the browser too (also when the test fails half-way), so no Chromium is left behind.
    fn drop(&mut self) {
        let _ = raw_call(self.port, "DELETE", &format!("/session/{}", self.session), None);
    }
}

fn raw_call(port: u16, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10)).expect("connecting to chromedriver");
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("sending to chromedriver");
    // chromedriver keeps the connection open whatever we ask: read the head, then exactly
    // Content-Length bytes (or chunks until the last one)
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let (head, mut payload) = loop {
        let n = stream.read(&mut buf).expect("reading chromedriver's answer");
        assert!(n > 0, "chromedriver closed the connection");
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&raw[..end]).into_owned(), raw[end + 4..].to_vec());
        }
    };
    let lower = head.to_ascii_lowercase();
    let length = lower.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = lower.contains("transfer-encoding: chunked") || lower.contains("transfer-encoding:chunked");
    loop {
        let complete = match length {
            Some(length) => payload.len() >= length,
            None if chunked => payload.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if complete {
            break;
        }
        let n = stream.read(&mut buf).expect("reading chromedriver's answer");
        if n == 0 {
            break;
        }
        payload.extend_from_slice(&buf[..n]);
    }
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let payload = String::from_utf8_lossy(&payload).into_owned();
    let payload = if chunked { dechunk(&payload) } else { payload };
    let value: Value = serde_json::from_str(&payload).unwrap_or_else(|e| panic!("chromedriver answered {status} {e}: {payload}"));
    let value = value.get("value").cloned().unwrap_or(Value::Null);
    if status == 200 { Ok(value) } else { Err(value) }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

fn call(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    raw_call(port, method, path, body).unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
}

fn state_seen(root: &Path, sn: &str) -> u64 {
    let text = std::fs::read_to_string(root.join(format!("status/{sn}.xml"))).unwrap();
    text.split("seen=\"").nth(1).and_then(|s| s.split('"').next()).and_then(|s| s.parse().ok()).unwrap()
}

fn artifact_dir() -> PathBuf {
    let dir = repo_root().join("target").join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("creating target/test-artifacts");
    dir
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            _ => 63,
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace() && *b != b'=').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    out
}

#[test]
fn status_page_in_headless_chromium() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(Path::new(tool).exists(), "{tool} is missing: apt-get install chromium chromium-driver (tools/test installs them)");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    copy_install_tree(&root);
    write_admin_fixture(&root, ADMIN_PASSWORD);

    let port = free_port();
    let mut server = Process(
        Command::new(binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--root"])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting update-server serve"),
    );
    wait_for_port(port, "update-server serve", &mut server.0);
    let driver_port = free_port();
    let mut chromedriver = Process(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver"),
    );
    wait_for_port(driver_port, "chromedriver", &mut chromedriver.0);
    let profile = dir.path().join("chromium-profile");
    let capabilities = json!({ "capabilities": { "alwaysMatch": {
        "browserName": "chrome",
        "unhandledPromptBehavior": "ignore",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1500,1000", format!("--user-data-dir={}", profile.display())
            ]
        }
    }}});
    let created = call(driver_port, "POST", "/session", Some(capabilities));
    let driver = Driver { port: driver_port, session: created["sessionId"].as_str().expect("a session id").to_string() };
    let base = format!("http://127.0.0.1:{port}");

    // log in
    driver.go(&format!("{base}/admin/admin.php"));
    driver.wait_until("the login form", "return !!document.querySelector('input[name=pw]');");
    driver.type_into("input[name=user]", "admin");
    driver.type_into("input[name=pw]", ADMIN_PASSWORD);
    driver.click("form.login-form button[type=submit]");
    driver.wait_until("the status page", "return document.querySelectorAll('#devices tr.device').length === 4;");
    assert_eq!(driver.visible_serials(), FIXTURE_SERIALS);
    let stylesheet_applied = driver.script("return getComputedStyle(document.querySelector('table.devices')).borderCollapse;", json!([]));
    assert_eq!(stylesheet_applied, json!("collapse"), "www/admin.css is loaded");

    // a device name with <script> is text, never markup
    let name = driver.script("return document.querySelector('#device-00-90-33-3e-0c-57 .name').textContent;", json!([]));
    assert_eq!(name, json!("<script>alert(1)</script>"));
    assert_eq!(driver.script("return document.querySelectorAll('script').length;", json!([])), json!(1));
    assert!(driver.try_call("GET", "/alert/text", None).is_err(), "no alert opened by a device's name");
    assert!(driver.script("return document.querySelector('#device-00-90-33-00-00-01 td.info').textContent;", json!([])).as_str().unwrap().contains("up: alice/101"));

    // the filter hides and shows rows
    driver.filter("ip222", &["00-90-33-11-22-33"]);
    driver.filter("172.16.", &["00-90-33-00-00-01", "00-90-33-11-22-33", "00-90-33-3e-0c-57"]);
    driver.filter("172.16. IP2*", &["00-90-33-11-22-33", "00-90-33-3e-0c-57"]);
    driver.filter("missing", &["00-90-33-11-22-33"]);
    driver.filter("0090333e0c57", &["00-90-33-3e-0c-57"]);
    driver.filter("6", &[]);
    driver.filter("", &FIXTURE_SERIALS);
    assert!(driver.script("return document.getElementById('count').textContent;", json!([])).as_str().unwrap().starts_with("4 of 4"));

    // touch un-misses exactly the missing row
    let before: Vec<u64> = FIXTURE_SERIALS.iter().map(|sn| state_seen(&root, sn)).collect();
    driver.click("#device-00-90-33-11-22-33 button[data-act=touch]");
    driver.wait_until("the touched row to be present", "var r = document.getElementById('device-00-90-33-11-22-33'); return !!r && !r.classList.contains('missing');");
    let after: Vec<u64> = FIXTURE_SERIALS.iter().map(|sn| state_seen(&root, sn)).collect();
    for (i, sn) in FIXTURE_SERIALS.iter().enumerate() {
        if *sn == "00-90-33-11-22-33" {
            assert!(after[i] > before[i], "touched");
        } else {
            assert_eq!(after[i], before[i], "{sn} untouched");
        }
    }

    // the log toggle loads the messages of that row only
    driver.click("#device-00-90-33-3e-0c-57 button[data-act=log]");
    driver.wait_until("the log", "var r = document.getElementById('device-00-90-33-3e-0c-57'); return !!r && r.hasAttribute('data-detail') && r.querySelector('ul.msgs').textContent.indexOf('<b>bold</b>') >= 0;");
    assert_eq!(driver.script("return document.querySelectorAll('tr[data-detail]').length;", json!([])), json!(1));
    assert_eq!(driver.script("return document.querySelectorAll('ul.msgs b').length;", json!([])), json!(0), "log text stays text");

    // screenshot for people
    std::thread::sleep(Duration::from_millis(300));
    let shot = driver.call("GET", "/screenshot", None);
    let png = base64_decode(shot.as_str().expect("base64 PNG"));
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let artifact = artifact_dir().join("admin-status.png");
    std::fs::write(&artifact, png).expect("writing the screenshot");
    eprintln!("screenshot: {}", artifact.display());

    // delete acts on the right row, after the confirmation
    driver.click("#device-00-90-33-aa-bb-cc button[data-act=delete]");
    driver.wait_for_dialog();
    let question = driver.call("GET", "/alert/text", None);
    assert!(question.as_str().unwrap().contains("00-90-33-aa-bb-cc"), "{question}");
    driver.call("POST", "/alert/accept", Some(json!({})));
    driver.wait_until("the deleted row to go", "return !document.getElementById('device-00-90-33-aa-bb-cc');");
    assert!(!root.join("status/00-90-33-aa-bb-cc.xml").exists());
    assert_eq!(driver.visible_serials(), ["00-90-33-00-00-01", "00-90-33-11-22-33", "00-90-33-3e-0c-57"]);
    for sn in ["00-90-33-00-00-01", "00-90-33-11-22-33", "00-90-33-3e-0c-57"] {
        assert!(root.join(format!("status/{sn}.xml")).exists(), "{sn} kept");
    }
    // a dismissed confirmation deletes nothing
    driver.click("#device-00-90-33-00-00-01 button[data-act=delete]");
    driver.wait_for_dialog();
    driver.call("POST", "/alert/dismiss", Some(json!({})));
    std::thread::sleep(Duration::from_millis(300));
    assert!(root.join("status/00-90-33-00-00-01.xml").exists());

    // issue 11: a backup's diff to the one before, from the row's details, in the real browser
    // (the links come with the details the script loads)
    driver.go(&format!("{base}/admin/admin.php?mode=status"));
    driver.wait_until("the status page again", "return !!document.querySelector('#device-00-90-33-3e-0c-57 button[data-act=log]');");
    driver.click("#device-00-90-33-3e-0c-57 button[data-act=log]");
    driver.wait_until("the backup files", "return !!document.querySelector('#device-00-90-33-3e-0c-57 a.diff');");
    driver.click("#device-00-90-33-3e-0c-57 a.diff");
    driver.wait_until(
        "the diff",
        "var d = document.querySelector('tr.del td.text'), a = document.querySelector('tr.add td.text'); return !!d && !!a && d.textContent === 'config change CMD0 /name old' && a.textContent === 'config change CMD0 /name new';",
    );
    // and a row's Preview: the answer and the changes, nothing written
    let before = snapshot_files(&root);
    driver.go(&format!("{base}/admin/admin.php?mode=status"));
    driver.wait_until("the status page again", "return !!document.querySelector('#device-00-90-33-3e-0c-57 a.act');");
    driver.click("#device-00-90-33-3e-0c-57 a.act");
    driver.wait_until("the preview", "var p = document.querySelector('pre.transcript'); return !!p && p.textContent.indexOf('# preview: HTTP 200 - nothing was written') >= 0;");
    assert_eq!(snapshot_diff(&before, &snapshot_files(&root)), Vec::<String>::new(), "the preview wrote something");

    // the page works after a reload with the filter given to the server
    driver.go(&format!("{base}/admin/admin.php?mode=status&filter=ip232"));
    driver.wait_until("the filtered page", "return document.querySelectorAll('#devices tr.device').length === 1;");

    // status/@refresh: the rows in view follow their state files by themselves
    let config = admin_user_config("admin", ADMIN_PASSWORD).replace("refresh=\"0\"", "refresh=\"1\"");
    std::fs::write(root.join("config/user-config.xml"), config).unwrap();
    // a running server looks at its configuration files again after a second
    std::thread::sleep(Duration::from_millis(1200));
    driver.go(&format!("{base}/admin/admin.php?mode=status"));
    driver.wait_until("the refreshing page", "return document.body.getAttribute('data-refresh') === '1';");
    let state = std::fs::read_to_string(root.join("status/00-90-33-00-00-01.xml")).unwrap();
    std::fs::write(root.join("status/00-90-33-00-00-01.xml"), state.replace("Alice phone", "Alice's new phone")).unwrap();
    driver.wait_until("the row to follow its state", "return document.querySelector('#device-00-90-33-00-00-01 .name').textContent === \"Alice's new phone\";");

    // a long list comes in pages, and the filter then asks the server, which sees every device
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for i in 0..600u32 {
        let sn = format!("00-90-33-{:02x}-{:02x}-{:02x}", 0x50 + i / 65536, (i / 256) % 256, i % 256);
        let device_type = if i % 100 == 7 { "IP811" } else { "IP111" };
        write_state(&root, &sn, &format!(r#"<state seen="{now}"><device sn="{sn}" type="{device_type}" ip="10.9.{}.{}" realip="10.9.{}.{}"/></state>"#, i / 256, i % 256, i / 256, i % 256));
    }
    driver.go(&format!("{base}/admin/admin.php?mode=status"));
    driver.wait_until("the first page", "return document.querySelectorAll('#devices tr.device').length === 500 && !!document.getElementById('pager');");
    driver.filter("ip811", &["00-90-33-50-00-07", "00-90-33-50-00-6b", "00-90-33-50-00-cf", "00-90-33-50-01-33", "00-90-33-50-01-97", "00-90-33-50-01-fb"]);
    assert!(driver.script("return location.search;", json!([])).as_str().unwrap().contains("filter=ip811"), "the URL keeps the filter");
    assert_eq!(driver.script("return document.getElementById('pager');", json!([])), json!(null));

}
