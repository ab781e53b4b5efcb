//! The FastCGI responder spoken to by hand over a real socket: requests arrive intact,
//! connections are reused, limits hold, and bad peers do not hurt the next one.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{connect_when_up, echo_request};
use update_server::http::{fastcgi, Request, Response, MAX_BODY_BYTES};

const BEGIN_REQUEST: u8 = 1;
const END_REQUEST: u8 = 3;
const PARAMS: u8 = 4;
const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const GET_VALUES: u8 = 9;
const GET_VALUES_RESULT: u8 = 10;

// ---- a tiny FastCGI client ------------------------------------------------------------------

fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    assert!(content.len() <= 65535);
    let mut out = vec![1, kind];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]); // no padding: the server must not rely on it
    out.extend_from_slice(content);
    out
}

fn stream_records(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = content
        .chunks(65535)
        .flat_map(|c| record(kind, id, c))
        .collect();
    out.extend(record(kind, id, &[]));
    out
}

fn length(out: &mut Vec<u8>, n: usize) {
    if n < 128 {
        out.push(n as u8);
    } else {
        out.extend_from_slice(&(n as u32 | 0x8000_0000).to_be_bytes());
    }
}

fn params(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in pairs {
        length(&mut out, name.len());
        length(&mut out, value.len());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn begin(id: u16, role: u16, keep_conn: bool) -> Vec<u8> {
    let role = role.to_be_bytes();
    record(
        BEGIN_REQUEST,
        id,
        &[role[0], role[1], u8::from(keep_conn), 0, 0, 0, 0, 0],
    )
}

fn request(id: u16, keep_conn: bool, pairs: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = begin(id, 1, keep_conn);
    out.extend(stream_records(PARAMS, id, &params(pairs)));
    out.extend(stream_records(STDIN, id, body));
    out
}

struct Record {
    kind: u8,
    id: u16,
    content: Vec<u8>,
}

fn read_record(stream: &mut impl Read) -> Option<Record> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).ok()?;
    assert_eq!(header[0], 1, "version");
    let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let mut content = vec![0u8; length + usize::from(header[6])];
    stream.read_exact(&mut content).ok()?;
    content.truncate(length);
    Some(Record {
        kind: header[1],
        id: u16::from_be_bytes([header[2], header[3]]),
        content,
    })
}

/// The answer to one request: everything on STDOUT and the END_REQUEST protocol status.
struct Answer {
    stdout: Vec<u8>,
    protocol_status: u8,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn body(&self) -> &[u8] {
        let at = self
            .stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("header end");
        &self.stdout[at + 4..]
    }
}

fn read_answer(stream: &mut impl Read, id: u16) -> Answer {
    let mut stdout = Vec::new();
    loop {
        let record = read_record(stream).expect("a record before END_REQUEST");
        assert_eq!(record.id, id, "record for another request");
        match record.kind {
            STDOUT => stdout.extend(record.content),
            END_REQUEST => {
                return Answer {
                    stdout,
                    protocol_status: record.content[4],
                }
            }
            other => panic!("unexpected record type {other}"),
        }
    }
}

/// Sends one request and reads its answer.
fn ask<S: Read + Write>(
    stream: &mut S,
    id: u16,
    keep_conn: bool,
    pairs: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    stream
        .write_all(&request(id, keep_conn, pairs, body))
        .unwrap();
    read_answer(stream, id)
}

/// Sends a request with only a query string; returns the whole answer as text.
fn ask_query<S: Read + Write>(stream: &mut S, keep_conn: bool, query: &str) -> String {
    ask(stream, 1, keep_conn, &[("QUERY_STRING", query)], b"").text()
}

fn closed(stream: &mut impl Read) -> bool {
    let mut rest = Vec::new();
    matches!(stream.read_to_end(&mut rest), Ok(0))
}

// ---- the server under test ------------------------------------------------------------------

struct Server {
    socket: PathBuf,
    calls: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

/// Counts its calls, panics on request, and otherwise echoes (see [`echo_request`]).
fn echo(calls: Arc<AtomicUsize>) -> impl Fn(Request) -> Response + Send + Sync + 'static {
    move |request: Request| {
        calls.fetch_add(1, Ordering::SeqCst);
        if request.var("QUERY_STRING") == Some("panic") {
            panic!("handler asked to panic");
        }
        echo_request(&request)
    }
}

fn start() -> Server {
    start_with_workers(4)
}

