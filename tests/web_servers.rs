//! Deployment under real Debian web servers: Apache with mod_cgid (the CGI door), Apache with
//! mod_proxy_fcgi and nginx (both to `update-server fastcgi --listen unix:…`, or TCP as the
//! README's variant says). Each server runs as its own instance on free loopback ports (plain
//! HTTP and HTTPS) with configuration, logs, certificate and the install tree in a temporary
//! directory, configured with the README's deployment block for it.
//!
//! - nginx and Apache mod_proxy_fcgi answer a device's first poll, its steady poll, a backup PUT,
//!   `update-migrate.php` and the admin page (login form, login, status list) as the binary
//!   answers them as CGI on a twin tree, all over one FastCGI connection the web server keeps.
//! - An idle kept connection is not used after the README's 20 s (nginx closes it), short of
//!   the binary's own 30 s.
//! - A chunked backup through mod_cgid and mod_cgi is stored as a Content-Length one is, answered
//!   at once.
//! - Bodies over the 16 MiB ceiling or over the mode's limit get the binary's clean 413 through
//!   nginx and Apache (no 502/503 from a backend that closed while the body was still coming).
//! - mod_proxy_fcgi's `SCRIPT_FILENAME=proxy:fcgi://…` finds the install tree.
//! - Debian nginx's `HTTP_HOST $host` (no port) still gives devices URLs with the port.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use tempfile::TempDir;

const APACHE: &str = "/usr/sbin/apache2";
const NGINX: &str = "/usr/sbin/nginx";
const MODULES: &str = "/usr/lib/apache2/modules";
/// Where the README's blocks put the install tree, the binary's socket and the certificate.
const README_WWW: &str = "/var/www/innovaphone";
const README_SOCKET: &str = "/run/update-server/fastcgi.sock";
const README_CERT: &str = "/etc/ssl/certs/update-server.pem";
const README_KEY: &str = "/etc/ssl/private/update-server.key";
/// The README's FastCGI-over-TCP variant: the address, and what takes the socket's place.
const README_TCP: &str = "127.0.0.1:9000";
const README_NGINX_TCP: &str = "server 127.0.0.1:9000;";
const README_APACHE_TCP: &str = "\"fcgi://127.0.0.1:9000/var/www/innovaphone/mtls/update/$1\"";
const SN: &str = "00-90-33-3e-0c-57";
const HWID: &str = "IP232-3e-0c-57";
const SN2: &str = "00-90-33-3e-0c-58";
const HWID2: &str = "IP232-3e-0c-58";

/// A temporary web site: `www` (the document root) holding the install tree at
/// `www/mtls/update`, a folder for a server's configuration, logs, socket and certificate, and
/// room for a twin tree the CGI runs use.
struct Site {
    dir: TempDir,
    /// The backend's port when FastCGI goes over TCP.
    backend_port: u16,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().expect("temporary directory");
        let tree = dir.path().join("www/mtls/update");
        fs::create_dir_all(&tree).unwrap();
        copy_install_tree(&tree);
        fs::create_dir_all(dir.path().join("server")).unwrap();
        let site = Site { dir, backend_port: free_port() };
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(site.key())
            .arg("-out")
            .arg(site.cert())
            .output()
            .expect("openssl is installed (tools/test installs it)");
        assert!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
        site
    }
    fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }
    fn tree(&self) -> PathBuf {
        self.www().join("mtls/update")
    }
    /// The CGI runs' copy of the tree, so that state one of them writes does not feed the other.
    fn cgi_tree(&self) -> PathBuf {
        self.dir.path().join("cgi/mtls/update")
    }
    /// Copies the tree as it is now (mtimes too: they decide the snippets' grace) to [`Site::cgi_tree`].
    fn make_twin(&self) {
        let twin = self.cgi_tree();
        fs::create_dir_all(twin.parent().unwrap()).unwrap();
        let copied = Command::new("cp").arg("-a").arg(self.tree()).arg(&twin).status().expect("cp");
        assert!(copied.success(), "copying the tree to {}", twin.display());
    }
    fn server_dir(&self) -> PathBuf {
        self.dir.path().join("server")
    }
    fn socket(&self) -> PathBuf {
        self.server_dir().join("fastcgi.sock")
    }
    fn cert(&self) -> PathBuf {
        self.server_dir().join("cert.pem")
    }
    fn key(&self) -> PathBuf {
        self.server_dir().join("key.pem")
    }
    fn backup(&self, hwid: &str, index: u32) -> Option<Vec<u8>> {
        fs::read(self.tree().join(format!("backup/{hwid}/{hwid}.{index}.txt"))).ok()
    }
}

/// How the web server reaches the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// The README's blocks as they stand: a unix socket.
    Unix,
    /// The README's TCP variant.
    Tcp,
}

