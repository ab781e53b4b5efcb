//! The FastCGI front door: a small FastCGI/1.0 responder on std threads, one request at a time
//! per connection, several connections at once.
//!
//! Layout: the wire format (record headers, name-value pairs) is pure and never panics; a
//! [`Session`] turns records into actions without doing I/O; `serve_connection` drives a session
//! over a socket; [`connections`] accepts, caps and times out connections as it does for the
//! built-in HTTP listener.

use super::connections::{
    self, body_time, is_timeout, Deadline, DeadlineReader, Phase, Slot, HEAD_TIME,
};
use super::{body_limit, body_too_large, Handler, Request, Response, MAX_BODY_BYTES};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------------------------

const VERSION_1: u8 = 1;
/// Size of every record header.
pub const HEADER_LEN: usize = 8;
/// Largest content one record can carry (the length field is 16 bits).
pub const MAX_CONTENT_LEN: usize = u16::MAX as usize;

/// Record types (FastCGI 1.0, section 8).
pub mod kind {
    pub const BEGIN_REQUEST: u8 = 1;
    pub const ABORT_REQUEST: u8 = 2;
    pub const END_REQUEST: u8 = 3;
    pub const PARAMS: u8 = 4;
    pub const STDIN: u8 = 5;
    pub const STDOUT: u8 = 6;
    pub const STDERR: u8 = 7;
    pub const DATA: u8 = 8;
    pub const GET_VALUES: u8 = 9;
    pub const GET_VALUES_RESULT: u8 = 10;
    pub const UNKNOWN_TYPE: u8 = 11;
}

const ROLE_RESPONDER: u16 = 1;
const FLAG_KEEP_CONN: u8 = 1;

const STATUS_REQUEST_COMPLETE: u8 = 0;
const STATUS_CANT_MPX_CONN: u8 = 1;
const STATUS_UNKNOWN_ROLE: u8 = 3;

/// Everything that can be wrong with bytes a peer sent us.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("record header needs {HEADER_LEN} bytes, got {0}")]
    ShortHeader(usize),
    #[error("unsupported FastCGI version {0} (not a FastCGI peer?)")]
    UnsupportedVersion(u8),
    #[error("name-value length field runs past the end of the params stream")]
    TruncatedLength,
    #[error("name-value pair needs {needed} bytes but only {left} are left in the params stream")]
    TruncatedPair { needed: usize, left: usize },
    #[error("a name or value of {0} bytes is too long for FastCGI")]
    PairTooLong(usize),
    #[error("BEGIN_REQUEST body must be 8 bytes, got {0}")]
    BadBeginBody(usize),
    #[error("BEGIN_REQUEST with the null request id")]
    NullRequestId,
    #[error("second BEGIN_REQUEST for request {0}")]
    DuplicateBegin(u16),
    #[error("STDIN for request {0} before its PARAMS ended")]
    StdinBeforeParams(u16),
}

/// A parsed record header; the content and padding follow it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: u8,
    pub request_id: u16,
    pub content_length: u16,
    pub padding_length: u8,
}

/// Reads a record header from the first [`HEADER_LEN`] bytes of `bytes`.
pub fn parse_record_header(bytes: &[u8]) -> Result<RecordHeader, ProtocolError> {
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(ProtocolError::ShortHeader(bytes.len()));
    };
    if header[0] != VERSION_1 {
        return Err(ProtocolError::UnsupportedVersion(header[0]));
    }
    Ok(RecordHeader {
        kind: header[1],
        request_id: u16::from_be_bytes([header[2], header[3]]),
        content_length: u16::from_be_bytes([header[4], header[5]]),
        padding_length: header[6],
    })
}

/// The wire form of `header` (reserved byte zero).
pub fn encode_record_header(header: &RecordHeader) -> [u8; HEADER_LEN] {
    let id = header.request_id.to_be_bytes();
    let length = header.content_length.to_be_bytes();
    [
        VERSION_1,
        header.kind,
        id[0],
        id[1],
        length[0],
        length[1],
        header.padding_length,
        0,
    ]
}

/// Appends records of `kind` carrying `content`, split at [`MAX_CONTENT_LEN`] and padded to a
/// multiple of 8 as the specification recommends; empty content gives one empty record, which
/// is how a stream is closed.
pub fn push_records(out: &mut Vec<u8>, kind: u8, request_id: u16, content: &[u8]) {
    let mut chunks = content.chunks(MAX_CONTENT_LEN).peekable();
    if chunks.peek().is_none() {
        push_one_record(out, kind, request_id, &[]);
    }
    for chunk in chunks {
        push_one_record(out, kind, request_id, chunk);
    }
}

fn push_one_record(out: &mut Vec<u8>, kind: u8, request_id: u16, chunk: &[u8]) {
    // `push_records` never passes more than MAX_CONTENT_LEN bytes, so the casts are exact.
    let padding = (8 - chunk.len() % 8) % 8;
    let header = RecordHeader {
        kind,
        request_id,
        content_length: chunk.len() as u16,
        padding_length: padding as u8,
    };
    out.extend_from_slice(&encode_record_header(&header));
    out.extend_from_slice(chunk);
    out.extend_from_slice(&[0u8; 8][..padding]);
}

/// Decodes a complete PARAMS (or GET_VALUES) stream into name-value pairs.
///
/// Invalid UTF-8 is replaced rather than refused: a query string with raw bytes must still
/// reach the application, which validates every value anyway.
pub fn decode_params(mut data: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut pairs = Vec::new();
    while !data.is_empty() {
        let name_len = take_length(&mut data)?;
        let value_len = take_length(&mut data)?;
        let needed = name_len.saturating_add(value_len);
        if needed > data.len() {
            return Err(ProtocolError::TruncatedPair {
                needed,
                left: data.len(),
            });
        }
        let (name, rest) = data.split_at(name_len);
        let (value, rest) = rest.split_at(value_len);
        pairs.push((lossy(name), lossy(value)));
        data = rest;
    }
    Ok(pairs)
}

fn lossy(bytes: &[u8]) -> String {
    // the standard check of valid text is several times faster than the chunked walk of
    // `from_utf8_lossy`, and the thirty-odd parameters of every request are almost always valid
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Takes one name-value length: one byte below 128, else four bytes with the top bit set.
fn take_length(data: &mut &[u8]) -> Result<usize, ProtocolError> {
    let first = *data.first().ok_or(ProtocolError::TruncatedLength)?;
    if first & 0x80 == 0 {
        *data = &data[1..];
        return Ok(usize::from(first));
    }
    let Some(long) = data.get(..4) else {
        return Err(ProtocolError::TruncatedLength);
    };
    let length = u32::from_be_bytes([long[0] & 0x7f, long[1], long[2], long[3]]);
    *data = &data[4..];
    usize::try_from(length).map_err(|_| ProtocolError::PairTooLong(usize::MAX))
}

/// Encodes name-value pairs as a PARAMS / GET_VALUES_RESULT stream.
pub fn encode_params<N: AsRef<str>, V: AsRef<str>>(
    pairs: &[(N, V)],
) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    for (name, value) in pairs {
        let (name, value) = (name.as_ref().as_bytes(), value.as_ref().as_bytes());
        put_length(&mut out, name.len())?;
        put_length(&mut out, value.len())?;
        out.extend_from_slice(name);
        out.extend_from_slice(value);
    }
    Ok(out)
}

