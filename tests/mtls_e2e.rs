//! MTLS end to end under a real Debian lighttpd (mod_openssl): device identity by client
//! certificate (SPEC §3.16 `forcetrust`), for polls and for device data (backups, queries).
//!
//! One lighttpd on 127.0.0.1 listens on three ports: plain HTTP, HTTPS (server certificate
//! only) and MTLS (`ssl.verifyclient.activate`/`enforce`/`exportcert`, `depth = 2`). It spawns
//! our binary through mod_fastcgi `bin-path`. A test PKI is generated with the `openssl` CLI:
//!
//! * the device CA, CN "innovaphone Device Certification Authority" (in lighttpd's ca-file and
//!   in the default `customcerts/@CAname`), issuing the server certificate and the client
//!   certificates of device A (CN=IP232-3e-0c-57, sn 00-90-33-3e-0c-57) and device B
//!   (CN=IP232-11-22-33, sn 00-90-33-11-22-33);
//! * a second CA that lighttpd trusts too but that is not in `CAname`, issuing a certificate
//!   with device A's CN: lighttpd lets it in and exports no issuer variable, so refusing it
//!   proves the issuer is read from the exported certificate (`SSL_CLIENT_CERT`);
//! * a foreign CA that lighttpd does not trust at all, issuing another certificate with device
//!   A's CN: its handshake fails.
//!
//! curl talks TLS (`--cacert`, `--cert`, `--key`). Nothing but 127.0.0.1 is contacted; the
//! temporary directory holds the PKI, the configuration, the logs and the install root, and
//! lighttpd with its backends is stopped when a test ends (support's guard).
//!
//! Missing lighttpd, mod_openssl, openssl or curl fail the tests (tools/test installs them).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;
use tempfile::TempDir;

const PREFIX: &str = "/update";
const MOD_OPENSSL: &str = "/usr/lib/lighttpd/mod_openssl.so";
const DEVICE_CA_CN: &str = "innovaphone Device Certification Authority";
const OTHER_TRUSTED_CA_CN: &str = "Example Trusted Test CA";
const FOREIGN_CA_CN: &str = "Foreign Test CA";

/// A device of the tests: serial, hwid and the line only its own snippet file holds.
#[derive(Clone, Copy)]
struct Device {
    sn: &'static str,
    hwid: &'static str,
    secret: &'static str,
}

const A: Device = Device { sn: "00-90-33-3e-0c-57", hwid: "IP232-3e-0c-57", secret: "config add CMD0 /name device-a-secret" };
const B: Device = Device { sn: "00-90-33-11-22-33", hwid: "IP232-11-22-33", secret: "config add CMD0 /name device-b-secret" };
/// A device that never polled: no state file.
const C: Device = Device { sn: "00-90-33-44-55-66", hwid: "IP232-44-55-66", secret: "config add CMD0 /name device-c-secret" };
/// The SPA504G of the thread, with a certificate of the device CA naming it.
const SPA_MAC: &str = "58bfea1104e6";
const SPA_SERIAL: &str = "CCQ16380FYH";
const SPA_AGENT: &str = "Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)";
const SPA_STATE: &str = "status/58-bf-ea-11-04-e6.xml";
const SPA_LINE: &str = "<Station_Name>spa-lobby</Station_Name>";

/// The line of the snippet every device gets.
const COMMON_LINE: &str = "config add CMD0 /location all-default-snippet";

impl Device {
    fn poll_query(&self) -> String {
        format!("type=IP232&sn={}&hwid={}&ip=172.16.4.57&polling=0&phase=update", self.sn, self.hwid)
    }

    fn snippet_file(&self) -> String {
        format!("scripts/update-all-{}.txt", self.sn.replace('-', "_"))
    }

    fn state_file(&self) -> String {
        format!("status/{}.xml", self.sn)
    }
}

