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
    /// Where `update-server check`'s findings go when a configuration is read (None: nowhere).
    findings_sink: Option<FindingsSink>,
}

/// Takes one log line.
pub type FindingsSink = Arc<dyn Fn(&str) + Send + Sync>;

impl Default for ConfigCache {
    fn default() -> ConfigCache {
        ConfigCache::with_recheck_interval(Duration::from_secs(1))
    }
}

impl ConfigCache {
    pub fn with_recheck_interval(recheck_after: Duration) -> ConfigCache {
        ConfigCache { entries: Mutex::new(HashMap::new()), recheck_after, findings_sink: None }
    }

    /// The cache that logs [`crate::check::check`]'s findings (but the refusal, logged anyway)
    /// each time it reads a configuration: once per change of its files.
    pub fn logging_findings(self) -> ConfigCache {
        self.logging_findings_to(Arc::new(|line: &str| eprintln!("{line}")))
    }

    /// [`ConfigCache::logging_findings`] into `sink`.
    pub fn logging_findings_to(self, sink: FindingsSink) -> ConfigCache {
        ConfigCache { findings_sink: Some(sink), ..self }
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
        // of requests that read the changed files at the same time, the first to store them logs
        let mut first = true;
        if let Ok(mut entries) = self.entries.lock() {
            first = entries.get(root).is_none_or(|e| e.fingerprint != current);
            entries.insert(root.to_path_buf(), Entry { fingerprint: current, checked: Instant::now(), result: result.clone() });
        }
        if let (Some(sink), true) = (&self.findings_sink, first) {
            for line in findings_log(root) {
                sink(&line);
            }
        }
        result
    }
}

/// The log lines of [`crate::check::check`]'s findings for `root`, but a refusal of the
/// configuration (the cache logs the server's own message for it).
fn findings_log(root: &Path) -> Vec<String> {
    crate::check::check(root)
        .iter()
        .filter(|f| !f.refusal)
        .map(|f| format!("update-server: configuration: {}", f.under(root)))
        .collect()
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
    fn findings_are_logged_once_per_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/config.xml"), dir.path().join("config.xml")).unwrap();
        std::fs::create_dir(dir.path().join("scripts")).unwrap();
        let user = dir.path().join("user-config.xml");
        std::fs::write(&user, "<config><master info=''/><statuss dir='status'/></config>").unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let into = Arc::clone(&lines);
        let cache = ConfigCache::with_recheck_interval(Duration::ZERO)
            .logging_findings_to(Arc::new(move |line: &str| into.lock().unwrap().push(line.to_string())));
        for _ in 0..3 {
            cache.get(dir.path()).unwrap();
        }
        let logged = lines.lock().unwrap().clone();
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert!(logged[0].starts_with("update-server: configuration: ") && logged[0].contains("user-config.xml:1:26: error: unknown element <statuss>"), "{}", logged[0]);
        // a change: its findings once; a refused configuration: not its refusal again
        std::fs::write(&user, "<config><master info=''/><times grace='x'/></config>").unwrap();
        cache.get(dir.path()).unwrap();
        cache.get(dir.path()).unwrap();
        std::fs::write(&user, "<config><master info=''/><phases><phase id='all' seq='1'/></phases></config>").unwrap();
        assert!(cache.get(dir.path()).is_err());
        let logged = lines.lock().unwrap().clone();
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert!(logged[1].contains("times/@grace: 'x' is not a number"), "{}", logged[1]);
        // without a sink (CGI) nothing is checked at all
        assert!(ConfigCache::default().findings_sink.is_none());
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
