//! Who may connect, and what happens to those who may not: `--allow`,
//! `--per-source` and `--max-connections` judge each accepted connection
//! (or, for one from a trusted balancer, the peer its PROXY header names);
//! a refused connection is closed at once so its client sees EOF, counted,
//! and logged, resource limits with a warning at most once a second. An
//! admitted one becomes an [`Entry`] in the slab and starts its service.

use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::Instant;

use log::{debug, trace, warn};
use mio::Registry;
use mio::net::TcpStream;

use super::notices::held_back_note;
use super::{Core, Entry, Stage};
use crate::config::{Cidr, Service};
use crate::conn::{Connection, Label};
use crate::{daytime, sys};

/// Why a connection was accepted only to be closed.
#[derive(Clone, Copy, Debug)]
pub(super) enum Refusal {
    NotAllowed,
    MaxConnections,
    PerSource,
}

/// `conn - {peer}`: a connection refused before it got a token.
pub(super) struct Unlabelled(SocketAddr);

impl fmt::Display for Unlabelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn - {}", self.0)
    }
}

impl Core {
    /// Starts serving an accepted connection, or refuses it. One from a
    /// trusted balancer waits for its PROXY header first: `--allow` and
    /// `--per-source` judge the peer the header names, so only the
    /// connection limit applies before it.
    pub(super) fn admit(
        &mut self,
        registry: &Registry,
        stream: TcpStream,
        peer: SocketAddr,
        service: Service,
        now: Instant,
    ) {
        let relayed = self
            .limits
            .proxy_protocol
            .iter()
            .any(|block| block.contains(peer.ip()));
        let refusal = if relayed {
            self.capacity_refusal()
        } else {
            self.refusal(peer.ip())
        };
        if let Some(refusal) = refusal {
            self.refuse(stream, peer, service, refusal, now);
            return;
        }
        if !relayed {
            self.count_source(peer.ip());
        }
        // Echo answers at once with whatever it has; Nagle would hold a small
        // reply back behind an unacknowledged one.
        if let Err(err) = stream.set_nodelay(true) {
            debug!("conn - {peer} cannot set TCP_NODELAY: {err}");
        }
        // Echo and discard read in bulk; knowing the queue is empty after
        // a full read saves the read that would only say WouldBlock.
        if matches!(service, Service::Echo | Service::Discard) {
            if let Err(err) = sys::report_queued_bytes(&stream) {
                trace!("conn - {peer} cannot set TCP_INQ: {err}");
            }
        }
        let key = self.conns.vacant_key();
        let label = Label { token: key, peer };
        let conn = match service {
            Service::Daytime => {
                let line = daytime::line_now(self.limits.daytime_format);
                Connection::daytime(stream, label, line.as_bytes(), &self.budget)
            }
            Service::Time => {
                Connection::time(stream, label, daytime::time_bytes_now(), &self.budget)
            }
            Service::Discard => Connection::discard(stream, label),
            Service::Chargen => Connection::chargen(stream, label),
            _ => Connection::echo(stream, label, self.limits.pending_limit),
        };
        self.next_id = self.next_id.wrapping_add(1);
        self.conns.insert(Entry {
            conn,
            service,
            id: self.next_id,
            registered: None,
            stage: if relayed {
                Stage::AwaitingHeader
            } else {
                Stage::Serving
            },
            since: self.clock.tick(now),
            armed: None,
            held_back: false,
        });
        self.stats.get_mut(service).open += 1;
        if relayed {
            self.await_header(registry, key);
        } else {
            // Echo and discard wait: registering reports input that arrived
            // with the connection. The rest have bytes to send now.
            let run_now = !matches!(service, Service::Echo | Service::Discard);
            self.start(registry, key, run_now, false, now);
        }
    }

