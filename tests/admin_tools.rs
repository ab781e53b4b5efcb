//! The admin page's operator tools through the binary run as CGI (issue 11 items 2 and 5): a
//! device's Preview, the same text `update-server preview` prints, with nothing written; the
//! diff of a device's backup to the one before it.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

const HTTPS: (&str, &str) = ("HTTPS", "on");
const SPA_SN: &str = "58-bf-ea-11-04-e6";

fn tree() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("update-server-admin-tools-").tempdir().expect("temporary root");
    copy_install_tree(dir.path());
    write_admin_fixture(dir.path(), ADMIN_PASSWORD);
    write_state(
        dir.path(),
        SPA_SN,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<state seen="1700000000" phase="update" nextphase="">
  <device sn="58-bf-ea-11-04-e6" type="SPA504G" vendor="Linksys" serial="CCQ16380FYH" version="7.3.7" classes="spa504g" ip="172.16.4.80" rp="false" proxy="" phase="update" environments="default" hop="" profile="1700000000"/>
</state>
"#,
    );
    write_old_file(dir.path(), "scripts/update-all-default.xml", "<flat-profile>\n  <Station_Name>lobby</Station_Name>\n</flat-profile>\n");
    dir
}

fn get(root: &Path, query: &str, cookie: &str) -> Answer {
    let ctx = CgiContext { port: 443, ..CgiContext::default() };
    cgi_request(root, &ctx, "GET", "admin/admin.php", query, b"", &[HTTPS, ("HTTP_COOKIE", cookie)])
}

