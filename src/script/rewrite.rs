//! Step R of the update script: the polling commands and the device's new Command File URL
//! (SPEC §3, "Step R").

use compact_str::CompactString;
use crate::urlenc::rawurlencode;

/// The commands that switch fast polling on (provisioning every `polling` minutes, even when
/// that is 0, as the old server sent it) or off (back to the normal `interval`).
pub fn polling_commands(switch: PollingSwitch, polling: i64, normal_interval: i64) -> Vec<String> {
    match switch {
        PollingSwitch::Off => vec![
            "mod cmd UP1 provision 0".into(),
            "config rem UP1 /provision".into(),
            format!("config add UP1 /poll {normal_interval}"),
        ],
        PollingSwitch::On => vec![format!("mod cmd UP1 provision {polling}"), "config add UP1 /poll 1".into()],
    }
}

/// The query string of the new URL: the state arguments, the missing required arguments, then
/// every other request argument in its order. A `stdargs` key is written with its fixed value
/// (`sn=#m`, …) or dropped when it has none (`PROT`, `CHECK`, …); other values are
/// rawurlencoded.
pub fn query_string(
    state_args: &[(&str, String)],
    missing: &[&str],
    request_args: &[(CompactString, CompactString)],
    stdargs: &[(String, Option<String>)],
) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut present: Vec<&str> = Vec::new();
    for (name, value) in state_args {
        parts.push(format!("{}={}", rawurlencode(name), rawurlencode(value)));
        present.push(name);
    }
    let fixed = |name: &str| stdargs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_deref());
    for name in missing {
        if present.contains(name) {
            continue;
        }
        if let Some(Some(value)) = fixed(name) {
            parts.push(format!("{}={value}", rawurlencode(name)));
        }
        present.push(name);
    }
    for (name, value) in request_args {
        if present.contains(&name.as_str()) {
            continue;
        }
        present.push(name);
        match fixed(name) {
            Some(Some(value)) => parts.push(format!("{}={value}", rawurlencode(name))),
            Some(None) => {}
            None => parts.push(format!("{}={}", rawurlencode(name), rawurlencode(value))),
        }
    }
    parts.join("&")
}

/// A state argument (`polling`, `phase`) as the old server held it: absent from the request,
/// text, or the integer 0 it sets for a device in its last phase. Whether the device's URL is
/// rewritten hangs on PHP's loose comparisons of these, so they are kept typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ArgValue {
    #[default]
    Absent,
    Text(String),
    Zero,
}

impl ArgValue {
    pub fn from_request(value: Option<&str>) -> ArgValue {
        value.map_or(ArgValue::Absent, |v| ArgValue::Text(v.to_string()))
    }

    /// The value as the new URL carries it (an absent one as an empty value).
    pub fn url_text(&self) -> &str {
        match self {
            ArgValue::Absent => "",
            ArgValue::Text(text) => text,
            ArgValue::Zero => "0",
        }
    }

    /// PHP 8's loose `==` (null, strings, integer 0).
    pub fn loosely_equals(&self, other: &ArgValue) -> bool {
        use ArgValue::{Absent, Text, Zero};
        match (self, other) {
            (Absent, Absent) | (Absent, Zero) | (Zero, Absent) | (Zero, Zero) => true,
            (Absent, Text(s)) | (Text(s), Absent) => s.is_empty(),
            (Text(s), Zero) | (Zero, Text(s)) => php_numeric(s).map_or(s == "0", |n| n == 0.0),
            (Text(a), Text(b)) => match (php_numeric(a), php_numeric(b)) {
                (Some(x), Some(y)) => x == y,
                _ => a == b,
            },
        }
    }
}

/// A PHP 8 numeric string (surrounding white space allowed) as its number.
fn php_numeric(text: &str) -> Option<f64> {
    let trimmed = text.trim_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let body = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits(whole) && digits(fraction) && !(whole.is_empty() && fraction.is_empty());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    if mantissa_ok && exponent_ok {
        trimmed.parse().ok()
    } else {
        None
    }
}

/// The state arguments of the device's next URL, and whether this answer changed one of them
/// (only then are they put first in the URL, and only then may polling commands go out).
#[derive(Debug, Clone, Default)]
pub struct StateArgs {
    pub polling: ArgValue,
    pub phase: ArgValue,
    pub changed: bool,
}

/// The fast-polling switch step R sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollingSwitch {
    On,
    Off,
}

impl StateArgs {
    /// As the request carried them.
    pub fn from_request(polling: Option<&str>, phase: Option<&str>) -> StateArgs {
        StateArgs { polling: ArgValue::from_request(polling), phase: ArgValue::from_request(phase), changed: false }
    }

    pub fn set_polling(&mut self, value: ArgValue) {
        Self::set(&mut self.polling, value, &mut self.changed);
    }

    pub fn set_phase(&mut self, value: ArgValue) {
        Self::set(&mut self.phase, value, &mut self.changed);
    }

