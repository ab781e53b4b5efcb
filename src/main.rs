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
    // a long-running mode on a fixed root says at once when that root is no install tree (a
    // FastCGI process without one finds its root per request, from SCRIPT_FILENAME)
    let fixed_root = match options.command {
        Command::Serve(_) => Some(app.default_root()),
        Command::FastCgiInherited | Command::FastCgiListen(_) => options.root.clone(),
        _ => None,
    };
    if let Some(warning) = fixed_root.as_deref().and_then(update_server::app::root_warning) {
        eprintln!("update-server: warning: {warning}");
    }
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
        Command::HashPassword => return run_hash_password(),
        Command::Version => {
            println!("{}", update_server::cli::version());
            Ok(())
        }
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
    eprint!("{}", update_server::preview::report(&response.body, response.status, &changes));
    ExitCode::SUCCESS
}

/// `hash-password`: the password as one line on standard input (never an argument, which
/// `ps` and the shell history would show), its Argon2id hash on standard output.
fn run_hash_password() -> ExitCode {
    use std::io::Read;
    // a password is short; a bound keeps a file piped in by mistake from being read whole
    const MAX_INPUT: u64 = 4096;
    let mut input = Vec::new();
    if let Err(error) = std::io::stdin().lock().take(MAX_INPUT + 1).read_to_end(&mut input) {
        eprintln!("update-server: hash-password: cannot read standard input: {error}");
        return ExitCode::FAILURE;
    }
    if input.len() as u64 > MAX_INPUT {
        eprintln!("update-server: hash-password: more than {MAX_INPUT} bytes on standard input: give the password as one line");
        return ExitCode::from(2);
    }
    let hashed = update_server::admin::auth::password_from_input(&input).and_then(update_server::admin::auth::hash_password);
    match hashed {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("update-server: hash-password: {message}");
            ExitCode::from(2)
        }
    }
}
