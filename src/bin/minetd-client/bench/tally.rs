//! The tally: what one worker counted (round trips, latencies in an
//! HdrHistogram, mismatches, failures, unanswered messages) and how a
//! failure, a mismatch or a stop is recorded, with the first of each kind
//! kept for the report. Workers' tallies merge into the run's.

use std::io;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::Conn;
use super::deadline::Stop;
use super::hist;
use crate::error::{Error, is_timeout};

/// What one worker counted.
#[derive(Debug)]
pub(super) struct Tally {
    /// Latencies of the measured messages, in microseconds.
    pub(super) latency: Histogram<u64>,
    /// Open loop: the same from each message's actual write.
    pub(super) service: Histogram<u64>,
    /// With `--hist-log`: `latency` again, one histogram per second of
    /// the measurement (by when each message completed).
    pub(super) intervals: Option<Vec<Histogram<u64>>>,
    /// When measuring started, for `intervals`.
    pub(super) measure_start: Instant,
    /// Bytes read, for churn's throughput.
    pub(super) bytes_in: u64,
    pub(super) round_trips: u64,
    /// Measured messages begun: sent (or, open loop, due) in the window.
    /// Those whose whole answer was not checked are the unanswered ones.
    pub(super) begun: u64,
    pub(super) mismatches: u64,
    /// UDP: measured datagrams given up on after `--loss-after`, while the
    /// window was open (so their socket sent its next).
    pub(super) lost: u64,
    /// UDP: correct echoes of earlier measured datagrams that came when
    /// they were no longer awaited: after being counted lost, or again.
    pub(super) late: u64,
    pub(super) connect_failures: u64,
    pub(super) errors: u64,
    /// Connections opened and confirmed by their first echo.
    pub(super) opened: u64,
    /// The first mismatch, connect failure and error, to tell the user.
    pub(super) first_mismatch: Option<String>,
    pub(super) first_connect_failure: Option<String>,
    pub(super) first_error: Option<String>,
    /// When this worker's last round ended.
    pub(super) finished: Option<Instant>,
}

impl Tally {
    pub(super) fn new(intervals: bool, measure_start: Instant) -> Result<Tally, Error> {
        Ok(Tally {
            latency: hist::new_histogram()?,
            service: hist::new_histogram()?,
            intervals: intervals.then(Vec::new),
            measure_start,
            bytes_in: 0,
            round_trips: 0,
            begun: 0,
            mismatches: 0,
            lost: 0,
            late: 0,
            connect_failures: 0,
            errors: 0,
            opened: 0,
            first_mismatch: None,
            first_connect_failure: None,
            first_error: None,
            finished: None,
        })
    }

    /// Adds another worker's counts to these.
    pub(super) fn merge(&mut self, other: Tally) -> Result<(), Error> {
        hist::add(&mut self.latency, &other.latency)?;
        hist::add(&mut self.service, &other.service)?;
        if let (Some(into), Some(from)) = (&mut self.intervals, &other.intervals) {
            for (n, histogram) in from.iter().enumerate() {
                if n == into.len() {
                    into.push(hist::new_histogram()?);
                }
                hist::add(&mut into[n], histogram)?;
            }
        }
        self.bytes_in += other.bytes_in;
        self.round_trips += other.round_trips;
        self.begun += other.begun;
        self.mismatches += other.mismatches;
        self.lost += other.lost;
        self.late += other.late;
        self.connect_failures += other.connect_failures;
        self.errors += other.errors;
        self.opened += other.opened;
        self.first_mismatch = self.first_mismatch.take().or(other.first_mismatch);
        self.first_connect_failure = self
            .first_connect_failure
            .take()
            .or(other.first_connect_failure);
        self.first_error = self.first_error.take().or(other.first_error);
        self.finished = self.finished.max(other.finished);
        Ok(())
    }
}

