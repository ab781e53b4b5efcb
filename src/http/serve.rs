//! The built-in HTTP listener (`update-server serve`): the three PHP entry points go to the
//! application as CGI requests, `fw/`, `www/` and `web/` are served as static files, the rest is 404.
//!
//! HTTP/1.0 and 1.1 are spoken by hyper on a small tokio runtime; plain HTTP and, with the `tls`
//! feature, HTTPS and MTLS by rustls (`src/http/tls.rs`), on as many listeners as `--listen`
//! names. The application stays synchronous: it runs on tokio's blocking pool, at most
//! `workers` requests at once (a semaphore), so slow or idle connections cost a few hundred
//! bytes each and never a thread.
//!
//! - Every connection holds a slot in a [`Registry`] (the cap of `connections`): at the cap a
//!   newcomer takes the place of an idle or slow connection; when every slot is being answered
//!   it gets a 503 at once.
//! - A connection's phase is kept from what hyper does with it: bytes read while idle start a
//!   request head, hyper's call of the service ends it, the answer's body ending makes the
//!   connection idle. A supervisor beside hyper enforces the deadlines: the head within
//!   [`HEAD_TIME`] of its first byte (then 408), a kept-alive connection idle at most
//!   [`IDLE_TIMEOUT`], a stalled answer at most [`WRITE_TIMEOUT`]; the body has
//!   [`body_time`] of its length.
//! - Every answer carries `Content-Length` (old firmware speaks HTTP/1.0); none is chunked.
//!   Request bodies may come with `Content-Length` or chunked; both are held to the handler's
//!   [`body_limit`] (413), a declared length before any of the body is read.
//! - Refusals before the body is read close the connection after reading for a while what the
//!   client still sends, so that it sees the answer instead of a reset.
//!
//! Routing, paths and variables are pure and separately tested.

use super::connections::{self, body_time, Phase, Registry, Slot, HEAD_TIME};
use super::fastcgi::{log, run_handler};
use super::{body_limit, body_too_large, reason_phrase, Handler, Request, Response, MAX_BODY_BYTES};
pub use crate::cli::{ClientCert, Listen, TlsSettings};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::{self, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

const DOOR: &str = "serve";
/// Bound of the request line plus headers; above it the answer is 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Headers one request may have (hyper's default is 100; a trickle of 20 s of one header line
/// a second must reach the head deadline, not this).
const MAX_HEADERS: usize = 500;
/// Requests computed at once by default (`--workers`).
pub const WORKERS: usize = 8;
/// Time a write of our answer may stall before we give up on the client.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time an idle keep-alive connection may wait for its next request (Apache's and lighttpd's
/// default). Devices poll with one request per connection; a browser reopens at once.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a refused request's remaining bytes are read and discarded before closing.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// How often the supervisor of a connection looks at its deadlines at least.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes of a static file handed to hyper at once.
const FILE_CHUNK: usize = 64 * 1024;
/// Blocking threads beyond the workers: static files are opened and read there.
const FILE_THREADS: usize = 8;
/// What a client gets when every connection slot is being answered.
const BUSY_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: 20\r\nConnection: close\r\n\r\n# server busy - exit";

/// URL endings that are the application's entry points, and the script each stands for.
const SCRIPTS: [(&[&str], &str); 3] = [
    (&["update.php"], "update.php"),
    (&["admin", "admin.php"], "admin/admin.php"),
    (&["update-migrate.php"], "update-migrate.php"),
];
/// Folders of the install tree that the web server serves as they are (SPEC §1).
/// `www/` holds the admin page's files; `web/` is where the old server kept its web files.
const STATIC_FOLDERS: [&str; 3] = ["fw", "www", "web"];
/// The body limit of requests for static files and unknown paths, which read no body.
const NON_SCRIPT_BODY_LIMIT: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Parsing (pure)
// ---------------------------------------------------------------------------------------------

/// What can be wrong with a request before it reaches the application (hyper answers
/// malformed heads itself: 400, or 431 above [`MAX_HEAD_BYTES`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("request target is neither origin form nor an http(s) URL")]
    BadTarget,
    #[error("a request needs one Host header naming a host[:port] (HTTP/1.0 may leave it out)")]
    BadHost,
    #[error("request head not complete within the time allowed")]
    HeadTimeout,
    #[error("request body not complete within the time allowed")]
    BodyTimeout,
    #[error("request body is over the {0} bytes this request takes")]
    BodyOverLimit(usize),
    #[error("request body unreadable: {0}")]
    BadBody(String),
    #[error("request path is not valid percent-encoded UTF-8")]
    BadPath,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTimeout | HttpError::BodyTimeout => 408,
            HttpError::BodyOverLimit(_) => 413,
            _ => 400,
        }
    }

    fn response(&self) -> Response {
        match self {
            HttpError::BodyOverLimit(limit) => body_too_large(*limit),
            other => Response::text(other.status(), format!("# {other}\r\n")),
        }
    }
}

/// The Host headers of a request are usable: exactly one, a valid host (HTTP/1.0 may have none).
/// An invalid one is refused rather than ignored: it would become SERVER_NAME / HTTP_HOST and
/// from there the URLs devices are told to fetch (RFC 9112 §3.2: 400).
pub fn check_hosts<'a>(hosts: impl IntoIterator<Item = &'a [u8]>, minor_version: u8) -> Result<(), HttpError> {
    let hosts: Vec<&[u8]> = hosts.into_iter().collect();
    match hosts.as_slice() {
        [] if minor_version == 0 => Ok(()),
        [host] if std::str::from_utf8(host).is_ok_and(is_valid_host) => Ok(()),
        _ => Err(HttpError::BadHost),
    }
}

/// Whether an HTTP/1.0 request asks to be kept alive (`Connection: keep-alive`).
pub fn asks_keep_alive<'a>(connection_headers: impl IntoIterator<Item = &'a [u8]>) -> bool {
    connection_headers.into_iter().any(|value| {
        value
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"keep-alive"))
    })
}

/// A byte range of a static file (RFC 9110 §14): one `bytes=` range, as firmware downloads
/// resume with. Several ranges or anything malformed are ignored (the whole file is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// First and last byte, inclusive.
    Satisfiable(u64, u64),
    /// Starts beyond the end: 416.
    Unsatisfiable,
}

