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

    /// How many messages of connection `index` fall due in `from..to`.
    pub(super) fn count_due(&self, index: u64, from: Instant, to: Instant) -> u64 {
        self.first_due_at(index, to)
            .saturating_sub(self.first_due_at(index, from))
    }

    /// The first message of connection `index` due at or after `at`:
    /// estimated in floating point, then settled against [`Schedule::due`]
    /// itself, so the count agrees exactly with the times messages are sent.
    fn first_due_at(&self, index: u64, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start).as_secs_f64();
        let estimate = (since * self.rate - index as f64) / self.connections as f64;
        let mut seq = estimate.ceil().max(0.0) as u64;
        while seq > 0 && self.due(index, seq - 1) >= at {
            seq -= 1;
        }
        while self.due(index, seq) < at {
            seq += 1;
        }
        seq
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

/// The time slice the open loop's threads ask for. The sender and the
/// receiver of a worker share a core with each other, and with Linux's
/// default slice (1.4 ms on this project's 2-core machine) each waited for the CPU after its wake-up for
/// milliseconds: measured with `perf sched latency` in a 10,000-connection
/// run at 75,000/s, the sender 1.06 ms on average after its 250 µs timer,
/// the receiver 3.79 ms after an echo arrived, so sends went out late and a
/// run at 90% of the closed loop's rate fell behind. With 100 µs slices for
/// both: 0.044 and 0.22 ms.
pub(super) const SLICE: Duration = Duration::from_micros(100);

/// Asks for [`SLICE`] as this thread's time slice (`sched_runtime` of
/// `SCHED_OTHER`, Linux 6.12 and later), keeping its policy and nice value.
/// Left as it is under any other policy; older kernels ignore the slice or
/// refuse it, and the open loop works either way, less punctually.
pub(super) fn shorten_slice() -> std::io::Result<()> {
    // SAFETY: sched_getattr/sched_setattr on this thread (pid 0) with a
    // zeroed sched_attr we own, its size given; they touch only this
    // thread's scheduling.
    unsafe {
        let mut attr: libc::sched_attr = std::mem::zeroed();
        let size = std::mem::size_of::<libc::sched_attr>() as libc::c_uint;
        if libc::syscall(libc::SYS_sched_getattr, 0, &mut attr, size, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if attr.sched_policy != libc::SCHED_OTHER as u32 {
            return Ok(());
        }
        attr.size = size;
        attr.sched_flags = 0;
        attr.sched_runtime = SLICE.as_nanos() as u64;
        if libc::syscall(libc::SYS_sched_setattr, 0, &attr, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's scheduling attributes.
    fn attr() -> libc::sched_attr {
        // SAFETY: as in shorten_slice.
        unsafe {
            let mut attr: libc::sched_attr = std::mem::zeroed();
            let size = std::mem::size_of::<libc::sched_attr>() as libc::c_uint;
            assert_eq!(
                libc::syscall(libc::SYS_sched_getattr, 0, &mut attr, size, 0),
                0
            );
            attr
        }
    }

    #[test]
    fn a_shorter_slice_keeps_the_nice_value() {
        std::thread::spawn(|| {
            // SAFETY: raising this thread's own nice value needs no privilege.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 7) };
            assert_eq!(attr().sched_nice, 7);
            let shortened = shorten_slice();
            let after = attr();
            assert_eq!(after.sched_nice, 7);
            assert_eq!(after.sched_policy, libc::SCHED_OTHER as u32);
            if shortened.is_ok() {
                // Kernels before 6.12 accept the call and keep their own slice.
                assert!(
                    after.sched_runtime == SLICE.as_nanos() as u64 || after.sched_runtime == 0,
                    "sched_runtime {}",
                    after.sched_runtime
                );
            }
        })
        .join()
        .unwrap();
    }

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

    #[test]
    fn messages_due_in_a_span_are_counted_exactly() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 4, 1000.0);
        let ms = |n| start + Duration::from_millis(n);
        // Connection 0 at 0, 4, 8 … 996 ms; connection 3 at 3, 7 … 999 ms.
        assert_eq!(schedule.count_due(0, start, ms(1000)), 250);
        assert_eq!(schedule.count_due(3, start, ms(1000)), 250);
        assert_eq!(schedule.count_due(0, ms(1), ms(1000)), 249);
        assert_eq!(schedule.count_due(0, ms(4), ms(8)), 1);
        assert_eq!(schedule.count_due(3, ms(999), ms(1000)), 1);
        assert_eq!(schedule.count_due(3, ms(1000), ms(1000)), 0);
        let odd = Schedule::new(start, 3, 7.0);
        let by_walking = (0..100)
            .filter(|&seq| odd.due(1, seq) >= ms(500) && odd.due(1, seq) < ms(5500))
            .count() as u64;
        assert_eq!(odd.count_due(1, ms(500), ms(5500)), by_walking);
    }
}
