//! `update-server preview`: the answer a device would get now, and what its poll would change,
//! with nothing written (issue 11 item 2). The command line describes the device; it becomes the
//! request a web server would hand the application, so the answer is the one a real poll gets.

use crate::http::Request;

/// What a preview asks about: the device and how it reaches the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviewArgs {
    /// The request arguments in the order the device sends them.
    pub args: Vec<(String, String)>,
    /// `--query`: the arguments exactly as a device's URL has them (instead of the flags).
    pub query: Option<String>,
    pub user_agent: Option<String>,
    /// The URL of `update.php` the device uses (default `http://localhost/update.php`).
    pub url: String,
    pub https: bool,
    /// The client certificate: subject CN and issuer CN, verified.
    pub cn: Option<String>,
    pub issuer: Option<String>,
    /// The address the request comes from (default: `--ip`, else 127.0.0.1).
    pub remote_addr: Option<String>,
    /// `X-Forwarded-For`: the client behind a reverse proxy (`--remote-addr` is then the proxy;
    /// only a proxy in `proxies/@trusted` is believed, as for a real poll).
    pub forwarded_for: Option<String>,
}

impl PreviewArgs {
    /// Reads the options after `preview`; also returns `--root` when given.
    pub fn parse(options: &[String]) -> Result<(PreviewArgs, Option<std::path::PathBuf>), String> {
        let mut preview = PreviewArgs { url: "http://localhost/update.php".into(), ..Default::default() };
        let mut root = None;
        let mut i = 0;
        while i < options.len() {
            let option = options[i].as_str();
            let mut value = || -> Result<String, String> {
                i += 1;
                options.get(i).cloned().ok_or_else(|| format!("{option} needs a value"))
            };
            let argument = match option {
                "--sn" => Some("sn"),
                "--type" => Some("type"),
                "--hwid" => Some("hwid"),
                "--ip" => Some("ip"),
                "--phase" => Some("phase"),
                "--env" => Some("env"),
                "--prot" => Some("PROT"),
                "--boot" => Some("BOOT"),
                "--mac" => Some("mac"),
                _ => None,
            };
            match (argument, option) {
                (Some(name), _) => preview.args.push((name.to_string(), value()?)),
                (None, "--arg") => {
                    let pair = value()?;
                    let (name, text) = pair.split_once('=').ok_or("--arg takes NAME=VALUE")?;
                    preview.args.push((name.to_string(), text.to_string()));
                }
                (None, "--query") => preview.query = Some(value()?),
                (None, "--user-agent") => preview.user_agent = Some(value()?),
                (None, "--url") => preview.url = value()?,
                (None, "--cn") => preview.cn = Some(value()?),
                (None, "--issuer") => preview.issuer = Some(value()?),
                (None, "--remote-addr") => preview.remote_addr = Some(value()?),
                (None, "--forwarded-for") => preview.forwarded_for = Some(value()?),
                (None, "--root") => root = Some(std::path::PathBuf::from(value()?)),
                (None, "--https") => preview.https = true,
                (None, other) => return Err(format!("preview: unknown option '{other}'")),
            }
            i += 1;
        }
        if preview.query.is_some() && !preview.args.is_empty() {
            return Err("preview: --query or the argument options, not both".into());
        }
        if preview.query.is_none() && preview.user_agent.is_none() && !["sn", "type"].iter().all(|n| preview.args.iter().any(|(k, _)| k == n)) {
            return Err("preview needs --sn and --type (or --user-agent of an SPA phone, or --query)".into());
        }
        if preview.issuer.is_some() && preview.cn.is_none() {
            return Err("preview: --issuer belongs to --cn".into());
        }
        Ok((preview, root))
    }

