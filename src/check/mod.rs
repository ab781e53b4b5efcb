//! `update-server check`: the configuration (`config.xml` and the user's file) against
//! `full-config.dtd`, the values the code reads, the cross references between them and the
//! snippet files in `times/@dir` (issue 11).
//!
//! Findings are `file:line:column: error|warning: message`. What is an error:
//! - everything the server itself refuses: a configuration it does not load (the server's own
//!   message, at the place it is about), and settings that stop every poll they reach
//!   (`master/@firmware` that is no build, a query that applies but has no `cmd`, …);
//! - what the server reads without a word but almost surely not as meant: unknown elements and
//!   attributes, elements in the wrong place, values that are no number, boolean, URL, time
//!   list or pattern, sections given twice (the server reads one of them), phases that drop
//!   each other (same `seq`), SPA snippets the server refuses to deliver.
//!
//! A warning is something that works but has no effect or not the full one: a value read only
//! in part (`minage="0.5"` is 0 days), text inside an element that holds none, a second
//! element where one is read, `applies` naming nothing configured, a query without `cmd` that
//! applies to no device, snippet files whose name no device is ever given, a dynamic snippet
//! program that is not there, a user file shadowed by another.

pub mod dtd;
mod document;
mod merged;
mod snippets;

use crate::config::{self, ConfigError};
use crate::xml::Limits;
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

/// The DTD compiled in: the list of what this binary reads (an install tree may hold an older
/// copy of the file).
pub const SHIPPED_DTD: &str = include_str!("../../full-config.dtd");

/// The sample user file the install tree ships (`user-config.xml`), shadowed harmlessly.
const SHIPPED_SAMPLE: &str = include_str!("../../user-config.xml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Relative to the root (`config/user-config.xml`, `scripts/update-all-default.txt`).
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub severity: Severity,
    pub message: String,
    /// The server refuses the configuration with this message (its log already says so).
    pub refusal: bool,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}:{}: {}: {}", self.file, self.line, self.column, self.severity, one_line(&self.message))
    }
}

impl Finding {
    /// The finding with its file named below `root` (for a log, or a check run on another
    /// directory than the current one).
    pub fn under(&self, root: &Path) -> String {
        format!("{}:{}:{}: {}: {}", root.join(&self.file).display(), self.line, self.column, self.severity, one_line(&self.message))
    }
}

/// A message on one line (a regex error points at its pattern over three).
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Whether any finding is an error.
pub fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Error)
}

/// Line and column (from 1, columns in characters) of byte offsets in one text.
pub(crate) struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    pub(crate) fn new(text: &'a str) -> Lines<'a> {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Lines { text, starts }
    }

    pub(crate) fn at(&self, offset: usize) -> (u32, u32) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|start| *start <= offset);
        let column = self.text[self.starts[line - 1]..offset].chars().count() + 1;
        (u32::try_from(line).unwrap_or(u32::MAX), u32::try_from(column).unwrap_or(u32::MAX))
    }
}

/// One configuration file, parsed with positions.
pub(crate) struct Source<'a> {
    pub name: String,
    pub doc: roxmltree::Document<'a>,
    pub lines: Lines<'a>,
}

impl Source<'_> {
    pub(crate) fn finding(&self, offset: usize, severity: Severity, message: String) -> Finding {
        let (line, column) = self.lines.at(offset);
        Finding { file: self.name.clone(), line, column, severity, message, refusal: false }
    }
}

/// Findings collected in one run.
#[derive(Default)]
pub(crate) struct Findings(pub Vec<Finding>);

impl Findings {
    pub(crate) fn push(&mut self, finding: Finding) {
        if !self.0.contains(&finding) {
            self.0.push(finding);
        }
    }
}

fn shipped_dtd() -> &'static Result<dtd::Dtd, String> {
    static DTD: OnceLock<Result<dtd::Dtd, String>> = OnceLock::new();
    DTD.get_or_init(|| dtd::Dtd::parse(SHIPPED_DTD))
}

/// The text of `name` under `root`, read as the server reads it (no more than a configuration
/// may be); None when it cannot be read (the server's refusal says why).
fn read_text(root: &Path, name: &str) -> Option<String> {
    let limit = Limits::CONFIGURATION.bytes as u64 + 1;
    let mut text = String::new();
    let file = std::fs::File::open(root.join(name)).ok()?;
    std::io::Read::read_to_string(&mut std::io::Read::take(file, limit), &mut text).ok()?;
    Some(text)
}

