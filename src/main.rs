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
    let app = Arc::new(App::new(options.root.clone()));
    let result = match options.command {
        Command::Cgi => http::cgi::run(app.as_ref()),
        Command::FastCgiInherited => http::fastcgi::serve_inherited(app as Arc<dyn Handler>, options.workers),
        Command::FastCgiListen(address) => http::fastcgi::serve_listen(&address, app as Arc<dyn Handler>, options.workers),
        Command::Serve(address) => {
            let root = app.default_root();
            http::serve::run(&address, root, app as Arc<dyn Handler>)
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
