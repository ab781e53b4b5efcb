//! Who is calling: the request arguments a device sends, checked before any of them is used,
//! and the address it called from.

use compact_str::CompactString;
use crate::net::{normalize, IpRange};
use std::net::IpAddr;

/// Why a request argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid argument {name}='{shown}': {reason}")]
pub struct InvalidArgument {
    pub name: String,
    /// The value as shown to the caller: cut short and stripped of control characters.
    pub shown: String,
    pub reason: &'static str,
}

/// `[A-Za-z0-9._-]`, 1 to 64 characters, no `..`: safe as part of a file name.
pub fn is_plain_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && !text.contains("..")
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A device serial: 12 hex digits, optionally in pairs separated by `-` or `:`.
pub fn is_serial(text: &str) -> bool {
    let bytes = text.as_bytes();
    match bytes.len() {
        12 => bytes.iter().all(u8::is_ascii_hexdigit),
        17 => {
            let separator = bytes[2];
            matches!(separator, b'-' | b':')
                && bytes.chunks(3).all(|chunk| {
                    chunk[0].is_ascii_hexdigit()
                        && chunk[1].is_ascii_hexdigit()
                        && (chunk.len() == 2 || chunk[2] == separator)
                })
        }
        _ => false,
    }
}

/// The serial's 12 hex digits, lower-cased (`00-90-33-3E-0C-57` → `0090333e0c57`).
pub fn serial_digits(serial: &str) -> String {
    serial.chars().filter(char::is_ascii_hexdigit).collect::<String>().to_ascii_lowercase()
}

/// The one spelling of a serial that names its state file, certificate files and status row:
/// lower-case hex pairs joined by `-`, as devices send it with `#m` (`0090330000AB` and
/// `00:90:33:00:00:ab` are both `00-90-33-00-00-ab`). Anything that is not a serial is
/// returned unchanged (validation refuses it).
pub fn canonical_serial(serial: &str) -> String {
    if !is_serial(serial) {
        return serial.to_string();
    }
    let digits = serial_digits(serial);
    let pairs: Vec<&str> = (0..6).map(|i| &digits[2 * i..2 * i + 2]).collect();
    pairs.join("-")
}

/// The request arguments with `sn` in its canonical spelling ([`canonical_serial`]), so that
/// every spelling of one device reaches the same files.
pub fn with_canonical_serial(mut args: Vec<(CompactString, CompactString)>) -> Vec<(CompactString, CompactString)> {
    for (name, value) in args.iter_mut() {
        if name == "sn" {
            *value = canonical_serial(value).into();
        }
    }
    args
}

/// How a `hwid` relates to a serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HwidBinding {
    /// An innovaphone hwid (`<model>-xx-xx-xx`) ending in the serial's last three bytes.
    Belongs,
    /// An innovaphone hwid naming another device's last three bytes.
    Contradicts,
    /// Not of the innovaphone form (a soft client's id, say): it says nothing about the serial.
    OtherForm,
}

/// The last three bytes an innovaphone hwid carries (`IP232-3e-0c-57` → `3e0c57`), or None
/// when the hwid is not `<model>-xx-xx-xx` (a non-empty model, three pairs of hex digits).
fn innovaphone_hwid_tail(hwid: &str) -> Option<String> {
    let mut parts = hwid.rsplitn(4, '-');
    let mut tail = Vec::with_capacity(3);
    for _ in 0..3 {
        let pair = parts.next()?;
        if pair.len() != 2 || !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        tail.push(pair);
    }
    let model = parts.next()?;
    if model.is_empty() {
        return None;
    }
    tail.reverse();
    Some(tail.concat().to_ascii_lowercase())
}

/// Whether `hwid` names the device of `serial` (SPEC §3 step 16: an innovaphone hwid ends in
/// the last three bytes of the device's serial; `IP232-3e-0c-57` belongs to
/// `00-90-33-3e-0c-57`).
pub fn hwid_binding(hwid: &str, serial: &str) -> HwidBinding {
    match innovaphone_hwid_tail(hwid) {
        None => HwidBinding::OtherForm,
        Some(tail) if is_serial(serial) && serial_digits(serial).ends_with(&tail) => HwidBinding::Belongs,
        Some(_) => HwidBinding::Contradicts,
    }
}

/// The strict form used with forcetrust: the hwid is an innovaphone hwid of this serial.
pub fn hwid_belongs_to_serial(hwid: &str, serial: &str) -> bool {
    hwid_binding(hwid, serial) == HwidBinding::Belongs
}

