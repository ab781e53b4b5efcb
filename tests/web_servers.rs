//! Request bodies and deployment under real Debian web servers: Apache with mod_cgid (the CGI
//! door), Apache with mod_proxy_fcgi and nginx (both to `update-server fastcgi --listen`).
//! Each server runs as its own instance on a free loopback port with configuration, logs and the
//! install tree in a temporary directory, configured with the README's deployment block for it.
//!
//! - A chunked backup through mod_cgid and mod_cgi is stored as a Content-Length one is, answered
//!   at once.
//! - Bodies over the 16 MiB ceiling or over the mode's limit get the binary's clean 413 through
//!   nginx and Apache (no 502/503 from a backend that closed while the body was still coming).
//! - mod_proxy_fcgi's `SCRIPT_FILENAME=proxy:fcgi://…` finds the install tree.
//! - Debian nginx's `HTTP_HOST $host` (no port) still gives devices URLs with the port.

mod support;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use tempfile::TempDir;

const APACHE: &str = "/usr/sbin/apache2";
const NGINX: &str = "/usr/sbin/nginx";
const MODULES: &str = "/usr/lib/apache2/modules";
/// Where the README's blocks put the install tree.
const README_WWW: &str = "/var/www/innovaphone";
const README_BACKEND: &str = "127.0.0.1:9000";
const SN: &str = "00-90-33-3e-0c-57";
const HWID: &str = "IP232-3e-0c-57";
const SN2: &str = "00-90-33-3e-0c-58";
const HWID2: &str = "IP232-3e-0c-58";

/// A temporary web site: `www` (the document root) holding the install tree at
/// `www/mtls/update`, plus a folder for a server's configuration and logs.
struct Site {
    dir: TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().expect("temporary directory");
        let tree = dir.path().join("www/mtls/update");
        fs::create_dir_all(&tree).unwrap();
        copy_install_tree(&tree);
        fs::create_dir_all(dir.path().join("server")).unwrap();
        Site { dir }
    }
    fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }
    fn tree(&self) -> PathBuf {
        self.www().join("mtls/update")
    }
    fn server_dir(&self) -> PathBuf {
        self.dir.path().join("server")
    }
    fn backup(&self, hwid: &str, index: u32) -> Option<Vec<u8>> {
        fs::read(self.tree().join(format!("backup/{hwid}/{hwid}.{index}.txt"))).ok()
    }
}

/// The first fenced block after the README line `heading`, with the README's paths and
/// backend address replaced by the test's.
fn readme_block(heading: &str, site: &Site, backend_port: u16) -> String {
    let readme = fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let after = readme.split_once(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("README has no {heading:?}")).1;
    let block = after.split_once("```\n").expect("a fenced block").1.split_once("```").expect("its end").0;
    block
        .replace(README_WWW, &site.www().display().to_string())
        .replace(README_BACKEND, &format!("127.0.0.1:{backend_port}"))
}

/// A server process in its own process group, killed with its children on drop.
struct Running {
    child: Child,
    name: &'static str,
    logs: Vec<PathBuf>,
}

impl Running {
    fn start(name: &'static str, mut command: Command, port: u16, logs: Vec<PathBuf>) -> Running {
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
            if TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_millis(200)).is_ok() {
                return running;
            }
            assert!(Instant::now() < deadline, "{name} did not listen on port {port}:\n{}", running.logs());
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

/// `update-server fastcgi --listen 127.0.0.1:PORT`, started outside the tree and without a
/// root: it must find the tree from what the web server sends.
fn backend(site: &Site, port: u16) -> Running {
    let mut command = Command::new(binary());
    command.args(["fastcgi", "--listen", &format!("127.0.0.1:{port}")]).env_remove("UPDATE_SERVER_ROOT").current_dir("/");
    Running::start("backend", command, port, vec![site.server_dir().join("backend.log")])
}

/// Apache with the event MPM and mod_cgid (Debian's default), or with prefork and mod_cgi.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cgi {
    Cgid,
    Prefork,
}

fn apache(site: &Site, port: u16, block: &str) -> Running {
    apache_with(site, port, block, Cgi::Cgid)
}

