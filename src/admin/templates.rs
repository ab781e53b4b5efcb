//! The admin page's HTML, from askama templates in `src/admin/templates/`: compiled into the
//! binary, and every `{{ value }}` HTML-escaped. The one exception is the status page's
//! `{{ rows|safe }}`: the rows are the output of the row template itself (escaped there),
//! rendered in parallel.

use super::status::{Columns, Row};
use askama::Template;

/// What every page shows around its content.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub title: String,
    /// The CSRF token of the session (empty before login).
    pub csrf: String,
    pub logged_in: bool,
    /// Login switched off (`master/@user` and `@password` empty): no logout button.
    pub no_login: bool,
    pub user: String,
    /// `status/@refresh` in seconds (0: off).
    pub refresh: i64,
    /// The user configuration file, relative to the root.
    pub user_file: String,
}

#[derive(Template)]
#[template(path = "login.html", config = "src/admin/askama.toml")]
pub struct LoginPage<'a> {
    pub page: &'a Page,
    /// Why the form is shown again, or what the operator must do first.
    pub notices: Vec<String>,
    pub errors: Vec<String>,
    /// Whether the form can be used at all (HTTPS, a real password, not throttled).
    pub form: bool,
    pub user: String,
    pub https_url: Option<String>,
}

#[derive(Template)]
#[template(path = "status.html", config = "src/admin/askama.toml")]
pub struct StatusPage<'a> {
    pub page: &'a Page,
    pub cols: &'a Columns,
    /// The rows, each rendered by [`RowFragment`] (escaped there) on all cores.
    pub rows: &'a str,
    pub shown: usize,
    pub total: usize,
    pub filter: String,
    /// Why there are no rows at all (status tracking off).
    pub notice: Option<String>,
    pub pager: Pager,
}

/// The page links of a long device list (empty when all matching devices are shown).
#[derive(Debug, Clone, Default)]
pub struct Pager {
    pub text: String,
    pub previous: Option<String>,
    pub next: Option<String>,
    pub all: Option<String>,
}

#[derive(Template)]
#[template(path = "row.html", config = "src/admin/askama.toml")]
pub struct RowFragment<'a> {
    pub page: &'a Page,
    pub cols: &'a Columns,
    pub row: &'a Row,
}

/// One named text block of the configuration page.
#[derive(Debug, Clone)]
pub struct TextBlock {
    pub title: String,
    pub text: String,
    pub note: String,
}

#[derive(Template)]
#[template(path = "show.html", config = "src/admin/askama.toml")]
pub struct ShowPage<'a> {
    pub page: &'a Page,
    pub config: TextBlock,
    pub master: TextBlock,
    pub snippets: Vec<TextBlock>,
    /// What `update-server check` finds: (`error` or `warning`, the finding's line).
    pub findings: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct SetupLinks {
    pub device_name: String,
    pub command_url: String,
    pub ios: String,
    pub android: String,
    pub commands: String,
}

#[derive(Template)]
#[template(path = "info.html", config = "src/admin/askama.toml")]
pub struct InfoPage<'a> {
    pub page: &'a Page,
    pub environments: Vec<(String, bool)>,
    pub device_name: String,
    /// The Command File URL of the chosen environment: shown from the first visit on, it needs
    /// no device name.
    pub command_url: Option<String>,
    pub links: Option<SetupLinks>,
    pub error: Option<String>,
}

/// A device's Preview (`mode=preview`).
#[derive(Template)]
#[template(path = "preview.html", config = "src/admin/askama.toml")]
pub struct PreviewPage<'a> {
    pub page: &'a Page,
    pub sn: String,
    /// Why there is no preview.
    pub error: Option<String>,
    pub values: Vec<super::preview::Value>,
    pub notes: Vec<String>,
    pub next_phase: Option<String>,
    /// `update-server preview …` for the same device.
    pub command: String,
    /// What that command prints: the answer, then the changes.
    pub transcript: String,
}

/// The diff of a backup to the one before it (`mode=backupdiff`).
#[derive(Template)]
#[template(path = "backupdiff.html", config = "src/admin/askama.toml")]
pub struct BackupDiffPage<'a> {
    pub page: &'a Page,
    pub hwid: String,
    /// The device whose row links here (for the way back), when known.
    pub sn: String,
    pub index: Option<u64>,
    pub previous: Option<u64>,
    pub error: Option<String>,
    pub hunks: Vec<super::diff::Hunk>,
    pub added: usize,
    pub removed: usize,
    pub left_out: usize,
    pub max_lines: usize,
}

#[derive(Template)]
#[template(path = "message.html", config = "src/admin/askama.toml")]
pub struct MessagePage<'a> {
    pub page: &'a Page,
    pub heading: String,
    pub text: String,
}
