//! The memory budget's wait list: the connections that stopped reading
//! because the budget could not cover them, in the order they stopped,
//! and which of them to wake when the total falls.
//!
//! Who waits: an echo connection whose send side is full (its peer is not
//! reading yet) and that would read now if the budget covered it
//! ([`Connection::budget_wanted`]). Nothing of its own wakes it: its
//! writable edge comes only when its peer reads, and a peer may write a
//! whole burst before it reads. A connection at its own `--max-pending`,
//! or whose input simply ran dry, does not wait here.
//!
//! Who is woken, and in what order: once a turn, after its events, the
//! server wakes waiters first come, first served, while the budget has
//! room for the first one's next read ([`WaitList::next_woken`]); it runs
//! each at once, as first in line, so no one else can take the room
//! between the wake and the read. A woken connection the budget stops
//! again joins the back. The list never skips its first: a later waiter
//! whose read would fit waits behind it all the same.
//!
//! Why no connection waits forever: while anyone waits, the budget says
//! no to every connection that is not first in line
//! ([`Budget::covers`]), so bytes that are freed stay free until the
//! wait list hands them out, and no connection that keeps running can
//! take them from under the waiters. A waiter's need is at most the whole
//! budget ([`Connection::budget_wanted`] sizes its read to fit), so once
//! the total falls far enough (as it does when the peers holding it read
//! or close) the first waiter is woken, and each behind it moves up one
//! place per wake. Each connection holds at most one place, and a closed
//! one leaves a stale ticket that is skipped (slab keys are reused, so a
//! ticket carries the connection's id too).
//!
//! [`Connection::budget_wanted`]: crate::Connection::budget_wanted
//! [`Budget::covers`]: crate::Budget::covers

use std::collections::VecDeque;
use std::time::Instant;

use log::debug;
use mio::Registry;
use slab::Slab;

use super::Entry;
use crate::budget::Budget;

/// Stale tickets tolerated beyond the live ones before the queue is
/// rebuilt: connections that close while they wait leave theirs behind
/// until it reaches the front, which may be never while the first waits.
const STALE_TICKETS_KEPT: usize = 1024;

/// Connections waiting for the budget, first come, first served.
pub(super) struct WaitList {
    tickets: VecDeque<Ticket>,
    /// Connections with a live ticket: those whose entry is `held_back`.
    waiting: usize,
    /// The last pass stopped with tickets it had no time to look at.
    unfinished: bool,
}

/// A place in the queue: the slab key and the id of the connection that
/// held it then.
#[derive(Clone, Copy, Debug)]
struct Ticket {
    key: u32,
    id: u32,
}

impl WaitList {
    pub(super) fn new() -> WaitList {
        WaitList {
            tickets: VecDeque::new(),
            waiting: 0,
            unfinished: false,
        }
    }

    /// After a connection has run: puts it at the back if the budget held
    /// it back and it holds no place yet. Returns what it waits for, for
    /// the log, when it joins.
    pub(super) fn note(
        &mut self,
        key: usize,
        entry: &mut Entry,
        scratch_len: usize,
        budget: &Budget,
    ) -> Option<usize> {
        if entry.held_back {
            // A connection that ran on its own event keeps its place.
            return None;
        }
        let wanted = entry.conn.budget_wanted(scratch_len, budget)?;
        let key = u32::try_from(key).ok()?; // descriptors run out long before
        entry.held_back = true;
        self.tickets.push_back(Ticket { key, id: entry.id });
        self.waiting += 1;
        budget.set_waiting(self.waiting);
        Some(wanted)
    }

    /// A connection is closing: its place, if it held one, is given up.
    pub(super) fn leave(&mut self, entry: &Entry, budget: &Budget) {
        if entry.held_back {
            self.waiting -= 1;
            budget.set_waiting(self.waiting);
        }
    }

    /// Whether a pass could wake anyone: someone waits, or stale tickets
    /// are left to clear.
    pub(super) fn is_empty(&self) -> bool {
        self.tickets.is_empty()
    }