/// Checks the configuration under `root`; findings in file order, then by position.
pub fn check(root: &Path) -> Vec<Finding> {
    let mut findings = Findings::default();
    let dtd = match shipped_dtd() {
        Ok(dtd) => Some(dtd),
        Err(e) => {
            findings.push(Finding {
                file: "full-config.dtd".into(),
                line: 1,
                column: 1,
                severity: Severity::Error,
                message: format!("the DTD compiled into this binary cannot be read: {e}"),
                refusal: false,
            });
            None
        }
    };
    let loaded = config::load(root);
    let user_file = config::find_user_file(root);
    let names: Vec<String> = std::iter::once("config.xml".to_string()).chain(user_file.clone()).collect();
    let texts: Vec<(String, String)> = names.iter().filter_map(|n| read_text(root, n).map(|t| (n.clone(), t))).collect();
    // the sources in the order a setting wins: the user file first, then the defaults
    let sources: Vec<Source> = texts
        .iter()
        .rev()
        .filter_map(|(name, text)| {
            let doc = crate::xml::parse_document(text, &Limits::CONFIGURATION, true).ok()?;
            Some(Source { name: name.clone(), doc, lines: Lines::new(text) })
        })
        .collect();
    if let Some(dtd) = dtd {
        for source in &sources {
            document::validate(source, dtd, source.name == "config.xml", &mut findings);
        }
    }
    match &loaded {
        Err(error) => findings.push(refusal(error, &sources)),
        Ok(config) => {
            merged::check(root, config, &sources, &mut findings);
            snippets::check(root, config, &sources, &mut findings);
        }
    }
    if let Some(used) = &user_file {
        for shadowed in config::USER_FILE_CANDIDATES.iter().skip_while(|c| *c != used).skip(1) {
            if !root.join(shadowed).is_file() {
                continue;
            }
            if *shadowed == "user-config.xml" && read_text(root, shadowed).as_deref() == Some(SHIPPED_SAMPLE) {
                continue; // the sample the install tree ships: nothing of the operator's is lost
            }
            findings.push(Finding {
                file: shadowed.to_string(),
                line: 1,
                column: 1,
                severity: Severity::Warning,
                message: format!("not read: the server reads {used}, the first of {}", config::USER_FILE_CANDIDATES.join(", ")),
                refusal: false,
            });
        }
    }
    let mut findings = findings.0;
    // a refusal said at a place says all there is about it
    let refused: Vec<(String, u32, u32)> =
        findings.iter().filter(|f| f.refusal).map(|f| (f.file.clone(), f.line, f.column)).collect();
    findings.retain(|f| f.refusal || !refused.contains(&(f.file.clone(), f.line, f.column)) || f.severity == Severity::Warning);
    findings.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    findings
}

/// The server's refusal of the configuration, at the place it is about.
fn refusal(error: &ConfigError, sources: &[Source]) -> Finding {
    let refused = |file: String, (line, column): (u32, u32), message: String| Finding {
        file,
        line,
        column,
        severity: Severity::Error,
        message: format!("{message} (the server refuses this configuration)"),
        refusal: true,
    };
    match error {
        ConfigError::UserFileMissing => Finding {
            file: config::USER_FILE_CANDIDATES[1].to_string(),
            line: 1,
            column: 1,
            severity: Severity::Error,
            message: format!(
                "no user file: none of {} exists (the server answers every poll with '# Error: user-config.xml is missing')",
                config::USER_FILE_CANDIDATES.join(", ")
            ),
            refusal: true,
        },
        ConfigError::Unreadable { file, reason } => refused(file.clone(), (1, 1), format!("cannot be read: {reason}")),
        ConfigError::Malformed { file, line, column, message } => refused(file.clone(), (*line, *column), format!("malformed XML: {message}")),
        ConfigError::Invalid(message) => {
            let (source, offset) = merged::locate_refusal(message, sources);
            match source {
                Some(source) => refused(source.name.clone(), source.lines.at(offset), message.clone()),
                None => refused("config.xml".into(), (1, 1), message.clone()),
            }
        }
    }
}

/// `update-server check`: prints the findings for `root` (with the root in front of every
/// file when it is not the current directory) and a summary on stderr; 1 when any is an
/// error.
pub fn run(root: &Path, show_root: bool) -> u8 {
    let findings = check(root);
    for finding in &findings {
        if show_root {
            println!("{}", finding.under(root));
        } else {
            println!("{finding}");
        }
    }
    let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
    let warnings = findings.len() - errors;
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    eprintln!("update-server check {}: {}, {}", root.display(), plural(errors, "error"), plural(warnings, "warning"));
    u8::from(errors > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let lines = Lines::new("ab\nçd\n\nx");
        assert_eq!(lines.at(0), (1, 1));
        assert_eq!(lines.at(2), (1, 3));
        assert_eq!(lines.at(3), (2, 1));
        assert_eq!(lines.at(5), (2, 2), "ç is one character of two bytes");
        assert_eq!(lines.at(4), (2, 1), "inside a character: its start");
        assert_eq!(lines.at(7), (3, 1));
        assert_eq!(lines.at(99), (4, 2));
    }

    #[test]
    fn findings_print_as_file_line_column() {
        let f = Finding { file: "config/user-config.xml".into(), line: 3, column: 5, severity: Severity::Warning, message: "m".into(), refusal: false };
        assert_eq!(f.to_string(), "config/user-config.xml:3:5: warning: m");
        assert_eq!(f.under(Path::new("/srv/u")), "/srv/u/config/user-config.xml:3:5: warning: m");
        let f = Finding { message: "bad pattern: regex parse error:\n    (\n    ^\nerror: unclosed group".into(), ..f };
        assert_eq!(f.to_string(), "config/user-config.xml:3:5: warning: bad pattern: regex parse error: ( ^ error: unclosed group");
    }
}