pub fn parse_range(value: &str, length: u64) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok())?
    };
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, true) => return None,
        // the last N bytes
        (true, false) => {
            let suffix = number(last)?;
            if suffix == 0 {
                return Some(ByteRange::Unsatisfiable);
            }
            (length.saturating_sub(suffix), length.checked_sub(1)?)
        }
        (false, true) => (number(first)?, length.saturating_sub(1)),
        (false, false) => {
            let (start, end) = (number(first)?, number(last)?);
            if end < start {
                return None;
            }
            (start, end.min(length.saturating_sub(1)))
        }
    };
    if start >= length {
        return Some(ByteRange::Unsatisfiable);
    }
    Some(ByteRange::Satisfiable(start, end))
}

/// The origin form (`/path?query`) of a request target; absolute form is reduced to it.
pub fn origin_form(target: &str) -> Option<String> {
    if target.starts_with('/') {
        return Some(target.to_string());
    }
    let scheme_end = target.find("://")?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let rest = &target[scheme_end + 3..];
    Some(match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => rest[at..].to_string(),
        Some(at) => format!("/{}", &rest[at..]),
        None => "/".to_string(),
    })
}

/// Decodes `%XX` escapes; the result must be UTF-8 without NUL.
pub fn percent_decode(raw: &str) -> Result<String, HttpError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(HttpError::BadPath)?;
            let text = std::str::from_utf8(hex).map_err(|_| HttpError::BadPath)?;
            out.push(u8::from_str_radix(text, 16).map_err(|_| HttpError::BadPath)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return Err(HttpError::BadPath);
    }
    String::from_utf8(out).map_err(|_| HttpError::BadPath)
}

/// Where a (decoded) path goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// An application entry point: the script's path relative to the root.
    Script(&'static str),
    /// A file in one of the static folders; `relative` has only plain, non-hidden components.
    Static {
        folder: &'static str,
        relative: String,
    },
    /// `/` alone: sent on to the admin page.
    Home,
    NotFound,
}

/// Routes a percent-decoded path. Entry points and static folders may sit under any prefix
/// (`/update.php`, `/mtls/update/update.php`, `/mtls/update/fw/…`), as they do behind lighttpd.
pub fn route(path: &str) -> Route {
    if path == "/" {
        return Route::Home;
    }
    let Some(segments) = clean_segments(path) else {
        return Route::NotFound;
    };
    for (ending, script) in SCRIPTS {
        if segments.ends_with(ending) {
            return Route::Script(script);
        }
    }
    let Some(at) = segments.iter().position(|s| STATIC_FOLDERS.contains(s)) else {
        return Route::NotFound;
    };
    let relative = &segments[at + 1..];
    // Hidden names (.htaccess, .git) are never content.
    if relative.is_empty() || relative.iter().any(|s| s.starts_with('.')) {
        return Route::NotFound;
    }
    let folder = STATIC_FOLDERS
        .iter()
        .find(|f| **f == segments[at])
        .copied()
        .unwrap_or("fw");
    Route::Static {
        folder,
        relative: relative.join("/"),
    }
}

/// The path's components, or `None` if any could step outside the tree: `.`, `..`, empty
/// components, backslashes or NUL.
fn clean_segments(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    let segments: Vec<&str> = rest.split('/').collect();
    let unsafe_segment =
        |s: &&str| s.is_empty() || *s == "." || *s == ".." || s.contains(['\\', '\0']);
    if segments.iter().any(unsafe_segment) {
        return None;
    }
    Some(segments)
}

/// Content-Type of a static file, by extension.
pub fn content_type(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match extension.as_str() {
        "htm" | "html" => "text/html; charset=utf-8",
        "txt" | "log" => "text/plain; charset=utf-8",
        "css" => "text/css",
        "js" => "text/javascript",
        "json" => "application/json",
        "xml" => "application/xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "pem" | "crt" | "cer" => "application/x-x509-ca-cert",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) for Date and Last-Modified.
pub fn http_date(time: SystemTime) -> String {
    let seconds = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = seconds / 86_400;
    let (year, month, day) = crate::clock::civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let time_of_day = seconds % 86_400;
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        time_of_day / 3600,
        time_of_day % 3600 / 60,
        time_of_day % 60
    )
}

/// The CGI name of request header `name`, or `None` for headers that must not become one:
/// Content-Type/-Length have their own variables, `Proxy` would set HTTP_PROXY (httpoxy), and
/// names with `_` could impersonate their `-` twin.
pub fn header_variable(name: &str) -> Option<String> {
    if name.contains('_') {
        return None;
    }
    let upper = name.to_ascii_uppercase().replace('-', "_");
    match upper.as_str() {
        "PROXY" | "CONTENT_TYPE" | "CONTENT_LENGTH" => None,
        _ => Some(format!("HTTP_{upper}")),
    }
}

/// SERVER_NAME from a Host header: the host without the port (brackets kept for IPv6).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A Host header value fit to build URLs from: `name[:port]` or `[IPv6]:port`, the name of
/// letters, digits, `-`, `.` and `_`, the port of one to five digits (at most 65535).
pub fn is_valid_host(value: &str) -> bool {
    let (name_ok, port) = match value.strip_prefix('[') {
        Some(rest) => {
            let Some((address, port)) = rest.split_once(']') else {
                return false;
            };
            let ipv6 = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
            (!address.is_empty() && address.bytes().all(ipv6), port)
        }
        None => {
            let (name, port) = value.split_at(value.find(':').unwrap_or(value.len()));
            let name_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
            (!name.is_empty() && name.bytes().all(name_byte), port)
        }
    };
    let port_ok = match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => {
            digits.bytes().all(|b| b.is_ascii_digit()) && digits.parse::<u16>().is_ok()
        }
    };
    value.len() <= 255 && name_ok && port_ok
}

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

/// Serves plain HTTP on `listen` (`HOST:PORT`) for the install tree at `root`, with the
/// default number of workers.
pub fn run(listen: &str, root: PathBuf, handler: Arc<dyn Handler>) -> io::Result<()> {
    let listeners = [Listen { address: listen.to_string(), tls: None }];
    run_listeners(&listeners, root, handler, WORKERS)
}

