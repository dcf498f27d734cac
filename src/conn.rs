//! One peer's state machine: the bytes still owed to it, whether more may be
//! read, and which readiness it waits for.
//!
//! [`Connection`] is generic over the stream so unit tests can drive it with
//! simulated short reads, short writes, `WouldBlock` and errors; the server
//! gives it a `mio::net::TcpStream` and does all the registering itself.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};

use log::trace;
use mio::Interest;

use crate::budget::Budget;
use crate::chargen;
use crate::proxy::ProxyError;

mod owed;

use owed::{Owed, PENDING_OVERHEAD};

/// Bytes of pattern offered to one chargen `write`: the longest window the
/// static pattern has, about as much as one echo read (62 of 64 KiB).
const CHARGEN_WRITE: usize = chargen::MAX_WINDOW;

/// Whether a read that fills less than the buffer, or a write that takes less
/// than offered, proves the socket drained (or full) for now.
///
/// Sound on Linux epoll: a short TCP read means the receive queue was empty,
/// and any byte or FIN arriving later raises a new edge; a short non-blocking
/// TCP write means the send buffer filled, which sets `SOCK_NOSPACE`, so the
/// kernel raises `EPOLLOUT` when room frees. Trusting it saves one `read` or
/// `write` that would only return `WouldBlock` on nearly every event
/// (tokio-rs/tokio#4840, #4970). A FIN that arrived with the data shows only
/// as `read_closed` on the event, so then we read on until the zero read.
/// Bytes or a FIN that arrive while echo is paused at its cap (registered
/// for writing only) raise no edge we see; they are found because the
/// server re-registers for reading once there is room, and Linux reports a
/// socket that is already readable at `EPOLL_CTL_MOD` time.
/// A read that fills its buffer proves nothing, so bulk echo (64 KiB
/// messages into a 64 KiB read) would still pay that extra read; with
/// `TCP_INQ` on, the kernel says with each read how much is still queued,
/// and zero proves the socket drained ([`Stream::read_and_tell`]).
/// Elsewhere (kqueue, level-triggered emulations) we drain to `WouldBlock`.
const SHORT_IO_MEANS_DRAINED: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Reads (and chargen writes) one connection may do per readiness event. A
/// peer that keeps its socket full could otherwise hold the loop forever;
/// at 64 KiB a read this is 1 MiB per turn, far more than any one message.
/// A connection that stops here with work left asks to be re-armed.
const IO_PER_EVENT: u32 = 16;

/// A byte stream a connection can half-close.
pub trait Stream: Read + Write {
    /// Shuts down the sending side (sends FIN), leaving reads open.
    fn shutdown_write(&self) -> io::Result<()>;

    /// Copies up to `buf.len()` queued bytes without taking them from the
    /// socket (`MSG_PEEK`); 0 means the peer's FIN is next.
    fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Reads like [`Read::read`], and says whether bytes were still queued
    /// after this read when the OS can tell: `Some(false)` proves the
    /// socket drained even if the read filled `buf`, which saves the read
    /// that would only say `WouldBlock`. `None` when it cannot tell.
    fn read_and_tell(&mut self, buf: &mut [u8]) -> io::Result<(usize, Option<bool>)> {
        self.read(buf).map(|n| (n, None))
    }
}

impl Stream for mio::net::TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        mio::net::TcpStream::peek(self, buf)
    }

    #[cfg(target_os = "linux")]
    fn read_and_tell(&mut self, buf: &mut [u8]) -> io::Result<(usize, Option<bool>)> {
        // mio's epoll source needs no bookkeeping around reads, so reading
        // the descriptor directly is what `read` would do.
        crate::sys::read_and_tell(self, buf)
    }
}