fn put_length(out: &mut Vec<u8>, length: usize) -> Result<(), ProtocolError> {
    if length < 0x80 {
        out.push(length as u8);
        return Ok(());
    }
    match u32::try_from(length) {
        Ok(long) if long <= 0x7fff_ffff => {
            out.extend_from_slice(&(long | 0x8000_0000).to_be_bytes());
            Ok(())
        }
        _ => Err(ProtocolError::PairTooLong(length)),
    }
}

fn end_request_body(protocol_status: u8) -> [u8; 8] {
    // appStatus (4 bytes) is 0: the HTTP status travels in the CGI `Status:` header.
    [0, 0, 0, 0, protocol_status, 0, 0, 0]
}

/// The records that answer request `request_id` with `response` and end it.
pub fn encode_response(request_id: u16, response: &Response) -> Vec<u8> {
    let payload = response.to_cgi_bytes();
    let records = payload.len() / MAX_CONTENT_LEN + 3;
    let mut out = Vec::with_capacity(payload.len() + records * (HEADER_LEN + 8));
    push_records(&mut out, kind::STDOUT, request_id, &payload);
    push_records(&mut out, kind::STDOUT, request_id, &[]);
    push_records(
        &mut out,
        kind::END_REQUEST,
        request_id,
        &end_request_body(STATUS_REQUEST_COMPLETE),
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Session: the per-connection protocol state, without I/O
// ---------------------------------------------------------------------------------------------

/// Upper bound of the PARAMS stream of one request; web servers send a few KiB.
pub const MAX_PARAMS_BYTES: usize = 256 * 1024;
/// How much of a refused body we read and throw away, and for how long, before answering and
/// closing, so the web server sees our answer instead of a broken pipe. nginx and Apache send
/// a body they have buffered at memory speed, so this covers any body a client can hand them;
/// a client trickling a huge body in gets its answer when the time is up.
const MAX_DRAIN_BYTES: usize = 256 * 1024 * 1024;
const MAX_DRAIN_TIME: Duration = Duration::from_secs(5);

/// What the connection loop must do after a record.
#[derive(Debug)]
enum Action {
    Nothing,
    /// Write these management / END_REQUEST records; close afterwards if asked.
    Reply {
        bytes: Vec<u8>,
        then_close: bool,
    },
    /// A request is complete: answer it (by calling the application or with a ready answer).
    Answer {
        request_id: u16,
        keep_conn: bool,
        work: Work,
    },
    /// The peer broke the protocol; close the connection.
    Fail(ProtocolError),
}

#[derive(Debug)]
enum Work {
    Handle(Request),
    Refuse(Response),
}

/// The request being received on a connection.
#[derive(Debug)]
struct Pending {
    id: u16,
    keep_conn: bool,
    params: Vec<u8>,
    /// Set once the PARAMS stream has ended.
    vars: Option<super::Vars>,
    body: Vec<u8>,
    /// The largest body the application takes for this request, known once PARAMS ended.
    limit: usize,
    /// Set once the request is known to be refused; from then on input is only counted.
    refusal: Option<Response>,
    refused_at: Option<Instant>,
    drained: usize,
}

/// Protocol state of one connection: at most one request at a time (we answer
/// FCGI_MPXS_CONNS=0 and refuse a second request with FCGI_CANT_MPX_CONN).
struct Session<'h> {
    max_conns: usize,
    current: Option<Pending>,
    /// Asked for each request's body limit; without it the global ceiling applies.
    limits: Option<&'h dyn Handler>,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("max_conns", &self.max_conns).field("current", &self.current).finish()
    }
}

impl<'h> Session<'h> {
    fn new(max_conns: usize) -> Session<'h> {
        Session {
            max_conns,
            current: None,
            limits: None,
        }
    }

    /// A session that asks `handler` for each request's body limit before the body arrives.
    fn with_limits(max_conns: usize, handler: &'h dyn Handler) -> Session<'h> {
        Session {
            limits: Some(handler),
            ..Session::new(max_conns)
        }
    }

    /// What the connection is doing as far as the records received so far tell.
    fn phase(&self) -> Phase {
        match &self.current {
            None => Phase::Idle,
            Some(pending) if pending.vars.is_none() && pending.refusal.is_none() => Phase::Head,
            Some(_) => Phase::Body,
        }
    }

    /// CONTENT_LENGTH of the request being received (0 if none or unknown).
    fn declared_body_length(&self) -> u64 {
        self.current
            .as_ref()
            .and_then(|pending| pending.vars.as_ref())
            .map_or(0, |vars| declared_length(vars) as u64)
    }

    fn on_record(&mut self, header: &RecordHeader, content: &[u8]) -> Action {
        let id = header.request_id;
        match header.kind {
            kind::BEGIN_REQUEST => self.on_begin(id, content),
            kind::ABORT_REQUEST => self.on_abort(id),
            kind::PARAMS => {
                let limits = self.limits;
                self.with_current(id, |pending| pending.on_params(content, limits))
            }
            kind::STDIN => self.on_stdin(id, content),
            kind::GET_VALUES => self.on_get_values(content),
            // DATA belongs to the Filter role; the others flow from us to the web server.
            kind::DATA
            | kind::END_REQUEST
            | kind::STDOUT
            | kind::STDERR
            | kind::GET_VALUES_RESULT
            | kind::UNKNOWN_TYPE => Action::Nothing,
            unknown => {
                let mut bytes = Vec::with_capacity(16);
                push_records(
                    &mut bytes,
                    kind::UNKNOWN_TYPE,
                    0,
                    &[unknown, 0, 0, 0, 0, 0, 0, 0],
                );
                Action::Reply {
                    bytes,
                    then_close: false,
                }
            }
        }
    }

    fn on_begin(&mut self, id: u16, content: &[u8]) -> Action {
        if id == 0 {
            return Action::Fail(ProtocolError::NullRequestId);
        }
        if content.len() != 8 {
            return Action::Fail(ProtocolError::BadBeginBody(content.len()));
        }
        let role = u16::from_be_bytes([content[0], content[1]]);
        let keep_conn = content[2] & FLAG_KEEP_CONN != 0;
        match &self.current {
            Some(pending) if pending.id == id => Action::Fail(ProtocolError::DuplicateBegin(id)),
            Some(_) => end_request(id, STATUS_CANT_MPX_CONN, false),
            None if role != ROLE_RESPONDER => end_request(id, STATUS_UNKNOWN_ROLE, !keep_conn),
            None => {
                self.current = Some(Pending {
                    id,
                    keep_conn,
                    params: Vec::new(),
                    vars: None,
                    body: Vec::new(),
                    limit: MAX_BODY_BYTES,
                    refusal: None,
                    refused_at: None,
                    drained: 0,
                });
                Action::Nothing
            }
        }
    }

    fn on_abort(&mut self, id: u16) -> Action {
        match self.current.take() {
            Some(pending) if pending.id == id => {
                end_request(id, STATUS_REQUEST_COMPLETE, !pending.keep_conn)
            }
            other => {
                // Aborts for requests we do not know are ignored, as the specification says.
                self.current = other;
                Action::Nothing
            }
        }
    }

    fn on_stdin(&mut self, id: u16, content: &[u8]) -> Action {
        let action = self.with_current(id, |pending| pending.on_stdin(content));
        if matches!(action, Action::Answer { .. } | Action::Fail(_)) {
            self.current = None;
        }
        action
    }

    /// Runs `f` on the current request if `id` is it; records for other ids are ignored.
    fn with_current(&mut self, id: u16, f: impl FnOnce(&mut Pending) -> Action) -> Action {
        match self.current.as_mut() {
            Some(pending) if pending.id == id => f(pending),
            _ => Action::Nothing,
        }
    }

    fn on_get_values(&self, content: &[u8]) -> Action {
        let Ok(asked) = decode_params(content) else {
            return Action::Fail(ProtocolError::TruncatedLength);
        };
        let max = self.max_conns.to_string();
        let answers: Vec<(String, String)> = asked
            .into_iter()
            .filter_map(|(name, _)| {
                let value = match name.as_str() {
                    "FCGI_MAX_CONNS" | "FCGI_MAX_REQS" => max.clone(),
                    "FCGI_MPXS_CONNS" => "0".to_string(),
                    _ => return None,
                };
                Some((name, value))
            })
            .collect();
        // Names we answer are short ASCII constants, so encoding cannot fail.
        let body = encode_params(&answers).unwrap_or_default();
        let mut bytes = Vec::with_capacity(body.len() + 16);
        push_records(&mut bytes, kind::GET_VALUES_RESULT, 0, &body);
        Action::Reply {
            bytes,
            then_close: false,
        }
    }
}

