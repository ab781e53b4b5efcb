//! The admin page, `admin/admin.php` (SPEC §9), and the certificate upload of the status page,
//! `update.php?mode=upload` (SPEC §5): login and sessions, the device status page, the
//! configuration and "add new device" pages, and the `mode=ui` commands the page's script uses.
//!
//! Nothing here is served without a session (see [`access`]); every changing request also needs
//! the session's CSRF token; every page is built from templates that escape all values.

pub mod auth;
pub mod diff;
pub mod files;
pub mod filter;
pub mod fleet;
pub mod hops;
pub mod pages;
pub mod preview;
pub mod session;
pub mod status;
pub mod templates;
pub mod tree;
pub mod ui;
pub mod upload;
pub mod xpath;

use compact_str::CompactString;
use crate::config::{Config, ConfigError};
use crate::http::{Request, Response};
use askama::Template;
use session::Session;
use std::path::Path;
use std::sync::Arc;
use templates::Page;

/// Largest form body the admin page reads (its forms carry a few fields; the front doors
/// refuse a longer body before reading it).
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// The policy every admin answer carries: only our own files, no framing, no sniffing, no
/// caching.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The facts of a request the admin page decides on.
#[derive(Debug, Clone)]
pub struct Site {
    pub https: bool,
    /// `update-server serve` on a loopback address: the quick start, where credentials may
    /// travel without TLS because they never leave the machine.
    pub quick_start: bool,
    /// URL path of the install directory, without the trailing slash (`/mtls/update`, or empty).
    pub install_path: String,
    /// `Host` as the browser sent it (checked), for URLs we hand out.
    pub host: String,
    pub remote_addr: String,
    pub method: String,
    /// Query arguments, then (for a form POST) the body's arguments.
    pub args: Vec<(CompactString, CompactString)>,
    pub form: Vec<(CompactString, CompactString)>,
    /// A user the web server authenticated (`REMOTE_USER`, e.g. lighttpd's mod_auth).
    pub remote_user: Option<String>,
}

impl Site {
    pub fn of(request: &Request, depth: usize) -> Site {
        let var = |name: &str| request.var(name).unwrap_or("");
        let https = request.var("HTTPS").is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("off"));
        let remote_addr = var("REMOTE_ADDR").trim().to_string();
        let loopback = remote_addr.parse::<std::net::IpAddr>().is_ok_and(|a| crate::net::normalize(a).is_loopback());
        let quick_start = loopback && var("SERVER_SOFTWARE").starts_with("update-server/");
        let mut install_path = var("SCRIPT_NAME").to_string();
        for _ in 0..=depth {
            install_path = install_path.rsplit_once('/').map_or(String::new(), |(dir, _)| dir.to_string());
        }
        let host = Some(var("HTTP_HOST")).filter(|h| is_host(h)).unwrap_or_else(|| var("SERVER_NAME")).to_string();
        let form_post = var("REQUEST_METHOD") == "POST"
            && var("CONTENT_TYPE").to_ascii_lowercase().starts_with("application/x-www-form-urlencoded");
        let form = if form_post && request.body.len() <= MAX_FORM_BYTES {
            crate::urlenc::parse_query(&String::from_utf8_lossy(&request.body))
        } else {
            Vec::new()
        };
        Site {
            https,
            quick_start,
            install_path: if is_path(&install_path) { install_path } else { String::new() },
            host: if is_host(&host) { host } else { "localhost".into() },
            remote_addr,
            method: var("REQUEST_METHOD").to_string(),
            args: crate::urlenc::parse_query(var("QUERY_STRING")),
            form,
            remote_user: request.var("REMOTE_USER").filter(|u| !u.trim().is_empty()).map(String::from),
        }
    }

    /// The argument `name`, from the query or the form.
    pub fn arg(&self, name: &str) -> Option<&str> {
        self.args.iter().chain(&self.form).find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Whether credentials and session cookies may travel on this connection.
    pub fn channel_ok(&self) -> bool {
        self.https || self.quick_start
    }

    /// The host the browser named, without a port (`[v6]` kept in brackets).
    pub fn host_name(&self) -> String {
        match self.host.strip_prefix('[') {
            Some(rest) => format!("[{}]", rest.split(']').next().unwrap_or("")),
            None => self.host.split(':').next().unwrap_or("").to_string(),
        }
    }

    pub fn admin_path(&self) -> String {
        format!("{}/admin/admin.php", self.install_path)
    }

    /// `http[s]://host/install/path`.
    pub fn base_url(&self) -> String {
        format!("{}://{}{}", if self.https { "https" } else { "http" }, self.host, self.install_path)
    }

    /// The cookie's path: the install directory, so that the upload (`update.php?mode=upload`)
    /// gets the session too.
    pub fn cookie_path(&self) -> String {
        format!("{}/", self.install_path)
    }
}

