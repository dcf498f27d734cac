//! The UDP services' side of the loop: each waiting datagram is checked
//! against `--allow` and the loop guard, and answered with at most one
//! datagram, from the address it was sent to; no state is kept per peer.
//! What the answer is lives in [`crate::udp`].

use std::time::Instant;

use log::{debug, trace};

use super::Core;
use super::Socket;
use super::admission::allowed;
use crate::conn::{interrupted, would_block};
use crate::sys;
use crate::udp::NEVER_ANSWER_PORTS;

/// Datagrams per UDP socket per turn, for the same fairness as accepts.
pub(super) const DATAGRAMS_PER_TURN: usize = 256;

impl Core {
    /// Answers each waiting datagram with at most one datagram. A reply the
    /// socket cannot take now is dropped, as UDP may drop it anyway.
    pub(super) fn answer_datagrams(&mut self, index: usize) {
        for _ in 0..DATAGRAMS_PER_TURN {
            let listener = &mut self.listeners[index];
            let Socket::Udp(socket) = &listener.socket else {
                return;
            };
            let service = listener.service;
            let received = if listener.answers_from_arrival {
                sys::recv_arrival(socket, &mut self.scratch)
            } else {
                let received = socket.recv_from(&mut self.scratch);
                received.map(|(len, peer)| (len, peer, None))
            };
            let (len, peer, arrival) = match received {
                Ok(received) => received,
                Err(err) if would_block(&err) => {
                    listener.ready = false;
                    return;
                }
                Err(err) if interrupted(&err) => continue,
                // An ICMP error from an earlier reply, say: one peer's trouble.
                Err(err) => {
                    debug!("{service} {}: receive failed: {err}", listener.addr);
                    continue;
                }
            };
            let counters = self.stats.get_mut(service);
            counters.bytes_in += len as u64;
            counters.datagrams_in += 1;
            if !allowed(&self.limits.allow, peer.ip()) {
                counters.refused += 1;
                counters.datagrams_dropped += 1;
                debug!("{service} {peer}: datagram dropped: not in --allow");
                continue;
            }
            if NEVER_ANSWER_PORTS.contains(&peer.port()) {
                counters.refused += 1;
                counters.datagrams_dropped += 1;
                debug!(
                    "{service} {peer}: datagram dropped: source port {} could answer back",
                    peer.port()
                );
                continue;
            }
            counters.accepted += 1;
            let Some(reply) = self.answerer.answer(service, &self.scratch[..len]) else {
                trace!("{service} {peer}: {len} bytes, no answer");
                continue;
            };
            // Without an arrival (a specific address, or a kernel that did
            // not say), the socket's own address is the source.
            let sent = match arrival {
                Some(arrival) => sys::send_from(socket, reply, peer, arrival),
                None => socket.send_to(reply, peer),
            };
            match sent {
                Ok(sent) => {
                    counters.bytes_out += sent as u64;
                    counters.datagrams_out += 1;
                    trace!("{service} {peer}: {len} bytes, answered {sent}");
                }
                Err(err) => {
                    counters.datagrams_dropped += 1;
                    debug!("{service} {peer}: answer dropped: {err}");
                }
            }
        }
    }
}

/// A seed for chargen's reply lengths that differs between runs.
pub(super) fn seed_from(started: Instant) -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    since_epoch.as_nanos() as u64 ^ (started.elapsed().as_nanos() as u64).rotate_left(32)
}