fn end_request(id: u16, protocol_status: u8, then_close: bool) -> Action {
    let mut bytes = Vec::with_capacity(16);
    push_records(
        &mut bytes,
        kind::END_REQUEST,
        id,
        &end_request_body(protocol_status),
    );
    Action::Reply { bytes, then_close }
}

impl Pending {
    /// From now on the request's input is only counted, and `response` is the answer.
    fn refuse(&mut self, response: Response) {
        self.body = Vec::new();
        self.refusal = Some(response);
        self.refused_at = Some(Instant::now());
    }

    fn on_params(&mut self, content: &[u8], limits: Option<&dyn Handler>) -> Action {
        if self.vars.is_some() || self.refusal.is_some() {
            return Action::Nothing;
        }
        if !content.is_empty() {
            if self.params.len() + content.len() > MAX_PARAMS_BYTES {
                self.params = Vec::new();
                self.refuse(Response::text(
                    431,
                    "# request parameters too large - exit\r\n",
                ));
            } else {
                self.params.extend_from_slice(content);
            }
            return Action::Nothing;
        }
        match decode_params(&self.params) {
            Ok(pairs) => {
                let mut vars: super::Vars = pairs.into_iter().collect();
                strip_proxy_prefix(&mut vars);
                self.limit = limits.map_or(MAX_BODY_BYTES, |handler| body_limit(handler, &vars));
                if declared_length(&vars) > self.limit {
                    self.refuse(body_too_large(self.limit));
                }
                self.vars = Some(vars);
            }
            Err(error) => {
                log(
                    "fastcgi",
                    &format!("request {}: bad params: {error}", self.id),
                );
                self.refuse(Response::text(
                    400,
                    "# malformed FastCGI parameters - exit\r\n",
                ));
            }
        }
        self.params = Vec::new();
        Action::Nothing
    }

    fn on_stdin(&mut self, content: &[u8]) -> Action {
        if self.vars.is_none() && self.refusal.is_none() {
            return Action::Fail(ProtocolError::StdinBeforeParams(self.id));
        }
        if content.is_empty() {
            return self.finish(self.keep_conn);
        }
        if self.refusal.is_some() {
            self.drained += content.len();
            let too_long = self.refused_at.is_some_and(|at| at.elapsed() > MAX_DRAIN_TIME);
            if self.drained > MAX_DRAIN_BYTES || too_long {
                // Not worth reading further: answer now and drop the connection.
                return self.finish(false);
            }
        } else if self.body.len() + content.len() > self.limit {
            // a body without CONTENT_LENGTH (or longer than declared) ends up here
            self.refuse(body_too_large(self.limit));
        } else {
            if self.body.is_empty() {
                let declared = self.vars.as_ref().map_or(0, declared_length);
                self.body.reserve(declared.min(self.limit));
            }
            self.body.extend_from_slice(content);
        }
        Action::Nothing
    }

    fn finish(&mut self, keep_conn: bool) -> Action {
        let work = match self.refusal.take() {
            Some(response) => Work::Refuse(response),
            None => Work::Handle(Request {
                vars: self.vars.take().unwrap_or_default(),
                body: std::mem::take(&mut self.body),
            }),
        };
        Action::Answer {
            request_id: self.id,
            keep_conn,
            work,
        }
    }
}

/// Apache's mod_proxy_fcgi names the script `proxy:fcgi://HOST:PORT/path/to/update.php` (and
/// `proxy:balancer://NAME/…` behind a balancer): the file is the path after the host, which is
/// what PHP-FPM takes from it too (without a query string a `RewriteRule` may have appended).
fn strip_proxy_prefix(vars: &mut super::Vars) {
    if let Some(filename) = vars.get_mut("SCRIPT_FILENAME") {
        if let Some(path) = proxied_script_path(filename) {
            *filename = path.to_string();
        }
    }
}

/// The file path inside a `proxy:fcgi://` or `proxy:balancer://` script name, if it is one.
fn proxied_script_path(filename: &str) -> Option<&str> {
    let prefix = ["proxy:fcgi://", "proxy:balancer://"]
        .into_iter()
        .find(|p| filename.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p)))?;
    let rest = &filename[prefix.len()..];
    let path = &rest[rest.find('/')?..];
    Some(path.split_once('?').map_or(path, |(path, _)| path))
}

/// CONTENT_LENGTH as the web server declared it; unparsable counts as zero because the body
/// itself is bounded while it arrives.
fn declared_length(vars: &super::Vars) -> usize {
    vars.get("CONTENT_LENGTH")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// Time a write of our answer may stall before we give up on the peer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time an idle kept-alive connection may wait for its next request. Only web servers with a
/// pool of kept-alive connections (nginx `keepalive`, Apache `enablereuse`) keep them; they
/// notice the close and open a new one.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An accepted connection of either socket family.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl connections::Socket for Stream {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(timeout)),
            Stream::Unix(s) => s.set_read_timeout(Some(timeout)),
        }
    }

    fn close_now(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Stream {
    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(Some(timeout)),
            Stream::Unix(s) => s.set_write_timeout(Some(timeout)),
        }
    }

    fn peer_ip(&self) -> Option<IpAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().ok().map(|a| a.ip().to_canonical()),
            Stream::Unix(_) => None,
        }
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match *self {
            Stream::Tcp(s) => (&*s).flush(),
            Stream::Unix(s) => (&*s).flush(),
        }
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("unexpected end of stream inside a record")]
    Truncated,
}

/// What the connection needs from the rest of the server.
struct Service {
    handler: Arc<dyn Handler>,
    gate: pool::Gate,
    /// FCGI_WEB_SERVER_ADDRS: if set, TCP peers not listed are turned away.
    allowed_peers: Option<Vec<IpAddr>>,
}

