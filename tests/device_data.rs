//! Device data requests (`update.php?mode=backup|query|vardump`, SPEC §5, §6, §8) through the
//! real binary in CGI mode: many of them at once for one device, hostile ones, and the happy
//! paths with the files they must leave behind.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Barrier};
use support::*;
use tempfile::TempDir;

const SN: &str = "00-90-33-3e-0c-57";
const HWID: &str = "IP232-3e-0c-57";
/// Another device of the same installation, whose files hostile requests aim at.
const OTHER_SN: &str = "00-90-33-11-22-33";
const NBACKUPS: usize = 3;
/// `backup/@maxsize` in the hostile setup.
const BACKUP_MAXSIZE: usize = 4096;
/// The query ids the concurrency setup configures.
const QUERY_IDS: [&str; 5] = ["q0", "q1", "q2", "q3", "q4"];

/// The CSR of the conformance case `customcerts-vardump-put` as the device dumps it.
const CSR_HEX: &str = "3082025c3082014402010030173115301306035504030c0c30303930333333653063353730820122300d06092a864886f70d01010105000382010f003082010a0282010100bb34fba36b840e231d9030853b24867343482ea0b18f15884b0881e8896ac655cdd56802522a9d689abae55af6787432c3cb0a382b548a62c30b78834d52cb801228e0e223332b4d2e464fc911129173d0160e846511eba49ff6921d4a27d37acea437dd25827cf1ec9d0129d4b29b5d81ec2361a4b2189d1e1dd5baa60f3aee8393d97c9e3a8c4e2981da2d712bfe602e42653b382ebdcc6982c6af48b69b1bb58e056426b24ccb80bb7cd9c1a8d175d92d3fcd3ba541986453629da35aea0a414af9ca680912cdcd0563d1b4264e0ab0575e446385a0f657d1f8584c645ce0ecc7aca8ffb6e2f236b0b842eba26efe1322c4673fcde9f776bde98c25c434090203010001a000300d06092a864886f70d01010b05000382010100b40dbb79cfadf1e520ee28a2ac0aa86c7a80ca60d5574466cc03b0c8a408948e8afb864b4f6029cfefa61d2b2af8149bef0f8a19267fbeccceb86992718f1c97d49b6e8e43f825b8dbfb1637fdfb732ec821f780566255b90738cf8fcf0bf0ad2d98a14f59deb45d9db934674a71a18efaed3c242ab4f8d015ecb86b6238ad18086b06c09d1aa950345bdb8dd58fb102a49920c5cfedaf82180d8f76f0a7e0ea61754f503fd849d049a46339d116e0467bb96fe8b9759cf4d4202838621801ae995ad77ce88274f09445181d39d117115031c650553382eda8f500eb1aae0010ea2ec449f6b1c5101a1b35c68422d4978ab9f6f76a84e2533b5debce450bc91f";

/// A temporary install root with `user_config` as `config/user-config.xml`.
struct Root {
    dir: TempDir,
    ctx: CgiContext,
}

impl Root {
    fn new(user_config: &str) -> Root {
        let dir = tempfile::Builder::new().prefix("update-server-data-").tempdir().expect("temp dir");
        copy_install_tree(dir.path());
        write_old_file(dir.path(), "config/user-config.xml", user_config);
        write_old_file(dir.path(), "scripts/update-all-default.txt", "config add CMD0 /location all-default\r\n");
        Root { dir, ctx: CgiContext::default() }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn put(&self, query: &str, body: &[u8]) -> Answer {
        cgi_request(self.path(), &self.ctx, "PUT", "update.php", query, body, &[])
    }

    fn state_text(&self, serial: &str) -> String {
        let path = self.path().join("status").join(format!("{serial}.xml"));
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// Names of the entries of a folder of the root (empty when it does not exist), without
    /// the `.keep` placeholders the install tree ships.
    fn names_in(&self, folder: &str) -> BTreeSet<String> {
        fs::read_dir(self.path().join(folder))
            .map(|entries| {
                entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n != ".keep").collect()
            })
            .unwrap_or_default()
    }
}

fn queries_xml(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| format!("<query id=\"{id}\" title=\"{id}\" cmd=\"mod cmd CMD0 xml-info {id}\"><applies>*</applies></query>"))
        .collect()
}

