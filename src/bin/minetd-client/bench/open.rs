//! `--rate`: the open loop, with blocking sockets and no event loop.
//!
//! Each worker becomes two threads over the same connections. The sender
//! walks the schedule ([`Schedule`]) and writes each message when it is due;
//! the receiver waits (poll) on every connection with messages in flight
//! and reads whichever has echo bytes in, checking them as they arrive
//! (`closed::Echo`). A blocking `read` on one connection would otherwise
//! hold up every send behind it; split this way, the schedule never waits
//! for the server. And reading whichever is ready, not in the order the
//! messages were sent, an echo that is late (a lost segment waits 200 ms
//! or more for TCP to resend it) delays only its own connection's.
//!
//! Each connection allows `--pipeline` messages in flight. A message due
//! while its connection is full is sent as soon as an echo frees a slot
//! (by the receiver, which is the thread that sees it happen), and its
//! latency still counts from when it was due: a server that stalls for a
//! second shows that second. `service` latency counts from the actual write.
//!
//! The sender tells the receiver only *which* connection it wrote to (and
//! wakes it from its poll); which message that was is the connection's own
//! count, kept under its lock with the write itself, so the two threads
//! always agree.
//!
//! When the window closes nothing more is written, not even messages that
//! fell due in it and are still held back: the receiver reads what is in
//! flight until the window's end plus `--timeout` (see [`super::deadline`])
//! and abandons the rest; a connection silent for a whole `--timeout`
//! before then failed. Every message due in the window is then either a
//! checked round trip or unanswered.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::closed::{Echo, read_owed};
use super::deadline::{self, Limits, Stop};
use super::pace::{self, Schedule};
use super::waiting::Waiting;
use super::{Shared, Tally, Window, fill_message};
use crate::error::Error;
use crate::socket::Wake;

/// The sender sleeps at least this long at a time, then writes everything
/// that fell due meanwhile. Waking for every message would cost two context
/// switches each and cap the open loop far below what the closed loop
/// reaches. Measured at 100 connections with client and server pinned to a
/// core each: at 100 µs the client was 96% busy and reached 87% of a rate
/// the closed loop sustains; at 300 µs, 88% busy and 99.9%; at 1 ms the
/// bursts cost more than the wake-ups saved. A message written up to this
/// late has the delay counted in its latency (never hidden); `service_us`
/// is unaffected.
const PACING_QUANTUM: Duration = Duration::from_micros(250);

/// The sender hands the receiver what it wrote at least every this many
/// messages: writing a whole round of the schedule at once (catching up
/// after a stall) would otherwise keep echoes unread, the receiver not
/// knowing to wait for them, until the round is written.
const BATCH_MAX: usize = 64;

/// The receiver's longest wait with nothing in flight; the sender wakes
/// it sooner when it writes, or when it is done.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// One connection of the open loop, shared by the sender and the receiver.
struct OpenConn {
    stream: TcpStream,
    index: u64,
    state: Mutex<InFlight>,
}

/// What a connection has sent and not yet had back.
struct InFlight {
    /// The next message to write (messages are numbered from 0).
    next_seq: u64,
    /// The next message to read back.
    recv_seq: u64,
    /// When each message in flight was written, by `seq % pipeline`.
    written: Vec<Instant>,
    /// The connection failed; it is left alone from then on.
    failed: bool,
}

