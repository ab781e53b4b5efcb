//! The admin page behind a real Debian lighttpd over HTTPS: the binary spawned by
//! `mod_fastcgi` (two processes, so a session must work whichever one answers), lighttpd
//! serving `www/` as static files, curl as the browser (cookie jar, `-k` for the self-signed
//! certificate). Login, the status page, a changing command with its CSRF token, a download,
//! logout.

mod support;

use std::fs;
use std::path::Path;
use support::*;

const PREFIX: &str = "/update";

/// curl against the site with a cookie jar: `args` after the common ones; status code and body.
fn curl(port: u16, jar: &Path, args: &[&str]) -> (u16, String) {
    let jar = jar.to_str().expect("a UTF-8 path");
    let all: Vec<&str> = ["-b", jar, "-c", jar].iter().chain(args).copied().collect();
    curl_site(port, &all)
}

#[test]
fn admin_page_over_https_through_lighttpd_and_fastcgi() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    copy_install_tree(&root);
    write_admin_fixture(&root, ADMIN_PASSWORD);
    let pem = self_signed_pem(tmp.path());
    let port = free_port();
    let conf = tmp.path().join("lighttpd.conf");
    fs::write(&conf, https_lighttpd_conf(port, tmp.path(), &root, &pem, PREFIX, 2)).unwrap();
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
