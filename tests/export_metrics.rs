//! The inventory export and the fleet metrics through the real binary (issue 11, items 3 and
//! 4): `update-server export` on a tree of innovaphone devices, an SPA phone and a broken state
//! file, its records checked against the state files written here (JSON and CSV alike, CSV
//! quoting and the formula guard), and nothing written by it.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};
use support::*;

const SPA_SN: &str = "58-bf-ea-11-04-e6";
const PROXIED_SN: &str = "00-90-33-44-55-66";
const BROKEN_SN: &str = "00-90-33-99-99-99";
/// A name a spreadsheet would run as a formula, with a comma and quotes to be quoted.
const FORMULA_NAME: &str = "=HYPERLINK(\"http://evil/\",\"a,b\")";

fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// The admin fixture (four innovaphone devices, one missing, backups, a CSR, `show` columns),
/// an innovaphone phone behind a proxy with a formula for a name, an SPA phone as its profile
/// writes its state, and a state file that is no XML.
fn fleet(root: &Path) -> u64 {
    copy_install_tree(root);
    write_admin_fixture(root, ADMIN_PASSWORD);
    let now = now();
    let name = FORMULA_NAME.replace('"', "&quot;");
    write_state(
        root,
        PROXIED_SN,
        &format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<state seen="{seen}" phase="staging">
  <device sn="{PROXIED_SN}" type="IP111" classes="phone, ip111" ip="10.9.9.9" rp="false" proxy="192.168.1.1" phase="staging" environments="default, lab" hwid="IP111-44-55-66" realip="172.16.9.66" certstat="Request pending"/>
  <firmware build="134567" requested="134567"/>
  <bootcode build="134500"/>
  <queries><admin seen="{seen}"><info name="{name}"/></admin></queries>
</state>
"#,
            seen = now - 10
        ),
    );
    write_state(
        root,
        SPA_SN,
        &format!(
            r#"<state seen="{seen}" phase="update" nextphase="">
  <device sn="{SPA_SN}" type="SPA504G" vendor="Linksys" serial="CCQ16380FYH" version="7.3.7" classes="spa50x, spa504g" ip="10.0.0.5" rp="false" proxy="" phase="update" environments="default" hop="7.5.2b" profile="{seen}"/>
</state>
"#,
            seen = now - 5
        ),
    );
    write_state(root, BROKEN_SN, "this is no state");
    now
}

fn export(root: &Path, format: &str) -> String {
    let mut command = Command::new(binary());
    command.args(["export", "--format", format, "--root"]).arg(root).env_clear();
    let out = run_with_timeout(command, Duration::from_secs(60));
    assert!(out.status.success(), "export --format {format}: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "update-server export: 7 devices");
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn iso(epoch: u64) -> String {
    update_server::clock::iso8601(epoch as i64)
}

/// The state file's `seen` of a fixture device.
fn seen_of(root: &Path, sn: &str) -> u64 {
    let text = std::fs::read_to_string(root.join("status").join(format!("{sn}.xml"))).unwrap();
    let start = text.find("seen=\"").unwrap() + 6;
    text[start..].split('"').next().unwrap().parse().unwrap()
}

/// A CSV text (RFC 4180) as rows of fields; panics on anything the RFC does not allow.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => {
                quoted = false;
                assert!(matches!(chars.peek(), Some(',') | Some('\r') | None), "a quote inside a field in {text}");
            }
            (true, c) => field.push(c),
            (false, '"') => {
                assert!(field.is_empty(), "a quote inside an unquoted field: {field}");
                quoted = true;
            }
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {
                assert_eq!(chars.next(), Some('\n'), "lines end in CRLF");
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, '\n') => panic!("a bare LF ends a line"),
            (false, c) => field.push(c),
        }
    }
    assert!(!quoted && field.is_empty() && row.is_empty(), "the text ends with a line end");
    rows
}

