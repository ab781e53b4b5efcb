//! The admin page at request level, through the binary run as CGI (as a web server runs it):
//! login and sessions, every `mode=ui` command with and without session and CSRF token, the
//! pages, and the certificate upload (through the library, `update_server::admin::upload`).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use support::*;

struct Admin {
    _dir: tempfile::TempDir,
    root: PathBuf,
    ctx: CgiContext,
}

const HTTPS: (&str, &str) = ("HTTPS", "on");
const FORM: (&str, &str) = ("CONTENT_TYPE", "application/x-www-form-urlencoded");

impl Admin {
    fn new() -> Admin {
        Admin::with_password(ADMIN_PASSWORD)
    }

    fn with_password(password: &str) -> Admin {
        let dir = tempfile::tempdir().expect("temporary root");
        let root = dir.path().to_path_buf();
        copy_install_tree(&root);
        write_admin_fixture(&root, password);
        // the web server's script folder (the CGI runs there)
        fs::create_dir_all(root.join("admin")).expect("admin/");
        Admin { _dir: dir, root, ctx: CgiContext { port: 443, ..CgiContext::default() } }
    }

    fn set_user_config(&self, user: &str, password: &str) {
        write_old_file(&self.root, "config/user-config.xml", &admin_user_config(user, password));
    }

    fn request(&self, method: &str, script: &str, query: &str, extra: &[(&str, &str)], body: &[u8]) -> Answer {
        cgi_request(&self.root, &self.ctx, method, script, query, body, extra)
    }

    fn get(&self, query: &str, extra: &[(&str, &str)]) -> Answer {
        self.request("GET", "admin/admin.php", query, extra, b"")
    }

    fn post(&self, query: &str, extra: &[(&str, &str)], body: &str) -> Answer {
        self.request("POST", "admin/admin.php", query, extra, body.as_bytes())
    }

