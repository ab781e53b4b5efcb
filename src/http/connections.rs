//! Connection handling of the two listening doors (`serve` and FastCGI): threads that accept
//! and serve, a cap on open connections, and deadlines, so that slow, silent or merely idle
//! clients can never lock the others out.
//!
//! - Every open connection holds a [`Slot`] in a [`Registry`] that knows its [`Phase`]. At the
//!   cap, a newcomer takes the slot of an idle kept-alive connection (the longest idle first),
//!   else of the one that has been sending its request head the longest (a new connection
//!   that has sent nothing yet counts as sending its head since it was accepted), else of the
//!   oldest still sending a body ([`pick_victim`]). A newcomer is thus the last to go, and a
//!   flood of new connections cannot push out a device's poll. Connections being answered are never closed. When every slot is
//!   being answered the newcomer is turned away at once (503 / closed): nothing queues in user
//!   space and the accepting thread never waits.
//! - A request head must be complete within [`HEAD_TIME`] and a body within [`body_time`] of
//!   its length, however the client spreads its bytes: before each read the socket's read
//!   time-out is shrunk to the time left ([`DeadlineReader`]).
//! - Threads accept and serve their own connections (lighttpd opens one per request: no
//!   hand-off); the last accepting thread starts another before it serves, and threads beyond
//!   the warm ones end once enough are waiting again and they have had no connection for
//!   [`SURPLUS_LINGER`], so a burst's threads go away with it and a busy backend keeps its own.

use std::collections::HashMap;
use std::io::{self, Read};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Connections one process keeps open at most (fewer if the descriptor limit is lower). A
/// device polls with one short connection; a browser on the admin page keeps about six.
pub const MAX_CONNECTIONS: usize = 1024;
/// The fewest connections worth serving, whatever the descriptor limit says.
const MIN_CONNECTIONS: usize = 8;
/// Descriptors left to the application (configuration, state and backup files, logs,
/// the master device's connection) besides those of the connections.
const RESERVED_DESCRIPTORS: u64 = 64;
/// The descriptor limit asked for when the hard limit is unlimited.
const WANTED_DESCRIPTORS: u64 = 65_536;

/// Time from the start of a request (its first byte; for a connection's first request, the
/// connection) until its head is complete. A device sends its head in one segment; this is
/// room for several TCP retransmissions.
pub const HEAD_TIME: Duration = Duration::from_secs(20);
/// Fixed part of the time a request body may take.
const BODY_BASE_TIME: Duration = Duration::from_secs(20);
/// Slowest sustained body upload allowed beyond the base time: 64 KiB/s (512 kbit/s) moves
/// the largest backup (16 MiB) in about four minutes and a typical one in no time.
const BODY_MIN_BYTES_PER_SECOND: u64 = 64 * 1024;

/// How long a request body of `length` bytes may take to arrive. A length beyond the largest
/// body any door accepts earns no more time: such a body is refused, and only drained under
/// the drain's own bound.
pub fn body_time(length: u64) -> Duration {
    let counted = length.min(super::MAX_BODY_BYTES as u64);
    BODY_BASE_TIME + Duration::from_secs(counted / BODY_MIN_BYTES_PER_SECOND)
}

/// What a connection is doing, in the order in which connections are closed at the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Kept alive after an answer, waiting for the first byte of the next request.
    Idle,
    /// Receiving a request head (FastCGI: BEGIN_REQUEST and PARAMS); a new connection starts
    /// here.
    Head,
    /// Receiving a request body.
    Body,
    /// Being answered (the application, or the answer being written): never closed.
    Busy,
}

/// The connection to close so that a newcomer can have its slot: idle ones first, the longest
/// idle first; then those sending their head, the one at it longest first; then bodies, the
/// oldest first. `None` if every connection is being answered.
pub fn pick_victim<K>(connections: impl IntoIterator<Item = (K, Phase, Instant)>) -> Option<K> {
    connections
        .into_iter()
        .filter(|(_, phase, _)| *phase != Phase::Busy)
        .min_by_key(|(_, phase, since)| (*phase, *since))
        .map(|(key, _, _)| key)
}

