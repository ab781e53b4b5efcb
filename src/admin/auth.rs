//! Who may use the admin page: the credentials of `master/@user` and `master/@password`
//! (plain, bcrypt or argon2), the refusal of the shipped default, and the throttling of wrong
//! passwords (per client address and for everybody), kept under `cache/`.

use super::session::{constant_time_eq, digest};
use std::fs;
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// The password `config.xml` ships with; never accepted.
pub const SHIPPED_PASSWORD: &str = "password";

/// Failures of one client address within [`WINDOW_SECS`] before it has to wait.
pub const PER_CLIENT_LIMIT: usize = 5;
/// Failures of all clients together within [`WINDOW_SECS`] before everybody has to wait.
pub const GLOBAL_LIMIT: usize = 50;
pub const WINDOW_SECS: i64 = 15 * 60;

/// How the configured credentials let people in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// `master/@user` and `master/@password` are both empty: the old server asked for no login.
    /// We allow that only where somebody else vouches for the user (see `admin::access`).
    NoLogin,
    /// The shipped default password is configured: nobody gets in until it is changed.
    DefaultPassword,
    /// A real password (plain or a hash).
    Password,
}

pub fn policy(user: &str, password: &str) -> Policy {
    if user.is_empty() && password.is_empty() {
        Policy::NoLogin
    } else if password == SHIPPED_PASSWORD {
        Policy::DefaultPassword
    } else {
        Policy::Password
    }
}

/// A fingerprint of the configured credentials, kept in each session: when the operator
/// changes user or password, every session ends.
pub fn fingerprint(user: &str, password: &str) -> String {
    digest(&format!("{}\0{}", user, password))[..16].to_string()
}

/// Whether `password` is a hash we verify as such.
pub fn is_hash(stored: &str) -> bool {
    stored.starts_with("$2y$") || stored.starts_with("$2b$") || stored.starts_with("$2a$") || stored.starts_with("$argon2")
}

/// Checks a login against the configuration. A hash is verified as such; a plain password is
/// compared in constant time (both sides hashed first, so not even the length shows).
pub fn verify(config_user: &str, config_password: &str, user: &str, password: &str) -> bool {
    if policy(config_user, config_password) != Policy::Password {
        return false;
    }
    let user_ok = constant_time_eq(digest(config_user).as_bytes(), digest(user).as_bytes());
    let password_ok = if config_password.starts_with("$argon2") {
        verify_argon2(config_password, password)
    } else if is_hash(config_password) {
        bcrypt::verify(password, config_password).unwrap_or(false)
    } else {
        constant_time_eq(digest(config_password).as_bytes(), digest(password).as_bytes())
    };
    user_ok & password_ok
}

