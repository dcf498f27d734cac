//! The event loop: one `mio::Poll`, the listeners, a `Slab` of connections
//! keyed by their token, the deadlines, and the shutdown handle.
//!
//! One turn reads top to bottom in [`Server::turn`]: poll; hand each
//! connection event to its [`Connection`]; then accept on listeners that are
//! still ready, start or finish a shutdown, and expire deadlines. Accepting
//! after the events means a key freed by a close in this batch cannot be
//! handed to a new connection while stale events for it are still being
//! read (mio returns events for a token even after its source closed in
//! the same batch, and slab reuses the freed key first: tokio-rs/mio#219).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{debug, info, log_enabled, trace, warn};
use mio::event::{Event, Source};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::budget::Budget;
use crate::config::{Cidr, Config, ConfigError, DaytimeFormat, Service};
use crate::conn::{CloseReason, Connection, Label, interrupted, would_block};
use crate::daytime;
use crate::listen::{HeldListener, HeldProblem};
use crate::stats::Stats;
use crate::sys;
use crate::udp::{Answerer, NEVER_ANSWER_PORTS};

mod relay;
mod waitlist;

use waitlist::WaitList;

/// Wakes the loop for [`ShutdownHandle::shutdown`].
const WAKER: Token = Token(usize::MAX);
/// An embedder's own source, registered with [`Server::register_external`].
const EXTERNAL: Token = Token(usize::MAX - 1);
/// Listener `i` has token `LISTENER_BASE + i`; connection tokens are slab
/// keys, which never get near this.
const LISTENER_BASE: usize = usize::MAX / 2;

/// One read per readiness event drains a loopback socket in the common case,
/// and bulk echo moves 64 KiB per pair of syscalls. Shared by every
/// connection, so its size costs nothing per connection.
const READ_CHUNK: usize = 64 * 1024;
/// Events taken per `epoll_wait`; more wait for the next turn.
const EVENTS_PER_TURN: usize = 1024;
/// Datagrams per UDP socket per turn, for the same fairness as accepts.
const DATAGRAMS_PER_TURN: usize = 256;
/// Accepts per listener per turn: enough to ramp 10,000 connections quickly,
/// few enough that a connect flood cannot starve established peers
/// (Redis takes 10 per cycle; envoyproxy/envoy#27773). A listener still
/// ready after its share is retried next turn.
const ACCEPTS_PER_TURN: usize = 256;
/// The accept queue length asked of the kernel (capped by somaxconn). mio
/// and std ask for 128, and a 10,000-connection ramp then stalls on SYN
/// retransmits: Linux drops SYNs while the accept queue is full.
const LISTEN_BACKLOG: libc::c_int = 4096;
/// How long accepting pauses after running out of descriptors, unless a
/// connection closes sooner (nginx waits 500 ms). Linux leaves the
/// connection queued on EMFILE and, with the edge spent, never reports it.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How long a daytime connection waits, after its line, for the client to
/// close before we close anyway.
const DAYTIME_LINGER: Duration = Duration::from_secs(2);
/// Stale deadlines tolerated in the heap beyond the live ones before it is
/// rebuilt; small enough to be noise in memory, large enough that rebuilds
/// are rare.
const STALE_TIMERS_KEPT: usize = 1024;
/// How long a connection from a trusted balancer may take to send its
/// whole PROXY header, from the accept: a deadline, not an idle timer, so
/// a header sent a byte at a time cannot hold a connection for longer.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Warnings about limits repeat at most this often.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Why [`Server::bind`] failed.
#[derive(Debug)]
pub enum BindError {
    /// The configuration cannot be served.
    Config(ConfigError),
    /// A listener could not be bound.
    Listen {
        /// The service it was for.
        service: Service,
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The poll or its waker could not be created.
    Poll(io::Error),
    /// A listener given to [`Server::bind_with`] cannot be served.
    Held {
        /// Its position in the list given.
        index: usize,
        /// The service it was for.
        service: Service,
        /// What is wrong with it.
        problem: HeldProblem,
    },
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::Config(err) => write!(f, "{err}"),
            BindError::Listen {
                service,
                addr,
                source,
            } => write!(f, "cannot listen on {addr} for {service}: {source}"),
            BindError::Poll(err) => write!(f, "cannot create the event loop: {err}"),
            BindError::Held {
                index,
                service,
                problem,
            } => write!(f, "held listener {index} for {service} {problem}"),
        }
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BindError::Config(err) => Some(err),
            BindError::Listen { source, .. } => Some(source),
            BindError::Poll(err) => Some(err),
            BindError::Held {
                problem: HeldProblem::Io(err),
                ..
            } => Some(err),
            BindError::Held { .. } => None,
        }
    }
}

impl From<ConfigError> for BindError {
    fn from(err: ConfigError) -> Self {
        BindError::Config(err)
    }
}

/// Stops a [`Server`] from any thread: it stops accepting, flushes what it
/// owes for up to the shutdown grace, closes everything, and `run` returns.
///
/// ```
/// let mut server = minetd::Server::bind(&minetd::Config {
///     echo: vec!["127.0.0.1:0".parse().unwrap()],
///     ..Default::default()
/// })
/// .unwrap();
/// let stop = server.shutdown_handle();
/// std::thread::spawn(move || stop.shutdown());
/// server.run().unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    requested: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    /// Asks the server to shut down gracefully. Returns at once; calling it
    /// again does nothing more.
    pub fn shutdown(&self) {
        // The flag is the truth: wakes coalesce, so the loop reads the flag
        // after every poll rather than counting wakes (mio's Waker is one
        // eventfd counter, shared behind an Arc: tokio-rs/mio#1764).
        self.requested.store(true, Ordering::Release);
        // The eventfd can only refuse a wake when its counter is saturated,
        // which means wakes are already pending.
        let _ = self.waker.wake();
    }
}