    /// Counts an admitted connection as accepted and serves it: at once if
    /// `run_now` (with `read_closed` from the event that brought it).
    pub(super) fn start(
        &mut self,
        registry: &Registry,
        key: usize,
        run_now: bool,
        read_closed: bool,
        now: Instant,
    ) {
        let service = self.conns[key].service;
        self.stats.get_mut(service).accepted += 1;
        debug!("{} accepted {service}", self.tag(key));
        let outcome = if run_now {
            self.run_conn(key, read_closed, now)
        } else {
            None
        };
        self.settle(registry, key, outcome, now);
        if self.conns.contains(key) {
            self.arm(key);
        }
    }

    /// Why a connection from `ip` must be refused now, if it must.
    pub(super) fn refusal(&self, ip: IpAddr) -> Option<Refusal> {
        if !allowed(&self.limits.allow, ip) {
            return Some(Refusal::NotAllowed);
        }
        self.capacity_refusal().or_else(|| self.source_refusal(ip))
    }

    /// Whether the connection limit turns a new connection away.
    pub(super) fn capacity_refusal(&self) -> Option<Refusal> {
        (self.conns.len() >= self.limits.max_connections).then_some(Refusal::MaxConnections)
    }

    /// Why a peer at `ip` may not be served: `--allow` and `--per-source`.
    pub(super) fn source_refusal(&self, ip: IpAddr) -> Option<Refusal> {
        if !allowed(&self.limits.allow, ip) {
            return Some(Refusal::NotAllowed);
        }
        let limit = self.limits.per_source?;
        let open = self.per_source.as_ref()?.get(&ip).copied().unwrap_or(0);
        (open as usize >= limit).then_some(Refusal::PerSource)
    }

    pub(super) fn count_source(&mut self, ip: IpAddr) {
        if let Some(counts) = &mut self.per_source {
            *counts.entry(ip).or_default() += 1;
        }
    }

    /// Accepts and closes at once, so the client sees EOF rather than a
    /// hang in the backlog.
    pub(super) fn refuse(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        service: Service,
        refusal: Refusal,
        now: Instant,
    ) {
        // Closing with unread input sends a reset, which the client may see
        // instead of the EOF (nginx's lingering close exists for this): read
        // what has arrived first.
        let _ = stream.read(&mut self.scratch);
        let _ = stream.shutdown(Shutdown::Write);
        self.note_refusal(&Unlabelled(peer), peer.ip(), service, refusal, now);
    }

    /// Counts and logs a refusal: debug for each, a rate-limited warning
    /// for resource limits.
    pub(super) fn note_refusal(
        &mut self,
        who: &dyn fmt::Display,
        ip: IpAddr,
        service: Service,
        refusal: Refusal,
        now: Instant,
    ) {
        let counters = self.stats.get_mut(service);
        counters.refused += 1;
        let by_reason = match refusal {
            Refusal::NotAllowed => &mut counters.refused_by.allow,
            Refusal::MaxConnections => &mut counters.refused_by.max_connections,
            Refusal::PerSource => &mut counters.refused_by.per_source,
        };
        *by_reason += 1;
        let open = self.conns.len();
        match refusal {
            // Not a resource limit: nothing to warn an operator about.
            Refusal::NotAllowed => {
                debug!("{who} refused {service}: not in --allow");
            }
            Refusal::MaxConnections => {
                debug!("{who} refused {service}: {open} open (max-connections)");
                if let Some(held_back) = self.refusal_warning.allow(now) {
                    warn!(
                        "refusing connections: {open} open (max-connections){}",
                        held_back_note(held_back)
                    );
                }
            }
            Refusal::PerSource => {
                debug!("{who} refused {service}: {ip} has its most open (per-source)");
                if let Some(held_back) = self.refusal_warning.allow(now) {
                    warn!(
                        "refusing connections from {ip}: per-source limit reached{}",
                        held_back_note(held_back)
                    );
                }
            }
        }
    }
}

/// Whether `ip` may connect or send: an empty allow-list allows everyone.
pub(super) fn allowed(allow: &[Cidr], ip: IpAddr) -> bool {
    allow.is_empty() || allow.iter().any(|block| block.contains(ip))
}
