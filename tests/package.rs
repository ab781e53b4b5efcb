//! The Debian package `tools/package` builds, installed into a scratch root with `dpkg -x`:
//! its contents, the working tree its `setup-tree` lays out (and never overwrites), the
//! extracted binary answering a device poll as CGI, as the FastCGI service of the socket unit
//! and as `serve` the way the units start it, the units checked by `systemd-analyze verify`,
//! and the lighttpd snippets serving the LAP layout (`/mtls/update`, MTLS) under a real lighttpd.
//!
//! Under `cargo test --release` the package is made of the binary this run built
//! (`tools/package --no-build`; the build id in the package is checked to be that binary's), so
//! the whole file takes seconds. Under a debug `cargo test` it runs `tools/package` in full.
//! The package is built once per run, in `CARGO_TARGET_TMPDIR/package-test`.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::*;
use tempfile::TempDir;

/// Every file of the package (directories left out) with its mode string.
const CONTENTS: &[(&str, &str)] = &[
    ("./usr/bin/update-server", "-rwxr-xr-x"),
    ("./usr/lib/update-server/setup-tree", "-rwxr-xr-x"),
    ("./usr/share/update-server/config.xml", "-rw-r--r--"),
    ("./usr/share/update-server/full-config.dtd", "-rw-r--r--"),
    ("./usr/share/update-server/user-config.xml", "-rw-r--r--"),
    ("./usr/share/update-server/scripts/.keep", "-rw-r--r--"),
    ("./usr/share/update-server/www/admin.css", "-rw-r--r--"),
    ("./usr/share/update-server/www/admin.js", "-rw-r--r--"),
    ("./etc/lighttpd/conf-available/50-update-server.conf", "-rw-r--r--"),
    ("./etc/lighttpd/conf-available/51-update-server-mtls.conf", "-rw-r--r--"),
    ("./usr/lib/systemd/system/update-server.socket", "-rw-r--r--"),
    ("./usr/lib/systemd/system/update-server.service", "-rw-r--r--"),
    ("./usr/lib/systemd/system/update-server-serve.service", "-rw-r--r--"),
    ("./usr/share/doc/update-server/README.Debian", "-rw-r--r--"),
    ("./usr/share/doc/update-server/README.md", "-rw-r--r--"),
    ("./usr/share/doc/update-server/copyright", "-rw-r--r--"),
];

const UNITS: &str = "usr/lib/systemd/system";
const SHARE: &str = "usr/share/update-server";
const HOST: &str = "update.example.com";
const SNIPPET_LINE: &str = "config add CMD0 /location packaged";

/// The package, built once, and where it was extracted.
struct Package {
    deb: PathBuf,
    /// `dpkg -x` of the package: the scratch root.
    root: PathBuf,
    /// `dpkg-deb -e`: the control files and maintainer scripts.
    control: PathBuf,
    listing: String,
}

impl Package {
    fn binary(&self) -> PathBuf {
        self.root.join("usr/bin/update-server")
    }

    fn share(&self) -> PathBuf {
        self.root.join(SHARE)
    }

    fn read(&self, path: &str) -> String {
        fs::read_to_string(self.root.join(path)).unwrap_or_else(|e| panic!("reading {path} from the package: {e}"))
    }
}

fn package() -> &'static Package {
    static PACKAGE: OnceLock<Package> = OnceLock::new();
    PACKAGE.get_or_init(build_package)
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn build_package() -> Package {
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("package-test");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).expect("creating the package test folder");
    let exe = binary();
    let profile_dir = exe.parent().expect("the binary's folder");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let target_dir = profile_dir.parent().expect("the target folder");

    let mut command = Command::new(repo_root().join("tools/package"));
    if release {
        command.arg("--no-build");
    }
    command.arg("--output").arg(work.join("deb")).env("CARGO_TARGET_DIR", target_dir).current_dir(repo_root());
    // generous: on a fresh machine tools/package first installs cargo-deb (about 3 minutes)
    let limit = if release { Duration::from_secs(900) } else { Duration::from_secs(3600) };
    let started = Instant::now();
    let out = run_with_timeout(command, limit);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tools/package failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("tools/package took {:?}", started.elapsed());
    let deb = PathBuf::from(stdout.lines().last().expect("tools/package names the package it wrote").trim());
    assert!(deb.is_file(), "tools/package's last line is no package: {deb:?}\n{stdout}");

    let root = work.join("root");
    let control = work.join("control");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let package = Package { deb, root, control, listing };
    if release {
        assert_eq!(
            build_id(&package.binary()),
            build_id(&exe),
            "the package holds another binary than the one this test run built ({})",
            exe.display()
        );
    }
    package
}

