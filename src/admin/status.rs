//! The device status page (`mode=status`, SPEC §9): one row per state file. Every state file is
//! read once; the backup and certificate folders are listed once for all devices (never
//! searched per device); the files are parsed on all cores. A row's details (log messages and
//! backup files) are rendered only on request (`updatestatus&detail=1`), which keeps the page
//! of 10,000 devices small.

use super::filter::Filter;
use super::hops::{self, Hop, Targets};
use super::xpath::{self, StateDocument};
use crate::config::Config;
use super::tree::{self, Node};
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::Path;

/// A point in time as the page shows it: `5 mins`, with the date in the tooltip.
#[derive(Debug, Clone, Default)]
pub struct Since {
    pub text: String,
    pub title: String,
}

impl Since {
    pub fn of(time: i64, now: i64) -> Since {
        if time <= 0 {
            return Since { text: "∞".into(), title: "never".into() };
        }
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(time as u64);
        Since { text: since(time, now), title: crate::http::serve::http_date(when) }
    }

    /// Without the date (for the many times a row shows in passing).
    pub fn short(time: i64, now: i64) -> Since {
        Since { text: if time <= 0 { "∞".into() } else { since(time, now) }, title: String::new() }
    }
}

/// The old page's relative time: `12 secs`, `1.5 mins`, `3 hours`, `2.5 days`, `14 weeks`.
pub fn since(time: i64, now: i64) -> String {
    let d = now - time;
    let (value, unit) = if d < 120 {
        (d as f64, "sec")
    } else if d < 120 * 60 {
        (d as f64 / 60.0, "min")
    } else if d < 48 * 3600 {
        (d as f64 / 3600.0, "hour")
    } else if d < 90 * 86400 {
        (d as f64 / 86400.0, "day")
    } else {
        (d as f64 / (7.0 * 86400.0), "week")
    };
    let rounded = (value * 10.0).round() / 10.0;
    let number = if rounded == rounded.trunc() { format!("{}", rounded as i64) } else { format!("{rounded:.1}") };
    if rounded == 1.0 {
        format!("{number} {unit}")
    } else {
        format!("{number} {unit}s")
    }
}

/// One log line of a device.
#[derive(Debug, Clone)]
pub struct Msg {
    /// A request start (the old page drew a ruler with the time).
    pub ruler: bool,
    pub text: String,
    pub since: Since,
}

#[derive(Debug, Clone)]
pub struct Link {
    pub label: String,
    pub href: String,
    pub title: String,
}

#[derive(Debug, Clone)]
pub struct BackupCell {
    pub last: Option<Since>,
    /// Whether the device has a backup folder (its files are listed in the details).
    pub has_files: bool,
    /// Newest first; filled in the details only.
    pub files: Vec<BackupFile>,
}

/// A stored backup of a device, in its row's details.
#[derive(Debug, Clone)]
pub struct BackupFile {
    pub link: Link,
    /// The page with its diff to the backup before it (None for the oldest).
    pub diff: Option<String>,
}

/// A certificate file of a device (`certs/<sn>-…`).
#[derive(Debug, Clone)]
pub struct CertFile {
    pub link: Link,
    /// Path relative to the root, as `delfile` takes it.
    pub path: String,
}

#[derive(Debug, Clone)]
pub struct CertCell {
    pub status: String,
    pub request_error: bool,
    pub files: Vec<CertFile>,
    pub note: String,
    /// The signed certificate can be uploaded (a CSR is here, no certificate yet).
    pub upload: bool,
}

#[derive(Debug, Clone)]
pub struct Snippet {
    pub link: Link,
    pub delivered: Since,
    pub version: Since,
}

#[derive(Debug, Clone)]
pub struct InfoValue {
    pub text: String,
    pub error: bool,
}

/// The `show` columns of one query for one device.
#[derive(Debug, Clone)]
pub struct InfoBlock {
    /// The query's id (`queries/query/@id`).
    pub query: String,
    pub title: String,
    pub seen: Since,
    pub headers: Vec<String>,
    pub values: Vec<InfoValue>,
}

/// Everything one row shows, every text still unescaped (the template escapes).
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub sn: String,
    pub broken: Option<String>,
    pub missing: bool,
    /// The facts the filter looks at, lower-cased, joined by spaces.
    pub facts: String,
    pub device_link: Option<String>,
    pub address: String,
    pub via: String,
    pub device_type: String,
    pub name: String,
    pub has_msgs: bool,
    pub detail: bool,
    pub msgs: Vec<Msg>,
    pub seen: Since,
    pub backup: Option<BackupCell>,
    pub firmware: String,
    pub firmware_requested: String,
    pub bootcode: String,
    pub certs: Option<CertCell>,
    pub phase: String,
    pub classes: String,
    pub environments: String,
    pub snippets: Vec<Snippet>,
    pub info: Option<Vec<InfoBlock>>,
    /// An SPA device (its state written by an SPA profile): what only SPA devices have.
    pub spa: Option<SpaFacts>,
    /// innovaphone: the via build the last firmware command named (`firmware/@via`; empty when
    /// it named the master's build).
    pub firmware_via: String,
    /// The firmware hop the next request gets: for every SPA device, and for innovaphone
    /// devices on a path when the target is known (see [`hops`]).
    pub next_hop: Option<Hop>,
    /// The device's upgrade path in a line (in the details only).
    pub path: String,
}

