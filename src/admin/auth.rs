//! Who may use the admin page: the credentials of `master/@user` and `master/@password`
//! (plain, bcrypt or argon2), the refusal of the shipped default, and the throttling of wrong
//! passwords, kept under `cache/`.
//!
//! The throttle never lets failures from elsewhere lock the right password out: a source (an
//! IPv4 address, an IPv6 /64) waits only for its own failures. Many failures in all, or for one
//! user name, make every source's budget smaller (one try per window instead of
//! [`PER_SOURCE_LIMIT`]), which slows a distributed guesser down without denying anybody's
//! first try. Every failure ages out after [`WINDOW_SECS`], so every wait ends by itself.

use super::session::{constant_time_eq, digest};
use std::fs;
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// The password `config.xml` ships with; never accepted.
pub const SHIPPED_PASSWORD: &str = "password";

/// Failures of one source within [`WINDOW_SECS`] before it has to wait.
pub const PER_SOURCE_LIMIT: usize = 5;
/// Failures of all sources together within the window from which on every source gets one try
/// per window (a distributed guess, or a record under attack).
pub const GLOBAL_CEILING: usize = 50;
/// Failures for one user name (from all sources) from which on the same holds.
pub const PER_USER_CEILING: usize = 20;
/// How long a failure counts. Also the longest anybody ever waits.
pub const WINDOW_SECS: i64 = 15 * 60;
/// The most failures the record keeps (the oldest go first): a bound on its size (about
/// 60 bytes a line) whatever an attacker sends.
pub const MAX_RECORDED: usize = 10_000;
/// The record, relative to the install root (named on the page and in the README).
pub const FAILURE_RECORD: &str = "cache/admin-login-failures";

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

/// The password as configured, with a pasted `htpasswd -nbB` line (`admin:$2y$…`) taken for
/// the hash it holds: operators paste the whole line, and a plain comparison with it would
/// refuse every login without a word.
pub fn stored_password(config_password: &str) -> &str {
    match config_password.split_once(':') {
        Some((name, hash)) if !name.contains('$') && is_hash(hash) => hash,
        _ => config_password,
    }
}

/// Checks a login against the configuration. A hash is verified as such; a plain password is
/// compared in constant time (both sides hashed first, so not even the length shows).
pub fn verify(config_user: &str, config_password: &str, user: &str, password: &str) -> bool {
    if policy(config_user, config_password) != Policy::Password {
        return false;
    }
    let config_password = stored_password(config_password);
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

/// An Argon2id hash of `password` in the PHC form (`$argon2id$v=19$m=19456,t=2,p=1$…`) for
/// `master/@password` (`update-server hash-password`): the argon2 crate's default parameters,
/// the ones [`verify`] checks with, and a random 16-byte salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no random salt: {e}"))?;
    argon2::Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// The password `update-server hash-password` reads: one line of UTF-8 without its line end
/// (`\n` or `\r\n`), not empty and not followed by another line (a pasted file or a second
/// line is more likely a mistake than a password).
pub fn password_from_input(input: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(input).map_err(|_| "the password is not UTF-8".to_string())?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.contains(['\n', '\r']) {
        return Err("more than one line on standard input: give the password as one line".into());
    }
    if line.is_empty() {
        return Err("empty password: give it as one line on standard input".into());
    }
    Ok(line)
}

/// Who a failure is counted against: the address, with an IPv6 address reduced to its /64
/// (one host usually has a whole /64 to pick addresses from) and an IPv4-mapped one to IPv4.
pub fn source_of(address: &str) -> String {
    match address.trim().parse::<std::net::IpAddr>().map(crate::net::normalize) {
        Ok(std::net::IpAddr::V4(v4)) => v4.to_string(),
        Ok(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        // not an address (a web server that sends something else): a safe token of it
        Err(_) => address.chars().filter(|c| c.is_ascii_graphic()).take(64).collect::<String>(),
    }
}

/// A user name as the record keeps it: a short digest (the user field may hold a mistyped
/// password, which must not end up in a file in clear).
fn user_tag(user: &str) -> String {
    digest(&format!("admin-login-user\0{user}"))[..16].to_string()
}

/// One wrong login.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    time: i64,
    source: String,
    user: String,
}

/// The lines of the record that still count at `now`: `EPOCH SOURCE USER-TAG` (older files
/// have no tag); unreadable lines, expired failures and ones from the future are dropped.
fn parse_record(text: &str, now: i64) -> Vec<Failure> {
    let mut failures: Vec<Failure> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let time = words.next()?.parse::<i64>().ok()?;
            let source = words.next()?.to_string();
            let user = words.next().unwrap_or("").to_string();
            Some(Failure { time, source, user })
        })
        .filter(|f| counts_at(f.time, now))
        .collect();
    failures.sort_by_key(|f| f.time);
    let excess = failures.len().saturating_sub(MAX_RECORDED);
    failures.drain(..excess);
    failures
}

