//! What a connection owes its peer: the bytes read but not yet written
//! back. Storage is taken only when a write comes up short and given back
//! once drained, and every byte of it (with its header) is charged to the
//! server's budget, so the total held cannot drift.

use crate::budget::{Budget, Charge};

/// What storage for owed bytes costs beside the bytes: the boxed header
/// that holds them and their charge. Charged with the bytes, so that
/// `--max-buffered` bounds what the allocator hands out, not only payload.
pub(super) const PENDING_OVERHEAD: usize = std::mem::size_of::<Pending>();

/// Bytes read but not yet written back. Holds no allocation while empty:
/// storage is taken only when a write is short and given back once drained,
/// so an idle connection costs no heap buffer, and only one pointer of the
/// connection itself.
#[derive(Debug, Default)]
pub(super) struct Owed {
    pub(super) pending: Option<Box<Pending>>,
}

#[derive(Debug)]
pub(super) struct Pending {
    pub(super) bytes: Vec<u8>,
    /// Bytes before `start` were already sent.
    pub(super) start: usize,
    /// The storage's capacity plus [`PENDING_OVERHEAD`], taken from the
    /// server's budget and given back when the storage is freed.
    pub(super) charge: Charge,
}

impl Owed {
    pub(super) fn len(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.bytes.len() - p.start)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_none()
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        self.pending.as_ref().map_or(&[], |p| &p.bytes[p.start..])
    }

    /// Bytes of storage held.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.bytes.capacity())
    }

    /// Appends `more`, charging `budget` for any storage it takes. The
    /// caller keeps the total within `limit`, and has made sure `budget`
    /// covers `more.len() + PENDING_OVERHEAD` (or chose to go over): storage
    /// grows by at most that much, as doubling stops at the budget.
    pub(super) fn extend(&mut self, more: &[u8], limit: usize, budget: &Budget) {
        if more.is_empty() {
            return;
        }
        let pending = self.pending.get_or_insert_with(|| {
            Box::new(Pending {
                bytes: Vec::new(),
                start: 0,
                charge: budget.charge(PENDING_OVERHEAD),
            })
        });
        let needed = pending.bytes.len() - pending.start + more.len();
        if pending.bytes.len() + more.len() > pending.bytes.capacity() {
            // Reuse the sent prefix before growing.
            pending.bytes.drain(..pending.start);
            pending.start = 0;
            let capacity = pending.bytes.capacity();
            if needed > capacity {
                // Doubling saves reallocations for a peer that owes more and
                // more, but not past the pending limit nor the budget.
                let affordable = (capacity + budget.available()).max(needed);
                let target = (capacity * 2)
                    .clamp(needed, limit.max(needed))
                    .min(affordable);
                pending.bytes.reserve_exact(target - pending.bytes.len());
            }
        }
        pending.bytes.extend_from_slice(more);
        let held = pending.bytes.capacity() + PENDING_OVERHEAD;
        if held > pending.charge.bytes() {
            pending.charge.grow(held - pending.charge.bytes());
        }
    }

    /// Marks `n` bytes as sent, giving the storage back once all are.
    pub(super) fn consume(&mut self, n: usize) {
        let Some(pending) = &mut self.pending else {
            return;
        };
        pending.start += n;
        if pending.start == pending.bytes.len() {
            self.pending = None;
        }
    }
}
