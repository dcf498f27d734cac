//! The connection state machine driven through a simulated socket.
//!
//! [`Sim`] is the socket as a connection sees it: the bytes the peer sent and
//! we have not read, the peer's FIN or reset, and the room left in our send
//! buffer. [`Harness`] plays epoll and `Core::settle` around one
//! [`Connection`]: it calls `on_ready` only when Linux would report an event,
//! and registers `interest()` after every call. So a connection that stops
//! reading or writing too early (trusting a short read or write, say) waits
//! here for an event that never comes, as it would on a real socket, and the
//! tests see it stall.
//!
//! When Linux reports an event, in this model:
//! - new input or the peer's FIN, while registered for reading;
//! - room freed after a write found the send buffer full (`SOCK_NOSPACE`),
//!   while registered for writing;
//! - a reset, whatever the registration (`EPOLLERR`/`EPOLLHUP` always are);
//! - a registration or reregistration whose interest is ready already
//!   (`epoll_ctl` polls the socket on `ADD` and `MOD`).
//!
//! An event carries the socket's state when it is delivered, masked by the
//! registration, and is dropped when nothing registered for is ready then.
//! Data arrival is coalesced as TCP does: a read returns everything that has
//! arrived, up to the buffer, so a short read really means drained.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};

use mio::Interest;
use proptest::collection::vec;
use proptest::prelude::*;

use super::{CloseReason, Connection, Label, PENDING_OVERHEAD, Stream};
use crate::budget::{Budget, Charge};

/// The server's read buffer size: big enough that the pending limit, not
/// the buffer, bounds a read.
const SCRATCH: usize = 64 * 1024;

const LINE: &[u8] = b"Sun Nov 22 15:38:54 2026\r\n";

const READ_WRITE: Interest = Interest::READABLE.add(Interest::WRITABLE);

/// A socket whose peer and kernel are played by the test.
#[derive(Debug, Default)]
struct Sim {
    /// Sent by the peer, not read yet.
    inbound: VecDeque<u8>,
    /// The peer's FIN follows `inbound`.
    fin: bool,
    /// The peer reset: reads fail once `inbound` is read, writes at once.
    reset: bool,
    /// Bytes the send buffer takes before `WouldBlock`.
    room: usize,
    /// A write found the send buffer full (Linux's `SOCK_NOSPACE`), so room
    /// freed later raises a writable edge.
    full: bool,
    /// The next this many reads (writes) are interrupted by a signal.
    read_interrupts: usize,
    write_interrupts: usize,
    /// The next read or write fails with this.
    fault: Option<io::ErrorKind>,
    /// Reads say whether bytes are still queued, as Linux does with TCP_INQ.
    tells_queue: bool,

    /// Every byte read, in order.
    read: Vec<u8>,
    /// Every byte written, in order.
    written: Vec<u8>,
    /// `written.len()` when `shutdown_write` was called.
    shut_at: Cell<Option<usize>>,
    shutdowns: Cell<usize>,
    /// The error returned, other than `WouldBlock` and `Interrupted`.
    error: Cell<Option<io::ErrorKind>>,
    /// A read returned 0.
    eof_read: bool,
    reads_after_eof: usize,
    writes_after_shutdown: usize,
    /// Each read's buffer length.
    read_asks: Vec<usize>,
    /// Peeks so far.
    peeks: usize,
    /// The most a read could have left unechoed: bytes read and not written
    /// back, plus the read's buffer. Never over the pending limit.
    widest_read: usize,
}

impl Sim {
    fn with_room(room: usize) -> Sim {
        Sim {
            room,
            ..Sim::default()
        }
    }

    fn fail(&self, kind: io::ErrorKind) -> io::Error {
        self.error.set(Some(kind));
        kind.into()
    }

    /// What the socket would report to a poll: readable, writable.
    fn ready(&self) -> (bool, bool) {
        let readable = !self.inbound.is_empty() || self.fin || self.reset;
        let writable = self.room > 0 || self.reset;
        (readable, writable)
    }
}

