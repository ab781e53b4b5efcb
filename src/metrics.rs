//! Fleet metrics in the Prometheus text exposition format 0.0.4 (`admin.php?mode=metrics`):
//! the devices as the status page reads them, summed up (by type, phase, firmware, certificate
//! state; missing, broken, stale backups), and this process's request counters since it
//! started (polls, their answers and refusals, a histogram of request durations per script).
//!
//! The counters live in the [`App`](crate::app::App), counted by whichever front door runs it
//! (serve, FastCGI). A CGI process answers one request and ends: its counters only ever show
//! that request.

use crate::admin::status::Row;
use crate::admin::tree::Node;
use crate::config::Config;
use crate::route::Route;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the request duration histogram's buckets; `+Inf` follows.
pub const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// The scripts the durations are kept apart for, as the `script` label names them.
const SCRIPTS: [&str; 4] = ["update", "admin", "migrate", "other"];

fn script_index(route: Route) -> usize {
    match route {
        Route::Update => 0,
        Route::Admin => 1,
        Route::Migrate => 2,
        Route::Unknown => 3,
    }
}

/// Most label values one family shows; the devices beyond them are summed under `other`, so a
/// fleet of odd values (or a flood of made-up types) cannot make the answer grow without end.
pub const MAX_SERIES: usize = 500;

#[derive(Default)]
struct Histogram {
    /// Requests at most as long as each bound (not cumulative; summed when shown).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// The request counters of this process.
pub struct Counters {
    started: i64,
    polls: AtomicU64,
    answers: AtomicU64,
    refusals: AtomicU64,
    durations: [Histogram; SCRIPTS.len()],
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            started: crate::clock::now(),
            polls: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            durations: Default::default(),
        }
    }
}

/// The counters at one moment, for [`exposition`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub started: i64,
    pub polls: u64,
    pub answers: u64,
    pub refusals: u64,
    /// Per script: cumulative bucket counts, count, sum in seconds.
    pub durations: Vec<(&'static str, Vec<u64>, u64, f64)>,
}

impl Counters {
    /// Counts one answered request: a device poll (`update.php` without `mode`) is an answer
    /// below status 400 and a refusal from 400 on.
    pub fn record(&self, route: Route, poll: bool, status: u16, elapsed: Duration) {
        if poll {
            self.polls.fetch_add(1, Ordering::Relaxed);
            let outcome = if status < 400 { &self.answers } else { &self.refusals };
            outcome.fetch_add(1, Ordering::Relaxed);
        }
        let histogram = &self.durations[script_index(route)];
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            histogram.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        histogram.count.fetch_add(1, Ordering::Relaxed);
        histogram.sum_micros.fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let durations = SCRIPTS
            .iter()
            .zip(&self.durations)
            .map(|(script, h)| {
                let mut running = 0;
                let cumulative = h.buckets.iter().map(|b| {
                    running += load(b);
                    running
                });
                (*script, cumulative.collect(), load(&h.count), load(&h.sum_micros) as f64 / 1e6)
            })
            .collect();
        Snapshot { started: self.started, polls: load(&self.polls), answers: load(&self.answers), refusals: load(&self.refusals), durations }
    }
}

/// Whether an `update.php` query string is a device's poll (no `mode`).
pub fn is_poll(query: &str) -> bool {
    crate::urlenc::query_arg(query, "mode").is_none_or(|mode| mode.is_empty())
}

/// The devices summed up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fleet {
    pub devices: u64,
    pub broken: u64,
    pub missing: u64,
    pub by_type: BTreeMap<String, u64>,
    pub by_phase: BTreeMap<String, u64>,
    pub by_firmware: BTreeMap<String, u64>,
    pub by_certificate: BTreeMap<String, u64>,
    /// Present innovaphone devices without a backup, and with one older than the limit.
    pub backup_none: u64,
    pub backup_old: u64,
}

/// What decides a device's place in the sums besides its row.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub now: i64,
    /// Backups are configured.
    pub backups: bool,
    /// A backup older than this many seconds is stale.
    pub backup_stale_after: i64,
}

