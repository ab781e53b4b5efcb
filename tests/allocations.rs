//! Heap allocations per steady poll, counted by a counting global allocator around the
//! application itself (no web server): a steady poll is the request a fleet sends all day, and
//! allocations were a fifth of its cost. The ceiling fails the test when they creep back.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use support::*;
use update_server::app::App;
use update_server::http::{Handler, Request};

/// Counts the allocations (and reallocations) of the thread that asks, so the test harness's
/// other threads do not add theirs.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: a thread being torn down has no counter left, and needs none
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is passed on to the system allocator unchanged; counting touches only a
// thread-local cell, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// The most allocations a steady poll may make, from its request variables to its answer: what
/// this tree needs today (the state file read, changed and written, its log note, the answer:
/// 105 on average, 113 at most) with a small margin. It was 363 before the allocations were
/// cut, 235 before the state was read back without roxmltree, 180 before a repeated request's
/// log entries were restamped in place, 172 before paths and comments were built at their
/// final size, 159 before names, attribute values and request arguments became inline small
/// strings; a change that needs more should say why here.
const STEADY_POLL_CEILING: u64 = 125;

const DEVICES: usize = 20;

fn poll(device: usize, check: Option<&str>) -> Request {
    let mut query = format!(
        "type=IP232&sn=00-90-33-00-00-{device:02x}&hwid=IP232-00-00-{device:02x}&ip=172.16.4.{device}&polling=0&phase=update"
    );
    if let Some(check) = check {
        query.push_str("&CHECK=");
        query.push_str(check);
    }
    let vars: update_server::http::Vars = [
        ("SCRIPT_NAME", "/update/update.php"),
        ("QUERY_STRING", query.as_str()),
        ("HTTP_HOST", "update.example.com"),
        ("REMOTE_ADDR", "172.16.4.57"),
        ("REQUEST_METHOD", "GET"),
        ("HTTP_USER_AGENT", "innovaphone-update/1.0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Request { vars, body: Vec::new() }
}

/// Gives the folders the old modification time of their files, so the long-running caches
/// trust what they read (a folder changed within the last seconds is listed again).
fn settle(dir: &Path) {
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    std::fs::File::open(dir).and_then(|d| d.set_modified(old)).expect("setting the folder's mtime");
}

#[test]
fn a_steady_poll_stays_under_its_allocation_ceiling() {
    let dir = tempfile::tempdir().expect("temporary root");
    let root = dir.path();
    copy_install_tree(root);
    write_basic_setup(root);
    settle(&root.join("scripts"));
    settle(&root.join("config"));
    settle(root);
    let app = App::new(Some(root.to_path_buf()));
    let first = String::from_utf8(app.handle(poll(0, None)).body).expect("a text answer");
    let check = commands_of(&first)
        .iter()
        .find_map(|c| c.strip_prefix("mod cmd UP1 check ser ").map(str::to_string))
        .expect("the first answer sets CHECK");
    // warm-up: every device delivered to once, then its log settles into the steady shape
    for device in (0..DEVICES).chain(0..DEVICES).chain(0..DEVICES) {
        app.handle(poll(device, Some(&check)));
    }
    let mut most = 0;
    let mut total = 0;
    for device in (0..DEVICES).chain(0..DEVICES) {
        let request = poll(device, Some(&check));
        let before = allocations();
        let answer = app.handle(request);
        let made = allocations() - before;
        assert_eq!(answer.status, 200);
        let body = String::from_utf8(answer.body).expect("a text answer");
        assert!(commands_of(&body).is_empty(), "not a steady poll:\n{body}");
        assert!(body.contains("matches - scripts already executed"), "{body}");
        most = most.max(made);
        total += made;
    }
    let average = total / (2 * DEVICES as u64);
    println!("allocations per steady poll: {average} on average, {most} at most");
    assert!(
        most <= STEADY_POLL_CEILING,
        "a steady poll made {most} allocations (average {average}), more than the ceiling of {STEADY_POLL_CEILING}"
    );
}
