//! update-server: one binary for CGI, FastCGI and a built-in HTTP listener.

use std::process::ExitCode;
use std::sync::Arc;
use update_server::app::App;
use update_server::cli::{Command, Options};
use update_server::http::{self, Handler};

fn main() -> ExitCode {
    let options = match Options::from_env() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("update-server: {message}\n\n{}", update_server::cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let app = App::new(options.root.clone());
    // the long-running modes log what `check` finds once per configuration change; a CGI
    // process lives for one request and would log it on every poll
    let app = Arc::new(if options.command == Command::Cgi { app } else { app.logging_configuration_findings() });
    let result = match options.command {
        Command::Cgi => http::cgi::run(app.as_ref()),
        Command::FastCgiInherited => http::fastcgi::serve_inherited(app as Arc<dyn Handler>, options.workers),
        Command::FastCgiListen(address) => http::fastcgi::serve_listen(&address, app as Arc<dyn Handler>, options.workers),
        Command::Serve(listens) => {
            let root = app.default_root();
            http::serve::run_listeners(&listens, root, app as Arc<dyn Handler>, options.workers)
        }
        Command::Preview(preview) => return run_preview(&app, &preview),
        Command::Check => return ExitCode::from(update_server::check::run(&app.default_root(), options.root.is_some())),
        Command::Export(format) => return ExitCode::from(update_server::export::run(&app.default_root(), format)),
        Command::Help => {
            println!("{}", update_server::cli::USAGE);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("update-server: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `preview`: the answer byte for byte on standard output, its status and what the poll would
/// change on standard error.
fn run_preview(app: &App, preview: &update_server::preview::PreviewArgs) -> ExitCode {
    use std::io::Write;
    let request = match preview.request() {
        Ok(request) => request,
        Err(message) => {
            eprintln!("update-server: {message}");
            return ExitCode::from(2);
        }
    };
    let (response, changes) = app.preview(&request);
    let mut out = std::io::stdout().lock();
    if out.write_all(&response.body).and_then(|()| out.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    if !response.body.ends_with(b"\n") {
        // the answer's last line has no line end; on a terminal the report starts on its own
        eprintln!();
    }
    eprintln!("# preview: HTTP {} - nothing was written; the poll would change:", response.status);
    if changes.is_empty() {
        eprintln!("#   nothing");
    }
    for change in &changes {
        eprintln!("#   {change}");
    }
    ExitCode::SUCCESS
}
