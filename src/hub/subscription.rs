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
                epoch: hub.epoch,
                seq: start_after,
            };
            // The client's next resume should start where this stream starts.
            reset_frame(
                &hub,
                reason,
                &names,
                after.as_deref(),
                through,
                Some(through),
            )
        });
        Self {
            hub,
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

    /// Waits for events (or a reset) and returns them as one batch of frames.
    pub fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Batch> {
        // Arm every wake-up before looking at the rings.
        for cursor in &mut self.cursors {
            while cursor.notified.as_mut().poll(cx).is_ready() {
                let fresh = Arc::clone(&cursor.channel.notify).notified_owned();
                cursor.notified.set(fresh);
            }
        }
        let mut resets = self.initial_reset.take();
        // Everything at or below `upto` is already in its ring (see Hub::publish).
        let upto = self.hub.committed();
        let max_bytes = self.hub.max_batch_bytes;
        let mut bound = u64::MAX;
        let mut any_lost = false;
        for i in 0..self.cursors.len() {
            let cursor = &self.cursors[i];
            let outcome =
                cursor
                    .channel
                    .read_after(cursor.after, upto, max_bytes, &mut self.scratch);
            if let Some(through) = outcome.lost_through {
                any_lost = true;
                let reason = if self.replay_pending {
                    ResetReason::Expired
                } else {
                    ResetReason::Overtaken
                };
                if reason == ResetReason::Overtaken {
                    metrics::counter!(m::SLOW_SUBSCRIBERS, "action" => "reset").increment(1);
                }
                let after = EventId {
                    epoch: self.hub.epoch,
                    seq: cursor.after,
                }
                .to_string();
                let name = [&*cursor.channel.name];
                let through_id = EventId {
                    epoch: self.hub.epoch,
                    seq: through,
                };
                let frame = reset_frame(&self.hub, reason, &name, Some(&after), through_id, None);
                resets = Some(match resets {
                    None => frame,
                    Some(prev) => [prev, frame].concat().into(),
                });
                self.cursors[i].after = through;
            }
            if let Some(capped) = outcome.capped_at {
                bound = bound.min(capped);
            }
        }
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

    fn take_batch(&mut self, resets: Option<Bytes>) -> Batch {
        let frame_of = |e: &Event| -> Bytes {
            if self.envelope {
                e.envelope_frame().clone()
            } else {
                e.frame.clone()
            }
        };
        let bytes = match (resets, self.scratch.as_slice()) {
            (None, [only]) => frame_of(only),
            (resets, events) => {
                let reset_len = resets.as_ref().map_or(0, Bytes::len);
                let len = reset_len + events.iter().map(|e| frame_of(e).len()).sum::<usize>();
                let mut buf = BytesMut::with_capacity(len);
                if let Some(r) = resets {
                    buf.put_slice(&r);
                }
                for e in events {
                    buf.put_slice(&frame_of(e));
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
    hub: &HubInner,
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
        "epoch": hub.epoch.to_string(),
    });
    control_frame(id, RESET_EVENT, &body.to_string())
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let now = self.hub.now_ms();
        for cursor in &self.cursors {
            cursor.channel.remove_subscriber(now);
        }
        metrics::gauge!(m::SUBSCRIPTIONS).decrement(self.cursors.len() as f64);
    }
}
