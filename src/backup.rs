//! Configuration backups (`update.php?mode=backup`, SPEC §8): the device PUTs its whole
//! configuration; we keep the last `nbackups` different ones per device.

use crate::config::Backup;
use std::path::{Path, PathBuf};

/// Lines that change on every upload without changing the configuration (call lists, update
/// bookkeeping, TLS tickets); keeping them would make every backup look new. A line is
/// volatile when it starts with one of these and (for the call list) its rest matches the
/// pattern, as the old server's regular expressions said:
///   `^mod cmd FLASHDIR0 add-item .*\)\(type=.*\(info=.*$`, `^vars create UPDATE/.*$`,
///   `^config change UP1 /.*$`, `^vars create TLS0/TICKET/.*$`
/// (a line holds no line break, so `.*$` takes any rest).
const VOLATILE_PREFIXES: [&str; 3] = ["vars create UPDATE/", "config change UP1 /", "vars create TLS0/TICKET/"];
const CALL_LIST_PREFIX: &str = "mod cmd FLASHDIR0 add-item ";

fn is_volatile(line: &str) -> bool {
    if VOLATILE_PREFIXES.iter().any(|prefix| line.starts_with(prefix)) {
        return true;
    }
    // `.*\)\(type=.*\(info=.*`: a ")(type=" with a "(info=" somewhere after it
    line.strip_prefix(CALL_LIST_PREFIX)
        .and_then(|rest| rest.find(")(type=").map(|at| &rest[at + ")(type=".len()..]))
        .is_some_and(|after| after.contains("(info="))
}

/// The stored form of an uploaded configuration: lines split at CRLF, LF or CR, volatile and
/// empty lines dropped, joined with CRLF (no final CRLF). One pass over the body: a device
/// uploads its configuration (tens of KB) every few minutes, unchanged nearly every time.
pub fn normalize(body: &str) -> String {
    let mut stored = String::with_capacity(body.len());
    // splitting at every CR and every LF gives the lines of any of the three line ends, plus
    // empty ones between CR and LF, which go with the other empty lines
    for line in lines_at_cr_or_lf(body).filter(|line| !line.is_empty() && !is_volatile(line)) {
        if !stored.is_empty() {
            stored.push_str("\r\n");
        }
        stored.push_str(line);
    }
    stored
}

/// `text.split(['\r', '\n'])`, found with a vectorised byte search (the char-by-char split
/// was most of the cost of an unchanged backup).
fn lines_at_cr_or_lf(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match memchr::memchr2(b'\r', b'\n', current.as_bytes()) {
            // CR and LF are ASCII: both sides of one are whole UTF-8 text
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// A stored backup file and its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub index: u64,
    pub path: PathBuf,
}

/// The backups of `hwid` in `folder`, oldest first (ordered by index, SPEC §8 deviation).
pub fn stored(folder: &Path, hwid: &str) -> Vec<Stored> {
    scan(folder, hwid, None).0
}

/// One listing of `folder`: the backups of `hwid` (oldest first) and, when `now` is given,
/// what a process killed in the middle of writing one left behind (the hourly cleanup looks
/// only at the status folder).
fn scan(folder: &Path, hwid: &str, now: Option<i64>) -> (Vec<Stored>, Vec<PathBuf>) {
    let prefix = format!("{hwid}.");
    let (mut found, mut stale) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        if now.is_some_and(|now| crate::state::is_stale_temporary(&entry, now)) {
            stale.push(entry.path());
            continue;
        }
        let Ok(name) = entry.file_name().into_string() else { continue };
        if let Some(index) = name.strip_prefix(&prefix).and_then(|n| n.strip_suffix(".txt")).and_then(|n| n.parse::<u64>().ok()) {
            found.push(Stored { index, path: entry.path() });
        }
    }
    found.sort_by_key(|s| s.index);
    (found, stale)
}

/// What a backup upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing left after filtering: nothing stored.
    Empty,
    /// Same as the newest backup (named, with its modification time).
    Unchanged { newest: PathBuf, time: i64 },
    /// Stored as a new file; older files beyond `nbackups` were removed.
    Stored { path: PathBuf, removed: Vec<PathBuf> },
}

