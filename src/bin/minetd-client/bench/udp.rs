//! `--mode udp-echo`: round trips of datagrams. Each of a worker's
//! "connections" is a connected UDP socket that keeps one datagram of
//! `--size` bytes in flight: it sends datagram 1, waits for its echo,
//! checks it byte for byte, sends datagram 2, and so on. A datagram whose
//! echo has not come within `--loss-after` counts as **lost** (UDP may lose
//! it; that is no error) and the socket sends its next.
//!
//! A datagram's bytes are derived from (socket, sequence number) exactly as
//! a TCP message's are from (connection, round), so every datagram that
//! comes back says which one it answers:
//! - the one in flight: a round trip, latency from its send (or, with
//!   `--rate`, from when it was due);
//! - an earlier one, whole and unchanged: **late**. That is an echo of a
//!   datagram already counted lost, or a second echo of one already
//!   answered (a server that answers twice, or a network that duplicates:
//!   UDP promises neither order nor uniqueness, and the bytes are right,
//!   so it is counted, not failed);
//! - anything else (wrong length, a flipped bit, another socket's bytes, a
//!   datagram never sent): a mismatch, which fails the run.
//!
//! From 8 bytes on, the first 8 bytes identify the datagram outright (the
//! generator of `fill_message` is inverted, [`round_of`]); below that, only
//! the last [`SHORT_LOOKBACK`] datagrams are tried, and a corrupted byte of
//! a tiny datagram can pass for a late echo of one of them.
//!
//! A worker's sockets are non-blocking and waited on together with
//! `ppoll`, which waits until the first datagram arrives, a datagram's
//! `--loss-after` runs out or (with `--rate`) the next one falls due:
//! a datagram that never comes cannot hold up the others, as a blocking
//! read in turn would. One thread does the sends and the receives, the
//! open loop too (no sender/receiver pair as for TCP): sending never
//! blocks and polling wakes to the microsecond.
//!
//! The end, and what bounds it: no datagram is sent after the window
//! closes (or Ctrl-C). A datagram in flight then keeps its chance until its
//! own `--loss-after` runs out, never beyond the window's end plus
//! `--timeout`; answered by then, it is a round trip; if not, it was
//! abandoned by the end of the run, not lost, and is reported among the
//! `unanswered`. So a worker ends at most `min(--loss-after, --timeout)`
//! after the window, plus one pass over its sockets. Round trips, lost
//! and unanswered add up to the measured datagrams (with `--rate`, those
//! due in the window, sent or not).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::closed::fill_message;
use super::pace::{self, Schedule};
use super::{Options, Tally, Window, Worker, connect_failure, connect_time, sleep_until, why};
use crate::error::{Error, is_timeout};
use crate::socket;

/// Datagrams under 8 bytes cannot name themselves: a stale one is looked
/// for among the socket's last this many. Only a server or network that
/// delays a datagram by more than that many of its socket's round trips
/// makes a late echo of a tiny datagram count as a mismatch.
const SHORT_LOOKBACK: u64 = 16;

/// The longest one wait for the sockets lasts, so that Ctrl-C (whose flag
/// is set on another thread) is seen soon.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// One socket of the run.
struct Socket {
    socket: UdpSocket,
    index: u64,
    /// The next datagram's sequence number; datagrams are numbered from 1.
    next_seq: u64,
    /// The datagram awaiting its echo, if any.
    in_flight: Option<Flight>,
    /// The first datagram that counts (sent, or with `--rate` due, in the
    /// window): late echoes of earlier ones count nowhere.
    first_counted: Option<u64>,
    /// The datagram given up on at the end: unanswered, not lost, so an
    /// echo of it that still comes is not late either.
    abandoned: Option<u64>,
    /// It failed; it is left alone from then on.
    failed: bool,
}

/// One datagram in flight.
#[derive(Debug, Clone, Copy)]
struct Flight {
    seq: u64,
    sent_at: Instant,
    /// When it was due: `sent_at` in the closed loop.
    due: Instant,
    /// It was sent (or due) in the window.
    counted: bool,
}

