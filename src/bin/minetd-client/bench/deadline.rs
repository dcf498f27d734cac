//! When a run's I/O must stop, and reads and writes that keep to it.
//!
//! The contract: every run ends by itself, no later than `--timeout` + 2 s
//! after its measured window closes, whatever the server does. Two limits
//! make that hold with blocking sockets:
//!
//! - No message is begun after the window closes ([`Limits::begin_until`]),
//!   so the work left at the end is what was in flight then: at most
//!   `--pipeline` messages per connection.
//! - Every read and write of the phase ends by one instant
//!   ([`Limits::by`]): the window's end plus `--timeout`. A socket's own
//!   timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO`, set to `--timeout` when it is
//!   opened) bounds each call, not a whole message: a server that trickles
//!   a byte at a time, or a sweep over many connections that each wait
//!   their full timeout, would otherwise go on long after the window.
//!   So each call waits at most until `by`; only when that is sooner than
//!   `--timeout` is the socket's timeout shortened for the call (two extra
//!   system calls, only after the window, or in the ramp's confirmation).
//!
//! The echo loops, closed and open, wait with poll(2) instead of in a
//! blocking read, and keep the same rules per connection
//! (`closed::receive_echoes`, `open::receive`).
//!
//! A call that ends because `by` came is [`Stop::Cut`]: the run abandoned
//! it, which is no fault of the server's, and the message counts as
//! unanswered. A call that waited its whole `--timeout` first is
//! [`Stop::Failed`], an error, as any other I/O failure.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::error::is_timeout;

/// How long one phase of a worker's I/O may go on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// No message is begun at or after this.
    pub(super) begin_until: Instant,
    /// Every read and write ends by this.
    pub(super) by: Instant,
    /// `--timeout`: the longest one call may wait for the server.
    pub(super) timeout: Duration,
}

impl Limits {
    /// The ramp's confirmation of a batch of connections: one `--timeout`
    /// for the whole batch from now, not one per connection, so a server
    /// that never answers costs a batch one timeout, not one per connection.
    pub(super) fn confirm(timeout: Duration) -> Limits {
        let by = Instant::now() + timeout;
        Limits {
            begin_until: by,
            by,
            timeout,
        }
    }

    /// The measurement (and its warm-up), whose window closes at `end`.
    pub(super) fn measure(end: Instant, timeout: Duration) -> Limits {
        Limits {
            begin_until: end,
            by: end + timeout,
            timeout,
        }
    }

    /// Whether it is too late to begin a message.
    pub(super) fn closed(&self) -> bool {
        Instant::now() >= self.begin_until
    }
}

/// Why a bounded read or write did not complete.
#[derive(Debug)]
pub(super) enum Stop {
    /// The phase's end came first: the message is abandoned.
    Cut,
    /// The server failed: closed, reset, or silent for a whole `--timeout`.
    Failed(io::Error),
}

impl Stop {
    /// The error to report when a cut must still count as a failure (a
    /// connection not confirmed in time, a discard server that never closes).
    pub(super) fn into_error(self) -> io::Error {
        match self {
            Stop::Cut => io::Error::from(io::ErrorKind::TimedOut),
            Stop::Failed(err) => err,
        }
    }
}

/// What becomes of a connection that has an echo in flight and nothing to
/// read (poll found it not ready at `now`), last heard from at `heard`:
/// the same as a blocking read on it would come to. Silent for a whole
/// `--timeout` that ended by `by`, it failed; after `by` (`past_end`: the
/// look began after it), what had not arrived is cut; otherwise it is
/// still waited for.
pub(super) fn unready(
    heard: Instant,
    now: Instant,
    past_end: bool,
    limits: &Limits,
) -> Option<Stop> {
    let silent_until = heard + limits.timeout;
    if silent_until <= now && silent_until <= limits.by {
        Some(Stop::Failed(io::Error::from(io::ErrorKind::TimedOut)))
    } else if past_end {
        Some(Stop::Cut)
    } else {
        None
    }
}

