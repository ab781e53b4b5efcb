//! The throttle on wrong admin passwords, through the binary run as CGI: failures count per
//! source, never lock the right password out from another address, slow a distributed guess
//! down, end by themselves, and the page says how long the wait is and how to end it.

mod support;

use std::fs;
use std::path::PathBuf;
use support::*;

const HTTPS: (&str, &str) = ("HTTPS", "on");
const FORM: (&str, &str) = ("CONTENT_TYPE", "application/x-www-form-urlencoded");
const RECORD: &str = "cache/admin-login-failures";

struct Admin {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Admin {
    fn new() -> Admin {
        let dir = tempfile::Builder::new().prefix("update-server-throttle-").tempdir().expect("temporary root");
        let root = dir.path().to_path_buf();
        copy_install_tree(&root);
        write_admin_fixture(&root, ADMIN_PASSWORD);
        fs::create_dir_all(root.join("admin")).expect("admin/");
        Admin { _dir: dir, root }
    }

    /// A login from `address` (extra CGI variables in `extra`).
    fn login_from(&self, address: &str, user: &str, password: &str, extra: &[(&str, &str)]) -> Answer {
        let ctx = CgiContext { remote_addr: address.into(), port: 443, ..CgiContext::default() };
        let mut vars = vec![HTTPS, FORM];
        vars.extend_from_slice(extra);
        cgi_request(&self.root, &ctx, "POST", "admin/admin.php", "", format!("user={user}&pw={password}").as_bytes(), &vars)
    }

    fn right(&self, address: &str) -> Answer {
        self.login_from(address, "admin", ADMIN_PASSWORD, &[])
    }

    fn wrong(&self, address: &str) -> Answer {
        self.login_from(address, "admin", "guess", &[])
    }

