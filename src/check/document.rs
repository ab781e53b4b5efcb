//! One configuration file against the DTD (elements, their places, attributes, enumerations,
//! required attributes, text) and the values the code reads from it (numbers, booleans, URLs,
//! time lists, the `httpsurlmod` substitution).

use super::dtd::{AttributeDefault, AttributeType, Dtd};
use super::{Findings, Severity, Source};
use crate::config::merge::php_intval;
use std::collections::HashMap;

/// The document element of both files.
pub(crate) const ROOT: &str = "config";

/// How the code reads a typed attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value {
    /// PHP's `intval`: leading digits, anything else 0.
    Integer,
    /// `intval`, then held within a range.
    IntegerWithin(i64, i64),
    /// Parsed whole or not at all: otherwise the default.
    IntegerOrDefault(&'static str),
    /// Passed to the device as it is (`/initial <minutes>`).
    Minutes,
    Port,
    /// `"true"` turns it on, anything else off.
    Boolean,
    /// `master/@info`: `""`, `none` or an http(s) URL.
    MasterUrl,
    /// An absolute http(s) URL.
    AbsoluteUrl,
    /// An absolute URL or one relative to the server's `update.php`.
    UrlReference,
    /// `times/@allow`: hours and `h:mm-h:mm` ranges, comma-separated.
    Hours,
    /// `times/@httpsurlmod`: `<d>pattern<d>replacement<d>flags`.
    Substitution,
    /// `status/@metricstoken`: a secret sent in an `Authorization: Bearer` header (never
    /// repeated in a finding).
    BearerToken,
}

/// The typed attributes: what the code makes of each (src/config, certs, script, master).
pub(crate) const TYPED: &[(&str, &str, Value)] = &[
    ("master", "info", Value::MasterUrl),
    ("master", "expire", Value::Integer),
    ("master", "timeout", Value::IntegerWithin(1, 60)),
    ("fwstorage", "url", Value::UrlReference),
    ("backup", "nbackups", Value::Integer),
    ("backup", "scfg", Value::UrlReference),
    ("backup", "minage", Value::Integer),
    ("backup", "maxsize", Value::IntegerOrDefault("8388608")),
    ("status", "missing", Value::Integer),
    ("status", "refresh", Value::Integer),
    ("status", "expire", Value::Integer),
    ("status", "logkeep", Value::Integer),
    ("status", "usehttpsdevlinks", Value::Boolean),
    ("status", "metricstoken", Value::BearerToken),
    ("times", "allow", Value::Hours),
    ("times", "initial", Value::Minutes),
    ("times", "check", Value::Boolean),
    ("times", "polling", Value::Integer),
    ("times", "interval", Value::Integer),
    ("times", "grace", Value::Integer),
    ("times", "forcehttps", Value::Boolean),
    ("times", "httpsport", Value::Port),
    ("times", "forcetrust", Value::Boolean),
    ("times", "httpsurlmod", Value::Substitution),
    ("times", "forcestaging", Value::Boolean),
    ("phase", "seq", Value::Integer),
    ("customcerts", "renew", Value::IntegerOrDefault("90")),
    ("queries", "scfg", Value::UrlReference),
    ("migrate", "url", Value::AbsoluteUrl),
    ("dynamic", "timeout", Value::IntegerWithin(1, 60)),
];

fn typed(element: &str, attribute: &str) -> Option<Value> {
    TYPED.iter().find(|(e, a, _)| *e == element && *a == attribute).map(|(_, _, v)| *v)
}

