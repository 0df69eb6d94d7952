//! The broadcast core: channels by name, the global sequencer, publish,
//! subscribe with replay, stats and reaping. No HTTP types live here.
//!
//! - `id`: event ids `<epoch>-<seq>`.
//! - `event`: immutable events, kept once, as their pre-encoded SSE frames.
//! - `frame`: the SSE wire encoder.
//! - `channel`: a ring per channel, shared by every reader.
//! - `budget`: the memory budget for all retained history.
//! - `tombstones`: where dropped channels' histories ended.
//! - `subscription`: per-connection cursors, batching and loss detection.
//!
//! Ordering: one sequencer lock assigns seqs and appends to the ring in the
//! same critical section, then publishes the new head in `committed`.
//! Readers only take events at or below `committed`, so across channels they
//! see events in seq order, and a reader can never skip an event that is
//! still on its way into a ring.
//!
//! Channels: a channel that has held an event counts against
//! `hub.max_channels` and is reaped after idling empty for the TTL, leaving
//! a tombstone. A channel created by a subscriber that never held an event
//! costs no capacity: it is removed with its last subscriber, so the number
//! of such channels is bounded by open streams × channels per stream.

mod budget;
pub mod channel;
pub mod config;
pub mod event;
pub mod frame;
pub mod id;
pub mod remote;
pub mod subscription;
mod tombstones;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tokio_util::task::TaskTracker;

pub use channel::ChannelStats;
pub use config::{HubConfig, HubConfigError};
pub use event::{Event, NewEvent};
pub use id::{EventId, InvalidId};
pub use subscription::{Batch, ResetReason, Subscription};

use budget::Budget;
use channel::Channel;
use event::PendingEvent;
use tombstones::Tombstones;

use crate::telemetry::metrics as m;

pub use frame::{RESERVED_PREFIX, RESET_EVENT, TOKEN_EXPIRED_EVENT};

/// Why the hub refused a request. Each maps to a stable API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The channel name is empty, too long, or uses a character outside
    /// letters, digits and `_ - . : /`.
    #[error("invalid channel name: {0}")]
    InvalidChannel(String),
    /// The event type contains CR/LF or is too long.
    #[error("invalid event type: {0}")]
    InvalidEventType(String),
    /// The event's data exceeds the configured maximum.
    #[error("event data is {size} bytes; the limit is {max}")]
    EventTooLarge {
        /// Encoded size of the data.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The hub already holds the maximum number of channels with history.
    #[error("the server holds its maximum of {0} channels")]
    TooManyChannels(usize),
}

/// Hub settings, taken from the config at start.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Events each channel retains.
    pub ring_size: usize,
    /// Most channels at once.
    pub max_channels: usize,
    /// Idle time after which an empty channel is reaped.
    pub idle_ttl: Duration,
    /// Largest event data, in bytes.
    pub max_event_bytes: usize,
    /// Longest channel name.
    pub max_channel_name_len: usize,
    /// Longest event type.
    pub max_event_type_len: usize,
    /// Reaped channels remembered.
    pub max_tombstones: usize,
    /// Budget for all retained history, in bytes.
    pub max_memory_bytes: usize,
    /// Largest batch handed to one subscriber at once.
    pub max_batch_bytes: usize,
    /// Wake a channel's subscribers at most once per this many ms (0: at
    /// every publish).
    pub coalesce_ms: u64,
}

impl HubSettings {
    /// Settings from the `[hub]` section, plus the two fan-out settings
    /// that users find under `[sse]`.
    pub fn from_config(hub: &HubConfig, max_batch_bytes: usize, coalesce_ms: u64) -> Self {
        Self {
            ring_size: hub.ring_size,
            max_channels: hub.max_channels,
            idle_ttl: Duration::from_secs(hub.channel_idle_ttl_secs),
            max_event_bytes: hub.max_event_bytes,
            max_channel_name_len: hub.max_channel_name_len,
            max_event_type_len: hub.max_event_type_len,
            max_tombstones: hub.max_tombstones,
            max_memory_bytes: hub.max_memory_bytes,
            max_batch_bytes,
            coalesce_ms,
        }
    }
}

/// Channels joined by one would-be subscriber (see [`Hub::join`]).
#[derive(Debug)]
pub struct Joined {
    channels: Vec<Arc<Channel>>,
}

