//! What `serve` (src/http/serve.rs) does with a request head once hyper has parsed it: the
//! target (absolute form reduced, percent-decoding, routing), the Host check, HTTP/1.0
//! keep-alive, header variables and byte ranges. (The HTTP/1.1 parsing itself is hyper's.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use update_server::http::serve::{
    asks_keep_alive, check_hosts, header_variable, origin_form, parse_range, percent_decode, route, ByteRange, Route,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let Some(request_line) = lines.next() else {
        return;
    };
    let mut parts = request_line.split(' ');
    let (_method, target, version) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let minor_version = u8::from(version != "HTTP/1.0");
    let headers: Vec<(&str, &str)> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name, value.trim()))
        .collect();
    let values = |wanted: &'static str| {
        headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(wanted)).map(|(_, v)| v.as_bytes())
    };
    if check_hosts(values("Host"), minor_version).is_ok() {
        let hosts: Vec<&[u8]> = values("Host").collect();
        assert!(hosts.len() <= 1);
        if minor_version == 1 {
            assert_eq!(hosts.len(), 1, "HTTP/1.1 needs exactly one Host");
        }
    }
    let _ = asks_keep_alive(values("Connection"));
    for (name, _) in &headers {
        if let Some(variable) = header_variable(name) {
            assert!(variable.starts_with("HTTP_"));
            let forbidden = ["HTTP_PROXY", "HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"];
            assert!(!forbidden.contains(&variable.as_str()), "{name} became {variable}");
            assert!(!name.contains('_'), "{name} impersonates a '-' name");
        }
    }
    for value in values("Range") {
        let value = String::from_utf8_lossy(value);
        for length in [0u64, 1, 70_000, u64::MAX] {
            if let Some(ByteRange::Satisfiable(first, last)) = parse_range(&value, length) {
                assert!(first <= last && last < length, "{value:?} of {length}: {first}-{last}");
            }
        }
    }
    if let Some(target) = origin_form(target) {
        assert!(target.starts_with('/'), "origin form {target:?}");
        let raw_path = target.split_once('?').map_or(target.as_str(), |(p, _)| p);
        if let Ok(path) = percent_decode(raw_path) {
            assert!(!path.contains('\0'));
            if let Route::Static { folder, relative } = route(&path) {
                assert!(["fw", "www", "web"].contains(&folder));
                for segment in relative.split('/') {
                    let escapes = segment.is_empty() || segment.starts_with('.') || segment.contains(['\\', '\0']);
                    assert!(!escapes, "{path:?} routes to {folder}/{relative}");
                }
            }
        }
    }
});