/// The facts of an SPA device's row besides those every row has.
#[derive(Debug, Clone, Default)]
pub struct SpaFacts {
    /// `Linksys`, `Cisco`: the agent's brand.
    pub vendor: String,
    /// As the device's label and agent spell it: `58BFEA1104E6`.
    pub mac: String,
    pub serial: String,
    /// The firmware version as the agent reported it (`7.3.7`, `6.1.5(a)`).
    pub version: String,
    /// The version of the firmware the last profile sent (`Upgrade_Rule`); empty when none.
    pub hop_sent: String,
    /// When the last profile was sent.
    pub profile: Since,
}

/// What the page needs to know besides the rows.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    pub backup: bool,
    pub certs: bool,
    pub info: bool,
    /// Upgrade paths are configured: the firmware column names the next hop.
    pub paths: bool,
}

pub fn columns(config: &Config) -> Columns {
    Columns {
        backup: config.backup.is_some(),
        certs: config.customcerts.is_some(),
        info: !xpath::columns(&config.tree).is_empty(),
        paths: !config.upgrades.is_empty(),
    }
}

/// The download link of a file below the root.
pub fn deliver_href(path: &str) -> String {
    format!("admin.php?mode=ui&cmd=deliverfile&fn={}", crate::urlenc::rawurlencode(path))
}

/// The facts about the folders that rows need, gathered once per page.
#[derive(Debug, Default)]
pub struct Folders {
    /// Names of the device folders in the backup folder.
    pub backup_dirs: HashSet<String>,
    /// File names in the certificate folder, by the serial they start with.
    pub cert_files: HashMap<String, Vec<String>>,
}

impl Folders {
    /// Lists the backup and certificate folders once. With `only`, just that device's entries.
    pub fn read(root: &Path, config: &Config, only: Option<&str>) -> Folders {
        let mut folders = Folders::default();
        if let Some(backup) = &config.backup {
            for name in list(&root.join(&backup.dir)) {
                folders.backup_dirs.insert(name);
            }
        }
        if let Some(dir) = cert_dir(config) {
            for name in list(&root.join(dir)) {
                let Some(serial) = serial_prefix(&name) else { continue };
                if only.is_some_and(|sn| sn != serial) {
                    continue;
                }
                folders.cert_files.entry(serial.to_string()).or_default().push(name);
            }
        }
        for names in folders.cert_files.values_mut() {
            names.sort();
        }
        folders
    }
}

/// The certificate folder (`customcerts/@dir`) when certificate handling is on.
pub fn cert_dir(config: &Config) -> Option<String> {
    config
        .customcerts
        .as_ref()
        .and_then(|c| c.attr("dir"))
        .map(|d| d.trim().trim_end_matches('/').to_string())
        .filter(|d| !d.is_empty())
}

fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| !n.starts_with('.')).collect())
        .unwrap_or_default()
}

/// `00-90-33-3e-0c-57-request.p10.der` → `00-90-33-3e-0c-57`.
fn serial_prefix(name: &str) -> Option<&str> {
    [17, 12].into_iter().find_map(|n| {
        let prefix = name.get(..n)?;
        (crate::device::is_serial(prefix) && name[n..].starts_with('-')).then_some(prefix)
    })
}

/// The state files of the status folder, sorted by serial.
pub fn state_files(status_dir: &Path) -> Vec<String> {
    let mut serials: Vec<String> = list(status_dir)
        .into_iter()
        .filter_map(|name| name.strip_suffix(".xml").filter(|s| crate::device::is_serial(s)).map(String::from))
        .collect();
    serials.sort();
    serials
}

/// What a row is built from besides the state.
pub struct RowContext<'a> {
    pub root: &'a Path,
    pub config: &'a Config,
    pub folders: &'a Folders,
    /// The firmware targets of innovaphone devices on a path (read once per page).
    pub targets: &'a Targets,
    pub now: i64,
    pub detail: bool,
}

/// How many devices the status page shows at once; more are paged (a browser takes seconds
/// to lay out a table of thousands of rows).
pub const PAGE_SIZE: usize = 500;

/// The devices matching a filter, in serial order, out of how many there are.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub total: usize,
    pub matched: Vec<String>,
}

