//! The built-in HTTP/1.1 listener (`update-server serve`): the three PHP entry points go to the
//! application as CGI requests, `fw/`, `www/` and `web/` are served as static files, the rest is 404.
//!
//! Meant for the quick start and small sites; production sits behind lighttpd and FastCGI.
//! Parsing (request head, path, routing) is pure and separately tested; the connection loop
//! only moves bytes.

use super::connections::{
    self, body_time, is_timeout, Deadline, DeadlineReader, Phase, Slot, HEAD_TIME,
};
use super::fastcgi::{call_handler, log, pool};
use super::{body_limit, body_too_large, reason_phrase, Handler, Request, Response, MAX_BODY_BYTES};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DOOR: &str = "serve";
/// Bound of the request line plus headers; above it the answer is 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Requests computed at once, and threads kept warm.
const WORKERS: usize = 8;
/// Time a write of our answer may stall before we give up on the client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time an idle keep-alive connection may wait for its next request (Apache's and lighttpd's
/// default). Devices poll with one request per connection; a browser reopens at once.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
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

// ---------------------------------------------------------------------------------------------
// Parsing (pure)
// ---------------------------------------------------------------------------------------------

/// What can be wrong with a request before it reaches the application.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("request line and headers exceed {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("malformed request line")]
    BadRequestLine,
    #[error("malformed header line")]
    BadHeader,
    #[error("unsupported HTTP version")]
    BadVersion,
    #[error("a request needs one Host header naming a host[:port] (HTTP/1.0 may leave it out)")]
    BadHost,
    #[error("request head not complete within the time allowed")]
    HeadTimeout,
    #[error("malformed or conflicting Content-Length")]
    BadLength,
    #[error("request bodies need a Content-Length (Transfer-Encoding is not supported)")]
    LengthRequired,
    #[error("request body of {0} bytes is too large")]
    BodyTooLarge(u64),
    #[error("request body of {0} bytes is over the {1} bytes this request takes")]
    BodyOverLimit(u64, usize),
    #[error("request path is not valid percent-encoded UTF-8")]
    BadPath,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge => 431,
            HttpError::HeadTimeout => 408,
            HttpError::LengthRequired => 411,
            HttpError::BodyTooLarge(_) | HttpError::BodyOverLimit(..) => 413,
            _ => 400,
        }
    }

    fn response(&self) -> Response {
        match self {
            HttpError::BodyTooLarge(_) => body_too_large(MAX_BODY_BYTES),
            HttpError::BodyOverLimit(_, limit) => body_too_large(*limit),
            other => Response::text(other.status(), format!("# {other}\r\n")),
        }
    }
}

/// Request line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent (origin form, or absolute form).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// Values of every header called `name`, in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection stays open after this request (HTTP/1.1 by default, HTTP/1.0
    /// only when asked).
    pub fn keep_alive(&self) -> bool {
        let has = |token: &str| {
            self.values("Connection")
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if self.minor_version >= 1 {
            !has("close")
        } else {
            has("keep-alive")
        }
    }

    /// The body length the client announced; bodies without Content-Length are refused.
    pub fn body_length(&self) -> Result<usize, HttpError> {
        if self.header("Transfer-Encoding").is_some() {
            return Err(HttpError::LengthRequired);
        }
        let mut lengths = self.values("Content-Length").flat_map(|v| v.split(','));
        let Some(first) = lengths.next() else {
            return Ok(0);
        };
        let first = first.trim();
        if lengths.any(|other| other.trim() != first) {
            return Err(HttpError::BadLength);
        }
        if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HttpError::BadLength);
        }
        let length: u64 = first
            .parse()
            .map_err(|_| HttpError::BodyTooLarge(u64::MAX))?;
        match usize::try_from(length) {
            Ok(n) if n <= MAX_BODY_BYTES => Ok(n),
            _ => Err(HttpError::BodyTooLarge(length)),
        }
    }

    fn expects_continue(&self) -> bool {
        self.minor_version >= 1
            && self
                .header("Expect")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
    }
}

