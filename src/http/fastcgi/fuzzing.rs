//! The FastCGI record stream as `serve_connection` frames it, fed to a [`Session`] without a
//! socket, so a fuzzer can drive the protocol state machine at full speed. The application is
//! an echo with a small body limit (so refusals are reached with short inputs); its answers go
//! through the real response encoder.
//!
//! Besides "never panics", every step is checked against what the protocol promises: records
//! we write parse back and stay within the record size, an answer names a request the peer
//! began, a request reaches the application with exactly the STDIN bytes the peer sent for it
//! and never with more than the limit the application set for it, and a refusal is a 4xx
//! answer.

use super::{
    encode_response, kind, parse_record_header, Action, RecordHeader, Session, Work, HEADER_LEN,
    MAX_CONTENT_LEN,
};
use crate::http::{body_limit, Handler, Request, Response, MAX_BODY_BYTES};
use std::collections::HashMap;

/// Echoes the body; takes 1 KiB, or the front door's ceiling for a backup.
struct Echo;

impl Handler for Echo {
    fn handle(&self, request: Request) -> Response {
        Response::text(200, request.body)
    }

    fn body_limit(&self, vars: &crate::http::Vars) -> usize {
        let backup = vars.get("QUERY_STRING").is_some_and(|q| q.contains("mode=backup"));
        if backup {
            MAX_BODY_BYTES
        } else {
            1024
        }
    }
}

/// Feeds `input` to one connection's session record by record until the stream ends, is
/// truncated, breaks the protocol, or a request without FCGI_KEEP_CONN has been answered.
/// Panics when the session breaks one of the promises above.
pub fn record_stream(mut input: &[u8]) {
    let mut session = Session::with_limits(4, &Echo);
    // STDIN bytes sent per request id since its last BEGIN_REQUEST (what the application must
    // receive if that request is answered by it)
    let mut sent_body: HashMap<u16, Vec<u8>> = HashMap::new();
    loop {
        if input.is_empty() {
            return;
        }
        let Ok(header) = parse_record_header(input) else {
            return;
        };
        input = &input[HEADER_LEN..];
        let length = usize::from(header.content_length);
        let record_len = length + usize::from(header.padding_length);
        let Some(record) = input.get(..record_len) else {
            return;
        };
        input = &input[record_len..];
        let content = &record[..length];
        match header.kind {
            kind::BEGIN_REQUEST => {
                sent_body.insert(header.request_id, Vec::new());
            }
            kind::STDIN => {
                if let Some(body) = sent_body.get_mut(&header.request_id) {
                    body.extend_from_slice(content);
                }
            }
            _ => {}
        }
        match session.on_record(&header, content) {
            Action::Nothing => {}
            Action::Reply { bytes, then_close } => {
                check_records(&bytes);
                if then_close {
                    return;
                }
            }
            Action::Answer {
                request_id,
                keep_conn,
                work,
            } => {
                let sent = sent_body
                    .remove(&request_id)
                    .unwrap_or_else(|| panic!("answer for request {request_id}, never begun"));
                let response = match work {
                    Work::Handle(request) => {
                        let limit = body_limit(&Echo, &request.vars);
                        assert!(request.body.len() <= limit, "body over the limit");
                        assert!(request.body == sent, "the application got other bytes than were sent");
                        Echo.handle(request)
                    }
                    Work::Refuse(response) => {
                        assert!((400..500).contains(&response.status), "refusal {}", response.status);
                        response
                    }
                };
                let bytes = encode_response(request_id, &response);
                let records = check_records(&bytes);
                let stdout: Vec<u8> = records
                    .iter()
                    .filter(|(h, _)| h.kind == kind::STDOUT)
                    .flat_map(|(_, c)| c.iter().copied())
                    .collect();
                assert!(stdout == response.to_cgi_bytes(), "STDOUT is not the response");
                let last = records.last().map(|(h, _)| *h);
                assert!(
                    last.is_some_and(|h| h.kind == kind::END_REQUEST && h.request_id == request_id),
                    "answer does not end with END_REQUEST"
                );
                if !keep_conn {
                    return;
                }
            }
            Action::Fail(_) => return,
        }
    }
}

/// Splits bytes we would write into records; they must be complete, version 1, padded to 8
/// and within the record size.
fn check_records(mut bytes: &[u8]) -> Vec<(RecordHeader, &[u8])> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let header = parse_record_header(bytes).expect("we write valid record headers");
        let length = usize::from(header.content_length);
        let padding = usize::from(header.padding_length);
        assert!(length <= MAX_CONTENT_LEN);
        assert_eq!((length + padding) % 8, 0, "records are padded to 8 bytes");
        let end = HEADER_LEN + length + padding;
        assert!(end <= bytes.len(), "we write complete records");
        records.push((header, &bytes[HEADER_LEN..HEADER_LEN + length]));
        bytes = &bytes[end..];
    }
    records
}
