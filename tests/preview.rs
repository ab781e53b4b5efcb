//! `update-server preview` through the binary (issue 11 item 2): the answer it prints is, byte
//! for byte, the one the next real poll gets, and it leaves the install tree as it was —
//! for an innovaphone phone (first contact with snippets and a firmware hop of its upgrade
//! path, then a steady poll with CHECK) and for an SPA phone (its profile and firmware hop).

mod support;

use std::path::Path;
use std::process::Command;
use support::*;
use tempfile::TempDir;

const CONFIG: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<config>
  <master info="none" firmware="134567" bootcode="none"/>
  <fwstorage url="fw/{build}/{filename}"/>
  <status dir="status"/>
  <upgrades>
    <path applies="phone"><via build="131504"/></path>
    <path models="SPA504G" version="7.6.1" file="fw/cisco/spa50x-30x-7-6-1.bin">
      <via version="7.5.2b" file="fw/cisco/spa50x-30x-7-5-2b.bin"/>
    </path>
  </upgrades>
</config>
"#;

const URL: &str = "http://update.example.com/mtls/update/update.php";
const SPA_AGENT: &str = "Linksys/SPA504G-7.3.7 (58BFEA1104E6)(CCQ16380FYH)";

fn tree() -> TempDir {
    let dir = tempfile::Builder::new().prefix("update-server-preview-").tempdir().expect("temp dir");
    copy_install_tree(dir.path());
    write_old_file(dir.path(), "config/user-config.xml", CONFIG);
    write_old_file(dir.path(), "scripts/update-all-default.txt", "config add CMD0 /location lobby\r\n");
    write_old_file(dir.path(), "scripts/update-all-default.xml", "<flat-profile>\n  <Station_Name>lobby</Station_Name>\n</flat-profile>\n");
    dir
}

/// Runs `update-server preview` on `root`: (standard output, standard error).
fn preview(root: &Path, query: &str, agent: Option<&str>) -> (String, String) {
    let mut command = Command::new(binary());
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).args([
        "preview",
        "--root",
        root.to_str().unwrap(),
        "--url",
        URL,
        "--query",
        query,
        "--remote-addr",
        "172.16.4.57",
    ]);
    if let Some(agent) = agent {
        command.args(["--user-agent", agent]);
    }
    let output = command.output().expect("running the binary");
    assert!(output.status.success(), "preview failed: {}", String::from_utf8_lossy(&output.stderr));
    (String::from_utf8(output.stdout).unwrap(), String::from_utf8(output.stderr).unwrap())
}

/// The real request, as CGI under the same URL.
fn poll(root: &Path, query: &str, agent: Option<&str>) -> Answer {
    let agent_env: Vec<(&str, &str)> = agent.map(|a| ("HTTP_USER_AGENT", a)).into_iter().collect();
    cgi_request(root, &CgiContext::default(), "GET", "update.php", query, b"", &agent_env)
}

/// Previews, checks that nothing changed, then polls for real: the two answers must be the same
/// bytes. Returns the answer and what the preview said it would change.
///
/// The answer states ages in seconds ("newest script … 196333056s old"), so a preview and a
/// poll on either side of a second boundary differ legitimately. Each attempt therefore runs
/// on a copy of the tree and counts only when both ran within one second of the clock; the
/// copy that counted then becomes the tree, so the caller goes on from the real poll's state.
fn preview_then_poll(root: &Path, query: &str, agent: Option<&str>) -> (String, String) {
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let scratch = tempfile::Builder::new().prefix("update-server-preview-try-").tempdir().expect("temp dir");
        copy_tree(root, scratch.path());
        let before = snapshot_files(scratch.path());
        let started = update_server::clock::now();
        let (previewed, changes) = preview(scratch.path(), query, agent);
        assert_eq!(snapshot_diff(&before, &snapshot_files(scratch.path())), Vec::<String>::new(), "preview wrote something");
        let real = poll(scratch.path(), query, agent);
        let within_one_second = update_server::clock::now() == started;
        if !within_one_second && attempt < ATTEMPTS {
            continue;
        }
        assert_eq!(previewed, real.body, "preview and the real poll differ\n--- preview stderr:\n{changes}");
        replace_tree(root, scratch.path());
        return (real.body, changes);
    }
    unreachable!("the last attempt asserts")
}

/// `cp -a SRC/. DST`: the copy keeps modification times, which the answers report.
fn copy_tree(src: &Path, dst: &Path) {
    let status = Command::new("cp").arg("-a").arg(src.join(".")).arg(dst).status().expect("cp");
    assert!(status.success(), "cp -a {} {}", src.display(), dst.display());
}

/// Empties `root` and moves every entry of `from` into it (both temporary folders, one file system).
fn replace_tree(root: &Path, from: &Path) {
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::rename(entry.path(), root.join(entry.file_name())).unwrap();
    }
}

#[test]
fn an_innovaphone_preview_is_the_next_poll_and_writes_nothing() {
    let root = tree();
    let query = "type=IP232&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57&ip=172.16.4.57&polling=0&phase=update&PROT=130178";

    // first contact: snippet, the via build of the path, the new state file
    let (answer, changes) = preview_then_poll(root.path(), query, None);
    assert!(answer.contains("config add CMD0 /location lobby"), "{answer}");
    assert!(answer.contains("mod cmd UP0 prot http://update.example.com/mtls/update/fw/131504/ip232.bin ser 131504"), "{answer}");
    assert!(changes.contains("status/00-90-33-3e-0c-57.xml:") && changes.contains("+ ") && changes.contains("via=\"131504\""), "{changes}");
    assert!(root.path().join("status/00-90-33-3e-0c-57.xml").exists(), "the real poll wrote the state");

    // steady: the signature the device got, nothing delivered again
    let check = commands_of(&answer).iter().find_map(|c| c.strip_prefix("mod cmd UP1 check ser ").map(String::from)).expect("CHECK");
    let steady = format!("{query}&CHECK={check}");
    let (answer, changes) = preview_then_poll(root.path(), &steady, None);
    assert!(!answer.contains("/location lobby"), "{answer}");
    assert!(changes.contains("status/00-90-33-3e-0c-57.xml"), "{changes}");

    // a request the server refuses says so, and changes nothing either
    let (answer, changes) = preview_then_poll(root.path(), "type=IP232&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57&ip=172.16.4.57&phase=nowhere", None);
    assert!(answer.contains("nowhere"), "{answer}");
    assert!(changes.contains("nothing was written"), "{changes}");
}

#[test]
fn an_spa_preview_is_the_next_profile_and_writes_nothing() {
    let root = tree();
    let (profile, changes) = preview_then_poll(root.path(), "", Some(SPA_AGENT));
    assert!(profile.starts_with("<flat-profile>") && profile.contains("<Station_Name>lobby</Station_Name>"), "{profile}");
    assert!(profile.contains("<Upgrade_Rule>http://update.example.com/mtls/update/fw/cisco/spa50x-30x-7-5-2b.bin</Upgrade_Rule>"), "{profile}");
    assert!(changes.contains("status/58-bf-ea-11-04-e6.xml:") && changes.contains("type=\"SPA504G\""), "{changes}");
    // again, now that the state exists
    let (second, _) = preview_then_poll(root.path(), "", Some(SPA_AGENT));
    assert_eq!(second, profile);
}
