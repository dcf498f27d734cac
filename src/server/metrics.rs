//! The `--metrics` endpoint: the same loop answers `GET /metrics` over
//! HTTP/1.0 and 1.1 with the counters in Prometheus's text format
//! ([`crate::metrics`]). Only the request line and the end of the headers
//! are read (and the `Connection` header, for keep-alive), so no HTTP
//! library is needed; anything else about a request is ignored.
//!
//! What a scraper may cost is bounded: a request is at most
//! [`MAX_REQUEST`] bytes and must be whole within [`REQUEST_TIMEOUT`] of
//! the accept (or of the previous answer, on a kept connection), at most
//! [`MAX_SCRAPES`] are open at once, and anything that is not HTTP closes
//! the connection. The request's bytes are charged to the memory budget;
//! the answer is not (it is as long as the exposition, a few KiB). Metrics
//! connections count in no service's figures.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, trace};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::budget::{Budget, Charge};
use crate::conn::{interrupted, would_block};
use crate::metrics::CONTENT_TYPE;
use crate::stats::Stats;

/// Requests longer than this close the connection: a scrape's request is a
/// few hundred bytes.
pub(super) const MAX_REQUEST: usize = 8 * 1024;
/// A whole request must arrive within this of the accept or the previous
/// answer: a deadline, not an idle timer, so a trickle cannot hold it.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapers open at once; more are accepted and closed. Prometheus keeps
/// one connection per target.
pub(super) const MAX_SCRAPES: usize = 64;
/// Listeners at most; the token range holds them below the scrapes'.
const MAX_LISTENERS: usize = 1024;

/// The metrics listeners and their connections, with tokens from `base`:
/// listener `i` is `base + i`, scrape `k` is `base + MAX_LISTENERS + k`.
pub(super) struct Exporter {
    base: usize,
    listeners: Vec<(TcpListener, SocketAddr)>,
    scrapes: Slab<Scrape>,
}

/// One metrics connection.
struct Scrape {
    stream: TcpStream,
    peer: SocketAddr,
    /// Bytes received and not yet answered (the next request, or part of it).
    request: Vec<u8>,
    /// The request's bytes, on the budget.
    charge: Option<Charge>,
    /// The answer being sent, and how much of it is.
    answer: Vec<u8>,
    sent: usize,
    /// Close once the answer is sent.
    close_after: bool,
    /// When the next request must be whole.
    deadline: Instant,
    registered: Interest,
}

/// What one request asks.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// Whole: `len` bytes, what to answer, and whether to close after.
    Whole {
        len: usize,
        status: Status,
        close_after: bool,
    },
    /// Not all here yet.
    Partial,
    /// Not HTTP.
    Invalid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Metrics,
    NotFound,
    MethodNotAllowed,
}

impl Exporter {
    /// Binds a listener on each of `addrs` and registers it.
    pub(super) fn bind(
        registry: &Registry,
        addrs: &[SocketAddr],
        base: usize,
    ) -> Result<Exporter, (SocketAddr, io::Error)> {
        let mut listeners = Vec::new();
        for (index, &addr) in addrs.iter().enumerate().take(MAX_LISTENERS) {
            let mut listener = TcpListener::bind(addr).map_err(|err| (addr, err))?;
            let bound = listener.local_addr().map_err(|err| (addr, err))?;
            registry
                .register(&mut listener, Token(base + index), Interest::READABLE)
                .map_err(|err| (addr, err))?;
            listeners.push((listener, bound));
        }
        Ok(Exporter {
            base,
            listeners,
            scrapes: Slab::new(),
        })
    }

