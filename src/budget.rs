//! The memory budget: how many bytes the server holds for all its
//! connections together (`--max-buffered`), and the charges that hold them.
//!
//! Every byte a connection keeps in user space beyond the shared read
//! buffer — echo bytes owed to a peer that has not read them yet, a
//! daytime line not yet sent — lives in storage that carries a [`Charge`]
//! on the one [`Budget`]. The charge gives its bytes back when it is
//! dropped, so no close path can forget to: the total returns to zero when
//! the last connection is gone.
//!
//! The budget itself decides nothing. [`Connection`](crate::Connection)
//! asks [`Budget::covers`] before a read whose leftover it might have to
//! keep, and when the answer is no it reads only what the socket takes
//! back at once (see `Connection::serve_echo`), so a full budget slows the
//! peers that hold it and no one else.
//!
//! It does keep a line, though: while connections wait for it to fall
//! (the server's wait list counts them here), it says no to everyone
//! else, so that bytes freed go to those waiting, first come first
//! served, and not to whichever connection happens to run next.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The bytes held for every connection of one server, against one limit.
///
/// Cloning shares the same total. The counts are atomics only so that a
/// [`Server`](crate::Server) stays `Send`; one thread does all the
/// charging, and only when a connection has to keep bytes (a short
/// write), never per round trip.
#[derive(Clone)]
pub struct Budget {
    shared: Arc<Shared>,
}

struct Shared {
    limit: usize,
    used: AtomicUsize,
    /// A read was held back since the last [`Budget::take_pressure`].
    pressure: AtomicBool,
    /// Reads held back since the budget was made.
    held_back: AtomicU64,
    /// Connections on the server's wait list: while there are any, only
    /// the one it runs first in line may take bytes.
    waiting: AtomicUsize,
    /// The connection running now was woken from the wait list.
    first_in_line: AtomicBool,
}

impl Budget {
    /// A budget of `limit` bytes, nothing used.
    pub fn new(limit: usize) -> Budget {
        Budget {
            shared: Arc::new(Shared {
                limit,
                used: AtomicUsize::new(0),
                pressure: AtomicBool::new(false),
                held_back: AtomicU64::new(0),
                waiting: AtomicUsize::new(0),
                first_in_line: AtomicBool::new(false),
            }),
        }
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.shared.limit
    }

    /// Bytes held right now.
    pub fn used(&self) -> usize {
        self.shared.used.load(Ordering::Relaxed)
    }

    /// Bytes that may still be charged within the limit.
    pub fn available(&self) -> usize {
        self.limit().saturating_sub(self.used())
    }

    /// Whether `bytes` more may be taken now: they fit within the limit,
    /// and no connection waits for the budget ahead of the caller. A
    /// `false` is remembered for [`take_pressure`](Budget::take_pressure).
    pub fn covers(&self, bytes: usize) -> bool {
        let in_line = self.shared.waiting.load(Ordering::Relaxed) == 0
            || self.shared.first_in_line.load(Ordering::Relaxed);
        let fits = in_line && bytes <= self.available();
        if !fits {
            self.shared.pressure.store(true, Ordering::Relaxed);
            self.shared.held_back.fetch_add(1, Ordering::Relaxed);
        }
        fits
    }

    /// How many times [`covers`](Budget::covers) said no: reads the budget
    /// deferred, for the metrics.
    pub fn held_back(&self) -> u64 {
        self.shared.held_back.load(Ordering::Relaxed)
    }

    /// Whether `bytes` fit within the limit, whoever waits: the wait list
    /// asks this of the connection first in line.
    pub(crate) fn fits(&self, bytes: usize) -> bool {
        bytes <= self.available()
    }

    /// Tells the budget how many connections wait for it.
    pub(crate) fn set_waiting(&self, waiting: usize) {
        self.shared.waiting.store(waiting, Ordering::Relaxed);
    }

    /// Until the guard is dropped, [`covers`](Budget::covers) answers as
    /// if no one waited: the caller runs the connection first in line.
    pub(crate) fn first_in_line(&self) -> FirstInLine {
        self.shared.first_in_line.store(true, Ordering::Relaxed);
        FirstInLine {
            budget: self.clone(),
        }
    }

    /// Whether [`covers`](Budget::covers) said no since the last call: the
    /// server warns about it, rate-limited.
    pub fn take_pressure(&self) -> bool {
        self.shared.pressure.swap(false, Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget until the charge is dropped. It never
    /// refuses: the caller has asked [`covers`](Budget::covers) first, or
    /// has a bounded reason to go over (daytime's line, see
    /// `Connection::daytime`).
    pub fn charge(&self, bytes: usize) -> Charge {
        self.shared.used.fetch_add(bytes, Ordering::Relaxed);
        Charge {
            budget: self.clone(),
            bytes,
        }
    }
}

/// Lets the connection woken from the wait list take bytes past those
/// waiting behind it, until dropped.
pub(crate) struct FirstInLine {
    budget: Budget,
}

impl Drop for FirstInLine {
    fn drop(&mut self) {
        self.budget
            .shared
            .first_in_line
            .store(false, Ordering::Relaxed);
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("used", &self.used())
            .field("limit", &self.limit())
            .finish()
    }
}

/// Bytes taken from a [`Budget`], given back on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Budget,
    bytes: usize,
}

impl Charge {
    /// Bytes held by this charge.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `more` bytes as well.
    pub fn grow(&mut self, more: usize) {
        self.budget.shared.used.fetch_add(more, Ordering::Relaxed);
        self.bytes += more;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget
            .shared
            .used
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_count_until_dropped() {
        let budget = Budget::new(100);
        let mut first = budget.charge(30);
        let second = budget.clone().charge(50);
        assert_eq!(budget.used(), 80);
        assert_eq!(budget.available(), 20);
        first.grow(15);
        assert_eq!((first.bytes(), budget.used()), (45, 95));
        drop(second);
        assert_eq!(budget.used(), 45);
        drop(first);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn covers_says_no_past_the_limit_and_remembers_it() {
        let budget = Budget::new(100);
        let _held = budget.charge(90);
        assert!(budget.covers(10));
        assert!(!budget.take_pressure());
        assert!(!budget.covers(11));
        assert!(budget.take_pressure());
        assert!(!budget.take_pressure(), "taking it clears it");
    }

    #[test]
    fn while_connections_wait_only_the_first_in_line_is_covered() {
        let budget = Budget::new(100);
        budget.set_waiting(2);
        assert!(!budget.covers(10), "others wait: no one jumps the line");
        assert!(budget.take_pressure());
        assert!(budget.fits(100));
        {
            let _first = budget.first_in_line();
            assert!(budget.covers(100));
            assert!(!budget.covers(101), "the limit still holds");
        }
        assert!(!budget.covers(10), "the first in line has had its turn");
        budget.set_waiting(0);
        assert!(budget.covers(100));
    }

    #[test]
    fn a_charge_over_the_limit_leaves_nothing_available() {
        let budget = Budget::new(10);
        let _over = budget.charge(25);
        assert_eq!(budget.available(), 0);
        assert!(!budget.covers(1));
        assert!(budget.covers(0));
    }
}