    /// Starts a pass over the list: drops stale tickets when they pile up,
    /// and returns how many wakes the pass may make, so that a connection
    /// woken and held again cannot keep the loop in the pass.
    pub(super) fn start_pass(&mut self, conns: &Slab<Entry>) -> usize {
        if self.tickets.len() > 2 * self.waiting + STALE_TICKETS_KEPT {
            self.tickets.retain(|ticket| live(conns, *ticket).is_some());
            self.tickets.shrink_to_fit();
        }
        self.unfinished = false;
        self.tickets.len()
    }

    /// The first waiter, taken off the list, if the budget covers its next
    /// read now: `(key, bytes wanted)`. Stale tickets and connections that
    /// no longer wait for the budget are dropped on the way. `None` when
    /// the first has to wait on, or no one waits.
    pub(super) fn next_woken(
        &mut self,
        conns: &mut Slab<Entry>,
        scratch_len: usize,
        budget: &Budget,
    ) -> Option<(usize, usize)> {
        while let Some(&ticket) = self.tickets.front() {
            let Some(key) = live(conns, ticket) else {
                self.tickets.pop_front();
                continue;
            };
            let entry = &mut conns[key];
            let wanted = entry.conn.budget_wanted(scratch_len, budget);
            if wanted.is_some_and(|bytes| !budget.fits(bytes)) {
                return None;
            }
            self.tickets.pop_front();
            entry.held_back = false;
            self.waiting -= 1;
            budget.set_waiting(self.waiting);
            // One that ran on its own event since and reads again (or
            // closes) needs nothing from the list.
            if let Some(bytes) = wanted {
                return Some((key, bytes));
            }
        }
        None
    }

    /// The pass ran out of wakes with tickets left: the next turn must not
    /// wait for an event before it goes on, as no event may come.
    pub(super) fn cut_short(&mut self) {
        self.unfinished = !self.tickets.is_empty();
    }

    /// Whether the loop must turn again at once, for waiters the last pass
    /// left unexamined.
    pub(super) fn unfinished(&self) -> bool {
        self.unfinished
    }
}

/// The key of the connection that holds `ticket`, if it still waits.
fn live(conns: &Slab<Entry>, ticket: Ticket) -> Option<usize> {
    let key = ticket.key as usize;
    conns
        .get(key)
        .is_some_and(|entry| entry.id == ticket.id && entry.held_back)
        .then_some(key)
}

impl super::Core {
    /// After a connection ran: if the budget stopped a read it would have
    /// made, it takes a place on the wait list.
    pub(super) fn note_if_held_back(&mut self, key: usize) {
        let scratch_len = self.scratch.len();
        if let Some(wanted) =
            self.waiters
                .note(key, &mut self.conns[key], scratch_len, &self.budget)
        {
            debug!(
                "{} held back: its next read wants {wanted} bytes, {} of {} are free",
                self.tag(key),
                self.budget.available(),
                self.budget.limit()
            );
        }
    }

    /// Runs the connections the budget held back while it covers them,
    /// first come, first served (see the module's opening comment for who
    /// waits, who is woken and why no one waits forever). Each runs as
    /// first in line, so that no one else can take the bytes it was woken
    /// for.
    pub(super) fn wake_held_back(&mut self, registry: &Registry, now: Instant) {
        if self.waiters.is_empty() {
            return;
        }
        let mut wakes_left = self.waiters.start_pass(&self.conns);
        let scratch_len = self.scratch.len();
        while wakes_left > 0 {
            let Some((key, wanted)) =
                self.waiters
                    .next_woken(&mut self.conns, scratch_len, &self.budget)
            else {
                return;
            };
            debug!(
                "{} woken: its next read wants {wanted} bytes, {} of {} are free",
                self.tag(key),
                self.budget.available(),
                self.budget.limit()
            );
            let first = self.budget.first_in_line();
            let outcome = self.run_conn(key, false, now);
            drop(first);
            self.settle(registry, key, outcome, now);
            wakes_left -= 1;
        }
        self.waiters.cut_short();
    }
}