    /// The bound address of every metrics listener.
    pub(super) fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(_, addr)| *addr).collect()
    }

    /// Whether `token` is one of ours.
    pub(super) fn owns(&self, token: Token) -> bool {
        token.0 >= self.base && token.0 < self.base + MAX_LISTENERS + MAX_SCRAPES
    }

    /// Handles readiness on one of our tokens; `render` writes the
    /// exposition when a request asks for it.
    pub(super) fn on_event(
        &mut self,
        registry: &Registry,
        token: Token,
        now: Instant,
        budget: &Budget,
        render: impl FnMut(&mut Vec<u8>),
    ) {
        let offset = token.0 - self.base;
        if offset < MAX_LISTENERS {
            self.accept(registry, offset, now);
        } else {
            self.serve(registry, offset - MAX_LISTENERS, now, budget, render);
        }
    }

    /// Accepts every waiting scraper on listener `index`.
    fn accept(&mut self, registry: &Registry, index: usize, now: Instant) {
        let Some((listener, addr)) = self.listeners.get(index) else {
            return;
        };
        loop {
            let (mut stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(err) if would_block(&err) => return,
                Err(err) if interrupted(&err) => continue,
                Err(err) => {
                    // Out of descriptors or the like: the next scrape retries.
                    debug!("metrics {addr}: accept failed: {err}");
                    return;
                }
            };
            if self.scrapes.len() >= MAX_SCRAPES {
                debug!("metrics {peer} refused: {MAX_SCRAPES} scrapes open");
                continue;
            }
            let key = self.scrapes.vacant_key();
            let token = Token(self.base + MAX_LISTENERS + key);
            if let Err(err) = registry.register(&mut stream, token, Interest::READABLE) {
                debug!("metrics {peer} closed: {err}");
                continue;
            }
            debug!("metrics {peer} accepted");
            self.scrapes.insert(Scrape {
                stream,
                peer,
                request: Vec::new(),
                charge: None,
                answer: Vec::new(),
                sent: 0,
                close_after: false,
                deadline: now + REQUEST_TIMEOUT,
                registered: Interest::READABLE,
            });
        }
    }

    fn serve(
        &mut self,
        registry: &Registry,
        key: usize,
        now: Instant,
        budget: &Budget,
        render: impl FnMut(&mut Vec<u8>),
    ) {
        let Some(scrape) = self.scrapes.get_mut(key) else {
            return; // closed earlier in this batch
        };
        match scrape.drive(now, budget, render) {
            Ok(Some(wanted)) if wanted != scrape.registered => {
                let token = Token(self.base + MAX_LISTENERS + key);
                match registry.reregister(&mut scrape.stream, token, wanted) {
                    Ok(()) => scrape.registered = wanted,
                    Err(err) => self.close(key, &err.to_string()),
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => self.close(key, "done"),
            Err(reason) => self.close(key, &reason),
        }
    }

    fn close(&mut self, key: usize, reason: &str) {
        let scrape = self.scrapes.remove(key);
        debug!("metrics {} closed: {reason}", scrape.peer);
    }

    /// The nearest request deadline, if any scraper is open.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        if self.scrapes.is_empty() {
            return None;
        }
        self.scrapes.iter().map(|(_, s)| s.deadline).min()
    }

    /// Closes scrapers whose request did not come whole in time.
    pub(super) fn expire(&mut self, now: Instant) {
        // Every turn asks: without scrapers that must cost nothing.
        if self.scrapes.is_empty() {
            return;
        }
        let late: Vec<usize> = self
            .scrapes
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(key, _)| key)
            .collect();
        for key in late {
            self.close(key, "no whole request in time");
        }
    }

    /// Closes every listener and scraper: the server is shutting down.
    pub(super) fn close_all(&mut self, registry: &Registry) {
        for (mut listener, _) in self.listeners.drain(..) {
            let _ = registry.deregister(&mut listener);
        }
        let keys: Vec<usize> = self.scrapes.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close(key, "shutdown");
        }
    }
}

