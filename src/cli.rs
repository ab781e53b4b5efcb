//! The command line: which front door to open, on which root.

use std::path::PathBuf;

pub const USAGE: &str = concat!("\
usage:
  update-server                          CGI (GATEWAY_INTERFACE set) or FastCGI on an inherited
                                         listening socket (fd 0, as lighttpd's bin-path gives it)
  update-server serve [--listen ADDR]    built-in HTTP listener (default 127.0.0.1:8080)
  update-server fastcgi --listen unix:PATH|HOST:PORT
", "  update-server preview [--root DIR] --sn SN --type T [--hwid H] [--ip IP] [--phase P] [--env E]
                        [--prot BUILD] [--boot BUILD] [--user-agent UA] [--mac MAC] [--https]
                        [--cn CN [--issuer CA]] [--url URL] [--query QUERY] [--arg NAME=VALUE]...
                                         the answer a device would get now (standard output,
                                         byte for byte) and what its poll would change
                                         (standard error); nothing is written
  update-server check [--root DIR]       validate the configuration and snippets (exit 1 on errors)
", "options:
  --root DIR      install directory (the one holding config.xml); default: UPDATE_SERVER_ROOT,
                  else the directory of SCRIPT_FILENAME, else the current directory
  --workers N     FastCGI / serve worker threads (default 8)");

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Cgi,
    FastCgiInherited,
    FastCgiListen(String),
    Serve(String),
    /// `preview`: a device's answer and changes, nothing written.
    Preview(crate::preview::PreviewArgs),
    Check,
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub command: Command,
    pub root: Option<PathBuf>,
    pub workers: usize,
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
        let mut listen: Option<String> = None;
        let mut subcommand: Option<&str> = None;
        let mut i = 0;
        while i < args.len() {
            let arg = args[i].as_str();
            let mut value = |name: &str| -> Result<String, String> {
                i += 1;
                args.get(i).cloned().ok_or_else(|| format!("{name} needs a value"))
            };
            match arg {
                "--root" => root = Some(PathBuf::from(value("--root")?)),
                "--listen" => listen = Some(value("--listen")?),
                "--workers" => {
                    workers = value("--workers")?
                        .parse()
                        .ok()
                        .filter(|n| (1..=256).contains(n))
                        .ok_or("--workers takes a number from 1 to 256")?
                }
                "-h" | "--help" | "help" => subcommand = Some("help"),
                "serve" | "fastcgi" | "check" if subcommand.is_none() => subcommand = Some(arg),
                // the rest of the line describes the device
                "preview" if subcommand.is_none() => {
                    let (preview, preview_root) = crate::preview::PreviewArgs::parse(&args[i + 1..])?;
                    return Ok(Options { command: Command::Preview(preview), root: preview_root.or(root), workers });
                }
                other => return Err(format!("unknown argument '{other}'")),
            }
            i += 1;
        }
        let command = match subcommand {
            Some("help") => Command::Help,
            Some("check") => Command::Check,
            Some("serve") => Command::Serve(listen.unwrap_or_else(|| "127.0.0.1:8080".into())),
            Some("fastcgi") => match listen {
                Some(address) => Command::FastCgiListen(address),
                None if stdin_listening => Command::FastCgiInherited,
                None => return Err("fastcgi needs --listen unless started with a socket on fd 0".into()),
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

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
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
        assert_eq!(o.command, Command::Serve("127.0.0.1:9".into()));
        assert_eq!(o.root, Some(PathBuf::from("/x")));
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