impl Limits {
    /// A backup is stale after `status/@missing` (the age at which the page calls a device
    /// missing; 7 days by default), or 7 days when that is 0 (nobody is ever missing).
    pub fn of(config: &Config, now: i64) -> Limits {
        let missing = config.status.as_ref().map_or(0, |s| s.missing);
        Limits { now, backups: config.backup.is_some(), backup_stale_after: if missing > 0 { missing } else { 7 * 86_400 } }
    }
}

fn label_or_unknown(value: &str) -> String {
    if value.trim().is_empty() { "unknown".into() } else { value.to_string() }
}

impl Fleet {
    /// Adds a device: its status-page row and its parsed state (None: unreadable).
    pub fn add(&mut self, row: &Row, state: Option<Node>, limits: &Limits) {
        self.devices += 1;
        let Some(state) = state else {
            self.broken += 1;
            return;
        };
        let bump = |map: &mut BTreeMap<String, u64>, key: &str| *map.entry(label_or_unknown(key)).or_default() += 1;
        self.missing += u64::from(row.missing);
        bump(&mut self.by_type, &row.device_type);
        bump(&mut self.by_phase, &row.phase);
        bump(&mut self.by_firmware, row.spa.as_ref().map_or(&row.firmware, |s| &s.version));
        if let Some(certs) = &row.certs {
            bump(&mut self.by_certificate, &certs.status);
        }
        // SPA phones store no backups; a missing device's old backup says nothing new
        if limits.backups && row.spa.is_none() && !row.missing {
            let device = state.child("device").unwrap_or_default();
            match device.attr("backup").and_then(|t| t.trim().parse::<i64>().ok()).filter(|t| *t > 0) {
                None => self.backup_none += 1,
                Some(time) if time < limits.now - limits.backup_stale_after => self.backup_old += 1,
                Some(_) => {}
            }
        }
    }

    pub fn merge(&mut self, other: Fleet) {
        self.devices += other.devices;
        self.broken += other.broken;
        self.missing += other.missing;
        self.backup_none += other.backup_none;
        self.backup_old += other.backup_old;
        for (mine, theirs) in [
            (&mut self.by_type, other.by_type),
            (&mut self.by_phase, other.by_phase),
            (&mut self.by_firmware, other.by_firmware),
            (&mut self.by_certificate, other.by_certificate),
        ] {
            for (key, n) in theirs {
                *mine.entry(key).or_default() += n;
            }
        }
    }
}

