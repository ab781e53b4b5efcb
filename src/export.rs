//! The inventory export (`update-server export`, `admin.php?mode=export`): one record per
//! device, innovaphone and SPA alike, as JSON (an array of objects with the same keys in the
//! same order) or CSV (RFC 4180, a header row). The devices are read as the status page reads
//! them ([`crate::admin::status::each_device`]), one state file at a time, and every record is
//! written as soon as it is built.

use crate::admin::status::{self, Row};
use crate::admin::tree::Node;
use crate::config::Config;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

impl Format {
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8; header=present",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }
}

/// One field of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Flag(bool),
    /// Seconds since the epoch, written as ISO 8601 UTC.
    Time(i64),
    /// Does not apply to this device (JSON `null`, an empty CSV field).
    Absent,
}

/// The keys of every record, in their order; the `show` columns last.
pub const FIXED_KEYS: [&str; 29] = [
    "serial",
    "broken",
    "kind",
    "hwid",
    "type",
    "name",
    "address",
    "ip",
    "proxy",
    "phase",
    "environments",
    "classes",
    "firmware",
    "firmware_requested",
    "firmware_via",
    "bootcode",
    "next_hop",
    "last_seen",
    "missing",
    "last_backup",
    "certificate",
    "certificate_note",
    "mac",
    "vendor",
    "spa_serial",
    "spa_version",
    "spa_hop_sent",
    "spa_last_profile",
    "show",
];

/// A `show` column: the query it belongs to and its title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowKey {
    pub query: String,
    pub title: String,
}

impl ShowKey {
    /// The configured columns, in the order of the configuration; a title repeated within a
    /// query gets ` (2)`, ` (3)` so that every key is unique.
    pub fn of(config: &Config) -> Vec<ShowKey> {
        let mut keys: Vec<ShowKey> = Vec::new();
        for query in crate::admin::xpath::columns(&config.tree) {
            for column in &query.columns {
                let mut title = column.title.clone();
                let mut n = 1;
                while keys.iter().any(|k| k.query == query.id && k.title == title) {
                    n += 1;
                    title = format!("{} ({n})", column.title);
                }
                keys.push(ShowKey { query: query.id.clone(), title });
            }
        }
        keys
    }

    /// Its CSV header: `show:registration/State: User/Number`.
    fn csv_header(&self) -> String {
        format!("show:{}/{}", self.query, self.title)
    }
}

/// A device's record: the values of [`FIXED_KEYS`] but `show`, then one per show column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub fixed: Vec<Value>,
    pub show: Vec<Value>,
}

/// The record of a device from its status-page row and its parsed state (None: unreadable).
pub fn record(row: &Row, state: Option<Node>, keys: &[ShowKey]) -> Record {
    let text = |s: &str| Value::Text(s.to_string());
    let Some(state) = state else {
        let mut fixed = vec![Value::Absent; FIXED_KEYS.len() - 1];
        fixed[0] = text(&row.sn);
        fixed[1] = row.broken.as_deref().map_or(Value::Absent, text);
        return Record { fixed, show: vec![Value::Absent; keys.len()] };
    };
    let device = state.child("device").unwrap_or_default();
    let attr = |e: Node, name: &str| Value::Text(e.attr(name).unwrap_or("").to_string());
    let time = |value: Option<&str>| match value.and_then(|t| t.trim().parse::<i64>().ok()) {
        Some(t) if t > 0 => Value::Time(t),
        _ => Value::Absent,
    };
    let firmware = state.child("firmware").unwrap_or_default();
    let spa = row.spa.as_ref();
    let spa_text = |pick: fn(&status::SpaFacts) -> &str| spa.map_or(Value::Absent, |s| text(pick(s)));
    let fixed = vec![
        text(&row.sn),
        Value::Absent,
        text(if spa.is_some() { "spa" } else { "innovaphone" }),
        attr(device, "hwid"),
        text(&row.device_type),
        text(&row.name),
        text(&row.address),
        attr(device, "ip"),
        attr(device, "proxy"),
        text(&row.phase),
        text(&row.environments),
        text(&row.classes),
        text(&row.firmware),
        attr(firmware, "requested"),
        text(&row.firmware_via),
        text(&row.bootcode),
        row.next_hop.as_ref().map_or(Value::Absent, |h| text(&h.text)),
        time(state.attr("seen")),
        Value::Flag(row.missing),
        time(device.attr("backup")),
        row.certs.as_ref().map_or(Value::Absent, |c| text(&c.status)),
        row.certs.as_ref().map_or(Value::Absent, |c| text(&c.note)),
        spa_text(|s| &s.mac),
        spa_text(|s| &s.vendor),
        spa_text(|s| &s.serial),
        spa_text(|s| &s.version),
        spa_text(|s| &s.hop_sent),
        if spa.is_some() { time(device.attr("profile")) } else { Value::Absent },
    ];
    let blocks = row.info.as_deref().unwrap_or(&[]);
    let show = keys
        .iter()
        .map(|key| {
            let Some(block) = blocks.iter().find(|b| b.query == key.query) else { return Value::Absent };
            // the n-th column of the query is the n-th key of the query
            let index = keys.iter().filter(|k| k.query == key.query).position(|k| k == key);
            index.and_then(|i| block.values.get(i)).map_or(Value::Absent, |v| text(&v.text))
        })
        .collect();
    Record { fixed, show }
}

