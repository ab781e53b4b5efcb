//! The configuration: shipped defaults (`config.xml`) merged with the user's file, checked
//! and turned into a typed view (SPEC §2).

pub mod cache;
pub mod merge;

use crate::xml::Element;
use std::path::{Path, PathBuf};

/// Where the user's file may be, in the order the product looks (SPEC §2 and its deviation:
/// `user-config.xml` in the root, the documented place, is accepted too).
pub const USER_FILE_CANDIDATES: [&str; 3] =
    ["config/user-config-dvl.xml", "config/user-config.xml", "user-config.xml"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("Error: user-config.xml is missing (looked for {}). Please check the documentation: http://wiki.innovaphone.com/index.php?title=Howto:PHP_based_Update_Server_V2#Installation", USER_FILE_CANDIDATES.join(", "))]
    UserFileMissing,
    #[error("cannot read {file}: {reason}")]
    Unreadable { file: String, reason: String },
    #[error("{file}:{line}:{column}: malformed XML: {message}")]
    Malformed { file: String, line: u32, column: u32, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub id: String,
    pub seq: i64,
    /// Whose snippet files the phase uses: itself, or for `_first_X` the phase `X`.
    pub files_of: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub id: String,
    pub implies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub id: String,
    /// Models, lower-cased (classes match the type case-insensitively).
    pub models: Vec<String>,
}

/// One `applies` condition: a class, `*`, or with `env` an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applies {
    pub value: String,
    pub environment: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Times {
    pub dir: String,
    pub allow: Option<String>,
    pub initial: Option<String>,
    pub check: bool,
    pub polling: i64,
    pub interval: i64,
    pub grace: i64,
    pub forcehttps: bool,
    pub httpsport: Option<String>,
    pub forcetrust: bool,
    pub httpsurlmod: String,
    pub forcestaging: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    pub info: String,
    pub expire: i64,
    pub cache: String,
    pub user: String,
    pub password: String,
    pub firmware: String,
    pub bootcode: String,
    pub applies: Vec<Applies>,
    /// Seconds a master fetch may take before the cache is used instead.
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    pub dir: String,
    pub nbackups: i64,
    pub scfg: String,
    /// Whole days an over-limit backup is kept after it was stored (the old server read the
    /// attribute as an integer: `0.5` is 0).
    pub minage_days: i64,
    pub maxsize: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub dir: String,
    pub missing: i64,
    pub refresh: i64,
    pub expire: i64,
    pub logkeep: i64,
    pub usehttpsdevlinks: bool,
    /// `metricstoken`: the bearer token that opens `mode=metrics` without a session; empty:
    /// only a session does.
    pub metrics_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: String,
    pub cmd: Option<String>,
    pub applies: Vec<Applies>,
}

/// The merged, checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The user file that was used, relative to the root (named in every answer).
    pub user_file: String,
    /// The merged document, for the parts read rarely (admin page, certificates).
    pub tree: Element,
    pub phases: Vec<Phase>,
    pub environments: Vec<Environment>,
    pub classes: Vec<Class>,
    pub nofirmdev: Vec<String>,
    pub nobootdev: Vec<String>,
    /// `filenames/model`: (lower-cased model, prot file, boot file).
    pub filenames: Vec<(String, Option<String>, Option<String>)>,
    /// `stdargs/stdarg`: key and its fixed value (None: the argument is dropped).
    pub stdargs: Vec<(String, Option<String>)>,
    pub times: Times,
    pub master: Master,
    pub fwstorage_url: String,
    pub backup: Option<Backup>,
    pub status: Option<Status>,
    /// `customcerts` when active (non-empty `dir`).
    pub customcerts: Option<Element>,
    pub queries_scfg: String,
    pub queries: Vec<Query>,
    pub migrate_url: String,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<crate::net::IpRange>,
    /// The dynamic snippet program (`dynamic/@exec`, relative to the root) and its time limit.
    pub dynamic: Option<Dynamic>,
    /// `upgrades/path`: firmware a device must pass through on its way to the target (issue 9).
    pub upgrades: Vec<crate::upgrades::UpgradePath>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dynamic {
    pub exec: String,
    pub timeout_secs: u64,
}

