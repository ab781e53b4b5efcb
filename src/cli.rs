//! The command line: which front door to open, on which root.

use std::path::PathBuf;

pub const USAGE: &str = concat!("\
usage:
  update-server                          CGI (GATEWAY_INTERFACE set) or FastCGI on an inherited
                                         listening socket (fd 0, as lighttpd's bin-path gives it)
  update-server serve [LISTENER...]      built-in HTTP(S) server (default: --listen 127.0.0.1:8080)
  update-server fastcgi --listen unix:PATH|HOST:PORT
", "  update-server preview [--root DIR] --sn SN --type T [--hwid H] [--ip IP] [--phase P] [--env E]
                        [--prot BUILD] [--boot BUILD] [--user-agent UA] [--mac MAC] [--https]
                        [--cn CN [--issuer CA]] [--url URL] [--query QUERY] [--arg NAME=VALUE]...
                        [--remote-addr ADDR [--forwarded-for IP]]
                                         the answer a device would get now (standard output,
                                         byte for byte) and what its poll would change
                                         (standard error); nothing is written
  update-server check [--root DIR]       validate the configuration and snippets (exit 1 on errors)
  update-server export [--root DIR] --format json|csv
                                         every device's record (standard output)
  update-server hash-password            reads a password on standard input (one line), prints
                                         an Argon2id hash for master/@password
  update-server --version                the version (-V)
", "options:
  --root DIR      install directory (the one holding config.xml); default: UPDATE_SERVER_ROOT,
                  else the directory of SCRIPT_FILENAME, else the current directory
  --workers N     FastCGI / serve requests computed at once (default 8)
serve listeners (as many as wanted; each says whether it speaks TLS):
  --listen HOST:PORT            plain HTTP (also written http://HOST:PORT)
  --listen-tls HOST:PORT        HTTPS (also written --listen https://HOST:PORT), with:
    --tls-cert FILE             the server's certificate chain (PEM), leaf first
    --tls-key FILE              its private key (PEM: PKCS#8, PKCS#1 or SEC1)
    --client-ca FILE            MTLS: client certificates must chain to a CA of this PEM file;
                                they reach the application as SSL_CLIENT_* (forcetrust)
    --client-cert required|optional
                                without a certificate the handshake fails (required, the
                                default with --client-ca) or the request has
                                SSL_CLIENT_VERIFY=NONE (optional)
  TLS options after a TLS listener are its own; given before the first listener they apply to
  every TLS listener. TLS 1.2 and 1.3 only. Example, plain HTTP to move devices and MTLS:
    update-server serve --listen 0.0.0.0:80 \\
      --listen-tls 0.0.0.0:444 --tls-cert server.pem --tls-key server.key --client-ca device-ca.pem");

/// `update-server 0.1.0`, with the commit when the build was given one
/// (`UPDATE_SERVER_COMMIT=$(git rev-parse --short HEAD)`, as `tools/package` does): no build
/// script, so a plain `cargo build` has none.
pub fn version() -> String {
    match option_env!("UPDATE_SERVER_COMMIT").map(str::trim).filter(|c| !c.is_empty()) {
        Some(commit) => format!("update-server {} ({commit})", env!("CARGO_PKG_VERSION")),
        None => format!("update-server {}", env!("CARGO_PKG_VERSION")),
    }
}

/// One listening address of `serve` and how it speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub address: String,
    /// `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
}

/// HTTPS (and MTLS) of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CAs client certificates are verified against (MTLS); `None`: none is asked for.
    pub client_ca: Option<PathBuf>,
    pub client_cert: ClientCert,
}

/// Whether a TLS listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// None asked for (no `--client-ca`).
    Off,
    /// Asked for; a client without one is served with `SSL_CLIENT_VERIFY=NONE`.
    Optional,
    /// A client without a valid one fails the handshake.
    Required,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Cgi,
    FastCgiInherited,
    FastCgiListen(String),
    Serve(Vec<Listen>),
    /// `preview`: a device's answer and changes, nothing written.
    Preview(crate::preview::PreviewArgs),
    Check,
    /// `export`: one record per device on standard output.
    Export(crate::export::Format),
    /// `hash-password`: an Argon2id hash of the password on standard input.
    HashPassword,
    Version,
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub command: Command,
    pub root: Option<PathBuf>,
    pub workers: usize,
}

/// TLS options as given, before they are checked.
#[derive(Debug, Clone, Default)]
struct TlsOptions {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    client_cert: Option<ClientCert>,
}

impl TlsOptions {
    fn is_empty(&self) -> bool {
        self.cert.is_none() && self.key.is_none() && self.client_ca.is_none() && self.client_cert.is_none()
    }

    /// The listener's own options, the defaults where it has none.
    fn settings(self, defaults: &TlsOptions, address: &str) -> Result<TlsSettings, String> {
        let cert = self.cert.or_else(|| defaults.cert.clone());
        let key = self.key.or_else(|| defaults.key.clone());
        let client_ca = self.client_ca.or_else(|| defaults.client_ca.clone());
        let client_cert = self.client_cert.or(defaults.client_cert);
        let (Some(cert), Some(key)) = (cert, key) else {
            return Err(format!("the TLS listener {address} needs --tls-cert and --tls-key"));
        };
        let client_cert = match (&client_ca, client_cert) {
            (None, None) => ClientCert::Off,
            (None, Some(_)) => return Err(format!("--client-cert of {address} needs --client-ca")),
            (Some(_), None) => ClientCert::Required,
            (Some(_), Some(mode)) => mode,
        };
        Ok(TlsSettings { cert, key, client_ca, client_cert })
    }
}

/// A `--listen` value: `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`; whether it is TLS.
fn listen_address(value: &str) -> Result<(String, bool), String> {
    if value.starts_with("unix:") {
        // FastCGI's Unix socket (serve refuses it)
        return Ok((value.to_string(), false));
    }
    let (address, tls) = if let Some(rest) = value.strip_prefix("https://") {
        (rest, true)
    } else if let Some(rest) = value.strip_prefix("http://") {
        (rest, false)
    } else {
        (value, false)
    };
    let address = address.strip_suffix('/').unwrap_or(address);
    if address.is_empty() || address.contains(['/', '?', '#']) || !address.contains(':') {
        return Err(format!("'{value}' is no listening address (HOST:PORT)"));
    }
    Ok((address.to_string(), tls))
}

impl Options {
    /// Reads the process's arguments and environment.
    pub fn from_env() -> Result<Options, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let cgi = std::env::var_os("GATEWAY_INTERFACE").is_some();
        let env_root = std::env::var_os("UPDATE_SERVER_ROOT").map(PathBuf::from);
        Options::parse(&args, cgi, crate::http::fastcgi::stdin_is_listening_socket(), env_root)
    }

    /// Pure part of [`Options::from_env`], so it can be tested.
    pub fn parse(
        args: &[String],
        cgi: bool,
        stdin_listening: bool,
        env_root: Option<PathBuf>,
    ) -> Result<Options, String> {
        let mut root = env_root;
        let mut workers = 8usize;
        // every --listen / --listen-tls in order, with the TLS options that follow it
        let mut listens: Vec<(String, Option<TlsOptions>)> = Vec::new();
        let mut tls_defaults = TlsOptions::default();
        let mut subcommand: Option<&str> = None;
        let mut format: Option<crate::export::Format> = None;
        let mut i = 0;
        while i < args.len() {
            let arg = args[i].as_str();
            let mut value = |name: &str| -> Result<String, String> {
                i += 1;
                args.get(i).cloned().ok_or_else(|| format!("{name} needs a value"))
            };
            match arg {
                "--root" => root = Some(PathBuf::from(value("--root")?)),
                "--listen" => {
                    let (address, tls) = listen_address(&value("--listen")?)?;
                    listens.push((address, tls.then(TlsOptions::default)));
                }
                "--listen-tls" => {
                    let (address, _) = listen_address(&value("--listen-tls")?)?;
                    listens.push((address, Some(TlsOptions::default())));
                }
                "--tls-cert" | "--tls-key" | "--client-ca" | "--client-cert" => {
                    let given = value(arg)?;
                    let options = match listens.last_mut() {
                        None => &mut tls_defaults,
                        Some((_, Some(options))) => options,
                        Some((address, None)) => {
                            return Err(format!(
                                "{arg} follows the plain HTTP listener {address}: name a TLS listener --listen-tls {address} (or --listen https://{address})"
                            ))
                        }
                    };
                    match arg {
                        "--tls-cert" => options.cert = Some(PathBuf::from(given)),
                        "--tls-key" => options.key = Some(PathBuf::from(given)),
                        "--client-ca" => options.client_ca = Some(PathBuf::from(given)),
                        _ => {
                            options.client_cert = Some(match given.as_str() {
                                "required" => ClientCert::Required,
                                "optional" => ClientCert::Optional,
                                _ => return Err("--client-cert takes required or optional".into()),
                            })
                        }
                    }
                }
                "--workers" => {
                    workers = value("--workers")?
                        .parse()
                        .ok()
                        .filter(|n| (1..=256).contains(n))
                        .ok_or("--workers takes a number from 1 to 256")?
                }
                "--format" => {
                    let given = value("--format")?;
                    format = Some(crate::export::Format::parse(&given).ok_or_else(|| format!("--format takes json or csv, not '{given}'"))?);
                }
                "-h" | "--help" | "help" => subcommand = Some("help"),
                "-V" | "--version" => subcommand = Some("version"),
                "serve" | "fastcgi" | "check" | "export" | "hash-password" if subcommand.is_none() => subcommand = Some(arg),
                // the rest of the line describes the device
                "preview" if subcommand.is_none() => {
                    let (preview, preview_root) = crate::preview::PreviewArgs::parse(&args[i + 1..])?;
                    return Ok(Options { command: Command::Preview(preview), root: preview_root.or(root), workers });
                }
                other => return Err(format!("unknown argument '{other}'")),
            }
            i += 1;
        }
        let tls_given = !tls_defaults.is_empty() || listens.iter().any(|(_, tls)| tls.is_some());
        if tls_given && subcommand != Some("serve") && subcommand != Some("help") {
            return Err("TLS options and TLS listeners belong to serve".into());
        }
        if format.is_some() && subcommand != Some("export") && subcommand != Some("help") {
            return Err("--format belongs to export".into());
        }
        let command = match subcommand {
            Some("help") => Command::Help,
            Some("version") => Command::Version,
            Some("check") => Command::Check,
            Some("export") => Command::Export(format.ok_or("export needs --format json or --format csv")?),
            Some("hash-password") => Command::HashPassword,
            Some("serve") => {
                if listens.is_empty() {
                    if !tls_defaults.is_empty() {
                        return Err("TLS options without a TLS listener: add --listen-tls HOST:PORT".into());
                    }
                    listens.push(("127.0.0.1:8080".into(), None));
                }
                if !tls_defaults.is_empty() && listens.iter().all(|(_, tls)| tls.is_none()) {
                    return Err("TLS options without a TLS listener: add --listen-tls HOST:PORT".into());
                }
                let mut checked = Vec::new();
                for (address, tls) in listens {
                    if address.starts_with("unix:") {
                        return Err(format!("serve listens on TCP addresses (HOST:PORT), not {address}"));
                    }
                    let tls = match tls {
                        None => None,
                        Some(options) => Some(options.settings(&tls_defaults, &address)?),
                    };
                    checked.push(Listen { address, tls });
                }
                Command::Serve(checked)
            }
            Some("fastcgi") => match listens.as_slice() {
                [(address, None)] => Command::FastCgiListen(address.clone()),
                [] if stdin_listening => Command::FastCgiInherited,
                [] => return Err("fastcgi needs --listen unless started with a socket on fd 0".into()),
                _ => return Err("fastcgi listens on one address".into()),
            },
            _ if cgi => Command::Cgi,
            _ if stdin_listening => Command::FastCgiInherited,
            _ => return Err("not started as CGI nor with a FastCGI socket on fd 0".into()),
        };
        Ok(Options { command, root, workers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn plain(address: &str) -> Listen {
        Listen { address: address.into(), tls: None }
    }

    #[test]
    fn cgi_wins_without_subcommand() {
        let o = Options::parse(&[], true, false, None).unwrap();
        assert_eq!(o.command, Command::Cgi);
    }

    #[test]
    fn inherited_socket_means_fastcgi() {
        let o = Options::parse(&[], false, true, None).unwrap();
        assert_eq!(o.command, Command::FastCgiInherited);
    }

    #[test]
    fn serve_with_root_and_listen() {
        let o = Options::parse(&args(&["serve", "--listen", "127.0.0.1:9", "--root", "/x"]), false, false, None).unwrap();
        assert_eq!(o.command, Command::Serve(vec![plain("127.0.0.1:9")]));
        assert_eq!(o.root, Some(PathBuf::from("/x")));
        let o = Options::parse(&args(&["serve"]), false, false, None).unwrap();
        assert_eq!(o.command, Command::Serve(vec![plain("127.0.0.1:8080")]));
        let o = Options::parse(&args(&["fastcgi", "--listen", "unix:/run/u.sock"]), false, false, None).unwrap();
        assert_eq!(o.command, Command::FastCgiListen("unix:/run/u.sock".into()));
    }

    #[test]
    fn serve_with_plain_and_mtls_listeners() {
        let o = Options::parse(
            &args(&[
                "serve", "--listen", "0.0.0.0:80", "--listen-tls", "0.0.0.0:444", "--tls-cert", "s.pem", "--tls-key", "s.key",
                "--client-ca", "ca.pem", "--listen", "https://[::]:443", "--tls-cert", "o.pem", "--tls-key", "o.key",
            ]),
            false,
            false,
            None,
        )
        .unwrap();
        let mtls = TlsSettings { cert: "s.pem".into(), key: "s.key".into(), client_ca: Some("ca.pem".into()), client_cert: ClientCert::Required };
        let https = TlsSettings { cert: "o.pem".into(), key: "o.key".into(), client_ca: None, client_cert: ClientCert::Off };
        assert_eq!(
            o.command,
            Command::Serve(vec![
                plain("0.0.0.0:80"),
                Listen { address: "0.0.0.0:444".into(), tls: Some(mtls) },
                Listen { address: "[::]:443".into(), tls: Some(https) },
            ])
        );
    }

    #[test]
    fn tls_options_before_the_listeners_apply_to_every_tls_listener() {
        let o = Options::parse(
            &args(&[
                "serve", "--tls-cert", "s.pem", "--tls-key", "s.key", "--client-ca", "ca.pem", "--client-cert", "optional",
                "--listen", "http://127.0.0.1:80", "--listen-tls", "127.0.0.1:443", "--listen-tls", "127.0.0.1:444",
                "--client-cert", "required",
            ]),
            false,
            false,
            None,
        )
        .unwrap();
        let Command::Serve(listens) = o.command else { panic!("serve") };
        assert_eq!(listens[0], plain("127.0.0.1:80"));
        let modes: Vec<ClientCert> = listens[1..].iter().map(|l| l.tls.as_ref().unwrap().client_cert).collect();
        assert_eq!(modes, [ClientCert::Optional, ClientCert::Required]);
        assert!(listens[1..].iter().all(|l| l.tls.as_ref().unwrap().cert == Path::new("s.pem")));
    }

    #[test]
    fn tls_options_that_name_no_tls_listener_are_refused() {
        for bad in [
            &["serve", "--listen", "0.0.0.0:80", "--tls-cert", "s.pem"][..],
            &["serve", "--tls-cert", "s.pem", "--tls-key", "s.key"],
            &["serve", "--tls-cert", "s.pem", "--tls-key", "s.key", "--listen", "0.0.0.0:80"],
            &["serve", "--listen-tls", "0.0.0.0:443", "--tls-cert", "s.pem"],
            &["serve", "--listen-tls", "0.0.0.0:443", "--tls-cert", "s", "--tls-key", "k", "--client-cert", "optional"],
            &["serve", "--listen-tls", "0.0.0.0:443", "--tls-cert", "s", "--tls-key", "k", "--client-ca", "c", "--client-cert", "maybe"],
            &["serve", "--listen", "no-port"],
            &["serve", "--listen", "https://h:1/x"],
            &["serve", "--listen", "unix:/run/u.sock"],
            &["fastcgi", "--listen-tls", "0.0.0.0:443"],
            &["fastcgi", "--listen", "a:1", "--listen", "b:2"],
        ] {
            assert!(Options::parse(&args(bad), false, false, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn export_takes_a_format() {
        let o = Options::parse(&args(&["export", "--root", "/x", "--format", "csv"]), false, false, None).unwrap();
        assert_eq!((o.command, o.root), (Command::Export(crate::export::Format::Csv), Some(PathBuf::from("/x"))));
        let o = Options::parse(&args(&["--format", "json", "export"]), false, false, None).unwrap();
        assert_eq!(o.command, Command::Export(crate::export::Format::Json));
        for bad in [&["export"][..], &["export", "--format", "xml"], &["export", "--format"], &["check", "--format", "csv"]] {
            assert!(Options::parse(&args(bad), false, false, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn version_and_hash_password() {
        for flag in ["--version", "-V"] {
            // also under CGI and with an inherited socket: a person asked for the version
            assert_eq!(Options::parse(&args(&[flag]), true, true, None).unwrap().command, Command::Version);
        }
        assert_eq!(Options::parse(&args(&["hash-password"]), false, false, None).unwrap().command, Command::HashPassword);
        assert!(Options::parse(&args(&["hash-password", "secret"]), false, false, None).is_err(), "the password is read from stdin, never an argument");
        assert!(version().starts_with(&format!("update-server {}", env!("CARGO_PKG_VERSION"))));
    }

    #[test]
    fn option_root_beats_environment() {
        let o = Options::parse(&args(&["serve", "--root", "/a"]), false, false, Some("/b".into())).unwrap();
        assert_eq!(o.root, Some(PathBuf::from("/a")));
    }

    #[test]
    fn nothing_to_do_is_an_error() {
        assert!(Options::parse(&[], false, false, None).is_err());
        assert!(Options::parse(&args(&["--bogus"]), true, false, None).is_err());
        assert!(Options::parse(&args(&["fastcgi"]), false, false, None).is_err());
    }
}
