//! Device certificates (SPEC §5) as far as a poll needs them: the state the device reported
//! through the `certificates` query, and the TLS identity check of `forcetrust` (SPEC §3.16).

use crate::config::Config;
use crate::xml::Element;

/// What the web server reported about the client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsIdentity {
    /// `SSL_CLIENT_S_DN_CN`
    pub common_name: Option<String>,
    /// `SSL_CLIENT_VERIFY`
    pub verify: Option<String>,
    /// The issuer's CN, from `SSL_CLIENT_I_DN_CN` or `SSL_CLIENT_I_DN`.
    pub issuer: Option<String>,
    /// `SERVER_SOFTWARE` names lighttpd, which enforces verification itself and never exports
    /// the issuer.
    pub lighttpd: bool,
}

impl TlsIdentity {
    /// Reads the identity from CGI variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> TlsIdentity {
        let nonempty = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        TlsIdentity {
            common_name: nonempty("SSL_CLIENT_S_DN_CN"),
            verify: nonempty("SSL_CLIENT_VERIFY"),
            issuer: nonempty("SSL_CLIENT_I_DN_CN").or_else(|| nonempty("SSL_CLIENT_I_DN").map(|dn| common_name_of(&dn))),
            lighttpd: var("SERVER_SOFTWARE").is_some_and(|s| s.contains("lighttpd/")),
        }
    }
}

/// The CN of a distinguished name in any of the usual forms (`/C=DE/CN=x`, `CN=x,O=y`,
/// `C = DE, CN = x`); a bare name is taken as it is.
pub fn common_name_of(dn: &str) -> String {
    for part in dn.split(['/', ',']) {
        if let Some((key, value)) = part.split_once('=') {
            if key.trim().eq_ignore_ascii_case("CN") {
                return value.trim().to_string();
            }
        }
    }
    dn.trim().to_string()
}

/// The configured CA names a device certificate must be issued by.
pub fn ca_names(customcerts: &Element) -> Vec<String> {
    let separator = customcerts.attr("CAnamesep").filter(|s| !s.is_empty()).unwrap_or(",");
    customcerts
        .attr("CAname")
        .unwrap_or("")
        .split(separator)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect()
}

/// Checks that the client certificate names the device of both `sn` and `hwid` and was issued
/// by a configured CA. The error says which check failed.
pub fn check_identity(tls: &TlsIdentity, serial: &str, hwid: &str, config: &Config) -> Result<(), String> {
    let customcerts = config.customcerts.as_ref().ok_or("customcerts/@CAname must be defined")?;
    let names = ca_names(customcerts);
    if names.is_empty() {
        return Err("customcerts/@CAname must be defined".into());
    }
    let cn = tls.common_name.as_deref().ok_or("no client certificate (SSL_CLIENT_S_DN_CN missing)")?;
    let cn = repaired_common_name(cn);
    let wildcard = customcerts.attr("CAwildcard").filter(|w| !w.is_empty());
    let names_device = cn.eq_ignore_ascii_case(hwid)
        || cn.eq_ignore_ascii_case(&serial.replace(['-', ':'], ""))
        || wildcard == Some(cn.as_str());
    if !names_device {
        return Err(format!("client certificate CN '{cn}' does not name this device ({hwid}, {serial})"));
    }
    if !crate::device::hwid_belongs_to_serial(hwid, serial) {
        return Err(format!("hwid '{hwid}' does not belong to serial '{serial}'"));
    }
    match tls.verify.as_deref() {
        Some("SUCCESS") => {}
        Some(other) => return Err(format!("client certificate not verified ({other})")),
        // lighttpd before 1.4.42 exports no verification result; with ssl.verifyclient.enforce
        // an unverified client never gets this far
        None if tls.lighttpd => {}
        None => return Err("client certificate verification unknown (SSL_CLIENT_VERIFY missing)".into()),
    }
    match tls.issuer.as_deref() {
        Some(issuer) if names.iter().any(|n| n == issuer) => Ok(()),
        Some(issuer) => Err(format!("client certificate issuer '{issuer}' is not one of customcerts/@CAname")),
        // lighttpd never exports the issuer; it only lets certificates of its ssl.ca-file in
        None if tls.lighttpd => Ok(()),
        None => Err("client certificate issuer unknown (SSL_CLIENT_I_DN missing)".into()),
    }
}

