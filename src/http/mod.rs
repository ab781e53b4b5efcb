//! Request and response types shared by the three front doors (CGI, FastCGI, built-in HTTP).
//!
//! Every door turns what it received into CGI/1.1 meta-variables plus a body, so the
//! application never knows which door a request came through.

pub mod cgi;
pub mod connections;
pub mod fastcgi;
pub mod serve;
#[cfg(feature = "tls")]
pub mod tls;

use std::collections::HashMap;

/// Largest request body any front door accepts; the application applies tighter,
/// per-mode limits (backups, queries) on top of this.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A listening socket that cannot be opened, as the operator reads it: the address and what to
/// do about the usual causes (the bare `os error 98` says neither).
pub fn listen_error(address: &str, error: std::io::Error) -> std::io::Error {
    use std::io::ErrorKind;
    let reason = match error.kind() {
        ErrorKind::AddrInUse => "address in use (is another server running?)".to_string(),
        ErrorKind::PermissionDenied => {
            "permission denied (a port below 1024 needs root or CAP_NET_BIND_SERVICE; a socket path a writable folder)".to_string()
        }
        ErrorKind::AddrNotAvailable => "address not available (no interface of this machine has it)".to_string(),
        _ => error.to_string(),
    };
    std::io::Error::new(error.kind(), format!("cannot listen on {address}: {reason}"))
}

/// The meta-variables of a request. A poll looks up a few dozen of them (most absent: the
/// `SSL_*` of a plain connection); foldhash is several times cheaper per lookup than the
/// standard SipHash and, seeded per process, still gives a client no way to line up collisions
/// of the `HTTP_*` names it chooses (whose number the front doors bound anyway).
pub type Vars = HashMap<String, String, foldhash::fast::RandomState>;

/// A request as CGI/1.1 describes it: meta-variables (`REQUEST_METHOD`, `QUERY_STRING`,
/// `SCRIPT_NAME`, `SCRIPT_FILENAME`, `HTTPS`, `SERVER_PORT`, `HTTP_HOST`, `REMOTE_ADDR`,
/// `HTTP_*`, `SSL_*`, …) and the body.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub vars: Vars,
    pub body: Vec<u8>,
}

impl Request {
    /// The meta-variable `name`, if the front door provided it.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

/// What the application answers: status, headers (without `Status`) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A `text/plain` answer, the kind devices get.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "text/plain; charset=UTF-8".into())],
            body: body.into(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The CGI/FastCGI form: `Status:` line, headers, `Content-Length`, blank line, body.
    ///
    /// The length is always sent (old firmware speaks HTTP/1.0): a web server that has it passes
    /// it on instead of chunking the answer or ending it by closing the connection, which
    /// lighttpd does with an answer of unknown length once it streams answers
    /// (`server.stream-response-body`). The framing is ours, so a handler's own
    /// `Content-Length` or `Transfer-Encoding` is dropped.
    pub fn to_cgi_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 128);
        out.extend_from_slice(format!("Status: {} {}\r\n", self.status, reason_phrase(self.status)).as_bytes());
        for (k, v) in &self.headers {
            // a value carrying a line break could add headers of its own: such a header is
            // dropped rather than passed on
            if k.contains(['\r', '\n', ':']) || v.contains(['\r', '\n']) {
                continue;
            }
            if k.eq_ignore_ascii_case("Content-Length") || k.eq_ignore_ascii_case("Transfer-Encoding") {
                continue;
            }
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if has_body(self.status) {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// Whether an answer with `status` has a body, and so a `Content-Length` (RFC 9110 §8.6: not
/// 1xx, 204 or 304).
pub fn has_body(status: u16) -> bool {
    !matches!(status, 100..=199 | 204 | 304)
}

/// The standard reason phrase of the status codes this server uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The application as every front door sees it.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Response;

    /// The largest body this request may carry, decided from its meta-variables before the
    /// front door reads any of the body, so that a body the application would refuse anyway is
    /// never held in memory. Front doors apply it through [`body_limit`].
    fn body_limit(&self, _vars: &Vars) -> usize {
        MAX_BODY_BYTES
    }
}

/// The body limit of a request: the handler's, never above [`MAX_BODY_BYTES`].
pub fn body_limit(handler: &dyn Handler, vars: &Vars) -> usize {
    handler.body_limit(vars).min(MAX_BODY_BYTES)
}

/// The answer to a body over its limit (every front door words it the same).
pub fn body_too_large(limit: usize) -> Response {
    Response::text(413, format!("# request body too large: more than {limit} bytes - exit\r\n"))
}

impl<F> Handler for F
where
    F: Fn(Request) -> Response + Send + Sync + 'static,
{
    fn handle(&self, request: Request) -> Response {
        self(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_injection_is_dropped() {
        let mut response = Response::text(302, "# x");
        response.headers.push(("Location".into(), "https://a/?x\r\nSet-Cookie: s=1".into()));
        let bytes = String::from_utf8(response.to_cgi_bytes()).unwrap();
        assert!(bytes.starts_with("Status: 302 Found\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: 3\r\n\r\n# x"), "{bytes}");
        assert!(!bytes.contains("Set-Cookie"));
    }

    #[test]
    fn the_cgi_form_carries_the_body_length_and_only_ours() {
        let mut response = Response::text(200, "# 13 bytes..\r\n");
        response.headers.push(("content-length".into(), "99".into()));
        response.headers.push(("Transfer-Encoding".into(), "chunked".into()));
        let bytes = String::from_utf8(response.to_cgi_bytes()).unwrap();
        assert_eq!(bytes, "Status: 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: 14\r\n\r\n# 13 bytes..\r\n");
        let empty = String::from_utf8(Response::text(404, "").to_cgi_bytes()).unwrap();
        assert!(empty.ends_with("\r\nContent-Length: 0\r\n\r\n"), "{empty}");
        for status in [204, 304] {
            let bytes = String::from_utf8(Response::text(status, "").to_cgi_bytes()).unwrap();
            assert!(!bytes.to_ascii_lowercase().contains("content-length"), "{bytes}");
        }
    }
    #[test]
    fn a_listening_error_names_the_address_and_the_cause() {
        use std::io::{Error, ErrorKind};
        let in_use = listen_error("127.0.0.1:8080", Error::from(ErrorKind::AddrInUse));
        assert_eq!(in_use.to_string(), "cannot listen on 127.0.0.1:8080: address in use (is another server running?)");
        assert_eq!(in_use.kind(), ErrorKind::AddrInUse);
        assert!(listen_error("0.0.0.0:80", Error::from(ErrorKind::PermissionDenied)).to_string().contains("CAP_NET_BIND_SERVICE"));
        assert_eq!(listen_error("h:1", Error::other("odd")).to_string(), "cannot listen on h:1: odd");
    }
}
