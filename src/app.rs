//! The application: routes a request by script name and answers it.

use crate::http::{Handler, Request, Response};
use std::path::PathBuf;

pub struct App {
    root_override: Option<PathBuf>,
}

impl App {
    pub fn new(root_override: Option<PathBuf>) -> App {
        App { root_override }
    }

    /// The root used when a request does not name one (the `serve` mode's tree).
    pub fn default_root(&self) -> PathBuf {
        self.root_override
            .clone()
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")))
    }
}

impl Handler for App {
    fn handle(&self, _request: Request) -> Response {
        Response::text(200, "# not implemented yet\r\n")
    }
}