fn apache_with(site: &Site, port: u16, block: &str, cgi: Cgi) -> Running {
    assert!(Path::new(APACHE).exists(), "{APACHE} is missing: these tests need Debian's apache2 (tools/test installs it)");
    let dir = site.server_dir();
    let (mpm, cgi_module, socket) = match cgi {
        Cgi::Cgid => ("mpm_event", "cgid", format!("ScriptSock {}/cgid.sock\n", dir.display())),
        Cgi::Prefork => ("mpm_prefork", "cgi", String::new()),
    };
    let modules = [mpm, "authz_core", "alias", cgi_module, "env", "mime", "proxy", "proxy_fcgi"]
        .map(|m| format!("LoadModule {m}_module {MODULES}/mod_{m}.so\n"))
        .concat();
    let conf = format!(
        "ServerRoot {dir}\nServerName 127.0.0.1\nListen 127.0.0.1:{port}\nPidFile {dir}/httpd.pid\n\
         Mutex file:{dir} default\n{socket}ErrorLog {dir}/error.log\nLogLevel info\n\
         {modules}TypesConfig /etc/mime.types\nDocumentRoot {www}\n<Directory {www}>\n    Require all granted\n</Directory>\n\n{block}",
        dir = dir.display(),
        www = site.www().display(),
    );
    let conf_path = dir.join("httpd.conf");
    fs::write(&conf_path, conf).unwrap();
    let mut command = Command::new(APACHE);
    command.arg("-f").arg(&conf_path).arg("-DFOREGROUND");
    Running::start("apache", command, port, vec![dir.join("apache.out"), dir.join("error.log")])
}

fn nginx(site: &Site, port: u16, block: &str) -> Running {
    assert!(Path::new(NGINX).exists(), "{NGINX} is missing: these tests need Debian's nginx (tools/test installs it)");
    let dir = site.server_dir();
    // Debian's own parameter file, with its `HTTP_HOST $host`
    fs::copy("/etc/nginx/fastcgi_params", dir.join("fastcgi_params")).expect("Debian's /etc/nginx/fastcgi_params");
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 { "user root;\n" } else { "" };
    let server = block.replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    let conf = format!(
        "{user}daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log info;\n\
         events {{ worker_connections 64; }}\nhttp {{\n    access_log {dir}/access.log;\n\
         client_body_temp_path {dir}/body;\n    fastcgi_temp_path {dir}/fastcgi;\n    proxy_temp_path {dir}/proxy;\n\
         uwsgi_temp_path {dir}/uwsgi;\n    scgi_temp_path {dir}/scgi;\n{server}\n}}\n",
        dir = dir.display(),
    );
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf).unwrap();
    let mut command = Command::new(NGINX);
    command.arg("-p").arg(&dir).arg("-c").arg(&conf_path);
    Running::start("nginx", command, port, vec![dir.join("nginx.out"), dir.join("error.log")])
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
    let block = readme_block("### Apache as CGI (mod_cgid)", &site, 0);
    let server = apache_with(&site, port, &block, cgi);
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

