//! A query answer whose attributes differ only by namespace prefix (found by fuzzing
//! `xml_state`): the state keeps local names, so storing it used to write `a="1" a="2"`, a file
//! no parser reads, and the next poll set the device's whole state aside.

mod support;
use std::fs;
use support::*;

const SN: &str = "00-90-33-3e-0c-57";
const POLL: &str = "type=IP232&sn=00-90-33-3e-0c-57&hwid=IP232-3e-0c-57&ip=172.16.4.57";

#[test]
fn a_query_answer_with_colliding_namespaced_attributes_is_refused_as_invalid_and_the_state_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    copy_install_tree(root);
    write_basic_setup(root);
    let ctx = CgiContext::default();
    assert_eq!(cgi_get(root, &ctx, "update.php", POLL).status, 200);
    let state = root.join("status").join(format!("{SN}.xml"));
    let before = fs::read_to_string(&state).unwrap();

    let answer = cgi_request(
        root,
        &ctx,
        "PUT",
        "update.php",
        &format!("mode=query&sn={SN}&id=admin"),
        br#"<info xmlns:p="urn:p" xmlns:q="urn:q" p:a="1" q:a="2"/>"#,
        &[],
    );
    // refused like any invalid answer (the old server answers those 200 with a comment)
    assert!(answer.status < 500, "answered, not crashed: {} {}", answer.status, answer.body);
    assert!(answer.body.contains("# invalid xml") && answer.body.contains("appears twice"), "the comment says why: {}", answer.body);
    let after = fs::read_to_string(&state).unwrap();
    assert_eq!(after, before, "the state is unchanged");
    roxmltree::Document::parse(&after).unwrap_or_else(|e| panic!("state file does not parse ({e}):\n{after}"));

    assert_eq!(cgi_get(root, &ctx, "update.php", POLL).status, 200);
    assert!(!root.join("status").join(format!("{SN}.xml.broken")).exists(), "the state was not set aside");
    assert!(fs::read_to_string(&state).unwrap().contains("type=\"IP232\""), "the device's row survives");
}
