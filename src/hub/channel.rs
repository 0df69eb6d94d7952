//! A channel: the ring of its recent events (both the replay history and the
//! fan-out buffer), a wake-up primitive and a subscriber count.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use super::event::Event;

/// One named channel. Held in the hub's map and by every subscription to it.
#[derive(Debug)]
pub struct Channel {
    /// The channel name.
    pub(crate) name: Arc<str>,
    /// Recent events in seq order. Locked briefly by publishers (under the
    /// hub's sequencer) and by subscribers copying out `Arc`s; never held
    /// across an `.await`.
    ring: Mutex<Ring>,
    /// Woken (all waiters) after each publish. Subscriptions hold owned
    /// `Notified` futures on it.
    pub(crate) notify: Arc<Notify>,
    /// Open subscriptions. Changed only under the hub map's shard lock on
    /// the way up, so the reaper never removes a channel being joined.
    subscribers: AtomicUsize,
    /// Milliseconds since hub start of the last publish or unsubscribe.
    last_active_ms: AtomicU64,
    /// Milliseconds since hub start of the last wake-up of subscribers
    /// (coalescing only).
    last_wake_ms: AtomicU64,
    /// A deferred wake-up is scheduled (coalescing only).
    wake_scheduled: AtomicBool,
    /// Remote mode: who fills the ring from the broker's history
    /// (`FILL_*`). Local channels start `FILL_READY`.
    pub(crate) fill: AtomicU8,
    /// Woken when a fill completes or is abandoned.
    pub(crate) filled: Notify,
}

/// Nobody is filling the ring yet (or the last attempt was abandoned).
pub(crate) const FILL_NONE: u8 = 0;
/// A subscriber is reading the broker's history into the ring.
pub(crate) const FILL_RUNNING: u8 = 1;
/// The ring holds the channel's history; readers may start.
pub(crate) const FILL_READY: u8 = 2;

#[derive(Debug)]
pub(crate) struct Ring {
    events: VecDeque<Arc<Event>>,
    capacity: usize,
    /// Seq of the newest event this channel no longer holds (evicted, or
    /// dropped with an earlier incarnation of the channel). Replay after seq
    /// S is complete exactly when `evicted_through <= S`.
    evicted_through: u64,
    /// Bytes of the retained events (`Event::charge`).
    pub(crate) bytes: usize,
    /// The key this channel is filed under in the memory budget's
    /// oldest-first index (0: not filed). It may trail the oldest retained
    /// seq after ring evictions; the budget fixes it lazily.
    pub(crate) budget_key: u64,
    /// Whether the channel ever held an event. A channel that never did is
    /// removed with its last subscriber and does not count against
    /// `hub.max_channels`.
    pub(crate) held_any: bool,
    /// Set when the channel leaves the hub's map: publishers must look the
    /// channel up again.
    pub(crate) dead: bool,
    /// Remote mode: events that arrived live while the ring was being
    /// filled; merged behind the history when the fill completes.
    pub(crate) pending: Vec<Arc<Event>>,
}

/// What one read of a channel found.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReadOutcome {
    /// Events in `(after, evicted_through]` are gone: the reader lost them.
    pub lost_through: Option<u64>,
    /// The read stopped at the byte budget with events left; the seq of the
    /// last event read.
    pub capped_at: Option<u64>,
}

/// A point-in-time view of a channel, for the stats endpoint.
#[derive(Debug, Clone)]
pub struct ChannelStats {
    /// Channel name.
    pub name: String,
    /// Open subscriptions.
    pub subscribers: usize,
    /// Seq of the newest retained event.
    pub last_seq: Option<u64>,
    /// Events retained.
    pub ring_len: usize,
    /// Events the ring can retain.
    pub ring_capacity: usize,
    /// Seq of the newest event no longer retained (0 if none).
    pub evicted_through: u64,
    /// Bytes the retained events cost.
    pub bytes: usize,
}

impl Channel {
    pub(crate) fn new(
        name: Arc<str>,
        capacity: usize,
        floor: u64,
        now_ms: u64,
        ready: bool,
    ) -> Self {
        Self {
            name,
            ring: Mutex::new(Ring {
                // Grows on demand: an idle channel costs no ring memory.
                events: VecDeque::new(),
                capacity,
                evicted_through: floor,
                bytes: 0,
                budget_key: 0,
                held_any: false,
                dead: false,
                pending: Vec::new(),
            }),
            notify: Arc::new(Notify::new()),
            subscribers: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(now_ms),
            last_wake_ms: AtomicU64::new(0),
            wake_scheduled: AtomicBool::new(false),
            fill: AtomicU8::new(if ready { FILL_READY } else { FILL_NONE }),
            filled: Notify::new(),
        }
    }

