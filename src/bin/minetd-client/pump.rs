//! Moving bytes between the terminal (or pipes) and one blocking socket.
//!
//! Output is flushed after every chunk: these commands are used
//! interactively, and a line typed into `echo` should come back while the
//! user is still looking at it, not when a buffer fills.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, is_timeout};

/// Bytes moved per read: a terminal line or a pipe's worth, whichever is
/// smaller, without making a slow peer's output wait.
const CHUNK: usize = 16 * 1024;

/// The peer of a command, for messages and for the `--timeout` it obeys.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The address as the user gave it.
    pub name: String,
    /// How long a read may wait for the peer.
    pub timeout: Duration,
}

impl Peer {
    /// The error for a failed read from this peer.
    fn receive_error(&self, source: io::Error) -> Error {
        if is_timeout(&source) {
            return Error::Timeout {
                addr: self.name.clone(),
                timeout: self.timeout,
                waiting_to: "receiving from",
            };
        }
        Error::Io {
            context: format!("cannot receive from {}", self.name),
            source,
        }
    }

    /// The error for a failed write to this peer.
    fn send_error(&self, source: io::Error) -> Error {
        if is_timeout(&source) {
            return Error::Timeout {
                addr: self.name.clone(),
                timeout: self.timeout,
                waiting_to: "sending to",
            };
        }
        Error::Io {
            context: format!("cannot send to {}", self.name),
            source,
        }
    }
}

/// Writes all of `bytes` to the peer.
pub fn send(stream: &mut TcpStream, peer: &Peer, bytes: &[u8]) -> Result<(), Error> {
    stream.write_all(bytes).map_err(|err| peer.send_error(err))
}

/// Copies everything the peer sends to stdout until it closes. A closed
/// stdout (`| head -c1`) ends the copy successfully: the reader has what it
/// wanted.
pub fn print_until_close(stream: &mut TcpStream, peer: &Peer) -> Result<(), Error> {
    let mut chunk = [0; CHUNK];
    let mut out = io::stdout().lock();
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(peer.receive_error(err)),
        };
        if print(&mut out, &chunk[..n])? == Printed::StdoutClosed {
            return Ok(());
        }
    }
}

/// Whether stdout still takes bytes.
#[derive(Debug, PartialEq, Eq)]
enum Printed {
    /// The bytes were written and flushed.
    Ok,
    /// The reader of stdout went away (`BrokenPipe`): stop, successfully.
    StdoutClosed,
}

/// Writes `bytes` to stdout and flushes them at once.
fn print(out: &mut impl Write, bytes: &[u8]) -> Result<Printed, Error> {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(Printed::Ok),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(Printed::StdoutClosed),
        Err(source) => Err(Error::Io {
            context: "cannot write to stdout".to_string(),
            source,
        }),
    }
}

/// Streams stdin to the peer and the peer's bytes to stdout at the same
/// time: a thread copies stdin to the socket and half-closes it at the end
/// of input, while this thread prints what comes back until the peer closes.
///
/// `--timeout` only counts while the peer owes us something (bytes we sent
/// and it has not echoed, or its close after our half-close): a user who
/// stops typing for a minute is not a dead server.
pub fn echo(stream: TcpStream, peer: &Peer) -> Result<(), Error> {
    let sender = stream.try_clone().map_err(|source| Error::Io {
        context: format!("cannot share the connection to {}", peer.name),
        source,
    })?;
    let progress = Arc::new(Mutex::new(Progress::new()));
    let (shared, sender_peer) = (Arc::clone(&progress), peer.clone());
    // Not joined: when the peer closes first, the thread may be blocked on a
    // terminal that never sends EOF, and leaving `main` ends it.
    thread::spawn(move || forward_stdin(sender, &shared, &sender_peer));
    let received = print_echoes(stream, &progress, peer);
    // A failure to send explains whatever the receiving side saw after it.
    match lock(&progress).failure.take() {
        Some(failure) => Err(failure),
        None => received,
    }
}

/// The echo exchange as both threads see it.
#[derive(Debug)]
struct Progress {
    /// Bytes taken from stdin for the peer (counted before they are written,
    /// so `received` can never overtake it).
    sent: u64,
    /// Bytes the peer sent back.
    received: u64,
    /// Stdin ended and the sending side was (or is being) shut down.
    input_done: bool,
    /// Since when the peer has owed us something without sending a byte.
    waiting_since: Instant,
    /// Why the stdin thread stopped early, reported instead of its effects.
    failure: Option<Error>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            sent: 0,
            received: 0,
            input_done: false,
            waiting_since: Instant::now(),
            failure: None,
        }
    }

    /// Whether the peer owes us bytes or its close.
    fn owes(&self) -> bool {
        self.sent > self.received || self.input_done
    }

    /// Notes that we are about to be owed something new; the wait starts now
    /// unless an older debt is still open.
    fn start_owing(&mut self) {
        if !self.owes() {
            self.waiting_since = Instant::now();
        }
    }
}

