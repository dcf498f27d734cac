//! Connections from a trusted load balancer (`--proxy-protocol`): waiting
//! for the PROXY header, reading exactly it, and then serving the
//! connection as the peer it names.
//!
//! The header is read by peeking: until it is whole it stays in the
//! kernel's receive queue, so waiting for one costs no memory here however
//! it is split, and once it is whole exactly its bytes are taken, leaving
//! whatever followed it in the same segment for the service. [`proxy::parse`]
//! decides at the first impossible byte, and the deadline (see
//! `PROXY_HEADER_TIMEOUT`) runs from the accept.

use std::net::Shutdown;
use std::time::Instant;

use log::debug;
use mio::{Interest, Registry, Token};

use super::{Core, Stage};
use crate::conn::{CloseReason, Stream, interrupted, take_exactly, would_block};
use crate::proxy::{self, Parsed};

impl Core {
    /// Registers a new relayed connection for its header: nothing is sent
    /// before it, whatever the service.
    pub(super) fn await_header(&mut self, registry: &Registry, key: usize) {
        let entry = &mut self.conns[key];
        debug!(
            "{} connected for {}: awaiting its PROXY header",
            entry.conn.label(),
            entry.service
        );
        // Registering reports a header that arrived with the connection.
        let stream = entry.conn.stream_mut();
        match registry.register(stream, Token(key), Interest::READABLE) {
            Ok(()) => entry.registered = Some(Interest::READABLE),
            Err(err) => {
                self.close(key, CloseReason::from_error(&err));
                return;
            }
        }
        self.arm(key);
    }

    /// A relayed connection is readable: if its header is whole, take it
    /// and start the service as the peer it names; if it can never be
    /// valid, close at once.
    /// `read_closed` says the event carried the peer's FIN or a reset.
    pub(super) fn read_header(
        &mut self,
        registry: &Registry,
        key: usize,
        read_closed: bool,
        now: Instant,
    ) {
        let buf = &mut self.scratch[..proxy::MAX_HEADER];
        let stream = self.conns[key].conn.stream_mut();
        let peeked = loop {
            match stream.peek(buf) {
                Ok(n) => break n,
                Err(err) if would_block(&err) => return,
                Err(err) if interrupted(&err) => {}
                Err(err) => return self.close(key, CloseReason::from_error(&err)),
            }
        };
        if peeked == 0 {
            return self.close(key, CloseReason::BadProxyHeader(proxy::ProxyError::Missing));
        }
        let (len, source) = match proxy::parse(&buf[..peeked]) {
            // The rest can never come: a balancer that died mid-header is
            // closed now, not at the deadline.
            Ok(Parsed::Partial) if read_closed => {
                let reason = match stream.take_error() {
                    Ok(Some(err)) => CloseReason::from_error(&err),
                    _ => CloseReason::BadProxyHeader(proxy::ProxyError::Missing),
                };
                return self.close(key, reason);
            }
            Ok(Parsed::Partial) => return,
            Ok(Parsed::Complete { len, source }) => (len, source),
            Err(err) => return self.close(key, CloseReason::BadProxyHeader(err)),
        };
        if let Err(err) = take_exactly(stream, &mut buf[..len]) {
            return self.close(key, CloseReason::from_error(&err));
        }
        let entry = &mut self.conns[key];
        let balancer = entry.conn.label().peer;
        if let Some(source) = source {
            entry.conn.set_peer(source);
            self.via.insert(key, balancer);
        }
        let peer = source.unwrap_or(balancer);
        let service = self.conns[key].service;
        if let Some(refusal) = self.source_refusal(peer.ip()) {
            let tag = self.tag(key);
            self.note_refusal(&tag, peer.ip(), service, refusal, now);
            // Still awaiting its header as far as `close` knows, which
            // reads what waits first, so the client sees EOF, not a reset.
            let _ = self.conns[key].conn.stream_mut().shutdown(Shutdown::Write);
            return self.close(key, CloseReason::Refused);
        }
        self.count_source(peer.ip());
        let entry = &mut self.conns[key];
        entry.stage = Stage::Serving;
        entry.since = self.clock.tick(now);
        // The header's edge is spent: bytes that came after it in the same
        // segment must be served now, as no new event will tell of them.
        self.start(registry, key, true, read_closed, now);
    }
}