fn shown(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).take(40).collect()
}

fn refuse(name: &str, value: &str, reason: &'static str) -> InvalidArgument {
    InvalidArgument { name: name.to_string(), shown: shown(value), reason }
}

/// Checks every argument that names a file or ends up in a command, before any is used.
/// Absent arguments are fine here (the update script handles missing ones).
pub fn validate(args: &[(CompactString, CompactString)]) -> Result<(), InvalidArgument> {
    for (name, value) in args {
        match name.as_str() {
            "sn" if !value.is_empty() && !is_serial(value) => {
                return Err(refuse(name, value, "a serial is 12 hex digits, optionally separated by '-' or ':'"))
            }
            "hwid" | "type" | "phase" if !value.is_empty() && !is_plain_token(value) => {
                return Err(refuse(name, value, "only letters, digits, '.', '_' and '-' are allowed"))
            }
            "env" if !value.is_empty() && !value.split(',').all(is_plain_token) => {
                return Err(refuse(name, value, "a comma-separated list of plain names is expected"))
            }
            "ip" if value.len() > 64 || !value.bytes().all(|b| b.is_ascii_hexdigit() || matches!(b, b'.' | b':')) => {
                return Err(refuse(name, value, "an IP address is expected"))
            }
            "polling" if !value.is_empty() && (value.len() > 9 || !value.bytes().all(|b| b.is_ascii_digit())) => {
                return Err(refuse(name, value, "a number is expected"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where a request came from, as stored in the state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub ip: String,
    pub reverse_proxied: bool,
    pub proxy: String,
}

/// The caller's address: `REMOTE_ADDR`, or the first `X-Forwarded-For` entry when the peer
/// is a trusted reverse proxy (SPEC §3.4 deviation: nobody else can fake its address).
pub fn origin(remote_addr: &str, forwarded_for: Option<&str>, trusted: &[IpRange]) -> Origin {
    let peer = strip_mapped(remote_addr);
    let peer_trusted = peer.parse::<IpAddr>().is_ok_and(|a| trusted.iter().any(|r| r.contains(a)));
    let forwarded = forwarded_for
        .and_then(|list| list.split(',').next())
        .map(str::trim)
        .filter(|first| first.parse::<IpAddr>().is_ok());
    match forwarded {
        Some(first) if peer_trusted => Origin { ip: strip_mapped(first), reverse_proxied: true, proxy: peer },
        _ => Origin { ip: peer, reverse_proxied: false, proxy: String::new() },
    }
}

fn strip_mapped(address: &str) -> String {
    let address = address.trim();
    match address.parse::<IpAddr>() {
        // dotted IPv4 as nearly every device's: Rust reads only the form it writes (four
        // decimal numbers, no leading zeros), so the text is its own normal form as it stands
        Ok(IpAddr::V4(_)) => address.to_string(),
        Ok(a) => normalize(a).to_string(),
        Err(_) => address.trim_start_matches("::ffff:").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn serials() {
        assert!(is_serial("00-90-33-3e-0c-57"));
        assert!(is_serial("00:90:33:3E:0C:57"));
        assert!(is_serial("0090333e0c57"));
        assert!(!is_serial("00-90-33-3e-0c-5"));
        assert!(!is_serial("00-90:33-3e-0c-57"));
        assert!(!is_serial("../../etc/passwd"));
        assert!(!is_serial("00-90-33-3e-0c-57x"));
    }

    #[test]
    fn tokens() {
        assert!(is_plain_token("IP232-3e-0c-57"));
        assert!(!is_plain_token("../x"));
        assert!(!is_plain_token("a..b"));
        assert!(!is_plain_token("a/b"));
        assert!(!is_plain_token(""));
    }

    #[test]
    fn hwid_and_serial_binding() {
        assert!(hwid_belongs_to_serial("IP232-3e-0c-57", "00-90-33-3e-0c-57"));
        assert!(hwid_belongs_to_serial("IP232-3E-0C-57", "0090333e0c57"));
        assert!(!hwid_belongs_to_serial("IP232-3e-0c-99", "00-90-33-3e-0c-57"));
        assert!(!hwid_belongs_to_serial("IP232", "00-90-33-3e-0c-57"));
    }

    #[test]
    fn hwid_forms() {
        assert_eq!(hwid_binding("IP232-3e-0c-57", "00-90-33-3e-0c-57"), HwidBinding::Belongs);
        assert_eq!(hwid_binding("IP1202-3E-0C-57", "00:90:33:3e:0c:57"), HwidBinding::Belongs);
        assert_eq!(hwid_binding("IP-DECT-3e-0c-57", "0090333e0c57"), HwidBinding::Belongs);
        assert_eq!(hwid_binding("IP232-3e-0c-57", "00-90-33-66-66-66"), HwidBinding::Contradicts);
        assert_eq!(hwid_binding("IP232-3e-0c-57", "not-a-serial"), HwidBinding::Contradicts);
        for other in ["IP232", "mypbx", "-3e-0c-57", "IP232-3e-0c-5", "IP232-3e-0c-577", "IP232-3e-0x-57", "3e-0c-57", "swphone_0123abcd", ""] {
            assert_eq!(hwid_binding(other, "00-90-33-3e-0c-57"), HwidBinding::OtherForm, "{other}");
        }
    }

    #[test]
    fn canonical_serials() {
        for spelling in ["0090330000AB", "0090330000ab", "00:90:33:00:00:ab", "00:90:33:00:00:AB", "00-90-33-00-00-AB", "00-90-33-00-00-ab"] {
            assert_eq!(canonical_serial(spelling), "00-90-33-00-00-ab", "{spelling}");
        }
        assert_eq!(canonical_serial("../x"), "../x", "not a serial: left for validation to refuse");
        let args = vec![("sn".into(), "0090330000AB".into()), ("hwid".into(), "IP232-00-00-AB".into())];
        assert_eq!(with_canonical_serial(args)[..], [("sn".into(), "00-90-33-00-00-ab".into()), ("hwid".into(), "IP232-00-00-AB".into())]);
    }

    #[test]
    fn validation_refuses_traversal() {
        let args = |k: &str, v: &str| vec![(CompactString::from(k), CompactString::from(v))];
        assert!(validate(&args("sn", "../x")).is_err());
        assert!(validate(&args("hwid", "a/../../b")).is_err());
        assert!(validate(&args("env", "berlin,../x")).is_err());
        assert!(validate(&args("type", "IP232")).is_ok());
        assert!(validate(&args("ip", "")).is_ok());
        assert!(validate(&args("foo", "../anything")).is_ok());
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted = crate::net::parse_ranges("10.0.0.2").unwrap();
        let o = origin("10.0.0.2", Some("192.168.178.33, 10.0.0.1"), &trusted);
        assert_eq!(o, Origin { ip: "192.168.178.33".into(), reverse_proxied: true, proxy: "10.0.0.2".into() });
        let o = origin("172.16.4.57", Some("1.2.3.4"), &trusted);
        assert_eq!(o, Origin { ip: "172.16.4.57".into(), reverse_proxied: false, proxy: String::new() });
        assert_eq!(origin("::ffff:1.2.3.4", None, &[]).ip, "1.2.3.4");
    }

    proptest! {
        #[test]
        fn an_ipv4_text_that_parses_is_the_form_it_is_written_in(parts in proptest::collection::vec((0u16..300, proptest::bool::weighted(0.1)), 4)) {
            // what strip_mapped takes as it stands: numbers out of range and leading zeros in
            // some of the parts
            let text = parts.iter().map(|(n, zero)| format!("{}{n}", if *zero { "0" } else { "" })).collect::<Vec<_>>().join(".");
            if let Ok(address) = text.parse::<std::net::Ipv4Addr>() {
                prop_assert_eq!(address.to_string(), text);
            }
        }

        #[test]
        fn canonical_serials_are_serials_and_stable(digits in "[0-9a-fA-F]{12}", separator in "[-:]?") {
            let spelled = if separator.is_empty() { digits.clone() } else {
                (0..6).map(|i| &digits[2 * i..2 * i + 2]).collect::<Vec<_>>().join(&separator)
            };
            let canonical = canonical_serial(&spelled);
            prop_assert!(is_serial(&canonical));
            prop_assert_eq!(canonical_serial(&canonical), canonical.clone());
            prop_assert_eq!(serial_digits(&canonical), digits.to_ascii_lowercase());
        }

        #[test]
        fn a_valid_serial_or_token_never_leaves_its_folder(s in "\\PC{0,80}") {
            if is_serial(&s) || is_plain_token(&s) {
                prop_assert!(!s.contains('/') && !s.contains("..") && !s.contains('\0'));
            }
        }
    }
}
