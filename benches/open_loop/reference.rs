//! The reference open loop: an echo load generator built the way wrk2 and
//! tcpkali are, one thread, non-blocking sockets in one level-triggered
//! epoll set, a timerfd for pacing. It keeps the same schedule as
//! `minetd-client bench --rate` (message `seq` of connection `i` due at
//! `start + (seq × N + i) / rate`, one message in flight per connection, a
//! message due while its connection waits for an echo written as soon as
//! the echo is in) and counts the same way, so the two can be set side by
//! side: where this one also falls short of a rate, the machine did, not
//! the blocking client's threads.
//!
//! Every echo is checked (a window of a fixed pattern per connection and
//! message). A 64-byte message on a socket with at most one message in
//! flight is always taken whole by `write`, so a short write is reported as
//! an error rather than handled.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use hdrhistogram::Histogram;

/// Pattern offsets cycle through this many values (a prime).
const OFFSETS: usize = 251;
const EVENTS: usize = 1024;
/// The timer's token; connections are 0..N.
const TIMER: u64 = u64::MAX;
/// The same pacing step as the client's sender: after writing what is due,
/// sleep at least this long.
const QUANTUM_NS: u64 = 250_000;
/// Echoes still out this long after the last send: give up on them.
const DRAIN_NS: u64 = 10_000_000_000;

/// What one run achieved.
pub struct Outcome {
    /// Round trips due inside the run and completed.
    pub round_trips: u64,
    /// Those per second, from the start to the last echo (as `bench`).
    pub rps: f64,
    /// 99th percentile from each message's due time to its echo, µs.
    pub p99_us: f64,
    pub mismatches: u64,
}

struct Conn {
    stream: TcpStream,
    /// Messages written.
    sent: u64,
    /// Bytes of the current echo read so far.
    received: usize,
    /// An echo is awaited.
    busy: bool,
}

/// Where message `seq` of connection `index` starts in the pattern.
fn offset(index: usize, seq: u64) -> usize {
    ((index as u64 * 31 + seq) % OFFSETS as u64) as usize
}

/// The monotonic clock in nanoseconds (the clock timerfd keeps).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

struct Run {
    conns: Vec<Conn>,
    pattern: Vec<u8>,
    incoming: Vec<u8>,
    size: usize,
    start: u64,
    end: u64,
    rate: f64,
    latency: Histogram<u64>,
    round_trips: u64,
    mismatches: u64,
    finished: u64,
    in_flight: usize,
}

impl Run {
    fn due(&self, index: usize, seq: u64) -> u64 {
        let slot = seq * self.conns.len() as u64 + index as u64;
        self.start + (slot as f64 * 1e9 / self.rate) as u64
    }

    fn message(&self, index: usize, seq: u64) -> &[u8] {
        &self.pattern[offset(index, seq)..offset(index, seq) + self.size]
    }

    /// Writes connection `index`'s next message if it is due by `now`.
    fn send_if_due(&mut self, index: usize, now: u64) -> io::Result<()> {
        let seq = self.conns[index].sent;
        let due = self.due(index, seq);
        if self.conns[index].busy || due > now || due >= self.end {
            return Ok(());
        }
        let message = &self.pattern[offset(index, seq)..offset(index, seq) + self.size];
        let conn = &mut self.conns[index];
        let written = (&conn.stream).write(message)?;
        if written != message.len() {
            return Err(io::Error::other(format!(
                "short write on connection {index}"
            )));
        }
        conn.sent += 1;
        conn.busy = true;
        conn.received = 0;
        self.in_flight += 1;
        Ok(())
    }

    /// Reads what connection `index` has; on a whole echo, checks and
    /// counts it and sends the next message if that is due already.
    fn receive(&mut self, index: usize) -> io::Result<()> {
        let size = self.size;
        let conn = &mut self.conns[index];
        let want = size - conn.received;
        let n = match (&conn.stream).read(&mut self.incoming[conn.received..size]) {
            Ok(0) => return Err(io::Error::other(format!("connection {index} closed"))),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) => return Err(err),
        };
        conn.received += n;
        if n < want {
            return Ok(());
        }
        conn.busy = false;
        self.in_flight -= 1;
        let seq = conn.sent - 1;
        let now = now_ns();
        if self.incoming[..size] != *self.message(index, seq) {
            self.mismatches += 1;
        }
        let due = self.due(index, seq);
        if due >= self.start && due < self.end {
            self.round_trips += 1;
            self.finished = now;
            let _ = self.latency.record((now.saturating_sub(due) / 1000).max(1));
        }
        self.send_if_due(index, now)
    }
}

