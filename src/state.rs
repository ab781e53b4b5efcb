//! Device state files (`<status/@dir>/<sn>.xml`, SPEC §6): read before and written after every
//! device request, in the old server's XML shape, atomically and under a per-device lock.
//!
//! A state file is bounded: read within [`Limits::STATE`] (a file beyond them, or one that
//! does not parse, is reported and replaced by a fresh state), written at most
//! [`Limits::STATE`]`.bytes` long, and a query answer is only stored while the state stays
//! within [`MAX_STATE_BYTES`].

use crate::xml::{Element, Layout, Limits};
use compact_str::ToCompactString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The most a device's state may grow to by storing a query answer (the answers are most of a
/// state). innovaphone answers are a few KB to some 100 KB, a device answers a handful of
/// queries, and the log is capped at [`MAX_LOG_ENTRIES`]: a real device stays far below 1 MiB.
/// The file limit ([`Limits::STATE`], 2 MiB) leaves the other half for what later polls add
/// (log lines, stamps), so a poll never fails to save a state an answer was allowed to fill.
pub const MAX_STATE_BYTES: usize = 1 << 20;

/// How a state is written: `state`, its children and the entries under `queries` each on a
/// line of their own, a stored answer compactly on its entry's line. The old server wrote
/// answers as the device sent them and added no white space of its own, and the old admin
/// page reads either; indenting every level made a deep answer many times its own size.
pub const LAYOUT: Layout = Layout { indent_levels: 3 };

/// The text of a state file.
pub fn render(state: &Element) -> String {
    state.to_document_with(LAYOUT)
}

/// [`render`] into a buffer sized for a state like the one on disk (a poll adds a line or
/// two), so writing it does not grow the buffer step by step.
fn render_like(state: &Element, on_disk: &str) -> String {
    let mut out = String::with_capacity(on_disk.len() + 512);
    state.write_document(&mut out, LAYOUT);
    out
}

/// Why the state file on disk could not be used; the request goes on with a fresh state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// Larger than [`Limits::STATE`] allows: not even read.
    TooLarge { bytes: u64 },
    /// Not a state: not UTF-8, not well-formed, too deep, too many nodes, another root.
    Unreadable(String),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::TooLarge { bytes } => {
                write!(f, "is {bytes} bytes, more than the {} a state file may have", Limits::STATE.bytes)
            }
            Damage::Unreadable(reason) => write!(f, "cannot be read: {reason}"),
        }
    }
}

/// Why a state was not saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The state would be larger than the limit of this save: nothing was written.
    #[error("the device state would be {bytes} bytes, more than the {limit} allowed")]
    TooLarge { bytes: usize, limit: usize },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Where a device's state file lives: `<root>/<status dir>/<serial>.xml`, built in one
/// allocation (every poll opens it).
pub fn device_file(root: &Path, status_dir: &str, serial: &str) -> PathBuf {
    let mut path = PathBuf::with_capacity(root.as_os_str().len() + status_dir.len() + serial.len() + ".xml".len() + 2);
    path.push(root);
    path.push(status_dir);
    path.push(serial);
    path.as_mut_os_string().push(".xml");
    path
}

/// Where a damaged state file is kept when a fresh state replaces it (one per device).
pub fn set_aside_path(path: &Path) -> PathBuf {
    path.with_extension("xml.broken")
}

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
    /// Why the file on disk was not used (`state` is then a fresh one).
    damage: Option<Damage>,
    /// The bytes on disk when locked, to tell how the new version differs.
    on_disk: String,
    /// The most [`LockedState::save`] writes.
    size_limit: usize,
    saved: bool,
    pub state: Element,
}

