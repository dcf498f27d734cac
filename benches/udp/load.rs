//! The load generator: one thread, one level-triggered epoll set over N
//! connected UDP sockets ("flows"). Each flow keeps one burst of B
//! datagrams in flight: it sends the burst with one `sendmmsg`, collects
//! the echoes with `recvmmsg`, checks each byte for byte, and sends the
//! next burst once every echo of this one is in, or once `LOSS_AFTER` has
//! passed (the echoes still missing then count as lost). B = 1 is the
//! plain closed loop, one datagram in flight per flow.
//!
//! What bounds it: with B = 1 this one thread makes about as many syscalls
//! per datagram as the server does, and it is the bottleneck. A measurement
//! made here found minetd, a plain C loop and a `recvmmsg` C loop all
//! within ±5% at 1, 64 and 1,000 flows × 64 B, all held at ~280k
//! datagrams/s by a one-thread epoll generator. So those cells show that a
//! server costs nothing extra, not which server is fastest; CPU per
//! datagram is what compares them. With bursts (B = 4 in the default
//! cells) each generator syscall carries B datagrams, the generator outruns
//! the server, and the server's socket has many datagrams queued at each
//! wake-up: the cell where batching can pay. What can be queued is bounded
//! by the server socket's receive buffer (the default 208 KiB holds a few
//! hundred small datagrams, fewer large ones): more in flight than that
//! (1,000 flows, or bigger bursts) is lost there, and counted.
//!
//! Each datagram is 8 bytes of sequence number (little-endian, counting
//! per flow) and then a window of a fixed pseudo-random pattern whose
//! offset depends on the flow and the sequence number: an echo of another
//! flow's datagram, or with a bit flipped, is a mismatch; an echo of a
//! datagram from an earlier burst (one already counted lost) is late.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::mmsg::Batch;

/// An echo not in after this long is lost, and its flow goes on.
pub const LOSS_AFTER: Duration = Duration::from_millis(200);
/// How often flows are checked for lost echoes.
const LOSS_SCAN: Duration = Duration::from_millis(20);
/// No echo at all for this long: the server is stuck or gone.
const STALL: Duration = Duration::from_secs(10);
/// Pattern offsets cycle through this many values (a prime).
const OFFSETS: usize = 251;
const EVENTS: usize = 1024;
/// Sequence number at the start of each datagram.
const HEADER: usize = 8;
/// Echoes taken per `recvmmsg` call.
const RECV_BATCH: usize = 64;

struct Flow {
    socket: UdpSocket,
    /// Sequence number of the first datagram of the burst in flight.
    first: u64,
    /// Which datagrams of that burst have been answered (bit i = first + i).
    answered: u64,
    sent_at: Instant,
}

/// N flows to one UDP echo server, and the loop that keeps them busy.
pub struct Load {
    epfd: OwnedFd,
    flows: Vec<Flow>,
    size: usize,
    burst: usize,
    pattern: Vec<u8>,
    outgoing: Batch,
    incoming: Batch,
    events: Vec<libc::epoll_event>,
    /// Datagrams echoed and checked since the start.
    pub answered: u64,
    pub lost: u64,
    pub late: u64,
    pub mismatches: u64,
    last_progress: Instant,
    last_scan: Instant,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Load {
    /// Opens `flows` connected sockets to `addr` and sends the first burst
    /// of `burst` datagrams of `size` bytes on each.
    pub fn start(addr: SocketAddr, flows: usize, size: usize, burst: usize) -> io::Result<Load> {
        if size < HEADER || !(1..=64).contains(&burst) {
            return Err(io::Error::other(format!(
                "size {size} (at least {HEADER}) or burst {burst} (1 to 64) out of range"
            )));
        }
        // SAFETY: epoll_create1 has no memory arguments; the descriptor is
        // new and owned from here on.
        let epfd =
            unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let mut load = Load {
            epfd,
            flows: Vec::with_capacity(flows),
            size,
            burst,
            pattern: crate::common::pattern(size + OFFSETS),
            outgoing: Batch::new(burst, size, false),
            // One byte more than a datagram: an echo that is too long shows.
            incoming: Batch::new(RECV_BATCH, size + 1, false),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            answered: 0,
            lost: 0,
            late: 0,
            mismatches: 0,
            last_progress: Instant::now(),
            last_scan: Instant::now(),
        };
        for index in 0..flows {
            let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            socket.connect(addr)?;
            socket.set_nonblocking(true)?;
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: index as u64,
            };
            // SAFETY: epoll_ctl reads one epoll_event we own.
            check(unsafe {
                libc::epoll_ctl(
                    load.epfd.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    socket.as_raw_fd(),
                    &mut event,
                )
            })?;
            load.flows.push(Flow {
                socket,
                first: 0,
                answered: 0,
                sent_at: Instant::now(),
            });
        }
        for index in 0..flows {
            load.send_burst(index);
        }
        Ok(load)
    }

