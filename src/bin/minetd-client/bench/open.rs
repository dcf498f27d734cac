//! `--rate`: the open loop, with blocking sockets and no event loop.
//!
//! Each worker becomes two threads over the same connections. The sender
//! walks the schedule ([`Schedule`]) and writes each message when it is due;
//! the receiver reads echoes in the order they were sent and checks them.
//! A blocking `read` on one connection would otherwise hold up every send
//! behind it; split this way, the schedule never waits for the server.
//!
//! Each connection allows `--pipeline` messages in flight. A message due
//! while its connection is full is sent as soon as an echo frees a slot
//! (by the receiver, which is the thread that sees it happen), and its
//! latency still counts from when it was due: a server that stalls for a
//! second shows that second. `service` latency counts from the actual write.
//!
//! The sender tells the receiver only *which* connection it wrote to; which
//! message that was is the connection's own count, kept under its lock with
//! the write itself, so the two threads always agree.
//!
//! When the window closes nothing more is written, not even messages that
//! fell due in it and are still held back: the receiver reads what is in
//! flight until the window's end plus `--timeout` (see [`super::deadline`])
//! and abandons the rest. Every message due in the window is then either a
//! checked round trip or unanswered.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::deadline::{self, Limits, Stop};
use super::pace::{self, Schedule};
use super::{Shared, Tally, Window, fill_message};
use crate::error::Error;

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

/// Messages the receiver handles between updates of the live line's counts.
const PUBLISH_EVERY: u64 = 4096;

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
                    send_batch(&to_receiver, &mut batch);
                    break 'schedule;
                }
                if due > now {
                    // Hand over what was written before sleeping, so the
                    // receiver is never behind for want of being told.
                    send_batch(&to_receiver, &mut batch);
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
            send_batch(&to_receiver, &mut batch);
        }
        drop(to_receiver);
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

/// Gives the receiver the connections just written to, if any.
fn send_batch(to_receiver: &mpsc::Sender<Vec<u32>>, batch: &mut Vec<u32>) {
    if !batch.is_empty() {
        // The receiver outlives the sender unless it panicked, which `join`
        // reports.
        let _ = to_receiver.send(std::mem::take(batch));
    }
}

/// The receiver: reads each message's echo in the order it was written,
/// checks it, records both latencies, and sends what was held back for
/// want of room in the pipeline.
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
    // One entry per message written and not yet read, in the order they
    // were written, whoever wrote them. Reading in that order means the
    // receiver waits on the oldest message, which is the one most likely
    // to be back: reading its own just-written message first would wait a
    // whole round trip each time.
    let mut unread: VecDeque<u32> = VecDeque::new();
    let mut sender_done = false;
    let mut published = (0, 0, 0);
    loop {
        while let Ok(batch) = from_sender.try_recv() {
            unread.extend(batch);
        }
        if unread.is_empty() || tally.round_trips - published.0 >= PUBLISH_EVERY {
            // The live line is fed when the receiver waits, and at least
            // every PUBLISH_EVERY messages when it never has to.
            shared.publish(
                tally.round_trips - published.0,
                tally.mismatches - published.1,
                tally.errors - published.2,
            );
            published = (tally.round_trips, tally.mismatches, tally.errors);
        }
        let Some(i) = unread.pop_front() else {
            if sender_done {
                return; // the sender is done and all is read
            }
            match from_sender.recv() {
                Ok(batch) => unread.extend(batch),
                Err(_) => sender_done = true,
            }
            continue;
        };
        let conn = &conns[i as usize];
        if conn.lock().failed {
            continue;
        }
        if let Err(stop) = deadline::read_exact(&conn.stream, &mut incoming, &plan.limits) {
            let mut state = conn.lock();
            // The sender may have failed it meanwhile, and counted that.
            if let (Stop::Failed(err), false) = (&stop, state.failed) {
                tally.fail_open(conn.index, "receive", err, plan.timeout);
            }
            state.failed = true;
            continue;
        }
        let done = Instant::now();
        let mut state = conn.lock();
        let seq = state.recv_seq;
        let written = state.written[(seq % plan.pipeline) as usize];
        state.recv_seq += 1;
        let more = plan.write_due(conn, &mut state, done, &mut outgoing, tally);
        drop(state);
        unread.extend(std::iter::repeat_n(i, more));

        fill_message(&mut outgoing, conn.index, seq + 1);
        if incoming != outgoing {
            tally.mismatch(conn.index, seq + 1, &outgoing, &incoming);
        }
        let due = plan.schedule.due(conn.index, seq);
        if plan.window.counts(due) {
            tally.record(done.saturating_duration_since(due), done);
            tally.record_service(done.saturating_duration_since(written));
            tally.round_trips += 1;
            tally.finished = Some(done);
        }
    }
}
