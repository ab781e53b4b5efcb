//! The configuration as the server merges it: where a refusal points, and the cross
//! references between sections (phases dropped by an equal `seq`, `applies` naming nothing,
//! queries without `cmd`, master builds, certificate type, the dynamic snippet program).

use super::{Findings, Severity, Source};
use crate::config::{Applies, Config};
use crate::script::firmware::BuildChoice;
use crate::xml::Element;
use std::path::Path;

type Node<'s, 'a> = roxmltree::Node<'s, 'a>;

/// The first element, in the order a setting wins (user file, then config.xml), for which
/// `wanted` holds.
fn find<'s, 'a>(sources: &'s [Source<'a>], wanted: impl Fn(Node) -> bool) -> Option<(&'s Source<'a>, Node<'s, 'a>)> {
    sources.iter().find_map(|s| s.doc.descendants().find(|n| n.is_element() && wanted(*n)).map(|n| (s, n)))
}

fn named(node: Node, name: &str) -> bool {
    node.tag_name().name() == name
}

fn with_id(node: Node, name: &str, id: &str) -> bool {
    named(node, name) && node.attribute("id") == Some(id)
}

fn under(node: Node, parent: &str) -> bool {
    node.parent_element().is_some_and(|p| named(p, parent))
}

/// Where an attribute's value starts, or the element when it has none.
fn attribute_at(node: Node, attribute: &str) -> usize {
    node.attributes().find(|a| a.name() == attribute).map_or(node.range().start, |a| a.range_value().start)
}

/// The text between the first pair of `'` after `prefix` in `message`.
fn quoted_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    let rest = rest.strip_prefix('\'')?;
    Some(&rest[..rest.find('\'')?])
}

/// The place a refusal of [`crate::config::build`] (its message) is about: a source and a byte
/// offset in it; None when no source could be read.
pub(super) fn locate_refusal<'s, 'a>(message: &str, sources: &'s [Source<'a>]) -> (Option<&'s Source<'a>>, usize) {
    let user: Vec<&Source> = sources.iter().filter(|s| s.name != "config.xml").collect();
    let root_of = |s: &'s Source<'a>| (Some(s), s.doc.root_element().range().start);
    let fallback = || sources.first().map_or((None, 0), root_of);
    let at = |found: Option<(&'s Source<'a>, Node<'s, 'a>)>| found.map(|(s, n)| (Some(s), n.range().start));

    if let Some(tag) = quoted_after(message, "must have 'id' attribute in ") {
        // the merge wants an id where config.xml's first <tag> of the same parent has one
        let keyed_parents: Vec<&str> = sources
            .iter()
            .filter(|s| s.name == "config.xml")
            .flat_map(|s| s.doc.descendants())
            .filter(|p| p.is_element() && p.children().find(|c| named(*c, tag)).is_some_and(|c| c.attribute("id").is_some()))
            .map(|p| p.tag_name().name())
            .collect();
        let missing = user.iter().find_map(|s| {
            s.doc
                .descendants()
                .find(|n| {
                    n.is_element()
                        && named(*n, tag)
                        && n.attribute("id").is_none()
                        && n.parent_element().is_some_and(|p| keyed_parents.contains(&p.tag_name().name()))
                })
                .map(|n| (*s, n))
        });
        return at(missing).unwrap_or_else(fallback);
    }
    for kind in ["phase", "environment", "class"] {
        if let Some(id) = quoted_after(message, &format!("{kind} name ")) {
            let mut all = sources.iter().flat_map(|s| s.doc.descendants().filter(|n| n.is_element() && with_id(*n, kind, id)).map(move |n| (s, n)));
            let found = if message.ends_with("defined twice") { all.nth(1) } else { all.next() };
            return at(found).unwrap_or_else(fallback);
        }
        if message == format!("at least one {kind} must be defined") {
            return at(find(sources, |n| named(n, &format!("{kind}s")))).unwrap_or_else(fallback);
        }
    }
    if let (Some(environment), Some(implied)) = (quoted_after(message, "environment "), quoted_after(message, "implies undefined environment ")) {
        let found = find(sources, |n| {
            named(n, "implies")
                && n.text().unwrap_or("").trim() == implied
                && n.parent_element().is_some_and(|p| with_id(p, "environment", environment))
        });
        return at(found).unwrap_or_else(fallback);
    }
    if message.starts_with("master/@info") {
        return user.first().map_or_else(fallback, |s| root_of(s));
    }
    if message.starts_with("fwstorage/@url") {
        return at(find(sources, |n| named(n, "fwstorage") && under(n, "config"))).unwrap_or_else(fallback);
    }
    if message.starts_with("customcerts/@CAname") {
        let found = find(sources, |n| named(n, "times") && n.attribute("forcetrust") == Some("true"));
        return found.map(|(s, n)| (Some(s), attribute_at(n, "forcetrust"))).unwrap_or_else(fallback);
    }
    if message.starts_with("proxies/@trusted") {
        let found = find(sources, |n| named(n, "proxies") && n.attribute("trusted").is_some());
        return found.map(|(s, n)| (Some(s), attribute_at(n, "trusted"))).unwrap_or_else(fallback);
    }
    if message.starts_with("upgrades") {
        let sections: Vec<(&Source, Node)> = sources
            .iter()
            .flat_map(|s| s.doc.root_element().children().filter(|n| named(*n, "upgrades")).map(move |n| (s, n)))
            .collect();
        if message.contains("only one <upgrades>") {
            return sections.get(1).map(|(s, n)| (Some(*s), n.range().start)).unwrap_or_else(fallback);
        }
        // the path that is refused on its own
        for (source, section) in &sections {
            for path in section.children().filter(|n| n.is_element()) {
                let text = &source.doc.input_text()[path.range()];
                let alone = Element::parse_trusted(&format!("<config><upgrades>{text}</upgrades></config>"));
                if alone.is_ok_and(|config| crate::upgrades::parse(&config).is_err()) {
                    return (Some(*source), path.range().start);
                }
            }
        }
        return sections.first().map(|(s, n)| (Some(*s), n.range().start)).unwrap_or_else(fallback);
    }
    fallback()
}

