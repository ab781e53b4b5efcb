//! The diff between a device's consecutive backups (issue 11 item 5): which configuration
//! lines a backup removed and added against the one before it, in hunks with a little context.
//! Bounded: each backup is read up to [`MAX_INPUT_BYTES`], the diff gives up minimising after
//! [`DIFF_BUDGET`] (the result is still a correct diff, only perhaps a longer one) and at most
//! [`MAX_SHOWN_LINES`] lines are shown, the page saying what was left out.

use similar::{ChangeTag, TextDiff};
use std::path::Path;
use std::time::Duration;

/// The largest backup the page compares (a device's configuration is some 100 KB; the upload
/// limit, `backup/@maxsize`, is 8 MiB by default).
pub const MAX_INPUT_BYTES: u64 = 8 << 20;
/// The most lines (changed and context) one diff page shows.
pub const MAX_SHOWN_LINES: usize = 5000;
/// Unchanged lines shown around each change.
pub const CONTEXT_LINES: usize = 3;
/// CPU time the diff may spend on finding the shortest diff of two very different backups.
const DIFF_BUDGET: Duration = Duration::from_secs(2);

/// One shown line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// `add`, `del` or `ctx` (the CSS class).
    pub kind: &'static str,
    /// `+`, `-` or a blank.
    pub sign: &'static str,
    /// Line numbers in the older and the newer backup.
    pub old_number: Option<usize>,
    pub new_number: Option<usize>,
    pub text: String,
}

/// A run of changes with its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineDiff {
    pub hunks: Vec<Hunk>,
    pub added: usize,
    pub removed: usize,
    /// Changed lines not shown (beyond [`MAX_SHOWN_LINES`]).
    pub left_out: usize,
}

/// The line diff of `old` and `new` (line ends `\r\n`, `\n` or `\r`, as backups have them).
pub fn line_diff(old: &str, new: &str, max_lines: usize) -> LineDiff {
    let old_lines: Vec<&str> = split_lines(old);
    let new_lines: Vec<&str> = split_lines(new);
    let diff = TextDiff::configure().timeout(DIFF_BUDGET).diff_slices(&old_lines, &new_lines);
    let mut result = LineDiff::default();
    let mut shown = 0;
    for group in diff.grouped_ops(CONTEXT_LINES) {
        let mut hunk = Hunk { lines: Vec::new() };
        for op in &group {
            for change in diff.iter_changes(op) {
                let (kind, sign) = match change.tag() {
                    ChangeTag::Delete => {
                        result.removed += 1;
                        ("del", "-")
                    }
                    ChangeTag::Insert => {
                        result.added += 1;
                        ("add", "+")
                    }
                    ChangeTag::Equal => ("ctx", " "),
                };
                if shown >= max_lines {
                    if kind != "ctx" {
                        result.left_out += 1;
                    }
                    continue;
                }
                shown += 1;
                hunk.lines.push(Line {
                    kind,
                    sign,
                    old_number: change.old_index().map(|i| i + 1),
                    new_number: change.new_index().map(|i| i + 1),
                    text: change.value().to_string(),
                });
            }
        }
        if !hunk.lines.is_empty() {
            result.hunks.push(hunk);
        }
    }
    result
}

fn split_lines(text: &str) -> Vec<&str> {
    // stored backups have no empty lines (backup::normalize drops them)
    text.split("\r\n").flat_map(|line| line.split(['\n', '\r'])).filter(|l| !l.is_empty()).collect()
}

/// A backup and the one before it, compared.
#[derive(Debug, Clone)]
pub struct BackupDiff {
    pub index: u64,
    /// The backup before it (None: it is the oldest kept).
    pub previous: Option<u64>,
    pub diff: LineDiff,
}

