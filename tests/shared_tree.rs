//! Two FastCGI processes (lighttpd `max-procs 2`) and CGI runs share one install tree: what a
//! process keeps between requests (snippet files and their CHECK signature, the configuration)
//! must follow what the operator and the other processes write. Every change below is followed
//! by enough polls through lighttpd that both backends answer, each after having answered (and
//! cached) the tree as it was.

mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};
use support::*;

const PREFIX: &str = "/update";
const HOST: &str = "update.example.com";
const QUERY: &str = "type=IP232&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57&ip=172.16.4.57&polling=0&phase=update";
/// Polls after a change: lighttpd spreads them over both backends.
const ROUNDS: usize = 8;

/// Writes `rel` with a modification time `offset` seconds after the harness's old one: an
/// edit the caches must notice although it is long settled (not in the last seconds).
fn write_old(root: &Path, rel: &str, contents: &str, offset: u64) {
    let path = root.join(rel);
    fs::write(&path, contents).expect("writing");
    let file = fs::File::options().write(true).open(&path).expect("reopening");
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(OLD_MTIME + offset)).expect("mtime");
}

fn check_of(answer: &Answer) -> Option<String> {
    commands_of(&answer.body).iter().find_map(|c| c.strip_prefix("mod cmd UP1 check ser ").map(str::to_string))
}

#[test]
fn both_backends_and_cgi_see_each_others_writes() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("root");
    copy_install_tree(&root);
    write_basic_setup(&root);
    let docroot = tmp.path().join("htdocs");
    fs::create_dir_all(&docroot).expect("docroot");
    let port = free_port();
    let error_log = tmp.path().join("lighttpd-error.log");
    let conf = tmp.path().join("lighttpd.conf");
    fs::write(
        &conf,
        format!(
            "server.document-root = \"{}\"\nserver.bind = \"127.0.0.1\"\nserver.port = {port}\nserver.errorlog = \"{}\"\n\
             server.modules = ( \"mod_access\", \"mod_alias\", \"mod_fastcgi\" )\n{}",
            docroot.display(),
            error_log.display(),
            deployment_block(PREFIX, &root, &tmp.path().join("update-server.sock"), 2, true)
        ),
    )
    .expect("lighttpd.conf");
    let server = Lighttpd::start(&conf, port, &error_log);
    let poll = |check: &str| http_get(port, &format!("{PREFIX}/update.php?{QUERY}&CHECK={check}"), HOST);
    let cgi = CgiContext { url_prefix: PREFIX.into(), host: HOST.into(), port, ..CgiContext::default() };

    // the tree as it was, answered (and cached) by both backends
    let first = poll("");
    let old_check = check_of(&first).expect("the first poll sets CHECK");
    for _ in 0..ROUNDS {
        let answer = poll(&old_check);
        assert!(answer.body.contains("matches - scripts already executed"), "{}\n{}", answer.body, server.logs());
    }
    assert_eq!(server.backend_pids(&binary()).len(), 2, "two backends");

    // the operator edits the snippet: same size, another (settled) modification time
    let old = fs::read_to_string(root.join("scripts/update-all-default.txt")).expect("snippet");
    let new = old.replace("all-default\nconfig add CMD0 /location all-default", "all-default\nconfig add CMD0 /location all-DEFAULT");
    assert_eq!(old.len(), new.len());
    write_old(&root, "scripts/update-all-default.txt", &new, 10);
    // a long-running process looks at a snippet it has validated at most once a second
    // (FileCache::RECHECK_AFTER, as for the configuration below)
    std::thread::sleep(Duration::from_millis(1100));
    let mut new_check = None;
    for _ in 0..ROUNDS {
        let answer = poll(&old_check);
        assert!(answer.body.contains("/location all-DEFAULT"), "the edit is delivered:\n{}", answer.body);
        let check = check_of(&answer).expect("a new CHECK");
        assert_ne!(check, old_check);
        assert_eq!(new_check.get_or_insert_with(|| check.clone()), &check, "both backends agree");
    }
    let new_check = new_check.expect("polled");
    let by_cgi = cgi_get(&root, &cgi, "update.php", &format!("{QUERY}&CHECK={old_check}"));
    assert_eq!(check_of(&by_cgi).as_deref(), Some(new_check.as_str()), "CGI agrees");

    // the operator turns backups on: both backends ask for one from the next poll on
    write_old(
        &root,
        "config/user-config.xml",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config>\n    <master info=\"\"/>\n    <status dir=\"status\"/>\n    <backup dir=\"backup\" nbackups=\"3\"/>\n</config>\n",
        10,
    );
    // a long-running process looks at its configuration files at most once a second
    // (ConfigCache: a change takes effect at most that much later)
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..ROUNDS {
        let answer = poll(&new_check);
        assert!(answer.body.contains("mod cmd UP0 scfg "), "backups asked for:\n{}", answer.body);
        assert!(answer.body.contains("matches - scripts already executed"), "{}", answer.body);
    }

    // a CGI process writes the device's state (a backup stamps device/@backup); the backends'
    // next polls keep what it wrote
    let stored = cgi_request(
        &root,
        &cgi,
        "PUT",
        "update.php",
        "mode=backup&hwid=IP232-3e-0c-57&sn=00-90-33-3e-0c-57",
        b"config change CMD0 /name desk\r\n",
        &[],
    );
    assert!(stored.body.contains("backup stored"), "{}", stored.body);
    let state_path = root.join("status/00-90-33-3e-0c-57.xml");
    let stamp_of = |text: &str| {
        let start = text.find(" backup=\"").expect("device/@backup") + 9;
        text[start..start + text[start..].find('"').expect("closing quote")].to_string()
    };
    let backup_stamp = stamp_of(&fs::read_to_string(&state_path).expect("state"));
    for _ in 0..ROUNDS {
        let answer = poll(&new_check);
        assert!(answer.body.contains("matches - scripts already executed"), "{}", answer.body);
        let state = fs::read_to_string(&state_path).expect("state");
        assert_eq!(stamp_of(&state), backup_stamp, "the CGI's write survives the backends' polls:\n{state}");
    }
}
