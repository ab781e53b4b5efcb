//! Which device a request speaks for, through the real binary in CGI mode: an innovaphone
//! hwid is bound to the serial it ends in (a request naming another device's hwid touches
//! nothing), and every spelling of one serial reaches the same state file, status row,
//! snippets and certificate files.

mod support;

use std::fs;
use std::path::Path;
use support::*;
use tempfile::TempDir;

/// The device whose backups hostile requests aim at.
const SN: &str = "00-90-33-3e-0c-57";
const HWID: &str = "IP232-3e-0c-57";
/// The serial the attacker claims (SPEC: any serial passes validation).
const FORGED_SN: &str = "00-90-33-66-66-66";

/// Backups kept without a minimum age (the finding's set-up), queries, state and certificates.
const DATA_CONFIG: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<config>
  <master info=""/>
  <status dir="status"/>
  <backup dir="backup" nbackups="3" minage="0"/>
  <customcerts dir="certs"/>
  <queries><query id="admin" title="Admin"><cmd>mod cmd CMD0 xml-info</cmd><applies>*</applies></query></queries>
</config>
"#;

fn root_with(user_config: &str) -> TempDir {
    let dir = tempfile::Builder::new().prefix("update-server-identity-").tempdir().expect("temp dir");
    copy_install_tree(dir.path());
    write_old_file(dir.path(), "config/user-config.xml", user_config);
    write_old_file(dir.path(), "scripts/update-all-default.txt", "config add CMD0 /location all-default\r\n");
    dir
}

fn put(root: &Path, query: &str, body: &[u8]) -> Answer {
    cgi_request(root, &CgiContext::default(), "PUT", "update.php", query, body, &[])
}

fn poll(root: &Path, sn: &str, hwid: &str) -> Answer {
    cgi_get(root, &CgiContext::default(), "update.php", &format!("type=IP232&sn={sn}&hwid={hwid}&ip=172.16.4.57&polling=0&phase=update"))
}

fn backups_of(root: &Path, hwid: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(root.join("backup").join(hwid))
        .map(|entries| entries.flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).expect("reading a backup"))).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn state_files(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root.join("status"))
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".xml")).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Finding 6: ten PUTs naming the real device's hwid with another serial used to rotate its
/// backups away (`minage` 0). Now each is refused with 403 and a comment, and the tree is
/// exactly as before: no backup written or removed, no state file, no folder created.
#[test]
fn a_backup_naming_another_devices_hwid_rotates_nothing() {
    let dir = root_with(DATA_CONFIG);
    let root = dir.path();
    for version in ["a", "b", "c"] {
        let answer = put(root, &format!("mode=backup&hwid={HWID}&sn={SN}"), format!("config change CMD0 /name {version}\r\n").as_bytes());
        assert_eq!(answer.status, 200, "the device's own backup: {}", answer.body);
    }
    let kept = backups_of(root, HWID);
    assert_eq!(kept.len(), 3);
    let before = snapshot_files(root);
    for attempt in 0..10 {
        let answer = put(root, &format!("mode=backup&sn={FORGED_SN}&hwid={HWID}"), format!("config change CMD0 /name evil{attempt}\r\n").as_bytes());
        assert_eq!(answer.status, 403, "{}", answer.body);
        assert!(answer.body.starts_with("# ") && answer.body.contains(&format!("hwid '{HWID}' does not belong to serial '{FORGED_SN}'")), "{}", answer.body);
    }
    assert_eq!(snapshot_diff(&before, &snapshot_files(root)), Vec::<String>::new(), "nothing on disk changed");
    assert_eq!(backups_of(root, HWID), kept);
    assert!(!root.join(format!("status/{FORGED_SN}.xml")).exists());
}

/// Finding 6 for the other data modes: a query answer or a variable dump naming another
/// device's hwid is refused before anything is written, whatever the body.
#[test]
fn query_and_vardump_naming_another_devices_hwid_write_nothing() {
    let dir = root_with(DATA_CONFIG);
    let root = dir.path();
    assert_eq!(put(root, &format!("mode=query&id=admin&sn={SN}&hwid={HWID}"), b"<info name=\"real\"/>").status, 200);
    let before = snapshot_files(root);
    let requests = [
        format!("mode=query&id=admin&sn={FORGED_SN}&hwid={HWID}"),
        format!("mode=query&id=admin&sn={SN}&hwid=IP232-66-66-66"),
        format!("mode=vardump&var=X509/REQUESTERROR&file=certs/{FORGED_SN}-requesterror&sn={FORGED_SN}&hwid={HWID}"),
    ];
    for query in &requests {
        let answer = put(root, query, b"<info name=\"evil\"/>\r\nvars create X509/REQUESTERROR pb 'evil'\r\n");
        assert_eq!(answer.status, 403, "{query}: {}", answer.body);
        assert!(answer.body.starts_with("# ") && answer.body.contains("does not belong to serial"), "{query}: {}", answer.body);
    }
    assert_eq!(snapshot_diff(&before, &snapshot_files(root)), Vec::<String>::new(), "nothing on disk changed");
}