impl LockedState {
    /// Locks and reads the state at `path`. An absent or empty file gives a fresh `<state/>`;
    /// a damaged one (see [`Damage`]) is reported on standard error and gives a fresh state too,
    /// so a device is never locked out by its file: its polls go on as a new device's would.
    /// Saving then replaces the damaged file; one that was small enough to read is kept as
    /// `<sn>.xml.broken` for a person to look at, an oversized one is not kept.
    pub fn open(path: &Path) -> io::Result<LockedState> {
        let (file, size) = loop {
            let opened = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path);
            let file = match opened {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // the status folder does not exist yet (first device of a new install)
                    fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
                    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?
                }
                other => other?,
            };
            // SAFETY: flock on a valid, owned file descriptor; blocks until the lock is ours.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let locked = file.metadata()?;
            match fs::metadata(path) {
                Ok(on_disk) if on_disk.ino() == locked.ino() && on_disk.dev() == locked.dev() => break (file, locked.len()),
                _ => continue,
            }
        };
        let (text, damage) = read_bounded(&file, size)?;
        let existed = damage.is_some() || !text.trim().is_empty();
        let (state, damage) = interpret(&text, damage);
        if let Some(damage) = &damage {
            eprintln!("update-server: device state {} {damage}; going on with a fresh state", path.display());
        }
        let on_disk = if damage.is_some() { String::new() } else { text };
        Ok(LockedState {
            path: path.to_path_buf(),
            lock: file,
            existed,
            damage,
            on_disk,
            size_limit: Limits::STATE.bytes,
            saved: false,
            state,
        })
    }

    pub fn existed(&self) -> bool {
        self.existed
    }

    /// Why the file on disk was not used, when it was not.
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// Makes [`LockedState::save`] refuse to write more than `limit` bytes (never more than a
    /// state file may be read back with).
    pub fn limit_size(&mut self, limit: usize) {
        self.size_limit = limit.min(Limits::STATE.bytes);
    }

    /// Writes the state: a temporary file in the same folder, flushed, then renamed over the
    /// old one, so a reader or a crash never sees a half-written file. A state larger than the
    /// size limit is not written at all.
    pub fn save(mut self) -> Result<(), SaveError> {
        let document = render_like(&self.state, &self.on_disk);
        if document.len() > self.size_limit {
            return Err(SaveError::TooLarge { bytes: document.len(), limit: self.size_limit });
        }
        if let Some(Damage::Unreadable(_)) = self.damage {
            // kept for a person to look at; a hard link, as the file is about to be replaced
            let aside = set_aside_path(&self.path);
            let _ = fs::remove_file(&aside);
            if fs::hard_link(&self.path, &aside).is_err() {
                let _ = fs::copy(&self.path, &aside);
            }
        }
        match digits_only_change(&self.on_disk, &document) {
            // The steady state of a polling device changes only time stamps (`seen`, the log
            // marker), digit for digit in place. Writing just those digits keeps the file
            // well-formed at every instant, for every reader and across a crash (any mix of old
            // and new digits is still a number), and spares the file system a new inode and a
            // rename on every poll, which costs many times the rest of the poll.
            Some(None) => {}
            Some(Some((start, end))) => {
                use std::os::unix::fs::FileExt;
                self.lock.write_all_at(&document.as_bytes()[start..end], start as u64)?;
            }
            // Anything else: a complete new file, renamed over the old one. Not flushed: the
            // state is rewritten on every poll, and the rename alone keeps it whole.
            None => write_file(&self.path, document.as_bytes(), Durability::Renamed)?,
        }
        self.saved = true;
        Ok(())
    }
}

/// The state a file's text holds: a fresh one for an empty file, and for a damaged one, with
/// the damage.
fn interpret(text: &str, damage: Option<Damage>) -> (Element, Option<Damage>) {
    match damage {
        Some(damage) => (Element::new("state"), Some(damage)),
        None if text.trim().is_empty() => (Element::new("state"), None),
        // almost always: the file as the poll before wrote it
        None => match Element::parse_as_written(text, LAYOUT, &Limits::STATE) {
            Some(root) if root.name == "state" => (root, None),
            _ => parse_state(text),
        },
    }
}

/// A state file in any other form (the old server's, an edit, damage): parsed in full.
fn parse_state(text: &str) -> (Element, Option<Damage>) {
    match Element::parse_within(text, &Limits::STATE) {
        Ok(root) if root.name == "state" => (root, None),
        Ok(root) => (Element::new("state"), Some(Damage::Unreadable(format!("the root element is <{}>, not <state>", root.name)))),
        Err(e) => (Element::new("state"), Some(Damage::Unreadable(e.to_string()))),
    }
}

