//! HTTPS and MTLS in `serve` (issue 10 item 2): the checks tests/mtls_e2e.rs makes under
//! lighttpd, made against `update-server serve` alone, which listens on plain HTTP, HTTPS
//! (server certificate only) and MTLS (`--client-ca`, client certificate required) at once:
//!
//! * device A's poll with its own certificate (CN=IP232-3e-0c-57, by the device CA named in
//!   `customcerts/@CAname`) gets its snippets; with device B's certificate, or one by a CA that
//!   the listener trusts but that is not in `CAname`, it gets none; without a certificate, or
//!   with one by a CA the listener does not trust, the handshake fails;
//! * plain HTTP and server-only HTTPS are moved to the MTLS port (forcehttps);
//! * what reaches the application: `HTTPS`, `SSL_CLIENT_S_DN_CN`, `SSL_CLIENT_S_DN`,
//!   `SSL_CLIENT_I_DN`, `SSL_CLIENT_VERIFY`, `SSL_CLIENT_CERT`, `SERVER_PORT` (an echo handler
//!   behind `serve::run_listeners`), `SSL_CLIENT_VERIFY=NONE` on an optional listener, and no
//!   TLS below 1.2.
//!
//! A test PKI is generated with the `openssl` CLI as tests/mtls_e2e.rs does; curl talks TLS.
//! Nothing but 127.0.0.1 is contacted.
#![cfg(feature = "tls")]

mod support;

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tempfile::TempDir;
use update_server::cli::{ClientCert, Listen, TlsSettings};
use update_server::http::{serve, Request};

const PREFIX: &str = "/update";
const DEVICE_CA_CN: &str = "Test Device CA";
const OTHER_TRUSTED_CA_CN: &str = "Example Trusted Test CA";
const FOREIGN_CA_CN: &str = "Foreign Test CA";
const COMMON_LINE: &str = "config add CMD0 /location all-default-snippet";

#[derive(Clone, Copy)]
struct Device {
    sn: &'static str,
    hwid: &'static str,
    secret: &'static str,
}

const A: Device = Device { sn: "00-90-33-3e-0c-57", hwid: "IP232-3e-0c-57", secret: "config add CMD0 /name device-a-secret" };
const B: Device = Device { sn: "00-90-33-11-22-33", hwid: "IP232-11-22-33", secret: "config add CMD0 /name device-b-secret" };
const SPA_MAC: &str = "58bfea1104e6";
const SPA_SERIAL: &str = "CCQ16380FYH";
const SPA_LINE: &str = "<Station_Name>spa-lobby</Station_Name>";

impl Device {
    fn poll_query(&self) -> String {
        format!("type=IP232&sn={}&hwid={}&ip=172.16.4.57&polling=0&phase=update", self.sn, self.hwid)
    }

    fn state_file(&self) -> String {
        format!("status/{}.xml", self.sn)
    }
}

// ---- the test PKI ------------------------------------------------------------------------------

const CLIENT_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";

fn make_pki(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    make_ca(dir, "device-ca", DEVICE_CA_CN);
    make_ca(dir, "other-ca", OTHER_TRUSTED_CA_CN);
    make_ca(dir, "foreign-ca", FOREIGN_CA_CN);
    make_leaf(
        dir,
        "server",
        "device-ca",
        "/C=DE/O=Test PKI/CN=localhost",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        1,
    );
    let device_subject = |hwid: &str| format!("/C=DE/O=innovaphone AG/CN={hwid}");
    make_leaf(dir, "client-a", "device-ca", &device_subject(A.hwid), CLIENT_EXT, 2);
    make_leaf(dir, "client-b", "device-ca", &device_subject(B.hwid), CLIENT_EXT, 3);
    make_leaf(dir, "client-a-other", "other-ca", &device_subject(A.hwid), CLIENT_EXT, 4);
    make_leaf(dir, "client-a-foreign", "foreign-ca", &device_subject(A.hwid), CLIENT_EXT, 5);
    make_leaf(dir, "client-spa", "device-ca", &format!("/OU=SPA504G/L={SPA_SERIAL}/ST={SPA_MAC}"), CLIENT_EXT, 6);
    let trusted = fs::read_to_string(dir.join("device-ca.pem")).unwrap() + &fs::read_to_string(dir.join("other-ca.pem")).unwrap();
    fs::write(dir.join("trusted-client-cas.pem"), trusted).unwrap();
}

