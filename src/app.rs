//! The application: routes a request by script name and answers it.

use compact_str::CompactString;
use crate::certs::TlsIdentity;
use crate::config::cache::ConfigCache;
use crate::config::Config;
use crate::http::{Handler, Request, Response};
use crate::route::Route;
use crate::script::{self, Call};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct App {
    root_override: Option<PathBuf>,
    configs: ConfigCache,
    snippets: crate::filecache::FileCache,
    /// The requests this process answered, for `mode=metrics`.
    counters: crate::metrics::Counters,
}

impl App {
    pub fn new(root_override: Option<PathBuf>) -> App {
        App { root_override, configs: ConfigCache::default(), snippets: Default::default(), counters: Default::default() }
    }

    /// Logs the findings of `update-server check` once whenever a configuration is (re)read
    /// (the long-running modes).
    pub fn logging_configuration_findings(mut self) -> App {
        self.configs = self.configs.logging_findings();
        self
    }

    /// The root used when a request does not name one (the `serve` mode's tree).
    pub fn default_root(&self) -> PathBuf {
        self.root_override
            .clone()
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")))
    }

    /// The install directory for this request: the configured one, else the folder of the
    /// script file the web server named (its parent for the admin page).
    fn root_for(&self, vars: &crate::http::Vars, route: Route) -> PathBuf {
        if let Some(root) = &self.root_override {
            return root.clone();
        }
        match vars.get("SCRIPT_FILENAME").map(Path::new).and_then(Path::parent) {
            Some(dir) => {
                let mut root = dir.to_path_buf();
                for _ in 0..route.depth() {
                    root = root.parent().map(Path::to_path_buf).unwrap_or(root);
                }
                root
            }
            None => self.default_root(),
        }
    }

    fn config(&self, root: &Path) -> Result<Arc<Config>, Response> {
        self.configs.get(root).map_err(|e| device_text(200, format!("# {e} - exit\r\n")))
    }

    fn update(&self, request: &Request, root: &Path) -> Response {
        self.answer_device(request, root, Effects::Apply).0
    }

    /// What `update.php` would answer `request` now, and what it would change — with nothing
    /// written (`update-server preview`). Only polls (innovaphone and SPA) are previewed.
    pub fn preview(&self, request: &Request) -> (Response, Vec<String>) {
        let root = self.root_for(&request.vars, Route::Update);
        self.answer_device(request, &root, Effects::Preview)
    }

    /// A device's request to `update.php`; with [`Effects::Preview`] the answer and the changes
    /// it would make, nothing done.
    fn answer_device(&self, request: &Request, root: &Path, effects: Effects) -> (Response, Vec<String>) {
        let query = request.var("QUERY_STRING").unwrap_or("");
        // one spelling of a serial from here on: one device, one state file and one row
        let args = crate::device::with_canonical_serial(crate::urlenc::parse_query(query));
        let mode = args.iter().find(|(k, _)| k == "mode").map(|(_, v)| v.as_str()).unwrap_or("");
        let nothing = Vec::new;
        match mode {
            "" => {}
            _ if effects == Effects::Preview => {
                return (device_text(400, "# preview: only polls are previewed (no mode=)\r\n"), nothing())
            }
            "show" | "status" | "ui" => {
                return (device_text(200, "# for user interface functions, call admin/admin.php instead\r\n"), nothing())
            }
            "backup" | "query" | "vardump" => return (self.device_data(mode, request, root, &args), nothing()),
            "upload" => return (crate::admin::upload(request, root, self.configs.get(root)), nothing()),
            other => {
                let shown: String = other.chars().filter(|c| !c.is_control()).take(40).collect();
                return (device_text(400, format!("# unknown cmd={shown} - exit\r\n")), nothing());
            }
        }
        let mac_argument = args.iter().find(|(k, _)| k == "mac").map(|(_, v)| v.as_str());
        match crate::spa::identify(request.var("HTTP_USER_AGENT"), mac_argument) {
            crate::spa::Identification::NotSpa => {}
            crate::spa::Identification::Refused(refusal) => {
                let from = crate::spa::shown(request.var("REMOTE_ADDR").unwrap_or(""));
                let line = format!("{refusal} (from {from}) - 404, nothing written");
                if effects == Effects::Apply {
                    eprintln!("update-server: {line}");
                }
                return (device_text(404, "# SPA device not identified\r\n"), vec![format!("server log: {line}")]);
            }
            crate::spa::Identification::Spa(device) => return self.spa(request, root, args, &device, effects),
        }
        if let Err(invalid) = crate::device::validate(&args) {
            return (device_text(400, format!("# {invalid} - exit\r\n")), nothing());
        }
        let config = match self.config(root) {
            Ok(config) => config,
            Err(response) => return (response, nothing()),
        };
        let call = call_of(request, args, &config);
        match effects {
            Effects::Apply => {
                let outcome = script::run(root, &config, &call, &self.snippets);
                (device_text(outcome.status, outcome.body), nothing())
            }
            Effects::Preview => {
                let preview = script::preview(root, &config, &call, &self.snippets);
                (device_text(preview.outcome.status, preview.outcome.body), preview.changes)
            }
        }
    }

