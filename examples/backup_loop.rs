//! The cost of an unchanged configuration backup in the application, without any web server:
//! PUT mode=backup of the same body for 100 devices, round robin (each device's newest backup
//! is that body after the first round). `bench/suite.py` measures the whole path through
//! lighttpd; this isolates our part, for a profiler (`valgrind --tool=callgrind`, `perf`).
//!
//!     cargo run --release --example backup_loop -- ROOT [PUTS]
//!
//! ROOT is an install tree whose configuration enables backups, with the body to upload in
//! ROOT/body.txt (`bench/backup.py`'s `config_body` makes one); its `backup/` and `status/`
//! are written.

use update_server::app::App;
use update_server::http::{Handler, Request};

const DEVICES: usize = 100;

fn put(device: usize, body: &[u8]) -> Request {
    let query = format!("mode=backup&hwid=IP232-30-00-{device:02x}&sn=00-90-33-30-00-{device:02x}");
    let vars: update_server::http::Vars = [
        ("SCRIPT_NAME", "/update/update.php".to_string()),
        ("QUERY_STRING", query),
        ("REQUEST_METHOD", "PUT".to_string()),
        ("CONTENT_LENGTH", body.len().to_string()),
        ("HTTP_HOST", "update.example.com".to_string()),
        ("REMOTE_ADDR", "172.16.4.57".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Request {
        vars,
        body: body.to_vec(),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let root = std::path::PathBuf::from(args.next().expect("usage: backup_loop ROOT [PUTS]"));
    let puts: usize = args
        .next()
        .map_or(1000, |n| n.parse().expect("PUTS is a number"));
    let body =
        std::fs::read(root.join("body.txt")).expect("ROOT/body.txt: the configuration to upload");
    let app = App::new(Some(root));
    for device in 0..DEVICES {
        let answer = app.handle(put(device, &body));
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    let started = std::time::Instant::now();
    for i in 0..puts {
        assert_eq!(app.handle(put(i % DEVICES, &body)).status, 200);
    }
    println!(
        "{puts} unchanged backups of {DEVICES} devices: {:.1} us each",
        started.elapsed().as_secs_f64() * 1e6 / puts.max(1) as f64
    );
}
