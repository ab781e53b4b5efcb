//! The snippet files in `times/@dir`: names no device is ever given
//! (`<phase>-<class>-<environment or serial>.txt|.xml`, every part lower-case, `all` only where
//! more than one is configured) and SPA snippets (`.xml`) the server refuses to deliver.

use super::{Finding, Findings, Lines, Severity, Source};
use crate::config::Config;
use std::path::Path;

/// Snippet files read for their content (SPA snippets); a larger one is judged on its first
/// bytes, which is where the server's limits refuse it too.
const MAX_READ_BYTES: u64 = 4 << 20;

/// How many files of the folder are looked at: a folder of more is no snippet folder.
const MAX_FILES: usize = 100_000;

pub(super) fn check(root: &Path, config: &Config, sources: &[Source], out: &mut Findings) {
    let dir = &config.times.dir;
    let entries = match std::fs::read_dir(root.join(dir)) {
        Ok(entries) => entries,
        Err(e) => {
            let place = sources.iter().find_map(|s| {
                s.doc
                    .descendants()
                    .find(|n| n.has_tag_name("times") && n.attribute("dir").is_some())
                    .map(|n| (s, n.attributes().find(|a| a.name() == "dir").map_or(n.range().start, |a| a.range_value().start)))
            });
            let message = format!("times/@dir '{dir}' cannot be read ({e}): no device gets a snippet");
            match place {
                Some((source, at)) => out.push(source.finding(at, Severity::Warning, message)),
                None => out.push(Finding { file: "config.xml".into(), line: 1, column: 1, severity: Severity::Warning, message, refusal: false }),
            }
            return;
        }
    };
    let mut names: Vec<String> = entries
        .flatten()
        .take(MAX_FILES)
        // a link to a file is read as the file, as the server reads it
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for name in names {
        let lower = name.to_lowercase();
        let Some(extension) = [".txt", ".xml"].into_iter().find(|x| lower.ends_with(x)) else { continue };
        let file = format!("{dir}/{name}");
        let mut warn = |message: String| {
            out.push(Finding { file: file.clone(), line: 1, column: 1, severity: Severity::Warning, message, refusal: false })
        };
        if let Some(problem) = name_problem(&name, config) {
            warn(format!("{problem}: no device is given this file"));
        } else if name != lower {
            warn(format!("the server looks for lower-case names ({lower}): no device is given this file"));
        }
        if extension == ".xml" {
            if let Some(finding) = spa_snippet(root, &file) {
                out.push(finding);
            }
        }
    }
}

