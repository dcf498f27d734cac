//! The closed-loop load generator: one thread, one level-triggered epoll
//! set, N connections with one message in flight on each. On every
//! connection: write the message, read the whole echo back, check it byte
//! for byte, write the next one at once.
//!
//! Every message is a window of a fixed pseudo-random pattern whose offset
//! depends on the connection and the round, so an echo of another
//! connection's bytes, of the previous round's or with a bit flipped is a
//! mismatch, and checking costs one `memcmp`.
//!
//! Latency is closed-loop: from just before a message is written to the
//! moment its whole echo has been read. With N connections in flight it is
//! about N over the throughput (Little's law).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Pattern offsets cycle through this many values (a prime, so that
/// neighbouring connections and rounds get different windows).
const OFFSETS: usize = 251;
const EVENTS: usize = 1024;
const READ_BUFFER: usize = 64 * 1024;
/// No echo completed at all for this long: the server is stuck or gone.
const STALL: Duration = Duration::from_secs(10);
/// Latency histogram range in nanoseconds: 1 ns to 100 s, 3 digits.
const LATENCY_MAX_NS: u64 = 100_000_000_000;

struct Conn {
    fd: OwnedFd,
    round: u64,
    /// Bytes of the current message written so far.
    written: usize,
    /// Bytes of its echo read and checked so far.
    received: usize,
    sent_at: Instant,
    /// Registered for `EPOLLOUT` too (a write was short).
    want_out: bool,
}

