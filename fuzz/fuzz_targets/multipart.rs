//! The certificate upload's `multipart/form-data` parsing (src/admin/upload.rs). Input: the
//! Content-Type header value, a newline, the body. Parts must lie inside the body, and a form
//! written back from the parts must parse to the same parts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use update_server::admin::upload::{boundary, parts, Part};

fuzz_target!(|data: &[u8]| {
    let (content_type, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let content_type = String::from_utf8_lossy(content_type);
    let Some(boundary) = boundary(&content_type) else {
        return;
    };
    assert!(!boundary.is_empty() && boundary.len() <= 200);
    let Some(found) = parts(body, &boundary) else {
        return;
    };
    assert!(found.len() <= 1000);
    for part in &found {
        assert!(part.data.len() <= body.len());
        assert!(
            part.data.is_empty() || body.windows(part.data.len()).any(|w| w == part.data),
            "a part's data is not taken from the body"
        );
    }
    // write the form again, the way a browser would, and read it back
    let writable = |text: &str| !text.contains(['"', ';', '\r', '\n']) && text.trim() == text;
    let separator = format!("\r\n--{boundary}");
    let representable = found.iter().all(|p| {
        writable(&p.name)
            && p.filename.as_deref().is_none_or(writable)
            && !contains(&p.data, separator.as_bytes())
    });
    if representable {
        let again = parts(&form(&found, &boundary), &boundary);
        assert_eq!(again.as_deref(), Some(&found[..]), "the written form reads back differently");
    }
});

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn form(parts: &[Part], boundary: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        out.extend_from_slice(format!("Content-Disposition: form-data; name=\"{}\"", part.name).as_bytes());
        if let Some(filename) = &part.filename {
            out.extend_from_slice(format!("; filename=\"{filename}\"").as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&part.data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}