/// Runs the open loop at `rate` messages per second over `connections`
/// connections of `size`-byte messages for `secs` seconds.
pub fn run(
    addr: SocketAddr,
    connections: usize,
    size: usize,
    rate: f64,
    secs: f64,
) -> io::Result<Outcome> {
    let pattern = crate::common::pattern(size + OFFSETS);
    // Connected and confirmed with one blocking echo each, as `bench`'s
    // ramp does, so the run starts with every connection accepted.
    let mut conns = Vec::with_capacity(connections);
    let mut echo = vec![0; size];
    for index in 0..connections {
        let mut stream = TcpStream::connect(addr)
            .map_err(|err| io::Error::new(err.kind(), format!("connection {index}: {err}")))?;
        stream.set_nodelay(true)?;
        stream.write_all(&pattern[..size])?;
        stream.read_exact(&mut echo)?;
        stream.set_nonblocking(true)?;
        conns.push(Conn {
            stream,
            sent: 0,
            received: 0,
            busy: false,
        });
    }
    // SAFETY: epoll_create1 and timerfd_create take no memory; the
    // descriptors are new and owned from here on.
    let epoll = unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
    let timer = unsafe {
        OwnedFd::from_raw_fd(check(libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        ))?)
    };
    let add = |fd: libc::c_int, token: u64| {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: epoll_ctl reads one epoll_event we own.
        check(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) })
    };
    add(timer.as_raw_fd(), TIMER)?;
    for (index, conn) in conns.iter().enumerate() {
        add(conn.stream.as_raw_fd(), index as u64)?;
    }
    let start = now_ns();
    let mut run = Run {
        conns,
        pattern,
        incoming: vec![0; size],
        size,
        start,
        end: start + (secs * 1e9) as u64,
        rate,
        latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .map_err(|err| io::Error::other(err.to_string()))?,
        round_trips: 0,
        mismatches: 0,
        finished: start,
        in_flight: 0,
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    // The schedule's next slot, walked in due order.
    let (mut next_index, mut next_seq) = (0, 0);
    loop {
        let now = now_ns();
        let mut next_due = run.due(next_index, next_seq);
        while next_due <= now && next_due < run.end {
            run.send_if_due(next_index, now)?;
            next_index += 1;
            if next_index == run.conns.len() {
                next_index = 0;
                next_seq += 1;
            }
            next_due = run.due(next_index, next_seq);
        }
        if next_due >= run.end && run.in_flight == 0 {
            break;
        }
        if now > run.end + DRAIN_NS {
            return Err(io::Error::other(format!(
                "{} echoes still out {} s after the end",
                run.in_flight,
                DRAIN_NS / 1_000_000_000
            )));
        }
        let wake = if next_due < run.end {
            next_due.max(now + QUANTUM_NS)
        } else {
            now + 100_000_000
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (wake / 1_000_000_000) as libc::time_t,
                tv_nsec: (wake % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: timerfd_settime reads one itimerspec we own.
        check(unsafe {
            libc::timerfd_settime(
                timer.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        })?;
        // SAFETY: epoll_wait writes at most `EVENTS` entries into `events`.
        let ready = check(unsafe {
            libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), EVENTS as i32, -1)
        });
        let ready = match ready {
            Ok(n) => n as usize,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        for event in &events[..ready] {
            if event.u64 == TIMER {
                let mut expirations = [0u8; 8];
                // SAFETY: reads 8 bytes into an array we own; EAGAIN is fine.
                unsafe { libc::read(timer.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
            } else {
                run.receive(event.u64 as usize)?;
            }
        }
    }
    let duration = (run.finished - run.start) as f64 / 1e9;
    Ok(Outcome {
        round_trips: run.round_trips,
        rps: if duration > 0.0 {
            run.round_trips as f64 / duration
        } else {
            0.0
        },
        p99_us: run.latency.value_at_quantile(0.99) as f64,
        mismatches: run.mismatches,
    })
}