/// Early device certificates carry `IP222s`, `IP232s`, `IP240a`, `IP200a` as first CN part.
fn repaired_common_name(cn: &str) -> String {
    let (first, rest) = cn.split_once('-').unwrap_or((cn, ""));
    let fixed = match first {
        "IP222s" | "IP232s" | "IP240a" | "IP200a" => &first[..first.len() - 1],
        other => other,
    };
    if rest.is_empty() && !cn.contains('-') {
        fixed.to_string()
    } else {
        format!("{fixed}-{rest}")
    }
}

/// The certificate state of a device, from its last `certificates` query answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateState {
    /// Certificate handling or state tracking is off.
    Disabled,
    /// No answer to the certificates query yet.
    Unknown,
    /// The device reported an error for the last request; an admin must clear it.
    RequestError,
    /// The device is generating a key pair and request.
    Busy,
    /// A certificate is not valid yet: nothing to do now.
    NotYetValid,
    Good,
    /// The certificate must be replaced, for the reason given.
    Replace(String),
}

impl CertificateState {
    /// Whether the normal update continues after the certificate step.
    pub fn proceeds(&self) -> bool {
        matches!(self, CertificateState::Disabled | CertificateState::Good | CertificateState::NotYetValid)
    }

    /// `device/@certstat`.
    pub fn status_text(&self) -> Option<String> {
        match self {
            CertificateState::Disabled => Some(
                "either certificate handling or state tracking not enabled - not doing any certificate checking".into(),
            ),
            CertificateState::Unknown => Some(
                "we dont know anything about the current certificate state - not doing any certificate checking".into(),
            ),
            CertificateState::Good => Some("OK".into()),
            CertificateState::NotYetValid => Some("certificate not yet valid - not doing any certificate checking".into()),
            CertificateState::Busy => Some("device busy creating a certificate request".into()),
            CertificateState::Replace(reason) => Some(reason.clone()),
            CertificateState::RequestError => None,
        }
    }

    pub fn description(&self) -> String {
        match self {
            CertificateState::RequestError => {
                "certificate processing STOPPED due to previous upload error, clean X509/REQUESTERROR to continue".into()
            }
            other => other.status_text().unwrap_or_default(),
        }
    }

    /// Commands the certificate step sends in place of the snippets.
    pub fn commands(&self) -> Vec<String> {
        match self {
            CertificateState::RequestError => vec!["ser".into()],
            _ => Vec::new(),
        }
    }

    /// Whether the next poll runs only the queries (set after a request was triggered).
    pub fn skips_next(&self) -> bool {
        false
    }
}

/// Reads the certificate state from the device's stored `certificates` query answer.
pub fn evaluate(state: &Element, now: i64, config: &Config) -> CertificateState {
    let Some(customcerts) = config.customcerts.as_ref() else {
        return CertificateState::Disabled;
    };
    let Some(info) = state.child("queries").and_then(|q| q.child("certificates")).and_then(|c| c.child("info")) else {
        return CertificateState::Unknown;
    };
    if info.child("request-error").is_some() {
        return CertificateState::RequestError;
    }
    if info.child("busy").is_some() {
        return CertificateState::Busy;
    }
    let names = ca_names(customcerts);
    let renew_days = customcerts.attr("renew").and_then(|r| r.trim().parse::<i64>().ok()).unwrap_or(90);
    let certificates = info.child("servercert").map(|s| s.children_named("certificate").collect::<Vec<_>>()).unwrap_or_default();
    for certificate in &certificates {
        if certificate.attr("not_before").and_then(parse_time).is_some_and(|t| t > now) {
            return CertificateState::NotYetValid;
        }
    }
    for certificate in certificates {
        let issuer = certificate.attr("issuer_cn").unwrap_or("");
        if !names.iter().any(|n| n == issuer) {
            return CertificateState::Replace(format!("certificate issued by '{issuer}', not by a configured CA"));
        }
        match certificate.attr("not_after").and_then(parse_time) {
            Some(t) if t < now => return CertificateState::Replace("certificate expired".into()),
            Some(t) if t < now + renew_days * 86400 => {
                return CertificateState::Replace(format!("certificate expires within {renew_days} days"))
            }
            _ => {}
        }
    }
    CertificateState::Good
}

