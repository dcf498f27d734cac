//! The echo benchmark: many connections, one message in flight on each.
//!
//! Each thread owns a share of the connections. It writes one message to
//! every connection it owns, then sweeps over them: read that connection's
//! echo in full, check it byte for byte, and write its next message at once.
//! Sending as soon as each echo is in (rather than writing a whole round,
//! then reading a whole round) keeps every connection's message in flight,
//! so the server always has work queued while the client reads; measured
//! with both pinned to one core each, that lifted the server from about
//! 85-95% busy to 99%.
//!
//! Sockets are blocking, so a message costs one `write` and (usually) one
//! `read` and nothing else: no event loop, no allocation, no clock but the
//! vDSO's. The client is then no slower per message than the server.
//!
//! Latency is closed-loop: from just before a message is written to the
//! moment its whole echo has been read; the connection's next message is
//! only sent after that. With N connections in flight it is about N divided
//! by the throughput (Little's law), because it includes the time the
//! thread spends on the connections ahead of it in the sweep, as any
//! client driving many connections from one thread would see it.
//!
//! Every message is derived from (connection index, round), so an echo of
//! stale bytes, of another connection's bytes or with one bit flipped is a
//! mismatch.
//!
//! `--mode discard` and `--mode chargen` measure one direction each, the
//! upload and download halves of a throughput test: each thread writes a
//! message to (discard) or reads and checks one from (chargen) each of its
//! connections in turn. A "round trip" is then one message moved, and its
//! latency the time its `write` or `read` blocked. Discard's connections
//! are half-closed at the end, and any byte the server sends back is a
//! mismatch; chargen's bytes are checked against RFC 864's pattern.
//!
//! Every run ends by itself, whatever the server does: no message is begun
//! after the window closes, and every read and write ends by the window's
//! end plus `--timeout` ([`deadline`] owns both limits). What is still
//! unanswered then is abandoned and reported, never waited for.

use std::io::{self, IsTerminal};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use self::deadline::{Limits, Stop};
use self::report::{LiveLine, Report};

use crate::addr::{Target, set_timeouts};
use crate::error::{Error, is_timeout};
use crate::socket;

mod churn;
mod deadline;
mod hist;
pub mod merge;
mod open;
mod pace;
mod plot;
mod report;

/// Most connections `--connections` accepts (clap wants an `i64` bound).
pub const MAX_CONNECTIONS: i64 = 1_000_000;

/// Largest `--size`: the server's default `--max-pending`. A whole message
/// is written before its echo is read, so it must fit in flight without the
/// client reading; up to this size that holds against any server at its
/// default cap, whatever the socket buffers.
pub const MAX_SIZE: i64 = 65_536;

/// Connections the whole client opens before it confirms them with one
/// echo each. Confirmed connections have left the server's accept queue, so
/// the queue never holds more than this, under std's and mio's default
/// listen backlog of 128 even if the server never raised it; beyond the
/// backlog Linux drops SYNs and the ramp stalls on retransmits.
const RAMP_IN_FLIGHT: usize = 128;

/// A thread stops opening connections after this many failures in a row
/// (counting the rest as failures too): when the server takes no more, each
/// further attempt could cost a whole `--timeout`.
const MAX_FAILURES_IN_A_ROW: usize = 16;

/// Descriptors needed besides the connections: stdio, the resolver's and
/// whatever else the process holds, with room to spare.
const SPARE_FDS: u64 = 64;

/// How often the main thread looks at the workers while they run.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Which service the benchmark drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Round trips: write a message, read its echo, check it.
    Echo,
    /// Upload: write messages to a discard server.
    Discard,
    /// Download: read and check what a chargen server sends.
    Chargen,
    /// Connection churn: connect, read one daytime line to EOF, close.
    Daytime,
}

impl Mode {
    /// The local default address of the service it drives.
    pub fn default_addr(self) -> &'static str {
        match self {
            Mode::Echo => "127.0.0.1:7007",
            Mode::Discard => "127.0.0.1:7009",
            Mode::Chargen => "127.0.0.1:7019",
            Mode::Daytime => "127.0.0.1:7013",
        }
    }

    /// The name `--mode` and the JSON report use.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Discard => "discard",
            Mode::Chargen => "chargen",
            Mode::Daytime => "daytime",
        }
    }
}