/// The first fenced block after the README line `heading`, in the `transport` the README
/// describes, with the README's paths and addresses replaced by the test's.
fn readme_block(heading: &str, site: &Site, transport: Transport) -> String {
    let readme = fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let after = readme.split_once(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("README has no {heading:?}")).1;
    let mut block = after.split_once("```\n").expect("a fenced block").1.split_once("```").expect("its end").0.to_string();
    if transport == Transport::Tcp {
        for text in [README_NGINX_TCP, README_APACHE_TCP, &format!("--listen {README_TCP}")] {
            assert!(readme.contains(text), "the README's TCP variant names {text}");
        }
        block = block
            .replace(&format!("server unix:{README_SOCKET};"), README_NGINX_TCP)
            .replace(&format!("\"unix:{README_SOCKET}|fcgi://localhost/"), &format!("\"fcgi://{README_TCP}/"));
        assert!(!block.contains(README_SOCKET), "the README's TCP variant leaves no socket in\n{block}");
    }
    block
        .replace(README_WWW, &site.www().display().to_string())
        .replace(README_SOCKET, &site.socket().display().to_string())
        .replace(README_TCP, &format!("127.0.0.1:{}", site.backend_port))
        .replace(README_CERT, &site.cert().display().to_string())
        .replace(README_KEY, &site.key().display().to_string())
}

/// Where a started server shows that it is up.
enum Ready {
    Tcp(u16),
    Unix(PathBuf),
}

impl Ready {
    fn accepts(&self) -> bool {
        match self {
            Ready::Tcp(port) => {
                TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, *port)), Duration::from_millis(200)).is_ok()
            }
            Ready::Unix(path) => UnixStream::connect(path).is_ok(),
        }
    }
}

/// A server process in its own process group, killed with its children on drop.
struct Running {
    child: Child,
    name: &'static str,
    logs: Vec<PathBuf>,
}

impl Running {
    fn start(name: &'static str, mut command: Command, ready: Ready, logs: Vec<PathBuf>) -> Running {
        use std::os::unix::process::CommandExt;
        let output = logs.first().cloned().expect("an output file");
        let out = fs::File::create(&output).unwrap();
        command.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out).process_group(0);
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut running = Running { child, name, logs };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = running.child.try_wait() {
                panic!("{name} exited at start ({status}):\n{}", running.logs());
            }
            if ready.accepts() {
                return running;
            }
            assert!(Instant::now() < deadline, "{name} did not come up:\n{}", running.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        self.logs
            .iter()
            .map(|p| format!("--- {} {}\n{}\n", self.name, p.display(), fs::read_to_string(p).unwrap_or_default()))
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of a child we started and have not reaped.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `update-server fastcgi --listen unix:SOCKET` (or `127.0.0.1:PORT`), started outside the tree
/// and without a root: it must find the tree from what the web server sends.
fn backend(site: &Site, transport: Transport) -> Running {
    let (listen, ready) = match transport {
        Transport::Unix => (format!("unix:{}", site.socket().display()), Ready::Unix(site.socket())),
        Transport::Tcp => (format!("127.0.0.1:{}", site.backend_port), Ready::Tcp(site.backend_port)),
    };
    let mut command = Command::new(binary());
    command.args(["fastcgi", "--listen", &listen]).env_remove("UPDATE_SERVER_ROOT").current_dir("/");
    if transport == Transport::Tcp {
        // as the README's TCP variant says: only the web server may talk to the binary
        command.env("FCGI_WEB_SERVER_ADDRS", "127.0.0.1");
    }
    Running::start("backend", command, ready, vec![site.server_dir().join("backend.log")])
}

/// The FastCGI connections `pid` has open: the inodes of its connected unix stream sockets and
/// established TCP connections (its listening socket is neither).
fn fastcgi_connections(pid: u32) -> BTreeSet<u64> {
    let mut connected = HashSet::new();
    // Num RefCount Protocol Flags Type St Inode [Path]; St 03: connected
    for line in fs::read_to_string("/proc/net/unix").unwrap_or_default().lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 7 && fields[5] == "03" {
            connected.extend(fields[6].parse::<u64>());
        }
    }
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode; st 01: established
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 10 && fields[3] == "01" {
                connected.extend(fields[9].parse::<u64>());
            }
        }
    }
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the backend's descriptors")
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|target| target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok())
        .filter(|inode| connected.contains(inode))
        .collect()
}