/// Whether a failure at `time` still counts at `now` (a clock set back by more than a minute
/// must not make old failures count for ever).
fn counts_at(time: i64, now: i64) -> bool {
    now - time < WINDOW_SECS && time <= now + 60
}

/// Why logins from a source wait, as the login page explains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    /// Until the deciding failure ages out.
    pub wait_secs: i64,
    /// The source's failures that still count.
    pub failures: usize,
    /// Many failures in all (or for the user name): every source has one try per window.
    pub under_pressure: bool,
}

/// Whether `source` has to wait before it may try `user` again, and how long.
fn lockout(failures: &[Failure], source: &str, user: &str, now: i64) -> Option<Lockout> {
    let failures: Vec<&Failure> = failures.iter().filter(|f| counts_at(f.time, now)).collect();
    let for_user = failures.iter().filter(|f| f.user == user).count();
    let under_pressure = failures.len() >= GLOBAL_CEILING || for_user >= PER_USER_CEILING;
    let limit = if under_pressure { 1 } else { PER_SOURCE_LIMIT };
    let mut mine: Vec<i64> = failures.iter().filter(|f| f.source == source).map(|f| f.time).collect();
    mine.sort_unstable();
    if mine.len() < limit {
        return None;
    }
    // the failure that has to age out before one more try
    let deciding = mine[mine.len() - limit];
    let wait_secs = (deciding + WINDOW_SECS - now).clamp(1, WINDOW_SECS + 60);
    Some(Lockout { wait_secs, failures: mine.len(), under_pressure })
}

/// The lockout of `address` as the record on disk says, read without the lock and without
/// writing anything (the login form's GET): the per-user ceiling is left out, the user name
/// being unknown before the form is sent.
pub fn lockout_of(root: &Path, address: &str, now: i64) -> Option<Lockout> {
    let mut text = Vec::new();
    use std::io::Read;
    let limit = (MAX_RECORDED * 100) as u64;
    fs::File::open(root.join(FAILURE_RECORD)).ok()?.take(limit).read_to_end(&mut text).ok()?;
    lockout(&parse_record(&String::from_utf8_lossy(&text), now), &source_of(address), "", now)
}

/// The wrong-password record ([`FAILURE_RECORD`]), changed under an exclusive lock on
/// `cache/admin-login.lock`.
struct Record {
    lock: fs::File,
    path: std::path::PathBuf,
    failures: Vec<Failure>,
}

