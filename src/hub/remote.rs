//! Remote mode: a hub whose seqs, epoch and history come from a broker
//! (Redis) instead of its own sequencer. The broker's link task hands every
//! event to [`Hub::apply`] in global seq order; a channel that gains its
//! first local subscriber is filled from the broker's history before anyone
//! reads it; a broken link is healed by [`Hub::begin_resync`] …
//! [`Hub::finish_resync`]. Rings stay caches of the broker's history, and
//! `committed` keeps its meaning: every event at or below it is in its ring.
//!
//! # The hand-off invariant
//!
//! A subscriber that joins a channel new to this replica, while publishing
//! goes on at full rate, must see history meet live events with nothing lost
//! and nothing repeated. Three rules make that hold:
//!
//! 1. **Registration before snapshot.** The channel is put in the hub's map
//!    before its fill is planned, and the fill's snapshot `S` is read under
//!    the sequencer lock ([`Hub::begin_fill`]). [`Hub::apply`] looks the
//!    channel up under that same lock. So for every event, either it was
//!    applied before `S` was read (its seq is at most `S`), or it was applied
//!    after, found the channel in the map, and went into the ring's pending
//!    list because the ring was not ready.
//! 2. **History up to the snapshot.** The fill reads the broker's history of
//!    the channel with seqs at most `S`. The broker writes an event's history
//!    entry and publishes it in one atomic step, before any replica applies
//!    it, so every event with seq at most `S` is in that history, unless the
//!    history was trimmed or expired, which the broker reports as the
//!    channel's `evicted_through` and subscribers then get `herald.reset`.
//! 3. **Merge by seq.** [`Hub::complete_fill`] puts the history in the ring,
//!    then the pending events with seqs above the history's last, dropping
//!    any seq it already holds, and marks the channel ready, all under the
//!    sequencer lock, so no event is applied in between. Subscribers start
//!    only once the channel is ready, with their cursor at their resume id.
//!
//! Together: every event of the channel is in the ring exactly once, in seq
//! order, by the time a reader may look. If the link breaks while a fill
//! runs, the events published meanwhile are in neither part; so a resync
//! bumps the link's generation, a fill planned under an older generation is
//! refused at completion and planned again, and new fills wait until the
//! link is synced again.
//!
//! The same argument covers a client that moves between replicas: its
//! `Last-Event-ID` is a global seq, and the ring it resumes from on the new
//! replica is complete from `evicted_through` up to `committed`. An id ahead
//! of this replica's `committed` (the old replica saw it first) is waited for
//! briefly by the broker before the subscription starts ([`Hub::wait_committed`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::channel::{Channel, FILL_NONE, FILL_READY, FILL_RUNNING};
use super::event::{Event, NewEvent, PendingEvent};
use super::id::EventId;
use super::{Hub, Joined};

/// The state of the broker link, shared by the link task and the fills.
#[derive(Debug, Default)]
pub(crate) struct LinkState {
    /// The link is subscribed and the rings are whole up to `committed`.
    synced: AtomicBool,
    /// Bumped at every resync: fills planned before it are stale.
    generation: AtomicU64,
    /// Woken when the link becomes synced, and when `committed` advances.
    changed: Notify,
}

/// One event of a broker's history: its seq and content.
#[derive(Debug, Clone)]
pub struct HistoryEvent {
    /// Its seq in the current epoch.
    pub seq: u64,
    /// Its content.
    pub event: NewEvent,
}

/// A fill planned by [`Hub::begin_fill`]: read the channel's history up to
/// `snapshot`, then call [`Hub::complete_fill`].
#[derive(Debug)]
pub struct FillPlan {
    /// The channel to fill.
    pub channel: Arc<Channel>,
    /// Read history with seqs at most this.
    pub snapshot: u64,
    /// The epoch the history must belong to.
    pub epoch: u64,
    generation: u64,
}

/// A channel's history as read from the broker.
#[derive(Debug, Default)]
pub struct History {
    /// Events in seq order (at most the ring size, the newest).
    pub events: Vec<HistoryEvent>,
    /// Seq of the newest event of this channel that is gone (trimmed,
    /// expired, or older than what was read).
    pub evicted_through: u64,
}

/// What [`Hub::apply`] did with an event batch from the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Stored (or not needed here) and committed.
    Committed,
    /// Already applied (seen again after a resync).
    Duplicate,
    /// Seqs between the last applied and this batch never arrived: resync.
    Gap {
        /// The seq that was expected next.
        expected: u64,
    },
    /// The batch belongs to another epoch: the broker lost its history.
    OtherEpoch,
}

/// A fill that completed too late: the link resynced meanwhile.
#[derive(Debug, thiserror::Error)]
#[error("the link resynced during the fill; plan it again")]
pub struct StaleFill;

impl Hub {
    /// Whether the link is synced (remote mode), or always (local mode).
    pub fn is_synced(&self) -> bool {
        !self.inner.remote || self.inner.link.synced.load(Ordering::Acquire)
    }