    /// Logs in over HTTPS; returns the `Cookie` header value and the CSRF token.
    fn login(&self) -> (String, String) {
        let answer = self.post("", &[HTTPS, FORM], &format!("user=admin&pw={}", ADMIN_PASSWORD));
        assert_eq!(answer.status, 303, "login: {}", answer.body);
        let cookie = session_cookie(&answer).expect("a session cookie");
        let page = self.get("mode=status", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
        assert_eq!(page.status, 200);
        let csrf = csrf_of(&page.body).expect("the page carries the CSRF token");
        (cookie, csrf)
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

fn session_cookie(answer: &Answer) -> Option<String> {
    header_values(answer, "set-cookie")
        .into_iter()
        .find(|c| c.starts_with("update_admin=") && !c.contains("Max-Age=0"))
        .map(|c| c.split(';').next().unwrap_or("").to_string())
}

fn csrf_of(body: &str) -> Option<String> {
    let start = body.find("data-csrf=\"")? + "data-csrf=\"".len();
    let token = &body[start..start + body[start..].find('"')?];
    (!token.is_empty()).then(|| token.to_string())
}

fn assert_secure_headers(answer: &Answer) {
    let csp = answer.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
}

// --- login and sessions ----------------------------------------------------------------------

#[test]
fn login_form_until_a_session_exists() {
    let admin = Admin::new();
    for query in ["", "mode=status", "mode=show", "mode=info"] {
        let answer = admin.get(query, &[HTTPS]);
        assert_eq!(answer.status, 200);
        assert!(answer.body.contains("name=\"user\"") && answer.body.contains("name=\"pw\""), "{query}: {}", answer.body);
        assert!(answer.body.contains("method=\"post\" action=\"admin.php\""));
        assert!(!answer.body.contains("00-90-33-3e-0c-57"), "no device data before login");
        assert_secure_headers(&answer);
    }
}

#[test]
fn login_over_https_gives_a_fresh_strict_cookie() {
    let admin = Admin::new();
    let answer = admin.post("mode=show", &[HTTPS, FORM, ("HTTP_COOKIE", "update_admin=0000000000000000000000000000000000000000000000000000000000000000")], &format!("user=admin&pw={ADMIN_PASSWORD}"));
    assert_eq!(answer.status, 303);
    assert_eq!(answer.header("location"), Some("/mtls/update/admin/admin.php?mode=show"));
    let cookie = header_values(&answer, "set-cookie").into_iter().find(|c| c.starts_with("update_admin=")).unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Secure") && cookie.contains("Path=/mtls/update/"), "{cookie}");
    assert!(!cookie.starts_with("update_admin=0000"), "never the id the browser brought");
    let session = cookie.split(';').next().unwrap();
    let page = admin.get("", &[HTTPS, ("HTTP_COOKIE", session)]);
    assert!(page.body.contains("00-90-33-3e-0c-57"));
    // the session file is named by the id's hash, not the id
    let id = session.trim_start_matches("update_admin=");
    let names: Vec<String> = fs::read_dir(admin.path("cache/sessions")).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 1);
    assert_ne!(names[0], id);
}

#[test]
fn a_second_login_gets_a_new_id_and_ends_the_old_one() {
    let admin = Admin::new();
    let (first, _) = admin.login();
    let again = admin.post("", &[HTTPS, FORM, ("HTTP_COOKIE", &first)], &format!("user=admin&pw={ADMIN_PASSWORD}"));
    let second = session_cookie(&again).unwrap();
    assert_ne!(first, second);
    assert!(admin.get("", &[HTTPS, ("HTTP_COOKIE", &first)]).body.contains("name=\"pw\""), "the old id is dead");
    assert!(admin.get("", &[HTTPS, ("HTTP_COOKIE", &second)]).body.contains("00-90-33-3e-0c-57"));
}

#[test]
fn wrong_credentials_are_refused() {
    let admin = Admin::new();
    for body in ["user=admin&pw=wrong", "user=root&pw=Test-Passw0rd", "user=admin&pw=", "user=&pw="] {
        let answer = admin.post("", &[HTTPS, FORM], body);
        assert_eq!(answer.status, 403, "{body}");
        assert!(session_cookie(&answer).is_none());
        assert!(answer.body.contains("Wrong user or password"));
    }
}

#[test]
fn credentials_travel_only_over_https_or_the_loopback_quick_start() {
    let admin = Admin::new();
    let body = format!("user=admin&pw={ADMIN_PASSWORD}");
    let plain = admin.post("", &[FORM], &body);
    assert_eq!(plain.status, 403);
    assert!(session_cookie(&plain).is_none());
    let page = admin.get("", &[]);
    assert!(page.body.contains("over HTTPS only") && page.body.contains("https://update.example.com/mtls/update/admin/admin.php"), "{}", page.body);
    assert!(!page.body.contains("name=\"pw\""), "no password field over plain HTTP");
    // `update-server serve` on 127.0.0.1: the quick start
    let quick = CgiContext { remote_addr: "127.0.0.1".into(), server_software: "update-server/0.1.0".into(), port: 8080, ..CgiContext::default() };
    let answer = cgi_request(&admin.root, &quick, "POST", "admin/admin.php", "", body.as_bytes(), &[FORM]);
    assert_eq!(answer.status, 303);
    let cookie = header_values(&answer, "set-cookie").join(" ");
    assert!(!cookie.contains("Secure"), "{cookie}");
    // loopback alone (another web server's proxy on the same box) is not the quick start
    let proxied = CgiContext { remote_addr: "127.0.0.1".into(), ..CgiContext::default() };
    assert_eq!(cgi_request(&admin.root, &proxied, "POST", "admin/admin.php", "", body.as_bytes(), &[FORM]).status, 403);
}

#[test]
fn the_shipped_default_password_is_never_accepted() {
    let admin = Admin::new();
    admin.set_user_config("admin", "password");
    let page = admin.get("", &[HTTPS]);
    assert!(page.body.contains("still the shipped default") && page.body.contains("config/user-config.xml"), "{}", page.body);
    let answer = admin.post("", &[HTTPS, FORM], "user=admin&pw=password");
    assert_eq!(answer.status, 403);
    assert!(session_cookie(&answer).is_none());
    // config.xml's own defaults (no user file setting at all) are refused the same way
    write_old_file(&admin.root, "config/user-config.xml", "<config><master info=\"\"/><status dir=\"status\"/></config>");
    assert!(session_cookie(&admin.post("", &[HTTPS, FORM], "user=admin&pw=password")).is_none());
}

#[test]
fn bcrypt_and_argon2_hashes_are_verified_as_hashes() {
    let admin = Admin::new();
    // a bcrypt hash as htpasswd writes it ($2y$) and as most other tools do ($2b$)
    let bcrypt = bcrypt::hash(ADMIN_PASSWORD, 4).unwrap();
    for hash in [bcrypt.replacen("$2b$", "$2y$", 1), bcrypt.clone()] {
        admin.set_user_config("admin", &hash);
        assert_eq!(admin.post("", &[HTTPS, FORM], &format!("user=admin&pw={ADMIN_PASSWORD}")).status, 303, "{hash}");
        assert_eq!(admin.post("", &[HTTPS, FORM], "user=admin&pw=wrong").status, 403);
        assert_eq!(admin.post("", &[HTTPS, FORM], &format!("user=admin&pw={}", hash.replace('$', "%24"))).status, 403, "the hash itself is no password");
    }
    let argon = {
        use argon2::password_hash::PasswordHasher;
        argon2::Argon2::default().hash_password_with_salt(ADMIN_PASSWORD.as_bytes(), b"some salt here").unwrap().to_string()
    };
    assert!(argon.starts_with("$argon2id$"));
    admin.set_user_config("admin", &argon);
    assert_eq!(admin.post("", &[HTTPS, FORM], &format!("user=admin&pw={ADMIN_PASSWORD}")).status, 303);
    assert_eq!(admin.post("", &[HTTPS, FORM], "user=admin&pw=wrong").status, 403);
}

#[test]
fn wrong_passwords_are_throttled() {
    let admin = Admin::new();
    for _ in 0..5 {
        assert_eq!(admin.post("", &[HTTPS, FORM], "user=admin&pw=guess").status, 403);
    }
    let answer = admin.post("", &[HTTPS, FORM], &format!("user=admin&pw={ADMIN_PASSWORD}"));
    assert_eq!(answer.status, 429, "even the right password waits: {}", answer.body);
    let wait: i64 = answer.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(wait > 0 && wait <= 900);
    assert!(session_cookie(&answer).is_none());
    // another client is not locked out by this one
    let other = CgiContext { remote_addr: "172.16.9.9".into(), port: 443, ..CgiContext::default() };
    let answer = cgi_request(&admin.root, &other, "POST", "admin/admin.php", "", format!("user=admin&pw={ADMIN_PASSWORD}").as_bytes(), &[HTTPS, FORM]);
    assert_eq!(answer.status, 303);
}

#[test]
fn logout_needs_the_token_and_ends_the_session() {
    let admin = Admin::new();
    let (cookie, csrf) = admin.login();
    assert_eq!(admin.get("mode=logout", &[HTTPS, ("HTTP_COOKIE", &cookie)]).status, 405);
    assert_eq!(admin.post("mode=logout", &[HTTPS, FORM, ("HTTP_COOKIE", &cookie)], "csrf=nope").status, 403);
    assert!(admin.get("", &[HTTPS, ("HTTP_COOKIE", &cookie)]).body.contains("00-90-33-3e-0c-57"), "still logged in");
    let answer = admin.post("mode=logout", &[HTTPS, FORM, ("HTTP_COOKIE", &cookie)], &format!("csrf={csrf}"));
    assert_eq!(answer.status, 303);
    assert!(header_values(&answer, "set-cookie").iter().any(|c| c.contains("Max-Age=0")));
    assert!(admin.get("", &[HTTPS, ("HTTP_COOKIE", &cookie)]).body.contains("name=\"pw\""));
}

#[test]
fn changed_credentials_end_every_session() {
    let admin = Admin::new();
    let (cookie, _) = admin.login();
    admin.set_user_config("admin", "An0ther-Passw0rd");
    assert!(admin.get("", &[HTTPS, ("HTTP_COOKIE", &cookie)]).body.contains("name=\"pw\""));
}

#[test]
fn idle_sessions_expire() {
    let admin = Admin::new();
    let (cookie, _) = admin.login();
    for entry in fs::read_dir(admin.path("cache/sessions")).unwrap().flatten() {
        let file = fs::File::options().write(true).open(entry.path()).unwrap();
        file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600)).unwrap();
    }
    assert!(admin.get("", &[HTTPS, ("HTTP_COOKIE", &cookie)]).body.contains("name=\"pw\""));
}