impl Tally {
    /// Counts a failed connection and marks it for removal. A connection
    /// that fails before its first echo (round 0, in the ramp) was never
    /// usable, as when a server at its connection limit accepts and closes
    /// at once: that is a connect failure, not an error.
    pub(super) fn fail(
        &mut self,
        conn: &mut Conn,
        round: u64,
        doing: &str,
        err: &io::Error,
        timeout: Duration,
    ) {
        conn.failed = true;
        let (count, first, doing) = if round == 0 {
            let doing = format!("{doing} of its first echo");
            (
                &mut self.connect_failures,
                &mut self.first_connect_failure,
                doing,
            )
        } else {
            (&mut self.errors, &mut self.first_error, doing.to_string())
        };
        *count += 1;
        if first.is_none() {
            *first = Some(format!(
                "conn {}: {doing}: {}",
                conn.index,
                why(err, timeout)
            ));
        }
    }

    /// Handles a read or write that did not complete: a failure is counted
    /// as [`Tally::fail`] does; a cut (the run's end came first) only
    /// drops the connection, its messages left unanswered, except in the
    /// ramp, where a connection not confirmed in time failed to open.
    pub(super) fn stop(
        &mut self,
        conn: &mut Conn,
        round: u64,
        doing: &str,
        stop: Stop,
        timeout: Duration,
    ) {
        match stop {
            Stop::Cut if round > 0 => conn.failed = true,
            stop => self.fail(conn, round, doing, &stop.into_error(), timeout),
        }
    }

    /// Counts an open-loop connection that failed after the ramp.
    pub(super) fn fail_open(
        &mut self,
        index: u64,
        doing: &str,
        err: &io::Error,
        timeout: Duration,
    ) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("conn {index}: {doing}: {}", why(err, timeout)));
        }
    }

    /// Records one measured message's latency; it completed at `done`.
    pub(super) fn record(&mut self, latency: Duration, done: Instant) {
        let micros = hist::micros(latency);
        self.latency.saturating_record(micros);
        if let Some(intervals) = &mut self.intervals {
            let second = done.saturating_duration_since(self.measure_start).as_secs() as usize;
            while intervals.len() <= second {
                match hist::new_histogram() {
                    Ok(histogram) => intervals.push(histogram),
                    Err(_) => return, // cannot happen with constant bounds
                }
            }
            intervals[second].saturating_record(micros);
        }
    }

    /// Records one open-loop message's time from its actual write.
    pub(super) fn record_service(&mut self, latency: Duration) {
        self.service.saturating_record(hist::micros(latency));
    }

    /// Counts an echo that differs from the message sent.
    pub(super) fn mismatch(&mut self, index: u64, round: u64, sent: &[u8], echoed: &[u8]) {
        let at = sent
            .iter()
            .zip(echoed)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        self.mismatch_at(index, round, at, sent.len(), sent[at], echoed[at]);
    }

    /// Counts a message whose byte `at` (of `len`) was `got`, not `expected`.
    pub(super) fn mismatch_at(
        &mut self,
        index: u64,
        round: u64,
        at: usize,
        len: usize,
        expected: u8,
        got: u8,
    ) {
        self.mismatches += 1;
        if self.first_mismatch.is_none() {
            self.first_mismatch = Some(format!(
                "conn {index} round {round}: byte {at} of {len} is 0x{got:02x}, expected 0x{expected:02x}"
            ));
        }
    }

    /// Counts a datagram of the wrong length: `len` bytes, not `size`.
    pub(super) fn mismatched_length(&mut self, index: u64, seq: u64, len: usize, size: usize) {
        self.mismatches += 1;
        if self.first_mismatch.is_none() {
            self.first_mismatch = Some(format!(
                "conn {index} round {seq}: {len} bytes came back, not {size}"
            ));
        }
    }

    /// Counts bytes a discard server sent, which it never should.
    pub(super) fn unexpected_bytes(&mut self, index: u64, n: usize) {
        self.mismatches += 1;
        if self.first_mismatch.is_none() {
            self.first_mismatch = Some(format!(
                "conn {index}: the discard server sent {n} bytes back"
            ));
        }
    }
}

/// Why an I/O error happened, in words for the report.
pub(super) fn why(err: &io::Error, timeout: Duration) -> String {
    match err.kind() {
        io::ErrorKind::UnexpectedEof => "the server closed the connection".to_string(),
        _ if is_timeout(err) => format!("timed out after {} s (--timeout)", timeout.as_secs_f64()),
        _ => err.to_string(),
    }
}
