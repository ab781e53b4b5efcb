//! Helpers shared by the integration tests: install-tree copies in temporary roots, the binary
//! run as CGI exactly like the conformance harness runs it, a small loopback HTTP/1.0 client,
//! and a real lighttpd that is stopped when the test ends.
//!
//! Nothing here writes into the repository: every root lives in a `tempfile::TempDir`.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The repository, which is also the install tree (`config.xml`, `scripts/`, …).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `update-server` binary cargo built for this test run.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_update-server"))
}

/// The mtime the conformance harness gives overlaid files: old enough that no snippet is
/// inside the `times/@grace` window.
pub const OLD_MTIME: u64 = 1_600_000_000;

/// A device that polls in the tests (same identity as the conformance cases).
pub const DEVICE_SN: &str = "00-90-33-3e-0c-57";
pub const DEVICE_QUERY: &str =
    "type=IP232&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57&ip=172.16.4.57&polling=0&phase=update";

/// Directory names the harness leaves out when it copies the install tree.
const NOT_INSTALLED: &[&str] = &[".git", "target", "node_modules"];

/// Copies the install tree to `dst`: the files a fresh clone would have (git's tracked files
/// and new ones it does not ignore), so a developer's runtime data (`status/`, `cache/`,
/// `config/user-config.xml`, …, all git-ignored) cannot change what a test sees. Without git,
/// the repository without `.git` and `target` is copied and the runtime folders are emptied.
pub fn copy_install_tree(dst: &Path) {
    let listed = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(repo_root())
        .output()
        .ok()
        .filter(|out| out.status.success());
    if let Some(out) = listed {
        for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let relative = Path::new(std::str::from_utf8(name).expect("file names are UTF-8"));
            let from = repo_root().join(relative);
            if !from.is_file() {
                continue; // deleted in the working tree
            }
            let to = dst.join(relative);
            fs::create_dir_all(to.parent().expect("a file has a folder")).expect("creating a folder");
            fs::copy(&from, &to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
        }
        return;
    }
    copy_dir(&repo_root(), dst).unwrap_or_else(|e| panic!("copying the install tree to {}: {e}", dst.display()));
    for runtime in ["status", "cache", "backup", "certs"] {
        let dir = dst.join(runtime);
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_name() == ".keep" {
                    continue;
                }
                let path = entry.path();
                let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            }
        }
        fs::create_dir_all(&dir).expect("creating a runtime folder");
    }
    let _ = fs::remove_file(dst.join("config/user-config.xml"));
    let _ = fs::remove_file(dst.join("config/user-config-dvl.xml"));
}

fn copy_dir(src: &Path, dst: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        if NOT_INSTALLED.iter().any(|n| name == *n) {
            continue;
        }
        let from = entry.path();
        let to = dst.join(&name);
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if kind.is_dir() {
            copy_dir(&from, &to)?;
        } else {
            fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

/// Writes `rel` under `root` (creating folders) with the harness's old mtime.
pub fn write_old_file(root: &Path, rel: &str, contents: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("file has a parent")).expect("creating folders");
    fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let file = fs::File::options().write(true).open(&path).expect("reopening for mtime");
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(OLD_MTIME))
        .expect("setting mtime");
}

/// The smallest useful setup: no master device, state tracking on, one snippet for everyone.
pub fn write_basic_setup(root: &Path) {
    write_old_file(
        root,
        "config/user-config.xml",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config>\n    <master info=\"\"/>\n    <status dir=\"status\"/>\n</config>\n",
    );
    write_old_file(
        root,
        "scripts/update-all-default.txt",
        "# snippet all-default\nconfig add CMD0 /location all-default\n",
    );
}

/// An answer as the conformance harness judges it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The command lines (see [`commands_of`]).
    pub fn commands(&self) -> Vec<String> {
        commands_of(&self.body)
    }

    /// The value of `mod cmd UP1 check ser <md5>`, if the answer sets one.
    pub fn check_serial(&self) -> Option<String> {
        self.commands().iter().find_map(|line| {
            line.trim().strip_prefix("mod cmd UP1 check ser ").map(|v| v.trim().to_string())
        })
    }
}