/// `2099-01-01T00:00:00Z` (the device's time format) as epoch seconds.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim().trim_end_matches('Z');
    let (date, time) = text.split_once(['T', ' ']).unwrap_or((text, "00:00:00"));
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next().flatten().unwrap_or(0), t.next().flatten().unwrap_or(0));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // days from the civil date (Howard Hinnant's algorithm)
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hour * 3600 + minute * 60 + second)
}

/// The procedures `mode=vardump` may apply (SPEC §5 deviation: no others exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarProc {
    /// Store the value as it is.
    Plain,
    /// The value is hex: store the bytes.
    Var2Bin,
}

/// The file a variable dump of `var` for `serial` is stored in, derived by the server (never
/// taken from the request), with the processing it needs.
pub fn vardump_target(var: &str, serial: &str) -> Option<(String, VarProc, bool)> {
    match var {
        "X509/REQUEST" => Some((format!("{serial}-request.p10.der"), VarProc::Var2Bin, true)),
        "X509/REQUESTERROR" => Some((format!("{serial}-requesterror"), VarProc::Plain, false)),
        _ => None,
    }
}

/// The value of `var` in a device's `vars read` output: the third token of the line whose
/// first token is the variable's name.
pub fn variable_value<'a>(body: &'a str, var: &str) -> Option<&'a str> {
    body.lines().find_map(|line| {
        let mut tokens = line.split_whitespace();
        (tokens.next() == Some(var)).then(|| {
            tokens.next();
            tokens.next().unwrap_or("")
        })
    })
}

/// Hex digits as bytes; None when the text is not hex.
pub fn hex_to_bytes(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim();
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// DER bytes as PEM with the given label: base64 in 64-column lines, CRLF line ends, as the old
/// server wrote certificate requests.
pub fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].iter().enumerate() {
            if i <= chunk.len() {
                encoded.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                encoded.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\r\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or(""));
        out.push_str("\r\n");
    }
    out.push_str(&format!("-----END {label}-----\r\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vardump_helpers() {
        assert_eq!(vardump_target("X509/REQUEST", "00-90-33-3e-0c-57").unwrap().0, "00-90-33-3e-0c-57-request.p10.der");
        assert!(vardump_target("../../etc", "x").is_none());
        assert_eq!(variable_value("X509/REQUEST pb 3082\r\nX509/REQUESTKEY pb 00\r\n", "X509/REQUEST"), Some("3082"));
        assert_eq!(variable_value("other pb 1", "X509/REQUEST"), None);
        assert_eq!(hex_to_bytes("30820a"), Some(vec![0x30, 0x82, 0x0a]));
        assert_eq!(hex_to_bytes("3g"), None);
        assert_eq!(pem("X", b"hello"), "-----BEGIN X-----\r\naGVsbG8=\r\n-----END X-----\r\n");
        assert_eq!(pem("X", b"hi!"), "-----BEGIN X-----\r\naGkh\r\n-----END X-----\r\n");
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2020-09-13T12:26:40Z"), Some(1600000000));
        assert_eq!(parse_time("nonsense"), None);
    }

    #[test]
    fn distinguished_names() {
        assert_eq!(common_name_of("C = DE, O = innovaphone AG, CN = IP232-3e-0c-57"), "IP232-3e-0c-57");
        assert_eq!(common_name_of("/C=DE/CN=innovaphone Device Certification Authority"), "innovaphone Device Certification Authority");
        assert_eq!(common_name_of("innovaphone Device Certification Authority"), "innovaphone Device Certification Authority");
    }

    #[test]
    fn early_prefixes() {
        assert_eq!(repaired_common_name("IP232s-3e-0c-57"), "IP232-3e-0c-57");
        assert_eq!(repaired_common_name("IP240a-1-2-3"), "IP240-1-2-3");
        assert_eq!(repaired_common_name("0090333e0c57"), "0090333e0c57");
    }
}
