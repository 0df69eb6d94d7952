//! Loss, duplicate and order accounting.
//!
//! Every event the bench publishes carries its channel-local index in the
//! payload (see [`crate::sse::Payload`]). The publisher keeps, per channel, a
//! bitmap of the indices the server accepted (202); each subscriber keeps a
//! bitmap of the indices it received (one bit per event of its channel, so
//! 100 events/s for a minute is 750 bytes), plus the last seq seen for the
//! order check. At the end the subscriber compares its bitmap with the
//! channel's accepted set: nothing per event is stored beyond one bit.

use serde::{Deserialize, Serialize};

/// Largest channel-local index accepted into a bitmap (2^28 events, 32 MiB):
/// anything beyond is not the bench's and is counted as foreign.
pub const MAX_INDEX: u64 = 1 << 28;

/// A growable bitmap of event indices.
#[derive(Debug, Default, Clone)]
pub struct IndexSet {
    words: Vec<u64>,
    len: u64,
}

impl IndexSet {
    /// Inserts `index`; true if it was not there yet. Indices at or above
    /// [`MAX_INDEX`] are refused (false) and must be checked by the caller.
    pub fn insert(&mut self, index: u64) -> bool {
        if index >= MAX_INDEX {
            return false;
        }
        let w = (index / 64) as usize;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let bit = 1u64 << (index % 64);
        if self.words[w] & bit != 0 {
            return false;
        }
        self.words[w] |= bit;
        self.len += 1;
        true
    }

    /// Whether `index` is in the set.
    pub fn contains(&self, index: u64) -> bool {
        let w = (index / 64) as usize;
        w < self.words.len() && self.words[w] & (1u64 << (index % 64)) != 0
    }

    /// Number of indices in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Number of indices below `end`.
    pub fn count_below(&self, end: u64) -> u64 {
        let full = (end / 64) as usize;
        let mut n: u64 = self
            .words
            .iter()
            .take(full)
            .map(|w| w.count_ones() as u64)
            .sum();
        let rem = end % 64;
        if rem > 0
            && let Some(w) = self.words.get(full)
        {
            n += (w & ((1u64 << rem) - 1)).count_ones() as u64;
        }
        n
    }

    /// Sets every index in `self` that is also in `other` (union in place).
    pub fn union_with(&mut self, other: &IndexSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        self.len = self.words.iter().map(|w| w.count_ones() as u64).sum();
    }

    /// One past the largest index in the set (0 if empty).
    pub fn end(&self) -> u64 {
        for (i, w) in self.words.iter().enumerate().rev() {
            if *w != 0 {
                return i as u64 * 64 + 64 - w.leading_zeros() as u64;
            }
        }
        0
    }
}

/// What a channel's subscribers should have received: every index below
/// `end` except those in `missing` (publishes that failed or never went out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// One past the largest accepted index.
    pub end: u64,
    /// Indices below `end` the server did not accept, ascending.
    pub missing: Vec<u64>,
}

impl Expected {
    /// Builds the expectation from the set of accepted indices.
    pub fn from_accepted(accepted: &IndexSet) -> Expected {
        let end = accepted.end();
        let missing = (0..end).filter(|&i| !accepted.contains(i)).collect();
        Expected { end, missing }
    }

    /// Number of events expected.
    pub fn count(&self) -> u64 {
        self.end - self.missing.len() as u64
    }

    /// Compares a subscriber's received set with the expectation:
    /// `(received_expected, lost, unexpected)`, where `unexpected` counts
    /// indices received that the publisher never saw accepted (for example a
    /// publish whose 202 timed out on the way back).
    pub fn compare(&self, received: &IndexSet) -> (u64, u64, u64) {
        let in_range = received.count_below(self.end);
        let in_missing = self
            .missing
            .iter()
            .filter(|&&i| received.contains(i))
            .count() as u64;
        let got = in_range - in_missing;
        (got, self.count() - got, received.len() - got)
    }
}