// ---- curl ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Reply {
    exit: i32,
    status: u16,
    body: String,
    stderr: String,
}

impl Reply {
    fn has_command(&self, line: &str) -> bool {
        commands_of(&self.body).iter().any(|c| c == line)
    }

    fn snippet_lines(&self) -> Vec<String> {
        commands_of(&self.body).into_iter().filter(|c| c.starts_with("config add CMD0 /")).collect()
    }

    /// The variables an echo handler answered with.
    fn var(&self, name: &str) -> Option<String> {
        // the body of a GET is empty: the variables are all before the final blank line (the
        // PEM's own last line break makes another one inside)
        let (vars, _) = self.body.rsplit_once("\n\n")?;
        let prefix = format!("{name}=");
        // a value may span lines (the PEM): up to the next NAME= line
        let mut lines = vars.lines().skip_while(|l| !l.starts_with(&prefix));
        let first = lines.next()?.strip_prefix(&prefix)?.to_string();
        let rest: Vec<&str> = lines.take_while(|l| !l.split_once('=').is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))).collect();
        Some(std::iter::once(first.as_str()).chain(rest).collect::<Vec<_>>().join("\n"))
    }
}

/// A request with curl: GET, or PUT of `body`; `client` names the key pair in `pki`.
fn curl(pki: &Path, url: &str, client: Option<&str>, body: Option<&[u8]>, extra: &[&str]) -> Reply {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_file = pki.join(format!("curl-{n}.out"));
    let mut command = Command::new("curl");
    command
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .args(["-sS", "--noproxy", "*", "--max-time", "20", "-A", "innovaphone-update/1.0", "--cacert"])
        .arg(pki.join("device-ca.pem"))
        .arg("-o")
        .arg(&out_file)
        .args(["-w", "%{http_code}"])
        .args(extra);
    if let Some(name) = client {
        command.arg("--cert").arg(pki.join(format!("{name}.pem")));
        command.arg("--key").arg(pki.join(format!("{name}.key")));
    }
    if let Some(body) = body {
        let body_file = pki.join(format!("curl-{n}.body"));
        fs::write(&body_file, body).unwrap();
        command
            .args(["-X", "PUT", "-H", "Content-Type: application/octet-stream", "-H", "Expect:"])
            .arg("--data-binary")
            .arg(format!("@{}", body_file.display()));
    }
    command.arg(url);
    let output = run_with_timeout(command, Duration::from_secs(30));
    Reply {
        exit: output.status.code().unwrap_or(-1),
        status: String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0),
        body: fs::read_to_string(&out_file).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

// ---- serve with three listeners ----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Http,
    Https,
    Mtls,
}