impl Scrape {
    /// Sends what is owed, answers each whole request, reads more. `Ok(Some
    /// (interest))` to wait for, `Ok(None)` when done, `Err(why)` to close.
    fn drive(
        &mut self,
        now: Instant,
        budget: &Budget,
        mut render: impl FnMut(&mut Vec<u8>),
    ) -> Result<Option<Interest>, String> {
        let mut chunk = [0u8; 1024];
        loop {
            while self.sent < self.answer.len() {
                match self.stream.write(&self.answer[self.sent..]) {
                    Ok(n) => self.sent += n,
                    Err(err) if would_block(&err) => return Ok(Some(Interest::WRITABLE)),
                    Err(err) if interrupted(&err) => {}
                    Err(err) => return Err(err.to_string()),
                }
            }
            if !self.answer.is_empty() {
                self.answer = Vec::new();
                self.sent = 0;
                if self.close_after {
                    return Ok(None);
                }
                self.deadline = now + REQUEST_TIMEOUT;
            }
            match parse(&self.request) {
                Request::Whole {
                    len,
                    status,
                    close_after,
                } => {
                    trace!("metrics {}: {status:?}", self.peer);
                    self.request.drain(..len);
                    self.charge_request(budget);
                    self.close_after = close_after;
                    self.answer = answer(status, close_after, &mut render);
                    continue;
                }
                Request::Invalid => return Err("not an HTTP request".into()),
                Request::Partial if self.request.len() > MAX_REQUEST => {
                    return Err(format!("request over {MAX_REQUEST} bytes"));
                }
                Request::Partial => {}
            }
            // Never more than one byte past the limit, which proves it.
            let room = (MAX_REQUEST + 1 - self.request.len()).min(chunk.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => return Ok(None),
                Ok(n) => {
                    self.request.extend_from_slice(&chunk[..n]);
                    self.charge_request(budget);
                }
                Err(err) if would_block(&err) => return Ok(Some(Interest::READABLE)),
                Err(err) if interrupted(&err) => {}
                Err(err) => return Err(err.to_string()),
            }
        }
    }

    /// Charges what the request holds, and no more.
    fn charge_request(&mut self, budget: &Budget) {
        self.charge = None;
        if self.request.is_empty() {
            self.request = Vec::new();
        } else {
            self.charge = Some(budget.charge(self.request.capacity()));
        }
    }
}