/// A command line as the page shows it, split as a POSIX shell does (bare words, single quotes,
/// backslashes).
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut in_word) = (Vec::new(), String::new(), false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' if in_word => {
                words.push(std::mem::take(&mut word));
                in_word = false;
            }
            ' ' => {}
            '\'' => {
                in_word = true;
                for quoted in chars.by_ref() {
                    if quoted == '\'' {
                        break;
                    }
                    word.push(quoted);
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// What the command line printed on the page prints when run: standard output, then
/// standard error, as a terminal shows them.
fn run_shown_command(command_line: &str) -> String {
    let words = shell_words(command_line);
    assert_eq!(&words[..2], ["update-server", "preview"], "{command_line}");
    let mut command = Command::new(binary());
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).args(&words[1..]);
    let output = run_with_timeout(command, Duration::from_secs(30));
    assert!(output.status.success(), "{command_line}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap() + &String::from_utf8(output.stderr).unwrap()
}

/// The page's transcript and the printed command's output, from a page fetched for `query`:
/// they must be the same text. The answer has times in seconds in it (a snippet's age), so
/// a second that ticks between page and command gets one more try.
fn preview_matches_the_command(root: &Path, cookie: &str, query: &str) -> (Answer, String) {
    let mut last = None;
    for _ in 0..3 {
        let page = get(root, query, cookie);
        assert_eq!(page.status, 200, "{}", page.body);
        let transcript = html_text(element_text(&page.body, "<pre class=\"transcript\">", "</pre>"));
        let command = html_text(element_text(&page.body, "<code class=\"command\">", "</code>"));
        let printed = run_shown_command(&command);
        if printed == transcript {
            return (page, transcript);
        }
        last = Some((transcript, printed));
    }
    let (transcript, printed) = last.unwrap();
    panic!("the page and update-server preview differ\n--- page:\n{transcript}\n--- command:\n{printed}");
}

/// Issue 11 item 2: every row links to its Preview; the page shows, for the poll the state
/// describes, exactly what `update-server preview` prints for the command line it names
/// (innovaphone and SPA), says which values it assumed, writes nothing, and escapes all.
#[test]
fn a_rows_preview_is_the_command_line_preview_and_writes_nothing() {
    let root = tree();
    let root = root.path();
    let cookie = admin_session(root);
    let status = get(root, "mode=status", &cookie);
    for sn in ["00-90-33-3e-0c-57", SPA_SN] {
        assert!(status.body.contains(&format!("<a class=\"act\" href=\"admin.php?mode=preview&amp;sn={sn}\"")), "{sn}: {}", status.body);
    }

    let before = snapshot_files(root);
    let (page, transcript) = preview_matches_the_command(root, &cookie, "mode=preview&sn=00-90-33-3e-0c-57");
    assert_eq!(snapshot_diff(&before, &snapshot_files(root)), Vec::<String>::new(), "the preview wrote something");
    // the answer's URLs are built from the host and path the admin page is reached under;
    // the fixture's CSR makes this poll a certificate step
    assert!(transcript.contains("mod cmd UP0 scfg http://update.example.com/mtls/update/update.php?mode=backup&hwid=#h&sn=#m"), "{transcript}");
    assert!(transcript.contains("certificate cmds need to process"), "{transcript}");
    assert!(transcript.contains("# preview: HTTP 200 - nothing was written; the poll would change:"), "{transcript}");
    assert!(transcript.contains("status/00-90-33-3e-0c-57.xml"), "{transcript}");
    let command = html_text(element_text(&page.body, "<code class=\"command\">", "</code>"));
    for word in ["--sn 00-90-33-3e-0c-57", "--type IP232", "--hwid IP232-3e-0c-57", "--ip 172.16.4.57", "--prot 13r3", "--boot 13r3", "--phase update", "--env default"] {
        assert!(command.contains(word), "{word} in {command}");
    }
    assert!(page.body.contains("<tr class=\"assumed\"><td>polling</td>"), "assumed values are marked: {}", page.body);
    assert!(page.body.contains("CHECK is not recorded"), "{}", page.body);
    // the fixture's device name is `<script>alert(1)</script>`: nowhere unescaped
    assert!(!page.body.contains("<script>alert"), "{}", page.body);

    let (page, transcript) = preview_matches_the_command(root, &cookie, &format!("mode=preview&sn={SPA_SN}"));
    assert!(transcript.starts_with("<flat-profile>") && transcript.contains("<Station_Name>lobby</Station_Name>"), "{transcript}");
    assert!(!page.body.contains("<Station_Name>"), "the profile is escaped: {}", page.body);
    assert!(html_text(&page.body).contains("--user-agent 'Linksys/SPA504G-7.3.7 (58BFEA1104E6)(CCQ16380FYH)'"), "{}", page.body);
    assert_eq!(snapshot_diff(&before, &snapshot_files(root)), Vec::<String>::new(), "the SPA preview wrote something");
}

#[test]
fn a_preview_needs_a_session_a_get_and_a_known_device() {
    let root = tree();
    let root = root.path();
    let cookie = admin_session(root);
    let before = snapshot_files(root);
    let without = get(root, "mode=preview&sn=00-90-33-3e-0c-57", "update_admin=nothing");
    assert!(without.body.contains("name=\"pw\"") && !without.body.contains("transcript"), "the login form: {}", without.body);
    let ctx = CgiContext { port: 443, ..CgiContext::default() };
    let post = cgi_request(root, &ctx, "POST", "admin/admin.php", "mode=preview&sn=00-90-33-3e-0c-57", b"", &[HTTPS, ("HTTP_COOKIE", &cookie)]);
    assert_eq!(post.status, 405, "{}", post.body);
    for (query, says) in [
        ("mode=preview&sn=00-90-33-99-99-99", "Cannot read the state"),
        ("mode=preview&sn=../../etc/passwd", "No device"),
        ("mode=preview&sn=00-90-33-3e-0c-57&phase=%3Cnowhere%3E", "there is no phase '<nowhere>'"),
    ] {
        let answer = get(root, query, &cookie);
        assert_eq!(answer.status, 404, "{query}: {}", answer.body);
        assert!(html_text(&answer.body).contains(says) && !answer.body.contains("<nowhere>"), "{query}: {}", answer.body);
    }
    assert_eq!(snapshot_diff(&before, &snapshot_files(root)), Vec::<String>::new());
}

/// The changed lines of a diff page: (`add` or `del`, the line as shown).
fn changed_lines(html: &str) -> Vec<(String, String)> {
    html.split("<tr class=\"")
        .skip(1)
        .filter_map(|row| {
            let kind = &row[..row.find('"')?];
            let text = element_text(row, "<td class=\"text\">", "</td>");
            (kind == "add" || kind == "del").then(|| (kind.to_string(), html_text(text)))
        })
        .collect()
}

/// Issue 11 item 5: a device's backups in its row link to their diff to the one before (not the
/// oldest); the diff shows exactly the lines that were removed and added, escaped, and a long
/// diff is cut and says so.
#[test]
fn a_backup_diff_shows_exactly_the_removed_and_added_lines() {
    let root = tree();
    let root = root.path();
    let folder = "backup/IP232-3e-0c-57";
    write_old_file(root, &format!("{folder}/IP232-3e-0c-57.0.txt"), "config change CMD0 /name old\r\nconfig add X");
    let common: String = (0..20).map(|i| format!("config add PHONE/USER{i} /h323 user{i}\r\n")).collect();
    write_old_file(root, &format!("{folder}/IP232-3e-0c-57.1.txt"), &format!("{common}config change CMD0 /name old\r\nvars create A pwd <b>x</b>"));
    write_old_file(
        root,
        &format!("{folder}/IP232-3e-0c-57.2.txt"),
        &format!("config add PHONE/NEW /h323 new\r\n{common}config change CMD0 /name \"lobby & hall\"\r\nvars create A pwd <b>x</b>"),
    );
    let cookie = admin_session(root);
    let row = get(root, "mode=status&sn=00-90-33-3e-0c-57", &cookie);
    let link = |n: u64| format!("admin.php?mode=backupdiff&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57&n={n}\"");
    let shown = html_text(&row.body);
    assert!(shown.contains(&link(2)) && shown.contains(&link(1)), "{}", row.body);
    assert!(!shown.contains(&link(0)), "the oldest has nothing to compare with: {}", row.body);

    let before = snapshot_files(root);
    let diff = get(root, "mode=backupdiff&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57&n=2", &cookie);
    assert_eq!(diff.status, 200, "{}", diff.body);
    assert_eq!(
        changed_lines(&diff.body),
        [
            ("add".to_string(), "config add PHONE/NEW /h323 new".to_string()),
            ("del".to_string(), "config change CMD0 /name old".to_string()),
            ("add".to_string(), "config change CMD0 /name \"lobby & hall\"".to_string()),
        ]
    );
    assert!(diff.body.contains("Backup #2 of IP232-3e-0c-57 compared with #1"), "{}", diff.body);
    assert!(diff.body.contains("2 added</span>, <span class=\"del\">1 removed</span> lines."), "{}", diff.body);
    // three lines of context around each change, not the whole file
    assert!(diff.body.contains("/h323 user2<") && !diff.body.contains("/h323 user10<"), "{}", diff.body);
    assert!(!diff.body.contains("<b>x</b>"), "escaped: {}", diff.body);
    assert_eq!(snapshot_diff(&before, &snapshot_files(root)), Vec::<String>::new(), "a diff writes nothing");

    let oldest = get(root, "mode=backupdiff&hwid=IP232-3e-0c-57&n=0", &cookie);
    assert!(oldest.body.contains("the oldest backup kept"), "{}", oldest.body);
    for query in ["mode=backupdiff&hwid=IP232-3e-0c-57&n=7", "mode=backupdiff&hwid=../status&n=1", "mode=backupdiff&hwid=IP232-3e-0c-57"] {
        assert_eq!(get(root, query, &cookie).status, 404, "{query}");
    }

    // a diff longer than the page shows is cut, and says how much is left out
    let old: String = (0..6000).map(|i| format!("config add A{i} old\r\n")).collect();
    let new: String = (0..6000).map(|i| format!("config add A{i} new\r\n")).collect();
    write_old_file(root, &format!("{folder}/IP232-3e-0c-57.3.txt"), &old);
    write_old_file(root, &format!("{folder}/IP232-3e-0c-57.4.txt"), &new);
    let long = get(root, "mode=backupdiff&hwid=IP232-3e-0c-57&n=4", &cookie);
    assert_eq!(changed_lines(&long.body).len(), 5000);
    assert!(long.body.contains("6000 added</span>, <span class=\"del\">6000 removed</span> lines; the diff is cut after 5000 lines: 7000 more changed lines are not shown."), "{}", &long.body[..2000]);
}
