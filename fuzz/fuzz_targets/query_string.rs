//! The query-string decoder (src/urlenc.rs): PHP's `urldecode` and `$_GET` semantics. The
//! arguments must be unique and named, and a query written back from them with
//! `rawurlencode` must decode to the same arguments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use update_server::urlenc::{parse_query, rawurlencode, urldecode};

fuzz_target!(|data: &[u8]| {
    // the doors hand the query string on as text (invalid UTF-8 replaced)
    let query = String::from_utf8_lossy(data);
    let args = parse_query(&query);
    assert!(args.len() <= query.split('&').count());
    for (i, (name, _)) in args.iter().enumerate() {
        assert!(!name.is_empty(), "an argument without a name");
        assert!(args[..i].iter().all(|(other, _)| other != name), "{name:?} twice");
    }
    let written: Vec<String> = args
        .iter()
        .map(|(name, value)| format!("{}={}", rawurlencode(name), rawurlencode(value)))
        .collect();
    assert_eq!(parse_query(&written.join("&")), args, "a written query reads back differently");
    // plain decoding: encoding undoes nothing, `+` only with plus_is_space
    assert_eq!(urldecode(&rawurlencode(&query), false), query);
    assert_eq!(urldecode(&rawurlencode(&query), true), query);
    let decoded = urldecode(&query, false);
    assert!(decoded.len() <= query.len() * 3, "decoding grew the text");
});