/// What keeps `name` (`<phase>-<class>-<env>.<ext>`) from ever being a device's candidate.
pub(crate) fn name_problem(name: &str, config: &Config) -> Option<String> {
    let lower = name.to_lowercase();
    let stem = &lower[..lower.len().saturating_sub(4)];
    let parts: Vec<&str> = stem.split('-').collect();
    let [phase, class, env] = parts.as_slice() else {
        let hint = if parts.len() == 8 && is_serial(&parts[2..].join("_")) { " (a serial is written with '_': 00_90_33_3e_0c_57)" } else { "" };
        return Some(format!("not <phase>-<class>-<environment or serial>{}{hint}", &lower[stem.len()..]));
    };
    let wildcard = |kind: &str, count: usize| {
        (count < 2).then(|| format!("'all' stands for every {kind} only when more than one {kind} is configured"))
    };
    let phase_problem = if *phase == "all" {
        wildcard("phase", config.phases.len())
    } else if config.phases.iter().any(|p| p.files_of.to_lowercase() == *phase) {
        None
    } else {
        let ids: Vec<String> = config.phases.iter().filter(|p| p.files_of == p.id).map(|p| p.id.to_lowercase()).collect();
        Some(format!("'{phase}' is no configured phase ({})", ids.join(", ")))
    };
    let class_problem = if *class == "all" {
        wildcard("class", config.classes.len())
    } else if config.classes.iter().any(|c| c.id.to_lowercase() == *class || c.models.iter().any(|m| m == class))
        || config.nofirmdev.iter().chain(&config.nobootdev).any(|m| m == class)
        || config.filenames.iter().any(|(m, _, _)| m == class)
    {
        None
    } else {
        Some(format!("'{class}' is no class and no model of the configuration"))
    };
    let env_problem = if *env == "all" {
        wildcard("environment", config.environments.len())
    } else if config.environments.iter().any(|e| e.id.to_lowercase() == *env) || is_serial(env) {
        None
    } else {
        Some(format!("'{env}' is no environment and no serial"))
    };
    let problems: Vec<String> = [phase_problem, class_problem, env_problem].into_iter().flatten().collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// A serial as it stands in a snippet name: 12 hex digits, or six pairs joined by `_`.
fn is_serial(text: &str) -> bool {
    crate::device::is_serial(text) || crate::device::is_serial(&text.replace('_', "-"))
}

/// The server's refusal of an SPA snippet ([`crate::spa::profile::parse_snippet`]), at the
/// place it is about.
fn spa_snippet(root: &Path, file: &str) -> Option<Finding> {
    let mut content = Vec::new();
    let opened = std::fs::File::open(root.join(file)).ok()?;
    std::io::Read::read_to_end(&mut std::io::Read::take(opened, MAX_READ_BYTES), &mut content).ok()?;
    let error = crate::spa::profile::parse_snippet(file, &content).err()?;
    let message = error.strip_prefix(&format!("{file}: ")).unwrap_or(&error).to_string();
    let (line, column) = spa_problem_at(&content);
    // the XML error's own position is in front already
    let message = match message.split_once(": ") {
        Some((position, rest)) if position.starts_with("line ") && position.contains(", column ") => rest.to_string(),
        _ => message,
    };
    Some(Finding {
        file: file.to_string(),
        line,
        column,
        severity: Severity::Error,
        message: format!("{message}: the server refuses the SPA profile of every device that gets this file"),
        refusal: false,
    })
}

/// Where `parse_snippet` finds fault: the first byte that is not UTF-8 or not ASCII, the XML
/// error, the document element, or the first child it refuses.
fn spa_problem_at(content: &[u8]) -> (u32, u32) {
    let bytes_at = |offset: usize| {
        let before = &content[..offset.min(content.len())];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        (u32::try_from(line).unwrap_or(u32::MAX), u32::try_from(column).unwrap_or(u32::MAX))
    };
    let text = match std::str::from_utf8(content) {
        Ok(text) => text,
        Err(e) => return bytes_at(e.valid_up_to()),
    };
    if let Some(at) = text.bytes().position(|b| !b.is_ascii()) {
        return bytes_at(at);
    }
    let doc = match roxmltree::Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => return (e.pos().row, e.pos().col),
    };
    let lines = Lines::new(text);
    let root = doc.root_element();
    if root.tag_name().name() != "flat-profile" || root.tag_name().namespace().is_some() {
        return lines.at(root.range().start);
    }
    let plain = |name: &str| name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let refused = root.children().find(|node| {
        (node.is_text() && !node.text().unwrap_or("").trim().is_empty())
            || (node.is_element()
                && (!plain(node.tag_name().name())
                    || node.tag_name().namespace().is_some()
                    || node.children().any(|c| c.is_element())
                    || node.attributes().any(|a| !plain(a.name()) || a.namespace().is_some())))
    });
    match refused {
        Some(node) if node.is_text() => {
            let t = node.text().unwrap_or("");
            lines.at(node.range().start + t.len() - t.trim_start().len())
        }
        Some(node) => lines.at(node.range().start),
        None => lines.at(root.range().start),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::Element;

    fn config(user: &str) -> Config {
        let defaults = Element::parse(include_str!("../../config.xml")).unwrap();
        crate::config::build(defaults, &Element::parse(user).unwrap(), "config/user-config.xml").unwrap()
    }

    #[test]
    fn names_no_device_is_given() {
        let single = config("<config><master info=''/></config>");
        assert_eq!(name_problem("update-all-default.txt", &single), None);
        assert_eq!(name_problem("update-phone-00_90_33_3e_0c_57.txt", &single), None);
        assert_eq!(name_problem("update-ip232-0090333e0c57.xml", &single), None, "a model and a serial without separators");
        assert_eq!(name_problem("update-spa504g-default.xml", &single), None);
        assert_eq!(
            name_problem("all-all-all.txt", &single).unwrap(),
            "'all' stands for every phase only when more than one phase is configured; \
             'all' stands for every environment only when more than one environment is configured"
        );
        assert_eq!(name_problem("staging-phone-default.txt", &single).unwrap(), "'staging' is no configured phase (update)");
        assert_eq!(name_problem("update-phnoe-default.txt", &single).unwrap(), "'phnoe' is no class and no model of the configuration");
        assert_eq!(name_problem("update-all-berlin.txt", &single).unwrap(), "'berlin' is no environment and no serial");
        assert!(name_problem("update-all-00-90-33-3e-0c-57.txt", &single).unwrap().contains("a serial is written with '_'"));
        assert!(name_problem("readme.txt", &single).unwrap().starts_with("not <phase>-<class>-<environment or serial>.txt"));
        let staged = config(
            "<config><phases><phase id='Staging' seq='10'/></phases><environments><environment id='berlin'/></environments></config>",
        );
        assert_eq!(name_problem("all-all-all.txt", &staged), None);
        assert_eq!(name_problem("staging-all-berlin.txt", &staged), None, "ids are matched lower-cased");
        // the fake first phase uses its phase's files: no phase of its own name
        let fake = config("<config><times allow='22:00-05:00' forcestaging='true'/></config>");
        assert_eq!(fake.phases.len(), 2);
        assert_eq!(name_problem("all-all-default.txt", &fake), None, "two phases: all counts");
        assert!(name_problem("_first_update-all-default.txt", &fake).is_some());
    }

    #[test]
    fn spa_snippet_positions() {
        assert_eq!(spa_problem_at(b"<flat-profile>\n  <A>\xc3\xa9</A></flat-profile>"), (2, 6));
        assert_eq!(spa_problem_at(b"<flat-profile>\n<A>\xff</A></flat-profile>"), (2, 4));
        assert_eq!(spa_problem_at(b"<flat-profile>\n<A>x</B></flat-profile>"), (2, 5), "where roxmltree finds the wrong end tag");
        assert_eq!(spa_problem_at(b"\n<profile/>"), (2, 1));
        assert_eq!(spa_problem_at(b"<flat-profile>\n <A>1</A>\n <B><C/></B></flat-profile>"), (3, 2));
        assert_eq!(spa_problem_at(b"<flat-profile>\n <A>1</A>\n stray</flat-profile>"), (3, 2));
    }
}