impl Record {
    fn open(root: &Path, now: i64) -> io::Result<Record> {
        let dir = root.join("cache");
        fs::create_dir_all(&dir)?;
        let lock = fs::File::options().read(true).write(true).create(true).truncate(false).open(dir.join("admin-login.lock"))?;
        // SAFETY: flock on the descriptor of a file we own and keep open; blocks until ours.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let path = root.join(FAILURE_RECORD);
        let failures = match fs::read(&path) {
            Ok(bytes) => parse_record(&String::from_utf8_lossy(&bytes), now),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(Record { lock, path, failures })
    }

    fn save(&self) -> io::Result<()> {
        if self.failures.is_empty() {
            // nothing counts any more: no file left behind to wonder about
            return match fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let mut text = Vec::new();
        for failure in &self.failures {
            writeln!(text, "{} {} {}", failure.time, failure.source, failure.user)?;
        }
        crate::state::write_file(&self.path, &text, crate::state::Durability::Renamed)
    }
}

impl Drop for Record {
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
    /// Too many wrong passwords from this source: try again later (the password was not even
    /// looked at).
    Throttled(Lockout),
    /// The failure record cannot be kept (cache/ not writable): no password is checked, since
    /// without the record there would be no limit on guessing.
    NoRecord(String),
}

/// Checks a login attempt of `user` from `address`, with the throttle around it.
pub fn attempt(root: &Path, address: &str, user: &str, now: i64, check: impl FnOnce() -> bool) -> Attempt {
    let mut record = match Record::open(root, now) {
        Ok(record) => record,
        Err(error) => {
            eprintln!("update-server: admin login: cannot keep the failure record under cache/: {error}");
            return Attempt::NoRecord(error.to_string());
        }
    };
    let source = source_of(address);
    let user = user_tag(user);
    if let Some(lockout) = lockout(&record.failures, &source, &user, now) {
        return Attempt::Throttled(lockout);
    }
    if check() {
        record.failures.retain(|f| f.source != source);
        if let Err(error) = record.save() {
            eprintln!("update-server: admin login: cannot update {FAILURE_RECORD}: {error}");
        }
        Attempt::Accepted
    } else {
        record.failures.push(Failure { time: now, source, user });
        let excess = record.failures.len().saturating_sub(MAX_RECORDED);
        record.failures.drain(..excess);
        if let Err(error) = record.save() {
            eprintln!("update-server: admin login: cannot record a failure in {FAILURE_RECORD}: {error}");
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
        // the whole line `htpasswd -nbB admin s3cret` prints, pasted as the password
        let line = format!("admin:{bcrypt_hash}");
        assert!(verify("admin", &line, "admin", "s3cret"));
        assert!(!verify("admin", &line, "admin", &line) && !verify("admin", &line, "admin", "wrong"));
        // a plain password with a colon stays a plain password
        assert!(verify("admin", "a:b", "admin", "a:b"));
    }

    #[test]
    fn hash_password_makes_a_hash_the_login_accepts() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(verify("admin", &hash, "admin", "s3cret") && !verify("admin", &hash, "admin", "s3cre"));
        assert_ne!(hash, hash_password("s3cret").unwrap(), "a new salt every time");
    }

    #[test]
    fn the_password_is_one_line() {
        assert_eq!(password_from_input(b"s3cret\n"), Ok("s3cret"));
        assert_eq!(password_from_input(b"s3cret\r\n"), Ok("s3cret"));
        assert_eq!(password_from_input(b"s3cret"), Ok("s3cret"));
        assert_eq!(password_from_input(b" with spaces \n"), Ok(" with spaces "), "spaces are part of a password");
        for bad in [&b""[..], b"\n", b"\r\n", b"two\nlines\n", b"a\rb", b"\xff\n"] {
            assert!(password_from_input(bad).is_err(), "{bad:?}");
        }
    }

    fn argon2_hash(password: &str) -> String {
        use argon2::password_hash::PasswordHasher;
        argon2::Argon2::default().hash_password_with_salt(password.as_bytes(), b"some salt here").unwrap().to_string()
    }

    const NOW: i64 = 1_700_000_000;

    fn wait(failures: &[Failure], source: &str, user: &str, now: i64) -> Option<i64> {
        lockout(failures, source, user, now).map(|l| l.wait_secs)
    }

    fn fail(source: &str, user: &str, time: i64) -> Failure {
        Failure { time, source: source.into(), user: user_tag(user) }
    }

    #[test]
    fn a_source_waits_for_its_own_failures_only() {
        let mut failures: Vec<Failure> = (0..PER_SOURCE_LIMIT as i64).map(|i| fail("10.0.0.1", "admin", NOW + i)).collect();
        assert_eq!(wait(&failures, "10.0.0.1", &user_tag("admin"), NOW + 10), Some(WINDOW_SECS - 10), "the oldest failure has to age out");
        assert_eq!(wait(&failures, "10.0.0.2", &user_tag("admin"), NOW + 10), None);
        assert_eq!(wait(&failures, "10.0.0.1", &user_tag("admin"), NOW + WINDOW_SECS + 10), None, "every failure has aged out");
        failures.remove(0);
        assert_eq!(wait(&failures, "10.0.0.1", &user_tag("admin"), NOW + 10), None, "four failures leave one try");
    }

    #[test]
    fn pressure_slows_every_source_down_but_never_denies_a_first_try() {
        let distributed: Vec<Failure> = (0..GLOBAL_CEILING).map(|i| fail(&format!("10.1.0.{i}"), "root", NOW)).collect();
        assert_eq!(wait(&distributed, "10.9.9.9", &user_tag("admin"), NOW + 1), None, "a fresh source tries");
        assert!(wait(&distributed, "10.1.0.7", &user_tag("admin"), NOW + 1).is_some(), "one failure is a source's whole budget now");
        let on_one_user: Vec<Failure> = (0..PER_USER_CEILING).map(|i| fail(&format!("10.2.0.{i}"), "admin", NOW)).collect();
        assert_eq!(wait(&on_one_user, "10.9.9.9", &user_tag("admin"), NOW + 1), None);
        assert!(wait(&on_one_user, "10.2.0.3", &user_tag("admin"), NOW + 1).is_some());
        let below: Vec<Failure> = on_one_user[1..].to_vec();
        assert_eq!(wait(&below, "10.2.0.3", &user_tag("admin"), NOW + 1), None, "below the ceilings a source has five tries");
    }

    #[test]
    fn the_record_drops_what_no_longer_counts() {
        let text = format!(
            "{old} 10.0.0.1\n{recent} 10.0.0.2 abc\ngarbage\n\n{future} 10.0.0.3 abc\n{edge} 10.0.0.4\n",
            old = NOW - WINDOW_SECS,
            recent = NOW - 5,
            future = NOW + 3600,
            edge = NOW + 30
        );
        let failures = parse_record(&text, NOW);
        let sources: Vec<&str> = failures.iter().map(|f| f.source.as_str()).collect();
        assert_eq!(sources, ["10.0.0.2", "10.0.0.4"]);
        assert_eq!(failures[0].user, "abc");
        let many: String = (0..MAX_RECORDED + 5).map(|i| format!("{} 10.3.{}.{}\n", NOW - 1, i / 250, i % 250)).collect();
        assert_eq!(parse_record(&many, NOW).len(), MAX_RECORDED);
    }

    #[test]
    fn sources() {
        assert_eq!(source_of("192.0.2.7"), "192.0.2.7");
        assert_eq!(source_of("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(source_of("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(source_of("2001:db8:1:2::99"), "2001:db8:1:2::/64");
        assert_eq!(source_of("not an\naddress"), "notanaddress");
    }

    #[test]
    fn attempts_keep_the_record() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..PER_SOURCE_LIMIT as i64 {
            assert_eq!(attempt(dir.path(), "10.0.0.1", "admin", NOW + i, || false), Attempt::Refused);
        }
        let throttled = attempt(dir.path(), "10.0.0.1", "admin", NOW + 10, || true);
        assert!(matches!(throttled, Attempt::Throttled(l) if l.wait_secs == WINDOW_SECS - 10 && l.failures == 5 && !l.under_pressure), "{throttled:?}");
        assert_eq!(lockout_of(dir.path(), "10.0.0.1", NOW + 10).map(|l| (l.wait_secs, l.failures)), Some((WINDOW_SECS - 10, 5)), "as the form's GET reads it");
        assert_eq!(lockout_of(dir.path(), "10.0.0.2", NOW + 10), None);
        assert_eq!(attempt(dir.path(), "10.0.0.2", "admin", NOW + 10, || true), Attempt::Accepted, "others may still log in");
        assert_eq!(attempt(dir.path(), "10.0.0.1", "admin", NOW + WINDOW_SECS + 10, || true), Attempt::Accepted, "the wait ends");
        assert!(!dir.path().join(FAILURE_RECORD).exists(), "an empty record leaves no file");
    }
}