/// Serves every listener of `listens` for the install tree at `root`, with at most `workers`
/// requests computed at once. Returns only when a listening socket is unusable (or one cannot
/// be opened: a TLS listener's certificate or key that cannot be read is such a case).
pub fn run_listeners(listens: &[Listen], root: PathBuf, handler: Arc<dyn Handler>, workers: usize) -> io::Result<()> {
    let root = std::path::absolute(&root)?;
    let workers = workers.max(1);
    let mut acceptors = Vec::new();
    for listen in listens {
        acceptors.push(match &listen.tls {
            None => None,
            Some(settings) => Some(tls_acceptor(settings).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", listen.address)))?),
        });
    }
    // two descriptors per connection: its socket and the static file it may be sending
    let cap = connections::cap_for_descriptors(connections::raise_descriptor_limit(), 2);
    // The I/O of plain HTTP is light next to the application, which runs on the blocking pool:
    // one runtime thread moves it with the fewest wake-ups between threads (measured: about a
    // fifth less CPU per poll than two). TLS handshakes are heavy: with a TLS listener, up to
    // one runtime thread per core (at most four).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime_threads = if listens.iter().any(|l| l.tls.is_some()) { cores.clamp(1, 4) } else { 1 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_threads)
        .max_blocking_threads(workers + FILE_THREADS)
        // a burst's blocking threads go away with it
        .thread_keep_alive(Duration::from_secs(2))
        .thread_name("serve")
        .enable_io()
        .enable_time()
        .build()?;
    let site = Arc::new(Site {
        root,
        handler,
        gate: Arc::new(Semaphore::new(workers)),
        software: format!("update-server/{}", env!("CARGO_PKG_VERSION")),
        server_header: HeaderValue::from_static(concat!("update-server/", env!("CARGO_PKG_VERSION"))),
        registry: Registry::new(cap),
        http: http_builder(),
        turned_away: connections::TurnedAway::new(),
    });
    runtime.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for (listen, acceptor) in listens.iter().zip(acceptors) {
            let listener = std::net::TcpListener::bind(&listen.address)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(TcpListener::from_std)
                .map_err(|e| super::listen_error(&listen.address, e))?;
            let address = listener.local_addr()?;
            let scheme = if acceptor.is_some() { "https" } else { "http" };
            let client = match listen.tls.as_ref().map(|t| t.client_cert) {
                Some(ClientCert::Required) => " (client certificate required)",
                Some(ClientCert::Optional) => " (client certificate optional)",
                _ => "",
            };
            log(DOOR, &format!("listening on {scheme}://{address}/{client} for {}", site.root.display()));
            if tasks.is_empty() {
                // the quick start: tell the operator what a device would ask
                println!(
                    "update-server is serving {} on {scheme}://{address}/\ntry a device poll:\n  curl '{scheme}://{address}/update.php?type=IP232&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57&ip=127.0.0.1'",
                    site.root.display()
                );
            }
            tasks.spawn(accept_loop(Arc::clone(&site), listener, acceptor));
        }
        while let Some(ended) = tasks.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(error) => return Err(io::Error::other(format!("a listener failed: {error}"))),
            }
        }
        Ok(())
    })
}

fn http_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        // a client that shuts down its sending side after the request still gets the answer
        .half_close(true)
        // our own deadlines (see Tracker) replace hyper's, which counts the idle time of a
        // kept-alive connection into its head's time and closes without an answer
        .header_read_timeout(None)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .max_buf_size(64 * 1024)
        .writev(true);
    builder
}

#[cfg(feature = "tls")]
type Acceptor = tokio_rustls::TlsAcceptor;

/// Without the `tls` feature no TLS listener exists.
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
enum Acceptor {}

#[cfg(feature = "tls")]
fn tls_acceptor(settings: &TlsSettings) -> io::Result<Acceptor> {
    super::tls::acceptor(settings)
}

#[cfg(not(feature = "tls"))]
fn tls_acceptor(_settings: &TlsSettings) -> io::Result<Acceptor> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "this build has no TLS (built without the `tls` feature)"))
}

struct Site {
    root: PathBuf,
    handler: Arc<dyn Handler>,
    /// Requests computed at once.
    gate: Arc<Semaphore>,
    software: String,
    server_header: HeaderValue,
    registry: Arc<Registry>,
    http: http1::Builder,
    turned_away: connections::TurnedAway,
}

/// Where a connection comes from and how it is secured.
struct Peer {
    remote: SocketAddr,
    local: SocketAddr,
    /// The TLS variables (`HTTPS`, `SSL_*`) of a TLS connection.
    tls: Option<Vec<(String, String)>>,
}

async fn accept_loop(site: Arc<Site>, listener: TcpListener, acceptor: Option<Acceptor>) -> io::Result<()> {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                if let Some(wait) = connections::accept_failure(&error, DOOR)? {
                    if connections::is_out_of_descriptors(&error) {
                        // the connection waiting in the kernel's queue gets the descriptor of an
                        // idle or slow one
                        site.registry.evict_one();
                    }
                    tokio::time::sleep(wait).await;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let closer = Arc::new(Closer::default());
        let Some(slot) = site.registry.admit(Arc::clone(&closer) as Arc<dyn connections::Socket>) else {
            site.turned_away.count(DOOR, site.registry.cap());
            if acceptor.is_none() {
                turn_away(stream);
            }
            continue;
        };
        let tracker = Arc::new(Tracker::new(slot, closer));
        tokio::spawn(connection(Arc::clone(&site), stream, remote, acceptor.clone(), tracker));
    }
}

