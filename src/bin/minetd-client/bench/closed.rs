//! The closed loops: each connection keeps its messages in flight (one, or
//! `--pipeline` K) and sends the next only when an echo came back whole and
//! checked, each connection at its own pace (a thread reads whichever of
//! its connections has echo bytes in, not each in turn); discard's upload
//! (and the silence it must keep), and chargen's download checked against
//! RFC 864's pattern. Every message's bytes are a function of its
//! connection and round, so an echo from the wrong connection or round is
//! a mismatch.

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::Tally;
use super::deadline::{self, Limits, Stop};
use super::waiting::Waiting;
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

    /// Echoes until `deadline`: every connection always has `--pipeline`
    /// messages in flight; once it has passed, the messages still in flight
    /// are read back without sending more.
    pub(super) fn measure_echo(&mut self, deadline: Instant, tally: &mut Tally) {
        let pipeline = self.options.pipeline as u64;
        for round in 1..=pipeline {
            self.send_all(0, round, tally);
        }
        self.receive_echoes(0, Some(deadline), tally);
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

    /// Reads the echoes in flight on the connections from `from` on,
    /// from whichever has something to read, never waiting on one while
    /// another's echo is in: a connection whose echo is delayed (a lost
    /// segment waits 200 ms or more for TCP to resend it) delays only its
    /// own round trips. Each echo is checked as its bytes arrive and, until
    /// `send_until`, answered with the connection's next message as soon as
    /// it is whole. Returns when nothing is in flight: every echo read, or
    /// its connection failed or was cut at the phase's end. Failed
    /// connections are dropped then.
    ///
    /// The phase's limits hold as a blocking read's would: a connection
    /// that made no progress for a whole `--timeout` that ended by
    /// `limits.by` failed; at `by`, what has already arrived is still
    /// taken, and what has not is cut.
    pub(super) fn receive_echoes(
        &mut self,
        from: usize,
        send_until: Option<Instant>,
        tally: &mut Tally,
    ) {
        let mut waiting = Waiting::new(self.conns.len() - from, &[]);
        for (i, conn) in self.conns[from..].iter().enumerate() {
            if conn.in_flight() {
                waiting.watch(i, conn.stream.as_raw_fd());
            }
        }
        let mut published = (tally.round_trips, tally.mismatches, tally.errors);
        // The first look does not wait: echoes may be in already.
        let mut wake = Instant::now();
        while waiting.in_flight() > 0 {
            let (by, timeout) = (self.limits.by, self.limits.timeout);
            let past_end = Instant::now() >= by;
            let wait = wake.saturating_duration_since(Instant::now());
            let ready = match waiting.wait(wait) {
                Ok(ready) => ready,
                Err(err) => {
                    // Cannot happen with fewer descriptors than the limit
                    // ensure_fd_limit raised; failing beats spinning.
                    for i in waiting.watched() {
                        let conn = &mut self.conns[from + i];
                        let err = io::Error::new(err.kind(), format!("poll: {err}"));
                        tally.fail(conn, conn.echo.round, "receive", &err, timeout);
                    }
                    break;
                }
            };
            let now = Instant::now();
            let sending = send_until.is_some_and(|until| now < until) && !self.shared.stopping();
            wake = waiting.pass(ready, by, |i, readable| {
                if readable {
                    self.receive_echo(from + i, sending, tally);
                }
                let conn = &mut self.conns[from + i];
                if conn.in_flight()
                    && !readable
                    && let Some(stop) = deadline::unready(conn.heard, now, past_end, &self.limits)
                {
                    tally.stop(conn, conn.echo.round, "receive", stop, timeout);
                }
                conn.in_flight().then(|| conn.heard + timeout)
            });
            self.publish(
                tally.round_trips - published.0,
                tally.mismatches - published.1,
                tally.errors - published.2,
            );
            published = (tally.round_trips, tally.mismatches, tally.errors);
        }
        // One pass over flags; cheap next to a system call per connection.
        self.conns.retain(|conn| !conn.failed);
    }

    /// Reads what has come of connection `i`'s echoes (poll says something
    /// has, so the blocking read returns at once) and checks it against the
    /// messages sent, piece by piece; each echo that is whole is timed and,
    /// while `sending`, followed by the connection's next message.
    fn receive_echo(&mut self, i: usize, sending: bool, tally: &mut Tally) {
        let Worker {
            conns,
            outgoing,
            incoming,
            window,
            limits,
            ..
        } = self;
        let conn = &mut conns[i];
        let size = incoming.len();
        let owed = (conn.last_sent - conn.echo.round + 1) as usize * size - conn.echo.offset();
        let n = match read_owed(&conn.stream, incoming, owed) {
            Ok(0) => return,
            Ok(n) => n,
            Err(stop) => {
                tally.stop(conn, conn.echo.round, "receive", stop, limits.timeout);
                return;
            }
        };
        conn.heard = Instant::now();
        let mut arrived = &incoming[..n];
        while !arrived.is_empty() {
            let Some(round) = conn.echo.check(conn.index, &mut arrived, outgoing, tally) else {
                continue;
            };
            let sent_at = conn.sent_at[(round % conn.sent_at.len() as u64) as usize];
            if round > 0 && window.counts(sent_at) {
                let done = Instant::now();
                tally.record(done - sent_at, done);
                tally.round_trips += 1;
            }
            if sending && !send(conn, outgoing, conn.last_sent + 1, window, limits, tally) {
                return;
            }
        }
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
    conn.heard = sent_at;
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
    Pattern::new(connection, round).fill(message);
}

/// One message's bytes (as [`fill_message`] makes them), generated from
/// wherever the last piece ended: an echo arriving in pieces is checked
/// piece by piece with these 16 bytes of state per connection, not a copy
/// of each connection's message.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pattern {
    /// The generator's state: the 8 bytes of the word holding byte
    /// `offset` (xorshift64 yields one 8-byte word per step).
    word: u64,
    /// How many bytes of the message were generated.
    offset: usize,
}

