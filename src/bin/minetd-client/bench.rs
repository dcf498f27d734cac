//! The echo benchmark: many connections, one message in flight on each.
//!
//! Each thread owns a share of the connections. It writes one message to
//! every connection it owns, then waits with poll(2) for any of them to
//! have echo bytes in, reads from each that has, checks the bytes as they
//! come, and writes a connection's next message as soon as its echo is
//! whole. Sending at once (rather than writing a whole round, then reading a
//! whole round) keeps every connection's message in flight, so the server
//! always has work queued while the client reads; measured with both pinned
//! to one core each, that lifted the server from about 85-95% busy to 99%.
//! Reading whichever connection is ready, rather than each in turn, keeps
//! the connections independent: an echo held up (a lost segment waits
//! 200 ms or more for TCP to resend it) delays its own connection only,
//! not every connection of the thread behind it, which would show as a
//! collapse of the whole thread's throughput and in every latency.
//!
//! Sockets are blocking, so a message costs one `write` and (usually) one
//! `read`, plus a share of a `poll` that usually finds many connections
//! ready: no allocation, no clock but the vDSO's. The client is then no
//! slower per message than the server.
//!
//! Latency is closed-loop: from just before a message is written to the
//! moment its whole echo has been read; the connection's next message is
//! only sent after that. With N connections in flight it is about N divided
//! by the throughput (Little's law), because it includes the time the
//! thread spends on the other connections ready before it, as any client
//! driving many connections from one thread would see it.
//!
//! Every message is derived from (connection index, round), so an echo of
//! stale bytes, of another connection's bytes or with one bit flipped is a
//! mismatch.
//!
//! `--mode udp-echo` is the same round trip over UDP: one connected socket
//! per "connection", one datagram in flight on each, polled rather than
//! read in turn, since a datagram may never come back ([`udp`]).
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
//!
//! This file keeps the options and the run's outline (ramp, warm-up,
//! window, report); the parts live beside it: `ramp` (opening and
//! confirming the connections), `closed` (the closed loops of echo,
//! discard and chargen), `open` and `pace` (`--rate`), `churn`
//! (`--mode daytime`), `udp` (`--mode udp-echo`), `tally` (what a worker counted), `deadline` (where
//! a run ends), `hist`, `report`, `plot` and `merge` (what is printed).

use std::io::{self, IsTerminal};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use self::closed::fill_message;
use self::deadline::Limits;
use self::ramp::{connect_failure, connect_time, ensure_fd_limit, open_connection, shares};
use self::report::{LiveLine, Report};
use self::tally::{Tally, why};

use crate::addr::Target;
use crate::error::Error;

mod churn;
mod closed;
mod deadline;
mod hist;
pub mod merge;
mod open;
mod pace;
mod plot;
mod ramp;
mod report;
mod tally;
mod udp;
mod waiting;

/// Most connections `--connections` accepts (clap wants an `i64` bound).
pub const MAX_CONNECTIONS: i64 = 1_000_000;

/// Largest `--size`: the server's default `--max-pending`. A whole message
/// is written before its echo is read, so it must fit in flight without the
/// client reading; up to this size that holds against any server at its
/// default cap, whatever the socket buffers.
pub const MAX_SIZE: i64 = 65_536;

/// Largest `--size` of `--mode udp-echo`: a UDP payload over IPv4
/// (65,535 bytes less the IP and UDP headers).
pub const MAX_DATAGRAM: i64 = 65_507;

/// `--loss-after`'s default: far above any loopback or LAN round trip, and
/// short enough that a lost datagram costs its socket little of the run.
pub const DEFAULT_LOSS_AFTER: Duration = Duration::from_millis(200);

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
    /// Round trips over UDP: one datagram in flight per socket, echoes
    /// checked, the unanswered counted lost after --loss-after.
    UdpEcho,
}

impl Mode {
    /// The local default address of the service it drives.
    pub fn default_addr(self) -> &'static str {
        match self {
            Mode::Echo => "127.0.0.1:7007",
            Mode::Discard => "127.0.0.1:7009",
            Mode::Chargen => "127.0.0.1:7019",
            Mode::Daytime => "127.0.0.1:7013",
            Mode::UdpEcho => "127.0.0.1:7007",
        }
    }

    /// The name `--mode` and the JSON report use.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Discard => "discard",
            Mode::Chargen => "chargen",
            Mode::Daytime => "daytime",
            Mode::UdpEcho => "udp-echo",
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
    /// UDP: how long a datagram may go unanswered before it counts as lost
    /// and its socket sends the next.
    pub loss_after: Duration,
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
    // daytime server closes it at once, so churn does not keep it; UDP has
    // no connection to keep, only a probe that a refusal can fail.)
    let first = match options.mode {
        Mode::UdpEcho => {
            udp::probe(dest, options).map_err(|e| options.target.connect_error(e))?;
            None
        }
        mode => {
            let first =
                open_connection(dest, options, 0).map_err(|e| options.target.connect_error(e))?;
            (mode != Mode::Daytime).then_some(first)
        }
    };
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
    /// Echo: the oldest round in flight, whose echo is being read (none
    /// is in flight once its round is past `last_sent`), and how far it came.
    echo: closed::Echo,
    /// When the connection last made progress (a message written, echo
    /// bytes read): a whole `--timeout` of silence after it is a failure.
    heard: Instant,
    /// It failed; it is dropped at the end of the round (or of the
    /// echo loop).
    failed: bool,
    /// Chargen: bytes received so far, modulo the pattern's cycle.
    position: usize,
}

impl Conn {
    /// Whether an echo is awaited: it has not failed and has a message in
    /// flight.
    fn in_flight(&self) -> bool {
        !self.failed && self.echo.round <= self.last_sent
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
        match self.options.mode {
            Mode::Daytime => return churn::run(&self, tally),
            Mode::UdpEcho => return udp::run(&self, tally),
            _ => {}
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

    /// Adds a round's counts to the shared ones the live line shows.
    fn publish(&self, round_trips: u64, mismatches: u64, errors: u64) {
        self.shared.publish(round_trips, mismatches, errors);
    }
}

/// Sleeps until `at` (at once if it has passed).
fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        thread::sleep(at - now);
    }
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
