//! The admin page behind a real Debian lighttpd over HTTPS: the binary spawned by
//! `mod_fastcgi` (two processes, so a session must work whichever one answers), lighttpd
//! serving `www/` as static files, curl as the browser (cookie jar, `-k` for the self-signed
//! certificate). Login, the status page, a changing command with its CSRF token, a download,
//! logout.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use support::*;

const PREFIX: &str = "/update";

fn lighttpd_conf(port: u16, tmp: &Path, root: &Path, pem: &Path) -> String {
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
        deployment = deployment_block(PREFIX, root, &tmp.join("update-server.sock"), 2, true),
        docroot = tmp.join("htdocs").display(),
        tmp = tmp.display(),
        pem = pem.display(),
    )
}

/// curl against the site: `args` after the common ones; status code and body.
fn curl(port: u16, jar: &Path, args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", "-b"])
        .arg(jar)
        .arg("-c")
        .arg(jar)
        .args(args)
        .arg("--resolve")
        .arg(format!("update.example.com:{port}:127.0.0.1"))
        .output()
        .expect("curl is installed (tools/test installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn admin_page_over_https_through_lighttpd_and_fastcgi() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    copy_install_tree(&root);
    write_admin_fixture(&root, ADMIN_PASSWORD);
    fs::create_dir_all(tmp.path().join("htdocs")).unwrap();
    let pem = tmp.path().join("server.pem");
    let key = tmp.path().join("key.pem");
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=update.example.com", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&pem)
        .output()
        .expect("openssl is installed (tools/test installs it)");
    assert!(made.status.success());
    let mut both = fs::read(&pem).unwrap();
    both.extend(fs::read(&key).unwrap());
    fs::write(&pem, both).unwrap();
    let port = free_port();
    let conf = tmp.path().join("lighttpd.conf");
    fs::write(&conf, lighttpd_conf(port, tmp.path(), &root, &pem)).unwrap();
    let server = Lighttpd::start(&conf, port, &tmp.path().join("lighttpd-error.log"));
    let jar = tmp.path().join("cookies.txt");
    let base = format!("https://update.example.com:{port}{PREFIX}");
    let admin = format!("{base}/admin/admin.php");

    let (code, body) = curl(port, &jar, &[&admin]);
    assert_eq!(code, 200, "{}", server.logs());
    assert!(body.contains("name=\"pw\""), "{body}");
    let (code, _) = curl(port, &jar, &["-d", "user=admin&pw=wrong", &admin]);
    assert_eq!(code, 403);
    let (code, _) = curl(port, &jar, &["-d", &format!("user=admin&pw={ADMIN_PASSWORD}"), &admin]);
    assert_eq!(code, 303);
    let cookies = fs::read_to_string(&jar).unwrap();
    assert!(cookies.contains("#HttpOnly_update.example.com") && cookies.contains("\t/update/\tTRUE\t"), "a secure, HttpOnly cookie for /update/: {cookies}");

    // the session works whichever of the two FastCGI processes answers
    let mut token = String::new();
    for _ in 0..6 {
        let (code, page) = curl(port, &jar, &[&format!("{admin}?mode=status")]);
        assert_eq!(code, 200);
        assert!(page.contains("4 of 4 devices"), "{page}");
        token = page.split("data-csrf=\"").nth(1).and_then(|t| t.split('"').next()).unwrap().to_string();
    }
    let (code, css) = curl(port, &jar, &["-D", "-", &format!("{base}/www/admin.css")]);
    assert_eq!(code, 200);
    assert!(css.to_ascii_lowercase().contains("content-type: text/css"));
    let (code, _) = curl(port, &jar, &[&format!("{base}/www/admin.js")]);
    assert_eq!(code, 200);

    // a changing command: refused without the token, done with it
    let touch = format!("{admin}?mode=ui&cmd=touchstatus&sn=00-90-33-11-22-33");
    let (code, _) = curl(port, &jar, &["-d", "", &touch]);
    assert_eq!(code, 403);
    let (code, body) = curl(port, &jar, &["-d", "", "-H", &format!("X-CSRF-Token: {token}"), &touch]);
    assert_eq!((code, body.trim()), (200, "true"));
    let (code, body) = curl(port, &jar, &[&format!("{admin}?mode=ui&cmd=deliverfile&fn=backup%2FIP232-3e-0c-57%2FIP232-3e-0c-57.1.txt")]);
    assert_eq!((code, body.as_str()), (200, "config change CMD0 /name new\r\n"));
    // the data folders stay closed to the web
    let (code, _) = curl(port, &jar, &[&format!("{base}/status/00-90-33-3e-0c-57.xml")]);
    assert_eq!(code, 403);

    let (code, _) = curl(port, &jar, &["-d", &format!("csrf={token}"), &format!("{admin}?mode=logout")]);
    assert_eq!(code, 303);
    let (_, page) = curl(port, &jar, &[&format!("{admin}?mode=status")]);
    assert!(page.contains("name=\"pw\""));
}