/// How many connections fit in `descriptors` (the soft limit) when each needs
/// `per_connection` of them and the application keeps [`RESERVED_DESCRIPTORS`].
pub fn cap_for_descriptors(descriptors: u64, per_connection: u64) -> usize {
    let fitting = descriptors.saturating_sub(RESERVED_DESCRIPTORS) / per_connection.max(1);
    usize::try_from(fitting)
        .unwrap_or(usize::MAX)
        .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// Raises the soft descriptor limit to the hard one (as nginx and the Go runtime do: the
/// soft limit is often 1024 while the hard one is far higher) and returns the soft limit
/// now in force.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`, which is one.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    let wanted = if limit.rlim_max == libc::RLIM_INFINITY {
        WANTED_DESCRIPTORS
    } else {
        limit.rlim_max.min(WANTED_DESCRIPTORS)
    };
    if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit; a refusal leaves the old limit in force.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return wanted;
        }
    }
    limit.rlim_cur
}

// ---------------------------------------------------------------------------------------------
// Sockets and deadlines
// ---------------------------------------------------------------------------------------------

/// What connection handling needs from an accepted socket.
pub trait Socket: Send + Sync + 'static {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()>;
    /// Ends the connection from another thread: a read blocked on it returns at once.
    fn close_now(&self);
}

impl Socket for std::net::TcpStream {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, Some(timeout))
    }

    fn close_now(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

/// A point in time by which something must be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(time: Duration) -> Deadline {
        Deadline(Instant::now() + time)
    }

    /// The time left, or a `TimedOut` error once the deadline has passed.
    pub fn remaining(&self) -> io::Result<Duration> {
        let left = self.0.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(left)
    }
}

/// Reads from `stream` by `deadline`: before each read the socket's read time-out is set to
/// the time left, so a client that trickles bytes cannot stretch the wait.
pub struct DeadlineReader<'a, S> {
    pub stream: &'a S,
    pub deadline: Deadline,
}

impl<'a, S: Socket> Read for DeadlineReader<'a, S>
where
    &'a S: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(self.deadline.remaining()?)?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

/// A read or write time-out, whichever way the platform reports it.
pub fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

// ---------------------------------------------------------------------------------------------
// The registry of open connections
// ---------------------------------------------------------------------------------------------

struct Entry {
    phase: Phase,
    since: Instant,
    socket: Arc<dyn Socket>,
}

/// The open connections of one door, at most `cap` of them.
pub struct Registry {
    cap: usize,
    table: Mutex<Table>,
}

struct Table {
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // nothing panics while holding these locks; a poisoned one still holds usable data
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    pub fn new(cap: usize) -> Arc<Registry> {
        Arc::new(Registry {
            cap: cap.max(1),
            table: Mutex::new(Table {
                next_id: 0,
                entries: HashMap::new(),
            }),
        })
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        lock(&self.table).entries.len()
    }

    /// A slot for a new connection (in [`Phase::Head`]), closing another connection if the
    /// registry is full; `None` if every connection is being answered.
    pub fn admit(self: &Arc<Self>, socket: Arc<dyn Socket>) -> Option<Slot> {
        let mut table = lock(&self.table);
        if table.entries.len() >= self.cap && !Self::close_one(&mut table) {
            return None;
        }
        let id = table.next_id;
        table.next_id += 1;
        table.entries.insert(
            id,
            Entry {
                phase: Phase::Head,
                since: Instant::now(),
                socket,
            },
        );
        Some(Slot {
            registry: Arc::clone(self),
            id,
        })
    }

    /// Closes the connection [`pick_victim`] chooses (to free a descriptor); false if there is
    /// none.
    pub fn evict_one(&self) -> bool {
        Self::close_one(&mut lock(&self.table))
    }

    fn close_one(table: &mut Table) -> bool {
        let candidates = table
            .entries
            .iter()
            .map(|(id, entry)| (*id, entry.phase, entry.since));
        let Some(victim) = pick_victim(candidates) else {
            return false;
        };
        if let Some(entry) = table.entries.remove(&victim) {
            // its thread sees the end of the stream and finishes; the descriptor closes when
            // that thread lets go of it
            entry.socket.close_now();
        }
        true
    }
}