/// Compares backup `index` of `hwid` (a plain token) in `folder` with the backup before it.
pub fn backup_diff(folder: &Path, hwid: &str, index: u64) -> Result<BackupDiff, String> {
    let stored = crate::backup::stored(folder, hwid);
    let position = stored.iter().position(|s| s.index == index).ok_or_else(|| format!("there is no backup #{index} of {hwid}"))?;
    let Some(previous) = position.checked_sub(1).map(|p| &stored[p]) else {
        return Ok(BackupDiff { index, previous: None, diff: LineDiff::default() });
    };
    let old = read_backup(&previous.path)?;
    let new = read_backup(&stored[position].path)?;
    Ok(BackupDiff { index, previous: Some(previous.index), diff: line_diff(&old, &new, MAX_SHOWN_LINES) })
}

/// A backup's text, refused beyond [`MAX_INPUT_BYTES`] (bytes that are no UTF-8 shown as �).
fn read_backup(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_INPUT_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read {name}: {e}"))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(format!("{name} is larger than the {} MiB the page compares", MAX_INPUT_BYTES >> 20));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(diff: &LineDiff) -> Vec<String> {
        diff.hunks.iter().flat_map(|h| &h.lines).filter(|l| l.kind != "ctx").map(|l| format!("{}{}", l.sign, l.text)).collect()
    }

    #[test]
    fn changed_lines_are_marked_with_their_context() {
        let old = "a\r\nb\r\nc\r\nd\r\ne\r\nf\r\ng\r\nh\r\ni\r\nj\r\nk";
        let new = "a\r\nb\r\nc\r\nD\r\ne\r\nf\r\ng\r\nh\r\ni\r\nj\r\nk\r\nl";
        let diff = line_diff(old, new, MAX_SHOWN_LINES);
        assert_eq!(changed(&diff), ["-d", "+D", "+l"]);
        assert_eq!((diff.added, diff.removed, diff.left_out), (2, 1, 0));
        // d (line 4) and l (line 12) have 7 equal lines between them, more than twice the
        // context: one hunk each, three lines of context
        assert_eq!(diff.hunks.len(), 2);
        let first: Vec<&str> = diff.hunks[0].lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(first, ["a", "b", "c", "d", "D", "e", "f", "g"]);
        let removed = &diff.hunks[0].lines[3];
        assert_eq!((removed.old_number, removed.new_number), (Some(4), None));
        assert_eq!(line_diff(old, old, MAX_SHOWN_LINES), LineDiff::default(), "nothing changed, nothing shown");
    }

    #[test]
    fn long_diffs_are_cut_and_say_so() {
        let old: String = (0..100).map(|i| format!("old {i}\n")).collect();
        let new: String = (0..100).map(|i| format!("new {i}\n")).collect();
        let diff = line_diff(&old, &new, 50);
        let shown: usize = diff.hunks.iter().map(|h| h.lines.len()).sum();
        assert_eq!((shown, diff.added, diff.removed, diff.left_out), (50, 100, 100, 150));
    }

    #[test]
    fn backups_are_compared_with_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let write = |i: u64, text: &str| std::fs::write(dir.path().join(format!("IP232-3e-0c-57.{i}.txt")), text).unwrap();
        write(3, "config change CMD0 /name old\r\nconfig add X");
        write(5, "config change CMD0 /name new\r\nconfig add X");
        let diff = backup_diff(dir.path(), "IP232-3e-0c-57", 5).unwrap();
        assert_eq!(diff.previous, Some(3));
        assert_eq!(changed(&diff.diff), ["-config change CMD0 /name old", "+config change CMD0 /name new"]);
        assert_eq!(backup_diff(dir.path(), "IP232-3e-0c-57", 3).unwrap().previous, None, "the oldest has none before it");
        assert!(backup_diff(dir.path(), "IP232-3e-0c-57", 4).is_err());
        std::fs::write(dir.path().join("IP232-3e-0c-57.6.txt"), vec![b'x'; MAX_INPUT_BYTES as usize + 1]).unwrap();
        assert!(backup_diff(dir.path(), "IP232-3e-0c-57", 6).unwrap_err().contains("larger than"));
    }
}