/// Length of the request head at the start of `buf` (through the empty line), if complete.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(offset) = buf[from..].iter().position(|&b| b == b'\n') {
        let newline = from + offset;
        match buf.get(newline + 1..) {
            Some([b'\n', ..]) => return Some(newline + 2),
            Some([b'\r', b'\n', ..]) => return Some(newline + 3),
            _ => from = newline + 1,
        }
    }
    None
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a complete request head (as delimited by [`find_head_end`]).
pub fn parse_head(bytes: &[u8]) -> Result<RequestHead, HttpError> {
    let mut lines = bytes
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .skip_while(|line| line.is_empty());
    let request_line = lines.next().ok_or(HttpError::BadRequestLine)?;
    let (method, target, minor_version) = parse_request_line(request_line)?;
    let mut headers = Vec::new();
    for line in lines.take_while(|line| !line.is_empty()) {
        headers.push(parse_header_line(line)?);
    }
    let head = RequestHead {
        method,
        target,
        minor_version,
        headers,
    };
    // RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, with several, or with an
    // invalid one. An invalid one is refused rather than ignored: it would become
    // SERVER_NAME / HTTP_HOST and from there the URLs devices are told to fetch.
    let hosts: Vec<&str> = head.values("Host").collect();
    match hosts.as_slice() {
        [] if head.minor_version == 0 => {}
        [host] if is_valid_host(host) => {}
        _ => return Err(HttpError::BadHost),
    }
    Ok(head)
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

fn parse_request_line(line: &[u8]) -> Result<(String, String, u8), HttpError> {
    let line = std::str::from_utf8(line).map_err(|_| HttpError::BadRequestLine)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequestLine);
    };
    if !is_token(method) || target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HttpError::BadRequestLine);
    }
    let minor_version = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(HttpError::BadVersion),
    };
    Ok((method.to_string(), target.to_string(), minor_version))
}

fn parse_header_line(line: &[u8]) -> Result<(String, String), HttpError> {
    // A line starting with white space would be obsolete line folding, which RFC 9112 lets
    // a server refuse; accepting it invites request smuggling.
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(HttpError::BadHeader)?;
    let name = std::str::from_utf8(&line[..colon]).map_err(|_| HttpError::BadHeader)?;
    if !is_token(name) {
        return Err(HttpError::BadHeader);
    }
    let value = line[colon + 1..].trim_ascii();
    if value.iter().any(|&b| b == 0 || b == b'\r') {
        return Err(HttpError::BadHeader);
    }
    Ok((
        name.to_string(),
        String::from_utf8_lossy(value).into_owned(),
    ))
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
    let (year, month, day) = civil_from_days(days);
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

/// Year, month (1-12), day (1-31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
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

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

/// Serves HTTP on `listen` (`HOST:PORT`) for the install tree at `root`.
pub fn run(listen: &str, root: PathBuf, handler: Arc<dyn Handler>) -> io::Result<()> {
    let listener = TcpListener::bind(listen)
        .map_err(|e| io::Error::new(e.kind(), format!("{listen}: {e}")))?;
    let root = std::path::absolute(&root)?;
    let address = listener.local_addr()?;
    log(DOOR, &format!("listening on http://{address}/ for {}", root.display()));
    // the quick start: tell the operator what a device would ask
    println!(
        "update-server is serving {} on http://{address}/\ntry a device poll:\n  curl 'http://{address}/update.php?type=IP232&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57&ip=127.0.0.1'",
        root.display()
    );
    let site = Site {
        listener,
        root,
        handler,
        gate: pool::Gate::new(WORKERS),
        software: format!("update-server/{}", env!("CARGO_PKG_VERSION")),
    };
    // two descriptors per connection: its socket and the static file it may be sending
    connections::run(site, WORKERS, 2)
}

/// The body limit of requests for static files and unknown paths, which read no body.
const NON_SCRIPT_BODY_LIMIT: usize = 64 * 1024;

struct Site {
    listener: TcpListener,
    root: PathBuf,
    handler: Arc<dyn Handler>,
    gate: pool::Gate,
    software: String,
}

impl connections::Door for Site {
    type Connection = TcpStream;
    const NAME: &'static str = DOOR;

    fn accept(&self) -> io::Result<TcpStream> {
        self.listener.accept().map(|(stream, _)| stream)
    }

    fn serve(&self, stream: &TcpStream, slot: &Slot) {
        self.serve_connection(stream, slot);
    }

    /// 503 without waiting: the answer fits in any socket's send buffer, and what the client
    /// has sent already is read first so that closing does not reset the answer away.
    fn turn_away(&self, stream: &TcpStream) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let mut sink = [0u8; 4096];
        for _ in 0..4 {
            if !matches!((&*stream).read(&mut sink), Ok(n) if n > 0) {
                break;
            }
        }
        let _ = (&*stream).write_all(BUSY_ANSWER);
        let _ = stream.shutdown(Shutdown::Write);
    }
}