/// Runs `work` over `items` on all cores in small chunks handed out in turn (no core idles
/// while another still has a long share); the results in the items' order.
fn parallel<T: Sync, R: Send>(items: &[T], work: &(dyn Fn(&[T]) -> R + Sync)) -> Vec<R> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
    let chunks: Vec<&[T]> = items.chunks(128).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.min(chunks.len()))
            .map(|_| {
                let (chunks, next) = (&chunks, &next);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(chunk) = chunks.get(index) else { break };
                        done.push((index, work(chunk)));
                    }
                    done
                })
            })
            .collect();
        // a panicking worker takes the whole page down with it rather than silently
        // dropping devices from the list
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    done.sort_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Phase one of the page: every state file read and parsed once (on all cores), only for the
/// facts the filter looks at.
pub fn matching(root: &Path, config: &Config, filter: &Filter, now: i64) -> Listing {
    let Some(status) = &config.status else { return Listing::default() };
    let dir = root.join(&status.dir);
    let serials = state_files(&dir);
    if filter.is_empty() {
        return Listing { total: serials.len(), matched: serials };
    }
    let missing_after = status.missing;
    let parts = parallel(&serials, &|chunk: &[String]| {
        let mut buffer = Vec::new();
        chunk
            .iter()
            .filter(|sn| {
                let facts = match read_state(&dir.join(format!("{sn}.xml")), &mut buffer) {
                    Ok(doc) => facts_of(Node::of(doc.root_element()), sn, now, missing_after),
                    Err(_) => format!("{sn} broken"),
                };
                filter.matches(&facts)
            })
            .cloned()
            .collect::<Vec<String>>()
    });
    Listing { total: serials.len(), matched: parts.into_iter().flatten().collect() }
}

/// Phase two: the rows of `serials` (a page), built and rendered with `render` on all cores,
/// joined in order.
pub fn rendered_rows(root: &Path, config: &Config, serials: &[String], now: i64, render: &(dyn Fn(&Row) -> String + Sync)) -> String {
    let Some(status) = &config.status else { return String::new() };
    let dir = root.join(&status.dir);
    let folders = Folders::read(root, config, None);
    let targets = Targets::read(root, config);
    let context = RowContext { root, config, folders: &folders, targets: &targets, now, detail: false };
    let parts = parallel(serials, &|chunk: &[String]| {
        // compiled per chunk: sxd's expressions cannot be shared between threads
        let shows = xpath::Shows::new(&context.config.tree);
        let mut buffer = Vec::new();
        let mut html = String::with_capacity(chunk.len() * 2048);
        for sn in chunk {
            html.push_str(&render(&row_of_file(&dir.join(format!("{sn}.xml")), sn, &context, &shows, &mut buffer)));
        }
        html
    });
    parts.concat()
}

/// The row of one device (for `updatestatus`); None when it has no state file.
pub fn single_row(root: &Path, config: &Config, sn: &str, now: i64, detail: bool) -> Option<Row> {
    let status = config.status.as_ref()?;
    let path = crate::state::device_file(root, &status.dir, sn);
    if !path.is_file() {
        return None;
    }
    let folders = Folders::read(root, config, Some(sn));
    let targets = Targets::read(root, config);
    let context = RowContext { root, config, folders: &folders, targets: &targets, now, detail };
    Some(row_of_file(&path, sn, &context, &xpath::Shows::new(&config.tree), &mut Vec::new()))
}

/// Reads (into `buffer`, reused from file to file) and parses a state file; one beyond the
/// limits of a state file is not read (its row says why, and Delete removes it).
pub fn read_state<'b>(path: &Path, buffer: &'b mut Vec<u8>) -> Result<roxmltree::Document<'b>, String> {
    use std::io::Read;
    buffer.clear();
    let limit = crate::xml::Limits::STATE.bytes as u64;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size > limit {
        return Err(crate::state::Damage::TooLarge { bytes: size }.to_string());
    }
    file.take(limit + 1).read_to_end(buffer).map_err(|e| e.to_string())?;
    if buffer.len() as u64 > limit {
        return Err(crate::state::Damage::TooLarge { bytes: buffer.len() as u64 }.to_string());
    }
    let text = std::str::from_utf8(buffer).map_err(|e| e.to_string())?;
    let doc = tree::parse(text)?;
    if doc.root_element().has_tag_name("state") {
        Ok(doc)
    } else {
        Err("not a device state".into())
    }
}