#[test]
fn export_writes_one_record_per_device_in_json_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let now = fleet(&root);
    let before = snapshot_files(&root);

    let json: Value = serde_json::from_str(&export(&root, "json")).expect("the JSON export parses");
    let records = json.as_array().expect("an array");
    let serials: Vec<&str> = records.iter().map(|r| r["serial"].as_str().unwrap()).collect();
    let mut expected_serials: Vec<&str> = FIXTURE_SERIALS.iter().copied().chain([PROXIED_SN, SPA_SN, BROKEN_SN]).collect();
    expected_serials.sort();
    assert_eq!(serials, expected_serials, "every state file, in serial order");
    let keys: Vec<Vec<&str>> = records.iter().map(|r| r.as_object().unwrap().keys().map(String::as_str).collect()).collect();
    assert!(keys.windows(2).all(|w| w[0] == w[1]), "every record has the same keys: {keys:?}");
    let by_sn = |sn: &str| records.iter().find(|r| r["serial"] == sn).unwrap();

    // the fixture's devices, field by field against the state files support::write_admin_fixture wrote
    for (sn, device_type, ip, name, missing) in [
        ("00-90-33-00-00-01", "IP112", "172.16.5.9", "Alice phone", false),
        ("00-90-33-11-22-33", "IP222", "172.16.4.33", "Lobby", true),
        ("00-90-33-3e-0c-57", "IP232", "172.16.4.57", "<script>alert(1)</script>", false),
        ("00-90-33-aa-bb-cc", "IP1202", "10.1.2.3", "Gateway Berlin", false),
    ] {
        let r = by_sn(sn);
        let seen = iso(seen_of(&root, sn));
        assert_eq!(r["kind"], "innovaphone", "{sn}");
        assert_eq!(r["broken"], Value::Null, "{sn}");
        assert_eq!(r["hwid"], format!("{device_type}-{}", &sn[9..]), "{sn}");
        assert_eq!((r["type"].as_str(), r["name"].as_str(), r["address"].as_str(), r["ip"].as_str()), (Some(device_type), Some(name), Some(ip), Some(ip)), "{sn}");
        assert_eq!((r["phase"].as_str(), r["environments"].as_str(), r["proxy"].as_str()), (Some("update"), Some("default"), Some("")), "{sn}");
        assert!(r["classes"].as_str().unwrap().ends_with(&device_type.to_ascii_lowercase()), "{sn}");
        assert_eq!((r["firmware"].as_str(), r["firmware_requested"].as_str(), r["bootcode"].as_str()), (Some("13r3"), Some("13r3"), Some("13r3")));
        assert_eq!((&r["last_seen"], &r["last_backup"]), (&Value::from(seen.clone()), &Value::from(seen)), "{sn}");
        assert_eq!(r["missing"], missing, "{sn}: status/@missing is 3600 in the fixture");
        assert_eq!(r["certificate"], "OK", "{sn}");
        for spa_only in ["mac", "vendor", "spa_serial", "spa_version", "spa_hop_sent", "spa_last_profile"] {
            assert_eq!(r[spa_only], Value::Null, "{sn} {spa_only}");
        }
    }
    assert_eq!(by_sn("00-90-33-3e-0c-57")["certificate_note"], "CSR waiting for signature");
    assert_eq!(by_sn("00-90-33-00-00-01")["certificate_note"], "");
    // the `show` columns: a value where the query answered, null where it did not
    let show = &by_sn("00-90-33-00-00-01")["show"]["registration"];
    assert_eq!(show["State: User/Number"], "up: alice/101");
    assert!(show["Broken"].as_str().is_some_and(|e| !e.is_empty()), "the broken expression's error: {show}");
    assert_eq!(by_sn("00-90-33-11-22-33")["show"]["registration"]["State: User/Number"], Value::Null);

    let proxied = by_sn(PROXIED_SN);
    assert_eq!((proxied["address"].as_str(), proxied["ip"].as_str(), proxied["proxy"].as_str()), (Some("172.16.9.66"), Some("10.9.9.9"), Some("192.168.1.1")));
    assert_eq!((proxied["phase"].as_str(), proxied["environments"].as_str()), (Some("staging"), Some("default, lab")));
    assert_eq!((proxied["name"].as_str(), proxied["certificate"].as_str()), (Some(FORMULA_NAME), Some("Request pending")));
    assert_eq!((proxied["last_seen"].as_str(), proxied["last_backup"].clone()), (Some(iso(now - 10).as_str()), Value::Null));
    assert_eq!(proxied["firmware"], "134567");

    let spa = by_sn(SPA_SN);
    assert_eq!((spa["kind"].as_str(), spa["type"].as_str(), spa["mac"].as_str(), spa["vendor"].as_str()), (Some("spa"), Some("SPA504G"), Some("58BFEA1104E6"), Some("Linksys")));
    assert_eq!((spa["spa_serial"].as_str(), spa["spa_version"].as_str(), spa["spa_hop_sent"].as_str()), (Some("CCQ16380FYH"), Some("7.3.7"), Some("7.5.2b")));
    assert_eq!((spa["last_seen"].as_str(), spa["spa_last_profile"].as_str()), (Some(iso(now - 5).as_str()), Some(iso(now - 5).as_str())));
    assert_eq!((spa["address"].as_str(), spa["missing"].as_bool()), (Some("10.0.0.5"), Some(false)));
    assert_eq!(spa["next_hop"], "no path", "the fixture configures no upgrade path");
    assert_eq!(spa["certificate"], Value::Null, "SPA phones take no part in the certificate roll-out");

    let broken = by_sn(BROKEN_SN);
    assert!(broken["broken"].as_str().is_some_and(|b| b.starts_with("cannot read state")), "{broken}");
    assert_eq!((&broken["type"], &broken["last_seen"], &broken["missing"]), (&Value::Null, &Value::Null, &Value::Null));

    // CSV: a header row, then the same values in the same order, with the formula guarded
    let csv = parse_csv(&export(&root, "csv"));
    let header = &csv[0];
    assert_eq!(header[..3], ["serial", "broken", "kind"]);
    assert_eq!(header[header.len() - 2..], ["show:registration/State: User/Number", "show:registration/Broken"]);
    assert_eq!(csv.len(), 1 + records.len());
    for (row, record) in csv[1..].iter().zip(records) {
        assert_eq!(row.len(), header.len(), "{row:?}");
        for (key, field) in header.iter().zip(row) {
            let value = match key.strip_prefix("show:") {
                Some(column) => {
                    let (query, title) = column.split_once('/').unwrap();
                    record["show"][query][title].clone()
                }
                None => record[key.as_str()].clone(),
            };
            let expected = match value {
                Value::Null => String::new(),
                Value::String(text) if text.starts_with(['=', '+', '-', '@']) => format!("'{text}"),
                Value::String(text) => text,
                other => other.to_string(),
            };
            assert_eq!(field, &expected, "{} {key}", record["serial"]);
        }
    }
    let name_column = header.iter().position(|k| k == "name").unwrap();
    let proxied_row = csv.iter().find(|r| r[0] == PROXIED_SN).unwrap();
    assert_eq!(proxied_row[name_column], format!("'{FORMULA_NAME}"), "the formula is text");

    assert_eq!(snapshot_diff(&before, &snapshot_files(&root)), Vec::<String>::new(), "export writes nothing");
}