/// A connection's place in the [`Registry`]; dropping it frees the place.
pub struct Slot {
    registry: Arc<Registry>,
    id: u64,
}

impl Slot {
    /// Records that the connection is now in `phase`. `false` means it was closed to make room
    /// for another: the connection must end without doing anything more.
    #[must_use]
    pub fn enter(&self, phase: Phase) -> bool {
        let mut table = lock(&self.registry.table);
        let Some(entry) = table.entries.get_mut(&self.id) else {
            return false;
        };
        if entry.phase != phase {
            entry.phase = phase;
            entry.since = Instant::now();
        }
        true
    }

    /// The cap of the registry this slot belongs to.
    pub fn cap(&self) -> usize {
        self.registry.cap
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.registry.table).entries.remove(&self.id);
    }
}

// ---------------------------------------------------------------------------------------------
// Accepting
// ---------------------------------------------------------------------------------------------

/// A listening door: how it accepts, serves and turns away connections.
pub trait Door: Send + Sync + 'static {
    type Connection: Socket;
    /// For log lines.
    const NAME: &'static str;

    /// Waits for the next connection, at most [`SURPLUS_LINGER`] (then `WouldBlock` or
    /// `TimedOut`), so a thread can tell whether it is still needed.
    fn accept(&self) -> io::Result<Self::Connection>;
    /// Whether the connection may have a slot at all (peer filters); a refused one is closed.
    fn welcome(&self, _connection: &Self::Connection) -> bool {
        true
    }
    /// Serves the connection until it ends; the door keeps `slot`'s phase up to date.
    fn serve(&self, connection: &Self::Connection, slot: &Slot);
    /// Answers a connection no slot could be found for, without waiting for the peer.
    fn turn_away(&self, connection: &Self::Connection);
}

struct Acceptors<D> {
    door: D,
    registry: Arc<Registry>,
    /// Threads waiting in accept().
    accepting: AtomicUsize,
    /// Threads alive.
    threads: AtomicUsize,
    warm: usize,
    max_threads: usize,
    turned_away: TurnedAway,
}

/// Serves `door` with `warm` threads kept waiting and up to the connection cap that the
/// descriptor limit allows (`descriptors_per_connection` each). Returns only when the
/// listening socket is unusable.
pub fn run<D: Door>(door: D, warm: usize, descriptors_per_connection: u64) -> io::Result<()> {
    let descriptors = raise_descriptor_limit();
    let cap = cap_for_descriptors(descriptors, descriptors_per_connection);
    let warm = warm.clamp(1, cap);
    let acceptors = Arc::new(Acceptors {
        door,
        registry: Registry::new(cap),
        accepting: AtomicUsize::new(0),
        threads: AtomicUsize::new(1),
        warm,
        // every connection holds a thread; the extra ones keep accepting (and turning away)
        // while all slots are taken
        max_threads: cap + warm,
        turned_away: TurnedAway::new(),
    });
    for _ in 1..warm {
        start(&acceptors);
    }
    // the calling thread accepts too
    accept_loop(&acceptors, true)
}

