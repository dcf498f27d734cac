//! The event loop: one `mio::Poll`, the listeners, a `Slab` of connections
//! keyed by their token, and what a connection event does.
//!
//! One turn reads top to bottom in [`Server::turn`]: poll; hand each
//! connection event to its [`Connection`] (or, before its PROXY header, to
//! the relay stage); then accept on listeners that are still ready and
//! answer datagrams, start or finish a shutdown, expire deadlines, and log
//! what is due. Accepting after the events means a key freed by a close in
//! this batch cannot be handed to a new connection while stale events for
//! it are still being read (mio returns events for a token even after its
//! source closed in the same batch, and slab reuses the freed key first:
//! tokio-rs/mio#219).
//!
//! What the loop delegates, each in a module of its own:
//! - `listeners`: binding, accepting a fair share per turn, the EMFILE
//!   pause, taking in the queue when a `--reuse-port` member stops;
//! - `admission`: who may connect (`--allow`, `--per-source`,
//!   `--max-connections`), refusals, and starting an admitted connection;
//! - `relay`: the PROXY header stage of a trusted balancer's connections;
//! - `datagrams`: the UDP services;
//! - `timers`: deadlines, in a heap with lazy deletion;
//! - `shutdown`: the handle and the graceful drain;
//! - `notices`: the stats line and rate-limited warnings.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{debug, info, log_enabled, trace};
use mio::event::{Event, Source};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::budget::Budget;
use crate::config::{Cidr, Config, DaytimeFormat, Service};
use crate::conn::{CloseReason, Connection, Label, interrupted};
use crate::listen::HeldListener;
use crate::stats::Stats;
use crate::sys;
use crate::udp::Answerer;

mod admission;
mod datagrams;
mod listeners;
mod metrics;
mod notices;
mod relay;
mod shutdown;
mod timers;
mod waitlist;

pub use listeners::BindError;
pub use shutdown::ShutdownHandle;

use datagrams::seed_from;
use listeners::{Listener, Socket, bind_listeners};
use metrics::Exporter;
use notices::RateLimit;
use shutdown::State;
use timers::{Clock, Tick, Timer};
use waitlist::WaitList;

/// Wakes the loop for [`ShutdownHandle::shutdown`].
const WAKER: Token = Token(usize::MAX);
/// An embedder's own source, registered with [`Server::register_external`].
const EXTERNAL: Token = Token(usize::MAX - 1);
/// Listener `i` has token `LISTENER_BASE + i`; connection tokens are slab
/// keys, which never get near this.
const LISTENER_BASE: usize = usize::MAX / 2;
/// The `--metrics` listeners and their connections have tokens from here
/// (see `metrics::Exporter`), between the connections' and the listeners'.
const METRICS_BASE: usize = usize::MAX / 4;

/// One read per readiness event drains a loopback socket in the common case,
/// and bulk echo moves 64 KiB per pair of syscalls. Shared by every
/// connection, so its size costs nothing per connection.
const READ_CHUNK: usize = 64 * 1024;
/// Events taken per `epoll_wait`; more wait for the next turn.
const EVENTS_PER_TURN: usize = 1024;

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
    /// The `--metrics` endpoint.
    exporter: Exporter,
    /// When the server started, for `process_start_time_seconds`.
    started: std::time::SystemTime,
    /// Buffers for UDP datagrams, made when the first one comes.
    batch: Option<Box<crate::sys::Batch>>,
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
        let listeners = bind_listeners(&poll, config, held)?;
        let exporter = Exporter::bind(poll.registry(), &config.metrics, METRICS_BASE)
            .map_err(|(addr, source)| BindError::Metrics { addr, source })?;
        // Only once every listener is bound: a later failure must not leave
        // a log line announcing a listener that never served.
        for listener in &listeners {
            info!("{} listening on {}", listener.service, listener.addr);
        }
        for addr in exporter.local_addrs() {
            info!("metrics listening on {addr}");
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
            // An interval past the clock's range never comes.
            next_stats: config
                .stats_interval
                .and_then(|every| started.checked_add(every)),
            answerer: Answerer::new(config.daytime_format, seed_from(started)),
            exporter,
            started: std::time::SystemTime::now(),
            batch: None,
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

    /// The bound address of every `--metrics` listener
    /// ([`Config::metrics`]), in configuration order.
    pub fn metrics_addrs(&self) -> Vec<SocketAddr> {
        self.core.exporter.local_addrs()
    }

    /// The counters as Prometheus's text exposition, as `--metrics` serves
    /// them: for an embedder that serves them its own way.
    pub fn metrics_text(&self) -> String {
        self.core.exposition()
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
        self.core.snapshot()
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
                token if self.core.exporter.owns(token) => self.core.scrape(registry, token, now),
                Token(key) => self.core.on_connection_event(registry, key, event, now),
            }
        }
        self.core.check_shutdown(registry, now);
        self.core.accept_ready(registry, now);
        self.core.expire_timers(now);
        self.core.exporter.expire(now);
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
            self.exporter.next_deadline(),
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
            // A reset ends the header as surely as a FIN does.
            let ended = event.is_read_closed() || event.is_error();
            self.read_header(registry, key, ended, now);
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
        self.note_if_held_back(key);
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

    /// `conn {token} {peer}`, with ` via {balancer}` for a relayed one.
    fn tag(&self, key: usize) -> Tag {
        Tag {
            label: self.conns[key].conn.label(),
            via: self.via.get(&key).copied(),
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
        let counters = self.stats.get_mut(entry.service);
        counters.open -= 1;
        // A trusted balancer's connection that ended without a whole valid
        // header was never served: a refusal, whatever ended it.
        if entry.stage == Stage::AwaitingHeader
            && !matches!(reason, CloseReason::Shutdown | CloseReason::Refused)
        {
            counters.refused += 1;
            counters.refused_by.proxy_header += 1;
        }
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
        if log_enabled!(log::Level::Debug) {
            // What the network made of it: asked only when it is logged.
            let measured = match sys::tcp_measures(entry.conn.stream_mut()) {
                Ok(tcp) => format!(
                    ", rtt {:.2} ms, retrans {}",
                    f64::from(tcp.rtt_us) / 1000.0,
                    tcp.retransmitted
                ),
                Err(_) => String::new(),
            };
            debug!(
                "{tag} closed: {reason}, in {} out {}{measured}",
                entry.conn.bytes_in(),
                entry.conn.bytes_out()
            );
        }
        // A descriptor is free again: if accepting was paused for lack of
        // one, try now rather than at the pause's end.
        self.accept_paused_until = None;
        self.purge_stale_timers();
    }
}
