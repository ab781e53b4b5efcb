//! Admin sessions kept on the server: one small file per session under `cache/sessions/`,
//! named by the SHA-256 of the session id, so CGI processes and FastCGI workers share them and
//! a leaked directory listing reveals no usable id. The cookie carries only the random id.

use sha2::{Digest, Sha256};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The cookie's name.
pub const COOKIE: &str = "update_admin";
/// A session unused this long is gone.
pub const IDLE_SECS: i64 = 60 * 60;
/// A session older than this is gone whatever its use.
pub const MAX_AGE_SECS: i64 = 12 * 60 * 60;
/// The last-use time (the file's mtime) is refreshed at most this often.
const TOUCH_EVERY_SECS: i64 = 60;

/// What a session file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The id as the cookie carries it (64 hex digits).
    pub id: String,
    /// Who logged in (empty when the login is switched off).
    pub user: String,
    /// Fingerprint of the credentials in force at login: changing them ends every session.
    pub credentials: String,
    /// The token every changing request must present.
    pub csrf: String,
    pub created: i64,
}

/// The folder of the session files.
pub fn folder(root: &Path) -> PathBuf {
    root.join("cache").join("sessions")
}

/// 32 random bytes as 64 lower-case hex digits.
pub fn random_token() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(format!("no random numbers: {e}")))?;
    Ok(hex(&bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `text` in hex.
pub fn digest(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// Whether `text` has the shape of an id we hand out.
fn is_token(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn file_of(root: &Path, id: &str) -> PathBuf {
    folder(root).join(digest(id))
}

/// Equality that takes the same time wherever the inputs differ (their lengths may show).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut difference = 0u8;
    for (x, y) in a.iter().zip(b) {
        difference |= x ^ y;
    }
    std::hint::black_box(difference) == 0
}

/// Starts a new session (a fresh id: never one the browser brought along).
pub fn create(root: &Path, user: &str, credentials: &str, now: i64) -> io::Result<Session> {
    let dir = folder(root);
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    remove_expired(&dir, now);
    let session = Session {
        id: random_token()?,
        user: user.to_string(),
        credentials: credentials.to_string(),
        csrf: random_token()?,
        created: now,
    };
    let text = format!(
        "update-server admin session 1\nuser={}\ncredentials={}\ncsrf={}\ncreated={}\n",
        session.user.replace(['\n', '\r'], " "),
        session.credentials,
        session.csrf,
        session.created
    );
    crate::state::write_file(&file_of(root, &session.id), text.as_bytes(), crate::state::Durability::Renamed)?;
    Ok(session)
}

/// The live session of `id`, its last use refreshed; None when unknown or expired (an expired
/// file is removed).
pub fn load(root: &Path, id: &str, now: i64) -> Option<Session> {
    if !is_token(id) {
        return None;
    }
    let path = file_of(root, id);
    let meta = fs::metadata(&path).ok()?;
    let text = fs::read_to_string(&path).ok()?;
    let mut lines = text.lines();
    if lines.next() != Some("update-server admin session 1") {
        return None;
    }
    let mut session = Session { id: id.to_string(), user: String::new(), credentials: String::new(), csrf: String::new(), created: 0 };
    for line in lines {
        match line.split_once('=') {
            Some(("user", v)) => session.user = v.to_string(),
            Some(("credentials", v)) => session.credentials = v.to_string(),
            Some(("csrf", v)) => session.csrf = v.to_string(),
            Some(("created", v)) => session.created = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    let last_use = meta.mtime();
    if now - last_use > IDLE_SECS || now - session.created > MAX_AGE_SECS || !is_token(&session.csrf) {
        let _ = fs::remove_file(&path);
        return None;
    }
    if now - last_use >= TOUCH_EVERY_SECS {
        if let Ok(file) = fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(now.max(0) as u64));
        }
    }
    Some(session)
}

/// Ends a session.
pub fn destroy(root: &Path, id: &str) {
    if is_token(id) {
        let _ = fs::remove_file(file_of(root, id));
    }
}

/// Removes the session files nobody can use any more.
fn remove_expired(dir: &Path, now: i64) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let stale = entry.metadata().map(|m| now - m.mtime() > IDLE_SECS.max(MAX_AGE_SECS)).unwrap_or(false);
        let ours = entry.file_name().to_str().is_some_and(is_token);
        if stale && ours {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`).
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|part| part.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.trim())
}

/// The `Set-Cookie` value for a session (`None`: delete the cookie).
pub fn set_cookie(id: Option<&str>, path: &str, secure: bool) -> String {
    let mut cookie = match id {
        Some(id) => format!("{COOKIE}={id}; Path={path}; HttpOnly; SameSite=Strict"),
        None => format!("{COOKIE}=; Path={path}; HttpOnly; SameSite=Strict; Max-Age=0"),
    };
    if secure {
        cookie.push_str("; Secure");
    }
    cookie
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_load_destroy() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::clock::now();
        let s = create(dir.path(), "admin", "c", now).unwrap();
        assert_ne!(s.id, s.csrf);
        assert_eq!(load(dir.path(), &s.id, now), Some(s.clone()));
        let names: Vec<_> = fs::read_dir(folder(dir.path())).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 1);
        assert_ne!(names[0].to_str().unwrap(), s.id, "the file is named by the hash, not the id");
        assert_eq!(load(dir.path(), &"0".repeat(64), now), None);
        assert_eq!(load(dir.path(), "../../etc/passwd", now), None);
        destroy(dir.path(), &s.id);
        assert_eq!(load(dir.path(), &s.id, now), None);
    }

    #[test]
    fn idle_sessions_expire() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::clock::now();
        let s = create(dir.path(), "admin", "c", now).unwrap();
        assert!(load(dir.path(), &s.id, now + IDLE_SECS + 5).is_none());
        assert!(load(dir.path(), &s.id, now).is_none(), "the expired file is gone");
    }

    #[test]
    fn cookies() {
        assert_eq!(cookie_value("a=1; update_admin=abc; b=2", COOKIE), Some("abc"));
        assert_eq!(cookie_value("xupdate_admin=abc", COOKIE), None);
        let c = set_cookie(Some("x"), "/mtls/update/", true);
        assert_eq!(c, "update_admin=x; Path=/mtls/update/; HttpOnly; SameSite=Strict; Secure");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
