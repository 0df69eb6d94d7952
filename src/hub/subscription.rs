//! A subscription: one cursor per channel over the shared rings. A woken
//! subscription takes everything between its cursors and the committed head
//! and hands it over as one batch; a cursor the ring has overtaken yields a
//! reset event instead of an unbounded queue.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::futures::OwnedNotified;

use super::HubInner;
use super::channel::Channel;
use super::event::Event;
use super::frame::{RESET_EVENT, control_frame};
use super::id::EventId;
use crate::telemetry::metrics as m;

/// Why a reset event was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The resume id is older than what the ring retains.
    Expired,
    /// The resume id belongs to another epoch (history was lost).
    UnknownEpoch,
    /// The resume id could not be parsed.
    InvalidId,
    /// The resume id is ahead of anything published in this epoch.
    FutureId,
    /// The subscriber fell so far behind that the ring overwrote its events.
    Overtaken,
}

impl ResetReason {
    /// Stable code, used in the reset body and as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::UnknownEpoch => "unknown_epoch",
            Self::InvalidId => "invalid_id",
            Self::FutureId => "future_id",
            Self::Overtaken => "overtaken",
        }
    }
}

struct Cursor {
    channel: Arc<Channel>,
    /// Seq of the last event this subscriber has been given on this channel.
    after: u64,
    /// Armed before every read so no publish between read and wait is missed.
    notified: Pin<Box<OwnedNotified>>,
}

/// What a woken subscription hands to its writer.
#[derive(Debug)]
pub struct Batch {
    /// Pre-framed SSE bytes: reset frames first, then events in seq order.
    pub bytes: Bytes,
    /// Events in the batch (resets not counted).
    pub events: usize,
    /// Publish time of the oldest event, for fan-out latency.
    pub oldest: Option<Instant>,
    /// Trace context of the first event published with one, for span links.
    pub trace: Option<opentelemetry::trace::SpanContext>,
}