/// What to run, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// The service driven.
    pub mode: Mode,
    /// The echo server.
    pub target: Target,
    /// Connections to open and keep busy.
    pub connections: usize,
    /// Bytes per message.
    pub size: usize,
    /// How long to measure, once every connection is open.
    pub duration: Duration,
    /// Worker threads (fewer if there are fewer connections).
    pub threads: usize,
    /// Local addresses to connect from, round robin; empty = the OS picks.
    pub source_addrs: Vec<IpAddr>,
    /// Print JSON instead of text.
    pub json: bool,
    /// Bound on each connect, read and write.
    pub timeout: Duration,
    /// Open loop: messages per second, all connections together.
    pub rate: Option<f64>,
    /// Messages in flight per connection (echo only).
    pub pipeline: usize,
    /// Load before measuring, counted in nothing.
    pub warmup: Duration,
    /// Connections opened per second at most, while ramping.
    pub connect_rate: Option<f64>,
    /// One whole run per connection count, instead of `connections`.
    pub sweep: Vec<usize>,
    /// Where to draw the chart.
    pub plot: Option<std::path::PathBuf>,
    /// Where to write the per-second interval log.
    pub hist_log: Option<std::path::PathBuf>,
}

/// The part of the run that counts: after the warm-up, for `--duration`.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// When every worker started (the open loop's schedule starts here).
    origin: Instant,
    /// When measuring starts, after the warm-up.
    start: Instant,
    /// When measuring ends.
    end: Instant,
}

impl Window {
    /// Whether a message sent (or due) at `at` counts.
    fn counts(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }
}

/// Runs the benchmark and prints its report; an error if any message was
/// wrong, any connection failed or could not be opened.
pub fn run(options: &Options) -> Result<(), Error> {
    let stop = stop_on_interrupt()?;
    // Fail on a path that cannot be written before the run, not after it.
    let plot = options
        .plot
        .as_deref()
        .map(plot::Plot::create)
        .transpose()?;
    let mut hist_log = options
        .hist_log
        .as_deref()
        .map(hist::HistLog::create)
        .transpose()?;
    if options.sweep.is_empty() {
        let (report, tally) = run_once(options, &stop, hist_log.take())?;
        report::print(&report, options)?;
        if let Some(plot) = plot {
            plot.percentiles(&report)?;
        }
        return report.verdict(&tally);
    }
    let mut reports = Vec::new();
    let mut first_failure = None;
    for (n, &connections) in options.sweep.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let options = Options {
            connections,
            ..options.clone()
        };
        // The interval log holds the first run's intervals only: one log is
        // one run's timeline.
        let log = if n == 0 { hist_log.take() } else { None };
        let (report, tally) = run_once(&options, &stop, log)?;
        report::print_sweep_row(&report, &options, n == 0)?;
        if let Err(err) = report.verdict(&tally) {
            first_failure.get_or_insert(err);
        }
        reports.push(report);
    }
    if let Some(plot) = plot {
        plot.sweep(&reports)?;
    }
    first_failure.map_or(Ok(()), Err)
}

