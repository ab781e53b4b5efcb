//! The application: routes a request by script name and answers it.

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
}

impl App {
    pub fn new(root_override: Option<PathBuf>) -> App {
        App { root_override, configs: ConfigCache::default(), snippets: Default::default() }
    }

    /// The root used when a request does not name one (the `serve` mode's tree).
    pub fn default_root(&self) -> PathBuf {
        self.root_override
            .clone()
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")))
    }

    /// The install directory for this request: the configured one, else the folder of the
    /// script file the web server named (its parent for the admin page).
    fn root_for(&self, request: &Request, route: Route) -> PathBuf {
        if let Some(root) = &self.root_override {
            return root.clone();
        }
        match request.var("SCRIPT_FILENAME").map(Path::new).and_then(Path::parent) {
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
        let query = request.var("QUERY_STRING").unwrap_or("");
        let args = crate::urlenc::parse_query(query);
        let mode = args.iter().find(|(k, _)| k == "mode").map(|(_, v)| v.as_str()).unwrap_or("");
        match mode {
            "" => {}
            "show" | "status" | "ui" => {
                return device_text(200, "# for user interface functions, call admin/admin.php instead\r\n")
            }
            "backup" | "query" | "vardump" => return self.device_data(mode, request, root, &args),
            "upload" => return crate::admin::upload(request, root, self.configs.get(root)),
            other => {
                let shown: String = other.chars().filter(|c| !c.is_control()).take(40).collect();
                return device_text(400, format!("# unknown cmd={shown} - exit\r\n"));
            }
        }
        if let Err(invalid) = crate::device::validate(&args) {
            return device_text(400, format!("# {invalid} - exit\r\n"));
        }
        let config = match self.config(root) {
            Ok(config) => config,
            Err(response) => return response,
        };
        let call = call_of(request, args, &config);
        let outcome = script::run(root, &config, &call, &self.snippets);
        device_text(outcome.status, outcome.body)
    }

    fn device_data(&self, mode: &str, request: &Request, root: &Path, args: &[(String, String)]) -> Response {
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
        let route = Route::of(request.var("SCRIPT_NAME").unwrap_or(""));
        let root = self.root_for(&request, route);
        match route {
            Route::Update => self.update(&request, &root),
            Route::Migrate => self.migrate(&request, &root),
            Route::Admin => crate::admin::handle(&request, &root, self.configs.get(&root)),
            Route::Unknown => device_text(404, "# not found\r\n"),
        }
    }
}

/// A `text/plain` answer that no cache keeps.
fn device_text(status: u16, body: impl Into<Vec<u8>>) -> Response {
    let mut response = Response::text(status, body);
    response.headers.push(("Cache-Control".into(), "no-store".into()));
    response
}

/// The facts of a device request the update script needs.
fn call_of(request: &Request, args: Vec<(String, String)>, config: &Config) -> Call {
    let https = request.var("HTTPS").is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("off"));
    let server_port = request.var("SERVER_PORT").unwrap_or(if https { "443" } else { "80" }).to_string();
    let host = match request.var("HTTP_HOST").filter(|h| !h.is_empty() && is_host(h)) {
        Some(host) => host.to_string(),
        None => {
            let name = request.var("SERVER_NAME").unwrap_or("localhost");
            let default_port = if https { "443" } else { "80" };
            if server_port == default_port { name.to_string() } else { format!("{name}:{server_port}") }
        }
    };
    let script_name = request.var("SCRIPT_NAME").unwrap_or("/update.php").to_string();
    let folder = script_name.rsplit_once('/').map_or("", |(dir, _)| dir);
    let base_url = format!("{}://{host}{folder}", if https { "https" } else { "http" });
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

/// A Host header we are willing to put into URLs we hand out: a name or address with an
/// optional port, nothing that could change the URL's meaning.
fn is_host(host: &str) -> bool {
    host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'))
}