pub(super) fn validate(source: &Source, dtd: &Dtd, is_defaults: bool, out: &mut Findings) {
    let root = source.doc.root_element();
    if root.tag_name().name() != ROOT {
        out.push(source.finding(
            root.range().start,
            Severity::Error,
            format!("the document element is <{}>, not <{ROOT}>", root.tag_name().name()),
        ));
    }
    // (element, the name it is judged by): the document element counts as <config>
    let mut pending = vec![(root, ROOT)];
    while let Some((node, name)) = pending.pop() {
        attributes(source, dtd, node, name, out);
        if !dtd.allows_text(name) {
            if let Some(text) = node.children().find(|c| c.is_text() && !c.text().unwrap_or("").trim().is_empty()) {
                let start = text.range().start + text.text().unwrap_or("").len() - text.text().unwrap_or("").trim_start().len();
                out.push(source.finding(start, Severity::Warning, format!("text in <{name}> is ignored: it holds no text")));
            }
        }
        let allowed = dtd.allowed_children(name);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let mut children = Vec::new();
        for child in node.children().filter(|c| c.is_element()) {
            let child_name = child.tag_name().name();
            let start = child.range().start;
            let Some((declared, _)) = dtd.elements.get_key_value(child_name) else {
                let hint = nearest(child_name, allowed.iter().flatten().copied()).or_else(|| nearest(child_name, dtd.elements.keys().map(String::as_str)));
                let hint = hint.map(|h| format!(" (did you mean <{h}>?)")).unwrap_or_default();
                out.push(source.finding(start, Severity::Error, format!("unknown element <{child_name}>{hint}: the server ignores it")));
                continue;
            };
            if allowed.as_ref().is_some_and(|names| !names.contains(&child_name)) {
                let parents: Vec<String> = dtd.parents_of(child_name).iter().map(|p| format!("<{p}>")).collect();
                let places = if parents.is_empty() { String::new() } else { format!(" (it belongs in {})", parents.join(", ")) };
                out.push(source.finding(
                    start,
                    Severity::Error,
                    format!("<{child_name}> does not belong in <{name}>{places}: the server ignores it here"),
                ));
            } else {
                let count = counts.entry(declared.as_str()).or_insert(0);
                *count += 1;
                if *count == 2 {
                    if name == ROOT {
                        let effect = if is_defaults {
                            "the server reads the first only"
                        } else {
                            "the server reads one section of a name, so settings here are lost"
                        };
                        out.push(source.finding(start, Severity::Error, format!("a second <{child_name}> section: {effect}")));
                    } else if !dtd.repeatable(name, child_name) {
                        out.push(source.finding(start, Severity::Warning, format!("a second <{child_name}> in <{name}>: the server reads the first")));
                    }
                }
            }
            children.push((child, declared.as_str()));
        }
        pending.extend(children.into_iter().rev());
    }
}

fn attributes(source: &Source, dtd: &Dtd, node: roxmltree::Node, name: &str, out: &mut Findings) {
    for attribute in node.attributes() {
        let attribute_name = attribute.name();
        let value = attribute.value();
        let Some(declared) = dtd.attribute(name, attribute_name) else {
            let hint = nearest(attribute_name, dtd.attributes_of(name).iter().map(|a| a.name.as_str()));
            let hint = hint.map(|h| format!(" (did you mean {h}=?)")).unwrap_or_default();
            out.push(source.finding(
                attribute.range().start,
                Severity::Error,
                format!("unknown attribute {attribute_name}= on <{name}>{hint}: the server ignores it"),
            ));
            continue;
        };
        let at = attribute.range_value().start;
        if let AttributeType::Enumeration(values) = &declared.kind {
            if !value.is_empty() && !values.iter().any(|v| v == value) {
                out.push(source.finding(at, Severity::Error, format!("{attribute_name}=\"{value}\" is not one of {}", values.join(", "))));
            }
        }
        if let Some(kind) = typed(name, attribute_name) {
            if let Some((severity, problem)) = value_problem(kind, value) {
                out.push(source.finding(at, severity, format!("{name}/@{attribute_name}: {problem}")));
            }
        }
        if name == "applies" && attribute_name == "env" && value != "true" {
            out.push(source.finding(
                attribute.range().start,
                Severity::Warning,
                format!("env=\"{value}\" makes this an environment name as env=\"true\" does: any env attribute does"),
            ));
        }
    }
    for declared in dtd.attributes_of(name) {
        if declared.default == AttributeDefault::Required && node.attribute(declared.name.as_str()).is_none() {
            out.push(source.finding(node.range().start, Severity::Error, format!("<{name}> without {}=, which it needs", declared.name)));
        }
    }
}

