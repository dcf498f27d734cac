//! Datagrams in batches: one `recvmmsg` receives up to [`BATCH`] datagrams,
//! each with its peer and, on a wildcard socket, where it arrived; one
//! `sendmmsg` sends the answers, each from the address its request was sent
//! to. With k datagrams queued at a wake-up that is two syscalls per k
//! datagrams instead of two per datagram (`cargo bench --bench udp` measured
//! what that is worth; docs/performance.md).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use super::pktinfo::{Arrival, Control, arrival_in, write_source};
use super::sockaddr_from;

/// Datagrams per `recvmmsg` and per `sendmmsg`. Past a few dozen the two
/// calls' own cost is spread thin (well under a tenth of a microsecond a
/// datagram), while each slot more can cost 64 KiB of resident memory once
/// a peer sends a datagram that large.
pub(crate) const BATCH: usize = 32;

/// Room for the largest UDP payload (65,507 bytes over IPv4, 65,527 over
/// IPv6): no datagram is ever cut. The pages of a slot become resident
/// only as datagrams fill them.
const DATAGRAM_MAX: usize = 65_536;

/// [`BATCH`] slots, each a buffer with its peer address and control
/// messages, and the headers `recvmmsg` and `sendmmsg` take. The headers
/// point into the batch's own heap memory, which never moves or shrinks.
pub(crate) struct Batch {
    buffers: Box<[u8]>,
    names: Box<[libc::sockaddr_storage]>,
    controls: Box<[Control]>,
    iovecs: Box<[libc::iovec]>,
    /// For receiving: slot i's header is `received[i]`.
    received: Box<[libc::mmsghdr]>,
    /// For sending: the first `queued` headers, each to `peers[k]`.
    sending: Box<[libc::mmsghdr]>,
    peers: [SocketAddr; BATCH],
    queued: usize,
}

// SAFETY: the raw pointers in the headers point only into the batch's own
// heap allocations, which move with it; nothing is shared.
unsafe impl Send for Batch {}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

impl Batch {
    /// An empty batch. Its buffers are `BATCH` × 64 KiB of address space,
    /// of which only pages datagrams have written become resident.
    pub(crate) fn new() -> Box<Batch> {
        // SAFETY: all-zero is a valid sockaddr_storage, control buffer,
        // iovec and (empty) mmsghdr.
        let zeroed_slots =
            || -> Box<[libc::mmsghdr]> { (0..BATCH).map(|_| unsafe { zeroed() }).collect() };
        let mut batch = Box::new(Batch {
            buffers: vec![0; BATCH * DATAGRAM_MAX].into_boxed_slice(),
            names: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            controls: vec![[0; 16]; BATCH].into_boxed_slice(),
            iovecs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            received: zeroed_slots(),
            sending: zeroed_slots(),
            peers: [SocketAddr::from(([0, 0, 0, 0], 0)); BATCH],
            queued: 0,
        });
        let batch_ref = &mut *batch;
        for i in 0..BATCH {
            batch_ref.iovecs[i].iov_base =
                batch_ref.buffers[i * DATAGRAM_MAX..].as_mut_ptr().cast();
            let header = &mut batch_ref.received[i].msg_hdr;
            header.msg_name = (&mut batch_ref.names[i] as *mut libc::sockaddr_storage).cast();
            header.msg_iov = &mut batch_ref.iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = batch_ref.controls[i].as_mut_ptr().cast();
        }
        batch
    }

    /// Receives up to `max` (at most [`BATCH`]) datagrams with one
    /// `recvmmsg`, without waiting; returns how many. `WouldBlock` when
    /// none is queued. Earlier answers must have been sent.
    pub(crate) fn receive(&mut self, socket: &impl AsRawFd, max: usize) -> io::Result<usize> {
        let max = max.min(BATCH);
        self.queued = 0;
        for i in 0..max {
            self.iovecs[i].iov_len = DATAGRAM_MAX;
            let header = &mut self.received[i];
            header.msg_len = 0;
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_controllen = size_of::<Control>() as _;
            header.msg_hdr.msg_flags = 0;
        }
        // SAFETY: each of the first `max` headers describes a slot's buffer,
        // name and control buffer, all owned by `self`, of the sizes stated.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.received.as_mut_ptr(),
                max as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last [`receive`](Self::receive): its length, its
    /// peer (`None` if the kernel named none this crate knows), and where it
    /// arrived when the socket reports arrivals.
    pub(crate) fn datagram(&self, i: usize) -> (usize, Option<SocketAddr>, Option<Arrival>) {
        let header = &self.received[i];
        let len = (header.msg_len as usize).min(DATAGRAM_MAX);
        // SAFETY: the kernel filled this header and its control buffer.
        let arrival = unsafe { arrival_in(&header.msg_hdr) };
        (len, sockaddr_from(&self.names[i]), arrival)
    }

    /// Slot `i`'s whole buffer: datagram `i` in its first bytes, and room
    /// to write its answer over it.
    pub(crate) fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.buffers[i * DATAGRAM_MAX..][..DATAGRAM_MAX]
    }

    /// Queues the first `len` bytes of slot `i` as the answer to its peer,
    /// sent from the address `arrival` names, if any (else from the
    /// socket's own address).
    pub(crate) fn answer(
        &mut self,
        i: usize,
        len: usize,
        peer: SocketAddr,
        arrival: Option<Arrival>,
    ) -> io::Result<()> {
        let controllen = match arrival {
            // The request's control buffer is read; it now carries the answer's.
            Some(arrival) => write_source(&mut self.controls[i], peer, arrival)?,
            None => 0,
        };
        self.iovecs[i].iov_len = len.min(DATAGRAM_MAX);
        let received = &self.received[i].msg_hdr;
        let header = &mut self.sending[self.queued];
        header.msg_len = 0;
        // The request's name (its peer), slot and control buffer.
        header.msg_hdr = *received;
        if controllen == 0 {
            header.msg_hdr.msg_control = std::ptr::null_mut();
        }
        header.msg_hdr.msg_controllen = controllen as _;
        header.msg_hdr.msg_flags = 0;
        self.peers[self.queued] = peer;
        self.queued += 1;
        Ok(())
    }

    /// Sends every queued answer, as few `sendmmsg` calls as the kernel
    /// allows, and tells `each` how each went, in order. An answer the
    /// kernel refuses is dropped (UDP may drop it anyway) and the rest are
    /// still sent.
    pub(crate) fn send(
        &mut self,
        socket: &impl AsRawFd,
        mut each: impl FnMut(SocketAddr, io::Result<usize>),
    ) {
        let mut at = 0;
        while at < self.queued {
            // SAFETY: headers `at..queued` were filled by `answer` and point
            // at slots, names and control buffers owned by `self`.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.sending.as_mut_ptr().add(at),
                    (self.queued - at) as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                each(self.peers[at], Err(err));
                at += 1;
                continue;
            }
            for k in at..at + n as usize {
                each(self.peers[k], Ok(self.sending[k].msg_len as usize));
            }
            at += n as usize;
        }
        self.queued = 0;
    }
}
