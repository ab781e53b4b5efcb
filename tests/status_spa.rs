//! The status page of a mixed fleet through the real binary run as CGI (issue 9, item 4): SPA
//! state files written by real SPA requests (update.php with the phones' agents) and innovaphone
//! states on an upgrade path with `firmware/@via`, in one list. Each SPA row shows model, vendor,
//! MAC, serial, firmware version, phase, last profile, the hop last sent and the planned next
//! hop; each innovaphone row on a path the via last requested and the next hop, its target from
//! the cached master info. The master itself is never asked: its address is a socket nobody
//! accepts on, and no connection may be waiting there at the end.

mod support;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use support::*;

const HTTPS: (&str, &str) = ("HTTPS", "on");
const FORM: (&str, &str) = ("CONTENT_TYPE", "application/x-www-form-urlencoded");

const UPGRADES: &str = r#"<upgrades>
    <path models="SPA301 SPA303 SPA501G SPA502G SPA504G SPA508G SPA509G"
          version="7.6.1" file="fw/cisco/spa50x-30x-7-6-1.bin" downgradelimit="7.6.1">
      <via version="7.5.2b" file="fw/cisco/spa50x-30x-7-5-2b.bin"/>
    </path>
    <path applies="phone"><via build="131504"/></path>
  </upgrades>
"#;

/// The SPA devices: agent, state serial, what the row must say.
const SPA: [(&str, &str); 4] = [
    ("Linksys/SPA504G-7.3.7 (58BFEA1104E6)(CCQ16380FYH)", "58-bf-ea-11-04-e6"),
    ("Cisco/SPA504G-7.5.2b (58BFEA1104F0)(CCQ16380FYI)", "58-bf-ea-11-04-f0"),
    ("Cisco/SPA504G-7.6.1 (58BFEA1104F1)(CCQ16380FYJ)", "58-bf-ea-11-04-f1"),
    ("Cisco/SPA525G-7.4.7 (0022556A1B2C)(CBT141900G7)", "00-22-55-6a-1b-2c"),
];

/// An innovaphone phone below the via (the via requested), and one past it (the master's
/// build requested).
const BELOW_VIA: &str = "00-90-33-3e-0c-57";
const PAST_VIA: &str = "00-90-33-11-22-33";

fn innovaphone_state(sn: &str, build: &str, requested: &str, via: &str, now: u64) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<state seen="{now}" phase="update">
  <device sn="{sn}" type="IP232" classes="phone, pre_opus_phone, phone_newui, ip232" ip="172.16.4.57" rp="false" phase="update" environments="default" hwid="IP232-{}" realip="172.16.4.57"/>
  <firmware build="{build}" requested="{requested}" via="{via}" requested-at="{now}"/>
  <bootcode build="131000"/>
</state>
"#,
        &sn[9..]
    )
}

struct Fleet {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    ctx: CgiContext,
    /// The master's address: bound, never accepted on.
    master: TcpListener,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = tempfile::tempdir().expect("temporary root");
        let root = dir.path().to_path_buf();
        copy_install_tree(&root);
        let master = TcpListener::bind("127.0.0.1:0").expect("a port for the master");
        master.set_nonblocking(true).unwrap();
        let info = format!("http://127.0.0.1:{}/CMD0/box_info.xml", master.local_addr().unwrap().port());
        let user = admin_user_config("admin", ADMIN_PASSWORD)
            .replace("<master info=\"\"", &format!("<master info=\"{info}\""))
            .replace("</config>", &format!("{UPGRADES}</config>"));
        write_old_file(&root, "config/user-config.xml", &user);
        // the cache is old (far beyond master/@expire): a poll would ask the master, the page never
        write_old_file(&root, "cache/master-info.xml", "<info><sys version='IP811[13r3 sr7 [134567]], Bootcode[134560], Hardware[302]'/></info>");
        write_old_file(
            &root,
            "scripts/update-spa50x-default.xml",
            "<flat-profile>\n  <Station_Name>SPA &amp; friends</Station_Name>\n</flat-profile>\n",
        );
        fs::create_dir_all(root.join("admin")).expect("admin/");
        Fleet { _dir: dir, root, ctx: CgiContext { port: 443, ..CgiContext::default() }, master }
    }

    fn spa_request(&self, agent: &str) -> Answer {
        cgi_request(&self.root, &self.ctx, "GET", "update.php", "", b"", &[("HTTP_USER_AGENT", agent), HTTPS])
    }

    fn login(&self) -> String {
        let answer = cgi_request(&self.root, &self.ctx, "POST", "admin/admin.php", "", format!("user=admin&pw={ADMIN_PASSWORD}").as_bytes(), &[HTTPS, FORM]);
        assert_eq!(answer.status, 303, "login: {}", answer.body);
        header_values(&answer, "set-cookie")
            .into_iter()
            .find(|c| c.starts_with("update_admin=") && !c.contains("Max-Age=0"))
            .map(|c| c.split(';').next().unwrap().to_string())
            .expect("a session cookie")
    }

    fn admin_get(&self, query: &str, cookie: &str) -> Answer {
        let answer = cgi_request(&self.root, &self.ctx, "GET", "admin/admin.php", query, b"", &[HTTPS, ("HTTP_COOKIE", cookie)]);
        assert_eq!(answer.status, 200, "{query}: {}", answer.body);
        answer
    }

    fn assert_master_never_asked(&self) {
        match self.master.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("someone connected to the master: {other:?}"),
        }
    }
}

