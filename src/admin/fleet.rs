//! The fleet as data for other programs: the inventory export as a download
//! (`mode=export&format=csv|json`, with an admin session like every page).

use super::secure;
use crate::config::Config;
use crate::export::Format;
use crate::http::Response;
use std::path::Path;

/// `mode=export`: every device's record as a file to save
/// (`update-server-devices-2026-12-03.csv`).
pub fn export(root: &Path, config: &Config, format: Option<&str>, now: i64) -> Response {
    let Some(format) = format.and_then(Format::parse) else {
        return secure(Response::text(400, "format=csv or format=json\n"));
    };
    if config.status.is_none() {
        return secure(Response::text(404, format!("device state tracking is off: add <status dir=\"status\"/> to {}\n", config.user_file)));
    }
    let mut body = Vec::new();
    if let Err(error) = crate::export::write(root, config, now, format, &mut body) {
        // writing to memory fails only when memory does
        return secure(Response::text(500, format!("cannot build the export: {error}\n")));
    }
    let date = crate::clock::iso8601(now);
    let name = format!("update-server-devices-{}.{}", &date[..10], format.extension());
    secure(Response {
        status: 200,
        headers: vec![
            ("Content-Type".into(), format.content_type().into()),
            ("Content-Disposition".into(), format!("attachment; filename=\"{name}\"")),
        ],
        body,
    })
}
