//! The memory budget for retained history (`hub.max_memory_bytes`).
//!
//! Every retained event is charged its frame plus a fixed overhead
//! (`Event::charge`). When storing an event takes the total over the
//! budget, the oldest retained events across all channels are evicted,
//! lowest seq first, until it fits again. An evicted event is gone exactly
//! as if its ring had overflowed: the ring's `evicted_through` moves past
//! it, so a subscriber that still needed it gets `herald.reset`.
//!
//! Finding the globally oldest event without scanning every channel: the
//! budget keeps an index of channels by the seq of their oldest retained
//! event (one entry per channel that holds events). Ring evictions do not
//! update it (they run on every publish to a full ring); an entry whose key
//! trails its ring's real front is re-filed when it reaches the head of the
//! index. All of this runs under the hub's sequencer lock, so the index,
//! the byte count and the rings change together; the lock order is
//! sequencer, then ring.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::channel::{Channel, Ring};

/// The budget's state, owned by the sequencer lock.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    /// Channels holding events, by the seq of their oldest event (or less).
    by_oldest: BTreeMap<u64, Arc<Channel>>,
    /// Bytes charged for every retained event.
    bytes: usize,
}

/// What one round of budget enforcement did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Evicted {
    /// Events evicted to fit the budget.
    pub(crate) events: u64,
}

impl Budget {
    /// Bytes retained now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Charges bytes about to enter a ring.
    pub(crate) fn charge(&mut self, bytes: usize) {
        self.bytes += bytes;
    }

    /// Files a channel that just received events (its ring is locked by
    /// the caller), so the oldest-first index can find them.
    pub(crate) fn file(&mut self, channel: &Arc<Channel>, ring: &mut Ring) {
        if ring.budget_key == 0
            && let Some(front) = ring.front_seq()
        {
            ring.budget_key = front;
            self.by_oldest.insert(front, Arc::clone(channel));
        }
    }

    /// Uncharges bytes that left a ring (ring eviction, or a channel dropped).
    pub(crate) fn released(&mut self, bytes: usize) {
        self.bytes -= bytes;
    }

    /// Unfiles a channel whose ring (locked by the caller) is being dropped
    /// whole, and uncharges what it held.
    pub(crate) fn forget(&mut self, ring: &mut Ring) {
        if ring.budget_key != 0 {
            self.by_oldest.remove(&ring.budget_key);
            ring.budget_key = 0;
        }
        self.bytes -= ring.bytes;
    }

    /// Evicts the oldest events across channels until the total fits `max`.
    /// Events with seq `>= keep_from` (the ones being stored right now) are
    /// never evicted, so one publish larger than the budget overshoots it
    /// by at most its own size.
    pub(crate) fn enforce(&mut self, max: usize, keep_from: u64) -> Evicted {
        let mut evicted = Evicted::default();
        while self.bytes > max {
            let Some((&key, _)) = self.by_oldest.first_key_value() else {
                break;
            };
            if key >= keep_from {
                break;
            }
            let Some(channel) = self.by_oldest.remove(&key) else {
                break;
            };
            let mut ring = channel.lock();
            match ring.front_seq() {
                Some(front) if front != key => {
                    // A stale key: ring evictions moved the front on.
                    ring.budget_key = front;
                    self.by_oldest.insert(front, Arc::clone(&channel));
                }
                Some(_) => {
                    if let Some(old) = ring.pop_front() {
                        self.bytes -= old.charge();
                        evicted.events += 1;
                    }
                    ring.budget_key = ring.front_seq().unwrap_or(0);
                    if ring.budget_key != 0 {
                        self.by_oldest.insert(ring.budget_key, Arc::clone(&channel));
                    }
                }
                None => ring.budget_key = 0,
            }
        }
        evicted
    }
}