impl Service {
    fn serve(&self, stream: &Stream, slot: &Slot) {
        let result = stream
            .set_write_timeout(WRITE_TIMEOUT)
            .map_err(ConnectionError::from)
            .and_then(|()| serve_connection(stream, &*self.handler, &self.gate, slot));
        if let Err(error) = result {
            log("fastcgi", &format!("connection closed: {error}"));
        }
    }

    fn peer_allowed(&self, stream: &Stream) -> bool {
        match (&self.allowed_peers, stream.peer_ip()) {
            (Some(allowed), Some(ip)) => allowed.contains(&ip),
            _ => true,
        }
    }
}

fn allowed_peers_from_env() -> Option<Vec<IpAddr>> {
    let list = std::env::var("FCGI_WEB_SERVER_ADDRS").ok()?;
    Some(
        list.split(',')
            .filter_map(|a| a.trim().parse().ok())
            .collect(),
    )
}

/// Serves FastCGI requests on one connection until the peer closes it, the protocol breaks, a
/// request without FCGI_KEEP_CONN has been answered, a deadline passes, or the connection is
/// closed to make room for another (see [`connections`]).
///
/// Deadlines: a new connection's first request must have its PARAMS complete within
/// [`HEAD_TIME`] of the connection; a kept-alive one may wait [`IDLE_TIMEOUT`] for its next
/// request, which then has [`HEAD_TIME`] from its first byte; the body has [`body_time`] of
/// its CONTENT_LENGTH from the end of PARAMS.
fn serve_connection(
    stream: &Stream,
    handler: &dyn Handler,
    gate: &pool::Gate,
    slot: &Slot,
) -> Result<(), ConnectionError> {
    let source = DeadlineReader {
        stream,
        deadline: Deadline::after(HEAD_TIME),
    };
    let mut reader = BufReader::with_capacity(16 * 1024, source);
    let mut session = Session::with_limits(slot.cap(), handler);
    // grown to the largest record seen; most records are far smaller than the 64 KiB maximum
    let mut content: Vec<u8> = Vec::with_capacity(4096);
    // a new connection: its first request is on its way
    let mut phase = Phase::Head;
    loop {
        let between_requests = session.phase() == Phase::Idle;
        let Some(header) = read_header(&mut reader, between_requests)? else {
            return Ok(());
        };
        if phase == Phase::Idle {
            if !slot.enter(Phase::Head) {
                return Ok(());
            }
            reader.get_mut().deadline = Deadline::after(HEAD_TIME);
            phase = Phase::Head;
        }
        let length = usize::from(header.content_length);
        let record_len = length + usize::from(header.padding_length);
        if content.len() < record_len {
            content.resize(record_len, 0);
        }
        read_exact_or_truncated(&mut reader, &mut content[..record_len])?;
        match session.on_record(&header, &content[..length]) {
            Action::Nothing => {}
            Action::Reply { bytes, then_close } => {
                (&mut &*stream).write_all(&bytes)?;
                if then_close {
                    return Ok(());
                }
            }
            Action::Answer {
                request_id,
                keep_conn,
                work,
            } => {
                if !slot.enter(Phase::Busy) {
                    return Ok(());
                }
                let response = match work {
                    Work::Handle(request) => call_handler(handler, gate, request, "fastcgi"),
                    Work::Refuse(response) => response,
                };
                (&mut &*stream).write_all(&encode_response(request_id, &response))?;
                if !keep_conn {
                    return Ok(());
                }
            }
            Action::Fail(error) => return Err(error.into()),
        }
        let now = session.phase();
        if now != phase {
            if !slot.enter(now) {
                return Ok(());
            }
            match now {
                Phase::Idle => reader.get_mut().deadline = Deadline::after(IDLE_TIMEOUT),
                Phase::Body => {
                    let declared = session.declared_body_length();
                    reader.get_mut().deadline = Deadline::after(body_time(declared));
                }
                Phase::Head | Phase::Busy => {}
            }
            phase = now;
        }
    }
}

/// Reads the next record header. `None` means the peer is done: end of stream at a record
/// boundary, or, between requests, the idle time-out.
fn read_header(
    reader: &mut BufReader<DeadlineReader<Stream>>,
    idle: bool,
) -> Result<Option<RecordHeader>, ConnectionError> {
    let at_boundary = match reader.fill_buf() {
        Ok(buffered) => buffered.is_empty(),
        Err(error) if idle && is_timeout(&error) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    if at_boundary {
        return Ok(None);
    }
    let mut bytes = [0u8; HEADER_LEN];
    read_exact_or_truncated(reader, &mut bytes)?;
    Ok(Some(parse_record_header(&bytes)?))
}

fn read_exact_or_truncated(reader: &mut impl Read, buf: &mut [u8]) -> Result<(), ConnectionError> {
    reader.read_exact(buf).map_err(|error| match error.kind() {
        io::ErrorKind::UnexpectedEof => ConnectionError::Truncated,
        _ => ConnectionError::Io(error),
    })
}

/// Calls the application with at most `gate`'s number of requests in flight; a panic becomes a
/// 500 answer so the worker thread and the connection survive it.
pub(crate) fn call_handler(
    handler: &dyn Handler,
    gate: &pool::Gate,
    request: Request,
    door: &str,
) -> Response {
    let _permit = gate.enter();
    run_handler(handler, request, door)
}

/// Calls the application; a panic becomes a 500 answer so the thread and the connection
/// survive it.
pub(crate) fn run_handler(handler: &dyn Handler, request: Request, door: &str) -> Response {
    match panic::catch_unwind(AssertUnwindSafe(|| handler.handle(request))) {
        Ok(response) => response,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            log(door, &format!("request handler panicked: {what}"));
            Response::text(500, "# internal error - exit\r\n")
        }
    }
}

/// One line on stderr. Under lighttpd's `bin-path` that is the file named by
/// `server.breakagelog`; without that setting lighttpd points it at /dev/null.
pub(crate) fn log(door: &str, message: &str) {
    eprintln!("update-server: {door}: {message}");
}

// ---------------------------------------------------------------------------------------------
// Listening
// ---------------------------------------------------------------------------------------------

/// A listening socket of either family.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Makes a blocking accept(2) give up after `timeout` (`WouldBlock`), so that a thread
    /// waiting for a connection can tell whether it is still needed. A blocking accept wakes
    /// one waiting thread per connection; waiting in poll(2) would wake them all.
    fn set_accept_timeout(&self, timeout: Duration) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        };
        let value = libc::timeval {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
        };
        // SAFETY: SO_RCVTIMEO takes a timeval, passed with its size; fd is our listening socket.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&value as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (stream, _) = l.accept()?;
                // Answers go out in one write; do not let Nagle hold the last segment back.
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
            Listener::Unix(l) => l.accept().map(|(stream, _)| Stream::Unix(stream)),
        }
    }
}

/// True when fd 0 is a listening socket, which is how lighttpd's `bin-path` (and systemd's
/// `StandardInput=socket`) start a FastCGI application.
pub fn stdin_is_listening_socket() -> bool {
    let mut accepting: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into `accepting`, which is that large;
    // on a descriptor that is not a socket it fails with ENOTSOCK and touches nothing.
    let rc = unsafe {
        libc::getsockopt(
            0,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut length,
        )
    };
    rc == 0 && accepting != 0
}