#[test]
fn empty_credentials_need_someone_to_vouch() {
    let admin = Admin::new();
    admin.set_user_config("", "");
    let page = admin.get("", &[HTTPS]);
    assert!(page.body.contains("Login is switched off") && !page.body.contains("00-90-33-3e-0c-57"), "{}", page.body);
    // the web server authenticated the user (mod_auth): no login, a session for the token
    let page = admin.get("", &[HTTPS, ("REMOTE_USER", "operator")]);
    assert!(page.body.contains("00-90-33-3e-0c-57"));
    assert!(session_cookie(&page).is_some());
    // the quick start on loopback
    let quick = CgiContext { remote_addr: "::1".into(), server_software: "update-server/0.1.0".into(), port: 8080, ..CgiContext::default() };
    let page = cgi_request(&admin.root, &quick, "GET", "admin/admin.php", "", b"", &[]);
    assert!(page.body.contains("00-90-33-3e-0c-57"));
}

// --- mode=ui ------------------------------------------------------------------------------

#[test]
fn every_ui_command_needs_a_session_and_reveals_nothing_without() {
    let admin = Admin::new();
    let commands = [
        ("GET", "mode=ui&cmd=updatestatus&sn=00-90-33-3e-0c-57"),
        ("POST", "mode=ui&cmd=delstatus&sn=00-90-33-3e-0c-57"),
        ("POST", "mode=ui&cmd=touchstatus&sn=00-90-33-11-22-33"),
        ("POST", "mode=ui&cmd=delfile&sn=00-90-33-3e-0c-57&file=certs/00-90-33-3e-0c-57-request.p10.pem"),
        ("GET", "mode=ui&cmd=deliverfile&fn=backup/IP232-3e-0c-57/IP232-3e-0c-57.1.txt"),
        ("GET", "mode=ui&cmd=deliverfile&fn=backup/IP232-3e-0c-57/IP232-3e-0c-57.9.txt"),
        ("GET", "mode=ui&cmd=deliverfile&fn=config/user-config.xml"),
        ("GET", "mode=ui&cmd=nosuch"),
    ];
    let mut answers = Vec::new();
    for (method, query) in commands {
        for extra in [vec![HTTPS], vec![HTTPS, ("HTTP_COOKIE", "update_admin=1111111111111111111111111111111111111111111111111111111111111111")], vec![]] {
            let answer = admin.request(method, "admin/admin.php", query, &extra, b"");
            assert_eq!(answer.status, 401, "{method} {query}");
            answers.push(answer.body);
        }
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "the same answer whatever was asked: {answers:?}");
    assert!(admin.path("status/00-90-33-3e-0c-57.xml").is_file());
    assert!(admin.path("certs/00-90-33-3e-0c-57-request.p10.pem").is_file());
}

#[test]
fn changing_commands_need_post_and_the_csrf_token() {
    let admin = Admin::new();
    let (cookie, csrf) = admin.login();
    let session = ("HTTP_COOKIE", cookie.as_str());
    for query in [
        "mode=ui&cmd=delstatus&sn=00-90-33-3e-0c-57",
        "mode=ui&cmd=touchstatus&sn=00-90-33-11-22-33",
        "mode=ui&cmd=delfile&sn=00-90-33-3e-0c-57&file=certs/00-90-33-3e-0c-57-request.p10.pem",
    ] {
        assert_eq!(admin.get(&format!("{query}&csrf={csrf}"), &[HTTPS, session]).status, 405, "{query}");
        assert_eq!(admin.post(query, &[HTTPS, session], "").status, 403, "{query}");
        assert_eq!(admin.post(query, &[HTTPS, session, ("HTTP_X_CSRF_TOKEN", "0123")], "").status, 403, "{query}");
        let foreign = admin.post(query, &[HTTPS, session, ("HTTP_X_CSRF_TOKEN", &csrf), ("HTTP_ORIGIN", "https://evil.example")], "");
        assert_eq!(foreign.status, 403, "another site's request is refused even with the token");
        let cross = admin.post(query, &[HTTPS, session, ("HTTP_X_CSRF_TOKEN", &csrf), ("HTTP_SEC_FETCH_SITE", "cross-site")], "");
        assert_eq!(cross.status, 403);
    }
    assert!(admin.path("status/00-90-33-3e-0c-57.xml").is_file());
    assert!(admin.path("certs/00-90-33-3e-0c-57-request.p10.pem").is_file());
    let seen_before = fs::read_to_string(admin.path("status/00-90-33-11-22-33.xml")).unwrap();
    assert!(seen_before.contains("seen=\""));
}