/// What one [`Server::turn`] saw that its caller may care about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Turn {
    /// The source given to [`Server::register_external`] became ready.
    pub external_ready: bool,
    /// Shutdown has finished: every listener and connection is closed.
    pub finished: bool,
    /// This turn logged the `stats:` line (with
    /// [`Config::stats_interval`]); [`Server::stats`] returns what it showed,
    /// so the embedder can pass it on (to a service manager, say).
    pub stats_logged: bool,
}

/// The server: every listener and connection on one `mio::Poll`, driven by
/// the caller's thread through [`run`](Server::run) or
/// [`turn`](Server::turn). It starts no thread and installs no signal
/// handler.
pub struct Server {
    poll: Poll,
    events: Events,
    core: Core,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.local_addrs())
            .field("connections", &self.core.conns.len())
            .finish_non_exhaustive()
    }
}

/// Everything but the poll and its events, so that the event loop can borrow
/// the events while handing each to the rest.
struct Core {
    listeners: Vec<Listener>,
    conns: Slab<Entry>,
    /// Min-heap of deadlines; at most one live entry per connection, the
    /// rest are recognised as stale when popped.
    timers: BinaryHeap<Reverse<Timer>>,
    scratch: Box<[u8]>,
    /// Bytes held for all connections together, within `--max-buffered`.
    budget: Budget,
    /// Connections the budget held back, woken as it falls.
    waiters: WaitList,
    limits: Limits,
    next_id: u32,
    clock: Clock,
    /// Accepting is paused (out of descriptors) until then, or until a
    /// connection closes.
    accept_paused_until: Option<Instant>,
    state: State,
    /// Its flag is how a shutdown is requested; the loop keeps its waker alive.
    handle: ShutdownHandle,
    refusal_warning: RateLimit,
    descriptor_warning: RateLimit,
    budget_warning: RateLimit,
    /// Open connections per peer address, kept only with a per-source limit.
    per_source: Option<HashMap<IpAddr, u32>>,
    /// The balancer each connection relayed by a PROXY header came through,
    /// for the logs; only such connections have an entry.
    via: HashMap<usize, SocketAddr>,
    stats: Stats,
    /// When the next stats line is due, with `--stats-interval`.
    next_stats: Option<Instant>,
    answerer: Answerer,
}

struct Limits {
    max_connections: usize,
    idle_timeout: Option<Duration>,
    pending_limit: usize,
    shutdown_grace: Duration,
    daytime_format: DaytimeFormat,
    allow: Vec<Cidr>,
    per_source: Option<usize>,
    stats_interval: Option<Duration>,
    /// Balancers whose connections begin with a PROXY header.
    proxy_protocol: Vec<Cidr>,
    reuse_port: bool,
}

enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Socket {
    fn source(&mut self) -> &mut dyn Source {
        match self {
            Socket::Tcp(listener) => listener,
            Socket::Udp(socket) => socket,
        }
    }
}

/// Why a connection was accepted only to be closed.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    NotAllowed,
    MaxConnections,
    PerSource,
}

struct Listener {
    socket: Socket,
    service: Service,
    addr: SocketAddr,
    /// Its readiness edge has not been drained by an accept that said
    /// `WouldBlock` yet.
    ready: bool,
}

/// A connection and what the loop keeps beside it.
struct Entry {
    conn: Connection<TcpStream>,
    service: Service,
    /// Tells this connection from a later one that reuses its slab key. It
    /// wraps after 4 billion connections; a stale timer would then also
    /// have to match the deadline to be mistaken for a live one.
    id: u32,
    /// What it is registered for; `None` = not registered.
    registered: Option<Interest>,
    stage: Stage,
    /// When it last moved a byte (or was accepted, or began to linger):
    /// its deadlines count from here.
    since: Tick,
    /// The deadline of this connection's live entry in the timer heap.
    armed: Option<Tick>,
    /// It holds a place on the budget's wait list.
    held_back: bool,
}

/// Where a connection is in its life, for its deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// From a trusted balancer, its PROXY header not yet read; `since` is
    /// the accept and stays so until the header is in.
    AwaitingHeader,
    Serving,
    /// Its answer is sent and it waits for the peer to close; from then on
    /// `since` is when the linger began, and traffic no longer moves it.
    Lingering,
}

