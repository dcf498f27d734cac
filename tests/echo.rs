//! echo (RFC 862) against the real `minetd`: every byte comes back unchanged
//! and in order, whatever its value, however much, on however many
//! connections; what is owed is flushed after a half-close; and a peer that
//! never reads costs the server at most `--max-pending` bytes.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{STEP, Server, connect, pseudo_random_bytes, read_to_eof, wait_until};

/// The pattern moves in blocks of this size; a multiple of 8.
const BLOCK: usize = 64 * 1024;

/// A deterministic byte stream (splitmix64, 8 bytes per step) that differs
/// at every offset, so a dropped, repeated or reordered piece shows.
struct Pattern {
    state: u64,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        Pattern { state: seed }
    }

    /// Fills `block` (its length a multiple of 8) with the next bytes.
    fn next_block(&mut self, block: &mut [u8]) {
        for word in block.chunks_exact_mut(8) {
            self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
    }
}

/// Checks bytes against a [`Pattern`] in whatever pieces they arrive.
struct Expected {
    pattern: Pattern,
    block: Vec<u8>,
    /// Bytes of `block` already matched.
    used: usize,
    /// Bytes matched so far.
    offset: u64,
}

impl Expected {
    fn new(seed: u64) -> Expected {
        Expected {
            pattern: Pattern::new(seed),
            block: vec![0; BLOCK],
            used: BLOCK,
            offset: 0,
        }
    }

    /// `Err(offset)` of the first byte that differs from the pattern.
    fn check(&mut self, mut got: &[u8]) -> Result<(), u64> {
        while !got.is_empty() {
            if self.used == self.block.len() {
                self.pattern.next_block(&mut self.block);
                self.used = 0;
            }
            let n = got.len().min(self.block.len() - self.used);
            let want = &self.block[self.used..self.used + n];
            if let Some(at) = got[..n].iter().zip(want).position(|(a, b)| a != b) {
                return Err(self.offset + at as u64);
            }
            self.used += n;
            self.offset += n as u64;
            got = &got[n..];
        }
        Ok(())
    }
}

/// Reads `stream` to EOF, checking every byte against the pattern of
/// `seed`; returns how many bytes came.
fn read_pattern_to_eof(stream: &mut TcpStream, seed: u64) -> u64 {
    let mut expected = Expected::new(seed);
    let mut buf = vec![0; BLOCK];
    loop {
        let n = stream.read(&mut buf).expect("read echo");
        if n == 0 {
            return expected.offset;
        }
        if let Err(at) = expected.check(&buf[..n]) {
            panic!("echoed byte at offset {at} differs from the byte sent there");
        }
    }
}

/// Sends `message` and reads back exactly as many bytes.
fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).expect("write");
    let mut back = vec![0; message.len()];
    stream.read_exact(&mut back).expect("read echo");
    back
}

/// Resident memory of process `pid` in KiB, from `/proc/PID/status`.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in status")
}

/// The state letter of process `pid` (`T` = stopped), from `/proc/PID/stat`.
fn process_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // The command name may hold spaces; the state follows its ')'.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    rest.chars().next().expect("state")
}

#[test]
fn echo_returns_binary_bytes_with_nuls_unchanged() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let mut stream = connect(server.echo());
    let mut payloads: Vec<Vec<u8>> = vec![
        vec![0],
        vec![0; 1000],
        b"\0\r\n\xff\x00\x7f\n\n\0".to_vec(),
        (0..=255u8).collect(),
    ];
    for (seed, len) in [(1, 1), (2, 7), (3, 1500), (4, 40_000)] {
        let mut payload = pseudo_random_bytes(len, seed);
        payload[len / 2] = 0;
        payloads.push(payload);
    }
    for payload in &payloads {
        let back = round_trip(&mut stream, payload);
        assert!(
            back == *payload,
            "a {}-byte payload came back changed",
            payload.len()
        );
    }
}