/// A Host header fit for URLs: a name or address with an optional port.
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'))
}

/// A URL path we are willing to repeat in a header (`Location`, cookie `Path`).
fn is_path(path: &str) -> bool {
    path.len() <= 1024 && path.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_' | b'~' | b'%'))
}

/// Adds the headers every admin answer carries.
pub fn secure(mut response: Response) -> Response {
    for (name, value) in [
        ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "same-origin"),
        ("Cache-Control", "no-store"),
    ] {
        response.headers.push((name.into(), value.into()));
    }
    response
}

pub fn html(status: u16, body: String) -> Response {
    secure(Response { status, headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())], body: body.into_bytes() })
}

pub fn json(status: u16, body: String) -> Response {
    secure(Response { status, headers: vec![("Content-Type".into(), "application/json".into())], body: body.into_bytes() })
}

pub fn redirect(location: &str) -> Response {
    let mut response = html(303, String::new());
    response.headers.push(("Location".into(), location.to_string()));
    response
}

/// A JSON string literal; `<`, `>` and `&` escaped too, so the text is harmless wherever it
/// ends up.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Renders a template, or a plain error page if that fails (it cannot with our templates).
fn render(status: u16, template: &impl Template) -> Response {
    match template.render() {
        Ok(body) => html(status, body),
        Err(error) => html(500, format!("<!DOCTYPE html><title>error</title><p>cannot render the page: {}</p>", askama_escape(&error.to_string()))),
    }
}

fn askama_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// The page frame for a session (or for nobody).
fn page(title: &str, config: Option<&Config>, session: Option<&Session>) -> Page {
    Page {
        title: title.into(),
        csrf: session.map(|s| s.csrf.clone()).unwrap_or_default(),
        logged_in: session.is_some(),
        no_login: config.is_some_and(|c| auth::policy(&c.master.user, &c.master.password) == auth::Policy::NoLogin),
        user: session.map(|s| s.user.clone()).unwrap_or_default(),
        refresh: config.and_then(|c| c.status.as_ref()).map_or(0, |s| s.refresh.max(0)),
        user_file: config.map(|c| c.user_file.clone()).unwrap_or_default(),
    }
}

/// Who is asking: a live session, possibly new (login switched off), with the cookie to set.
pub struct Access {
    pub session: Session,
    pub set_cookie: Option<String>,
}

/// The session of this request, if any. With login switched off (both credentials empty, the
/// old default for "no login"), a session is opened without a password only when somebody
/// vouches for the user: the web server authenticated them (`REMOTE_USER`), or this is the quick
/// start on the loopback interface. Otherwise an empty password would open the fleet's
/// backups and certificates to anybody who can reach the page.
pub fn access(site: &Site, request: &Request, root: &Path, config: &Config, now: i64) -> Option<Access> {
    if !site.channel_ok() && site.remote_user.is_none() {
        return None;
    }
    if let Some(found) = live_session(request, root, config, now) {
        return Some(Access { session: found, set_cookie: None });
    }
    if vouched_without_login(site, config) {
        let credentials = auth::fingerprint(&config.master.user, &config.master.password);
        let user = site.remote_user.clone().unwrap_or_default();
        let created = session::create(root, &user, &credentials, now).ok()?;
        let cookie = session::set_cookie(Some(&created.id), &site.cookie_path(), site.https);
        return Some(Access { session: created, set_cookie: Some(cookie) });
    }
    None
}