/// The client certificates of the test PKI.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// No client certificate at all.
    None,
    /// Device A's certificate from the device CA.
    A,
    /// Device B's certificate from the device CA.
    B,
    /// Device A's CN from a CA lighttpd trusts that is not in `customcerts/@CAname`.
    AOtherTrustedCa,
    /// Device A's CN from a CA lighttpd does not trust.
    AForeignCa,
    /// The SPA504G's own certificate from the device CA: `S=` its MAC, `L=` its serial.
    Spa,
    /// Another SPA's certificate from the device CA.
    OtherSpa,
    /// A generic SPA certificate (`S=ciscogeneric`, `L=ciscogeneric`), as units before 2.0.x
    /// carry.
    GenericSpa,
}

impl Client {
    fn files(self) -> Option<&'static str> {
        match self {
            Client::None => None,
            Client::A => Some("client-a"),
            Client::B => Some("client-b"),
            Client::AOtherTrustedCa => Some("client-a-other"),
            Client::AForeignCa => Some("client-a-foreign"),
            Client::Spa => Some("client-spa"),
            Client::OtherSpa => Some("client-spa-other"),
            Client::GenericSpa => Some("client-spa-generic"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Http,
    Https,
    Mtls,
}

/// What curl reported.
#[derive(Debug)]
struct Reply {
    /// curl's exit code (0: an HTTP answer was received).
    exit: i32,
    status: u16,
    body: String,
    stderr: String,
}

impl Reply {
    fn commands(&self) -> Vec<String> {
        commands_of(&self.body)
    }

    fn has_command(&self, line: &str) -> bool {
        self.commands().iter().any(|c| c == line)
    }

    fn snippet_lines(&self) -> Vec<String> {
        self.commands().into_iter().filter(|c| c.starts_with("config add CMD0 /")).collect()
    }
}

fn require_tools() {
    assert!(Path::new(LIGHTTPD).exists(), "{LIGHTTPD} is missing: apt-get install lighttpd (tools/test installs it)");
    assert!(
        Path::new(MOD_OPENSSL).exists(),
        "{MOD_OPENSSL} is missing: apt-get install lighttpd-mod-openssl (tools/test installs it)"
    );
    for tool in ["openssl", "curl"] {
        let found = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
            || Command::new(tool).arg("version").output().is_ok_and(|o| o.status.success());
        assert!(found, "`{tool}` is missing: apt-get install {tool} (tools/test installs it)");
    }
}

/// Runs the openssl CLI in `dir`.
const CLIENT_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";

/// Generates the whole test PKI in `dir`.
fn make_pki(dir: &Path) {
    fs::create_dir_all(dir).expect("pki folder");
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
    // the subject form of SPA client certificates (research notes §4)
    make_leaf(dir, "client-spa", "device-ca", &format!("/OU=SPA504G/L={SPA_SERIAL}/ST={SPA_MAC}"), CLIENT_EXT, 6);
    make_leaf(dir, "client-spa-other", "device-ca", "/OU=SPA-962/L=88012BA01234/ST=000e08abcdef", CLIENT_EXT, 7);
    make_leaf(dir, "client-spa-generic", "device-ca", "/OU=cisco.com/L=ciscogeneric/ST=ciscogeneric", CLIENT_EXT, 8);
    // lighttpd: certificate and key in one file; the CAs it accepts client certificates from
    let server = fs::read_to_string(dir.join("server.pem")).unwrap() + &fs::read_to_string(dir.join("server.key")).unwrap();
    fs::write(dir.join("server-with-key.pem"), server).unwrap();
    let trusted = fs::read_to_string(dir.join("device-ca.pem")).unwrap() + &fs::read_to_string(dir.join("other-ca.pem")).unwrap();
    fs::write(dir.join("trusted-client-cas.pem"), trusted).unwrap();
}

/// A stored `certificates` query answer saying the device's certificate is good (the shape of
/// the conformance case `forcetrust-good-cn`).
fn good_certificate_state(device: Device) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<state seen=\"1600000000\"><device sn=\"{sn}\" type=\"IP232\" hwid=\"{hwid}\"/><queries><certificates seen=\"1600000000\"><info><servercert><certificate subject_cn=\"{hwid}\" issuer_cn=\"{DEVICE_CA_CN}\" not_before=\"2019-01-01T00:00:00Z\" not_after=\"2099-01-01T00:00:00Z\"/></servercert></info></certificates></queries></state>\n",
        sn = device.sn,
        hwid = device.hwid
    )
}