fn verify_argon2(hash: &str, password: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    match argon2::PasswordHash::new(hash) {
        Ok(parsed) => argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// The wrong-password record: `cache/admin-login-failures`, one `EPOCH ADDRESS` line per
/// failure within the window, changed under an exclusive lock on `cache/admin-login.lock`.
struct Failures {
    lock: fs::File,
    path: std::path::PathBuf,
    entries: Vec<(i64, String)>,
}

impl Failures {
    fn open(root: &Path, now: i64) -> io::Result<Failures> {
        let dir = root.join("cache");
        fs::create_dir_all(&dir)?;
        let lock = fs::File::options().read(true).write(true).create(true).truncate(false).open(dir.join("admin-login.lock"))?;
        // SAFETY: flock on the descriptor of a file we own and keep open; blocks until ours.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let path = dir.join("admin-login-failures");
        let entries = fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (time, address) = line.split_once(' ')?;
                Some((time.parse::<i64>().ok()?, address.to_string()))
            })
            .filter(|(time, _)| now - time < WINDOW_SECS && *time <= now + 60)
            .collect();
        Ok(Failures { lock, path, entries })
    }

    fn save(&self) -> io::Result<()> {
        let mut text = Vec::new();
        for (time, address) in &self.entries {
            writeln!(text, "{time} {address}")?;
        }
        crate::state::write_file(&self.path, &text, crate::state::Durability::Renamed)
    }

    /// Seconds to wait before `address` may try again (None: it may try now).
    fn wait(&self, address: &str, now: i64) -> Option<i64> {
        let mine: Vec<i64> = self.entries.iter().filter(|(_, a)| a == address).map(|(t, _)| *t).collect();
        let all: Vec<i64> = self.entries.iter().map(|(t, _)| *t).collect();
        let wait_for = |times: &[i64], limit: usize| -> Option<i64> {
            if times.len() < limit {
                return None;
            }
            // the failure that has to age out of the window before one more try is allowed
            let mut sorted = times.to_vec();
            sorted.sort_unstable();
            let deciding = sorted[sorted.len() - limit];
            Some((deciding + WINDOW_SECS - now).max(1))
        };
        match (wait_for(&mine, PER_CLIENT_LIMIT), wait_for(&all, GLOBAL_LIMIT)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Drop for Failures {
    fn drop(&mut self) {
        // SAFETY: unlocking our own, still open descriptor.
        unsafe { libc::flock(self.lock.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// What a login attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Accepted,
    Refused,
    /// Too many wrong passwords: try again after this many seconds (the password was not
    /// even looked at).
    Throttled(i64),
}

/// Checks a login attempt from `address`, with the throttle around it.
pub fn attempt(root: &Path, address: &str, now: i64, check: impl FnOnce() -> bool) -> Attempt {
    let failures = match Failures::open(root, now) {
        Ok(failures) => failures,
        // without the record no throttle can be kept: refuse rather than allow unlimited tries
        Err(error) => {
            eprintln!("update-server: admin login: cannot keep the failure record under cache/: {error}");
            return Attempt::Throttled(60);
        }
    };
    if let Some(wait) = failures.wait(address, now) {
        return Attempt::Throttled(wait);
    }
    let mut failures = failures;
    if check() {
        failures.entries.retain(|(_, a)| a != address);
        let _ = failures.save();
        Attempt::Accepted
    } else {
        failures.entries.push((now, address.to_string()));
        if let Err(error) = failures.save() {
            eprintln!("update-server: admin login: cannot record a failure under cache/: {error}");
        }
        Attempt::Refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        assert_eq!(policy("", ""), Policy::NoLogin);
        assert_eq!(policy("admin", "password"), Policy::DefaultPassword);
        assert_eq!(policy("other", "password"), Policy::DefaultPassword);
        assert_eq!(policy("admin", "s3cret"), Policy::Password);
    }

    #[test]
    fn plain_and_hashed_passwords() {
        assert!(verify("admin", "s3cret", "admin", "s3cret"));
        assert!(!verify("admin", "s3cret", "admin", "s3cre"));
        assert!(!verify("admin", "s3cret", "root", "s3cret"));
        assert!(!verify("admin", "password", "admin", "password"), "the shipped default is never accepted");
        assert!(!verify("", "", "", ""));
        let bcrypt_hash = bcrypt::hash("s3cret", 4).unwrap().replacen("$2b$", "$2y$", 1);
        assert!(verify("admin", &bcrypt_hash, "admin", "s3cret"));
        assert!(!verify("admin", &bcrypt_hash, "admin", &bcrypt_hash), "a hash is not a password");
        let argon = argon2_hash("s3cret");
        assert!(verify("admin", &argon, "admin", "s3cret"));
        assert!(!verify("admin", &argon, "admin", "wrong"));
        assert!(!verify("admin", "$argon2id$broken", "admin", "x"));
    }

    fn argon2_hash(password: &str) -> String {
        use argon2::password_hash::PasswordHasher;
        argon2::Argon2::default().hash_password_with_salt(password.as_bytes(), b"some salt here").unwrap().to_string()
    }

    #[test]
    fn wrong_passwords_are_throttled_per_client_and_globally() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_700_000_000;
        for i in 0..PER_CLIENT_LIMIT {
            assert_eq!(attempt(dir.path(), "10.0.0.1", now + i as i64, || false), Attempt::Refused);
        }
        let throttled = attempt(dir.path(), "10.0.0.1", now + 10, || true);
        assert!(matches!(throttled, Attempt::Throttled(w) if w > 0 && w <= WINDOW_SECS));
        assert_eq!(attempt(dir.path(), "10.0.0.2", now + 10, || true), Attempt::Accepted, "others may still log in");
        assert_eq!(attempt(dir.path(), "10.0.0.1", now + WINDOW_SECS + 10, || true), Attempt::Accepted, "the lock ends");
        for i in 0..GLOBAL_LIMIT {
            let _ = attempt(dir.path(), &format!("10.1.{}.{}", i / 200, i % 200), now + 2 * WINDOW_SECS, || false);
        }
        assert!(matches!(attempt(dir.path(), "10.9.9.9", now + 2 * WINDOW_SECS + 1, || true), Attempt::Throttled(_)));
    }
}
