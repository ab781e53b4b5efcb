//! The quick differential run (issue 8): `tools/diff-reference` with a fixed seed runs the old
//! PHP server (`../shared/reference/php-update-server` under `php-cgi`) and our binary on the
//! same generated scenarios (300 of seed 1, six side by side) and fails on any difference the
//! conformance harness sees, or on a scenario that crashes the old server.

use std::path::Path;
use std::process::Command;

#[test]
fn generated_scenarios_answer_like_the_old_server() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(repo.join("tools/diff-reference"))
        .args(["--scenarios", "300", "--seed", "1", "--jobs", "6", "--binary", env!("CARGO_BIN_EXE_update-server")])
        .output()
        .expect("running tools/diff-reference (python3)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tools/diff-reference found divergences or could not run (exit {:?}):\n{stdout}\n{stderr}",
        output.status.code()
    );
    assert!(stdout.contains("300 scenarios, 0 diverged, 0 crashed the old server"), "unexpected summary:\n{stdout}");
}