/// A live subscription to one or more channels. Dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<HubInner>,
    /// The epoch the cursors count in; when the hub's changes (a broker
    /// lost its history), the subscription resets and starts over.
    epoch: u64,
    cursors: Vec<Cursor>,
    /// Reused between batches; emptied after each.
    scratch: Vec<Arc<Event>>,
    /// A reset decided at subscribe time, sent before anything else.
    initial_reset: Option<Bytes>,
    /// The first read after a resume still has to report complete or reset.
    replay_pending: bool,
    envelope: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field(
                "channels",
                &self
                    .cursors
                    .iter()
                    .map(|c| &c.channel.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(
        hub: Arc<HubInner>,
        channels: Vec<Arc<Channel>>,
        epoch: u64,
        start_after: u64,
        initial_reset: Option<(ResetReason, Option<String>)>,
        replay_pending: bool,
        envelope: bool,
    ) -> Self {
        metrics::gauge!(m::SUBSCRIPTIONS).increment(channels.len() as f64);
        let cursors = channels
            .into_iter()
            .map(|channel| Cursor {
                notified: Box::pin(Arc::clone(&channel.notify).notified_owned()),
                channel,
                after: start_after,
            })
            .collect::<Vec<_>>();
        let initial_reset = initial_reset.map(|(reason, after)| {
            let names: Vec<&str> = cursors.iter().map(|c| &*c.channel.name).collect();
            let through = EventId {
                epoch,
                seq: start_after,
            };
            // The client's next resume should start where this stream starts.
            reset_frame(
                epoch,
                reason,
                &names,
                after.as_deref(),
                through,
                Some(through),
            )
        });
        Self {
            hub,
            epoch,
            cursors,
            scratch: Vec::new(),
            initial_reset,
            replay_pending,
            envelope,
        }
    }

    /// Names of the subscribed channels.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.cursors.iter().map(|c| &*c.channel.name)
    }

    /// Where the stream starts, for its preamble: the epoch and position.
    pub fn start_id(&self) -> EventId {
        EventId {
            epoch: self.epoch,
            seq: self.position(),
        }
    }

    /// The seq up to which this subscription has been given everything:
    /// its lowest cursor.
    pub fn position(&self) -> u64 {
        self.cursors.iter().map(|c| c.after).min().unwrap_or(0)
    }

    /// Waits for events (or a reset) and returns them as one batch of frames.
    pub fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Batch> {
        // Arm every wake-up before looking at the rings.
        for cursor in &mut self.cursors {
            while cursor.notified.as_mut().poll(cx).is_ready() {
                let fresh = Arc::clone(&cursor.channel.notify).notified_owned();
                cursor.notified.set(fresh);
            }
        }
        let mut initial = self.initial_reset.take();
        let epoch = self.hub.epoch();
        if epoch != self.epoch {
            initial = Some(self.restart_in(epoch, initial));
        }
        // Everything at or below `upto` is already in its ring (see Hub::publish).
        let upto = self.hub.committed();
        let max_bytes = self.hub.max_batch_bytes;
        let mut bound = u64::MAX;
        let mut lost: Vec<(usize, u64, u64)> = Vec::new();
        for i in 0..self.cursors.len() {
            let cursor = &self.cursors[i];
            let outcome =
                cursor
                    .channel
                    .read_after(cursor.after, upto, max_bytes, &mut self.scratch);
            if let Some(through) = outcome.lost_through {
                lost.push((i, cursor.after, through));
                self.cursors[i].after = through;
            }
            if let Some(capped) = outcome.capped_at {
                bound = bound.min(capped);
            }
        }
        let any_lost = !lost.is_empty();
        let resets = if any_lost {
            Some(self.loss_resets(initial, &lost))
        } else {
            initial
        };
        if self.replay_pending {
            self.replay_pending = false;
            let result = if any_lost { "reset" } else { "complete" };
            metrics::counter!(m::REPLAYS, "result" => result).increment(1);
        }
        let limit = bound.min(upto);
        for cursor in &mut self.cursors {
            cursor.after = cursor.after.max(limit);
        }
        if self.scratch.is_empty() && resets.is_none() {
            return Poll::Pending;
        }
        if self.cursors.len() > 1 {
            self.scratch.sort_unstable_by_key(|e| e.id.seq);
            self.scratch.retain(|e| e.id.seq <= limit);
        }
        Poll::Ready(self.take_batch(resets))
    }

    /// The broker lost its history and a new epoch began: every cursor
    /// starts over at the new epoch's beginning, after an `unknown_epoch`
    /// reset (behind any reset still unsent).
    fn restart_in(&mut self, epoch: u64, unsent: Option<Bytes>) -> Bytes {
        let after = EventId {
            epoch: self.epoch,
            seq: self.position(),
        }
        .to_string();
        self.epoch = epoch;
        for cursor in &mut self.cursors {
            cursor.after = 0;
        }
        let start = EventId { epoch, seq: 0 };
        let names: Vec<&str> = self.channels().collect();
        let reset = reset_frame(
            epoch,
            ResetReason::UnknownEpoch,
            &names,
            Some(&after),
            start,
            Some(start),
        );
        match unsent {
            None => reset,
            Some(first) => [first, reset].concat().into(),
        }
    }

    /// Reset frames for channels whose events between a cursor and
    /// `through` are gone, after any reset decided at subscribe time. Each
    /// carries an `id:` that is safe to resume from: the lowest cursor of
    /// the subscription after the loss, so a reconnect right after the
    /// reset neither skips another channel's events nor repeats this one's.
    fn loss_resets(&self, initial: Option<Bytes>, lost: &[(usize, u64, u64)]) -> Bytes {
        let reason = if self.replay_pending {
            ResetReason::Expired
        } else {
            ResetReason::Overtaken
        };
        let epoch = self.epoch;
        let resume_at = self.cursors.iter().map(|c| c.after).min().unwrap_or(0);
        let mut out = BytesMut::new();
        if let Some(first) = initial {
            out.put_slice(&first);
        }
        for &(i, after, through) in lost {
            if reason == ResetReason::Overtaken {
                metrics::counter!(m::SLOW_SUBSCRIBERS, "action" => "reset").increment(1);
            }
            let name = [&*self.cursors[i].channel.name];
            let after = EventId { epoch, seq: after }.to_string();
            let through = EventId {
                epoch,
                seq: through,
            };
            let id = EventId {
                epoch,
                seq: resume_at,
            };
            out.put_slice(&reset_frame(
                epoch,
                reason,
                &name,
                Some(&after),
                through,
                Some(id),
            ));
        }
        out.freeze()
    }

    fn take_batch(&mut self, resets: Option<Bytes>) -> Batch {
        let bytes = match (resets, self.scratch.as_slice(), self.envelope) {
            // The common case shares the event's frame: a refcount, no copy.
            (None, [only], false) => only.frame.clone(),
            (resets, events, envelope) => {
                let reset_len = resets.as_ref().map_or(0, Bytes::len);
                let frames: usize = events.iter().map(|e| e.frame.len()).sum();
                // Envelopes add the channel, id and JSON quoting per event.
                let extra = if envelope { events.len() * 96 } else { 0 };
                let mut buf = BytesMut::with_capacity(reset_len + frames + extra);
                if let Some(r) = resets {
                    buf.put_slice(&r);
                }
                for e in events {
                    if envelope {
                        e.put_envelope(&mut buf);
                    } else {
                        buf.put_slice(&e.frame);
                    }
                }
                buf.freeze()
            }
        };
        let batch = Batch {
            bytes,
            events: self.scratch.len(),
            oldest: self.scratch.iter().map(|e| e.published_at).min(),
            trace: self.scratch.iter().find_map(|e| e.trace.clone()),
        };
        self.scratch.clear();
        if self.scratch.capacity() > 256 {
            self.scratch.shrink_to(16);
        }
        batch
    }
}

fn reset_frame(
    epoch: u64,
    reason: ResetReason,
    channels: &[&str],
    after: Option<&str>,
    through: EventId,
    id: Option<EventId>,
) -> Bytes {
    metrics::counter!(m::RESETS, "reason" => reason.as_str()).increment(1);
    let body = serde_json::json!({
        "reason": reason.as_str(),
        "channels": channels,
        "lost": { "after": after, "through": through.to_string() },
        "epoch": epoch.to_string(),
    });
    control_frame(id, RESET_EVENT, &body.to_string())
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for cursor in &self.cursors {
            self.hub.leave(&cursor.channel);
        }
        metrics::gauge!(m::SUBSCRIPTIONS).decrement(self.cursors.len() as f64);
    }
}
