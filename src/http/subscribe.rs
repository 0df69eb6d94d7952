//! `GET /events`: the SSE stream. The response body is a hand-written
//! `http_body::Body` that streams pre-framed `Bytes` straight from the
//! shared rings: no per-subscriber formatting, one batch per wake-up.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::AppState;
use super::conn_info::{CloseCell, CloseReason, ConnInfo};
use super::edge::Identity;
use super::error::ApiError;
use crate::hub::frame::{HEARTBEAT, preamble, retry_frame, token_expired_frame};
use crate::hub::{Batch, Resume, Subscription};
use crate::telemetry::metrics as m;

/// One batch in this many per stream records its fan-out latency (the
/// first batch always does).
const LATENCY_SAMPLE_EVERY: u32 = 8;

/// Longest `Last-Event-ID` accepted for parsing; longer ones get a reset.
const MAX_EVENT_ID_LEN: usize = 64;

/// Query parameters of a subscribe request.
#[derive(Debug, Default)]
pub struct SubscribeQuery {
    /// Requested channels, in order, de-duplicated.
    pub channels: Vec<String>,
    /// `lastEventId` query parameter.
    pub last_event_id: Option<String>,
    /// `envelope=1`: data is wrapped as `{"channel","id","event","data"}`.
    pub envelope: bool,
}

impl SubscribeQuery {
    /// Parses the raw query string; repeated `channel` keys accumulate.
    pub fn parse(raw: Option<&str>, max_channels: usize) -> Result<Self, ApiError> {
        let mut q = Self::default();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match &*key {
                "channel" if !q.channels.iter().any(|c| *c == value) => {
                    if q.channels.len() == max_channels {
                        return Err(ApiError::bad_request(
                            "too_many_channels",
                            format!("at most {max_channels} channels per connection"),
                        ));
                    }
                    q.channels.push(value.into_owned());
                }
                "lastEventId" => q.last_event_id = Some(value.into_owned()),
                "envelope" => q.envelope = matches!(&*value, "1" | "true" | "yes"),
                _ => {}
            }
        }
        if q.channels.is_empty() {
            return Err(ApiError::bad_request(
                "missing_channel",
                "name at least one channel: /events?channel=NAME",
            ));
        }
        Ok(q)
    }
}

/// `GET /events?channel=NAME[&channel=...]`.
pub async fn subscribe_events(
    State(state): State<Arc<AppState>>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    Extension(who): Extension<Identity>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    if state.drain.is_closing() {
        return Err(ApiError::draining());
    }
    let query = SubscribeQuery::parse(raw.as_deref(), state.sse.max_channels_per_connection)?;
    for channel in &query.channels {
        state.hub().validate_channel(channel)?;
    }
    let permit = state.edge.admit_subscriber(&who, &query.channels)?;
    let header_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let raw_id = header_id.or(query.last_event_id.as_deref());
    let resume = match raw_id {
        None => Resume::Live,
        Some(id) if id.len() > MAX_EVENT_ID_LEN => Resume::After("invalid"),
        Some(id) => Resume::After(id),
    };
    let sub = state
        .broker
        .subscribe(&query.channels, resume, query.envelope)
        .await?;
    // Debug level: a span lives as long as its stream, so at the default
    // `info` filter no per-connection span memory is spent.
    let span = tracing::debug_span!(
        "subscription",
        channels = query.channels.len(),
        first_channel = %query.channels[0],
        resumed = raw_id.is_some(),
        subject = permit.subject().unwrap_or("-"),
    );
    tracing::debug!(parent: &span, peer = %conn.peer, "stream opened");
    metrics::counter!(m::CONNECTIONS_OPENED).increment(1);
    metrics::gauge!(m::CONNECTIONS).increment(1.0);
    let sse = &state.sse;
    let preamble = preamble(sse.retry_ms, sub.start_id());
    let expires_at = permit.expires_at();
    let next_heartbeat = Instant::now() + sse.heartbeat();
    let first_wake = expires_at.map_or(next_heartbeat, |e| e.min(next_heartbeat));
    let body = SseBody {
        sub,
        preamble: Some(preamble),
        timer: tokio::time::sleep_until(first_wake),
        expires_at,
        released: state.drain.released(),
        done: false,
        batches: 0,
        guard: StreamGuard {
            state: Arc::clone(&state),
            close: Arc::clone(&conn.close),
            reason: CloseReason::Open,
            span,
            _permit: permit,
        },
    };
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Counts the stream down when it ends, with the reason.
struct StreamGuard {
    state: Arc<AppState>,
    close: Arc<CloseCell>,
    reason: CloseReason,
    span: tracing::Span,
    _permit: super::edge::StreamPermit,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let reason = match self.close.get() {
            CloseReason::Open => {
                if self.reason == CloseReason::Open {
                    CloseReason::Client
                } else {
                    self.reason
                }
            }
            other => other,
        };
        if reason == CloseReason::WriteTimeout {
            metrics::counter!(m::SLOW_SUBSCRIBERS, "action" => "closed").increment(1);
        }
        metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason.as_str()).increment(1);
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        tracing::debug!(parent: &self.span, reason = reason.as_str(), "stream closed");
    }
}