    fn offset(index: usize, seq: u64) -> usize {
        ((index as u64).wrapping_mul(31).wrapping_add(seq) % OFFSETS as u64) as usize
    }

    /// Sends flow `index`'s current burst.
    fn send_burst(&mut self, index: usize) {
        let first = self.flows[index].first;
        for i in 0..self.burst {
            let seq = first + i as u64;
            let offset = Self::offset(index, seq);
            let body = &self.pattern[offset..][..self.size - HEADER];
            let slot = self.outgoing.slot_mut(i);
            slot[..HEADER].copy_from_slice(&seq.to_le_bytes());
            slot[HEADER..self.size].copy_from_slice(body);
            self.outgoing.set_len(i, self.size);
        }
        let flow = &mut self.flows[index];
        flow.sent_at = Instant::now();
        flow.answered = 0;
        // A datagram the kernel refuses is never answered: lost, in time.
        self.outgoing.send(flow.socket.as_raw_fd(), 0, self.burst);
    }

    /// The next burst on flow `index`, after this one is done.
    fn next_burst(&mut self, index: usize) {
        self.flows[index].first += self.burst as u64;
        self.send_burst(index);
    }

    /// Takes every echo waiting on flow `index` and checks it.
    fn receive(&mut self, index: usize) -> io::Result<()> {
        let fd = self.flows[index].socket.as_raw_fd();
        loop {
            let received = match self.incoming.recv(fd, RECV_BATCH) {
                Ok(received) => received,
                // ECONNREFUSED: an ICMP error (the server is gone); the
                // echoes are lost and the stall check ends the run.
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => 0,
                Err(err) => return Err(err),
            };
            for i in 0..received {
                self.check_echo(index, i);
            }
            if received < RECV_BATCH {
                return Ok(());
            }
        }
    }

    fn check_echo(&mut self, index: usize, slot: usize) {
        let echo = self.incoming.received(slot);
        let flow = &self.flows[index];
        let Some(seq) = echo
            .get(..HEADER)
            .map(|header| u64::from_le_bytes(header.try_into().expect("8 bytes")))
        else {
            self.mismatches += 1;
            return;
        };
        if seq < flow.first {
            self.late += 1;
            return;
        }
        let bit = seq - flow.first;
        let offset = Self::offset(index, seq);
        if bit >= self.burst as u64
            || flow.answered & (1 << bit) != 0
            || echo.len() != self.size
            || echo[HEADER..] != self.pattern[offset..][..self.size - HEADER]
        {
            self.mismatches += 1;
            return;
        }
        self.answered += 1;
        self.last_progress = Instant::now();
        let flow = &mut self.flows[index];
        flow.answered |= 1 << bit;
        if flow.answered.count_ones() as usize == self.burst {
            self.next_burst(index);
        }
    }

    /// Counts as lost what flows have waited for too long, and moves them on.
    fn scan_for_losses(&mut self, now: Instant) {
        for index in 0..self.flows.len() {
            let flow = &self.flows[index];
            if now.duration_since(flow.sent_at) > LOSS_AFTER {
                self.lost += (self.burst - flow.answered.count_ones() as usize) as u64;
                self.next_burst(index);
            }
        }
    }

    /// Runs the flows until `deadline`.
    pub fn run_until(&mut self, deadline: Instant) -> io::Result<()> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            if now.duration_since(self.last_progress) > STALL {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no echo for {} s", STALL.as_secs()),
                ));
            }
            if now.duration_since(self.last_scan) >= LOSS_SCAN {
                self.last_scan = now;
                self.scan_for_losses(now);
            }
            let wait_ms = (deadline - now).min(LOSS_SCAN).as_millis().max(1) as libc::c_int;
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
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io::Error::last_os_error());
            }
            for i in 0..n as usize {
                let index = self.events[i].u64 as usize;
                self.receive(index)?;
            }
        }
    }
}
