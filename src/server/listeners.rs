//! The listening sockets: binding them with a backlog deep enough for a
//! connection ramp, accepting a fair share per turn, pausing when
//! descriptors run out, and, when a `--reuse-port` process stops, taking in
//! what is already queued so that no client waiting there is reset.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::event::Source;
use mio::net::{TcpListener, UdpSocket};
use mio::{Interest, Poll, Registry, Token};

use super::notices::held_back_note;
use super::shutdown::State;
use super::{Core, LISTENER_BASE};
use crate::config::Config;
use crate::config::ConfigError;
use crate::config::Service;
use crate::conn::{interrupted, would_block};
use crate::listen::{HeldListener, HeldProblem};
use crate::sys;

/// Accepts per listener per turn: enough to ramp 10,000 connections quickly,
/// few enough that a connect flood cannot starve established peers
/// (Redis takes 10 per cycle; envoyproxy/envoy#27773). A listener still
/// ready after its share is retried next turn.
pub(super) const ACCEPTS_PER_TURN: usize = 256;

/// The accept queue length asked of the kernel (capped by somaxconn). mio
/// and std ask for 128, and a 10,000-connection ramp then stalls on SYN
/// retransmits: Linux drops SYNs while the accept queue is full.
pub(super) const LISTEN_BACKLOG: libc::c_int = 4096;

/// How long accepting pauses after running out of descriptors, unless a
/// connection closes sooner (nginx waits 500 ms). Linux leaves the
/// connection queued on EMFILE and, with the edge spent, never reports it.
pub(super) const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Why [`Server::bind`](super::Server::bind) failed.
#[derive(Debug)]
pub enum BindError {
    /// The configuration cannot be served.
    Config(ConfigError),
    /// A listener could not be bound.
    Listen {
        /// The service it was for.
        service: Service,
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The poll or its waker could not be created.
    Poll(io::Error),
    /// A `--metrics` listener could not be bound.
    Metrics {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// A listener given to [`Server::bind_with`](super::Server::bind_with) cannot be served.
    Held {
        /// Its position in the list given.
        index: usize,
        /// The service it was for.
        service: Service,
        /// What is wrong with it.
        problem: HeldProblem,
    },
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::Config(err) => write!(f, "{err}"),
            BindError::Listen {
                service,
                addr,
                source,
            } => write!(f, "cannot listen on {addr} for {service}: {source}"),
            BindError::Poll(err) => write!(f, "cannot create the event loop: {err}"),
            BindError::Metrics { addr, source } => {
                write!(f, "cannot listen on {addr} for metrics: {source}")
            }
            BindError::Held {
                index,
                service,
                problem,
            } => write!(f, "held listener {index} for {service} {problem}"),
        }
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BindError::Config(err) => Some(err),
            BindError::Listen { source, .. } => Some(source),
            BindError::Poll(err) => Some(err),
            BindError::Metrics { source, .. } => Some(source),
            BindError::Held {
                problem: HeldProblem::Io(err),
                ..
            } => Some(err),
            BindError::Held { .. } => None,
        }
    }
}

impl From<ConfigError> for BindError {
    fn from(err: ConfigError) -> Self {
        BindError::Config(err)
    }
}

pub(super) enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Socket {
    pub(super) fn source(&mut self) -> &mut dyn Source {
        match self {
            Socket::Tcp(listener) => listener,
            Socket::Udp(socket) => socket,
        }
    }
}

pub(super) struct Listener {
    pub(super) socket: Socket,
    pub(super) service: Service,
    pub(super) addr: SocketAddr,
    /// Its readiness edge has not been drained by an accept that said
    /// `WouldBlock` yet.
    pub(super) ready: bool,
    /// A UDP socket on a wildcard address, whose datagrams say where they
    /// arrived so that each is answered from there.
    pub(super) answers_from_arrival: bool,
}

/// Takes over the `held` listeners, then binds every address in `config`,
/// and registers each with `poll`, in that order: the order of the
/// listening lines and of [`Server::local_addrs`](super::Server::local_addrs).
pub(super) fn bind_listeners(
    poll: &Poll,
    config: &Config,
    held: Vec<HeldListener>,
) -> Result<Vec<Listener>, BindError> {
    let mut listeners = Vec::new();
    for (index, held) in held.into_iter().enumerate() {
        let service = held.service();
        let held_error = |problem| BindError::Held {
            index,
            service,
            problem,
        };
        held.check().map_err(held_error)?;
        let socket = match held {
            HeldListener::Tcp(_, listener) => Socket::Tcp(TcpListener::from_std(listener)),
            HeldListener::Udp(_, socket) => Socket::Udp(UdpSocket::from_std(socket)),
        };
        let listener = register_listener(poll, socket, service, listeners.len());
        listeners.push(listener.map_err(|err| held_error(HeldProblem::Io(err)))?);
    }
    for (service, addr) in config.listeners() {
        let listen_error = |source| BindError::Listen {
            service,
            addr,
            source,
        };
        let socket = if service.is_udp() {
            Socket::Udp(bind_udp(addr, config.reuse_port).map_err(listen_error)?)
        } else {
            Socket::Tcp(listen(addr, config.reuse_port).map_err(listen_error)?)
        };
        let listener = register_listener(poll, socket, service, listeners.len());
        listeners.push(listener.map_err(listen_error)?);
    }
    Ok(listeners)
}