/// A device's state as a request would find it, for a look that changes nothing (`preview`):
/// no lock, no placeholder file, nothing created. Also the text on disk (empty when there is
/// none or it is damaged).
pub fn read_unlocked(path: &Path) -> io::Result<(Element, Option<Damage>, String)> {
    let (text, damage) = match File::open(path) {
        Ok(file) => {
            let size = file.metadata()?.len();
            read_bounded(&file, size)?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (String::new(), None),
        Err(e) => return Err(e),
    };
    let (state, damage) = interpret(&text, damage);
    let on_disk = if damage.is_some() { String::new() } else { text };
    Ok((state, damage, on_disk))
}

/// The lines of `new` that differ from `old`, as `- ` and `+ ` lines between the common
/// beginning and end (state files are short and change in one place per poll; no search for
/// the smallest difference is needed to read it).
pub fn changed_lines(old: &str, new: &str) -> Vec<String> {
    let old: Vec<&str> = old.lines().collect();
    let new: Vec<&str> = new.lines().collect();
    let prefix = old.iter().zip(&new).take_while(|(a, b)| a == b).count();
    let suffix = old[prefix..].iter().rev().zip(new[prefix..].iter().rev()).take_while(|(a, b)| a == b).count();
    let removed = old[prefix..old.len() - suffix].iter().map(|l| format!("- {l}"));
    let added = new[prefix..new.len() - suffix].iter().map(|l| format!("+ {l}"));
    removed.chain(added).collect()
}

/// The file's text, read only when it is within [`Limits::STATE`]; otherwise (or when it is
/// not UTF-8) why not. `size` is what the file's metadata said (the caller has it already).
fn read_bounded(mut file: &File, size: u64) -> io::Result<(String, Option<Damage>)> {
    let limit = Limits::STATE.bytes as u64;
    if size > limit {
        return Ok((String::new(), Some(Damage::TooLarge { bytes: size })));
    }
    // One read asking for a byte more than the metadata said: a file of that size (the locked
    // file, as always) answers it with exactly its size, which tells its end without the extra
    // read `read_to_end` makes to see zero bytes.
    let mut bytes = vec![0; size as usize + 1];
    let first = loop {
        match file.read(&mut bytes) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    bytes.truncate(first);
    if first as u64 != size {
        // shorter or longer than it said (a writer that ignores the lock): read to its end,
        // bounded even if it keeps growing
        Read::by_ref(&mut file).take(limit + 1 - first as u64).read_to_end(&mut bytes)?;
    }
    if bytes.len() as u64 > limit {
        return Ok((String::new(), Some(Damage::TooLarge { bytes: bytes.len() as u64 })));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok((text, None)),
        Err(e) => Ok((String::new(), Some(Damage::Unreadable(format!("not UTF-8 text: {}", e.utf8_error()))))),
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
        // the lock goes with the descriptor, which closes when `lock` is dropped right after
    }
}

/// When `new` differs from `old` only in ASCII digits at the same positions: the byte range
/// to rewrite (None inside when nothing differs). None when any other byte or the length differs.
pub fn digits_only_change(old: &str, new: &str) -> Option<Option<(usize, usize)>> {
    let (old, new) = (old.as_bytes(), new.as_bytes());
    if old.len() != new.len() || old.is_empty() {
        return None;
    }
    if old == new {
        // a second poll within the same second: one comparison of the whole file
        return Some(None);
    }
    let start = common_prefix(old, new);
    let end = old.len() - common_suffix(old, new);
    // between the first and the last difference (the `seen` stamp near the top, the log's
    // near the end) nearly everything is the same: equal chunks are passed over whole
    let same_or_digits = |(a, b): (&u8, &u8)| a == b || (a.is_ascii_digit() && b.is_ascii_digit());
    let digits_only = old[start..end]
        .chunks(16)
        .zip(new[start..end].chunks(16))
        .all(|(x, y)| (x.len() == 16 && chunk(x) == chunk(y)) || x.iter().zip(y).all(same_or_digits));
    digits_only.then_some(Some((start, end)))
}

/// How many bytes `a` and `b` share from the start. Compared 16 bytes at a time: a state file's
/// unchanged part is all but a few digits of it, on every poll.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let whole = a.chunks_exact(16).zip(b.chunks_exact(16)).take_while(|(x, y)| chunk(x) == chunk(y)).count() * 16;
    whole + a[whole..].iter().zip(&b[whole..]).take_while(|(x, y)| x == y).count()
}

/// How many bytes `a` and `b` share at the end ([`common_prefix`] from the other side).
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let whole = a.rchunks_exact(16).zip(b.rchunks_exact(16)).take_while(|(x, y)| chunk(x) == chunk(y)).count() * 16;
    let (a, b) = (&a[..a.len() - whole], &b[..b.len() - whole]);
    whole + a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count()
}