/// Why a connection was closed: one word or two for the debug log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed (EOF) and everything owed was sent.
    PeerClosed,
    /// The peer reset the connection or stopped reading for good.
    Reset,
    /// No traffic for the idle timeout.
    IdleTimeout,
    /// Daytime's line was sent but the peer neither closed nor reset in time.
    LingerTimeout,
    /// The server shut down.
    Shutdown,
    /// Refused once its PROXY header named a peer that `--allow` or
    /// `--per-source` turns away.
    Refused,
    /// Its PROXY header is malformed, oversized or missing.
    BadProxyHeader(ProxyError),
    /// No complete PROXY header within the time allowed after accept.
    ProxyHeaderTimeout,
    /// Any other I/O error on this connection.
    Error(io::ErrorKind),
}

impl CloseReason {
    /// The reason for an I/O error on one connection.
    pub fn from_error(err: &io::Error) -> CloseReason {
        match err.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => CloseReason::Reset,
            kind => CloseReason::Error(kind),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("peer closed"),
            CloseReason::Reset => f.write_str("reset by peer"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::LingerTimeout => f.write_str("linger timeout"),
            CloseReason::Shutdown => f.write_str("shutdown"),
            CloseReason::Refused => f.write_str("refused"),
            CloseReason::BadProxyHeader(err) => write!(f, "{err}"),
            CloseReason::ProxyHeaderTimeout => f.write_str("no PROXY header in time"),
            CloseReason::Error(kind) => write!(f, "error: {kind}"),
        }
    }
}

/// `conn {token} {peer}`: the prefix of every per-connection log line, so
/// that `grep "conn 42 "` tells one connection's story.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    /// The connection's token (its slab key).
    pub token: usize,
    /// The peer's address.
    pub peer: SocketAddr,
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn {} {}", self.token, self.peer)
    }
}

/// What a connection does with the bytes it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Sends back what it reads.
    Echo,
    /// Sends what it owes from the start (daytime's line, time's four
    /// bytes), then closes the lingering way.
    Announce,
    /// Reads and throws away.
    Discard,
    /// Sends the chargen pattern from `position` (below
    /// [`chargen::CYCLE`]) on; throws input away.
    Chargen { position: u16 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Echo: reading and echoing. Announce: sending what it owes.
    /// Discard, chargen: the only phase.
    Serving,
    /// Echo: the peer half-closed; flush what is owed, then close.
    PeerDone,
    /// Announce: the bytes are sent and our side shut down; discard input
    /// until the peer closes, so that closing cannot reset them away.
    Lingering,
}

/// One peer: the bytes we still owe it and whether we may read more.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    label: Label,
    role: Role,
    phase: Phase,
    owed: Owed,
    /// Owed bytes at most; at the cap reading stops until the peer drains.
    /// 32 bits, as every connection keeps one: 4 GiB owed to one peer is
    /// past any sane `--max-pending`.
    pending_limit: u32,
    /// Set on server shutdown: close as soon as nothing is owed and no input
    /// is waiting.
    close_when_idle: bool,
    /// Stopped at [`IO_PER_EVENT`] with work left: the poll must report it
    /// again, as no new edge will come.
    yielded: bool,
    /// Echo: the budget could not cover what a read might leave owed, and
    /// the send side is blocked, so input waits in the kernel until the
    /// socket takes more (a writable edge, which the blocked write
    /// guarantees) or the budget's wait list wakes it.
    send_first: bool,
    bytes_in: u64,
    bytes_out: u64,
}

impl<S: Stream> Connection<S> {
    /// An echo connection that owes at most `pending_limit` bytes (at least 1).
    pub fn echo(stream: S, label: Label, pending_limit: usize) -> Self {
        Connection::new(stream, label, Role::Echo, pending_limit)
    }

    /// A daytime connection that owes `line` and nothing else.
    ///
    /// The line is charged to `budget` even past its limit: it cannot be
    /// read less of, it is a few dozen bytes, and the server writes it into
    /// the new socket's empty send buffer at once, which frees it. So the
    /// most it can add over the limit is one line per connection whose
    /// first write did not take 30 bytes.
    pub fn daytime(stream: S, label: Label, line: &[u8], budget: &Budget) -> Self {
        Connection::announcing(stream, label, line, budget)
    }

    /// A time connection that owes the four bytes of RFC 868, charged as
    /// daytime's line is.
    pub fn time(stream: S, label: Label, now: [u8; 4], budget: &Budget) -> Self {
        Connection::announcing(stream, label, &now, budget)
    }