/// The `<tr>` of a device in a page.
fn row<'a>(page: &'a str, sn: &str) -> &'a str {
    let start = page.find(&format!("<tr id=\"device-{sn}\"")).unwrap_or_else(|| panic!("no row for {sn} in {page}"));
    let end = start + page[start..].find("</tr>").expect("the row ends");
    &page[start..end]
}

fn assert_has(html: &str, needles: &[&str]) {
    for needle in needles {
        assert!(html.contains(needle), "{needle}\n  missing in: {html}");
    }
}

#[test]
fn a_mixed_fleet_shows_spa_facts_vias_and_planned_hops() {
    let fleet = Fleet::new();
    for (agent, _) in SPA {
        let answer = fleet.spa_request(agent);
        assert_eq!(answer.status, 200, "{agent}: {}", answer.body);
        assert!(answer.body.contains("<Station_Name>SPA &amp; friends</Station_Name>") || agent.contains("SPA525G"), "{agent}: {}", answer.body);
    }
    let state = fs::read_to_string(fleet.root.join("status/58-bf-ea-11-04-e6.xml")).expect("the SPA request wrote its state");
    assert!(state.contains("vendor=\"Linksys\"") && state.contains("hop=\"7.5.2b\"") && state.contains("profile=\""), "{state}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    write_state(&fleet.root, BELOW_VIA, &innovaphone_state(BELOW_VIA, "130178", "131504", "131504", now - 60));
    write_state(&fleet.root, PAST_VIA, &innovaphone_state(PAST_VIA, "131504", "134567", "", now - 60));

    let cookie = fleet.login();
    let page = fleet.admin_get("mode=status", &cookie).body;
    assert!(page.contains("6 of 6 devices"), "{page}");
    assert!(page.contains("<th>Firmware<br>Boot code<br><small>next hop</small></th>"), "{page}");

    // the SPA504G at 7.3.7: every fact, the via it was sent and the same via planned
    let linksys = row(&page, "58-bf-ea-11-04-e6");
    assert_has(
        linksys,
        &[
            "class=\"device spa\"",
            "<div>SPA504G <span class=\"tag vendor\" title=\"SPA device (Linksys agent)\">Linksys</span></div>",
            "<span class=\"prompt\">MAC</span> 58BFEA1104E6 <span class=\"prompt\">serial</span> CCQ16380FYH",
            ">7.3.7</span> <span class=\"requested\" title=\"the firmware the last profile sent\">→ 7.5.2b</span>",
            "<div class=\"next load\" title=\"fw/cisco/spa50x-30x-7-5-2b.bin, an intermediate version on the way to 7.6.1\"><span class=\"prompt\">next:</span> 7.5.2b (via)</div>",
            "<span class=\"prompt\">phase:</span> update",
            "<span class=\"prompt\">class:</span> spa50x, spa504g",
            "<span class=\"prompt\">profile:</span> <span title=\"",
            // no certificate status: SPA devices take no part in the roll-out
            "<td class=\"certs\"></td>",
        ],
    );
    let profile = &linksys[linksys.find("profile:</span> <span title=\"").unwrap()..];
    let since = &profile[profile.find("\">").unwrap() + 2..profile.find("</span></div>").unwrap()];
    assert!(since.ends_with("secs") || since.ends_with("sec"), "the profile was sent just now: {since}");
    // at 7.5.2b: the target sent and planned; at 7.6.1: nothing sent, at target; no path
    assert_has(
        row(&page, "58-bf-ea-11-04-f0"),
        &["Cisco</span>", ">7.5.2b</span> <span class=\"requested\" title=\"the firmware the last profile sent\">→ 7.6.1</span>", "title=\"fw/cisco/spa50x-30x-7-6-1.bin\"><span class=\"prompt\">next:</span> 7.6.1</div>"],
    );
    let at_target = row(&page, "58-bf-ea-11-04-f1");
    assert_has(at_target, &[">7.6.1</span>", "<div class=\"next done\" title=\"at the target 7.6.1\"><span class=\"prompt\">next:</span> at target</div>"]);
    assert!(!at_target.contains("class=\"requested\""), "{at_target}");
    assert_has(row(&page, "00-22-55-6a-1b-2c"), &["<div>SPA525G <span class=\"tag vendor\"", "<span class=\"prompt\">next:</span> no path</div>", "serial</span> CBT141900G7"]);

    // innovaphone phones on the path: the via last requested, the next hop against the cached
    // master build 134567
    let below = row(&page, BELOW_VIA);
    assert_has(
        below,
        &[
            "130178 <span class=\"requested\" title=\"requested firmware\">→ 131504</span><br>131000",
            "<span class=\"prompt\">via:</span> 131504</div>",
            "<div class=\"next load\" title=\"below the via build 131504: the next firmware command names it, then 134567\"><span class=\"prompt\">next:</span> 131504 (via)</div>",
        ],
    );
    assert!(!below.contains("class=\"device spa") && !below.contains("tag vendor") && !below.contains("<td class=\"certs\"></td>"), "{below}");
    let past = row(&page, PAST_VIA);
    assert_has(past, &["131504 <span class=\"requested\" title=\"requested firmware\">→ 134567</span>", "<span class=\"prompt\">next:</span> 134567</div>"]);
    assert!(!past.contains("via:"), "no via named last: {past}");

    // the details (the row refresh with the log, and the single-device view) add the path
    let detail = fleet.admin_get("mode=ui&cmd=updatestatus&sn=58-bf-ea-11-04-e6&detail=1", &cookie);
    let html: String = serde_json::from_str(&detail.body).expect("a JSON string");
    assert_has(&html, &["next:</span> 7.5.2b (via)", "<span class=\"prompt\">path:</span> 7.5.2b (via) → 7.6.1, downgrade limit 7.6.1", "firmware 7.3.7 -&#62; 7.5.2b, an intermediate version"]);
    let single = fleet.admin_get(&format!("mode=status&sn={BELOW_VIA}"), &cookie).body;
    assert_has(row(&single, BELOW_VIA), &["via:</span> 131504", "next:</span> 131504 (via)", "<span class=\"prompt\">path:</span> 131504 (via) → 134567"]);
    assert!(!page.contains("class=\"path\""), "the list itself has no path lines");

    // the filter knows SPA devices, their MAC as the label prints it, vendor and version
    let shown = |filter: &str| -> Vec<&str> {
        let page = fleet.admin_get(&format!("mode=status&filter={filter}"), &cookie).body;
        SPA.iter().map(|(_, sn)| *sn).chain([PAST_VIA, BELOW_VIA]).filter(|sn| page.contains(&format!("id=\"device-{sn}\""))).collect()
    };
    assert_eq!(shown("spa"), ["58-bf-ea-11-04-e6", "58-bf-ea-11-04-f0", "58-bf-ea-11-04-f1", "00-22-55-6a-1b-2c"]);
    assert_eq!(shown("58BFEA1104E6"), ["58-bf-ea-11-04-e6"]);
    assert_eq!(shown("linksys"), ["58-bf-ea-11-04-e6"]);
    // the version or the hop last sent
    assert_eq!(shown("cisco+7.6.1"), ["58-bf-ea-11-04-f0", "58-bf-ea-11-04-f1"]);
    assert_eq!(shown("ccq16380fyi"), ["58-bf-ea-11-04-f0"]);

    fleet.assert_master_never_asked();
}

#[test]
fn without_cached_master_info_an_innovaphone_row_shows_the_via_only() {
    let fleet = Fleet::new();
    fs::remove_file(fleet.root.join("cache/master-info.xml")).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    write_state(&fleet.root, BELOW_VIA, &innovaphone_state(BELOW_VIA, "130178", "131504", "131504", now - 60));
    let answer = fleet.spa_request(SPA[0].0);
    assert_eq!(answer.status, 200);
    let cookie = fleet.login();
    let page = fleet.admin_get("mode=status", &cookie).body;
    let below = row(&page, BELOW_VIA);
    assert!(below.contains("<span class=\"prompt\">via:</span> 131504</div>") && !below.contains("next:"), "{below}");
    // SPA paths need no master: the SPA row still plans its hop
    assert!(row(&page, SPA[0].1).contains("next:</span> 7.5.2b (via)"), "{page}");
    fleet.assert_master_never_asked();
    assert!(!Path::new(&fleet.root.join("cache/master-info.xml")).exists(), "the page wrote no cache");
}
