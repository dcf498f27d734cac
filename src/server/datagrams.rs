//! The UDP services' side of the loop: each waiting datagram is checked
//! against `--allow` and the loop guard, and answered with at most one
//! datagram, from the address it was sent to; no state is kept per peer.
//! Datagrams come in batches (one `recvmmsg` for up to [`sys::BATCH`],
//! one `sendmmsg` for their answers; `sys/mmsg.rs`). What the answer is
//! lives in [`crate::udp`].

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
        // Only a server with UDP services pays for the batch's buffers.
        let batch = self.batch.get_or_insert_with(sys::Batch::new);
        let mut taken = 0;
        while taken < DATAGRAMS_PER_TURN {
            let listener = &mut self.listeners[index];
            let Socket::Udp(socket) = &listener.socket else {
                return;
            };
            let service = listener.service;
            let wanted = (DATAGRAMS_PER_TURN - taken).min(sys::BATCH);
            let received = match batch.receive(socket, wanted) {
                Ok(received) => received,
                Err(err) if would_block(&err) => {
                    listener.ready = false;
                    return;
                }
                Err(err) if interrupted(&err) => continue,
                // An ICMP error from an earlier reply, say: one peer's
                // trouble, counted against the turn's cap like a datagram.
                Err(err) => {
                    debug!("{service} {}: receive failed: {err}", listener.addr);
                    taken += 1;
                    continue;
                }
            };
            taken += received;
            let counters = self.stats.get_mut(service);
            for i in 0..received {
                let (len, peer, arrival) = batch.datagram(i);
                counters.bytes_in += len as u64;
                counters.datagrams_in += 1;
                let Some(peer) = peer else {
                    counters.datagrams_dropped += 1;
                    debug!(
                        "{service} {}: datagram from an unknown address family",
                        listener.addr
                    );
                    continue;
                };
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
                let Some(reply_len) =
                    self.answerer
                        .answer_in_place(service, batch.slot_mut(i), len)
                else {
                    trace!("{service} {peer}: {len} bytes, no answer");
                    continue;
                };
                // Without an arrival (a specific address, or a kernel that
                // did not say), the socket's own address is the source.
                let arrival = arrival.filter(|_| listener.answers_from_arrival);
                if let Err(err) = batch.answer(i, reply_len, peer, arrival) {
                    counters.datagrams_dropped += 1;
                    debug!("{service} {peer}: answer dropped: {err}");
                }
            }
            batch.send(socket, |peer, sent| match sent {
                Ok(sent) => {
                    counters.bytes_out += sent as u64;
                    counters.datagrams_out += 1;
                    trace!("{service} {peer}: answered {sent} bytes");
                }
                Err(err) => {
                    counters.datagrams_dropped += 1;
                    debug!("{service} {peer}: answer dropped: {err}");
                }
            });
            // Fewer than asked for: the queue was empty, and the next
            // datagram to arrive brings a new readiness edge (epoll), so
            // no call is spent on hearing `WouldBlock`.
            if received < wanted {
                listener.ready = false;
                return;
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
