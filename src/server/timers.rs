//! Deadlines: the idle timeout, daytime's linger and the PROXY header's
//! deadline, in one min-heap of [`Timer`]s.
//!
//! Why a heap with lazy deletion: a deadline moves on every byte a
//! connection moves, and finding and moving its entry would cost a search
//! per byte moved. Instead each connection keeps the deadline of its one
//! live entry (`Entry::armed`); traffic moves only `since`, and an entry
//! popped before the connection is due is simply pushed again for the new
//! deadline. Entries of closed connections, or of a slab key reused by a
//! later connection (told apart by `id`), are recognised as stale when
//! popped, and purged in bulk once they outnumber the live ones.
//! Deadlines are kept as [`Tick`]s, milliseconds since the server started,
//! so that every connection's two of them fit in 16 bytes.

use std::cmp::Reverse;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use super::{Core, Entry, Stage};
use crate::conn::CloseReason;

/// How long a daytime connection waits, after its line, for the client to
/// close before we close anyway.
pub(super) const DAYTIME_LINGER: Duration = Duration::from_secs(2);

/// Stale deadlines tolerated in the heap beyond the live ones before it is
/// rebuilt; small enough to be noise in memory, large enough that rebuilds
/// are rare.
pub(super) const STALE_TIMERS_KEPT: usize = 1024;

/// How long a connection from a trusted balancer may take to send its
/// whole PROXY header, from the accept: a deadline, not an idle timer, so
/// a header sent a byte at a time cannot hold a connection for longer.
pub(super) const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Timer {
    pub(super) at: Tick,
    /// The slab key; 32 bits, as no process holds 4 billion sockets.
    key: u32,
    id: u32,
}

/// A point in time as milliseconds since the server started: every
/// connection keeps two, and an `Instant` is twice the size. The niche
/// keeps `Option<Tick>` at eight bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Tick(NonZeroU64);

impl Tick {
    pub(super) fn after(self, wait: Duration) -> Tick {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        Tick(self.0.saturating_add(ms))
    }
}

/// Converts between `Instant`s and [`Tick`]s.
pub(super) struct Clock {
    pub(super) epoch: Instant,
}

impl Clock {
    /// The tick `at` falls in (rounded down, so a deadline reached by tick
    /// is reached by instant too).
    pub(super) fn tick(&self, at: Instant) -> Tick {
        let ms = u64::try_from(at.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX - 1);
        Tick(NonZeroU64::MIN.saturating_add(ms))
    }

    pub(super) fn instant(&self, tick: Tick) -> Instant {
        self.epoch + Duration::from_millis(tick.0.get() - 1)
    }
}

impl Entry {
    /// The next deadline of this connection and what happens then.
    pub(super) fn due(&self, idle_timeout: Option<Duration>) -> Option<(Tick, CloseReason)> {
        let idle = idle_timeout.map(|t| (self.since.after(t), CloseReason::IdleTimeout));
        let linger = match self.stage {
            Stage::Serving => return idle,
            Stage::AwaitingHeader => {
                return Some((
                    self.since.after(PROXY_HEADER_TIMEOUT),
                    CloseReason::ProxyHeaderTimeout,
                ));
            }
            Stage::Lingering => (self.since.after(DAYTIME_LINGER), CloseReason::LingerTimeout),
        };
        Some(match idle {
            Some(idle) if idle.0 < linger.0 => idle,
            _ => linger,
        })
    }
}

impl Core {
    /// Puts the connection's next deadline in the heap unless an earlier one
    /// is there already.
    pub(super) fn arm(&mut self, key: usize) {
        let entry = &mut self.conns[key];
        let Some((at, _)) = entry.due(self.limits.idle_timeout) else {
            return;
        };
        if entry.armed.is_some_and(|armed| armed <= at) {
            return;
        }
        let Ok(key) = u32::try_from(key) else {
            return; // cannot happen: descriptors run out long before
        };
        entry.armed = Some(at);
        self.timers.push(Reverse(Timer {
            at,
            key,
            id: entry.id,
        }));
    }

    /// Closes connections whose deadline has passed; re-arms those that were
    /// active since their entry was pushed.
    pub(super) fn expire_timers(&mut self, now: Instant) {
        let now = self.clock.tick(now);
        while let Some(Reverse(timer)) = self.timers.peek().copied() {
            if timer.at > now {
                break;
            }
            self.timers.pop();
            let key = timer.key as usize;
            let Some(entry) = self.conns.get_mut(key) else {
                continue;
            };
            if entry.id != timer.id || entry.armed != Some(timer.at) {
                continue; // superseded by an earlier deadline, or a new connection
            }
            entry.armed = None;
            match entry.due(self.limits.idle_timeout) {
                Some((at, reason)) if at <= now => self.close(key, reason),
                Some(_) => self.arm(key),
                None => {}
            }
        }
    }

    /// A closed connection leaves its deadline in the heap until it comes
    /// due, which may be minutes away: under churn those would pile up.
    /// Rebuilding once stale entries outnumber live ones keeps the heap
    /// within twice the connections, at amortised O(1) per close.
    pub(super) fn purge_stale_timers(&mut self) {
        if self.timers.len() <= 2 * self.conns.len() + STALE_TIMERS_KEPT {
            return;
        }
        let conns = &self.conns;
        self.timers.retain(|Reverse(timer)| {
            conns
                .get(timer.key as usize)
                .is_some_and(|entry| entry.id == timer.id && entry.armed == Some(timer.at))
        });
        if self.timers.capacity() > 4 * self.timers.len() + STALE_TIMERS_KEPT {
            self.timers.shrink_to_fit();
        }
    }
}