    /// The request a web server would hand the application for this device.
    pub fn request(&self) -> Result<Request, String> {
        let (scheme, rest) = self.url.split_once("://").ok_or_else(|| format!("--url '{}' is not an absolute URL", self.url))?;
        let https = match scheme {
            "http" => self.https,
            "https" => true,
            other => return Err(format!("--url: '{other}' is neither http nor https")),
        };
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/update.php" } else { path };
        if host.is_empty() || !path.ends_with("/update.php") {
            return Err(format!("--url '{}' must name a host and end in /update.php", self.url));
        }
        let port = host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map(|(_, p)| p.to_string());
        let query = match &self.query {
            Some(query) => query.clone(),
            None => self
                .args
                .iter()
                .map(|(name, value)| format!("{}={}", crate::urlenc::rawurlencode(name), crate::urlenc::rawurlencode(value)))
                .collect::<Vec<_>>()
                .join("&"),
        };
        let ip = self.args.iter().find(|(k, _)| k == "ip").map(|(_, v)| v.clone());
        let mut vars = crate::http::Vars::default();
        let mut set = |name: &str, value: String| {
            vars.insert(name.to_string(), value);
        };
        set("GATEWAY_INTERFACE", "CGI/1.1".into());
        set("REQUEST_METHOD", "GET".into());
        set("SCRIPT_NAME", path.to_string());
        set("QUERY_STRING", query);
        set("HTTP_HOST", host.to_string());
        set("SERVER_NAME", host.rsplit_once(':').map_or(host, |(name, _)| name).to_string());
        set("SERVER_PORT", port.unwrap_or_else(|| if https { "443" } else { "80" }.to_string()));
        set("REMOTE_ADDR", self.remote_addr.clone().or(ip).unwrap_or_else(|| "127.0.0.1".into()));
        set("SERVER_SOFTWARE", format!("update-server-preview/{}", env!("CARGO_PKG_VERSION")));
        if https {
            set("HTTPS", "on".into());
        }
        if let Some(agent) = &self.user_agent {
            set("HTTP_USER_AGENT", agent.clone());
        }
        if let Some(client) = &self.forwarded_for {
            set("HTTP_X_FORWARDED_FOR", client.clone());
        }
        if let Some(cn) = &self.cn {
            set("SSL_CLIENT_S_DN_CN", cn.clone());
            set("SSL_CLIENT_VERIFY", "SUCCESS".into());
            if let Some(issuer) = &self.issuer {
                set("SSL_CLIENT_I_DN_CN", issuer.clone());
            }
        }
        Ok(Request { vars, body: Vec::new() })
    }
}

impl PreviewArgs {
    /// The command line that previews the same device (`update-server preview --root … --url
    /// …`), every word quoted for a POSIX shell where it needs it.
    pub fn command_line(&self, root: &std::path::Path) -> String {
        let mut words: Vec<String> = vec!["update-server".into(), "preview".into(), "--root".into(), root.display().to_string()];
        words.extend(["--url".into(), self.url.clone()]);
        let flag_of = |name: &str| match name {
            "sn" | "type" | "hwid" | "ip" | "phase" | "env" | "mac" => Some(format!("--{name}")),
            "PROT" => Some("--prot".into()),
            "BOOT" => Some("--boot".into()),
            _ => None,
        };
        for (name, value) in &self.args {
            match flag_of(name) {
                Some(flag) => words.push(flag),
                None => {
                    words.push("--arg".into());
                    words.push(format!("{name}={value}"));
                    continue;
                }
            }
            words.push(value.clone());
        }
        if let Some(query) = &self.query {
            words.extend(["--query".into(), query.clone()]);
        }
        for (flag, value) in [
            ("--user-agent", &self.user_agent),
            ("--cn", &self.cn),
            ("--issuer", &self.issuer),
            ("--remote-addr", &self.remote_addr),
            ("--forwarded-for", &self.forwarded_for),
        ] {
            if let Some(value) = value {
                words.extend([flag.to_string(), value.clone()]);
            }
        }
        if self.https && self.url.starts_with("http://") {
            words.push("--https".into());
        }
        words.iter().map(|w| shell_word(w)).collect::<Vec<_>>().join(" ")
    }
}

