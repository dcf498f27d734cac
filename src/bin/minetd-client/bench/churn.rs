//! `--mode daytime`: connection churn. Each worker slot connects, reads
//! the server's reply to EOF, checks it is one line of 1 to 64 bytes ending
//! CRLF, closes and connects again at once. A thread sweeps over its slots
//! in turn, so every slot keeps one connection in flight while the thread
//! reads the others: what is measured is how many connections per second
//! the server completes. (In turn, unlike the echo loop: one slow reply or
//! connect holds up the slots behind it.)
//!
//! No connection is begun after the window closes; the ones in flight then
//! are read until the window's end plus `--timeout` (see
//! [`super::deadline`]), counted if their reply came in whole, and
//! abandoned (unanswered) if not.

use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::deadline::{self, Limits, Stop};
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
    let limits = Limits::measure(window.end, options.timeout);
    // The first connections are spread as --connect-rate asks; after that
    // each slot reconnects as soon as its reply is in.
    for (nth, slot) in slots.iter_mut().enumerate() {
        if let Some(at) = connect_time(options, worker.number, nth) {
            sleep_until(origin + at);
        }
        connect(worker, slot, &window, &mut tally);
    }
    tally.opened = slots.len() as u64;
    let mut reply = [0; READ_CAP];
    while Instant::now() < window.end && !worker.shared.stopping() {
        let (mismatches, errors, round_trips) = (tally.mismatches, tally.errors, tally.round_trips);
        for slot in slots.iter_mut() {
            if let Some((stream, started)) = slot.stream.take() {
                finish(
                    slot.index, stream, started, &window, &limits, &mut reply, &mut tally,
                );
            }
            if !limits.closed() {
                connect(worker, slot, &window, &mut tally);
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
    // The connections still in flight at the end count if their reply
    // comes in whole by the limit, as the echo loop's last messages do.
    for slot in slots.iter_mut() {
        if let Some((stream, started)) = slot.stream.take() {
            finish(
                slot.index, stream, started, &window, &limits, &mut reply, &mut tally,
            );
        }
    }
    tally.finished = Some(Instant::now().max(window.start));
    Ok(tally)
}

/// Opens `slot`'s next connection; a failure is a connect failure. One
/// begun in the window is owed a reply.
fn connect(worker: &Worker, slot: &mut Slot, window: &Window, tally: &mut Tally) {
    let started = Instant::now();
    let options = &worker.options;
    let opened = match options.source_addrs.as_slice() {
        [] => crate::socket::connect_timed(worker.dest, options.timeout),
        _ => open_connection(worker.dest, options, slot.index),
    };
    match opened {
        Ok(stream) => {
            if window.counts(started) {
                tally.begun += 1;
            }
            slot.stream = Some((stream, started));
        }
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
    stream: TcpStream,
    started: Instant,
    window: &Window,
    limits: &Limits,
    reply: &mut [u8; READ_CAP],
    tally: &mut Tally,
) {
    let len = match read_reply(&stream, reply, limits) {
        Ok(len) => len,
        Err(Stop::Cut) => return, // abandoned: the run is over
        Err(Stop::Failed(err)) => {
            tally.errors += 1;
            if tally.first_error.is_none() {
                let why = super::why(&err, limits.timeout);
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

/// Reads until EOF or until more than a line's worth has come, by the
/// limit (`deadline::read` retries interrupted reads).
fn read_reply(stream: &TcpStream, reply: &mut [u8], limits: &Limits) -> Result<usize, Stop> {
    let mut len = 0;
    while len < reply.len() {
        match deadline::read(stream, &mut reply[len..], limits)? {
            0 => break,
            n => len += n,
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