/// Proves the server is there before the run, on a socket of its own: one
/// datagram, waited for up to `--loss-after`. Only an error fails it (a
/// refusal: the ICMP port unreachable that a closed port answers with);
/// silence does not, for the server may drop what it pleases.
pub(super) fn probe(dest: SocketAddr, options: &Options) -> io::Result<()> {
    let socket = open_socket(dest, options, 0)?;
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(options.loss_after.min(options.timeout)))?;
    let mut datagram = vec![0; options.size];
    fill_message(&mut datagram, 0, 0);
    socket.send(&datagram)?;
    match socket.recv(&mut datagram) {
        Err(err) if !is_timeout(&err) => Err(err),
        _ => Ok(()),
    }
}

/// Opens socket number `index`, from its source address if any were
/// given, connected to `dest` (so the kernel passes on only `dest`'s
/// datagrams, and its refusals) and non-blocking.
fn open_socket(dest: SocketAddr, options: &Options, index: usize) -> io::Result<UdpSocket> {
    let source = match options.source_addrs.as_slice() {
        [] if dest.is_ipv4() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        [] => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        sources => sources[index % sources.len()],
    };
    if source.is_ipv4() != dest.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("source address {source} is not of the same family as {dest}"),
        ));
    }
    let socket = UdpSocket::bind(SocketAddr::new(source, 0))?;
    socket.connect(dest)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Opens this worker's sockets, waits for the start, runs the window and
/// returns the counts.
pub(super) fn run(worker: &Worker, mut tally: Tally) -> Result<Tally, Error> {
    let options = &worker.options;
    let mut sockets = Vec::with_capacity(worker.range.len());
    for (nth, index) in worker.range.clone().enumerate() {
        if worker.shared.stopping() {
            tally.connect_failures += 1; // Ctrl-C during the ramp
            continue;
        }
        if let Some(at) = connect_time(options, worker.number, nth) {
            sleep_until(worker.shared.ramp_start + at);
        }
        match open_socket(worker.dest, options, index) {
            Ok(socket) => sockets.push(Socket {
                socket,
                index: index as u64,
                next_seq: 1,
                in_flight: None,
                first_counted: None,
                abandoned: None,
                failed: false,
            }),
            Err(err) => {
                tally.connect_failures += 1;
                if tally.first_connect_failure.is_none() {
                    tally.first_connect_failure = Some(connect_failure(index, &err));
                }
            }
        }
        worker.shared.attempted.fetch_add(1, Ordering::Relaxed);
    }
    tally.opened = sockets.len() as u64;
    worker.shared.ready.fetch_add(1, Ordering::SeqCst);
    let origin = worker.shared.wait_for_start();
    let start = origin + options.warmup;
    let window = Window {
        origin,
        start,
        end: start + options.duration,
    };
    tally.measure_start = start;
    let schedule = options
        .rate
        .map(|rate| Schedule::new(origin, options.connections, rate));
    if schedule.is_some() {
        pace::tighten_timer_slack();
    }
    let mut run = Run {
        sockets,
        options,
        window,
        schedule,
        give_up_by: window.end + options.timeout,
        closes_at: window.end,
        outgoing: vec![0; options.size],
        // One byte more than sent, so a longer echo shows as longer.
        incoming: vec![0; options.size + 1],
        last_done: None,
    };
    run.measure(worker, &mut tally)?;
    if let Some(schedule) = schedule {
        // Every datagram due in the window is owed, sent or not.
        let owed_until = run.closes_at.clamp(window.start, window.end);
        tally.begun += run
            .sockets
            .iter()
            .map(|socket| schedule.count_due(socket.index, window.start, owed_until))
            .sum::<u64>();
    }
    // The measurement lasted until sending stopped, or until the last echo
    // counted came in after that; not the wait for what never came.
    let closed = run.closes_at.max(window.start);
    tally.finished = Some(run.last_done.map_or(closed, |done| done.max(closed)));
    Ok(tally)
}

/// One worker's sockets and what the loop over them needs.
struct Run<'a> {
    sockets: Vec<Socket>,
    options: &'a Options,
    window: Window,
    schedule: Option<Schedule>,
    /// No datagram is waited for beyond this.
    give_up_by: Instant,
    /// When sending stopped: the window's end, or Ctrl-C before it. A
    /// datagram whose `--loss-after` ran out before this is lost; after
    /// it, unanswered.
    closes_at: Instant,
    /// The datagram sent, or expected back; reused.
    outgoing: Vec<u8>,
    /// The datagram received; reused.
    incoming: Vec<u8>,
    /// When the last counted round trip completed.
    last_done: Option<Instant>,
}