impl Entry {
    /// The next deadline of this connection and what happens then.
    fn due(&self, idle_timeout: Option<Duration>) -> Option<(Tick, CloseReason)> {
        let idle = idle_timeout.map(|t| (self.since.after(t), CloseReason::IdleTimeout));
        let linger = match self.stage {
            Stage::Serving => return idle,
            Stage::AwaitingHeader => {
                return Some((
                    self.since.after(PROXY_HEADER_TIMEOUT),
                    CloseReason::ProxyHeaderTimeout,
                ));
            }
            Stage::Lingering => (self.since.after(DAYTIME_LINGER), CloseReason::LingerTimeout),
        };
        Some(match idle {
            Some(idle) if idle.0 < linger.0 => idle,
            _ => linger,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Tick,
    /// The slab key; 32 bits, as no process holds 4 billion sockets.
    key: u32,
    id: u32,
}

/// A point in time as milliseconds since the server started: every
/// connection keeps two, and an `Instant` is twice the size. The niche
/// keeps `Option<Tick>` at eight bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Tick(NonZeroU64);

impl Tick {
    fn after(self, wait: Duration) -> Tick {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        Tick(self.0.saturating_add(ms))
    }
}

/// Converts between `Instant`s and [`Tick`]s.
struct Clock {
    epoch: Instant,
}

impl Clock {
    /// The tick `at` falls in (rounded down, so a deadline reached by tick
    /// is reached by instant too).
    fn tick(&self, at: Instant) -> Tick {
        let ms = u64::try_from(at.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX - 1);
        Tick(NonZeroU64::MIN.saturating_add(ms))
    }

    fn instant(&self, tick: Tick) -> Instant {
        self.epoch + Duration::from_millis(tick.0.get() - 1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Draining { until: Instant },
    Finished,
}

/// Lets a warning through at most once per [`WARN_INTERVAL`], counting the
/// ones held back.
#[derive(Default)]
struct RateLimit {
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimit {
    /// `Some(held back since the last one)` when a warning may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|last| now < last + WARN_INTERVAL) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// A connection's log prefix: `conn {token} {peer}`, and ` via
/// {balancer}` when a PROXY header named the peer.
struct Tag {
    label: Label,
    via: Option<SocketAddr>,
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            Some(via) => write!(f, "{} via {via}", self.label),
            None => write!(f, "{}", self.label),
        }
    }
}

/// `conn - {peer}`: a connection refused before it got a token.
struct Unlabelled(SocketAddr);

impl fmt::Display for Unlabelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn - {}", self.0)
    }
}

impl Server {
    /// Validates `config`, binds every listener and registers it with a new
    /// poll. Nothing is accepted until [`run`](Server::run) or
    /// [`turn`](Server::turn).
    pub fn bind(config: &Config) -> Result<Server, BindError> {
        Server::bind_with(config, Vec::new())
    }

    /// Like [`bind`](Server::bind), and serves the listeners in `held` as
    /// well: sockets the embedder already holds, each with the service it
    /// is for (from a parent process or a service manager, say). They come
    /// first in [`local_addrs`](Server::local_addrs), in the order given.
    /// With any held listener, `config` may name no address at all.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use minetd::{Config, HeldListener, Server, Service};
    ///
    /// let inherited = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let addr = inherited.local_addr()?;
    /// let mut server = Server::bind_with(
    ///     &Config::default(), // no address: the held listener is all it serves
    ///     vec![HeldListener::Tcp(Service::Echo, inherited)],
    /// )?;
    /// assert_eq!(server.local_addrs(), [(Service::Echo, addr)]);
    /// let stop = server.shutdown_handle();
    /// std::thread::spawn(move || stop.shutdown());
    /// server.run()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn bind_with(config: &Config, held: Vec<HeldListener>) -> Result<Server, BindError> {
        if held.is_empty() {
            config.validate()?;
        } else {
            config.validate_limits()?;
        }
        let poll = Poll::new().map_err(BindError::Poll)?;
        let waker = Waker::new(poll.registry(), WAKER).map_err(BindError::Poll)?;
        let mut listeners = Vec::new();
        for (index, held) in held.into_iter().enumerate() {
            let service = held.service();
            let held_error = |problem| BindError::Held {
                index,
                service,
                problem,
            };
            held.check().map_err(held_error)?;
            let socket = match held {
                HeldListener::Tcp(_, listener) => Socket::Tcp(TcpListener::from_std(listener)),
                HeldListener::Udp(_, socket) => Socket::Udp(UdpSocket::from_std(socket)),
            };
            let listener = register_listener(&poll, socket, service, listeners.len());
            listeners.push(listener.map_err(|err| held_error(HeldProblem::Io(err)))?);
        }
        for (service, addr) in config.listeners() {
            let listen_error = |source| BindError::Listen {
                service,
                addr,
                source,
            };
            let socket = if service.is_udp() {
                Socket::Udp(bind_udp(addr, config.reuse_port).map_err(listen_error)?)
            } else {
                Socket::Tcp(listen(addr, config.reuse_port).map_err(listen_error)?)
            };
            let listener = register_listener(&poll, socket, service, listeners.len());
            listeners.push(listener.map_err(listen_error)?);
        }
        // Only once every listener is bound: a later failure must not leave
        // a log line announcing a listener that never served.
        for listener in &listeners {
            info!("{} listening on {}", listener.service, listener.addr);
        }
        let handle = ShutdownHandle {
            requested: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(waker),
        };
        let served: Vec<Service> = listeners.iter().map(|l| l.service).collect();
        let started = Instant::now();
        let core = Core {
            listeners,
            conns: Slab::new(),
            timers: BinaryHeap::new(),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            budget: Budget::new(config.max_buffered),
            waiters: WaitList::new(),
            limits: Limits {
                max_connections: config.max_connections,
                idle_timeout: config.idle_timeout,
                pending_limit: config.max_pending,
                shutdown_grace: config.shutdown_grace,
                daytime_format: config.daytime_format,
                allow: config.allow.clone(),
                per_source: config.per_source,
                stats_interval: config.stats_interval,
                proxy_protocol: config.proxy_protocol.clone(),
                reuse_port: config.reuse_port,
            },
            next_id: 0,
            clock: Clock { epoch: started },
            accept_paused_until: None,
            state: State::Running,
            handle,
            refusal_warning: RateLimit::default(),
            descriptor_warning: RateLimit::default(),
            budget_warning: RateLimit::default(),
            per_source: config.per_source.map(|_| HashMap::new()),
            via: HashMap::new(),
            stats: Stats::new(served),
            next_stats: config.stats_interval.map(|every| started + every),
            answerer: Answerer::new(config.daytime_format, seed_from(started)),
        };
        Ok(Server {
            poll,
            events: Events::with_capacity(EVENTS_PER_TURN),
            core,
        })
    }

    /// The bound address of every listener: the held ones first, as given
    /// to [`bind_with`](Server::bind_with), then the configured ones, echo
    /// first, in configuration order. Port 0 in the configuration shows
    /// here as the port chosen.
    pub fn local_addrs(&self) -> Vec<(Service, SocketAddr)> {
        self.core
            .listeners
            .iter()
            .map(|listener| (listener.service, listener.addr))
            .collect()
    }

    /// A handle that stops this server from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.core.handle.clone()
    }

    /// Starts a graceful shutdown from the loop's own thread, as
    /// [`ShutdownHandle::shutdown`] does from any.
    pub fn shutdown(&mut self) {
        self.core.handle.requested.store(true, Ordering::Release);
        self.core
            .check_shutdown(self.poll.registry(), Instant::now());
    }

    /// Skips what is left of the shutdown grace: closes every connection now.
    pub fn close_all(&mut self) {
        self.core
            .begin_shutdown(self.poll.registry(), Instant::now());
        self.core.close_everything();
    }

    /// Registers an embedder's own event source (a signal pipe, say) with
    /// this server's poll; [`Turn::external_ready`] then reports it.
    pub fn register_external(
        &mut self,
        source: &mut impl Source,
        interest: Interest,
    ) -> io::Result<()> {
        self.poll.registry().register(source, EXTERNAL, interest)
    }

    /// Open connections right now.
    pub fn connections(&self) -> usize {
        self.core.conns.len()
    }

    /// Bytes held for all connections right now (owed echo bytes and
    /// answers not yet sent, with their storage): never above the
    /// configured `max_buffered` but for the bounded excess
    /// [`Connection::daytime`] explains, and 0 once every connection is
    /// closed.
    pub fn buffered(&self) -> usize {
        self.core.budget.used()
    }

    /// The counters of every service since the server started.
    pub fn stats(&self) -> Stats {
        self.core.stats.clone()
    }

    /// Serves until a shutdown has finished.
    pub fn run(&mut self) -> io::Result<()> {
        while !self.turn(None)?.finished {}
        Ok(())
    }

    /// One turn of the loop: waits for readiness (at most `timeout`, or less
    /// if a deadline is nearer), then serves every connection that is ready,
    /// accepts, and expires deadlines. Once shutdown has finished it returns
    /// at once with [`Turn::finished`] set.
    pub fn turn(&mut self, timeout: Option<Duration>) -> io::Result<Turn> {
        let mut turn = Turn::default();
        if self.core.state == State::Finished {
            turn.finished = true;
            return Ok(turn);
        }
        let stats_due = self.core.next_stats;
        let wait = self.core.poll_timeout(timeout, Instant::now());
        match self.poll.poll(&mut self.events, wait) {
            // A signal landed; the turn goes on with no events.
            Err(err) if interrupted(&err) => {}
            other => other?,
        }
        let now = Instant::now();
        let registry = self.poll.registry();
        for event in self.events.iter() {
            match event.token() {
                // Wakes coalesce: the shutdown flag, read below, is the truth.
                WAKER => {}
                EXTERNAL => turn.external_ready = true,
                Token(key) if key >= LISTENER_BASE => self.core.mark_ready(key - LISTENER_BASE),
                Token(key) => self.core.on_connection_event(registry, key, event, now),
            }
        }
        self.core.check_shutdown(registry, now);
        self.core.accept_ready(registry, now);
        self.core.expire_timers(now);
        self.core.wake_held_back(registry, now);
        self.core.warn_of_pressure(now);
        self.core.log_stats(now);
        turn.finished = self.core.state == State::Finished;
        // The next line is due later only once this one is logged.
        turn.stats_logged = self.core.next_stats != stats_due;
        Ok(turn)
    }
}

impl Core {
    /// How long the next poll may wait: until the nearest deadline, or not
    /// at all while a listener has connections left to accept.
    fn poll_timeout(&self, requested: Option<Duration>, now: Instant) -> Option<Duration> {
        let paused = self.accept_paused_until.is_some();
        // A paused accept does not hold back datagrams: UDP needs no
        // descriptors.
        let work_left = self
            .listeners
            .iter()
            .any(|l| l.ready && (!paused || matches!(l.socket, Socket::Udp(_))));
        if (work_left && self.state == State::Running) || self.waiters.unfinished() {
            return Some(Duration::ZERO);
        }
        let draining = match self.state {
            State::Draining { until } => Some(until),
            _ => None,
        };
        let next = [
            self.timers
                .peek()
                .map(|Reverse(timer)| self.clock.instant(timer.at)),
            self.accept_paused_until,
            draining,
            self.next_stats,
        ]
        .into_iter()
        .flatten()
        .min();
        let until_next = next.map(|at| at.saturating_duration_since(now));
        match (requested, until_next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn mark_ready(&mut self, index: usize) {
        if let Some(listener) = self.listeners.get_mut(index) {
            listener.ready = true;
        }
    }

    fn on_connection_event(
        &mut self,
        registry: &Registry,
        key: usize,
        event: &Event,
        now: Instant,
    ) {
        // A connection closed earlier in this batch still has its events
        // here; its key is not reused before the batch ends.
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        if log_enabled!(log::Level::Trace) {
            trace!(
                "{} ready{}{}{}",
                entry.conn.label(),
                if event.is_readable() { " read" } else { "" },
                if event.is_writable() { " write" } else { "" },
                if event.is_read_closed() {
                    " read-closed"
                } else {
                    ""
                },
            );
        }
        if entry.stage == Stage::AwaitingHeader {
            self.read_header(registry, key, event.is_read_closed(), now);
            return;
        }
        let outcome = self.run_conn(key, event.is_read_closed(), now);
        self.settle(registry, key, outcome, now);
    }

    /// Lets connection `key` read and write what it can, and counts what
    /// moved.
    fn run_conn(&mut self, key: usize, read_closed: bool, now: Instant) -> Option<CloseReason> {
        let entry = &mut self.conns[key];
        let (bytes_in, bytes_out) = (entry.conn.bytes_in(), entry.conn.bytes_out());
        let outcome = entry
            .conn
            .on_ready(&mut self.scratch, read_closed, &self.budget);
        let read = entry.conn.bytes_in() - bytes_in;
        let written = entry.conn.bytes_out() - bytes_out;
        if read + written != 0 {
            if entry.stage == Stage::Serving {
                entry.since = self.clock.tick(now);
            }
            let counters = self.stats.get_mut(entry.service);
            counters.bytes_in += read;
            counters.bytes_out += written;
        }
        outcome
    }

    /// After a connection has run: close it, or bring its registration and
    /// deadline up to date.
    fn settle(
        &mut self,
        registry: &Registry,
        key: usize,
        outcome: Option<CloseReason>,
        now: Instant,
    ) {
        if let Some(reason) = outcome {
            self.close(key, reason);
            return;
        }
        let entry = &mut self.conns[key];
        if entry.conn.is_lingering() && entry.stage != Stage::Lingering {
            entry.stage = Stage::Lingering;
            entry.since = self.clock.tick(now);
            self.arm(key);
        }
        let scratch_len = self.scratch.len();
        if let Some(wanted) =
            self.waiters
                .note(key, &mut self.conns[key], scratch_len, &self.budget)
        {
            debug!(
                "{} held back: its next read wants {wanted} bytes, {} of {} are free",
                self.tag(key),
                self.budget.available(),
                self.budget.limit()
            );
        }
        let entry = &mut self.conns[key];
        let wanted = entry.conn.interest();
        // A connection that yielded with work left needs re-registering
        // even with the same interest: that re-arms the edge, so the next
        // poll reports it again.
        if wanted == entry.registered && !entry.conn.yielded() {
            return;
        }
        let token = Token(key);
        let stream = entry.conn.stream_mut();
        let result = match (entry.registered, wanted) {
            (None, Some(interest)) => registry.register(stream, token, interest),
            (Some(_), Some(interest)) => registry.reregister(stream, token, interest),
            (Some(_), None) => registry.deregister(stream),
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => entry.registered = wanted,
            Err(err) => self.close(key, CloseReason::from_error(&err)),
        }
    }

    /// Accepts on every listener that is still ready, up to its share, and
    /// answers the datagrams waiting on UDP sockets.
    fn accept_ready(&mut self, registry: &Registry, now: Instant) {
        if self.state != State::Running {
            return;
        }
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
        }
        for index in 0..self.listeners.len() {
            if !self.listeners[index].ready {
                continue;
            }
            if matches!(self.listeners[index].socket, Socket::Udp(_)) {
                self.answer_datagrams(index);
            } else if self.accept_paused_until.is_none() {
                self.accept_connections(registry, index, now);
            }
        }
    }

    fn accept_connections(&mut self, registry: &Registry, index: usize, now: Instant) {
        for _ in 0..ACCEPTS_PER_TURN {
            let listener = &mut self.listeners[index];
            let Socket::Tcp(socket) = &mut listener.socket else {
                return;
            };
            match socket.accept() {
                Ok((stream, peer)) => {
                    let service = listener.service;
                    self.admit(registry, stream, peer, service, now);
                }
                Err(err) if would_block(&err) => {
                    listener.ready = false;
                    return;
                }
                Err(err) if interrupted(&err) => {}
                Err(err) if out_of_resources(&err) => {
                    self.pause_accepting(&err, now);
                    return;
                }
                // ECONNABORTED and the like: that one client is gone.
                Err(err) => debug!(
                    "accept on {} {} failed: {err}",
                    listener.service, listener.addr
                ),
            }
        }
    }

    /// Answers each waiting datagram with at most one datagram. A reply the
    /// socket cannot take now is dropped, as UDP may drop it anyway.
    fn answer_datagrams(&mut self, index: usize) {
        for _ in 0..DATAGRAMS_PER_TURN {
            let listener = &mut self.listeners[index];
            let Socket::Udp(socket) = &listener.socket else {
                return;
            };
            let service = listener.service;
            let (len, peer) = match socket.recv_from(&mut self.scratch) {
                Ok(received) => received,
                Err(err) if would_block(&err) => {
                    listener.ready = false;
                    return;
                }
                Err(err) if interrupted(&err) => continue,
                // An ICMP error from an earlier reply, say: one peer's trouble.
                Err(err) => {
                    debug!("{service} {}: receive failed: {err}", listener.addr);
                    continue;
                }
            };
            let counters = self.stats.get_mut(service);
            counters.bytes_in += len as u64;
            if !allowed(&self.limits.allow, peer.ip()) {
                counters.refused += 1;
                debug!("{service} {peer}: datagram dropped: not in --allow");
                continue;
            }
            if NEVER_ANSWER_PORTS.contains(&peer.port()) {
                counters.refused += 1;
                debug!(
                    "{service} {peer}: datagram dropped: source port {} could answer back",
                    peer.port()
                );
                continue;
            }
            counters.accepted += 1;
            let Some(reply) = self.answerer.answer(service, &self.scratch[..len]) else {
                trace!("{service} {peer}: {len} bytes, no answer");
                continue;
            };
            match socket.send_to(reply, peer) {
                Ok(sent) => {
                    counters.bytes_out += sent as u64;
                    trace!("{service} {peer}: {len} bytes, answered {sent}");
                }
                Err(err) => debug!("{service} {peer}: answer dropped: {err}"),
            }
        }
    }

    /// Linux leaves the connection queued on EMFILE and, with the edge spent,
    /// would never tell us again: retry after a pause, or sooner when a
    /// connection closes and frees a descriptor. Retrying at once would spin.
    fn pause_accepting(&mut self, err: &io::Error, now: Instant) {
        self.accept_paused_until = Some(now + ACCEPT_PAUSE);
        if let Some(held_back) = self.descriptor_warning.allow(now) {
            warn!(
                "accept paused: {err}; {} connections open; retrying in {} ms or when one closes{}",
                self.conns.len(),
                ACCEPT_PAUSE.as_millis(),
                held_back_note(held_back),
            );
        }
    }

    /// Starts serving an accepted connection, or refuses it. One from a
    /// trusted balancer waits for its PROXY header first: `--allow` and
    /// `--per-source` judge the peer the header names, so only the
    /// connection limit applies before it.
    fn admit(
        &mut self,
        registry: &Registry,
        stream: TcpStream,
        peer: SocketAddr,
        service: Service,
        now: Instant,
    ) {
        let relayed = self
            .limits
            .proxy_protocol
            .iter()
            .any(|block| block.contains(peer.ip()));
        let refusal = if relayed {
            self.capacity_refusal()
        } else {
            self.refusal(peer.ip())
        };
        if let Some(refusal) = refusal {
            self.refuse(stream, peer, service, refusal, now);
            return;
        }
        if !relayed {
            self.count_source(peer.ip());
        }
        // Echo answers at once with whatever it has; Nagle would hold a small
        // reply back behind an unacknowledged one.
        if let Err(err) = stream.set_nodelay(true) {
            debug!("conn - {peer} cannot set TCP_NODELAY: {err}");
        }
        // Echo and discard read in bulk; knowing the queue is empty after
        // a full read saves the read that would only say WouldBlock.
        if matches!(service, Service::Echo | Service::Discard) {
            if let Err(err) = sys::report_queued_bytes(&stream) {
                trace!("conn - {peer} cannot set TCP_INQ: {err}");
            }
        }
        let key = self.conns.vacant_key();
        let label = Label { token: key, peer };
        let conn = match service {
            Service::Daytime => {
                let line = daytime::line_now(self.limits.daytime_format);
                Connection::daytime(stream, label, line.as_bytes(), &self.budget)
            }
            Service::Time => {
                Connection::time(stream, label, daytime::time_bytes_now(), &self.budget)
            }
            Service::Discard => Connection::discard(stream, label),
            Service::Chargen => Connection::chargen(stream, label),
            _ => Connection::echo(stream, label, self.limits.pending_limit),
        };
        self.next_id = self.next_id.wrapping_add(1);
        self.conns.insert(Entry {
            conn,
            service,
            id: self.next_id,
            registered: None,
            stage: if relayed {
                Stage::AwaitingHeader
            } else {
                Stage::Serving
            },
            since: self.clock.tick(now),
            armed: None,
            held_back: false,
        });
        self.stats.get_mut(service).open += 1;
        if relayed {
            self.await_header(registry, key);
        } else {
            // Echo and discard wait: registering reports input that arrived
            // with the connection. The rest have bytes to send now.
            let run_now = !matches!(service, Service::Echo | Service::Discard);
            self.start(registry, key, run_now, false, now);
        }
    }

    /// Counts an admitted connection as accepted and serves it: at once if
    /// `run_now` (with `read_closed` from the event that brought it).
    fn start(
        &mut self,
        registry: &Registry,
        key: usize,
        run_now: bool,
        read_closed: bool,
        now: Instant,
    ) {
        let service = self.conns[key].service;
        self.stats.get_mut(service).accepted += 1;
        debug!("{} accepted {service}", self.tag(key));
        let outcome = if run_now {
            self.run_conn(key, read_closed, now)
        } else {
            None
        };
        self.settle(registry, key, outcome, now);
        if self.conns.contains(key) {
            self.arm(key);
        }
    }

    /// `conn {token} {peer}`, with ` via {balancer}` for a relayed one.
    fn tag(&self, key: usize) -> Tag {
        Tag {
            label: self.conns[key].conn.label(),
            via: self.via.get(&key).copied(),
        }
    }

    fn count_source(&mut self, ip: IpAddr) {
        if let Some(counts) = &mut self.per_source {
            *counts.entry(ip).or_default() += 1;
        }
    }

    /// Whether the connection limit turns a new connection away.
    fn capacity_refusal(&self) -> Option<Refusal> {
        (self.conns.len() >= self.limits.max_connections).then_some(Refusal::MaxConnections)
    }

    /// Why a peer at `ip` may not be served: `--allow` and `--per-source`.
    fn source_refusal(&self, ip: IpAddr) -> Option<Refusal> {
        if !allowed(&self.limits.allow, ip) {
            return Some(Refusal::NotAllowed);
        }
        let limit = self.limits.per_source?;
        let open = self.per_source.as_ref()?.get(&ip).copied().unwrap_or(0);
        (open as usize >= limit).then_some(Refusal::PerSource)
    }

    /// Why a connection from `ip` must be refused now, if it must.
    fn refusal(&self, ip: IpAddr) -> Option<Refusal> {
        if !allowed(&self.limits.allow, ip) {
            return Some(Refusal::NotAllowed);
        }
        self.capacity_refusal().or_else(|| self.source_refusal(ip))
    }

    /// Accepts and closes at once, so the client sees EOF rather than a
    /// hang in the backlog.
    fn refuse(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        service: Service,
        refusal: Refusal,
        now: Instant,
    ) {
        // Closing with unread input sends a reset, which the client may see
        // instead of the EOF (nginx's lingering close exists for this): read
        // what has arrived first.
        let _ = stream.read(&mut self.scratch);
        let _ = stream.shutdown(Shutdown::Write);
        self.note_refusal(&Unlabelled(peer), peer.ip(), service, refusal, now);
    }

    /// Counts and logs a refusal: debug for each, a rate-limited warning
    /// for resource limits.
    fn note_refusal(
        &mut self,
        who: &dyn fmt::Display,
        ip: IpAddr,
        service: Service,
        refusal: Refusal,
        now: Instant,
    ) {
        self.stats.get_mut(service).refused += 1;
        let open = self.conns.len();
        match refusal {
            // Not a resource limit: nothing to warn an operator about.
            Refusal::NotAllowed => {
                debug!("{who} refused {service}: not in --allow");
            }
            Refusal::MaxConnections => {
                debug!("{who} refused {service}: {open} open (max-connections)");
                if let Some(held_back) = self.refusal_warning.allow(now) {
                    warn!(
                        "refusing connections: {open} open (max-connections){}",
                        held_back_note(held_back)
                    );
                }
            }
            Refusal::PerSource => {
                debug!("{who} refused {service}: {ip} has its most open (per-source)");
                if let Some(held_back) = self.refusal_warning.allow(now) {
                    warn!(
                        "refusing connections from {ip}: per-source limit reached{}",
                        held_back_note(held_back)
                    );
                }
            }
        }
    }

    /// Closes one connection; dropping the stream closes the descriptor,
    /// which also takes it out of the epoll set.
    fn close(&mut self, key: usize, reason: CloseReason) {
        let tag = self.tag(key);
        self.via.remove(&key);
        let mut entry = self.conns.remove(key);
        self.waiters.leave(&entry, &self.budget);
        if entry.stage == Stage::AwaitingHeader {
            // Its header bytes wait unread, and closing over unread input
            // sends a reset: take them, so the balancer sees a plain EOF.
            let _ = entry.conn.stream_mut().read(&mut self.scratch);
        }
        self.stats.get_mut(entry.service).open -= 1;
        // Counted by source only once its source is known.
        let counted = entry.stage != Stage::AwaitingHeader;
        if let Some(counts) = self.per_source.as_mut().filter(|_| counted) {
            let ip = entry.conn.label().peer.ip();
            if let Some(open) = counts.get_mut(&ip) {
                *open -= 1;
                if *open == 0 {
                    counts.remove(&ip);
                }
            }
        }
        debug!(
            "{tag} closed: {reason}, in {} out {}",
            entry.conn.bytes_in(),
            entry.conn.bytes_out()
        );
        // A descriptor is free again: if accepting was paused for lack of
        // one, try now rather than at the pause's end.
        self.accept_paused_until = None;
        self.purge_stale_timers();
    }

    /// A closed connection leaves its deadline in the heap until it comes
    /// due, which may be minutes away: under churn those would pile up.
    /// Rebuilding once stale entries outnumber live ones keeps the heap
    /// within twice the connections, at amortised O(1) per close.
    fn purge_stale_timers(&mut self) {
        if self.timers.len() <= 2 * self.conns.len() + STALE_TIMERS_KEPT {
            return;
        }
        let conns = &self.conns;
        self.timers.retain(|Reverse(timer)| {
            conns
                .get(timer.key as usize)
                .is_some_and(|entry| entry.id == timer.id && entry.armed == Some(timer.at))
        });
        if self.timers.capacity() > 4 * self.timers.len() + STALE_TIMERS_KEPT {
            self.timers.shrink_to_fit();
        }
    }

    /// Puts the connection's next deadline in the heap unless an earlier one
    /// is there already.
    fn arm(&mut self, key: usize) {
        let entry = &mut self.conns[key];
        let Some((at, _)) = entry.due(self.limits.idle_timeout) else {
            return;
        };
        if entry.armed.is_some_and(|armed| armed <= at) {
            return;
        }
        let Ok(key) = u32::try_from(key) else {
            return; // cannot happen: descriptors run out long before
        };
        entry.armed = Some(at);
        self.timers.push(Reverse(Timer {
            at,
            key,
            id: entry.id,
        }));
    }

    /// Closes connections whose deadline has passed; re-arms those that were
    /// active since their entry was pushed.
    fn expire_timers(&mut self, now: Instant) {
        let now = self.clock.tick(now);
        while let Some(Reverse(timer)) = self.timers.peek().copied() {
            if timer.at > now {
                break;
            }
            self.timers.pop();
            let key = timer.key as usize;
            let Some(entry) = self.conns.get_mut(key) else {
                continue;
            };
            if entry.id != timer.id || entry.armed != Some(timer.at) {
                continue; // superseded by an earlier deadline, or a new connection
            }
            entry.armed = None;
            match entry.due(self.limits.idle_timeout) {
                Some((at, reason)) if at <= now => self.close(key, reason),
                Some(_) => self.arm(key),
                None => {}
            }
        }
    }

    /// Starts a requested shutdown, and finishes one that is done or out of
    /// grace.
    fn check_shutdown(&mut self, registry: &Registry, now: Instant) {
        if self.state == State::Running && self.handle.requested.load(Ordering::Acquire) {
            self.begin_shutdown(registry, now);
        }
        if let State::Draining { until } = self.state {
            if !self.conns.is_empty() && now >= until {
                info!(
                    "shutdown grace over: closing {} connections",
                    self.conns.len()
                );
                self.close_everything();
            }
            if self.conns.is_empty() {
                info!("shutdown complete");
                self.state = State::Finished;
            }
        }
    }

    /// Stops accepting and lets every connection finish what it owes.
    fn begin_shutdown(&mut self, registry: &Registry, now: Instant) {
        if self.state != State::Running {
            return;
        }
        if self.limits.reuse_port {
            self.take_in_queued(registry, now);
        }
        info!(
            "shutting down: {} connections, {} s grace",
            self.conns.len(),
            self.limits.shutdown_grace.as_secs_f64()
        );
        for mut listener in self.listeners.drain(..) {
            let _ = registry.deregister(listener.socket.source());
        }
        self.accept_paused_until = None;
        self.state = State::Draining {
            until: now + self.limits.shutdown_grace,
        };
        // One pass closes every connection that is idle already; the rest
        // close as their events show them idle, or when the grace ends.
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            // Its header not read, it has been sent nothing and owes nothing.
            if self.conns[key].stage == Stage::AwaitingHeader {
                self.close(key, CloseReason::Shutdown);
                continue;
            }
            self.conns[key].conn.close_when_idle();
            let outcome = self.run_conn(key, false, now);
            self.settle(registry, key, outcome, now);
        }
    }