/// The harness's view of a body: CRLF → LF, trailing blanks removed, blank and `#` lines dropped.
pub fn commands_of(body: &str) -> Vec<String> {
    body.replace("\r\n", "\n")
        .split('\n')
        .map(str::trim_end)
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Splits `Header: value` lines from the body (CGI output or an HTTP response after the
/// status line).
fn split_head(raw: &[u8]) -> (Vec<(String, String)>, String) {
    let (head, body) = match find(raw, b"\r\n\r\n") {
        Some(i) => (&raw[..i], &raw[i + 4..]),
        None => match find(raw, b"\n\n") {
            Some(i) => (&raw[..i], &raw[i + 2..]),
            None => (raw, &raw[raw.len()..]),
        },
    };
    let headers = String::from_utf8_lossy(head)
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (headers, String::from_utf8_lossy(body).into_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What a CGI request looks like apart from the script and query.
#[derive(Debug, Clone)]
pub struct CgiContext {
    /// URL path of the install directory, e.g. `/update` (no trailing slash).
    pub url_prefix: String,
    pub host: String,
    pub port: u16,
    pub remote_addr: String,
    pub server_software: String,
}

impl Default for CgiContext {
    fn default() -> Self {
        CgiContext {
            url_prefix: "/mtls/update".into(),
            host: "update.example.com".into(),
            port: 80,
            remote_addr: "172.16.4.57".into(),
            server_software: "Apache/2.4.57 (Debian)".into(),
        }
    }
}

/// Runs the binary as a CGI program for a GET of `script` (relative to the install directory),
/// with the environment the conformance harness builds (nothing inherited but `PATH`).
pub fn cgi_get(root: &Path, ctx: &CgiContext, script: &str, query: &str) -> Answer {
    cgi_request(root, ctx, "GET", script, query, b"", &[])
}

/// Runs `command` to completion, killing it after `limit`.
pub fn run_with_timeout(command: Command, limit: Duration) -> std::process::Output {
    // an empty standard input: the child reads end-of-file at once
    run_with_input(command, b"", limit)
}

/// A port on 127.0.0.1 that was free a moment ago, and never handed out before in this test
/// binary: the kernel may give the same ephemeral port to the next bind once the first
/// listener is closed, and a test asking for two ports (nginx's plain and TLS `listen`) once
/// got the same one twice ("a duplicate listen").
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("binding an ephemeral loopback port")
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// A `GET` over HTTP/1.0 to 127.0.0.1:`port` with `Host: host`; every step has a time-out.
pub fn http_get(port: u16, path_and_query: &str, host: &str) -> Answer {
    http_request(port, "GET", path_and_query, &[("Host", host), ("User-Agent", "innovaphone-update/1.0")], b"")
}

/// A request over HTTP/1.0 to 127.0.0.1:`port` with `headers` (and a `Content-Length` when
/// there is a body); every step has a time-out.
pub fn http_request(port: u16, method: &str, path_and_query: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let limit = Duration::from_secs(20);
    let mut stream = TcpStream::connect_timeout(&address, limit)
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    stream.set_write_timeout(Some(limit)).expect("write timeout");
    let mut request = format!("{method} {path_and_query} HTTP/1.0\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).expect("sending the request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("reading the answer to {method} {path_and_query}: {e}"));
    let line_end = find(&raw, b"\r\n").unwrap_or_else(|| panic!("no status line in {:?}", String::from_utf8_lossy(&raw)));
    let status_line = String::from_utf8_lossy(&raw[..line_end]).into_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let (headers, body) = split_head(&raw[line_end + 2..]);
    Answer { status, headers, body }
}

pub const LIGHTTPD: &str = "/usr/sbin/lighttpd";

/// A lighttpd running in the foreground in its own process group (so that the FastCGI
/// backends it spawns go down with it); stopped on drop.
pub struct Lighttpd {
    child: Child,
    pub port: u16,
    pub error_log: PathBuf,
    pub output: PathBuf,
}

impl Lighttpd {
    /// Starts `lighttpd -D -f conf` and waits until it accepts connections on `port`.
    /// `error_log` is the file the configuration names in `server.errorlog`.
    pub fn start(conf: &Path, port: u16, error_log: &Path) -> Lighttpd {
        use std::os::unix::process::CommandExt;
        assert!(
            Path::new(LIGHTTPD).exists(),
            "{LIGHTTPD} is not installed: this test needs Debian's lighttpd (apt-get install lighttpd; .ci/run installs it)"
        );
        let check = Command::new(LIGHTTPD).arg("-tt").arg("-f").arg(conf).output().expect("running lighttpd -tt");
        assert!(
            check.status.success(),
            "lighttpd refuses the configuration {}:\n{}{}",
            conf.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let output = conf.with_extension("out");
        let out = fs::File::create(&output).expect("creating the lighttpd output file");
        let child = Command::new(LIGHTTPD)
            .arg("-D")
            .arg("-f")
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("starting lighttpd");
        let mut server = Lighttpd { child, port, error_log: error_log.to_path_buf(), output };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("lighttpd exited at start ({status}):\n{}", server.logs());
            }
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return server;
            }
            if Instant::now() > deadline {
                panic!("lighttpd did not listen on 127.0.0.1:{port} within 15 s:\n{}", server.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// lighttpd's error log and console output, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- {}\n{}\n--- {}\n{}",
            self.error_log.display(),
            fs::read_to_string(&self.error_log).unwrap_or_default(),
            self.output.display(),
            fs::read_to_string(&self.output).unwrap_or_default()
        )
    }

    /// Process ids of the children of lighttpd whose executable is `exe` (the spawned backends).
    pub fn backend_pids(&self, exe: &Path) -> Vec<u32> {
        let exe = fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
        children_of(self.child.id())
            .into_iter()
            .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).map(|p| p == exe).unwrap_or(false))
            .collect()
    }
}

/// Direct children of `parent`, from /proc.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The field after the parenthesised command name: state, then ppid.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

impl Drop for Lighttpd {
    fn drop(&mut self) {
        let group = self.child.id() as libc::pid_t;
        // SAFETY: signals to the process group this test created for lighttpd (process_group(0)
        // made lighttpd its leader; its FastCGI backends inherit the group).
        unsafe { libc::kill(-group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        // Whatever of the group is still there (lighttpd itself or an orphaned backend).
        // SAFETY: as above; kill(-group, 0) only checks whether the group still exists.
        unsafe {
            if libc::kill(-group, 0) == 0 {
                std::thread::sleep(Duration::from_millis(200));
                if libc::kill(-group, 0) == 0 {
                    libc::kill(-group, libc::SIGKILL);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary as a CGI program for any method with a request body (`PUT` for the device
/// data modes), with the environment [`cgi_get`] builds plus `extra_env` (e.g. the `SSL_*`
/// variables of a web server). The body is written from its own thread, and a server that
/// answers without reading it (a refused oversized body) is not an error.
pub fn cgi_request(
    root: &Path,
    ctx: &CgiContext,
    method: &str,
    script: &str,
    query: &str,
    body: &[u8],
    extra_env: &[(&str, &str)],
) -> Answer {
    let script_name = format!("{}/{}", ctx.url_prefix.trim_end_matches('/'), script);
    let script_filename = root.join(script);
    let cwd = script_filename.parent().expect("script has a folder").to_path_buf();
    fs::create_dir_all(&cwd).expect("creating the script folder");
    let request_uri = if query.is_empty() { script_name.clone() } else { format!("{script_name}?{query}") };
    let http_host = if ctx.port == 80 || ctx.port == 443 { ctx.host.clone() } else { format!("{}:{}", ctx.host, ctx.port) };
    let mut command = Command::new(binary());
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()))
        .env("TZ", "UTC")
        .env("LANG", "C")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", method)
        .env("QUERY_STRING", query)
        .env("REQUEST_URI", request_uri)
        .env("SCRIPT_NAME", &script_name)
        .env("SCRIPT_FILENAME", &script_filename)
        .env("DOCUMENT_ROOT", root)
        .env("HTTP_HOST", http_host)
        .env("SERVER_NAME", &ctx.host)
        .env("SERVER_PORT", ctx.port.to_string())
        .env("SERVER_ADDR", "127.0.0.1")
        .env("REMOTE_ADDR", &ctx.remote_addr)
        .env("REMOTE_PORT", "49152")
        .env("SERVER_SOFTWARE", &ctx.server_software)
        .env("REDIRECT_STATUS", "200")
        .env("HTTP_USER_AGENT", "innovaphone-update/1.0")
        .env("REQUEST_SCHEME", "http")
        .current_dir(&cwd);
    if !body.is_empty() || method != "GET" {
        command.env("CONTENT_LENGTH", body.len().to_string()).env("CONTENT_TYPE", "application/octet-stream");
    }
    for (name, value) in extra_env {
        command.env(name, value);
    }
    let output = run_with_input(command, body, Duration::from_secs(60));
    assert!(
        output.status.success(),
        "CGI {method} of {script}?{query} exited with {}; stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let (headers, body) = split_head(&output.stdout);
    let status = headers
        .iter()
        .find(|(k, _)| k == "status")
        .and_then(|(_, v)| v.get(..3).and_then(|code| code.parse().ok()))
        .unwrap_or(if headers.iter().any(|(k, _)| k == "location") { 302 } else { 200 });
    Answer { status, headers, body }
}

/// Runs `command` with `input` on its standard input (written by a helper thread; a child
/// that exits without reading it all is fine), killing it after `limit`.
pub fn run_with_input(mut command: Command, input: &[u8], limit: Duration) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {:?}: {e}", command.get_program()));
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // a broken pipe means the child answered without reading the body
        let _ = stdin.write_all(&input);
    });
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done_tx.send(());
        output
    });
    if done_rx.recv_timeout(limit).is_err() {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let _ = waiter.join();
        let _ = writer.join();
        panic!("{:?} did not finish within {limit:?}", command.get_program());
    }
    let _ = writer.join();
    waiter.join().expect("waiter thread").expect("waiting for the child")
}

/// Every file under `root` (relative path → content), for before/after comparisons.
pub fn snapshot_files(root: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, root: &Path, out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                walk(&path, root, out);
            } else {
                let content = fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                out.insert(path.strip_prefix(root).expect("under the root").to_path_buf(), content);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// What changed between two [`snapshot_files`]: created, changed and removed paths.
pub fn snapshot_diff(
    before: &std::collections::BTreeMap<PathBuf, Vec<u8>>,
    after: &std::collections::BTreeMap<PathBuf, Vec<u8>>,
) -> Vec<String> {
    let mut diff = Vec::new();
    for (path, content) in after {
        match before.get(path) {
            None => diff.push(format!("created {}", path.display())),
            Some(old) if old != content => diff.push(format!("changed {}", path.display())),
            Some(_) => {}
        }
    }
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        diff.push(format!("removed {}", path.display()));
    }
    diff
}

// ---------------------------------------------------------------------------------------------
// Admin page (tests/admin_*.rs)
// ---------------------------------------------------------------------------------------------

/// The admin password of the admin fixture.
pub const ADMIN_PASSWORD: &str = "Test-Passw0rd";

/// All values of a header (e.g. several `Set-Cookie`).
pub fn header_values<'a>(answer: &'a Answer, name: &str) -> Vec<&'a str> {
    answer.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
}

/// Writes a state file as the old server shaped them.
pub fn write_state(root: &Path, sn: &str, xml: &str) {
    let path = root.join("status").join(format!("{sn}.xml"));
    fs::create_dir_all(path.parent().expect("status folder")).expect("creating status/");
    fs::write(&path, xml).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The user file of the admin fixture with `password` (and `user`) as the credentials.
pub fn admin_user_config(user: &str, password: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<config>
  <master info="" user="{user}" password="{password}"/>
  <status dir="status" missing="3600" refresh="0"/>
  <backup dir="backup"/>
  <customcerts dir="certs"/>
  <queries>
    <query id="admin" title="Admin"><cmd>mod cmd CMD0 xml-info</cmd><applies>*</applies></query>
    <query id="registration" title="Registration">
      <cmd>mod cmd PHONE/USER phone-regs /cmd phone-regs</cmd>
      <applies>phone</applies>
      <show title="State: User/Number">concat(/state/queries/registration/info/reg[@id = "0"]/@state, ': ', /state/queries/registration/info/reg[@id = "0"]/@h323, '/', /state/queries/registration/info/reg[@id = "0"]/@e164)</show>
      <show title="Broken">concat(</show>
    </query>
  </queries>
</config>
"#
    )
}

/// Serials of the admin fixture's devices, in the order the status page lists them.
pub const FIXTURE_SERIALS: [&str; 4] = ["00-90-33-00-00-01", "00-90-33-11-22-33", "00-90-33-3e-0c-57", "00-90-33-aa-bb-cc"];

/// A status page worth looking at: four devices (one missing, one with a `<script>` name, CSR
/// files, backups, log messages, query answers), a snippet, and `password` as admin password.
pub fn write_admin_fixture(root: &Path, password: &str) {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs();
    write_old_file(root, "config/user-config.xml", &admin_user_config("admin", password));
    write_old_file(root, "scripts/update-all-default.txt", "# snippet all-default\nconfig add CMD0 /location all-default\n");
    let state = |sn: &str, seen: u64, ip: &str, device_type: &str, classes: &str, name: &str, extra: &str| {
        let hwid = format!("{device_type}-{}", &sn[9..]);
        let name = name.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<state seen="{seen}" phase="update">
  <device sn="{sn}" type="{device_type}" classes="{classes}" ip="{ip}" rp="false" phase="update" environments="default" hwid="{hwid}" realip="{ip}" backup="{seen}" certstat="OK"/>
  <firmware build="13r3" requested="13r3"/>
  <bootcode build="13r3"/>
  <config filename="scripts/update-all-default.txt" delivered="{seen}" version="{OLD_MTIME}"/>
  <msgs time="{seen}" msg=""/>
  <msgs time="{seen}" msg="delivered scripts/update-all-default.txt &lt;b&gt;bold&lt;/b&gt;"/>
  <queries><admin seen="{seen}"><info name="{name}"/></admin>{extra}</queries>
</state>
"#
        )
    };
    write_state(root, "00-90-33-00-00-01", &state("00-90-33-00-00-01", now - 30, "172.16.5.9", "IP112", "phone, opus_phone, phone_newui, ip112", "Alice phone",
        &format!(r#"<registration seen="{}"><info><reg id="0" state="up" h323="alice" e164="101"/></info></registration>"#, now - 30)));
    write_state(root, "00-90-33-11-22-33", &state("00-90-33-11-22-33", now - 2 * 86400, "172.16.4.33", "IP222", "phone, pre_opus_phone, phone_newui, ip222", "Lobby", ""));
    write_state(root, "00-90-33-3e-0c-57", &state("00-90-33-3e-0c-57", now - 60, "172.16.4.57", "IP232", "phone, pre_opus_phone, phone_newui, ip232", "<script>alert(1)</script>", ""));
    write_state(root, "00-90-33-aa-bb-cc", &state("00-90-33-aa-bb-cc", now - 120, "10.1.2.3", "IP1202", "gw, ip1202", "Gateway Berlin", ""));
    write_old_file(root, "backup/IP232-3e-0c-57/IP232-3e-0c-57.0.txt", "config change CMD0 /name old\r\n");
    write_old_file(root, "backup/IP232-3e-0c-57/IP232-3e-0c-57.1.txt", "config change CMD0 /name new\r\n");
    write_old_file(root, "certs/00-90-33-3e-0c-57-request.p10.pem", "-----BEGIN CERTIFICATE REQUEST-----\r\nMIIB\r\n-----END CERTIFICATE REQUEST-----\r\n");
    write_old_file(root, "certs/00-90-33-3e-0c-57-request.p10.der", "0");
}

/// A self-signed certificate for `update.example.com` and its key in one PEM file in `dir`, as
/// lighttpd's `ssl.pemfile` takes it.
pub fn self_signed_pem(dir: &Path) -> PathBuf {
    let (pem, key) = (dir.join("server.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=update.example.com", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&pem)
        .output()
        .expect("openssl is installed (tools/test installs it)");
    assert!(made.status.success(), "openssl req: {}", String::from_utf8_lossy(&made.stderr));
    let mut both = fs::read(&pem).expect("the certificate");
    both.extend(fs::read(&key).expect("the key"));
    fs::write(&pem, both).expect("writing the PEM file");
    pem
}

/// curl against `update.example.com:port` on 127.0.0.1 over HTTPS (a self-signed certificate
/// is accepted), `args` after the common ones; status code and body.
pub fn curl_site(port: u16, args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg("--resolve")
        .arg(format!("update.example.com:{port}:127.0.0.1"))
        .output()
        .expect("curl is installed (tools/test installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A lighttpd on 127.0.0.1:`port` over HTTPS with `pem` that deploys the binary under `prefix`
/// as [`deployment_block`] does, `max_procs` FastCGI backends, `www/` and logs in `tmp`
/// (`htdocs/` its document root).
pub fn https_lighttpd_conf(port: u16, tmp: &Path, root: &Path, pem: &Path, prefix: &str, max_procs: u32) -> String {
    fs::create_dir_all(tmp.join("htdocs")).expect("creating the document root");
    format!(
        r#"server.document-root = "{docroot}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{tmp}/lighttpd-error.log"
server.modules = ( "mod_access", "mod_alias", "mod_fastcgi", "mod_openssl" )
ssl.engine = "enable"
ssl.pemfile = "{pem}"
mimetype.assign = ( ".css" => "text/css", ".js" => "text/javascript", ".txt" => "text/plain" )
{deployment}"#,
        deployment = deployment_block(prefix, root, &tmp.join("update-server.sock"), max_procs, true),
        docroot = tmp.join("htdocs").display(),
        tmp = tmp.display(),
        pem = pem.display(),
    )
}

/// The part of a lighttpd configuration that deploys the binary under `prefix`, exactly as the
/// README's "Deploying under lighttpd" shows it: data, snippets and configuration denied to
/// static serving, the three scripts handed to one FastCGI binary spawned with `bin-path`.
/// Without `root_in_environment` the binary finds its root from `SCRIPT_FILENAME`.
pub fn deployment_block(prefix: &str, root: &Path, socket: &Path, max_procs: u32, root_in_environment: bool) -> String {
    let environment = if root_in_environment {
        format!(",\n        \"bin-environment\" => ( \"UPDATE_SERVER_ROOT\" => \"{}\" )", root.display())
    } else {
        String::new()
    };
    format!(
        r#"alias.url = ( "{prefix}/" => "{root}/" )
$HTTP["url"] =~ "^{prefix}/((status|backup|certs|cache|config|debug|scripts|dynamic)/|(user-)?config\.xml$)" {{
    url.access-deny = ( "" )
}}
$HTTP["url"] =~ "^{prefix}/(update|admin/admin|update-migrate)\.php$" {{
    fastcgi.server = ( ".php" => ((
        "socket" => "{socket}",
        "bin-path" => "{binary}",
        "check-local" => "disable",
        "max-procs" => {max_procs}{environment}
    )) )
}}
"#,
        root = root.display(),
        socket = socket.display(),
        binary = binary().display(),
    )
}

/// A handler that answers with the variables it got (sorted `K=V` lines), a blank line, and
/// the body: what a front door hands the application, made visible.
pub fn echo_request(request: &update_server::http::Request) -> update_server::http::Response {
    let sorted: std::collections::BTreeMap<_, _> = request.vars.iter().collect();
    let mut body: Vec<u8> = sorted.iter().flat_map(|(k, v)| format!("{k}={v}\n").into_bytes()).collect();
    body.push(b'\n');
    body.extend_from_slice(&request.body);
    update_server::http::Response::text(200, body)
}

/// Retries `connect` until a server that was just started in a thread accepts (2 s at most).
pub fn connect_when_up<S>(connect: impl Fn() -> std::io::Result<S>) -> S {
    for _ in 0..200 {
        if let Ok(stream) = connect() {
            return stream;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the server did not come up");
}

/// Logs in as the admin fixture's admin over HTTPS (CGI); returns the `Cookie` header value.
pub fn admin_session(root: &Path) -> String {
    let ctx = CgiContext { port: 443, ..CgiContext::default() };
    let body = format!("user=admin&pw={ADMIN_PASSWORD}");
    let extra = [("HTTPS", "on"), ("CONTENT_TYPE", "application/x-www-form-urlencoded")];
    let answer = cgi_request(root, &ctx, "POST", "admin/admin.php", "", body.as_bytes(), &extra);
    assert_eq!(answer.status, 303, "login: {}", answer.body);
    header_values(&answer, "set-cookie")
        .into_iter()
        .find(|c| c.starts_with("update_admin=") && !c.contains("Max-Age=0"))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string()
}

/// The text of HTML-escaped content as a browser shows it (the entities askama writes).
pub fn html_text(escaped: &str) -> String {
    escaped
        .replace("&lt;", "<")
        .replace("&#60;", "<")
        .replace("&gt;", ">")
        .replace("&#62;", ">")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
        .replace("&#38;", "&")
}

/// The content of the first element that starts with `open` (e.g. `<pre class="x">`), still
/// escaped; panics when there is none.
pub fn element_text<'a>(html: &'a str, open: &str, close: &str) -> &'a str {
    let start = html.find(open).unwrap_or_else(|| panic!("no {open} in {html}")) + open.len();
    let end = html[start..].find(close).unwrap_or_else(|| panic!("no {close} after {open}")) + start;
    &html[start..end]
}

// ---- a test PKI by the openssl CLI (tests/mtls_e2e.rs, tests/serve_tls.rs) ---------------------

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA `name`.{key,pem}.
pub fn make_ca(dir: &Path, name: &str, cn: &str) {
    let subject = format!("/C=DE/O=Test PKI/CN={cn}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", &format!("{name}.key"), "-out", &format!("{name}.pem"), "-days", "3650", "-subj", &subject,
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A certificate `name`.{key,pem} for `subject`, issued by CA `ca`, with extensions `ext`.
pub fn make_leaf(dir: &Path, name: &str, ca: &str, subject: &str, ext: &str, serial: u32) {
    fs::write(dir.join(format!("{name}.ext")), ext).expect("writing an extension file");
    openssl(
        dir,
        &[
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", subject,
        ],
    );
    openssl(
        dir,
        &[
            "x509", "-req", "-in", &format!("{name}.csr"), "-CA", &format!("{ca}.pem"), "-CAkey", &format!("{ca}.key"),
            "-set_serial", &serial.to_string(), "-days", "365", "-sha256", "-out", &format!("{name}.pem"),
            "-extfile", &format!("{name}.ext"),
        ],
    );
}
