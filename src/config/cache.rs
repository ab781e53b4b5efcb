//! The configuration kept between requests by the long-running modes: parsed once, re-read
//! when `config.xml` or the user's file changes (size, modification time or inode). A result,
//! good or broken, replaces the previous one whole.

use super::{load, Config, ConfigError, USER_FILE_CANDIDATES};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What identifies the files a configuration was built from.
type Fingerprint = Vec<Option<(i64, i64, u64, u64)>>;

fn fingerprint(root: &Path) -> Fingerprint {
    std::iter::once("config.xml")
        .chain(USER_FILE_CANDIDATES)
        .map(|name| {
            std::fs::metadata(root.join(name))
                .ok()
                .map(|m| (m.mtime(), m.mtime_nsec(), m.size(), m.ino()))
        })
        .collect()
}

/// A cached configuration and when its files were last looked at.
struct Entry {
    fingerprint: Fingerprint,
    checked: Instant,
    result: Result<Arc<Config>, ConfigError>,
}

pub struct ConfigCache {
    entries: Mutex<HashMap<PathBuf, Entry>>,
    /// How long a configuration is used before its files are looked at again: a change takes
    /// effect at most this much later, and a busy server stats its files once in a while
    /// instead of on every request.
    recheck_after: Duration,
}

impl Default for ConfigCache {
    fn default() -> ConfigCache {
        ConfigCache::with_recheck_interval(Duration::from_secs(1))
    }
}

impl ConfigCache {
    pub fn with_recheck_interval(recheck_after: Duration) -> ConfigCache {
        ConfigCache { entries: Mutex::new(HashMap::new()), recheck_after }
    }

    /// The configuration of `root`, from the cache while its files are unchanged.
    pub fn get(&self, root: &Path) -> Result<Arc<Config>, ConfigError> {
        if let Ok(entries) = self.entries.lock() {
            if let Some(entry) = entries.get(root).filter(|e| e.checked.elapsed() < self.recheck_after) {
                return entry.result.clone();
            }
        }
        let current = fingerprint(root);
        if let Ok(mut entries) = self.entries.lock() {
            if let Some(entry) = entries.get_mut(root).filter(|e| e.fingerprint == current) {
                entry.checked = Instant::now();
                return entry.result.clone();
            }
        }
        let result = load(root).map(Arc::new);
        if let Err(error) = &result {
            eprintln!("update-server: configuration of {}: {error}", root.display());
        }
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(root.to_path_buf(), Entry { fingerprint: current, checked: Instant::now(), result: result.clone() });
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_on_change_and_reports_broken_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/config.xml"), dir.path().join("config.xml")).unwrap();
        let user = dir.path().join("user-config.xml");
        std::fs::write(&user, "<config><master info=''/><times grace='5'/></config>").unwrap();
        let cache = ConfigCache::with_recheck_interval(Duration::ZERO);
        assert_eq!(cache.get(dir.path()).unwrap().times.grace, 5);
        std::fs::write(&user, "<config><master info=''/><times grace='7'/>\n<broken></config>").unwrap();
        match cache.get(dir.path()) {
            Err(ConfigError::Malformed { file, line, .. }) => {
                assert_eq!(file, "user-config.xml");
                assert_eq!(line, 2);
            }
            other => panic!("expected a malformed-file error, got {other:?}"),
        }
        std::fs::write(&user, "<config><master info=''/><times grace='11'/></config>").unwrap();
        assert_eq!(cache.get(dir.path()).unwrap().times.grace, 11);
    }

    #[test]
    fn files_are_looked_at_again_only_after_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/config.xml"), dir.path().join("config.xml")).unwrap();
        let user = dir.path().join("user-config.xml");
        std::fs::write(&user, "<config><master info=''/><times grace='5'/></config>").unwrap();
        let cache = ConfigCache::with_recheck_interval(Duration::from_millis(300));
        assert_eq!(cache.get(dir.path()).unwrap().times.grace, 5);
        std::fs::write(&user, "<config><master info=''/><times grace='6'/></config>").unwrap();
        assert_eq!(cache.get(dir.path()).unwrap().times.grace, 5, "within the interval");
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(cache.get(dir.path()).unwrap().times.grace, 6, "after it");
    }
}