#[test]
fn sixteen_mib_streamed_before_any_read_comes_back_in_order() {
    const TOTAL: usize = 16 << 20;
    const SEED: u64 = 16;
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let stream = connect(server.echo());
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = stream;
    // The writer never waits for the echo: it streams everything, then
    // half-closes. The reader, meanwhile, checks what comes back.
    let writing = thread::spawn(move || {
        let mut pattern = Pattern::new(SEED);
        let mut block = vec![0; BLOCK];
        for _ in 0..TOTAL / BLOCK {
            pattern.next_block(&mut block);
            writer.write_all(&block).expect("write");
        }
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let reading = thread::spawn(move || read_pattern_to_eof(&mut reader, SEED));
    writing.join().expect("writer");
    let received = reading.join().expect("reader");
    assert_eq!(received, TOTAL as u64);
}

#[test]
fn five_hundred_interleaved_connections_each_get_their_own_bytes_back() {
    const CONNECTIONS: usize = 500;
    const ROUNDS: usize = 4;
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let mut streams: Vec<TcpStream> = (0..CONNECTIONS).map(|_| connect(server.echo())).collect();
    // Each connection, each round: its own length and its own bytes.
    let message = |conn: usize, round: usize| {
        let len = 1 + (conn * 37 + round * 101) % 1000;
        pseudo_random_bytes(len, ((conn * ROUNDS + round) * 2 + 1) as u64)
    };
    for round in 0..ROUNDS {
        let messages: Vec<Vec<u8>> = (0..CONNECTIONS).map(|conn| message(conn, round)).collect();
        // First halves in order, second halves in reverse, so every
        // connection has bytes in flight while the others write.
        for (stream, message) in streams.iter_mut().zip(&messages) {
            stream
                .write_all(&message[..message.len() / 2])
                .expect("write");
        }
        for (stream, message) in streams.iter_mut().zip(&messages).rev() {
            stream
                .write_all(&message[message.len() / 2..])
                .expect("write");
        }
        // Read starting from a different connection each round.
        for step in 0..CONNECTIONS {
            let conn = (step + round * 131) % CONNECTIONS;
            let mut back = vec![0; messages[conn].len()];
            streams[conn].read_exact(&mut back).expect("read echo");
            assert!(
                back == messages[conn],
                "connection {conn} got other bytes back in round {round}"
            );
        }
    }
}

#[test]
fn half_close_flushes_every_owed_byte_then_closes() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let mut stream = connect(server.echo());
    let payload = pseudo_random_bytes(100_000, 9);
    stream.write_all(&payload).expect("write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let back = read_to_eof(&mut stream);
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echoed bytes differ");
}

#[test]
fn half_close_flushes_megabytes_still_owed_at_the_eof() {
    // The peer reads nothing until the server has read its EOF. Far more
    // than the socket buffers can hold is then still owed, and must all
    // come back before the close.
    const TOTAL: usize = 6 << 20;
    let server = Server::start(&["--echo", "127.0.0.1:0", "--max-pending", "8388608"]);
    let mut stream = connect(server.echo());
    let payload = pseudo_random_bytes(TOTAL, 6);
    stream.write_all(&payload).expect("write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    // Give the server time to read the EOF while it still owes megabytes.
    thread::sleep(Duration::from_millis(300));
    let back = read_to_eof(&mut stream);
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echoed bytes differ");
}

#[test]
fn data_and_eof_arriving_together_are_both_seen() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let mut stream = connect(server.echo());
    assert_eq!(round_trip(&mut stream, b"first"), b"first");
    // With the server stopped, the last bytes and the FIN land in its
    // socket together and reach it as one readiness event.
    server.signal(libc::SIGSTOP);
    let stopped = wait_until(STEP, || process_state(server.pid()) == 'T');
    let sent = stream
        .write_all(b"last")
        .and_then(|()| stream.shutdown(Shutdown::Write));
    server.signal(libc::SIGCONT);
    assert!(stopped, "the server did not stop");
    sent.expect("write and half-close");
    assert_eq!(read_to_eof(&mut stream), b"last");
}

#[test]
fn half_close_before_any_byte_closes_at_once() {
    let server = Server::start(&["--echo", "127.0.0.1:0"]);
    let mut stream = connect(server.echo());
    stream.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_to_eof(&mut stream), b"");
}

#[test]
fn stalled_reader_caps_server_memory_and_others_are_still_served() {
    // Written without being read, past which the server surely is not
    // holding back: far above --max-pending plus any socket buffers.
    const RUNAWAY: u64 = 64 << 20;
    const SEED: u64 = 4096;
    let server = Server::start(&["--echo", "127.0.0.1:0", "--max-pending", "4096"]);
    let mut other = connect(server.echo());
    // Warm the server up (its read buffer, its allocator) before measuring.
    let warm = pseudo_random_bytes(BLOCK, 5);
    assert!(round_trip(&mut other, &warm) == warm);
    let resident_before = resident_kib(server.pid());

    let mut stalled = connect(server.echo());
    stalled.set_nonblocking(true).expect("non-blocking");
    let mut pattern = Pattern::new(SEED);
    let mut block = vec![0; BLOCK];
    let mut block_sent = BLOCK;
    let mut written: u64 = 0;
    let mut last_progress = Instant::now();
    let deadline = Instant::now() + STEP * 2;
    // Write and never read, until the connection has taken nothing for a
    // while: the server has stopped reading it and TCP stops us.
    while last_progress.elapsed() < Duration::from_millis(500) {
        assert!(
            written < RUNAWAY,
            "the server kept reading a peer that never reads"
        );
        assert!(Instant::now() < deadline, "took too long to fill");
        if block_sent == BLOCK {
            pattern.next_block(&mut block);
            block_sent = 0;
        }
        match stalled.write(&block[block_sent..]) {
            Ok(n) => {
                block_sent += n;
                written += n as u64;
                last_progress = Instant::now();
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("write to the stalled connection: {err}"),
        }
    }
    assert!(written > 4096, "only {written} bytes written");

    // Meanwhile the server serves everyone else.
    assert_eq!(round_trip(&mut other, b"still serving"), b"still serving");
    let grown = resident_kib(server.pid()).saturating_sub(resident_before);
    assert!(
        grown < 8 * 1024,
        "server grew by {grown} KiB while {written} bytes waited"
    );

    // Once the peer reads, everything comes back, in order.
    stalled.set_nonblocking(false).expect("blocking");
    let mut reader = stalled.try_clone().expect("clone");
    let reading = thread::spawn(move || read_pattern_to_eof(&mut reader, SEED));
    while block_sent < BLOCK {
        let n = stalled.write(&block[block_sent..]).expect("write the rest");
        block_sent += n;
        written += n as u64;
    }
    stalled.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(reading.join().expect("reader"), written);
}