/// Stores `body` as the newest backup of `hwid` (already validated as a plain token).
pub fn store(root: &Path, backup: &Backup, hwid: &str, body: &str, now: i64) -> std::io::Result<Outcome> {
    let content = normalize(body);
    if content.is_empty() {
        return Ok(Outcome::Empty);
    }
    let folder = root.join(&backup.dir).join(hwid);
    let (existing, stale) = scan(&folder, hwid, Some(now));
    for temporary in stale {
        let _ = std::fs::remove_file(temporary);
    }
    if let Some(newest) = existing.last() {
        if std::fs::read(&newest.path).is_ok_and(|old| old == content.as_bytes()) {
            let time = std::fs::metadata(&newest.path)
                .and_then(|m| m.modified())
                .map(crate::clock::epoch_of)
                .unwrap_or(now);
            return Ok(Outcome::Unchanged { newest: newest.path.clone(), time });
        }
    }
    std::fs::create_dir_all(&folder)?;
    let index = existing.last().map_or(0, |n| n.index + 1);
    let path = folder.join(format!("{hwid}.{index}.txt"));
    crate::state::write_atomically(&path, content.as_bytes())?;
    let mut all: Vec<(Stored, Option<i64>)> = existing
        .into_iter()
        .map(|stored| {
            let placed = placed_at(&stored.path);
            (stored, placed)
        })
        .collect();
    all.push((Stored { index, path: path.clone() }, Some(now)));
    let mut removed = Vec::new();
    for old in over_limit_to_remove(all, backup.nbackups, backup.minage_days, now) {
        if std::fs::remove_file(&old.path).is_ok() {
            removed.push(old.path);
        }
    }
    Ok(Outcome::Stored { path, removed })
}

/// When a backup file was put where it is: its status change time, which no copy that keeps
/// modification times (`cp -p`, `rsync -a`, a restore) can set back, so a folder moved in is
/// as young as the move (the old server measured `minage` on this time too).
fn placed_at(path: &Path) -> Option<i64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ctime())
}