/// What is wrong with `value` read as `kind`, if anything.
pub(crate) fn value_problem(kind: Value, value: &str) -> Option<(Severity, String)> {
    let trimmed = value.trim();
    let error = |message: String| Some((Severity::Error, message));
    match kind {
        Value::Integer | Value::IntegerWithin(..) => {
            if trimmed.is_empty() {
                return None;
            }
            let read = php_intval(trimmed);
            if !is_integer(trimmed) {
                let leading = trimmed.strip_prefix(['-', '+']).unwrap_or(trimmed).starts_with(|c: char| c.is_ascii_digit());
                return if leading {
                    Some((Severity::Warning, format!("'{value}' is read as {read}")))
                } else {
                    error(format!("'{value}' is not a number (the server reads 0)"))
                };
            }
            if trimmed.parse::<i64>().is_err() {
                return error(format!("'{value}' is out of range (the server reads 0)"));
            }
            match kind {
                Value::IntegerWithin(low, high) if !(low..=high).contains(&read) => {
                    Some((Severity::Warning, format!("'{value}' is used as {}", read.clamp(low, high))))
                }
                _ => None,
            }
        }
        Value::IntegerOrDefault(default) => match trimmed.is_empty() || trimmed.parse::<i64>().is_ok_and(|n| n >= 0) {
            true => None,
            false => error(format!("'{value}' is not a number: the server uses {default}")),
        },
        Value::Minutes => match trimmed.is_empty() || trimmed.bytes().all(|b| b.is_ascii_digit()) {
            true => None,
            false => error(format!("'{value}' is not a number of minutes (the device is sent '/initial {trimmed}')")),
        },
        Value::Port => match trimmed.is_empty() || (trimmed.bytes().all(|b| b.is_ascii_digit()) && trimmed.parse::<u16>().is_ok_and(|p| p > 0)) {
            true => None,
            false => error(format!("'{value}' is not a port number")),
        },
        Value::BearerToken => match trimmed {
            "" => None,
            token if !token.bytes().all(|b| b.is_ascii_graphic()) => {
                error("the metrics token holds characters an Authorization header cannot carry: write letters, digits and punctuation, no spaces".into())
            }
            token if token.len() < 16 => Some((
                Severity::Warning,
                format!("a metrics token of {} characters is easy to guess: use at least 16 (openssl rand -hex 16)", token.len()),
            )),
            _ => None,
        },
        Value::Boolean => match value {
            "" | "true" | "false" => None,
            _ => error(format!("'{value}' is read as false: only \"true\" turns it on (write true or false)")),
        },
        Value::MasterUrl => match trimmed {
            "" | "none" => None,
            url => absolute_url(url).map(|e| (Severity::Error, format!("{e} (write an http(s) URL, \"none\" or \"\")"))),
        },
        Value::AbsoluteUrl => match trimmed {
            "" => None,
            url => absolute_url(url).map(|e| (Severity::Error, e)),
        },
        Value::UrlReference => match trimmed {
            "" => None,
            url if url.contains("://") => absolute_url(url).map(|e| (Severity::Error, e)),
            url => match url::Url::parse("http://update.example.com/update/update.php").and_then(|base| base.join(url)) {
                Ok(_) => None,
                Err(e) => error(format!("'{url}' is not a URL: {e}")),
            },
        },
        Value::Hours => match trimmed.is_empty() || trimmed.split(',').all(|item| is_hours(item.trim())) {
            true => None,
            false => error(format!("'{value}' is not a list of hours (0-23) or h:mm-h:mm ranges, comma-separated")),
        },
        Value::Substitution => match value {
            "" => None,
            spec => crate::script::rewrite::Substitution::parse(spec)
                .err()
                .map(|e| (Severity::Error, format!("{e}: the server leaves HTTPS URLs unchanged"))),
        },
    }
}

fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn absolute_url(url: &str) -> Option<String> {
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => None,
        Ok(parsed) => Some(format!("'{url}' is not an http or https URL (scheme '{}')", parsed.scheme())),
        Err(e) => Some(format!("'{url}' is not a URL: {e}")),
    }
}