/// The session the request's cookie names, if it is alive and was opened with the present
/// credentials (one of older credentials is ended).
fn live_session(request: &Request, root: &Path, config: &Config, now: i64) -> Option<Session> {
    let cookie = request.var("HTTP_COOKIE").and_then(|c| session::cookie_value(c, session::COOKIE))?;
    let found = session::load(root, cookie, now)?;
    if found.credentials == auth::fingerprint(&config.master.user, &config.master.password) {
        return Some(found);
    }
    session::destroy(root, &found.id);
    None
}

/// Login is switched off and somebody vouches for the user (see [`access`]).
fn vouched_without_login(site: &Site, config: &Config) -> bool {
    let vouched = site.remote_user.is_some() || site.quick_start;
    vouched && auth::policy(&config.master.user, &config.master.password) == auth::Policy::NoLogin
}

/// Whether a request may read what an admin session may read, without opening a session:
/// for a client that polls (the metrics scraper), which would otherwise leave a session file
/// behind at every request where login is switched off.
pub fn admin_allowed(site: &Site, request: &Request, root: &Path, config: &Config, now: i64) -> bool {
    (site.channel_ok() || site.remote_user.is_some())
        && (live_session(request, root, config, now).is_some() || vouched_without_login(site, config))
}

/// Whether a changing request presents the session's CSRF token (header `X-CSRF-Token` or
/// argument `csrf`) and does not come from another site.
pub fn csrf_ok(site: &Site, request: &Request, session: &Session, form_token: Option<&str>) -> bool {
    if !same_origin(site, request) {
        return false;
    }
    let token = request.var("HTTP_X_CSRF_TOKEN").or(form_token).or_else(|| site.arg("csrf")).unwrap_or("");
    session::constant_time_eq(token.as_bytes(), session.csrf.as_bytes())
}

/// A browser says where a request comes from (`Origin`, `Sec-Fetch-Site`); a foreign one is
/// refused whatever else it carries.
pub fn same_origin(site: &Site, request: &Request) -> bool {
    if request.var("HTTP_SEC_FETCH_SITE").is_some_and(|s| s == "cross-site" || s == "same-site") {
        return false;
    }
    match request.var("HTTP_ORIGIN") {
        None => true,
        Some(origin) => origin.split_once("://").is_some_and(|(_, host)| host == site.host),
    }
}

fn with_cookie(mut response: Response, cookie: Option<String>) -> Response {
    if let Some(cookie) = cookie {
        response.headers.push(("Set-Cookie".into(), cookie));
    }
    response
}

/// What `update.php` would answer a device's request on a root, and what it would change,
/// with nothing written (the application's `preview`, which the admin page cannot reach itself).
pub type Previewer<'a> = &'a dyn Fn(&Request, &Path) -> (Response, Vec<String>);