/// The GNU build id of an ELF file (kept by strip), from its notes.
fn build_id(elf: &Path) -> String {
    let notes = run(Command::new("readelf").arg("-n").arg(elf));
    notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID:").map(|id| id.trim().to_string()))
        .unwrap_or_else(|| panic!("{} has no build id:\n{notes}", elf.display()))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The user the tree is set up for: www-data as root (what the postinst uses), else oneself.
fn tree_user() -> String {
    if is_root() {
        "www-data".into()
    } else {
        run(Command::new("id").arg("-un")).trim().to_string()
    }
}

fn uid_gid_of(user: &str) -> (u32, u32) {
    let uid = run(Command::new("id").arg("-u").arg(user)).trim().parse().expect("a uid");
    let gid = run(Command::new("id").arg("-g").arg(user)).trim().parse().expect("a gid");
    (uid, gid)
}

/// Runs the packaged setup-tree for `tree` against the extracted shipped tree.
fn setup_tree(pkg: &Package, tree: &Path) -> String {
    run(Command::new(pkg.root.join("usr/lib/update-server/setup-tree"))
        .arg(tree)
        .arg(tree_user())
        .env("UPDATE_SERVER_SHARE", pkg.share()))
}

/// A working tree as the postinst makes it, plus one snippet for every device.
fn working_tree(pkg: &Package) -> (TempDir, PathBuf) {
    let tmp = tempfile::Builder::new().prefix("update-server-pkg-").tempdir().expect("temp dir");
    let tree = tmp.path().join("var/lib/update-server");
    setup_tree(pkg, &tree);
    write_old_file(&tree, "scripts/update-all-default.txt", &format!("# packaged snippet\n{SNIPPET_LINE}\n"));
    (tmp, tree)
}

// ---- what is in the package -------------------------------------------------------------------

#[test]
fn the_package_holds_the_listed_files() {
    let pkg = package();
    let mut files = BTreeMap::new();
    for line in pkg.listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (mode, owner, path) = (fields[0], fields[1], *fields.last().expect("a path"));
        assert_eq!(owner, "0/0", "{path} belongs to root in the package");
        if !mode.starts_with('d') {
            files.insert(path.to_string(), mode.to_string());
        }
    }
    let expected: BTreeMap<String, String> = CONTENTS.iter().map(|(p, m)| (p.to_string(), m.to_string())).collect();
    assert_eq!(files, expected, "package contents:\n{}", pkg.listing);

    // the shipped tree is the repository's, byte for byte, and nothing of www/ is left out
    for name in ["config.xml", "full-config.dtd", "user-config.xml", "www/admin.css", "www/admin.js"] {
        assert_eq!(
            fs::read(pkg.share().join(name)).unwrap(),
            fs::read(repo_root().join(name)).unwrap(),
            "{SHARE}/{name} differs from the repository's"
        );
    }
    for entry in fs::read_dir(repo_root().join("www")).unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        if name != ".keep" && tracked(&format!("www/{name}")) {
            assert!(pkg.share().join("www").join(&name).is_file(), "www/{name} is not in the package (Cargo.toml assets)");
        }
    }
    assert_eq!(fs::read(pkg.root.join("usr/lib/update-server/setup-tree")).unwrap(), fs::read(repo_root().join("packaging/setup-tree")).unwrap());
}

/// Whether git tracks `path` (true without git: then every file counts).
fn tracked(path: &str) -> bool {
    Command::new("git")
        .args(["ls-files", "--error-unmatch", path])
        .current_dir(repo_root())
        .output()
        .map(|o| o.status.success() || String::from_utf8_lossy(&o.stderr).contains("not a git repository"))
        .unwrap_or(true)
}

