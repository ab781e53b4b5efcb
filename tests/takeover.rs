//! Take-over and rollback against the old server: `tools/takeover` lets the old PHP server
//! (`../shared/reference/php-update-server` under `php-cgi`) bring five devices mid-flight
//! (staging, CSR to create, CSR downloaded, signed certificate waiting, ten backups, cached
//! master info), runs their next requests against the old server and our binary on copies of
//! that tree and compares every step with the conformance harness, then puts the old server
//! back over the tree our binary wrote: its admin page must show the same devices as on its own
//! tree, without PHP errors, and its polls must answer the same.

use std::path::Path;
use std::process::Command;

#[test]
fn the_old_server_hands_over_and_takes_back_a_tree_mid_flight() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(repo.join("tools/takeover"))
        .args(["--binary", env!("CARGO_BIN_EXE_update-server")])
        .output()
        .expect("running tools/takeover (python3)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tools/takeover found differences or could not run (exit {:?}):\n{stdout}\n{stderr}",
        output.status.code()
    );
    for summary in [
        "5 devices, 23 steps after the take-over: 0 differ",
        "old admin page 0 problems (0 field differences)",
        "5 polls by the old server on our tree: 0 differ",
    ] {
        assert!(stdout.contains(summary), "unexpected summary (no {summary:?}):\n{stdout}");
    }
}