#[test]
fn delstatus_removes_exactly_that_state() {
    let admin = Admin::new();
    let (cookie, csrf) = admin.login();
    let extra = [HTTPS, ("HTTP_COOKIE", cookie.as_str()), ("HTTP_X_CSRF_TOKEN", csrf.as_str()), ("HTTP_ORIGIN", "https://update.example.com")];
    let answer = admin.post("mode=ui&cmd=delstatus&sn=00-90-33-3e-0c-57", &extra, "");
    assert_eq!((answer.status, answer.body.trim()), (200, "true"));
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert!(!admin.path("status/00-90-33-3e-0c-57.xml").exists());
    for sn in ["00-90-33-00-00-01", "00-90-33-11-22-33", "00-90-33-aa-bb-cc"] {
        assert!(admin.path(&format!("status/{sn}.xml")).is_file());
    }
    assert_eq!(admin.post("mode=ui&cmd=delstatus&sn=00-90-33-3e-0c-57", &extra, "").body.trim(), "false");
    assert_eq!(admin.post("mode=ui&cmd=delstatus&sn=../config/user-config", &extra, "").status, 400);
    // the token may come as a form field too
    let answer = admin.post("mode=ui&cmd=delstatus&sn=00-90-33-aa-bb-cc", &[HTTPS, FORM, ("HTTP_COOKIE", &cookie)], &format!("csrf={csrf}"));
    assert_eq!(answer.body.trim(), "true");
}

