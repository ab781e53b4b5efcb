//! The built-in HTTP listener over a real socket: entry points reach the application with the
//! CGI variables a web server would set, static files are served from fw/ only, and hostile
//! paths and oversized requests are refused.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::{connect_when_up, echo_request, free_port};
use update_server::http::{serve, Request};

// ---- a tiny HTTP client ---------------------------------------------------------------------

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The variables the echo handler reported.
    fn vars(&self) -> BTreeMap<String, String> {
        let text = self.text();
        let (vars, _) = text.split_once("\n\n").expect("echo format");
        vars.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }

    fn echoed_body(&self) -> &[u8] {
        let at = self
            .body
            .windows(2)
            .position(|w| w == b"\n\n")
            .expect("echo format");
        &self.body[at + 2..]
    }
}

struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    /// Reads one response; `head_only` for answers to HEAD.
    fn read(&mut self, head_only: bool) -> Reply {
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                panic!("bad status line {status_line:?}");
            });
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        let length: usize = reply
            .header("Content-Length")
            .map_or(0, |v| v.parse().unwrap());
        if !head_only {
            reply.body = vec![0; length];
            self.reader.read_exact(&mut reply.body).unwrap();
        }
        reply
    }

    fn get(&mut self, target: &str) -> Reply {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: updates.example\r\n\r\n").as_bytes());
        self.read(false)
    }

    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.reader.read_to_end(&mut rest), Ok(0))
    }
}

// ---- the server under test ------------------------------------------------------------------

struct Site {
    port: u16,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

/// An install tree with a config, a firmware file and a symlink that leads out of fw/.
fn start() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::write(root.join("config.xml"), "<config>secret</config>").unwrap();
    std::fs::create_dir_all(root.join("fw/130178")).unwrap();
    std::fs::write(root.join("fw/130178/ip232.bin"), firmware()).unwrap();
    std::os::unix::fs::symlink(root.join("config.xml"), root.join("fw/escape.xml")).unwrap();
    let port = free_port();
    let (listen, served_root) = (format!("127.0.0.1:{port}"), root.clone());
    let handler = |request: Request| echo_request(&request);
    std::thread::spawn(move || serve::run(&listen, served_root, Arc::new(handler)));
    connect_when_up(|| TcpStream::connect(("127.0.0.1", port)));
    Site { port, root, _dir: dir }
}