    /// The channels of `joined` that are not ready yet.
    pub fn unready(joined: &Joined) -> Vec<Arc<Channel>> {
        joined
            .channels()
            .iter()
            .filter(|c| !c.is_ready())
            .cloned()
            .collect()
    }

    /// Claims the fill of `channel` if nobody is filling it, once the link
    /// is synced. `None`: it is ready, or another subscriber fills it.
    pub fn begin_fill(&self, channel: &Arc<Channel>) -> Option<FillPlan> {
        // Under the lock a resync takes to begin, so the snapshot and the
        // generation belong to one synced period.
        let seq = self.inner.lock_sequencer();
        if !self.is_synced() {
            return None;
        }
        channel
            .fill
            .compare_exchange(FILL_NONE, FILL_RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(FillPlan {
            channel: Arc::clone(channel),
            snapshot: seq.last,
            epoch: self.inner.epoch(),
            generation: self.inner.link.generation.load(Ordering::Acquire),
        })
    }

    /// Gives a fill up (the broker could not be read); another subscriber
    /// may try again.
    pub fn abandon_fill(&self, plan: FillPlan) {
        plan.channel.fill.store(FILL_NONE, Ordering::Release);
        plan.channel.filled.notify_waiters();
    }

    /// Installs a channel's history and the events that arrived meanwhile,
    /// and marks it ready (see the module docs for why this is complete).
    pub fn complete_fill(&self, plan: FillPlan, history: History) -> Result<(), StaleFill> {
        let inner = &self.inner;
        let mut seq = inner.lock_sequencer();
        let stale = inner.link.generation.load(Ordering::Acquire) != plan.generation
            || inner.epoch() != plan.epoch;
        if stale {
            drop(seq);
            self.abandon_fill(plan);
            return Err(StaleFill);
        }
        let channel = &plan.channel;
        let mut ring = channel.lock();
        let arrived = Instant::now();
        let history_last = history.events.last().map_or(0, |e| e.seq);
        let pending = std::mem::take(&mut ring.pending);
        let events = history
            .events
            .into_iter()
            .filter(|h| h.seq <= plan.snapshot)
            .map(|h| Arc::new(seal(h.seq, h.event, plan.epoch, channel, arrived)))
            .chain(pending.into_iter().filter(|e| e.id.seq > history_last))
            .collect::<Vec<_>>();
        ring.lose_through(history.evicted_through);
        let dropped = seq.store(channel, &mut ring, events);
        drop(ring);
        let evicted = seq
            .budget
            .enforce(inner.settings.max_memory_bytes, plan.snapshot + 1);
        inner.retained.store(seq.budget.bytes(), Ordering::Relaxed);
        channel.fill.store(FILL_READY, Ordering::Release);
        drop(seq);
        inner.metrics.evicted_ring.increment(dropped);
        inner.metrics.evicted_memory.increment(evicted.events);
        channel.filled.notify_waiters();
        Ok(())
    }

    /// Waits until `channel` is ready, or the fill is abandoned, or `until`.
    pub async fn wait_filled(&self, channel: &Channel, until: tokio::time::Instant) -> bool {
        loop {
            let woken = channel.filled.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if channel.is_ready() {
                return true;
            }
            if channel.fill.load(Ordering::Acquire) == FILL_NONE {
                return false;
            }
            if tokio::time::timeout_at(until, woken).await.is_err() {
                return channel.is_ready();
            }
        }
    }

    /// Applies one batch of events from the link, in global seq order:
    /// stored if the channel is local (pending if it is still being
    /// filled), dropped otherwise, and committed.
    pub fn apply(
        &self,
        epoch: u64,
        first_seq: u64,
        channel: &str,
        events: Vec<NewEvent>,
        trace: Option<opentelemetry::trace::SpanContext>,
    ) -> Applied {
        let inner = &self.inner;
        if epoch != inner.epoch() {
            return Applied::OtherEpoch;
        }
        let arrived = Instant::now();
        // Encoded outside the lock; cheap to drop if the channel is not here.
        let encoded: Vec<PendingEvent> = events.into_iter().map(PendingEvent::encode).collect();
        let count = encoded.len() as u64;
        let mut seq = inner.lock_sequencer();
        let expected = seq.last + 1;
        if first_seq + count <= expected {
            return Applied::Duplicate;
        }
        if first_seq > expected {
            return Applied::Gap { expected };
        }
        // Looked up under the sequencer lock: see rule 1 of the module docs.
        let local = inner.channels.get(channel).map(|c| Arc::clone(c.value()));
        let last = first_seq + count - 1;
        if let Some(ch) = &local {
            let mut ring = ch.lock();
            if !ring.dead {
                let sealed = encoded
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| first_seq + *i as u64 >= expected)
                    .map(|(i, p)| {
                        let id = EventId {
                            epoch,
                            seq: first_seq + i as u64,
                        };
                        Arc::new(p.finish(id, Arc::clone(&ch.name), arrived, trace.clone()))
                    });
                if ch.is_ready() {
                    let dropped = seq.store(ch, &mut ring, sealed);
                    inner.metrics.evicted_ring.increment(dropped);
                } else {
                    ring.pending.extend(sealed);
                }
            }
        }
        seq.last = last;
        let evicted = seq
            .budget
            .enforce(inner.settings.max_memory_bytes, first_seq);
        inner.retained.store(seq.budget.bytes(), Ordering::Relaxed);
        inner.committed.store(last, Ordering::Release);
        drop(seq);
        inner.metrics.evicted_memory.increment(evicted.events);
        if let Some(ch) = local {
            let now = inner.now_ms();
            ch.touch(now);
            ch.wake(now, inner.settings.coalesce_ms, &inner.tasks);
        }
        inner.link.changed.notify_waiters();
        Applied::Committed
    }

