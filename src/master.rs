//! The master device's box info (SPEC §4): read from the cache file while it is fresh,
//! otherwise fetched over HTTP(S) with a time-out, with the stale cache as the fallback.

use crate::config::Master;
use crate::xml::Element;
use std::path::Path;
use std::time::Duration;

/// Where the builds came from, for the comments a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Cache,
    Online,
    StaleCache(String),
}

/// The master's firmware and boot code builds.
pub fn builds(root: &Path, master: &Master, now: i64) -> Result<((String, String), Source), String> {
    let cache_path = root.join(&master.cache);
    let cache_age = std::fs::metadata(&cache_path)
        .ok()
        .and_then(|m| m.modified().ok())
        .map(|t| now - crate::clock::epoch_of(t));
    if cache_age.is_some_and(|age| age < master.expire) {
        if let Ok(builds) = read_cache(&cache_path) {
            return Ok((builds, Source::Cache));
        }
    }
    match fetch(&master.info, master.timeout_secs) {
        Ok((text, builds)) => {
            if let Some(parent) = cache_path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            if let Err(e) = crate::state::write_atomically(&cache_path, text.as_bytes()) {
                eprintln!("update-server: cannot write master cache {}: {e}", cache_path.display());
            }
            Ok((builds, Source::Online))
        }
        Err(fetch_error) => match read_cache(&cache_path) {
            Ok(builds) => Ok((builds, Source::StaleCache(fetch_error))),
            Err(cache_error) => Err(format!("{fetch_error}; cache: {cache_error}")),
        },
    }
}

/// The builds as [`builds`] finds them without asking the master (`preview`): the fresh cache
/// as a poll would use it, a stale one saying that a poll would ask the master first.
pub fn builds_from_cache(root: &Path, master: &Master, now: i64) -> Result<((String, String), Source), String> {
    let cache_path = root.join(&master.cache);
    let fresh = std::fs::metadata(&cache_path)
        .ok()
        .and_then(|m| m.modified().ok())
        .is_some_and(|t| now - crate::clock::epoch_of(t) < master.expire);
    match read_cache(&cache_path) {
        Ok(builds) if fresh => Ok((builds, Source::Cache)),
        Ok(builds) => Ok((builds, Source::StaleCache("preview: the cache is stale, a poll would ask the master first".into()))),
        Err(e) => Err(format!("preview: the master is not asked and there is no cache ({e})")),
    }
}

/// The builds in the cache file, whatever its age, for what only reads (the status page's
/// planned hops): never fetched, None without a master (`info` empty or `none`) or a readable
/// cache.
pub fn cached_builds(root: &Path, master: &Master) -> Option<(String, String)> {
    if master.info.is_empty() || master.info == "none" {
        return None;
    }
    read_cache(&root.join(&master.cache)).ok()
}

fn read_cache(path: &Path) -> Result<(String, String), String> {
    // read no more than a box info may be (parse_box_info refuses the rest)
    let limit = crate::xml::Limits::DEVICE.bytes as u64 + 1;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| std::io::Read::read_to_string(&mut std::io::Read::take(file, limit), &mut text))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    parse_box_info(&text)
}

/// The builds in a `box_info.xml` document (parsed within [`crate::xml::Limits::DEVICE`]: the
/// master is a device, and its address may not be one the operator controls).
pub fn parse_box_info(text: &str) -> Result<(String, String), String> {
    let root = Element::parse(text).map_err(|e| format!("malformed box info: {e}"))?;
    let version = std::iter::once(&root)
        .chain(root.children.iter())
        .find(|e| e.name == "sys")
        .and_then(|sys| sys.attr("version"))
        .ok_or("box info has no sys/@version")?;
    crate::script::firmware::parse_master_version(version)
        .ok_or_else(|| format!("cannot read builds from version '{version}'"))
}

fn fetch(url: &str, timeout_secs: u64) -> Result<(String, (String, String)), String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(timeout_secs))
        .redirects(3)
        .build();
    let response = agent.get(url).call().map_err(|e| format!("cannot fetch {}: {e}", redact(url)))?;
    // a box info document is a few hundred bytes; refuse to buffer anything large (one byte
    // over the limit is read, so that parse_box_info refuses it rather than a cut-off text)
    let mut text = String::new();
    let limit = crate::xml::Limits::DEVICE.bytes as u64 + 1;
    std::io::Read::read_to_string(&mut std::io::Read::take(response.into_reader(), limit), &mut text)
        .map_err(|e| format!("cannot read {}: {e}", redact(url)))?;
    let builds = parse_box_info(&text)?;
    Ok((text, builds))
}

/// The URL without credentials, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end && !url[scheme_end + 3..at].contains('/') => {
            format!("{}://…@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_not_shown() {
        assert_eq!(redact("http://admin:secret@10.0.0.1/CMD0/box_info.xml"), "http://…@10.0.0.1/CMD0/box_info.xml");
        assert_eq!(redact("http://10.0.0.1/x"), "http://10.0.0.1/x");
    }

    #[test]
    fn box_info_builds() {
        let text = "<?xml version='1.0'?><info><sys version='IP811[13r2 sr41 [134600]], Bootcode[134560], Hardware[302]'/></info>";
        assert_eq!(parse_box_info(text).unwrap(), ("134600".into(), "134560".into()));
        assert!(parse_box_info("<info/>").is_err());
        let deep = format!("<info>{}<sys version='IP811[134600], Bootcode[134560]'/>{}</info>", "<a>".repeat(5000), "</a>".repeat(5000));
        assert!(parse_box_info(&deep).unwrap_err().contains("levels deep"));
    }

    #[test]
    fn dead_master_falls_back_to_stale_cache_within_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        std::fs::write(
            dir.path().join("cache/master-info.xml"),
            "<info><sys version='IP811[134600], Bootcode[134560], Hardware[302]'/></info>",
        )
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let master = Master {
            info: format!("http://127.0.0.1:{port}/CMD0/box_info.xml"),
            expire: 0,
            cache: "cache/master-info.xml".into(),
            user: String::new(),
            password: String::new(),
            firmware: "master".into(),
            bootcode: "master".into(),
            applies: vec![],
            timeout_secs: 1,
        };
        let (builds, source) = builds(dir.path(), &master, crate::clock::now()).unwrap();
        assert_eq!(builds.0, "134600");
        assert!(matches!(source, Source::StaleCache(_)));
        // what only reads takes the cache whatever its age, and never asks the master
        assert_eq!(cached_builds(dir.path(), &master), Some(("134600".into(), "134560".into())));
        assert_eq!(cached_builds(dir.path(), &Master { info: "none".into(), ..master.clone() }), None);
        std::fs::remove_file(dir.path().join("cache/master-info.xml")).unwrap();
        assert!(super::builds(dir.path(), &master, crate::clock::now()).is_err());
        assert_eq!(cached_builds(dir.path(), &master), None);
    }
}
