//! The closed loops: each connection keeps its messages in flight (one, or
//! `--pipeline` K) and sends the next only when an echo came back whole and
//! checked; discard's upload (and the silence it must keep), and chargen's
//! download checked against RFC 864's pattern. Every message's bytes are a
//! function of its connection and round, so an echo from the wrong
//! connection or round is a mismatch.

use std::time::Instant;

use super::Tally;
use super::deadline::{self, Limits, Stop};
use super::{Conn, Mode, Window, Worker};

impl Worker {
    /// Measured rounds until `deadline`.
    pub(super) fn measure(&mut self, deadline: Instant, tally: &mut Tally) {
        match self.options.mode {
            Mode::Echo => self.measure_echo(deadline, tally),
            Mode::Discard => {
                let mut round = 1;
                while !self.conns.is_empty() && Instant::now() < deadline && !self.shared.stopping()
                {
                    self.upload(round, tally);
                    round += 1;
                }
                self.expect_silence(round, tally);
            }
            Mode::Chargen => {
                let mut round = 1;
                while !self.conns.is_empty() && Instant::now() < deadline && !self.shared.stopping()
                {
                    self.download(0, round, tally);
                    round += 1;
                }
            }
            Mode::Daytime | Mode::UdpEcho => {}
        }
    }

    /// Echo rounds until `deadline`: every connection always has
    /// `--pipeline` messages in flight; at the end the messages still in
    /// flight are read back without sending more.
    pub(super) fn measure_echo(&mut self, deadline: Instant, tally: &mut Tally) {
        let pipeline = self.options.pipeline as u64;
        for round in 1..=pipeline {
            self.send_all(0, round, tally);
        }
        let mut round = 1;
        while !self.conns.is_empty() {
            let last = Instant::now() >= deadline || self.shared.stopping();
            let next = (!last).then_some(round + pipeline);
            self.receive_all(0, round, next, tally);
            if last {
                for round in round + 1..round + pipeline {
                    self.receive_all(0, round, None, tally);
                }
                return;
            }
            round += 1;
        }
    }

    /// Writes round `round`'s message to every connection from `from` on.
    pub(super) fn send_all(&mut self, from: usize, round: u64, tally: &mut Tally) {
        let Worker {
            conns,
            outgoing,
            window,
            limits,
            ..
        } = self;
        for conn in &mut conns[from..] {
            send(conn, outgoing, round, window, limits, tally);
        }
    }

    /// Reads round `round`'s echo from every connection from `from` on and
    /// checks it; with `send_next`, writes that connection's next message
    /// as soon as its echo is in, so the server never runs out of work
    /// while the client reads. Failed connections are dropped afterwards.
    pub(super) fn receive_all(
        &mut self,
        from: usize,
        round: u64,
        send_next: Option<u64>,
        tally: &mut Tally,
    ) {
        let Worker {
            conns,
            outgoing,
            incoming,
            options,
            window,
            limits,
            ..
        } = self;
        let pipeline = options.pipeline as u64;
        let (mismatches, errors) = (tally.mismatches, tally.errors);
        let mut round_trips = 0;
        for conn in conns[from..].iter_mut().filter(|conn| !conn.failed) {
            if round > conn.last_sent {
                continue; // the window closed before this round was sent
            }
            if let Err(stop) = deadline::read_exact(&conn.stream, incoming, limits) {
                tally.stop(conn, round, "receive", stop, options.timeout);
                continue;
            }
            let sent_at = conn.sent_at[(round % pipeline) as usize];
            if round > 0 && window.counts(sent_at) {
                let done = Instant::now();
                tally.record(done - sent_at, done);
                round_trips += 1;
            }
            fill_message(outgoing, conn.index, round);
            if incoming != outgoing {
                tally.mismatch(conn.index, round, outgoing, incoming);
            }
            if let Some(next) = send_next {
                send(conn, outgoing, next, window, limits, tally);
            }
        }
        // One pass over flags; cheap next to a system call per connection.
        conns.retain(|conn| !conn.failed);
        tally.round_trips += round_trips;
        self.publish(
            round_trips,
            tally.mismatches - mismatches,
            tally.errors - errors,
        );
    }

    /// Writes one message to each connection, timing each write.
    pub(super) fn upload(&mut self, round: u64, tally: &mut Tally) {
        let Worker {
            conns,
            outgoing,
            window,
            limits,
            ..
        } = self;
        let errors = tally.errors;
        let mut moved = 0;
        for conn in conns.iter_mut() {
            let sent = send(conn, outgoing, round, window, limits, tally);
            let sent_at = conn.sent_at[0];
            if sent && window.counts(sent_at) {
                tally.record(sent_at.elapsed(), Instant::now());
                moved += 1;
            }
        }
        conns.retain(|conn| !conn.failed);
        tally.round_trips += moved;
        self.publish(moved, 0, tally.errors - errors);
    }

    /// Ends a discard run: half-closes each connection and expects the
    /// server to close without having sent a byte.
    pub(super) fn expect_silence(&mut self, round: u64, tally: &mut Tally) {
        let Worker {
            conns,
            incoming,
            options,
            limits,
            ..
        } = self;
        let (mismatches, errors) = (tally.mismatches, tally.errors);
        for conn in conns.iter_mut() {
            let result = match conn.stream.shutdown(std::net::Shutdown::Write) {
                Ok(()) => deadline::read(&conn.stream, incoming, limits),
                Err(err) => Err(Stop::Failed(err)),
            };
            match result {
                Ok(0) => {}
                Ok(n) => tally.unexpected_bytes(conn.index, n),
                // Not closing by the run's end is a fault too, as before
                // the bound: this is no message to abandon, but the server
                // ignoring the end of its input.
                Err(stop) => tally.fail(conn, round, "close", &stop.into_error(), options.timeout),
            }
        }
        self.publish(0, tally.mismatches - mismatches, tally.errors - errors);
    }