struct Site {
    tmp: TempDir,
    root: PathBuf,
    pki: PathBuf,
    http: u16,
    https: u16,
    mtls: u16,
    server: Lighttpd,
}

impl Site {
    fn start() -> Site {
        require_tools();
        let tmp = tempfile::Builder::new().prefix("update-server-mtls-").tempdir().expect("temp dir");
        let pki = tmp.path().join("pki");
        make_pki(&pki);
        let root = tmp.path().join("root");
        copy_install_tree(&root);
        let (http, https, mtls) = three_ports();

        write_old_file(
            &root,
            "config/user-config.xml",
            &format!(
                r#"<?xml version="1.0" encoding="UTF-8"?>
<config>
    <master info=""/>
    <times forcehttps="true" forcetrust="true" httpsport="{mtls}"/>
    <customcerts dir="certs"/>
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
        for device in [A, B, C] {
            write_old_file(&root, &device.snippet_file(), &format!("{}\r\n", device.secret));
        }
        // fresh state files (an old mtime would have them removed as expired), and a fresh
        // cleanup stamp so that no poll runs the hourly cleanup in the middle of a test
        for device in [A, B] {
            fs::write(root.join(device.state_file()), good_certificate_state(device)).unwrap();
        }
        fs::write(root.join("status/lastcleanup"), "0").unwrap();

        let htdocs = tmp.path().join("htdocs");
        fs::create_dir_all(htdocs.join("env")).unwrap();
        fs::write(htdocs.join("env/dump.cgi"), "printf 'Content-Type: text/plain\\r\\n\\r\\n'\nenv\n").unwrap();
        let error_log = tmp.path().join("lighttpd-error.log");
        let conf = tmp.path().join("lighttpd.conf");
        fs::write(&conf, lighttpd_conf(tmp.path(), &root, &pki, http, https, mtls, &error_log)).unwrap();
        let server = Lighttpd::start(&conf, http, &error_log);
        for port in [https, mtls] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "lighttpd does not listen on {port}:\n{}", server.logs());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Site { tmp, root, pki, http, https, mtls, server }
    }

    /// A request with curl: GET, or PUT of `body`.
    fn request(&self, port: Port, client: Client, query: &str, body: Option<&[u8]>) -> Reply {
        let (scheme, number) = match port {
            Port::Http => ("http", self.http),
            Port::Https => ("https", self.https),
            Port::Mtls => ("https", self.mtls),
        };
        let url = format!("{scheme}://127.0.0.1:{number}{PREFIX}/update.php?{query}");
        self.curl(&url, client, body)
    }

    fn curl(&self, url: &str, client: Client, body: Option<&[u8]>) -> Reply {
        self.curl_as("innovaphone-update/1.0", url, client, body)
    }

    /// An SPA profile request as the phone sends it: its agent, `mac=` from `$MA`.
    fn spa_request(&self, port: Port, client: Client) -> Reply {
        let (scheme, number) = match port {
            Port::Http => ("http", self.http),
            Port::Https => ("https", self.https),
            Port::Mtls => ("https", self.mtls),
        };
        let url = format!("{scheme}://127.0.0.1:{number}{PREFIX}/update.php?mac={}&phase=update", SPA_MAC);
        self.curl_as(SPA_AGENT, &url, client, None)
    }

    fn curl_as(&self, agent: &str, url: &str, client: Client, body: Option<&[u8]>) -> Reply {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out_file = self.tmp.path().join(format!("curl-{n}.out"));
        let mut command = Command::new("curl");
        command
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .args(["-sS", "--noproxy", "*", "--max-time", "30", "-H"])
            .arg(format!("User-Agent: {agent}"))
            .arg("--cacert")
            .arg(self.pki.join("device-ca.pem"))
            .arg("-o")
            .arg(&out_file)
            .args(["-w", "%{http_code}"]);
        if let Some(name) = client.files() {
            command.arg("--cert").arg(self.pki.join(format!("{name}.pem")));
            command.arg("--key").arg(self.pki.join(format!("{name}.key")));
        }
        if let Some(body) = body {
            let body_file = self.tmp.path().join(format!("curl-{n}.body"));
            fs::write(&body_file, body).unwrap();
            command
                .args(["-X", "PUT", "-H", "Content-Type: application/octet-stream", "-H", "Expect:"])
                .arg("--data-binary")
                .arg(format!("@{}", body_file.display()));
        }
        command.arg(url);
        let output = run_with_timeout(command, Duration::from_secs(40));
        let status = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0);
        Reply {
            exit: output.status.code().unwrap_or(-1),
            status,
            body: fs::read_to_string(&out_file).unwrap_or_default(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn poll(&self, port: Port, client: Client, device: Device) -> Reply {
        self.request(port, client, &device.poll_query(), None)
    }

    fn files(&self) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
        snapshot_files(&self.root)
    }

    fn read(&self, rel: &str) -> Option<Vec<u8>> {
        fs::read(self.root.join(rel)).ok()
    }

    #[track_caller]
    fn check(&self, ok: bool, what: &str, reply: &Reply) {
        assert!(
            ok,
            "{what}\n--- curl exit {} status {}\n--- body:\n{}\n--- curl stderr:\n{}\n{}",
            reply.exit,
            reply.status,
            reply.body,
            reply.stderr,
            self.server.logs()
        );
    }
}

/// Three distinct free loopback ports.
fn three_ports() -> (u16, u16, u16) {
    loop {
        let (a, b, c) = (free_port(), free_port(), free_port());
        if a != b && b != c && a != c {
            return (a, b, c);
        }
    }
}

fn lighttpd_conf(tmp: &Path, root: &Path, pki: &Path, http: u16, https: u16, mtls: u16, error_log: &Path) -> String {
    let pemfile = pki.join("server-with-key.pem").display().to_string();
    format!(
        r#"server.document-root = "{htdocs}"
server.bind = "127.0.0.1"
server.port = {http}
server.errorlog = "{error_log}"
server.modules = ( "mod_access", "mod_alias", "mod_fastcgi", "mod_cgi", "mod_openssl" )
mimetype.assign = ( ".txt" => "text/plain", ".xml" => "text/xml" )

$SERVER["socket"] == "127.0.0.1:{https}" {{
    ssl.engine = "enable"
    ssl.pemfile = "{pemfile}"
}}
$SERVER["socket"] == "127.0.0.1:{mtls}" {{
    ssl.engine = "enable"
    ssl.pemfile = "{pemfile}"
    ssl.ca-file = "{client_cas}"
    ssl.verifyclient.activate = "enable"
    ssl.verifyclient.enforce = "enable"
    ssl.verifyclient.exportcert = "enable"
    ssl.verifyclient.depth = 2
}}

{deployment}$HTTP["url"] =~ "^/env/" {{
    cgi.assign = ( ".cgi" => "/bin/sh" )
}}
"#,
        deployment = deployment_block(PREFIX, root, &tmp.join("update-server.sock"), 1, true),
        htdocs = tmp.join("htdocs").display(),
        error_log = error_log.display(),
        client_cas = pki.join("trusted-client-cas.pem").display(),
    )
}

/// The comment that says which forcetrust check refused the request.
fn names_forcetrust(body: &str) -> bool {
    body.lines().any(|l| l.starts_with('#') && l.contains("forcetrust"))
}

// ---------------------------------------------------------------------------------------------

#[test]
fn device_with_its_own_certificate_gets_its_snippets() {
    let site = Site::start();
    let reply = site.poll(Port::Mtls, Client::A, A);
    site.check(reply.exit == 0 && reply.status == 200, "device A's poll over MTLS is answered", &reply);
    site.check(reply.has_command(COMMON_LINE), "device A gets the common snippet", &reply);
    site.check(reply.has_command(A.secret), "device A gets its own snippet", &reply);
    site.check(!reply.has_command(B.secret), "device A gets nothing of device B", &reply);
    site.check(reply.body.contains("forcetrust: client certificate identifies this device"), "the identity check ran", &reply);
    site.check(reply.commands().iter().any(|c| c.starts_with("mod cmd UP1 check ser ")), "a complete script (CHECK set)", &reply);
    // lighttpd exports no issuer variable: the issuer came from SSL_CLIENT_CERT (see
    // lighttpd_exports_the_certificate_but_no_issuer and trusted_ca_that_is_not_in_caname…)
    let state = String::from_utf8(site.read(&A.state_file()).expect("A's state")).unwrap();
    assert!(
        state.contains(&format!("filename=\"{}\"", A.snippet_file())) && state.contains("delivered="),
        "the delivery is recorded in A's state:\n{state}"
    );
    // the backup command points at the MTLS port
    site.check(
        reply.has_command(&format!("mod cmd UP0 scfg https://127.0.0.1:{}{PREFIX}/update.php?mode=backup&hwid=#h&sn=#m", site.mtls)),
        "the backup command names the MTLS URL",
        &reply,
    );
}

#[test]
fn certificate_of_another_device_gets_no_snippet() {
    let site = Site::start();

    // A's certificate, B's serial and hwid
    let reply = site.poll(Port::Mtls, Client::A, B);
    site.check(reply.exit == 0 && reply.status == 200, "the poll is answered (with comments)", &reply);
    site.check(reply.snippet_lines().is_empty(), "A's certificate gets none of B's snippets", &reply);
    site.check(names_forcetrust(&reply.body), "a comment names the forcetrust refusal", &reply);
    site.check(!reply.commands().iter().any(|c| c.starts_with("mod cmd UP1 check ser ")), "no CHECK value", &reply);
    let after = String::from_utf8(site.read(&B.state_file()).expect("B's state")).unwrap();
    assert!(!after.contains("delivered="), "no delivery recorded for B:\n{after}");
    assert!(after.contains(B.hwid), "B's state still names B:\n{after}");
    // B's certificate, A's serial and hwid: the same the other way round
    let reply = site.poll(Port::Mtls, Client::B, A);
    site.check(reply.snippet_lines().is_empty() && names_forcetrust(&reply.body), "B's certificate gets nothing of A", &reply);

    // A's certificate and A's hwid, but B's serial: the hwid does not belong to that serial
    let mixed = format!("type=IP232&sn={}&hwid={}&ip=172.16.4.57&polling=0&phase=update", B.sn, A.hwid);
    let reply = site.request(Port::Mtls, Client::A, &mixed, None);
    site.check(reply.exit == 0 && reply.status == 200, "the poll is answered (with comments)", &reply);
    site.check(reply.snippet_lines().is_empty(), "A's hwid with B's serial gets no snippet", &reply);
    site.check(
        reply.body.contains(&format!("hwid '{}' does not belong to serial '{}'", A.hwid, B.sn)),
        "the refusal says the hwid does not belong to the serial",
        &reply,
    );
    // and the other mix: B's hwid with A's serial, A's certificate (CN = A's hwid ≠ B's hwid,
    // but A's serial without dashes is not the CN either)
    let mixed = format!("type=IP232&sn={}&hwid={}&ip=172.16.4.57&polling=0&phase=update", A.sn, B.hwid);
    let reply = site.request(Port::Mtls, Client::A, &mixed, None);
    site.check(reply.snippet_lines().is_empty() && names_forcetrust(&reply.body), "B's hwid with A's serial gets nothing", &reply);
}

/// Finding 10 of the hardening issue: a certificate of the trusted CA that claims another
/// device must not write what it claims (type, address, log) into that device's row.
#[test]
fn a_refused_poll_cannot_forge_another_devices_state() {
    let site = Site::start();
    let before = site.files();
    let forged = |device: Device| format!("type=EVILTYPE&sn={}&hwid={}&ip=6.6.6.6&polling=0&phase=update", device.sn, device.hwid);

    // A's certificate claiming B; no certificate over plain HTTP claiming B. (A device whose
    // certificate state is still unknown stops at the certificate step before the identity
    // check and is recorded there, as SPEC §3 orders it: the roll-out must work for devices
    // whose certificate is not yet from a CAname CA.)
    for (port, client) in [(Port::Mtls, Client::A), (Port::Http, Client::None)] {
        let reply = site.request(port, client, &forged(B), None);
        site.check(reply.exit == 0 && reply.status == 200, "the refused poll is answered", &reply);
        site.check(reply.snippet_lines().is_empty(), "nothing delivered", &reply);
    }
    assert_eq!(snapshot_diff(&before, &site.files()), Vec::<String>::new(), "no state file written");
    let state = String::from_utf8(site.read(&B.state_file()).unwrap()).unwrap();
    assert!(!state.contains("EVILTYPE") && !state.contains("6.6.6.6"), "B's row is not forged:\n{state}");
    // the refusals are not lost: the server log has them
    let deadline = Instant::now() + Duration::from_secs(5);
    while !site.server.logs().contains(&format!("forcetrust refused a poll for sn={}", B.sn)) {
        assert!(Instant::now() < deadline, "the refusal is logged:\n{}", site.server.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    // the device itself, with its own certificate, is still served and recorded
    let reply = site.poll(Port::Mtls, Client::B, B);
    site.check(reply.has_command(B.secret), "B with its own certificate gets its snippet", &reply);
}

#[test]
fn trusted_ca_that_is_not_in_caname_is_refused() {
    let site = Site::start();
    let before = site.files();
    // lighttpd accepts the certificate (its CA is in ssl.ca-file) and exports no issuer
    // variable: only the exported certificate tells that the issuer is not in CAname
    let reply = site.poll(Port::Mtls, Client::AOtherTrustedCa, A);
    site.check(reply.exit == 0 && reply.status == 200, "the handshake succeeds, the poll is answered", &reply);
    site.check(reply.snippet_lines().is_empty(), "a certificate of an unlisted CA gets no snippet", &reply);
    site.check(
        reply.body.contains(&format!("issuer '{OTHER_TRUSTED_CA_CN}'")),
        "the refusal names the issuer read from SSL_CLIENT_CERT",
        &reply,
    );
    // nor may it store a backup for the device
    let put = site.request(Port::Mtls, Client::AOtherTrustedCa, &format!("mode=backup&hwid={}&sn={}", A.hwid, A.sn), Some(b"config change CMD0 /name X\r\n"));
    site.check((400..500).contains(&put.status), "the backup PUT is refused with a 4xx", &put);
    // SPEC §1: a poll refused by forcetrust leaves even the state untouched
    assert_eq!(snapshot_diff(&before, &site.files()), Vec::<String>::new(), "nothing written");
    assert!(!site.root.join("backup").join(A.hwid).exists(), "no backup folder for A");
}

#[test]
fn foreign_ca_and_missing_certificate_fail_the_handshake() {
    let site = Site::start();
    let before = site.files();
    for client in [Client::AForeignCa, Client::None] {
        let reply = site.poll(Port::Mtls, client, A);
        site.check(reply.exit != 0, &format!("{client:?}: the TLS handshake must fail on the MTLS port"), &reply);
        site.check(!reply.body.contains(COMMON_LINE) && !reply.body.contains(A.secret), "nothing delivered", &reply);
        let put = site.request(Port::Mtls, client, &format!("mode=backup&hwid={}&sn={}", A.hwid, A.sn), Some(b"config change CMD0 /name X\r\n"));
        site.check(put.exit != 0, &format!("{client:?}: the backup PUT cannot connect either"), &put);
    }
    assert_eq!(snapshot_diff(&before, &site.files()), Vec::<String>::new(), "nothing written");
}

#[test]
fn plain_http_and_server_only_https_are_moved_to_the_mtls_port() {
    let site = Site::start();
    let expected_url = format!("config add UP1 /url https%3A%2F%2F127.0.0.1%3A{}%2Fupdate%2Fupdate.php%3F", site.mtls);
    for (port, client) in [(Port::Http, Client::None), (Port::Https, Client::None), (Port::Https, Client::A)] {
        let reply = site.poll(port, client, A);
        let what = format!("{port:?} with {client:?}");
        site.check(reply.exit == 0 && reply.status == 200, &format!("{what}: answered"), &reply);
        site.check(reply.snippet_lines().is_empty(), &format!("{what}: no snippet"), &reply);
        site.check(
            reply.commands().iter().any(|c| c.starts_with(&expected_url)),
            &format!("{what}: the URL is rewritten to the MTLS port ({expected_url}…)"),
            &reply,
        );
        site.check(!reply.commands().iter().any(|c| c.starts_with("mod cmd UP1 check ser ")), &format!("{what}: no CHECK"), &reply);
        if port == Port::Http {
            site.check(
                !reply.commands().iter().any(|c| c.contains("mode=backup")),
                "no backup command over plain HTTP",
                &reply,
            );
        }
    }
}

#[test]
fn backup_put_needs_the_devices_own_certificate() {
    let site = Site::start();
    let query = format!("mode=backup&hwid={}&sn={}", A.hwid, A.sn);
    let config = "config change CMD0 /name Reception\r\nvars create UPDATE/CHECK pb 3f2a\r\nconfig change PHONE /coder G722,20,\r\n";

    // B's certificate for A's serial and hwid: refused, nothing stored
    let before = site.files();
    let reply = site.request(Port::Mtls, Client::B, &query, Some(config.as_bytes()));
    site.check(reply.exit == 0 && (400..500).contains(&reply.status), "B's certificate: 4xx", &reply);
    site.check(names_forcetrust(&reply.body), "the refusal names forcetrust", &reply);
    assert_eq!(snapshot_diff(&before, &site.files()), Vec::<String>::new(), "a refused backup writes nothing");
    // nor a query answer or a variable dump for A
    let reply = site.request(Port::Mtls, Client::B, &format!("mode=query&sn={}&id=admin", A.sn), Some(b"<info name=\"evil\"/>"));
    site.check((400..500).contains(&reply.status), "B's certificate: query PUT for A refused", &reply);
    let reply = site.request(
        Port::Mtls,
        Client::B,
        &format!("mode=vardump&sn={}&var=X509/REQUESTERROR", A.sn),
        Some(b"X509/REQUESTERROR str forged\r\n"),
    );
    site.check((400..500).contains(&reply.status), "B's certificate: vardump for A refused", &reply);
    assert_eq!(snapshot_diff(&before, &site.files()), Vec::<String>::new(), "refused data requests write nothing");

    // A's own certificate: stored
    let reply = site.request(Port::Mtls, Client::A, &query, Some(config.as_bytes()));
    site.check(reply.exit == 0 && reply.status == 200, "A's certificate: stored", &reply);
    let stored = site.read(&format!("backup/{0}/{0}.0.txt", A.hwid)).expect("backup/IP232-3e-0c-57/IP232-3e-0c-57.0.txt");
    assert_eq!(String::from_utf8(stored).unwrap(), "config change CMD0 /name Reception\r\nconfig change PHONE /coder G722,20,");
    let state = String::from_utf8(site.read(&A.state_file()).unwrap()).unwrap();
    assert!(state.contains(" backup=\""), "device/@backup stamped:\n{state}");
    // and A's query answer with A's certificate (no hwid in the query URL: the stored one counts)
    let reply = site.request(Port::Mtls, Client::A, &format!("mode=query&sn={}&id=admin", A.sn), Some(b"<info name=\"Reception\"/>"));
    site.check(reply.status == 200, "A's certificate: query answer stored", &reply);
    let state = String::from_utf8(site.read(&A.state_file()).unwrap()).unwrap();
    assert!(state.contains("<admin seen="), "query stored:\n{state}");

    // over plain HTTP the data requests are not accepted at all
    let before = site.files();
    let reply = site.request(Port::Http, Client::None, &query, Some(b"config change CMD0 /name Plain\r\n"));
    site.check((400..500).contains(&reply.status), "a backup over plain HTTP is refused", &reply);
    assert_eq!(snapshot_diff(&before, &site.files()), Vec::<String>::new(), "nothing written over plain HTTP");
}

#[test]
fn lighttpd_exports_the_certificate_but_no_issuer() {
    let site = Site::start();
    let reply = site.curl(&format!("https://127.0.0.1:{}/env/dump.cgi", site.mtls), Client::A, None);
    site.check(reply.exit == 0 && reply.status == 200, "the environment dump answers", &reply);
    let has = |name: &str| reply.body.lines().any(|l| l.starts_with(&format!("{name}=")));
    site.check(reply.body.contains("SSL_CLIENT_CERT=-----BEGIN CERTIFICATE-----"), "exportcert puts the PEM into SSL_CLIENT_CERT", &reply);
    site.check(reply.body.lines().any(|l| l == format!("SSL_CLIENT_S_DN_CN={}", A.hwid)), "the subject CN", &reply);
    site.check(reply.body.lines().any(|l| l == "SSL_CLIENT_VERIFY=SUCCESS"), "the verification result", &reply);
    site.check(reply.body.lines().any(|l| l.starts_with("SERVER_SOFTWARE=lighttpd/")), "lighttpd names itself", &reply);
    // what the issuer check has to live with (LIGHTTPD.md): no issuer variable at all, so the
    // refusal in trusted_ca_that_is_not_in_caname_is_refused can only come from the certificate
    site.check(!has("SSL_CLIENT_I_DN") && !has("SSL_CLIENT_I_DN_CN"), "lighttpd exports no issuer variable", &reply);
}

/// forcetrust for SPA phones (issue 9 item 5): the phone's own certificate (`S=` its MAC, `L=`
/// its serial, exported by lighttpd) gets its profile; another SPA's certificate, a generic
/// one, an innovaphone certificate, no certificate and plain HTTP get a 403 and write nothing.
#[test]
fn an_spa_phone_is_served_only_with_its_own_certificate() {
    let site = Site::start();
    let before = site.files();
    for (port, client, what) in [
        (Port::Http, Client::None, "plain HTTP"),
        (Port::Https, Client::None, "HTTPS without a client certificate"),
        (Port::Mtls, Client::OtherSpa, "another SPA's certificate"),
        (Port::Mtls, Client::GenericSpa, "a generic SPA certificate"),
        (Port::Mtls, Client::A, "an innovaphone device's certificate"),
    ] {
        let reply = site.spa_request(port, client);
        site.check(reply.exit == 0 && reply.status == 403, &format!("{what}: 403"), &reply);
        site.check(!reply.body.contains(SPA_LINE) && !reply.body.contains("Profile_Rule"), &format!("{what}: no profile"), &reply);
    }
    assert_eq!(snapshot_diff(&before, &site.files()), Vec::<String>::new(), "the refusals wrote nothing");
    site.check(site.server.logs().contains("forcetrust refused"), "the log says why", &Reply { exit: 0, status: 0, body: String::new(), stderr: String::new() });

    let reply = site.spa_request(Port::Mtls, Client::Spa);
    site.check(reply.exit == 0 && reply.status == 200, "the phone's own certificate: 200", &reply);
    site.check(reply.body.starts_with("<flat-profile>") && reply.body.contains(SPA_LINE), "the profile with the snippet", &reply);
    site.check(
        reply.body.contains(&format!("<Profile_Rule>https://127.0.0.1:{}{PREFIX}/update.php?mac=$MA&amp;phase=update</Profile_Rule>", site.mtls)),
        "the profile rule stays on the MTLS URL",
        &reply,
    );
    let state = String::from_utf8(site.read(SPA_STATE).expect("the SPA's state file")).unwrap();
    assert!(state.contains("type=\"SPA504G\"") && state.contains(SPA_SERIAL), "{state}");
}