/// Which of the socket's two timeouts a call waits on.
#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// Runs one `read` or `write` on `stream` that returns by `limits.by`.
/// After `by`, a read still takes what has already arrived (without
/// waiting); a write is not tried at all.
fn bounded<T>(
    stream: &TcpStream,
    limits: &Limits,
    direction: Direction,
    mut call: impl FnMut() -> io::Result<T>,
) -> Result<T, Stop> {
    loop {
        let left = limits.by.saturating_duration_since(Instant::now());
        let result = if left.is_zero() {
            if let Direction::Write = direction {
                return Err(Stop::Cut);
            }
            stream.set_nonblocking(true).map_err(Stop::Failed)?;
            let result = call();
            stream.set_nonblocking(false).map_err(Stop::Failed)?;
            result.map_err(|err| {
                if err.kind() == io::ErrorKind::WouldBlock {
                    Stop::Cut
                } else {
                    Stop::Failed(err)
                }
            })
        } else if left < limits.timeout {
            set_timeout(stream, direction, left).map_err(Stop::Failed)?;
            let result = call();
            set_timeout(stream, direction, limits.timeout).map_err(Stop::Failed)?;
            // The shortened timeout ran out: the phase's end came first.
            result.map_err(|err| {
                if is_timeout(&err) {
                    Stop::Cut
                } else {
                    Stop::Failed(err)
                }
            })
        } else {
            call().map_err(Stop::Failed)
        };
        match result {
            Err(Stop::Failed(err)) if err.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

fn set_timeout(stream: &TcpStream, direction: Direction, wait: Duration) -> io::Result<()> {
    match direction {
        Direction::Read => stream.set_read_timeout(Some(wait)),
        Direction::Write => stream.set_write_timeout(Some(wait)),
    }
}

/// One `read` into `buf` that returns by `limits.by`; `Ok(0)` is EOF.
pub(super) fn read(stream: &TcpStream, buf: &mut [u8], limits: &Limits) -> Result<usize, Stop> {
    bounded(stream, limits, Direction::Read, || {
        let mut stream = stream;
        stream.read(buf)
    })
}

/// Fills `buf` from `stream` by `limits.by`; EOF first is a failure.
pub(super) fn read_exact(stream: &TcpStream, buf: &mut [u8], limits: &Limits) -> Result<(), Stop> {
    let mut filled = 0;
    while filled < buf.len() {
        match read(stream, &mut buf[filled..], limits)? {
            0 => return Err(Stop::Failed(io::ErrorKind::UnexpectedEof.into())),
            n => filled += n,
        }
    }
    Ok(())
}

/// Writes all of `buf` to `stream` by `limits.by`.
pub(super) fn write_all(stream: &TcpStream, buf: &[u8], limits: &Limits) -> Result<(), Stop> {
    let mut written = 0;
    while written < buf.len() {
        let n = bounded(stream, limits, Direction::Write, || {
            let mut stream = stream;
            stream.write(&buf[written..])
        })?;
        if n == 0 {
            return Err(Stop::Failed(io::ErrorKind::WriteZero.into()));
        }
        written += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connected pair on loopback: (client, server side).
    fn pair(timeout: Duration) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(timeout)).unwrap();
        client.set_write_timeout(Some(timeout)).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn a_read_past_the_end_takes_what_has_arrived_and_no_more() {
        let timeout = Duration::from_secs(5);
        let (client, mut server) = pair(timeout);
        let limits = Limits::measure(Instant::now() - timeout, timeout);
        server.write_all(b"abc").unwrap();
        // Let the bytes cross loopback before the non-waiting read.
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0; 8];
        let started = Instant::now();
        assert_eq!(read(&client, &mut buf, &limits).unwrap(), 3);
        assert!(matches!(read(&client, &mut buf, &limits), Err(Stop::Cut)));
        assert!(matches!(write_all(&client, b"x", &limits), Err(Stop::Cut)));
        assert!(started.elapsed() < Duration::from_secs(1));
        // The socket is blocking again, with its own timeout.
        assert_eq!(client.read_timeout().unwrap(), Some(timeout));
    }

    #[test]
    fn a_trickled_message_is_cut_at_the_end_not_after_each_timeout() {
        let timeout = Duration::from_millis(300);
        let (client, mut server) = pair(timeout);
        let writer = std::thread::spawn(move || {
            // A byte every 100 ms: no single read waits its timeout.
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(100));
                if server.write_all(b"x").is_err() {
                    return;
                }
            }
        });
        let limits = Limits::measure(Instant::now(), timeout);
        let started = Instant::now();
        let mut buf = [0; 20];
        assert!(matches!(
            read_exact(&client, &mut buf, &limits),
            Err(Stop::Cut)
        ));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(600),
            "{took:?}"
        );
        assert_eq!(client.read_timeout().unwrap(), Some(timeout));
        drop(client);
        writer.join().unwrap();
    }

    #[test]
    fn silence_for_the_whole_timeout_in_the_window_is_a_failure() {
        let timeout = Duration::from_millis(100);
        let (client, _server) = pair(timeout);
        let limits = Limits::measure(Instant::now() + Duration::from_secs(5), timeout);
        let mut buf = [0; 1];
        match read(&client, &mut buf, &limits) {
            Err(Stop::Failed(err)) => assert!(is_timeout(&err), "{err}"),
            other => panic!("{other:?}"),
        }
    }
}