/// One whole run: open the connections, measure, add up the counts.
fn run_once(
    options: &Options,
    stop: &Arc<AtomicBool>,
    hist_log: Option<hist::HistLog>,
) -> Result<(Report, Tally), Error> {
    let stop = Arc::clone(stop);
    ensure_fd_limit(options.connections)?;
    // `resolve` never returns an empty list; the first address is the one
    // any client would try first.
    let dest = options.target.resolve()?[0];
    // The first connection proves the server is there; failing it is the
    // plain "cannot connect" error, not a benchmark with N failures. (A
    // daytime server closes it at once, so churn does not keep it.)
    let first = open_connection(dest, options, 0).map_err(|e| options.target.connect_error(e))?;
    let first = (options.mode != Mode::Daytime).then_some(first);
    let threads = options.threads.clamp(1, options.connections);
    let shared = Arc::new(Shared::new(stop));
    let mut first = first;
    let workers = shares(options.connections, threads)
        .into_iter()
        .enumerate()
        .map(|(number, range)| {
            let mut worker = Worker::new(range, first.take(), dest, options, &shared);
            worker.number = number;
            thread::Builder::new()
                .name("bench".to_string())
                .spawn(move || worker.run())
                .map_err(|source| Error::Io {
                    context: "cannot start a bench thread".to_string(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let origin = watch(&workers, &shared, options);
    // `watch` returns when the run is over: the wall clock at its start is
    // now less the time since.
    let now = std::time::SystemTime::now();
    let started_at = now.checked_sub(origin.elapsed()).unwrap_or(now);
    let tally = collect(workers, options, origin + options.warmup)?;
    let measure_start = origin + options.warmup;
    let report = Report::new(options, &tally, measure_start)?;
    if let Some(log) = hist_log {
        let elapsed = report.duration();
        log.write(
            started_at + options.warmup,
            tally.intervals.as_deref().unwrap_or_default(),
            elapsed.saturating_sub(Duration::from_secs(elapsed.as_secs())),
        )?;
    }
    Ok((report, tally))
}

/// Counters the workers share with the live line, updated once per round.
#[derive(Debug)]
struct Shared {
    /// Connections tried so far, for the ramp's progress line.
    attempted: AtomicUsize,
    /// Workers done opening their connections.
    ready: AtomicUsize,
    round_trips: AtomicU64,
    mismatches: AtomicU64,
    errors: AtomicU64,
    /// Set by Ctrl-C: finish the round, then report.
    stop: Arc<AtomicBool>,
    /// When measuring starts; `None` until every worker is ready.
    start: Mutex<Option<Instant>>,
    started: Condvar,
    /// When the ramp began: every worker's `--connect-rate` slots count
    /// from this one moment, so threads started late do not bunch up.
    ramp_start: Instant,
}

impl Shared {
    fn new(stop: Arc<AtomicBool>) -> Shared {
        Shared {
            attempted: AtomicUsize::new(0),
            ready: AtomicUsize::new(0),
            round_trips: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stop,
            start: Mutex::new(None),
            ramp_start: Instant::now(),
            started: Condvar::new(),
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Adds a round's counts to the ones the live line shows.
    fn publish(&self, round_trips: u64, mismatches: u64, errors: u64) {
        if round_trips > 0 {
            self.round_trips.fetch_add(round_trips, Ordering::Relaxed);
        }
        if mismatches > 0 {
            self.mismatches.fetch_add(mismatches, Ordering::Relaxed);
        }
        if errors > 0 {
            self.errors.fetch_add(errors, Ordering::Relaxed);
        }
    }

    /// Starts the measurement for every worker, now.
    fn start_now(&self) -> Instant {
        let now = Instant::now();
        *self.start.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
        self.started.notify_all();
        now
    }

    /// Blocks until the measurement starts; returns when it did.
    fn wait_for_start(&self) -> Instant {
        let mut start = self.start.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(start) = *start {
                return start;
            }
            start = self
                .started
                .wait(start)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Makes Ctrl-C end the run early with a report; a second Ctrl-C exits at once.
fn stop_on_interrupt() -> Result<Arc<AtomicBool>, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let register = || -> io::Result<()> {
        // Registered first, so it sees the flag before the second hook sets it.
        signal_hook::flag::register_conditional_shutdown(
            signal_hook::consts::SIGINT,
            130,
            Arc::clone(&stop),
        )?;
        signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
        Ok(())
    };
    register().map_err(|source| Error::Io {
        context: "cannot handle SIGINT".to_string(),
        source,
    })?;
    Ok(stop)
}

/// Raises the soft descriptor limit as far as the connections need.
fn ensure_fd_limit(connections: usize) -> Result<(), Error> {
    let needed = connections as u64 + SPARE_FDS;
    let limit = rlimit::increase_nofile_limit(needed).map_err(|source| Error::Io {
        context: "cannot raise the open-file limit".to_string(),
        source,
    })?;
    if limit < needed {
        return Err(Error::Failed(format!(
            "{connections} connections need about {needed} file descriptors, \
             but the limit is {limit} (ulimit -Hn)"
        )));
    }
    Ok(())
}

/// Splits connection indices `0..connections` into `threads` contiguous,
/// near-equal ranges.
fn shares(connections: usize, threads: usize) -> Vec<Range<usize>> {
    let (each, extra) = (connections / threads, connections % threads);
    let mut start = 0;
    (0..threads)
        .map(|t| {
            let len = each + usize::from(t < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// Opens connection number `index`, from its source address if any were
/// given, ready for the benchmark.
fn open_connection(dest: SocketAddr, options: &Options, index: usize) -> io::Result<TcpStream> {
    let stream = match options.source_addrs.as_slice() {
        [] => TcpStream::connect_timeout(&dest, options.timeout)?,
        sources => socket::connect_from(sources[index % sources.len()], dest, options.timeout)?,
    };
    // One small message per write: never wait for an ACK to coalesce.
    stream.set_nodelay(true)?;
    set_timeouts(&stream, options.timeout)?;
    Ok(stream)
}

/// One benchmark connection.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// The connection's number, from which its messages are derived.
    index: u64,
    /// When each message in flight was written, by round % `--pipeline`.
    sent_at: Vec<Instant>,
    /// The last round begun: later rounds were never sent, so there is
    /// nothing of theirs to read.
    last_sent: u64,
    /// It failed this round; it is dropped at the end of the round.
    failed: bool,
    /// Chargen: bytes received so far, modulo the pattern's cycle.
    position: usize,
}

/// What one worker counted.
#[derive(Debug)]
struct Tally {
    /// Latencies of the measured messages, in microseconds.
    latency: Histogram<u64>,
    /// Open loop: the same from each message's actual write.
    service: Histogram<u64>,
    /// With `--hist-log`: `latency` again, one histogram per second of
    /// the measurement (by when each message completed).
    intervals: Option<Vec<Histogram<u64>>>,
    /// When measuring started, for `intervals`.
    measure_start: Instant,
    /// Bytes read, for churn's throughput.
    bytes_in: u64,
    round_trips: u64,
    /// Measured messages begun: sent (or, open loop, due) in the window.
    /// Those whose whole answer was not checked are the unanswered ones.
    begun: u64,
    mismatches: u64,
    connect_failures: u64,
    errors: u64,
    /// Connections opened and confirmed by their first echo.
    opened: u64,
    /// The first mismatch, connect failure and error, to tell the user.
    first_mismatch: Option<String>,
    first_connect_failure: Option<String>,
    first_error: Option<String>,
    /// When this worker's last round ended.
    finished: Option<Instant>,
}

impl Tally {
    fn new(intervals: bool, measure_start: Instant) -> Result<Tally, Error> {
        Ok(Tally {
            latency: hist::new_histogram()?,
            service: hist::new_histogram()?,
            intervals: intervals.then(Vec::new),
            measure_start,
            bytes_in: 0,
            round_trips: 0,
            begun: 0,
            mismatches: 0,
            connect_failures: 0,
            errors: 0,
            opened: 0,
            first_mismatch: None,
            first_connect_failure: None,
            first_error: None,
            finished: None,
        })
    }

    /// Adds another worker's counts to these.
    fn merge(&mut self, other: Tally) -> Result<(), Error> {
        hist::add(&mut self.latency, &other.latency)?;
        hist::add(&mut self.service, &other.service)?;
        if let (Some(into), Some(from)) = (&mut self.intervals, &other.intervals) {
            for (n, histogram) in from.iter().enumerate() {
                if n == into.len() {
                    into.push(hist::new_histogram()?);
                }
                hist::add(&mut into[n], histogram)?;
            }
        }
        self.bytes_in += other.bytes_in;
        self.round_trips += other.round_trips;
        self.begun += other.begun;
        self.mismatches += other.mismatches;
        self.connect_failures += other.connect_failures;
        self.errors += other.errors;
        self.opened += other.opened;
        self.first_mismatch = self.first_mismatch.take().or(other.first_mismatch);
        self.first_connect_failure = self
            .first_connect_failure
            .take()
            .or(other.first_connect_failure);
        self.first_error = self.first_error.take().or(other.first_error);
        self.finished = self.finished.max(other.finished);
        Ok(())
    }
}

/// One thread's share of the benchmark.
struct Worker {
    /// The connection indices this worker opens.
    range: Range<usize>,
    /// Connection 0, already opened by `run`, for the first worker.
    first: Option<TcpStream>,
    dest: SocketAddr,
    options: Options,
    shared: Arc<Shared>,
    conns: Vec<Conn>,
    /// The message being sent or expected back; reused for every message.
    outgoing: Vec<u8>,
    /// The echo being read; reused for every message.
    incoming: Vec<u8>,
    /// How many of `conns` (from the front) have echoed once; the rest are
    /// the ramp batch just opened.
    confirmed: usize,
    /// The measurement's window, once it started.
    window: Window,
    /// This worker's number, for the `--connect-rate` schedule.
    number: usize,
    /// How long the current phase's I/O may go on.
    limits: Limits,
}

impl Worker {
    fn new(
        range: Range<usize>,
        first: Option<TcpStream>,
        dest: SocketAddr,
        options: &Options,
        shared: &Arc<Shared>,
    ) -> Worker {
        Worker {
            conns: Vec::with_capacity(range.len()),
            range,
            first,
            dest,
            options: options.clone(),
            shared: Arc::clone(shared),
            outgoing: vec![0; options.size],
            incoming: vec![0; options.size],
            confirmed: 0,
            window: Window {
                origin: Instant::now(),
                start: Instant::now(),
                end: Instant::now(),
            },
            number: 0,
            limits: Limits::confirm(options.timeout),
        }
    }

    /// Opens the connections, waits for the start, runs rounds until the
    /// deadline and returns the counts.
    fn run(mut self) -> Result<Tally, Error> {
        let mut tally = Tally::new(self.options.hist_log.is_some(), Instant::now())?;
        if self.options.mode == Mode::Daytime {
            return churn::run(&self, tally);
        }
        self.ramp(&mut tally);
        self.shared.ready.fetch_add(1, Ordering::SeqCst);
        let origin = self.shared.wait_for_start();
        let start = origin + self.options.warmup;
        self.window = Window {
            origin,
            start,
            end: start + self.options.duration,
        };
        tally.measure_start = start;
        self.limits = Limits::measure(self.window.end, self.options.timeout);
        match self.options.rate {
            Some(rate) => self.measure_open(rate, self.window, &mut tally)?,
            None => {
                self.measure(self.window.end, &mut tally);
                tally.finished = Some(Instant::now());
            }
        }
        Ok(tally)
    }

    /// Proves the connections just opened work, unmeasured (round 0): one
    /// echo, or one chunk of chargen, within one `--timeout` for the whole
    /// batch. Discard never answers, so its connections are proved by the
    /// measured writes.
    fn confirm(&mut self, tally: &mut Tally) {
        self.limits = Limits::confirm(self.options.timeout);
        match self.options.mode {
            Mode::Echo => {
                self.send_all(self.confirmed, 0, tally);
                self.receive_all(self.confirmed, 0, None, tally);
            }
            Mode::Chargen => self.download(self.confirmed, 0, tally),
            Mode::Discard | Mode::Daytime => {}
        }
    }

    /// Measured rounds until `deadline`.
    fn measure(&mut self, deadline: Instant, tally: &mut Tally) {
        match self.options.mode {
            Mode::Echo => self.measure_echo(deadline, tally),
            Mode::Discard => {
                let mut round = 1;
                while !self.conns.is_empty() && Instant::now() < deadline && !self.shared.stopping()
                {
                    self.upload(round, tally);
                    round += 1;
                }
                self.expect_silence(round, tally);
            }
            Mode::Chargen => {
                let mut round = 1;
                while !self.conns.is_empty() && Instant::now() < deadline && !self.shared.stopping()
                {
                    self.download(0, round, tally);
                    round += 1;
                }
            }
            Mode::Daytime => {}
        }
    }

    /// Writes one message to each connection, timing each write.
    fn upload(&mut self, round: u64, tally: &mut Tally) {
        let Worker {
            conns,
            outgoing,
            window,
            limits,
            ..
        } = self;
        let errors = tally.errors;
        let mut moved = 0;
        for conn in conns.iter_mut() {
            let sent = send(conn, outgoing, round, window, limits, tally);
            let sent_at = conn.sent_at[0];
            if sent && window.counts(sent_at) {
                tally.record(sent_at.elapsed(), Instant::now());
                moved += 1;
            }
        }
        conns.retain(|conn| !conn.failed);
        tally.round_trips += moved;
        self.publish(moved, 0, tally.errors - errors);
    }

    /// Ends a discard run: half-closes each connection and expects the
    /// server to close without having sent a byte.
    fn expect_silence(&mut self, round: u64, tally: &mut Tally) {
        let Worker {
            conns,
            incoming,
            options,
            limits,
            ..
        } = self;
        let (mismatches, errors) = (tally.mismatches, tally.errors);
        for conn in conns.iter_mut() {
            let result = match conn.stream.shutdown(std::net::Shutdown::Write) {
                Ok(()) => deadline::read(&conn.stream, incoming, limits),
                Err(err) => Err(Stop::Failed(err)),
            };
            match result {
                Ok(0) => {}
                Ok(n) => tally.unexpected_bytes(conn.index, n),
                // Not closing by the run's end is a fault too, as before
                // the bound: this is no message to abandon, but the server
                // ignoring the end of its input.
                Err(stop) => tally.fail(conn, round, "close", &stop.into_error(), options.timeout),
            }
        }
        self.publish(0, tally.mismatches - mismatches, tally.errors - errors);
    }

    /// Reads one message from each connection from `from` on and checks it
    /// against the chargen pattern; round 0 is not measured.
    fn download(&mut self, from: usize, round: u64, tally: &mut Tally) {
        let Worker {
            conns,
            incoming,
            options,
            window,
            limits,
            ..
        } = self;
        let (mismatches, errors) = (tally.mismatches, tally.errors);
        let mut moved = 0;
        for conn in conns[from..].iter_mut() {
            if limits.closed() {
                if round == 0 {
                    // The batch's confirmation ran out of time before this
                    // connection's turn: it was never shown to work.
                    tally.stop(conn, round, "receive", Stop::Cut, options.timeout);
                    continue;
                }
                break; // no message is begun after the window
            }
            let started = Instant::now();
            if round > 0 && window.counts(started) {
                tally.begun += 1;
            }
            if let Err(stop) = deadline::read_exact(&conn.stream, incoming, limits) {
                tally.stop(conn, round, "receive", stop, options.timeout);
                continue;
            }
            if round > 0 && window.counts(started) {
                tally.record(started.elapsed(), Instant::now());
                moved += 1;
            }
            if let Some(at) = chargen_mismatch(conn.position, incoming) {
                let expected = minetd::chargen::window(conn.position + at, 1)[0];
                tally.mismatch_at(
                    conn.index,
                    round,
                    at,
                    incoming.len(),
                    expected,
                    incoming[at],
                );
            }
            conn.position = minetd::chargen::advance(conn.position, incoming.len());
        }
        conns.retain(|conn| !conn.failed);
        tally.round_trips += moved;
        self.publish(moved, tally.mismatches - mismatches, tally.errors - errors);
    }

    /// Echo rounds until `deadline`: every connection always has
    /// `--pipeline` messages in flight; at the end the messages still in
    /// flight are read back without sending more.
    fn measure_echo(&mut self, deadline: Instant, tally: &mut Tally) {
        let pipeline = self.options.pipeline as u64;
        for round in 1..=pipeline {
            self.send_all(0, round, tally);
        }
        let mut round = 1;
        while !self.conns.is_empty() {
            let last = Instant::now() >= deadline || self.shared.stopping();
            let next = (!last).then_some(round + pipeline);
            self.receive_all(0, round, next, tally);
            if last {
                for round in round + 1..round + pipeline {
                    self.receive_all(0, round, None, tally);
                }
                return;
            }
            round += 1;
        }
    }

    /// Opens this worker's connections in batches, confirming each batch
    /// with one unmeasured echo (round 0) before opening the next.
    fn ramp(&mut self, tally: &mut Tally) {
        let batch = (RAMP_IN_FLIGHT / self.options.threads).max(1);
        let mut failures_in_a_row = 0;
        let mut next = self.range.start;
        while next < self.range.end && !self.shared.stopping() {
            let batch_end = (next + batch).min(self.range.end);
            for index in next..batch_end {
                if let Some(at) = connect_time(&self.options, self.number, index - self.range.start)
                {
                    sleep_until(self.shared.ramp_start + at);
                }
                if failures_in_a_row >= MAX_FAILURES_IN_A_ROW {
                    tally.connect_failures += 1; // not tried: see MAX_FAILURES_IN_A_ROW
                } else if self.open(index, tally) {
                    failures_in_a_row = 0;
                } else {
                    failures_in_a_row += 1;
                }
            }
            self.shared
                .attempted
                .fetch_add(batch_end - next, Ordering::Relaxed);
            self.confirm(tally);
            self.confirmed = self.conns.len();
            next = batch_end;
        }
        // Ctrl-C during the ramp: the connections never opened count as failed.
        tally.connect_failures += (self.range.end - next) as u64;
        tally.opened = self.conns.len() as u64;
    }

    /// Opens connection `index`; false (and counted) if it fails.
    fn open(&mut self, index: usize, tally: &mut Tally) -> bool {
        let opened = match self.first.take() {
            Some(stream) => Ok(stream),
            None => open_connection(self.dest, &self.options, index),
        };
        match opened {
            Ok(stream) => {
                self.conns.push(Conn {
                    stream,
                    index: index as u64,
                    sent_at: vec![Instant::now(); self.options.pipeline],
                    last_sent: 0,
                    failed: false,
                    position: 0,
                });
                true
            }
            Err(err) => {
                tally.connect_failures += 1;
                if tally.first_connect_failure.is_none() {
                    tally.first_connect_failure = Some(connect_failure(index, &err));
                }
                false
            }
        }
    }

    /// Writes round `round`'s message to every connection from `from` on.
    fn send_all(&mut self, from: usize, round: u64, tally: &mut Tally) {
        let Worker {
            conns,
            outgoing,
            window,
            limits,
            ..
        } = self;
        for conn in &mut conns[from..] {
            send(conn, outgoing, round, window, limits, tally);
        }
    }

    /// Reads round `round`'s echo from every connection from `from` on and
    /// checks it; with `send_next`, writes that connection's next message
    /// as soon as its echo is in, so the server never runs out of work
    /// while the client reads. Failed connections are dropped afterwards.
    fn receive_all(&mut self, from: usize, round: u64, send_next: Option<u64>, tally: &mut Tally) {
        let Worker {
            conns,
            outgoing,
            incoming,
            options,
            window,
            limits,
            ..
        } = self;
        let pipeline = options.pipeline as u64;
        let (mismatches, errors) = (tally.mismatches, tally.errors);
        let mut round_trips = 0;
        for conn in conns[from..].iter_mut().filter(|conn| !conn.failed) {
            if round > conn.last_sent {
                continue; // the window closed before this round was sent
            }
            if let Err(stop) = deadline::read_exact(&conn.stream, incoming, limits) {
                tally.stop(conn, round, "receive", stop, options.timeout);
                continue;
            }
            let sent_at = conn.sent_at[(round % pipeline) as usize];
            if round > 0 && window.counts(sent_at) {
                let done = Instant::now();
                tally.record(done - sent_at, done);
                round_trips += 1;
            }
            fill_message(outgoing, conn.index, round);
            if incoming != outgoing {
                tally.mismatch(conn.index, round, outgoing, incoming);
            }
            if let Some(next) = send_next {
                send(conn, outgoing, next, window, limits, tally);
            }
        }
        // One pass over flags; cheap next to a system call per connection.
        conns.retain(|conn| !conn.failed);
        tally.round_trips += round_trips;
        self.publish(
            round_trips,
            tally.mismatches - mismatches,
            tally.errors - errors,
        );
    }

    /// Adds a round's counts to the shared ones the live line shows.
    fn publish(&self, round_trips: u64, mismatches: u64, errors: u64) {
        self.shared.publish(round_trips, mismatches, errors);
    }
}

impl Tally {
    /// Counts a failed connection and marks it for removal. A connection
    /// that fails before its first echo (round 0, in the ramp) was never
    /// usable, as when a server at its connection limit accepts and closes
    /// at once: that is a connect failure, not an error.
    fn fail(
        &mut self,
        conn: &mut Conn,
        round: u64,
        doing: &str,
        err: &io::Error,
        timeout: Duration,
    ) {
        conn.failed = true;
        let (count, first, doing) = if round == 0 {
            let doing = format!("{doing} of its first echo");
            (
                &mut self.connect_failures,
                &mut self.first_connect_failure,
                doing,
            )
        } else {
            (&mut self.errors, &mut self.first_error, doing.to_string())
        };
        *count += 1;
        if first.is_none() {
            *first = Some(format!(
                "conn {}: {doing}: {}",
                conn.index,
                why(err, timeout)
            ));
        }
    }

    /// Handles a read or write that did not complete: a failure is counted
    /// as [`Tally::fail`] does; a cut (the run's end came first) only
    /// drops the connection, its messages left unanswered, except in the
    /// ramp, where a connection not confirmed in time failed to open.
    fn stop(&mut self, conn: &mut Conn, round: u64, doing: &str, stop: Stop, timeout: Duration) {
        match stop {
            Stop::Cut if round > 0 => conn.failed = true,
            stop => self.fail(conn, round, doing, &stop.into_error(), timeout),
        }
    }

    /// Counts an open-loop connection that failed after the ramp.
    fn fail_open(&mut self, index: u64, doing: &str, err: &io::Error, timeout: Duration) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("conn {index}: {doing}: {}", why(err, timeout)));
        }
    }

    /// Records one measured message's latency; it completed at `done`.
    fn record(&mut self, latency: Duration, done: Instant) {
        let micros = hist::micros(latency);
        self.latency.saturating_record(micros);
        if let Some(intervals) = &mut self.intervals {
            let second = done.saturating_duration_since(self.measure_start).as_secs() as usize;
            while intervals.len() <= second {
                match hist::new_histogram() {
                    Ok(histogram) => intervals.push(histogram),
                    Err(_) => return, // cannot happen with constant bounds
                }
            }
            intervals[second].saturating_record(micros);
        }
    }

    /// Records one open-loop message's time from its actual write.
    fn record_service(&mut self, latency: Duration) {
        self.service.saturating_record(hist::micros(latency));
    }

    /// Counts an echo that differs from the message sent.
    fn mismatch(&mut self, index: u64, round: u64, sent: &[u8], echoed: &[u8]) {
        let at = sent
            .iter()
            .zip(echoed)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        self.mismatch_at(index, round, at, sent.len(), sent[at], echoed[at]);
    }

    /// Counts a message whose byte `at` (of `len`) was `got`, not `expected`.
    fn mismatch_at(
        &mut self,
        index: u64,
        round: u64,
        at: usize,
        len: usize,
        expected: u8,
        got: u8,
    ) {
        self.mismatches += 1;
        if self.first_mismatch.is_none() {
            self.first_mismatch = Some(format!(
                "conn {index} round {round}: byte {at} of {len} is 0x{got:02x}, expected 0x{expected:02x}"
            ));
        }
    }

    /// Counts bytes a discard server sent, which it never should.
    fn unexpected_bytes(&mut self, index: u64, n: usize) {
        self.mismatches += 1;
        if self.first_mismatch.is_none() {
            self.first_mismatch = Some(format!(
                "conn {index}: the discard server sent {n} bytes back"
            ));
        }
    }
}

/// Why an I/O error happened, in words for the report.
fn why(err: &io::Error, timeout: Duration) -> String {
    match err.kind() {
        io::ErrorKind::UnexpectedEof => "the server closed the connection".to_string(),
        _ if is_timeout(err) => format!("timed out after {} s (--timeout)", timeout.as_secs_f64()),
        _ => err.to_string(),
    }
}

/// With `--connect-rate`, when (after the ramp starts) worker `worker`
/// opens its `nth` connection: the workers take turns, so the whole client
/// opens at most the rate, evenly spread.
fn connect_time(options: &Options, worker: usize, nth: usize) -> Option<Duration> {
    let rate = options.connect_rate?;
    let threads = options.threads.clamp(1, options.connections);
    let slot = nth * threads + worker;
    Some(Duration::from_secs_f64(slot as f64 / rate))
}

/// Sleeps until `at` (at once if it has passed).
fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        thread::sleep(at - now);
    }
}

/// Writes `conn`'s message of `round` (built in `outgoing`) and notes
/// when; true if it was written whole. Once the phase is closed nothing is
/// begun, and a message begun in the window counts as begun even if its
/// write then fails or is cut: it is one that went unanswered.
fn send(
    conn: &mut Conn,
    outgoing: &mut [u8],
    round: u64,
    window: &Window,
    limits: &Limits,
    tally: &mut Tally,
) -> bool {
    let sent_at = Instant::now();
    if sent_at >= limits.begin_until {
        return false;
    }
    fill_message(outgoing, conn.index, round);
    let slot = (round % conn.sent_at.len() as u64) as usize;
    conn.sent_at[slot] = sent_at;
    conn.last_sent = round;
    if round > 0 && window.counts(sent_at) {
        tally.begun += 1;
    }
    match deadline::write_all(&conn.stream, outgoing, limits) {
        Ok(()) => true,
        Err(stop) => {
            tally.stop(conn, round, "send", stop, limits.timeout);
            false
        }
    }
}

/// Where `received`, read from a chargen stream at `position`, first differs
/// from RFC 864's pattern.
fn chargen_mismatch(position: usize, received: &[u8]) -> Option<usize> {
    let mut checked = 0;
    // The pattern hands out windows of at most MAX_WINDOW bytes.
    for piece in received.chunks(minetd::chargen::MAX_WINDOW) {
        let expected = minetd::chargen::window(position + checked, piece.len());
        if let Some(at) = piece.iter().zip(expected).position(|(a, b)| a != b) {
            return Some(checked + at);
        }
        checked += piece.len();
    }
    None
}

/// Describes a failed connect, with a hint when the cause is well known.
fn connect_failure(index: usize, err: &io::Error) -> String {
    let hint = if err.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
        " (out of local ports? add source addresses with --source-addrs)"
    } else {
        ""
    };
    format!("conn {index}: {err}{hint}")
}

/// Fills `message` with bytes derived from the connection and the round:
/// xorshift64 seeded by a bijective mix of the two, so no two (connection,
/// round) pairs below 2^24 connections and 2^40 rounds share a seed.
fn fill_message(message: &mut [u8], connection: u64, round: u64) {
    let mut state = splitmix64((connection << 40) ^ round) | 1;
    for chunk in message.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// SplitMix64's finaliser: a bijection on u64 that spreads every input bit.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Waits for the workers, showing progress on a terminal: first the ramp,
/// then, once every worker is ready, starts the clock and shows the rate.
/// Returns when measuring started.
fn watch(
    workers: &[JoinHandle<Result<Tally, Error>>],
    shared: &Shared,
    options: &Options,
) -> Instant {
    let mut live = LiveLine::new(io::stderr().is_terminal());
    // A worker that ended before it was ready failed; start the others anyway.
    while shared.ready.load(Ordering::SeqCst) < workers.len()
        && !workers.iter().any(JoinHandle::is_finished)
    {
        thread::sleep(POLL_INTERVAL);
        live.ramp(
            shared.attempted.load(Ordering::Relaxed),
            options.connections,
        );
    }
    let start = shared.start_now();
    while !workers.iter().all(JoinHandle::is_finished) {
        thread::sleep(POLL_INTERVAL);
        live.running(start, shared, options.size);
    }
    live.clear();
    start
}

/// Joins the workers and adds up their counts.
fn collect(
    workers: Vec<JoinHandle<Result<Tally, Error>>>,
    options: &Options,
    measure_start: Instant,
) -> Result<Tally, Error> {
    let mut total = Tally::new(options.hist_log.is_some(), measure_start)?;
    for worker in workers {
        let tally = worker
            .join()
            .map_err(|_| Error::Failed("a bench thread panicked".to_string()))??;
        total.merge(tally)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_connection_once() {
        let ranges = shares(10, 3);
        assert_eq!(ranges, vec![0..4, 4..7, 7..10]);
        assert_eq!(shares(2, 2), vec![0..1, 1..2]);
    }

    #[test]
    fn messages_differ_by_connection_and_round() {
        let mut a = [0; 64];
        let mut b = [0; 64];
        fill_message(&mut a, 1, 1);
        fill_message(&mut b, 1, 1);
        assert_eq!(a, b);
        fill_message(&mut b, 2, 1);
        assert_ne!(a, b);
        fill_message(&mut b, 1, 2);
        assert_ne!(a, b);
    }

    #[test]
    fn chargen_check_finds_the_first_wrong_byte_across_windows() {
        let position = 7000;
        let mut stream: Vec<u8> = (0..65_536)
            .map(|n| minetd::chargen::window(position + n, 1)[0])
            .collect();
        assert_eq!(chargen_mismatch(position, &stream), None);
        stream[64_000] ^= 1;
        assert_eq!(chargen_mismatch(position, &stream), Some(64_000));
        assert_eq!(chargen_mismatch(position + 1, &stream), Some(0));
    }

    #[test]
    fn short_messages_are_filled_too() {
        let mut one = [0; 1];
        let mut other = [0; 1];
        fill_message(&mut one, 0, 1);
        fill_message(&mut other, 0, 2);
        let mut odd = [0; 13];
        fill_message(&mut odd, 3, 3);
        assert!(odd.iter().any(|&b| b != 0));
    }
}