impl Core {
    pub(super) fn mark_ready(&mut self, index: usize) {
        if let Some(listener) = self.listeners.get_mut(index) {
            listener.ready = true;
        }
    }

    /// Accepts on every listener that is still ready, up to its share, and
    /// answers the datagrams waiting on UDP sockets.
    pub(super) fn accept_ready(&mut self, registry: &Registry, now: Instant) {
        if self.state != State::Running {
            return;
        }
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
        }
        for index in 0..self.listeners.len() {
            if !self.listeners[index].ready {
                continue;
            }
            if matches!(self.listeners[index].socket, Socket::Udp(_)) {
                self.answer_datagrams(index);
            } else if self.accept_paused_until.is_none() {
                self.accept_connections(registry, index, now);
            }
        }
    }

    pub(super) fn accept_connections(&mut self, registry: &Registry, index: usize, now: Instant) {
        for _ in 0..ACCEPTS_PER_TURN {
            let listener = &mut self.listeners[index];
            let Socket::Tcp(socket) = &mut listener.socket else {
                return;
            };
            match socket.accept() {
                Ok((stream, peer)) => {
                    let service = listener.service;
                    self.admit(registry, stream, peer, service, now);
                }
                Err(err) if would_block(&err) => {
                    listener.ready = false;
                    return;
                }
                Err(err) if interrupted(&err) => {}
                Err(err) if out_of_resources(&err) => {
                    self.pause_accepting(&err, now);
                    return;
                }
                // ECONNABORTED and the like: that one client is gone.
                Err(err) => debug!(
                    "accept on {} {} failed: {err}",
                    listener.service, listener.addr
                ),
            }
        }
    }

    /// Linux leaves the connection queued on EMFILE and, with the edge spent,
    /// would never tell us again: retry after a pause, or sooner when a
    /// connection closes and frees a descriptor. Retrying at once would spin.
    pub(super) fn pause_accepting(&mut self, err: &io::Error, now: Instant) {
        self.accept_paused_until = Some(now + ACCEPT_PAUSE);
        if let Some(held_back) = self.descriptor_warning.allow(now) {
            warn!(
                "accept paused: {err}; {} connections open; retrying in {} ms or when one closes{}",
                self.conns.len(),
                ACCEPT_PAUSE.as_millis(),
                held_back_note(held_back),
            );
        }
    }

    /// A process of a `--reuse-port` group that stops first accepts every
    /// connection already queued on its listeners before it closes them,
    /// so that the clients queued there are served (within the grace, like
    /// the rest) rather than reset. With Linux's `tcp_migrate_req`, what
    /// arrives after this, still in its handshake, moves to the processes
    /// that remain when the listener closes.
    pub(super) fn take_in_queued(&mut self, registry: &Registry, now: Instant) {
        for index in 0..self.listeners.len() {
            if !matches!(self.listeners[index].socket, Socket::Tcp(_)) {
                continue;
            }
            // Whether or not an edge said so: the queue is the truth.
            self.listeners[index].ready = true;
            let before = self.conns.len();
            // The queue holds at most the backlog; a flood arriving
            // meanwhile must not keep the shutdown from going on.
            let rounds = LISTEN_BACKLOG as usize / ACCEPTS_PER_TURN + 1;
            for _ in 0..rounds {
                if !self.listeners[index].ready || self.accept_paused_until.is_some() {
                    break;
                }
                self.accept_connections(registry, index, now);
            }
            let taken = self.conns.len().saturating_sub(before);
            if taken > 0 {
                debug!(
                    "{} {}: took in {taken} queued connections before closing",
                    self.listeners[index].service, self.listeners[index].addr
                );
            }
        }
    }
}

/// `accept` failed for lack of descriptors or kernel memory: retrying at
/// once would fail the same way.
pub(super) fn out_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Registers listener number `index` with the poll and learns its address.
pub(super) fn register_listener(
    poll: &Poll,
    mut socket: Socket,
    service: Service,
    index: usize,
) -> io::Result<Listener> {
    let addr = match &socket {
        Socket::Tcp(listener) => listener.local_addr(),
        Socket::Udp(socket) => socket.local_addr(),
    }?;
    // A specific address answers from itself; only a wildcard leaves the
    // source to routing, which may pick another of the host's addresses.
    let answers_from_arrival = match &socket {
        Socket::Udp(socket) if addr.ip().is_unspecified() => {
            sys::report_arrivals(socket, addr.is_ipv6())?;
            true
        }
        _ => false,
    };
    poll.registry().register(
        socket.source(),
        Token(LISTENER_BASE + index),
        Interest::READABLE,
    )?;
    Ok(Listener {
        socket,
        service,
        addr,
        ready: false,
        answers_from_arrival,
    })
}

/// Binds a listener with a backlog deep enough for a connection ramp.
pub(super) fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    use std::os::fd::AsRawFd;
    let socket = sys::bound_socket(addr, libc::SOCK_STREAM, reuse_port)?;
    // SAFETY: listen(2) on a descriptor we own; no memory is passed.
    if unsafe { libc::listen(socket.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from_std(std::net::TcpListener::from(socket)))
}

/// Binds a UDP socket, shared with other processes if `reuse_port`.
pub(super) fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let socket = sys::bound_socket(addr, libc::SOCK_DGRAM, reuse_port)?;
    Ok(UdpSocket::from_std(std::net::UdpSocket::from(socket)))
}
