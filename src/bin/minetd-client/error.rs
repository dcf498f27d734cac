//! The client's runtime errors: each is one line for the user, and each maps
//! to exit status 1 (usage errors, exit 2, never get this far: clap reports
//! them before any command runs).

use std::fmt;
use std::io;
use std::time::Duration;

/// Why a command failed.
#[derive(Debug)]
pub enum Error {
    /// The connection could not be opened: name lookup, refusal, timeout.
    Connect {
        /// The address as the user gave it.
        addr: String,
        /// What the OS or the resolver said.
        source: io::Error,
    },
    /// The peer said nothing for `--timeout`.
    Timeout {
        /// The address as the user gave it.
        addr: String,
        /// The `--timeout` that ran out.
        timeout: Duration,
        /// What we were waiting to do (`"receiving from"`, `"sending to"`).
        waiting_to: &'static str,
    },
    /// Any other I/O failure, with what we were doing.
    Io {
        /// What we were doing, naming the peer or stream.
        context: String,
        /// What the OS said.
        source: io::Error,
    },
    /// A failure that is not an OS error (an echo that came back short, a
    /// benchmark that saw mismatches).
    Failed(String),
    /// Input that is wrong in a way only the command itself can see (a
    /// `merge` file that is not a bench result): exit status 2.
    Usage(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            Error::Timeout {
                addr,
                timeout,
                waiting_to,
            } => write!(
                f,
                "timed out after {} s {waiting_to} {addr} (--timeout)",
                timeout.as_secs_f64()
            ),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Failed(message) | Error::Usage(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } | Error::Io { source, .. } => Some(source),
            Error::Timeout { .. } | Error::Failed(_) | Error::Usage(_) => None,
        }
    }
}

/// Whether `err` is a socket timeout: Linux reports an expired
/// `SO_RCVTIMEO`/`SO_SNDTIMEO` as `EAGAIN`, which std calls `WouldBlock`.
pub fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_message_names_the_timeout() {
        let err = Error::Timeout {
            addr: "127.0.0.1:7013".to_string(),
            timeout: Duration::from_millis(500),
            waiting_to: "receiving from",
        };
        assert_eq!(
            err.to_string(),
            "timed out after 0.5 s receiving from 127.0.0.1:7013 (--timeout)"
        );
    }
}
