//! `update.php?mode=upload`: the signed certificate for a device's CSR, posted by the status
//! page as `multipart/form-data` (field `cert-<sn>`). Needs an admin session and its CSRF token;
//! stores nothing but `<customcerts/@dir>/<sn>-signedrequest.cer`, and only a certificate.

use super::{page, templates, Site};
use crate::config::{Config, ConfigError};
use crate::http::{Request, Response};
use askama::Template;
use std::path::Path;
use std::sync::Arc;

/// Largest certificate file accepted.
pub const MAX_CERTIFICATE_BYTES: usize = 64 * 1024;
/// Largest upload request: the certificate, the CSRF token and the multipart framing.
pub const MAX_UPLOAD_BYTES: usize = MAX_CERTIFICATE_BYTES + 64 * 1024;

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub data: Vec<u8>,
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        let v = v.trim().trim_matches('"');
        (k.trim().eq_ignore_ascii_case("boundary") && !v.is_empty() && v.len() <= 200).then(|| v.to_string())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() {
        return None;
    }
    hay[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Splits a multipart body (RFC 7578) into its parts; None when it is not well formed.
pub fn parts(body: &[u8], boundary: &str) -> Option<Vec<Part>> {
    let delimiter = format!("--{boundary}");
    let mut at = find(body, delimiter.as_bytes(), 0)? + delimiter.len();
    let mut parts = Vec::new();
    let separator = format!("\r\n--{boundary}");
    while parts.len() < 1000 {
        if body.get(at..at + 2) == Some(b"--") {
            return Some(parts);
        }
        if body.get(at..at + 2) != Some(b"\r\n") {
            return None;
        }
        at += 2;
        let head_end = find(body, b"\r\n\r\n", at)?;
        let head = String::from_utf8_lossy(&body[at..head_end]).into_owned();
        let data_start = head_end + 4;
        let data_end = find(body, separator.as_bytes(), data_start)?;
        let mut name = None;
        let mut filename = None;
        for line in head.split("\r\n") {
            let Some((key, value)) = line.split_once(':') else { continue };
            if !key.trim().eq_ignore_ascii_case("content-disposition") {
                continue;
            }
            for param in value.split(';').skip(1) {
                let Some((k, v)) = param.trim().split_once('=') else { continue };
                let v = v.trim().trim_matches('"').to_string();
                match k.trim() {
                    "name" => name = Some(v),
                    "filename" => filename = Some(v),
                    _ => {}
                }
            }
        }
        parts.push(Part { name: name?, filename, data: body[data_start..data_end].to_vec() });
        at = data_end + separator.len();
    }
    None
}

/// Where to go after the upload: `proceed` when it names the admin page, else the status page.
fn proceed_to(site: &Site, proceed: Option<&str>, sn: &str) -> String {
    let admin = site.admin_path();
    match proceed {
        Some(p) if p == "admin/admin.php" || p.starts_with("admin/admin.php?") => {
            let query = p.strip_prefix("admin/admin.php").unwrap_or("");
            let safe = query.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'#' | b'\\' | b'"' | b'<' | b'>'));
            if safe { format!("{admin}{query}") } else { format!("{admin}?mode=status") }
        }
        _ => format!("{admin}?mode=status&sn={sn}"),
    }
}

fn message(status: u16, config: Option<&Config>, session: Option<&super::Session>, heading: &str, text: String) -> Response {
    let page = page("Upload", config, session);
    let template = templates::MessagePage { page: &page, heading: heading.into(), text };
    match template.render() {
        Ok(body) => super::html(status, body),
        Err(_) => super::html(status, String::new()),
    }
}