/// The words the filter matches a device against (SPEC §9): ip, serial, type, name, phase,
/// classes, environments, `present`/`missing`, firmware and boot code; lower-cased. An SPA
/// device adds `spa`, its vendor, serial number, firmware version, the hop last sent and its
/// MAC as the label prints it (`58bfea1104e6`: the filter dashes bare innovaphone serials only).
pub fn facts_of(state: Node, sn: &str, now: i64, missing_after: i64) -> String {
    let device = state.child("device").unwrap_or_default();
    let seen = state.attr("seen").and_then(|s| s.trim().parse::<i64>().ok()).unwrap_or(0);
    let missing = missing_after > 0 && seen < now - missing_after;
    let name = state.child("queries").and_then(|q| q.child("admin")).and_then(|a| a.child("info")).and_then(|i| i.attr("name"));
    let build = |element: &str| state.child(element).and_then(|e| e.attr("build"));
    [
        device.attr("ip"),
        device.attr("realip"),
        Some(sn),
        device.attr("type"),
        name,
        device.attr("phase"),
        device.attr("classes"),
        device.attr("environments"),
        Some(if missing { "missing" } else { "present" }),
        build("firmware"),
        build("bootcode"),
    ]
    .map(|word| word.unwrap_or(""))
    .join(" ")
    .to_lowercase()
        + &spa_facts(device, sn)
}

/// Whether a state is an SPA device's: only the SPA profile writes `device/@vendor`.
fn is_spa(device: Node) -> bool {
    device.attr("vendor").is_some_and(|v| !v.is_empty())
}

/// The filter words only SPA devices have, lower-cased, each after a space ("" for others).
fn spa_facts(device: Node, sn: &str) -> String {
    if !is_spa(device) {
        return String::new();
    }
    let mut words = format!(" spa {}", sn.replace('-', ""));
    for name in ["vendor", "serial", "version", "hop"] {
        if let Some(value) = device.attr(name).filter(|v| !v.is_empty()) {
            words.push(' ');
            words.push_str(value);
        }
    }
    words.to_lowercase()
}

/// Builds the row of a state file (read into `buffer`).
fn row_of_file(path: &Path, sn: &str, context: &RowContext, shows: &xpath::Shows, buffer: &mut Vec<u8>) -> Row {
    let mut built = None;
    let _ = visit_file(path, sn, context, shows, buffer, &mut |row, _| {
        built = Some(row);
        ControlFlow::Continue(())
    });
    built.unwrap_or_default()
}

/// Reads and parses a state file (into `buffer`) and hands its row and its parsed state to
/// `visit`; an unreadable file gets a row saying why, and no state.
fn visit_file(path: &Path, sn: &str, context: &RowContext, shows: &xpath::Shows, buffer: &mut Vec<u8>, visit: &mut Visit) -> ControlFlow<()> {
    match read_state(path, buffer) {
        Ok(doc) => {
            let state = Node::of(doc.root_element());
            visit(row_of_state(state, sn, context, shows), Some(state))
        }
        Err(error) => {
            let seen = std::fs::metadata(path).and_then(|m| m.modified()).map(crate::clock::epoch_of).unwrap_or(0);
            let row = Row {
                sn: sn.to_string(),
                broken: Some(format!("cannot read state: {error}")),
                facts: format!("{sn} broken"),
                seen: Since::of(seen, context.now),
                ..Row::default()
            };
            visit(row, None)
        }
    }
}

/// What a reader of every device does with one: its row and its parsed state; Break ends the
/// reading.
pub type Visit<'v> = dyn FnMut(Row, Option<Node>) -> ControlFlow<()> + 'v;

/// Every device of the status folder in serial order, as the page reads it, one state file at
/// a time (the export: nothing but the file being visited is held): `visit` gets its row and
/// its parsed state (None when the file cannot be read; the row says why). The `show` columns
/// are filled.
pub fn each_device(root: &Path, config: &Config, now: i64, visit: &mut Visit) {
    let Some(status) = &config.status else { return };
    let dir = root.join(&status.dir);
    let folders = Folders::read(root, config, None);
    let targets = Targets::read(root, config);
    let context = RowContext { root, config, folders: &folders, targets: &targets, now, detail: false };
    let shows = xpath::Shows::new(&config.tree);
    let mut buffer = Vec::new();
    for sn in state_files(&dir) {
        if visit_file(&dir.join(format!("{sn}.xml")), &sn, &context, &shows, &mut buffer, visit).is_break() {
            return;
        }
    }
}

/// Every device read as the page reads it, on all cores, for a summary (the metrics): `tally`
/// adds one device (its row without the `show` columns, and its parsed state) to the part of
/// its thread; the parts come back in serial order, for the caller to add up.
pub fn tally_devices<T: Default + Send>(root: &Path, config: &Config, now: i64, tally: &(dyn Fn(&mut T, Row, Option<Node>) + Sync)) -> Vec<T> {
    let Some(status) = &config.status else { return Vec::new() };
    let dir = root.join(&status.dir);
    let folders = Folders::read(root, config, None);
    let targets = Targets::read(root, config);
    let context = RowContext { root, config, folders: &folders, targets: &targets, now, detail: false };
    let serials = state_files(&dir);
    parallel(&serials, &|chunk: &[String]| {
        // no `show` columns: their XPath is the dearest part of a row and no summary uses it
        let shows = xpath::Shows::none();
        let mut buffer = Vec::new();
        let mut part = T::default();
        for sn in chunk {
            let _ = visit_file(&dir.join(format!("{sn}.xml")), sn, &context, &shows, &mut buffer, &mut |row, state| {
                tally(&mut part, row, state);
                ControlFlow::Continue(())
            });
        }
        part
    })
}