/// Sixteen bytes as one number, compared in one instruction (a slice comparison calls memcmp).
fn chunk(bytes: &[u8]) -> u128 {
    u128::from_ne_bytes(bytes.try_into().expect("chunks of 16"))
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

/// How old a temporary file of [`write_file`] must be before a cleanup takes it away: far
/// longer than any write takes, so a write in progress (in another process) is never hit.
pub const STALE_TEMPORARY_SECS: i64 = 3600;

/// Whether `entry` is a temporary file of [`write_file`] (`.<name>.<pid>.<n>.tmp`) old enough
/// to be one left behind by a process killed in the middle of a write.
pub fn is_stale_temporary(entry: &fs::DirEntry, now: i64) -> bool {
    entry.file_name().to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
        && entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .map(crate::clock::epoch_of)
            .is_some_and(|t| now - t > STALE_TEMPORARY_SECS)
}

/// The `device` element, created when missing.
pub fn device(state: &mut Element) -> &mut Element {
    state.child_or_insert("device")
}

/// Appends a log message for people (`msg=""` marks the start of a request).
pub fn log(state: &mut Element, now: i64, message: &str) {
    let mut entry = Element::new("msgs");
    entry.attrs = vec![("time".into(), now.to_compact_string()), ("msg".into(), message.into())];
    state.children.push(entry);
}

/// Marks the start of a request in the log (`msg=""`). A request that logged nothing leaves
/// only its marker; the next one moves that marker instead of adding another, so a device that
/// polls without news does not grow its state file.
pub fn mark_request(state: &mut Element, now: i64) {
    let last_is_marker = state
        .children
        .iter()
        .rev()
        .find(|c| c.name == "msgs")
        .is_some_and(|m| m.attr("msg").unwrap_or("").is_empty());
    if last_is_marker {
        if let Some(marker) = state.children.iter_mut().rev().find(|c| c.name == "msgs") {
            marker.put_attr("time", itoa::Buffer::new().format(now));
        }
    } else {
        log(state, now, "");
    }
}

/// The most log entries a state file keeps, whatever `logkeep` says.
pub const MAX_LOG_ENTRIES: usize = 200;

/// Drops the messages before the last request-start marker that are older than `keep_secs`,
/// and the oldest ones beyond [`MAX_LOG_ENTRIES`].
/// Logs each of `notes` and drops what is older than `keep_secs`: what every saved request does
/// to the log.
pub fn record<'a>(state: &mut Element, now: i64, notes: impl IntoIterator<Item = &'a String>, keep_secs: i64) {
    let notes: Vec<&String> = notes.into_iter().collect();
    if !restamp_repeated_request(state, now, &notes) {
        for note in notes {
            log(state, now, note);
        }
        drop_repeated_request(state);
    }
    prune_log(state, now, keep_secs);
}

/// What logging `notes` and then [`drop_repeated_request`] would make of the log, done in place
/// where that is plain to see: the log ends with the previous request (its marker and exactly
/// these notes, as [`log`] writes entries) and the marker of this one. The previous request's
/// entries then take this request's time and this marker goes, which leaves the very tree the
/// longer way leaves, without making the entries only to drop their copies (a steady poll, all
/// day). `false`, and nothing changed, in any other case.
fn restamp_repeated_request(state: &mut Element, now: i64, notes: &[&String]) -> bool {
    if notes.is_empty() {
        // a request without notes moved its marker already (mark_request)
        return false;
    }
    let entries = notes.len() + 2;
    let Some(start) = state.children.len().checked_sub(entries) else { return false };
    let tail = &state.children[start..];
    let as_logged = |entry: &Element, message: &str| {
        entry.name == "msgs"
            && entry.text.is_empty()
            && entry.children.is_empty()
            && matches!(entry.attrs.as_slice(), [(time, _), (msg, m)] if time == "time" && msg == "msg" && m == message)
    };
    let repeated = notes.iter().zip(&tail[1..]).all(|(note, entry)| as_logged(entry, note))
        && as_logged(&tail[0], "")
        && as_logged(&tail[entries - 1], "");
    if !repeated {
        return false;
    }
    state.children.pop();
    let stamp = now.to_compact_string();
    for entry in &mut state.children[start..] {
        entry.attrs[0].1.clone_from(&stamp);
    }
    true
}

