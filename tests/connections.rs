//! The two listening doors of the real binary (`serve` and `fastcgi`) against hostile
//! connections: hundreds of slow, silent or idle kept-alive clients must not keep a device's
//! poll waiting, a full server refuses at once instead of queueing, running out of
//! descriptors is waited out without spinning, and a Host header that is not a host never
//! reaches the URLs handed to devices.

mod support;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::{binary, copy_install_tree, deployment_block, free_port, http_get, write_basic_setup, Lighttpd, DEVICE_QUERY};

/// What the test's answer time is held to.
const PROMPT: Duration = Duration::from_secs(1);
/// The slow and idle connections each test holds open.
const HOSTILE: usize = 400;

// ---- the binary -----------------------------------------------------------------------------

/// The binary running `serve` or `fastcgi` on a temporary install tree; killed on drop.
struct Server {
    child: Child,
    root: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// `update-server <args>` with `--root` on a fresh install tree in `dir` (after `setup`
    /// changed it); with `descriptors`, its descriptor limit (soft and hard) is set to that.
    fn start(dir: tempfile::TempDir, args: &[&str], descriptors: Option<u64>, setup: impl FnOnce(&Path), ready: impl Fn() -> bool) -> Server {
        let root = dir.path().join("root");
        copy_install_tree(&root);
        write_basic_setup(&root);
        setup(&root);
        let stderr = dir.path().join("stderr.log");
        let mut command = Command::new(binary());
        command
            .args(args)
            .arg("--root")
            .arg(&root)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap());
        if let Some(limit) = descriptors {
            // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().expect("starting update-server");
        let mut server = Server { child, root, stderr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("update-server exited at start ({status}):\n{}", server.log());
            }
            assert!(Instant::now() < deadline, "update-server did not come up:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Threads the server process has now.
    fn threads(&self) -> usize {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap()
    }

    /// Waits up to 10 s for the server's threads to fall back to at most `most` (a burst's
    /// threads go away with it).
    #[track_caller]
    fn assert_threads_fall_to(&self, most: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.threads() > most {
            assert!(Instant::now() < deadline, "{} threads are left 10 s after the connections closed", self.threads());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// CPU time (user + system) the server has used so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        // after the command name: state is field 3, utime 14 and stime 15 (1-based)
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `update-server serve` on a free port.
fn start_serve(descriptors: Option<u64>, setup: impl FnOnce(&Path)) -> (Server, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir, &["serve", "--listen", &listen], descriptors, setup, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (server, port)
}

/// `update-server fastcgi` on a Unix socket beside the install tree.
fn start_fastcgi(descriptors: Option<u64>) -> (Server, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fcgi.sock");
    let address = format!("unix:{}", socket.display());
    let server = Server::start(dir, &["fastcgi", "--listen", &address], descriptors, |_| {}, || UnixStream::connect(&socket).is_ok());
    (server, socket)
}

/// The test process opens hundreds of sockets: its soft descriptor limit goes up to the hard.
fn raise_own_descriptor_limit(needed: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a local rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    assert!(limit.rlim_cur >= needed, "this test needs {needed} descriptors; the hard limit is {}", limit.rlim_max);
}

// ---- HTTP clients ---------------------------------------------------------------------------

fn connect(port: u16) -> TcpStream {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).expect("connecting");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    stream
}

/// Reads one answer with a Content-Length body; `None` if the connection ends or stalls first.
fn read_http_answer(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            let status = head.split_whitespace().nth(1)?.parse().ok()?;
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + length {
                return Some((status, String::from_utf8_lossy(&raw[end + 4..end + 4 + length]).into_owned()));
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A device's poll on a new connection; the time it took and the answer.
fn poll_serve(port: u16) -> (Duration, Option<(u16, String)>) {
    let started = Instant::now();
    let mut stream = connect(port);
    let request = format!("GET /update.php?{DEVICE_QUERY} HTTP/1.1\r\nHost: updates.example\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let answer = read_http_answer(&mut stream);
    (started.elapsed(), answer)
}

#[track_caller]
fn assert_prompt_poll(what: &str, (took, answer): (Duration, Option<(u16, String)>), log: &str) {
    let (status, body) = answer.unwrap_or_else(|| panic!("{what}: no answer after {took:?}\n{log}"));
    assert_eq!(status, 200, "{what}: {body}\n{log}");
    assert!(body.contains("config add CMD0 /location all-default"), "{what}: {body}");
    assert!(took < PROMPT, "{what}: answered after {took:?}");
}

/// Connections that keep a server busy without ever finishing a request: some sent one
/// request and stay idle (kept alive), some never send anything, some send a header line
/// every second. The trickling runs on a thread of its own until `stop`.
struct Hostile {
    idle: Vec<TcpStream>,
    silent: Vec<TcpStream>,
    stop: Arc<AtomicBool>,
    trickler: Option<JoinHandle<()>>,
}

impl Hostile {
    fn open(port: u16, count: usize) -> Hostile {
        let third = count / 3;
        // the kept-alive ones first: a server that holds a thread per connection still
        // answers their requests while it has threads left
        let idle: Vec<TcpStream> = (0..third)
            .map(|n| {
                let mut stream = connect(port);
                let request = format!("GET /update.php?{DEVICE_QUERY} HTTP/1.1\r\nHost: updates.example\r\n\r\n");
                stream.write_all(request.as_bytes()).unwrap();
                let answer = read_http_answer(&mut stream);
                assert!(matches!(answer, Some((200, _))), "kept-alive request {n} unanswered: {answer:?}");
                stream
            })
            .collect();
        let silent: Vec<TcpStream> = (0..third).map(|_| connect(port)).collect();
        let trickling: Vec<TcpStream> = (0..count - 2 * third)
            .map(|_| {
                let mut stream = connect(port);
                stream.write_all(format!("GET /update.php?{DEVICE_QUERY} HTTP/1.1\r\nHost: updates.example\r\n").as_bytes()).unwrap();
                stream.set_nonblocking(true).unwrap();
                stream
            })
            .collect();
        let trickling = Arc::new(trickling);
        let stop = Arc::new(AtomicBool::new(false));
        let trickler = {
            let (trickling, stop) = (trickling.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    for stream in trickling.iter() {
                        let _ = (&*stream).write(b"X-Slow: 1\r\n");
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        };
        Hostile { idle, silent, stop, trickler: Some(trickler) }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(trickler) = self.trickler.take() {
            let _ = trickler.join();
        }
    }
}

/// Whether the server has closed `stream` (end of stream or reset), waiting up to `wait`.
fn closed_by_server(stream: &TcpStream, wait: Duration) -> bool {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Err(error) => error.kind() == ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

// ---- serve ----------------------------------------------------------------------------------

#[test]
fn serve_answers_a_poll_promptly_beside_hundreds_of_slow_and_idle_connections() {
    raise_own_descriptor_limit(HOSTILE as u64 + 100);
    let (server, port) = start_serve(None, |_| {});
    let hostile = Hostile::open(port, HOSTILE);
    for round in 0..3 {
        assert_prompt_poll(&format!("poll {round} beside {HOSTILE} slow connections"), poll_serve(port), &server.log());
        std::thread::sleep(Duration::from_millis(700));
    }
    // hyper on tokio: open connections cost no thread (a few runtime threads and the blocking
    // pool of the workers, which the polls use)
    assert!(server.threads() <= 24, "{} threads for {HOSTILE} open connections", server.threads());
    drop(hostile);
    // the 8 warm ones, the main thread, and a few finishing
    server.assert_threads_fall_to(16);
}

#[test]
fn serve_at_its_connection_cap_closes_idle_and_slow_connections_for_newcomers() {
    raise_own_descriptor_limit(HOSTILE as u64 + 100);
    // 200 descriptors make a cap of (200 - 64) / 2 = 68 connections: far fewer than the
    // hostile ones, so every newcomer has to take someone's place
    let (server, port) = start_serve(Some(200), |_| {});
    let hostile = Hostile::open(port, HOSTILE);
    assert!(
        closed_by_server(&hostile.idle[0], Duration::from_secs(1)),
        "the longest idle kept-alive connection was closed to make room"
    );
    for round in 0..3 {
        assert_prompt_poll(&format!("poll {round} at the cap"), poll_serve(port), &server.log());
    }
    let evicted_silent = hostile.silent.iter().filter(|s| closed_by_server(s, Duration::from_millis(10))).count();
    assert!(evicted_silent > 0, "silent connections made room too");
    drop(hostile);
}

#[test]
fn serve_refuses_at_once_with_503_when_every_connection_is_being_answered() {
    // 80 descriptors: the smallest cap, 8 connections
    let (server, port) = start_serve(Some(80), |root| {
        fs::create_dir_all(root.join("fw")).unwrap();
        fs::write(root.join("fw/big.bin"), vec![7u8; 16 << 20]).unwrap();
    });
    // eight downloads that are never read: each connection is being answered, its write blocked
    let downloads: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = connect(port);
            stream.write_all(b"GET /fw/big.bin HTTP/1.1\r\nHost: updates.example\r\n\r\n").unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut newcomer = connect(port);
    let answer = read_http_answer(&mut newcomer);
    let took = started.elapsed();
    let (status, body) = answer.unwrap_or_else(|| panic!("no answer after {took:?}\n{}", server.log()));
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("# "), "{body}");
    assert!(took < PROMPT, "refused after {took:?}");
    drop(downloads);
    // the slots come free again
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (took, answer) = poll_serve(port);
        if matches!(answer, Some((200, _))) {
            break;
        }
        assert!(Instant::now() < deadline, "no poll answered after the downloads ended: {answer:?} {took:?}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serve_ends_a_request_head_that_trickles_past_its_deadline() {
    let (server, port) = start_serve(None, |_| {});
    let mut stream = connect(port);
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    stream.write_all(b"GET /update.php HTTP/1.1\r\nHost: updates.example\r\n").unwrap();
    // one header line a second, each well within any per-read time-out
    let started = Instant::now();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(40) {
        if stream.write_all(b"X-Slow: 1\r\n").is_err() {
            break;
        }
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == ErrorKind::WouldBlock || error.kind() == ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        if !answer.is_empty() {
            break;
        }
    }
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "after {took:?}: {answer:?}\n{}", server.log());
    assert!(took < Duration::from_secs(25), "the head had 20 s, not {took:?}");
}

#[test]
fn serve_copes_with_running_out_of_descriptors_without_spinning() {
    raise_own_descriptor_limit(200);
    // 12 descriptors: the process holds a few already, so accept runs into EMFILE after a
    // handful of connections while the cap (8) would still allow more
    let (server, port) = start_serve(Some(12), |_| {});
    let silent: Vec<TcpStream> = (0..40).map(|_| connect(port)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = server.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let used = server.cpu_ticks() - before;
    // clock ticks are 10 ms: a busy loop on one core would use about 200 in 2 s
    assert!(used < 30, "the server used {used} ticks of CPU in 2 s while out of descriptors");
    assert!(server.log().contains("Too many open files"), "accept ran out of descriptors:\n{}", server.log());
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, answer) = poll_serve(port);
        if matches!(answer, Some((200, _))) {
            break;
        }
        assert!(Instant::now() < deadline, "no poll answered after the descriptors came free: {answer:?}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn serve_refuses_a_host_header_that_is_not_a_host() {
    // a query applying to every device puts the base URL into the answer
    let (server, port) = start_serve(None, |root| fs::write(
        root.join("config/user-config.xml"),
        r#"<?xml version="1.0" encoding="UTF-8"?>
<config>
  <master info=""/>
  <status dir="status"/>
  <queries><query id="admin" title="Admin"><cmd>mod cmd CMD0 xml-info</cmd><applies>*</applies></query></queries>
</config>
"#,
    )
    .unwrap());
    let good = http_get(port, &format!("/update.php?{DEVICE_QUERY}"), "updates.example:8080");
    assert_eq!(good.status, 200, "{}", good.body);
    assert!(good.body.contains("http://updates.example:8080/update.php?mode=query"), "{}", good.body);
    for bad in ["evil.example:80/x?", "evil.example/x", "evil.example:80:81", "user@evil.example"] {
        let answer = http_get(port, &format!("/update.php?{DEVICE_QUERY}"), bad);
        assert_eq!(answer.status, 400, "Host: {bad}: {}", answer.body);
        assert!(!answer.body.contains("evil"), "Host: {bad}: {}", answer.body);
    }
    assert!(server.log().contains("Host"), "{}", server.log());
}

// ---- FastCGI --------------------------------------------------------------------------------

mod fcgi {
    use std::io::{Read, Write};

    fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
        let mut out = vec![1, kind, (id >> 8) as u8, id as u8, (content.len() >> 8) as u8, content.len() as u8, 0, 0];
        out.extend_from_slice(content);
        out
    }

    fn pair(out: &mut Vec<u8>, name: &str, value: &str) {
        for length in [name.len(), value.len()] {
            if length < 128 {
                out.push(length as u8);
            } else {
                out.extend_from_slice(&(length as u32 | 0x8000_0000).to_be_bytes());
            }
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(value.as_bytes());
    }

    /// The records of a GET with `vars` as PARAMS and no body.
    pub fn request(id: u16, keep_conn: bool, vars: &[(&str, &str)]) -> Vec<u8> {
        let mut out = record(1, id, &[0, 1, u8::from(keep_conn), 0, 0, 0, 0, 0]);
        let mut params = Vec::new();
        for (name, value) in vars {
            pair(&mut params, name, value);
        }
        out.extend(record(4, id, &params));
        out.extend(record(4, id, &[]));
        out.extend(record(5, id, &[]));
        out
    }

    /// The STDOUT of request `id` up to its END_REQUEST; `None` if the stream ends or stalls.
    pub fn answer(stream: &mut impl Read, id: u16) -> Option<String> {
        let mut stdout = Vec::new();
        loop {
            let mut header = [0u8; 8];
            stream.read_exact(&mut header).ok()?;
            let length = usize::from(u16::from_be_bytes([header[4], header[5]])) + usize::from(header[6]);
            let mut content = vec![0u8; length];
            stream.read_exact(&mut content).ok()?;
            let request = u16::from_be_bytes([header[2], header[3]]);
            match header[1] {
                6 if request == id => stdout.extend_from_slice(&content[..length - usize::from(header[6])]),
                3 if request == id => return Some(String::from_utf8_lossy(&stdout).into_owned()),
                _ => {}
            }
        }
    }

    pub fn ask(stream: &mut (impl Read + Write), id: u16, keep_conn: bool, vars: &[(&str, &str)]) -> Option<String> {
        stream.write_all(&request(id, keep_conn, vars)).ok()?;
        answer(stream, id)
    }
}

/// The PARAMS of a device poll under `root`.
fn poll_vars(root: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("GATEWAY_INTERFACE", "CGI/1.1".into()),
        ("REQUEST_METHOD", "GET".into()),
        ("SCRIPT_NAME", "/update.php".into()),
        ("SCRIPT_FILENAME", root.join("update.php").display().to_string()),
        ("QUERY_STRING", DEVICE_QUERY.into()),
        ("HTTP_HOST", "updates.example".into()),
        ("SERVER_PORT", "80".into()),
        ("REMOTE_ADDR", "127.0.0.1".into()),
    ]
}

fn ask_fastcgi(socket: &Path, id: u16, keep_conn: bool, vars: &[(&str, String)]) -> (UnixStream, Option<String>) {
    let mut stream = UnixStream::connect(socket).expect("connecting to the FastCGI socket");
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let answer = fcgi::ask(&mut stream, id, keep_conn, &vars);
    (stream, answer)
}

/// `count` FastCGI connections that each had one request answered and stay open, idle.
fn idle_fastcgi_connections(socket: &Path, root: &Path, count: usize) -> Vec<UnixStream> {
    let vars = poll_vars(root);
    (0..count)
        .map(|n| {
            let (stream, answer) = ask_fastcgi(socket, 1, true, &vars);
            assert!(answer.is_some_and(|a| a.starts_with("Status: 200")), "kept-alive connection {n} of {count} unanswered within 2 s");
            stream
        })
        .collect()
}

#[track_caller]
fn assert_prompt_fastcgi_poll(socket: &Path, root: &Path, log: &str) {
    let started = Instant::now();
    let (_, answer) = ask_fastcgi(socket, 7, false, &poll_vars(root));
    let took = started.elapsed();
    let answer = answer.unwrap_or_else(|| panic!("no FastCGI answer after {took:?}\n{log}"));
    assert!(answer.starts_with("Status: 200"), "{answer}");
    assert!(answer.contains("config add CMD0 /location all-default"), "{answer}");
    assert!(took < PROMPT, "answered after {took:?}");
}

#[test]
fn fastcgi_answers_promptly_beside_hundreds_of_idle_kept_alive_connections() {
    raise_own_descriptor_limit(HOSTILE as u64 + 100);
    let (server, socket) = start_fastcgi(None);
    let idle = idle_fastcgi_connections(&socket, &server.root, HOSTILE);
    for _ in 0..3 {
        assert_prompt_fastcgi_poll(&socket, &server.root, &server.log());
    }
    drop(idle);
    server.assert_threads_fall_to(16);
}

/// The server's thread ids now.
fn thread_ids(server: &Server) -> std::collections::BTreeSet<u32> {
    fs::read_dir(format!("/proc/{}/task", server.child.id()))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[test]
fn a_busy_fastcgi_backend_keeps_its_threads() {
    // one connection per request from more clients at once than the eight warm threads, as
    // lighttpd passes on a busy site's load: the threads that served the first requests serve
    // the rest (a thread used to end as soon as enough others waited, and another started a
    // moment later: one per ten requests)
    const CLIENTS: usize = 24;
    let (server, socket) = start_fastcgi(None);
    let vars = poll_vars(&server.root);
    let load = |requests: usize| {
        std::thread::scope(|scope| {
            for _ in 0..CLIENTS {
                scope.spawn(|| {
                    for _ in 0..requests / CLIENTS {
                        let (_, answer) = ask_fastcgi(&socket, 1, false, &vars);
                        assert!(answer.is_some_and(|a| a.starts_with("Status: 200")));
                    }
                });
            }
        });
    };
    load(480);
    let warm = thread_ids(&server);
    load(1920);
    let after = thread_ids(&server);
    let started: Vec<&u32> = after.difference(&warm).collect();
    assert!(started.len() <= 4, "{} threads started during 1920 requests (had {}): {started:?}", started.len(), warm.len());
    // and once the load is over, the threads beyond the warm ones go
    server.assert_threads_fall_to(16);
}

#[test]
fn fastcgi_at_its_connection_cap_closes_the_longest_idle_connections() {
    raise_own_descriptor_limit(HOSTILE as u64 + 100);
    // 100 descriptors: a cap of 36 connections
    let (server, socket) = start_fastcgi(Some(100));
    let idle = idle_fastcgi_connections(&socket, &server.root, HOSTILE);
    assert_prompt_fastcgi_poll(&socket, &server.root, &server.log());
    let mut first = &idle[0];
    first.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(first.read(&mut byte), Ok(0)), "the longest idle connection was closed");
    let newest = idle.last().unwrap();
    let (mut newest_stream, vars) = (newest.try_clone().unwrap(), poll_vars(&server.root));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert!(fcgi::ask(&mut newest_stream, 2, true, &vars).is_some(), "the newest idle connection still works");
}

#[test]
fn fastcgi_closes_a_newcomer_at_once_when_every_connection_is_being_answered() {
    // a master that accepts and never answers holds each poll for its 1 s time-out (the
    // application asks it for one poll at a time, so the polls queue)
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let master_port = silent.local_addr().unwrap().port();
    let _held = std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(64).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(held);
    });
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fcgi.sock");
    let address = format!("unix:{}", socket.display());
    // 72 descriptors: the smallest cap, (72 - 64) / 1 = 8 connections
    let server = Server::start(
        dir,
        &["fastcgi", "--listen", &address],
        Some(72),
        |root| {
            fs::write(
                root.join("config/user-config.xml"),
                format!("<config><master info='http://127.0.0.1:{master_port}/CMD0/box_info.xml' timeout='1'/><status dir='status'/></config>"),
            )
            .unwrap()
        },
        || UnixStream::connect(&socket).is_ok(),
    );
    let vars = poll_vars(&server.root);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // eight polls, each waiting for the master (or its turn): every slot is being answered
    let waiting: Vec<UnixStream> = (0..8)
        .map(|_| {
            let mut stream = UnixStream::connect(&socket).unwrap();
            stream.write_all(&fcgi::request(1, false, &vars)).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut newcomer = UnixStream::connect(&socket).unwrap();
    newcomer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = newcomer.write_all(&fcgi::request(1, false, &vars));
    let mut byte = [0u8; 1];
    let read = newcomer.read(&mut byte);
    assert!(matches!(read, Ok(0)) || read.as_ref().is_err_and(|e| e.kind() == ErrorKind::ConnectionReset), "closed, not queued: {read:?}");
    assert!(started.elapsed() < PROMPT, "closed after {:?}", started.elapsed());
    assert!(server.log().contains("turned away"), "{}", server.log());
    // the waiting polls are all answered (a bailout: the master is silent), none dropped
    for (n, mut stream) in waiting.into_iter().enumerate() {
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let answer = fcgi::answer(&mut stream, 1).unwrap_or_else(|| panic!("poll {n} unanswered\n{}", server.log()));
        assert!(answer.starts_with("Status: 200"), "{answer}");
    }
    // and the slots are free again
    let (_, answer) = ask_fastcgi(&socket, 2, false, &poll_vars(&server.root));
    assert!(answer.is_some_and(|a| a.starts_with("Status: 200")), "a poll after the wave is answered");
}

#[test]
fn fastcgi_behind_lighttpd_answers_promptly_beside_hundreds_of_idle_backend_connections() {
    raise_own_descriptor_limit(HOSTILE as u64 + 100);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    copy_install_tree(&root);
    write_basic_setup(&root);
    let docroot = tmp.path().join("htdocs");
    fs::create_dir_all(&docroot).unwrap();
    let (port, error_log, socket) = (free_port(), tmp.path().join("error.log"), tmp.path().join("update-server.sock"));
    let conf = tmp.path().join("lighttpd.conf");
    fs::write(
        &conf,
        format!(
            "server.document-root = \"{}\"\nserver.bind = \"127.0.0.1\"\nserver.port = {port}\nserver.errorlog = \"{}\"\nserver.modules = ( \"mod_access\", \"mod_alias\", \"mod_fastcgi\" )\n\n{}",
            docroot.display(),
            error_log.display(),
            deployment_block("/update", &root, &socket, 1, false)
        ),
    )
    .unwrap();
    let lighttpd = Lighttpd::start(&conf, port, &error_log);
    let poll = || {
        let started = Instant::now();
        let answer = http_get(port, &format!("/update/update.php?{DEVICE_QUERY}"), "updates.example");
        (started.elapsed(), answer)
    };
    let (_, first) = poll();
    assert_eq!(first.status, 200, "{}\n{}", first.body, lighttpd.logs());
    // lighttpd names the socket of its spawned backend after the configured one
    let backend_socket = [socket.clone(), PathBuf::from(format!("{}-0", socket.display()))]
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("no backend socket next to {}", socket.display()));
    let idle = idle_fastcgi_connections(&backend_socket, &root, HOSTILE);
    for round in 0..3 {
        let (took, answer) = poll();
        assert_eq!(answer.status, 200, "poll {round}: {}\n{}", answer.body, lighttpd.logs());
        assert!(answer.body.contains("config add CMD0 /location all-default"), "{}", answer.body);
        assert!(took < PROMPT, "poll {round} through lighttpd answered after {took:?}");
    }
    drop(idle);
}
