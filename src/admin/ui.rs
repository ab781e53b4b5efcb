//! The `mode=ui` commands of the status page (`delstatus`, `touchstatus`, `updatestatus`,
//! `delfile`, `deliverfile`), with the old JSON answers (`true`/`false`, the row's HTML as a
//! JSON string). The caller has checked the session; the changing commands check the CSRF
//! token and want POST.

use compact_str::ToCompactString;
use super::session::Session;
use super::{json, json_string, secure, status, templates, Site};
use crate::config::Config;
use crate::http::{Request, Response};
use crate::state::LockedState;
use askama::Template;
use std::path::Path;

pub fn command(site: &Site, request: &Request, root: &Path, config: &Config, session: &Session, now: i64) -> Response {
    let cmd = site.arg("cmd").unwrap_or("");
    let changing = matches!(cmd, "delstatus" | "touchstatus" | "delfile");
    if changing {
        if site.method != "POST" {
            let mut response = json(405, json_string("use POST"));
            response.headers.push(("Allow".into(), "POST".into()));
            return response;
        }
        if !super::csrf_ok(site, request, session, None) {
            return json(403, json_string("missing or wrong CSRF token"));
        }
    }
    let sn = site.arg("sn").filter(|sn| crate::device::is_serial(sn));
    match cmd {
        "delstatus" | "touchstatus" | "updatestatus" | "delfile" if sn.is_none() => json(400, json_string("need a valid 'sn'")),
        "delstatus" => json(200, delete_state(root, config, sn.unwrap_or_default()).to_string()),
        "touchstatus" => json(200, touch_state(root, config, sn.unwrap_or_default(), now).to_string()),
        "updatestatus" => {
            let detail = site.arg("detail").is_some_and(|d| d == "1");
            match status::single_row(root, config, sn.unwrap_or_default(), now, detail) {
                Some(row) => {
                    let page = super::page("Status", Some(config), Some(session));
                    let cols = status::columns(config);
                    match (templates::RowFragment { page: &page, cols: &cols, row: &row }).render() {
                        Ok(html) => json(200, json_string(&html)),
                        Err(e) => json(500, json_string(&e.to_string())),
                    }
                }
                None => json(404, "false".into()),
            }
        }
        "delfile" => {
            let file = site.arg("file").or_else(|| site.arg("fn")).unwrap_or("");
            match super::files::deletable(root, config, sn.unwrap_or_default(), file) {
                Some(path) => json(200, std::fs::remove_file(path).is_ok().to_string()),
                None => json(404, "false".into()),
            }
        }
        "deliverfile" => deliver(root, config, site.arg("fn").unwrap_or("")),
        _ => json(400, json_string("unknown cmd")),
    }
}

fn state_path(root: &Path, config: &Config, sn: &str) -> Option<std::path::PathBuf> {
    config.status.as_ref().map(|s| crate::state::device_file(root, &s.dir, sn))
}

/// Removes a device's state (a damaged one too, which is not read for this), under its lock so
/// that a poll in progress finishes first; a damaged copy kept aside goes with it.
fn delete_state(root: &Path, config: &Config, sn: &str) -> bool {
    let Some(path) = state_path(root, config, sn).filter(|p| p.is_file()) else { return false };
    match LockedState::open(&path) {
        Ok(locked) if locked.existed() => {
            let _ = std::fs::remove_file(crate::state::set_aside_path(&path));
            std::fs::remove_file(&path).is_ok()
        }
        _ => false,
    }
}

/// Marks a device as seen now (it is no longer "missing"). A damaged state is left as it is
/// (false): touching must not replace it by a fresh one; Delete removes it.
fn touch_state(root: &Path, config: &Config, sn: &str, now: i64) -> bool {
    let Some(path) = state_path(root, config, sn).filter(|p| p.is_file()) else { return false };
    match LockedState::open(&path) {
        Ok(mut locked) if locked.existed() && locked.damage().is_none() => {
            locked.state.set_attr("seen", now.to_compact_string());
            locked.save().is_ok()
        }
        _ => false,
    }
}

/// A file of the status, backup, certificate or snippet folders as a download.
fn deliver(root: &Path, config: &Config, relative: &str) -> Response {
    let Some(path) = super::files::deliverable(root, config, relative) else {
        return secure(Response::text(404, "not found\n"));
    };
    match std::fs::read(&path) {
        Ok(data) => {
            let name: String = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("download")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
                .collect();
            secure(Response {
                status: 200,
                headers: vec![
                    ("Content-Type".into(), "application/octet-stream".into()),
                    ("Content-Disposition".into(), format!("attachment; filename=\"{name}\"")),
                ],
                body: data,
            })
        }
        Err(_) => secure(Response::text(404, "not found\n")),
    }
}
