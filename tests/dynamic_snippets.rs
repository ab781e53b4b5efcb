//! Dynamic snippets (SPEC §7) through the real binary: an operator program adds lines around
//! the standard snippets, takes part in the CHECK signature, and a failing or slow program
//! delivers nothing.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{cgi_get, write_old_file, CgiContext, DEVICE_QUERY};

fn install(program: &str, timeout: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.xml"), root.join("config.xml")).unwrap();
    write_old_file(
        root,
        "config/user-config.xml",
        &format!("<config><master info=''/><status dir='status'/><dynamic exec='dynamic/lines.sh' timeout='{timeout}'/></config>"),
    );
    write_old_file(root, "scripts/update-all-default.txt", "config add CMD0 /location standard\n");
    let path = root.join("dynamic/lines.sh");
    write_old_file(root, "dynamic/lines.sh", &format!("#!/bin/sh\n{program}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn program_lines_surround_the_standard_snippets_and_count_in_check() {
    let program = r#"grep -q '<device ' && echo "pre config add CMD0 /name dev-$UPDATE_SN"
echo "post config add CMD0 /coder $UPDATE_ARG_ip""#;
    let tree = install(program, 5);
    let answer = cgi_get(tree.path(), &CgiContext::default(), "update.php", DEVICE_QUERY);
    let commands = answer.commands();
    let position = |line: &str| commands.iter().position(|c| c == line).unwrap_or_else(|| panic!("{line} missing: {commands:?}"));
    let pre = position("config add CMD0 /name dev-00-90-33-3e-0c-57");
    let standard = position("config add CMD0 /location standard");
    let post = position("config add CMD0 /coder 172.16.4.57");
    assert!(pre < standard && standard < post, "{commands:?}");
    let check = answer.check_serial().expect("a CHECK value");
    // the signature covers the program's lines: with its CHECK the next poll is quiet...
    let quiet = cgi_get(tree.path(), &CgiContext::default(), "update.php", &format!("{DEVICE_QUERY}&CHECK={check}"));
    assert!(quiet.commands().is_empty(), "{:?}", quiet.commands());
    // ...and when the program's answer changes, the device runs its scripts again
    let path = tree.path().join("dynamic/lines.sh");
    std::fs::write(&path, "#!/bin/sh\necho 'post config add CMD0 /coder G711'\n").unwrap();
    let changed = cgi_get(tree.path(), &CgiContext::default(), "update.php", &format!("{DEVICE_QUERY}&CHECK={check}"));
    assert!(changed.commands().contains(&"config add CMD0 /coder G711".to_string()), "{:?}", changed.commands());
    assert_ne!(changed.check_serial().as_deref(), Some(check.as_str()));
}

#[test]
fn standard_no_sends_only_the_program_lines() {
    let tree = install("echo 'standard no'\necho 'pre config add CMD0 /only this'", 5);
    let answer = cgi_get(tree.path(), &CgiContext::default(), "update.php", DEVICE_QUERY);
    let commands = answer.commands();
    assert!(commands.contains(&"config add CMD0 /only this".to_string()));
    assert!(!commands.contains(&"config add CMD0 /location standard".to_string()), "{commands:?}");
}

#[test]
fn a_failing_or_slow_program_delivers_nothing() {
    for (program, limit) in [("echo 'pre config add CMD0 /half'\nexit 1", 5), ("echo 'rm everything'", 5), ("sleep 20", 1)] {
        let tree = install(program, limit);
        let started = Instant::now();
        let answer = cgi_get(tree.path(), &CgiContext::default(), "update.php", DEVICE_QUERY);
        assert!(started.elapsed() < Duration::from_secs(5), "{program}: took {:?}", started.elapsed());
        assert!(answer.commands().is_empty(), "{program}: {:?}", answer.commands());
        assert!(answer.body.contains("dynamic snippets failed"), "{program}: {}", answer.body);
    }
}