    /// Runs the connections the budget held back while it covers them,
    /// first come, first served: who waits, who is woken and why no one
    /// waits forever is in [`waitlist`]. Each runs as first in line, so
    /// that no one else can take the bytes it was woken for.
    fn wake_held_back(&mut self, registry: &Registry, now: Instant) {
        if self.waiters.is_empty() {
            return;
        }
        let mut wakes_left = self.waiters.start_pass(&self.conns);
        let scratch_len = self.scratch.len();
        while wakes_left > 0 {
            let Some((key, wanted)) =
                self.waiters
                    .next_woken(&mut self.conns, scratch_len, &self.budget)
            else {
                return;
            };
            debug!(
                "{} woken: its next read wants {wanted} bytes, {} of {} are free",
                self.tag(key),
                self.budget.available(),
                self.budget.limit()
            );
            let first = self.budget.first_in_line();
            let outcome = self.run_conn(key, false, now);
            drop(first);
            self.settle(registry, key, outcome, now);
            wakes_left -= 1;
        }
        self.waiters.cut_short();
    }

    /// Tells the operator, at most once a second, that the memory budget
    /// held reads back: some peers are not reading what they are sent.
    fn warn_of_pressure(&mut self, now: Instant) {
        if !self.budget.take_pressure() {
            return;
        }
        if let Some(held_back) = self.budget_warning.allow(now) {
            warn!(
                "memory budget full: {} of {} bytes held (max-buffered); \
                 connections that would hold more wait for their peers to read \
                 or the total to fall{}",
                self.budget.used(),
                self.budget.limit(),
                held_back_note(held_back)
            );
        }
    }