pub fn handle(request: &Request, root: &Path, config: Result<Arc<Config>, ConfigError>) -> Response {
    let site = Site::of(request, 0);
    let config = match config {
        Ok(config) => config,
        Err(error) => return message(500, None, None, "The configuration cannot be used", error.to_string()),
    };
    let now = crate::clock::now();
    let Some(access) = super::access(&site, request, root, &config, now) else {
        return message(401, Some(&config), None, "Login required", "Log in on the admin page first.".into());
    };
    let session = &access.session;
    if site.method != "POST" {
        let mut response = message(405, Some(&config), Some(session), "Upload", "Upload the certificate with the form on the status page.".into());
        response.headers.push(("Allow".into(), "POST".into()));
        return response;
    }
    let parts = boundary(request.var("CONTENT_TYPE").unwrap_or("")).and_then(|b| parts(&request.body, &b));
    let Some(parts) = parts else {
        return message(400, Some(&config), Some(session), "Upload failed", "Expected a multipart/form-data form.".into());
    };
    let form_token = parts.iter().find(|p| p.name == "csrf").map(|p| String::from_utf8_lossy(&p.data).into_owned());
    if !super::csrf_ok(&site, request, session, form_token.as_deref()) {
        return message(403, Some(&config), Some(session), "Upload refused", "This upload did not come from the status page (CSRF token missing or wrong); reload the page and try again.".into());
    }
    let wanted = site.arg("sn").map(String::from);
    let part = parts.iter().find(|p| match &wanted {
        Some(sn) => p.name == format!("cert-{sn}"),
        None => p.name.starts_with("cert-") && !p.data.is_empty(),
    });
    let Some(part) = part else {
        return message(400, Some(&config), Some(session), "Upload failed", "No certificate file in the form.".into());
    };
    let row_sn = part.name.trim_start_matches("cert-");
    if !crate::device::is_serial(row_sn) {
        return message(400, Some(&config), Some(session), "Upload failed", "The form names no valid serial number.".into());
    }
    // the device looks for its certificate under the canonical spelling of its serial
    let sn = &crate::device::canonical_serial(row_sn);
    let Some(dir) = super::status::cert_dir(&config) else {
        return message(404, Some(&config), Some(session), "Upload failed", "Certificate handling (customcerts/@dir) is not enabled in the configuration.".into());
    };
    if part.data.is_empty() || part.data.len() > MAX_CERTIFICATE_BYTES {
        return message(400, Some(&config), Some(session), "Upload failed", "Choose the signed certificate file (PEM or DER, at most 64 KiB).".into());
    }
    let parsed = crate::certs::der_of(&part.data).filter(|der| x509_parser::parse_x509_certificate(der).is_ok_and(|(rest, _)| rest.is_empty()));
    if parsed.is_none() {
        return message(400, Some(&config), Some(session), "Upload failed", "The file is not a certificate (PEM or DER). Upload the signed certificate your CA returned for this device's CSR.".into());
    }
    let folder = root.join(&dir);
    let stored = std::fs::create_dir_all(&folder)
        .and_then(|_| crate::state::write_atomically(&folder.join(format!("{sn}-signedrequest.cer")), &part.data));
    if let Err(error) = stored {
        eprintln!("update-server: upload: cannot store {dir}/{sn}-signedrequest.cer: {error}");
        return message(500, Some(&config), Some(session), "Upload failed", format!("Cannot store {dir}/{sn}-signedrequest.cer: {error}"));
    }
    super::redirect(&proceed_to(&site, site.arg("proceed"), row_sn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\nabc\r\n--XyZ\r\nContent-Disposition: form-data; name=\"cert-00-90-33-3e-0c-57\"; filename=\"c.pem\"\r\nContent-Type: application/octet-stream\r\n\r\n\x30\x82\r\n\x01\r\n--XyZ--\r\n";
        let b = boundary("multipart/form-data; boundary=XyZ").unwrap();
        let parts = parts(body, &b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], Part { name: "csrf".into(), filename: None, data: b"abc".to_vec() });
        assert_eq!(parts[1].filename.as_deref(), Some("c.pem"));
        assert_eq!(parts[1].data, b"\x30\x82\r\n\x01");
        assert!(parts_of_garbage());
    }

    fn parts_of_garbage() -> bool {
        parts(b"--X\r\nno head end", "X").is_none() && boundary("text/plain").is_none()
    }

    #[test]
    fn proceed_stays_on_the_admin_page() {
        let mut request = Request::default();
        request.vars.insert("SCRIPT_NAME".into(), "/mtls/update/update.php".into());
        let site = Site::of(&request, 0);
        assert_eq!(proceed_to(&site, Some("admin/admin.php?mode=status"), "x"), "/mtls/update/admin/admin.php?mode=status");
        assert_eq!(proceed_to(&site, Some("https://evil.example/"), "x"), "/mtls/update/admin/admin.php?mode=status&sn=x");
        assert_eq!(proceed_to(&site, Some("admin/admin.php.evil"), "x"), "/mtls/update/admin/admin.php?mode=status&sn=x");
        assert_eq!(proceed_to(&site, Some("admin/admin.php?x\r\nSet-Cookie: a"), "x"), "/mtls/update/admin/admin.php?mode=status");
    }
}
