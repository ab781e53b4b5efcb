//! The operator's command line through the binary (issue 11 item 6): `--version`,
//! `hash-password` (its hash logs in through the admin page), the start-up warning of a root
//! without `config.xml`, and a listening address that is taken.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::*;

#[test]
fn version_names_the_package_version() {
    for flag in ["--version", "-V"] {
        let output = run_with_timeout(
            {
                let mut command = Command::new(binary());
                command.arg(flag);
                command
            },
            Duration::from_secs(20),
        );
        assert!(output.status.success(), "{flag}: {output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.starts_with(&format!("update-server {}", env!("CARGO_PKG_VERSION"))), "{flag}: {text}");
        assert_eq!(text.lines().count(), 1, "{text}");
    }
}

fn hash_password(input: &[u8]) -> std::process::Output {
    let mut command = Command::new(binary());
    command.arg("hash-password");
    run_with_input(command, input, Duration::from_secs(30))
}

/// The printed hash is an Argon2id PHC string; put into `master/@password` it lets the admin
/// in with the password that was typed, and nobody with another one.
#[test]
fn hash_password_prints_an_argon2id_hash_the_admin_login_accepts() {
    let output = hash_password(b"Correct horse 1\n");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let hash = String::from_utf8(output.stdout).unwrap().trim_end().to_string();
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    copy_install_tree(root);
    write_admin_fixture(root, &hash);
    let login = |password: &str| {
        let ctx = CgiContext { port: 443, ..CgiContext::default() };
        let body = format!("user=admin&pw={}", password.replace(' ', "+"));
        cgi_request(
            root,
            &ctx,
            "POST",
            "admin/admin.php",
            "",
            body.as_bytes(),
            &[("HTTPS", "on"), ("CONTENT_TYPE", "application/x-www-form-urlencoded")],
        )
    };
    let accepted = login("Correct horse 1");
    assert_eq!(accepted.status, 303, "{}", accepted.body);
    assert!(header_values(&accepted, "set-cookie").iter().any(|c| c.starts_with("update_admin=")), "{:?}", accepted.headers);
    assert_eq!(login("Correct horse 2").status, 403);
}

#[test]
fn hash_password_refuses_what_is_no_password() {
    for (input, says) in [(&b""[..], "empty password"), (b"\n", "empty password"), (b"one\ntwo\n", "more than one line")] {
        let output = hash_password(input);
        assert_eq!(output.status.code(), Some(2), "{input:?}");
        assert!(output.stdout.is_empty(), "nothing printed for {input:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{input:?}: {stderr}");
    }
}

/// A long-running mode started with its standard error read line by line.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(binary())
            .args(args)
            .env_remove("UPDATE_SERVER_ROOT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The first line of standard error containing `needle` (all lines so far if none comes).
    fn line_with(&self, needle: &str) -> Result<String, Vec<String>> {
        let mut seen = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(20)) {
            if line.contains(needle) {
                return Ok(line);
            }
            seen.push(line);
        }
        Err(seen)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve` on a folder that is no install tree says so at once, naming the folder and
/// `--root`, and still runs (a poll gets the configuration error, as before).
#[test]
fn serve_on_a_root_without_config_xml_warns_at_start_and_keeps_running() {
    let empty = tempfile::tempdir().unwrap();
    let root = empty.path().to_str().unwrap();
    let port = free_port();
    let serve = Running::start(&["serve", "--listen", &format!("127.0.0.1:{port}"), "--root", root]);
    let warning = serve.line_with("no config.xml").unwrap_or_else(|lines| panic!("no warning in {lines:?}"));
    assert_eq!(
        warning,
        format!(
            "update-server: warning: {root} has no config.xml: not an install tree? start with --root DIR (the folder that holds config.xml), or set UPDATE_SERVER_ROOT"
        )
    );
    serve.line_with("listening on").unwrap_or_else(|lines| panic!("not listening: {lines:?}"));
    let answer = http_get(port, &format!("/update.php?{DEVICE_QUERY}"), "localhost");
    assert!(answer.body.starts_with('#') && answer.body.contains("config.xml"), "{}", answer.body);
}

#[test]
fn fastcgi_on_a_given_root_without_config_xml_warns_at_start() {
    let empty = tempfile::tempdir().unwrap();
    let socket = empty.path().join("fcgi.sock");
    let listen = format!("unix:{}", socket.display());
    let fastcgi = Running::start(&["fastcgi", "--listen", &listen, "--root", empty.path().to_str().unwrap()]);
    let warning = fastcgi.line_with("no config.xml").unwrap_or_else(|lines| panic!("no warning in {lines:?}"));
    assert!(warning.contains(&format!("{} has no config.xml", empty.path().display())) && warning.contains("--root DIR"), "{warning}");
}

/// Runs the binary to its end with `args`: (exit code, standard error).
fn run_to_end(args: &[&str], root: &Path) -> (Option<i32>, String) {
    let mut command = Command::new(binary());
    command.args(args).arg("--root").arg(root);
    let output = run_with_timeout(command, Duration::from_secs(30));
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// A taken address ends the start with a message that names it and the likely cause, not a
/// bare `os error 98`, and a non-zero exit code: serve (also as its second listener) and
/// fastcgi --listen, TCP and a Unix socket another server listens on.
#[test]
fn a_taken_address_is_named_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    copy_install_tree(dir.path());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let expected = format!("update-server: cannot listen on {address}: address in use (is another server running?)");

    let (code, stderr) = run_to_end(&["serve", "--listen", &address], dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.lines().any(|l| l == expected), "{stderr}");

    let free = format!("127.0.0.1:{}", free_port());
    let (code, stderr) = run_to_end(&["serve", "--listen", &free, "--listen", &address], dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.lines().any(|l| l == expected), "the second listener: {stderr}");

    let (code, stderr) = run_to_end(&["fastcgi", "--listen", &address], dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.lines().any(|l| l == expected), "{stderr}");

    let socket = dir.path().join("taken.sock");
    let _other = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let unix = format!("unix:{}", socket.display());
    let (code, stderr) = run_to_end(&["fastcgi", "--listen", &unix], dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {unix}: address in use (is another server running?)")), "{stderr}");
    assert!(socket.exists(), "the other server's socket is left alone");
}