/// Builds a row from a parsed state.
pub fn row_of_state(state: Node, sn: &str, context: &RowContext, shows: &xpath::Shows) -> Row {
    let config = context.config;
    let now = context.now;
    let device = state.child("device").unwrap_or_default();
    let attr = |e: Node, name: &str| e.attr(name).unwrap_or("").to_string();
    let seen = state.attr("seen").and_then(|s| s.trim().parse::<i64>().ok()).unwrap_or(0);
    let missing_after = config.status.as_ref().map_or(0, |s| s.missing);
    let missing = missing_after > 0 && seen < now - missing_after;
    let ip = attr(device, "ip");
    let realip = attr(device, "realip");
    let proxy = attr(device, "proxy");
    let reverse_proxied = device.attr("rp") == Some("true");
    let address = if realip.is_empty() { ip.clone() } else { realip.clone() };
    let via = if (!realip.is_empty() && realip != ip) || reverse_proxied {
        if proxy.is_empty() { format!("(via {ip})") } else { format!("(via {proxy} and {ip})") }
    } else {
        String::new()
    };
    let https_links = config.status.as_ref().is_none_or(|s| s.usehttpsdevlinks);
    let device_link = plain_address(&address).map(|a| format!("{}://{a}/", if https_links { "https" } else { "http" }));
    let queries = state.child("queries");
    let name = queries
        .and_then(|q| q.child("admin"))
        .and_then(|a| a.child("info"))
        .and_then(|i| i.attr("name"))
        .unwrap_or("")
        .to_string();
    let firmware = state.child("firmware").map(|f| attr(f, "build")).unwrap_or_default();
    let firmware_requested = state
        .child("firmware")
        .map(|f| attr(f, "requested"))
        .filter(|r| !r.is_empty() && *r != firmware)
        .unwrap_or_default();
    let bootcode = state.child("bootcode").map(|f| attr(f, "build")).unwrap_or_default();
    let phase = attr(device, "phase");
    let classes = attr(device, "classes");
    let environments = attr(device, "environments");
    let device_type = attr(device, "type");
    let facts = facts_of(state, sn, now, missing_after);
    let msgs: Vec<Node> = state.children_named("msgs").collect();
    let msgs_shown = if context.detail {
        msgs.iter()
            .enumerate()
            .map(|(i, m)| {
                let text = attr(*m, "msg");
                let time = m.attr("time").and_then(|t| t.parse().ok()).unwrap_or(0);
                Msg { ruler: i == 0 || text.is_empty(), text, since: Since::of(time, now) }
            })
            .collect()
    } else {
        Vec::new()
    };
    let hwid = attr(device, "hwid");
    let backup = config.backup.as_ref().map(|b| {
        let has_files = crate::device::is_plain_token(&hwid) && context.folders.backup_dirs.contains(&hwid);
        let last = device.attr("backup").and_then(|t| t.parse::<i64>().ok()).map(|t| Since::of(t, now));
        let files = if context.detail && has_files { backup_files(context.root, &b.dir, &hwid, sn, now) } else { Vec::new() };
        BackupCell { last, has_files, files }
    });
    // SPA devices take no part in the certificate roll-out (SPEC §5): no cell rather than a
    // status of "unknown" on every phone
    let certs = cert_dir(config).filter(|_| !is_spa(device)).map(|dir| {
        let names = context.folders.cert_files.get(sn).map(Vec::as_slice).unwrap_or(&[]);
        cert_cell(state, device, sn, &dir, names)
    });
    let snippets = state
        .children_named("config")
        .map(|c| {
            let file = attr(c, "filename");
            let time = |name: &str| c.attr(name).and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
            Snippet {
                link: Link { href: deliver_href(&file), title: format!("download {file}"), label: file },
                delivered: Since::short(time("delivered"), now),
                version: Since::short(time("version"), now),
            }
        })
        .collect();
    let info = (!shows.queries.is_empty()).then(|| info_blocks(state, shows, now));
    let firmware_via = state.child("firmware").map(|f| attr(f, "via")).unwrap_or_default();
    let (spa, next_hop, path) = if is_spa(device) {
        let upgrade_path = crate::upgrades::spa_path(&config.upgrades, &device_type);
        let version = attr(device, "version");
        let next = hops::spa_hop(upgrade_path, &version);
        let line = if context.detail { upgrade_path.map(hops::spa_path_line).unwrap_or_default() } else { String::new() };
        let profile = device.attr("profile").and_then(|t| t.trim().parse::<i64>().ok()).unwrap_or(0);
        let facts = SpaFacts {
            vendor: attr(device, "vendor"),
            mac: sn.replace('-', "").to_ascii_uppercase(),
            serial: attr(device, "serial"),
            version,
            hop_sent: attr(device, "hop"),
            profile: Since::of(profile, now),
        };
        (Some(facts), Some(next), line)
    } else if context.targets.paths {
        build_path_cells(state, &device_type, &environments, context)
    } else {
        (None, None, String::new())
    };
    Row {
        sn: sn.to_string(),
        broken: None,
        missing,
        facts,
        device_link,
        address,
        via,
        device_type,
        name,
        has_msgs: !msgs.is_empty(),
        detail: context.detail,
        msgs: msgs_shown,
        seen: Since::of(seen, now),
        backup,
        firmware,
        firmware_requested,
        bootcode,
        certs,
        phase,
        classes,
        environments,
        snippets,
        info,
        spa,
        firmware_via,
        next_hop,
        path,
    }
}