/// Reads `config.xml` and the user's file under `root` and builds the configuration.
pub fn load(root: &Path) -> Result<Config, ConfigError> {
    let user_file = find_user_file(root).ok_or(ConfigError::UserFileMissing)?;
    let defaults = read_document(root, "config.xml")?;
    let user = read_document(root, &user_file)?;
    build(defaults, &user, &user_file)
}

/// The first user file that exists under `root`.
pub fn find_user_file(root: &Path) -> Option<String> {
    USER_FILE_CANDIDATES.iter().find(|name| root.join(name).is_file()).map(|s| s.to_string())
}

fn read_document(root: &Path, name: &str) -> Result<Element, ConfigError> {
    let path: PathBuf = root.join(name);
    // read no more than a configuration may be (parse_trusted refuses the rest with a message)
    let limit = crate::xml::Limits::CONFIGURATION.bytes as u64 + 1;
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|file| {
            // sized from the metadata: a CGI request reads both files, and growing the buffer
            // from nothing took a read per doubling (about ten for config.xml)
            let size = file.metadata().map_or(0, |m| m.len()).min(limit);
            text.reserve(size as usize);
            std::io::Read::read_to_string(&mut std::io::Read::take(file, limit), &mut text)
        })
        .map_err(|e| ConfigError::Unreadable { file: name.to_string(), reason: e.to_string() })?;
    Element::parse_trusted(&text).map_err(|e| ConfigError::Malformed {
        file: name.to_string(),
        line: e.line,
        column: e.column,
        message: e.message,
    })
}