/// Waits until the backend holds no connection (the start-up probe's is closed).
fn wait_until_idle(backend: &Running) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fastcgi_connections(backend.child.id()).is_empty() {
        assert!(Instant::now() < deadline, "the backend keeps a connection nobody made:\n{}", backend.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Apache with the event MPM and mod_cgid (Debian's default), or with prefork and mod_cgi.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cgi {
    Cgid,
    Prefork,
}

/// Apache with `block` in its server configuration and, on `tls_port`, an HTTPS `VirtualHost`
/// that inherits it (as Debian's `default-ssl` site inherits a `conf-enabled` snippet).
fn apache(site: &Site, port: u16, tls_port: u16, block: &str) -> Running {
    apache_with(site, port, Some(tls_port), block, Cgi::Cgid)
}

fn apache_with(site: &Site, port: u16, tls_port: Option<u16>, block: &str, cgi: Cgi) -> Running {
    assert!(Path::new(APACHE).exists(), "{APACHE} is missing: these tests need Debian's apache2 (tools/test installs it)");
    let dir = site.server_dir();
    // The event MPM with one child process: a child keeps FastCGI connections of its own, so
    // that one child answering every request makes "one connection for all" observable.
    let (mpm, cgi_module, mpm_settings) = match cgi {
        Cgi::Cgid => (
            "mpm_event",
            "cgid",
            format!("ScriptSock {}/cgid.sock\nStartServers 1\nServerLimit 1\nThreadsPerChild 25\nMaxRequestWorkers 25\n", dir.display()),
        ),
        Cgi::Prefork => ("mpm_prefork", "cgi", String::new()),
    };
    let modules = [mpm, "authz_core", "alias", cgi_module, "env", "mime", "proxy", "proxy_fcgi", "ssl"]
        .map(|m| format!("LoadModule {m}_module {MODULES}/mod_{m}.so\n"))
        .concat();
    let tls = match tls_port {
        Some(tls) => format!(
            "\nListen 127.0.0.1:{tls}\n<VirtualHost 127.0.0.1:{tls}>\n    SSLEngine on\n    SSLCertificateFile {}\n    SSLCertificateKeyFile {}\n</VirtualHost>\n",
            site.cert().display(),
            site.key().display()
        ),
        None => String::new(),
    };
    let conf = format!(
        "ServerRoot {dir}\nServerName 127.0.0.1\nListen 127.0.0.1:{port}\nPidFile {dir}/httpd.pid\n\
         Mutex file:{dir} default\n{mpm_settings}ErrorLog {dir}/error.log\nLogLevel info\n\
         {modules}TypesConfig /etc/mime.types\nDocumentRoot {www}\n<Directory {www}>\n    Require all granted\n</Directory>\n\n{block}{tls}",
        dir = dir.display(),
        www = site.www().display(),
    );
    let conf_path = dir.join("httpd.conf");
    fs::write(&conf_path, conf).unwrap();
    let mut command = Command::new(APACHE);
    command.arg("-f").arg(&conf_path).arg("-DFOREGROUND");
    Running::start("apache", command, Ready::Tcp(port), vec![dir.join("apache.out"), dir.join("error.log")])
}

/// nginx with `block` (the README's `upstream` and `server`) in its `http` section, its
/// `listen 80` and `listen 443 ssl` on `port` and `tls_port`.
fn nginx(site: &Site, port: u16, tls_port: u16, block: &str) -> Running {
    assert!(Path::new(NGINX).exists(), "{NGINX} is missing: these tests need Debian's nginx (tools/test installs it)");
    let dir = site.server_dir();
    // Debian's own parameter file, with its `HTTP_HOST $host`
    fs::copy("/etc/nginx/fastcgi_params", dir.join("fastcgi_params")).expect("Debian's /etc/nginx/fastcgi_params");
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 { "user root;\n" } else { "" };
    for listen in ["listen 80;", "listen 443 ssl;"] {
        assert!(block.contains(listen), "the README's nginx block has {listen:?}");
    }
    let server = block
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{tls_port} ssl;"));
    let conf = format!(
        "{user}daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log info;\n\
         events {{ worker_connections 64; }}\nhttp {{\n    include /etc/nginx/mime.types;\n    access_log {dir}/access.log;\n\
         client_body_temp_path {dir}/body;\n    fastcgi_temp_path {dir}/fastcgi;\n    proxy_temp_path {dir}/proxy;\n\
         uwsgi_temp_path {dir}/uwsgi;\n    scgi_temp_path {dir}/scgi;\n{server}\n}}\n",
        dir = dir.display(),
    );
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf).unwrap();
    let mut command = Command::new(NGINX);
    command.arg("-p").arg(&dir).arg("-c").arg(&conf_path);
    Running::start("nginx", command, Ready::Tcp(port), vec![dir.join("nginx.out"), dir.join("error.log")])
}

/// What curl saw.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
    /// curl's exit code: 0, or e.g. 18/52/56 when the answer was cut off or reset.
    curl_exit: i32,
    elapsed: Duration,
}