/// The next hop and the path line of an innovaphone device, when it is on a path.
fn build_path_cells(state: Node, device_type: &str, environments: &str, context: &RowContext) -> (Option<SpaFacts>, Option<Hop>, String) {
    let config = context.config;
    let classes = crate::script::decide::device_classes(config, device_type);
    let environments: Vec<String> = environments.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect();
    let Some(path) = crate::upgrades::build_path(&config.upgrades, &classes, &environments) else {
        return (None, None, String::new());
    };
    let target = context.targets.of_device(config, device_type, &classes, &environments);
    let prot = state.child("firmware").and_then(|f| f.attr("build")).filter(|b| !b.trim().is_empty());
    let line = if context.detail { hops::build_path_line(path, &target) } else { String::new() };
    (None, hops::build_hop(&target, path, prot), line)
}

/// An address we are willing to put into a link: an IPv4/IPv6 address or a host name.
fn plain_address(address: &str) -> Option<String> {
    if let Ok(ip) = address.parse::<std::net::IpAddr>() {
        return Some(match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        });
    }
    let host_like = !address.is_empty()
        && address.len() <= 253
        && address.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    host_like.then(|| address.to_string())
}

fn backup_files(root: &Path, dir: &str, hwid: &str, sn: &str, now: i64) -> Vec<BackupFile> {
    let stored = crate::backup::stored(&root.join(dir).join(hwid), hwid);
    let mut files: Vec<BackupFile> = stored
        .iter()
        .enumerate()
        .map(|(position, stored)| {
            let name = format!("{hwid}.{}.txt", stored.index);
            let path = format!("{dir}/{hwid}/{name}");
            let time = std::fs::metadata(&stored.path).and_then(|m| m.modified()).map(crate::clock::epoch_of).unwrap_or(0);
            let since = Since::of(time, now);
            let link = Link { label: format!("#{} · {}", stored.index, since.text), href: deliver_href(&path), title: format!("{path}, {}", since.title) };
            // the oldest kept has nothing before it to compare with
            let diff = (position > 0).then(|| {
                format!("admin.php?mode=backupdiff&sn={sn}&hwid={}&n={}", crate::urlenc::rawurlencode(hwid), stored.index)
            });
            BackupFile { link, diff }
        })
        .collect();
    files.reverse();
    files
}

fn cert_cell(state: Node, device: Node, sn: &str, dir: &str, names: &[String]) -> CertCell {
    let mut files = Vec::new();
    let (mut csr, mut signed) = (false, false);
    for name in names {
        let Some(suffix) = name.strip_prefix(sn) else { continue };
        let (label, title) = match suffix {
            "-request.p10.der" => {
                csr = true;
                ("CSR (DER)", "certificate signing request, DER")
            }
            "-request.p10.pem" => {
                csr = true;
                ("CSR (PEM)", "certificate signing request, PEM")
            }
            "-signedrequest.cer" => {
                signed = true;
                ("Certificate", "the signed certificate, waiting for the device")
            }
            "-requesterror" => ("Request error", "the error the device reported for the last upload"),
            _ => continue,
        };
        let path = format!("{dir}/{name}");
        files.push(CertFile { link: Link { label: label.into(), href: deliver_href(&path), title: title.into() }, path });
    }
    let note = match (csr, signed) {
        (true, true) => "signed CSR waiting for device upload",
        (true, false) => "CSR waiting for signature",
        _ => "",
    };
    let request_error = state
        .child("queries")
        .and_then(|q| q.child("certificates"))
        .and_then(|c| c.child("info"))
        .is_some_and(|i| i.child("request-error").is_some());
    CertCell {
        status: device.attr("certstat").filter(|s| !s.is_empty()).unwrap_or("unknown").to_string(),
        request_error,
        files,
        note: note.into(),
        upload: csr && !signed,
    }
}

