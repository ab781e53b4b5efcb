//! The update script's own cost, without any web server: steady polls of 1,000 provisioned
//! devices (CHECK matching) straight into the application, with the process's CPU time per
//! poll. `bench/poll.py` measures the whole path through lighttpd; this isolates our part.
//!
//!     cargo run --release --example poll_loop -- ROOT [POLLS]
//!
//! ROOT is an install tree with a configuration and snippets (its `status/` is written).

use update_server::app::App;
use update_server::http::{Handler, Request};

const DEVICES: usize = 1000;

fn poll(serial: usize, check: &str) -> Request {
    let (high, low) = (serial / 256, serial % 256);
    let vars: update_server::http::Vars = [
        ("SCRIPT_NAME", "/update/update.php".to_string()),
        (
            "QUERY_STRING",
            format!("type=IP232&sn=00-90-33-00-{high:02x}-{low:02x}&hwid=IP232-00-{high:02x}-{low:02x}&ip=172.16.4.57&polling=0&phase=update&CHECK={check}"),
        ),
        ("HTTP_HOST", "update.example.com".to_string()),
        ("REMOTE_ADDR", "172.16.4.57".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Request { vars, body: Vec::new() }
}

/// User and system CPU time of this process so far, in microseconds.
fn cpu_micros() -> (f64, f64) {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    (micros(usage.ru_utime), micros(usage.ru_stime))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let root = std::path::PathBuf::from(args.next().expect("usage: poll_loop ROOT [POLLS]"));
    let polls: usize = args.next().map_or(20_000, |n| n.parse().expect("POLLS is a number"));
    let app = App::new(Some(root));
    let first = String::from_utf8(app.handle(poll(0, "")).body).expect("text answer");
    let check = first
        .lines()
        .find_map(|l| l.strip_prefix("mod cmd UP1 check ser "))
        .expect("the answer sets a CHECK value (is a snippet there?)")
        .trim()
        .to_string();
    // two rounds: the first delivers, the second settles the log into its steady shape
    for serial in (0..DEVICES).chain(0..DEVICES) {
        app.handle(poll(serial, &check));
    }
    let (user0, system0) = cpu_micros();
    let started = std::time::Instant::now();
    for i in 0..polls {
        let answer = app.handle(poll(i % DEVICES, &check));
        assert_eq!(answer.status, 200);
    }
    let wall = started.elapsed();
    let (user1, system1) = cpu_micros();
    let per = |a: f64, b: f64| (b - a) / polls as f64;
    println!(
        "{polls} steady polls of {DEVICES} devices: wall {:.1} us, CPU user {:.1} us + system {:.1} us per poll",
        wall.as_secs_f64() * 1e6 / polls as f64,
        per(user0, user1),
        per(system0, system1)
    );
}
