//! What `serve` (src/http/serve.rs) does with the bytes of a connection before the application
//! sees them: request heads (pipelined, as the connection loop splits them), body length,
//! keep-alive, target, percent-decoding, routing and header variables.
#![no_main]

use libfuzzer_sys::fuzz_target;
use update_server::http::serve::{
    find_head_end, header_variable, origin_form, parse_head, percent_decode, route, Route,
    MAX_HEAD_BYTES,
};

fuzz_target!(|data: &[u8]| {
    let mut buffer = data;
    loop {
        // stray CRLFs between requests are skipped, as the connection loop does
        let blank = buffer.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
        buffer = &buffer[blank..];
        let Some(end) = find_head_end(buffer) else {
            return;
        };
        assert!(end <= buffer.len());
        if end > MAX_HEAD_BYTES {
            return;
        }
        let head = parse_head(&buffer[..end]);
        buffer = &buffer[end..];
        let Ok(head) = head else {
            return;
        };
        assert!(!head.method.is_empty() && !head.method.contains([' ', '\r', '\n']));
        if head.minor_version >= 1 {
            assert_eq!(head.values("Host").count(), 1, "HTTP/1.1 needs exactly one Host");
        }
        for (name, value) in &head.headers {
            assert!(!value.contains(['\r', '\0']), "header value with CR or NUL: {value:?}");
            if let Some(variable) = header_variable(name) {
                assert!(variable.starts_with("HTTP_"));
                let forbidden = ["HTTP_PROXY", "HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"];
                assert!(!forbidden.contains(&variable.as_str()), "{name} became {variable}");
                assert!(!name.contains('_'), "{name} impersonates a '-' name");
            }
        }
        let _ = head.keep_alive();
        let Ok(length) = head.body_length() else {
            return;
        };
        assert!(length <= update_server::http::MAX_BODY_BYTES);
        if let Some(target) = origin_form(&head.target) {
            assert!(target.starts_with('/'), "origin form {target:?}");
            let raw_path = target.split_once('?').map_or(target.as_str(), |(p, _)| p);
            if let Ok(path) = percent_decode(raw_path) {
                assert!(!path.contains('\0'));
                if let Route::Static { folder, relative } = route(&path) {
                    assert!(["fw", "www", "web"].contains(&folder));
                    for segment in relative.split('/') {
                        let escapes = segment.is_empty()
                            || segment.starts_with('.')
                            || segment.contains(['\\', '\0']);
                        assert!(!escapes, "{path:?} routes to {folder}/{relative}");
                    }
                }
            }
        }
        // the body follows the head; the next request after it
        let Some(rest) = buffer.get(length..) else {
            return;
        };
        buffer = rest;
    }
});