/// A request with curl, the body (if any) from `body_file`, chunked when asked.
fn curl(port: u16, method: &str, path_and_query: &str, body_file: Option<&Path>, chunked: bool) -> Reply {
    let mut command = Command::new("curl");
    command.args(["-s", "-S", "-m", "60", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
    if let Some(file) = body_file {
        command.arg("--data-binary").arg(format!("@{}", file.display()));
        command.args(["-H", "Content-Type: application/octet-stream", "-H", "Expect:"]);
        if chunked {
            command.args(["-H", "Transfer-Encoding: chunked"]);
        }
    }
    command.arg(format!("http://127.0.0.1:{port}{path_and_query}"));
    let started = Instant::now();
    let output = run_with_timeout(command, Duration::from_secs(90));
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Reply {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
        curl_exit: output.status.code().unwrap_or(-1),
        elapsed,
    }
}

/// A device's configuration backup of about `size` bytes, with the lines SPEC §8 filters out.
fn backup_body(size: usize) -> Vec<u8> {
    let mut body = String::from("vars create UPDATE/CHECK pb 3f2a\r\nconfig change UP1 /url http://u/update.php /poll 15\r\n");
    let mut n = 0;
    while body.len() < size {
        body.push_str(&format!("config change CMD0 /name Reception{n:06} /location Berlin\r\n"));
        if n % 100 == 0 {
            body.push_str("mod cmd FLASHDIR0 add-item 101 (cn=Alice)(type=call)(info=out)\r\n\r\n");
        }
        n += 1;
    }
    body.into_bytes()
}

fn write_body(site: &Site, name: &str, body: &[u8]) -> PathBuf {
    let path = site.dir.path().join(name);
    fs::write(&path, body).unwrap();
    path
}

fn backup_query(sn: &str, hwid: &str) -> String {
    format!("/mtls/update/update.php?mode=backup&hwid={hwid}&sn={sn}")
}

fn cgi_site() -> (Site, u16, Running) {
    cgi_site_with(Cgi::Cgid)
}

fn cgi_site_with(cgi: Cgi) -> (Site, u16, Running) {
    let site = Site::new();
    let exe = site.tree().join("update-server");
    fs::copy(binary(), &exe).expect("copying the binary into the tree");
    let port = free_port();
    let block = readme_block("### Apache as CGI (mod_cgid)", &site, Transport::Unix);
    let server = apache_with(&site, port, None, &block, cgi);
    (site, port, server)
}

#[test]
fn apache_cgid_stores_a_chunked_backup_like_a_content_length_one() {
    chunked_backup_is_stored_like_a_content_length_one(Cgi::Cgid);
}

#[test]
fn apache_mod_cgi_stores_a_chunked_backup_like_a_content_length_one() {
    chunked_backup_is_stored_like_a_content_length_one(Cgi::Prefork);
}

fn chunked_backup_is_stored_like_a_content_length_one(cgi: Cgi) {
    let (site, port, server) = cgi_site_with(cgi);
    // larger than a socket buffer, so a server that leaves stdin unread cannot get away with it
    let body = write_body(&site, "backup.txt", &backup_body(300_000));

    let plain = curl(port, "PUT", &backup_query(SN, HWID), Some(&body), false);
    assert_eq!((plain.status, plain.curl_exit), (200, 0), "{plain:?}\n{}", server.logs());
    let chunked = curl(port, "PUT", &backup_query(SN2, HWID2), Some(&body), true);
    assert_eq!((chunked.status, chunked.curl_exit), (200, 0), "chunked backup: {chunked:?}\n{}", server.logs());
    assert!(chunked.body.starts_with("# backup stored"), "{chunked:?}");
    assert!(chunked.elapsed < Duration::from_secs(2), "answered at once: {chunked:?}");

    let stored = site.backup(HWID, 0).expect("the Content-Length backup is stored");
    assert!(stored.len() > 250_000 && !stored.windows(9).any(|w| w == b"FLASHDIR0"), "filtered as SPEC §8 says");
    assert_eq!(site.backup(HWID2, 0).as_deref(), Some(&stored[..]), "the chunked backup is stored byte-identically");
}

#[test]
fn apache_cgid_refuses_bodies_over_the_limits_cleanly() {
    let (site, port, server) = cgi_site();
    // over backup/@maxsize of the shipped config.xml (8 MiB), chunked: no CONTENT_LENGTH
    let big = write_body(&site, "big.txt", &backup_body(9 << 20));
    // over the 16 MiB ceiling, with a Content-Length
    let huge = write_body(&site, "huge.bin", &vec![b'x'; 20 << 20]);
    for (body, chunked) in [(&big, true), (&huge, false)] {
        let reply = curl(port, "PUT", &backup_query(SN, HWID), Some(body), chunked);
        assert_eq!((reply.status, reply.curl_exit), (413, 0), "chunked: {chunked}; {reply:?}\n{}", server.logs());
        assert!(reply.body.starts_with("# request body too large"), "{reply:?}");
        assert!(reply.elapsed < Duration::from_secs(5), "{reply:?}");
    }
    assert!(site.backup(HWID, 0).is_none());
}

/// The FastCGI front ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Front {
    /// `### nginx`
    Nginx,
    /// `### Apache (mod_proxy_fcgi)`
    Apache,
}

/// A front end serving a site through its backend.
struct Deployment {
    site: Site,
    front: Front,
    port: u16,
    tls_port: u16,
    server: Running,
    backend: Running,
}

impl Deployment {
    fn logs(&self) -> String {
        format!("{}{}", self.server.logs(), self.backend.logs())
    }

    fn url(&self, tls: bool, path_and_query: &str) -> String {
        match tls {
            false => format!("http://127.0.0.1:{}{path_and_query}", self.port),
            true => format!("https://127.0.0.1:{}{path_and_query}", self.tls_port),
        }
    }

    /// The request as the web server describes it to the binary, for the CGI twin.
    fn cgi_context(&self, tls: bool) -> CgiContext {
        CgiContext {
            url_prefix: "/mtls/update".into(),
            host: "127.0.0.1".into(),
            port: if tls { self.tls_port } else { self.port },
            remote_addr: "127.0.0.1".into(),
            server_software: server_software(self.front),
        }
    }
}

/// What the web server puts into `SERVER_SOFTWARE`: `nginx/1.22.1`, `Apache/2.4.62 (Debian)`.
fn server_software(front: Front) -> String {
    let (program, prefix) = match front {
        Front::Nginx => (NGINX, "nginx version: "),
        Front::Apache => (APACHE, "Server version: "),
    };
    let output = Command::new(program).arg("-v").output().expect("the web server's version");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    text.lines().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("no version in {text:?}")).trim().to_string()
}