    /// Starts healing a broken link: marks it unsynced and invalidates fills
    /// planned before now. `committed` holds still until
    /// [`Hub::finish_resync`].
    pub fn begin_resync(&self) {
        let _seq = self.inner.lock_sequencer();
        self.inner.link.synced.store(false, Ordering::Release);
        self.inner.link.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Starts a new epoch: the broker's history is gone, so every ring is
    /// emptied and `committed` restarts at 0. Subscriptions notice the new
    /// epoch and reset themselves.
    pub fn switch_epoch(&self, epoch: u64) {
        let inner = &self.inner;
        let mut seq = inner.lock_sequencer();
        for entry in inner.channels.iter() {
            let mut ring = entry.lock();
            let bytes = ring.clear();
            seq.budget.released(bytes);
        }
        seq.budget = Default::default();
        seq.last = 0;
        inner.epoch.store(epoch, Ordering::Release);
        inner.committed.store(0, Ordering::Release);
        inner.retained.store(0, Ordering::Relaxed);
        drop(seq);
        for entry in inner.channels.iter() {
            entry.notify.notify_waiters();
        }
    }

    /// The ready local channels and the seq of the newest event each holds
    /// (or has lost), for a resync to read what came after.
    pub fn ready_channels(&self) -> Vec<(Arc<str>, u64)> {
        self.inner
            .channels
            .iter()
            .filter(|c| c.is_ready())
            .map(|c| (Arc::clone(&c.name), c.lock().high_water()))
            .collect()
    }

    /// Appends what a resync read for one ready channel: events after the
    /// ring's newest, and the point below which history is gone.
    pub fn resync_channel(&self, name: &str, history: History) {
        let inner = &self.inner;
        let epoch = inner.epoch();
        let mut seq = inner.lock_sequencer();
        let Some(ch) = inner.channels.get(name).map(|c| Arc::clone(c.value())) else {
            return;
        };
        let mut ring = ch.lock();
        let newest = ring.back_seq().unwrap_or(0);
        let arrived = Instant::now();
        let events: Vec<Arc<Event>> = history
            .events
            .into_iter()
            .filter(|h| h.seq > newest)
            .map(|h| Arc::new(seal(h.seq, h.event, epoch, &ch, arrived)))
            .collect();
        ring.lose_through(history.evicted_through);
        let dropped = seq.store(&ch, &mut ring, events);
        drop(ring);
        drop(seq);
        inner.metrics.evicted_ring.increment(dropped);
    }

    /// Ends a resync: every ready ring now holds everything up to `last`,
    /// so it becomes `committed` and fills may start again.
    pub fn finish_resync(&self, last: u64) {
        let inner = &self.inner;
        let mut seq = inner.lock_sequencer();
        seq.last = last;
        let evicted = seq
            .budget
            .enforce(inner.settings.max_memory_bytes, last + 1);
        inner.retained.store(seq.budget.bytes(), Ordering::Relaxed);
        inner.committed.store(last, Ordering::Release);
        inner.link.synced.store(true, Ordering::Release);
        drop(seq);
        inner.metrics.evicted_memory.increment(evicted.events);
        for entry in inner.channels.iter() {
            entry.notify.notify_waiters();
        }
        inner.link.changed.notify_waiters();
    }

    /// Waits (at most `wait`) until `committed` reaches `seq` in the current
    /// epoch: a client resuming here may carry an id another replica
    /// delivered a moment before this one received it.
    pub async fn wait_committed(&self, seq: u64, wait: Duration) -> bool {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.inner.link.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.inner.committed() >= seq {
                return true;
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return self.inner.committed() >= seq;
            }
        }
    }

    /// Waits (at most until `until`) for the link to be synced.
    pub async fn wait_synced(&self, until: tokio::time::Instant) -> bool {
        loop {
            let changed = self.inner.link.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_synced() {
                return true;
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return self.is_synced();
            }
        }
    }
}

/// Seals a history event into the channel's frame format.
fn seal(seq: u64, event: NewEvent, epoch: u64, channel: &Channel, arrived: Instant) -> Event {
    PendingEvent::encode(event).finish(
        EventId { epoch, seq },
        Arc::clone(&channel.name),
        arrived,
        None,
    )
}
