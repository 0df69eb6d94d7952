//! Where dropped channels' histories ended, so a client resuming into a
//! recreated channel gets a reset, not silence. Bounded: forgotten
//! tombstones raise a floor that applies to every new channel.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Remembered ends of dropped histories.
#[derive(Debug, Default)]
pub(crate) struct Tombstones {
    by_name: HashMap<Arc<str>, u64>,
    order: VecDeque<Arc<str>>,
    forgotten_floor: u64,
}

impl Tombstones {
    /// The floor a new channel `name` starts with: where its previous
    /// history ended, or the floor of forgotten tombstones. Taking it
    /// removes the tombstone (the new channel carries it from now on).
    pub(crate) fn take(&mut self, name: &str) -> u64 {
        let floor = self.forgotten_floor;
        self.by_name.remove(name).unwrap_or(floor)
    }

    /// Remembers that `name`'s history ended at `high`, keeping at most
    /// `max` tombstones.
    pub(crate) fn remember(&mut self, name: Arc<str>, high: u64, max: usize) {
        if high == 0 {
            return;
        }
        if self.by_name.insert(Arc::clone(&name), high).is_none() {
            self.order.push_back(name);
        }
        while self.by_name.len() > max {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(seq) = self.by_name.remove(&old) {
                self.forgotten_floor = self.forgotten_floor.max(seq);
            }
        }
        // `order` may hold names already taken back by a new channel.
        if self.order.len() > 2 * max.max(1) {
            let Self { by_name, order, .. } = self;
            order.retain(|n| by_name.contains_key(n));
        }
    }
}
