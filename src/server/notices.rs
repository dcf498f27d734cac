//! What the loop tells the operator of its own accord: the `stats:` line
//! at each `--stats-interval`, and warnings about limits (refusals, no
//! descriptors, a full memory budget), each kind at most once a second
//! with a count of those held back, so a flood cannot flood the log.

use std::time::{Duration, Instant};

use log::{info, warn};

use super::Core;

/// Warnings about limits repeat at most this often.
pub(super) const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Lets a warning through at most once per [`WARN_INTERVAL`], counting the
/// ones held back.
#[derive(Default)]
pub(super) struct RateLimit {
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimit {
    /// `Some(held back since the last one)` when a warning may be logged now.
    pub(super) fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|last| now < last + WARN_INTERVAL) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

impl Core {
    /// Tells the operator, at most once a second, that the memory budget
    /// held reads back: some peers are not reading what they are sent.
    pub(super) fn warn_of_pressure(&mut self, now: Instant) {
        if !self.budget.take_pressure() {
            return;
        }
        if let Some(held_back) = self.budget_warning.allow(now) {
            warn!(
                "memory budget full: {} of {} bytes held (max-buffered); \
                 connections that owe bytes wait for their peers to read{}",
                self.budget.used(),
                self.budget.limit(),
                held_back_note(held_back)
            );
        }
    }

    /// Logs the counters when `--stats-interval` says it is time.
    pub(super) fn log_stats(&mut self, now: Instant) {
        let (Some(due), Some(every)) = (self.next_stats, self.limits.stats_interval) else {
            return;
        };
        if now < due {
            return;
        }
        info!("stats: {}", self.stats);
        // Skip intervals the loop slept through rather than log a burst;
        // one past the clock's range never comes.
        let mut next = due.checked_add(every);
        while let Some(at) = next.filter(|at| *at <= now) {
            next = at.checked_add(every);
        }
        self.next_stats = next;
    }
}

pub(super) fn held_back_note(held_back: u64) -> String {
    if held_back == 0 {
        String::new()
    } else {
        format!(" ({held_back} more since the last warning)")
    }
}
