//! Dynamic snippets (SPEC §7): an executable the operator names in the user file computes
//! extra lines for a device. It replaces the old server's PHP class hook with something any
//! language can implement.
//!
//! The program gets the device's state XML on standard input and the request facts in its
//! environment (`UPDATE_SN`, `UPDATE_HWID`, `UPDATE_TYPE`, `UPDATE_IP`, `UPDATE_REMOTE_ADDR`,
//! `UPDATE_PHASE`, `UPDATE_NEXTPHASE`, `UPDATE_CLASSES`, `UPDATE_ENVIRONMENTS`,
//! `UPDATE_BASE_URL`, `UPDATE_HTTPS`, and `UPDATE_ARG_<name>` for every request argument whose
//! name is a plain word). It answers on standard output, one directive a line:
//!
//! ```text
//! pre <command>      a line sent before the standard snippets
//! post <command>     a line sent after them
//! standard no        do not send the standard snippets this time (default: yes)
//! # anything         a comment, ignored
//! ```
//!
//! It must exit with status 0 within the time limit. Anything else (a failure, a time-out, an
//! unknown directive, more than 1 MiB of output) is reported to the device as a comment and
//! nothing is delivered, so a half-computed script never reaches a device.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the program decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines {
    pub pre: Vec<String>,
    pub post: Vec<String>,
    pub standard: bool,
}

const OUTPUT_LIMIT: usize = 1024 * 1024;

/// Reads the program's answer.
pub fn parse(output: &str) -> Result<Lines, String> {
    let mut lines = Lines { standard: true, ..Lines::default() };
    for (number, raw) in output.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (directive, rest) = line.split_once(' ').unwrap_or((line, ""));
        match directive {
            "pre" => lines.pre.push(checked_command(rest, number)?),
            "post" => lines.post.push(checked_command(rest, number)?),
            "standard" => match rest.trim() {
                "yes" => lines.standard = true,
                "no" => lines.standard = false,
                other => return Err(format!("line {}: 'standard' takes yes or no, not '{other}'", number + 1)),
            },
            other => return Err(format!("line {}: unknown directive '{other}'", number + 1)),
        }
    }
    Ok(lines)
}

fn checked_command(text: &str, number: usize) -> Result<String, String> {
    if text.chars().any(|c| c.is_control()) {
        return Err(format!("line {}: control characters in a command", number + 1));
    }
    Ok(text.to_string())
}

/// Runs `program` with `state_xml` on stdin and `environment`, within `timeout`.
pub fn run(program: &Path, working_dir: &Path, state_xml: &str, environment: &[(String, String)], timeout: Duration) -> Result<Lines, String> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(program)
        // its own process group, so a time-out kills whatever it started as well
        .process_group(0)
        .current_dir(working_dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .envs(environment.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    // feed stdin and drain stdout on threads so a program that writes before it has read
    // everything cannot dead-lock against us
    let mut stdin = child.stdin.take();
    let input = state_xml.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(stdin) = stdin.as_mut() {
            let _ = stdin.write_all(&input);
        }
    });
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut output = Vec::new();
        if let Some(stdout) = stdout {
            let _ = stdout.take(OUTPUT_LIMIT as u64 + 1).read_to_end(&mut output);
        }
        output
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                // SAFETY: signalling the process group we created for the child
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not finish within {} s", program.display(), timeout.as_secs_f32()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {}: {e}", program.display())),
        }
    };
    let _ = writer.join();
    let output = reader.join().unwrap_or_default();
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = (&mut pipe).take(400).read_to_string(&mut stderr);
        }
        return Err(format!("{} failed ({status}): {}", program.display(), stderr.trim().replace('\n', " ")));
    }
    if output.len() > OUTPUT_LIMIT {
        return Err(format!("{} wrote more than {OUTPUT_LIMIT} bytes", program.display()));
    }
    let text = String::from_utf8(output).map_err(|_| format!("{} wrote something that is not UTF-8", program.display()))?;
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn directives() {
        let lines = parse("# hello\npre config add CMD0 /a\npost config add CMD0 /b\r\nstandard no\n\n").unwrap();
        assert_eq!(lines, Lines { pre: vec!["config add CMD0 /a".into()], post: vec!["config add CMD0 /b".into()], standard: false });
        assert!(parse("rm -rf /\n").is_err());
        assert!(parse("standard maybe\n").is_err());
        assert!(parse("pre a\u{7}b\n").is_err());
    }

    fn program(dir: &Path, body: &str) -> std::path::PathBuf {
        let path = dir.join("dyn.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn runs_with_state_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let p = program(dir.path(), "n=$(grep -c device); echo \"pre config add CMD0 /name $UPDATE_SN-$n\"");
        let env = vec![("UPDATE_SN".to_string(), "0090".to_string())];
        let lines = run(&p, dir.path(), "<state>\n<device/>\n</state>\n", &env, Duration::from_secs(5)).unwrap();
        assert_eq!(lines.pre, ["config add CMD0 /name 0090-1"]);
    }

    #[test]
    fn failure_and_timeout_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = program(dir.path(), "echo 'pre x'; echo broken >&2; exit 3");
        let error = run(&p, dir.path(), "", &[], Duration::from_secs(5)).unwrap_err();
        assert!(error.contains("broken"), "{error}");
        let p = program(dir.path(), "sleep 10");
        let started = Instant::now();
        assert!(run(&p, dir.path(), "", &[], Duration::from_millis(300)).is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
