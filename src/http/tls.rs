//! HTTPS and MTLS for `serve` (feature `tls`): rustls with the ring provider, TLS 1.2 and 1.3
//! only, client certificates verified against `--client-ca`, and the certificate's names
//! passed to the application as the variables lighttpd, Apache and nginx set, so that
//! forcetrust (src/certs.rs) works as it does behind them:
//!
//! | variable | value |
//! | --- | --- |
//! | `HTTPS` | `on` |
//! | `SSL_PROTOCOL`, `SSL_CIPHER` | `TLSv1.3`, the cipher suite |
//! | `SSL_CLIENT_VERIFY` | `SUCCESS` (a certificate, verified in the handshake) or `NONE` |
//! | `SSL_CLIENT_S_DN`, `SSL_CLIENT_I_DN` | subject and issuer, RFC 4514 (`CN=…,O=…,C=DE`) |
//! | `SSL_CLIENT_S_DN_CN`, `_ST`, `_L`, `_O`, `_OU`, `_C` | the subject's first value of each |
//! | `SSL_CLIENT_I_DN_CN`, `_O`, `_C` | the issuer's |
//! | `SSL_CLIENT_M_SERIAL` | the serial number, hex |
//! | `SSL_CLIENT_CERT` | the certificate, PEM |
//!
//! A certificate that does not chain to `--client-ca` fails the handshake (lighttpd's
//! `ssl.verifyclient.enforce`); with `--client-cert optional` a client without one is served
//! with `SSL_CLIENT_VERIFY=NONE`.

use crate::cli::{ClientCert, TlsSettings};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use std::io;
use std::path::Path;
use std::sync::Arc;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn certificates(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|found| found.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(invalid(format!("{}: no certificate (PEM) in it", path.display())));
    }
    Ok(certificates)
}

/// The TLS side of one listener, from its certificate, key and client CAs.
pub fn acceptor(settings: &TlsSettings) -> io::Result<tokio_rustls::TlsAcceptor> {
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server_config(settings)?)))
}

pub fn server_config(settings: &TlsSettings) -> io::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&settings.cert)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| invalid(format!("{}: {e}", settings.key.display())))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid(format!("TLS versions: {e}")))?;
    let builder = match (&settings.client_ca, settings.client_cert) {
        (Some(ca_file), ClientCert::Optional | ClientCert::Required) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(ca_file)? {
                roots.add(ca).map_err(|e| invalid(format!("{}: {e}", ca_file.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if settings.client_cert == ClientCert::Optional { verifier.allow_unauthenticated() } else { verifier };
            let verifier = verifier.build().map_err(|e| invalid(format!("{}: {e}", ca_file.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid(format!("{} with {}: {e}", settings.cert.display(), settings.key.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(config)
}

/// The variables of a TLS connection after its handshake.
pub fn connection_vars(connection: &ServerConnection) -> Vec<(String, String)> {
    let mut vars = vec![("HTTPS".to_string(), "on".to_string())];
    if let Some(version) = connection.protocol_version() {
        let name = match version {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        };
        vars.push(("SSL_PROTOCOL".into(), name));
    }
    if let Some(suite) = connection.negotiated_cipher_suite() {
        vars.push(("SSL_CIPHER".into(), format!("{:?}", suite.suite())));
    }
    match connection.peer_certificates().and_then(|chain| chain.first()) {
        // rustls has verified it against --client-ca in the handshake
        Some(leaf) => {
            vars.push(("SSL_CLIENT_VERIFY".into(), "SUCCESS".into()));
            vars.extend(certificate_vars(leaf.as_ref()));
        }
        None => vars.push(("SSL_CLIENT_VERIFY".into(), "NONE".into())),
    }
    vars
}

/// The `SSL_CLIENT_*` variables of a client certificate (DER).
pub fn certificate_vars(der: &[u8]) -> Vec<(String, String)> {
    let mut vars = vec![("SSL_CLIENT_CERT".to_string(), crate::certs::pem("CERTIFICATE", der).replace("\r\n", "\n"))];
    let Ok((_, certificate)) = X509Certificate::from_der(der) else {
        return vars;
    };
    vars.push(("SSL_CLIENT_S_DN".into(), distinguished_name(certificate.subject())));
    vars.push(("SSL_CLIENT_I_DN".into(), distinguished_name(certificate.issuer())));
    for (prefix, name, keys) in [
        ("SSL_CLIENT_S_DN_", certificate.subject(), &["CN", "ST", "L", "O", "OU", "C"][..]),
        ("SSL_CLIENT_I_DN_", certificate.issuer(), &["CN", "O", "C"][..]),
    ] {
        for key in keys {
            if let Some(value) = first_value(name, key) {
                vars.push((format!("{prefix}{key}"), value));
            }
        }
    }
    let serial: String = certificate.raw_serial().iter().map(|b| format!("{b:02X}")).collect();
    vars.push(("SSL_CLIENT_M_SERIAL".into(), serial));
    vars
}

/// The short name of an attribute type (`CN`, `ST`, …), else its dotted OID.
fn attribute_name(oid: &x509_parser::der_parser::oid::Oid) -> String {
    x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
        .map(str::to_string)
        .unwrap_or_else(|_| oid.to_id_string())
}

fn attribute_value(value: &x509_parser::x509::AttributeTypeAndValue) -> String {
    match value.as_str() {
        Ok(text) => escape_dn_value(text),
        // not a string type: the DER value in hex, as RFC 4514 writes it
        Err(_) => format!("#{}", value.attr_value().data.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

/// The first value of attribute `key` (`CN`, `ST`, …) of a name, unescaped.
fn first_value(name: &X509Name, key: &str) -> Option<String> {
    name.iter_attributes()
        .find(|value| attribute_name(value.attr_type()) == key)
        .and_then(|value| value.as_str().ok().map(str::to_string))
}

/// A distinguished name in the form of RFC 4514 (Apache's and nginx's): the last RDN first,
/// `,` between RDNs, `+` inside one, special characters escaped.
pub fn distinguished_name(name: &X509Name) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|value| format!("{}={}", attribute_name(value.attr_type()), attribute_value(value)))
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// Escapes a DN attribute value (RFC 4514 §2.4).
pub fn escape_dn_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c == '\0' {
            out.push_str("\\00");
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(escape_dn_value("innovaphone AG"), "innovaphone AG");
        assert_eq!(escape_dn_value("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_dn_value("#x "), "\\#x\\ ");
        assert_eq!(escape_dn_value(" "), "\\ ");
    }
}