/// The nginx README block, optionally without its `HTTP_HOST $http_host` line (what a site
/// left with Debian's `fastcgi_params` alone sends).
fn nginx_site(keep_http_host: bool) -> (Site, u16, Running, Running) {
    let site = Site::new();
    let (port, backend_port) = (free_port(), free_port());
    let mut block = readme_block("### nginx", &site, backend_port);
    if !keep_http_host {
        block = block.lines().filter(|l| !l.contains("fastcgi_param HTTP_HOST")).collect::<Vec<_>>().join("\n");
    }
    let backend = backend(&site, backend_port);
    let server = nginx(&site, port, &block);
    (site, port, server, backend)
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
    let (site, port, server, backend) = nginx_site(true);
    // over the 16 MiB ceiling: the backend reads the rest before it answers
    let huge = write_body(&site, "huge.bin", &vec![b'x'; 31 << 20]);
    let reply = curl(port, "PUT", &backup_query(SN, HWID), Some(&huge), false);
    assert_eq!((reply.status, reply.curl_exit), (413, 0), "{reply:?}\n{}{}", server.logs(), backend.logs());
    assert!(reply.body.starts_with("# request body too large"), "the binary's answer, not nginx's: {reply:?}");
    // over backup/@maxsize (8 MiB), under the ceiling
    let big = write_body(&site, "big.txt", &backup_body(9 << 20));
    let reply = curl(port, "PUT", &backup_query(SN, HWID), Some(&big), false);
    assert_eq!((reply.status, reply.curl_exit), (413, 0), "{reply:?}\n{}{}", server.logs(), backend.logs());
    assert!(reply.body.starts_with("# request body too large"), "{reply:?}");
    assert!(site.backup(HWID, 0).is_none());
    // and the backend still serves
    let reply = poll(port);
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[test]
fn nginx_deployment_block_gives_devices_urls_with_the_port() {
    for keep_http_host in [true, false] {
        let (site, port, server, backend) = nginx_site(keep_http_host);
        let reply = poll(port);
        assert_eq!(reply.status, 200, "{reply:?}\n{}{}", server.logs(), backend.logs());
        let expected = format!("scfg http://127.0.0.1:{port}/mtls/update/update.php?mode=backup");
        assert!(reply.body.contains(&expected), "HTTP_HOST line kept: {keep_http_host}; {expected} in\n{}", reply.body);
        assert!(site.tree().join(format!("status/{SN}.xml")).exists(), "the state lands in the tree");
        // a backup through the block is stored
        let body = write_body(&site, "backup.txt", &backup_body(20_000));
        let reply = curl(port, "PUT", &backup_query(SN, HWID), Some(&body), false);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(site.backup(HWID, 0).is_some());
        // the private folders are not served
        let reply = curl(port, "GET", &format!("/mtls/update/status/{SN}.xml"), None, false);
        assert_eq!(reply.status, 403, "{reply:?}");
    }
}

fn proxy_fcgi_site() -> (Site, u16, Running, Running) {
    let site = Site::new();
    let (port, backend_port) = (free_port(), free_port());
    let block = readme_block("### Apache (mod_proxy_fcgi)", &site, backend_port);
    let backend = backend(&site, backend_port);
    let server = apache(&site, port, &block);
    (site, port, server, backend)
}

#[test]
fn apache_proxy_fcgi_finds_the_tree_from_its_proxy_script_filename() {
    let (site, port, server, backend) = proxy_fcgi_site();
    let reply = poll(port);
    assert_eq!(reply.status, 200, "{reply:?}\n{}{}", server.logs(), backend.logs());
    assert!(reply.body.contains(&format!("scfg http://127.0.0.1:{port}/mtls/update/update.php?mode=backup")), "{}", reply.body);
    assert!(site.tree().join(format!("status/{SN}.xml")).exists(), "the state lands in the tree: {}", reply.body);
    let body = write_body(&site, "backup.txt", &backup_body(20_000));
    let reply = curl(port, "PUT", &backup_query(SN, HWID), Some(&body), true);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(site.backup(HWID, 0).is_some(), "{reply:?}");
    let reply = curl(port, "GET", "/mtls/update/admin/admin.php", None, false);
    assert!(reply.body.contains("<html") || reply.body.contains("<!DOCTYPE"), "the admin page: {reply:?}");
    let reply = curl(port, "GET", "/mtls/update/config.xml", None, false);
    assert_eq!(reply.status, 403, "{reply:?}");
}

#[test]
fn apache_proxy_fcgi_gets_a_clean_413_for_a_body_over_the_ceiling() {
    let (site, port, server, backend) = proxy_fcgi_site();
    let huge = write_body(&site, "huge.bin", &vec![b'x'; 20 << 20]);
    let reply = curl(port, "PUT", &backup_query(SN, HWID), Some(&huge), false);
    assert_eq!((reply.status, reply.curl_exit), (413, 0), "{reply:?}\n{}{}", server.logs(), backend.logs());
    assert!(reply.body.starts_with("# request body too large"), "{reply:?}");
    assert!(site.backup(HWID, 0).is_none());
}