/// A word as a POSIX shell reads it back: bare when it holds only safe characters, else in
/// single quotes (a quote inside as `'\''`).
fn shell_word(word: &str) -> String {
    let safe = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+%".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// What `update-server preview` prints on standard error after the answer on standard output:
/// a line end first when the answer lacks one (on a terminal the report starts on its own
/// line), its status, and what the poll would change.
pub fn report(answer: &[u8], status: u16, changes: &[String]) -> String {
    let mut text = String::new();
    if !answer.ends_with(b"\n") {
        text.push('\n');
    }
    text.push_str(&format!("# preview: HTTP {status} - nothing was written; the poll would change:\n"));
    if changes.is_empty() {
        text.push_str("#   nothing\n");
    }
    for change in changes {
        text.push_str(&format!("#   {change}\n"));
    }
    text
}

/// The whole text of a preview as a terminal shows it (`2>&1`): the answer, then the report.
pub fn transcript(answer: &[u8], status: u16, changes: &[String]) -> String {
    String::from_utf8_lossy(answer).into_owned() + &report(answer, status, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<PreviewArgs, String> {
        PreviewArgs::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).map(|(p, _)| p)
    }

    #[test]
    fn a_device_becomes_the_request_a_web_server_would_pass() {
        let preview = parse(&[
            "--sn", "00-90-33-3e-0c-57", "--type", "IP232", "--hwid", "IP232-3e-0c-57", "--ip", "172.16.4.57", "--prot", "131504",
            "--url", "https://up.example.com:444/mtls/update/update.php", "--cn", "IP232-3e-0c-57", "--issuer", "Device CA",
        ])
        .unwrap();
        let request = preview.request().unwrap();
        assert_eq!(request.var("QUERY_STRING"), Some("sn=00-90-33-3e-0c-57&type=IP232&hwid=IP232-3e-0c-57&ip=172.16.4.57&PROT=131504"));
        assert_eq!(request.var("SCRIPT_NAME"), Some("/mtls/update/update.php"));
        assert_eq!((request.var("HTTP_HOST"), request.var("SERVER_PORT")), (Some("up.example.com:444"), Some("444")));
        assert_eq!((request.var("HTTPS"), request.var("REMOTE_ADDR")), (Some("on"), Some("172.16.4.57")));
        assert_eq!((request.var("SSL_CLIENT_S_DN_CN"), request.var("SSL_CLIENT_I_DN_CN")), (Some("IP232-3e-0c-57"), Some("Device CA")));
        assert!(request.body.is_empty());
        assert_eq!(
            preview.command_line(std::path::Path::new("/var/lib/update-server")),
            "update-server preview --root /var/lib/update-server --url https://up.example.com:444/mtls/update/update.php --sn 00-90-33-3e-0c-57 --type IP232 --hwid IP232-3e-0c-57 --ip 172.16.4.57 --prot 131504 --cn IP232-3e-0c-57 --issuer 'Device CA'"
        );
    }

    #[test]
    fn the_command_line_reads_back_as_the_same_preview() {
        let preview = PreviewArgs {
            args: vec![("sn".into(), "x".into()), ("polling".into(), "5".into()), ("env".into(), "it's".into())],
            user_agent: Some("Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)".into()),
            url: "http://h/update.php".into(),
            https: true,
            remote_addr: Some("10.0.0.2".into()),
            forwarded_for: Some("172.16.4.57".into()),
            ..Default::default()
        };
        let line = preview.command_line(std::path::Path::new("/r"));
        assert_eq!(
            line,
            "update-server preview --root /r --url http://h/update.php --sn x --arg polling=5 --env 'it'\\''s' --user-agent 'Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)' --remote-addr 10.0.0.2 --forwarded-for 172.16.4.57 --https"
        );
        assert_eq!(preview.request().unwrap().var("HTTP_X_FORWARDED_FOR"), Some("172.16.4.57"));
    }

    #[test]
    fn the_report_follows_the_answer_on_a_line_of_its_own() {
        assert_eq!(report(b"# a\r\n", 200, &[]), "# preview: HTTP 200 - nothing was written; the poll would change:\n#   nothing\n");
        assert_eq!(transcript(b"<x/>", 200, &["a".into(), "b".into()]), "<x/>\n# preview: HTTP 200 - nothing was written; the poll would change:\n#   a\n#   b\n");
    }

    #[test]
    fn what_cannot_be_a_poll_is_refused() {
        assert!(parse(&["--type", "IP232"]).is_err(), "no serial");
        assert!(parse(&["--sn", "x", "--type", "IP232", "--query", "a=b"]).is_err());
        assert!(parse(&["--sn", "x", "--type", "IP232", "--bogus"]).is_err());
        assert!(parse(&["--sn"]).is_err());
        assert!(parse(&["--sn", "x", "--type", "y", "--issuer", "CA"]).is_err());
        let url = |u: &str| parse(&["--sn", "x", "--type", "y", "--url", u]).unwrap().request();
        assert!(url("ftp://h/update.php").is_err() && url("http://h/admin/admin.php").is_err() && url("h/update.php").is_err());
        assert_eq!(url("http://h").unwrap().var("SCRIPT_NAME"), Some("/update.php"));
        // an SPA phone is described by its agent
        let spa = parse(&["--user-agent", "Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)", "--mac", "58bfea1104e6"]).unwrap();
        assert_eq!(spa.request().unwrap().var("QUERY_STRING"), Some("mac=58bfea1104e6"));
    }
}