#[test]
fn control_conffiles_and_maintainer_scripts() {
    let pkg = package();
    let field = |name: &str| run(Command::new("dpkg-deb").arg("-f").arg(&pkg.deb).arg(name)).trim().to_string();
    assert_eq!(field("Package"), "update-server");
    assert_eq!(field("Architecture"), run(Command::new("dpkg").arg("--print-architecture")).trim());
    // tools/package without --static: glibc linked dynamically, so the package depends on it
    let depends = field("Depends");
    assert!(depends.starts_with("libc6"), "Depends: {depends:?}");

    // configuration files: the lighttpd snippets (kept on upgrades), nothing else
    let conffiles = fs::read_to_string(pkg.control.join("conffiles")).expect("conffiles");
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/lighttpd/conf-available/50-update-server.conf", "/etc/lighttpd/conf-available/51-update-server-mtls.conf"]
    );

    let postinst = fs::read_to_string(pkg.control.join("postinst")).expect("postinst");
    let setup = postinst
        .find("/usr/lib/update-server/setup-tree /var/lib/update-server www-data")
        .expect("the postinst lays out the working tree");
    let configure = postinst.find("if [ \"$1\" = configure ]").expect("only on configure");
    assert!(configure < setup);
    // the systemd part: the socket is enabled and started, after the tree exists
    let enable = postinst.find("enable update-server.socket").expect("the postinst enables update-server.socket");
    assert!(setup < enable, "the tree exists before the socket starts");
    assert!(postinst.contains("update-server.socket") && postinst.contains("deb-systemd-invoke"));
    // the built-in server is never started by the package, at most restarted if running
    for line in postinst.lines().filter(|l| l.contains("update-server-serve") && l.contains("deb-systemd-invoke")) {
        assert!(line.contains("try-restart"), "the package starts update-server-serve: {line}");
    }
    for script in ["postinst", "prerm", "postrm"] {
        let path = pkg.control.join(script);
        assert!(fs::metadata(&path).unwrap().permissions().mode() & 0o111 != 0, "{script} is executable");
        run(Command::new("sh").arg("-n").arg(&path));
    }
    // removing the package never deletes the working tree
    for script in ["prerm", "postrm"] {
        let text = fs::read_to_string(pkg.control.join(script)).unwrap();
        assert!(!text.contains("/var/lib/update-server"), "{script} touches the working tree:\n{text}");
    }
}

// ---- the working tree -------------------------------------------------------------------------

/// Everything under `root` without following links: kind, mode, owner, content or link target.
fn tree_snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        let what = if meta.file_type().is_symlink() {
            format!("link -> {}", fs::read_link(&path).unwrap().display())
        } else if meta.is_dir() {
            for entry in fs::read_dir(&path).unwrap().flatten() {
                stack.push(entry.path());
            }
            "dir".into()
        } else {
            format!("file {:?}", String::from_utf8_lossy(&fs::read(&path).unwrap()))
        };
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        out.insert(rel, format!("{what} {:o} {}:{}", meta.mode() & 0o7777, meta.uid(), meta.gid()));
    }
    out
}