fn info_blocks(state: Node, shows: &xpath::Shows, now: i64) -> Vec<InfoBlock> {
    let Some(queries) = state.child("queries") else { return Vec::new() };
    let mut document: Option<StateDocument> = None;
    shows
        .queries
        .iter()
        .filter_map(|query| {
            let answer = queries.child(&query.id)?;
            let document = document.get_or_insert_with(|| StateDocument::new(state, &shows.reach));
            let seen = answer.attr("seen").and_then(|t| t.parse().ok()).unwrap_or(0);
            Some(InfoBlock {
                query: query.id.clone(),
                title: query.title.clone(),
                seen: Since::short(seen, now),
                headers: query.columns.iter().map(|c| c.title.clone()).collect(),
                values: query
                    .columns
                    .iter()
                    .map(|c| match document.evaluate(c, &shows.context) {
                        Ok(text) => InfoValue { text, error: false },
                        Err(text) => InfoValue { text, error: true },
                    })
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        assert_eq!(since(100, 105), "5 secs");
        assert_eq!(since(100, 101), "1 sec");
        assert_eq!(since(0, 150), "2.5 mins");
        assert_eq!(since(0, 90 * 60), "90 mins");
        assert_eq!(since(0, 3 * 3600), "3 hours");
        assert_eq!(since(0, 86400 * 3), "3 days");
        assert_eq!(since(0, 86400 * 7 * 20), "20 weeks");
        assert_eq!(Since::of(0, 5).text, "∞");
    }

    #[test]
    fn serial_prefixes() {
        assert_eq!(serial_prefix("00-90-33-3e-0c-57-request.p10.der"), Some("00-90-33-3e-0c-57"));
        assert_eq!(serial_prefix("0090333e0c57-signedrequest.cer"), Some("0090333e0c57"));
        assert_eq!(serial_prefix("CAkey1.pem"), None);
    }

    const PATHS: &str = r#"<upgrades>
        <path models="SPA504G" version="7.6.1" file="fw/cisco/spa50x-30x-7-6-1.bin" downgradelimit="7.6.1">
          <via version="7.5.2b" file="fw/cisco/spa50x-30x-7-5-2b.bin"/>
        </path>
        <path applies="phone"><via build="131504"/></path>
      </upgrades>"#;

    fn config(user: &str) -> Config {
        let defaults = crate::xml::Element::parse_trusted(include_str!("../../config.xml")).unwrap();
        crate::config::build(defaults, &crate::xml::Element::parse(user).unwrap(), "user-config.xml").unwrap()
    }

    /// The row of a state text and its HTML, as the page renders it.
    fn row_and_html(config: &Config, targets: &Targets, sn: &str, state: &str, detail: bool) -> (Row, String) {
        use askama::Template;
        let doc = tree::parse(state).unwrap();
        let folders = Folders::default();
        let context = RowContext { root: Path::new("/nonexistent"), config, folders: &folders, targets, now: 1_700_000_600, detail };
        let row = row_of_state(Node::of(doc.root_element()), sn, &context, &xpath::Shows::new(&config.tree));
        let page = super::super::templates::Page::default();
        let html = (super::super::templates::RowFragment { page: &page, cols: &columns(config), row: &row }).render().unwrap();
        (row, html)
    }

    const SPA_STATE: &str = r#"<state seen="1700000000" phase="update" nextphase="">
  <device sn="58-bf-ea-11-04-e6" type="SPA504G" vendor="Linksys" serial="CCQ16380FYH" version="7.3.7" classes="spa50x, spa504g" ip="10.0.0.5" rp="false" proxy="" phase="update" environments="default" hop="7.5.2b" profile="1700000000"/>
</state>"#;

    #[test]
    fn an_spa_row_shows_its_facts_and_next_hop() {
        let c = config(&format!("<config><master info=''/>{PATHS}</config>"));
        let targets = Targets::of(&c, None);
        let (row, html) = row_and_html(&c, &targets, "58-bf-ea-11-04-e6", SPA_STATE, false);
        let spa = row.spa.as_ref().expect("an SPA row");
        assert_eq!(
            [spa.vendor.as_str(), spa.mac.as_str(), spa.serial.as_str(), spa.version.as_str(), spa.hop_sent.as_str(), spa.profile.text.as_str()],
            ["Linksys", "58BFEA1104E6", "CCQ16380FYH", "7.3.7", "7.5.2b", "10 mins"]
        );
        assert_eq!(row.next_hop.as_ref().map(|h| h.text.as_str()), Some("7.5.2b (via)"));
        assert_eq!((row.phase.as_str(), row.device_type.as_str(), row.path.as_str()), ("update", "SPA504G", ""));
        assert!(row.facts.ends_with(" spa 58bfea1104e6 linksys ccq16380fyh 7.3.7 7.5.2b"), "{}", row.facts);
        for needle in [
            "class=\"device spa\"",
            "SPA504G <span class=\"tag vendor\"",
            ">Linksys</span>",
            "<span class=\"prompt\">MAC</span> 58BFEA1104E6 <span class=\"prompt\">serial</span> CCQ16380FYH",
            "title=\"firmware version the device reported\">7.3.7</span> <span class=\"requested\" title=\"the firmware the last profile sent\">→ 7.5.2b</span>",
            "<div class=\"next load\" title=\"fw/cisco/spa50x-30x-7-5-2b.bin, an intermediate version on the way to 7.6.1\"><span class=\"prompt\">next:</span> 7.5.2b (via)</div>",
            "<span class=\"prompt\">profile:</span> <span title=\"Tue, 14 Nov 2023 22:13:20 GMT\">10 mins</span>",
        ] {
            assert!(html.contains(needle), "{needle}\nin {html}");
        }
        // no boot code line and no path line outside the details
        assert!(!html.contains("<br>") && !html.contains("class=\"path\""), "{html}");
        let (row, html) = row_and_html(&c, &targets, "58-bf-ea-11-04-e6", SPA_STATE, true);
        assert_eq!(row.path, "7.5.2b (via) → 7.6.1, downgrade limit 7.6.1");
        assert!(html.contains("<span class=\"prompt\">path:</span> 7.5.2b (via) → 7.6.1, downgrade limit 7.6.1"), "{html}");
        // a model without a path, and one without a hop sent
        let other = SPA_STATE.replace("SPA504G", "SPA525G").replace(" hop=\"7.5.2b\"", "");
        let (row, html) = row_and_html(&c, &targets, "58-bf-ea-11-04-e6", &other, false);
        assert_eq!(row.next_hop.as_ref().map(|h| h.text.as_str()), Some("no path"));
        assert!(!html.contains("class=\"requested\""), "{html}");
    }

    fn innovaphone_state(build: &str, via: &str) -> String {
        format!(
            r#"<state seen="1700000000" phase="update"><device sn="00-90-33-3e-0c-57" type="IP232" classes="phone, ip232" ip="172.16.4.57" phase="update" environments="default"/><firmware build="{build}" requested="131504"{via} requested-at="1700000000"/><bootcode build="131000"/></state>"#
        )
    }

    #[test]
    fn an_innovaphone_row_on_a_path_shows_the_via_and_the_next_hop() {
        let c = config(&format!("<config><master info='http://10.0.0.1/CMD0/box_info.xml'/>{PATHS}</config>"));
        let cached = ("134567".to_string(), "134560".to_string());
        let known = Targets::of(&c, Some(&cached));
        let state = innovaphone_state("130178", " via=\"131504\"");
        let (row, html) = row_and_html(&c, &known, "00-90-33-3e-0c-57", &state, false);
        assert!(row.spa.is_none() && !row.facts.contains(" spa "), "{}", row.facts);
        assert_eq!(row.firmware_via, "131504");
        assert_eq!(row.next_hop.as_ref().map(|h| h.text.as_str()), Some("131504 (via)"));
        for needle in [
            "130178 <span class=\"requested\" title=\"requested firmware\">→ 131504</span><br>131000",
            "<div class=\"via-build\" title=\"the via build the last firmware command named\"><span class=\"prompt\">via:</span> 131504</div>",
            "<span class=\"prompt\">next:</span> 131504 (via)</div>",
        ] {
            assert!(html.contains(needle), "{needle}\nin {html}");
        }
        assert!(!html.contains("class=\"device spa"), "{html}");
        // past the via: the master's build; at it: nothing to load
        let (row, _) = row_and_html(&c, &known, "00-90-33-3e-0c-57", &innovaphone_state("131504", ""), true);
        assert_eq!((row.next_hop.as_ref().map(|h| h.text.as_str()), row.firmware_via.as_str()), (Some("134567"), ""));
        assert_eq!(row.path, "131504 (via) → 134567");
        let (row, _) = row_and_html(&c, &known, "00-90-33-3e-0c-57", &innovaphone_state("134567", ""), false);
        assert_eq!(row.next_hop.as_ref().map(|h| h.text.as_str()), Some("at target"));
        // no cached master info: the via from the state only
        let unknown = Targets::of(&c, None);
        let (row, html) = row_and_html(&c, &unknown, "00-90-33-3e-0c-57", &state, false);
        assert_eq!((row.next_hop.as_ref(), row.firmware_via.as_str()), (None, "131504"));
        assert!(html.contains("via:</span> 131504") && !html.contains("next:"), "{html}");
        // a device on no path (a gateway): nothing new
        let gw = state.replace("type=\"IP232\"", "type=\"IP1202\"");
        let (row, html) = row_and_html(&c, &known, "00-90-33-3e-0c-57", &gw, false);
        assert!(row.next_hop.is_none() && !html.contains("next:"), "{html}");
    }

    #[test]
    fn links_only_to_addresses() {
        assert_eq!(plain_address("172.16.4.57").as_deref(), Some("172.16.4.57"));
        assert_eq!(plain_address("fe80::1").as_deref(), Some("[fe80::1]"));
        assert_eq!(plain_address("javascript:alert(1)"), None);
        assert_eq!(plain_address("a b"), None);
    }
}