fn start_with_workers(workers: usize) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fcgi.sock");
    let calls = Arc::new(AtomicUsize::new(0));
    let address = format!("unix:{}", socket.display());
    let handler = Arc::new(echo(calls.clone()));
    std::thread::spawn(move || fastcgi::serve_listen(&address, handler, workers));
    connect_when_up(|| UnixStream::connect(&socket));
    Server {
        socket,
        calls,
        _dir: dir,
    }
}

impl Server {
    fn connect(&self) -> UnixStream {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }
}

// ---- tests ----------------------------------------------------------------------------------

#[test]
fn a_get_with_params_reaches_the_application() {
    let server = start();
    let mut stream = server.connect();
    let long_value = "x".repeat(300);
    let pairs = [
        ("REQUEST_METHOD", "GET"),
        (
            "QUERY_STRING",
            "type=IP232&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57",
        ),
        ("SCRIPT_NAME", "/mtls/update/update.php"),
        ("HTTP_X_LONG", long_value.as_str()),
    ];
    let answer = ask(&mut stream, 1, false, &pairs, b"");
    assert_eq!(answer.protocol_status, 0);
    let text = answer.text();
    assert!(text.starts_with("Status: 200 OK\r\n"), "{text}");
    assert!(
        text.contains("\nQUERY_STRING=type=IP232&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57\n"),
        "{text}"
    );
    assert!(text.contains("\nREQUEST_METHOD=GET\n"), "{text}");
    assert!(
        text.contains("\nSCRIPT_NAME=/mtls/update/update.php\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("HTTP_X_LONG={long_value}\n")),
        "{text}"
    );
    assert!(closed(&mut stream), "no KEEP_CONN: the server closes");
}

#[test]
fn a_post_body_arrives_whole() {
    let server = start();
    let mut stream = server.connect();
    let body: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    let size = body.len().to_string();
    let pairs = [
        ("REQUEST_METHOD", "POST"),
        ("CONTENT_LENGTH", size.as_str()),
    ];
    let answer = ask(&mut stream, 1, false, &pairs, &body);
    assert!(answer.text().contains("\nREQUEST_METHOD=POST\n"));
    let echoed = answer.body();
    assert_eq!(&echoed[echoed.len() - body.len()..], &body[..]);
}

#[test]
fn a_kept_connection_serves_requests_one_after_another() {
    let server = start();
    let mut stream = server.connect();
    for (id, query) in [(1, "first"), (1, "second"), (7, "third")] {
        let answer = ask(&mut stream, id, true, &[("QUERY_STRING", query)], b"");
        assert!(answer.text().contains(&format!("QUERY_STRING={query}\n")));
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 3);
}

#[test]
fn a_declared_oversized_body_gets_413_without_the_application() {
    let server = start();
    let mut stream = server.connect();
    let too_long = (MAX_BODY_BYTES + 1).to_string();
    let pairs = [
        ("REQUEST_METHOD", "PUT"),
        ("CONTENT_LENGTH", too_long.as_str()),
    ];
    let answer = ask(&mut stream, 1, true, &pairs, b"some of it");
    assert!(
        answer.text().starts_with("Status: 413"),
        "{}",
        answer.text()
    );
    assert!(answer.body().starts_with(b"# request body too large"));
    assert_eq!(server.calls.load(Ordering::SeqCst), 0);
    // The connection is still good for the next request.
    assert!(ask_query(&mut stream, false, "after").contains("QUERY_STRING=after\n"));
}

#[test]
fn an_oversized_body_stream_gets_413_without_the_application() {
    let server = start();
    let mut stream = server.connect();
    let body = vec![b'b'; MAX_BODY_BYTES + 1];
    let answer = ask(&mut stream, 1, false, &[("REQUEST_METHOD", "PUT")], &body);
    assert!(
        answer.text().starts_with("Status: 413"),
        "{}",
        answer.text()
    );
    assert_eq!(server.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn garbage_closes_the_connection_and_the_next_one_is_served() {
    let server = start();
    let mut garbage = server.connect();
    garbage
        .write_all(b"GET /update.php HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(closed(&mut garbage));
    let mut good = server.connect();
    assert!(ask_query(&mut good, false, "still-here").contains("QUERY_STRING=still-here\n"));
}

#[test]
fn a_peer_that_hangs_up_mid_record_does_not_hurt_the_server() {
    let server = start();
    let mut broken = server.connect();
    let mut partial = request(1, false, &[("QUERY_STRING", "x")], b"");
    partial.truncate(13);
    broken.write_all(&partial).unwrap();
    broken.shutdown(Shutdown::Write).unwrap();
    assert!(closed(&mut broken));
    let mut good = server.connect();
    assert_eq!(ask(&mut good, 1, false, &[], b"").protocol_status, 0);
}

#[test]
fn a_panicking_application_is_answered_500_and_the_server_goes_on() {
    let server = start();
    let mut stream = server.connect();
    assert!(ask_query(&mut stream, true, "panic").starts_with("Status: 500"));
    assert!(ask_query(&mut stream, false, "fine").starts_with("Status: 200"));
}

#[test]
fn management_and_refusals_follow_the_specification() {
    let server = start();
    let mut stream = server.connect();
    // FCGI_GET_VALUES: no multiplexing.
    let asked = params(&[("FCGI_MPXS_CONNS", ""), ("FCGI_MAX_REQS", "")]);
    stream.write_all(&record(GET_VALUES, 0, &asked)).unwrap();
    let values = read_record(&mut stream).unwrap();
    assert_eq!(values.kind, GET_VALUES_RESULT);
    assert!(values.content.windows(16).any(|w| w == b"FCGI_MPXS_CONNS0"));
    // A second request while one is open: FCGI_CANT_MPX_CONN, and the first still completes.
    stream.write_all(&begin(1, 1, true)).unwrap();
    stream.write_all(&begin(2, 1, true)).unwrap();
    let refused = read_record(&mut stream).unwrap();
    assert_eq!(
        (refused.kind, refused.id, refused.content[4]),
        (END_REQUEST, 2, 1)
    );
    stream
        .write_all(&stream_records(
            PARAMS,
            1,
            &params(&[("QUERY_STRING", "one")]),
        ))
        .unwrap();
    stream.write_all(&stream_records(STDIN, 1, b"")).unwrap();
    assert!(read_answer(&mut stream, 1)
        .text()
        .contains("QUERY_STRING=one\n"));
    // An unknown record type: FCGI_UNKNOWN_TYPE.
    stream.write_all(&record(99, 0, b"")).unwrap();
    let unknown = read_record(&mut stream).unwrap();
    assert_eq!((unknown.kind, unknown.content[0]), (11, 99));
    // The Authorizer role: FCGI_UNKNOWN_ROLE, then closed (no KEEP_CONN).
    stream.write_all(&begin(3, 2, false)).unwrap();
    let role = read_record(&mut stream).unwrap();
    assert_eq!((role.kind, role.id, role.content[4]), (END_REQUEST, 3, 3));
    assert!(closed(&mut stream));
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn tcp_listening_works_too() {
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let address = format!("127.0.0.1:{port}");
    let handler = Arc::new(echo(Arc::new(AtomicUsize::new(0))));
    let listen = address.clone();
    std::thread::spawn(move || fastcgi::serve_listen(&listen, handler, 2));
    let mut stream = connect_when_up(|| TcpStream::connect(&address));
    assert!(ask_query(&mut stream, false, "tcp").contains("QUERY_STRING=tcp\n"));
}

#[test]
fn a_stale_socket_file_is_replaced_but_a_regular_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let address = format!("unix:{}", stale.display());
    let handler = Arc::new(echo(Arc::new(AtomicUsize::new(0))));
    std::thread::spawn(move || fastcgi::serve_listen(&address, handler, 1));
    // The stale file accepts no connections until the server has replaced it.
    let mut stream = connect_when_up(|| UnixStream::connect(&stale));
    assert_eq!(ask(&mut stream, 1, false, &[], b"").protocol_status, 0);

    let regular = dir.path().join("config.xml");
    std::fs::write(&regular, "<config/>").unwrap();
    let handler = Arc::new(echo(Arc::new(AtomicUsize::new(0))));
    let error =
        fastcgi::serve_listen(&format!("unix:{}", regular.display()), handler, 1).unwrap_err();
    assert!(error.to_string().contains("not a socket"), "{error}");
    assert_eq!(std::fs::read_to_string(&regular).unwrap(), "<config/>");
}

#[test]
fn idle_kept_alive_connections_do_not_starve_new_ones() {
    // one warm worker, and more idle keep-alive connections than workers
    let server = start_with_workers(1);
    let mut idle = Vec::new();
    for n in 0..3 {
        let mut stream = server.connect();
        assert!(ask_query(&mut stream, true, &format!("kept={n}")).contains(&format!("QUERY_STRING=kept={n}")));
        idle.push(stream); // stays open, idle, holding whatever thread served it
    }
    let mut fresh = server.connect();
    assert!(ask_query(&mut fresh, false, "fresh").contains("QUERY_STRING=fresh"), "a new connection is served");
    // and the kept connections still work
    for (n, stream) in idle.iter_mut().enumerate() {
        assert!(ask_query(stream, true, &format!("again={n}")).contains(&format!("QUERY_STRING=again={n}")));
    }
}