#[test]
fn touchstatus_really_refreshes_seen() {
    let admin = Admin::new();
    let (cookie, csrf) = admin.login();
    let before = admin.get("mode=ui&cmd=updatestatus&sn=00-90-33-11-22-33", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert!(before.body.contains("missing"), "{}", before.body);
    let extra = [HTTPS, ("HTTP_COOKIE", cookie.as_str()), ("HTTP_X_CSRF_TOKEN", csrf.as_str())];
    let answer = admin.post("mode=ui&cmd=touchstatus&sn=00-90-33-11-22-33", &extra, "");
    assert_eq!(answer.body.trim(), "true");
    let state = fs::read_to_string(admin.path("status/00-90-33-11-22-33.xml")).unwrap();
    let seen: u64 = state.split("seen=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now - seen < 60, "seen is now");
    assert!(state.contains("Lobby"), "nothing else lost");
    let after = admin.get("mode=ui&cmd=updatestatus&sn=00-90-33-11-22-33", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert!(!after.body.contains("missing"), "{}", after.body);
    assert_eq!(admin.post("mode=ui&cmd=touchstatus&sn=00-90-33-99-99-99", &extra, "").body.trim(), "false");
    assert!(!admin.path("status/00-90-33-99-99-99.xml").exists(), "touch creates no state");
}

#[test]
fn updatestatus_answers_the_rows_html_as_json() {
    let admin = Admin::new();
    let (cookie, _) = admin.login();
    let answer = admin.get("mode=ui&cmd=updatestatus&sn=00-90-33-3e-0c-57", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert_eq!(answer.status, 200);
    assert!(!answer.body.contains('<'), "even the JSON text has no markup characters");
    let html: String = serde_json::from_str(&answer.body).expect("a JSON string");
    assert!(html.starts_with("<tr id=\"device-00-90-33-3e-0c-57\""), "{html}");
    assert!(html.contains("<div class=\"name\">&#60;script&#62;alert(1)&#60;/script&#62;</div>"), "the name is escaped: {html}");
    assert!(!html.contains("<script"));
    assert!(!html.contains("delivered scripts/update-all-default.txt"), "no log without detail");
    let detail = admin.get("mode=ui&cmd=updatestatus&sn=00-90-33-3e-0c-57&detail=1", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    let html: String = serde_json::from_str(&detail.body).expect("a JSON string");
    assert!(html.contains("delivered scripts/update-all-default.txt &#60;b&#62;bold&#60;/b&#62;"), "{html}");
    assert!(html.contains("IP232-3e-0c-57.1.txt") && html.contains("IP232-3e-0c-57.0.txt"), "backup files listed");
    let gone = admin.get("mode=ui&cmd=updatestatus&sn=00-90-33-99-99-99", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert_eq!((gone.status, gone.body.trim()), (404, "false"));
}

#[test]
fn delfile_deletes_only_csr_and_certificate_files_of_that_serial() {
    let admin = Admin::new();
    let (cookie, csrf) = admin.login();
    let extra = [HTTPS, ("HTTP_COOKIE", cookie.as_str()), ("HTTP_X_CSRF_TOKEN", csrf.as_str())];
    write_old_file(&admin.root, "certs/00-90-33-11-22-33-request.p10.pem", "other device");
    write_old_file(&admin.root, "certs/CAkey1.pem", "ca");
    fs::create_dir_all(admin.path("certs")).unwrap();
    std::os::unix::fs::symlink(admin.path("config/user-config.xml"), admin.path("certs/00-90-33-3e-0c-57-signedrequest.cer")).unwrap();
    for file in [
        "certs/00-90-33-11-22-33-request.p10.pem",
        "certs/CAkey1.pem",
        "config/user-config.xml",
        "../config/user-config.xml",
        "certs/../config/user-config.xml",
        "status/00-90-33-3e-0c-57.xml",
        "certs/00-90-33-3e-0c-57-signedrequest.cer",
    ] {
        let answer = admin.post(&format!("mode=ui&cmd=delfile&sn=00-90-33-3e-0c-57&file={}", file.replace('/', "%2F")), &extra, "");
        assert_eq!((answer.status, answer.body.trim()), (404, "false"), "{file}");
    }
    assert!(admin.path("certs/00-90-33-11-22-33-request.p10.pem").is_file());
    assert!(admin.path("config/user-config.xml").is_file());
    assert!(admin.path("status/00-90-33-3e-0c-57.xml").is_file());
    let answer = admin.post("mode=ui&cmd=delfile&sn=00-90-33-3e-0c-57&file=certs%2F00-90-33-3e-0c-57-request.p10.pem", &extra, "");
    assert_eq!(answer.body.trim(), "true");
    assert!(!admin.path("certs/00-90-33-3e-0c-57-request.p10.pem").exists());
    assert!(admin.path("certs/00-90-33-3e-0c-57-request.p10.der").exists());
}

#[test]
fn deliverfile_serves_only_data_folders() {
    let admin = Admin::new();
    let (cookie, _) = admin.login();
    let get = |file: &str| admin.get(&format!("mode=ui&cmd=deliverfile&fn={}", file.replace('/', "%2F")), &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    let backup = get("backup/IP232-3e-0c-57/IP232-3e-0c-57.1.txt");
    assert_eq!(backup.status, 200);
    assert_eq!(backup.body, "config change CMD0 /name new\r\n");
    assert_eq!(backup.header("content-type"), Some("application/octet-stream"));
    assert!(backup.header("content-disposition").unwrap().contains("attachment; filename=\"IP232-3e-0c-57.1.txt\""));
    assert_secure_headers(&backup);
    assert_eq!(get("status/00-90-33-3e-0c-57.xml").status, 200);
    assert_eq!(get("certs/00-90-33-3e-0c-57-request.p10.pem").status, 200);
    assert_eq!(get("scripts/update-all-default.txt").status, 200);
    let (cookie_file, _) = fs::read_dir(admin.path("cache/sessions")).unwrap().flatten().map(|e| (e.file_name().into_string().unwrap(), ())).next().unwrap();
    fs::create_dir_all(admin.path("status")).unwrap();
    std::os::unix::fs::symlink(admin.path("config/user-config.xml"), admin.path("status/link.xml")).unwrap();
    std::os::unix::fs::symlink(admin.path("config.xml"), admin.path("backup/config.xml")).unwrap();
    let refused = [
        "config/user-config.xml".to_string(),
        "config.xml".into(),
        "user-config.xml".into(),
        "../config.xml".into(),
        "status/../config/user-config.xml".into(),
        "/etc/passwd".into(),
        "status/link.xml".into(),
        "backup/config.xml".into(),
        format!("cache/sessions/{cookie_file}"),
        "cache/admin-login-failures".into(),
        "status/00-90-33-99-99-99.xml".into(),
        "src/main.rs".into(),
        "status".into(),
        String::new(),
    ];
    let answers: Vec<(u16, String)> = refused.iter().map(|f| {
        let a = get(f);
        (a.status, a.body)
    }).collect();
    for (file, answer) in refused.iter().zip(&answers) {
        assert_eq!(answer.0, 404, "{file}");
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "existing and missing files look the same");
}

// --- pages ---------------------------------------------------------------------------------

#[test]
fn status_page_lists_every_device_escaped() {
    let admin = Admin::new();
    let (cookie, _) = admin.login();
    let page = admin.get("mode=status", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert_eq!(page.status, 200);
    assert_secure_headers(&page);
    let positions: Vec<usize> = FIXTURE_SERIALS.iter().map(|sn| page.body.find(&format!("id=\"device-{sn}\"")).unwrap_or_else(|| panic!("{sn}"))).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "sorted by serial");
    assert!(!page.body.contains("<script>alert"), "device text is escaped");
    assert!(page.body.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
    assert!(!page.body.contains("<script>") && page.body.matches("<script").count() == 1, "one script element, the external file");
    assert!(page.body.contains("<script src=\"../www/admin.js\" defer></script>"));
    assert!(page.body.contains("4 of 4 devices"));
    assert!(page.body.contains("class=\"device missing\" data-sn=\"00-90-33-11-22-33\""), "the device not seen for 2 days is missing");
    assert!(page.body.contains("up: alice/101"), "XPath concat() with predicates");
    assert!(page.body.contains("class=\"error\">invalid XPath expression"), "a broken expression shows a short error");
    assert!(page.body.contains("CSR waiting for signature") && page.body.contains("name=\"cert-00-90-33-3e-0c-57\""));
    assert!(page.body.contains("href=\"https://172.16.4.57/\""));
    assert!(page.body.contains("scripts/update-all-default.txt"));
    assert!(page.body.contains("13r3"));
}

#[test]
fn status_page_filters_on_the_server_too() {
    let admin = Admin::new();
    let (cookie, _) = admin.login();
    let shown = |filter: &str| -> Vec<&'static str> {
        let page = admin.get(&format!("mode=status&filter={filter}"), &[HTTPS, ("HTTP_COOKIE", &cookie)]);
        FIXTURE_SERIALS.iter().copied().filter(|sn| page.body.contains(&format!("id=\"device-{sn}\""))).collect()
    };
    assert_eq!(shown("172.16."), ["00-90-33-00-00-01", "00-90-33-11-22-33", "00-90-33-3e-0c-57"]);
    assert_eq!(shown("172.16.+ip222"), ["00-90-33-11-22-33"]);
    assert_eq!(shown("missing"), ["00-90-33-11-22-33"]);
    assert_eq!(shown("present+phone"), ["00-90-33-00-00-01", "00-90-33-3e-0c-57"]);
    assert_eq!(shown("0090333E0C57"), ["00-90-33-3e-0c-57"]);
    assert_eq!(shown("gate*"), ["00-90-33-aa-bb-cc"]);
    assert_eq!(shown("ip1?0?"), ["00-90-33-aa-bb-cc"]);
    assert_eq!(shown("16"), ["00-90-33-00-00-01", "00-90-33-11-22-33", "00-90-33-3e-0c-57"]);
    assert!(shown("6").is_empty(), "whole words only");
}

#[test]
fn show_page_hides_the_password_and_escapes_files() {
    let admin = Admin::new();
    write_old_file(&admin.root, "scripts/update-phone-default.txt", "config change CMD0 /name <b>x</b>\n");
    let (cookie, _) = admin.login();
    let page = admin.get("mode=show", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(ADMIN_PASSWORD));
    assert!(page.body.contains("password=&#34;********&#34;"), "{}", page.body);
    assert!(page.body.contains("scripts/update-phone-default.txt") && page.body.contains("/name &#60;b&#62;x&#60;/b&#62;"));
    assert!(page.body.contains("No master device is configured"));
    // the legacy ?show parameter
    assert!(admin.get("show", &[HTTPS, ("HTTP_COOKIE", &cookie)]).body.contains("Configuration"));
}

#[test]
fn show_page_lists_what_check_finds() {
    let admin = Admin::new();
    let (cookie, _) = admin.login();
    let page = admin.get("mode=show", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert!(page.body.contains("update-server check finds nothing to report."), "{}", page.body);
    let user = admin_user_config("admin", ADMIN_PASSWORD).replace("<backup dir=\"backup\"/>", "<backup dir=\"backup\" nbackups=\"ten\"/>\n  <statuss/>");
    write_old_file(&admin.root, "config/user-config.xml", &user);
    write_old_file(&admin.root, "scripts/update-phnoe-default.txt", "# a typo in the class\n");
    let page = admin.get("mode=show", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert_eq!(page.status, 200);
    for line in [
        "<li class=\"error\">config/user-config.xml:5:34: error: backup/@nbackups: &#39;ten&#39; is not a number (the server reads 0)</li>",
        "<li class=\"error\">config/user-config.xml:6:3: error: unknown element &#60;statuss&#62; (did you mean &#60;status&#62;?): the server ignores it</li>",
        "<li class=\"warning\">scripts/update-phnoe-default.txt:1:1: warning: &#39;phnoe&#39; is no class and no model of the configuration: no device is given this file</li>",
    ] {
        assert!(page.body.contains(line), "{line} missing in {}", page.body);
    }
}

#[test]
fn info_page_builds_the_setup_links() {
    let admin = Admin::new();
    let (cookie, _) = admin.login();
    let page = admin.get("mode=info&env=default&devname=Nico+Mobile", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert!(page.body.contains("https://update.example.com/mtls/update/update.php?env=default"), "{}", page.body);
    assert!(page.body.contains("href=\"com.innovaphone.commands://config+add+UP1+%2Furl+https%3A%2F%2Fupdate.example.com%2Fmtls%2Fupdate%2Fupdate.php%3Fenv%3Ddefault+%2Fpoll+1%0D%0Aconfig+add+CMD0+%2Fname+Nico%2BMobile%0D%0Aconfig+write%0D%0Aconfig+activate%0D%0A\""));
    assert!(page.body.contains("href=\"https://com.innovaphone.commands/config+add+UP1"));
    assert!(page.body.contains("config add CMD0 /name Nico+Mobile"));
    let hostile = admin.get("mode=info&env=default&devname=%3Cscript%3Ex%3C%2Fscript%3E", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert!(!hostile.body.contains("<script>x"));
    let unknown = admin.get("mode=info&env=nosuch&devname=x", &[HTTPS, ("HTTP_COOKIE", &cookie)]).body;
    assert!(unknown.contains("There is no environment") && !unknown.contains("id=\"command-url\""), "{unknown}");
    // the first visit, before the form was sent: the Command File URL is there already, the
    // myPBX links wait for a device name
    let first = admin.get("mode=info", &[HTTPS, ("HTTP_COOKIE", &cookie)]).body;
    assert!(first.contains("<pre id=\"command-url\">https://update.example.com/mtls/update/update.php?env=default</pre>"), "{first}");
    assert!(!first.contains("id=\"ios-link\"") && first.contains("Enter a device name"), "{first}");
}

// --- upload -------------------------------------------------------------------------------

fn certificate(dir: &Path) -> Vec<u8> {
    let key = dir.join("k.pem");
    let cert = dir.join("c.pem");
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=IP232-3e-0c-57"])
        .arg("-keyout").arg(&key).arg("-out").arg(&cert)
        .stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed (tools/test installs it)");
    assert!(status.success());
    fs::read(cert).unwrap()
}

fn multipart(fields: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----updateserverTestBoundary7";
    let mut body = Vec::new();
    for (name, data) in fields {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if name.starts_with("cert-") {
            body.extend_from_slice(b"; filename=\"signed.pem\"\r\nContent-Type: application/octet-stream");
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn upload(admin: &Admin, query: &str, extra: &[(&str, &str)], content_type: &str, body: Vec<u8>) -> update_server::http::Response {
    let mut request = update_server::http::Request::default();
    for (k, v) in [
        ("REQUEST_METHOD", "POST"),
        ("SCRIPT_NAME", "/mtls/update/update.php"),
        ("HTTP_HOST", "update.example.com"),
        ("REMOTE_ADDR", "172.16.4.57"),
        ("QUERY_STRING", query),
        ("CONTENT_TYPE", content_type),
    ] {
        request.vars.insert(k.into(), v.into());
    }
    for (k, v) in extra {
        request.vars.insert(k.to_string(), v.to_string());
    }
    request.body = body;
    // through the application's routing, as update.php?mode=upload reaches it
    use update_server::http::Handler;
    update_server::app::App::new(Some(admin.root.clone())).handle(request)
}

#[test]
fn upload_stores_only_the_signed_certificate_of_a_valid_serial() {
    let admin = Admin::new();
    let (cookie, csrf) = admin.login();
    let cert = certificate(admin._dir.path());
    let session = ("HTTP_COOKIE", cookie.as_str());
    let target = admin.path("certs/00-90-33-3e-0c-57-signedrequest.cer");
    let (ct, body) = multipart(&[("csrf", csrf.as_bytes()), ("cert-00-90-33-3e-0c-57", &cert)]);
    // no session, no token, GET
    assert_eq!(upload(&admin, "mode=upload&sn=00-90-33-3e-0c-57", &[HTTPS], &ct, body.clone()).status, 401);
    let (ct2, no_token) = multipart(&[("cert-00-90-33-3e-0c-57", &cert)]);
    assert_eq!(upload(&admin, "mode=upload&sn=00-90-33-3e-0c-57", &[HTTPS, session], &ct2, no_token).status, 403);
    assert!(!target.exists());
    // not a certificate, a bad serial, a serial trying to leave the folder
    let (ct3, junk) = multipart(&[("csrf", csrf.as_bytes()), ("cert-00-90-33-3e-0c-57", b"<?php system($_GET[x]); ?>")]);
    assert_eq!(upload(&admin, "mode=upload&sn=00-90-33-3e-0c-57", &[HTTPS, session], &ct3, junk).status, 400);
    let (ct4, evil) = multipart(&[("csrf", csrf.as_bytes()), ("cert-../../config/user-config.xml", &cert)]);
    assert_eq!(upload(&admin, "mode=upload&sn=../../config/user-config.xml", &[HTTPS, session], &ct4, evil).status, 400);
    assert!(!target.exists());
    // the real thing; `proceed` may only lead back to the admin page
    let ok = upload(&admin, "mode=upload&sn=00-90-33-3e-0c-57&proceed=https://evil.example/", &[HTTPS, session], &ct, body.clone());
    assert_eq!(ok.status, 303);
    assert_eq!(ok.header("Location"), Some("/mtls/update/admin/admin.php?mode=status&sn=00-90-33-3e-0c-57"));
    assert_eq!(fs::read(&target).unwrap(), cert);
    let ok = upload(&admin, "mode=upload&sn=00-90-33-3e-0c-57&proceed=admin/admin.php?mode=status", &[HTTPS, session], &ct, body);
    assert_eq!(ok.header("Location"), Some("/mtls/update/admin/admin.php?mode=status"));
    let names: Vec<String> = fs::read_dir(admin.path("certs")).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).filter(|n| n != ".keep").collect();
    assert_eq!(names.len(), 3, "nothing else written: {names:?}");
    // the status page now says the certificate waits for the device
    let page = admin.get("mode=status", &[HTTPS, session]);
    assert!(page.body.contains("signed CSR waiting for device upload"));
}

#[test]
fn upload_through_update_php_is_not_open_to_devices() {
    let admin = Admin::new();
    let answer = admin.request("POST", "update.php", "mode=upload&sn=00-90-33-3e-0c-57", &[("CONTENT_TYPE", "multipart/form-data; boundary=x")], b"--x--\r\n");
    assert_ne!(answer.status, 200);
    assert_ne!(answer.status, 303);
    assert!(!admin.path("certs/00-90-33-3e-0c-57-signedrequest.cer").exists());
}

#[test]
fn long_lists_come_in_pages() {
    let admin = Admin::new();
    let (cookie, _) = admin.login();
    for i in 0..1100u32 {
        let sn = format!("00-90-33-60-{:02x}-{:02x}", i / 256, i % 256);
        let device_type = if i % 50 == 0 { "IP811" } else { "IP111" };
        write_state(&admin.root, &sn, &format!(r#"<state seen="1"><device sn="{sn}" type="{device_type}"/></state>"#));
    }
    let rows = |answer: &Answer| answer.body.matches("<tr id=\"device-").count();
    let first = admin.get("mode=status", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert_eq!(rows(&first), 500);
    assert!(first.body.contains("1104 of 1104 devices") && first.body.contains("devices 1–500 of 1104, page 1 of 3"), "{}", &first.body[..3000]);
    assert!(first.body.contains("id=\"device-00-90-33-00-00-01\""), "serial order: the fixture comes first");
    let last = admin.get("mode=status&page=3", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert_eq!(rows(&last), 104);
    assert!(last.body.contains("rel=\"prev\"") && !last.body.contains("rel=\"next\""));
    assert_eq!(rows(&admin.get("mode=status&page=all", &[HTTPS, ("HTTP_COOKIE", &cookie)])), 1104);
    assert_eq!(rows(&admin.get("mode=status&page=99", &[HTTPS, ("HTTP_COOKIE", &cookie)])), 104, "past the end: the last page");
    // the server filters all devices, not just a page of them
    let filtered = admin.get("mode=status&filter=ip811", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert_eq!(rows(&filtered), 22);
    assert!(filtered.body.contains("22 of 1104 devices") && !filtered.body.contains("id=\"pager\""));
}

/// A state file 100,000 levels deep (700 KB) under the `registration` answer the `show`
/// columns read, and one of 2.6 MB: written by anything but this server (an older version
/// stored such answers). The old code recursed over them and overflowed the stack.
fn poisoned_states(admin: &Admin) -> (PathBuf, PathBuf) {
    let deep = format!(
        "<state seen=\"1\"><device sn=\"00-90-33-3e-0c-57\"/><queries><registration seen=\"1\"><info>{}{}</info></registration></queries></state>",
        "<a>".repeat(100_000),
        "</a>".repeat(100_000)
    );
    let large = format!("<state seen=\"1\"><queries><admin seen=\"1\"><info>{}</info></admin></queries></state>", "<x/>".repeat(650_000));
    write_state(&admin.root, "00-90-33-3e-0c-57", &deep);
    write_state(&admin.root, "00-90-33-aa-bb-cc", &large);
    (admin.path("status/00-90-33-3e-0c-57.xml"), admin.path("status/00-90-33-aa-bb-cc.xml"))
}

#[test]
fn poisoned_state_files_are_shown_touched_and_deleted_without_a_crash() {
    let admin = Admin::new();
    let (deep, large) = poisoned_states(&admin);
    let (deep_bytes, large_bytes) = (fs::read(&deep).unwrap(), fs::read(&large).unwrap());
    let (cookie, csrf) = admin.login();
    let page = admin.get("mode=status", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("levels deep"), "the deep file's row says why it is not shown");
    assert!(page.body.contains(&format!("is {} bytes, more than the", large_bytes.len())), "the large file's row says why");
    assert!(page.body.contains("Alice phone"), "the other devices are listed as before");
    for sn in ["00-90-33-3e-0c-57", "00-90-33-aa-bb-cc"] {
        let row = admin.get(&format!("mode=ui&cmd=updatestatus&sn={sn}&detail=1"), &[HTTPS, ("HTTP_COOKIE", &cookie)]);
        assert_eq!(row.status, 200, "{sn}: {}", row.body);
        assert!(row.body.contains("broken"), "{sn}: {}", row.body);
    }
    let extra = [HTTPS, ("HTTP_COOKIE", cookie.as_str()), ("HTTP_X_CSRF_TOKEN", csrf.as_str())];
    for (sn, path, bytes) in [("00-90-33-3e-0c-57", &deep, &deep_bytes), ("00-90-33-aa-bb-cc", &large, &large_bytes)] {
        let touched = admin.post(&format!("mode=ui&cmd=touchstatus&sn={sn}"), &extra, "");
        assert_eq!((touched.status, touched.body.trim()), (200, "false"), "touch does not replace a damaged state");
        assert_eq!(&fs::read(path).unwrap(), bytes, "{sn}: unchanged by touch");
    }
    for sn in ["00-90-33-3e-0c-57", "00-90-33-aa-bb-cc"] {
        let deleted = admin.post(&format!("mode=ui&cmd=delstatus&sn={sn}"), &extra, "");
        assert_eq!((deleted.status, deleted.body.trim()), (200, "true"), "{sn}");
        assert!(!admin.path(&format!("status/{sn}.xml")).exists());
    }
    assert!(fs::read_dir(admin.path("status")).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().contains("3e-0c-57")));
}

#[test]
fn a_poll_replaces_a_poisoned_state_by_a_fresh_one_and_says_so() {
    let admin = Admin::new();
    let (deep, large) = poisoned_states(&admin);
    let deep_bytes = fs::read(&deep).unwrap();
    let poll = cgi_get(&admin.root, &CgiContext::default(), "update.php", DEVICE_QUERY);
    assert_eq!(poll.status, 200);
    assert!(poll.body.contains("levels deep; a fresh state replaces it"), "{}", poll.body);
    assert!(poll.body.contains("iresetn"), "the script is complete: {}", poll.body);
    let fresh = fs::read_to_string(&deep).unwrap();
    assert!(fresh.len() < 10_000 && fresh.contains("type=\"IP232\"") && fresh.contains("levels deep"), "a fresh state with the note in its log: {fresh}");
    assert_eq!(fs::read(admin.path("status/00-90-33-3e-0c-57.xml.broken")).unwrap(), deep_bytes, "the damaged file is kept aside");
    let again = cgi_get(&admin.root, &CgiContext::default(), "update.php", DEVICE_QUERY);
    assert!(!again.body.contains("fresh state"), "the next poll uses the fresh state: {}", again.body);

    // the oversized one: replaced, not kept (it is not even read)
    let query = DEVICE_QUERY.replace("00-90-33-3e-0c-57", "00-90-33-aa-bb-cc").replace("IP232-3e-0c-57", "IP232-aa-bb-cc");
    let poll = cgi_get(&admin.root, &CgiContext::default(), "update.php", &query);
    assert!(poll.body.contains("bytes, more than the 2097152 a state file may have; a fresh state replaces it"), "{}", poll.body);
    assert!(fs::metadata(&large).unwrap().len() < 10_000);
    assert!(!admin.path("status/00-90-33-aa-bb-cc.xml.broken").exists());
}