#[test]
fn setup_tree_lays_out_the_working_tree_once_and_never_overwrites() {
    let pkg = package();
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("var/lib/update-server");
    setup_tree(pkg, &tree);

    let share = pkg.share();
    for (link, target) in [("config.xml", "config.xml"), ("full-config.dtd", "full-config.dtd"), ("www", "www")] {
        assert_eq!(fs::read_link(tree.join(link)).unwrap(), share.join(target), "{link} links into the shipped tree");
    }
    let (uid, gid) = uid_gid_of(&tree_user());
    let me = (unsafe { libc::geteuid() }, unsafe { libc::getegid() });
    let expect = |rel: &str, mode: u32, owner: (u32, u32)| {
        let meta = fs::symlink_metadata(tree.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(meta.mode() & 0o7777, mode, "mode of {rel}");
        if is_root() {
            assert_eq!((meta.uid(), meta.gid()), owner, "owner of {rel}");
        } else {
            assert_eq!(meta.uid(), me.0, "owner of {rel}");
        }
    };
    expect("", 0o755, (0, 0));
    for data in ["status", "backup", "certs", "cache"] {
        assert!(tree.join(data).is_dir());
        expect(data, 0o750, (uid, gid));
    }
    expect("config", 0o750, (0, gid));
    expect("scripts", 0o750, (0, gid));
    expect("fw", 0o755, (0, 0));
    expect("config/user-config.xml", 0o640, (0, gid));
    let user_file = fs::read_to_string(tree.join("config/user-config.xml")).unwrap();
    let sample = fs::read_to_string(share.join("user-config.xml")).unwrap();
    assert_eq!(user_file, sample.replace("SYSTEM \"full-config.dtd\"", "SYSTEM \"../full-config.dtd\""));
    assert!(user_file.contains("\"../full-config.dtd\""));

    // an operator's changes: the user file edited, config.xml replaced by a file, a mode
    // changed, a link dangling, a data folder moved away
    fs::write(tree.join("config/user-config.xml"), "<config><status dir=\"status\"/></config>\n").unwrap();
    fs::remove_file(tree.join("config.xml")).unwrap();
    fs::write(tree.join("config.xml"), "<config/>\n").unwrap();
    fs::set_permissions(tree.join("scripts"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(tree.join("www")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/www", tree.join("www")).unwrap();
    fs::write(tree.join("status/00-90-33-3e-0c-57.xml"), "<state/>").unwrap();
    fs::remove_dir_all(tree.join("cache")).unwrap();
    let before = tree_snapshot(&tree);

    // an upgrade runs setup-tree again: only the missing folder comes back
    let said = setup_tree(pkg, &tree);
    let mut after = tree_snapshot(&tree);
    let cache = after.remove(Path::new("cache")).expect("the missing cache/ is made again");
    assert!(cache.starts_with("dir 750"), "{cache}");
    assert_eq!(after, before, "setup-tree changed an existing tree; it said:\n{said}");

    // a tree with the old place of the user file gets no second one
    let old = tmp.path().join("old");
    fs::create_dir_all(&old).unwrap();
    fs::write(old.join("user-config.xml"), "<config/>\n").unwrap();
    setup_tree(pkg, &old);
    assert!(!old.join("config/user-config.xml").exists(), "a user file besides user-config.xml was created");
}

// ---- the binary from the package --------------------------------------------------------------

/// Splits CGI or HTTP header lines from the body.
fn split_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").or_else(|| text.split_once("\n\n")).unwrap_or((&text, ""));
    let headers: Vec<(String, String)> = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let status = headers
        .iter()
        .find(|(k, _)| k == "status")
        .and_then(|(_, v)| v.get(..3)?.parse().ok())
        .unwrap_or(200);
    Answer { status, headers, body: body.to_string() }
}

/// The request variables a web server passes for a device poll of `/mtls/update/update.php`.
fn poll_variables(tree: &Path, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("GATEWAY_INTERFACE", "CGI/1.1".into()),
        ("SERVER_PROTOCOL", "HTTP/1.1".into()),
        ("REQUEST_METHOD", "GET".into()),
        ("QUERY_STRING", DEVICE_QUERY.into()),
        ("REQUEST_URI", format!("/mtls/update/update.php?{DEVICE_QUERY}")),
        ("SCRIPT_NAME", "/mtls/update/update.php".into()),
        ("SCRIPT_FILENAME", tree.join("update.php").display().to_string()),
        ("DOCUMENT_ROOT", "/var/www/html".into()),
        ("HTTP_HOST", format!("{HOST}:{port}")),
        ("SERVER_NAME", HOST.into()),
        ("SERVER_PORT", port.to_string()),
        ("SERVER_ADDR", "127.0.0.1".into()),
        ("REMOTE_ADDR", "172.16.4.57".into()),
        ("REMOTE_PORT", "49152".into()),
        ("SERVER_SOFTWARE", "lighttpd/1.4.69".into()),
        ("HTTP_USER_AGENT", "innovaphone-update/1.0".into()),
        ("REQUEST_SCHEME", "http".into()),
    ]
}

/// What every front door must answer to the poll on a packaged tree with the sample user file.
#[track_caller]
fn assert_poll_answered(answer: &Answer, tree: &Path, how: &str) {
    assert_eq!(answer.status, 200, "{how}: {}", answer.body);
    assert!(answer.commands().iter().any(|c| c == SNIPPET_LINE), "{how}: the snippet is not delivered:\n{}", answer.body);
    let first = answer.body.lines().next().unwrap_or("");
    assert!(first.contains("config/user-config.xml"), "{how}: the answer names the user file: {first}");
    assert!(tree.join("status").join(format!("{DEVICE_SN}.xml")).is_file(), "{how}: no state file written");
}

#[test]
fn the_extracted_binary_answers_a_poll_as_cgi() {
    let pkg = package();
    let (_tmp, tree) = working_tree(pkg);
    let mut command = Command::new(pkg.binary());
    command.env_clear().env("PATH", "/usr/bin:/bin").current_dir(&tree);
    for (name, value) in poll_variables(&tree, 80) {
        command.env(name, value);
    }
    let out = run_with_timeout(command, Duration::from_secs(30));
    assert!(out.status.success(), "CGI exited with {}:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert_poll_answered(&split_answer(&out.stdout), &tree, "CGI");
}

/// The ExecStart= of a unit file, as words.
fn exec_start(unit: &str) -> Vec<String> {
    let lines: Vec<&str> = unit.lines().filter_map(|l| l.strip_prefix("ExecStart=")).collect();
    assert_eq!(lines.len(), 1, "one ExecStart= (comments aside):\n{unit}");
    lines[0].split_whitespace().map(str::to_string).collect()
}

/// A unit's command line for the scratch root: the packaged binary, the scratch tree.
fn scratch_command(pkg: &Package, words: &[String], tree: &Path) -> Command {
    assert_eq!(words[0], "/usr/bin/update-server");
    let mut command = Command::new(pkg.binary());
    for word in &words[1..] {
        command.arg(if word == "/var/lib/update-server" { tree.display().to_string() } else { word.clone() });
    }
    command.env_clear().env("PATH", "/usr/bin:/bin").current_dir("/");
    command
}

/// A child killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_starts_as_its_unit_says() {
    let pkg = package();
    let (_tmp, tree) = working_tree(pkg);
    let mut words = exec_start(&pkg.read(&format!("{UNITS}/update-server-serve.service")));
    assert_eq!(&words[1..], ["serve", "--listen", "0.0.0.0:8080", "--root", "/var/lib/update-server"]);
    let port = free_port();
    words[3] = format!("127.0.0.1:{port}");
    let mut command = scratch_command(pkg, &words, &tree);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut server = Running(command.spawn().expect("starting serve"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("serve exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "serve did not listen on 127.0.0.1:{port} within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let answer = http_get(port, &format!("/mtls/update/update.php?{DEVICE_QUERY}"), HOST);
    assert_poll_answered(&answer, &tree, "serve");
    // the admin page's files come from the shipped tree through the www link
    let css = http_get(port, "/mtls/update/www/admin.css", HOST);
    assert_eq!(css.status, 200);
    assert_eq!(css.body.as_bytes(), fs::read(repo_root().join("www/admin.css")).unwrap());
}

// ---- a tiny FastCGI client (the web server's side of update-server.socket) ---------------------

fn fcgi_record(kind: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![1, kind, 0, 1];
    out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(content);
    out
}

fn fcgi_request(pairs: &[(&str, String)]) -> Vec<u8> {
    let mut params = Vec::new();
    for (name, value) in pairs {
        for n in [name.len(), value.len()] {
            if n < 128 {
                params.push(n as u8);
            } else {
                params.extend_from_slice(&(n as u32 | 0x8000_0000).to_be_bytes());
            }
        }
        params.extend_from_slice(name.as_bytes());
        params.extend_from_slice(value.as_bytes());
    }
    let mut out = fcgi_record(1, &[0, 1, 0, 0, 0, 0, 0, 0]); // BEGIN_REQUEST, responder
    out.extend(fcgi_record(4, &params)); // PARAMS
    out.extend(fcgi_record(4, &[]));
    out.extend(fcgi_record(5, &[])); // STDIN, empty
    out
}

/// Everything on STDOUT up to END_REQUEST.
fn fcgi_answer(stream: &mut UnixStream) -> Vec<u8> {
    let mut stdout = Vec::new();
    loop {
        let mut header = [0u8; 8];
        stream.read_exact(&mut header).expect("a FastCGI record before END_REQUEST");
        let length = usize::from(u16::from_be_bytes([header[4], header[5]])) + usize::from(header[6]);
        let mut content = vec![0u8; length];
        stream.read_exact(&mut content).expect("a record's content");
        content.truncate(usize::from(u16::from_be_bytes([header[4], header[5]])));
        match header[1] {
            6 => stdout.extend(content),
            7 => {}
            3 => return stdout,
            other => panic!("unexpected FastCGI record type {other}"),
        }
    }
}

#[test]
fn the_fastcgi_service_answers_on_the_socket_systemd_passes() {
    let pkg = package();
    let (tmp, tree) = working_tree(pkg);
    let unit = pkg.read(&format!("{UNITS}/update-server.service"));
    assert!(unit.lines().any(|l| l == "StandardInput=socket"));
    let words = exec_start(&unit);
    assert_eq!(&words[1..], ["--root", "/var/lib/update-server"]);
    // what systemd does for StandardInput=socket with Accept=no: the listening socket as fd 0
    let socket = tmp.path().join("fastcgi.sock");
    let listener = UnixListener::bind(&socket).expect("binding the socket");
    let mut command = scratch_command(pkg, &words, &tree);
    command
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _service = Running(command.spawn().expect("starting the service's command"));
    let mut stream = UnixStream::connect(&socket).expect("connecting to the socket");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(&fcgi_request(&poll_variables(Path::new("/var/lib/update-server"), 80))).unwrap();
    let answer = split_answer(&fcgi_answer(&mut stream));
    assert_poll_answered(&answer, &tree, "FastCGI on the inherited socket");
}

// ---- the units --------------------------------------------------------------------------------

/// A unit file as sections of key=value lines; panics on anything else.
fn parse_unit(name: &str, text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(section.to_string());
            sections.entry(section.to_string()).or_default();
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("{name}:{}: not key=value: {line}", n + 1));
        let section = current.as_ref().unwrap_or_else(|| panic!("{name}:{}: a key before any section", n + 1));
        assert!(!key.trim().is_empty() && !line.ends_with('\\'), "{name}:{}: {line}", n + 1);
        sections.get_mut(section).unwrap().push((key.trim().to_string(), value.trim().to_string()));
    }
    sections
}

fn value<'a>(unit: &'a BTreeMap<String, Vec<(String, String)>>, section: &str, key: &str) -> Option<&'a str> {
    unit.get(section)?.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[test]
fn the_units_parse_and_systemd_analyze_verifies_them() {
    let pkg = package();
    let names = ["update-server.socket", "update-server.service", "update-server-serve.service"];
    let units: BTreeMap<&str, _> =
        names.iter().map(|n| (*n, parse_unit(n, &pkg.read(&format!("{UNITS}/{n}"))))).collect();

    let socket = &units["update-server.socket"];
    assert_eq!(value(socket, "Socket", "ListenStream"), Some("/run/update-server/fastcgi.sock"));
    assert_eq!(value(socket, "Socket", "SocketGroup"), Some("www-data"));
    assert_eq!(value(socket, "Socket", "SocketMode"), Some("0660"));
    assert_eq!(value(socket, "Socket", "Accept"), Some("no"));
    assert_eq!(value(socket, "Install", "WantedBy"), Some("sockets.target"));
    let service = &units["update-server.service"];
    assert_eq!(value(service, "Service", "StandardInput"), Some("socket"));
    assert_eq!(value(service, "Service", "StandardOutput"), Some("journal"));
    assert_eq!(value(service, "Unit", "Requires"), Some("update-server.socket"));
    for (name, unit) in [("update-server.service", service), ("update-server-serve.service", &units["update-server-serve.service"])] {
        assert_eq!(value(unit, "Service", "User"), Some("www-data"), "{name}");
        assert_eq!(value(unit, "Service", "ReadWritePaths"), Some("/var/lib/update-server"), "{name}");
    }
    // the built-in server's TLS line is there, commented (serve_runs_its_units_tls_line runs it)
    let serve = pkg.read(&format!("{UNITS}/update-server-serve.service"));
    assert!(serve.lines().any(|l| l.starts_with("#ExecStart=/usr/bin/update-server serve") && l.contains("--tls-cert")));

    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the units were only parsed");
        return;
    };
    assert!(version.status.success());
    // verify on copies whose binary is the extracted one (verify checks that it is executable)
    let tmp = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for name in names {
        let text = pkg.read(&format!("{UNITS}/{name}")).replace("/usr/bin/update-server", &pkg.binary().display().to_string());
        let path = tmp.path().join(name);
        fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze").arg("verify").args(&paths).output().expect("running systemd-analyze");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify failed:\n{said}");
    let about_ours: Vec<&str> = said.lines().filter(|l| l.contains("update-server")).collect();
    assert!(about_ours.is_empty(), "systemd-analyze verify warns:\n{}", about_ours.join("\n"));
}

// ---- the lighttpd snippets --------------------------------------------------------------------

/// A packaged snippet with its absolute paths moved into the scratch setting.
fn scratch_snippet(pkg: &Package, name: &str, tree: &Path, tmp: &Path) -> String {
    pkg.read(&format!("etc/lighttpd/conf-available/{name}"))
        .replace("/usr/bin/update-server", &pkg.binary().display().to_string())
        .replace("/var/lib/update-server", &tree.display().to_string())
        .replace("/run/lighttpd/", &format!("{}/", tmp.display()))
        .replace("/var/log/lighttpd/", &format!("{}/", tmp.display()))
        .replace("/etc/lighttpd/update-server/", &format!("{}/", tmp.display()))
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").args(args).current_dir(dir));
}

/// ca.pem, server.pem (certificate and key, for 127.0.0.1) and client.{pem,key} for the device.
fn make_pki(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", "/C=DE/O=Test/CN=Test Device CA"]);
    ca.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    openssl(dir, &ca);
    for (name, subject, ext) in [
        ("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "/C=DE/O=innovaphone AG/CN=IP232-3e-0c-57", "extendedKeyUsage=clientAuth\n"),
    ] {
        fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let mut req = vec!["req", "-new"];
        req.extend(ec);
        let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
        req.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
        openssl(dir, &req);
        let ext_file = format!("{name}.ext");
        openssl(
            dir,
            &["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "7", "-days", "30", "-out", &pem, "-extfile", &ext_file],
        );
    }
    let server = format!("{}{}", fs::read_to_string(dir.join("server.crt")).unwrap(), fs::read_to_string(dir.join("server.key")).unwrap());
    fs::write(dir.join("server.pem"), server).unwrap();
    fs::copy(dir.join("ca.pem"), dir.join("device-ca.pem")).unwrap();
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().expect("running curl")
}

#[test]
fn the_lighttpd_snippets_serve_the_lap_layout() {
    let pkg = package();
    let (tmp, tree) = working_tree(pkg);
    let dir = tmp.path();
    make_pki(dir);
    let port = free_port();
    let tls_port = free_port();
    let docroot = dir.join("htdocs");
    fs::create_dir_all(&docroot).unwrap();
    let error_log = dir.join("error.log");
    let mtls = scratch_snippet(pkg, "51-update-server-mtls.conf", &tree, dir);
    assert!(mtls.contains("$SERVER[\"socket\"] == \":444\""), "the MTLS port is 444:\n{mtls}");
    let conf = format!(
        "server.document-root = \"{docroot}\"\nserver.bind = \"127.0.0.1\"\nserver.port = {port}\n\
         server.errorlog = \"{log}\"\nserver.modules = ( \"mod_indexfile\", \"mod_access\", \"mod_alias\" )\n\
         mimetype.assign = ( \".css\" => \"text/css\", \".xml\" => \"text/xml\" )\n\n{routing}\n{mtls}\n",
        docroot = docroot.display(),
        log = error_log.display(),
        routing = scratch_snippet(pkg, "50-update-server.conf", &tree, dir),
        mtls = mtls.replace("\":444\"", &format!("\"127.0.0.1:{tls_port}\"")),
    );
    let conf_path = dir.join("lighttpd.conf");
    fs::write(&conf_path, conf).unwrap();
    let server = Lighttpd::start(&conf_path, port, &error_log);

    // plain HTTP: the poll through the spawned binary; data and configuration never served
    let answer = http_get(port, &format!("/mtls/update/update.php?{DEVICE_QUERY}"), HOST);
    assert!(answer.status == 200, "poll answered {}:\n{}\n{}", answer.status, answer.body, server.logs());
    assert_poll_answered(&answer, &tree, "lighttpd");
    for private in [
        format!("/mtls/update/status/{DEVICE_SN}.xml"),
        "/mtls/update/config/user-config.xml".into(),
        "/mtls/update/scripts/update-all-default.txt".into(),
        "/mtls/update/config.xml".into(),
    ] {
        assert_eq!(http_get(port, &private, HOST).status, 403, "{private} is served");
    }
    let css = http_get(port, "/mtls/update/www/admin.css", HOST);
    assert_eq!(css.status, 200, "the admin page's CSS through the www link");

    // the MTLS port: with the device's certificate the poll is answered over HTTPS and the
    // binary sees the verified client; without one the handshake fails
    let url = format!("https://127.0.0.1:{tls_port}/mtls/update/update.php?{DEVICE_QUERY}");
    let ca = dir.join("ca.pem").display().to_string();
    let (cert, key) = (dir.join("client.crt").display().to_string(), dir.join("client.key").display().to_string());
    let out = curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, &url]);
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "curl over MTLS: {}\n{}", String::from_utf8_lossy(&out.stderr), server.logs());
    assert!(commands_of(&body).iter().any(|c| c == SNIPPET_LINE), "MTLS poll:\n{body}");
    let refused = curl(&["--cacert", &ca, &url]);
    assert!(!refused.status.success(), "the MTLS port answered without a client certificate");
}

