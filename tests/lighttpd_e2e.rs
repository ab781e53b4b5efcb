//! End to end under a real Debian lighttpd: the binary spawned by `mod_fastcgi` (`bin-path`,
//! listening socket on fd 0) answers device polls over HTTP exactly as it answers them as CGI,
//! keeps the device state in the install tree, and the private folders are not served.
//!
//! lighttpd listens on 127.0.0.1 only, on a free port, with its configuration, logs and the
//! install root in a temporary directory. It is stopped (with its backends) when a test ends.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use support::*;
use tempfile::TempDir;

/// URL path of the install directory in these tests.
const PREFIX: &str = "/update";
const HOST: &str = "update.example.com";

/// How the binary learns where the install tree is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RootFrom {
    /// `UPDATE_SERVER_ROOT` given with `bin-environment`.
    Environment,
    /// Only `alias.url`: the root is derived from `SCRIPT_FILENAME`.
    ScriptFilename,
}

/// One lighttpd serving a temporary install root, plus a twin root for CGI comparisons.
struct Site {
    /// Root served by lighttpd.
    root: PathBuf,
    /// Identical root the CGI runs use, so state written by one does not feed the other.
    cgi_root: PathBuf,
    cgi: CgiContext,
    server: Lighttpd,
    _tmp: TempDir,
}

impl Site {
    fn start(root_from: RootFrom) -> Site {
        let tmp = tempfile::Builder::new().prefix("update-server-e2e-").tempdir().expect("temp dir");
        let root = tmp.path().join("root");
        let cgi_root = tmp.path().join("cgi-root");
        for r in [&root, &cgi_root] {
            copy_install_tree(r);
            write_basic_setup(r);
        }
        let docroot = tmp.path().join("htdocs");
        fs::create_dir_all(&docroot).expect("docroot");
        let port = free_port();
        let error_log = tmp.path().join("lighttpd-error.log");
        let conf = tmp.path().join("lighttpd.conf");
        fs::write(&conf, lighttpd_conf(port, &docroot, &root, &error_log, &tmp.path().join("update-server.sock"), root_from))
            .expect("writing lighttpd.conf");
        let server = Lighttpd::start(&conf, port, &error_log);
        let cgi = CgiContext {
            url_prefix: PREFIX.into(),
            host: HOST.into(),
            port,
            remote_addr: "127.0.0.1".into(),
            server_software: lighttpd_version(),
        };
        Site { root, cgi_root, cgi, server, _tmp: tmp }
    }

    fn get(&self, script: &str, query: &str) -> Answer {
        let target = if query.is_empty() { format!("{PREFIX}/{script}") } else { format!("{PREFIX}/{script}?{query}") };
        http_get(self.server.port, &target, HOST)
    }

    fn cgi_get(&self, script: &str, query: &str) -> Answer {
        cgi_get(&self.cgi_root, &self.cgi, script, query)
    }

    /// Fails with lighttpd's logs attached.
    #[track_caller]
    fn check(&self, ok: bool, what: &str) {
        assert!(ok, "{what}\n{}", self.server.logs());
    }
}

/// The configuration this test runs lighttpd with; the README's "Deploying under lighttpd"
/// shows the same `fastcgi.server` and `url.access-deny` parts.
fn lighttpd_conf(port: u16, docroot: &Path, root: &Path, error_log: &Path, socket: &Path, root_from: RootFrom) -> String {
    format!(
        r#"server.document-root = "{docroot}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{error_log}"
server.modules = ( "mod_access", "mod_alias", "mod_fastcgi" )
mimetype.assign = ( ".txt" => "text/plain", ".xml" => "text/xml", ".html" => "text/html" )

{deployment}"#,
        deployment = deployment_block(PREFIX, root, socket, 2, matches!(root_from, RootFrom::Environment)),
        docroot = docroot.display(),
        error_log = error_log.display(),
    )
}

/// `lighttpd/1.4.69` or whatever is installed: what lighttpd puts in `SERVER_SOFTWARE`.
fn lighttpd_version() -> String {
    std::process::Command::new(LIGHTTPD)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "lighttpd".into())
}

fn poll_query(sn_suffix: &str) -> String {
    format!("type=IP232&sn=00-90-33-{s}&hwid=IP232-{s}&ip=172.16.4.57&polling=0&phase=update", s = sn_suffix)
}