/// How a connection goes on after an exchange.
enum Next {
    KeepAlive,
    Close,
    /// Close after reading what the client may still be sending, so that it sees our error
    /// answer instead of a reset.
    CloseLingering,
}

/// One client connection: the socket and what has been read but not consumed.
struct Connection<'a> {
    stream: &'a TcpStream,
    /// Its place among the open connections, where its phase is kept up to date.
    slot: &'a Slot,
    /// Requests answered so far.
    answered: usize,
    buffer: Vec<u8>,
    peer: SocketAddr,
    local: SocketAddr,
    software: &'a str,
}

enum Head {
    Complete(usize),
    /// The client closed (or was closed to make room) between requests, or stayed idle.
    Closed,
    TooLarge,
    TimedOut,
}

impl Site {
    fn serve_connection(&self, stream: &TcpStream, slot: &Slot) {
        let addresses = stream
            .peer_addr()
            .and_then(|peer| Ok((peer, stream.local_addr()?)));
        let setup = addresses.and_then(|a| {
            stream.set_nodelay(true)?;
            stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
            Ok(a)
        });
        let (peer, local) = match setup {
            Ok(addresses) => addresses,
            Err(error) => return log(DOOR, &format!("connection setup failed: {error}")),
        };
        let mut connection = Connection {
            stream,
            slot,
            answered: 0,
            buffer: Vec::new(),
            peer,
            local,
            software: &self.software,
        };
        loop {
            match self.exchange(&mut connection) {
                Ok(Next::KeepAlive) => connection.answered += 1,
                Ok(Next::Close) => return,
                Ok(Next::CloseLingering) => return linger_close(stream),
                Err(error) => return log(DOOR, &format!("{peer}: {error}")),
            }
        }
    }