/// Reads one request from the start of `buf`: the request line and the end
/// of the headers, and the `Connection` header for keep-alive.
fn parse(buf: &[u8]) -> Request {
    let Some(end) = find(buf, b"\r\n\r\n").map(|at| at + 4) else {
        // Fail early on what can never become a request line.
        let first = buf.split(|&b| b == b'\n').next().unwrap_or_default();
        let plausible = first
            .iter()
            .all(|&b| b == b'\r' || b == b'\t' || (b' '..=b'~').contains(&b));
        return if plausible {
            Request::Partial
        } else {
            Request::Invalid
        };
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Request::Invalid;
    };
    let mut lines = head.split("\r\n");
    let mut line = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (line.next(), line.next(), line.next(), line.next())
    else {
        return Request::Invalid;
    };
    let keeps_by_default = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Request::Invalid,
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Request::Invalid;
    }
    let mut close_after = !keeps_by_default;
    for header in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = header.split_once(':') else {
            return Request::Invalid;
        };
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close_after = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    close_after = false;
                }
            }
        }
    }
    let path = target.split('?').next().unwrap_or_default();
    let status = match (method, path) {
        ("GET", "/metrics") => Status::Metrics,
        ("GET", _) => Status::NotFound,
        _ => Status::MethodNotAllowed,
    };
    Request::Whole {
        len: end,
        status,
        close_after,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The whole answer to a request, headers and body.
fn answer(status: Status, close_after: bool, render: &mut impl FnMut(&mut Vec<u8>)) -> Vec<u8> {
    let mut body = Vec::new();
    let (line, content_type, extra) = match status {
        Status::Metrics => {
            render(&mut body);
            ("200 OK", CONTENT_TYPE, "")
        }
        Status::NotFound => {
            body.extend_from_slice(b"not found: the metrics are at /metrics\n");
            ("404 Not Found", "text/plain; charset=utf-8", "")
        }
        Status::MethodNotAllowed => {
            body.extend_from_slice(b"method not allowed: GET /metrics\n");
            (
                "405 Method Not Allowed",
                "text/plain; charset=utf-8",
                "Allow: GET\r\n",
            )
        }
    };
    let connection = if close_after { "close" } else { "keep-alive" };
    let mut out = format!(
        "HTTP/1.1 {line}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: {connection}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

impl super::Core {
    /// A metrics connection is ready: answer what it asks.
    pub(super) fn scrape(&mut self, registry: &Registry, token: Token, now: Instant) {
        // The exposition is written only when a request asks for it: most
        // events (accepts, pieces of a request) need none.
        let (stats, budget, started) = (&self.stats, &self.budget, self.started);
        let render = |out: &mut Vec<u8>| {
            out.extend_from_slice(exposition(stats, budget, started).as_bytes());
        };
        self.exporter
            .on_event(registry, token, now, &self.budget, render);
    }

    /// The counters as they stand, with what the budget counted.
    pub(super) fn snapshot(&self) -> Stats {
        snapshot(&self.stats, &self.budget)
    }

    /// The exposition as a scrape would see it now.
    pub(super) fn exposition(&self) -> String {
        exposition(&self.stats, &self.budget, self.started)
    }
}

fn snapshot(stats: &Stats, budget: &Budget) -> Stats {
    let mut snapshot = stats.clone();
    snapshot.reads_held_back = budget.held_back();
    snapshot
}

fn exposition(stats: &Stats, budget: &Budget, started: SystemTime) -> String {
    let gauges = crate::metrics::Gauges {
        buffered: budget.used(),
        max_buffered: budget.limit(),
        started,
    };
    let mut text = String::new();
    crate::metrics::write_exposition(&mut text, &snapshot(stats, budget), &gauges);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(status: Status, close_after: bool, len: usize) -> Request {
        Request::Whole {
            len,
            status,
            close_after,
        }
    }

    #[test]
    fn requests_are_read_to_the_end_of_their_headers() {
        let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse(get), whole(Status::Metrics, false, get.len()));
        let mut two = get.to_vec();
        two.extend_from_slice(b"GET /m");
        assert_eq!(parse(&two), whole(Status::Metrics, false, get.len()));
        for cut in 0..get.len() {
            assert_eq!(parse(&get[..cut]), Request::Partial, "{cut}");
        }
    }

    #[test]
    fn http_1_0_closes_and_1_1_keeps_unless_told() {
        let cases: [(&[u8], bool); 5] = [
            (b"GET /metrics HTTP/1.0\r\n\r\n", true),
            (
                b"GET /metrics HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
                false,
            ),
            (b"GET /metrics HTTP/1.1\r\n\r\n", false),
            (b"GET /metrics HTTP/1.1\r\nconnection: close\r\n\r\n", true),
            (
                b"GET /metrics?x=1 HTTP/1.1\r\nConnection: TE, close\r\n\r\n",
                true,
            ),
        ];
        for (request, close) in cases {
            assert_eq!(parse(request), whole(Status::Metrics, close, request.len()));
        }
    }

    #[test]
    fn other_paths_and_methods_are_answered_not_served() {
        let not_found = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse(not_found),
            whole(Status::NotFound, false, not_found.len())
        );
        let post = b"POST /metrics HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse(post),
            whole(Status::MethodNotAllowed, false, post.len())
        );
        let head = b"HEAD /metrics HTTP/1.0\r\n\r\n";
        assert_eq!(
            parse(head),
            whole(Status::MethodNotAllowed, true, head.len())
        );
    }

    #[test]
    fn garbage_is_not_http() {
        for garbage in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
        ] {
            assert_eq!(parse(garbage), Request::Invalid, "{garbage:?}");
        }
    }

    #[test]
    fn answers_carry_their_length_and_type() {
        let mut render = |out: &mut Vec<u8>| out.extend_from_slice(b"minetd_x 1\n");
        let ok = String::from_utf8(answer(Status::Metrics, true, &mut render)).unwrap();
        assert_eq!(
            ok,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: 11\r\nConnection: close\r\n\r\nminetd_x 1\n"
        );
        let refused =
            String::from_utf8(answer(Status::MethodNotAllowed, false, &mut render)).unwrap();
        assert!(
            refused.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{refused}"
        );
        assert!(refused.contains("\r\nAllow: GET\r\n"), "{refused}");
    }
}