/// The scenario both root variants must pass.
fn device_polls_through_lighttpd(root_from: RootFrom) {
    let site = Site::start(root_from);

    // First poll: the device gets its configuration, as it would through CGI.
    let http = site.get("update.php", DEVICE_QUERY);
    let cgi = site.cgi_get("update.php", DEVICE_QUERY);
    site.check(http.status == 200, &format!("poll through lighttpd answered {}:\n{}", http.status, http.body));
    assert_eq!(cgi.status, 200, "CGI poll answered {}:\n{}", cgi.status, cgi.body);
    site.check(
        http.commands() == cgi.commands(),
        &format!(
            "commands through lighttpd differ from CGI\n--- lighttpd:\n{}\n--- CGI:\n{}",
            http.commands().join("\n"),
            cgi.commands().join("\n")
        ),
    );
    let check = http
        .check_serial()
        .unwrap_or_else(|| panic!("first poll sets no CHECK serial (mod cmd UP1 check ser …):\n{}", http.body));
    site.check(
        http.commands().iter().any(|c| c.contains("/location all-default")),
        &format!("the snippet was not delivered:\n{}", http.body),
    );

    // The device state lands in the install tree lighttpd serves.
    let state = site.root.join("status").join(format!("{DEVICE_SN}.xml"));
    site.check(
        fs::metadata(&state).map(|m| m.len() > 0).unwrap_or(false),
        &format!("no device state at {}", state.display()),
    );

    // Steady state: with the matching CHECK value nothing but comments comes back.
    let steady_query = format!("{DEVICE_QUERY}&CHECK={check}");
    let steady = site.get("update.php", &steady_query);
    site.check(steady.status == 200, &format!("steady poll answered {}", steady.status));
    site.check(
        steady.commands().is_empty(),
        &format!("steady poll with CHECK={check} still answers commands:\n{}", steady.body),
    );
    assert!(!steady.body.trim().is_empty(), "steady poll answered an empty body (comments expected)");

    // Data, snippets and configuration are never served as static files: files that exist
    // are refused (403), not merely missing.
    for private in [
        format!("status/{DEVICE_SN}.xml"),
        "config/user-config.xml".into(),
        "user-config.xml".into(),
        "config.xml".into(),
        "scripts/update-all-default.txt".into(),
    ] {
        assert!(site.root.join(&private).is_file(), "{private} exists in the test root");
        let answer = site.get(&private, "");
        site.check(answer.status == 403, &format!("{PREFIX}/{private} answered {} (must be 403):\n{}", answer.status, answer.body));
    }

    // The other two scripts reach the binary too and answer as they do through CGI.
    let migrate = site.get("update-migrate.php", DEVICE_QUERY);
    let migrate_cgi = site.cgi_get("update-migrate.php", DEVICE_QUERY);
    site.check(
        migrate.status == migrate_cgi.status && migrate.header("location") == migrate_cgi.header("location"),
        &format!(
            "update-migrate.php: lighttpd {} {:?}, CGI {} {:?}",
            migrate.status,
            migrate.header("location"),
            migrate_cgi.status,
            migrate_cgi.header("location")
        ),
    );
    let admin = site.get("admin/admin.php", "");
    let admin_cgi = site.cgi_get("admin/admin.php", "");
    site.check(
        admin.status == admin_cgi.status,
        &format!("admin/admin.php: lighttpd answered {}, CGI {}", admin.status, admin_cgi.status),
    );

    // Several devices at once, spread over the spawned backends.
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let port = site.server.port;
            std::thread::spawn(move || {
                (0..5)
                    .map(|i| {
                        let query = poll_query(&format!("10-{t:02x}-{i:02x}"));
                        let answer = http_get(port, &format!("{PREFIX}/update.php?{query}"), HOST);
                        (query, answer)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for thread in threads {
        for (query, answer) in thread.join().expect("poll thread") {
            site.check(
                answer.status == 200 && answer.check_serial().is_some(),
                &format!("concurrent poll {query} answered {}:\n{}", answer.status, answer.body),
            );
        }
    }
    let states = fs::read_dir(site.root.join("status"))
        .expect("status folder")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("00-90-33-10-"))
        .count();
    site.check(states == 30, &format!("expected 30 state files of the concurrent devices, found {states}"));
}

#[test]
fn device_polls_through_lighttpd_root_from_environment() {
    device_polls_through_lighttpd(RootFrom::Environment);
}

#[test]
fn device_polls_through_lighttpd_root_from_script_filename() {
    device_polls_through_lighttpd(RootFrom::ScriptFilename);
}