fn firmware() -> Vec<u8> {
    (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect()
}

fn path_var(root: &Path, relative: &str) -> String {
    root.join(relative).to_string_lossy().into_owned()
}

// ---- tests ----------------------------------------------------------------------------------

#[test]
fn an_entry_point_gets_the_cgi_variables_of_a_web_server() {
    let site = start();
    let mut client = Client::connect(site.port);
    client.send(
        format!(
            "GET /update/update.php?a=b&sn=00-90-33 HTTP/1.1\r\nHost: updates.example:{}\r\nUser-Agent: ip232\r\nProxy: http://evil\r\n\r\n",
            site.port
        )
        .as_bytes(),
    );
    let reply = client.read(false);
    assert_eq!(reply.status, 200);
    let vars = reply.vars();
    let expect = [
        ("REQUEST_METHOD", "GET".to_string()),
        ("SCRIPT_NAME", "/update/update.php".to_string()),
        ("SCRIPT_FILENAME", path_var(&site.root, "update.php")),
        ("DOCUMENT_ROOT", site.root.to_string_lossy().into_owned()),
        ("QUERY_STRING", "a=b&sn=00-90-33".to_string()),
        (
            "REQUEST_URI",
            "/update/update.php?a=b&sn=00-90-33".to_string(),
        ),
        ("REMOTE_ADDR", "127.0.0.1".to_string()),
        ("SERVER_ADDR", "127.0.0.1".to_string()),
        ("SERVER_PORT", site.port.to_string()),
        ("SERVER_NAME", "updates.example".to_string()),
        ("HTTP_HOST", format!("updates.example:{}", site.port)),
        ("HTTP_USER_AGENT", "ip232".to_string()),
        ("SERVER_PROTOCOL", "HTTP/1.1".to_string()),
        ("REQUEST_SCHEME", "http".to_string()),
        ("GATEWAY_INTERFACE", "CGI/1.1".to_string()),
    ];
    for (name, value) in expect {
        assert_eq!(vars.get(name), Some(&value), "{name}");
    }
    assert!(vars["SERVER_SOFTWARE"].starts_with("update-server/"));
    assert!(vars.contains_key("REMOTE_PORT"));
    assert!(!vars.contains_key("HTTP_PROXY"), "httpoxy");
}

#[test]
fn the_admin_page_and_migrate_script_map_to_their_files() {
    let site = start();
    let mut client = Client::connect(site.port);
    let admin = client.get("/admin/admin.php?mode=status").vars();
    assert_eq!(
        admin["SCRIPT_FILENAME"],
        path_var(&site.root, "admin/admin.php")
    );
    assert_eq!(admin["SCRIPT_NAME"], "/admin/admin.php");
    let migrate = client.get("/x/update-migrate.php").vars();
    assert_eq!(
        migrate["SCRIPT_FILENAME"],
        path_var(&site.root, "update-migrate.php")
    );
    assert_eq!(migrate["QUERY_STRING"], "");
}

#[test]
fn a_put_body_arrives() {
    let site = start();
    let mut client = Client::connect(site.port);
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let head = format!(
        "PUT /update.php?mode=backup&sn=00-90-33 HTTP/1.1\r\nHost: h\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    client.send(head.as_bytes());
    let interim = client.read(true);
    assert_eq!(interim.status, 100);
    client.send(&body);
    let reply = client.read(false);
    assert_eq!(reply.status, 200);
    let vars = reply.vars();
    assert_eq!(vars["REQUEST_METHOD"], "PUT");
    assert_eq!(vars["CONTENT_LENGTH"], body.len().to_string());
    assert_eq!(vars["CONTENT_TYPE"], "application/octet-stream");
    assert_eq!(reply.echoed_body(), &body[..]);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let site = start();
    let mut client = Client::connect(site.port);
    for n in 0..3 {
        let reply = client.get(&format!("/update.php?n={n}"));
        assert_eq!(reply.vars()["QUERY_STRING"], format!("n={n}"));
        assert_eq!(reply.header("Connection"), None);
    }
    // Two pipelined requests, the second asking to close.
    client.send(b"GET /update.php?p=1 HTTP/1.1\r\nHost: h\r\n\r\nGET /update.php?p=2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    assert_eq!(client.read(false).vars()["QUERY_STRING"], "p=1");
    let last = client.read(false);
    assert_eq!(last.vars()["QUERY_STRING"], "p=2");
    assert_eq!(last.header("Connection"), Some("close"));
    assert!(client.closed());
}

#[test]
fn firmware_is_served_from_fw() {
    let site = start();
    let mut client = Client::connect(site.port);
    let reply = client.get("/fw/130178/ip232.bin");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, firmware());
    assert_eq!(
        reply.header("Content-Type"),
        Some("application/octet-stream")
    );
    assert!(reply
        .header("Last-Modified")
        .is_some_and(|v| v.ends_with(" GMT")));
    // Under an install prefix, as the default fwstorage URL `fw/{build}/` produces.
    assert_eq!(
        client.get("/mtls/update/fw/130178/ip232.bin").body,
        firmware()
    );
    client.send(b"HEAD /fw/130178/ip232.bin HTTP/1.1\r\nHost: h\r\n\r\n");
    let head = client.read(true);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Content-Length"), Some("70000"));
    // The connection is still in step after HEAD (no body was sent).
    assert_eq!(
        client.get("/update.php?after=head").vars()["QUERY_STRING"],
        "after=head"
    );
}

#[test]
fn a_firmware_download_resumes_with_a_range() {
    let site = start();
    let mut client = Client::connect(site.port);
    let ranged = |client: &mut Client, range: &str| {
        client.send(format!("GET /fw/130178/ip232.bin?SW=1 HTTP/1.1\r\nHost: h\r\nRange: {range}\r\n\r\n").as_bytes());
        client.read(false)
    };
    let part = ranged(&mut client, "bytes=100-199");
    assert_eq!(part.status, 206);
    assert_eq!(part.body, firmware()[100..200]);
    assert_eq!(part.header("Content-Range"), Some("bytes 100-199/70000"));
    assert_eq!(part.header("Content-Length"), Some("100"));
    let rest = ranged(&mut client, "bytes=69000-");
    assert_eq!((rest.status, rest.body.len()), (206, 1000));
    assert_eq!(rest.body, firmware()[69_000..]);
    let beyond = ranged(&mut client, "bytes=70000-");
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("Content-Range"), Some("bytes */70000"));
    // several ranges are not worth it: the whole file
    let whole = ranged(&mut client, "bytes=0-1,5-6");
    assert_eq!((whole.status, whole.body.len()), (200, 70_000));
    assert_eq!(whole.header("Accept-Ranges"), Some("bytes"));
}

#[test]
fn http_1_0_is_answered_with_a_length_and_kept_alive_only_when_asked() {
    let site = start();
    let mut client = Client::connect(site.port);
    client.send(b"GET /update.php?n=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let first = client.read(false);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("Content-Length"), Some(first.body.len().to_string().as_str()));
    assert_eq!(first.header("Connection"), Some("keep-alive"));
    assert_eq!(first.vars()["SERVER_PROTOCOL"], "HTTP/1.0");
    client.send(b"GET /fw/130178/ip232.bin HTTP/1.0\r\n\r\n");
    let second = client.read(false);
    assert_eq!((second.status, second.header("Content-Length")), (200, Some("70000")));
    assert_eq!(second.body, firmware());
    assert_eq!(second.header("Transfer-Encoding"), None);
    assert!(client.closed(), "HTTP/1.0 without keep-alive ends the connection");
}

#[test]
fn a_client_that_stops_sending_after_its_request_still_gets_the_answer() {
    let site = start();
    let mut client = Client::connect(site.port);
    client.send(b"GET /update.php?half=closed HTTP/1.1\r\nHost: h\r\n\r\n");
    client.reader.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
    let reply = client.read(false);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.vars()["QUERY_STRING"], "half=closed");
    assert!(client.closed());
}

#[test]
fn paths_out_of_fw_are_refused() {
    let site = start();
    let mut client = Client::connect(site.port);
    for target in [
        "/fw/../config.xml",
        "/fw/%2e%2e/config.xml",
        "/fw/%2E%2E%2Fconfig.xml",
        "/fw/130178/..%2F..%2Fconfig.xml",
        "/fw/escape.xml",
        "/fw/%00ip232.bin",
        "/fw/130178/",
        "/fw/130178",
    ] {
        let reply = client.get(target);
        assert!(
            matches!(reply.status, 400 | 404),
            "{target}: {}",
            reply.status
        );
        assert!(!reply.text().contains("secret"), "{target}");
    }
}

#[test]
fn unknown_paths_are_404_and_root_redirects() {
    let site = start();
    let mut client = Client::connect(site.port);
    for target in [
        "/config.xml",
        "/status/00-90-33.xml",
        "/index.html",
        "/update.php/extra",
    ] {
        assert_eq!(client.get(target).status, 404, "{target}");
    }
    let home = client.get("/");
    assert_eq!(home.status, 302);
    assert_eq!(home.header("Location"), Some("/admin/admin.php"));
    client.send(b"POST /fw/130178/ip232.bin HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
    let post = client.read(false);
    assert_eq!(post.status, 405);
    assert_eq!(post.header("Allow"), Some("GET, HEAD"));
}

#[test]
fn an_oversized_header_block_gets_431() {
    let site = start();
    let mut client = Client::connect(site.port);
    let big = "a".repeat(20 * 1024);
    client.send(format!("GET /update.php HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let reply = client.read(false);
    assert_eq!(reply.status, 431);
    assert_eq!(reply.header("Connection"), Some("close"));
    assert!(client.closed());
}

#[test]
fn a_chunked_body_arrives_like_one_with_a_length() {
    let site = start();
    let mut client = Client::connect(site.port);
    client.send(b"PUT /update.php?mode=backup HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n");
    let reply = client.read(false);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echoed_body(), b"hello, world");
    assert_eq!(reply.vars()["CONTENT_LENGTH"], "12");
    assert_eq!(reply.header("Transfer-Encoding"), None, "answers are never chunked");
    // the connection is still in step
    assert_eq!(client.get("/update.php?after=chunked").vars()["QUERY_STRING"], "after=chunked");
    // a chunked body over the limit of what the request takes (64 KiB where no script reads
    // it) is refused
    let mut over = Client::connect(site.port);
    over.send(b"PUT /fw/130178/ip232.bin HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = vec![b'x'; 0x4000];
    for _ in 0..5 {
        over.send(format!("{:x}\r\n", chunk.len()).as_bytes());
        over.send(&chunk);
        over.send(b"\r\n");
    }
    let reply = over.read(false);
    assert_eq!(reply.status, 413);
    assert!(reply.text().starts_with("# request body too large"), "{}", reply.text());
    assert_eq!(reply.header("Connection"), Some("close"));
}

#[test]
fn bodies_too_large_or_malformed_are_refused() {
    let site = start();
    let mut huge = Client::connect(site.port);
    huge.send(b"PUT /update.php HTTP/1.1\r\nHost: h\r\nContent-Length: 999999999999\r\n\r\nstart of a body");
    let reply = huge.read(false);
    assert_eq!(reply.status, 413);
    assert!(reply.text().starts_with("# request body too large"));
    let mut garbage = Client::connect(site.port);
    garbage.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello?\r\n\r\n");
    assert_eq!(garbage.read(false).status, 400);
    // After all that the server still answers.
    assert_eq!(Client::connect(site.port).get("/update.php").status, 200);
}