    fn record(&self) -> PathBuf {
        self.root.join(RECORD)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

fn retry_after(answer: &Answer) -> i64 {
    answer.header("retry-after").expect("Retry-After").parse().expect("seconds")
}

/// Finding 7: 50 wrong logins from 50 addresses used to give the right password from a fresh
/// address 429 for 15 minutes, renewable for ever. Now it gets in; the flood only makes each
/// source's budget one try per window (a guesser is slowed down, nobody's first try denied).
#[test]
fn failures_from_many_addresses_never_lock_out_the_right_password_from_a_new_one() {
    let admin = Admin::new();
    for i in 0..50 {
        let answer = admin.wrong(&format!("198.51.100.{}", i + 1));
        assert_eq!(answer.status, 403, "wrong password {i}: {}", answer.body);
    }
    let answer = admin.right("203.0.113.10");
    assert_eq!(answer.status, 303, "the right password from a fresh address: {}", answer.body);
    // under the flood a source has one try per window
    assert_eq!(admin.wrong("203.0.113.20").status, 403);
    let slowed = admin.right("203.0.113.20");
    assert_eq!(slowed.status, 429, "{}", slowed.body);
    assert!((1..=900).contains(&retry_after(&slowed)));
    // and the flood goes on: still no lock-out for a new address
    for i in 50..60 {
        assert_eq!(admin.wrong(&format!("198.51.100.{}", i + 1)).status, 403);
    }
    assert_eq!(admin.right("203.0.113.30").status, 303);
}

/// Finding 7 and 11c: a source that is throttled is told how long the wait still is, that it
/// ends by itself, and which file to delete to end it at once; deleting it does.
#[test]
fn a_throttled_address_is_told_how_long_and_how_to_end_it() {
    let admin = Admin::new();
    for _ in 0..5 {
        assert_eq!(admin.wrong("172.16.4.57").status, 403);
    }
    let answer = admin.right("172.16.4.57");
    assert_eq!(answer.status, 429, "{}", answer.body);
    let wait = retry_after(&answer);
    assert!((840..=900).contains(&wait), "the oldest failure is seconds old: {wait}");
    assert!(answer.body.contains("try again in 15 minutes"), "{}", answer.body);
    assert!(answer.body.contains("ends by itself") && answer.body.contains(RECORD), "{}", answer.body);
    assert!(session_of(&answer).is_none());
    fs::remove_file(admin.record()).expect("the documented way to end the wait");
    assert_eq!(admin.right("172.16.4.57").status, 303);
}

/// Finding 11c: a record left from before (a restart, an old version's format, a clock that
/// was off) locks nobody out once its failures are 15 minutes old, and says exactly how long
/// a recent one still counts. A record in which nothing counts any more is removed.
#[test]
fn a_stale_failure_record_ends_by_itself() {
    let admin = Admin::new();
    let t = now();
    let mut stale = String::new();
    for i in 0..60 {
        // the old format (no user tag), 16 minutes old: more than every limit, none counting
        stale.push_str(&format!("{} 172.16.4.57\n{} 198.51.100.{}\n", t - 16 * 60, t - 16 * 60 - i, i + 1));
    }
    stale.push_str("garbage line\n\n");
    fs::create_dir_all(admin.root.join("cache")).unwrap();
    fs::write(admin.record(), &stale).unwrap();
    assert_eq!(admin.right("172.16.4.57").status, 303, "16-minute-old failures count no more");
    assert!(!admin.record().exists(), "nothing counted any more: the record is gone");

    // five failures 14 minutes old: one more minute to wait, and the page says so
    let recent: String = (0..5).map(|i| format!("{} 172.16.4.58\n", t - 14 * 60 - i)).collect();
    fs::write(admin.record(), recent).unwrap();
    let answer = admin.right("172.16.4.58");
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert!((1..=60).contains(&retry_after(&answer)), "{}", retry_after(&answer));
    assert!(answer.body.contains("try again in 1 minute."), "{}", answer.body);
}

/// An IPv6 host has a whole /64 to pick addresses from: its failures count together.
#[test]
fn failures_of_an_ipv6_host_count_for_its_whole_64() {
    let admin = Admin::new();
    for i in 1..=5 {
        assert_eq!(admin.wrong(&format!("2001:db8:0:1::{i}")).status, 403);
    }
    assert_eq!(admin.right("2001:db8:0:1::99").status, 429, "same /64");
    assert_eq!(admin.right("2001:db8:0:2::1").status, 303, "another /64");
}

/// Behind a trusted reverse proxy the forwarded client counts, not the proxy: one client's
/// failures do not lock out everybody who comes through the proxy.
#[test]
fn behind_a_trusted_proxy_the_client_counts_not_the_proxy() {
    let admin = Admin::new();
    let config = admin_user_config("admin", ADMIN_PASSWORD).replace("<config>", "<config>\n  <proxies trusted=\"10.0.0.2\"/>");
    write_old_file(&admin.root, "config/user-config.xml", &config);
    for _ in 0..5 {
        assert_eq!(admin.login_from("10.0.0.2", "admin", "guess", &[("HTTP_X_FORWARDED_FOR", "198.51.100.7")]).status, 403);
    }
    let login = |peer: &str, client: &str| admin.login_from(peer, "admin", ADMIN_PASSWORD, &[("HTTP_X_FORWARDED_FOR", client)]).status;
    assert_eq!(login("10.0.0.2", "198.51.100.7"), 429, "the guessing client waits");
    assert_eq!(login("10.0.0.2", "198.51.100.8"), 303, "another client through the same proxy does not");
    // an untrusted peer cannot escape its own failures with a forged header
    for _ in 0..5 {
        assert_eq!(admin.login_from("192.0.2.9", "admin", "guess", &[("HTTP_X_FORWARDED_FOR", "192.0.2.1")]).status, 403);
    }
    assert_eq!(login("192.0.2.9", "192.0.2.200"), 429);
}

fn session_of(answer: &Answer) -> Option<String> {
    header_values(answer, "set-cookie").into_iter().find(|c| c.starts_with("update_admin=") && !c.contains("Max-Age=0")).map(String::from)
}

/// Issue 11 item 6: the login form itself (a GET, before another try) says that this address
/// is locked out, after how many failures and for how long, and shows no form; another address
/// gets the form. The GET writes nothing.
#[test]
fn the_login_form_says_when_this_address_is_locked_out() {
    let admin = Admin::new();
    for _ in 0..5 {
        assert_eq!(admin.wrong("172.16.4.59").status, 403);
    }
    let form = |address: &str| {
        let ctx = CgiContext { remote_addr: address.into(), port: 443, ..CgiContext::default() };
        cgi_request(&admin.root, &ctx, "GET", "admin/admin.php", "", b"", &[HTTPS])
    };
    let before = snapshot_files(&admin.root);
    let locked = form("172.16.4.59");
    assert_eq!(snapshot_diff(&before, &snapshot_files(&admin.root)), Vec::<String>::new(), "the form's GET wrote something");
    assert_eq!(locked.status, 200, "{}", locked.body);
    assert!(locked.body.contains("Login locked after 5 failed logins from your address: try again in 15 minutes."), "{}", locked.body);
    assert!(locked.body.contains("also across restarts") && locked.body.contains(RECORD), "{}", locked.body);
    assert!(!locked.body.contains("name=\"pw\""), "no form while locked: {}", locked.body);
    let other = form("172.16.4.60");
    assert!(other.body.contains("name=\"pw\"") && !other.body.contains("Login locked"), "{}", other.body);
    // the refused try says the same, with Retry-After
    let refused = admin.right("172.16.4.59");
    assert_eq!(refused.status, 429);
    assert!(refused.body.contains("Login locked after 5 failed logins"), "{}", refused.body);
}