    /// A process of a `--reuse-port` group that stops first accepts every
    /// connection already queued on its listeners before it closes them,
    /// so that the clients queued there are served (within the grace, like
    /// the rest) rather than reset. With Linux's `tcp_migrate_req`, what
    /// arrives after this, still in its handshake, moves to the processes
    /// that remain when the listener closes.
    fn take_in_queued(&mut self, registry: &Registry, now: Instant) {
        for index in 0..self.listeners.len() {
            if !matches!(self.listeners[index].socket, Socket::Tcp(_)) {
                continue;
            }
            // Whether or not an edge said so: the queue is the truth.
            self.listeners[index].ready = true;
            let before = self.conns.len();
            // The queue holds at most the backlog; a flood arriving
            // meanwhile must not keep the shutdown from going on.
            let rounds = LISTEN_BACKLOG as usize / ACCEPTS_PER_TURN + 1;
            for _ in 0..rounds {
                if !self.listeners[index].ready || self.accept_paused_until.is_some() {
                    break;
                }
                self.accept_connections(registry, index, now);
            }
            let taken = self.conns.len().saturating_sub(before);
            if taken > 0 {
                debug!(
                    "{} {}: took in {taken} queued connections before closing",
                    self.listeners[index].service, self.listeners[index].addr
                );
            }
        }
    }

