//! A FastCGI responder that does no work: every request gets the same `text/plain` body of
//! comment lines, as large as a device poll answer. It runs on the crate's own FastCGI front
//! door, so under lighttpd it measures the ceiling of "our FastCGI plumbing, no application".
//!
//! lighttpd starts it with `bin-path` (listening socket on fd 0), like the real binary:
//!
//! ```text
//! fastcgi.server = ( "/noop/" => (( "socket" => "/tmp/noop.sock",
//!     "bin-path" => "/path/to/target/release/examples/noop_fastcgi",
//!     "check-local" => "disable", "max-procs" => 2,
//!     "bin-environment" => ( "NOOP_BODY_BYTES" => "1945" ) )) )
//! ```
//!
//! `NOOP_BODY_BYTES` sets the body size (default 1945, the size of the deliver answer of the
//! conformance case `single-phase-deliver-then-check`); `NOOP_WORKERS` the worker threads (8).

use std::sync::Arc;
use update_server::http::{fastcgi, Handler, Request, Response};

const DEFAULT_BODY_BYTES: usize = 1945;

/// Comment lines (`# …\r\n`) adding up to exactly `size` bytes.
fn filler_body(size: usize) -> Vec<u8> {
    let line = b"# no-op FastCGI responder: this line stands for the comments of a poll answer\r\n";
    let mut body = Vec::with_capacity(size);
    while body.len() + line.len() <= size {
        body.extend_from_slice(line);
    }
    // The rest: one shorter comment line, or padding if fewer than 3 bytes are left.
    let rest = size - body.len();
    if rest >= 3 {
        body.extend_from_slice(b"#");
        body.extend(std::iter::repeat_n(b' ', rest - 3));
        body.extend_from_slice(b"\r\n");
    } else {
        body.extend(std::iter::repeat_n(b'\n', rest));
    }
    body
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn main() -> std::io::Result<()> {
    let body = Arc::new(filler_body(env_number("NOOP_BODY_BYTES", DEFAULT_BODY_BYTES)));
    let workers = env_number("NOOP_WORKERS", 8).clamp(1, 256);
    let handler = move |_request: Request| Response::text(200, body.as_slice().to_vec());
    fastcgi::serve_inherited(Arc::new(handler) as Arc<dyn Handler>, workers)
}

#[cfg(test)]
mod tests {
    use super::filler_body;

    #[test]
    fn body_has_the_requested_size() {
        for size in [0, 1, 2, 3, 80, 81, 1945, 4096] {
            assert_eq!(filler_body(size).len(), size);
        }
    }
}