impl OpenConn {
    fn lock(&self) -> MutexGuard<'_, InFlight> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything both threads read.
struct Plan {
    schedule: Schedule,
    window: Window,
    /// Messages are not sent if due at or after this, nor once it passed;
    /// every read and write ends by `limits.by`.
    limits: Limits,
    pipeline: u64,
    size: usize,
    timeout: Duration,
    /// Wakes the receiver when the sender wrote, or is done.
    wake: Wake,
}

impl Plan {
    /// Writes `conn`'s messages that are due by `now` while it has room;
    /// returns how many it wrote. Called with the connection locked.
    fn write_due(
        &self,
        conn: &OpenConn,
        state: &mut InFlight,
        now: Instant,
        outgoing: &mut [u8],
        tally: &mut Tally,
    ) -> usize {
        let mut written = 0;
        while !state.failed && state.next_seq - state.recv_seq < self.pipeline {
            let due = self.schedule.due(conn.index, state.next_seq);
            // `now` is when the caller looked; a write before may have
            // blocked past the window's end, so look again.
            if due > now || due >= self.limits.begin_until || self.limits.closed() {
                break;
            }
            // Round 0 was the ramp's confirming echo; the schedule's
            // messages are rounds 1, 2, ...
            let round = state.next_seq + 1;
            fill_message(outgoing, conn.index, round);
            match deadline::write_all(&conn.stream, outgoing, &self.limits) {
                Ok(()) => {}
                Err(Stop::Cut) => {
                    // Half a message may be out: the connection is spent.
                    state.failed = true;
                    break;
                }
                Err(Stop::Failed(err)) => {
                    state.failed = true;
                    tally.fail_open(conn.index, "send", &err, self.timeout);
                    break;
                }
            }
            let slot = (state.next_seq % self.pipeline) as usize;
            state.written[slot] = Instant::now();
            state.next_seq += 1;
            written += 1;
        }
        written
    }
}

impl super::Worker {
    /// The open loop over this worker's connections, until the window ends
    /// and every message sent has come back (or failed).
    pub(super) fn measure_open(
        &mut self,
        rate: f64,
        window: Window,
        tally: &mut Tally,
    ) -> Result<(), Error> {
        pace::tighten_timer_slack();
        // Best effort, as the timer slack: without it the run only keeps
        // its schedule less well.
        let _ = pace::shorten_slice();
        let pipeline = self.options.pipeline as u64;
        let conns: Arc<Vec<OpenConn>> = Arc::new(
            self.conns
                .drain(..)
                .map(|conn| OpenConn {
                    stream: conn.stream,
                    index: conn.index,
                    state: Mutex::new(InFlight {
                        next_seq: 0,
                        recv_seq: 0,
                        written: vec![window.start; pipeline as usize],
                        failed: false,
                    }),
                })
                .collect(),
        );
        let plan = Arc::new(Plan {
            schedule: Schedule::new(window.origin, self.options.connections, rate),
            window,
            limits: self.limits,
            pipeline,
            size: self.options.size,
            timeout: self.options.timeout,
            wake: Wake::new().map_err(|source| Error::Io {
                context: "cannot start a bench thread".to_string(),
                source,
            })?,
        });
        let (to_receiver, from_sender) = mpsc::channel::<Vec<u32>>();
        let receiver = {
            let conns = Arc::clone(&conns);
            let plan = Arc::clone(&plan);
            let shared = Arc::clone(&self.shared);
            let mut receiver_tally = Tally::new(tally.intervals.is_some(), window.start)?;
            thread::Builder::new()
                .name("bench-recv".to_string())
                .spawn(move || {
                    receive(&conns, &plan, &shared, from_sender, &mut receiver_tally);
                    receiver_tally
                })
                .map_err(|source| Error::Io {
                    context: "cannot start a bench thread".to_string(),
                    source,
                })?
        };

        let mut outgoing = vec![0; plan.size];
        let mut now = Instant::now();
        // Messages due from here on are not owed: Ctrl-C ended the run.
        let mut interrupted_at = None;
        'schedule: for seq in 0.. {
            let mut batch = Vec::new();
            for (i, conn) in conns.iter().enumerate() {
                let due = plan.schedule.due(conn.index, seq);
                if self.shared.stopping() {
                    interrupted_at = Some(Instant::now());
                }
                if due >= plan.limits.begin_until
                    || plan.limits.closed()
                    || interrupted_at.is_some()
                {
                    send_batch(&to_receiver, &plan.wake, &mut batch);
                    break 'schedule;
                }
                if due > now || batch.len() >= BATCH_MAX {
                    // Hand over what was written before sleeping, so the
                    // receiver is never behind for want of being told.
                    send_batch(&to_receiver, &plan.wake, &mut batch);
                    now = Instant::now();
                    if due > now {
                        thread::sleep((due - now).max(PACING_QUANTUM));
                        now = Instant::now();
                    }
                }
                let mut state = conn.lock();
                let written = plan.write_due(conn, &mut state, now, &mut outgoing, tally);
                drop(state);
                batch.extend(std::iter::repeat_n(i as u32, written));
            }
            send_batch(&to_receiver, &plan.wake, &mut batch);
        }
        drop(to_receiver);
        plan.wake.wake();
        let received = receiver
            .join()
            .map_err(|_| Error::Failed("a bench thread panicked".to_string()))?;
        tally.merge(received)?;
        // Every message due in the window is owed, whether it was sent or
        // held back for want of room in the pipeline.
        let owed_until = interrupted_at.map_or(window.end, |at| at.clamp(window.start, window.end));
        tally.begun += conns
            .iter()
            .map(|conn| {
                plan.schedule
                    .count_due(conn.index, window.start, owed_until)
            })
            .sum::<u64>();
        Ok(())
    }
}