    /// Logs the counters when `--stats-interval` says it is time.
    fn log_stats(&mut self, now: Instant) {
        let (Some(due), Some(every)) = (self.next_stats, self.limits.stats_interval) else {
            return;
        };
        if now < due {
            return;
        }
        info!("stats: {}", self.stats);
        // Skip intervals the loop slept through rather than log a burst.
        let mut next = due + every;
        while next <= now {
            next += every;
        }
        self.next_stats = Some(next);
    }

    fn close_everything(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close(key, CloseReason::Shutdown);
        }
    }
}

/// Whether `ip` may connect or send: an empty allow-list allows everyone.
fn allowed(allow: &[Cidr], ip: IpAddr) -> bool {
    allow.is_empty() || allow.iter().any(|block| block.contains(ip))
}

/// A seed for chargen's reply lengths that differs between runs.
fn seed_from(started: Instant) -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    since_epoch.as_nanos() as u64 ^ (started.elapsed().as_nanos() as u64).rotate_left(32)
}

/// `accept` failed for lack of descriptors or kernel memory: retrying at
/// once would fail the same way.
fn out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn held_back_note(held_back: u64) -> String {
    if held_back == 0 {
        String::new()
    } else {
        format!(" ({held_back} more since the last warning)")
    }
}

/// Registers listener number `index` with the poll and learns its address.
fn register_listener(
    poll: &Poll,
    mut socket: Socket,
    service: Service,
    index: usize,
) -> io::Result<Listener> {
    let addr = match &socket {
        Socket::Tcp(listener) => listener.local_addr(),
        Socket::Udp(socket) => socket.local_addr(),
    }?;
    poll.registry().register(
        socket.source(),
        Token(LISTENER_BASE + index),
        Interest::READABLE,
    )?;
    Ok(Listener {
        socket,
        service,
        addr,
        ready: false,
    })
}

/// Binds a listener with a backlog deep enough for a connection ramp.
fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    use std::os::fd::AsRawFd;
    let socket = sys::bound_socket(addr, libc::SOCK_STREAM, reuse_port)?;
    // SAFETY: listen(2) on a descriptor we own; no memory is passed.
    if unsafe { libc::listen(socket.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from_std(std::net::TcpListener::from(socket)))
}

/// Binds a UDP socket, shared with other processes if `reuse_port`.
fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let socket = sys::bound_socket(addr, libc::SOCK_DGRAM, reuse_port)?;
    Ok(UdpSocket::from_std(std::net::UdpSocket::from(socket)))
}