/// The commented TLS line of update-server-serve.service, uncommented as its comment says: plain
/// HTTP and MTLS from one process, with the device's certificate the poll is answered over
/// HTTPS, without one the handshake fails.
#[test]
fn serve_runs_its_units_tls_line() {
    let pkg = package();
    let (tmp, tree) = working_tree(pkg);
    let dir = tmp.path();
    make_pki(dir);
    let unit = pkg.read(&format!("{UNITS}/update-server-serve.service"));
    let tls_line: Vec<&str> = unit.lines().filter_map(|l| l.strip_prefix("#ExecStart=")).collect();
    assert_eq!(tls_line.len(), 1, "one commented ExecStart= line:\n{unit}");
    let (port, tls_port) = (free_port(), free_port());
    let words: Vec<String> = tls_line[0]
        .replace("/etc/update-server/", &format!("{}/", dir.display()))
        .replace("0.0.0.0:80 ", &format!("127.0.0.1:{port} "))
        .replace("0.0.0.0:444 ", &format!("127.0.0.1:{tls_port} "))
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(words.iter().any(|w| w == &format!("127.0.0.1:{tls_port}")), "the MTLS listener is 0.0.0.0:444: {}", tls_line[0]);
    let mut command = scratch_command(pkg, &words, &tree);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut server = Running(command.spawn().expect("starting serve"));
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in [port, tls_port] {
        while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
            if let Ok(Some(status)) = server.0.try_wait() {
                panic!("serve exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "serve did not listen on 127.0.0.1:{p} within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let plain = http_get(port, &format!("/mtls/update/update.php?{DEVICE_QUERY}"), HOST);
    assert_poll_answered(&plain, &tree, "serve, plain HTTP");

    let url = format!("https://127.0.0.1:{tls_port}/mtls/update/update.php?{DEVICE_QUERY}");
    let ca = dir.join("ca.pem").display().to_string();
    let (cert, key) = (dir.join("client.crt").display().to_string(), dir.join("client.key").display().to_string());
    let out = curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, &url]);
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "curl over MTLS: {}", String::from_utf8_lossy(&out.stderr));
    assert!(commands_of(&body).iter().any(|c| c == SNIPPET_LINE), "MTLS poll:\n{body}");
    let refused = curl(&["--cacert", &ca, &url]);
    assert!(!refused.status.success(), "the MTLS listener answered without a client certificate");
}