/// A JSON value.
fn json_value(value: &Value) -> String {
    match value {
        Value::Text(text) => crate::admin::json_string(text),
        Value::Flag(flag) => flag.to_string(),
        Value::Time(time) => crate::admin::json_string(&crate::clock::iso8601(*time)),
        Value::Absent => "null".into(),
    }
}

/// A record as one JSON object on one line; the `show` columns an object by query and title.
pub fn json_object(record: &Record, keys: &[ShowKey]) -> String {
    let mut out = String::from("{");
    for (key, value) in FIXED_KEYS.iter().zip(&record.fixed) {
        out.push_str(&format!("\"{key}\":{},", json_value(value)));
    }
    out.push_str("\"show\":{");
    let mut queries: Vec<&str> = keys.iter().map(|k| k.query.as_str()).collect();
    queries.dedup();
    for (n, query) in queries.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&format!("{}:{{", crate::admin::json_string(query)));
        let columns = keys.iter().zip(&record.show).filter(|(k, _)| k.query == *query);
        for (i, (key, value)) in columns.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!("{}:{}", crate::admin::json_string(&key.title), json_value(value)));
        }
        out.push('}');
    }
    out.push_str("}}");
    out
}

/// A CSV field (RFC 4180): quoted when it holds a quote, comma or line break, quotes doubled.
/// A field a spreadsheet would take for a formula (starting with `=`, `+`, `-`, `@`, a tab or
/// a carriage return) gets a leading `'`, so that opening the export runs nothing a device
/// put into its state (a name, a `show` value).
pub fn csv_field(text: &str) -> String {
    let guarded = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text.to_string() };
    if guarded.contains(['"', ',', '\r', '\n']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// A CSV line with its CRLF.
fn csv_line<'a>(fields: impl Iterator<Item = std::borrow::Cow<'a, str>>) -> String {
    let mut line = fields.map(|f| csv_field(&f)).collect::<Vec<_>>().join(",");
    line.push_str("\r\n");
    line
}

fn csv_text(value: &Value) -> std::borrow::Cow<'_, str> {
    match value {
        Value::Text(text) => text.into(),
        Value::Flag(flag) => flag.to_string().into(),
        Value::Time(time) => crate::clock::iso8601(*time).into(),
        Value::Absent => "".into(),
    }
}

/// The CSV header row.
pub fn csv_header(keys: &[ShowKey]) -> String {
    let fixed = FIXED_KEYS[..FIXED_KEYS.len() - 1].iter().map(|k| (*k).into());
    csv_line(fixed.chain(keys.iter().map(|k| k.csv_header().into())))
}

/// A record as a CSV line.
pub fn csv_record(record: &Record) -> String {
    csv_line(record.fixed.iter().chain(&record.show).map(csv_text))
}

/// Writes every device under `root` to `out`; the number of records. A failed write ends the
/// export at once (a closed pipe: `update-server export | head`).
pub fn write(root: &Path, config: &Config, now: i64, format: Format, out: &mut dyn Write) -> std::io::Result<usize> {
    let keys = ShowKey::of(config);
    let mut count = 0;
    let mut failure = None;
    let head = match format {
        Format::Json => "[".to_string(),
        Format::Csv => csv_header(&keys),
    };
    out.write_all(head.as_bytes())?;
    status::each_device(root, config, now, &mut |row, state| {
        let record = record(&row, state, &keys);
        let text = match format {
            Format::Json => format!("{}\n{}", if count == 0 { "" } else { "," }, json_object(&record, &keys)),
            Format::Csv => csv_record(&record),
        };
        match out.write_all(text.as_bytes()) {
            Ok(()) => {
                count += 1;
                ControlFlow::Continue(())
            }
            Err(error) => {
                failure = Some(error);
                ControlFlow::Break(())
            }
        }
    });
    if let Some(error) = failure {
        return Err(error);
    }
    if format == Format::Json {
        out.write_all(b"\n]\n")?;
    }
    out.flush()?;
    Ok(count)
}