/// The README block of `front` in `transport`, changed by `edit`, on a fresh site `prepare`d
/// before the backend and the web server start.
fn deploy_with(front: Front, transport: Transport, prepare: impl FnOnce(&Site), edit: impl FnOnce(String) -> String) -> Deployment {
    let site = Site::new();
    prepare(&site);
    let (port, tls_port) = (free_port(), free_port());
    let heading = match front {
        Front::Nginx => "### nginx",
        Front::Apache => "### Apache (mod_proxy_fcgi)",
    };
    let block = edit(readme_block(heading, &site, transport));
    let backend = backend(&site, transport);
    let server = match front {
        Front::Nginx => nginx(&site, port, tls_port, &block),
        Front::Apache => apache(&site, port, tls_port, &block),
    };
    Deployment { site, front, port, tls_port, server, backend }
}

fn deploy(front: Front, transport: Transport) -> Deployment {
    deploy_with(front, transport, |_| {}, |block| block)
}

/// An answer through the web server: curl over HTTP/1.1 (`-k` for the test's certificate,
/// the devices' user agent), with `headers` and the `body` if any.
fn fetch(url: &str, method: &str, headers: &[&str], body: Option<&[u8]>) -> Answer {
    let mut command = Command::new("curl");
    command.args(["-sS", "-k", "--http1.1", "-m", "30", "-i", "-X", method, "-A", "innovaphone-update/1.0", "-H", "Expect:"]);
    for header in headers {
        command.args(["-H", header]);
    }
    if body.is_some() {
        command.args(["--data-binary", "@-"]);
    }
    command.arg(url);
    let output = run_with_input(command, body.unwrap_or_default(), Duration::from_secs(60));
    let raw = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "curl {method} {url}: {}\n{raw}", String::from_utf8_lossy(&output.stderr));
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {raw:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{status_line:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer { status, headers, body: body.to_string() }
}

/// The admin session cookie an answer sets, as `name=value` for a `Cookie` header.
fn session_cookie(answer: &Answer) -> Option<String> {
    header_values(answer, "set-cookie")
        .into_iter()
        .find(|c| c.starts_with("update_admin=") && !c.contains("Max-Age=0"))
        .map(|c| c.split(';').next().unwrap_or("").to_string())
}

/// The device rows of a status page (`<tr id="device-…">` to its `</tr>`), without what
/// depends on the moment: ages (`30 secs`, `2 days`) and times (`title="Thu, 03 Dec 2026
/// 15:49:55 GMT"`), because the two trees' devices polled, and the two pages were rendered, a
/// moment apart. Everything else of a row (serial, addresses, type, name, classes, backup,
/// firmware, snippets, query columns, the buttons) stays.
fn device_rows(page: &str) -> Vec<String> {
    let age = regex::Regex::new(r"\b\d+(\.\d)? (sec|min|hour|day|week)s?\b").unwrap();
    let time = regex::Regex::new(r#"title="[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT""#).unwrap();
    page.split("<tr id=\"device-")
        .skip(1)
        .map(|rest| rest.split_once("</tr>").expect("the row's end").0)
        .map(|row| age.replace_all(&time.replace_all(row, "title=\"(time)\""), "(age)").into_owned())
        .collect()
}

/// The paths `before` → `after` created, changed or removed under the device data folders.
fn device_data_changes(
    before: &std::collections::BTreeMap<PathBuf, Vec<u8>>,
    after: &std::collections::BTreeMap<PathBuf, Vec<u8>>,
) -> Vec<String> {
    snapshot_diff(before, after)
        .into_iter()
        .filter(|change| ["status/", "backup/", "certs/"].iter().any(|dir| change.split_once(' ').is_some_and(|(_, p)| p.starts_with(dir))))
        .collect()
}

const SN3: &str = "00-90-33-3e-0c-59";
const HWID3: &str = "IP232-3e-0c-59";

/// A device's first poll, its steady poll and backup, `update-migrate.php`, and the admin
/// page's login form, login and status list through `front`, each compared with the binary's
/// answer as CGI on a twin tree; every request that reaches the binary goes over one FastCGI
/// connection the web server keeps open.
fn answers_like_cgi_over_one_kept_connection(front: Front) {
    let d = deploy_with(
        front,
        Transport::Unix,
        |site| {
            write_admin_fixture(&site.tree(), ADMIN_PASSWORD);
            // without the certificate roll-out, so that a new device gets its snippets at once
            let config = admin_user_config("admin", ADMIN_PASSWORD);
            let without_certs = config.replace("  <customcerts dir=\"certs\"/>\n", "");
            assert_ne!(config, without_certs);
            write_old_file(&site.tree(), "config/user-config.xml", &without_certs);
            site.make_twin();
        },
        |block| block,
    );
    let (tree, twin) = (d.site.tree(), d.site.cgi_tree());
    let logs = || d.logs();
    wait_until_idle(&d.backend);
    let pid = d.backend.child.id();
    // Every connection the backend had open after an answer, and how many answers there were.
    let mut connections = BTreeSet::new();
    let mut answers = 0;
    let mut kept = |what: &str| {
        let open = fastcgi_connections(pid);
        assert_eq!(open.len(), 1, "after {what} the backend has {} FastCGI connections open, not the one kept: {open:?}\n{}", open.len(), logs());
        connections.extend(open);
        answers += 1;
    };

    // --- the device, over plain HTTP --------------------------------------------------------
    let plain = d.cgi_context(false);
    let poll = format!("type=IP232&sn={SN3}&hwid={HWID3}&ip=172.16.4.59&polling=0&phase=update");
    let before = (snapshot_files(&tree), snapshot_files(&twin));
    let http = fetch(&d.url(false, &format!("/mtls/update/update.php?{poll}")), "GET", &[], None);
    let cgi = cgi_get(&twin, &plain, "update.php", &poll);
    assert_eq!((http.status, cgi.status), (200, 200), "first poll: {}\n{}", http.body, logs());
    assert_eq!(http.commands(), cgi.commands(), "first poll through {front:?} and as CGI");
    assert!(http.commands().iter().any(|c| c.contains("/location all-default")), "the snippet is delivered:\n{}", http.body);
    assert!(http.body.contains(&format!("scfg http://127.0.0.1:{}/mtls/update/update.php?mode=backup", d.port)), "{}", http.body);
    let after = (snapshot_files(&tree), snapshot_files(&twin));
    assert_eq!(device_data_changes(&before.0, &after.0), device_data_changes(&before.1, &after.1), "the files the first poll wrote");
    assert!(after.0.contains_key(Path::new(&format!("status/{SN3}.xml"))), "the state lands in the tree");
    kept("the first poll");

    let check = http.check_serial().unwrap_or_else(|| panic!("no CHECK serial in\n{}", http.body));
    let steady = format!("{poll}&CHECK={check}");
    let http = fetch(&d.url(false, &format!("/mtls/update/update.php?{steady}")), "GET", &[], None);
    let cgi = cgi_get(&twin, &plain, "update.php", &steady);
    assert_eq!((http.status, cgi.status), (200, 200), "steady poll: {}\n{}", http.body, logs());
    assert_eq!(http.commands(), cgi.commands(), "steady poll through {front:?} and as CGI");
    // the backup and query requests stay; the snippet is not sent again
    assert!(!http.commands().iter().any(|c| c.contains("/location all-default")), "a steady poll:\n{}", http.body);
    assert!(http.body.contains(&format!("CHECK {check} matches")), "a steady poll:\n{}", http.body);
    kept("the steady poll");

    let body = backup_body(50_000);
    let query = backup_query(SN3, HWID3);
    let before = (snapshot_files(&tree), snapshot_files(&twin));
    let http = fetch(&d.url(false, &query), "PUT", &["Content-Type: application/octet-stream"], Some(&body));
    let cgi = cgi_request(&twin, &plain, "PUT", "update.php", query.split_once('?').unwrap().1, &body, &[]);
    assert_eq!((http.status, cgi.status), (200, 200), "backup: {}\n{}", http.body, logs());
    assert_eq!(http.commands(), cgi.commands(), "backup through {front:?} and as CGI");
    assert!(http.body.starts_with("# backup stored"), "{}", http.body);
    let after = (snapshot_files(&tree), snapshot_files(&twin));
    assert_eq!(device_data_changes(&before.0, &after.0), device_data_changes(&before.1, &after.1), "the files the backup wrote");
    let stored = Path::new("backup").join(HWID3).join(format!("{HWID3}.0.txt"));
    assert!(after.0.get(&stored).is_some_and(|b| b.len() > 40_000), "the backup is stored at {}", stored.display());
    assert_eq!(after.0.get(&stored), after.1.get(&stored), "the stored backup is byte for byte the CGI run's");
    kept("the backup PUT");

    let http = fetch(&d.url(false, &format!("/mtls/update/update-migrate.php?{poll}")), "GET", &[], None);
    let cgi = cgi_get(&twin, &plain, "update-migrate.php", &poll);
    assert_eq!((http.status, http.header("location")), (cgi.status, cgi.header("location")), "update-migrate.php\n{}", logs());
    kept("update-migrate.php");

    // --- the admin page, over HTTPS ---------------------------------------------------------
    let tls = d.cgi_context(true);
    const HTTPS: [(&str, &str); 2] = [("HTTPS", "on"), ("REQUEST_SCHEME", "https")];
    let admin = d.url(true, "/mtls/update/admin/admin.php");
    let http = fetch(&admin, "GET", &[], None);
    let cgi = cgi_request(&twin, &tls, "GET", "admin/admin.php", "", b"", &HTTPS);
    assert_eq!((http.status, http.header("content-type")), (cgi.status, cgi.header("content-type")), "login form\n{}", logs());
    assert!(http.body.contains("name=\"pw\""), "the login form over HTTPS: {}", http.body);
    assert_eq!(http.body, cgi.body, "the login form through {front:?} and as CGI");
    kept("the login form");

    let form = format!("user=admin&pw={ADMIN_PASSWORD}");
    let http = fetch(&admin, "POST", &["Content-Type: application/x-www-form-urlencoded"], Some(form.as_bytes()));
    let cgi = cgi_request(&twin, &tls, "POST", "admin/admin.php", "", form.as_bytes(), &[HTTPS[0], HTTPS[1], ("CONTENT_TYPE", "application/x-www-form-urlencoded")]);
    assert_eq!((http.status, cgi.status), (303, 303), "login: {}\n{}", http.body, logs());
    assert_eq!(http.header("location"), cgi.header("location"));
    // the session id is new with every login: the cookies' attributes must be the same
    let attributes = |a: &Answer| header_values(a, "set-cookie").iter().map(|c| c.split_once(';').map_or("", |(_, attrs)| attrs).to_string()).collect::<Vec<_>>();
    assert_eq!(attributes(&http), attributes(&cgi), "the session cookie's attributes");
    let (http_cookie, cgi_cookie) = (session_cookie(&http).expect("a session cookie"), session_cookie(&cgi).expect("a session cookie"));
    kept("the login");

    let http = fetch(&format!("{admin}?mode=status"), "GET", &[&format!("Cookie: {http_cookie}")], None);
    let cgi = cgi_request(&twin, &tls, "GET", "admin/admin.php", "mode=status", b"", &[HTTPS[0], HTTPS[1], ("HTTP_COOKIE", &cgi_cookie)]);
    assert_eq!((http.status, http.header("content-type")), (cgi.status, cgi.header("content-type")), "status page\n{}", logs());
    assert_eq!(http.status, 200);
    assert!(http.body.contains("5 of 5 devices"), "{}", http.body);
    // the rest of the page carries per-request values (the CSRF token): the rows are compared
    let rows = device_rows(&http.body);
    assert_eq!(rows.len(), 5, "the fixture's four devices and the one that polled:\n{}", http.body);
    assert!(rows.iter().any(|r| r.starts_with(&format!("{SN3}\""))), "the polled device has its row");
    assert_eq!(rows, device_rows(&cgi.body), "the status page's device rows through {front:?} and as CGI");
    kept("the status page");

    // the page's own files are the web server's static files
    let css = fetch(&d.url(true, "/mtls/update/www/admin.css"), "GET", &[], None);
    assert_eq!((css.status, css.header("content-type").map(|t| t.starts_with("text/css"))), (200, Some(true)), "{css:?}");

    assert_eq!(connections.len(), 1, "{answers} answers over the FastCGI connections {connections:?}, not one\n{}", logs());
}

#[test]
fn nginx_answers_like_cgi_over_one_kept_alive_connection() {
    answers_like_cgi_over_one_kept_connection(Front::Nginx);
}

#[test]
fn apache_proxy_fcgi_answers_like_cgi_over_one_kept_alive_connection() {
    answers_like_cgi_over_one_kept_connection(Front::Apache);
}

/// How long the README's blocks let a FastCGI connection idle (`keepalive_timeout 20s`,
/// `ttl=20`): less than the binary's own 30 s.
const README_IDLE: Duration = Duration::from_secs(20);

/// One device poll, a pause past the README's idle limit (short of the binary's), another poll:
/// nginx has closed the idle connection by then; Apache does not use it again. Both answer the
/// second poll over a new connection.
fn idle_connection_is_not_used_after_the_readme_limit(front: Front) {
    let d = deploy_with(front, Transport::Unix, |_| {}, |block| {
        let limit = match front {
            Front::Nginx => format!("keepalive_timeout {}s;", README_IDLE.as_secs()),
            Front::Apache => format!("ttl={}", README_IDLE.as_secs()),
        };
        assert!(block.contains(&limit), "the README's {front:?} block has {limit}");
        block
    });
    wait_until_idle(&d.backend);
    let pid = d.backend.child.id();
    let reply = poll(d.port);
    assert_eq!(reply.status, 200, "{reply:?}\n{}", d.logs());
    let first = fastcgi_connections(pid);
    assert_eq!(first.len(), 1, "{front:?} keeps the connection: {first:?}");
    std::thread::sleep(README_IDLE + Duration::from_secs(2));
    if front == Front::Nginx {
        assert!(fastcgi_connections(pid).is_empty(), "nginx closed the idle connection itself\n{}", d.logs());
    }
    let reply = poll(d.port);
    assert_eq!(reply.status, 200, "{front:?} after the idle limit: {reply:?}\n{}", d.logs());
    // Apache closes the expired connection when it takes a new one: wait for the backend to see it
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = fastcgi_connections(pid);
        if open.len() == 1 && open.is_disjoint(&first) {
            break;
        }
        assert!(Instant::now() < deadline, "{front:?}: after the idle limit the backend has {open:?} open (first {first:?})\n{}", d.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_fastcgi_connections_end_at_the_readme_limit() {
    // both at once: the pause is the test's whole time
    let runs = [Front::Nginx, Front::Apache].map(|front| std::thread::spawn(move || idle_connection_is_not_used_after_the_readme_limit(front)));
    // every run ends (and stops its servers) before a failure is passed on
    let ends = runs.map(|run| run.join());
    for end in ends {
        if let Err(panic) = end {
            std::panic::resume_unwind(panic);
        }
    }
}

fn poll(port: u16) -> Reply {
    curl(
        port,
        "GET",
        &format!("/mtls/update/update.php?type=IP232&sn={SN}&hwid={HWID}&ip=172.16.4.57&polling=0&phase=update"),
        None,
        false,
    )
}

#[test]
fn nginx_gets_a_clean_413_for_bodies_over_the_limits() {
    let d = deploy(Front::Nginx, Transport::Unix);
    let (site, port) = (&d.site, d.port);
    // over the 16 MiB ceiling: the backend reads the rest before it answers
    let huge = write_body(site, "huge.bin", &vec![b'x'; 31 << 20]);
    let reply = curl(port, "PUT", &backup_query(SN, HWID), Some(&huge), false);
    assert_eq!((reply.status, reply.curl_exit), (413, 0), "{reply:?}\n{}", d.logs());
    assert!(reply.body.starts_with("# request body too large"), "the binary's answer, not nginx's: {reply:?}");
    // over backup/@maxsize (8 MiB), under the ceiling
    let big = write_body(site, "big.txt", &backup_body(9 << 20));
    let reply = curl(port, "PUT", &backup_query(SN, HWID), Some(&big), false);
    assert_eq!((reply.status, reply.curl_exit), (413, 0), "{reply:?}\n{}", d.logs());
    assert!(reply.body.starts_with("# request body too large"), "{reply:?}");
    assert!(site.backup(HWID, 0).is_none());
    // and the backend still serves
    let reply = poll(port);
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[test]
fn nginx_deployment_block_gives_devices_urls_with_the_port() {
    // the block as it stands, over a socket and over TCP, and without its `HTTP_HOST $http_host`
    // line (what a site left with Debian's `fastcgi_params` alone sends)
    for (keep_http_host, transport) in [(true, Transport::Unix), (true, Transport::Tcp), (false, Transport::Unix)] {
        let d = deploy_with(Front::Nginx, transport, |_| {}, |block| match keep_http_host {
            true => block,
            false => block.lines().filter(|l| !l.contains("fastcgi_param HTTP_HOST")).collect::<Vec<_>>().join("\n"),
        });
        let (site, port) = (&d.site, d.port);
        let reply = poll(port);
        assert_eq!(reply.status, 200, "{reply:?}\n{}", d.logs());
        let expected = format!("scfg http://127.0.0.1:{port}/mtls/update/update.php?mode=backup");
        assert!(reply.body.contains(&expected), "HTTP_HOST line kept: {keep_http_host}, {transport:?}; {expected} in\n{}", reply.body);
        assert!(site.tree().join(format!("status/{SN}.xml")).exists(), "the state lands in the tree");
        // a backup through the block is stored
        let body = write_body(site, "backup.txt", &backup_body(20_000));
        let reply = curl(port, "PUT", &backup_query(SN, HWID), Some(&body), false);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(site.backup(HWID, 0).is_some());
        // the private folders are not served
        let reply = curl(port, "GET", &format!("/mtls/update/status/{SN}.xml"), None, false);
        assert_eq!(reply.status, 403, "{reply:?}");
    }
}

#[test]
fn apache_proxy_fcgi_finds_the_tree_from_its_proxy_script_filename() {
    // `proxy:fcgi://localhost/…` over the socket, `proxy:fcgi://127.0.0.1:PORT/…` over TCP
    for transport in [Transport::Unix, Transport::Tcp] {
        let d = deploy(Front::Apache, transport);
        let (site, port) = (&d.site, d.port);
        let reply = poll(port);
        assert_eq!(reply.status, 200, "{transport:?}: {reply:?}\n{}", d.logs());
        assert!(reply.body.contains(&format!("scfg http://127.0.0.1:{port}/mtls/update/update.php?mode=backup")), "{}", reply.body);
        assert!(site.tree().join(format!("status/{SN}.xml")).exists(), "the state lands in the tree: {}", reply.body);
        let body = write_body(site, "backup.txt", &backup_body(20_000));
        let reply = curl(port, "PUT", &backup_query(SN, HWID), Some(&body), true);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(site.backup(HWID, 0).is_some(), "{reply:?}");
        let reply = curl(port, "GET", "/mtls/update/admin/admin.php", None, false);
        assert!(reply.body.contains("<html") || reply.body.contains("<!DOCTYPE"), "the admin page: {reply:?}");
        let reply = curl(port, "GET", "/mtls/update/config.xml", None, false);
        assert_eq!(reply.status, 403, "{reply:?}");
    }
}

#[test]
fn apache_proxy_fcgi_gets_a_clean_413_for_a_body_over_the_ceiling() {
    let d = deploy(Front::Apache, Transport::Unix);
    let huge = write_body(&d.site, "huge.bin", &vec![b'x'; 20 << 20]);
    let reply = curl(d.port, "PUT", &backup_query(SN, HWID), Some(&huge), false);
    assert_eq!((reply.status, reply.curl_exit), (413, 0), "{reply:?}\n{}", d.logs());
    assert!(reply.body.starts_with("# request body too large"), "{reply:?}");
    assert!(d.site.backup(HWID, 0).is_none());
}