struct Site {
    _tmp: TempDir,
    root: PathBuf,
    pki: PathBuf,
    http: u16,
    https: u16,
    mtls: u16,
    child: Child,
    log: PathBuf,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn distinct_ports<const N: usize>() -> [u16; N] {
    loop {
        let ports: [u16; N] = std::array::from_fn(|_| free_port());
        if (0..N).all(|i| (0..i).all(|j| ports[i] != ports[j])) {
            return ports;
        }
    }
}

impl Site {
    fn start() -> Site {
        let tmp = tempfile::Builder::new().prefix("update-server-serve-tls-").tempdir().unwrap();
        let pki = tmp.path().join("pki");
        make_pki(&pki);
        let root = tmp.path().join("root");
        copy_install_tree(&root);
        let [http, https, mtls] = distinct_ports();
        write_old_file(
            &root,
            "config/user-config.xml",
            &format!(
                r#"<?xml version="1.0" encoding="UTF-8"?>
<config>
    <master info=""/>
    <times forcehttps="true" forcetrust="true" httpsport="{mtls}"/>
    <customcerts dir="certs" CAname="{DEVICE_CA_CN}"/>
    <status dir="status"/>
    <backup dir="backup" nbackups="3"/>
    <queries>
        <query id="certificates"><applies>*</applies></query>
        <query id="admin"><applies>*</applies></query>
    </queries>
</config>
"#
            ),
        );
        write_old_file(&root, "scripts/update-all-default.txt", &format!("# common snippet\r\n{COMMON_LINE}\r\n"));
        write_old_file(&root, "scripts/update-all-default.xml", &format!("<flat-profile>\n  {SPA_LINE}\n</flat-profile>\n"));
        for device in [A, B] {
            write_old_file(&root, &format!("scripts/update-all-{}.txt", device.sn.replace('-', "_")), &format!("{}\r\n", device.secret));
            // a stored certificates answer saying the device's certificate is good
            fs::write(
                root.join(device.state_file()),
                format!(
                    "<?xml version=\"1.0\"?>\n<state seen=\"1600000000\"><device sn=\"{sn}\" type=\"IP232\" hwid=\"{hwid}\"/><queries><certificates seen=\"1600000000\"><info><servercert><certificate subject_cn=\"{hwid}\" issuer_cn=\"{DEVICE_CA_CN}\" not_before=\"2019-01-01T00:00:00Z\" not_after=\"2099-01-01T00:00:00Z\"/></servercert></info></certificates></queries></state>\n",
                    sn = device.sn,
                    hwid = device.hwid
                ),
            )
            .unwrap();
        }
        fs::write(root.join("status/lastcleanup"), "0").unwrap();
        let log = tmp.path().join("serve.log");
        let (cert, key) = (pki.join("server.pem"), pki.join("server.key"));
        let child = Command::new(binary())
            .arg("serve")
            // the TLS options given once, before the listeners: both TLS listeners use them
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .args(["--listen", &format!("127.0.0.1:{http}")])
            .args(["--listen", &format!("https://127.0.0.1:{https}")])
            .args(["--listen-tls", &format!("127.0.0.1:{mtls}")])
            .arg("--client-ca")
            .arg(pki.join("trusted-client-cas.pem"))
            .arg("--root")
            .arg(&root)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting update-server serve");
        let mut site = Site { _tmp: tmp, root, pki, http, https, mtls, child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while [http, https, mtls].iter().any(|port| TcpStream::connect(("127.0.0.1", *port)).is_err()) {
            if let Ok(Some(status)) = site.child.try_wait() {
                panic!("serve exited ({status}):\n{}", site.logs());
            }
            assert!(Instant::now() < deadline, "serve does not listen:\n{}", site.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        site
    }

    fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn request(&self, port: Port, client: Option<&str>, query: &str, body: Option<&[u8]>) -> Reply {
        let (scheme, number) = match port {
            Port::Http => ("http", self.http),
            Port::Https => ("https", self.https),
            Port::Mtls => ("https", self.mtls),
        };
        curl(&self.pki, &format!("{scheme}://127.0.0.1:{number}{PREFIX}/update.php?{query}"), client, body, &[])
    }

    fn poll(&self, port: Port, client: Option<&str>, device: Device) -> Reply {
        self.request(port, client, &device.poll_query(), None)
    }

    #[track_caller]
    fn check(&self, ok: bool, what: &str, reply: &Reply) {
        assert!(ok, "{what}\n--- curl exit {} status {}\n--- body:\n{}\n--- curl stderr:\n{}\n--- serve log:\n{}", reply.exit, reply.status, reply.body, reply.stderr, self.logs());
    }
}

fn names_forcetrust(body: &str) -> bool {
    body.lines().any(|l| l.starts_with('#') && l.contains("forcetrust"))
}

#[test]
fn forcetrust_through_serve_mtls_as_under_lighttpd() {
    let site = Site::start();

    // device A with its own certificate: its snippets, over the MTLS listener
    let reply = site.poll(Port::Mtls, Some("client-a"), A);
    site.check(reply.exit == 0 && reply.status == 200, "device A's poll over MTLS is answered", &reply);
    site.check(reply.has_command(COMMON_LINE) && reply.has_command(A.secret), "device A gets the common and its own snippet", &reply);
    site.check(!reply.has_command(B.secret), "device A gets nothing of device B", &reply);
    site.check(reply.body.contains("forcetrust: client certificate identifies this device"), "the identity check ran", &reply);
    site.check(commands_of(&reply.body).iter().any(|c| c.starts_with("mod cmd UP1 check ser ")), "a complete script (CHECK)", &reply);
    site.check(
        reply.has_command(&format!("mod cmd UP0 scfg https://127.0.0.1:{}{PREFIX}/update.php?mode=backup&hwid=#h&sn=#m", site.mtls)),
        "the backup command names the MTLS URL",
        &reply,
    );
    let state = fs::read_to_string(site.root.join(A.state_file())).unwrap();
    assert!(state.contains("delivered="), "the delivery is recorded in A's state:\n{state}");

    // A's certificate claiming B, and B's claiming A: nothing
    let before = fs::read_to_string(site.root.join(B.state_file())).unwrap();
    let reply = site.poll(Port::Mtls, Some("client-a"), B);
    site.check(reply.exit == 0 && reply.status == 200, "the poll is answered (with comments)", &reply);
    site.check(reply.snippet_lines().is_empty() && names_forcetrust(&reply.body), "A's certificate gets none of B's snippets", &reply);
    site.check(!commands_of(&reply.body).iter().any(|c| c.starts_with("mod cmd UP1 check ser ")), "no CHECK", &reply);
    assert_eq!(fs::read_to_string(site.root.join(B.state_file())).unwrap(), before, "B's state untouched");
    let reply = site.poll(Port::Mtls, Some("client-b"), A);
    site.check(reply.snippet_lines().is_empty() && names_forcetrust(&reply.body), "B's certificate gets nothing of A", &reply);

    // a CA the listener trusts that is not in CAname: the issuer comes from SSL_CLIENT_I_DN
    let reply = site.poll(Port::Mtls, Some("client-a-other"), A);
    site.check(reply.exit == 0 && reply.status == 200, "the handshake succeeds, the poll is answered", &reply);
    site.check(reply.snippet_lines().is_empty(), "a certificate of an unlisted CA gets no snippet", &reply);
    site.check(reply.body.contains(&format!("issuer '{OTHER_TRUSTED_CA_CN}'")), "the refusal names the issuer", &reply);

    // no certificate, or one by a CA the listener does not trust: no handshake, nothing written
    let files = snapshot_files(&site.root);
    for client in [None, Some("client-a-foreign")] {
        let reply = site.poll(Port::Mtls, client, A);
        site.check(reply.exit != 0, &format!("{client:?}: the TLS handshake fails on the MTLS listener"), &reply);
        site.check(!reply.body.contains(A.secret), "nothing delivered", &reply);
        let put = site.request(Port::Mtls, client, &format!("mode=backup&hwid={}&sn={}", A.hwid, A.sn), Some(b"config change CMD0 /name X\r\n"));
        site.check(put.exit != 0, &format!("{client:?}: the backup PUT cannot connect either"), &put);
    }
    assert_eq!(snapshot_diff(&files, &snapshot_files(&site.root)), Vec::<String>::new(), "nothing written");
    assert!(site.logs().contains("TLS handshake failed"), "the failed handshakes are logged:\n{}", site.logs());

    // plain HTTP and server-only HTTPS (even with A's certificate) are moved to the MTLS port
    let moved = format!("config add UP1 /url https%3A%2F%2F127.0.0.1%3A{}%2Fupdate%2Fupdate.php%3F", site.mtls);
    for (port, client) in [(Port::Http, None), (Port::Https, None), (Port::Https, Some("client-a"))] {
        let reply = site.poll(port, client, A);
        let what = format!("{port:?} with {client:?}");
        site.check(reply.exit == 0 && reply.status == 200, &format!("{what}: answered"), &reply);
        site.check(reply.snippet_lines().is_empty(), &format!("{what}: no snippet"), &reply);
        site.check(commands_of(&reply.body).iter().any(|c| c.starts_with(&moved)), &format!("{what}: moved to the MTLS port ({moved}…)"), &reply);
    }

    // a backup PUT needs the device's own certificate
    let query = format!("mode=backup&hwid={}&sn={}", A.hwid, A.sn);
    let config = "config change CMD0 /name Reception\r\nvars create UPDATE/CHECK pb 3f2a\r\n";
    let reply = site.request(Port::Mtls, Some("client-b"), &query, Some(config.as_bytes()));
    site.check((400..500).contains(&reply.status) && names_forcetrust(&reply.body), "B's certificate: 4xx naming forcetrust", &reply);
    let reply = site.request(Port::Mtls, Some("client-a"), &query, Some(config.as_bytes()));
    site.check(reply.exit == 0 && reply.status == 200, "A's certificate: stored", &reply);
    let stored = fs::read_to_string(site.root.join(format!("backup/{0}/{0}.0.txt", A.hwid))).expect("A's backup");
    assert_eq!(stored, "config change CMD0 /name Reception");
    let reply = site.request(Port::Http, None, &query, Some(b"config change CMD0 /name Plain\r\n"));
    site.check((400..500).contains(&reply.status), "a backup over plain HTTP is refused", &reply);

    // an SPA phone with its own certificate (S= its MAC, L= its serial from SSL_CLIENT_S_DN_*)
    let spa = curl(
        &site.pki,
        &format!("https://127.0.0.1:{}{PREFIX}/update.php?mac={SPA_MAC}&phase=update", site.mtls),
        Some("client-spa"),
        None,
        &["-A", &format!("Cisco/SPA504G-7.6.1 ({})({SPA_SERIAL})", SPA_MAC.to_ascii_uppercase())],
    );
    site.check(spa.status == 200 && spa.body.contains(SPA_LINE), "the SPA's own certificate gets its profile", &spa);
    let other = curl(
        &site.pki,
        &format!("https://127.0.0.1:{}{PREFIX}/update.php?mac={SPA_MAC}&phase=update", site.mtls),
        Some("client-a"),
        None,
        &["-A", &format!("Cisco/SPA504G-7.6.1 ({})({SPA_SERIAL})", SPA_MAC.to_ascii_uppercase())],
    );
    site.check(other.status == 403 && !other.body.contains(SPA_LINE), "an innovaphone certificate gets no SPA profile", &other);
}

// ---- the variables, through an echo handler --------------------------------------------------

/// `serve::run_listeners` with an echo handler: HTTPS with a required and an optional client
/// certificate; the ports.
fn start_echo(pki: &Path) -> (u16, u16) {
    let [required, optional] = distinct_ports();
    let settings = |client_cert| TlsSettings {
        cert: pki.join("server.pem"),
        key: pki.join("server.key"),
        client_ca: Some(pki.join("device-ca.pem")),
        client_cert,
    };
    let listens = vec![
        Listen { address: format!("127.0.0.1:{required}"), tls: Some(settings(ClientCert::Required)) },
        Listen { address: format!("127.0.0.1:{optional}"), tls: Some(settings(ClientCert::Optional)) },
    ];
    let root = pki.to_path_buf();
    std::thread::spawn(move || serve::run_listeners(&listens, root, Arc::new(|request: Request| echo_request(&request)), 2));
    for port in [required, optional] {
        connect_when_up(|| TcpStream::connect(("127.0.0.1", port)));
    }
    (required, optional)
}

#[test]
fn the_client_certificate_reaches_the_application_as_lighttpd_and_apache_name_it() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    make_pki(&pki);
    let (required, optional) = start_echo(&pki);
    let reply = curl(&pki, &format!("https://127.0.0.1:{required}/update.php?x=1"), Some("client-a"), None, &[]);
    assert_eq!((reply.exit, reply.status), (0, 200), "{reply:?}");
    let var = |name: &str| reply.var(name).unwrap_or_else(|| panic!("{name} missing:\n{}", reply.body));
    assert_eq!(var("HTTPS"), "on");
    assert_eq!(var("REQUEST_SCHEME"), "https");
    assert_eq!(var("SERVER_PORT"), required.to_string());
    assert_eq!(var("SSL_CLIENT_VERIFY"), "SUCCESS");
    assert_eq!(var("SSL_CLIENT_S_DN_CN"), A.hwid);
    assert_eq!(var("SSL_CLIENT_S_DN_O"), "innovaphone AG");
    assert_eq!(var("SSL_CLIENT_S_DN"), format!("CN={},O=innovaphone AG,C=DE", A.hwid));
    assert_eq!(var("SSL_CLIENT_I_DN"), format!("CN={DEVICE_CA_CN},O=Test PKI,C=DE"));
    assert_eq!(var("SSL_CLIENT_I_DN_CN"), DEVICE_CA_CN);
    assert_eq!(var("SSL_CLIENT_M_SERIAL"), "02");
    assert!(["TLSv1.2", "TLSv1.3"].contains(&var("SSL_PROTOCOL").as_str()));
    let pem = var("SSL_CLIENT_CERT");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n") && pem.trim_end().ends_with("-----END CERTIFICATE-----"), "{pem}");
    let names = update_server::certs::names_in_certificate(&pem).expect("the exported certificate parses");
    assert_eq!(names.subject_cn.as_deref(), Some(A.hwid));
    assert_eq!(names.issuer_cn.as_deref(), Some(DEVICE_CA_CN));
    let identity = update_server::certs::TlsIdentity::from_vars(|name| reply.var(name));
    assert_eq!(identity.common_name.as_deref(), Some(A.hwid));
    assert_eq!(identity.issuer.as_deref(), Some(DEVICE_CA_CN));
    assert_eq!(identity.verify.as_deref(), Some("SUCCESS"));

    // an SPA certificate's state and locality
    let spa = curl(&pki, &format!("https://127.0.0.1:{required}/update.php"), Some("client-spa"), None, &[]);
    assert_eq!(spa.var("SSL_CLIENT_S_DN_ST").as_deref(), Some(SPA_MAC), "{}", spa.body);
    assert_eq!(spa.var("SSL_CLIENT_S_DN_L").as_deref(), Some(SPA_SERIAL));
    assert_eq!(spa.var("SSL_CLIENT_S_DN").unwrap(), format!("ST={SPA_MAC},L={SPA_SERIAL},OU=SPA504G"));

    // the optional listener serves a client without a certificate, and says so
    let anonymous = curl(&pki, &format!("https://127.0.0.1:{optional}/update.php"), None, None, &[]);
    assert_eq!((anonymous.exit, anonymous.status), (0, 200), "{anonymous:?}");
    assert_eq!(anonymous.var("SSL_CLIENT_VERIFY").as_deref(), Some("NONE"));
    assert_eq!(anonymous.var("SSL_CLIENT_S_DN_CN"), None);
    assert_eq!(anonymous.var("HTTPS").as_deref(), Some("on"));
    // but not one with a certificate of a CA it does not trust
    let foreign = curl(&pki, &format!("https://127.0.0.1:{optional}/update.php"), Some("client-a-foreign"), None, &[]);
    assert_ne!(foreign.exit, 0, "{foreign:?}");
    // and the required one no client without
    let refused = curl(&pki, &format!("https://127.0.0.1:{required}/update.php"), None, None, &[]);
    assert_ne!(refused.exit, 0, "{refused:?}");

    // TLS 1.2 and 1.3 only
    let old = curl(&pki, &format!("https://127.0.0.1:{optional}/update.php"), None, None, &["--tlsv1.0", "--tls-max", "1.1"]);
    assert_ne!(old.exit, 0, "TLS 1.1 refused: {old:?}");
    let tls12 = curl(&pki, &format!("https://127.0.0.1:{optional}/update.php"), None, None, &["--tlsv1.2", "--tls-max", "1.2"]);
    assert_eq!(tls12.var("SSL_PROTOCOL").as_deref(), Some("TLSv1.2"), "{tls12:?}");
}

#[test]
fn a_tls_listener_whose_key_cannot_be_read_stops_serve_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    make_pki(&pki);
    let port = free_port();
    let output = Command::new(binary())
        .args(["serve", "--listen-tls", &format!("127.0.0.1:{port}"), "--tls-cert"])
        .arg(pki.join("server.pem"))
        .arg("--tls-key")
        .arg(pki.join("missing.key"))
        .arg("--root")
        .arg(&pki)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.key"), "{stderr}");
    // a TLS option after a plain listener is a mistake the command line names
    let output = Command::new(binary()).args(["serve", "--listen", "127.0.0.1:1", "--tls-cert", "x.pem"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--listen-tls 127.0.0.1:1"));
}

/// A TLS listener on a taken address names it and the likely cause (issue 11 item 6).
#[test]
fn a_tls_listener_on_a_taken_address_is_named_with_its_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    make_pki(&pki);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = Command::new(binary())
        .args(["serve", "--listen-tls", &address, "--tls-cert"])
        .arg(pki.join("server.pem"))
        .arg("--tls-key")
        .arg(pki.join("server.key"))
        .arg("--root")
        .arg(&pki)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("update-server: cannot listen on {address}: address in use (is another server running?)")), "{stderr}");
}
