//! A batch of datagrams for `recvmmsg` / `sendmmsg`: `slots` buffers, each
//! with its own `iovec` and (for an unconnected socket) its own peer
//! address, so that one call receives up to `slots` datagrams and one call
//! sends them back. Used by the `mmsg` reference server and by the load
//! generator.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::RawFd;

pub struct Batch {
    /// `slots * capacity` bytes: slot `i` is `buffers[i * capacity..][..capacity]`.
    buffers: Vec<u8>,
    capacity: usize,
    iovecs: Vec<libc::iovec>,
    /// Empty for connected sockets.
    names: Vec<libc::sockaddr_storage>,
    headers: Vec<libc::mmsghdr>,
}

impl Batch {
    /// `slots` buffers of `capacity` bytes; `with_names` for a socket that
    /// needs each datagram's peer (an unconnected server socket).
    pub fn new(slots: usize, capacity: usize, with_names: bool) -> Batch {
        let mut buffers = vec![0u8; slots * capacity];
        let base = buffers.as_mut_ptr();
        let mut iovecs: Vec<libc::iovec> = (0..slots)
            .map(|i| libc::iovec {
                // SAFETY: `i * capacity` is within `buffers`.
                iov_base: unsafe { base.add(i * capacity) }.cast(),
                iov_len: capacity,
            })
            .collect();
        // SAFETY: all-zero is a valid sockaddr_storage and an empty mmsghdr.
        let mut names: Vec<libc::sockaddr_storage> = (0..if with_names { slots } else { 0 })
            .map(|_| unsafe { zeroed() })
            .collect();
        let headers = (0..slots)
            .map(|i| {
                let mut header: libc::mmsghdr = unsafe { zeroed() };
                // The Vecs' heap memory never moves: they are never resized.
                header.msg_hdr.msg_iov = unsafe { iovecs.as_mut_ptr().add(i) };
                header.msg_hdr.msg_iovlen = 1;
                if with_names {
                    header.msg_hdr.msg_name = unsafe { names.as_mut_ptr().add(i) }.cast();
                    header.msg_hdr.msg_namelen =
                        size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                }
                header
            })
            .collect();
        Batch {
            buffers,
            capacity,
            iovecs,
            names,
            headers,
        }
    }

    pub fn slots(&self) -> usize {
        self.headers.len()
    }

    /// Slot `i`'s whole buffer, to fill before `send`.
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.buffers[i * self.capacity..][..self.capacity]
    }

    /// The datagram `recv` put in slot `i`.
    pub fn received(&self, i: usize) -> &[u8] {
        let len = (self.headers[i].msg_len as usize).min(self.capacity);
        &self.buffers[i * self.capacity..][..len]
    }

    /// Slot `i` sends `len` bytes.
    pub fn set_len(&mut self, i: usize, len: usize) {
        self.iovecs[i].iov_len = len.min(self.capacity);
    }

    /// Each received slot is sent back as it came (to the peer it came from).
    pub fn answer_as_received(&mut self, count: usize) {
        for i in 0..count {
            self.iovecs[i].iov_len = self.headers[i].msg_len as usize;
        }
    }

    /// Receives up to `max` datagrams without waiting (one `recvmmsg`);
    /// `Ok(0)` when none is queued.
    pub fn recv(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        let max = max.min(self.slots());
        let namelen = if self.names.is_empty() {
            0
        } else {
            size_of::<libc::sockaddr_storage>() as libc::socklen_t
        };
        for i in 0..max {
            self.iovecs[i].iov_len = self.capacity;
            self.headers[i].msg_hdr.msg_namelen = namelen;
        }
        // SAFETY: the headers point at buffers, iovecs and names this batch
        // owns, of the sizes they state.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                max as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        Ok(n as usize)
    }

    /// Sends slots `first..first + count` (one `sendmmsg` per call, more
    /// only if the kernel takes a part); a datagram the kernel refuses is
    /// dropped, as UDP may drop it anyway. Returns how many were sent.
    pub fn send(&mut self, fd: RawFd, first: usize, count: usize) -> usize {
        let end = (first + count).min(self.slots());
        let mut at = first;
        let mut sent = 0;
        while at < end {
            // SAFETY: as in `recv`; `at..end` is within the headers.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.headers.as_mut_ptr().add(at),
                    (end - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                at += n as usize;
                sent += n as usize;
            } else {
                at += 1; // this one failed: skip it
            }
        }
        sent
    }
}