/// Pure part of [`load`]: merge, order, check and type the configuration.
pub fn build(mut tree: Element, user: &Element, user_file: &str) -> Result<Config, ConfigError> {
    merge::merge(&mut tree, user).map_err(ConfigError::Invalid)?;
    merge::order_by_seq(&mut tree);
    let section = |name: &str| tree.child(name).cloned().unwrap_or_else(|| Element::new(name));
    let attr = |e: &Element, name: &str| e.attr(name).unwrap_or("").to_string();
    let nonblank = |e: &Element, name: &str| e.attr(name).map(str::trim).filter(|v| !v.is_empty()).map(String::from);
    let int_or = |e: &Element, name: &str, default: i64| {
        nonblank(e, name).map(|v| merge::php_intval(&v)).unwrap_or(default)
    };

    // phases
    let mut phases: Vec<Phase> = section("phases")
        .children_named("phase")
        .map(|p| {
            let id = attr(p, "id");
            Phase { files_of: id.clone(), id, seq: merge::php_intval(p.attr("seq").unwrap_or("")) }
        })
        .collect();
    check_ids("phase", phases.iter().map(|p| p.id.as_str()), true)?;
    if phases.is_empty() {
        return Err(ConfigError::Invalid("at least one phase must be defined".into()));
    }
    let last = phases.len() - 1;
    let old_seq = phases[last].seq;
    // saturating: a seq of i64::MAX must not overflow (found by fuzz/config_merge)
    phases[last].seq = phases[last].seq.saturating_add(1);
    let user_times = user.child("times");
    let user_allow = user_times.and_then(|t| t.attr("allow")).is_some_and(|a| !a.trim().is_empty());
    let user_forcestaging = user_times.and_then(|t| t.attr("forcestaging")) == Some("true");
    if user_allow && user_forcestaging {
        let files_of = phases[last].id.clone();
        phases.insert(last, Phase { id: format!("_first_{files_of}"), seq: old_seq, files_of });
    }

    // environments
    let environments: Vec<Environment> = section("environments")
        .children_named("environment")
        .map(|e| Environment {
            id: attr(e, "id"),
            implies: e.children_named("implies").map(|i| i.trimmed_text().to_string()).collect(),
        })
        .collect();
    check_ids("environment", environments.iter().map(|e| e.id.as_str()), false)?;
    if environments.is_empty() {
        return Err(ConfigError::Invalid("at least one environment must be defined".into()));
    }
    for env in &environments {
        for implied in &env.implies {
            if !environments.iter().any(|e| &e.id == implied) {
                return Err(ConfigError::Invalid(format!(
                    "environment '{}' implies undefined environment '{implied}'",
                    env.id
                )));
            }
        }
    }

    // classes
    let classes: Vec<Class> = section("classes")
        .children_named("class")
        .map(|c| Class {
            id: attr(c, "id"),
            models: c.children_named("model").map(|m| m.trimmed_text().to_lowercase()).collect(),
        })
        .collect();
    check_ids("class", classes.iter().map(|c| c.id.as_str()), false)?;

    let models_of = |name: &str| -> Vec<String> {
        section(name).children_named("model").map(|m| m.trimmed_text().to_lowercase()).collect()
    };
    let filenames = section("filenames")
        .children_named("model")
        .map(|m| (attr(m, "id").to_lowercase(), nonblank(m, "prot"), nonblank(m, "boot")))
        .collect();
    let stdargs = section("stdargs")
        .children_named("stdarg")
        .map(|s| (attr(s, "id"), s.attr("value").map(String::from).filter(|v| !v.is_empty())))
        .collect();

    let t = section("times");
    let times = Times {
        dir: nonblank(&t, "dir").unwrap_or_else(|| "scripts".into()),
        allow: nonblank(&t, "allow"),
        initial: nonblank(&t, "initial"),
        check: attr(&t, "check") == "true",
        polling: int_or(&t, "polling", 0),
        interval: int_or(&t, "interval", 15),
        grace: int_or(&t, "grace", 900),
        forcehttps: attr(&t, "forcehttps") == "true",
        httpsport: nonblank(&t, "httpsport"),
        forcetrust: attr(&t, "forcetrust") == "true",
        httpsurlmod: attr(&t, "httpsurlmod"),
        forcestaging: attr(&t, "forcestaging") == "true",
    };

    let m = section("master");
    if m.attr("info").is_none() {
        return Err(ConfigError::Invalid("master/@info must be defined".into()));
    }
    let master = Master {
        info: attr(&m, "info").trim().to_string(),
        expire: int_or(&m, "expire", 3600),
        cache: nonblank(&m, "cache").unwrap_or_else(|| "cache/master-info.xml".into()),
        user: attr(&m, "user"),
        password: attr(&m, "password"),
        firmware: nonblank(&m, "firmware").unwrap_or_else(|| "master".into()),
        bootcode: nonblank(&m, "bootcode").unwrap_or_else(|| "master".into()),
        applies: applies_of(&m),
        timeout_secs: int_or(&m, "timeout", 5).clamp(1, 60) as u64,
    };

    let fw = section("fwstorage");
    let fwstorage_url = fw
        .attr("url")
        .map(String::from)
        .ok_or_else(|| ConfigError::Invalid("fwstorage/@url must be defined".into()))?;

    let b = section("backup");
    let backup = match (nonblank(&b, "dir"), nonblank(&b, "nbackups"), nonblank(&b, "scfg")) {
        (Some(dir), Some(n), Some(scfg)) => Some(Backup {
            dir,
            nbackups: merge::php_intval(&n),
            scfg,
            minage_days: nonblank(&b, "minage").map_or(0, |v| merge::php_intval(&v)),
            maxsize: nonblank(&b, "maxsize").and_then(|v| v.parse().ok()).unwrap_or(8 * 1024 * 1024),
        }),
        _ => None,
    };

    let s = section("status");
    let status = nonblank(&s, "dir").map(|dir| Status {
        dir,
        missing: int_or(&s, "missing", 604800),
        refresh: int_or(&s, "refresh", 0),
        expire: int_or(&s, "expire", 0),
        logkeep: int_or(&s, "logkeep", 1800),
        usehttpsdevlinks: attr(&s, "usehttpsdevlinks") == "true",
        metrics_token: attr(&s, "metricstoken").trim().to_string(),
    });

    let customcerts = tree.child("customcerts").filter(|c| nonblank(c, "dir").is_some()).cloned();
    // forcetrust checks the client certificate's issuer against customcerts/@CAname, which is
    // only in force with certificate handling on: refuse the combination up front rather than
    // deliver nothing to every device later
    if times.forcetrust && customcerts.as_ref().is_none_or(|c| crate::certs::ca_names(c).is_empty()) {
        return Err(ConfigError::Invalid(
            "customcerts/@CAname must be defined: times/@forcetrust needs certificate handling (customcerts/@dir)".into(),
        ));
    }

    let q = section("queries");
    let queries = q
        .children_named("query")
        .map(|query| Query {
            id: attr(query, "id"),
            cmd: query.child("cmd").map(|c| c.trimmed_text().to_string()).filter(|c| !c.is_empty()),
            applies: applies_of(query),
        })
        .collect();

    let migrate_url = nonblank(&section("migrate"), "url")
        .unwrap_or_else(|| "https://update.yourcompany.com:444/update/update.php".into());
    let d = section("dynamic");
    let dynamic = nonblank(&d, "exec").map(|exec| Dynamic { exec, timeout_secs: int_or(&d, "timeout", 5).clamp(1, 60) as u64 });
    let trusted_proxies = crate::net::parse_ranges(&attr(&section("proxies"), "trusted"))
        .map_err(|e| ConfigError::Invalid(format!("proxies/@trusted: {e}")))?;
    let upgrades = crate::upgrades::parse(&tree).map_err(ConfigError::Invalid)?;

    Ok(Config {
        user_file: user_file.to_string(),
        phases,
        environments,
        classes,
        nofirmdev: models_of("nofirmdev"),
        nobootdev: models_of("nobootdev"),
        filenames,
        stdargs,
        times,
        master,
        fwstorage_url,
        backup,
        status,
        customcerts,
        queries_scfg: attr(&q, "scfg"),
        queries,
        migrate_url,
        trusted_proxies,
        dynamic,
        upgrades,
        tree,
    })
}