    /// The channel name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether readers may start (always, for local channels).
    pub(crate) fn is_ready(&self) -> bool {
        self.fill.load(Ordering::Acquire) == FILL_READY
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Ring> {
        // A panic while holding the lock cannot leave the ring inconsistent
        // (every mutation is a single push/pop), so poisoning is ignored.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }

    pub(crate) fn add_subscriber(&self) {
        self.subscribers.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops one subscriber; returns how many remain.
    pub(crate) fn remove_subscriber(&self, now_ms: u64) -> usize {
        self.last_active_ms.store(now_ms, Ordering::Relaxed);
        self.subscribers.fetch_sub(1, Ordering::AcqRel) - 1
    }

    /// Wakes every subscriber after a publish. With a coalescing window,
    /// a channel wakes its subscribers at most once per window: the first
    /// publish after a quiet window wakes them at once, later ones are
    /// gathered into one deferred wake-up at the end of the window, so each
    /// subscriber writes them in one batch.
    /// A deferred wake-up runs as a task of `tasks`, so a drain waits for it.
    pub(crate) fn wake(self: &Arc<Self>, now_ms: u64, window_ms: u64, tasks: &TaskTracker) {
        if window_ms == 0 {
            self.notify.notify_waiters();
            return;
        }
        let last = self.last_wake_ms.load(Ordering::Acquire);
        if now_ms.saturating_sub(last) >= window_ms && !self.wake_scheduled.load(Ordering::Acquire)
        {
            self.last_wake_ms.store(now_ms, Ordering::Release);
            self.notify.notify_waiters();
            return;
        }
        if self.wake_scheduled.swap(true, Ordering::AcqRel) {
            return; // the deferred wake-up will carry this event too
        }
        let channel = Arc::clone(self);
        let delay = (last + window_ms).saturating_sub(now_ms).max(1);
        tasks.spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            channel
                .last_wake_ms
                .store(last + window_ms, Ordering::Release);
            channel.wake_scheduled.store(false, Ordering::Release);
            channel.notify.notify_waiters();
        });
    }

    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_active_ms.store(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn idle_since_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }

    /// Appends events with `seq` greater than `after` and at most `upto` to
    /// `out`, stopping once `max_bytes` of frames are taken (always at least
    /// one event).
    pub(crate) fn read_after(
        &self,
        after: u64,
        upto: u64,
        max_bytes: usize,
        out: &mut Vec<Arc<Event>>,
    ) -> ReadOutcome {
        let ring = self.lock();
        let mut outcome = ReadOutcome::default();
        let mut from = after;
        if ring.evicted_through > after {
            outcome.lost_through = Some(ring.evicted_through);
            from = ring.evicted_through;
        }
        // Live readers sit at or near the head: look back a few events
        // before falling back to a binary search (replay).
        let events = &ring.events;
        let mut start = events.len();
        let mut steps = 0;
        while start > 0 && steps < 8 && events[start - 1].id.seq > from {
            start -= 1;
            steps += 1;
        }
        if start > 0 && events[start - 1].id.seq > from {
            start = events.partition_point(|e| e.id.seq <= from);
        }
        let mut bytes = 0;
        let mut last = None;
        for event in ring.events.range(start..) {
            if event.id.seq > upto {
                break;
            }
            if bytes > 0 && bytes + event.frame.len() > max_bytes {
                outcome.capped_at = last;
                break;
            }
            bytes += event.frame.len();
            last = Some(event.id.seq);
            out.push(Arc::clone(event));
        }
        outcome
    }

    pub(crate) fn stats(&self) -> ChannelStats {
        let ring = self.lock();
        ChannelStats {
            name: self.name.to_string(),
            subscribers: self.subscribers(),
            last_seq: ring.events.back().map(|e| e.id.seq),
            ring_len: ring.events.len(),
            ring_capacity: ring.capacity,
            evicted_through: ring.evicted_through,
            bytes: ring.bytes,
        }
    }
}

impl Ring {
    /// Appends an event, evicting the oldest when full; returns the evicted
    /// event.
    pub(crate) fn push(&mut self, event: Arc<Event>) -> Option<Arc<Event>> {
        let evicted = if self.events.len() == self.capacity {
            self.pop_front()
        } else {
            None
        };
        self.bytes += event.charge();
        self.held_any = true;
        self.events.push_back(event);
        evicted
    }

    /// Drops the oldest retained event, remembering that it is gone.
    pub(crate) fn pop_front(&mut self) -> Option<Arc<Event>> {
        let old = self.events.pop_front()?;
        self.evicted_through = old.id.seq;
        self.bytes -= old.charge();
        Some(old)
    }

    /// Seq of the newest retained event.
    pub(crate) fn back_seq(&self) -> Option<u64> {
        self.events.back().map(|e| e.id.seq)
    }

    /// Raises the point below which history is known to be gone.
    pub(crate) fn lose_through(&mut self, seq: u64) {
        self.evicted_through = self.evicted_through.max(seq);
    }

    /// Empties the ring for a new epoch; returns the bytes it held.
    pub(crate) fn clear(&mut self) -> usize {
        self.events.clear();
        self.pending.clear();
        self.evicted_through = 0;
        self.budget_key = 0;
        std::mem::take(&mut self.bytes)
    }

    /// Seq of the oldest retained event.
    pub(crate) fn front_seq(&self) -> Option<u64> {
        self.events.front().map(|e| e.id.seq)
    }

    /// The newest seq this channel has ever held or dropped.
    pub(crate) fn high_water(&self) -> u64 {
        self.events
            .back()
            .map_or(self.evicted_through, |e| e.id.seq.max(self.evicted_through))
    }
}
