//! The broadcast core: channels by name, the global sequencer, publish,
//! subscribe with replay, stats and reaping. No HTTP types live here.
//!
//! - `id`: event ids `<epoch>-<seq>`.
//! - `event`: immutable events and their pre-encoded SSE frames.
//! - `channel`: a ring per channel, shared by every reader.
//! - `subscription`: per-connection cursors, batching and loss detection.
//!
//! Ordering: one sequencer lock assigns seqs and appends to the ring in the
//! same critical section, then publishes the new head in `committed`.
//! Readers only take events at or below `committed`, so across channels they
//! see events in seq order, and a reader can never skip an event that is
//! still on its way into a ring.

pub mod channel;
pub mod config;
pub mod event;
pub mod frame;
pub mod id;
pub mod subscription;

use std::collections::{HashMap, VecDeque};
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

use channel::Channel;
use event::PendingEvent;

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
    /// The hub already holds the maximum number of channels.
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
            max_batch_bytes,
            coalesce_ms,
        }
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
    pub(crate) epoch: u64,
    settings: HubSettings,
    pub(crate) max_batch_bytes: usize,
    channels: DashMap<Arc<str>, Arc<Channel>>,
    channel_count: AtomicUsize,
    /// The last assigned seq. Held while appending to a ring, so rings
    /// receive seqs in order.
    sequencer: Mutex<u64>,
    /// Highest seq whose event is already in its ring.
    committed: AtomicU64,
    tombstones: Mutex<Tombstones>,
    started: Instant,
    /// Deferred (coalesced) wake-ups; closed and awaited on drain.
    tasks: TaskTracker,
}

/// Remembers where reaped channels' histories ended, so a client resuming
/// into a recreated channel gets a reset, not silence. Bounded: forgotten
/// tombstones raise a floor that applies to every new channel.
#[derive(Debug, Default)]
struct Tombstones {
    by_name: HashMap<Arc<str>, u64>,
    order: VecDeque<Arc<str>>,
    forgotten_floor: u64,
}