pub(super) fn check(root: &Path, config: &Config, sources: &[Source], out: &mut Findings) {
    dropped_by_seq(sources, out);
    applies(config, sources, out);
    queries(config, sources, out);
    master(config, sources, out);
    if let Some(customcerts) = &config.customcerts {
        let ca_type = customcerts.attr("CAtype").unwrap_or("manual");
        if ca_type != "manual" {
            if let Some((source, node)) = find(sources, |n| named(n, "customcerts") && n.attribute("CAtype").is_some()) {
                out.push(source.finding(
                    attribute_at(node, "CAtype"),
                    Severity::Error,
                    format!("customcerts/@CAtype '{ca_type}': only 'manual' is supported, every certificate check stops here"),
                ));
            }
        }
    }
    if let Some(dynamic) = &config.dynamic {
        use std::os::unix::fs::PermissionsExt;
        let program = root.join(&dynamic.exec);
        let runnable = std::fs::metadata(&program).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if !runnable {
            if let Some((source, node)) = find(sources, |n| named(n, "dynamic") && n.attribute("exec").is_some()) {
                out.push(source.finding(
                    attribute_at(node, "exec"),
                    Severity::Error,
                    format!("dynamic/@exec '{}' is not an executable file: every poll delivers nothing", dynamic.exec),
                ));
            }
        }
    }
}

/// Children of a section that carry the same `seq`: the server keeps only the last
/// ([`crate::config::merge::order_by_seq`]).
fn dropped_by_seq(sources: &[Source], out: &mut Findings) {
    let parsed: Vec<Element> = sources.iter().rev().filter_map(|s| Element::parse_trusted(s.doc.input_text()).ok()).collect();
    let [defaults, user] = parsed.as_slice() else { return };
    let mut merged = defaults.clone();
    if crate::config::merge::merge(&mut merged, user).is_err() {
        return;
    }
    for section in &merged.children {
        let sequenced: Vec<&str> = section.children.iter().filter(|c| c.attr("seq").is_some()).map(|c| c.name.as_str()).collect();
        for (index, child) in section.children.iter().enumerate() {
            if !sequenced.contains(&child.name.as_str()) {
                continue;
            }
            let seq = crate::config::merge::php_intval(child.attr("seq").unwrap_or(""));
            let later = section.children[index + 1..]
                .iter()
                .rev()
                .find(|c| c.name == child.name && crate::config::merge::php_intval(c.attr("seq").unwrap_or("")) == seq);
            let Some(winner) = later else { continue };
            let id = child.attr("id").unwrap_or("");
            let found = find(sources, |n| with_id(n, &child.name, id) && under(n, &section.name));
            if let Some((source, node)) = found {
                out.push(source.finding(
                    node.range().start,
                    Severity::Error,
                    format!(
                        "{} '{id}' has the same seq ({seq}) as {} '{}': the server keeps only '{}'",
                        child.name,
                        winner.name,
                        winner.attr("id").unwrap_or(""),
                        winner.attr("id").unwrap_or("")
                    ),
                ));
            }
        }
    }
}