impl Run<'_> {
    /// The loop: give up on datagrams whose time ran out, send where a
    /// socket is free (and, with `--rate`, its next datagram is due), wait
    /// for the first thing to happen, read what came. Ends when sending has
    /// stopped and nothing is in flight.
    fn measure(&mut self, worker: &Worker, tally: &mut Tally) -> Result<(), Error> {
        let mut fds: Vec<libc::pollfd> = self
            .sockets
            .iter()
            .map(|socket| libc::pollfd {
                fd: socket.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut published = (0, 0, 0);
        let mut closed = false;
        loop {
            let now = Instant::now();
            if !closed && (now >= self.window.end || worker.shared.stopping()) {
                closed = true;
                self.closes_at = now.min(self.window.end);
            }
            let Some(wake) = self.expire_and_send(now, closed, tally) else {
                break; // nothing in flight, nothing more to send
            };
            worker.shared.publish(
                tally.round_trips - published.0,
                tally.mismatches - published.1,
                tally.errors - published.2,
            );
            published = (tally.round_trips, tally.mismatches, tally.errors);
            let wait = wake.saturating_duration_since(Instant::now()).min(MAX_WAIT);
            for (fd, socket) in fds.iter_mut().zip(&self.sockets) {
                // poll(2) skips negative descriptors.
                fd.fd = if socket.failed {
                    -1
                } else {
                    socket.socket.as_raw_fd()
                };
                fd.revents = 0;
            }
            let ready = socket::wait_readable(&mut fds, wait).map_err(|source| Error::Io {
                context: "cannot wait for the UDP sockets".to_string(),
                source,
            })?;
            if ready > 0 {
                for (i, fd) in fds.iter().enumerate() {
                    if fd.revents != 0 {
                        self.receive(i, tally);
                    }
                }
            }
        }
        // A last look, without waiting, for echoes already here (a second
        // echo right behind the first, say), so they are counted.
        for i in 0..self.sockets.len() {
            if !self.sockets[i].failed {
                self.receive(i, tally);
            }
        }
        worker.shared.publish(
            tally.round_trips - published.0,
            tally.mismatches - published.1,
            tally.errors - published.2,
        );
        Ok(())
    }

    /// One pass over the sockets at `now`: datagrams whose time ran out are
    /// given up on, free sockets send. Returns when to look again, or
    /// `None` when there is nothing left to wait for.
    fn expire_and_send(
        &mut self,
        now: Instant,
        closed: bool,
        tally: &mut Tally,
    ) -> Option<Instant> {
        let loss_after = self.options.loss_after;
        let mut wake: Option<Instant> = None;
        let mut later = |at: Instant| wake = Some(wake.map_or(at, |wake| wake.min(at)));
        for i in 0..self.sockets.len() {
            let socket = &mut self.sockets[i];
            if socket.failed {
                continue;
            }
            if let Some(flight) = socket.in_flight {
                let deadline = flight.sent_at + loss_after;
                if now >= deadline.min(self.give_up_by) {
                    socket.in_flight = None;
                    // Lost if its socket could go on to its next datagram;
                    // at the end it is only abandoned (unanswered).
                    if deadline >= self.closes_at {
                        socket.abandoned = Some(flight.seq);
                    } else if flight.counted {
                        tally.lost += 1;
                    }
                } else {
                    later(deadline.min(self.give_up_by));
                    continue;
                }
            }
            if closed {
                continue;
            }
            let due = match &self.schedule {
                None => now,
                Some(schedule) => {
                    let due = schedule.due(socket.index, socket.next_seq - 1);
                    if due >= self.window.end {
                        continue; // nothing of this socket's falls due any more
                    }
                    if due > now {
                        later(due);
                        continue;
                    }
                    due
                }
            };
            if self.send(i, due, tally) {
                later(now + loss_after);
            }
        }
        if !closed {
            // Sending stops at the window's end, even with nothing to wake for.
            if self.sockets.iter().any(|socket| !socket.failed) {
                later(self.window.end);
            }
        }
        wake
    }

    /// Sends socket `i`'s next datagram, due at `due`; false if it was not
    /// sent: the window closed meanwhile, or the socket failed.
    fn send(&mut self, i: usize, due: Instant, tally: &mut Tally) -> bool {
        let socket = &mut self.sockets[i];
        let seq = socket.next_seq;
        fill_message(&mut self.outgoing, socket.index, seq);
        let sent_at = Instant::now();
        // The pass began before the window's end, but may reach this socket
        // after it: nothing is sent after the window.
        if sent_at >= self.window.end {
            return false;
        }
        let due = if self.schedule.is_some() {
            due
        } else {
            sent_at
        };
        let counted = self.window.counts(due);
        if counted {
            socket.first_counted.get_or_insert(seq);
            if self.schedule.is_none() {
                tally.begun += 1; // the open loop counts what fell due instead
            }
        }
        loop {
            match socket.socket.send(&self.outgoing) {
                Ok(_) => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // The socket's buffer is full: the datagram is dropped on
                // this side, and counts as lost as any other would.
                Err(err)
                    if err.kind() == io::ErrorKind::WouldBlock
                        || err.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    break;
                }
                Err(err) => {
                    fail(socket, tally, "send", &err, self.options.timeout);
                    return false;
                }
            }
        }
        socket.next_seq += 1;
        socket.in_flight = Some(Flight {
            seq,
            sent_at,
            due,
            counted,
        });
        true
    }

    /// Reads every datagram waiting on socket `i` and counts each.
    fn receive(&mut self, i: usize, tally: &mut Tally) {
        loop {
            let socket = &mut self.sockets[i];
            match socket.socket.recv(&mut self.incoming) {
                Ok(len) => {
                    let done = Instant::now();
                    self.classify(i, len, done, tally);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // Typically a refusal: the port answered an ICMP port
                // unreachable, nobody serves it (any more).
                Err(err) => {
                    fail(socket, tally, "receive", &err, self.options.timeout);
                    return;
                }
            }
        }
    }

    /// Counts one datagram of `len` bytes that socket `i` received at `done`.
    fn classify(&mut self, i: usize, len: usize, done: Instant, tally: &mut Tally) {
        let size = self.options.size;
        let socket = &mut self.sockets[i];
        let received = &self.incoming[..len];
        if let Some(flight) = socket.in_flight
            && len == size
        {
            fill_message(&mut self.outgoing, socket.index, flight.seq);
            if received == self.outgoing.as_slice() {
                socket.in_flight = None;
                if flight.counted {
                    tally.record(done.saturating_duration_since(flight.due), done);
                    if self.schedule.is_some() {
                        tally.record_service(done.saturating_duration_since(flight.sent_at));
                    }
                    tally.round_trips += 1;
                    self.last_done = Some(done);
                }
                return;
            }
        }
        // The datagram it should have been: the one in flight, or else the
        // last one sent.
        let expected = socket
            .in_flight
            .map_or(socket.next_seq.saturating_sub(1), |flight| flight.seq);
        if len != size {
            tally.mismatched_length(socket.index, expected, len, size);
            return;
        }
        match round_of(received, socket.index, socket.next_seq, &mut self.outgoing) {
            Some(seq) => {
                if socket.first_counted.is_some_and(|first| seq >= first)
                    && socket.abandoned != Some(seq)
                {
                    tally.late += 1;
                }
            }
            None => {
                fill_message(&mut self.outgoing, socket.index, expected);
                tally.mismatch(socket.index, expected, &self.outgoing, received);
            }
        }
    }
}

/// Counts a socket's failure and leaves it alone from then on; what it had
/// in flight is unanswered.
fn fail(socket: &mut Socket, tally: &mut Tally, doing: &str, err: &io::Error, timeout: Duration) {
    socket.failed = true;
    socket.in_flight = None;
    tally.errors += 1;
    if tally.first_error.is_none() {
        tally.first_error = Some(format!(
            "conn {}: {doing}: {}",
            socket.index,
            why(err, timeout)
        ));
    }
}

/// Which of socket `index`'s datagrams sent so far (`1..next_seq`)
/// `datagram` is, whole and unchanged; `None` if none. `scratch` (at least
/// as long as `datagram`) is overwritten.
///
/// From 8 bytes on, the first 8 bytes are the first state of
/// `fill_message`'s xorshift generator: undoing the xorshift and then
/// SplitMix64 (both bijections) gives back `(socket << 40) ^ seq`, up to
/// the low bit that the seed's `| 1` hid, so two candidates to check.
/// Shorter datagrams are compared with the last [`SHORT_LOOKBACK`] sent.
fn round_of(datagram: &[u8], index: u64, next_seq: u64, scratch: &mut [u8]) -> Option<u64> {
    let mut is = |seq: u64| {
        let scratch = &mut scratch[..datagram.len()];
        fill_message(scratch, index, seq);
        scratch == datagram
    };
    let Some(first) = datagram.first_chunk::<8>() else {
        let oldest = next_seq.saturating_sub(SHORT_LOOKBACK).max(1);
        return (oldest..next_seq).rev().find(|&seq| is(seq));
    };
    let state = undo_xorshift(u64::from_le_bytes(*first));
    [state, state ^ 1].into_iter().find_map(|seed| {
        let mixed = undo_splitmix64(seed);
        let seq = mixed & ((1 << 40) - 1);
        (mixed >> 40 == index && (1..next_seq).contains(&seq) && is(seq)).then_some(seq)
    })
}

/// The inverse of `fill_message`'s xorshift step (13, 7, 17).
fn undo_xorshift(mut state: u64) -> u64 {
    state = undo_xor_shift_left(state, 17);
    state = undo_xor_shift_right(state, 7);
    undo_xor_shift_left(state, 13)
}

/// `x` from `y = x ^ (x << shift)`: each pass gets `shift` more low bits right.
fn undo_xor_shift_left(y: u64, shift: u32) -> u64 {
    let mut x = y;
    for _ in 0..64 / shift {
        x = y ^ (x << shift);
    }
    x
}

/// `x` from `y = x ^ (x >> shift)`: each pass gets `shift` more high bits right.
fn undo_xor_shift_right(y: u64, shift: u32) -> u64 {
    let mut x = y;
    for _ in 0..64 / shift {
        x = y ^ (x >> shift);
    }
    x
}

/// The inverse of `splitmix64`.
fn undo_splitmix64(mut z: u64) -> u64 {
    z = undo_xor_shift_right(z, 31);
    z = z.wrapping_mul(inverse(0x94d0_49bb_1331_11eb));
    z = undo_xor_shift_right(z, 27);
    z = z.wrapping_mul(inverse(0xbf58_476d_1ce4_e5b9));
    z = undo_xor_shift_right(z, 30);
    z.wrapping_sub(0x9e37_79b9_7f4a_7c15)
}

/// The inverse of odd `a` modulo 2^64, by Newton's iteration: `a` is its
/// own inverse modulo 8, and each step doubles the bits that are right.
const fn inverse(a: u64) -> u64 {
    let mut x = a;
    let mut step = 0;
    while step < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
        step += 1;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::super::closed::splitmix64;
    use super::*;

    #[test]
    fn the_generator_is_undone() {
        for x in [0, 1, 42, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(undo_splitmix64(splitmix64(x)), x);
            let mut state = x;
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            assert_eq!(undo_xorshift(state), x);
        }
    }

    #[test]
    fn a_datagram_names_its_socket_and_sequence() {
        let mut scratch = vec![0; 64];
        for (index, seq) in [(0, 1), (3, 7), (999_999, 123_456_789)] {
            for len in [8, 9, 64] {
                let mut datagram = vec![0; len];
                fill_message(&mut datagram, index, seq);
                assert_eq!(
                    round_of(&datagram, index, seq + 1, &mut scratch),
                    Some(seq),
                    "{index} {seq} {len}"
                );
                // Not sent yet, another socket's, or corrupted: nobody's.
                assert_eq!(round_of(&datagram, index, seq, &mut scratch), None);
                assert_eq!(round_of(&datagram, index + 1, seq + 1, &mut scratch), None);
                datagram[len - 1] ^= 1;
                assert_eq!(round_of(&datagram, index, seq + 1, &mut scratch), None);
            }
        }
    }

    #[test]
    fn a_short_datagram_is_looked_for_among_the_last_sent() {
        let mut scratch = vec![0; 8];
        let mut datagram = [0; 7];
        fill_message(&mut datagram, 2, 90);
        assert_eq!(round_of(&datagram, 2, 100, &mut scratch), Some(90));
        assert_eq!(round_of(&datagram, 2, 90, &mut scratch), None);
        assert_eq!(
            round_of(&datagram, 2, 90 + SHORT_LOOKBACK + 1, &mut scratch),
            None
        );
    }
}
