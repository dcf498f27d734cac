//! `--mode daytime`: connection churn. Each worker slot connects, reads
//! the server's reply to EOF, checks it is one line of 1 to 64 bytes ending
//! CRLF, closes and connects again at once. A thread sweeps over its slots
//! as the echo loop does over its connections, so every slot keeps one
//! connection in flight while the thread reads the others: what is
//! measured is how many connections per second the server completes.

use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Tally, Window, Worker, connect_failure, connect_time, open_connection, sleep_until};
use crate::error::Error;

/// The longest reply line, CRLF not counted.
const MAX_LINE: usize = 64;

/// Bytes read from one connection at most: enough to see that a reply is
/// too long without reading an endless one.
const READ_CAP: usize = MAX_LINE + 3;

/// One slot's connection in flight and when its connect began.
struct Slot {
    index: usize,
    stream: Option<(TcpStream, Instant)>,
}

/// Runs this worker's slots until the window ends.
pub(super) fn run(worker: &Worker, mut tally: Tally) -> Result<Tally, Error> {
    let options = &worker.options;
    let mut slots: Vec<Slot> = worker
        .range
        .clone()
        .map(|index| Slot {
            index,
            stream: None,
        })
        .collect();
    worker.shared.ready.fetch_add(1, Ordering::SeqCst);
    let origin = worker.shared.wait_for_start();
    let start = origin + options.warmup;
    let window = Window {
        origin,
        start,
        end: start + options.duration,
    };
    tally.measure_start = start;
    // The first connections are spread as --connect-rate asks; after that
    // each slot reconnects as soon as its reply is in.
    for (nth, slot) in slots.iter_mut().enumerate() {
        if let Some(at) = connect_time(options, worker.number, nth) {
            sleep_until(origin + at);
        }
        connect(worker, slot, &mut tally);
    }
    tally.opened = slots.len() as u64;
    let mut reply = [0; READ_CAP];
    while Instant::now() < window.end && !worker.shared.stopping() {
        let (mismatches, errors, round_trips) = (tally.mismatches, tally.errors, tally.round_trips);
        for slot in slots.iter_mut() {
            if let Some((stream, started)) = slot.stream.take() {
                finish(slot.index, stream, started, &window, &mut reply, &mut tally);
            }
            if Instant::now() < window.end {
                connect(worker, slot, &mut tally);
            }
        }
        worker.shared.publish(
            tally.round_trips - round_trips,
            tally.mismatches - mismatches,
            tally.errors - errors,
        );
        if slots.iter().all(|slot| slot.stream.is_none()) {
            break; // nothing connects any more
        }
    }
    // The connections still in flight at the end are read, but not counted.
    for slot in slots.iter_mut() {
        if let Some((mut stream, _)) = slot.stream.take() {
            let _ = read_reply(&mut stream, &mut reply);
        }
    }
    tally.finished = Some(Instant::now().min(window.end));
    Ok(tally)
}

/// Opens `slot`'s next connection; a failure is a connect failure.
fn connect(worker: &Worker, slot: &mut Slot, tally: &mut Tally) {
    let started = Instant::now();
    let options = &worker.options;
    let opened = match options.source_addrs.as_slice() {
        [] => crate::socket::connect_timed(worker.dest, options.timeout),
        _ => open_connection(worker.dest, options, slot.index),
    };
    match opened {
        Ok(stream) => slot.stream = Some((stream, started)),
        Err(err) => {
            tally.connect_failures += 1;
            if tally.first_connect_failure.is_none() {
                tally.first_connect_failure = Some(connect_failure(slot.index, &err));
            }
        }
    }
}

/// Reads one connection's reply to EOF, checks it and counts it.
fn finish(
    index: usize,
    mut stream: TcpStream,
    started: Instant,
    window: &Window,
    reply: &mut [u8; READ_CAP],
    tally: &mut Tally,
) {
    let len = match read_reply(&mut stream, reply) {
        Ok(len) => len,
        Err(err) => {
            tally.errors += 1;
            if tally.first_error.is_none() {
                let why = super::why(&err, worker_timeout(&stream));
                tally.first_error = Some(format!("conn {index}: receive: {why}"));
            }
            return;
        }
    };
    let done = Instant::now();
    drop(stream);
    if !window.counts(started) {
        return;
    }
    tally.round_trips += 1;
    tally.bytes_in += len as u64;
    tally.record(done - started, done);
    if !is_one_line(&reply[..len]) {
        tally.mismatches += 1;
        if tally.first_mismatch.is_none() {
            tally.first_mismatch = Some(format!(
                "conn {index}: the reply is not one line of 1 to {MAX_LINE} bytes ending CRLF: \"{}\"",
                reply[..len].escape_ascii()
            ));
        }
    }
}

/// The socket's read timeout, for the error message.
fn worker_timeout(stream: &TcpStream) -> std::time::Duration {
    stream.read_timeout().ok().flatten().unwrap_or_default()
}

/// Reads until EOF or until more than a line's worth has come.
fn read_reply(stream: &mut TcpStream, reply: &mut [u8]) -> std::io::Result<usize> {
    let mut len = 0;
    while len < reply.len() {
        match stream.read(&mut reply[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(len)
}

/// Exactly one line: 1 to 64 bytes with no CR or LF, then CRLF, then EOF.
fn is_one_line(reply: &[u8]) -> bool {
    let Some(line) = reply.strip_suffix(b"\r\n") else {
        return false;
    };
    (1..=MAX_LINE).contains(&line.len()) && !line.iter().any(|&b| b == b'\r' || b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_short_crlf_line_passes() {
        assert!(is_one_line(b"Sun Nov 22 15:38:54 2026\r\n"));
        assert!(is_one_line(&[b"x".repeat(64), b"\r\n".to_vec()].concat()));
        assert!(!is_one_line(&[b"x".repeat(65), b"\r\n".to_vec()].concat()));
        assert!(!is_one_line(b""));
        assert!(!is_one_line(b"\r\n"));
        assert!(!is_one_line(b"one\r\ntwo\r\n"));
        assert!(!is_one_line(b"no ending"));
        assert!(!is_one_line(b"bare lf\n"));
    }
}