/// The stored form of a backup body (SPEC §8), computed independently of the server: lines
/// split at CRLF, LF or CR, volatile and empty lines dropped, joined with CRLF.
fn normalized_backup(body: &str) -> String {
    body.split("\r\n")
        .flat_map(|l| l.split(['\n', '\r']))
        .filter(|l| !l.is_empty())
        .filter(|l| !l.starts_with("vars create UPDATE/") && !l.starts_with("config change UP1 /") && !l.starts_with("vars create TLS0/TICKET/"))
        .filter(|l| !(l.starts_with("mod cmd FLASHDIR0 add-item ") && l.contains(")(type=") && l.contains("(info=")))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// A 20-odd line configuration that differs by `n`, with the volatile lines a device sends.
fn backup_body(n: usize) -> String {
    let mut body = String::new();
    body.push_str(&format!("config change CMD0 /name Reception-{n} /location Berlin\r\n"));
    body.push_str(&format!("vars create UPDATE/CHECK pb {n:08x}\r\n"));
    body.push_str(&format!("mod cmd FLASHDIR0 add-item 101 (cn=Alice)(type=call)(info=out-{n})\r\n"));
    body.push_str("config change UP1 /url http://update.example.com/update/update.php /poll 15\r\n");
    body.push_str("vars create TLS0/TICKET/0 pb 0011223344\r\n\r\n");
    for line in 0..20 {
        body.push_str(&format!("config change PHONE /coder G722,20, /line{line} value-{n}-{line}\n"));
    }
    body.push_str(&format!("mod cmd FLASHDIR0 add-item 102 (cn=Bob-{n})\r"));
    body
}

fn query_body(id: &str, k: usize) -> String {
    format!("<info name=\"{id}-answer-{k}\" type=\"IP232\" version=\"13r2 sr40 [130178]\"><ethernet mac=\"009033 3e0c57\"/><item n=\"{k}\">text {k} &amp; more</item></info>")
}

fn is_temporary(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp") || name.contains(".tmp.") || name.ends_with(".broken") || name.ends_with(".lock")
}

// ---------------------------------------------------------------------------------------------
// (a) many requests for one device at once

#[test]
fn hundred_parallel_query_and_backup_puts_leave_whole_files() {
    let root = Root::new(&format!(
        "<?xml version=\"1.0\"?>\n<config>\n  <master info=\"\"/>\n  <status dir=\"status\"/>\n  <backup dir=\"backup\" nbackups=\"{NBACKUPS}\"/>\n  <queries>{}</queries>\n</config>\n",
        queries_xml(&QUERY_IDS)
    ));
    let root_path = root.path().to_path_buf();
    let ctx = root.ctx.clone();

    // 50 query PUTs: 10 distinct bodies for each of the 5 ids; 50 backup PUTs, all different
    #[derive(Clone)]
    enum Put {
        Query { id: &'static str, body: String },
        Backup { body: String },
    }
    let mut puts = Vec::new();
    for k in 0..50 {
        let id = QUERY_IDS[k % QUERY_IDS.len()];
        puts.push(Put::Query { id, body: query_body(id, k) });
        puts.push(Put::Backup { body: backup_body(k) });
    }
    let barrier = Arc::new(Barrier::new(puts.len()));
    let threads: Vec<_> = puts
        .iter()
        .cloned()
        .map(|put| {
            let barrier = Arc::clone(&barrier);
            let root_path = root_path.clone();
            let ctx = ctx.clone();
            std::thread::spawn(move || {
                barrier.wait();
                match &put {
                    Put::Query { id, body } => {
                        let query = format!("mode=query&sn={SN}&id={id}");
                        (query.clone(), cgi_request(&root_path, &ctx, "PUT", "update.php", &query, body.as_bytes(), &[]))
                    }
                    Put::Backup { body } => {
                        let query = format!("mode=backup&hwid={HWID}&sn={SN}");
                        (query.clone(), cgi_request(&root_path, &ctx, "PUT", "update.php", &query, body.as_bytes(), &[]))
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        let (query, answer) = thread.join().expect("request thread");
        assert_eq!(answer.status, 200, "PUT {query} answered {}:\n{}", answer.status, answer.body);
        assert!(answer.commands().is_empty(), "a data request answers comments only:\n{}", answer.body);
    }

    // the state file is whole XML holding an answer of every query id
    let text = root.state_text(SN);
    let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("state file is not XML ({e}):\n{text}"));
    let state = doc.root_element();
    assert_eq!(state.tag_name().name(), "state");
    let queries: Vec<_> = state.children().filter(|n| n.has_tag_name("queries")).collect();
    assert_eq!(queries.len(), 1, "one queries element:\n{text}");
    for id in QUERY_IDS {
        let entries: Vec<_> = queries[0].children().filter(|n| n.has_tag_name(id)).collect();
        assert_eq!(entries.len(), 1, "query {id} stored exactly once:\n{text}");
        assert!(entries[0].attribute("seen").is_some_and(|s| s.parse::<i64>().is_ok()), "query {id} has a seen stamp:\n{text}");
        let info = entries[0].children().find(|n| n.has_tag_name("info")).unwrap_or_else(|| panic!("query {id} has its info:\n{text}"));
        let name = info.attribute("name").unwrap_or_default();
        let k: usize = name
            .strip_prefix(&format!("{id}-answer-"))
            .and_then(|k| k.parse().ok())
            .unwrap_or_else(|| panic!("query {id} holds an answer of another id: {name}"));
        assert_eq!(QUERY_IDS[k % QUERY_IDS.len()], id, "query {id} holds the answer {name}");
        let item = info.children().find(|n| n.has_tag_name("item")).expect("the answer's child element");
        assert_eq!(item.attribute("n"), Some(k.to_string().as_str()), "answer {name} stored whole");
        assert_eq!(item.text(), Some(format!("text {k} & more").as_str()), "answer {name} stored whole");
    }
    let device = state.children().find(|n| n.has_tag_name("device")).expect("device element");
    assert!(device.attribute("backup").is_some(), "device/@backup set:\n{text}");

    // nothing temporary is left behind
    let status_names = root.names_in("status");
    // (and the stamp of the hourly expiry cleanup that accepted uploads run, as polls do)
    assert_eq!(status_names, BTreeSet::from([format!("{SN}.xml"), "lastcleanup".to_string()]), "status/ holds only the state file");
    assert_eq!(root.names_in("backup"), BTreeSet::from([HWID.to_string()]), "backup/ holds only the device's folder");
    let backup_names = root.names_in(&format!("backup/{HWID}"));
    for name in &backup_names {
        assert!(!is_temporary(name), "temporary file left in backup/{HWID}: {name}");
    }

    // every backup file is exactly one of the uploaded configurations, and rotation kept the
    // newest nbackups (the 50 PUTs are serialized by the device's lock, all different)
    let normalized: BTreeSet<String> = (0..50).map(|n| normalized_backup(&backup_body(n))).collect();
    assert!(!backup_names.is_empty() && backup_names.len() <= NBACKUPS, "{} backup files: {backup_names:?}", backup_names.len());
    let mut indices = Vec::new();
    for name in &backup_names {
        let index: u64 = name
            .strip_prefix(&format!("{HWID}."))
            .and_then(|rest| rest.strip_suffix(".txt"))
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("unexpected file in backup/{HWID}: {name}"));
        indices.push(index);
        let content = fs::read_to_string(root.path().join("backup").join(HWID).join(name)).expect("reading a backup");
        assert!(normalized.contains(&content), "backup {name} is not one of the uploaded configurations (torn?):\n{content}");
    }
    indices.sort_unstable();
    assert_eq!(indices, [47, 48, 49], "50 different backups in a row keep indices 47..49");
    // distinct files hold distinct configurations
    let contents: BTreeSet<Vec<u8>> =
        backup_names.iter().map(|n| fs::read(root.path().join("backup").join(HWID).join(n)).unwrap()).collect();
    assert_eq!(contents.len(), backup_names.len(), "no two backup files are the same");
}

/// What the parallel test above runs into at random: a request that waited for the device's
/// lock finds backups written after it started (mtime later than its clock reading). With
/// `minage` 0 no backup is "younger than minage", so rotation must still keep only `nbackups`.
#[test]
fn rotation_with_minage_zero_removes_backups_newer_than_the_request() {
    let root = happy_root();
    let folder = root.path().join("backup").join(HWID);
    fs::create_dir_all(&folder).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(30);
    for i in 0..NBACKUPS {
        let path = folder.join(format!("{HWID}.{i}.txt"));
        fs::write(&path, normalized_backup(&backup_body(100 + i))).unwrap();
        fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
    }
    let answer = root.put(&format!("mode=backup&hwid={HWID}&sn={SN}"), backup_body(1).as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.body);
    let names = root.names_in(&format!("backup/{HWID}"));
    let expected: BTreeSet<String> = (1..=NBACKUPS).map(|i| format!("{HWID}.{i}.txt")).collect();
    assert_eq!(names, expected, "nbackups={NBACKUPS}, minage=0: the oldest backup goes\n{}", answer.body);
}

// ---------------------------------------------------------------------------------------------
// (b) hostile requests: 4xx, nothing written anywhere

fn hostile_root() -> Root {
    let root = Root::new(&format!(
        "<?xml version=\"1.0\"?>\n<config>\n  <master info=\"\"/>\n  <status dir=\"status\"/>\n  <customcerts dir=\"certs\"/>\n  <backup dir=\"backup\" nbackups=\"{NBACKUPS}\" maxsize=\"{BACKUP_MAXSIZE}\"/>\n  <queries>{}</queries>\n</config>\n",
        queries_xml(&["admin"])
    ));
    // both devices are known already, so a refusal that still touched their state would show
    let state = |sn: &str, hwid: &str| {
        format!("<?xml version=\"1.0\"?>\n<state seen=\"1600000000\"><device sn=\"{sn}\" type=\"IP232\" hwid=\"{hwid}\"/></state>\n")
    };
    write_old_file(root.path(), &format!("status/{SN}.xml"), &state(SN, HWID));
    write_old_file(root.path(), &format!("status/{OTHER_SN}.xml"), &state(OTHER_SN, "IP232-11-22-33"));
    write_old_file(root.path(), &format!("certs/{OTHER_SN}-request.p10.der"), "other device's request");
    write_old_file(root.path(), &format!("backup/{HWID}/{HWID}.0.txt"), "config change CMD0 /name old");
    root
}

fn vars_body() -> String {
    format!("X509/REQUEST pb {CSR_HEX}\r\nX509/REQUESTKEY pb 00\r\n")
}

/// One hostile request: what it is, method, query, body.
type Hostile = (&'static str, &'static str, String, Vec<u8>);

fn hostile_requests() -> Vec<Hostile> {
    let backup = |n: usize| backup_body(n).into_bytes();
    let info = b"<info name=\"x\"/>".to_vec();
    let vars = vars_body().into_bytes();
    let vardump = |rest: &str| format!("mode=vardump&sn={SN}&var=X509/REQUEST&{rest}");
    let billion_laughs = "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n <!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\n <!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\">\n <!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">\n <!ENTITY lol4 \"&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;\">\n <!ENTITY lol5 \"&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;\">\n <!ENTITY lol6 \"&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;\">\n <!ENTITY lol7 \"&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;\">\n <!ENTITY lol8 \"&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;\">\n <!ENTITY lol9 \"&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;\">\n]>\n<info name=\"&lol9;\"/>\n";
    let external_entity = "<?xml version=\"1.0\"?><!DOCTYPE info [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><info name=\"&x;\"/>";
    let mut big_query = b"<info name=\"big\">".to_vec();
    big_query.resize(1024 * 1024 + 100, b'a');
    big_query.extend_from_slice(b"</info>");
    let mut big_backup = Vec::new();
    while big_backup.len() <= BACKUP_MAXSIZE {
        big_backup.extend_from_slice(format!("config change CMD0 /line{} some value\r\n", big_backup.len()).as_bytes());
    }
    vec![
        ("traversal in hwid (../x)", "PUT", format!("mode=backup&hwid=../x&sn={SN}"), backup(1)),
        ("traversal in hwid (../../status/x)", "PUT", format!("mode=backup&hwid=..%2F..%2Fstatus%2Fx&sn={SN}"), backup(1)),
        ("slash in hwid (a/b)", "PUT", format!("mode=backup&hwid=a/b&sn={SN}"), backup(1)),
        ("bare .. as hwid", "PUT", format!("mode=backup&hwid=..&sn={SN}"), backup(1)),
        ("traversal in sn of a backup", "PUT", format!("mode=backup&hwid={HWID}&sn=../../config/user-config"), backup(1)),
        ("traversal in sn of a query", "PUT", "mode=query&sn=..%2F..%2Fconfig%2Fuser-config&id=admin".into(), info.clone()),
        ("traversal in sn of a vardump", "PUT", "mode=vardump&sn=../x&var=X509/REQUEST&proc=var2bin".into(), vars.clone()),
        ("file of vardump outside certs", "PUT", vardump("file=../config/user-config.xml&proc=var2bin&postproc=createPemFromDer"), vars.clone()),
        ("file of vardump: another device's request", "PUT", vardump(&format!("file=certs%2F{OTHER_SN}-request.p10.der&proc=var2bin&postproc=createPemFromDer")), vars.clone()),
        ("file of vardump: absolute path", "PUT", vardump("file=%2Ftmp%2Fx.der&proc=var2bin"), vars.clone()),
        ("traversal in id of a query", "PUT", format!("mode=query&sn={SN}&id=../../x"), info.clone()),
        ("id of a query that is not configured", "PUT", format!("mode=query&sn={SN}&id=registration"), info.clone()),
        ("unknown proc", "PUT", vardump("proc=system&postproc=createPemFromDer"), vars.clone()),
        ("unknown postproc", "PUT", vardump("proc=var2bin&postproc=rm"), vars.clone()),
        ("postproc for the request error", "PUT", format!("mode=vardump&sn={SN}&var=X509/REQUESTERROR&postproc=createPemFromDer"), b"X509/REQUESTERROR str bad\r\n".to_vec()),
        ("var with traversal", "PUT", format!("mode=vardump&sn={SN}&var=../../etc&proc=var2bin"), b"../../etc pb 00\r\n".to_vec()),
        ("var that is not a certificate variable", "PUT", format!("mode=vardump&sn={SN}&var=CMD0/PWD&proc=var2bin"), b"CMD0/PWD pb 00\r\n".to_vec()),
        ("entity expansion (billion laughs)", "PUT", format!("mode=query&sn={SN}&id=admin"), billion_laughs.as_bytes().to_vec()),
        ("external entity", "PUT", format!("mode=query&sn={SN}&id=admin"), external_entity.as_bytes().to_vec()),
        ("query body over 1 MiB", "PUT", format!("mode=query&sn={SN}&id=admin"), big_query),
        ("backup body over backup/@maxsize", "PUT", format!("mode=backup&hwid={HWID}&sn={SN}"), big_backup),
        ("GET instead of PUT for mode=backup", "GET", format!("mode=backup&hwid={HWID}&sn={SN}"), Vec::new()),
        ("GET instead of PUT for mode=query", "GET", format!("mode=query&sn={SN}&id=admin"), Vec::new()),
    ]
}

#[test]
fn hostile_data_requests_are_refused_and_write_nothing() {
    let root = hostile_root();
    let before = snapshot_files(root.path());
    let mut failures = Vec::new();
    for (what, method, query, body) in hostile_requests() {
        let answer = cgi_request(root.path(), &root.ctx, method, "update.php", &query, &body, &[]);
        let after = snapshot_files(root.path());
        let changes = snapshot_diff(&before, &after);
        if !(400..500).contains(&answer.status) {
            failures.push(format!("{what}: {method} ?{query} answered {} (4xx expected):\n{}", answer.status, answer.body));
        }
        if !answer.commands().is_empty() || !answer.body.starts_with('#') {
            failures.push(format!("{what}: the answer must be comments only:\n{}", answer.body));
        }
        if !changes.is_empty() {
            failures.push(format!("{what}: {method} ?{query} wrote {changes:?}"));
            // start the next request from the original files again
            for (path, content) in &before {
                fs::write(root.path().join(path), content).unwrap();
            }
            for change in &changes {
                if let Some(created) = change.strip_prefix("created ") {
                    let _ = fs::remove_file(root.path().join(created));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} hostile requests misbehaved:\n\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn oversized_bodies_are_refused_with_413() {
    let root = hostile_root();
    let before = snapshot_files(root.path());
    for (what, _, query, body) in hostile_requests().into_iter().filter(|(what, ..)| what.contains(" over ")) {
        let answer = root.put(&query, &body);
        assert_eq!(answer.status, 413, "{what}: {}", answer.body);
    }
    // a backup of exactly maxsize bytes is still fine
    let mut body = String::new();
    while body.len() + 40 < BACKUP_MAXSIZE {
        body.push_str(&format!("config change CMD0 /line{:05} value\r\n", body.len()));
    }
    while body.len() < BACKUP_MAXSIZE {
        body.push('x');
    }
    assert_eq!(body.len(), BACKUP_MAXSIZE);
    let answer = root.put(&format!("mode=backup&hwid={HWID}&sn={SN}"), body.as_bytes());
    assert_eq!(answer.status, 200, "a backup of exactly backup/@maxsize bytes is stored: {}", answer.body);
    let changes = snapshot_diff(&before, &snapshot_files(root.path()));
    assert!(changes.contains(&format!("created backup/{HWID}/{HWID}.1.txt")), "{changes:?}");
}

// ---------------------------------------------------------------------------------------------
// (c) the happy paths

fn happy_root() -> Root {
    Root::new(&format!(
        "<?xml version=\"1.0\"?>\n<config>\n  <master info=\"\"/>\n  <status dir=\"status\"/>\n  <customcerts dir=\"certs\"/>\n  <backup dir=\"backup\" nbackups=\"{NBACKUPS}\"/>\n  <queries>{}</queries>\n</config>\n",
        queries_xml(&["admin", "certificates"])
    ))
}

#[test]
fn query_put_stores_and_a_second_put_replaces() {
    let root = happy_root();
    let before = snapshot_files(root.path());
    let first = "<info name=\"Reception Phone\" type=\"IP232\" version=\"13r2 sr40 [130178]\"><ethernet mac=\"009033 3e0c57\"/></info>";
    let answer = root.put(&format!("mode=query&sn={SN}&id=admin"), first.as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("saved"), "{}", answer.body);
    assert_eq!(
        snapshot_diff(&before, &snapshot_files(root.path())),
        [format!("created status/{SN}.xml"), "created status/lastcleanup".to_string()],
        "a query PUT writes only the device state (and the expiry cleanup's stamp)"
    );

    let text = root.state_text(SN);
    let doc = roxmltree::Document::parse(&text).expect("state is XML");
    let queries = doc.root_element().children().find(|n| n.has_tag_name("queries")).expect("queries element");
    let admin: Vec<_> = queries.children().filter(|n| n.is_element()).collect();
    assert_eq!(admin.len(), 1, "{text}");
    assert!(admin[0].has_tag_name("admin"), "{text}");
    assert!(admin[0].attribute("seen").and_then(|s| s.parse::<i64>().ok()).is_some_and(|s| s > 1_600_000_000), "{text}");
    let info = admin[0].first_element_child().expect("info");
    assert!(info.has_tag_name("info"));
    assert_eq!(info.attribute("name"), Some("Reception Phone"));
    assert_eq!(info.attribute("version"), Some("13r2 sr40 [130178]"));
    assert_eq!(info.first_element_child().and_then(|e| e.attribute("mac")), Some("009033 3e0c57"));

    // a second answer of the same query replaces the first; another query is kept beside it
    let cert = "<info><servercert><certificate subject_cn=\"IP232-3e-0c-57\"/></servercert></info>";
    assert_eq!(root.put(&format!("mode=query&sn={SN}&id=certificates"), cert.as_bytes()).status, 200);
    let second = "<info name=\"Lobby\" type=\"IP232\"/>";
    assert_eq!(root.put(&format!("mode=query&sn={SN}&id=admin"), second.as_bytes()).status, 200);
    let text = root.state_text(SN);
    let doc = roxmltree::Document::parse(&text).expect("state is XML");
    let queries = doc.root_element().children().find(|n| n.has_tag_name("queries")).expect("queries element");
    let admins: Vec<_> = queries.children().filter(|n| n.has_tag_name("admin")).collect();
    assert_eq!(admins.len(), 1, "the answer replaces the previous one:\n{text}");
    let infos: Vec<_> = admins[0].children().filter(|n| n.is_element()).collect();
    assert_eq!(infos.len(), 1, "{text}");
    assert_eq!(infos[0].attribute("name"), Some("Lobby"), "{text}");
    assert!(!text.contains("Reception Phone"), "the old answer is gone:\n{text}");
    assert_eq!(queries.children().filter(|n| n.has_tag_name("certificates")).count(), 1, "{text}");
}

/// Standard base64 (for checking the PEM the server writes).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
}

#[test]
fn vardump_of_the_request_writes_der_and_pem() {
    let root = happy_root();
    let before = snapshot_files(root.path());
    let query = format!(
        "mode=vardump&sn={SN}&var=X509/REQUEST&file=certs%2F{SN}-request.p10.der&proc=var2bin&postproc=createPemFromDer"
    );
    let answer = root.put(&query, vars_body().as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut changes = snapshot_diff(&before, &snapshot_files(root.path()));
    changes.sort();
    assert_eq!(
        changes,
        [
            format!("created certs/{SN}-request.p10.der"),
            format!("created certs/{SN}-request.p10.pem"),
            format!("created status/{SN}.xml"),
            "created status/lastcleanup".to_string(),
        ]
    );
    let der = fs::read(root.path().join(format!("certs/{SN}-request.p10.der"))).unwrap();
    assert_eq!(der, hex(CSR_HEX), "the DER is the dumped hex as bytes");
    let pem = fs::read_to_string(root.path().join(format!("certs/{SN}-request.p10.pem"))).unwrap();
    assert!(pem.ends_with("\r\n"), "PEM ends with CRLF");
    assert!(!pem.replace("\r\n", "").contains('\n'), "every PEM line ends in CRLF:\n{pem:?}");
    let lines: Vec<&str> = pem.trim_end_matches("\r\n").split("\r\n").collect();
    assert_eq!(lines.first(), Some(&"-----BEGIN CERTIFICATE REQUEST-----"));
    assert_eq!(lines.last(), Some(&"-----END CERTIFICATE REQUEST-----"));
    let body = &lines[1..lines.len() - 1];
    for (i, line) in body.iter().enumerate() {
        if i + 1 < body.len() {
            assert_eq!(line.len(), 64, "PEM line {i} has 64 columns: {line}");
        } else {
            assert!(!line.is_empty() && line.len() <= 64, "last PEM line: {line}");
        }
    }
    assert_eq!(body.concat(), base64(&der), "the PEM holds the DER");
    let state = root.state_text(SN);
    assert!(state.contains("var-x509-request="), "device/@var-x509-request set:\n{state}");

    // the request error variable is stored as text, under the name the server chooses
    let answer = root.put(
        &format!("mode=vardump&sn={SN}&var=X509/REQUESTERROR&file=certs%2F{SN}-requesterror"),
        b"X509/REQUESTERROR str CSR-failed\r\n",
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(fs::read_to_string(root.path().join(format!("certs/{SN}-requesterror"))).unwrap(), "CSR-failed");
}

#[test]
fn backup_put_stores_normalized_then_recognizes_unchanged() {
    let root = happy_root();
    let query = format!("mode=backup&hwid={HWID}&sn={SN}");
    let answer = root.put(&query, backup_body(7).as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.body);
    let stored = fs::read_to_string(root.path().join(format!("backup/{HWID}/{HWID}.0.txt"))).expect("first backup");
    assert_eq!(stored, normalized_backup(&backup_body(7)));
    assert!(!stored.contains("UPDATE/") && !stored.contains("TICKET") && !stored.ends_with("\r\n"), "{stored:?}");
    let before = snapshot_files(root.path());
    // the same configuration again, with other volatile lines and LF line ends: unchanged
    let again = backup_body(7).replace("UPDATE/CHECK pb", "UPDATE/CHECK pb ff").replace("\r\n", "\n");
    let answer = root.put(&query, again.as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("no change"), "{}", answer.body);
    let changes = snapshot_diff(&before, &snapshot_files(root.path()));
    assert_eq!(changes, [format!("changed status/{SN}.xml")], "an unchanged backup writes only the state");
    assert_eq!(root.names_in(&format!("backup/{HWID}")), BTreeSet::from([format!("{HWID}.0.txt")]));
}