impl Read for Sim {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.eof_read {
            self.reads_after_eof += 1;
        }
        self.read_asks.push(buf.len());
        let unechoed = self.read.len().saturating_sub(self.written.len());
        self.widest_read = self.widest_read.max(unechoed + buf.len());
        if self.read_interrupts > 0 {
            self.read_interrupts -= 1;
            return Err(io::ErrorKind::Interrupted.into());
        }
        if let Some(kind) = self.fault.take() {
            return Err(self.fail(kind));
        }
        if !self.inbound.is_empty() {
            let n = buf.len().min(self.inbound.len());
            for (slot, byte) in buf.iter_mut().zip(self.inbound.drain(..n)) {
                *slot = byte;
            }
            self.read.extend_from_slice(&buf[..n]);
            return Ok(n);
        }
        if self.reset {
            return Err(self.fail(io::ErrorKind::ConnectionReset));
        }
        if self.fin {
            self.eof_read = true;
            return Ok(0);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Sim {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.shut_at.get().is_some() {
            self.writes_after_shutdown += 1;
        }
        if self.write_interrupts > 0 {
            self.write_interrupts -= 1;
            return Err(io::ErrorKind::Interrupted.into());
        }
        if let Some(kind) = self.fault.take() {
            return Err(self.fail(kind));
        }
        if self.reset {
            return Err(self.fail(io::ErrorKind::BrokenPipe));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(self.room);
        if n < buf.len() {
            self.full = true;
        }
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.room -= n;
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for Sim {
    fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.eof_read {
            self.reads_after_eof += 1;
        }
        self.peeks += 1;
        if self.read_interrupts > 0 {
            self.read_interrupts -= 1;
            return Err(io::ErrorKind::Interrupted.into());
        }
        if let Some(kind) = self.fault.take() {
            return Err(self.fail(kind));
        }
        if !self.inbound.is_empty() {
            let n = buf.len().min(self.inbound.len());
            for (slot, byte) in buf.iter_mut().zip(self.inbound.iter()) {
                *slot = *byte;
            }
            return Ok(n);
        }
        if self.reset {
            return Err(self.fail(io::ErrorKind::ConnectionReset));
        }
        if self.fin {
            self.eof_read = true;
            return Ok(0);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn read_and_tell(&mut self, buf: &mut [u8]) -> io::Result<(usize, Option<bool>)> {
        let n = self.read(buf)?;
        let queued = self.tells_queue.then_some(!self.inbound.is_empty());
        Ok((n, queued))
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdowns.set(self.shutdowns.get() + 1);
        if self.reset {
            // shutdown(2) on a reset TCP socket says ENOTCONN.
            return Err(self.fail(io::ErrorKind::NotConnected));
        }
        self.shut_at.set(Some(self.written.len()));
        Ok(())
    }
}

/// One connection with epoll and the server's `settle` around it.
struct Harness {
    conn: Connection<Sim>,
    scratch: Vec<u8>,
    /// The server's budget, shared with every other connection.
    budget: Budget,
    /// What the other connections hold of it.
    others: Option<Charge>,
    /// What the connection is registered for, as `Entry::registered`.
    registered: Option<Interest>,
    /// An event is queued for it.
    queued: bool,
    closed: Option<CloseReason>,
    /// Calls of `on_ready` so far.
    calls: usize,
}

impl Harness {
    /// An accepted echo connection, as `Core::admit` starts it: registered,
    /// not yet run.
    fn echo(pending_limit: usize, room: usize) -> Harness {
        let conn = Connection::echo(Sim::with_room(room), label(), pending_limit);
        let mut h = Harness::new(conn);
        h.settle(None);
        h
    }

    /// An accepted daytime connection, as `Core::admit` starts it: run at
    /// once, then registered.
    fn daytime(line: &[u8], room: usize) -> Harness {
        let budget = Budget::new(usize::MAX / 2);
        let conn = Connection::daytime(Sim::with_room(room), label(), line, &budget);
        let mut h = Harness::with_budget(conn, budget);
        h.call(false);
        h
    }

    fn new(conn: Connection<Sim>) -> Harness {
        Harness::with_budget(conn, Budget::new(usize::MAX / 2))
    }

    fn with_budget(conn: Connection<Sim>, budget: Budget) -> Harness {
        Harness {
            conn,
            scratch: vec![0; SCRATCH],
            budget,
            others: None,
            registered: None,
            queued: false,
            closed: None,
            calls: 0,
        }
    }

    /// An echo connection on a server whose budget is `total` bytes.
    fn echo_budgeted(pending_limit: usize, room: usize, total: usize) -> Harness {
        let conn = Connection::echo(Sim::with_room(room), label(), pending_limit);
        let mut h = Harness::with_budget(conn, Budget::new(total));
        h.settle(None);
        h
    }

    /// Other connections take `bytes` more of the budget (past its limit
    /// if they like: daytime lines may).
    fn squeeze(&mut self, bytes: usize) {
        match &mut self.others {
            Some(charge) => charge.grow(bytes),
            None => self.others = Some(self.budget.charge(bytes)),
        }
    }

    /// Other connections give back all they hold. No event follows: a
    /// connection must never wait on the budget itself.
    fn release(&mut self) {
        self.others = None;
    }

    /// What this connection holds of the budget.
    fn held(&self) -> usize {
        self.conn
            .owed
            .pending
            .as_ref()
            .map_or(0, |pending| pending.charge.bytes())
    }

    fn with_scratch(mut self, len: usize) -> Harness {
        self.scratch = vec![0; len];
        self
    }

    fn sim(&self) -> &Sim {
        &self.conn.stream
    }

    fn sim_mut(&mut self) -> &mut Sim {
        self.conn.stream_mut()
    }

    fn registered_for(&self, interest: Interest) -> bool {
        self.registered.is_some_and(|r| {
            (!interest.is_readable() || r.is_readable())
                && (!interest.is_writable() || r.is_writable())
        })
    }

    /// The peer sends `bytes`.
    fn send(&mut self, bytes: &[u8]) {
        assert!(!self.sim().fin && !self.sim().reset, "the peer is done");
        self.sim_mut().inbound.extend(bytes);
        if self.registered_for(Interest::READABLE) {
            self.queued = true;
        }
    }

    /// The peer half-closes.
    fn send_fin(&mut self) {
        self.sim_mut().fin = true;
        if self.registered_for(Interest::READABLE) {
            self.queued = true;
        }
    }

    /// The peer resets the connection.
    fn reset(&mut self) {
        self.sim_mut().reset = true;
        if self.registered.is_some() {
            self.queued = true;
        }
    }

    /// The peer reads `n` bytes, freeing that much room in our send buffer.
    fn drain(&mut self, n: usize) {
        let sim = self.sim_mut();
        sim.room += n;
        // Linux clears SOCK_NOSPACE as it wakes the waiters, registered or not.
        let edge = n > 0 && std::mem::take(&mut sim.full);
        if edge && self.registered_for(Interest::WRITABLE) {
            self.queued = true;
        }
    }

    /// The server's turn: delivers queued events until none is left.
    fn run(&mut self) {
        let mut turns = 0;
        while self.queued && self.closed.is_none() {
            self.queued = false;
            let (readable, writable) = self.sim().ready();
            let registered = self
                .registered
                .expect("events only for a registered socket");
            let hot = (registered.is_readable() && readable)
                || (registered.is_writable() && writable)
                || self.sim().reset;
            if hot {
                self.deliver();
            }
            turns += 1;
            assert!(turns < 100_000, "events never stop");
        }
    }

    /// One event, as `Core::on_connection_event` handles it.
    fn deliver(&mut self) {
        // mio: EPOLLHUP, or EPOLLIN with EPOLLRDHUP; both masked by the
        // registration except EPOLLHUP, which a reset raises.
        let read_closed =
            self.sim().reset || (self.registered_for(Interest::READABLE) && self.sim().fin);
        self.call(read_closed);
    }

    /// A stale event, or one for readiness already handled: events are
    /// hints.
    fn stale_event(&mut self) {
        if self.closed.is_none() {
            self.deliver();
        }
    }

    /// The server shuts down, as `Core::begin_shutdown` does.
    fn shutdown(&mut self) {
        if self.closed.is_none() {
            self.conn.close_when_idle();
            self.call(false);
        }
    }

    fn call(&mut self, read_closed: bool) {
        assert!(self.closed.is_none(), "on_ready after close");
        let error_before = self.sim().error.get();
        self.calls += 1;
        let held_before = self.held();
        let outcome = self
            .conn
            .on_ready(&mut self.scratch, read_closed, &self.budget);
        if self.held() > held_before {
            assert!(
                self.budget.used() <= self.budget.limit(),
                "grew from {held_before} to {} bytes held, taking the budget to {} of {}",
                self.held(),
                self.budget.used(),
                self.budget.limit()
            );
        }
        if let Some(pending) = &self.conn.owed.pending {
            assert_eq!(
                pending.charge.bytes(),
                pending.bytes.capacity() + PENDING_OVERHEAD,
                "the charge is the storage"
            );
        }
        if error_before.is_none() {
            if let Some(kind) = self.sim().error.get() {
                let expected = CloseReason::from_error(&kind.into());
                assert_eq!(outcome, Some(expected), "{kind:?} must close at once");
            }
        }
        self.settle(outcome);
        // A connection that used up its per-event budget stops with work
        // left on purpose; settle() has re-armed it.
        if self.closed.is_none() && !self.conn.yielded() {
            self.check_drained(read_closed);
        }
    }

    /// Edge-triggered readiness must be drained (tokio-rs/mio#1076): a
    /// connection that returns still wanting to read what is waiting, or
    /// owing bytes the socket would take, gets no new event for them.
    fn check_drained(&self, read_closed: bool) {
        let sim = self.sim();
        let interest = self.conn.interest();
        if interest.is_some_and(|i| i.is_readable()) {
            assert!(
                sim.inbound.is_empty(),
                "{} bytes left unread",
                sim.inbound.len()
            );
            assert!(
                !(read_closed && sim.fin && !sim.eof_read),
                "reported FIN left unread"
            );
        }
        if self.conn.owed() > 0 {
            assert!(sim.full, "stopped writing with room in the send buffer");
        }
        if self.conn.send_first {
            assert!(sim.full, "waits for room the send buffer has");
        }
    }

    /// As `Core::settle`: close, or bring the registration up to date.
    fn settle(&mut self, outcome: Option<CloseReason>) {
        if let Some(reason) = outcome {
            self.closed = Some(reason);
            return;
        }
        let wanted = self.conn.interest();
        // A yielded connection is re-registered even with the same
        // interest, which re-arms its edge.
        if wanted != self.registered || self.conn.yielded() {
            self.registered = wanted;
            // epoll_ctl ADD and MOD poll the socket and queue an event if it
            // is ready for the new interest already.
            let (readable, writable) = self.sim().ready();
            if let Some(interest) = wanted {
                if (interest.is_readable() && readable) || (interest.is_writable() && writable) {
                    self.queued = true;
                }
            }
        }
    }
}

fn label() -> Label {
    Label {
        token: 7,
        peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000)),
    }
}

/// Bytes of every value, NUL and 0xff among them.
fn binary(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 37 % 256) as u8).collect()
}

#[test]
fn echo_returns_each_byte_once_in_order_through_one_byte_writes() {
    let input = b"tick\0tock\r\n\xff";
    let mut h = Harness::echo(64, 0);
    h.send(input);
    h.run();
    assert_eq!(h.conn.owed(), input.len());
    assert_eq!(h.conn.interest(), Some(READ_WRITE));
    assert_eq!(h.sim().written, b"");

    for sent in 1..=input.len() {
        h.drain(1);
        h.run();
        assert_eq!(h.sim().written, input[..sent]);
        assert_eq!(h.conn.owed(), input.len() - sent);
        let expected = if sent < input.len() {
            READ_WRITE
        } else {
            Interest::READABLE
        };
        assert_eq!(h.conn.interest(), Some(expected), "after {sent} bytes");
    }
    assert_eq!(h.closed, None);
    assert_eq!(h.conn.bytes_in(), input.len() as u64);
    assert_eq!(h.conn.bytes_out(), input.len() as u64);
    // Drained: the owed buffer's storage is given back.
    assert_eq!(h.conn.owed.capacity(), 0);
}

#[test]
fn echo_writes_straight_back_without_owing_when_the_socket_takes_everything() {
    let input = binary(300);
    let mut h = Harness::echo(64, 1 << 20);
    h.send(&input);
    h.run();
    assert_eq!(h.sim().written, input);
    assert_eq!(h.conn.owed(), 0);
    assert_eq!(h.conn.owed.capacity(), 0);
    assert_eq!(h.conn.interest(), Some(Interest::READABLE));
    assert_eq!(h.calls, 1);
}

#[test]
fn echo_stops_reading_at_the_pending_limit_until_the_peer_drains() {
    let input = binary(40);
    let mut h = Harness::echo(8, 0);
    h.send(&input);
    h.run();
    // The peer is not reading: 8 bytes owed, the rest left in the kernel.
    assert_eq!(h.conn.owed(), 8);
    assert_eq!(h.sim().inbound.len(), 32);
    assert_eq!(h.sim().read_asks, [8]);
    assert_eq!(h.conn.interest(), Some(Interest::WRITABLE));

    // The peer reads 3: 3 go out and 3 more are read at once, since a
    // reader paused at the limit gets no new edge.
    h.drain(3);
    h.run();
    assert_eq!(h.calls, 2);
    assert_eq!(h.sim().written, input[..3]);
    assert_eq!(h.sim().read, input[..11]);
    assert_eq!(h.conn.owed(), 8);
    assert_eq!(h.conn.interest(), Some(Interest::WRITABLE));

    h.drain(100);
    h.run();
    assert_eq!(h.sim().written, input);
    assert_eq!(h.conn.owed(), 0);
    assert_eq!(h.conn.interest(), Some(Interest::READABLE));
    assert!(h.sim().widest_read <= 8, "a read reached past the limit");
    assert!(h.conn.owed.capacity() <= 8);
    assert_eq!(h.closed, None);
}

#[test]
fn echo_wants_to_read_again_once_below_the_pending_limit() {
    let input = binary(12);
    let mut h = Harness::echo(8, 0);
    h.send(&input);
    h.run();
    assert_eq!(h.conn.interest(), Some(Interest::WRITABLE));

    // 6 out, the last 4 in: 6 owed, under the limit, so reading is back.
    h.drain(6);
    h.run();
    assert_eq!(h.calls, 2, "reading resumed in the same event");
    assert_eq!(h.sim().written, input[..6]);
    assert_eq!(h.sim().read, input);
    assert_eq!(h.conn.owed(), 6);
    assert_eq!(h.conn.interest(), Some(READ_WRITE));
    assert!(h.sim().widest_read <= 8, "a read reached past the limit");

    h.send(b"\0more");
    h.drain(64);
    h.run();
    let mut all = input.clone();
    all.extend_from_slice(b"\0more");
    assert_eq!(h.sim().written, all);
    assert_eq!(h.conn.interest(), Some(Interest::READABLE));
}

#[test]
fn echo_retries_interrupted_reads_and_writes() {
    let mut h = Harness::echo(64, 100);
    h.sim_mut().read_interrupts = 2;
    h.sim_mut().write_interrupts = 2;
    h.send(b"again\0");
    h.run();
    assert_eq!(h.closed, None);
    assert_eq!(h.sim().written, b"again\0");
    assert_eq!(h.sim().read_interrupts, 0);
    assert_eq!(h.sim().write_interrupts, 0);
    // Retried within the one event, not left for another.
    assert_eq!(h.calls, 1);
    assert_eq!(h.conn.interest(), Some(Interest::READABLE));
}

#[test]
fn echo_retries_an_interrupted_flush_of_owed_bytes() {
    let mut h = Harness::echo(64, 0);
    h.send(b"owed");
    h.run();
    h.sim_mut().write_interrupts = 3;
    h.drain(10);
    h.run();
    assert_eq!(h.closed, None);
    assert_eq!(h.sim().written, b"owed");
    assert_eq!(h.conn.owed(), 0);
}

#[test]
fn echo_flushes_everything_owed_after_eof_then_closes() {
    let mut h = Harness::echo(64, 0);
    h.send(b"last words\0");
    h.send_fin();
    h.run();
    // EOF read, but the peer is owed its bytes: only writing is wanted.
    assert!(h.sim().eof_read);
    assert_eq!(h.closed, None);
    assert_eq!(h.conn.owed(), 11);
    assert_eq!(h.conn.interest(), Some(Interest::WRITABLE));

    h.drain(4);
    h.run();
    assert_eq!(h.closed, None);
    assert_eq!(h.sim().written, b"last");
    assert_eq!(h.conn.interest(), Some(Interest::WRITABLE));

    h.drain(100);
    h.run();
    assert_eq!(h.sim().written, b"last words\0");
    assert_eq!(h.closed, Some(CloseReason::PeerClosed));
    assert_eq!(h.sim().reads_after_eof, 0);
}

#[test]
fn echo_closes_at_once_on_eof_with_nothing_owed() {
    let mut h = Harness::echo(64, 100);
    h.send(b"hi");
    h.run();
    assert_eq!(h.sim().written, b"hi");
    h.send_fin();
    h.run();
    assert_eq!(h.closed, Some(CloseReason::PeerClosed));
    assert_eq!(h.calls, 2);
}

#[test]
fn echo_reads_on_to_eof_when_the_event_carries_read_closed() {
    // Data and FIN in one event: the short read does not end the reading,
    // or the FIN, already reported, would never be seen.
    let mut h = Harness::echo(64, 100);
    h.send(b"bye");
    h.send_fin();
    h.run();
    assert_eq!(h.sim().written, b"bye");
    assert_eq!(h.closed, Some(CloseReason::PeerClosed));
    assert_eq!(h.calls, 1);
}

#[test]
fn echo_sees_a_fin_that_arrived_while_paused_at_the_limit() {
    // Registered for writing only, the connection gets no event for the
    // FIN, and the writable event that resumes reading does not carry it.
    // It is seen because reregistering for reading polls the socket, as
    // Linux's EPOLL_CTL_MOD does; were the short read trusted with no
    // reregistration after it, the FIN would wait for the idle timeout.
    let input = binary(10);
    let mut h = Harness::echo(4, 0);
    h.send(&input);
    h.run();
    assert_eq!(h.conn.interest(), Some(Interest::WRITABLE));
    h.send_fin();
    h.run();
    assert_eq!(h.calls, 1);

    h.drain(100);
    h.run();
    assert_eq!(h.sim().written, input);
    assert_eq!(h.closed, Some(CloseReason::PeerClosed));
}

#[test]
fn echo_closes_with_reset_when_a_read_is_reset() {
    let mut h = Harness::echo(64, 100);
    h.send(b"abc");
    h.run();
    h.reset();
    h.run();
    assert_eq!(h.sim().error.get(), Some(io::ErrorKind::ConnectionReset));
    assert_eq!(h.closed, Some(CloseReason::Reset));
    assert_eq!(h.sim().written, b"abc");
}

#[test]
fn echo_closes_with_reset_on_a_broken_pipe() {
    let mut h = Harness::echo(64, 0);
    h.send(b"owed");
    h.run();
    h.sim_mut().fault = Some(io::ErrorKind::BrokenPipe);
    h.drain(10);
    h.run();
    assert_eq!(h.sim().error.get(), Some(io::ErrorKind::BrokenPipe));
    assert_eq!(h.closed, Some(CloseReason::Reset));
    assert_eq!(h.sim().written, b"");
}

#[test]
fn echo_closes_with_the_error_kind_of_any_other_failure() {
    let mut h = Harness::echo(64, 100);
    h.sim_mut().fault = Some(io::ErrorKind::TimedOut);
    h.send(b"x");
    h.run();
    assert_eq!(h.closed, Some(CloseReason::Error(io::ErrorKind::TimedOut)));
}

#[test]
fn close_reasons_name_resets_and_keep_other_kinds() {
    use io::ErrorKind::*;
    for kind in [ConnectionReset, ConnectionAborted, BrokenPipe] {
        assert_eq!(CloseReason::from_error(&kind.into()), CloseReason::Reset);
    }
    for kind in [TimedOut, NotConnected, WriteZero, Other] {
        assert_eq!(
            CloseReason::from_error(&kind.into()),
            CloseReason::Error(kind)
        );
    }
}

#[test]
fn daytime_sends_the_whole_line_through_one_byte_writes_then_shuts_down() {
    let mut h = Harness::daytime(LINE, 0);
    assert_eq!(h.sim().written, b"");
    assert_eq!(h.conn.owed(), LINE.len());
    assert_eq!(h.conn.interest(), Some(Interest::WRITABLE));
    assert!(!h.conn.is_lingering());

    for sent in 1..=LINE.len() {
        if sent % 3 == 0 {
            // A stale event while the buffer is still full: WouldBlock.
            h.stale_event();
        }
        h.drain(1);
        h.run();
        assert_eq!(h.sim().written, LINE[..sent]);
        if sent < LINE.len() {
            assert_eq!(h.sim().shut_at.get(), None, "FIN before the line is out");
            assert_eq!(h.conn.interest(), Some(Interest::WRITABLE));
        }
    }
    assert_eq!(h.sim().shut_at.get(), Some(LINE.len()));
    assert!(h.conn.is_lingering());
    assert_eq!(h.conn.interest(), Some(Interest::READABLE));
    assert_eq!(h.conn.bytes_out(), LINE.len() as u64);
    assert_eq!(h.closed, None);
}

#[test]
fn daytime_lingers_discarding_input_until_the_peer_closes() {
    let mut h = Harness::daytime(LINE, 1024);
    assert_eq!(h.sim().written, LINE);
    assert_eq!(h.sim().shut_at.get(), Some(LINE.len()));
    assert!(h.conn.is_lingering());
    assert_eq!(h.conn.interest(), Some(Interest::READABLE));

    h.send(b"ignored\0input");
    h.run();
    assert_eq!(h.closed, None);
    assert_eq!(h.conn.bytes_in(), 13);
    assert!(h.sim().inbound.is_empty(), "input left unread would reset");

    h.send(b"more");
    h.send_fin();
    h.run();
    assert_eq!(h.closed, Some(CloseReason::PeerClosed));
    assert_eq!(h.sim().written, LINE);
    assert_eq!(h.sim().shutdowns.get(), 1);
    assert_eq!(h.sim().writes_after_shutdown, 0);
}

#[test]
fn daytime_input_before_the_line_does_not_hold_it_back() {
    let mut h = Harness::daytime(LINE, 0);
    h.send(b"hello?\r\n");
    h.run();
    h.drain(5);
    h.run();
    assert_eq!(h.sim().written, LINE[..5]);
    h.drain(100);
    h.run();
    assert_eq!(h.sim().written, LINE);
    assert_eq!(h.sim().shut_at.get(), Some(LINE.len()));
    assert!(h.conn.is_lingering());
    // The early input is read and thrown away once lingering.
    assert_eq!(h.conn.bytes_in(), 8);
    assert_eq!(h.closed, None);

    h.send_fin();
    h.run();
    assert_eq!(h.closed, Some(CloseReason::PeerClosed));
}

#[test]
fn daytime_closes_after_the_line_when_the_peer_closed_already() {
    let mut h = Harness::daytime(LINE, 3);
    h.send(b"x");
    h.send_fin();
    h.drain(100);
    h.run();
    assert_eq!(h.sim().written, LINE);
    assert_eq!(h.sim().shut_at.get(), Some(LINE.len()));
    assert_eq!(h.closed, Some(CloseReason::PeerClosed));
}

#[test]
fn close_when_idle_keeps_flushing_owed_bytes_then_closes() {
    let mut h = Harness::echo(64, 0);
    h.send(b"in flight");
    h.run();
    h.shutdown();
    assert_eq!(h.closed, None);
    assert_eq!(h.conn.owed(), 9);

    h.drain(4);
    h.run();
    assert_eq!(h.closed, None);
    assert_eq!(h.sim().written, b"in f");

    h.drain(100);
    h.run();
    assert_eq!(h.sim().written, b"in flight");
    assert_eq!(h.closed, Some(CloseReason::Shutdown));
}

#[test]
fn close_when_idle_closes_an_idle_connection_at_once() {
    let mut h = Harness::echo(64, 100);
    h.send(b"done");
    h.run();
    h.shutdown();
    assert_eq!(h.closed, Some(CloseReason::Shutdown));
    assert_eq!(h.sim().written, b"done");
}

#[test]
fn close_when_idle_echoes_input_that_was_waiting_first() {
    let mut h = Harness::echo(64, 100);
    h.send(b"late");
    // No turn between: the bytes wait in the kernel when shutdown starts.
    h.shutdown();
    assert_eq!(h.sim().written, b"late");
    assert_eq!(h.closed, Some(CloseReason::Shutdown));
}

/// One thing the peer, the kernel or the server does.
#[derive(Clone, Debug)]
enum Step {
    /// The peer sends bytes.
    Send(Vec<u8>),
    /// The peer half-closes.
    Fin,
    /// The peer resets.
    Reset,
    /// The peer reads this many bytes (0: still none, so `WouldBlock`).
    Drain(usize),
    /// Signals interrupt the next reads.
    InterruptReads(usize),
    /// Signals interrupt the next writes.
    InterruptWrites(usize),
    /// The next read or write fails.
    Fault(io::ErrorKind),
    /// A stale event.
    Stale,
    /// The server starts shutting down.
    Shutdown,
    /// The server polls and handles what is queued.
    Turn,
    /// Other connections take this many more bytes of the budget.
    Squeeze(usize),
    /// Other connections give back everything they hold.
    Release,
}

/// Steps that leave the connection healthy.
fn step() -> impl Strategy<Value = Step> {
    let byte = prop_oneof![Just(0u8), Just(b'\n'), any::<u8>()];
    prop_oneof![
        8 => vec(byte, 1..=48).prop_map(Step::Send),
        1 => Just(Step::Fin),
        8 => prop_oneof![Just(0usize), Just(1), 0usize..=32].prop_map(Step::Drain),
        1 => (1usize..=3).prop_map(Step::InterruptReads),
        1 => (1usize..=3).prop_map(Step::InterruptWrites),
        2 => Just(Step::Stale),
        1 => Just(Step::Shutdown),
        8 => Just(Step::Turn),
    ]
}

/// Healthy steps with, half the time, a reset or a failure among them:
/// mixed in with the rest, one would end nearly every run early.
fn steps(max: usize) -> impl Strategy<Value = Vec<Step>> {
    let failure = prop_oneof![
        Just(Step::Reset),
        Just(Step::Fault(io::ErrorKind::ConnectionReset)),
        Just(Step::Fault(io::ErrorKind::BrokenPipe)),
        Just(Step::Fault(io::ErrorKind::TimedOut)),
        Just(Step::Fault(io::ErrorKind::Other)),
    ];
    let failure = proptest::option::of((any::<proptest::sample::Index>(), failure));
    (vec(step(), 0..=max), failure).prop_map(|(mut steps, failure)| {
        if let Some((at, step)) = failure {
            steps.insert(at.index(steps.len() + 1), step);
        }
        steps
    })
}

/// Healthy steps among which other connections take and give back the
/// budget at random points.
fn budget_steps(max: usize) -> impl Strategy<Value = Vec<Step>> {
    let squeezes = prop_oneof![
        3 => (0usize..=200).prop_map(Step::Squeeze),
        1 => Just(Step::Squeeze(1 << 40)),
        2 => Just(Step::Release),
    ];
    vec(prop_oneof![6 => step(), 1 => squeezes], 0..=max)
}

/// Plays `steps`, then has the peer close (first, or after reading) and
/// read everything: the connection must then finish.
fn play(h: &mut Harness, steps: &[Step], fin_first: bool, check: &dyn Fn(&Harness)) -> Vec<u8> {
    let mut peer_sent = Vec::new();
    let mut shutting_down = false;
    for step in steps {
        if h.closed.is_some() {
            break;
        }
        let peer_done = h.sim().fin || h.sim().reset;
        match step {
            Step::Send(bytes) if !peer_done => {
                peer_sent.extend_from_slice(bytes);
                h.send(bytes);
            }
            Step::Fin if !peer_done => h.send_fin(),
            Step::Reset if !h.sim().reset => h.reset(),
            Step::Send(_) | Step::Fin | Step::Reset => {}
            Step::Drain(n) => h.drain(*n),
            Step::InterruptReads(n) => h.sim_mut().read_interrupts += n,
            Step::InterruptWrites(n) => h.sim_mut().write_interrupts += n,
            Step::Fault(kind) => h.sim_mut().fault = Some(*kind),
            Step::Stale => h.stale_event(),
            // The server starts a shutdown once.
            Step::Shutdown if !shutting_down => {
                shutting_down = true;
                h.shutdown();
            }
            Step::Shutdown => {}
            Step::Turn => h.run(),
            Step::Squeeze(n) => h.squeeze(*n),
            Step::Release => h.release(),
        }
        check(h);
    }
    h.run();
    check(h);
    let peer_done = |h: &Harness| h.sim().fin || h.sim().reset;
    if fin_first && h.closed.is_none() && !peer_done(h) {
        h.send_fin();
        h.run();
        check(h);
    }
    if h.closed.is_none() {
        h.drain(1 << 20);
        h.run();
        check(h);
    }
    if h.closed.is_none() && !peer_done(h) {
        h.send_fin();
        h.run();
        check(h);
    }
    peer_sent
}

/// What must hold of an echo connection after every step.
fn check_echo(h: &Harness, limit: usize) {
    let sim = h.sim();
    assert!(
        sim.read.starts_with(&sim.written),
        "echoed bytes are not a prefix of those read:\n read {:?}\n sent {:?}",
        sim.read,
        sim.written,
    );
    assert_eq!(h.conn.bytes_in(), sim.read.len() as u64);
    assert_eq!(h.conn.bytes_out(), sim.written.len() as u64);
    assert!(
        sim.widest_read <= limit,
        "a read could leave {} bytes unechoed, limit {limit}",
        sim.widest_read
    );
    assert_eq!(sim.reads_after_eof, 0, "read again after EOF");
    assert_eq!(sim.shut_at.get(), None, "echo never shuts down its side");
    if h.closed.is_some() {
        return;
    }
    let owed = h.conn.owed();
    assert_eq!(owed, sim.read.len() - sim.written.len());
    assert!(owed <= limit, "{owed} owed over the limit {limit}");
    let capacity = h.conn.owed.capacity();
    assert!(
        capacity <= limit,
        "owed storage {capacity} over the limit {limit}"
    );
    if owed == 0 {
        assert_eq!(capacity, 0, "an idle connection holds a buffer");
    }
    let interest = h
        .conn
        .interest()
        .expect("a live echo connection always waits for something");
    let send_first = h.conn.send_first;
    assert_eq!(
        interest.is_writable(),
        owed > 0 || send_first,
        "owed {owed}, send first {send_first}: {interest:?}"
    );
    assert_eq!(
        interest.is_readable(),
        !sim.eof_read && owed < limit && !send_first,
        "owed {owed}, limit {limit}, EOF read {}, send first {send_first}: {interest:?}",
        sim.eof_read
    );
    assert_eq!(h.registered, Some(interest));
}

/// What must hold of a daytime connection after every step.
fn check_daytime(h: &Harness, line: &[u8]) {
    let sim = h.sim();
    assert!(line.starts_with(&sim.written), "sent {:?}", sim.written);
    assert_eq!(h.conn.bytes_out(), sim.written.len() as u64);
    assert_eq!(h.conn.bytes_in(), sim.read.len() as u64);
    assert_eq!(sim.writes_after_shutdown, 0);
    assert_eq!(sim.reads_after_eof, 0, "read again after EOF");
    assert!(sim.shutdowns.get() <= 1);
    if let Some(at) = sim.shut_at.get() {
        assert_eq!(at, line.len(), "FIN before the whole line");
    }
    if h.closed.is_some() {
        return;
    }
    let lingering = sim.shut_at.get().is_some();
    assert_eq!(h.conn.is_lingering(), lingering);
    assert_eq!(h.conn.owed(), line.len() - sim.written.len());
    let expected = if lingering {
        Interest::READABLE
    } else {
        Interest::WRITABLE
    };
    assert_eq!(h.conn.interest(), Some(expected));
    assert_eq!(h.registered, Some(expected));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn echo_sends_back_a_prefix_of_what_it_read_and_all_of_it_by_eof(
        limit in prop_oneof![1usize..=4, 1usize..=64],
        scratch in prop_oneof![Just(SCRATCH), 1usize..=80],
        room in prop_oneof![Just(0usize), 0usize..=64],
        steps in steps(80),
        fin_first in any::<bool>(),
    ) {
        let mut h = Harness::echo(limit, room).with_scratch(scratch);
        let peer_sent = play(&mut h, &steps, fin_first, &|h| check_echo(h, limit));
        let sim = h.sim();
        let reason = h.closed.unwrap_or_else(|| {
            panic!(
                "stalled: {} owed, {} unread, EOF read {}, registered {:?}",
                h.conn.owed(),
                sim.inbound.len(),
                sim.eof_read,
                h.registered,
            )
        });
        match (sim.error.get(), reason) {
            (Some(kind), reason) => {
                prop_assert_eq!(reason, CloseReason::from_error(&kind.into()));
            }
            (None, CloseReason::PeerClosed) => {
                prop_assert!(sim.eof_read);
                prop_assert_eq!(&sim.read, &peer_sent);
                prop_assert_eq!(&sim.written, &peer_sent);
            }
            (None, CloseReason::Shutdown) => {
                prop_assert!(steps.iter().any(|s| matches!(s, Step::Shutdown)));
                prop_assert_eq!(&sim.written, &sim.read);
            }
            (None, reason) => prop_assert!(false, "closed: {reason:?}"),
        }
    }

    #[test]
    fn daytime_sends_its_whole_line_then_fin_then_closes_on_eof(
        line in vec(any::<u8>(), 0..=40),
        room in prop_oneof![Just(0usize), 0usize..=64],
        steps in steps(60),
        fin_first in any::<bool>(),
    ) {
        let mut h = Harness::daytime(&line, room).with_scratch(16);
        check_daytime(&h, &line);
        play(&mut h, &steps, fin_first, &|h| check_daytime(h, &line));
        let sim = h.sim();
        let reason = h.closed.unwrap_or_else(|| {
            panic!(
                "stalled: {} of {} sent, lingering {}, registered {:?}",
                sim.written.len(),
                line.len(),
                h.conn.is_lingering(),
                h.registered,
            )
        });
        match (sim.error.get(), reason) {
            (Some(kind), reason) => {
                prop_assert_eq!(reason, CloseReason::from_error(&kind.into()));
            }
            (None, CloseReason::PeerClosed) => {
                prop_assert!(sim.eof_read);
                prop_assert_eq!(&sim.written, &line);
                prop_assert_eq!(sim.shut_at.get(), Some(line.len()));
            }
            (None, reason) => prop_assert!(false, "closed: {reason:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever the rest of the server holds, and whenever it takes or
    /// gives back: no byte lost or reordered, the budget never pushed over
    /// by this connection (checked on every call), nothing held once the
    /// connection is gone, and no stall, whether or not the budget is free
    /// again when the peer finally reads everything.
    #[test]
    fn echo_under_a_squeezed_budget_loses_nothing_and_never_stalls(
        limit in prop_oneof![1usize..=4, 1usize..=64],
        total in prop_oneof![Just(0usize), 0usize..=300, Just(usize::MAX / 2)],
        scratch in prop_oneof![Just(SCRATCH), 1usize..=80],
        room in prop_oneof![Just(0usize), 0usize..=64],
        steps in budget_steps(80),
        release_at_end in any::<bool>(),
        fin_first in any::<bool>(),
    ) {
        let mut h = Harness::echo_budgeted(limit, room, total).with_scratch(scratch);
        let mut steps = steps;
        if release_at_end {
            steps.push(Step::Release);
        }
        let peer_sent = play(&mut h, &steps, fin_first, &|h| check_echo(h, limit));
        let sim = h.sim();
        let reason = h.closed.unwrap_or_else(|| {
            panic!(
                "stalled: {} owed, {} unread, EOF read {}, send first {}, registered {:?}, budget {:?}",
                h.conn.owed(),
                sim.inbound.len(),
                sim.eof_read,
                h.conn.send_first,
                h.registered,
                h.budget,
            )
        });
        match (sim.error.get(), reason) {
            (Some(kind), reason) => {
                prop_assert_eq!(reason, CloseReason::from_error(&kind.into()));
            }
            (None, CloseReason::PeerClosed) => {
                prop_assert_eq!(&sim.read, &peer_sent);
                prop_assert_eq!(&sim.written, &peer_sent);
            }
            (None, CloseReason::Shutdown) => {
                prop_assert!(steps.iter().any(|s| matches!(s, Step::Shutdown)));
                prop_assert_eq!(&sim.written, &sim.read);
            }
            (None, reason) => prop_assert!(false, "closed: {reason:?}"),
        }
        let others = h.others.as_ref().map_or(0, Charge::bytes);
        drop(h.conn);
        prop_assert_eq!(h.budget.used(), others, "the connection gave back all it held");
    }
}

/// The first `len` bytes a chargen connection sends.
fn chargen_stream(len: usize) -> Vec<u8> {
    (0..len).map(|n| crate::chargen::window(n, 1)[0]).collect()
}

/// A connection that `Core::admit` runs at once (everything but echo and
/// discard), then registers.
fn started(conn: Connection<Sim>) -> Harness {
    let mut h = Harness::new(conn);
    h.call(false);
    h
}

#[test]
fn chargen_sends_the_pattern_unbroken_through_short_writes() {
    let mut h = started(Connection::chargen(Sim::with_room(100), label()));
    assert_eq!(h.conn.interest(), Some(READ_WRITE));
    for room in [1, 73, 74, 1000, 7031, 3, 20_000] {
        h.drain(room);
        h.run();
    }
    let written = &h.sim().written;
    assert_eq!(written.len(), 100 + 1 + 73 + 74 + 1000 + 7031 + 3 + 20_000);
    assert!(
        *written == chargen_stream(written.len()),
        "chargen stream broke its pattern"
    );
    assert_eq!(h.conn.owed(), 0, "chargen owes nothing of its own");
}

#[test]
fn chargen_discards_input_and_stops_when_the_peer_closes() {
    let mut h = started(Connection::chargen(Sim::with_room(10), label()));
    h.send(b"ignored");
    h.run();
    assert_eq!(h.closed, None);
    assert_eq!(h.conn.bytes_in(), 7);
    h.send_fin();
    h.run();
    assert_eq!(h.closed, Some(CloseReason::PeerClosed));
}

#[test]
fn chargen_yields_to_other_connections_when_the_peer_reads_without_end() {
    let mut h = started(Connection::chargen(Sim::with_room(usize::MAX / 2), label()));
    assert!(
        h.conn.yielded(),
        "a peer that never fills up must not hold the loop"
    );
    let first = h.sim().written.len();
    assert_eq!(first, 16 * crate::chargen::MAX_WINDOW);
    // Re-registering re-armed it: an event is queued, and the next turn
    // goes on where this one stopped.
    assert!(h.queued, "yielded without being re-armed");
    h.queued = false;
    h.deliver();
    assert_eq!(h.sim().written.len(), 2 * first);
    assert!(h.sim().written == chargen_stream(2 * first));
}

#[test]
fn discard_reads_everything_and_writes_nothing() {
    let mut h = Harness::new(Connection::discard(Sim::with_room(1 << 20), label()));
    h.settle(None);
    assert_eq!(h.conn.interest(), Some(Interest::READABLE));
    h.send(&binary(200_000));
    h.run();
    h.send(b"\0");
    h.run();
    assert_eq!(h.conn.bytes_in(), 200_001);
    assert_eq!(h.sim().written, b"");
    h.send_fin();
    h.run();
    assert_eq!(h.closed, Some(CloseReason::PeerClosed));
    assert_eq!(h.sim().written, b"");
}

#[test]
fn time_sends_its_four_bytes_through_one_byte_writes_then_lingers() {
    let mut h = started(Connection::time(
        Sim::with_room(1),
        label(),
        [0xde, 0xad, 0xbe, 0xef],
        &Budget::new(usize::MAX / 2),
    ));
    for _ in 0..3 {
        h.drain(1);
        h.run();
    }
    assert_eq!(h.sim().written, [0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(h.sim().shut_at.get(), Some(4));
    assert!(h.conn.is_lingering());
    h.send_fin();
    h.run();
    assert_eq!(h.closed, Some(CloseReason::PeerClosed));
}

#[test]
fn echo_yields_after_its_budget_and_loses_nothing() {
    // A 1-byte read buffer makes a 100-byte burst take 100 reads.
    let mut h = Harness::echo(1 << 16, 1 << 20).with_scratch(1);
    let input = binary(100);
    h.send(&input);
    h.queued = false;
    h.deliver();
    assert!(h.conn.yielded());
    assert_eq!(
        h.sim().written.len(),
        16,
        "one event reads at most its budget"
    );
    h.run();
    assert_eq!(h.sim().written, input);
    assert!(!h.conn.yielded());
}

#[test]
fn echo_skips_the_would_block_read_when_the_kernel_says_nothing_is_queued() {
    let message = binary(64);
    let mut told = Harness::echo(64, 1 << 20).with_scratch(64);
    told.sim_mut().tells_queue = true;
    told.send(&message);
    told.run();
    assert_eq!(told.sim().written, message);
    assert_eq!(told.sim().read_asks, [64], "one read for one full message");

    // Without the kernel's word a full read proves nothing: read again.
    let mut untold = Harness::echo(64, 1 << 20).with_scratch(64);
    untold.send(&message);
    untold.run();
    assert_eq!(untold.sim().written, message);
    assert_eq!(untold.sim().read_asks, [64, 64]);
}

#[test]
fn echo_reads_on_after_a_full_read_while_the_kernel_says_more_is_queued() {
    let message = binary(100);
    let mut h = Harness::echo(1 << 16, 1 << 20).with_scratch(64);
    h.sim_mut().tells_queue = true;
    h.send(&message);
    h.run();
    assert_eq!(h.sim().written, message);
    assert_eq!(h.sim().read_asks, [64, 64]);
}

#[test]
fn close_when_idle_waits_for_input_a_yield_left_unread() {
    let input = binary(100);
    let mut h = Harness::echo(1 << 16, 1 << 20).with_scratch(1);
    h.send(&input);
    h.queued = false;
    // The server shuts down before this connection's event is served.
    h.shutdown();
    assert!(h.conn.yielded());
    assert_eq!(h.closed, None, "closed with input still waiting");
    h.run();
    assert_eq!(h.sim().written, input);
    assert_eq!(h.closed, Some(CloseReason::Shutdown));
}

#[test]
fn echo_under_a_full_budget_echoes_what_the_socket_takes_and_keeps_nothing() {
    let mut h = Harness::echo_budgeted(64, 10, 0);
    let input = binary(25);
    h.send(&input);
    h.run();
    assert_eq!(h.sim().written, &input[..10], "what the socket took");
    assert_eq!(h.sim().read, &input[..10], "and no more taken from it");
    assert_eq!(h.sim().inbound.len(), 15, "the rest waits in the kernel");
    assert_eq!((h.conn.owed(), h.held(), h.budget.used()), (0, 0, 0));
    assert_eq!(h.registered, Some(Interest::WRITABLE));
    h.drain(10);
    h.run();
    assert_eq!(h.sim().written, &input[..20]);
    h.drain(100);
    h.run();
    assert_eq!(h.sim().written, input);
    assert_eq!(h.budget.used(), 0);
    assert_eq!(h.registered, Some(Interest::READABLE));
    h.send_fin();
    h.run();
    assert_eq!(h.closed, Some(CloseReason::PeerClosed));
}

#[test]
fn echo_that_owes_stops_reading_while_the_budget_is_full_then_catches_up() {
    let mut h = Harness::echo_budgeted(64, 5, 1000);
    h.send(b"twenty bytes of echo");
    h.run();
    assert_eq!(h.conn.owed(), 15);
    assert_eq!(h.budget.used(), 15 + PENDING_OVERHEAD);
    // Others fill the budget; more input comes.
    h.squeeze(1000);
    h.send(b"+ten bytes");
    h.run();
    h.stale_event();
    assert_eq!(h.sim().read.len(), 20, "nothing more read while owing");
    assert_eq!(h.sim().inbound.len(), 10);
    assert_eq!(h.registered, Some(Interest::WRITABLE));
    // The peer reads: the owed bytes go first, then the rest is echoed as
    // the socket takes it, though the budget is still full.
    h.drain(100);
    h.run();
    assert_eq!(h.sim().written, b"twenty bytes of echo+ten bytes");
    assert_eq!(h.held(), 0);
    assert_eq!(
        h.budget.used(),
        1000 + 15 + PENDING_OVERHEAD - 15 - PENDING_OVERHEAD
    );
}

#[test]
fn echo_reads_and_keeps_again_once_the_budget_frees() {
    let mut h = Harness::echo_budgeted(64, 4, 64 + PENDING_OVERHEAD);
    h.squeeze(64 + PENDING_OVERHEAD);
    h.send(b"abcdefgh");
    h.run();
    assert_eq!(
        (h.sim().written.as_slice(), h.conn.owed()),
        (&b"abcd"[..], 0)
    );
    h.release();
    h.drain(4);
    h.run();
    assert_eq!(h.sim().written, b"abcdefgh");
    // With the budget free, a short write leaves bytes owed as usual.
    h.send(b"ijklmnop");
    h.run();
    assert_eq!(h.sim().read, b"abcdefghijklmnop");
    assert_eq!(h.conn.owed(), 8);
    assert_eq!(h.budget.used(), 8 + PENDING_OVERHEAD);
}

#[test]
fn owed_storage_doubles_only_within_the_budget() {
    let budget = Budget::new(1 << 20);
    let mut owed = super::Owed::default();
    owed.extend(&binary(32), 1024, &budget);
    assert_eq!(owed.capacity(), 32);
    owed.extend(&binary(8), 1024, &budget);
    assert_eq!(owed.capacity(), 64, "doubles while the budget allows");
    // 30 bytes left: 40 more owed need 80, doubling would take 128.
    let _others = budget.charge(budget.available() - 30);
    owed.extend(&binary(40), 1024, &budget);
    assert_eq!(
        owed.capacity(),
        64 + 30,
        "grows into what is left, no further"
    );
    assert_eq!(budget.available(), 0);
    drop(owed);
    assert_eq!(budget.used(), (1 << 20) - 64 - PENDING_OVERHEAD - 30);
}

#[test]
fn close_when_idle_waits_for_input_held_back_by_the_budget() {
    let mut h = Harness::echo_budgeted(64, 3, 0);
    h.send(b"abcdef");
    h.run();
    assert_eq!(h.sim().inbound.len(), 3);
    h.shutdown();
    assert_eq!(h.closed, None, "input is waiting: not idle");
    h.drain(3);
    h.run();
    assert_eq!(h.sim().written, b"abcdef");
    assert_eq!(h.closed, Some(CloseReason::Shutdown));
}

#[test]
fn daytime_line_is_charged_until_it_is_sent() {
    let budget = Budget::new(10);
    let conn = Connection::daytime(Sim::with_room(0), label(), LINE, &budget);
    assert_eq!(
        budget.used(),
        LINE.len() + PENDING_OVERHEAD,
        "charged over the limit"
    );
    let mut h = Harness::with_budget(conn, budget);
    h.call(false);
    h.drain(LINE.len());
    h.run();
    assert!(h.conn.is_lingering());
    assert_eq!(h.budget.used(), 0);
}

#[test]
fn echo_held_back_by_others_says_what_it_waits_for_and_reads_once_covered() {
    let mut h = Harness::echo_budgeted(64, 10, 1000);
    h.squeeze(1000);
    let input = binary(25);
    h.send(&input);
    h.run();
    assert_eq!(h.sim().written, &input[..10], "what the socket took");
    assert_eq!(h.sim().inbound.len(), 15, "the rest waits in the kernel");
    let wanted = h.conn.budget_wanted(SCRATCH, &h.budget);
    assert_eq!(
        wanted,
        Some(64 + PENDING_OVERHEAD),
        "a read up to its limit"
    );
    // Others let go, and the peer still reads nothing: no event comes, so
    // the server's wait list runs it.
    h.release();
    assert!(h.budget.fits(64 + PENDING_OVERHEAD));
    h.call(false);
    assert_eq!(h.sim().read, input, "read what waited");
    assert_eq!(h.conn.owed(), 15, "and keeps what the socket cannot take");
    assert_eq!(h.conn.budget_wanted(SCRATCH, &h.budget), None);
    assert_eq!(
        h.registered,
        Some(Interest::READABLE | Interest::WRITABLE),
        "reads again on its own events"
    );
    h.drain(100);
    h.run();
    assert_eq!(h.sim().written, input);
}

#[test]
fn echo_at_its_own_pending_limit_waits_for_its_peer_not_the_budget() {
    let mut h = Harness::echo_budgeted(8, 0, 1000);
    h.send(&binary(20));
    h.run();
    assert_eq!(h.conn.owed(), 8);
    h.squeeze(1000);
    h.stale_event();
    assert_eq!(h.conn.budget_wanted(SCRATCH, &h.budget), None);
}

#[test]
fn echo_with_a_full_socket_but_a_free_budget_keeps_what_it_reads() {
    let mut h = Harness::echo_budgeted(64, 0, 1000);
    h.send(&binary(20));
    h.run();
    assert_eq!(h.conn.owed(), 20);
    assert_eq!(h.conn.budget_wanted(SCRATCH, &h.budget), None);
}

#[test]
fn echo_reads_no_more_than_the_whole_budget_could_keep() {
    // The budget holds 20 bytes beside the storage's cost: a read of the
    // whole 64-byte limit could never be covered, so reads shrink to fit
    // and a held-back connection waits for a total the budget can reach.
    let mut h = Harness::echo_budgeted(64, 0, 20 + PENDING_OVERHEAD);
    h.send(&binary(50));
    h.run();
    assert_eq!(h.conn.owed(), 20);
    assert_eq!(h.sim().inbound.len(), 30);
    assert_eq!(
        h.conn.budget_wanted(SCRATCH, &h.budget),
        Some(20 + PENDING_OVERHEAD)
    );
    assert!(!h.budget.fits(20 + PENDING_OVERHEAD));
    h.drain(100);
    h.run();
    assert_eq!(h.sim().written, binary(50));
}

#[test]
fn a_budget_too_small_to_keep_anything_keeps_no_one_waiting() {
    let mut h = Harness::echo_budgeted(64, 4, PENDING_OVERHEAD);
    h.send(&binary(10));
    h.run();
    assert_eq!(h.sim().written, binary(4), "echoes what the socket takes");
    assert_eq!(h.conn.budget_wanted(SCRATCH, &h.budget), None);
    h.drain(100);
    h.run();
    assert_eq!(h.sim().written, binary(10));
}
