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
    let keep = backup.nbackups.max(1) as usize;
    let mut removed = Vec::new();
    let mut all = existing;
    all.push(Stored { index, path: path.clone() });
    let excess = all.len().saturating_sub(keep);
    let min_age_secs = (backup.minage_days * 86400.0) as i64;
    for old in all.into_iter().take(excess) {
        let age = std::fs::metadata(&old.path)
            .and_then(|m| m.modified())
            // a file written by a request that got the device's lock before this one may be
            // newer than this request's clock reading: that is age 0, not negative
            .map(|t| (now - crate::clock::epoch_of(t)).max(0))
            .unwrap_or(i64::MAX);
        if age >= min_age_secs && std::fs::remove_file(&old.path).is_ok() {
            removed.push(old.path);
        }
    }
    Ok(Outcome::Stored { path, removed })
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
        Backup { dir: "backup".into(), nbackups: n, scfg: String::new(), minage_days: 0.0, maxsize: 1 << 20 }
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