impl HubInner {
    pub(crate) fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
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
        metrics::gauge!(m::CHANNELS).set(0.0);
        Self {
            inner: Arc::new(HubInner {
                epoch,
                max_batch_bytes: settings.max_batch_bytes,
                settings,
                channels: DashMap::new(),
                channel_count: AtomicUsize::new(0),
                sequencer: Mutex::new(0),
                committed: AtomicU64::new(0),
                tombstones: Mutex::new(Tombstones::default()),
                started: Instant::now(),
                tasks: TaskTracker::new(),
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
        self.inner.epoch
    }

    /// Id of the newest published event (seq 0 before any publish).
    pub fn head(&self) -> EventId {
        EventId {
            epoch: self.inner.epoch,
            seq: self.inner.committed(),
        }
    }

    /// Number of channels that exist.
    pub fn channel_count(&self) -> usize {
        self.inner.channel_count.load(Ordering::Relaxed)
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
    /// subscriber while the map shard is locked, so the reaper cannot remove
    /// the channel in between.
    fn channel(&self, name: &str, join: bool) -> Result<Arc<Channel>, HubError> {
        let inner = &self.inner;
        if let Some(ch) = inner.channels.get(name) {
            if join {
                ch.add_subscriber();
            }
            return Ok(Arc::clone(ch.value()));
        }
        let max = inner.settings.max_channels;
        match inner.channels.entry(Arc::from(name)) {
            dashmap::Entry::Occupied(e) => {
                if join {
                    e.get().add_subscriber();
                }
                Ok(Arc::clone(e.get()))
            }
            dashmap::Entry::Vacant(e) => {
                if inner.channel_count.load(Ordering::Relaxed) >= max {
                    metrics::counter!(m::PUBLISH_ERRORS, "reason" => "too_many_channels")
                        .increment(1);
                    return Err(HubError::TooManyChannels(max));
                }
                let floor = {
                    let mut t = inner.tombstones.lock().unwrap_or_else(|p| p.into_inner());
                    let floor = t.forgotten_floor;
                    t.by_name.remove(name).unwrap_or(floor)
                };
                let ch = Arc::new(Channel::new(
                    Arc::clone(e.key()),
                    inner.settings.ring_size,
                    floor,
                    inner.now_ms(),
                ));
                if join {
                    ch.add_subscriber();
                }
                e.insert(Arc::clone(&ch));
                let n = inner.channel_count.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::gauge!(m::CHANNELS).set(n as f64);
                Ok(ch)
            }
        }
    }

    /// Publishes events to one channel, in order, with consecutive seqs.
    /// Events must already pass [`Hub::validate_event`].
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
        let mut ch = self.channel(channel, false)?;
        let inner = &self.inner;
        let mut ids = Vec::with_capacity(count);
        loop {
            let mut seq = inner.sequencer.lock().unwrap_or_else(|p| p.into_inner());
            let mut ring = ch.lock();
            if ring.dead {
                // Reaped between lookup and lock: publish into its successor.
                drop(ring);
                drop(seq);
                ch = self.channel(channel, false)?;
                continue;
            }
            for p in pending.drain(..) {
                *seq += 1;
                let id = EventId {
                    epoch: inner.epoch,
                    seq: *seq,
                };
                let event = p.finish(id, Arc::clone(&ch.name), accepted_at, trace.clone());
                ring.push(Arc::new(event));
                ids.push(id);
            }
            inner.committed.store(*seq, Ordering::Release);
            break;
        }
        let now = inner.now_ms();
        ch.touch(now);
        ch.wake(now, inner.settings.coalesce_ms, &inner.tasks);
        metrics::counter!(m::EVENTS_PUBLISHED).increment(count as u64);
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
        let mut joined = Vec::with_capacity(channels.len());
        for name in channels {
            match self.channel(name, true) {
                Ok(ch) => joined.push(ch),
                Err(e) => {
                    let now = self.inner.now_ms();
                    for ch in joined {
                        ch.remove_subscriber(now);
                    }
                    return Err(e);
                }
            }
        }
        let head = self.inner.committed();
        let (start, reset, replay) = match resume {
            Resume::Live => (head, None, false),
            Resume::After(raw) => match EventId::parse(raw) {
                Err(InvalidId) => (head, Some((ResetReason::InvalidId, None)), false),
                Ok(id) if id.epoch != self.inner.epoch => (
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
        Ok(Subscription::new(
            Arc::clone(&self.inner),
            joined,
            start,
            reset,
            replay,
            envelope,
        ))
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
            let removed = inner.channels.remove_if(&name, |_, ch| {
                if ch.subscribers() != 0 || now.saturating_sub(ch.idle_since_ms()) < ttl {
                    return false;
                }
                let mut ring = ch.lock();
                ring.dead = true;
                let high = ring.high_water();
                drop(ring);
                self.remember(Arc::clone(&name), high);
                true
            });
            if removed.is_some() {
                reaped += 1;
                inner.channel_count.fetch_sub(1, Ordering::Relaxed);
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

    fn remember(&self, name: Arc<str>, high: u64) {
        if high == 0 {
            return;
        }
        let mut t = self
            .inner
            .tombstones
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if t.by_name.insert(Arc::clone(&name), high).is_none() {
            t.order.push_back(name);
        }
        while t.by_name.len() > self.inner.settings.max_tombstones {
            let Some(old) = t.order.pop_front() else {
                break;
            };
            if let Some(seq) = t.by_name.remove(&old) {
                t.forgotten_floor = t.forgotten_floor.max(seq);
            }
        }
        // `order` may hold names already taken back by a new channel.
        if t.order.len() > 2 * self.inner.settings.max_tombstones.max(1) {
            let Tombstones { by_name, order, .. } = &mut *t;
            order.retain(|n| by_name.contains_key(n));
        }
    }
}

#[cfg(test)]
mod tests;
