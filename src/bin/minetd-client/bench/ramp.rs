//! Opening the connections: the descriptor limit checked up front, the
//! connections shared among the workers, each worker's ramp (at most
//! `RAMP_IN_FLIGHT` opening at once, `--connect-rate` spacing them), and
//! the confirming echo that proves each connection served before the
//! measurement starts.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Tally;
use super::closed::Echo;
use super::deadline::Limits;
use super::{Conn, Mode, Options, Worker, sleep_until};
use crate::addr::set_timeouts;
use crate::error::Error;
use crate::socket;

/// Connections the whole client opens before it confirms them with one
/// echo each. Confirmed connections have left the server's accept queue, so
/// the queue never holds more than this, under std's and mio's default
/// listen backlog of 128 even if the server never raised it; beyond the
/// backlog Linux drops SYNs and the ramp stalls on retransmits.
pub(super) const RAMP_IN_FLIGHT: usize = 128;

/// A thread stops opening connections after this many failures in a row
/// (counting the rest as failures too): when the server takes no more, each
/// further attempt could cost a whole `--timeout`.
pub(super) const MAX_FAILURES_IN_A_ROW: usize = 16;

/// Descriptors needed besides the connections: stdio, the resolver's and
/// whatever else the process holds, with room to spare.
pub(super) const SPARE_FDS: u64 = 64;

impl Worker {
    /// Opens this worker's connections in batches, confirming each batch
    /// with one unmeasured echo (round 0) before opening the next.
    pub(super) fn ramp(&mut self, tally: &mut Tally) {
        let batch = (RAMP_IN_FLIGHT / self.options.threads).max(1);
        let mut failures_in_a_row = 0;
        let mut next = self.range.start;
        while next < self.range.end && !self.shared.stopping() {
            let batch_end = (next + batch).min(self.range.end);
            for index in next..batch_end {
                if let Some(at) = connect_time(&self.options, self.number, index - self.range.start)
                {
                    sleep_until(self.shared.ramp_start + at);
                }
                if failures_in_a_row >= MAX_FAILURES_IN_A_ROW {
                    tally.connect_failures += 1; // not tried: see MAX_FAILURES_IN_A_ROW
                } else if self.open(index, tally) {
                    failures_in_a_row = 0;
                } else {
                    failures_in_a_row += 1;
                }
            }
            self.shared
                .attempted
                .fetch_add(batch_end - next, Ordering::Relaxed);
            self.confirm(tally);
            self.confirmed = self.conns.len();
            next = batch_end;
        }
        // Ctrl-C during the ramp: the connections never opened count as failed.
        tally.connect_failures += (self.range.end - next) as u64;
        tally.opened = self.conns.len() as u64;
    }

    /// Opens connection `index`; false (and counted) if it fails.
    pub(super) fn open(&mut self, index: usize, tally: &mut Tally) -> bool {
        let opened = match self.first.take() {
            Some(stream) => Ok(stream),
            None => open_connection(self.dest, &self.options, index),
        };
        match opened {
            Ok(stream) => {
                self.conns.push(Conn {
                    stream,
                    index: index as u64,
                    sent_at: vec![Instant::now(); self.options.pipeline],
                    last_sent: 0,
                    echo: Echo::new(index as u64, 0),
                    heard: Instant::now(),
                    failed: false,
                    position: 0,
                });
                true
            }
            Err(err) => {
                tally.connect_failures += 1;
                if tally.first_connect_failure.is_none() {
                    tally.first_connect_failure = Some(connect_failure(index, &err));
                }
                false
            }
        }
    }

    /// Proves the connections just opened work, unmeasured (round 0): one
    /// echo, or one chunk of chargen, within one `--timeout` for the whole
    /// batch. Discard never answers, so its connections are proved by the
    /// measured writes.
    pub(super) fn confirm(&mut self, tally: &mut Tally) {
        self.limits = Limits::confirm(self.options.timeout);
        match self.options.mode {
            Mode::Echo => {
                self.send_all(self.confirmed, 0, tally);
                self.receive_echoes(self.confirmed, None, tally);
            }
            Mode::Chargen => self.download(self.confirmed, 0, tally),
            Mode::Discard | Mode::Daytime | Mode::UdpEcho => {}
        }
    }
}

/// Raises the soft descriptor limit as far as the connections need.
pub(super) fn ensure_fd_limit(connections: usize) -> Result<(), Error> {
    let needed = connections as u64 + SPARE_FDS;
    let limit = rlimit::increase_nofile_limit(needed).map_err(|source| Error::Io {
        context: "cannot raise the open-file limit".to_string(),
        source,
    })?;
    if limit < needed {
        return Err(Error::Failed(format!(
            "{connections} connections need about {needed} file descriptors, \
             but the limit is {limit} (ulimit -Hn)"
        )));
    }
    Ok(())
}

/// Splits connection indices `0..connections` into `threads` contiguous,
/// near-equal ranges.
pub(super) fn shares(connections: usize, threads: usize) -> Vec<Range<usize>> {
    let (each, extra) = (connections / threads, connections % threads);
    let mut start = 0;
    (0..threads)
        .map(|t| {
            let len = each + usize::from(t < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// Opens connection number `index`, from its source address if any were
/// given, ready for the benchmark.
pub(super) fn open_connection(
    dest: SocketAddr,
    options: &Options,
    index: usize,
) -> io::Result<TcpStream> {
    let stream = match options.source_addrs.as_slice() {
        [] => TcpStream::connect_timeout(&dest, options.timeout)?,
        sources => socket::connect_from(sources[index % sources.len()], dest, options.timeout)?,
    };
    // One small message per write: never wait for an ACK to coalesce.
    stream.set_nodelay(true)?;
    set_timeouts(&stream, options.timeout)?;
    Ok(stream)
}

/// With `--connect-rate`, when (after the ramp starts) worker `worker`
/// opens its `nth` connection: the workers take turns, so the whole client
/// opens at most the rate, evenly spread.
pub(super) fn connect_time(options: &Options, worker: usize, nth: usize) -> Option<Duration> {
    let rate = options.connect_rate?;
    let threads = options.threads.clamp(1, options.connections);
    let slot = nth * threads + worker;
    Some(Duration::from_secs_f64(slot as f64 / rate))
}

/// Describes a failed connect, with a hint when the cause is well known.
pub(super) fn connect_failure(index: usize, err: &io::Error) -> String {
    let hint = if err.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
        " (out of local ports? add source addresses with --source-addrs)"
    } else {
        ""
    };
    format!("conn {index}: {err}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_connection_once() {
        let ranges = shares(10, 3);
        assert_eq!(ranges, vec![0..4, 4..7, 7..10]);
        assert_eq!(shares(2, 2), vec![0..1, 1..2]);
    }
}
