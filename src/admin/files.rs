//! Which files the admin page may hand out (`deliverfile`) or delete (`delfile`). Both are
//! decided on the resolved path (symbolic links followed), never on the name alone.

use crate::config::{Config, USER_FILE_CANDIDATES};
use std::path::{Path, PathBuf};

/// The folders whose files may be downloaded: device states, backups, certificates and
/// snippets.
fn download_folders(root: &Path, config: &Config) -> Vec<PathBuf> {
    let mut names: Vec<String> = vec![config.times.dir.clone()];
    if let Some(status) = &config.status {
        names.push(status.dir.clone());
    }
    if let Some(backup) = &config.backup {
        names.push(backup.dir.clone());
    }
    if let Some(dir) = super::status::cert_dir(config) {
        names.push(dir);
    }
    let Ok(root) = root.canonicalize() else { return Vec::new() };
    names
        .iter()
        .filter_map(|name| root.join(name).canonicalize().ok())
        // a folder configured as the root itself (or above it) would open everything
        .filter(|folder| folder != &root && !root.starts_with(folder))
        .collect()
}

/// Files that are never handed out whatever folder they are in: the configuration, the
/// sessions and everything else under `cache/` and `config/`.
fn forbidden(root: &Path, path: &Path) -> bool {
    let Ok(root) = root.canonicalize() else { return true };
    let named = |name: &str| root.join(name).canonicalize().is_ok_and(|p| p == path);
    let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
    hidden
        || named("config.xml")
        || named("full-config.dtd")
        || USER_FILE_CANDIDATES.iter().any(|f| named(f))
        || ["cache", "config"].iter().any(|d| root.join(d).canonicalize().is_ok_and(|dir| path.starts_with(dir)))
}

/// The file `relative` (to the root) if it may be downloaded; None for anything else, whether
/// it exists or not.
pub fn deliverable(root: &Path, config: &Config, relative: &str) -> Option<PathBuf> {
    if relative.is_empty() || relative.len() > 1024 || relative.contains('\0') || relative.starts_with('/') {
        return None;
    }
    let path = root.join(relative).canonicalize().ok()?;
    if !path.is_file() || forbidden(root, &path) {
        return None;
    }
    download_folders(root, config).iter().any(|folder| path.starts_with(folder) && &path != folder).then_some(path)
}

/// The certificate files of a device that the admin may delete.
const DELETABLE_SUFFIXES: [&str; 4] = ["-request.p10.der", "-request.p10.pem", "-signedrequest.cer", "-requesterror"];

/// The CSR or certificate file `file` (`certs/<sn>-…` or just the name) of device `sn`, if it
/// exists and may be deleted.
pub fn deletable(root: &Path, config: &Config, sn: &str, file: &str) -> Option<PathBuf> {
    if !crate::device::is_serial(sn) {
        return None;
    }
    let dir_name = super::status::cert_dir(config)?;
    let name = file.strip_prefix(&format!("{dir_name}/")).unwrap_or(file);
    if !DELETABLE_SUFFIXES.iter().any(|suffix| name == format!("{sn}{suffix}")) {
        return None;
    }
    let dir = root.join(&dir_name).canonicalize().ok()?;
    let root_canonical = root.canonicalize().ok()?;
    if dir == root_canonical || root_canonical.starts_with(&dir) {
        return None;
    }
    let path = dir.join(name);
    let resolved = path.canonicalize().ok()?;
    (resolved.starts_with(&dir) && resolved.is_file() && !forbidden(root, &resolved)).then_some(path)
}
