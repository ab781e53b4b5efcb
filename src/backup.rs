//! Configuration backups (`update.php?mode=backup`, SPEC §8): the device PUTs its whole
//! configuration; we keep the last `nbackups` different ones per device.

use crate::config::Backup;
use std::path::{Path, PathBuf};

/// Lines that change on every upload without changing the configuration (call lists, update
/// bookkeeping, TLS tickets); keeping them would make every backup look new.
const VOLATILE: [&str; 4] = [
    r"^mod cmd FLASHDIR0 add-item .*\)\(type=.*\(info=.*$",
    r"^vars create UPDATE/.*$",
    r"^config change UP1 /.*$",
    r"^vars create TLS0/TICKET/.*$",
];

/// The stored form of an uploaded configuration: lines split at CRLF, LF or CR, volatile and
/// empty lines dropped, joined with CRLF (no final CRLF).
pub fn normalize(body: &str) -> String {
    static FILTERS: std::sync::OnceLock<regex::RegexSet> = std::sync::OnceLock::new();
    let filters = FILTERS.get_or_init(|| regex::RegexSet::new(VOLATILE).expect("the volatile-line patterns are valid"));
    body.split("\r\n")
        .flat_map(|l| l.split(['\n', '\r']))
        .filter(|line| !line.is_empty() && !filters.is_match(line))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// A stored backup file and its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub index: u64,
    pub path: PathBuf,
}

/// The backups of `hwid` in `folder`, oldest first (ordered by index, SPEC §8 deviation).
pub fn stored(folder: &Path, hwid: &str) -> Vec<Stored> {
    let prefix = format!("{hwid}.");
    let mut found: Vec<Stored> = std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let name = entry.file_name().into_string().ok()?;
                    let index = name.strip_prefix(&prefix)?.strip_suffix(".txt")?.parse::<u64>().ok()?;
                    Some(Stored { index, path: entry.path() })
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|s| s.index);
    found
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
    let existing = stored(&folder, hwid);
    remove_stale_temporaries(&folder, now);
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

/// Takes away what a process killed in the middle of writing a backup of this device left in
/// its folder (the hourly cleanup looks only at the status folder).
fn remove_stale_temporaries(folder: &Path, now: i64) {
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        if crate::state::is_stale_temporary(&entry, now) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
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