/// `update-server export`: the records on standard output, a count on standard error.
pub fn run(root: &Path, format: Format) -> u8 {
    let config = match crate::config::load(root) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("update-server export: {error}");
            return 1;
        }
    };
    if config.status.is_none() {
        eprintln!("update-server export: device state tracking is off (no <status dir=\"…\"/> in {}): there are no devices to export", config.user_file);
        return 1;
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match write(root, &config, crate::clock::now(), format, &mut out) {
        Ok(count) => {
            eprintln!("update-server export: {count} device{}", if count == 1 { "" } else { "s" });
            0
        }
        Err(error) => {
            eprintln!("update-server export: cannot write the export: {error}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_guarded() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\r\nlines"), "\"two\r\nlines\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        for formula in ["+1", "-1+2", "@SUM(A1)", "\tx"] {
            assert_eq!(csv_field(formula), format!("'{formula}"));
        }
        // a dash inside a value (serials, MACs) is no formula
        assert_eq!(csv_field("00-90-33-3e-0c-57"), "00-90-33-3e-0c-57");
        assert_eq!(csv_line(["a", "b,c", ""].into_iter().map(Into::into)), "a,\"b,c\",\r\n");
    }

    fn keys() -> Vec<ShowKey> {
        vec![
            ShowKey { query: "registration".into(), title: "User".into() },
            ShowKey { query: "registration".into(), title: "User (2)".into() },
            ShowKey { query: "admin".into(), title: "Name \"x\"".into() },
        ]
    }

    #[test]
    fn json_objects_have_every_key_in_order() {
        let mut fixed = vec![Value::Absent; FIXED_KEYS.len() - 1];
        fixed[0] = Value::Text("00-90-33-3e-0c-57".into());
        fixed[5] = Value::Text("<b>\"Lobby\"</b>\n".into());
        fixed[17] = Value::Time(1_700_000_000);
        fixed[18] = Value::Flag(true);
        let record = Record { fixed, show: vec![Value::Text("alice".into()), Value::Absent, Value::Text("a\\b".into())] };
        let json = json_object(&record, &keys());
        assert!(json.starts_with("{\"serial\":\"00-90-33-3e-0c-57\",\"broken\":null,\"kind\":null,"), "{json}");
        assert!(json.contains(",\"name\":\"\\u003cb\\u003e\\\"Lobby\\\"\\u003c/b\\u003e\\n\","), "{json}");
        assert!(json.contains(",\"last_seen\":\"2023-11-14T22:13:20Z\",\"missing\":true,\"last_backup\":null,"), "{json}");
        assert!(
            json.ends_with(",\"show\":{\"registration\":{\"User\":\"alice\",\"User (2)\":null},\"admin\":{\"Name \\\"x\\\"\":\"a\\\\b\"}}}"),
            "{json}"
        );
        let positions: Vec<usize> = FIXED_KEYS.iter().map(|k| json.find(&format!("\"{k}\":")).expect(k)).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "keys in order: {json}");
    }

    #[test]
    fn csv_rows_line_up_with_the_header() {
        let header = csv_header(&keys());
        assert!(header.starts_with("serial,broken,kind,hwid,type,"), "{header}");
        assert!(header.ends_with(",spa_last_profile,show:registration/User,show:registration/User (2),\"show:admin/Name \"\"x\"\"\"\r\n"), "{header}");
        let mut fixed = vec![Value::Absent; FIXED_KEYS.len() - 1];
        fixed[0] = Value::Text("a".into());
        fixed[18] = Value::Flag(false);
        let line = csv_record(&Record { fixed, show: vec![Value::Absent; 3] });
        assert_eq!(line.matches(',').count(), header.matches(',').count(), "{line}");
        assert!(line.starts_with("a,,") && line.contains(",false,"), "{line}");
    }
}
