//! Graceful shutdown: the handle that asks for it from any thread, and
//! the loop's side: stop accepting, let every connection finish what it
//! owes within the grace, then close what is left.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::info;
use mio::{Registry, Waker};

use super::{Core, Stage};
use crate::conn::CloseReason;

/// What a grace too long for the clock becomes: a century, as good as
/// waiting for every connection to finish.
const GRACE_FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Stops a [`Server`](super::Server) from any thread: it stops accepting, flushes what it
/// owes for up to the shutdown grace, closes everything, and `run` returns.
///
/// ```
/// let mut server = minetd::Server::bind(&minetd::Config {
///     echo: vec!["127.0.0.1:0".parse().unwrap()],
///     ..Default::default()
/// })
/// .unwrap();
/// let stop = server.shutdown_handle();
/// std::thread::spawn(move || stop.shutdown());
/// server.run().unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    pub(super) requested: Arc<AtomicBool>,
    pub(super) waker: Arc<Waker>,
}

impl ShutdownHandle {
    /// Asks the server to shut down gracefully. Returns at once; calling it
    /// again does nothing more.
    pub fn shutdown(&self) {
        // The flag is the truth: wakes coalesce, so the loop reads the flag
        // after every poll rather than counting wakes (mio's Waker is one
        // eventfd counter, shared behind an Arc: tokio-rs/mio#1764).
        self.requested.store(true, Ordering::Release);
        // The eventfd can only refuse a wake when its counter is saturated,
        // which means wakes are already pending.
        let _ = self.waker.wake();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Running,
    Draining { until: Instant },
    Finished,
}

impl Core {
    /// Starts a requested shutdown, and finishes one that is done or out of
    /// grace.
    pub(super) fn check_shutdown(&mut self, registry: &Registry, now: Instant) {
        if self.state == State::Running && self.handle.requested.load(Ordering::Acquire) {
            self.begin_shutdown(registry, now);
        }
        if let State::Draining { until } = self.state {
            if !self.conns.is_empty() && now >= until {
                info!(
                    "shutdown grace over: closing {} connections",
                    self.conns.len()
                );
                self.close_everything();
            }
            if self.conns.is_empty() {
                info!("shutdown complete");
                self.state = State::Finished;
            }
        }
    }

    /// Stops accepting and lets every connection finish what it owes.
    pub(super) fn begin_shutdown(&mut self, registry: &Registry, now: Instant) {
        if self.state != State::Running {
            return;
        }
        if self.limits.reuse_port {
            self.take_in_queued(registry, now);
        }
        info!(
            "shutting down: {} connections, {} s grace",
            self.conns.len(),
            self.limits.shutdown_grace.as_secs_f64()
        );
        for mut listener in self.listeners.drain(..) {
            let _ = registry.deregister(listener.socket.source());
        }
        // Metrics are not the service: nothing to flush there.
        self.exporter.close_all(registry);
        self.accept_paused_until = None;
        self.state = State::Draining {
            until: now
                .checked_add(self.limits.shutdown_grace)
                .unwrap_or(now + GRACE_FOREVER),
        };
        // One pass closes every connection that is idle already; the rest
        // close as their events show them idle, or when the grace ends.
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            // Its header not read, it has been sent nothing and owes nothing.
            if self.conns[key].stage == Stage::AwaitingHeader {
                self.close(key, CloseReason::Shutdown);
                continue;
            }
            self.conns[key].conn.close_when_idle();
            let outcome = self.run_conn(key, false, now);
            self.settle(registry, key, outcome, now);
        }
    }

    pub(super) fn close_everything(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close(key, CloseReason::Shutdown);
        }
    }
}