/// 503 without waiting: the answer fits in any socket's send buffer, and what the client has
/// sent already is read first so that closing does not reset the answer away.
fn turn_away(stream: TcpStream) {
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        if !matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = stream.try_write(BUSY_ANSWER);
    if let Ok(stream) = stream.into_std() {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}

async fn connection(site: Arc<Site>, stream: TcpStream, remote: SocketAddr, acceptor: Option<Acceptor>, tracker: Arc<Tracker>) {
    let local = match stream.local_addr() {
        Ok(local) => local,
        Err(error) => return log(DOOR, &format!("connection setup failed: {error}")),
    };
    match acceptor {
        None => serve_http(site, stream, Arc::new(Peer { remote, local, tls: None }), tracker).await,
        #[cfg(feature = "tls")]
        Some(acceptor) => {
            // the handshake is part of the first request's head and has its time
            let handshake = tokio::time::timeout(HEAD_TIME, acceptor.accept(stream));
            let stream = tokio::select! {
                shaken = handshake => match shaken {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => return log(DOOR, &format!("{remote}: TLS handshake failed: {error}")),
                    Err(_) => return log(DOOR, &format!("{remote}: TLS handshake not complete within the time allowed")),
                },
                () = tracker.closer.notify.notified() => return,
            };
            let tls = super::tls::connection_vars(stream.get_ref().1);
            serve_http(site, stream, Arc::new(Peer { remote, local, tls: Some(tls) }), tracker).await
        }
        #[cfg(not(feature = "tls"))]
        Some(never) => match never {},
    }
}

/// How hyper's part of a connection ended.
enum End {
    Done(hyper::Result<()>),
    /// Closed to make room for another connection.
    Evicted,
    /// A deadline passed in this phase.
    Expired(Phase),
}

async fn serve_http<S>(site: Arc<Site>, io: S, peer: Arc<Peer>, tracker: Arc<Tracker>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let (site, peer, tracker) = (Arc::clone(&site), Arc::clone(&peer), Arc::clone(&tracker));
        hyper::service::service_fn(move |request| {
            let (site, peer, tracker) = (Arc::clone(&site), Arc::clone(&peer), Arc::clone(&tracker));
            // boxed: hyper needs an Unpin future to hand the connection back (into_parts)
            Box::pin(async move { Ok::<_, Infallible>(site.answer(&peer, &tracker, request).await) })
        })
    };
    let io = Tracked { inner: io, tracker: Arc::clone(&tracker) };
    let mut conn = site.http.serve_connection(TokioIo::new(io), service);
    let end = loop {
        let check = tracker.next_check();
        tokio::select! {
            result = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break End::Done(result),
            () = tracker.closer.notify.notified() => break End::Evicted,
            () = tokio::time::sleep_until(check) => {
                if let Some(phase) = tracker.expired() {
                    break End::Expired(phase);
                }
            }
        }
    };
    match end {
        End::Evicted | End::Expired(Phase::Idle | Phase::Body | Phase::Busy) => {}
        End::Expired(Phase::Head) => {
            log(DOOR, &format!("{}: {}", peer.remote, HttpError::HeadTimeout));
            let mut io = conn.into_parts().io.into_inner().inner;
            let answer = raw_answer(&HttpError::HeadTimeout.response());
            let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(&answer)).await;
            linger(io, &tracker).await;
        }
        End::Done(result) => {
            if let Err(error) = &result {
                if !error.is_incomplete_message() {
                    log(DOOR, &format!("{}: {error}", peer.remote));
                }
            }
            let mut io = conn.into_parts().io.into_inner().inner;
            if result.is_err() || tracker.lingers() {
                linger(io, &tracker).await;
            } else {
                let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
            }
        }
    }
}

/// Closes after an error answer without destroying it: closing a TCP socket with unread input
/// sends a reset, which can make the client drop our answer unread. So stop writing, then
/// read and discard for a short while first.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, tracker: &Tracker) {
    // evictable first of all while it lingers
    tracker.enter(Phase::Idle);
    let drain = async {
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
        let deadline = Instant::now() + LINGER_TIME;
        let mut sink = vec![0u8; 8192];
        let mut discarded = 0usize;
        while discarded < MAX_BODY_BYTES {
            match tokio::time::timeout_at(deadline, io.read(&mut sink)).await {
                Ok(Ok(read)) if read > 0 => discarded += read,
                _ => break,
            }
        }
    };
    tokio::select! {
        () = drain => {}
        () = tracker.closer.notify.notified() => {}
    }
}

/// An answer written by ourselves, outside hyper (the head deadline's 408).
fn raw_answer(response: &Response) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nDate: {}\r\nServer: update-server/{}\r\nConnection: close\r\n",
        response.status,
        reason_phrase(response.status),
        http_date(SystemTime::now()),
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes();
    for (name, value) in &response.headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", response.body.len()).as_bytes());
    out.extend_from_slice(&response.body);
    out
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// What a request is answered with.
enum Answer {
    /// An answer in memory (the application's, or ours).
    Whole(Response),
    /// A static file, or part of it.
    File(StaticFile),
}

struct StaticFile {
    status: u16,
    headers: Vec<(&'static str, String)>,
    file: tokio::fs::File,
    length: u64,
}

impl Site {
    /// Answers one request that hyper has read the head of.
    async fn answer(&self, peer: &Peer, tracker: &Arc<Tracker>, request: hyper::Request<Incoming>) -> hyper::Response<ServeBody> {
        let (head, body) = request.into_parts();
        let has_body = !body.is_end_stream();
        let request_number = tracker.begin(has_body);
        let (answer, close) = match self.exchange(peer, tracker, &head, body, has_body).await {
            Ok(answer) => (answer, false),
            Err(error) => {
                log(DOOR, &format!("{}: {error}", peer.remote));
                // a refused body may still be on its way, and a request without a usable Host
                // ends the connection as any malformed head does; otherwise the connection
                // is still in step
                let close = has_body || error == HttpError::BadHost;
                (Answer::Whole(error.response()), close)
            }
        };
        if close {
            // a refusal ends the connection (its body may still be on the way)
            tracker.set_linger();
        }
        tracker.answering(request_number);
        self.reply(&head, answer, close, tracker, request_number)
    }