/// Answers `admin/admin.php`.
pub fn handle(
    request: &Request,
    root: &Path,
    config: Result<Arc<Config>, ConfigError>,
    counters: &crate::metrics::Counters,
    previewer: Previewer,
) -> Response {
    let site = Site::of(request, 1);
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            eprintln!("update-server: admin page: {error}");
            let page = page("Configuration error", None, None);
            return render(
                500,
                &templates::MessagePage { page: &page, heading: "The configuration cannot be used".into(), text: error.to_string() },
            );
        }
    };
    let now = crate::clock::now();
    let mode = if site.arg("show").is_some() { "show" } else { site.arg("mode").unwrap_or("status") };
    if mode == "logout" {
        return logout(&site, request, root, &config, now);
    }
    if mode == "metrics" {
        // for a scraper with the bearer token as well as for a session
        return fleet::metrics(&site, request, root, &config, counters, now);
    }
    if site.method == "POST" && mode != "ui" && site.form.iter().any(|(k, _)| k == "user" || k == "pw") {
        return login(&site, request, root, &config, now);
    }
    let Some(access) = access(&site, request, root, &config, now) else {
        return match mode {
            "ui" => json(401, json_string("login required")),
            _ => {
                // the form says at once when this address is locked out, before another try
                login_page(&site, &config, 200, Vec::new(), auth::lockout_of(root, &login_client(&site, request, &config), now))
            }
        };
    };
    let session = &access.session;
    let response = match mode {
        "ui" => ui::command(&site, request, root, &config, session, now),
        "status" => status_page(&site, root, &config, session, now),
        "export" => fleet::export(root, &config, site.arg("format"), now),
        "show" => render(200, &pages::show(root, &config, &page("Configuration", Some(&config), Some(session)), now)),
        "info" => render(200, &pages::info(&site, &config, &page("Add new device", Some(&config), Some(session)))),
        "preview" => preview_page(&site, root, &config, session, previewer),
        "backupdiff" => backup_diff_page(&site, root, &config, session),
        _ => {
            let page = page("Unknown page", Some(&config), Some(session));
            render(404, &templates::MessagePage { page: &page, heading: "Unknown page".into(), text: "This page does not exist; use the links above.".into() })
        }
    };
    with_cookie(response, access.set_cookie)
}