    /// An identified SPA device (issue 9): its XML profile. Every refusal is a 404 with a
    /// `#` line and a log line; the phone retries after its error delay.
    fn spa(
        &self,
        request: &Request,
        root: &Path,
        args: Vec<(CompactString, CompactString)>,
        device: &crate::spa::SpaDevice,
        effects: Effects,
    ) -> (Response, Vec<String>) {
        let refuse = |line: String, body: &str| {
            if effects == Effects::Apply {
                eprintln!("update-server: {line}");
            }
            (device_text(404, body.to_string()), vec![format!("server log: {line}")])
        };
        if let Err(invalid) = crate::device::validate(&args) {
            return refuse(format!("SPA {} {}: {invalid} - 404, nothing written", device.model, device.mac), "# invalid argument\r\n");
        }
        let config = match self.configs.get(root) {
            Ok(config) => config,
            Err(e) => return refuse(format!("SPA {} {}: {e} - 404", device.model, device.mac), "# configuration error\r\n"),
        };
        let call = call_of(request, args, &config);
        let (answer, changes) = match effects {
            Effects::Apply => (crate::spa::profile::serve(root, &config, &call, device, &self.snippets), Vec::new()),
            Effects::Preview => crate::spa::profile::preview(root, &config, &call, device, &self.snippets),
        };
        let mut response = device_text(answer.status, answer.body);
        for (name, value) in &mut response.headers {
            if name.eq_ignore_ascii_case("Content-Type") {
                *value = answer.content_type.to_string();
            }
        }
        (response, changes)
    }

    fn device_data(&self, mode: &str, request: &Request, root: &Path, args: &[(CompactString, CompactString)]) -> Response {
        if let Err(invalid) = crate::device::validate(args) {
            return device_text(400, format!("# {invalid} - exit\r\n"));
        }
        let config = match self.config(root) {
            Ok(config) => config,
            Err(response) => return response,
        };
        let tls = TlsIdentity::from_vars(|name| request.var(name).map(String::from));
        let data = crate::device_data::DataRequest {
            args,
            method: request.var("REQUEST_METHOD").unwrap_or("GET"),
            body: &request.body,
            tls: &tls,
            now: crate::clock::now(),
        };
        let answer = crate::device_data::handle(mode, root, &config, &data);
        device_text(answer.status, answer.body)
    }

    fn migrate(&self, request: &Request, root: &Path) -> Response {
        let config = match self.config(root) {
            Ok(config) => config,
            Err(response) => return response,
        };
        let query = request.var("QUERY_STRING").unwrap_or("");
        let target = if query.is_empty() { config.migrate_url.clone() } else { format!("{}?{query}", config.migrate_url) };
        let mut response = device_text(302, format!("# warping to '{target}'\r\n"));
        response.headers.push(("Location".into(), target));
        response
    }
}

