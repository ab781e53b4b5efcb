//! The CGI front door: one request from the environment and stdin, answer on stdout.
//!
//! The body arrives on stdin: `CONTENT_LENGTH` bytes when the web server names a length, else
//! everything up to end-of-file (Apache's mod_cgi and mod_cgid pass a chunked request body that
//! way). Either way no more than the request's body limit is kept, and whatever is left on
//! stdin is read and thrown away before the answer goes out: under mod_cgid stdin and stdout
//! are one socket, and a process that exits with unread input on it resets the connection and
//! loses its answer; under mod_cgi a web server still writing the body meets a broken pipe.

use super::{body_limit, body_too_large, Handler, Request, Response};
use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

/// How long a body may take to arrive in all, and how long stdin may stay silent within it.
/// Web servers give up on a slow client much sooner (Apache's `Timeout` is 60 s); these only
/// keep a wedged web server from holding the process forever.
const BODY_TIME: Duration = Duration::from_secs(300);
const BODY_IDLE: Duration = Duration::from_secs(30);
/// How much of a refused body is read and thrown away, and for how long, before the 413 goes
/// out: enough for any body a web server has already buffered (it then writes at memory
/// speed), not enough to let a client keep the process busy.
const DRAIN_BYTES: u64 = 256 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads the request the web server handed us, answers it, and returns.
pub fn run(handler: &dyn Handler) -> io::Result<()> {
    let vars: super::Vars = std::env::vars().collect();
    let mut stdin = Stdin::new();
    let response = match body_kind(vars.get("CONTENT_LENGTH").map(String::as_str), vars.get("REQUEST_METHOD").map(String::as_str)) {
        Err(()) => Response::text(400, "# malformed CONTENT_LENGTH - exit\r\n"),
        Ok(kind) => {
            let limit = body_limit(handler, &vars);
            match stdin.read_body(kind, limit) {
                Ok(body) => handler.handle(Request { vars, body }),
                Err(BodyError::TooLarge { unread }) => {
                    stdin.drain(unread.min(DRAIN_BYTES), Instant::now() + DRAIN_TIME);
                    body_too_large(limit)
                }
                Err(BodyError::Incomplete) => Response::text(400, "# request body incomplete - exit\r\n"),
            }
        }
    };
    // only what is already there: a web server that keeps stdin open must not delay the answer
    stdin.drain(DRAIN_BYTES, Instant::now());
    let mut out = io::stdout().lock();
    out.write_all(&response.to_cgi_bytes())?;
    out.flush()
}

/// How the body on stdin ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// No body (a GET or HEAD without `CONTENT_LENGTH`).
    None,
    /// `CONTENT_LENGTH` bytes.
    Length(u64),
    /// A body without a declared length: up to end-of-file.
    ToEof,
}

/// The body's delimitation from `CONTENT_LENGTH` and the method; a length that is not a
/// number is an error (an empty one counts as absent).
fn body_kind(content_length: Option<&str>, method: Option<&str>) -> Result<BodyKind, ()> {
    match content_length.map(str::trim).filter(|v| !v.is_empty()) {
        Some(text) if text.bytes().all(|b| b.is_ascii_digit()) => Ok(BodyKind::Length(text.parse().unwrap_or(u64::MAX))),
        Some(_) => Err(()),
        None if matches!(method, Some("PUT" | "POST" | "PATCH")) => Ok(BodyKind::ToEof),
        None => Ok(BodyKind::None),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    /// Over the limit; `unread` bytes (at most) are still on stdin.
    TooLarge { unread: u64 },
    /// Stdin ended or stalled before the declared length.
    Incomplete,
}

/// Standard input, read without a user-space buffer so that poll(2) sees all that is unread.
struct Stdin {
    file: ManuallyDrop<File>,
}

impl Stdin {
    fn new() -> Stdin {
        // SAFETY: fd 0 stays open for the life of the process, and ManuallyDrop keeps this
        // File from closing it; if fd 0 is not open, reads fail with EBADF and are handled.
        Stdin { file: ManuallyDrop::new(unsafe { File::from_raw_fd(0) }) }
    }

    /// Reads once, waiting at most `wait` for input; `None` when nothing came in time.
    fn read_within(&mut self, buf: &mut [u8], wait: Duration) -> io::Result<Option<usize>> {
        let mut fds = libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 };
        let millis = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
        loop {
            // SAFETY: one valid pollfd, and the count says one.
            let ready = unsafe { libc::poll(&mut fds, 1, millis) };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            if ready == 0 {
                return Ok(None);
            }
            // readable, at end-of-file, hung up or in error: read says which
            return self.file.read(buf).map(Some);
        }
    }

    /// The body, never more than `limit` bytes of it.
    fn read_body(&mut self, kind: BodyKind, limit: usize) -> Result<Vec<u8>, BodyError> {
        let (wanted, to_eof) = match kind {
            BodyKind::None => return Ok(Vec::new()),
            BodyKind::Length(length) if length > limit as u64 => return Err(BodyError::TooLarge { unread: length }),
            BodyKind::Length(length) => (length as usize, false),
            // one byte more than allowed tells an oversized body from one of exactly the limit
            BodyKind::ToEof => (limit + 1, true),
        };
        let deadline = Instant::now() + BODY_TIME;
        let mut body = Vec::with_capacity(if to_eof { wanted.min(64 * 1024) } else { wanted });
        let mut chunk = vec![0u8; 64 * 1024];
        while body.len() < wanted {
            let wait = deadline.saturating_duration_since(Instant::now()).min(BODY_IDLE);
            let room = chunk.len().min(wanted - body.len());
            match self.read_within(&mut chunk[..room], wait) {
                Ok(Some(0)) if to_eof => return Ok(body),
                Ok(Some(0)) | Ok(None) | Err(_) => return Err(BodyError::Incomplete),
                Ok(Some(read)) => body.extend_from_slice(&chunk[..read]),
            }
        }
        if to_eof {
            return Err(BodyError::TooLarge { unread: u64::MAX });
        }
        Ok(body)
    }

    /// Reads and throws away up to `max` bytes until end-of-file, waiting for more input no
    /// later than `deadline` (a deadline of now takes only what is already there).
    fn drain(&mut self, max: u64, deadline: Instant) {
        let mut sink = vec![0u8; 64 * 1024];
        let mut drained = 0u64;
        while drained < max {
            let wait = deadline.saturating_duration_since(Instant::now());
            let room = sink.len().min(usize::try_from(max - drained).unwrap_or(usize::MAX));
            match self.read_within(&mut sink[..room], wait) {
                Ok(Some(read)) if read > 0 => drained += read as u64,
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_delimited_by_content_length_or_by_end_of_file() {
        assert_eq!(body_kind(Some("12"), Some("PUT")), Ok(BodyKind::Length(12)));
        assert_eq!(body_kind(Some(" 0 "), Some("GET")), Ok(BodyKind::Length(0)));
        assert_eq!(body_kind(Some("99999999999999999999999"), Some("PUT")), Ok(BodyKind::Length(u64::MAX)));
        // Apache passes a chunked body without CONTENT_LENGTH
        assert_eq!(body_kind(None, Some("PUT")), Ok(BodyKind::ToEof));
        assert_eq!(body_kind(Some(""), Some("POST")), Ok(BodyKind::ToEof));
        assert_eq!(body_kind(None, Some("GET")), Ok(BodyKind::None));
        assert_eq!(body_kind(None, None), Ok(BodyKind::None));
        for bad in ["-1", "1e3", "12 13", "0x10", "+5"] {
            assert_eq!(body_kind(Some(bad), Some("PUT")), Err(()), "{bad}");
        }
    }
}