impl Joined {
    /// The joined channels.
    pub fn channels(&self) -> &[Arc<Channel>] {
        &self.channels
    }
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy)]
pub enum Resume<'a> {
    /// Live events only.
    Live,
    /// Resume after this raw `Last-Event-ID`.
    After(&'a str),
}

/// The in-memory broadcast hub. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
pub(crate) struct HubInner {
    /// The current epoch (changes only when a broker's history is lost).
    epoch: AtomicU64,
    settings: HubSettings,
    pub(crate) max_batch_bytes: usize,
    channels: DashMap<Arc<str>, Arc<Channel>>,
    /// Channels in the map.
    channel_count: AtomicUsize,
    /// Channels that have held an event: these count against `max_channels`.
    history_channels: AtomicUsize,
    /// The last assigned seq and the memory budget. Held while appending
    /// to a ring, so rings receive seqs in order and the budget's index
    /// matches the rings. Lock order: this, then a map shard, then a ring
    /// (nothing takes this while holding a shard or a ring).
    sequencer: Mutex<Sequencer>,
    /// Highest seq whose event is already in its ring.
    committed: AtomicU64,
    /// Bytes of retained history (a copy of the budget's count, for readers).
    retained: AtomicUsize,
    tombstones: Mutex<Tombstones>,
    started: Instant,
    /// Deferred (coalesced) wake-ups; closed and awaited on drain.
    tasks: TaskTracker,
    metrics: HubMetrics,
    /// Remote mode: seqs come from a broker, rings are filled from its
    /// history (see `remote`).
    remote: bool,
    /// Remote mode: the state of the link to the broker.
    link: remote::LinkState,
}

#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    last: u64,
    budget: Budget,
}

impl Sequencer {
    /// Appends sealed events to a channel's ring (locked by the caller),
    /// charging them to the budget; returns how many old events the ring
    /// dropped to make room.
    fn store(
        &mut self,
        channel: &Arc<Channel>,
        ring: &mut channel::Ring,
        events: impl IntoIterator<Item = Arc<Event>>,
    ) -> u64 {
        let mut dropped = 0;
        for event in events {
            // Charged before the push: the push may evict an event of this
            // very batch (a batch larger than the ring).
            self.budget.charge(event.charge());
            if let Some(old) = ring.push(event) {
                self.budget.released(old.charge());
                dropped += 1;
            }
        }
        self.budget.file(channel, ring);
        dropped
    }
}

/// Metric handles resolved once, off the per-publish path.
#[derive(Debug)]
struct HubMetrics {
    published: metrics::Counter,
    evicted_ring: metrics::Counter,
    evicted_memory: metrics::Counter,
}

impl HubMetrics {
    fn new() -> Self {
        Self {
            published: metrics::counter!(m::EVENTS_PUBLISHED),
            evicted_ring: metrics::counter!(m::HISTORY_EVICTED, "reason" => "ring_full"),
            evicted_memory: metrics::counter!(m::HISTORY_EVICTED, "reason" => "memory_budget"),
        }
    }
}