impl Handler for App {
    fn handle(&self, request: Request) -> Response {
        let started = std::time::Instant::now();
        let route = Route::of(request.var("SCRIPT_NAME").unwrap_or(""));
        let root = self.root_for(&request.vars, route);
        let response = match route {
            Route::Update => self.update(&request, &root),
            Route::Migrate => self.migrate(&request, &root),
            Route::Admin => crate::admin::handle(&request, &root, self.configs.get(&root), &self.counters, &|device, root| {
                self.answer_device(device, root, Effects::Preview)
            }),
            Route::Unknown => device_text(404, "# not found\r\n"),
        };
        let poll = route == Route::Update && crate::metrics::is_poll(request.var("QUERY_STRING").unwrap_or(""));
        self.counters.record(route, poll, response.status, started.elapsed());
        response
    }

    fn body_limit(&self, vars: &crate::http::Vars) -> usize {
        let route = Route::of(vars.get("SCRIPT_NAME").map_or("", String::as_str));
        match route {
            Route::Update => {
                let mode = crate::urlenc::query_arg(vars.get("QUERY_STRING").map_or("", String::as_str), "mode");
                let mode = mode.as_deref().unwrap_or("");
                match mode {
                    "backup" | "query" | "vardump" => match self.configs.get(&self.root_for(vars, route)) {
                        Ok(config) => crate::device_data::body_limit(mode, &config),
                        // the answer will be the configuration error; no body is needed for it
                        Err(_) => IGNORED_BODY_LIMIT,
                    },
                    "upload" => crate::admin::upload::MAX_UPLOAD_BYTES,
                    _ => IGNORED_BODY_LIMIT,
                }
            }
            Route::Admin => crate::admin::MAX_FORM_BYTES,
            Route::Migrate | Route::Unknown => IGNORED_BODY_LIMIT,
        }
    }
}

/// The warning a long-running mode logs at start when its root is no install tree: otherwise
/// nothing is said until the first poll answers `# Error: … is missing`, and nothing there
/// points at `--root`.
pub fn root_warning(root: &Path) -> Option<String> {
    if root.join("config.xml").is_file() {
        return None;
    }
    Some(format!(
        "{} has no config.xml: not an install tree? start with --root DIR (the folder that holds config.xml), or set UPDATE_SERVER_ROOT",
        root.display()
    ))
}

/// Whether a device request is carried out or only previewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effects {
    Apply,
    Preview,
}

/// The body limit of requests whose body nobody reads (polls, the migration redirect, unknown
/// scripts): devices send none, so this only bounds what a client can make us hold.
const IGNORED_BODY_LIMIT: usize = 64 * 1024;

/// A `text/plain` answer that no cache keeps.
fn device_text(status: u16, body: impl Into<Vec<u8>>) -> Response {
    let mut response = Response::text(status, body);
    response.headers.push(("Cache-Control".into(), "no-store".into()));
    response
}

/// The facts of a device request the update script needs.
fn call_of(request: &Request, args: Vec<(CompactString, CompactString)>, config: &Config) -> Call {
    let https = request.var("HTTPS").is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("off"));
    let server_port = request.var("SERVER_PORT").unwrap_or(if https { "443" } else { "80" }).to_string();
    let host = url_host(
        request.var("HTTP_HOST").filter(|h| !h.is_empty() && is_host(h)),
        request.var("SERVER_NAME").unwrap_or("localhost"),
        &server_port,
        https,
        request.var("SERVER_SOFTWARE").unwrap_or(""),
    );
    let script_name = request.var("SCRIPT_NAME").unwrap_or("/update.php").to_string();
    let folder = script_name.rsplit_once('/').map_or("", |(dir, _)| dir);
    let base_url = [if https { "https://" } else { "http://" }, &host, folder].concat();
    Call {
        args,
        base_url,
        host,
        script_name,
        https,
        server_port,
        origin: crate::device::origin(
            request.var("REMOTE_ADDR").unwrap_or(""),
            request.var("HTTP_X_FORWARDED_FOR"),
            &config.trusted_proxies,
        ),
        tls: TlsIdentity::from_vars(|name| request.var(name).map(String::from)),
        now: crate::clock::now(),
    }
}

