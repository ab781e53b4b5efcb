//! The configuration kept between requests by the long-running modes: parsed once, re-read
//! when `config.xml` or the user's file changes (size, modification time or inode). A result,
//! good or broken, replaces the previous one whole.

use super::{load, Config, ConfigError, USER_FILE_CANDIDATES};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

#[derive(Default)]
pub struct ConfigCache {
    entries: Mutex<HashMap<PathBuf, (Fingerprint, Result<Arc<Config>, ConfigError>)>>,
}

impl ConfigCache {
    /// The configuration of `root`, from the cache while its files are unchanged.
    pub fn get(&self, root: &Path) -> Result<Arc<Config>, ConfigError> {
        let current = fingerprint(root);
        if let Ok(entries) = self.entries.lock() {
            if let Some((seen, result)) = entries.get(root) {
                if *seen == current {
                    return result.clone();
                }
            }
        }
        let result = load(root).map(Arc::new);
        if let Err(error) = &result {
            eprintln!("update-server: configuration of {}: {error}", root.display());
        }
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(root.to_path_buf(), (current, result.clone()));
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
        let cache = ConfigCache::default();
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
}
