//! Cisco/Linksys SPA provisioning through the real binary in CGI mode (issue 9): the thread's
//! walk of an SPA504G from 7.3.7 through 7.5.2b to 7.6.1, its agent changing from `Linksys/`
//! to `Cisco/` on the way, the merged snippet profile in each answer, the device's state file,
//! and a malformed SPA agent refused with a 404 that writes nothing.

mod support;

use std::fs;
use std::path::Path;
use support::*;
use tempfile::TempDir;

const CONFIG: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<config>
  <master info=""/>
  <status dir="status"/>
  <upgrades>
    <path models="SPA301 SPA303 SPA501G SPA502G SPA504G SPA508G SPA509G"
          version="7.6.1" file="fw/cisco/spa50x-30x-7-6-1.bin" downgradelimit="7.6.1">
      <via version="7.5.2b" file="fw/cisco/spa50x-30x-7-5-2b.bin"/>
    </path>
  </upgrades>
</config>
"#;

const STATE: &str = "status/58-bf-ea-11-04-e6.xml";

fn root() -> TempDir {
    let dir = tempfile::Builder::new().prefix("update-server-spa-").tempdir().expect("temp dir");
    copy_install_tree(dir.path());
    write_old_file(dir.path(), "config/user-config.xml", CONFIG);
    write_old_file(
        dir.path(),
        "scripts/update-all-default.xml",
        "<flat-profile>\n  <Line_Enable_1_>Yes</Line_Enable_1_>\n  <Station_Name>lobby</Station_Name>\n</flat-profile>\n",
    );
    write_old_file(
        dir.path(),
        "scripts/update-spa50x-default.xml",
        "<flat-profile>\n  <Station_Name>SPA &amp; friends</Station_Name>\n  <Dial_Plan_1_ ua=\"ro\"/>\n</flat-profile>\n",
    );
    dir
}

fn spa_get(root: &Path, agent: &str, query: &str) -> Answer {
    cgi_request(root, &CgiContext::default(), "GET", "update.php", query, b"", &[("HTTP_USER_AGENT", agent)])
}

const RULE: &str =
    "<Profile_Rule>http://update.example.com/mtls/update/update.php?mac=$MA&amp;phase=update</Profile_Rule>";

fn assert_profile(answer: &Answer, agent: &str) {
    assert_eq!(answer.status, 200, "{agent}: {}", answer.body);
    assert_eq!(answer.header("content-type"), Some("text/xml"), "{agent}");
    let body = &answer.body;
    assert!(body.starts_with("<flat-profile>") && body.trim_end().ends_with("</flat-profile>"), "{agent}: {body}");
    // merged: the class snippet's Station_Name replaces the all-class one
    assert!(body.contains("<Line_Enable_1_>Yes</Line_Enable_1_>"), "{agent}: {body}");
    assert!(body.contains("<Station_Name>SPA &amp; friends</Station_Name>") && !body.contains("lobby"), "{agent}: {body}");
    assert!(body.contains("<Dial_Plan_1_ ua=\"ro\"/>"), "{agent}: {body}");
    assert!(body.contains(RULE), "{agent}: {body}");
    assert!(body.contains("<Resync_Periodic>900</Resync_Periodic>"), "{agent}: {body}");
    assert!(body.is_ascii());
}

#[test]
fn the_threads_walk_from_737_through_752b_to_761() {
    let root = root();
    let base = "http://update.example.com/mtls/update/fw/cisco";
    for (agent, query, hop) in [
        ("Linksys/SPA504G-7.3.7 (58BFEA1104E6)(CCQ16380FYH)", "", Some("spa50x-30x-7-5-2b.bin")),
        ("Linksys/SPA504G-7.4.3a (58BFEA1104E6)(CCQ16380FYH)", "", Some("spa50x-30x-7-5-2b.bin")),
        ("Cisco/SPA504G-7.5.2b (58BFEA1104E6)(CCQ16380FYH)", "mac=58bfea1104e6&phase=update", Some("spa50x-30x-7-6-1.bin")),
        ("Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)", "mac=58bfea1104e6&phase=update", None),
    ] {
        let answer = spa_get(root.path(), agent, query);
        assert_profile(&answer, agent);
        match hop {
            Some(file) => assert!(
                answer.body.contains(&format!(
                    "<Upgrade_Enable>Yes</Upgrade_Enable>\n  <Upgrade_Rule>{base}/{file}</Upgrade_Rule>"
                )),
                "{agent}: {}",
                answer.body
            ),
            None => assert!(
                answer.body.contains("<Upgrade_Enable>No</Upgrade_Enable>") && !answer.body.contains("Upgrade_Rule"),
                "{agent}: {}",
                answer.body
            ),
        }
        let state = fs::read_to_string(root.path().join(STATE)).expect("the state file is written");
        let version = agent.split('-').nth(1).and_then(|v| v.split(' ').next()).unwrap();
        assert!(state.contains("sn=\"58-bf-ea-11-04-e6\"") && state.contains("type=\"SPA504G\""), "{state}");
        assert!(state.contains(&format!("version=\"{version}\"")) && state.contains("serial=\"CCQ16380FYH\""), "{state}");
        assert!(state.contains("classes=\"spa50x, spa504g\""), "{state}");
    }
    let state = fs::read_to_string(root.path().join(STATE)).unwrap();
    assert!(state.contains("firmware 7.3.7 -&gt; 7.5.2b, an intermediate version"), "{state}");
    assert!(state.contains("firmware 7.5.2b -&gt; 7.6.1 (fw/cisco/spa50x-30x-7-6-1.bin)"), "{state}");
    // one device, one state file, whatever the agent's prefix
    let states: Vec<_> = fs::read_dir(root.path().join("status"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".xml"))
        .collect();
    assert_eq!(states.len(), 1);

    // the innovaphone answer of the same tree is the script, as ever
    let poll = cgi_get(root.path(), &CgiContext::default(), "update.php", DEVICE_QUERY);
    assert_eq!(poll.status, 200);
    assert!(poll.header("content-type").is_some_and(|t| t.starts_with("text/plain")), "{:?}", poll.headers);
}

#[test]
fn a_malformed_spa_agent_gets_404_and_writes_nothing() {
    let root = root();
    for (agent, query) in [
        ("Linksys/SPA504G-7.3.7 (58BFEA1104E6)CCQ16380FYH)", ""),
        ("Cisco/SPA504G-7.6.1", "mac=58bfea1104e6"),
        // one group is the serial: without the mac argument there is no MAC
        ("Cisco/SPA525G-7.4.7 (CBT141900G7)", ""),
        ("Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)", "mac=0022556a1b2c"),
    ] {
        let answer = spa_get(root.path(), agent, query);
        assert_eq!(answer.status, 404, "{agent}: {}", answer.body);
        assert!(answer.body.starts_with('#') && answer.body.len() < 100, "{agent}: {}", answer.body);
    }
    let written: Vec<_> = fs::read_dir(root.path().join("status")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(written.iter().all(|n| n.to_string_lossy().starts_with('.')), "{written:?}");
}
