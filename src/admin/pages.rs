//! The configuration page (`mode=show`: merged configuration, cached master info, snippet
//! files) and the "add new device" page (`mode=info`: Command File URL and myPBX setup links).

use super::status::since;
use super::templates::{InfoPage, Page, SetupLinks, ShowPage, TextBlock};
use super::Site;
use crate::config::Config;
use std::path::Path;

/// Largest file the configuration page shows.
const MAX_SHOWN_BYTES: u64 = 256 * 1024;

pub fn show<'a>(root: &Path, config: &Config, page: &'a Page, now: i64) -> ShowPage<'a> {
    let mut tree = config.tree.clone();
    if let Some(master) = tree.child_mut("master") {
        if master.attr("password").is_some_and(|p| !p.is_empty()) {
            master.put_attr("password", "********");
        }
        if let Some(info) = master.attr("info").map(hide_url_password) {
            master.put_attr("info", &info);
        }
    }
    let config_block = TextBlock {
        title: "Configuration".into(),
        text: tree.to_document(),
        note: format!("config.xml merged with {} (passwords hidden)", config.user_file),
    };
    let master_block = match config.master.info.as_str() {
        "" | "none" => TextBlock { title: "Master device".into(), text: String::new(), note: "No master device is configured (master/@info).".into() },
        _ => match read_limited(&root.join(&config.master.cache)) {
            Some((text, modified)) => TextBlock {
                title: "Master device (cached info)".into(),
                text,
                note: format!("{} from {}, cached {} ago", config.master.cache, hide_url_password(&config.master.info), since(modified, now)),
            },
            None => TextBlock {
                title: "Master device (cached info)".into(),
                text: String::new(),
                note: format!("{} cannot be read: no device has polled since the master was configured, or the master is unreachable", config.master.cache),
            },
        },
    };
    let findings = crate::check::check(root).iter().map(|f| (f.severity.to_string(), f.to_string())).collect();
    ShowPage { page, config: config_block, master: master_block, snippets: snippets(root, config, now), findings }
}

/// `http://user:secret@host/…` → `http://user:****@host/…`.
fn hide_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:****@{host}{}", &rest[authority_end..])
        }
        None => url.to_string(),
    }
}

fn read_limited(path: &Path) -> Option<(String, i64)> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta.modified().map(crate::clock::epoch_of).unwrap_or(0);
    if meta.len() > MAX_SHOWN_BYTES {
        return Some((format!("({} bytes, too large to show)", meta.len()), modified));
    }
    let data = std::fs::read(path).ok()?;
    Some((String::from_utf8_lossy(&data).into_owned(), modified))
}

/// The snippet files (`<times/@dir>/*-*-*.txt`), sorted by name.
fn snippets(root: &Path, config: &Config, now: i64) -> Vec<TextBlock> {
    let dir = root.join(&config.times.dir);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.') && n.ends_with(".txt") && n.matches('-').count() >= 2)
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let (text, modified) = read_limited(&dir.join(&name))?;
            Some(TextBlock { title: format!("{}/{name}", config.times.dir), text, note: format!("changed {} ago", since(modified, now)) })
        })
        .collect()
}

/// PHP's `urlencode`: spaces as `+`, everything but `A-Za-z0-9-_.` percent-encoded.
pub fn form_urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    for byte in text.bytes() {
        match byte {
            b' ' => out.push('+'),
            b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') => out.push(b as char),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The setup links for a device name in an environment.
pub fn setup_links(base_url: &str, environment: &str, device_name: &str) -> SetupLinks {
    let command_url = format!("{base_url}/update.php?env={}", form_urlencode(environment));
    let commands = format!(
        "config add UP1 /url {command_url} /poll 1\r\nconfig add CMD0 /name {}\r\nconfig write\r\nconfig activate\r\n",
        form_urlencode(device_name)
    );
    let encoded = form_urlencode(&commands);
    SetupLinks {
        device_name: device_name.to_string(),
        ios: format!("com.innovaphone.commands://{encoded}"),
        android: format!("https://com.innovaphone.commands/{encoded}"),
        command_url,
        commands,
    }
}

pub fn info<'a>(site: &Site, config: &Config, page: &'a Page) -> InfoPage<'a> {
    let mut ids: Vec<String> = config.environments.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    let asked = site.arg("env").unwrap_or("");
    let chosen = if ids.iter().any(|e| e == asked) { asked.to_string() } else { ids.first().cloned().unwrap_or_default() };
    let device_name: String = site.arg("devname").unwrap_or("").trim().chars().filter(|c| !c.is_control()).take(32).collect();
    let error = (!asked.is_empty() && asked != chosen).then(|| format!("There is no environment '{asked}'."));
    let links = (!device_name.is_empty() && error.is_none()).then(|| setup_links(&site.base_url(), &chosen, &device_name));
    let command_url = error.is_none().then(|| setup_links(&site.base_url(), &chosen, "").command_url);
    InfoPage {
        page,
        environments: ids.into_iter().map(|id| {
            let selected = id == chosen;
            (id, selected)
        }).collect(),
        device_name,
        command_url,
        links,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        let l = setup_links("https://update.example.com/mtls/update", "berlin", "Nico Mobile");
        assert_eq!(l.command_url, "https://update.example.com/mtls/update/update.php?env=berlin");
        assert_eq!(l.commands, "config add UP1 /url https://update.example.com/mtls/update/update.php?env=berlin /poll 1\r\nconfig add CMD0 /name Nico+Mobile\r\nconfig write\r\nconfig activate\r\n");
        assert!(l.ios.starts_with("com.innovaphone.commands://config+add+UP1+%2Furl+https%3A%2F%2Fupdate.example.com"));
        assert!(l.ios.contains("%2Fname+Nico%2BMobile%0D%0Aconfig+write"));
        assert!(l.android.starts_with("https://com.innovaphone.commands/config+add+UP1"));
    }

    #[test]
    fn url_passwords_hidden() {
        assert_eq!(hide_url_password("http://admin:secret@10.0.0.1/CMD0/box_info.xml"), "http://admin:****@10.0.0.1/CMD0/box_info.xml");
        assert_eq!(hide_url_password("http://10.0.0.1/x@y"), "http://10.0.0.1/x@y");
    }
}