impl Pattern {
    /// The message of `connection`'s round `round`, from its first byte.
    pub(super) fn new(connection: u64, round: u64) -> Pattern {
        Pattern {
            word: xorshift64(splitmix64((connection << 40) ^ round) | 1),
            offset: 0,
        }
    }

    /// How many bytes of the message were generated.
    pub(super) fn offset(&self) -> usize {
        self.offset
    }

    /// Fills `piece` with the message's next bytes.
    pub(super) fn fill(&mut self, piece: &mut [u8]) {
        // The rest of a word begun by the last piece, then whole words.
        let at = self.offset % 8;
        let (head, rest) = piece.split_at_mut(if at == 0 {
            0
        } else {
            (8 - at).min(piece.len())
        });
        head.copy_from_slice(&self.word.to_le_bytes()[at..at + head.len()]);
        if at + head.len() == 8 {
            self.word = xorshift64(self.word);
        }
        let mut words = rest.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.word.to_le_bytes());
            self.word = xorshift64(self.word);
        }
        let tail = words.into_remainder();
        tail.copy_from_slice(&self.word.to_le_bytes()[..tail.len()]);
        self.offset += piece.len();
    }
}

/// Reads what has come of a connection's echoes into `incoming`, never
/// more than the `owed` bytes still in flight: a byte beyond them is the
/// next message's to read, or no message's (and then never read). Called
/// when poll says something has come, so the blocking read returns at
/// once; `Ok(0)` means a signal came first and nothing was read.
pub(super) fn read_owed(
    stream: &TcpStream,
    incoming: &mut [u8],
    owed: usize,
) -> Result<usize, Stop> {
    let len = owed.min(incoming.len());
    let mut stream = stream;
    match stream.read(&mut incoming[..len]) {
        Ok(0) => Err(Stop::Failed(io::ErrorKind::UnexpectedEof.into())),
        Ok(n) => Ok(n),
        Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(err) => Err(Stop::Failed(err)),
    }
}

/// The echo a connection is reading: its round, and the bytes it must
/// have from as far as it came. Echoes are checked piece by piece as they
/// arrive, one mismatch counted per message at most.
#[derive(Debug)]
pub(super) struct Echo {
    /// The oldest round in flight, whose echo is being read; none is in
    /// flight once it is past the last round sent.
    pub(super) round: u64,
    /// That round's bytes, from as far as its echo came.
    pattern: Pattern,
    /// That echo already differed.
    mismatched: bool,
}

impl Echo {
    /// Connection `connection`'s echo of `round`, none of it read yet.
    pub(super) fn new(connection: u64, round: u64) -> Echo {
        Echo {
            round,
            pattern: Pattern::new(connection, round),
            mismatched: false,
        }
    }

    /// How many bytes of the echo came.
    pub(super) fn offset(&self) -> usize {
        self.pattern.offset()
    }

    /// Checks the bytes at the start of `arrived` that belong to this
    /// echo (up to its end, a message being `expected.len()` bytes) and
    /// takes them off `arrived`. If that made the echo whole, returns its
    /// round; from then on the next round's echo is read.
    pub(super) fn check(
        &mut self,
        connection: u64,
        arrived: &mut &[u8],
        expected: &mut [u8],
        tally: &mut Tally,
    ) -> Option<u64> {
        let size = expected.len();
        let offset = self.pattern.offset();
        let (piece, rest) = arrived.split_at(arrived.len().min(size - offset));
        *arrived = rest;
        let expected = &mut expected[..piece.len()];
        self.pattern.fill(expected);
        // Equality first: memcmp, far faster than looking byte by byte.
        if !self.mismatched
            && piece != &*expected
            && let Some(at) = piece.iter().zip(&*expected).position(|(a, b)| a != b)
        {
            self.mismatched = true;
            tally.mismatch_at(
                connection,
                self.round,
                offset + at,
                size,
                expected[at],
                piece[at],
            );
        }
        if self.pattern.offset() < size {
            return None;
        }
        let round = self.round;
        *self = Echo::new(connection, round + 1);
        Some(round)
    }
}

/// One step of Marsaglia's xorshift64 (shifts 13, 7, 17).
fn xorshift64(mut state: u64) -> u64 {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    state
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
    fn a_pattern_filled_in_pieces_is_the_whole_message() {
        let mut whole = [0; 100];
        fill_message(&mut whole, 7, 3);
        // Pieces that start and end inside the generator's 8-byte words.
        for split in [1, 3, 8, 13, 64] {
            let mut pattern = Pattern::new(7, 3);
            let mut pieces = [0; 100];
            for piece in pieces.chunks_mut(split) {
                pattern.fill(piece);
            }
            assert_eq!(pieces, whole, "pieces of {split}");
            assert_eq!(pattern.offset(), 100);
        }
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