/// N connections to one echo server and the loop that keeps them busy.
pub struct Load {
    epfd: OwnedFd,
    conns: Vec<Conn>,
    size: usize,
    pattern: Vec<u8>,
    scratch: Vec<u8>,
    events: Vec<libc::epoll_event>,
    /// Round trips completed since the start.
    pub completed: u64,
    /// Connections that have not completed their first round trip yet.
    pub not_started: usize,
    /// Connections with a message out whose echo is not all in.
    pub in_flight: usize,
    /// While paused, a connection whose echo is in sends nothing more.
    paused: bool,
    /// Connections left idle by a pause.
    idle: Vec<usize>,
    /// Whether completions go into `latency`.
    pub recording: bool,
    /// Latency of recorded round trips, in nanoseconds.
    pub latency: Histogram<u64>,
    last_progress: Instant,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn errno() -> libc::c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Load {
    /// Opens `connections` connections to `addr` and sends the first message
    /// on each.
    pub fn connect(addr: SocketAddr, connections: usize, size: usize) -> io::Result<Load> {
        // SAFETY: epoll_create1 has no memory arguments; the descriptor is
        // new and owned from here on.
        let epfd =
            unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let pattern = crate::common::pattern(size + OFFSETS);
        let mut load = Load {
            epfd,
            conns: Vec::with_capacity(connections),
            size,
            pattern,
            scratch: vec![0; READ_BUFFER],
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            completed: 0,
            not_started: connections,
            in_flight: 0,
            paused: false,
            idle: Vec::new(),
            recording: false,
            latency: Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3)
                .map_err(|err| io::Error::other(err.to_string()))?,
            last_progress: Instant::now(),
        };
        // Connecting is blocking and one at a time: the kernel completes each
        // handshake whether or not the server has accepted yet, and each
        // server listens with a backlog of 4096, so the accept queue never
        // overflows while the server accepts on its own core.
        for index in 0..connections {
            let stream = TcpStream::connect(addr)
                .map_err(|err| io::Error::new(err.kind(), format!("connection {index}: {err}")))?;
            stream.set_nodelay(true)?;
            stream.set_nonblocking(true)?;
            let fd = unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) };
            load.ctl(libc::EPOLL_CTL_ADD, fd.as_raw_fd(), index, false)?;
            load.conns.push(Conn {
                fd,
                round: 0,
                written: 0,
                received: 0,
                sent_at: Instant::now(),
                want_out: false,
            });
        }
        load.idle = (0..connections).collect();
        load.resume()?;
        Ok(load)
    }

    /// Stops sending new messages and waits (up to `limit`) until every
    /// echo in flight is in, so that neither side has work queued.
    pub fn pause(&mut self, limit: Duration) -> io::Result<()> {
        self.paused = true;
        self.run_until(Instant::now() + limit, |load| load.in_flight == 0)?;
        if self.in_flight > 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} echoes still out after the pause", self.in_flight),
            ));
        }
        Ok(())
    }

    /// Sends the next message on every connection a pause left idle.
    pub fn resume(&mut self) -> io::Result<()> {
        self.paused = false;
        let now = Instant::now();
        for index in std::mem::take(&mut self.idle) {
            self.conns[index].sent_at = now;
            self.in_flight += 1;
            self.send(index)?;
        }
        self.last_progress = now;
        Ok(())
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, index: usize, out: bool) -> io::Result<()> {
        let mut events = libc::EPOLLIN as u32;
        if out {
            events |= libc::EPOLLOUT as u32;
        }
        let mut event = libc::epoll_event {
            events,
            u64: index as u64,
        };
        // SAFETY: epoll_ctl reads one epoll_event we own.
        check(unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut event) }).map(drop)
    }

    fn offset(&self, index: usize, round: u64) -> usize {
        ((index as u64).wrapping_mul(31).wrapping_add(round) % OFFSETS as u64) as usize
    }

    /// Writes what is left of connection `index`'s current message, and
    /// waits for `EPOLLOUT` if the socket takes less.
    fn send(&mut self, index: usize) -> io::Result<()> {
        let offset = self.offset(index, self.conns[index].round);
        let conn = &mut self.conns[index];
        let message = &self.pattern[offset..offset + self.size];
        while conn.written < message.len() {
            let rest = &message[conn.written..];
            // SAFETY: writes from a live slice with its own length.
            let w = unsafe { libc::write(conn.fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
            if w < 0 {
                match errno() {
                    libc::EINTR => continue,
                    libc::EAGAIN => break,
                    _ => return Err(io::Error::last_os_error()),
                }
            }
            conn.written += w as usize;
        }
        let want_out = conn.written < message.len();
        if want_out != conn.want_out {
            conn.want_out = want_out;
            let fd = conn.fd.as_raw_fd();
            self.ctl(libc::EPOLL_CTL_MOD, fd, index, want_out)?;
        }
        Ok(())
    }

    /// Reads once from connection `index` (the set is level-triggered: more
    /// input raises another event), checks the bytes, and on a whole echo
    /// counts it and sends the next message.
    fn receive(&mut self, index: usize) -> io::Result<()> {
        let offset = self.offset(index, self.conns[index].round);
        let conn = &mut self.conns[index];
        let want = (self.size - conn.received).min(self.scratch.len());
        if want == 0 {
            // The whole echo is in but the message is not all written:
            // an echo server cannot do that.
            return Err(io::Error::other(format!(
                "connection {index}: echo ahead of the message"
            )));
        }
        // SAFETY: reads into our own buffer, at most its length.
        let r = unsafe { libc::read(conn.fd.as_raw_fd(), self.scratch.as_mut_ptr().cast(), want) };
        if r < 0 {
            return match errno() {
                libc::EINTR | libc::EAGAIN => Ok(()),
                _ => Err(io::Error::last_os_error()),
            };
        }
        if r == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection {index}: the server closed it"),
            ));
        }
        let r = r as usize;
        let expected = &self.pattern[offset + conn.received..offset + conn.received + r];
        if self.scratch[..r] != *expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "connection {index} round {}: echo differs from the message",
                    conn.round
                ),
            ));
        }
        conn.received += r;
        if conn.received < self.size {
            return Ok(());
        }
        let now = Instant::now();
        if self.recording {
            let nanos = now.duration_since(conn.sent_at).as_nanos() as u64;
            self.latency.saturating_record(nanos.max(1));
        }
        if conn.round == 0 {
            self.not_started -= 1;
        }
        conn.round += 1;
        conn.written = 0;
        conn.received = 0;
        conn.sent_at = now;
        self.completed += 1;
        self.last_progress = now;
        if self.paused {
            self.in_flight -= 1;
            self.idle.push(index);
            return Ok(());
        }
        self.send(index)
    }

    /// Serves events until `deadline`, or earlier once `done` says so
    /// (asked after every batch of events).
    pub fn run_until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&Load) -> bool,
    ) -> io::Result<()> {
        loop {
            let now = Instant::now();
            if now >= deadline || done(self) {
                return Ok(());
            }
            if self.in_flight > 0 && now.duration_since(self.last_progress) > STALL {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no echo completed for {} s", STALL.as_secs()),
                ));
            }
            let wait_ms = (deadline - now).as_millis().clamp(1, 100) as libc::c_int;
            // SAFETY: epoll_wait writes at most EVENTS entries into our Vec.
            let n = unsafe {
                libc::epoll_wait(
                    self.epfd.as_raw_fd(),
                    self.events.as_mut_ptr(),
                    EVENTS as libc::c_int,
                    wait_ms,
                )
            };
            if n < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                return Err(io::Error::last_os_error());
            }
            for i in 0..n as usize {
                let event = self.events[i];
                let index = event.u64 as usize;
                let flags = event.events;
                if flags & libc::EPOLLOUT as u32 != 0 {
                    self.send(index)?;
                }
                if flags & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                    self.receive(index)?;
                }
            }
        }
    }

    /// Closes every connection with a reset (`SO_LINGER` 0), so that no
    /// TIME_WAIT holds loopback ports after the run (a minute each, of about
    /// 28,000 per source and destination).
    pub fn close(self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        for conn in self.conns {
            // SAFETY: setsockopt reads one linger struct we own.
            unsafe {
                libc::setsockopt(
                    conn.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            drop(conn.fd);
        }
    }
}