/// The address family of the socket on fd 0.
fn stdin_socket_family() -> io::Result<libc::c_int> {
    // SAFETY: sockaddr_storage is plain data for which all-zero bytes are a valid value.
    let mut address: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `length` bytes into `address`, which is that large.
    let rc = unsafe {
        libc::getsockname(
            0,
            (&mut address as *mut libc::sockaddr_storage).cast(),
            &mut length,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(libc::c_int::from(address.ss_family))
}

fn inherited_listener() -> io::Result<Listener> {
    if !stdin_is_listening_socket() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fd 0 is not a listening socket",
        ));
    }
    let family = stdin_socket_family()?;
    // SAFETY: fd 0 is an open listening socket (checked above) and from here on this listener
    // is its only user: in FastCGI mode nothing reads stdin.
    let fd = unsafe { OwnedFd::from_raw_fd(0) };
    let listener = match family {
        libc::AF_UNIX => Listener::Unix(UnixListener::from(fd)),
        libc::AF_INET | libc::AF_INET6 => Listener::Tcp(TcpListener::from(fd)),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd 0 is a socket of unsupported address family {other}"),
            ))
        }
    };
    // A web server may hand over a non-blocking socket; our accept loop wants to block.
    match &listener {
        Listener::Unix(l) => l.set_nonblocking(false)?,
        Listener::Tcp(l) => l.set_nonblocking(false)?,
    }
    Ok(listener)
}

/// Binds `unix:/path` (replacing a stale socket file) or `HOST:PORT`.
fn bind(address: &str) -> io::Result<Listener> {
    let Some(path) = address.strip_prefix("unix:") else {
        return TcpListener::bind(address).map(Listener::Tcp);
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "another server is listening there"));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{path} exists and is not a socket; refusing to replace it"),
            ))
        }
        Err(_) => {}
    }
    UnixListener::bind(path).map(Listener::Unix)
}

/// Serves FastCGI on the listening socket inherited on fd 0.
pub fn serve_inherited(handler: Arc<dyn Handler>, workers: usize) -> io::Result<()> {
    serve(inherited_listener()?, handler, workers)
}

/// Serves FastCGI on `unix:/path` or `HOST:PORT`.
pub fn serve_listen(address: &str, handler: Arc<dyn Handler>, workers: usize) -> io::Result<()> {
    let listener = bind(address).map_err(|e| super::listen_error(address, e))?;
    serve(listener, handler, workers)
}

fn serve(listener: Listener, handler: Arc<dyn Handler>, workers: usize) -> io::Result<()> {
    let workers = workers.max(1);
    listener.set_accept_timeout(connections::SURPLUS_LINGER)?;
    let door = FastCgiDoor {
        listener,
        service: Service {
            handler,
            gate: pool::Gate::new(workers),
            allowed_peers: allowed_peers_from_env(),
        },
    };
    // one descriptor per connection: the application's own files are in the reserve
    connections::run(door, workers, 1)
}

/// The FastCGI door for [`connections::run`]: a connection is closed, never queued, when every
/// slot is being answered (the web server then answers 503 or tries another backend).
struct FastCgiDoor {
    listener: Listener,
    service: Service,
}

impl connections::Door for FastCgiDoor {
    type Connection = Stream;
    const NAME: &'static str = "fastcgi";

    fn accept(&self) -> io::Result<Stream> {
        self.listener.accept()
    }

    fn welcome(&self, stream: &Stream) -> bool {
        let allowed = self.service.peer_allowed(stream);
        if !allowed {
            log(
                "fastcgi",
                "connection from an address not in FCGI_WEB_SERVER_ADDRS refused",
            );
        }
        allowed
    }

    fn serve(&self, stream: &Stream, slot: &Slot) {
        self.service.serve(stream, slot);
    }

    fn turn_away(&self, _stream: &Stream) {
        // closing is the answer: dropping the stream does it
    }
}

// ---------------------------------------------------------------------------------------------
// The request gate (shared with the built-in HTTP listener)
// ---------------------------------------------------------------------------------------------

/// A gate for requests: every connection has a thread of its own (see [`connections`]), and
/// the [`Gate`] keeps the number of requests being *computed* at once at `workers`.
pub(crate) mod pool {
    use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

    fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        // nothing panics while holding the lock, so a poisoned one still holds a usable count
        mutex.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A counting semaphore: at most `permits` holders at once.
    pub(crate) struct Gate {
        count: Mutex<Count>,
        freed: Condvar,
    }

    struct Count {
        free: usize,
        /// Threads in `enter` waiting for a permit: a permit given back wakes one only when
        /// there is one, because a condition variable's notify is a futex system call even
        /// with nobody waiting, once per request.
        waiting: usize,
    }

    pub(crate) struct Permit<'a>(&'a Gate);

    impl Gate {
        pub(crate) fn new(permits: usize) -> Gate {
            Gate {
                count: Mutex::new(Count { free: permits.max(1), waiting: 0 }),
                freed: Condvar::new(),
            }
        }

        pub(crate) fn enter(&self) -> Permit<'_> {
            let mut count = lock(&self.count);
            while count.free == 0 {
                count.waiting += 1;
                count = self.freed.wait(count).unwrap_or_else(PoisonError::into_inner);
                count.waiting -= 1;
            }
            count.free -= 1;
            Permit(self)
        }
    }

    impl Drop for Permit<'_> {
        fn drop(&mut self) {
            let mut count = lock(&self.0.count);
            count.free += 1;
            let someone_waits = count.waiting > 0;
            drop(count);
            if someone_waits {
                self.0.freed.notify_one();
            }
        }
    }
}

