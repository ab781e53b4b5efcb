//! `update-server check` through the binary: the shipped tree is clean, the issue's three typos
//! are errors at their `file:line:column`, every refusal of the server is an error at its
//! place, the cross references and snippet names, and on every conformance case tree errors
//! exactly where the server (and the PHP server before it) refuses the configuration. The
//! long-running server logs the findings once per configuration change.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{binary, copy_install_tree, free_port, http_get, repo_root, run_with_timeout, write_old_file, DEVICE_QUERY};

struct Run {
    code: i32,
    lines: Vec<String>,
    stderr: String,
}

impl Run {
    fn errors(&self) -> Vec<&str> {
        self.lines.iter().map(String::as_str).filter(|l| l.contains(": error: ")).collect()
    }
}

/// `update-server check` run in `root` (file names relative to it).
fn check_in(root: &Path) -> Run {
    let mut command = Command::new(binary());
    command.arg("check").current_dir(root).env_remove("UPDATE_SERVER_ROOT");
    let out = run_with_timeout(command, Duration::from_secs(60));
    Run {
        code: out.status.code().unwrap_or(-1),
        lines: String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A root with the shipped files check reads (config.xml, the sample user file, the DTD and
/// scripts/) and `user` as `config/user-config.xml`.
fn tree(user: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary root");
    for file in ["config.xml", "user-config.xml", "full-config.dtd", "scripts/.keep"] {
        let to = dir.path().join(file);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(repo_root().join(file), &to).unwrap_or_else(|e| panic!("copying {file}: {e}"));
    }
    write_old_file(dir.path(), "config/user-config.xml", user);
    dir
}

const HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config>\n    <master info=\"\"/>\n";

#[test]
fn the_shipped_tree_has_nothing_to_report() {
    let dir = tempfile::tempdir().unwrap();
    copy_install_tree(dir.path());
    let run = check_in(dir.path());
    assert_eq!((run.code, run.lines.clone()), (0, vec![]), "{}", run.stderr);
    assert!(run.stderr.contains("0 errors, 0 warnings"), "{}", run.stderr);
    // --root names the files below it
    let mut command = Command::new(binary());
    command.args(["check", "--root"]).arg(dir.path());
    let out = run_with_timeout(command, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
}

#[test]
fn the_three_typos_of_the_issue_are_errors_at_their_place() {
    let dir = tree(&format!("{HEAD}    <statuss dir=\"status\"/>\n    <backup dri=\"backup\" nbackups=\"ten\"/>\n</config>\n"));
    let run = check_in(dir.path());
    assert_eq!(
        run.lines,
        [
            "config/user-config.xml:4:5: error: unknown element <statuss> (did you mean <status>?): the server ignores it",
            "config/user-config.xml:5:13: error: unknown attribute dri= on <backup> (did you mean dir=?): the server ignores it",
            "config/user-config.xml:5:36: error: backup/@nbackups: 'ten' is not a number (the server reads 0)",
        ]
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("3 errors, 0 warnings"), "{}", run.stderr);
    // the server itself takes this configuration without a word: that is why check exists
    assert!(update_server::config::load(dir.path()).is_ok());
    // with --root the files are named below it
    let mut command = Command::new(binary());
    command.args(["check", "--root"]).arg(dir.path());
    let out = run_with_timeout(command, Duration::from_secs(60));
    let first = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string();
    assert_eq!(first, format!("{}:4:5: error: unknown element <statuss> (did you mean <status>?): the server ignores it", dir.path().join("config/user-config.xml").display()));
}

/// Every refusal of the configuration is one error, with the server's own message, at the
/// element or attribute it is about.
#[test]
fn refusals_are_errors_where_they_are() {
    let upgrades = "    <upgrades>\n        <path applies=\"phone\"><via build=\"131504\"/></path>\n        <path applies=\"gw\"><via build=\"x\"/></path>\n    </upgrades>\n";
    for (body, wanted) in [
        ("    <phases>\n        <phase seq=\"10\"/>\n    </phases>\n", "config/user-config.xml:5:9: error: must have 'id' attribute in 'phase' tag in user-config.xml"),
        (
            "    <classes><class id=\"lobby\"><model>ip232</model></class></classes>\n    <filenames><model prot=\"x.bin\"/></filenames>\n",
            "config/user-config.xml:5:16: error: must have 'id' attribute in 'model' tag in user-config.xml",
        ),
        ("    <phases><phase id=\"all\" seq=\"10\"/></phases>\n", "config/user-config.xml:4:13: error: phase name 'all' not allowed"),
        ("    <environments><environment id=\"a-b\"/></environments>\n", "config/user-config.xml:4:19: error: environment name 'a-b' not allowed (use letters, digits, '_' and '.', no '-')"),
        ("    <classes><class id=\"all\"/></classes>\n", "config/user-config.xml:4:14: error: class name 'all' not allowed"),
        (
            "    <environments>\n        <environment id=\"x\"><implies>nope</implies></environment>\n    </environments>\n",
            "config/user-config.xml:5:29: error: environment 'x' implies undefined environment 'nope'",
        ),
        ("    <times forcetrust=\"true\"/>\n", "config/user-config.xml:4:24: error: customcerts/@CAname must be defined: times/@forcetrust needs certificate handling (customcerts/@dir)"),
        ("    <proxies trusted=\"10.0.0.2, 10.0.0.300\"/>\n", "config/user-config.xml:4:23: error: proxies/@trusted: '10.0.0.300' is not an address"),
        (upgrades, "config/user-config.xml:6:9: error: upgrades/path 2: build 'x' is not a build number"),
        ("    <times grace=\"5\">\n    </time>\n", "config/user-config.xml:5:5: error: malformed XML: expected 'times' tag, not 'time'"),
    ] {
        let dir = tree(&format!("{HEAD}{body}</config>\n"));
        let run = check_in(dir.path());
        let refused = update_server::config::load(dir.path()).expect_err(body);
        let errors = run.errors();
        assert_eq!(errors.len(), 1, "{body}: {:?}", run.lines);
        assert!(errors[0].starts_with(wanted) && errors[0].ends_with(" (the server refuses this configuration)"), "{body}\n  got {}\n  want {wanted}", errors[0]);
        let message = refused.to_string();
        let message = message.strip_prefix("config: ").unwrap_or(&message);
        let message = message.split_once(": malformed XML: ").map_or(message, |(_, m)| m);
        assert!(errors[0].contains(message), "{} does not carry the server's message {message}", errors[0]);
        assert_eq!(run.code, 1);
    }
    let dir = tree("");
    fs::remove_file(dir.path().join("config/user-config.xml")).unwrap();
    fs::remove_file(dir.path().join("user-config.xml")).unwrap();
    let run = check_in(dir.path());
    assert_eq!(run.code, 1);
    assert!(run.lines[0].starts_with("config/user-config.xml:1:1: error: no user file: none of config/user-config-dvl.xml, config/user-config.xml, user-config.xml exists"), "{:?}", run.lines);
}

#[test]
fn cross_references_and_snippets() {
    let dir = tree(
        "<config>
  <master info=\"none\" firmware=\"13r1\" bootcode=\"firmware\"/>
  <phases><phase id=\"staging\" seq=\"200\"/></phases>
  <environments><environment id=\"berlin\"/></environments>
  <queries>
    <query id=\"sip\"><applies>gw</applies></query>
    <query id=\"idle\" title=\"Idle\"/>
    <query id=\"net\"><cmd>mod cmd ETH0 xml-info</cmd><applies env=\"true\">paris</applies><applies>phnoe</applies></query>
  </queries>
  <customcerts dir=\"certs\" CAtype=\"auto\"/>
  <dynamic exec=\"bin/missing\"/>
  <times allow=\"22.00-05.00\" httpsurlmod=\"!mtls(/!!\" check=\"yes\"/>
  <fwstorage url=\"https://fw example.com/{build}/\"/>
</config>
",
    );
    let root = dir.path();
    for (name, content) in [
        ("scripts/update-all-default.txt", "# the phase is gone\n"),
        ("scripts/staging-all-berlin.txt", "# fine\n"),
        ("scripts/staging-Phone-default.txt", "# upper case\n"),
        ("scripts/notes.txt", "# not a snippet\n"),
        ("scripts/readme.md", "ignored: neither .txt nor .xml\n"),
        ("scripts/staging-spa50x-default.xml", "<flat-profile>\n  <Station_Name>B\u{e4}ro</Station_Name>\n</flat-profile>\n"),
        ("scripts/staging-spa50x-berlin.xml", "<flat-profile><Resync_Periodic>3600</Resync_Periodic></flat-profile>\n"),
    ] {
        write_old_file(root, name, content);
    }
    let run = check_in(root);
    let config_xml = fs::read_to_string(root.join("config.xml")).unwrap();
    let update_line = config_xml.lines().position(|l| l.contains("<phase id=\"update\"")).unwrap() + 1;
    let update_column = config_xml.lines().nth(update_line - 1).unwrap().find('<').unwrap() + 1;
    let expected = [
        format!("config.xml:{update_line}:{update_column}: error: phase 'update' has the same seq (200) as phase 'staging': the server keeps only 'staging'"),
        "config/user-config.xml:2:33: error: master/@firmware: '13r1' is neither master, none nor a build number: every poll stops at the firmware step".into(),
        "config/user-config.xml:6:5: error: query 'sip' applies to devices but has no <cmd>: every poll it applies to stops with \"query 'sip' has no cmd\"".into(),
        "config/user-config.xml:7:5: warning: query 'idle' has no <cmd>: it never runs".into(),
        "config/user-config.xml:8:53: warning: applies 'paris' matches no device: the configuration has no environment of that name".into(),
        "config/user-config.xml:8:88: warning: applies 'phnoe' matches no device: the configuration has no class and no model of that name".into(),
        "config/user-config.xml:10:36: error: customcerts/@CAtype 'auto': only 'manual' is supported, every certificate check stops here".into(),
        "config/user-config.xml:11:18: error: dynamic/@exec 'bin/missing' is not an executable file: every poll delivers nothing".into(),
        "config/user-config.xml:12:17: error: times/@allow: '22.00-05.00' is not a list of hours (0-23) or h:mm-h:mm ranges, comma-separated".into(),
        "config/user-config.xml:12:43: error: times/@httpsurlmod: bad pattern in '!mtls(/!!': regex parse error: mtls(/ ^ error: unclosed group: the server leaves HTTPS URLs unchanged".into(),
        "config/user-config.xml:12:61: error: times/@check: 'yes' is read as false: only \"true\" turns it on (write true or false)".into(),
        "config/user-config.xml:13:19: error: fwstorage/@url: 'https://fw example.com/{build}/' is not a URL: invalid international domain name".into(),
        "scripts/notes.txt:1:1: warning: not <phase>-<class>-<environment or serial>.txt: no device is given this file".into(),
        "scripts/staging-Phone-default.txt:1:1: warning: the server looks for lower-case names (staging-phone-default.txt): no device is given this file".into(),
        "scripts/staging-spa50x-default.xml:2:18: error: non-ASCII at byte 32 (SPA profiles are ASCII only): the server refuses the SPA profile of every device that gets this file".into(),
        "scripts/update-all-default.txt:1:1: warning: 'update' is no configured phase (staging): no device is given this file".into(),
    ];
    assert_eq!(run.lines.len(), expected.len(), "{:#?}", run.lines);
    for (got, want) in run.lines.iter().zip(&expected) {
        assert_eq!(got, want);
    }
    assert_eq!(run.code, 1);
    // none of these is a refusal of the configuration: the server loads it
    assert!(update_server::config::load(root).is_ok());
}

#[test]
fn a_shadowed_user_file_is_named_unless_it_is_the_shipped_sample() {
    let dir = tree(&format!("{HEAD}</config>\n"));
    assert_eq!(check_in(dir.path()).lines, Vec::<String>::new(), "the sample user-config.xml beside it is nothing lost");
    write_old_file(dir.path(), "user-config.xml", &format!("{HEAD}    <times grace=\"5\"/>\n</config>\n"));
    write_old_file(dir.path(), "config/user-config-dvl.xml", &format!("{HEAD}</config>\n"));
    let run = check_in(dir.path());
    assert_eq!(
        run.lines,
        [
            "config/user-config.xml:1:1: warning: not read: the server reads config/user-config-dvl.xml, the first of config/user-config-dvl.xml, config/user-config.xml, user-config.xml",
            "user-config.xml:1:1: warning: not read: the server reads config/user-config-dvl.xml, the first of config/user-config-dvl.xml, config/user-config.xml, user-config.xml",
        ]
    );
    assert_eq!(run.code, 0, "warnings alone");
}

// ---- the conformance case trees ----------------------------------------------------------

/// The shared corpus: `UPDATE_SERVER_SHARED`, else `shared/` beside the repository.
fn shared_cases() -> Option<PathBuf> {
    let shared = std::env::var_os("UPDATE_SERVER_SHARED").map(PathBuf::from).unwrap_or_else(|| repo_root().join("..").join("shared"));
    let cases = shared.join("conformance").join("cases");
    cases.is_dir().then_some(cases)
}

/// The root the harness builds for a case: the install tree (of it, what check reads), the
/// case's tree over it with its placeholders filled in, its `remove` list applied.
fn case_root(case: &Path) -> tempfile::TempDir {
    let dir = tree("");
    let root = dir.path();
    fs::remove_file(root.join("config/user-config.xml")).unwrap();
    let overlay = case.join("tree");
    let mut pending = vec![overlay.clone()];
    while let Some(folder) = pending.pop() {
        for entry in fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path.strip_prefix(&overlay).unwrap();
            let content = fs::read(&path).unwrap();
            let content = String::from_utf8_lossy(&content)
                .replace("{MASTER_URL}", "http://127.0.0.1:9")
                .replace("{DEAD_URL}", "http://127.0.0.1:1");
            let to = root.join(relative);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::write(&to, content).unwrap();
        }
    }
    let description: serde_json::Value = serde_json::from_str(&fs::read_to_string(case.join("case.json")).unwrap()).unwrap();
    for removed in description["remove"].as_array().into_iter().flatten() {
        let _ = fs::remove_file(root.join(removed.as_str().unwrap()));
    }
    dir
}

/// Whether the recorded answers (the PHP server's, which the product matches) stop on the
/// configuration: a `- exit` line that is not about a device's upload.
fn recorded_refusal(case: &Path) -> Option<String> {
    let expected = case.join("expected");
    let mut bodies: Vec<PathBuf> = fs::read_dir(&expected).into_iter().flatten().flatten().map(|e| e.path()).collect();
    bodies.sort();
    bodies
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .flat_map(|p| fs::read_to_string(p).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>())
        .map(|l| l.trim_end().to_string())
        .find(|l| l.ends_with(" - exit") && !l.starts_with("# invalid xml"))
}

#[test]
fn errors_on_the_conformance_trees_exactly_where_the_server_refuses() {
    let mut corpora = vec![repo_root().join("tests").join("cases")];
    match shared_cases() {
        Some(shared) => corpora.insert(0, shared),
        None => eprintln!("no shared conformance corpus (set UPDATE_SERVER_SHARED): only tests/cases"),
    }
    let (mut checked, mut refused, mut warned) = (0, Vec::new(), 0);
    for corpus in &corpora {
        let mut cases: Vec<PathBuf> =
            fs::read_dir(corpus).unwrap().flatten().map(|e| e.path()).filter(|p| p.join("case.json").is_file()).collect();
        cases.sort();
        for case in cases {
            let name = case.file_name().unwrap().to_string_lossy().into_owned();
            let dir = case_root(&case);
            let run = check_in(dir.path());
            let errors = run.errors();
            let recorded = recorded_refusal(&case);
            assert_eq!(!errors.is_empty(), recorded.is_some(), "{name}: check says {:?}, the recorded answers {recorded:?}", run.lines);
            assert_eq!(run.code, i32::from(!errors.is_empty()), "{name}");
            if let Err(e) = update_server::config::load(dir.path()) {
                let message = e.to_string();
                let message = message.strip_prefix("config: ").unwrap_or(&message).to_string();
                let said = errors.iter().any(|l| l.contains(&message)) || matches!(e, update_server::config::ConfigError::UserFileMissing);
                assert!(said, "{name}: the server refuses with {message}; check says {errors:?}");
                assert!(recorded.is_some(), "{name}: the server refuses a configuration the PHP server took");
            }
            if !errors.is_empty() {
                refused.push(name.clone());
            }
            warned += run.lines.len() - errors.len();
            checked += 1;
        }
    }
    eprintln!("{checked} case trees checked; errors on {refused:?}; {warned} warnings");
    assert!(checked >= 30, "{checked}");
    assert!(refused.contains(&"master-none-firmware-master".to_string()), "{refused:?}");
    if shared_cases().is_some() {
        assert!(checked >= 94, "{checked}");
        for name in ["user-config-bad-phase-name", "forcetrust-without-customcerts", "missing-user-config"] {
            assert!(refused.contains(&name.to_string()), "{name}: {refused:?}");
        }
    }
}

// ---- the running server --------------------------------------------------------------------

/// `serve` logs the findings when it reads a configuration, once, and again after a change.
#[test]
fn the_running_server_logs_the_findings_once_per_change() {
    let dir = tree(&format!("{HEAD}    <status dir=\"status\"/>\n    <statuss dir=\"status\"/>\n</config>\n"));
    let root = dir.path();
    write_old_file(root, "scripts/update-all-default.txt", "# snippet\n");
    let log = root.join("serve.log");
    let port = free_port();
    let mut child = Command::new(binary())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--root"])
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting update-server serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "serve exited at start");
        assert!(Instant::now() < deadline, "serve did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let poll = || {
        let answer = http_get(port, &format!("/update.php?{DEVICE_QUERY}"), &format!("127.0.0.1:{port}"));
        assert_eq!(answer.status, 200);
    };
    let logged = |what: &str| {
        let mut text = String::new();
        fs::File::open(&log).unwrap().read_to_string(&mut text).unwrap();
        text.lines().filter(|l| l.contains(what)).count()
    };
    for _ in 0..3 {
        poll();
    }
    assert_eq!(logged("user-config.xml:5:5: error: unknown element <statuss>"), 1);
    // a change of the file (the cache looks again after a second)
    std::thread::sleep(Duration::from_millis(1100));
    let mut file = fs::OpenOptions::new().write(true).truncate(true).open(root.join("config/user-config.xml")).unwrap();
    file.write_all(format!("{HEAD}    <status dir=\"status\"/>\n    <times grace=\"soon\"/>\n</config>\n").as_bytes()).unwrap();
    drop(file);
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..3 {
        poll();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(logged("unknown element <statuss>"), 1);
    assert_eq!(logged("times/@grace: 'soon' is not a number"), 1);
    assert!(logged("update-server: configuration: ") == 2, "every finding once");
}
