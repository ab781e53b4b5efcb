//! URL encoding as PHP does it: `rawurlencode` for what we write, `urldecode` semantics for
//! query strings we read.

use compact_str::CompactString;
use std::borrow::Cow;

/// PHP's `rawurlencode`: everything but `A-Z a-z 0-9 - _ . ~` is percent-encoded.
pub fn rawurlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes and (for query strings) `+` as a space; invalid escapes stay as they
/// are, invalid UTF-8 is replaced.
pub fn urldecode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() && hex(bytes[i + 1]).is_some() && hex(bytes[i + 2]).is_some() => {
                out.push(hex(bytes[i + 1]).unwrap_or(0) * 16 + hex(bytes[i + 2]).unwrap_or(0));
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    // valid UTF-8 (every device's query) keeps the buffer as the string: one allocation
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

/// The arguments of a query string in their order; of repeated names the last value wins,
/// at the position of the first (as PHP's `$_GET` keeps them). Names and values are small
/// strings: a device's arguments (serial, type, phase, address) are kept inline, without an
/// allocation each, and one without `%` or `+` is taken as it stands.
pub fn parse_query(query: &str) -> Vec<(CompactString, CompactString)> {
    // room for a poll's arguments; a query of many `&` (repeated or empty arguments) must not
    // reserve in proportion to its length
    let mut args: Vec<(CompactString, CompactString)> = Vec::with_capacity((query.bytes().filter(|&b| b == b'&').count() + 1).min(16));
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = CompactString::from(decoded(name));
        if name.is_empty() {
            continue;
        }
        let value = CompactString::from(decoded(value));
        match args.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => args.push((name, value)),
        }
    }
    args
}

/// A name or value of a query string decoded; as it stands when there is nothing to decode
/// (no `%`, no `+`), as nearly every argument of a device.
fn decoded(raw: &str) -> Cow<'_, str> {
    if raw.contains(['%', '+']) {
        Cow::Owned(urldecode(raw, true))
    } else {
        Cow::Borrowed(raw)
    }
}

/// The value [`parse_query`] would give `name` (the last one of a repeated name), decoding
/// only what it must: a request's front door asks for `mode` before anything else, and
/// parsing the whole query for it allocated every argument of every poll.
pub fn query_arg<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    let mut found = None;
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = part.split_once('=').unwrap_or((part, ""));
        if decoded(raw_name) == name {
            found = Some(raw_value);
        }
    }
    found.map(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn one_argument_is_what_the_whole_parse_gives(query in "((mode|sn|m%6Fde|mo\\+de|%zz|)(=[a-z%0-9+]{0,4})?&?){0,6}") {
            for name in ["mode", "sn", "mo de", "%zz", ""] {
                let whole = parse_query(&query).into_iter().find(|(n, _)| n == name).map(|(_, v)| v.to_string());
                let one = query_arg(&query, name).map(|v| v.into_owned());
                // parse_query drops empty names; query_arg is never asked for one
                if !name.is_empty() {
                    prop_assert_eq!(one, whole, "{} in {}", name, query);
                }
            }
        }
    }

    #[test]
    fn raw_encoding_like_php() {
        assert_eq!(rawurlencode("http://a.b/c?d=e&f=#m"), "http%3A%2F%2Fa.b%2Fc%3Fd%3De%26f%3D%23m");
        assert_eq!(rawurlencode("bar baz~"), "bar%20baz~");
    }

    #[test]
    fn query_parsing() {
        let args = parse_query("type=IP232&sn=00-90&foo=bar%20baz&x=a+b&ip=&sn=last&%zz=1");
        assert_eq!(
            args,
            [
                ("type".into(), "IP232".into()),
                ("sn".into(), "last".into()),
                ("foo".into(), "bar baz".into()),
                ("x".into(), "a b".into()),
                ("ip".into(), "".into()),
                ("%zz".into(), "1".into()),
            ]
        );
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(text in "\\PC*") {
            prop_assert_eq!(urldecode(&rawurlencode(&text), false), text);
        }

        #[test]
        fn decoding_never_panics(text in ".*") {
            let _ = parse_query(&text);
        }
    }
}