    fn set(slot: &mut ArgValue, value: ArgValue, changed: &mut bool) {
        if !slot.loosely_equals(&value) {
            *slot = value;
            *changed = true;
        }
    }

    /// The polling commands due when the URL is rewritten: only when a state argument changed
    /// and the polling value differs from what the device asked with.
    pub fn polling_switch(&self, requested: Option<&str>) -> Option<PollingSwitch> {
        if !self.changed || self.polling == ArgValue::Absent {
            return None;
        }
        if ArgValue::from_request(requested).loosely_equals(&self.polling) {
            return None;
        }
        Some(if self.polling.loosely_equals(&ArgValue::Zero) { PollingSwitch::Off } else { PollingSwitch::On })
    }

    /// `polling` and `phase` for the front of the new URL; none when nothing changed.
    pub fn url_front(&self) -> Vec<(&'static str, String)> {
        if !self.changed {
            return Vec::new();
        }
        vec![("polling", self.polling.url_text().to_string()), ("phase", self.phase.url_text().to_string())]
    }
}

/// The commands that store a new Command File URL and activate it.
pub fn url_commands(url: &str) -> Vec<String> {
    vec![
        format!("config add UP1 /url {}", rawurlencode(url)),
        "config add UP1 /no-dhcp".into(),
        "config write".into(),
        "config activate".into(),
    ]
}

/// `host[:port]` with the port replaced (or removed when `port` is None).
pub fn with_port(host: &str, port: Option<&str>) -> String {
    let bare = if host.starts_with('[') {
        host.split_once(']').map(|(h, _)| format!("{h}]")).unwrap_or_else(|| host.to_string())
    } else {
        host.split(':').next().unwrap_or(host).to_string()
    };
    match port {
        Some(p) => format!("{bare}:{p}"),
        None => bare,
    }
}

/// A PCRE-style substitution `<d>pattern<d>replacement<d>flags` (`times/@httpsurlmod`), as
/// PHP's `preg_replace` applies it: every match replaced; `\1`, `$1`, `${1}` refer to groups.
#[derive(Debug, Clone)]
pub struct Substitution {
    pattern: regex::Regex,
    replacement: String,
}