/// Of the backups (oldest first, each with the time it was placed, None when unknown), the
/// oldest beyond `nbackups` that are older than `minage_days` whole days; a younger one stays
/// although it is over the limit, and so do the files after it, which are younger still.
///
/// `minage` 0 (or less) means no minimum age: everything over the limit goes, whenever it was
/// placed. The old server compared "placed before now", so it kept a file placed in the same
/// second; a burst of backups (or a request that waited for the device's lock while others
/// wrote) then left more than `nbackups` files. SPEC §8 says "unless younger than minage days",
/// and nothing is younger than 0 days.
fn over_limit_to_remove(all: Vec<(Stored, Option<i64>)>, nbackups: i64, minage_days: i64, now: i64) -> Vec<Stored> {
    let keep = nbackups.max(1) as usize;
    let excess = all.len().saturating_sub(keep);
    let deadline = now.saturating_sub(minage_days.saturating_mul(86400));
    all.into_iter()
        .take(excess)
        .filter(|(_, placed)| minage_days <= 0 || placed.is_some_and(|t| t < deadline))
        .map(|(stored, _)| stored)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(n: i64) -> Backup {
        Backup { dir: "backup".into(), nbackups: n, scfg: String::new(), minage_days: 0, maxsize: 1 << 20 }
    }

    #[test]
    fn volatile_lines_and_blank_lines_go() {
        let body = "config change CMD0 /name R\r\nmod cmd FLASHDIR0 add-item 101 (cn=A)(type=call)(info=out)\r\nvars create UPDATE/CHECK pb 3f\r\nconfig change UP1 /url x\r\nvars create TLS0/TICKET/0 pb 00\r\n\r\nconfig change PHONE /coder G722\rmod cmd FLASHDIR0 add-item 102 (cn=Bob)\n";
        assert_eq!(normalize(body), "config change CMD0 /name R\r\nconfig change PHONE /coder G722\r\nmod cmd FLASHDIR0 add-item 102 (cn=Bob)");
    }

    /// The old server's filter, by its regular expressions: the oracle for [`normalize`].
    fn normalize_by_patterns(body: &str) -> String {
        let volatile = regex::RegexSet::new([
            r"^mod cmd FLASHDIR0 add-item .*\)\(type=.*\(info=.*$",
            r"^vars create UPDATE/.*$",
            r"^config change UP1 /.*$",
            r"^vars create TLS0/TICKET/.*$",
        ])
        .unwrap();
        body.split("\r\n")
            .flat_map(|l| l.split(['\n', '\r']))
            .filter(|line| !line.is_empty() && !volatile.is_match(line))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    proptest::proptest! {
        #[test]
        fn the_filter_keeps_what_the_patterns_keep(
            lines in proptest::collection::vec(
                proptest::string::string_regex("(mod cmd FLASHDIR0 add-item |vars create UPDATE/|vars create UPDATE|config change UP1 /|config change UP1|vars create TLS0/TICKET/|x)?[()a-z= /]{0,12}(\\)\\(type=)?[()a-z= ]{0,6}(\\(info=)?[a-z()]{0,4}").unwrap(),
                0..12,
            ),
            ends in proptest::collection::vec(proptest::sample::select(vec!["\r\n", "\n", "\r", "\r\n\r\n", "\n\r"]), 12),
        ) {
            let body: String = lines.iter().zip(&ends).map(|(line, end)| format!("{line}{end}")).collect();
            proptest::prop_assert_eq!(normalize(&body), normalize_by_patterns(&body));
        }
    }

    #[test]
    fn rotation_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let b = config(3);
        for (i, text) in ["a", "b", "c", "d"].iter().enumerate() {
            let outcome = store(dir.path(), &b, "IP232-3e-0c-57", text, crate::clock::now() + i as i64).unwrap();
            assert!(matches!(outcome, Outcome::Stored { .. }));
        }
        let left: Vec<u64> = stored(&dir.path().join("backup/IP232-3e-0c-57"), "IP232-3e-0c-57").iter().map(|s| s.index).collect();
        assert_eq!(left, [1, 2, 3]);
        assert!(matches!(store(dir.path(), &b, "IP232-3e-0c-57", "d\r\n", crate::clock::now()).unwrap(), Outcome::Unchanged { .. }));
        assert_eq!(store(dir.path(), &b, "IP232-3e-0c-57", "\r\n\r\n", 2000).unwrap(), Outcome::Empty);
    }

    #[test]
    fn a_backup_takes_away_stale_temporaries_of_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("backup/X");
        std::fs::create_dir_all(&folder).unwrap();
        let stale = folder.join(".X.3.txt.4242.0.tmp");
        let fresh = folder.join(".X.3.txt.4242.1.tmp");
        std::fs::write(&stale, "half").unwrap();
        std::fs::write(&fresh, "in progress").unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600);
        std::fs::File::options().write(true).open(&stale).unwrap().set_modified(hour_ago).unwrap();
        store(dir.path(), &config(3), "X", "config change CMD0 /name x", crate::clock::now()).unwrap();
        assert!(!stale.exists(), "left by a killed writer: removed");
        assert!(fresh.exists(), "maybe a write in progress: kept");
    }

    fn at(index: u64, placed: i64) -> (Stored, Option<i64>) {
        (Stored { index, path: PathBuf::from(format!("X.{index}.txt")) }, Some(placed))
    }

    fn indexes(list: Vec<Stored>) -> Vec<u64> {
        list.into_iter().map(|s| s.index).collect()
    }

    #[test]
    fn over_limit_files_go_oldest_first_unless_younger_than_minage() {
        let now = 10 * 86400;
        let five = || vec![at(1, 0), at(2, 86400), at(3, 5 * 86400), at(4, 9 * 86400), at(5, now)];
        assert_eq!(indexes(over_limit_to_remove(five(), 3, 0, now)), [1, 2]);
        assert_eq!(indexes(over_limit_to_remove(five(), 2, 0, now)), [1, 2, 3]);
        // minage 6 days: the deadline is day 4; file 3 (day 5) is over the limit but stays
        assert_eq!(indexes(over_limit_to_remove(five(), 2, 6, now)), [1, 2]);
        assert_eq!(indexes(over_limit_to_remove(five(), 2, 30, now)), Vec::<u64>::new());
        assert_eq!(indexes(over_limit_to_remove(five(), 10, 0, now)), Vec::<u64>::new());
        // minage 0: no minimum age; placed this second, later than now (a request that waited
        // for the lock) or at an unknown time, over the limit is over the limit
        let same_second = vec![at(1, now), (Stored { index: 2, path: PathBuf::from("X.2.txt") }, None), at(3, now + 5), at(4, now)];
        assert_eq!(indexes(over_limit_to_remove(same_second, 1, 0, now)), [1, 2, 3]);
        // minage 1: one placed this second stays, an unknown time too
        let young = vec![at(1, now), (Stored { index: 2, path: PathBuf::from("X.2.txt") }, None), at(3, now)];
        assert_eq!(indexes(over_limit_to_remove(young, 1, 1, now)), Vec::<u64>::new());
        // nbackups 0 keeps one (the new backup)
        assert_eq!(indexes(over_limit_to_remove(vec![at(1, 0), at(2, 1)], 0, 0, now)), [1]);
    }

    #[test]
    fn minage_counts_whole_days_like_the_old_server() {
        let defaults = crate::xml::Element::parse_trusted(include_str!("../config.xml")).unwrap();
        for (value, days) in [("0.5", 0), ("3", 3), (" 2", 2), ("7days", 7), ("x", 0)] {
            let user = format!("<config><master info=''/><backup dir='backup' minage='{value}'/></config>");
            let config = crate::config::build(defaults.clone(), &crate::xml::Element::parse(&user).unwrap(), "user-config.xml").unwrap();
            assert_eq!(config.backup.unwrap().minage_days, days, "minage='{value}'");
        }
    }

    #[test]
    fn index_ten_sorts_after_nine() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("backup/X");
        std::fs::create_dir_all(&folder).unwrap();
        for i in [9, 10, 2] {
            std::fs::write(folder.join(format!("X.{i}.txt")), "x").unwrap();
        }
        let order: Vec<u64> = stored(&folder, "X").iter().map(|s| s.index).collect();
        assert_eq!(order, [2, 9, 10]);
    }
}
