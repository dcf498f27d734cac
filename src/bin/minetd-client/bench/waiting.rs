//! The connections a receiver waits on, and the order it serves the ready
//! ones: what the closed loop (`closed::receive_echoes`) and the open
//! loop's receiver (`open::receive`) share. What a connection's turn does
//! (read, check, time, give up on it) is theirs; which connections are
//! watched, when the set next needs looking at and where a pass starts
//! are kept here.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::socket;

/// A poll set of connections with messages in flight.
pub(super) struct Waiting {
    /// One per connection (-1, which poll skips, while nothing is in
    /// flight on it), then any other descriptor the receiver waits on.
    fds: Vec<libc::pollfd>,
    /// How many of the connections are watched.
    in_flight: usize,
    /// How many of `fds` are connections.
    conns: usize,
    /// Where a pass over the ready connections starts: at the first one
    /// the last pass found still waiting, whose message is about the oldest
    /// in flight. Echoes come back about in the order they were sent, so
    /// this serves them about first come, first served, as reading in turn
    /// did; always starting at the first connection would make those late
    /// in a pass wait a pass more, widening the latency distribution (p99
    /// up a fifth on loopback).
    start: usize,
}

impl Waiting {
    /// `conns` connections, none watched yet, and `others` descriptors
    /// after them, always watched.
    pub(super) fn new(conns: usize, others: &[RawFd]) -> Waiting {
        let unwatched = std::iter::repeat_n(-1, conns);
        let fds = unwatched
            .chain(others.iter().copied())
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Waiting {
            fds,
            in_flight: 0,
            conns,
            start: 0,
        }
    }

    /// Watches connection `i` (its socket `fd`) if it is not already.
    pub(super) fn watch(&mut self, i: usize, fd: RawFd) {
        if self.fds[i].fd < 0 {
            self.fds[i].fd = fd;
            self.in_flight += 1;
        }
    }

    /// How many connections are watched.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether descriptor `i` (a connection's, or another's after them)
    /// was found readable by the last wait.
    pub(super) fn readable(&self, i: usize) -> bool {
        self.fds[i].revents != 0
    }

    /// The watched connections.
    pub(super) fn watched(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.conns).filter(|&i| self.fds[i].fd >= 0)
    }

    /// Waits up to `wait` for any descriptor to be readable; how many are.
    pub(super) fn wait(&mut self, wait: Duration) -> io::Result<usize> {
        socket::wait_readable(&mut self.fds, wait)
    }

    /// One pass over the watched connections after a wait that found
    /// `ready` readable, in serving order. `turn(i, readable)` does
    /// connection `i`'s part and says by when it must be heard from if it
    /// still has something in flight (`None`: nothing is; it is no longer
    /// watched). Returns the earliest of those instants and `until`.
    pub(super) fn pass(
        &mut self,
        ready: usize,
        until: Instant,
        mut turn: impl FnMut(usize, bool) -> Option<Instant>,
    ) -> Instant {
        let mut wake = until;
        let mut oldest = None;
        for i in (self.start..self.conns).chain(0..self.start) {
            let fd = &mut self.fds[i];
            if fd.fd < 0 {
                continue;
            }
            let readable = ready > 0 && fd.revents != 0;
            match turn(i, readable) {
                Some(heard_by) => {
                    wake = wake.min(heard_by);
                    if !readable {
                        oldest.get_or_insert(i);
                    }
                }
                None => {
                    fd.fd = -1;
                    self.in_flight -= 1;
                }
            }
        }
        self.start = oldest.unwrap_or(self.start);
        wake
    }
}