    /// A discard connection: reads everything, writes nothing.
    pub fn discard(stream: S, label: Label) -> Self {
        Connection::new(stream, label, Role::Discard, 1)
    }

    /// A chargen connection: writes the pattern as fast as the peer reads,
    /// straight from the static pattern, so it owes nothing itself.
    pub fn chargen(stream: S, label: Label) -> Self {
        Connection::new(stream, label, Role::Chargen { position: 0 }, 1)
    }

    fn announcing(stream: S, label: Label, answer: &[u8], budget: &Budget) -> Self {
        let mut conn = Connection::new(stream, label, Role::Announce, answer.len());
        conn.owed.extend(answer, conn.limit(), budget);
        conn
    }

    fn new(stream: S, label: Label, role: Role, pending_limit: usize) -> Self {
        Connection {
            stream,
            label,
            role,
            phase: Phase::Serving,
            owed: Owed::default(),
            pending_limit: u32::try_from(pending_limit.max(1)).unwrap_or(u32::MAX),
            close_when_idle: false,
            yielded: false,
            send_first: false,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    fn limit(&self) -> usize {
        self.pending_limit as usize
    }

    /// The stream, for registering it with a poll.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// `conn {token} {peer}`.
    pub fn label(&self) -> Label {
        self.label
    }

    /// Names the peer a PROXY header carried, for the logs from now on.
    pub fn set_peer(&mut self, peer: SocketAddr) {
        self.label.peer = peer;
    }

    /// Bytes read from the peer so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// Bytes written to the peer so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// Bytes read but not yet written back.
    pub fn owed(&self) -> usize {
        self.owed.len()
    }

    /// Whether it stopped with work left on its last event, to let other
    /// connections have a turn; the caller must ask the poll to report it
    /// again (re-register), or it would wait for an edge that never comes.
    pub fn yielded(&self) -> bool {
        self.yielded
    }

    /// Echo: when it stopped reading only because the budget could not
    /// cover what a read might leave owed (its send side is full, so
    /// nothing of its own wakes it before its peer reads), the bytes the
    /// budget must cover before it reads again, with `scratch_len` the
    /// read buffer's length. `None` when it waits for nothing from the
    /// budget, and when the budget is too small ever to cover it.
    pub fn budget_wanted(&self, scratch_len: usize, budget: &Budget) -> Option<usize> {
        if !self.send_first || self.phase != Phase::Serving {
            return None;
        }
        let room = self.limit() - self.owed.len();
        let keep = keep_size(room.min(scratch_len), budget);
        (keep > 0).then_some(keep + PENDING_OVERHEAD)
    }

    /// Whether this is a daytime or time connection waiting for its peer to
    /// close.
    pub fn is_lingering(&self) -> bool {
        self.phase == Phase::Lingering
    }

    /// From now on, close as soon as nothing is owed and no input waits.
    /// Echo keeps echoing what its peer already sent meanwhile.
    pub fn close_when_idle(&mut self) {
        self.close_when_idle = true;
    }

    /// Reads and writes until `WouldBlock`, the cap or the end, using
    /// `scratch` (shared by every connection) for what it reads and
    /// `budget` (shared too) for what it has to keep.
    /// `read_closed` says the event that woke us carried the peer's FIN.
    /// Returns `Some(reason)` when the connection should be closed now.
    pub fn on_ready(
        &mut self,
        scratch: &mut [u8],
        read_closed: bool,
        budget: &Budget,
    ) -> Option<CloseReason> {
        self.yielded = false;
        self.send_first = false;
        let result = match self.role {
            Role::Echo => self.serve_echo(scratch, read_closed, budget),
            Role::Announce => self.serve_announce(scratch, read_closed),
            Role::Discard => self.serve_discard(scratch, read_closed),
            Role::Chargen { position } => {
                self.serve_chargen(scratch, read_closed, usize::from(position))
            }
        };
        result.unwrap_or_else(|err| Some(CloseReason::from_error(&err)))
    }

    /// The readiness this connection waits for now; `None` means none
    /// (deregister it).
    pub fn interest(&self) -> Option<Interest> {
        let read = match (self.phase, self.role) {
            (Phase::Serving, Role::Echo) => self.owed.len() < self.limit() && !self.send_first,
            (Phase::Serving, Role::Announce) => false,
            (Phase::Serving, Role::Discard | Role::Chargen { .. }) => true,
            (Phase::PeerDone, _) => false,
            (Phase::Lingering, _) => true,
        };
        let write =
            !self.owed.is_empty() || self.send_first || matches!(self.role, Role::Chargen { .. });
        match (read, write) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }

    /// Echo under a budget. While the budget covers whatever a read might
    /// leave owed, read and echo as always: write straight from `scratch`,
    /// keep only what a short write leaves. When it does not (hostile or
    /// slow peers hold it), a connection that owes nothing reads only what
    /// its socket takes back at once: it peeks, writes, and then takes from
    /// the socket exactly the bytes the write took. It keeps nothing, so a
    /// full budget costs a reader that keeps up one extra syscall per
    /// message and no latency, while a connection whose socket is full
    /// reads nothing more: TCP holds its peer's bytes, and flow control
    /// slows that peer alone. It reads again when its peer drains it, or
    /// when the server's wait list wakes it because the total fell (see
    /// [`Connection::budget_wanted`]).
    ///
    /// Worst case: reads that may leave bytes owed are only made when
    /// [`Budget::covers`] the whole read plus its storage, and storage grows
    /// by no more than that; peeked echo keeps nothing. So echo never takes
    /// the total past `--max-buffered`. Only daytime and time answers are
    /// charged regardless (see [`Connection::daytime`]).
    fn serve_echo(
        &mut self,
        scratch: &mut [u8],
        read_closed: bool,
        budget: &Budget,
    ) -> io::Result<Option<CloseReason>> {
        // Until an operation says otherwise, assume we may do it: events are
        // hints, and a stale one only costs a WouldBlock.
        let mut writable = true;
        let mut readable = self.phase == Phase::Serving;
        let mut io_left = IO_PER_EVENT;
        loop {
            if writable && !self.owed.is_empty() {
                writable = self.flush()?;
            }
            if self.phase == Phase::PeerDone && self.owed.is_empty() {
                return Ok(Some(CloseReason::PeerClosed));
            }
            let room = self.limit() - self.owed.len();
            if !readable || room == 0 {
                // At the cap the peer's bytes wait in the kernel; once a
                // flush makes room, the loop above reads them at once, as a
                // paused reader gets no new edge (mio's "draining
                // readiness"; a paused read is not a drained one).
                break;
            }
            let want = room.min(scratch.len());
            let keep = keep_size(want, budget);
            let may_keep = keep > 0 && budget.covers(keep + PENDING_OVERHEAD);
            let may_peek = writable && self.owed.is_empty();
            if !may_keep && !may_peek {
                // Owed bytes go first, and a blocked socket takes nothing
                // back: wait for the writable edge the blocked write set
                // up, or for the budget to fall (the server's wait list
                // asks `budget_wanted`).
                self.send_first = true;
                break;
            }
            if io_left == 0 {
                self.yielded = true;
                break;
            }
            io_left -= 1;
            let want = if may_keep { keep } else { want };
            let outcome = if may_keep {
                self.read_and_echo(&mut scratch[..want], &mut writable, budget)?
            } else {
                self.echo_what_the_socket_takes(&mut scratch[..want])?
                    .map(|(n, blocked)| {
                        if blocked {
                            writable = false;
                            self.send_first = true;
                            readable = false;
                        }
                        (n, None)
                    })
            };
            let Some((n, queued)) = outcome else {
                readable = false;
                continue;
            };
            if n == 0 {
                trace!("{} read EOF", self.label);
                self.phase = Phase::PeerDone;
                readable = false;
            } else if drained(n, want, queued) && !read_closed {
                readable = false;
            }
        }
        // A yielded connection, or one whose input waits for its send side,
        // still has input: it is not idle.
        if self.close_when_idle
            && self.owed.is_empty()
            && self.phase == Phase::Serving
            && !self.yielded
            && !self.send_first
        {
            return Ok(Some(CloseReason::Shutdown));
        }
        Ok(None)
    }

    /// Reads up to `buf.len()` bytes and echoes them straight from `buf`
    /// while `writable`; only what a short write leaves is kept in `owed`.
    /// `Some((read, queued))` as [`Stream::read_and_tell`] says, with 0 at
    /// the peer's FIN; `None` when nothing is queued.
    fn read_and_echo(
        &mut self,
        buf: &mut [u8],
        writable: &mut bool,
        budget: &Budget,
    ) -> io::Result<Option<(usize, Option<bool>)>> {
        let (n, queued) = loop {
            match self.stream.read_and_tell(buf) {
                Ok(read) => break read,
                Err(err) if would_block(&err) => return Ok(None),
                Err(err) if interrupted(&err) => {}
                Err(err) => return Err(err),
            }
        };
        if n == 0 {
            return Ok(Some((0, queued)));
        }
        self.bytes_in += n as u64;
        trace!("{} read {n}", self.label);
        let chunk = &buf[..n];
        let sent = if *writable && self.owed.is_empty() {
            let (sent, blocked) = self.write_some(chunk)?;
            *writable = !blocked;
            sent
        } else {
            0
        };
        self.owed.extend(&chunk[sent..], self.limit(), budget);
        Ok(Some((n, queued)))
    }

    /// Peeks at up to `buf.len()` queued bytes, writes them, and takes from
    /// the socket exactly what the write took, so nothing is kept.
    /// `Some((peeked, blocked))`, with 0 peeked at the peer's FIN; `None`
    /// when nothing is queued.
    fn echo_what_the_socket_takes(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, bool)>> {
        let peeked = loop {
            match self.stream.peek(buf) {
                Ok(n) => break n,
                Err(err) if would_block(&err) => return Ok(None),
                Err(err) if interrupted(&err) => {}
                Err(err) => return Err(err),
            }
        };
        if peeked == 0 {
            return Ok(Some((0, false)));
        }
        let (sent, blocked) = self.write_some(&buf[..peeked])?;
        // The peeked bytes are still first in the receive queue, so this
        // takes exactly the ones just sent.
        // An error here would echo these bytes twice: close instead.
        take_exactly(&mut self.stream, &mut buf[..sent])?;
        self.bytes_in += sent as u64;
        trace!("{} peeked {peeked}, echoed and took {sent}", self.label);
        Ok(Some((peeked, blocked)))
    }

    /// Reads and drops input until the socket is drained, the budget is
    /// spent, or the peer closes; `Some` if the connection should close.
    fn drain_input(
        &mut self,
        scratch: &mut [u8],
        read_closed: bool,
    ) -> io::Result<Option<CloseReason>> {
        for _ in 0..IO_PER_EVENT {
            match self.stream.read_and_tell(scratch) {
                Ok((0, _)) => {
                    trace!("{} read EOF", self.label);
                    return Ok(Some(CloseReason::PeerClosed));
                }
                Ok((n, queued)) => {
                    self.bytes_in += n as u64;
                    trace!("{} read {n}, discarded", self.label);
                    if drained(n, scratch.len(), queued) && !read_closed {
                        return Ok(None);
                    }
                }
                Err(err) if would_block(&err) => return Ok(None),
                Err(err) if interrupted(&err) => {}
                Err(err) => return Err(err),
            }
        }
        self.yielded = true;
        Ok(None)
    }

    fn serve_discard(
        &mut self,
        scratch: &mut [u8],
        read_closed: bool,
    ) -> io::Result<Option<CloseReason>> {
        if let Some(reason) = self.drain_input(scratch, read_closed)? {
            return Ok(Some(reason));
        }
        if self.close_when_idle && !self.yielded {
            return Ok(Some(CloseReason::Shutdown));
        }
        Ok(None)
    }

    /// Writes the pattern until the socket is full. The peer's input is
    /// read and dropped, and its EOF ends the connection: RFC 864 stops when
    /// the user closes.
    fn serve_chargen(
        &mut self,
        scratch: &mut [u8],
        read_closed: bool,
        mut position: usize,
    ) -> io::Result<Option<CloseReason>> {
        if let Some(reason) = self.drain_input(scratch, read_closed)? {
            return Ok(Some(reason));
        }
        if self.close_when_idle {
            // Chargen never runs out of bytes to send: at shutdown it has
            // nothing owed, so it stops at once.
            return Ok(Some(CloseReason::Shutdown));
        }
        let mut blocked = false;
        for _ in 0..IO_PER_EVENT {
            let window = chargen::window(position, CHARGEN_WRITE);
            let (sent, full) = self.write_some(window)?;
            position = chargen::advance(position, sent);
            if full {
                blocked = true;
                break;
            }
        }
        // `advance` keeps it below CYCLE, which fits in 16 bits.
        self.role = Role::Chargen {
            position: position as u16,
        };
        if !blocked {
            self.yielded = true;
        }
        Ok(None)
    }

    fn serve_announce(
        &mut self,
        scratch: &mut [u8],
        read_closed: bool,
    ) -> io::Result<Option<CloseReason>> {
        if self.phase == Phase::Serving {
            self.flush()?;
            if !self.owed.is_empty() {
                return Ok(None);
            }
            // The FIN tells the client the answer is complete; it answers by
            // closing, which ends our linger below.
            self.stream.shutdown_write()?;
            self.phase = Phase::Lingering;
        }
        self.drain_input(scratch, read_closed)
    }

    /// Writes what is owed; returns whether the socket may take more.
    fn flush(&mut self) -> io::Result<bool> {
        let (sent, blocked) = write_some(&mut self.stream, self.owed.as_slice(), self.label)?;
        self.bytes_out += sent as u64;
        self.owed.consume(sent);
        Ok(!blocked)
    }

    /// Writes as much of `bytes` as the socket takes now: (sent, blocked).
    fn write_some(&mut self, bytes: &[u8]) -> io::Result<(usize, bool)> {
        let (sent, blocked) = write_some(&mut self.stream, bytes, self.label)?;
        self.bytes_out += sent as u64;
        Ok((sent, blocked))
    }
}

/// Writes as much of `bytes` as `stream` takes now. Never `write_all`: a
/// non-blocking socket says `WouldBlock` instead of waiting.
fn write_some(stream: &mut impl Write, bytes: &[u8], label: Label) -> io::Result<(usize, bool)> {
    let mut sent = 0;
    while sent < bytes.len() {
        match stream.write(&bytes[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                sent += n;
                trace!("{label} wrote {n}");
                if SHORT_IO_MEANS_DRAINED && sent < bytes.len() {
                    return Ok((sent, true));
                }
            }
            Err(err) if would_block(&err) => return Ok((sent, true)),
            Err(err) if interrupted(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Ok((sent, false))
}

/// Reads exactly `buf.len()` bytes that a peek showed are queued, so that
/// they are taken from the socket and nothing after them is.
pub(crate) fn take_exactly(stream: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    let mut taken = 0;
    while taken < buf.len() {
        match stream.read(&mut buf[taken..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => taken += n,
            Err(err) if interrupted(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// How much of a `want`-byte read may be kept under `budget`: no more than
/// the whole budget can hold beside the storage's own cost, so that what
/// a held-back connection waits for is a total the budget can reach.
fn keep_size(want: usize, budget: &Budget) -> usize {
    want.min(budget.limit().saturating_sub(PENDING_OVERHEAD))
}

/// Whether a read of `n` bytes (of `want` asked) left the socket drained:
/// the kernel said nothing was queued after it, or it was short.
fn drained(n: usize, want: usize, queued: Option<bool>) -> bool {
    SHORT_IO_MEANS_DRAINED && (queued == Some(false) || n < want)
}

/// The socket has nothing more for us now (or no room).
pub(crate) fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// A signal interrupted the call: just retry it.
pub(crate) fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}

#[cfg(test)]
mod tests;