/// A label value as the exposition format writes it: `\`, `"` and line feeds escaped.
pub fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A HELP text: `\` and line feeds escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value: integers as such, other numbers as Rust prints them (a valid Go float).
fn number(value: f64) -> String {
    if value.is_finite() && value == value.trunc() && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// The text being built, family by family.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.0.push_str(&format!("# HELP {name} {}\n# TYPE {name} {kind}\n", escape_help(help)));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
            self.0.push_str(&format!("{{{}}}", inner.join(",")));
        }
        self.0.push_str(&format!(" {}\n", number(value)));
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value as f64);
    }

    /// A gauge by one label, at most [`MAX_SERIES`] values, the rest summed under `other`.
    fn gauge_by(&mut self, name: &str, help: &str, label: &str, counts: &BTreeMap<String, u64>) {
        self.family(name, "gauge", help);
        let mut shown: Vec<(&String, &u64)> = counts.iter().collect();
        // the largest groups keep their names
        shown.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let rest: u64 = shown.iter().skip(MAX_SERIES).map(|(_, n)| **n).sum();
        shown.truncate(MAX_SERIES);
        shown.sort_by(|a, b| a.0.cmp(b.0));
        for (value, n) in shown {
            self.sample(name, &[(label, value)], *n as f64);
        }
        if rest > 0 {
            self.sample(name, &[(label, "other")], rest as f64);
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value as f64);
    }
}

/// The whole answer of `mode=metrics`.
pub fn exposition(fleet: &Fleet, limits: &Limits, counters: &Snapshot) -> String {
    let mut out = Exposition(String::with_capacity(4096));
    out.gauge("update_server_devices", "Devices with a state file in the status folder.", fleet.devices);
    out.gauge_by("update_server_devices_by_type", "Devices by type (device/@type; SPA phones by model).", "type", &fleet.by_type);
    out.gauge_by("update_server_devices_by_phase", "Devices by the phase they are in.", "phase", &fleet.by_phase);
    out.gauge_by(
        "update_server_devices_by_firmware",
        "Devices by the firmware they run: the build innovaphone devices report, the version SPA phones report.",
        "firmware",
        &fleet.by_firmware,
    );
    out.gauge_by(
        "update_server_devices_by_certificate",
        "innovaphone devices by certificate state (device/@certstat; with customcerts only).",
        "state",
        &fleet.by_certificate,
    );
    out.gauge("update_server_devices_missing", "Devices not seen for status/@missing seconds, as the status page marks them.", fleet.missing);
    out.gauge("update_server_devices_broken", "State files that cannot be read.", fleet.broken);
    out.family(
        "update_server_devices_backup_stale",
        "gauge",
        "Present innovaphone devices whose newest backup is older than update_server_backup_stale_after_seconds (reason=old), or that have none (reason=none); with backups configured only. An unchanged configuration stores no new backup.",
    );
    if limits.backups {
        out.sample("update_server_devices_backup_stale", &[("reason", "none")], fleet.backup_none as f64);
        out.sample("update_server_devices_backup_stale", &[("reason", "old")], fleet.backup_old as f64);
    }
    out.gauge(
        "update_server_backup_stale_after_seconds",
        "The age after which a backup counts as stale: status/@missing, or 7 days when that is 0.",
        limits.backup_stale_after.max(0) as u64,
    );
    let per_process = "Since this process started; a CGI process answers one request, so under CGI this is always that one request.";
    out.gauge("update_server_process_start_time_seconds", "When this process started (seconds since the epoch).", counters.started.max(0) as u64);
    out.counter("update_server_polls_total", &format!("Device polls (update.php without mode). {per_process}"), counters.polls);
    out.counter("update_server_poll_answers_total", &format!("Polls answered with a status below 400. {per_process}"), counters.answers);
    out.counter("update_server_poll_refusals_total", &format!("Polls refused with a status of 400 or more. {per_process}"), counters.refusals);
    let name = "update_server_request_duration_seconds";
    out.family(name, "histogram", &format!("Time to compute an answer, by script. {per_process}"));
    for (script, buckets, count, sum) in &counters.durations {
        for (bound, n) in BUCKETS.iter().zip(buckets) {
            out.sample(&format!("{name}_bucket"), &[("script", script), ("le", &number(*bound))], *n as f64);
        }
        out.sample(&format!("{name}_bucket"), &[("script", script), ("le", "+Inf")], *count as f64);
        out.sample(&format!("{name}_sum"), &[("script", script)], *sum);
        out.sample(&format!("{name}_count"), &[("script", script)], *count as f64);
    }
    out.0
}

/// The fleet under `root`, read as the status page reads it, on all cores.
pub fn fleet(root: &std::path::Path, config: &Config, limits: &Limits) -> Fleet {
    let parts = crate::admin::status::tally_devices(root, config, limits.now, &|part: &mut Fleet, row, state| part.add(&row, state, limits));
    let mut fleet = Fleet::default();
    for part in parts {
        fleet.merge(part);
    }
    fleet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("x\\y\nz \"q\""), "x\\\\y\\nz \"q\"");
        assert_eq!((number(3.0), number(0.0025), number(1e20)), ("3".to_string(), "0.0025".to_string(), "100000000000000000000".to_string()));
    }

    #[test]
    fn polls_are_update_requests_without_mode() {
        assert!(is_poll("type=IP232&sn=00-90-33-3e-0c-57"));
        assert!(is_poll("") && is_poll("mode="));
        assert!(!is_poll("mode=backup&sn=x"));
    }

    #[test]
    fn counters_count_polls_and_fill_cumulative_buckets() {
        let counters = Counters::default();
        counters.record(Route::Update, true, 200, Duration::from_micros(1500));
        counters.record(Route::Update, true, 404, Duration::from_millis(30));
        counters.record(Route::Update, false, 200, Duration::from_secs(20));
        counters.record(Route::Admin, false, 200, Duration::from_micros(100));
        let s = counters.snapshot();
        assert_eq!((s.polls, s.answers, s.refusals), (2, 1, 1));
        let (script, buckets, count, sum) = &s.durations[0];
        assert_eq!((*script, *count), ("update", 3));
        // 1.5 ms from the 0.0025 bucket on, 30 ms from 0.05 on, 20 s beyond the last bound
        assert_eq!(buckets, &[0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]);
        assert!((sum - 20.0315).abs() < 1e-9, "{sum}");
        assert_eq!((s.durations[1].2, s.durations[2].2), (1, 0));
    }

    #[test]
    fn the_exposition_has_help_type_and_escaped_samples() {
        let mut fleet = Fleet { devices: 3, missing: 1, backup_none: 1, ..Fleet::default() };
        fleet.by_type.insert("IP232".into(), 2);
        fleet.by_type.insert("we\"ird\\".into(), 1);
        let limits = Limits { now: 0, backups: true, backup_stale_after: 3600 };
        let counters = Counters::default();
        counters.record(Route::Update, true, 200, Duration::from_millis(2));
        let text = exposition(&fleet, &limits, &counters.snapshot());
        for needle in [
            "# HELP update_server_devices Devices with a state file in the status folder.\n# TYPE update_server_devices gauge\nupdate_server_devices 3\n",
            "update_server_devices_by_type{type=\"IP232\"} 2\nupdate_server_devices_by_type{type=\"we\\\"ird\\\\\"} 1\n",
            "# TYPE update_server_devices_by_certificate gauge\n# HELP update_server_devices_missing",
            "update_server_devices_missing 1\n",
            "update_server_devices_backup_stale{reason=\"none\"} 1\nupdate_server_devices_backup_stale{reason=\"old\"} 0\n",
            "update_server_backup_stale_after_seconds 3600\n",
            "# TYPE update_server_polls_total counter\nupdate_server_polls_total 1\n",
            "# TYPE update_server_request_duration_seconds histogram\n",
            "update_server_request_duration_seconds_bucket{script=\"update\",le=\"0.001\"} 0\nupdate_server_request_duration_seconds_bucket{script=\"update\",le=\"0.0025\"} 1\n",
            "update_server_request_duration_seconds_bucket{script=\"update\",le=\"+Inf\"} 1\nupdate_server_request_duration_seconds_sum{script=\"update\"} 0.002\nupdate_server_request_duration_seconds_count{script=\"update\"} 1\n",
            "update_server_request_duration_seconds_count{script=\"admin\"} 0\n",
        ] {
            assert!(text.contains(needle), "{needle}\nin\n{text}");
        }
        // every sample line belongs to a family announced before it
        let mut announced = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).filter(|f| announced.contains(*f)).unwrap_or(name);
                assert!(announced.contains(family), "{line}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn a_flood_of_label_values_is_capped() {
        let mut counts = BTreeMap::new();
        for i in 0..MAX_SERIES + 10 {
            counts.insert(format!("T{i:04}"), if i == 0 { 100 } else { 1 });
        }
        let mut out = Exposition(String::new());
        out.gauge_by("x", "help", "type", &counts);
        let samples: Vec<&str> = out.0.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples.len(), MAX_SERIES + 1);
        assert!(samples.contains(&"x{type=\"T0000\"} 100"), "the largest group keeps its name");
        assert_eq!(samples.last(), Some(&"x{type=\"other\"} 10"));
    }
}