impl HubInner {
    pub(crate) fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock_sequencer(&self) -> std::sync::MutexGuard<'_, Sequencer> {
        // Every mutation under this lock is completed before any call that
        // could panic, so a poisoned lock holds consistent state.
        self.sequencer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_tombstones(&self) -> std::sync::MutexGuard<'_, Tombstones> {
        self.tombstones.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a channel's first event against `max_channels`.
    fn claim_history_slot(&self) -> bool {
        let max = self.settings.max_channels;
        if self.history_channels.fetch_add(1, Ordering::AcqRel) >= max {
            self.history_channels.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Leaves `channel`: drops one subscriber and, if it was the last and
    /// the channel never held an event, removes the channel at once.
    pub(crate) fn leave(&self, channel: &Arc<Channel>) {
        if channel.remove_subscriber(self.now_ms()) == 0 {
            self.discard_if_unused(channel);
        }
    }

    /// Removes `channel` if nobody reads it and it never held an event.
    fn discard_if_unused(&self, channel: &Arc<Channel>) {
        let mut floor = 0;
        let removed = self.channels.remove_if(&channel.name, |_, current| {
            if !Arc::ptr_eq(current, channel) || current.subscribers() != 0 {
                return false;
            }
            let mut ring = current.lock();
            if ring.held_any {
                return false;
            }
            ring.dead = true;
            floor = ring.high_water();
            true
        });
        if removed.is_some() {
            let n = self.channel_count.fetch_sub(1, Ordering::Relaxed) - 1;
            metrics::gauge!(m::CHANNELS).set(n as f64);
            // A floor inherited from a tombstone must outlive this channel.
            self.lock_tombstones().remember(
                Arc::clone(&channel.name),
                floor,
                self.settings.max_tombstones,
            );
        }
    }
}

impl Hub {
    /// A hub with a fresh epoch taken from the wall clock.
    pub fn new(settings: HubSettings) -> Self {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        Self::with_epoch(settings, epoch)
    }

    /// A hub with the given epoch.
    pub fn with_epoch(settings: HubSettings, epoch: u64) -> Self {
        Self::build(settings, epoch, false)
    }

    /// A hub whose seqs, epoch and history come from a broker (Redis): see
    /// [`remote`]. Its epoch is unknown (0) until the broker link syncs.
    pub fn new_remote(settings: HubSettings) -> Self {
        Self::build(settings, 0, true)
    }

    fn build(settings: HubSettings, epoch: u64, remote: bool) -> Self {
        metrics::gauge!(m::CHANNELS).set(0.0);
        Self {
            inner: Arc::new(HubInner {
                epoch: AtomicU64::new(epoch),
                max_batch_bytes: settings.max_batch_bytes,
                settings,
                channels: DashMap::new(),
                channel_count: AtomicUsize::new(0),
                history_channels: AtomicUsize::new(0),
                sequencer: Mutex::new(Sequencer::default()),
                committed: AtomicU64::new(0),
                retained: AtomicUsize::new(0),
                tombstones: Mutex::new(Tombstones::default()),
                started: Instant::now(),
                tasks: TaskTracker::new(),
                metrics: HubMetrics::new(),
                remote,
                link: remote::LinkState::default(),
            }),
        }
    }

    /// The hub's background tasks (deferred wake-ups), for the drain to
    /// close and wait on.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// This hub's epoch.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch()
    }

    /// Id of the newest published event (seq 0 before any publish).
    pub fn head(&self) -> EventId {
        EventId {
            epoch: self.inner.epoch(),
            seq: self.inner.committed(),
        }
    }

    /// Number of channels that exist.
    pub fn channel_count(&self) -> usize {
        self.inner.channel_count.load(Ordering::Relaxed)
    }

    /// Number of channels that have held an event (the ones counted
    /// against `hub.max_channels`).
    pub fn history_channel_count(&self) -> usize {
        self.inner.history_channels.load(Ordering::Relaxed)
    }

    /// Bytes of retained history, as counted against `hub.max_memory_bytes`.
    pub fn retained_bytes(&self) -> usize {
        self.inner.retained.load(Ordering::Relaxed)
    }

    /// Settings in force.
    pub fn settings(&self) -> &HubSettings {
        &self.inner.settings
    }

    /// Checks a channel name against the documented alphabet and length.
    pub fn validate_channel(&self, name: &str) -> Result<(), HubError> {
        let max = self.inner.settings.max_channel_name_len;
        if name.is_empty() {
            return Err(HubError::InvalidChannel("the name is empty".into()));
        }
        if name.len() > max {
            return Err(HubError::InvalidChannel(format!(
                "the name is longer than {max} bytes"
            )));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/')))
        {
            return Err(HubError::InvalidChannel(format!(
                "character {c:?} is not allowed; use letters, digits and _ - . : /"
            )));
        }
        Ok(())
    }

    /// Checks an event before it is sequenced.
    pub fn validate_event(&self, event: &NewEvent) -> Result<(), HubError> {
        let s = &self.inner.settings;
        if let Some(t) = &event.event_type {
            if t.contains(['\r', '\n']) {
                return Err(HubError::InvalidEventType(
                    "it must not contain CR or LF".into(),
                ));
            }
            if t.is_empty() || t.len() > s.max_event_type_len {
                return Err(HubError::InvalidEventType(format!(
                    "it must be 1 to {} bytes",
                    s.max_event_type_len
                )));
            }
        }
        if event.data.len() > s.max_event_bytes {
            return Err(HubError::EventTooLarge {
                size: event.data.len(),
                max: s.max_event_bytes,
            });
        }
        Ok(())
    }

    /// Looks a channel up, creating it if needed. With `join`, counts a new
    /// subscriber while the map shard is locked, so neither the reaper nor
    /// the last leaver can remove the channel in between. A new channel
    /// costs no capacity until it holds an event.
    fn channel(&self, name: &str, join: bool) -> Arc<Channel> {
        let inner = &self.inner;
        if let Some(ch) = inner.channels.get(name) {
            if join {
                ch.add_subscriber();
            }
            return Arc::clone(ch.value());
        }
        match inner.channels.entry(Arc::from(name)) {
            dashmap::Entry::Occupied(e) => {
                if join {
                    e.get().add_subscriber();
                }
                Arc::clone(e.get())
            }
            dashmap::Entry::Vacant(e) => {
                // Remote channels learn their floor from the broker's history.
                let floor = if inner.remote {
                    0
                } else {
                    inner.lock_tombstones().take(name)
                };
                let ch = Arc::new(Channel::new(
                    Arc::clone(e.key()),
                    inner.settings.ring_size,
                    floor,
                    inner.now_ms(),
                    !inner.remote,
                ));
                if join {
                    ch.add_subscriber();
                }
                e.insert(Arc::clone(&ch));
                let n = inner.channel_count.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::gauge!(m::CHANNELS).set(n as f64);
                ch
            }
        }
    }

    /// Publishes events to one channel, in order, with consecutive seqs
    /// (local mode; a remote hub's events arrive through [`Hub::apply`]).
    pub fn publish(
        &self,
        channel: &str,
        events: Vec<NewEvent>,
        trace: Option<opentelemetry::trace::SpanContext>,
    ) -> Result<Vec<EventId>, HubError> {
        self.validate_channel(channel)?;
        for e in &events {
            self.validate_event(e)?;
        }
        let count = events.len();
        // Encoding happens outside the sequencer lock.
        let mut pending: Vec<PendingEvent> = events.into_iter().map(PendingEvent::encode).collect();
        let accepted_at = Instant::now();
        let inner = &self.inner;
        let mut ch = self.channel(channel, false);
        let mut ids = Vec::with_capacity(count);
        let (ring_evicted, evicted) = loop {
            let mut seq = inner.lock_sequencer();
            let mut ring = ch.lock();
            if ring.dead {
                // Removed between lookup and lock: publish into its successor.
                drop(ring);
                drop(seq);
                ch = self.channel(channel, false);
                continue;
            }
            if !ring.held_any && !inner.claim_history_slot() {
                drop(ring);
                drop(seq);
                inner.discard_if_unused(&ch);
                metrics::counter!(m::PUBLISH_ERRORS, "reason" => "too_many_channels").increment(1);
                return Err(HubError::TooManyChannels(inner.settings.max_channels));
            }
            let epoch = inner.epoch();
            let first = seq.last + 1;
            let mut sealed = Vec::with_capacity(count);
            for p in pending.drain(..) {
                seq.last += 1;
                let id = EventId {
                    epoch,
                    seq: seq.last,
                };
                sealed.push(Arc::new(p.finish(
                    id,
                    Arc::clone(&ch.name),
                    accepted_at,
                    trace.clone(),
                )));
                ids.push(id);
            }
            let ring_evicted = seq.store(&ch, &mut ring, sealed);
            drop(ring);
            let evicted = seq.budget.enforce(inner.settings.max_memory_bytes, first);
            inner.retained.store(seq.budget.bytes(), Ordering::Relaxed);
            inner.committed.store(seq.last, Ordering::Release);
            break (ring_evicted, evicted);
        };
        let now = inner.now_ms();
        ch.touch(now);
        ch.wake(now, inner.settings.coalesce_ms, &inner.tasks);
        inner.metrics.published.increment(count as u64);
        if ring_evicted > 0 {
            inner.metrics.evicted_ring.increment(ring_evicted);
        }
        if evicted.events > 0 {
            inner.metrics.evicted_memory.increment(evicted.events);
            tracing::debug!(
                events = evicted.events,
                retained_bytes = self.retained_bytes(),
                "evicted the oldest history to stay within hub.max_memory_bytes"
            );
        }
        Ok(ids)
    }

    /// Subscribes to `channels` (already validated and de-duplicated),
    /// starting live or after a resume id.
    pub fn subscribe(
        &self,
        channels: &[String],
        resume: Resume<'_>,
        envelope: bool,
    ) -> Result<Subscription, HubError> {
        let joined = self.join(channels);
        Ok(self.start(joined, resume, envelope))
    }

    /// Joins `channels` as one more subscriber, creating them as needed.
    /// Hand the result to [`Hub::start`] (after, in remote mode, every
    /// channel is ready), or to [`Hub::leave_all`].
    pub fn join(&self, channels: &[String]) -> Joined {
        Joined {
            channels: channels.iter().map(|n| self.channel(n, true)).collect(),
        }
    }

    /// Gives joined channels back without subscribing.
    pub fn leave_all(&self, joined: Joined) {
        for ch in &joined.channels {
            self.inner.leave(ch);
        }
    }

    /// Starts a subscription on joined (and ready) channels.
    pub fn start(&self, joined: Joined, resume: Resume<'_>, envelope: bool) -> Subscription {
        let epoch = self.inner.epoch();
        let head = self.inner.committed();
        let (start, reset, replay) = match resume {
            Resume::Live => (head, None, false),
            Resume::After(raw) => match EventId::parse(raw) {
                Err(InvalidId) => (head, Some((ResetReason::InvalidId, None)), false),
                Ok(id) if id.epoch != epoch => (
                    head,
                    Some((ResetReason::UnknownEpoch, Some(id.to_string()))),
                    false,
                ),
                Ok(id) if id.seq > head => (
                    head,
                    Some((ResetReason::FutureId, Some(id.to_string()))),
                    false,
                ),
                Ok(id) => (id.seq, None, true),
            },
        };
        if reset.is_some() {
            metrics::counter!(m::REPLAYS, "result" => "reset").increment(1);
        }
        Subscription::new(
            Arc::clone(&self.inner),
            joined.channels,
            epoch,
            start,
            reset,
            replay,
            envelope,
        )
    }

    /// Stats of one channel, if it exists.
    pub fn stats(&self, channel: &str) -> Option<ChannelStats> {
        self.inner.channels.get(channel).map(|c| c.stats())
    }

    /// Removes channels with no subscribers that have been idle longer than
    /// the TTL, remembering where their history ended. Returns how many.
    pub fn reap(&self) -> usize {
        let inner = &self.inner;
        let now = inner.now_ms();
        let ttl = inner.settings.idle_ttl.as_millis() as u64;
        let candidates: Vec<Arc<str>> = inner
            .channels
            .iter()
            .filter(|e| e.subscribers() == 0 && now.saturating_sub(e.idle_since_ms()) >= ttl)
            .map(|e| Arc::clone(e.key()))
            .collect();
        let mut reaped = 0;
        for name in candidates {
            let mut high = 0;
            // Lock order: sequencer, then the map shard, then the ring.
            let mut seq = inner.lock_sequencer();
            let removed = inner.channels.remove_if(&name, |_, ch| {
                if ch.subscribers() != 0 || now.saturating_sub(ch.idle_since_ms()) < ttl {
                    return false;
                }
                let mut ring = ch.lock();
                ring.dead = true;
                high = ring.high_water();
                if ring.held_any {
                    inner.history_channels.fetch_sub(1, Ordering::AcqRel);
                }
                seq.budget.forget(&mut ring);
                inner.retained.store(seq.budget.bytes(), Ordering::Relaxed);
                true
            });
            drop(seq);
            if removed.is_some() {
                reaped += 1;
                inner.channel_count.fetch_sub(1, Ordering::Relaxed);
                inner
                    .lock_tombstones()
                    .remember(name, high, inner.settings.max_tombstones);
            }
        }
        if reaped > 0 {
            metrics::counter!(m::CHANNELS_REAPED).increment(reaped as u64);
            metrics::gauge!(m::CHANNELS).set(self.channel_count() as f64);
            tracing::debug!(
                reaped,
                remaining = self.channel_count(),
                "reaped idle channels"
            );
        }
        reaped
    }
}

#[cfg(test)]
mod tests;