    /// Reads what the request needs and computes the answer; `Err` for a refusal that ends the
    /// connection.
    async fn exchange(
        &self,
        peer: &Peer,
        tracker: &Tracker,
        head: &hyper::http::request::Parts,
        body: Incoming,
        has_body: bool,
    ) -> Result<Answer, HttpError> {
        let minor_version = u8::from(head.version != hyper::Version::HTTP_10);
        check_hosts(head.headers.get_all(header::HOST).iter().map(HeaderValue::as_bytes), minor_version)?;
        let target = origin_form(&head.uri.to_string()).ok_or(HttpError::BadTarget)?;
        let (raw_path, query) = target.split_once('?').unwrap_or((&target, ""));
        let path = percent_decode(raw_path)?;
        let route = route(&path);
        let declared = if has_body { body.size_hint().exact() } else { Some(0) };
        let mut script_vars = match route {
            Route::Script(script) => {
                let length = declared.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
                Some(self.cgi_vars(peer, head, &target, &path, query, script, length))
            }
            _ => None,
        };
        let limit = script_vars.as_ref().map_or(NON_SCRIPT_BODY_LIMIT, |vars| body_limit(&*self.handler, vars));
        // refused before reading, so a body the application would refuse is never held
        if let Some(length) = declared {
            if length > MAX_BODY_BYTES as u64 {
                return Err(HttpError::BodyOverLimit(MAX_BODY_BYTES));
            }
            if length > limit as u64 {
                return Err(HttpError::BodyOverLimit(limit));
            }
        }
        let body = if has_body { read_body(body, limit, declared).await? } else { Vec::new() };
        tracker.enter(Phase::Busy);
        Ok(match route {
            Route::Script(_) => {
                let mut vars = script_vars.take().unwrap_or_default();
                vars.insert("CONTENT_LENGTH".into(), body.len().to_string());
                Answer::Whole(self.call(vars, body).await)
            }
            Route::Static { folder, relative } => self.static_file(head, folder, relative).await,
            Route::Home => {
                let mut response = Response::text(302, "# see admin/admin.php\r\n");
                response.headers.push(("Location".into(), "/admin/admin.php".into()));
                Answer::Whole(response)
            }
            Route::NotFound => Answer::Whole(not_found()),
        })
    }