/// The record stream without sockets, for the fuzz target in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Shutdown;

    fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_records(&mut out, kind, id, content);
        out
    }

    /// Splits a byte stream into records, checking every header on the way.
    fn split_records(mut bytes: &[u8]) -> Vec<(RecordHeader, Vec<u8>)> {
        let mut records = Vec::new();
        while !bytes.is_empty() {
            let header = parse_record_header(bytes).expect("valid header");
            let length = usize::from(header.content_length);
            let total = HEADER_LEN + length + usize::from(header.padding_length);
            records.push((header, bytes[HEADER_LEN..HEADER_LEN + length].to_vec()));
            bytes = &bytes[total..];
        }
        records
    }

    fn begin_body(role: u16, keep_conn: bool) -> [u8; 8] {
        let role = role.to_be_bytes();
        [role[0], role[1], u8::from(keep_conn), 0, 0, 0, 0, 0]
    }

    fn feed(session: &mut Session, kind: u8, id: u16, content: &[u8]) -> Action {
        let header = RecordHeader {
            kind,
            request_id: id,
            content_length: 0,
            padding_length: 0,
        };
        session.on_record(&header, content)
    }

    fn params(pairs: &[(&str, &str)]) -> Vec<u8> {
        encode_params(pairs).expect("short params")
    }

    /// Feeds BEGIN_REQUEST and a complete PARAMS stream for request `id`.
    fn begin(session: &mut Session, id: u16, keep_conn: bool, pairs: &[(&str, &str)]) {
        assert!(matches!(
            feed(session, kind::BEGIN_REQUEST, id, &begin_body(1, keep_conn)),
            Action::Nothing
        ));
        assert!(matches!(
            feed(session, kind::PARAMS, id, &params(pairs)),
            Action::Nothing
        ));
        assert!(matches!(
            feed(session, kind::PARAMS, id, &[]),
            Action::Nothing
        ));
    }

    fn end_status(action: &Action) -> Option<(u16, u8, bool)> {
        match action {
            Action::Reply { bytes, then_close } => {
                let records = split_records(bytes);
                let (header, body) = records.first()?;
                (header.kind == kind::END_REQUEST)
                    .then(|| (header.request_id, body[4], *then_close))
            }
            _ => None,
        }
    }

    #[test]
    fn record_header_round_trips() {
        let header = RecordHeader {
            kind: kind::STDIN,
            request_id: 0x1234,
            content_length: 0xfedc,
            padding_length: 4,
        };
        assert_eq!(
            parse_record_header(&encode_record_header(&header)),
            Ok(header)
        );
    }

    #[test]
    fn record_header_refuses_short_input_and_other_versions() {
        assert_eq!(
            parse_record_header(&[1, 1, 0]),
            Err(ProtocolError::ShortHeader(3))
        );
        assert_eq!(
            parse_record_header(b"GET / HTTP/1.1"),
            Err(ProtocolError::UnsupportedVersion(b'G'))
        );
    }

    #[test]
    fn params_use_short_and_long_lengths() {
        let long_value = "v".repeat(300);
        let encoded = params(&[("A", "1"), ("LONG", &long_value)]);
        assert_eq!(&encoded[..4], &[1, 1, b'A', b'1']);
        assert_eq!(&encoded[4..9], &[4, 0x80, 0, 1, 44]);
        let decoded = decode_params(&encoded).unwrap();
        assert_eq!(
            decoded,
            vec![("A".into(), "1".into()), ("LONG".into(), long_value)]
        );
    }

    #[test]
    fn params_with_bogus_lengths_are_refused() {
        assert_eq!(
            decode_params(&[0x80, 0, 0]),
            Err(ProtocolError::TruncatedLength)
        );
        assert_eq!(decode_params(&[3]), Err(ProtocolError::TruncatedLength));
        assert_eq!(
            decode_params(&[3, 1, b'a']),
            Err(ProtocolError::TruncatedPair { needed: 4, left: 1 })
        );
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'x'];
        assert!(matches!(
            decode_params(&huge),
            Err(ProtocolError::TruncatedPair { .. })
        ));
    }

    #[test]
    fn invalid_utf8_in_params_is_replaced_not_refused() {
        let decoded = decode_params(&[1, 2, b'Q', 0xff, b'a']).unwrap();
        assert_eq!(decoded, vec![("Q".into(), "\u{fffd}a".into())]);
    }

    #[test]
    fn long_streams_are_split_and_padded() {
        let bytes = record(kind::STDOUT, 7, &vec![b'x'; MAX_CONTENT_LEN + 10]);
        let records = split_records(&bytes);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].1.len(), MAX_CONTENT_LEN);
        assert_eq!(records[1].1.len(), 10);
        assert_eq!(bytes.len() % 8, 0);
        assert_eq!(record(kind::STDOUT, 7, &[]).len(), HEADER_LEN);
    }

    #[test]
    fn response_is_stdout_then_empty_stdout_then_end_request() {
        let response = Response::text(200, "hello");
        let records = split_records(&encode_response(3, &response));
        let kinds: Vec<u8> = records.iter().map(|(h, _)| h.kind).collect();
        assert_eq!(kinds, vec![kind::STDOUT, kind::STDOUT, kind::END_REQUEST]);
        assert_eq!(records[0].1, response.to_cgi_bytes());
        assert!(records[1].1.is_empty());
        assert_eq!(records[2].1, vec![0; 8]);
        assert!(records.iter().all(|(h, _)| h.request_id == 3));
    }

    #[test]
    fn a_complete_request_reaches_the_application() {
        let mut session = Session::new(4);
        begin(
            &mut session,
            1,
            true,
            &[("REQUEST_METHOD", "PUT"), ("CONTENT_LENGTH", "5")],
        );
        assert!(matches!(
            feed(&mut session, kind::STDIN, 1, b"hel"),
            Action::Nothing
        ));
        assert!(matches!(
            feed(&mut session, kind::STDIN, 1, b"lo"),
            Action::Nothing
        ));
        match feed(&mut session, kind::STDIN, 1, &[]) {
            Action::Answer {
                request_id: 1,
                keep_conn: true,
                work: Work::Handle(request),
            } => {
                assert_eq!(request.var("REQUEST_METHOD"), Some("PUT"));
                assert_eq!(request.body, b"hello");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(session.phase(), Phase::Idle);
    }

    #[test]
    fn a_second_request_on_a_busy_connection_is_refused() {
        let mut session = Session::new(4);
        begin(&mut session, 1, true, &[]);
        let action = feed(&mut session, kind::BEGIN_REQUEST, 2, &begin_body(1, true));
        assert_eq!(end_status(&action), Some((2, STATUS_CANT_MPX_CONN, false)));
        assert!(matches!(
            feed(&mut session, kind::STDIN, 2, b"ignored"),
            Action::Nothing
        ));
        assert!(matches!(
            feed(&mut session, kind::STDIN, 1, &[]),
            Action::Answer { request_id: 1, .. }
        ));
    }

    #[test]
    fn other_roles_are_refused() {
        let mut session = Session::new(4);
        let action = feed(&mut session, kind::BEGIN_REQUEST, 1, &begin_body(2, false));
        assert_eq!(end_status(&action), Some((1, STATUS_UNKNOWN_ROLE, true)));
        let action = feed(&mut session, kind::BEGIN_REQUEST, 1, &begin_body(3, true));
        assert_eq!(end_status(&action), Some((1, STATUS_UNKNOWN_ROLE, false)));
    }

    #[test]
    fn unknown_record_types_get_unknown_type() {
        let mut session = Session::new(4);
        let Action::Reply {
            bytes,
            then_close: false,
        } = feed(&mut session, 42, 0, b"")
        else {
            panic!("expected a reply");
        };
        let records = split_records(&bytes);
        assert_eq!(records[0].0.kind, kind::UNKNOWN_TYPE);
        assert_eq!(records[0].1, vec![42, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn get_values_reports_no_multiplexing() {
        let mut session = Session::new(9);
        let asked = params(&[
            ("FCGI_MPXS_CONNS", ""),
            ("FCGI_MAX_CONNS", ""),
            ("OTHER", ""),
        ]);
        let Action::Reply { bytes, .. } = feed(&mut session, kind::GET_VALUES, 0, &asked) else {
            panic!("expected a reply");
        };
        let records = split_records(&bytes);
        assert_eq!(records[0].0.kind, kind::GET_VALUES_RESULT);
        let values = decode_params(&records[0].1).unwrap();
        assert_eq!(
            values,
            vec![
                ("FCGI_MPXS_CONNS".into(), "0".into()),
                ("FCGI_MAX_CONNS".into(), "9".into())
            ]
        );
    }

    #[test]
    fn a_declared_oversized_body_is_refused_with_413() {
        let mut session = Session::new(4);
        let too_long = (MAX_BODY_BYTES + 1).to_string();
        begin(&mut session, 1, true, &[("CONTENT_LENGTH", &too_long)]);
        assert!(matches!(
            feed(&mut session, kind::STDIN, 1, b"data"),
            Action::Nothing
        ));
        match feed(&mut session, kind::STDIN, 1, &[]) {
            Action::Answer {
                keep_conn: true,
                work: Work::Refuse(response),
                ..
            } => {
                assert_eq!(response.status, 413);
                assert!(response.body.starts_with(b"# request body too large"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_oversized_body_stream_is_refused_with_413() {
        let mut session = Session::new(4);
        begin(&mut session, 1, true, &[]);
        let chunk = vec![0u8; MAX_CONTENT_LEN];
        for _ in 0..=MAX_BODY_BYTES / MAX_CONTENT_LEN {
            assert!(matches!(
                feed(&mut session, kind::STDIN, 1, &chunk),
                Action::Nothing
            ));
        }
        assert!(matches!(
            feed(&mut session, kind::STDIN, 1, &[]),
            Action::Answer {
                work: Work::Refuse(Response { status: 413, .. }),
                ..
            }
        ));
    }

    #[test]
    fn apache_proxy_script_names_become_file_paths() {
        for (given, path) in [
            ("proxy:fcgi://127.0.0.1:9000/var/www/up/update.php", Some("/var/www/up/update.php")),
            ("PROXY:FCGI://[::1]:9000/var/www/up/admin/admin.php", Some("/var/www/up/admin/admin.php")),
            ("proxy:balancer://pool/srv/update.php?sn=1", Some("/srv/update.php")),
            ("proxy:fcgi://127.0.0.1:9000", None),
            ("/var/www/up/update.php", None),
            ("proxy:http://host/x", None),
        ] {
            assert_eq!(proxied_script_path(given), path, "{given}");
        }
        let mut vars: crate::http::Vars = [("SCRIPT_FILENAME".to_string(), "proxy:fcgi://h:1/r/update.php".to_string())].into_iter().collect();
        strip_proxy_prefix(&mut vars);
        assert_eq!(vars["SCRIPT_FILENAME"], "/r/update.php");
    }

    #[test]
    fn the_handlers_body_limit_is_applied_before_the_body_arrives() {
        struct Small;
        impl Handler for Small {
            fn handle(&self, _: Request) -> Response {
                Response::text(200, "")
            }
            fn body_limit(&self, vars: &crate::http::Vars) -> usize {
                if vars.contains_key("SMALL") { 10 } else { usize::MAX }
            }
        }
        // declared over the limit: refused at once, the body only counted
        let mut session = Session::with_limits(4, &Small);
        begin(&mut session, 1, true, &[("SMALL", "1"), ("CONTENT_LENGTH", "11")]);
        assert!(matches!(feed(&mut session, kind::STDIN, 1, b"01234567890"), Action::Nothing));
        assert!(session.current.as_ref().is_some_and(|p| p.body.is_empty() && p.refusal.is_some()));
        assert!(matches!(
            feed(&mut session, kind::STDIN, 1, &[]),
            Action::Answer { keep_conn: true, work: Work::Refuse(Response { status: 413, .. }), .. }
        ));
        // no length: cut at the limit + 1
        begin(&mut session, 2, true, &[("SMALL", "1")]);
        assert!(matches!(feed(&mut session, kind::STDIN, 2, b"0123456789"), Action::Nothing));
        assert!(session.current.as_ref().is_some_and(|p| p.refusal.is_none()));
        assert!(matches!(feed(&mut session, kind::STDIN, 2, b"x"), Action::Nothing));
        assert!(matches!(
            feed(&mut session, kind::STDIN, 2, &[]),
            Action::Answer { work: Work::Refuse(Response { status: 413, .. }), .. }
        ));
        // a handler's limit never lifts the global ceiling
        let too_long = (MAX_BODY_BYTES + 1).to_string();
        begin(&mut session, 3, true, &[("CONTENT_LENGTH", &too_long)]);
        assert!(session.current.as_ref().is_some_and(|p| p.refusal.is_some()));
    }

    #[test]
    fn an_endless_refused_body_is_cut_off() {
        let mut session = Session::new(4);
        begin(&mut session, 1, true, &[("CONTENT_LENGTH", "99999999999")]);
        let chunk = vec![0u8; MAX_CONTENT_LEN];
        let action = (0..=MAX_DRAIN_BYTES / MAX_CONTENT_LEN + 1)
            .map(|_| feed(&mut session, kind::STDIN, 1, &chunk))
            .find(|a| !matches!(a, Action::Nothing));
        assert!(matches!(
            action,
            Some(Action::Answer {
                keep_conn: false,
                work: Work::Refuse(_),
                ..
            })
        ));
        assert_eq!(session.phase(), Phase::Idle);
    }

    #[test]
    fn oversized_params_are_refused_with_431() {
        let mut session = Session::new(4);
        feed(&mut session, kind::BEGIN_REQUEST, 1, &begin_body(1, false));
        let chunk = vec![1u8; MAX_CONTENT_LEN];
        for _ in 0..=MAX_PARAMS_BYTES / MAX_CONTENT_LEN {
            feed(&mut session, kind::PARAMS, 1, &chunk);
        }
        feed(&mut session, kind::PARAMS, 1, &[]);
        assert!(matches!(
            feed(&mut session, kind::STDIN, 1, &[]),
            Action::Answer {
                keep_conn: false,
                work: Work::Refuse(Response { status: 431, .. }),
                ..
            }
        ));
    }

    #[test]
    fn malformed_params_are_answered_400() {
        let mut session = Session::new(4);
        feed(&mut session, kind::BEGIN_REQUEST, 1, &begin_body(1, false));
        feed(&mut session, kind::PARAMS, 1, &[5, 5, b'x']);
        feed(&mut session, kind::PARAMS, 1, &[]);
        assert!(matches!(
            feed(&mut session, kind::STDIN, 1, &[]),
            Action::Answer {
                work: Work::Refuse(Response { status: 400, .. }),
                ..
            }
        ));
    }

    #[test]
    fn abort_ends_the_request() {
        let mut session = Session::new(4);
        begin(&mut session, 5, false, &[]);
        assert!(matches!(
            feed(&mut session, kind::ABORT_REQUEST, 6, &[]),
            Action::Nothing
        ));
        let action = feed(&mut session, kind::ABORT_REQUEST, 5, &[]);
        assert_eq!(
            end_status(&action),
            Some((5, STATUS_REQUEST_COMPLETE, true))
        );
        assert_eq!(session.phase(), Phase::Idle);
    }

    #[test]
    fn protocol_violations_fail_the_connection() {
        let mut session = Session::new(4);
        assert!(matches!(
            feed(&mut session, kind::BEGIN_REQUEST, 0, &begin_body(1, true)),
            Action::Fail(_)
        ));
        assert!(matches!(
            feed(&mut session, kind::BEGIN_REQUEST, 1, &[1, 2]),
            Action::Fail(_)
        ));
        feed(&mut session, kind::BEGIN_REQUEST, 1, &begin_body(1, true));
        assert!(matches!(
            feed(&mut session, kind::BEGIN_REQUEST, 1, &begin_body(1, true)),
            Action::Fail(_)
        ));
        assert!(matches!(
            feed(&mut session, kind::STDIN, 1, b"early"),
            Action::Fail(_)
        ));
    }

    #[test]
    fn a_panicking_handler_is_answered_500() {
        let gate = pool::Gate::new(1);
        let handler = |_: Request| -> Response { panic!("boom") };
        let response = call_handler(&handler, &gate, Request::default(), "test");
        assert_eq!(response.status, 500);
        // The permit was given back although the handler unwound.
        let response = call_handler(
            &|_: Request| Response::text(200, "ok"),
            &gate,
            Request::default(),
            "test",
        );
        assert_eq!(response.status, 200);
    }

    #[test]
    fn gate_limits_concurrency() {
        let gate = Arc::new(pool::Gate::new(2));
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gate, inside, most) = (gate.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    let _permit = gate.enter();
                    let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                    inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    }

    #[test]
    fn a_permit_given_back_lets_a_waiting_thread_in() {
        let gate = Arc::new(pool::Gate::new(1));
        let held = gate.enter();
        let (entered, got_in) = std::sync::mpsc::channel();
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let _permit = gate.enter();
                entered.send(()).unwrap();
            })
        };
        assert!(got_in.recv_timeout(Duration::from_millis(100)).is_err(), "entered while the only permit was held");
        drop(held);
        got_in.recv_timeout(Duration::from_secs(10)).expect("the waiting thread got the permit given back");
        waiter.join().unwrap();
        // and the permit came back once more: the gate is free again
        drop(gate.enter());
    }

    /// Runs `serve_connection` on one end of a socket pair while `input` is written to the other
    /// end; returns what the server wrote back.
    fn converse(input: Vec<u8>, handler: impl Handler) -> Vec<u8> {
        let (client, server) = UnixStream::pair().unwrap();
        let server = Arc::new(Stream::Unix(server));
        server.set_write_timeout(Duration::from_secs(5)).unwrap();
        let writer = client.try_clone().unwrap();
        let feeder = std::thread::spawn(move || {
            let mut writer = writer;
            let _ = writer.write_all(&input);
            let _ = writer.shutdown(Shutdown::Write);
        });
        let reader = std::thread::spawn(move || {
            let mut answer = Vec::new();
            let _ = (&client).read_to_end(&mut answer);
            answer
        });
        let gate = pool::Gate::new(1);
        let registry = connections::Registry::new(1);
        let slot = registry.admit(server.clone()).unwrap();
        let _ = serve_connection(&server, &handler, &gate, &slot);
        drop(slot);
        drop(server);
        feeder.join().unwrap();
        reader.join().unwrap()
    }

    fn request_records(id: u16, keep_conn: bool, pairs: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut out = record(kind::BEGIN_REQUEST, id, &begin_body(1, keep_conn));
        out.extend(record(kind::PARAMS, id, &params(pairs)));
        out.extend(record(kind::PARAMS, id, &[]));
        if !body.is_empty() {
            out.extend(record(kind::STDIN, id, body));
        }
        out.extend(record(kind::STDIN, id, &[]));
        out
    }

    fn echo(request: Request) -> Response {
        if request.var("PANIC").is_some() {
            panic!("asked to panic");
        }
        let method = request.var("REQUEST_METHOD").unwrap_or("").to_string();
        let mut body = method.into_bytes();
        body.extend_from_slice(&request.body);
        Response::text(200, body)
    }

    fn stdout_of(records: &[(RecordHeader, Vec<u8>)], id: u16) -> Vec<u8> {
        records
            .iter()
            .filter(|(h, _)| h.kind == kind::STDOUT && h.request_id == id)
            .flat_map(|(_, c)| c.clone())
            .collect()
    }

    #[test]
    fn kept_connection_answers_requests_in_turn_and_survives_a_panic() {
        let mut input = request_records(1, true, &[("REQUEST_METHOD", "POST")], b"-one");
        input.extend(request_records(1, true, &[("PANIC", "1")], b""));
        input.extend(request_records(2, false, &[("REQUEST_METHOD", "GET")], b""));
        input.extend(request_records(3, false, &[("REQUEST_METHOD", "GET")], b"")); // after close
        let records = split_records(&converse(input, echo));
        let ends = records
            .iter()
            .filter(|(h, _)| h.kind == kind::END_REQUEST)
            .count();
        assert_eq!(ends, 3);
        let first = String::from_utf8(stdout_of(&records[..3], 1)).unwrap();
        assert!(
            first.starts_with("Status: 200 OK\r\n") && first.ends_with("\r\n\r\nPOST-one"),
            "{first}"
        );
        let second = String::from_utf8(stdout_of(&records[3..6], 1)).unwrap();
        assert!(second.starts_with("Status: 500"), "{second}");
        assert!(String::from_utf8(stdout_of(&records, 2))
            .unwrap()
            .ends_with("GET"));
        assert!(stdout_of(&records, 3).is_empty());
    }

    #[test]
    fn garbage_closes_the_connection() {
        assert!(converse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), echo).is_empty());
    }

    /// One record of a structured fuzz stream: any kind, a few ids, arbitrary content.
    fn arbitrary_record() -> impl Strategy<Value = Vec<u8>> {
        (
            0u8..14,
            0u16..3,
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(kind, id, content)| {
                if kind == kind::BEGIN_REQUEST && content.len() >= 8 {
                    record(kind, id, &content[..8])
                } else {
                    record(kind, id, &content)
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn parse_record_header_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = parse_record_header(&bytes);
        }

        #[test]
        fn record_headers_round_trip(kind in any::<u8>(), id in any::<u16>(), length in any::<u16>(), padding in any::<u8>()) {
            let header = RecordHeader { kind, request_id: id, content_length: length, padding_length: padding };
            prop_assert_eq!(parse_record_header(&encode_record_header(&header)), Ok(header));
        }

        #[test]
        fn decode_params_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_params(&bytes);
        }

        #[test]
        fn params_round_trip(pairs in proptest::collection::vec((".{0,200}", ".{0,300}"), 0..8)) {
            let encoded = encode_params(&pairs).unwrap();
            prop_assert_eq!(decode_params(&encoded).unwrap(), pairs);
        }

        #[test]
        fn streams_round_trip(length in 0usize..200_000, seed in any::<u8>(), id in 1u16..) {
            // A patterned body: random lengths around the 65535 split matter, random bytes do not.
            let content: Vec<u8> = (0..length).map(|i| seed.wrapping_add(i as u8)).collect();
            let bytes = record(kind::STDIN, id, &content);
            let records = split_records(&bytes);
            prop_assert!(records.iter().all(|(h, _)| h.request_id == id && h.kind == kind::STDIN));
            let joined: Vec<u8> = records.into_iter().flat_map(|(_, c)| c).collect();
            prop_assert_eq!(joined, content);
        }

        #[test]
        fn session_survives_any_record_sequence(records in proptest::collection::vec(arbitrary_record(), 0..40)) {
            let mut session = Session::new(4);
            for bytes in &records {
                let header = parse_record_header(bytes).unwrap();
                let length = usize::from(header.content_length);
                let _ = session.on_record(&header, &bytes[HEADER_LEN..HEADER_LEN + length]);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn connection_survives_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = converse(bytes, echo);
        }

        #[test]
        fn connection_survives_random_records(
            records in proptest::collection::vec(arbitrary_record(), 0..40),
            tail in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let mut input: Vec<u8> = records.concat();
            input.extend(tail);
            let _ = converse(input, echo);
        }
    }
}