/// Locks the shared progress; a panic on the other thread leaves the counts
/// consistent (each update is a plain store), so poisoning is ignored.
fn lock(progress: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    progress.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The stdin thread: copies stdin to the peer and half-closes at its end.
/// On failure it records why and shuts the socket so the receiving side
/// stops too.
fn forward_stdin(mut stream: TcpStream, progress: &Mutex<Progress>, peer: &Peer) {
    if let Err(err) = copy_stdin(&mut stream, progress, peer) {
        lock(progress).failure = Some(err);
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// Copies stdin to `stream` chunk by chunk (a terminal delivers one line per
/// read), then shuts down the sending side.
fn copy_stdin(
    stream: &mut TcpStream,
    progress: &Mutex<Progress>,
    peer: &Peer,
) -> Result<(), Error> {
    let mut chunk = [0; CHUNK];
    let mut input = io::stdin().lock();
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(Error::Io {
                    context: "cannot read stdin".to_string(),
                    source,
                });
            }
        };
        {
            let mut progress = lock(progress);
            progress.start_owing();
            progress.sent += n as u64;
        }
        send(stream, peer, &chunk[..n])?;
    }
    {
        let mut progress = lock(progress);
        progress.start_owing();
        progress.input_done = true;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|source| Error::Io {
            context: format!("cannot half-close the connection to {}", peer.name),
            source,
        })
}

/// Prints what the peer sends until it closes, then checks that it closed
/// only after echoing everything.
fn print_echoes(
    mut stream: TcpStream,
    progress: &Mutex<Progress>,
    peer: &Peer,
) -> Result<(), Error> {
    let mut chunk = [0; CHUNK];
    let mut out = io::stdout().lock();
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return check_close(&lock(progress), peer),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) if is_timeout(&err) => {
                let wait = next_wait(&lock(progress), peer)?;
                stream
                    .set_read_timeout(Some(wait))
                    .map_err(|err| peer.receive_error(err))?;
                continue;
            }
            Err(err) => return Err(peer.receive_error(err)),
        };
        {
            let mut progress = lock(progress);
            progress.received += n as u64;
            progress.waiting_since = Instant::now();
        }
        if print(&mut out, &chunk[..n])? == Printed::StdoutClosed {
            return Ok(());
        }
    }
}

/// After a read timed out: an error if the peer has owed us something for
/// the whole `--timeout`, otherwise how long the next read may wait.
fn next_wait(progress: &Progress, peer: &Peer) -> Result<Duration, Error> {
    if !progress.owes() {
        return Ok(peer.timeout); // idle: nobody is typing
    }
    let waited = progress.waiting_since.elapsed();
    if waited >= peer.timeout {
        return Err(peer.receive_error(io::ErrorKind::TimedOut.into()));
    }
    // A zero read timeout is refused by the OS; a millisecond is as good.
    Ok((peer.timeout - waited).max(Duration::from_millis(1)))
}

/// The peer closed: fine after our half-close with every byte echoed.
fn check_close(progress: &Progress, peer: &Peer) -> Result<(), Error> {
    if progress.failure.is_some() {
        return Ok(()); // the caller reports the failure itself
    }
    if !progress.input_done {
        return Err(Error::Failed(format!(
            "{} closed the connection before the end of input",
            peer.name
        )));
    }
    if progress.received < progress.sent {
        return Err(Error::Failed(format!(
            "{} closed the connection with {} of {} bytes not echoed",
            peer.name,
            progress.sent - progress.received,
            progress.sent
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer {
            name: "127.0.0.1:7007".to_string(),
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn idle_echo_waits_a_full_timeout_again() {
        let mut progress = Progress::new();
        progress.waiting_since = Instant::now() - Duration::from_secs(60);
        assert_eq!(next_wait(&progress, &peer()).unwrap(), peer().timeout);
    }

    #[test]
    fn owed_bytes_time_out_after_the_timeout() {
        let mut progress = Progress::new();
        progress.sent = 5;
        progress.waiting_since = Instant::now() - Duration::from_secs(11);
        let err = next_wait(&progress, &peer()).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    }

    #[test]
    fn owed_bytes_wait_only_for_the_rest_of_the_timeout() {
        let mut progress = Progress::new();
        progress.sent = 5;
        progress.waiting_since = Instant::now() - Duration::from_secs(4);
        let wait = next_wait(&progress, &peer()).unwrap();
        assert!(wait <= Duration::from_secs(6), "{wait:?}");
    }

    #[test]
    fn close_before_end_of_input_is_an_error() {
        let progress = Progress::new();
        assert!(check_close(&progress, &peer()).is_err());
    }

    #[test]
    fn close_with_bytes_owed_is_an_error() {
        let mut progress = Progress::new();
        progress.input_done = true;
        progress.sent = 10;
        progress.received = 7;
        let err = check_close(&progress, &peer()).unwrap_err();
        assert!(err.to_string().contains("3 of 10 bytes"), "{err}");
    }

    #[test]
    fn close_after_full_echo_is_success() {
        let mut progress = Progress::new();
        progress.input_done = true;
        progress.sent = 10;
        progress.received = 10;
        assert!(check_close(&progress, &peer()).is_ok());
    }

    #[test]
    fn broken_pipe_on_stdout_stops_quietly() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert_eq!(print(&mut Closed, b"x").unwrap(), Printed::StdoutClosed);
    }
}
