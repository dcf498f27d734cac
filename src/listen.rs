//! Listeners handed in by the embedder: a `std` socket it already holds
//! (from its parent process, a service manager, or its own binding), paired
//! with the service to serve on it, and the checks that make sure the loop
//! can serve it.
//!
//! A socket of the wrong kind would not fail loudly later: `accept` on a
//! socket that is not listening returns `EINVAL` on every call, and the loop
//! would retry it each turn. So every held listener is checked once, before
//! the server starts.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd};

use crate::config::Service;

/// A listening socket the embedder already holds, and the service to serve
/// on it: given to [`Server::bind_with`](crate::Server::bind_with).
///
/// The server takes the socket as it is: it sets it non-blocking but keeps
/// its address, options and listen backlog, which whoever created it chose
/// (a systemd socket unit's `Backlog=`, say). UDP's loopback-only rule of
/// [`Config::validate`](crate::Config::validate) does not apply either: the
/// holder chose the address.
#[derive(Debug)]
pub enum HeldListener {
    /// A listening TCP socket for a stream service ([`Service::Echo`],
    /// [`Service::Daytime`], [`Service::Discard`], [`Service::Chargen`],
    /// [`Service::Time`]).
    Tcp(Service, std::net::TcpListener),
    /// A bound UDP socket for a datagram service ([`Service::UdpEcho`] and
    /// the other `Udp*`).
    Udp(Service, std::net::UdpSocket),
}

impl HeldListener {
    /// The service it is to serve.
    pub fn service(&self) -> Service {
        match self {
            HeldListener::Tcp(service, _) | HeldListener::Udp(service, _) => *service,
        }
    }

    /// Checks that the socket is what its service needs, and makes it
    /// non-blocking for the loop.
    pub(crate) fn check(&self) -> Result<(), HeldProblem> {
        let service = self.service();
        let (fd, wants_stream) = match self {
            HeldListener::Tcp(_, listener) => (listener.as_fd(), true),
            HeldListener::Udp(_, socket) => (socket.as_fd(), false),
        };
        if wants_stream == service.is_udp() {
            return Err(if service.is_udp() {
                HeldProblem::NotDatagram
            } else {
                HeldProblem::NotStream
            });
        }
        let domain = socket_option(&fd, libc::SO_DOMAIN).map_err(HeldProblem::Io)?;
        if domain != libc::AF_INET && domain != libc::AF_INET6 {
            return Err(HeldProblem::NotInet);
        }
        let kind = socket_option(&fd, libc::SO_TYPE).map_err(HeldProblem::Io)?;
        if wants_stream && kind != libc::SOCK_STREAM {
            return Err(HeldProblem::NotStream);
        }
        if !wants_stream && kind != libc::SOCK_DGRAM {
            return Err(HeldProblem::NotDatagram);
        }
        if wants_stream && socket_option(&fd, libc::SO_ACCEPTCONN).map_err(HeldProblem::Io)? == 0 {
            return Err(HeldProblem::NotListening);
        }
        match self {
            HeldListener::Tcp(_, listener) => listener.set_nonblocking(true),
            HeldListener::Udp(_, socket) => socket.set_nonblocking(true),
        }
        .map_err(HeldProblem::Io)
    }
}

/// Why a [`HeldListener`] cannot be served.
#[derive(Debug)]
#[non_exhaustive]
pub enum HeldProblem {
    /// The service is a stream service and the socket is not a stream
    /// socket (or was given as [`HeldListener::Udp`]).
    NotStream,
    /// The service is a datagram service and the socket is not a datagram
    /// socket (or was given as [`HeldListener::Tcp`]).
    NotDatagram,
    /// A stream socket that is not listening: a connected socket (as
    /// systemd's `Accept=yes` hands over), or one never put to `listen`.
    NotListening,
    /// Neither an IPv4 nor an IPv6 socket (a Unix socket, say).
    NotInet,
    /// The OS refused a call on it (it is not a socket at all, say).
    Io(io::Error),
}

impl fmt::Display for HeldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeldProblem::NotStream => {
                f.write_str("is not a stream socket, which a TCP service needs")
            }
            HeldProblem::NotDatagram => {
                f.write_str("is not a datagram socket, which a UDP service needs")
            }
            HeldProblem::NotListening => f.write_str("is a connected socket, not a listening one"),
            HeldProblem::NotInet => f.write_str("is not an IPv4 or IPv6 socket"),
            HeldProblem::Io(err) => write!(f, "cannot be served: {err}"),
        }
    }
}

/// Reads an integer `SOL_SOCKET` option.
fn socket_option(socket: &impl AsRawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a live c_int on a
    // descriptor the caller holds.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}