impl Substitution {
    pub fn parse(spec: &str) -> Result<Substitution, String> {
        let mut chars = spec.chars();
        let delimiter = chars.next().ok_or("empty substitution")?;
        if delimiter.is_alphanumeric() || delimiter == '\\' || delimiter.is_whitespace() {
            return Err(format!("'{delimiter}' cannot be a delimiter"));
        }
        let rest: String = chars.collect();
        let mut fields: Vec<String> = vec![String::new()];
        let mut escaped = false;
        for c in rest.chars() {
            let field = fields.len() - 1;
            if escaped {
                // an escaped delimiter is the delimiter itself; other escapes stay for the regex
                if c != delimiter {
                    fields[field].push('\\');
                }
                fields[field].push(c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == delimiter && fields.len() < 3 {
                fields.push(String::new());
            } else {
                fields[field].push(c);
            }
        }
        if escaped {
            let field = fields.len() - 1;
            fields[field].push('\\');
        }
        if fields.len() < 3 {
            return Err(format!("'{spec}' is not of the form <d>pattern<d>replacement<d>flags"));
        }
        let flags: String = fields[2].chars().filter(|c| matches!(c, 'i' | 'm' | 's' | 'x' | 'U')).collect();
        let pattern = if flags.is_empty() { fields[0].clone() } else { format!("(?{flags}){}", fields[0]) };
        let pattern = regex::Regex::new(&pattern).map_err(|e| format!("bad pattern in '{spec}': {e}"))?;
        Ok(Substitution { pattern, replacement: php_replacement(&fields[1]) })
    }

    pub fn apply(&self, text: &str) -> String {
        self.pattern.replace_all(text, self.replacement.as_str()).into_owned()
    }
}

/// PHP replacement references (`\1`, `$1`, `${1}`) in the regex crate's form (`${1}`); a
/// literal `$` otherwise.
fn php_replacement(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let digits_from = |start: usize| {
            let mut end = start;
            while end < chars.len() && end < start + 2 && chars[end].is_ascii_digit() {
                end += 1;
            }
            end
        };
        if (c == '\\' || c == '$') && i + 1 < chars.len() && chars[i + 1].is_ascii_digit() {
            let end = digits_from(i + 1);
            out.push_str(&format!("${{{}}}", chars[i + 1..end].iter().collect::<String>()));
            i = end;
        } else if c == '$' && i + 1 < chars.len() && chars[i + 1] == '{' {
            let end = digits_from(i + 2);
            if end > i + 2 && end < chars.len() && chars[end] == '}' {
                out.push_str(&format!("${{{}}}", chars[i + 2..end].iter().collect::<String>()));
                i = end + 1;
            } else {
                out.push_str("$$");
                i += 1;
            }
        } else if c == '$' {
            out.push_str("$$");
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_args_compare_as_loosely_as_php() {
        let text = |s: &str| ArgValue::Text(s.into());
        assert!(ArgValue::Absent.loosely_equals(&ArgValue::Zero));
        assert!(ArgValue::Absent.loosely_equals(&text("")));
        assert!(!ArgValue::Absent.loosely_equals(&text("0")));
        assert!(text("0").loosely_equals(&ArgValue::Zero));
        assert!(text(" 0.0").loosely_equals(&ArgValue::Zero));
        assert!(!text("").loosely_equals(&ArgValue::Zero));
        assert!(!text("abc").loosely_equals(&ArgValue::Zero));
        assert!(text("05").loosely_equals(&text("5")));
        assert!(text("5").loosely_equals(&text("5.0")));
        assert!(!text("5a").loosely_equals(&text("5")));
        assert!(!text("1e").loosely_equals(&text("1")));
        assert!(text("1e1").loosely_equals(&text("10")));
    }

    #[test]
    fn only_a_changed_state_arg_moves_to_the_front_and_switches_polling() {
        let mut args = StateArgs::from_request(Some("5"), None);
        args.set_polling(ArgValue::Text("5".into()));
        assert!(!args.changed);
        assert!(args.url_front().is_empty());
        assert_eq!(args.polling_switch(Some("5")), None);
        // a last phase: polling 0 against a request without polling changes nothing
        let mut args = StateArgs::from_request(None, Some("update"));
        args.set_polling(ArgValue::Zero);
        assert!(!args.changed);
        let mut args = StateArgs::from_request(Some("5"), None);
        args.set_polling(ArgValue::Zero);
        assert!(args.changed);
        assert_eq!(args.url_front(), [("polling", "0".to_string()), ("phase", String::new())]);
        assert_eq!(args.polling_switch(Some("5")), Some(PollingSwitch::Off));
        let mut args = StateArgs::from_request(Some("7"), None);
        args.set_phase(ArgValue::Text("staging".into()));
        // before the old server read the request's polling (missing arguments) it differs
        assert_eq!(args.polling_switch(None), Some(PollingSwitch::On));
        assert_eq!(args.polling_switch(Some("7")), None);
    }

    fn stdargs() -> Vec<(String, Option<String>)> {
        [("sn", Some("#m")), ("type", Some("#t")), ("hwid", Some("#h")), ("ip", Some("#i")), ("PROT", None), ("CHECK", None)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(String::from)))
            .collect()
    }

    fn args(q: &str) -> Vec<(CompactString, CompactString)> {
        crate::urlenc::parse_query(q)
    }

    #[test]
    fn missing_arguments_come_after_state_arguments() {
        let q = query_string(
            &[("polling", "5".into()), ("phase", "update".into())],
            &["hwid", "ip"],
            &args("type=IP232&sn=00-90-33-3e-0c-57&env=default&foo=bar%20baz"),
            &stdargs(),
        );
        assert_eq!(q, "polling=5&phase=update&hwid=#h&ip=#i&type=#t&sn=#m&env=default&foo=bar%20baz");
    }

    #[test]
    fn fixed_and_dropped_standard_arguments() {
        let q = query_string(
            &[("polling", "0".into()), ("phase", "update".into())],
            &[],
            &args("type=IP232&sn=x&hwid=y&ip=z&polling=5&phase=update&PROT=1&CHECK=abc"),
            &stdargs(),
        );
        assert_eq!(q, "polling=0&phase=update&type=#t&sn=#m&hwid=#h&ip=#i");
    }

    #[test]
    fn polling_on_and_off() {
        assert_eq!(polling_commands(PollingSwitch::On, 5, 15), ["mod cmd UP1 provision 5", "config add UP1 /poll 1"]);
        assert_eq!(polling_commands(PollingSwitch::On, 0, 15), ["mod cmd UP1 provision 0", "config add UP1 /poll 1"]);
        assert_eq!(polling_commands(PollingSwitch::Off, 5, 30)[2], "config add UP1 /poll 30");
    }

    #[test]
    fn default_httpsurlmod_removes_mtls() {
        let s = Substitution::parse("!mtls/!!i").unwrap();
        assert_eq!(s.apply("https://host/MTLS/update/update.php"), "https://host/update/update.php");
        let s = Substitution::parse("#host1:444/mtls/#host2:444/#").unwrap();
        assert_eq!(s.apply("https://host1:444/mtls/update.php"), "https://host2:444/update.php");
        let s = Substitution::parse("!(\\w+)\\.example!\\1.test!").unwrap();
        assert_eq!(s.apply("https://upd.example/x"), "https://upd.test/x");
        assert!(Substitution::parse("!unclosed").is_err());
        assert!(Substitution::parse("!(!x!").is_err());
    }

    #[test]
    fn port_replacement() {
        assert_eq!(with_port("update.example.com:8443", Some("444")), "update.example.com:444");
        assert_eq!(with_port("update.example.com:8443", None), "update.example.com");
        assert_eq!(with_port("[::1]:80", Some("443")), "[::1]:443");
    }
}