/// When the request just logged (the entries from the last start marker on) says exactly what
/// the request before it said, the earlier copy goes. A device that polls all day with the same
/// outcome ("CHECK matches", a certificate note) then keeps one copy of it, stamped with its
/// latest poll, instead of pushing everything else out of the log; and its file changes only in
/// time stamps from one poll to the next, which [`LockedState::save`] writes in place.
/// (The old server kept every copy until `logkeep` pruned it; the log is for people, its length
/// was never part of what a device or the admin page relies on.)
fn drop_repeated_request(state: &mut Element) {
    let log: Vec<usize> = state.children.iter().enumerate().filter(|(_, c)| c.name == "msgs").map(|(i, _)| i).collect();
    let is_marker = |i: usize| state.children[i].attr("msg").unwrap_or("").is_empty();
    let Some(current) = log.iter().rposition(|&i| is_marker(i)) else { return };
    let Some(previous) = log[..current].iter().rposition(|&i| is_marker(i)) else { return };
    let (earlier, latest) = (&log[previous..current], &log[current..]);
    let same = earlier.len() == latest.len()
        && earlier.iter().zip(latest).all(|(&a, &b)| state.children[a].attr("msg") == state.children[b].attr("msg"));
    if same {
        let (first, last) = (earlier[0], earlier[earlier.len() - 1]);
        let mut index = 0;
        state.children.retain(|c| {
            let drop = (first..=last).contains(&index) && c.name == "msgs";
            index += 1;
            !drop
        });
    }
}

pub fn prune_log(state: &mut Element, now: i64, keep_secs: i64) {
    prune_by_age(state, now, keep_secs);
    let count = state.children.iter().filter(|c| c.name == "msgs").count();
    let mut excess = count.saturating_sub(MAX_LOG_ENTRIES);
    state.children.retain(|c| {
        if excess > 0 && c.name == "msgs" {
            excess -= 1;
            return false;
        }
        true
    });
}