pin_project! {
    /// The body of one SSE response.
    struct SseBody {
        sub: Subscription,
        preamble: Option<Bytes>,
        // One timer serves both the heartbeat and the token expiry.
        #[pin]
        timer: Sleep,
        expires_at: Option<Instant>,
        #[pin]
        released: WaitForCancellationFutureOwned,
        done: bool,
        batches: u32,
        guard: StreamGuard,
    }
}

/// Ends a stream for a drain: a jittered `retry:` hint so that clients do
/// not all come back at once, then the end of the body.
fn end_for_shutdown(done: &mut bool, guard: &mut StreamGuard) -> Frame<Bytes> {
    *done = true;
    guard.reason = CloseReason::Shutdown;
    let max = guard.state.sse.shutdown_retry_max_ms.max(1000);
    Frame::data(retry_frame(fastrand::u64(max / 5..=max)))
}

/// Counts a delivered batch: events, sampled fan-out latency, and a fan-out
/// span when traces are on.
fn record_delivery(state: &AppState, batches: &mut u32, batch: &Batch) {
    let shared = &state.sse_metrics;
    shared.delivered.increment(batch.events as u64);
    // Latency is sampled: one batch in LATENCY_SAMPLE_EVERY per stream,
    // which keeps the clock read and histogram push off most writes while
    // still covering every subscriber.
    *batches = batches.wrapping_add(1);
    if *batches % LATENCY_SAMPLE_EVERY == 1
        && let Some(oldest) = batch.oldest
    {
        shared.latency.record(oldest.elapsed().as_secs_f64());
    }
    // At most one span per batch, and none unless traces are on.
    if crate::telemetry::trace::enabled()
        && let Some(publish) = &batch.trace
    {
        let _fanout = crate::telemetry::trace::fanout_span(publish, batch.events);
    }
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if let Some(first) = this.preamble.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        // Only streams with an expiring credential read the clock here.
        if this.expires_at.is_some_and(|e| e <= Instant::now()) {
            *this.done = true;
            this.guard.reason = CloseReason::TokenExpired;
            let frame = token_expired_frame(this.guard.state.sse.retry_ms);
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        // Once the drain releases streams, each writes out every event up
        // to the final head (all that got a 202), then ends.
        let end = this.guard.state.drain.stream_end();
        if end.is_some_and(|head| this.sub.position() >= head) {
            return Poll::Ready(Some(Ok(end_for_shutdown(this.done, this.guard))));
        }
        if let Poll::Ready(batch) = this.sub.poll_batch(cx) {
            if batch.events > 0 {
                record_delivery(&this.guard.state, this.batches, &batch);
            }
            return Poll::Ready(Some(Ok(Frame::data(batch.bytes))));
        }
        if end.is_some() {
            // Nothing left to write: caught up with the final head.
            return Poll::Ready(Some(Ok(end_for_shutdown(this.done, this.guard))));
        }
        if this.released.as_mut().poll(cx).is_ready() {
            // Come straight back: the branch above now knows the final head.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            if this.expires_at.is_some_and(|e| e <= Instant::now()) {
                // Expiry is handled at the top; come straight back to it.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let next_heartbeat = Instant::now() + this.guard.state.sse.heartbeat();
            this.timer.as_mut().reset(
                this.expires_at
                    .map_or(next_heartbeat, |e| e.min(next_heartbeat)),
            );
            return Poll::Ready(Some(Ok(Frame::data(HEARTBEAT))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.preamble.is_none()
    }
}