fn status_page(site: &Site, root: &Path, config: &Config, session: &Session, now: i64) -> Response {
    let page = page("Status", Some(config), Some(session));
    let cols = status::columns(config);
    let single = site.arg("sn").filter(|sn| crate::device::is_serial(sn));
    let filter_text = site.arg("filter").unwrap_or("").chars().take(200).collect::<String>();
    let notice = if config.status.is_none() {
        Some(format!(
            "Device state tracking is off: add <status dir=\"status\"/> to {} to see the devices here.",
            config.user_file
        ))
    } else {
        None
    };
    let render_row = |row: &status::Row| -> String {
        (templates::RowFragment { page: &page, cols: &cols, row }).render().unwrap_or_else(|e| {
            format!("<tr><td class=\"error\">cannot render {}: {}</td></tr>", askama_escape(&row.sn), askama_escape(&e.to_string()))
        })
    };
    let mut pager = templates::Pager::default();
    let (total, shown, rows) = match single {
        Some(sn) => match status::single_row(root, config, sn, now, true) {
            Some(row) => (1, 1, render_row(&row)),
            None => (0, 0, String::new()),
        },
        None => {
            let listing = status::matching(root, config, &filter::Filter::new(&filter_text), now);
            let pages = listing.matched.len().div_ceil(status::PAGE_SIZE).max(1);
            let all = site.arg("page") == Some("all");
            let number = site.arg("page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(1).clamp(1, pages);
            let slice = if all || pages == 1 {
                &listing.matched[..]
            } else {
                let start = (number - 1) * status::PAGE_SIZE;
                &listing.matched[start..(start + status::PAGE_SIZE).min(listing.matched.len())]
            };
            if pages > 1 {
                let link = |page: &str| format!("admin.php?mode=status&filter={}&page={page}", crate::urlenc::rawurlencode(&filter_text));
                pager = templates::Pager {
                    text: if all {
                        format!("all {} devices on one page", listing.matched.len())
                    } else {
                        let first = (number - 1) * status::PAGE_SIZE + 1;
                        format!("devices {first}–{} of {}, page {number} of {pages}", first + slice.len() - 1, listing.matched.len())
                    },
                    previous: (!all && number > 1).then(|| link(&(number - 1).to_string())),
                    next: (!all && number < pages).then(|| link(&(number + 1).to_string())),
                    all: (!all).then(|| link("all")),
                };
            }
            (listing.total, listing.matched.len(), status::rendered_rows(root, config, slice, now, &render_row))
        }
    };
    render(200, &templates::StatusPage { page: &page, cols: &cols, rows: &rows, shown, total, filter: filter_text, notice, pager })
}

/// A device's Preview: GET only, it changes nothing (the state is read, never locked).
fn preview_page(site: &Site, root: &Path, config: &Config, session: &Session, previewer: Previewer) -> Response {
    if site.method != "GET" && site.method != "HEAD" {
        return html(405, "<!DOCTYPE html><title>405</title><p>A preview is a GET: use the Preview link of the status page.</p>".into());
    }
    let page = page("Preview", Some(config), Some(session));
    let sn = site.arg("sn").filter(|sn| crate::device::is_serial(sn)).map(crate::device::canonical_serial);
    let mut template = templates::PreviewPage {
        page: &page,
        sn: sn.clone().unwrap_or_default(),
        error: None,
        values: Vec::new(),
        notes: Vec::new(),
        next_phase: None,
        command: String::new(),
        transcript: String::new(),
    };
    let poll = match (&sn, &config.status) {
        (None, _) => Err("No device: the preview needs the serial number of a device (sn=).".to_string()),
        (Some(_), None) => Err(format!("Device state tracking is off: add <status dir=\"status\"/> to {}.", config.user_file)),
        (Some(sn), Some(status)) => {
            let mut buffer = Vec::new();
            match status::read_state(&crate::state::device_file(root, &status.dir, sn), &mut buffer) {
                Ok(doc) => {
                    let host_name = site.host_name();
                    preview::device_poll(tree::Node::of(doc.root_element()), sn, site.arg("phase"), config, &host_name, &site.install_path)
                }
                Err(error) => Err(format!("Cannot read the state of this device: {error}")),
            }
        }
    };
    let status = match poll.and_then(|poll| poll.args.request().map(|request| (poll, request))) {
        Ok((poll, request)) => {
            let (response, changes) = previewer(&request, root);
            template.transcript = crate::preview::transcript(&response.body, response.status, &changes);
            template.command = poll.args.command_line(root);
            template.values = poll.values;
            template.notes = poll.notes;
            template.next_phase = poll.next_phase;
            200
        }
        Err(error) => {
            template.error = Some(error);
            404
        }
    };
    render(status, &template)
}

/// The diff of a device's backup to the one before it.
fn backup_diff_page(site: &Site, root: &Path, config: &Config, session: &Session) -> Response {
    let page = page("Backup diff", Some(config), Some(session));
    let hwid = site.arg("hwid").filter(|h| crate::device::is_plain_token(h)).unwrap_or("");
    let index = site.arg("n").and_then(|n| n.parse::<u64>().ok());
    let mut template = templates::BackupDiffPage {
        page: &page,
        hwid: hwid.to_string(),
        sn: site.arg("sn").filter(|sn| crate::device::is_serial(sn)).map(crate::device::canonical_serial).unwrap_or_default(),
        index,
        previous: None,
        error: None,
        hunks: Vec::new(),
        added: 0,
        removed: 0,
        left_out: 0,
        max_lines: diff::MAX_SHOWN_LINES,
    };
    let compared = match (&config.backup, hwid, index) {
        (None, _, _) => Err(format!("Backups are off: add <backup dir=\"backup\"/> to {}.", config.user_file)),
        (_, "", _) | (_, _, None) => Err("Which backup? The page needs a device's hwid and a backup number (hwid=, n=).".to_string()),
        (Some(backup), hwid, Some(index)) => diff::backup_diff(&root.join(&backup.dir).join(hwid), hwid, index),
    };
    let status = match compared {
        Ok(compared) => {
            template.previous = compared.previous;
            template.hunks = compared.diff.hunks;
            (template.added, template.removed, template.left_out) = (compared.diff.added, compared.diff.removed, compared.diff.left_out);
            200
        }
        Err(error) => {
            template.error = Some(error);
            404
        }
    };
    render(status, &template)
}

fn login_page(site: &Site, config: &Config, status: u16, mut errors: Vec<String>, lockout: Option<auth::Lockout>) -> Response {
    let page = page("Log in", Some(config), None);
    let mut notices = Vec::new();
    let mut form = true;
    let mut https_url = None;
    match auth::policy(&config.master.user, &config.master.password) {
        auth::Policy::DefaultPassword => {
            form = false;
            notices.push(format!(
                "The admin password is still the shipped default, which is never accepted. Set master/@user and master/@password in {} (best a hash: the output of `update-server hash-password`, which reads the password on standard input; a bcrypt hash works too), then reload this page.",
                config.user_file
            ));
        }
        auth::Policy::NoLogin => {
            form = false;
            notices.push(format!(
                "Login is switched off (master/@user and master/@password are empty in {}). That is only allowed when the web server authenticates the admin page itself (REMOTE_USER, e.g. lighttpd's mod_auth) or on the quick start (update-server serve on 127.0.0.1). Set a user and password, or protect admin/admin.php in the web server.",
                config.user_file
            ));
        }
        _ => {}
    }
    if !site.channel_ok() {
        form = false;
        notices.push("Credentials are accepted over HTTPS only.".into());
        // the same host name, without the plain-HTTP port
        https_url = Some(format!("https://{}{}", site.host_name(), site.admin_path()));
    }
    if let Some(lockout) = lockout {
        form = false;
        errors.push(lockout_message(&lockout));
    }
    let template = templates::LoginPage { page: &page, notices, errors, form, user: site.arg("user").unwrap_or("").chars().take(64).collect(), https_url };
    let mut response = render(status, &template);
    if let Some(lockout) = lockout.filter(|_| status == 429) {
        response.headers.push(("Retry-After".into(), lockout.wait_secs.to_string()));
    }
    response
}

/// What a locked-out login is told: after how many failures, how long the wait still is, that
/// it ends by itself, and how an administrator ends it at once.
fn lockout_message(lockout: &auth::Lockout) -> String {
    let minutes = (lockout.wait_secs + 59) / 60;
    let plural = |n: i64| if n == 1 { "" } else { "s" };
    let failures = lockout.failures as i64;
    let pressure = if lockout.under_pressure {
        format!(" Many wrong passwords came from elsewhere too: for now every address has one try per {} minutes.", auth::WINDOW_SECS / 60)
    } else {
        String::new()
    };
    format!(
        "Login locked after {failures} failed login{} from your address: try again in {minutes} minute{}.{pressure} \
         The wait ends by itself (each wrong password counts for {} minutes, also across restarts); an \
         administrator can end it at once by deleting {} on the server.",
        plural(failures),
        plural(minutes),
        auth::WINDOW_SECS / 60,
        auth::FAILURE_RECORD
    )
}

/// Whom wrong passwords count against: behind a trusted reverse proxy the client, not the proxy.
fn login_client(site: &Site, request: &Request, config: &Config) -> String {
    crate::device::origin(&site.remote_addr, request.var("HTTP_X_FORWARDED_FOR"), &config.trusted_proxies).ip
}

fn login(site: &Site, request: &Request, root: &Path, config: &Config, now: i64) -> Response {
    if !same_origin(site, request) {
        return login_page(site, config, 403, vec!["This login did not come from this page.".into()], None);
    }
    if !site.channel_ok() {
        return login_page(site, config, 403, Vec::new(), None);
    }
    match auth::policy(&config.master.user, &config.master.password) {
        auth::Policy::Password => {}
        _ => return login_page(site, config, 403, Vec::new(), None),
    }
    let user = site.form.iter().find(|(k, _)| k == "user").map_or("", |(_, v)| v.as_str());
    let password = site.form.iter().find(|(k, _)| k == "pw").map_or("", |(_, v)| v.as_str());
    let client = login_client(site, request, config);
    let outcome = auth::attempt(root, &client, user, now, || auth::verify(&config.master.user, &config.master.password, user, password));
    match outcome {
        auth::Attempt::Accepted => {
            let credentials = auth::fingerprint(&config.master.user, &config.master.password);
            // a new id at every login: an id planted before the login is worth nothing after it
            if let Some(old) = request.var("HTTP_COOKIE").and_then(|c| session::cookie_value(c, session::COOKIE)) {
                session::destroy(root, old);
            }
            match session::create(root, user, &credentials, now) {
                Ok(created) => {
                    let query = site.args.iter().find(|(k, _)| k == "mode").map(|(_, v)| v.as_str()).unwrap_or("status");
                    let mode = if matches!(query, "status" | "show" | "info") { query } else { "status" };
                    let response = redirect(&format!("{}?mode={mode}", site.admin_path()));
                    with_cookie(response, Some(session::set_cookie(Some(&created.id), &site.cookie_path(), site.https)))
                }
                Err(error) => {
                    eprintln!("update-server: admin login: cannot store the session under cache/sessions: {error}");
                    login_page(site, config, 500, vec![format!("Cannot store the session under cache/sessions: {error}")], None)
                }
            }
        }
        auth::Attempt::Refused => login_page(site, config, 403, vec!["Wrong user or password.".into()], None),
        auth::Attempt::Throttled(lockout) => login_page(site, config, 429, Vec::new(), Some(lockout)),
        auth::Attempt::NoRecord(error) => {
            let text = format!("Logins are off: the record of wrong passwords cannot be kept under cache/ ({error}). Make cache/ writable for the server.");
            login_page(site, config, 503, vec![text], None)
        }
    }
}

fn logout(site: &Site, request: &Request, root: &Path, config: &Config, now: i64) -> Response {
    if site.method != "POST" {
        return html(405, "<!DOCTYPE html><title>405</title><p>Log out with the button on the page.</p>".into());
    }
    if let Some(access) = access(site, request, root, config, now) {
        if !csrf_ok(site, request, &access.session, None) {
            return html(403, "<!DOCTYPE html><title>403</title><p>This request did not come from this page.</p>".into());
        }
        session::destroy(root, &access.session.id);
    }
    with_cookie(redirect(&site.admin_path()), Some(session::set_cookie(None, &site.cookie_path(), site.https)))
}

/// Answers `update.php?mode=upload`: the signed certificate for a device, from the status page.
pub fn upload(request: &Request, root: &Path, config: Result<Arc<Config>, ConfigError>) -> Response {
    upload::handle(request, root, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_inert() {
        assert_eq!(json_string("a\"b\\c\n<script>&"), "\"a\\\"b\\\\c\\n\\u003cscript\\u003e\\u0026\"");
    }

    #[test]
    fn site_paths() {
        let mut request = Request::default();
        request.vars.insert("SCRIPT_NAME".into(), "/mtls/update/admin/admin.php".into());
        request.vars.insert("HTTP_HOST".into(), "update.example.com:444".into());
        request.vars.insert("HTTPS".into(), "on".into());
        let site = Site::of(&request, 1);
        assert_eq!(site.install_path, "/mtls/update");
        assert_eq!(site.cookie_path(), "/mtls/update/");
        assert_eq!(site.base_url(), "https://update.example.com:444/mtls/update");
        request.vars.insert("SCRIPT_NAME".into(), "/update.php".into());
        assert_eq!(Site::of(&request, 0).cookie_path(), "/");
    }
}
