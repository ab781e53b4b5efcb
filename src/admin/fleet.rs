//! The fleet as data for other programs: the inventory export as a download
//! (`mode=export&format=csv|json`, with an admin session like every page), and the metrics in
//! the Prometheus text format (`mode=metrics`, with a session or the bearer token
//! `status/@metricstoken`).

use super::{secure, Site};
use crate::config::Config;
use crate::export::Format;
use crate::http::{Request, Response};
use crate::metrics::{Counters, Limits};
use std::path::Path;

/// The content type of the Prometheus text exposition format.
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `mode=metrics`: the fleet summed up and this process's counters, for an admin session or a
/// client presenting the metrics token over a channel credentials may use. A missing or wrong
/// token is told the same as one sent where no token is configured, so the answer does not
/// say whether there is one.
pub fn metrics(site: &Site, request: &Request, root: &Path, config: &Config, counters: &Counters, now: i64) -> Response {
    let presented = request.var("HTTP_AUTHORIZATION").and_then(bearer_token);
    let allowed = match presented {
        Some(_) if !site.channel_ok() => {
            return secure(Response::text(403, "the metrics token is accepted over HTTPS only\n"));
        }
        Some(token) => token_matches(token, config.status.as_ref().map_or("", |s| s.metrics_token.as_str())),
        None => super::admin_allowed(site, request, root, config, now),
    };
    if !allowed {
        let mut response = secure(Response::text(401, "an admin session or the metrics bearer token is needed\n"));
        response.headers.push(("WWW-Authenticate".into(), "Bearer realm=\"update-server metrics\"".into()));
        return response;
    }
    let limits = Limits::of(config, now);
    let fleet = crate::metrics::fleet(root, config, &limits);
    let mut response = secure(Response::text(200, crate::metrics::exposition(&fleet, &limits, &counters.snapshot())));
    for (name, value) in &mut response.headers {
        if name.eq_ignore_ascii_case("Content-Type") {
            *value = EXPOSITION.into();
        }
    }
    response
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether `presented` is the configured token; never when none is configured. The digests
/// are compared, in constant time, so that neither the content nor the length of the token
/// shows in how long a wrong guess takes.
fn token_matches(presented: &str, configured: &str) -> bool {
    use sha2::{Digest, Sha256};
    if configured.is_empty() {
        return false;
    }
    let digest = |text: &str| Sha256::digest(text.as_bytes());
    super::session::constant_time_eq(&digest(presented), &digest(configured))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic YWRtaW46eA=="), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn tokens_match_only_when_configured_and_equal() {
        assert!(token_matches("0123456789abcdef", "0123456789abcdef"));
        assert!(!token_matches("0123456789abcdeF", "0123456789abcdef"));
        assert!(!token_matches("0123456789abcde", "0123456789abcdef"));
        assert!(!token_matches("", ""));
        assert!(!token_matches("anything", ""));
    }
}