/// How one received event relates to what came before on its connection(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First time this index arrived, in seq order.
    New,
    /// First time this index arrived, but its seq is not above the last seq seen.
    OutOfOrder,
    /// This index arrived before.
    Duplicate,
    /// The index is out of range: not one of the bench's events.
    Foreign,
}

/// Per-subscriber order and uniqueness tracking, kept across reconnects.
#[derive(Debug, Default, Clone)]
pub struct OrderTracker {
    /// Indices received.
    pub received: IndexSet,
    last: Option<(u64, u64)>,
    /// Times the epoch in the ids changed (history was lost server-side).
    pub epoch_changes: u64,
}

impl OrderTracker {
    /// Records an event with channel-local `index` and id `(epoch_hash, seq)`.
    pub fn record(&mut self, index: u64, id: Option<(u64, u64)>) -> Arrival {
        if index >= MAX_INDEX {
            return Arrival::Foreign;
        }
        let new = self.received.insert(index);
        let mut in_order = true;
        if let Some((epoch, seq)) = id {
            match self.last {
                Some((e, s)) if e == epoch => {
                    in_order = seq > s;
                    self.last = Some((e, s.max(seq)));
                }
                Some(_) => {
                    self.epoch_changes += 1;
                    self.last = Some((epoch, seq));
                }
                None => self.last = Some((epoch, seq)),
            }
        }
        match (new, in_order) {
            (false, _) => Arrival::Duplicate,
            (true, true) => Arrival::New,
            (true, false) => Arrival::OutOfOrder,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_set_basics() {
        let mut s = IndexSet::default();
        assert_eq!(s.len(), 0);
        assert!(s.insert(0));
        assert!(s.insert(63));
        assert!(s.insert(64));
        assert!(s.insert(200));
        assert!(!s.insert(64));
        assert_eq!(s.len(), 4);
        assert_eq!(s.count_below(64), 2);
        assert_eq!(s.count_below(65), 3);
        assert_eq!(s.count_below(1000), 4);
        assert_eq!(s.end(), 201);
        assert!(!s.insert(MAX_INDEX));
        let mut t = IndexSet::default();
        t.insert(1);
        t.insert(300);
        t.union_with(&s);
        assert_eq!(t.len(), 6);
        assert_eq!(t.end(), 301);
    }

    #[test]
    fn loss_against_expected() {
        let mut accepted = IndexSet::default();
        for i in 0..100 {
            if i != 40 && i != 41 {
                accepted.insert(i);
            }
        }
        let exp = Expected::from_accepted(&accepted);
        assert_eq!(exp.end, 100);
        assert_eq!(exp.missing, vec![40, 41]);
        assert_eq!(exp.count(), 98);

        let mut got = IndexSet::default();
        for i in 0..100 {
            // Lose 10 and 11; receive 40 (publish "failed" but went through).
            if i != 10 && i != 11 && i != 41 {
                got.insert(i);
            }
        }
        got.insert(150); // never accepted at all
        let (received, lost, unexpected) = exp.compare(&got);
        assert_eq!((received, lost, unexpected), (96, 2, 2));

        let all = accepted.clone();
        assert_eq!(exp.compare(&all), (98, 0, 0));
        assert_eq!(exp.compare(&IndexSet::default()), (0, 98, 0));
    }

    #[test]
    fn order_tracking() {
        let mut t = OrderTracker::default();
        assert_eq!(t.record(0, Some((1, 10))), Arrival::New);
        assert_eq!(t.record(1, Some((1, 12))), Arrival::New);
        assert_eq!(t.record(1, Some((1, 12))), Arrival::Duplicate);
        // A new index with a lower seq: delivered out of order.
        assert_eq!(t.record(2, Some((1, 11))), Arrival::OutOfOrder);
        assert_eq!(t.record(3, Some((1, 13))), Arrival::New);
        // A new epoch restarts the order baseline.
        assert_eq!(t.record(4, Some((2, 1))), Arrival::New);
        assert_eq!(t.epoch_changes, 1);
        assert_eq!(t.record(MAX_INDEX, None), Arrival::Foreign);
        assert_eq!(t.received.len(), 5);
    }
}