fn start<D: Door>(acceptors: &Arc<Acceptors<D>>) {
    if acceptors.threads.fetch_add(1, Ordering::SeqCst) >= acceptors.max_threads {
        acceptors.threads.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let for_thread = Arc::clone(acceptors);
    let started = std::thread::Builder::new()
        .name(format!("{}-worker", D::NAME))
        .spawn(move || accept_loop(&for_thread, false));
    if let Err(error) = started {
        acceptors.threads.fetch_sub(1, Ordering::SeqCst);
        super::fastcgi::log(D::NAME, &format!("cannot start a worker thread: {error}"));
    }
}

/// How long a thread beyond the warm ones stays without a connection before it ends: long
/// enough that a busy backend keeps its threads (ending one as soon as it was surplus and
/// starting another a moment later cost a thread per ten polls under load), short enough that
/// a burst's threads are gone seconds after it.
pub const SURPLUS_LINGER: Duration = Duration::from_secs(2);

fn accept_loop<D: Door>(acceptors: &Arc<Acceptors<D>>, main: bool) -> io::Result<()> {
    let mut last_connection = Instant::now();
    loop {
        if !main && acceptors.accepting.load(Ordering::SeqCst) >= acceptors.warm && last_connection.elapsed() >= SURPLUS_LINGER {
            // enough threads are waiting for connections, and this one has had none for a while
            acceptors.threads.fetch_sub(1, Ordering::SeqCst);
            return Ok(());
        }
        acceptors.accepting.fetch_add(1, Ordering::SeqCst);
        let accepted = acceptors.door.accept();
        let still_accepting = acceptors.accepting.fetch_sub(1, Ordering::SeqCst) - 1;
        match accepted {
            // no connection within SURPLUS_LINGER: time to look whether this thread is needed
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Ok(connection) => {
                last_connection = Instant::now();
                if still_accepting == 0 {
                    // nobody would be left to accept while this connection is served
                    start(acceptors);
                }
                take(acceptors, connection);
            }
            Err(error) => {
                if let Err(fatal) = survive_accept_error(&error, D::NAME) {
                    if main {
                        return Err(fatal);
                    }
                    acceptors.threads.fetch_sub(1, Ordering::SeqCst);
                    return Ok(());
                }
                if is_out_of_descriptors(&error) {
                    // the connection waiting in the kernel's queue gets the descriptor of an
                    // idle or slow one
                    acceptors.registry.evict_one();
                }
            }
        }
    }
}

fn take<D: Door>(acceptors: &Acceptors<D>, connection: D::Connection) {
    let door = &acceptors.door;
    if !door.welcome(&connection) {
        return;
    }
    let connection = Arc::new(connection);
    let Some(slot) = acceptors.registry.admit(Arc::clone(&connection) as Arc<dyn Socket>) else {
        door.turn_away(&connection);
        acceptors.turned_away.count(D::NAME, acceptors.registry.cap());
        return;
    };
    if panic::catch_unwind(AssertUnwindSafe(|| door.serve(&connection, &slot))).is_err() {
        super::fastcgi::log(D::NAME, "connection worker panicked; connection dropped");
    }
}

/// Counts turned-away connections and logs them at most every ten seconds, so a flood does
/// not flood the log too.
pub(crate) struct TurnedAway {
    since_report: AtomicUsize,
    last_report: Mutex<Option<Instant>>,
}

impl TurnedAway {
    const INTERVAL: Duration = Duration::from_secs(10);

    pub(crate) fn new() -> TurnedAway {
        TurnedAway {
            since_report: AtomicUsize::new(0),
            last_report: Mutex::new(None),
        }
    }

    pub(crate) fn count(&self, door: &str, cap: usize) {
        self.since_report.fetch_add(1, Ordering::SeqCst);
        let mut last = lock(&self.last_report);
        if last.is_some_and(|at| at.elapsed() < Self::INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        let count = self.since_report.swap(0, Ordering::SeqCst);
        super::fastcgi::log(
            door,
            &format!("{count} connection(s) turned away: all {cap} connections are being answered"),
        );
    }
}

/// Whether accept failed for want of a descriptor (a slow connection can make room).
pub fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Logs a failed accept and decides whether the loop can go on. Only errors that say the
/// listening socket itself is unusable end the loop; running out of descriptors or memory
/// is waited out (never retried at once: the error would repeat in a busy loop).
pub fn survive_accept_error(error: &io::Error, door: &str) -> io::Result<()> {
    if let Some(wait) = accept_failure(error, door)? {
        std::thread::sleep(wait);
    }
    Ok(())
}

/// [`survive_accept_error`] without the waiting, for an accept loop that waits its own way:
/// `Err` if the listening socket is unusable, else how long to wait before accepting again.
pub fn accept_failure(error: &io::Error, door: &str) -> io::Result<Option<Duration>> {
    if error.kind() == io::ErrorKind::Interrupted {
        return Ok(None);
    }
    super::fastcgi::log(door, &format!("accept failed: {error}"));
    match error.raw_os_error() {
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP) => Err(
            io::Error::new(error.kind(), format!("listening socket unusable: {error}")),
        ),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => Ok(Some(Duration::from_millis(100))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[derive(Default)]
    struct FakeSocket {
        closed: AtomicBool,
    }

    impl Socket for FakeSocket {
        fn set_read_timeout(&self, _: Duration) -> io::Result<()> {
            Ok(())
        }

        fn close_now(&self) {
            self.closed.store(true, Ordering::SeqCst);
        }
    }

    fn fake() -> Arc<FakeSocket> {
        Arc::new(FakeSocket::default())
    }

    fn closed(socket: &FakeSocket) -> bool {
        socket.closed.load(Ordering::SeqCst)
    }

    #[test]
    fn victims_are_idle_then_head_then_body_and_never_busy() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let all = [
            ("busy", Phase::Busy, at(0)),
            ("body", Phase::Body, at(1)),
            ("head-old", Phase::Head, at(2)),
            ("head-new", Phase::Head, at(5)),
            ("idle-new", Phase::Idle, at(6)),
            ("idle-old", Phase::Idle, at(3)),
        ];
        assert_eq!(pick_victim(all), Some("idle-old"));
        assert_eq!(pick_victim(all[..4].iter().copied()), Some("head-old"));
        assert_eq!(pick_victim(all[..2].iter().copied()), Some("body"));
        assert_eq!(pick_victim(all[..1].iter().copied()), None);
        assert_eq!(pick_victim(Vec::<(u8, Phase, Instant)>::new()), None);
    }

    #[test]
    fn the_cap_follows_the_descriptor_limit_within_bounds() {
        assert_eq!(cap_for_descriptors(1024, 1), 960);
        assert_eq!(cap_for_descriptors(1024, 2), 480);
        assert_eq!(cap_for_descriptors(1_048_576, 2), MAX_CONNECTIONS);
        assert_eq!(cap_for_descriptors(64, 2), MIN_CONNECTIONS);
        assert_eq!(cap_for_descriptors(0, 0), MIN_CONNECTIONS);
    }

    #[test]
    fn body_time_grows_with_the_length() {
        assert_eq!(body_time(0), Duration::from_secs(20));
        assert_eq!(body_time(100_000), Duration::from_secs(21));
        assert_eq!(body_time(16 * 1024 * 1024), Duration::from_secs(20 + 256));
        assert_eq!(body_time(u64::MAX), body_time(16 * 1024 * 1024));
    }

    #[test]
    fn a_full_registry_makes_room_idle_first_then_the_oldest_head() {
        let registry = Registry::new(3);
        let (sending, kept, newer) = (fake(), fake(), fake());
        let slot_sending = registry.admit(sending.clone()).unwrap();
        let slot_kept = registry.admit(kept.clone()).unwrap();
        assert!(slot_kept.enter(Phase::Idle));
        let slot_newer = registry.admit(newer.clone()).unwrap();
        let fourth = fake();
        let slot_fourth = registry.admit(fourth.clone()).expect("the idle one makes room");
        assert!(closed(&kept) && !closed(&sending) && !closed(&newer));
        assert!(!slot_kept.enter(Phase::Busy), "the closed connection learns it was closed");
        let slot_fifth = registry.admit(fake()).expect("the oldest head makes room");
        assert!(closed(&sending) && !closed(&newer) && !closed(&fourth));
        assert_eq!(registry.open(), 3);
        // every remaining slot busy: the next newcomer is turned away, nobody is closed
        for slot in [&slot_newer, &slot_fourth, &slot_fifth] {
            assert!(slot.enter(Phase::Busy));
        }
        assert!(registry.admit(fake()).is_none());
        assert!(!closed(&newer) && !closed(&fourth));
        drop(slot_fifth);
        assert_eq!(registry.open(), 2);
        let _slot_sixth = registry.admit(fake()).expect("a freed slot is free");
        drop((slot_sending, slot_kept));
        assert_eq!(registry.open(), 3, "dropping a closed connection's slot frees nothing twice");
    }

    #[test]
    fn evict_one_frees_a_descriptor_only_if_someone_can_go() {
        let registry = Registry::new(4);
        let socket = fake();
        let slot = registry.admit(socket.clone()).unwrap();
        assert!(slot.enter(Phase::Busy));
        assert!(!registry.evict_one());
        assert!(slot.enter(Phase::Body));
        assert!(registry.evict_one());
        assert!(closed(&socket));
    }
}
