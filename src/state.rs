//! Device state files (`<status/@dir>/<sn>.xml`, SPEC §6): read before and written after every
//! device request, in the old server's XML shape, atomically and under a per-device lock.

use crate::xml::Element;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A device's state file, locked for this request.
///
/// The lock is an exclusive `flock` on the state file itself, so it needs no extra files in the
/// status folder and works across CGI processes and FastCGI workers alike. Because writing
/// replaces the file (write + rename), a waiter may wake up holding the lock of a file that is no
/// longer there; it then re-opens the path until the file it locked is the one on disk.
pub struct LockedState {
    path: PathBuf,
    /// Held for its lock, released when it is closed.
    lock: File,
    /// Whether the file had content when locked; an empty placeholder is removed if the
    /// request ends without saving.
    existed: bool,
    saved: bool,
    pub state: Element,
}

impl LockedState {
    /// Locks and reads the state at `path` (an absent or empty file gives a fresh `<state/>`;
    /// an unreadable one is kept aside as `<sn>.xml.broken` and replaced by a fresh state so a
    /// device is never locked out by a damaged file).
    pub fn open(path: &Path) -> io::Result<LockedState> {
        let file = loop {
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
            // SAFETY: flock on a valid, owned file descriptor; blocks until the lock is ours.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let locked = file.metadata()?;
            match fs::metadata(path) {
                Ok(on_disk) if on_disk.ino() == locked.ino() && on_disk.dev() == locked.dev() => break file,
                _ => continue,
            }
        };
        let mut text = String::new();
        (&file).read_to_string(&mut text).or_else(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                Ok(0)
            } else {
                Err(e)
            }
        })?;
        let existed = !text.trim().is_empty();
        let state = if existed {
            match Element::parse(&text) {
                Ok(root) if root.name == "state" => root,
                _ => {
                    let _ = fs::copy(path, path.with_extension("xml.broken"));
                    Element::new("state")
                }
            }
        } else {
            Element::new("state")
        };
        Ok(LockedState { path: path.to_path_buf(), lock: file, existed, saved: false, state })
    }

    pub fn existed(&self) -> bool {
        self.existed
    }

    /// Writes the state: a temporary file in the same folder, flushed, then renamed over the
    /// old one, so a reader or a crash never sees a half-written file.
    pub fn save(mut self) -> io::Result<()> {
        // the state is rewritten on every poll: flushing it to the disk each time would cap the
        // poll rate at the disk's flush rate; the rename alone keeps it whole for every reader
        write_file(&self.path, self.state.to_document().as_bytes(), Durability::Renamed)?;
        self.saved = true;
        Ok(())
    }
}

impl Drop for LockedState {
    fn drop(&mut self) {
        if !self.saved && !self.existed {
            // we created an empty placeholder to lock it; nothing was written, so take it away
            // again (still under the lock, so a waiter re-opens and finds the path gone)
            if fs::metadata(&self.path).is_ok_and(|m| m.len() == 0) {
                let _ = fs::remove_file(&self.path);
            }
        }
        // SAFETY: unlocking our own, still open descriptor; closing it would release the lock
        // as well, this only makes the hand-over to a waiting request explicit
        unsafe { libc::flock(self.lock.as_raw_fd(), libc::LOCK_UN) };
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How hard a replacement insists on reaching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Data flushed before the rename: survives a power cut (backups, certificates).
    Flushed,
    /// Only renamed: readers and crashes of this process never see a partial file; a power cut
    /// may lose the latest version (device state, rewritten on every poll).
    Renamed,
}

/// Replaces `path` with `data` atomically and durably (temporary file in the same folder,
/// flushed, renamed).
pub fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    write_file(path, data, Durability::Flushed)
}

/// Replaces `path` with `data` atomically (temporary file in the same folder + rename).
pub fn write_file(path: &Path, data: &[u8], durability: Durability) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        file.write_all(data)?;
        if durability == Durability::Flushed {
            file.sync_data()?;
        }
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// The `device` element, created when missing.
pub fn device(state: &mut Element) -> &mut Element {
    state.child_or_insert("device")
}

/// Appends a log message for people (`msg=""` marks the start of a request).
pub fn log(state: &mut Element, now: i64, message: &str) {
    let mut entry = Element::new("msgs");
    entry.put_attr("time", &now.to_string());
    entry.put_attr("msg", message);
    state.children.push(entry);
}

/// Drops the messages before the last request-start marker that are older than `keep_secs`.
pub fn prune_log(state: &mut Element, now: i64, keep_secs: i64) {
    let Some(last_marker) = state
        .children
        .iter()
        .rposition(|c| c.name == "msgs" && c.attr("msg").unwrap_or("").is_empty())
    else {
        return;
    };
    let mut index = 0;
    state.children.retain(|c| {
        let keep = index >= last_marker
            || c.name != "msgs"
            || c.attr("time").and_then(|t| t.parse::<i64>().ok()).is_some_and(|t| t >= now - keep_secs);
        index += 1;
        keep
    });
}

/// Removes state files not written for `expire_secs`, at most once an hour (stamp file
/// `lastcleanup` in the status folder).
pub fn cleanup_expired(status_dir: &Path, now: i64, expire_secs: i64) {
    if expire_secs <= 0 {
        return;
    }
    let stamp = status_dir.join("lastcleanup");
    let last = fs::metadata(&stamp).ok().and_then(|m| m.modified().ok()).map(crate::clock::epoch_of);
    if last.is_some_and(|t| now - t < 3600) {
        return;
    }
    let _ = fs::write(&stamp, now.to_string());
    let Ok(entries) = fs::read_dir(status_dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_state = path.extension().is_some_and(|e| e == "xml")
            && path.file_stem().and_then(|s| s.to_str()).is_some_and(crate::device::is_serial);
        let old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .map(crate::clock::epoch_of)
            .is_some_and(|t| now - t > expire_secs);
        if is_state && old {
            let _ = fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_current_request_and_recent_messages() {
        let mut s = Element::new("state");
        log(&mut s, 100, "");
        log(&mut s, 100, "old");
        log(&mut s, 5000, "recent");
        log(&mut s, 6000, "");
        log(&mut s, 6000, "now");
        prune_log(&mut s, 6000, 1800);
        let msgs: Vec<_> = s.children.iter().map(|c| c.attr("msg").unwrap().to_string()).collect();
        assert_eq!(msgs, ["recent", "", "now"]);
    }

    #[test]
    fn save_is_atomic_and_lock_placeholder_vanishes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00-90-33-3e-0c-57.xml");
        {
            let locked = LockedState::open(&path).unwrap();
            assert!(!locked.existed());
        }
        assert!(!path.exists(), "an unsaved new state leaves no file");
        let mut locked = LockedState::open(&path).unwrap();
        device(&mut locked.state).set_attr("sn", "00-90-33-3e-0c-57");
        locked.save().unwrap();
        let again = LockedState::open(&path).unwrap();
        assert!(again.existed());
        assert_eq!(again.state.child("device").unwrap().attr("sn"), Some("00-90-33-3e-0c-57"));
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 1);
    }

    #[test]
    fn parallel_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00-90-33-3e-0c-57.xml");
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut locked = LockedState::open(&path).unwrap();
                    locked.state.child_or_insert("queries").children.push(Element::new(&format!("q{i}")));
                    locked.save().unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let state = LockedState::open(&path).unwrap().state.clone();
        assert_eq!(state.child("queries").unwrap().children.len(), 16);
    }
}
