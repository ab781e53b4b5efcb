//! The CGI front door: one request from the environment and stdin, answer on stdout.

use super::{Handler, Request, Response, MAX_BODY_BYTES};
use std::io::{Read, Write};

/// Reads the request the web server handed us, answers it, and returns.
pub fn run(handler: &dyn Handler) -> std::io::Result<()> {
    let vars: std::collections::HashMap<String, String> = std::env::vars().collect();
    let length = vars
        .get("CONTENT_LENGTH")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let response = if length > MAX_BODY_BYTES {
        Response::text(413, "# request body too large - exit\r\n")
    } else {
        let mut body = Vec::with_capacity(length);
        std::io::stdin().take(length as u64).read_to_end(&mut body)?;
        handler.handle(Request { vars, body })
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&response.to_cgi_bytes())?;
    out.flush()
}