/// The host (with the port where one is needed) of the URLs we hand a device: the Host header
/// it sent, else the server's name and port. Debian's nginx passes `HTTP_HOST` as `$host`,
/// which has lost the port the device used; for nginx the port then comes from `SERVER_PORT`,
/// unless it is the scheme's default (a URL never names port 80 or 443 needlessly). Other web
/// servers pass the header as it came, and a Host header without a port means the device used
/// the default port, whatever port the server listens on behind a port forwarding.
fn url_host(http_host: Option<&str>, server_name: &str, server_port: &str, https: bool, software: &str) -> String {
    let default_port = if https { "443" } else { "80" };
    let with_port = |name: &str| if server_port == default_port || server_port.is_empty() { name.to_string() } else { format!("{name}:{server_port}") };
    match http_host {
        Some(host) if !has_port(host) && software.starts_with("nginx/") => with_port(host),
        Some(host) => host.to_string(),
        None => with_port(server_name),
    }
}

/// Whether `host` (`name`, `name:port`, `[v6]`, `[v6]:port`) names a port.
fn has_port(host: &str) -> bool {
    match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').is_some_and(|(_, rest)| rest.starts_with(':')),
        None => host.contains(':'),
    }
}

/// A Host header we are willing to put into URLs we hand out: a name or address with an
/// optional port, nothing that could change the URL's meaning.
fn is_host(host: &str) -> bool {
    host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_without_config_xml_is_named_with_the_way_out() {
        let empty = tempfile::tempdir().unwrap();
        let warning = root_warning(empty.path()).expect("a warning");
        assert!(warning.starts_with(&format!("{} has no config.xml", empty.path().display())) && warning.contains("--root DIR"), "{warning}");
        assert_eq!(root_warning(Path::new(env!("CARGO_MANIFEST_DIR"))), None, "the shipped tree");
    }

    #[test]
    fn url_hosts_keep_the_devices_port() {
        // what the device sent is used as it is
        assert_eq!(url_host(Some("up.example.com:8080"), "x", "8080", false, "Apache/2.4"), "up.example.com:8080");
        assert_eq!(url_host(Some("up.example.com"), "x", "8080", false, "Apache/2.4"), "up.example.com");
        // Debian's nginx drops the port from HTTP_HOST: SERVER_PORT puts it back, defaults stay out
        assert_eq!(url_host(Some("up.example.com"), "x", "8080", false, "nginx/1.22.1"), "up.example.com:8080");
        assert_eq!(url_host(Some("up.example.com"), "x", "80", false, "nginx/1.22.1"), "up.example.com");
        assert_eq!(url_host(Some("up.example.com"), "x", "443", true, "nginx/1.22.1"), "up.example.com");
        assert_eq!(url_host(Some("up.example.com"), "x", "443", false, "nginx/1.22.1"), "up.example.com:443");
        assert_eq!(url_host(Some("[::1]"), "x", "8443", true, "nginx/1.22.1"), "[::1]:8443");
        assert_eq!(url_host(Some("[::1]:8443"), "x", "8443", true, "nginx/1.22.1"), "[::1]:8443");
        assert_eq!(url_host(Some("up.example.com:8080"), "x", "8080", false, "nginx/1.22.1"), "up.example.com:8080");
        // no usable Host header: the server's name and port
        assert_eq!(url_host(None, "up.example.com", "8080", false, ""), "up.example.com:8080");
        assert_eq!(url_host(None, "up.example.com", "443", true, ""), "up.example.com");
    }
}