fn prune_by_age(state: &mut Element, now: i64, keep_secs: i64) {
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
    // the stamp file is looked at no more than once a minute by a long-running process
    static LAST_LOOK: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);
    let last_look = LAST_LOOK.load(Ordering::Relaxed);
    if last_look != i64::MIN && now - last_look < 60 && now >= last_look {
        return;
    }
    LAST_LOOK.store(now, Ordering::Relaxed);
    let stamp = status_dir.join("lastcleanup");
    let last = fs::metadata(&stamp).ok().and_then(|m| m.modified().ok()).map(crate::clock::epoch_of);
    if last.is_some_and(|t| now - t < 3600) {
        return;
    }
    let _ = fs::write(&stamp, now.to_string());
    let Ok(entries) = fs::read_dir(status_dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        // a temporary file left by a process that was killed in the middle of a write
        if is_stale_temporary(&entry, now) {
            let _ = fs::remove_file(&path);
            continue;
        }
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
    #[test]
    fn a_device_file_is_the_status_folder_joined_with_the_serial() {
        for (root, dir, serial) in [
            ("/srv/update", "status", "00-90-33-00-00-01"),
            ("/srv/update/", "/var/lib/update/status", "00-90-33-00-00-02"),
            ("root", "a/b", ""),
        ] {
            let joined = Path::new(root).join(dir).join(format!("{serial}.xml"));
            assert_eq!(device_file(Path::new(root), dir, serial), joined, "{root} {dir} {serial}");
        }
    }

    #[test]
    fn changed_lines_between_the_common_ends() {
        use super::changed_lines;
        assert_eq!(changed_lines("a\nb\nc\n", "a\nB\nc\n"), ["- b", "+ B"]);
        assert_eq!(changed_lines("a\nc\n", "a\nb\nc\n"), ["+ b"]);
        assert_eq!(changed_lines("", "x\n"), ["+ x"]);
        assert!(changed_lines("same\n", "same\n").is_empty());
        assert_eq!(changed_lines("a\na\n", "a\n"), ["- a"]);
    }

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
    fn digit_changes_are_recognised() {
        assert_eq!(digits_only_change("<s seen=\"100\"/>", "<s seen=\"100\"/>"), Some(None));
        assert_eq!(digits_only_change("<s seen=\"100\" t=\"5\"/>", "<s seen=\"109\" t=\"7\"/>"), Some(Some((11, 18))));
        assert_eq!(digits_only_change("<s seen=\"100\"/>", "<s seen=\"1000\"/>"), None);
        assert_eq!(digits_only_change("<s a=\"1\"/>", "<s a=\"x\"/>"), None);
        assert_eq!(digits_only_change("", ""), None);
    }

    /// Byte by byte: the oracle for [`digits_only_change`].
    fn digits_only_change_bytewise(old: &str, new: &str) -> Option<Option<(usize, usize)>> {
        if old.len() != new.len() || old.is_empty() {
            return None;
        }
        let mut range: Option<(usize, usize)> = None;
        for (i, (a, b)) in old.bytes().zip(new.bytes()).enumerate() {
            if a == b {
                continue;
            }
            if !a.is_ascii_digit() || !b.is_ascii_digit() {
                return None;
            }
            range = Some((range.map_or(i, |(start, _)| start), i + 1));
        }
        Some(range)
    }

    proptest::proptest! {
        #[test]
        fn digit_changes_are_found_as_byte_by_byte(old in "[0-9a\"]{0,80}", edits in proptest::collection::vec((0usize..80, "[0-9a\"]"), 0..4)) {
            let mut new = old.clone().into_bytes();
            for (at, byte) in &edits {
                if let Some(slot) = new.get_mut(*at) {
                    *slot = byte.as_bytes()[0];
                }
            }
            let new = String::from_utf8(new).unwrap();
            proptest::prop_assert_eq!(digits_only_change(&old, &new), digits_only_change_bytewise(&old, &new));
        }
    }

    #[test]
    fn a_time_stamp_update_is_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00-90-33-3e-0c-57.xml");
        let mut locked = LockedState::open(&path).unwrap();
        locked.state.set_attr("seen", "1700000000");
        locked.save().unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        let mut locked = LockedState::open(&path).unwrap();
        locked.state.set_attr("seen", "1700000123");
        locked.save().unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode, "patched in place");
        assert_eq!(LockedState::open(&path).unwrap().state.attr("seen"), Some("1700000123"));
        let mut locked = LockedState::open(&path).unwrap();
        locked.state.set_attr("phase", "update");
        locked.save().unwrap();
        assert_ne!(fs::metadata(&path).unwrap().ino(), inode, "other changes write a new file");
        assert_eq!(LockedState::open(&path).unwrap().state.attr("phase"), Some("update"));
    }

    #[test]
    fn the_log_has_a_hard_cap() {
        let mut s = Element::new("state");
        for i in 0..(MAX_LOG_ENTRIES as i64 + 50) {
            log(&mut s, 1000 + i, "note");
        }
        prune_log(&mut s, 1000, 1_000_000);
        assert_eq!(s.children.len(), MAX_LOG_ENTRIES);
        assert_eq!(s.children[0].attr("time"), Some("1050"));
    }

    #[test]
    fn quiet_requests_move_the_marker() {
        let mut s = Element::new("state");
        mark_request(&mut s, 1);
        log(&mut s, 1, "delivered");
        mark_request(&mut s, 2);
        mark_request(&mut s, 3);
        let msgs: Vec<_> = s.children.iter().map(|c| (c.attr("time").unwrap().to_string(), c.attr("msg").unwrap().to_string())).collect();
        assert_eq!(msgs, [("1".into(), "".into()), ("1".into(), "delivered".into()), ("3".into(), "".into())]);
    }

    fn log_of(s: &Element) -> Vec<(String, String)> {
        s.children.iter().filter(|c| c.name == "msgs").map(|c| (c.attr("time").unwrap().to_string(), c.attr("msg").unwrap().to_string())).collect()
    }

    /// [`record`] the long way: every note logged, then the repeated request dropped.
    fn record_by_appending(state: &mut Element, now: i64, notes: &[String], keep_secs: i64) {
        for note in notes {
            log(state, now, note);
        }
        drop_repeated_request(state);
        prune_log(state, now, keep_secs);
    }

    proptest::proptest! {
        #[test]
        fn restamping_a_repeated_request_leaves_the_tree_logging_it_leaves(
            requests in proptest::collection::vec(proptest::collection::vec("[ab]", 0..3), 1..8),
            others in proptest::collection::vec(0usize..8, 0..3),
        ) {
            let (mut fast, mut slow) = (Element::new("state"), Element::new("state"));
            for (i, notes) in requests.iter().enumerate() {
                let now = 100 + i as i64;
                for state in [&mut fast, &mut slow] {
                    if others.contains(&i) {
                        // something else between the log entries (a delivered file's entry)
                        state.children.push(Element::new("config"));
                    }
                    mark_request(state, now);
                }
                record(&mut fast, now, notes, 1_000_000);
                record_by_appending(&mut slow, now, notes, 1_000_000);
                proptest::prop_assert_eq!(&fast, &slow, "after request {} {:?}", i, notes);
            }
        }
    }

    #[test]
    fn a_request_that_repeats_the_one_before_replaces_it() {
        let notes = |texts: &[&str]| texts.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let mut s = Element::new("state");
        mark_request(&mut s, 1);
        record(&mut s, 1, &notes(&["delivered", "reset"]), 1_000_000);
        mark_request(&mut s, 2);
        record(&mut s, 2, &notes(&["CHECK matches", "no certificate checking"]), 1_000_000);
        mark_request(&mut s, 3);
        record(&mut s, 3, &notes(&["CHECK matches", "no certificate checking"]), 1_000_000);
        mark_request(&mut s, 4);
        record(&mut s, 4, &notes(&["CHECK matches", "no certificate checking"]), 1_000_000);
        let expected = |t: &str| {
            vec![
                ("1".to_string(), "".to_string()),
                ("1".into(), "delivered".into()),
                ("1".into(), "reset".into()),
                (t.into(), "".into()),
                (t.into(), "CHECK matches".into()),
                (t.into(), "no certificate checking".into()),
            ]
        };
        assert_eq!(log_of(&s), expected("4"), "the first, different request stays; the repeats collapse into the latest");

        // a request that says something else (or the same things in another order) is kept
        mark_request(&mut s, 5);
        record(&mut s, 5, &notes(&["no certificate checking", "CHECK matches"]), 1_000_000);
        assert_eq!(log_of(&s).len(), 9);
        mark_request(&mut s, 6);
        record(&mut s, 6, &notes(&["no certificate checking"]), 1_000_000);
        assert_eq!(log_of(&s).len(), 11);
        // nor is one whose notes are only the end of the previous request's
        mark_request(&mut s, 7);
        record(&mut s, 7, &notes(&["reset", "no certificate checking"]), 1_000_000);
        mark_request(&mut s, 8);
        record(&mut s, 8, &notes(&["no certificate checking"]), 1_000_000);
        assert_eq!(log_of(&s).len(), 16);
        assert_eq!(log_of(&s)[11..13], [("7".to_string(), "".to_string()), ("7".into(), "reset".into())]);
    }

    #[test]
    fn a_repeated_steady_poll_only_changes_digits_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00-90-33-3e-0c-57.xml");
        let poll = |now: i64| {
            let mut locked = LockedState::open(&path).unwrap();
            locked.state.set_attr("seen", now.to_compact_string());
            mark_request(&mut locked.state, now);
            device(&mut locked.state).set_attr("sn", "00-90-33-3e-0c-57");
            record(&mut locked.state, now, &["# CHECK matches".to_string()], 1800);
            locked.save().unwrap();
        };
        poll(1_700_000_000);
        poll(1_700_000_060);
        let inode = fs::metadata(&path).unwrap().ino();
        let before = fs::read_to_string(&path).unwrap();
        poll(1_700_000_120);
        let after = fs::read_to_string(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode, "written in place");
        assert_eq!(before.replace("1700000060", "1700000120"), after);
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
    fn damaged_files_give_a_fresh_state_and_a_readable_one_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00-90-33-3e-0c-57.xml");
        let deep = format!("<state>{}{}</state>", "<a>".repeat(70), "</a>".repeat(70));
        for (content, what) in [(deep.as_bytes(), "levels deep"), (b"<state><x></state>".as_slice(), "line 1"), (b"\xff\xfe<state/>".as_slice(), "UTF-8"), (b"<other/>".as_slice(), "<other>")] {
            fs::write(&path, content).unwrap();
            let mut locked = LockedState::open(&path).unwrap();
            assert!(locked.existed());
            let damage = locked.damage().expect("damaged").to_string();
            assert!(damage.contains(what), "{damage}");
            assert!(locked.state.children.is_empty() && locked.state.attrs.is_empty(), "fresh");
            locked.state.set_attr("seen", "5");
            locked.save().unwrap();
            assert_eq!(fs::read(set_aside_path(&path)).unwrap(), content, "kept aside");
            assert_eq!(LockedState::open(&path).unwrap().state.attr("seen"), Some("5"));
        }
        // too large: not read, replaced, not kept
        let _ = fs::remove_file(set_aside_path(&path));
        fs::write(&path, vec![b' '; Limits::STATE.bytes + 1]).unwrap();
        let mut locked = LockedState::open(&path).unwrap();
        assert_eq!(locked.damage(), Some(&Damage::TooLarge { bytes: Limits::STATE.bytes as u64 + 1 }));
        locked.state.set_attr("seen", "6");
        locked.save().unwrap();
        assert!(fs::metadata(&path).unwrap().len() < 100);
        assert!(!set_aside_path(&path).exists());
    }

    #[test]
    fn a_file_is_read_whole_whatever_its_metadata_said() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.xml");
        let text = "<state seen=\"1\"/>\n".repeat(40);
        fs::write(&path, &text).unwrap();
        let file = File::open(&path).unwrap();
        let real = text.len() as u64;
        // the size the metadata gave, a stale smaller one (the file grew) and a larger one
        for said in [real, real / 2, 0, real + 100] {
            use std::io::Seek;
            (&file).seek(io::SeekFrom::Start(0)).unwrap();
            let (read, damage) = read_bounded(&file, said).unwrap();
            assert_eq!((read.as_str(), damage), (text.as_str(), None), "size said: {said}");
        }
    }

    #[test]
    fn a_state_over_its_size_limit_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00-90-33-3e-0c-57.xml");
        let mut locked = LockedState::open(&path).unwrap();
        locked.state.set_attr("seen", "1");
        locked.save().unwrap();
        let before = fs::read(&path).unwrap();
        let mut locked = LockedState::open(&path).unwrap();
        locked.state.child_or_insert("queries").child_or_insert("admin").text = "x".repeat(2000);
        locked.limit_size(1000);
        match locked.save() {
            Err(SaveError::TooLarge { bytes, limit: 1000 }) => assert!(bytes > 2000),
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), before, "the old state is kept");
        // never more than a state file may be read back with, whatever the caller asks
        let mut locked = LockedState::open(&path).unwrap();
        locked.limit_size(usize::MAX);
        locked.state.child_or_insert("queries").child_or_insert("admin").text = "x".repeat(Limits::STATE.bytes);
        assert!(matches!(locked.save(), Err(SaveError::TooLarge { .. })));
    }

    #[test]
    fn a_stored_answer_is_written_without_indentation_of_its_own() {
        let mut s = Element::new("state");
        let answer = Element::parse("<info>\n  <a>\n    <b x='1'/>\n  </a>\n</info>").unwrap();
        crate::queries::store_answer(&mut s, "admin", answer, 7);
        assert_eq!(
            render(&s),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<state>\n  <queries>\n    <admin seen=\"7\"><info><a><b x=\"1\"/></a></info></admin>\n  </queries>\n</state>\n"
        );
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