/// Gives the receiver the connections just written to, if any, and wakes it.
fn send_batch(to_receiver: &mpsc::Sender<Vec<u32>>, wake: &Wake, batch: &mut Vec<u32>) {
    if !batch.is_empty() {
        // The receiver outlives the sender unless it panicked, which `join`
        // reports.
        let _ = to_receiver.send(std::mem::take(batch));
        wake.wake();
    }
}

/// What the receiver knows of one connection.
struct Reading {
    /// The echo being read: the oldest round in flight (the schedule's
    /// message `seq` is round `seq + 1`).
    echo: Echo,
    /// The last round written, as far as the receiver was told: the
    /// rounds from `echo.round` to it are in flight.
    last_written: u64,
    /// When it last made progress (a message written, echo bytes read):
    /// a whole `--timeout` of silence after it is a failure.
    heard: Instant,
    /// It failed (or was cut); it is left alone from then on.
    failed: bool,
}

impl Reading {
    /// Whether an echo is awaited: it has not failed and has a message in
    /// flight.
    fn in_flight(&self) -> bool {
        !self.failed && self.echo.round <= self.last_written
    }
}

/// The receiver: waits on the connections with messages in flight, reads
/// whichever has echo bytes in, checks them, records both latencies of
/// each echo that is whole, and sends what was held back for want of room
/// in the pipeline. The phase's limits hold per connection as a blocking
/// read's would (see `closed::receive_echoes`).
fn receive(
    conns: &[OpenConn],
    plan: &Plan,
    shared: &Shared,
    from_sender: Receiver<Vec<u32>>,
    tally: &mut Tally,
) {
    // The sender's wake-ups must not wait behind a long slice of this
    // thread's, nor this thread's reads behind the sender's (see pace::SLICE).
    let _ = pace::shorten_slice();
    let mut outgoing = vec![0; plan.size];
    let mut incoming = vec![0; plan.size];
    let started = Instant::now();
    let mut reading: Vec<Reading> = conns
        .iter()
        .map(|conn| Reading {
            echo: Echo::new(conn.index, 1),
            last_written: 0,
            heard: started,
            failed: false,
        })
        .collect();
    // The connections, then the sender's wake-up.
    let mut waiting = Waiting::new(conns.len(), &[plan.wake.as_raw_fd()]);
    let waker = conns.len();
    let (by, timeout) = (plan.limits.by, plan.timeout);
    let mut sender_done = false;
    let mut published = (0, 0, 0);
    let mut wait = Duration::ZERO;
    loop {
        // What the sender wrote since the last look.
        let now = Instant::now();
        loop {
            match from_sender.try_recv() {
                Ok(batch) => {
                    for i in batch {
                        let (i, read) = (i as usize, &mut reading[i as usize]);
                        if read.failed {
                            continue;
                        }
                        read.last_written += 1;
                        read.heard = now;
                        waiting.watch(i, conns[i].stream.as_raw_fd());
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    sender_done = true;
                    break;
                }
            }
        }
        if sender_done && waiting.in_flight() == 0 {
            return; // the sender is done and all is read
        }
        if waiting.in_flight() == 0 {
            wait = IDLE_WAIT;
        }
        let past_end = Instant::now() >= by;
        let ready = match waiting.wait(wait) {
            Ok(ready) => ready,
            Err(err) => {
                // Cannot happen with fewer descriptors than the limit
                // ensure_fd_limit raised; failing beats spinning.
                for (conn, read) in conns.iter().zip(&mut reading) {
                    if read.in_flight() {
                        let err = io::Error::new(err.kind(), format!("poll: {err}"));
                        fail(conn, read, Stop::Failed(err), plan, tally);
                    }
                }
                return;
            }
        };
        if ready > 0 && waiting.readable(waker) {
            plan.wake.clear();
        }
        let now = Instant::now();
        let wake_at = waiting.pass(ready, by, |i, readable| {
            let (conn, read) = (&conns[i], &mut reading[i]);
            if readable {
                receive_echoes(conn, read, plan, &mut incoming, &mut outgoing, tally);
            }
            if read.in_flight()
                && !readable
                && let Some(stop) = deadline::unready(read.heard, now, past_end, &plan.limits)
            {
                fail(conn, read, stop, plan, tally);
            }
            read.in_flight().then(|| read.heard + timeout)
        });
        wait = wake_at.saturating_duration_since(now);
        shared.publish(
            tally.round_trips - published.0,
            tally.mismatches - published.1,
            tally.errors - published.2,
        );
        published = (tally.round_trips, tally.mismatches, tally.errors);
    }
}

/// Reads what has come of `conn`'s echoes (poll says something has) and
/// checks it piece by piece; each echo that is whole is timed, and frees a
/// slot for a message held back.
fn receive_echoes(
    conn: &OpenConn,
    read: &mut Reading,
    plan: &Plan,
    incoming: &mut [u8],
    outgoing: &mut [u8],
    tally: &mut Tally,
) {
    if conn.lock().failed {
        // The sender failed it, and counted that.
        read.failed = true;
        return;
    }
    let owed = (read.last_written - read.echo.round + 1) as usize * plan.size - read.echo.offset();
    let n = match read_owed(&conn.stream, incoming, owed) {
        Ok(0) => return,
        Ok(n) => n,
        Err(stop) => {
            fail(conn, read, stop, plan, tally);
            return;
        }
    };
    read.heard = Instant::now();
    let mut arrived = &incoming[..n];
    while !arrived.is_empty() {
        let Some(round) = read.echo.check(conn.index, &mut arrived, outgoing, tally) else {
            continue;
        };
        let done = Instant::now();
        let seq = round - 1;
        let mut state = conn.lock();
        let written = state.written[(seq % plan.pipeline) as usize];
        state.recv_seq += 1;
        let more = plan.write_due(conn, &mut state, done, outgoing, tally);
        read.failed = state.failed;
        drop(state);
        read.last_written += more as u64;
        if more > 0 {
            read.heard = Instant::now();
        }
        let due = plan.schedule.due(conn.index, seq);
        if plan.window.counts(due) {
            tally.record(done.saturating_duration_since(due), done);
            tally.record_service(done.saturating_duration_since(written));
            tally.round_trips += 1;
            tally.finished = Some(done);
        }
        if read.failed {
            return;
        }
    }
}

/// Gives up on `conn`: counted unless it was cut at the end, or the
/// sender failed it meanwhile (and counted that).
fn fail(conn: &OpenConn, read: &mut Reading, stop: Stop, plan: &Plan, tally: &mut Tally) {
    let mut state = conn.lock();
    if let (Stop::Failed(err), false) = (&stop, state.failed) {
        tally.fail_open(conn.index, "receive", err, plan.timeout);
    }
    state.failed = true;
    read.failed = true;
}