    /// Runs the application on the blocking pool, at most `workers` requests at once.
    async fn call(&self, vars: super::Vars, body: Vec<u8>) -> Response {
        let Ok(permit) = Arc::clone(&self.gate).acquire_owned().await else {
            return Response::text(503, "# server busy - exit\r\n");
        };
        let handler = Arc::clone(&self.handler);
        let computed = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            run_handler(&*handler, Request { vars, body }, DOOR)
        });
        computed.await.unwrap_or_else(|_| Response::text(500, "# internal error - exit\r\n"))
    }

    /// The hyper response: our status and headers, the listener's own headers, the body.
    fn reply(
        &self,
        head: &hyper::http::request::Parts,
        answer: Answer,
        close: bool,
        tracker: &Arc<Tracker>,
        request_number: u64,
    ) -> hyper::Response<ServeBody> {
        let done = Done { tracker: Arc::clone(tracker), request_number };
        let is_head = head.method == hyper::Method::HEAD;
        let (status, headers, body) = match answer {
            Answer::Whole(response) => {
                let headers: Vec<(String, String)> = response.headers;
                let length = response.body.len() as u64;
                let body = if is_head { ServeBody::head(length, done) } else { ServeBody::bytes(response.body, done) };
                (response.status, headers, body)
            }
            Answer::File(file) => {
                let headers = file.headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                let body = if is_head { ServeBody::head(file.length, done) } else { ServeBody::file(file.file, file.length, done) };
                (file.status, headers, body)
            }
        };
        let mut reply = hyper::Response::new(body);
        *reply.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        let map = reply.headers_mut();
        for (name, value) in headers {
            if is_owned_header(&name) {
                continue;
            }
            match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
                (Ok(name), Ok(value)) => {
                    map.append(name, value);
                }
                _ => log(DOOR, &format!("dropped malformed response header {name:?}")),
            }
        }
        map.insert(header::SERVER, self.server_header.clone());
        if is_head && super::has_body(status) {
            // hyper sends no body to HEAD; the length is the one a GET would get
            if let Some(length) = reply.body().size_hint().exact() {
                reply.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
        }
        let map = reply.headers_mut();
        if close {
            map.insert(header::CONNECTION, HeaderValue::from_static("close"));
        } else if head.version == hyper::Version::HTTP_10
            && asks_keep_alive(head.headers.get_all(header::CONNECTION).iter().map(HeaderValue::as_bytes))
        {
            // hyper keeps an HTTP/1.0 connection only when the answer says so
            map.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        }
        reply
    }

    /// The CGI/1.1 meta-variables a web server would pass for this request.
    #[allow(clippy::too_many_arguments)]
    fn cgi_vars(
        &self,
        peer: &Peer,
        head: &hyper::http::request::Parts,
        target: &str,
        path: &str,
        query: &str,
        script: &str,
        body_length: usize,
    ) -> super::Vars {
        let mut vars = super::Vars::default();
        for (name, value) in &head.headers {
            let Some(variable) = header_variable(name.as_str()) else {
                continue;
            };
            let value = String::from_utf8_lossy(value.as_bytes());
            let separator = if variable == "HTTP_COOKIE" { "; " } else { ", " };
            vars.entry(variable)
                .and_modify(|joined: &mut String| {
                    joined.push_str(separator);
                    joined.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        let local_ip = peer.local.ip().to_canonical().to_string();
        let server_name = head
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map_or(local_ip.as_str(), host_name)
            .to_string();
        let minor_version = u8::from(head.version != hyper::Version::HTTP_10);
        let fixed = [
            ("GATEWAY_INTERFACE", "CGI/1.1".to_string()),
            ("REQUEST_METHOD", head.method.as_str().to_string()),
            ("REQUEST_URI", target.to_string()),
            ("QUERY_STRING", query.to_string()),
            ("SCRIPT_NAME", path.to_string()),
            ("SCRIPT_FILENAME", self.root.join(script).to_string_lossy().into_owned()),
            ("DOCUMENT_ROOT", self.root.to_string_lossy().into_owned()),
            ("SERVER_NAME", server_name),
            ("SERVER_ADDR", local_ip),
            ("SERVER_PORT", peer.local.port().to_string()),
            ("SERVER_PROTOCOL", format!("HTTP/1.{minor_version}")),
            ("SERVER_SOFTWARE", self.software.clone()),
            ("REQUEST_SCHEME", if peer.tls.is_some() { "https" } else { "http" }.to_string()),
            ("REMOTE_ADDR", peer.remote.ip().to_canonical().to_string()),
            ("REMOTE_PORT", peer.remote.port().to_string()),
            ("CONTENT_LENGTH", body_length.to_string()),
        ];
        vars.extend(fixed.into_iter().map(|(k, v)| (k.to_string(), v)));
        if let Some(content_type) = head.headers.get(header::CONTENT_TYPE) {
            vars.insert("CONTENT_TYPE".into(), String::from_utf8_lossy(content_type.as_bytes()).into_owned());
        }
        if let Some(tls) = &peer.tls {
            vars.extend(tls.iter().cloned());
        }
        vars
    }

    async fn static_file(&self, head: &hyper::http::request::Parts, folder: &'static str, relative: String) -> Answer {
        if head.method != hyper::Method::GET && head.method != hyper::Method::HEAD {
            let mut response = Response::text(405, "# only GET and HEAD here\r\n");
            response.headers.push(("Allow".into(), "GET, HEAD".into()));
            return Answer::Whole(response);
        }
        let base = self.root.join(folder);
        let opened = tokio::task::spawn_blocking(move || open_static(&base, &relative)).await.ok().flatten();
        let Some((mut file, path, length, modified)) = opened else {
            return Answer::Whole(not_found());
        };
        let mut headers = vec![
            ("Content-Type", content_type(&path).to_string()),
            ("Last-Modified", http_date(modified)),
            ("Accept-Ranges", "bytes".to_string()),
        ];
        // a conditional range is not worth the checks: the whole file is always right
        let range = match (head.headers.get(header::RANGE), head.headers.contains_key(header::IF_RANGE)) {
            (Some(value), false) => value.to_str().ok().and_then(|v| parse_range(v, length)),
            _ => None,
        };
        let (status, start, sent) = match range {
            None => (200, 0, length),
            Some(ByteRange::Unsatisfiable) => {
                let mut response = Response::text(416, "# range not satisfiable\r\n");
                response.headers.push(("Content-Range".into(), format!("bytes */{length}")));
                return Answer::Whole(response);
            }
            Some(ByteRange::Satisfiable(first, last)) => {
                headers.push(("Content-Range", format!("bytes {first}-{last}/{length}")));
                (206, first, last - first + 1)
            }
        };
        if start > 0 && file.seek(SeekFrom::Start(start)).is_err() {
            return Answer::Whole(not_found());
        }
        Answer::File(StaticFile { status, headers, file: tokio::fs::File::from_std(file), length: sent })
    }
}

/// Reads a request body of at most `limit` bytes (chunked or with a length) by its deadline.
async fn read_body(mut body: Incoming, limit: usize, declared: Option<u64>) -> Result<Vec<u8>, HttpError> {
    let deadline = Instant::now() + body_time(declared.unwrap_or(limit as u64));
    let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(0)).min(limit);
    let mut out = Vec::with_capacity(capacity);
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        match tokio::time::timeout_at(deadline, frame).await {
            Err(_) => return Err(HttpError::BodyTimeout),
            Ok(None) => return Ok(out),
            Ok(Some(Err(error))) => return Err(HttpError::BadBody(error.to_string())),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > limit {
                        return Err(HttpError::BodyOverLimit(limit));
                    }
                    out.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Opens `base/relative` if it is a regular file that really lies inside `base`, symbolic
/// links resolved.
fn open_static(base: &Path, relative: &str) -> Option<(std::fs::File, PathBuf, u64, SystemTime)> {
    let base = base.canonicalize().ok()?;
    let path = base.join(relative).canonicalize().ok()?;
    if !path.starts_with(&base) {
        log(DOOR, &format!("{}: link leads outside {}, refused", path.display(), base.display()));
        return None;
    }
    let file = std::fs::File::open(&path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    Some((file, path, meta.len(), modified))
}

fn not_found() -> Response {
    Response::text(404, "# not found\r\n")
}

fn is_owned_header(name: &str) -> bool {
    ["Content-Length", "Transfer-Encoding", "Connection", "Date", "Server", "Status", "Keep-Alive", "Upgrade"]
        .iter()
        .any(|owned| name.eq_ignore_ascii_case(owned))
}

// ---------------------------------------------------------------------------------------------
// Answer bodies
// ---------------------------------------------------------------------------------------------

/// The body of every answer: always of a known length, so hyper sends `Content-Length` and
/// never chunks. Its end (or its drop, when hyper sends no body) makes the connection idle.
pub struct ServeBody {
    kind: BodyKind,
    done: Option<Done>,
}

enum BodyKind {
    Bytes(Option<Bytes>),
    /// HEAD: the length of what a GET would get, and nothing.
    Head(u64),
    File { file: tokio::fs::File, remaining: u64, chunk: Vec<u8> },
}

impl ServeBody {
    fn bytes(body: Vec<u8>, done: Done) -> ServeBody {
        ServeBody { kind: BodyKind::Bytes(Some(Bytes::from(body))), done: Some(done) }
    }

    fn head(length: u64, done: Done) -> ServeBody {
        ServeBody { kind: BodyKind::Head(length), done: Some(done) }
    }

    fn file(file: tokio::fs::File, length: u64, done: Done) -> ServeBody {
        ServeBody { kind: BodyKind::File { file, remaining: length, chunk: Vec::new() }, done: Some(done) }
    }
}

impl Body for ServeBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let frame = match &mut this.kind {
            BodyKind::Bytes(bytes) => bytes.take().filter(|b| !b.is_empty()),
            BodyKind::Head(_) => None,
            BodyKind::File { file, remaining, chunk } => {
                if *remaining == 0 {
                    None
                } else {
                    let want = usize::try_from(*remaining).unwrap_or(FILE_CHUNK).min(FILE_CHUNK);
                    if chunk.len() < want {
                        chunk.resize(want, 0);
                    }
                    let mut buffer = ReadBuf::new(&mut chunk[..want]);
                    ready!(Pin::new(file).poll_read(cx, &mut buffer))?;
                    let read = buffer.filled().len();
                    if read == 0 {
                        // The file shrank while being sent; the announced length is now a
                        // lie, so the connection must end.
                        return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "static file shrank while being sent"))));
                    }
                    *remaining -= read as u64;
                    Some(Bytes::copy_from_slice(buffer.filled()))
                }
            }
        };
        match frame {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => {
                this.done.take();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Bytes(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            BodyKind::Head(_) => true,
            BodyKind::File { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(match &self.kind {
            BodyKind::Bytes(bytes) => bytes.as_ref().map_or(0, |b| b.len() as u64),
            BodyKind::Head(length) => *length,
            BodyKind::File { remaining, .. } => *remaining,
        })
    }
}

/// Marks the end of an answer's body on its connection.
struct Done {
    tracker: Arc<Tracker>,
    request_number: u64,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.tracker.finished(self.request_number);
    }
}

// ---------------------------------------------------------------------------------------------
// Connection phases and deadlines
// ---------------------------------------------------------------------------------------------

/// Ends a connection from the registry (to make room for another).
#[derive(Default)]
struct Closer {
    notify: Notify,
}

impl connections::Socket for Closer {
    fn set_read_timeout(&self, _timeout: Duration) -> io::Result<()> {
        Ok(())
    }

    fn close_now(&self) {
        // a stored permit: the supervisor sees it even if it is not waiting right now
        self.notify.notify_one();
    }
}

/// What a connection is doing, for its slot in the registry and for its deadlines.
struct Tracker {
    slot: Slot,
    closer: Arc<Closer>,
    state: Mutex<Track>,
}

struct Track {
    phase: Phase,
    since: Instant,
    /// Requests begun on the connection (the current one's number).
    requests: u64,
    /// The current request's answer has been handed to hyper.
    answering: bool,
    /// Written bytes not flushed yet (hyper flushes when its buffer is empty).
    unflushed: bool,
    last_write: Instant,
    /// Close by reading what the client still sends for a while (after a refusal).
    linger: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // nothing panics while holding the lock; a poisoned one still holds usable data
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tracker {
    fn new(slot: Slot, closer: Arc<Closer>) -> Tracker {
        let now = Instant::now();
        Tracker {
            slot,
            closer,
            // a new connection counts as sending its head from the start (see `connections`)
            state: Mutex::new(Track {
                phase: Phase::Head,
                since: now,
                requests: 0,
                answering: false,
                unflushed: false,
                last_write: now,
                linger: false,
            }),
        }
    }

    fn enter(&self, phase: Phase) {
        {
            let mut track = lock(&self.state);
            if track.phase == phase {
                return;
            }
            track.phase = phase;
            track.since = Instant::now();
        }
        // false: it was closed to make room, and its supervisor has been told
        let _ = self.slot.enter(phase);
    }

    /// hyper has read a request head: the body is next, or the answer.
    fn begin(&self, has_body: bool) -> u64 {
        let number = {
            let mut track = lock(&self.state);
            track.requests += 1;
            track.answering = false;
            track.requests
        };
        self.enter(if has_body { Phase::Body } else { Phase::Busy });
        number
    }

    /// The answer of request `number` goes to hyper now.
    fn answering(&self, number: u64) {
        let mut track = lock(&self.state);
        if track.requests == number {
            track.answering = true;
            track.last_write = Instant::now();
        }
    }

    /// The answer of request `number` has been handed over whole.
    fn finished(&self, number: u64) {
        let idle = {
            let track = lock(&self.state);
            track.requests == number && track.phase == Phase::Busy
        };
        if idle {
            self.enter(Phase::Idle);
        }
    }

    fn read_some(&self) {
        let idle = lock(&self.state).phase == Phase::Idle;
        if idle {
            self.enter(Phase::Head);
        }
    }

    fn wrote_some(&self) {
        let mut track = lock(&self.state);
        track.unflushed = true;
        track.last_write = Instant::now();
    }

    fn flushed(&self) {
        lock(&self.state).unflushed = false;
    }

    fn set_linger(&self) {
        lock(&self.state).linger = true;
    }

    fn lingers(&self) -> bool {
        lock(&self.state).linger
    }

    /// The deadline of the current phase, if it has one.
    fn deadline(&self) -> Option<Instant> {
        let track = lock(&self.state);
        match track.phase {
            Phase::Idle if track.unflushed => Some(track.last_write + WRITE_TIMEOUT),
            Phase::Idle => Some(track.since + IDLE_TIMEOUT),
            Phase::Head => Some(track.since + HEAD_TIME),
            // the body's deadline is kept where it is read
            Phase::Body => None,
            Phase::Busy if track.answering => Some(track.last_write + WRITE_TIMEOUT),
            // the application is computing
            Phase::Busy => None,
        }
    }

    fn next_check(&self) -> Instant {
        let soon = Instant::now() + CHECK_INTERVAL;
        self.deadline().map_or(soon, |deadline| deadline.min(soon))
    }

    /// The phase whose deadline has passed, if one has.
    fn expired(&self) -> Option<Phase> {
        let deadline = self.deadline()?;
        (deadline <= Instant::now()).then(|| lock(&self.state).phase)
    }
}

/// A connection's stream as hyper sees it: reads and writes tell the tracker.
struct Tracked<S> {
    inner: S,
    tracker: Arc<Tracker>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.tracker.read_some();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.tracker.wrote_some();
        }
        polled
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.tracker.wrote_some();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(()))) {
            this.tracker.flushed();
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn absolute_targets_are_reduced_to_origin_form() {
        assert_eq!(origin_form("/a?b").as_deref(), Some("/a?b"));
        assert_eq!(origin_form("http://h:1/x?y").as_deref(), Some("/x?y"));
        assert_eq!(origin_form("HTTP://h?y").as_deref(), Some("/?y"));
        assert_eq!(origin_form("http://h").as_deref(), Some("/"));
        assert_eq!(origin_form("ftp://h/x"), None);
        assert_eq!(origin_form("*"), None);
    }

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode("/fw/%2e%2E/x").as_deref(), Ok("/fw/../x"));
        assert_eq!(percent_decode("/a%C3%A4+b").as_deref(), Ok("/aä+b"));
        for bad in ["%", "%2", "%zz", "%00", "%ff", "%2F%"] {
            assert_eq!(percent_decode(bad), Err(HttpError::BadPath), "{bad:?}");
        }
    }

    #[test]
    fn entry_points_are_routed_with_or_without_prefix() {
        assert_eq!(route("/update.php"), Route::Script("update.php"));
        assert_eq!(
            route("/mtls/update/update.php"),
            Route::Script("update.php")
        );
        assert_eq!(route("/admin/admin.php"), Route::Script("admin/admin.php"));
        assert_eq!(
            route("/update/admin/admin.php"),
            Route::Script("admin/admin.php")
        );
        assert_eq!(
            route("/update-migrate.php"),
            Route::Script("update-migrate.php")
        );
        assert_eq!(route("/admin.php"), Route::NotFound);
        assert_eq!(route("/update.php/extra"), Route::NotFound);
        assert_eq!(route("/"), Route::Home);
    }

    #[test]
    fn static_folders_are_routed_and_traversal_refused() {
        let fw = |relative: &str| Route::Static {
            folder: "fw",
            relative: relative.into(),
        };
        assert_eq!(route("/fw/130178/ip232.bin"), fw("130178/ip232.bin"));
        assert_eq!(route("/mtls/update/fw/130178/"), Route::NotFound);
        assert_eq!(route("/mtls/update/fw/a.bin"), fw("a.bin"));
        assert_eq!(
            route("/web/logo.png"),
            Route::Static {
                folder: "web",
                relative: "logo.png".into()
            }
        );
        for refused in [
            "/fw/../config.xml",
            "/fw/./a",
            "/fw/",
            "/fw",
            "/fw//a",
            "/fw/.htaccess",
            "/fw/a\\b",
            "/config.xml",
            "/status/00-90-33.xml",
            "/backup/x/x.0.txt",
            "fw/a",
        ] {
            assert_eq!(route(refused), Route::NotFound, "{refused}");
        }
    }

    #[test]
    fn headers_become_cgi_variables_except_dangerous_ones() {
        assert_eq!(
            header_variable("User-Agent").as_deref(),
            Some("HTTP_USER_AGENT")
        );
        assert_eq!(header_variable("host").as_deref(), Some("HTTP_HOST"));
        assert_eq!(header_variable("Proxy"), None);
        assert_eq!(header_variable("X_Forwarded_For"), None);
        assert_eq!(header_variable("Content-Type"), None);
        assert_eq!(header_variable("Content-Length"), None);
    }

    #[test]
    fn only_a_host_with_an_optional_port_is_a_valid_host() {
        for good in [
            "update.example.com",
            "update.example.com:8080",
            "172.16.4.1",
            "172.16.4.1:80",
            "[::1]",
            "[fe80::1]:443",
            "my_host-1",
        ] {
            assert!(is_valid_host(good), "{good:?}");
        }
        for bad in [
            "",
            "evil.example:80/x?",
            "evil.example/x",
            "a b",
            "evil.example:",
            "evil.example:65536",
            "evil.example:+80",
            "evil.example:80:81",
            "user@evil.example",
            "[::1",
            "[]:80",
            "[::1]x",
            "[::1]:80/x",
            ":80",
            "evil.example#",
        ] {
            assert!(!is_valid_host(bad), "{bad:?}");
        }
        assert!(!is_valid_host(&"a".repeat(256)));
    }

    #[test]
    fn a_request_needs_one_valid_host_except_over_http_1_0() {
        let check = |hosts: &[&str], minor| check_hosts(hosts.iter().map(|h| h.as_bytes()), minor);
        assert_eq!(check(&["example:8080"], 1), Ok(()));
        assert_eq!(check(&[], 0), Ok(()), "HTTP/1.0 needs no Host");
        assert_eq!(check(&[], 1), Err(HttpError::BadHost));
        assert_eq!(check(&["a", "b"], 1), Err(HttpError::BadHost));
        for version in [0, 1] {
            assert_eq!(check(&["evil.example:80/x?"], version), Err(HttpError::BadHost), "HTTP/1.{version}");
        }
        assert_eq!(check(&[""], 1), Err(HttpError::BadHost));
        assert_eq!(HttpError::BadHost.status(), 400);
    }

    #[test]
    fn http_1_0_keep_alive_is_asked_by_token() {
        assert!(asks_keep_alive([&b"foo, Keep-Alive"[..]]));
        assert!(!asks_keep_alive([&b"close"[..]]));
        assert!(!asks_keep_alive(std::iter::empty()));
    }

    #[test]
    fn single_byte_ranges_are_understood_and_the_rest_ignored() {
        use ByteRange::*;
        assert_eq!(parse_range("bytes=0-99", 1000), Some(Satisfiable(0, 99)));
        assert_eq!(parse_range("bytes=500-", 1000), Some(Satisfiable(500, 999)));
        assert_eq!(parse_range("bytes=-100", 1000), Some(Satisfiable(900, 999)));
        assert_eq!(parse_range("bytes=-5000", 1000), Some(Satisfiable(0, 999)));
        assert_eq!(parse_range("bytes=900-5000", 1000), Some(Satisfiable(900, 999)));
        assert_eq!(parse_range("bytes=1000-", 1000), Some(Unsatisfiable));
        assert_eq!(parse_range("bytes=-0", 1000), Some(Unsatisfiable));
        for ignored in ["bytes=0-1,5-6", "bytes=5-1", "items=0-1", "bytes=a-b", "bytes=-", "bytes=+1-2", ""] {
            assert_eq!(parse_range(ignored, 1000), None, "{ignored:?}");
        }
    }

    #[test]
    fn server_name_drops_the_port() {
        assert_eq!(host_name("example.com:8080"), "example.com");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("example.com"), "example.com");
    }

    #[test]
    fn dates_are_imf_fixdates() {
        let at = |s: u64| http_date(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 GMT");
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(
            content_type(Path::new("a/B.HTML")),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("ip232.bin")),
            "application/octet-stream"
        );
        assert_eq!(content_type(Path::new("logo.png")), "image/png");
        assert_eq!(
            content_type(Path::new("noextension")),
            "application/octet-stream"
        );
    }

    proptest! {
        #[test]
        fn percent_decode_never_panics(raw in "[%0-9a-fA-F/.\\x00-\\x7f]{0,40}") {
            let _ = percent_decode(&raw);
        }

        #[test]
        fn percent_encoding_round_trips(text in "[^\\x00]{0,40}") {
            let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
            prop_assert_eq!(percent_decode(&encoded), Ok(text));
        }

        #[test]
        fn routes_never_escape_the_tree(segments in proptest::collection::vec("(\\.\\.|\\.|fw|web|admin|update\\.php|[a-z%\\\\]{0,4})", 0..6)) {
            let path = format!("/{}", segments.join("/"));
            match route(&path) {
                Route::Static { relative, .. } => {
                    prop_assert!(!relative.starts_with('/'));
                    prop_assert!(relative.split('/').all(|s| !s.is_empty() && !s.starts_with('.') && !s.contains('\\')));
                }
                Route::Script(_) | Route::Home => {
                    prop_assert!(!segments.iter().any(|s| s == ".." || s == "."));
                }
                Route::NotFound => {}
            }
        }
    }
}
