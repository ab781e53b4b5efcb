//! Snippet files kept between polls by the long-running modes. A poll looks at a dozen or more
//! candidate names of which a few exist; the folder's listing and the files' contents are
//! cached and re-validated with one `stat` of the folder and one of each existing file.
//!
//! A cached listing or content is only trusted when it was read well after the folder's or
//! file's last modification: a change within the same clock tick as our read would otherwise
//! go unnoticed (the problem git calls "racy" entries). Once validated, an entry is trusted
//! for [`RECHECK_AFTER`] without another `stat`, as the configuration is: an edit reaches a
//! long-running process within a second, and a busy one stats a file once a second instead of
//! three times per poll.

// keys are the operator's folders and file names (listed, never sent by a client); a poll
// looks up a dozen candidates, so the cheaper hash counts
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long after a modification a read is trusted to have seen it.
const SETTLE: Duration = Duration::from_secs(2);
/// How long a validated listing or content is used without looking at the file system again
/// (the configuration's interval, `ConfigCache`).
pub const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// A snippet file as the update script needs it.
#[derive(Debug, Clone)]
pub struct Snippet {
    pub mtime: i64,
    pub content: Arc<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    mtime: (i64, i64),
    size: u64,
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp { mtime: (meta.mtime(), meta.mtime_nsec()), size: meta.size(), inode: meta.ino() }
    }

    fn settled_at(&self, read_at: SystemTime) -> bool {
        let modified = SystemTime::UNIX_EPOCH + Duration::new(self.mtime.0.max(0) as u64, self.mtime.1.clamp(0, 999_999_999) as u32);
        read_at.duration_since(modified).is_ok_and(|d| d >= SETTLE)
    }
}

struct Listing {
    stamp: Stamp,
    /// When the stamp was last compared with the folder's.
    checked: Instant,
    /// Shared with the polls that use it, so a poll does not copy the folder's listing.
    names: Arc<HashSet<String>>,
}

struct Cached {
    stamp: Stamp,
    /// When the stamp was last compared with the file's.
    checked: Instant,
    snippet: Snippet,
}

/// A snippet set whose CHECK signature was computed: the contents are the very ones the cache
/// handed out (compared by identity, which a changed file never shares: its new content is a
/// new allocation while this entry keeps the old one alive).
struct Signed {
    pre: Vec<String>,
    contents: Vec<Arc<Vec<u8>>>,
    post: Vec<String>,
    signature: String,
}

/// The most snippet sets whose signatures are kept: a fleet has a set per combination of
/// classes, environments and device-specific files in use, usually a handful; when a tree with
/// many device-specific snippets fills the list it starts again empty.
const MAX_SIGNED_SETS: usize = 256;

/// `dir` joined with the relative `names`, allocated once at its final size (`Path::join`
/// copies `dir` and then grows the copy for the name, two allocations per path of a poll).
pub fn path_in(dir: &Path, names: &[&str]) -> PathBuf {
    let mut path = PathBuf::with_capacity(dir.as_os_str().len() + names.iter().map(|name| name.len() + 1).sum::<usize>());
    path.push(dir);
    for name in names {
        path.push(name);
    }
    path
}

pub struct FileCache {
    listings: Mutex<HashMap<PathBuf, Listing>>,
    files: Mutex<HashMap<PathBuf, Cached>>,
    signatures: Mutex<Vec<Signed>>,
    recheck_after: Duration,
}

impl Default for FileCache {
    fn default() -> FileCache {
        FileCache::with_recheck_interval(RECHECK_AFTER)
    }
}

impl FileCache {
    /// A cache that trusts a validated entry for `recheck_after` (zero: every use looks).
    pub fn with_recheck_interval(recheck_after: Duration) -> FileCache {
        FileCache { listings: Mutex::default(), files: Mutex::default(), signatures: Mutex::default(), recheck_after }
    }