    /// Reads one request and answers it.
    fn exchange(&self, connection: &mut Connection) -> io::Result<Next> {
        let head_length = match connection.read_head()? {
            Head::Complete(length) => length,
            Head::Closed => return Ok(Next::Close),
            Head::TooLarge => return connection.refuse(&HttpError::HeadTooLarge),
            Head::TimedOut => return connection.refuse(&HttpError::HeadTimeout),
        };
        let parsed = parse_head(&connection.buffer[..head_length]);
        connection.buffer.drain(..head_length);
        let head = match parsed {
            Ok(head) => head,
            Err(error) => return connection.refuse(&error),
        };
        let length = match head.body_length() {
            Ok(length) => length,
            Err(error) => return connection.refuse(&error),
        };
        if length > 0 {
            // refused before reading, so a body the application would refuse is never held
            let limit = self.body_limit(connection, &head, length);
            if length > limit {
                return connection.refuse(&HttpError::BodyOverLimit(length as u64, limit));
            }
        }
        if length > connection.buffer.len() {
            if !connection.slot.enter(Phase::Body) {
                return Ok(Next::Close);
            }
            if head.expects_continue() {
                connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
        }
        let body = connection.read_body(length)?;
        if !connection.slot.enter(Phase::Busy) {
            return Ok(Next::Close);
        }
        let keep_alive = head.keep_alive();
        self.answer(connection, &head, body, keep_alive)?;
        Ok(if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    fn answer(
        &self,
        connection: &mut Connection,
        head: &RequestHead,
        body: Vec<u8>,
        keep_alive: bool,
    ) -> io::Result<()> {
        let reply = Reply { head, keep_alive };
        let Some(target) = origin_form(&head.target) else {
            return connection.send(&reply, &HttpError::BadRequestLine.response());
        };
        let (raw_path, query) = target.split_once('?').unwrap_or((&target, ""));
        let path = match percent_decode(raw_path) {
            Ok(path) => path,
            Err(error) => return connection.send(&reply, &error.response()),
        };
        match route(&path) {
            Route::Script(script) => {
                let vars =
                    self.cgi_vars(connection, head, &target, &path, query, script, body.len());
                let response =
                    call_handler(&*self.handler, &self.gate, Request { vars, body }, DOOR);
                connection.send(&reply, &response)
            }
            Route::Static { folder, relative } => {
                self.send_file(connection, &reply, folder, &relative)
            }
            Route::Home => {
                let mut response = Response::text(302, "# see admin/admin.php\r\n");
                response
                    .headers
                    .push(("Location".into(), "/admin/admin.php".into()));
                connection.send(&reply, &response)
            }
            Route::NotFound => connection.send(&reply, &not_found()),
        }
    }

    /// The largest body the request `head` may carry: the handler's limit for a script,
    /// [`NON_SCRIPT_BODY_LIMIT`] for anything else (nothing else reads a body).
    fn body_limit(&self, connection: &Connection, head: &RequestHead, length: usize) -> usize {
        let Some(target) = origin_form(&head.target) else {
            return NON_SCRIPT_BODY_LIMIT;
        };
        let (raw_path, query) = target.split_once('?').unwrap_or((&target, ""));
        let Ok(path) = percent_decode(raw_path) else {
            return NON_SCRIPT_BODY_LIMIT;
        };
        match route(&path) {
            Route::Script(script) => {
                let vars = self.cgi_vars(connection, head, &target, &path, query, script, length);
                body_limit(&*self.handler, &vars)
            }
            _ => NON_SCRIPT_BODY_LIMIT,
        }
    }

    /// The CGI/1.1 meta-variables a web server would pass for this request.
    #[allow(clippy::too_many_arguments)]
    fn cgi_vars(
        &self,
        connection: &Connection,
        head: &RequestHead,
        target: &str,
        path: &str,
        query: &str,
        script: &str,
        body_length: usize,
    ) -> HashMap<String, String> {
        let mut vars = HashMap::new();
        for (name, value) in &head.headers {
            let Some(variable) = header_variable(name) else {
                continue;
            };
            let separator = if variable == "HTTP_COOKIE" {
                "; "
            } else {
                ", "
            };
            vars.entry(variable)
                .and_modify(|joined: &mut String| {
                    joined.push_str(separator);
                    joined.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
        let local_ip = connection.local.ip().to_canonical().to_string();
        let server_name = head
            .header("Host")
            .map_or(local_ip.as_str(), host_name)
            .to_string();
        let fixed = [
            ("GATEWAY_INTERFACE", "CGI/1.1".to_string()),
            ("REQUEST_METHOD", head.method.clone()),
            ("REQUEST_URI", target.to_string()),
            ("QUERY_STRING", query.to_string()),
            ("SCRIPT_NAME", path.to_string()),
            (
                "SCRIPT_FILENAME",
                self.root.join(script).to_string_lossy().into_owned(),
            ),
            ("DOCUMENT_ROOT", self.root.to_string_lossy().into_owned()),
            ("SERVER_NAME", server_name),
            ("SERVER_ADDR", local_ip.clone()),
            ("SERVER_PORT", connection.local.port().to_string()),
            ("SERVER_PROTOCOL", format!("HTTP/1.{}", head.minor_version)),
            ("SERVER_SOFTWARE", self.software.clone()),
            ("REQUEST_SCHEME", "http".to_string()),
            (
                "REMOTE_ADDR",
                connection.peer.ip().to_canonical().to_string(),
            ),
            ("REMOTE_PORT", connection.peer.port().to_string()),
            ("CONTENT_LENGTH", body_length.to_string()),
        ];
        vars.extend(fixed.into_iter().map(|(k, v)| (k.to_string(), v)));
        if let Some(content_type) = head.header("Content-Type") {
            vars.insert("CONTENT_TYPE".into(), content_type.to_string());
        }
        vars
    }

    fn send_file(
        &self,
        connection: &mut Connection,
        reply: &Reply,
        folder: &str,
        relative: &str,
    ) -> io::Result<()> {
        if reply.head.method != "GET" && reply.head.method != "HEAD" {
            let mut response = Response::text(405, "# only GET and HEAD here\r\n");
            response.headers.push(("Allow".into(), "GET, HEAD".into()));
            return connection.send(reply, &response);
        }
        match self.open_static(folder, relative) {
            Some((file, path, length, modified)) => {
                let headers = [
                    ("Content-Type", content_type(&path).to_string()),
                    ("Last-Modified", http_date(modified)),
                ];
                connection.send_file(reply, &headers, file, length)
            }
            None => connection.send(reply, &not_found()),
        }
    }

    /// Opens `root/folder/relative` if it is a regular file that really lies inside the folder,
    /// symbolic links resolved.
    fn open_static(
        &self,
        folder: &str,
        relative: &str,
    ) -> Option<(File, PathBuf, u64, SystemTime)> {
        let base = self.root.join(folder).canonicalize().ok()?;
        let path = base.join(relative).canonicalize().ok()?;
        if !path.starts_with(&base) {
            log(
                DOOR,
                &format!(
                    "{}: link leads outside {}, refused",
                    path.display(),
                    base.display()
                ),
            );
            return None;
        }
        let file = File::open(&path).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let modified = meta.modified().unwrap_or(UNIX_EPOCH);
        Some((file, path, meta.len(), modified))
    }
}

fn not_found() -> Response {
    Response::text(404, "# not found\r\n")
}

/// What the answer depends on besides the response itself.
struct Reply<'a> {
    head: &'a RequestHead,
    keep_alive: bool,
}

impl Connection<'_> {
    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        (&mut &*self.stream).write_all(bytes)
    }

    /// Reads until the buffer holds a complete request head. A connection's first request
    /// must be complete within [`HEAD_TIME`] of the connection; a kept-alive connection may
    /// wait [`IDLE_TIMEOUT`] for the first byte of its next request, which then has
    /// [`HEAD_TIME`] from that byte.
    fn read_head(&mut self) -> io::Result<Head> {
        let mut chunk = [0u8; 4096];
        let mut waiting = self.buffer.is_empty();
        let kept_alive = self.answered > 0;
        let mut deadline = Deadline::after(if waiting && kept_alive {
            IDLE_TIMEOUT
        } else {
            HEAD_TIME
        });
        // a new connection counts as sending its head from the start (see `connections`)
        if !self.slot.enter(if waiting && kept_alive {
            Phase::Idle
        } else {
            Phase::Head
        }) {
            return Ok(Head::Closed);
        }
        loop {
            // Clients may send a stray CRLF after a body; RFC 9112 says to skip it.
            let blank = self
                .buffer
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            self.buffer.drain(..blank);
            if let Some(end) = find_head_end(&self.buffer) {
                return Ok(if end > MAX_HEAD_BYTES {
                    Head::TooLarge
                } else {
                    Head::Complete(end)
                });
            }
            if self.buffer.len() > MAX_HEAD_BYTES {
                return Ok(Head::TooLarge);
            }
            let mut source = DeadlineReader {
                stream: self.stream,
                deadline,
            };
            let read = match source.read(&mut chunk) {
                Ok(0) if self.buffer.is_empty() => return Ok(Head::Closed),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a request head",
                    ))
                }
                Ok(read) => read,
                Err(error) if waiting && is_timeout(&error) => return Ok(Head::Closed),
                Err(error) if is_timeout(&error) => return Ok(Head::TimedOut),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            self.buffer.extend_from_slice(&chunk[..read]);
            if waiting {
                waiting = false;
                if !self.slot.enter(Phase::Head) {
                    return Ok(Head::Closed);
                }
                if kept_alive {
                    deadline = Deadline::after(HEAD_TIME);
                }
            }
        }
    }

    fn read_body(&mut self, length: usize) -> io::Result<Vec<u8>> {
        let buffered = length.min(self.buffer.len());
        let mut body = Vec::with_capacity(length);
        body.extend(self.buffer.drain(..buffered));
        let missing = (length - body.len()) as u64;
        // the whole body within its time, however the client spreads it out
        let source = DeadlineReader {
            stream: self.stream,
            deadline: Deadline::after(body_time(length as u64)),
        };
        source.take(missing).read_to_end(&mut body)?;
        if body.len() < length {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a request body",
            ));
        }
        Ok(body)
    }

    /// Answers a request that cannot be read to its end, and closes.
    fn refuse(&mut self, error: &HttpError) -> io::Result<Next> {
        log(DOOR, &format!("{}: {error}", self.peer));
        let head = RequestHead {
            method: String::new(),
            target: String::new(),
            minor_version: 1,
            headers: Vec::new(),
        };
        self.send(
            &Reply {
                head: &head,
                keep_alive: false,
            },
            &error.response(),
        )?;
        Ok(Next::CloseLingering)
    }

    fn send(&mut self, reply: &Reply, response: &Response) -> io::Result<()> {
        let has_body = !matches!(response.status, 100..=199 | 204 | 304);
        let mut out = self.status_and_headers(reply, response.status, &response.headers);
        if has_body {
            out.extend_from_slice(
                format!("Content-Length: {}\r\n", response.body.len()).as_bytes(),
            );
        }
        out.extend_from_slice(b"\r\n");
        if has_body && reply.head.method != "HEAD" {
            out.extend_from_slice(&response.body);
        }
        self.write(&out)
    }

    fn send_file(
        &mut self,
        reply: &Reply,
        headers: &[(&str, String)],
        file: File,
        length: u64,
    ) -> io::Result<()> {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        let mut out = self.status_and_headers(reply, 200, &headers);
        out.extend_from_slice(format!("Content-Length: {length}\r\n\r\n").as_bytes());
        self.write(&out)?;
        if reply.head.method == "HEAD" {
            return Ok(());
        }
        let copied = io::copy(&mut file.take(length), &mut &*self.stream)?;
        if copied < length {
            // The file shrank while being sent; the announced length is now a lie, so the
            // connection must end.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "static file shrank while being sent",
            ));
        }
        Ok(())
    }

    /// Status line, the standard headers and the response's own headers (minus the ones this
    /// listener owns, and any that would break the header block).
    fn status_and_headers(
        &self,
        reply: &Reply,
        status: u16,
        headers: &[(String, String)],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let standard = format!(
            "HTTP/1.1 {status} {}\r\nDate: {}\r\nServer: {}\r\n",
            reason_phrase(status),
            http_date(SystemTime::now()),
            self.software
        );
        out.extend_from_slice(standard.as_bytes());
        for (name, value) in headers {
            if is_owned_header(name) {
                continue;
            }
            if !is_token(name) || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                log(DOOR, &format!("dropped malformed response header {name:?}"));
                continue;
            }
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if !reply.keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if reply.head.minor_version == 0 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out
    }
}

