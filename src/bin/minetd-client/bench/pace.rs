//! The open loop's schedule: when each message is due, computed, never
//! observed. Message `seq` of connection `index` is due at
//! `start + (seq × connections + index) / rate`: every connection sends at
//! `rate / connections` per second, the connections are staggered evenly
//! within each period, and a message sent late leaves every later due time
//! where it was (wrk2's rule, which is what makes the latency honest).

use std::time::{Duration, Instant};

/// The whole client's schedule.
#[derive(Debug, Clone, Copy)]
pub(super) struct Schedule {
    start: Instant,
    connections: u64,
    /// Messages per second, all connections together.
    rate: f64,
}

impl Schedule {
    pub(super) fn new(start: Instant, connections: usize, rate: f64) -> Schedule {
        Schedule {
            start,
            connections: connections as u64,
            rate,
        }
    }

    /// When message `seq` (from 0) of connection `index` is due.
    pub(super) fn due(&self, index: u64, seq: u64) -> Instant {
        let slot = seq.saturating_mul(self.connections).saturating_add(index);
        // f64 holds slots exactly up to 2^53: centuries at any real rate.
        self.start + Duration::from_secs_f64(slot as f64 / self.rate)
    }
}

/// Makes this thread's sleeps end within a few microseconds of when they
/// were asked to, rather than Linux's default 50 µs timer slack: at tens of
/// thousands of messages per second the slack alone would make every send
/// late by a message interval or more.
pub(super) fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer and touches only this
    // thread's scheduling; a failure leaves the default, which still works.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_staggered_and_periodic() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 4, 1000.0);
        let at = |index, seq| schedule.due(index, seq).duration_since(start);
        assert_eq!(at(0, 0), Duration::ZERO);
        assert_eq!(at(1, 0), Duration::from_millis(1));
        assert_eq!(at(3, 0), Duration::from_millis(3));
        assert_eq!(at(0, 1), Duration::from_millis(4));
        assert_eq!(at(2, 250), Duration::from_millis(1002));
    }
}