    /// The files of `names` that exist in `dir`, in the order of `names`.
    pub fn existing(&self, dir: &Path, names: &[String]) -> Vec<(String, Snippet)> {
        let present = self.names_in(dir);
        names
            .iter()
            .filter(|name| present.as_ref().is_none_or(|p| p.contains(name.as_str())))
            .filter_map(|name| self.read(&path_in(dir, &[name])).map(|snippet| (name.clone(), snippet)))
            .collect()
    }

    /// The CHECK signature of `pre`, `contents` (as [`FileCache::existing`] gave them) and
    /// `post`, hashed once per snippet set and remembered while its files are unchanged.
    pub fn check_signature(&self, pre: &[String], contents: &[&Arc<Vec<u8>>], post: &[String]) -> String {
        let same = |signed: &&Signed| {
            signed.pre == pre
                && signed.post == post
                && signed.contents.len() == contents.len()
                && signed.contents.iter().zip(contents).all(|(a, b)| Arc::ptr_eq(a, b))
        };
        if let Ok(signatures) = self.signatures.lock() {
            if let Some(signed) = signatures.iter().find(same) {
                return signed.signature.clone();
            }
        }
        let signature = crate::script::snippets::check_signature(pre, contents.iter().map(|c| c.as_slice()), post);
        if let Ok(mut signatures) = self.signatures.lock() {
            if signatures.len() >= MAX_SIGNED_SETS {
                signatures.clear();
            }
            signatures.push(Signed {
                pre: pre.to_vec(),
                contents: contents.iter().map(|c| Arc::clone(c)).collect(),
                post: post.to_vec(),
                signature: signature.clone(),
            });
        }
        signature
    }

    /// The names in `dir`, from the cache while the folder is unchanged; None when the folder
    /// cannot be listed (then every candidate is looked at directly).
    fn names_in(&self, dir: &Path) -> Option<Arc<HashSet<String>>> {
        if let Ok(listings) = self.listings.lock() {
            if let Some(listing) = listings.get(dir).filter(|l| l.checked.elapsed() < self.recheck_after) {
                return Some(Arc::clone(&listing.names));
            }
        }
        let meta = std::fs::metadata(dir).ok()?;
        let stamp = Stamp::of(&meta);
        if let Ok(mut listings) = self.listings.lock() {
            if let Some(listing) = listings.get_mut(dir).filter(|l| l.stamp == stamp) {
                listing.checked = Instant::now();
                return Some(Arc::clone(&listing.names));
            }
        }
        let read_at = SystemTime::now();
        let names: Arc<HashSet<String>> = Arc::new(
            std::fs::read_dir(dir)
                .ok()?
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
        );
        if stamp.settled_at(read_at) {
            if let Ok(mut listings) = self.listings.lock() {
                listings.insert(dir.to_path_buf(), Listing { stamp, checked: Instant::now(), names: Arc::clone(&names) });
            }
        }
        Some(names)
    }