fn applies_of(e: &Element) -> Vec<Applies> {
    e.children_named("applies")
        .map(|a| Applies { value: a.trimmed_text().to_string(), environment: a.attr("env").is_some() })
        .collect()
}

/// Phase, environment and class ids name snippet files (`<phase>-<class>-<env>.txt`), so they
/// must be plain, unique and must not collide with the `all` wildcard.
fn check_ids<'a>(kind: &str, ids: impl Iterator<Item = &'a str>, is_phase: bool) -> Result<(), ConfigError> {
    let mut seen: Vec<&str> = Vec::new();
    for id in ids {
        if id == "all" || (is_phase && id.starts_with('_')) {
            return Err(ConfigError::Invalid(format!("{kind} name '{id}' not allowed")));
        }
        if id.is_empty() || id.contains('-') || !crate::device::is_plain_token(id) {
            return Err(ConfigError::Invalid(format!(
                "{kind} name '{id}' not allowed (use letters, digits, '_' and '.', no '-')"
            )));
        }
        if seen.contains(&id) {
            return Err(ConfigError::Invalid(format!("{kind} name '{id}' defined twice")));
        }
        seen.push(id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Element {
        Element::parse(include_str!("../../config.xml")).unwrap()
    }

    fn with_user(user: &str) -> Result<Config, ConfigError> {
        build(defaults(), &Element::parse(user).unwrap(), "config/user-config.xml")
    }

    #[test]
    fn shipped_defaults_build() {
        let c = with_user("<config><master info=''/></config>").unwrap();
        assert_eq!(c.phases.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["update"]);
        assert_eq!(c.phases[0].seq, 201);
        assert_eq!(c.classes.len(), 20);
        assert_eq!(c.times.grace, 90);
        assert!(c.times.check);
        assert_eq!(c.times.httpsurlmod, "!mtls/!!i");
        assert!(c.status.is_none());
        assert!(c.backup.is_none());
        assert_eq!(c.stdargs[0], ("sn".to_string(), Some("#m".to_string())));
    }

    #[test]
    fn fake_first_phase_needs_allow_and_forcestaging_in_user_file() {
        let c = with_user("<config><times allow='22:00-05:00' forcestaging='true'/></config>").unwrap();
        let ids: Vec<_> = c.phases.iter().map(|p| (p.id.as_str(), p.seq, p.files_of.as_str())).collect();
        assert_eq!(ids, [("_first_update", 200, "update"), ("update", 201, "update")]);
        let c = with_user("<config><times allow='22:00-05:00'/></config>").unwrap();
        assert_eq!(c.phases.len(), 1);
    }

    #[test]
    fn the_largest_seq_does_not_overflow() {
        let c = with_user("<config><phases><phase id='update' seq='9223372036854775807'/></phases></config>").unwrap();
        assert_eq!(c.phases.last().map(|p| p.seq), Some(i64::MAX));
    }

    #[test]
    fn bad_names_are_refused() {
        let e = with_user("<config><phases><phase id='all' seq='1'/></phases></config>").unwrap_err();
        assert_eq!(e.to_string(), "config: phase name 'all' not allowed");
        assert!(with_user("<config><environments><environment id='a-b'/></environments></config>").is_err());
        assert!(with_user("<config><environments><environment id='x'><implies>nope</implies></environment></environments></config>").is_err());
    }
}