    /// Reads one message from each connection from `from` on and checks it
    /// against the chargen pattern; round 0 is not measured.
    pub(super) fn download(&mut self, from: usize, round: u64, tally: &mut Tally) {
        let Worker {
            conns,
            incoming,
            options,
            window,
            limits,
            ..
        } = self;
        let (mismatches, errors) = (tally.mismatches, tally.errors);
        let mut moved = 0;
        for conn in conns[from..].iter_mut() {
            if limits.closed() {
                if round == 0 {
                    // The batch's confirmation ran out of time before this
                    // connection's turn: it was never shown to work.
                    tally.stop(conn, round, "receive", Stop::Cut, options.timeout);
                    continue;
                }
                break; // no message is begun after the window
            }
            let started = Instant::now();
            if round > 0 && window.counts(started) {
                tally.begun += 1;
            }
            if let Err(stop) = deadline::read_exact(&conn.stream, incoming, limits) {
                tally.stop(conn, round, "receive", stop, options.timeout);
                continue;
            }
            if round > 0 && window.counts(started) {
                tally.record(started.elapsed(), Instant::now());
                moved += 1;
            }
            if let Some(at) = chargen_mismatch(conn.position, incoming) {
                let expected = minetd::chargen::window(conn.position + at, 1)[0];
                tally.mismatch_at(
                    conn.index,
                    round,
                    at,
                    incoming.len(),
                    expected,
                    incoming[at],
                );
            }
            conn.position = minetd::chargen::advance(conn.position, incoming.len());
        }
        conns.retain(|conn| !conn.failed);
        tally.round_trips += moved;
        self.publish(moved, tally.mismatches - mismatches, tally.errors - errors);
    }
}

/// Writes `conn`'s message of `round` (built in `outgoing`) and notes
/// when; true if it was written whole. Once the phase is closed nothing is
/// begun, and a message begun in the window counts as begun even if its
/// write then fails or is cut: it is one that went unanswered.
pub(super) fn send(
    conn: &mut Conn,
    outgoing: &mut [u8],
    round: u64,
    window: &Window,
    limits: &Limits,
    tally: &mut Tally,
) -> bool {
    let sent_at = Instant::now();
    if sent_at >= limits.begin_until {
        return false;
    }
    fill_message(outgoing, conn.index, round);
    let slot = (round % conn.sent_at.len() as u64) as usize;
    conn.sent_at[slot] = sent_at;
    conn.last_sent = round;
    if round > 0 && window.counts(sent_at) {
        tally.begun += 1;
    }
    match deadline::write_all(&conn.stream, outgoing, limits) {
        Ok(()) => true,
        Err(stop) => {
            tally.stop(conn, round, "send", stop, limits.timeout);
            false
        }
    }
}

/// Fills `message` with bytes derived from the connection and the round:
/// xorshift64 seeded by a bijective mix of the two, so no two (connection,
/// round) pairs below 2^24 connections and 2^40 rounds share a seed.
pub(super) fn fill_message(message: &mut [u8], connection: u64, round: u64) {
    let mut state = splitmix64((connection << 40) ^ round) | 1;
    for chunk in message.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// SplitMix64's finaliser: a bijection on u64 that spreads every input bit.
pub(super) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Where `received`, read from a chargen stream at `position`, first differs
/// from RFC 864's pattern.
pub(super) fn chargen_mismatch(position: usize, received: &[u8]) -> Option<usize> {
    let mut checked = 0;
    // The pattern hands out windows of at most MAX_WINDOW bytes.
    for piece in received.chunks(minetd::chargen::MAX_WINDOW) {
        let expected = minetd::chargen::window(position + checked, piece.len());
        if let Some(at) = piece.iter().zip(expected).position(|(a, b)| a != b) {
            return Some(checked + at);
        }
        checked += piece.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_differ_by_connection_and_round() {
        let mut a = [0; 64];
        let mut b = [0; 64];
        fill_message(&mut a, 1, 1);
        fill_message(&mut b, 1, 1);
        assert_eq!(a, b);
        fill_message(&mut b, 2, 1);
        assert_ne!(a, b);
        fill_message(&mut b, 1, 2);
        assert_ne!(a, b);
    }

    #[test]
    fn chargen_check_finds_the_first_wrong_byte_across_windows() {
        let position = 7000;
        let mut stream: Vec<u8> = (0..65_536)
            .map(|n| minetd::chargen::window(position + n, 1)[0])
            .collect();
        assert_eq!(chargen_mismatch(position, &stream), None);
        stream[64_000] ^= 1;
        assert_eq!(chargen_mismatch(position, &stream), Some(64_000));
        assert_eq!(chargen_mismatch(position + 1, &stream), Some(0));
    }

    #[test]
    fn short_messages_are_filled_too() {
        let mut one = [0; 1];
        let mut other = [0; 1];
        fill_message(&mut one, 0, 1);
        fill_message(&mut other, 0, 2);
        let mut odd = [0; 13];
        fill_message(&mut odd, 3, 3);
        assert!(odd.iter().any(|&b| b != 0));
    }
}