    fn read(&self, path: &Path) -> Option<Snippet> {
        if let Ok(files) = self.files.lock() {
            if let Some(cached) = files.get(path).filter(|c| c.checked.elapsed() < self.recheck_after) {
                return Some(cached.snippet.clone());
            }
        }
        let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
        let stamp = Stamp::of(&meta);
        if let Ok(mut files) = self.files.lock() {
            if let Some(cached) = files.get_mut(path).filter(|c| c.stamp == stamp) {
                cached.checked = Instant::now();
                return Some(cached.snippet.clone());
            }
        }
        let read_at = SystemTime::now();
        let content = std::fs::read(path).ok()?;
        let snippet = Snippet { mtime: stamp.mtime.0, content: Arc::new(content) };
        if stamp.settled_at(read_at) {
            if let Ok(mut files) = self.files.lock() {
                files.insert(path.to_path_buf(), Cached { stamp, checked: Instant::now(), snippet: snippet.clone() });
            }
        }
        Some(snippet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_in_a_folder_is_what_joining_gives() {
        for (dir, names) in [
            ("/srv/update", &["status", "00-90-33-00-00-01.xml"][..]),
            ("root", &["scripts"]),
            ("/srv/update/", &["/var/lib/status", "x.xml"]),
            ("", &["a", "b/c"]),
            ("/srv", &[]),
        ] {
            let joined = names.iter().fold(std::path::PathBuf::from(dir), |path, name| path.join(name));
            assert_eq!(path_in(std::path::Path::new(dir), names), joined, "{dir} {names:?}");
        }
    }

    #[test]
    fn a_signature_is_remembered_for_the_same_contents_only() {
        let cache = FileCache::default();
        let (one, two) = (Arc::new(b"config add A\n".to_vec()), Arc::new(b"config add B\n".to_vec()));
        let expected = crate::script::snippets::check_signature(&[], [one.as_slice(), two.as_slice()], &[]);
        assert_eq!(cache.check_signature(&[], &[&one, &two], &[]), expected);
        assert_eq!(cache.check_signature(&[], &[&one, &two], &[]), expected, "from the list");
        assert_eq!(cache.signatures.lock().unwrap().len(), 1);
        // equal bytes in another allocation (a file read again) and other lines: hashed anew
        let again = Arc::new(two.to_vec());
        assert_eq!(cache.check_signature(&[], &[&one, &again], &[]), expected);
        let changed = Arc::new(b"config add C\n".to_vec());
        let other = crate::script::snippets::check_signature(&[], [one.as_slice(), changed.as_slice()], &[]);
        assert_eq!(cache.check_signature(&[], &[&one, &changed], &[]), other);
        let pre = vec!["mod cmd X".to_string()];
        assert_ne!(cache.check_signature(&pre, &[&one, &two], &[]), expected);
        assert_eq!(cache.signatures.lock().unwrap().len(), 4);
        for _ in 0..MAX_SIGNED_SETS {
            cache.check_signature(&[], &[&Arc::new(b"x".to_vec())], &[]);
        }
        assert!(cache.signatures.lock().unwrap().len() <= MAX_SIGNED_SETS, "bounded");
    }

    fn age(path: &Path, seconds: u64) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(seconds)).unwrap();
    }

    #[test]
    fn a_validated_file_is_trusted_for_the_recheck_interval_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::with_recheck_interval(Duration::from_millis(300));
        let names = vec!["a.txt".to_string()];
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "one").unwrap();
        age(&path, 100);
        let folder = std::fs::File::open(dir.path()).unwrap();
        folder.set_modified(SystemTime::now() - Duration::from_secs(100)).unwrap();
        assert_eq!(cache.existing(dir.path(), &names)[0].1.content.as_slice(), b"one");
        std::fs::write(&path, "two").unwrap();
        age(&path, 50);
        assert_eq!(cache.existing(dir.path(), &names)[0].1.content.as_slice(), b"one", "within the interval: not looked at");
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(cache.existing(dir.path(), &names)[0].1.content.as_slice(), b"two", "after it: the edit");
    }

    #[test]
    fn sees_new_changed_and_removed_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::with_recheck_interval(Duration::ZERO);
        let names = vec!["a.txt".to_string(), "b.txt".to_string()];
        std::fs::write(dir.path().join("a.txt"), "one").unwrap();
        age(&dir.path().join("a.txt"), 100);
        let got = cache.existing(dir.path(), &names);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.content.as_slice(), b"one");
        // a new file right now: the folder changed, so it is listed again
        std::fs::write(dir.path().join("b.txt"), "two").unwrap();
        assert_eq!(cache.existing(dir.path(), &names).len(), 2);
        // rewritten in place with the same size: the modification time tells
        std::fs::write(dir.path().join("a.txt"), "uno").unwrap();
        let got = cache.existing(dir.path(), &names);
        assert_eq!(got[0].1.content.as_slice(), b"uno");
        std::fs::remove_file(dir.path().join("a.txt")).unwrap();
        let got = cache.existing(dir.path(), &names);
        assert_eq!(got.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["b.txt"]);
    }
}