/// Only innovaphone's `<model>-xx-xx-xx` form is bound to the serial: hwids of other forms
/// (soft clients) and the matching innovaphone hwid in any case keep working.
#[test]
fn hwids_of_other_forms_and_matching_ones_are_accepted() {
    let dir = root_with(DATA_CONFIG);
    let root = dir.path();
    for (sn, hwid) in [(FORGED_SN, "swphone"), (FORGED_SN, "myPBX_0123abcd"), (FORGED_SN, "IP232-66-66"), (SN, "IP232-3E-0C-57"), (SN, "IP-DECT-3e-0c-57")] {
        let answer = put(root, &format!("mode=backup&sn={sn}&hwid={hwid}"), format!("config change CMD0 /name {hwid}\r\n").as_bytes());
        assert_eq!(answer.status, 200, "{sn} {hwid}: {}", answer.body);
        assert!(answer.body.contains("backup stored as"), "{sn} {hwid}: {}", answer.body);
        assert_eq!(backups_of(root, hwid).len(), 1, "{hwid}");
    }
}

/// Finding 11a: other spellings of one serial made separate state files and status rows.
/// Now polls, a query answer and a backup in four spellings keep one state file under the
/// canonical name, with the canonical serial inside, and the status page shows one row.
#[test]
fn every_spelling_of_a_serial_reaches_one_state_file_and_row() {
    let dir = tempfile::Builder::new().prefix("update-server-identity-").tempdir().expect("temp dir");
    let root = dir.path();
    copy_install_tree(root);
    write_admin_fixture(root, ADMIN_PASSWORD);
    fs::create_dir_all(root.join("admin")).expect("admin/");
    let canonical = "00-90-33-00-00-ab";
    let hwid = "IP232-00-00-ab";
    for spelling in ["0090330000AB", "00:90:33:00:00:ab", "00-90-33-00-00-AB", canonical] {
        let answer = poll(root, spelling, hwid);
        assert_eq!(answer.status, 200, "{spelling}: {}", answer.body);
    }
    assert_eq!(put(root, &format!("mode=query&id=admin&sn=0090330000Ab&hwid={hwid}"), b"<info name=\"Front desk\"/>").status, 200);
    assert_eq!(put(root, &format!("mode=backup&sn=00:90:33:00:00:AB&hwid={hwid}"), b"config change CMD0 /name x\r\n").status, 200);
    let mut expected: Vec<String> = FIXTURE_SERIALS.iter().map(|sn| format!("{sn}.xml")).collect();
    expected.push(format!("{canonical}.xml"));
    expected.sort();
    assert_eq!(state_files(root), expected, "one state file for the device");
    let state = fs::read_to_string(root.join(format!("status/{canonical}.xml"))).expect("the state file");
    assert!(state.contains(&format!("sn=\"{canonical}\"")) && state.contains("Front desk") && state.contains("backup=\""), "{state}");

    let ctx = CgiContext { port: 443, ..CgiContext::default() };
    let https = [("HTTPS", "on"), ("CONTENT_TYPE", "application/x-www-form-urlencoded")];
    let login = cgi_request(root, &ctx, "POST", "admin/admin.php", "", format!("user=admin&pw={ADMIN_PASSWORD}").as_bytes(), &https);
    assert_eq!(login.status, 303, "{}", login.body);
    let cookie = header_values(&login, "set-cookie").into_iter().find(|c| c.starts_with("update_admin=")).expect("a session").split(';').next().unwrap().to_string();
    let page = cgi_request(root, &ctx, "GET", "admin/admin.php", "mode=status", b"", &[("HTTPS", "on"), ("HTTP_COOKIE", &cookie)]);
    assert_eq!(page.status, 200);
    assert_eq!(page.body.matches(&format!("data-sn=\"{canonical}\"")).count(), 1, "one row");
    assert!(page.body.contains("5 of 5 devices"), "{}", page.body);
}

/// The per-serial snippet (`<phase>-<class>-<serial with _>.txt`) and the CHECK signature
/// are the same for every spelling: the snippet is looked up under the canonical serial.
#[test]
fn every_spelling_gets_the_same_per_serial_snippet_and_check() {
    let dir = root_with("<?xml version=\"1.0\"?>\n<config><master info=\"\"/><status dir=\"status\"/><times check=\"true\"/></config>\n");
    let root = dir.path();
    write_old_file(root, "scripts/update-all-00_90_33_00_00_ab.txt", "config add CMD0 /location desk-ab\r\n");
    let mut signatures = Vec::new();
    for spelling in ["0090330000AB", "00:90:33:00:00:ab", "00-90-33-00-00-ab"] {
        let answer = poll(root, spelling, "IP232-00-00-ab");
        assert!(answer.commands().contains(&"config add CMD0 /location desk-ab".to_string()), "{spelling}: {}", answer.body);
        signatures.push(answer.check_serial().expect("a CHECK"));
    }
    assert!(signatures.windows(2).all(|w| w[0] == w[1]), "{signatures:?}");
    assert_eq!(state_files(root), ["00-90-33-00-00-ab.xml"]);
}