/// `22`, `22:00-05:00`, `1:00-4:30`, `7-9`.
fn is_hours(item: &str) -> bool {
    let time = |t: &str, end: bool| -> bool {
        let (hours, minutes) = t.split_once(':').unwrap_or((t, "00"));
        let max_hour = if end { 24 } else { 23 };
        (1..=2).contains(&hours.len())
            && hours.bytes().all(|b| b.is_ascii_digit())
            && hours.parse::<u32>().is_ok_and(|h| h <= max_hour)
            && minutes.len() == 2
            && minutes.bytes().all(|b| b.is_ascii_digit())
            && minutes.parse::<u32>().is_ok_and(|m| m < 60)
    };
    match item.split_once('-') {
        Some((from, to)) => time(from, false) && time(to, true),
        None => !item.contains(':') && time(item, false),
    }
}

/// The candidate closest to `word` (same letters in another case, or at most two edits away,
/// fewer than the word is long).
pub(crate) fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let candidates: Vec<&str> = candidates.collect();
    if let Some(same) = candidates.iter().find(|c| c.eq_ignore_ascii_case(word)) {
        return Some(same);
    }
    let limit = 2.min(word.chars().count().saturating_sub(1));
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edits (insert, delete, replace, swap of neighbours) from `a` to `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1).min(rows[i][j - 1] + 1).min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::super::{Lines, Source};
    use super::*;

    fn findings(text: &str) -> Vec<String> {
        let dtd = Dtd::parse(super::super::SHIPPED_DTD).unwrap();
        let doc = crate::xml::parse_document(text, &crate::xml::Limits::CONFIGURATION, true).unwrap();
        let source = Source { name: "u.xml".into(), doc, lines: Lines::new(text) };
        let mut out = Findings::default();
        validate(&source, &dtd, false, &mut out);
        out.0.sort_by_key(|f| (f.line, f.column));
        out.0.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn the_three_typos_of_the_issue() {
        let text = "<config>\n  <statuss dir='status'/>\n  <backup dri='backup' nbackups='ten'/>\n</config>";
        assert_eq!(
            findings(text),
            [
                "u.xml:2:3: error: unknown element <statuss> (did you mean <status>?): the server ignores it",
                "u.xml:3:11: error: unknown attribute dri= on <backup> (did you mean dir=?): the server ignores it",
                "u.xml:3:34: error: backup/@nbackups: 'ten' is not a number (the server reads 0)",
            ]
        );
    }

    #[test]
    fn places_required_attributes_repeats_and_text() {
        let text = "<config>\n<model>ip232</model>\n<phases><phase seq='1'/></phases>\n<queries><query id='q'><cmd>a</cmd><cmd>b</cmd><applies>*</applies></query></queries>\n<fwstorage>fw/</fwstorage>\n<times/><times/>\n</config>";
        assert_eq!(
            findings(text),
            [
                "u.xml:2:1: error: <model> does not belong in <config> (it belongs in <class>, <filenames>, <nobootdev>, <nofirmdev>): the server ignores it here",
                "u.xml:3:9: error: <phase> without id=, which it needs",
                "u.xml:4:36: warning: a second <cmd> in <query>: the server reads the first",
                "u.xml:5:12: warning: text in <fwstorage> is ignored: it holds no text",
                "u.xml:6:9: error: a second <times> section: the server reads one section of a name, so settings here are lost",
            ]
        );
    }

    #[test]
    fn enumerations_and_env_attributes() {
        let text = "<config debugmerge='yes' debugcerts=''><master><applies env='false'>berlin</applies></master></config>";
        assert_eq!(
            findings(text),
            [
                "u.xml:1:21: error: debugmerge=\"yes\" is not one of true, false",
                "u.xml:1:57: warning: env=\"false\" makes this an environment name as env=\"true\" does: any env attribute does",
            ]
        );
        assert!(findings("<other/>")[0].contains("the document element is <other>, not <config>"));
    }

    #[test]
    fn numbers() {
        assert_eq!(value_problem(Value::Integer, ""), None);
        assert_eq!(value_problem(Value::Integer, " 42 "), None);
        assert_eq!(value_problem(Value::Integer, "-7"), None);
        assert_eq!(value_problem(Value::Integer, "0.5"), Some((Severity::Warning, "'0.5' is read as 0".into())));
        assert_eq!(value_problem(Value::Integer, "10s"), Some((Severity::Warning, "'10s' is read as 10".into())));
        assert_eq!(value_problem(Value::Integer, "ten").map(|p| p.0), Some(Severity::Error));
        assert_eq!(value_problem(Value::Integer, "99999999999999999999").map(|p| p.0), Some(Severity::Error));
        assert_eq!(value_problem(Value::IntegerWithin(1, 60), "600"), Some((Severity::Warning, "'600' is used as 60".into())));
        assert_eq!(value_problem(Value::IntegerOrDefault("90"), "90"), None);
        assert_eq!(value_problem(Value::IntegerOrDefault("90"), "90d").map(|p| p.1), Some("'90d' is not a number: the server uses 90".into()));
        assert_eq!(value_problem(Value::Minutes, "10"), None);
        assert!(value_problem(Value::Minutes, "10m").is_some());
        assert_eq!(value_problem(Value::Port, "444"), None);
        assert!(value_problem(Value::Port, "0").is_some() && value_problem(Value::Port, "70000").is_some() && value_problem(Value::Port, "https").is_some());
    }

    #[test]
    fn booleans() {
        for good in ["", "true", "false"] {
            assert_eq!(value_problem(Value::Boolean, good), None, "{good}");
        }
        for bad in ["True", "yes", "1", " true"] {
            assert_eq!(value_problem(Value::Boolean, bad).map(|p| p.0), Some(Severity::Error), "{bad}");
        }
    }

    #[test]
    fn urls() {
        for good in ["", "none", "http://172.16.0.10/CMD0/box_info.xml", "https://admin:pw@pbx.example.com:8443/CMD0/box_info.xml"] {
            assert_eq!(value_problem(Value::MasterUrl, good), None, "{good}");
        }
        for bad in ["http//pbx/CMD0/box_info.xml", "ftp://pbx/x", "http://pbx name/x", "http://"] {
            assert_eq!(value_problem(Value::MasterUrl, bad).map(|p| p.0), Some(Severity::Error), "{bad}");
        }
        for good in ["fw/{build}/", "/fw/{build}/{filename}", "update.php?mode=backup&hwid=#h&sn=#m", "https://fw.example.com/{build}/{model}/"] {
            assert_eq!(value_problem(Value::UrlReference, good), None, "{good}");
        }
        assert!(value_problem(Value::UrlReference, "https://fw example/").is_some());
        assert!(value_problem(Value::AbsoluteUrl, "update.yourcompany.com/update.php").is_some());
        assert_eq!(value_problem(Value::AbsoluteUrl, "https://update.yourcompany.com:444/update/update.php"), None);
    }

    #[test]
    fn hours_and_substitutions() {
        for good in ["", "22:00-05:00", "1:00-4:30", "12,22,23,0,1,2,3,4", "22:00-24:00, 3"] {
            assert_eq!(value_problem(Value::Hours, good), None, "{good}");
        }
        for bad in ["22.00-05.00", "25", "night", "22:00", "22:60-1:00", "1:0-2:00"] {
            assert_eq!(value_problem(Value::Hours, bad).map(|p| p.0), Some(Severity::Error), "{bad}");
        }
        assert_eq!(value_problem(Value::Substitution, "!mtls/!!i"), None);
        assert_eq!(value_problem(Value::Substitution, ""), None);
        let (severity, message) = value_problem(Value::Substitution, "!mtls(/!!").unwrap();
        assert_eq!(severity, Severity::Error);
        assert!(message.contains("bad pattern"), "{message}");
        assert!(value_problem(Value::Substitution, "mtls").is_some());
    }

    #[test]
    fn every_typed_attribute_is_declared_in_the_dtd() {
        let dtd = Dtd::parse(super::super::SHIPPED_DTD).unwrap();
        for (element, attribute, _) in TYPED {
            assert!(dtd.attribute(element, attribute).is_some(), "{element}/@{attribute}");
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(nearest("dri", ["dir", "nbackups"].into_iter()), Some("dir"));
        assert_eq!(nearest("cAname", ["CAname"].into_iter()), Some("CAname"));
        assert_eq!(nearest("zzz", ["dir"].into_iter()), None);
        assert_eq!(nearest("x", ["y"].into_iter()), None, "one letter is no typo of another");
    }
}