fn is_owned_header(name: &str) -> bool {
    [
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Date",
        "Server",
        "Status",
    ]
    .iter()
    .any(|owned| name.eq_ignore_ascii_case(owned))
}

/// Closes after an error answer without destroying it: closing a TCP socket with unread input
/// sends a reset, which can make the client drop our answer unread. So stop writing, then
/// read and discard for a short while first.
fn linger_close(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    if stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .is_err()
    {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut sink = [0u8; 8192];
    let mut discarded = 0usize;
    while discarded < MAX_BODY_BYTES && Instant::now() < deadline {
        match (&*stream).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(read) => discarded += read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(text: &str) -> Result<RequestHead, HttpError> {
        parse_head(text.as_bytes())
    }

    fn with_headers(headers: &[(&str, &str)], minor_version: u8) -> RequestHead {
        RequestHead {
            method: "PUT".into(),
            target: "/".into(),
            minor_version,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn head_end_is_found_with_crlf_and_bare_lf() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY"),
            Some(27)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.0\n\nBODY"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(find_head_end(b""), None);
    }

    #[test]
    fn a_request_head_is_parsed() {
        let parsed =
            head("GET /update.php?a=b HTTP/1.1\r\nHost: example:8080\r\nX-Thing:  v  \r\n\r\n")
                .unwrap();
        assert_eq!(parsed.method, "GET");
        assert_eq!(parsed.target, "/update.php?a=b");
        assert_eq!(parsed.minor_version, 1);
        assert_eq!(parsed.header("host"), Some("example:8080"));
        assert_eq!(parsed.header("X-THING"), Some("v"));
    }

    #[test]
    fn malformed_heads_are_refused() {
        assert_eq!(
            head("GET /  HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(HttpError::BadRequestLine)
        );
        assert_eq!(head("GET / HTTP/2.0\r\n\r\n"), Err(HttpError::BadVersion));
        assert_eq!(
            head("G@T / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(HttpError::BadRequestLine)
        );
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n"), Err(HttpError::BadHost));
        assert_eq!(
            head("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(HttpError::BadHost)
        );
        assert_eq!(
            head("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"),
            Err(HttpError::BadHeader)
        );
        assert_eq!(
            head("GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
            Err(HttpError::BadHeader)
        );
        assert_eq!(
            head("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n"),
            Err(HttpError::BadHeader)
        );
        assert!(
            head("GET / HTTP/1.0\r\n\r\n").is_ok(),
            "HTTP/1.0 needs no Host"
        );
    }

    #[test]
    fn body_length_comes_from_content_length_only() {
        assert_eq!(with_headers(&[], 1).body_length(), Ok(0));
        assert_eq!(
            with_headers(&[("Content-Length", "12")], 1).body_length(),
            Ok(12)
        );
        assert_eq!(
            with_headers(&[("Content-Length", "5, 5")], 1).body_length(),
            Ok(5)
        );
        for bad in ["", "-1", "+5", "0x10", "1 2"] {
            assert_eq!(
                with_headers(&[("Content-Length", bad)], 1).body_length(),
                Err(HttpError::BadLength),
                "{bad:?}"
            );
        }
        let conflicting = with_headers(&[("Content-Length", "5"), ("content-length", "6")], 1);
        assert_eq!(conflicting.body_length(), Err(HttpError::BadLength));
        let chunked = with_headers(&[("Transfer-Encoding", "chunked")], 1);
        assert_eq!(chunked.body_length(), Err(HttpError::LengthRequired));
        let huge = with_headers(&[("Content-Length", "99999999999999999999999")], 1);
        assert_eq!(huge.body_length().map_err(|e| e.status()), Err(413));
        let over = (MAX_BODY_BYTES + 1).to_string();
        assert_eq!(
            with_headers(&[("Content-Length", &over)], 1)
                .body_length()
                .map_err(|e| e.status()),
            Err(413)
        );
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        assert!(with_headers(&[], 1).keep_alive());
        assert!(!with_headers(&[("Connection", "Close")], 1).keep_alive());
        assert!(!with_headers(&[], 0).keep_alive());
        assert!(with_headers(&[("Connection", "foo, keep-alive")], 0).keep_alive());
    }

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
    fn a_head_with_an_invalid_host_is_refused() {
        for version in ["1.1", "1.0"] {
            let text = format!("GET /update.php HTTP/{version}\r\nHost: evil.example:80/x?\r\n\r\n");
            assert_eq!(head(&text), Err(HttpError::BadHost), "HTTP/{version}");
            assert_eq!(HttpError::BadHost.status(), 400);
        }
        assert_eq!(head("GET / HTTP/1.1\r\nHost:\r\n\r\n"), Err(HttpError::BadHost));
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
        fn parse_head_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Some(end) = find_head_end(&bytes) {
                let _ = parse_head(&bytes[..end]);
            }
            let _ = parse_head(&bytes);
        }

        #[test]
        fn parse_head_never_panics_on_near_misses(
            method in "[A-Z@ ]{0,8}", target in "[ -~]{0,30}", version in "HTTP/[0-2]\\.[0-2]",
            headers in proptest::collection::vec("[ -~]{0,30}", 0..5),
        ) {
            let text = format!("{method} {target} {version}\r\n{}\r\n\r\n", headers.join("\r\n"));
            let _ = parse_head(text.as_bytes());
        }

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