/// Whether `applies` can match a device: `*`, an environment, a class or a model the
/// configuration names (the device's own type counts as a class).
fn matches_something(applies: &Applies, config: &Config) -> bool {
    let value = applies.value.to_lowercase();
    if applies.value == "*" {
        return true;
    }
    if applies.environment {
        return config.environments.iter().any(|e| e.id.eq_ignore_ascii_case(&value));
    }
    config.classes.iter().any(|c| c.id.eq_ignore_ascii_case(&value) || c.models.contains(&value))
        || config.nofirmdev.contains(&value)
        || config.nobootdev.contains(&value)
        || config.filenames.iter().any(|(model, _, _)| *model == value)
}

fn applies(config: &Config, sources: &[Source], out: &mut Findings) {
    let mut listed: Vec<(&Applies, Option<&str>)> = config.master.applies.iter().map(|a| (a, None)).collect();
    for query in &config.queries {
        listed.extend(query.applies.iter().map(|a| (a, Some(query.id.as_str()))));
    }
    for (applies, query) in listed {
        if matches_something(applies, config) {
            continue;
        }
        let found = find(sources, |n| {
            named(n, "applies")
                && n.text().unwrap_or("").trim() == applies.value
                && n.parent_element().is_some_and(|p| match query {
                    None => named(p, "master"),
                    Some(id) => with_id(p, "query", id),
                })
        });
        let what = if applies.environment { "no environment" } else { "no class and no model" };
        if let Some((source, node)) = found {
            out.push(source.finding(
                node.range().start,
                Severity::Warning,
                format!("applies '{}' matches no device: the configuration has {what} of that name", applies.value),
            ));
        }
    }
    for path in &config.upgrades {
        let crate::upgrades::UpgradePath::Innovaphone(build) = path else { continue };
        if matches_something(&build.applies, config) {
            continue;
        }
        if let Some((source, node)) = find(sources, |n| named(n, "path") && n.attribute("applies") == Some(build.applies.value.as_str())) {
            let what = if build.applies.environment { "no environment" } else { "no class and no model" };
            out.push(source.finding(
                attribute_at(node, "applies"),
                Severity::Warning,
                format!("applies '{}' matches no device: the configuration has {what} of that name", build.applies.value),
            ));
        }
    }
}

fn queries(config: &Config, sources: &[Source], out: &mut Findings) {
    for query in config.queries.iter().filter(|q| q.cmd.is_none()) {
        let Some((source, node)) = find(sources, |n| with_id(n, "query", &query.id) && under(n, "queries")) else { continue };
        let (severity, message) = if query.applies.is_empty() {
            (Severity::Warning, format!("query '{}' has no <cmd>: it never runs", query.id))
        } else {
            (
                Severity::Error,
                format!("query '{}' applies to devices but has no <cmd>: every poll it applies to stops with \"query '{}' has no cmd\"", query.id, query.id),
            )
        };
        out.push(source.finding(node.range().start, severity, message));
    }
}

fn master(config: &Config, sources: &[Source], out: &mut Findings) {
    let master = &config.master;
    let place = |attribute: &str| {
        find(sources, |n| named(n, "master") && under(n, "config") && n.attribute(attribute).is_some())
            .map(|(s, n)| (s, attribute_at(n, attribute)))
            .or_else(|| find(sources, |n| named(n, "master") && under(n, "config")).map(|(s, n)| (s, n.range().start)))
    };
    for (attribute, value, allow_firmware) in [("firmware", &master.firmware, false), ("bootcode", &master.bootcode, true)] {
        let Some((source, at)) = place(attribute) else { continue };
        match BuildChoice::parse(value, allow_firmware) {
            Err(e) if master.info.is_empty() => {
                out.push(source.finding(at, Severity::Warning, format!("master/@{attribute}: {e} (unused while master/@info is empty)")))
            }
            Err(e) => out.push(source.finding(at, Severity::Error, format!("master/@{attribute}: {e}: every poll stops at the firmware step"))),
            Ok(BuildChoice::Master) if master.info == "none" => out.push(source.finding(
                at,
                Severity::Error,
                format!("{attribute}='master' with master/@info=\"none\": every poll stops with \"Cannot use {attribute}='master' with no info available\""),
            )),
            Ok(_) => {}
        }
    }
}