#[test]
fn export_refuses_without_a_format_or_state_tracking() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    copy_install_tree(&root);
    write_old_file(&root, "config/user-config.xml", "<config><master info=\"\"/></config>\n");
    for (args, message) in [
        (&["export"][..], "export needs --format"),
        (&["export", "--format", "xml"], "--format takes json or csv"),
        (&["export", "--format", "csv"], "device state tracking is off"),
    ] {
        let mut command = Command::new(binary());
        command.args(args).arg("--root").arg(&root).env_clear();
        let out = run_with_timeout(command, Duration::from_secs(30));
        assert!(!out.status.success() && out.stdout.is_empty(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(message), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// `update-server serve` on a loopback port over `root`; killed on drop.
struct Serve {
    child: std::process::Child,
    port: u16,
}

impl Serve {
    fn start(root: &Path) -> Serve {
        let port = free_port();
        let child = Command::new(binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--root"])
            .arg(root)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting update-server serve");
        connect_when_up(|| std::net::TcpStream::connect(("127.0.0.1", port)));
        Serve { child, port }
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut all = vec![("Host", "127.0.0.1")];
        all.extend_from_slice(headers);
        http_request(self.port, "GET", path, &all, b"")
    }

    /// Logs in as the admin fixture's admin; the `Cookie` header of the session.
    fn login(&self) -> String {
        let body = format!("user=admin&pw={ADMIN_PASSWORD}");
        let answer = http_request(
            self.port,
            "POST",
            "/admin/admin.php",
            &[("Host", "127.0.0.1"), ("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        );
        assert_eq!(answer.status, 303, "login: {}", answer.body);
        let cookie = answer.header("set-cookie").expect("a session cookie");
        cookie.split(';').next().unwrap().to_string()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_admin_page_offers_the_export_as_downloads_to_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fleet(&root);
    let server = Serve::start(&root);
    // without a session: the login form, no records
    let anonymous = server.get("/admin/admin.php?mode=export&format=csv", &[]);
    assert!(anonymous.body.contains("name=\"pw\"") && !anonymous.body.contains(PROXIED_SN), "{}", anonymous.body);
    assert!(anonymous.header("content-disposition").is_none());

    let cookie = server.login();
    let page = server.get("/admin/admin.php?mode=status", &[("Cookie", &cookie)]);
    for link in ["href=\"admin.php?mode=export&amp;format=csv\"", "href=\"admin.php?mode=export&amp;format=json\""] {
        assert!(page.body.contains(link), "{link} on the status page");
    }
    for format in ["csv", "json"] {
        let answer = server.get(&format!("/admin/admin.php?mode=export&format={format}"), &[("Cookie", &cookie)]);
        assert_eq!(answer.status, 200, "{}", answer.body);
        let disposition = answer.header("content-disposition").unwrap_or("");
        assert!(disposition.starts_with("attachment; filename=\"update-server-devices-") && disposition.ends_with(&format!(".{format}\"")), "{disposition}");
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        // the same bytes as the command line's export
        assert_eq!(answer.body, export(&root, format), "{format}");
    }
    let csv = server.get("/admin/admin.php?mode=export&format=csv", &[("Cookie", &cookie)]);
    assert!(csv.header("content-type").is_some_and(|t| t.starts_with("text/csv")));
    let bad = server.get("/admin/admin.php?mode=export&format=xlsx", &[("Cookie", &cookie)]);
    assert_eq!(bad.status, 400);
}

const TOKEN: &str = "metrics-token-0123456789abcdef";

/// The fleet with `status/@metricstoken`, and one present device whose newest backup is two
/// hours old (stale: the fixture's status/@missing is 3600).
fn metrics_fleet(root: &Path) -> u64 {
    let now = fleet(root);
    let user = admin_user_config("admin", ADMIN_PASSWORD)
        .replace("<status dir=\"status\" missing=\"3600\" refresh=\"0\"/>", &format!("<status dir=\"status\" missing=\"3600\" refresh=\"0\" metricstoken=\"{TOKEN}\"/>"));
    assert!(user.contains(TOKEN));
    write_old_file(root, "config/user-config.xml", &user);
    let gateway = root.join("status/00-90-33-aa-bb-cc.xml");
    let state = std::fs::read_to_string(&gateway).unwrap();
    let seen = seen_of(root, "00-90-33-aa-bb-cc");
    std::fs::write(&gateway, state.replace(&format!("backup=\"{seen}\""), &format!("backup=\"{}\"", now - 7200))).unwrap();
    now
}

/// The samples of an exposition: `name{labels}` → value.
fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {l}"));
            (series.to_string(), value.parse().unwrap_or_else(|_| panic!("a number: {l}")))
        })
        .collect()
}

#[test]
fn metrics_through_serve_count_the_fleet_and_this_process_requests() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    metrics_fleet(&root);
    let server = Serve::start(&root);
    let metrics = "/admin/admin.php?mode=metrics";

    // no session and no token, a wrong token, another scheme: the same 401, nothing about the fleet
    let refused: Vec<Answer> = [None, Some("Bearer wrong-token-0123456789abcdef"), Some(&*format!("Basic {TOKEN}"))]
        .into_iter()
        .map(|auth| server.get(metrics, &auth.map(|a| vec![("Authorization", a)]).unwrap_or_default()))
        .collect();
    for answer in &refused {
        assert_eq!(answer.status, 401, "{}", answer.body);
        assert_eq!(answer.header("www-authenticate"), Some("Bearer realm=\"update-server metrics\""));
        assert_eq!(answer.body, refused[0].body, "a wrong token is told what a missing one is");
        assert!(!answer.body.contains("update_server_"));
    }

    let bearer = format!("Bearer {TOKEN}");
    let answer = server.get(metrics, &[("Authorization", &bearer)]);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(answer.body.contains("# HELP update_server_devices_by_type ") && answer.body.contains("# TYPE update_server_request_duration_seconds histogram\n"));
    let first = samples(&answer.body);
    let expected = [
        ("update_server_devices", 7.0),
        ("update_server_devices_broken", 1.0),
        ("update_server_devices_missing", 1.0),
        ("update_server_devices_by_type{type=\"IP112\"}", 1.0),
        ("update_server_devices_by_type{type=\"IP222\"}", 1.0),
        ("update_server_devices_by_type{type=\"IP232\"}", 1.0),
        ("update_server_devices_by_type{type=\"IP1202\"}", 1.0),
        ("update_server_devices_by_type{type=\"IP111\"}", 1.0),
        ("update_server_devices_by_type{type=\"SPA504G\"}", 1.0),
        ("update_server_devices_by_phase{phase=\"update\"}", 5.0),
        ("update_server_devices_by_phase{phase=\"staging\"}", 1.0),
        ("update_server_devices_by_firmware{firmware=\"13r3\"}", 4.0),
        ("update_server_devices_by_firmware{firmware=\"134567\"}", 1.0),
        ("update_server_devices_by_firmware{firmware=\"7.3.7\"}", 1.0),
        ("update_server_devices_by_certificate{state=\"OK\"}", 4.0),
        ("update_server_devices_by_certificate{state=\"Request pending\"}", 1.0),
        // the phone behind the proxy has no backup; the gateway's is two hours old
        ("update_server_devices_backup_stale{reason=\"none\"}", 1.0),
        ("update_server_devices_backup_stale{reason=\"old\"}", 1.0),
        ("update_server_backup_stale_after_seconds", 3600.0),
        ("update_server_polls_total", 0.0),
        ("update_server_poll_answers_total", 0.0),
        ("update_server_poll_refusals_total", 0.0),
        ("update_server_request_duration_seconds_count{script=\"update\"}", 0.0),
    ];
    for (series, value) in expected {
        assert_eq!(first.get(series), Some(&value), "{series} in\n{}", answer.body);
    }
    for family in ["update_server_devices_by_type", "update_server_devices_by_phase", "update_server_devices_by_firmware"] {
        let total: f64 = first.iter().filter(|(k, _)| k.starts_with(&format!("{family}{{"))).map(|(_, v)| v).sum();
        assert_eq!(total, 6.0, "{family}: every readable device once");
    }
    // the three refused scrapes are counted (the one being answered is not yet)
    assert_eq!(first.get("update_server_request_duration_seconds_count{script=\"admin\"}"), Some(&3.0));

    // two polls answered, one refused (an invalid serial), one backup upload that is no poll
    for query in [DEVICE_QUERY, DEVICE_QUERY, "type=IP232&sn=not-a-serial&hwid=x"] {
        server.get(&format!("/update.php?{query}"), &[("User-Agent", "innovaphone-update/1.0")]);
    }
    server.get("/update.php?mode=backup&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57", &[]);
    let after = samples(&server.get(metrics, &[("Authorization", &bearer)]).body);
    assert_eq!(after.get("update_server_polls_total"), Some(&3.0));
    assert_eq!(after.get("update_server_poll_answers_total"), Some(&2.0));
    assert_eq!(after.get("update_server_poll_refusals_total"), Some(&1.0));
    assert_eq!(after.get("update_server_request_duration_seconds_count{script=\"update\"}"), Some(&4.0));
    assert_eq!(after.get("update_server_request_duration_seconds_bucket{script=\"update\",le=\"+Inf\"}"), Some(&4.0));
    let buckets: Vec<f64> = after.iter().filter(|(k, _)| k.starts_with("update_server_request_duration_seconds_bucket{script=\"update\"")).map(|(_, v)| *v).collect();
    assert!(buckets.iter().all(|n| *n <= 4.0), "{buckets:?}");
    assert!(after["update_server_request_duration_seconds_sum{script=\"update\"}"] > 0.0);
    assert_eq!(after.get("update_server_devices"), Some(&7.0), "a poll of a known device adds none");

    // an admin session opens the metrics as well, without the token
    let cookie = server.login();
    let with_session = server.get(metrics, &[("Cookie", &cookie)]);
    assert_eq!(with_session.status, 200);
    assert_eq!(samples(&with_session.body).get("update_server_devices_by_type{type=\"SPA504G\"}"), Some(&1.0));
}

#[test]
fn check_knows_the_metrics_token_and_warns_of_a_short_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    copy_install_tree(&root);
    let check = |token: &str| {
        write_old_file(&root, "config/user-config.xml", &format!("<config>\n  <master info=\"\"/>\n  <status dir=\"status\" metricstoken=\"{token}\"/>\n</config>\n"));
        let mut command = Command::new(binary());
        command.args(["check", "--root"]).arg(&root).env_clear();
        let out = run_with_timeout(command, Duration::from_secs(30));
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, findings) = check(TOKEN);
    assert!(ok && !findings.contains("metricstoken") && !findings.contains("metrics token"), "{findings}");
    let (ok, findings) = check("s3cret");
    assert!(ok, "a short token is a warning: {findings}");
    assert!(findings.contains("user-config.xml:3:") && findings.contains("warning: status/@metricstoken: a metrics token of 6 characters is easy to guess"), "{findings}");
    assert!(!findings.contains("s3cret"), "the token is never repeated: {findings}");
    let (ok, findings) = check("two words");
    assert!(!ok && findings.contains("error: status/@metricstoken: the metrics token holds characters"), "{findings}");
}

/// curl over HTTPS to lighttpd with `headers`: status code and body.
fn curl(port: u16, url: &str, headers: &[&str]) -> (u16, String) {
    let args: Vec<&str> = headers.iter().flat_map(|h| ["-H", h]).chain([url]).collect();
    curl_site(port, &args)
}

#[test]
fn metrics_behind_lighttpd_get_the_token_and_keep_counting_in_the_fastcgi_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    metrics_fleet(&root);
    let pem = self_signed_pem(tmp.path());
    let port = free_port();
    let conf = tmp.path().join("lighttpd.conf");
    // one backend: its counters are the server's
    std::fs::write(&conf, https_lighttpd_conf(port, tmp.path(), &root, &pem, "/update", 1)).unwrap();
    let server = Lighttpd::start(&conf, port, &tmp.path().join("lighttpd-error.log"));
    let base = format!("https://update.example.com:{port}/update");
    let metrics = format!("{base}/admin/admin.php?mode=metrics");
    let bearer = format!("Authorization: Bearer {TOKEN}");

    let (code, body) = curl(port, &metrics, &["Authorization: Bearer wrong"]);
    assert_eq!(code, 401, "{body}\n{}", server.logs());
    for _ in 0..2 {
        let (code, body) = curl(port, &format!("{base}/update.php?{DEVICE_QUERY}"), &[]);
        assert_eq!(code, 200, "{body}");
    }
    let (code, body) = curl(port, &metrics, &[&bearer]);
    assert_eq!(code, 200, "lighttpd hands the Authorization header on: {body}\n{}", server.logs());
    let first = samples(&body);
    assert_eq!(first.get("update_server_devices_by_type{type=\"SPA504G\"}"), Some(&1.0));
    assert_eq!(first.get("update_server_polls_total"), Some(&2.0), "{body}");
    assert_eq!(first.get("update_server_request_duration_seconds_count{script=\"admin\"}"), Some(&1.0), "the refused scrape");
    let (_, body) = curl(port, &metrics, &[&bearer]);
    let second = samples(&body);
    assert_eq!(second.get("update_server_request_duration_seconds_count{script=\"admin\"}"), Some(&2.0), "the same process counts on");
    assert_eq!(second.get("update_server_process_start_time_seconds"), first.get("update_server_process_start_time_seconds"));
}

#[test]
fn under_cgi_the_token_needs_https_and_the_counters_are_the_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    metrics_fleet(&root);
    let ctx = CgiContext { server_software: "lighttpd/1.4.69".into(), remote_addr: "172.16.0.5".into(), ..CgiContext::default() };
    let bearer = format!("Bearer {TOKEN}");
    let poll = cgi_get(&root, &ctx, "update.php", DEVICE_QUERY);
    assert_eq!(poll.status, 200);
    // plain HTTP from another machine: a token would travel in the clear
    let plain = cgi_request(&root, &ctx, "GET", "admin/admin.php", "mode=metrics", b"", &[("HTTP_AUTHORIZATION", &bearer)]);
    assert_eq!(plain.status, 403, "{}", plain.body);
    assert!(!plain.body.contains("update_server_"));
    let https = cgi_request(&root, &ctx, "GET", "admin/admin.php", "mode=metrics", b"", &[("HTTP_AUTHORIZATION", &bearer), ("HTTPS", "on")]);
    assert_eq!(https.status, 200, "{}", https.body);
    let counted = samples(&https.body);
    assert_eq!(counted.get("update_server_devices"), Some(&7.0), "the fleet is right under CGI too");
    assert_eq!(counted.get("update_server_polls_total"), Some(&0.0), "the poll was another process");
    assert!(https.body.contains("under CGI this is always that one request"), "HELP says so");
}
