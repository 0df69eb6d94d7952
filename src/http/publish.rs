//! Publish and channel stats: `POST /channels/{channel}/events`,
//! `POST /channels/{channel}/events/batch` and `GET /channels/{channel}`.
//! Channel names may contain `/`, so the route is a wildcard and the suffix
//! picks the action.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use tracing::Instrument as _;

use super::AppState;
use super::edge::Identity;
use super::error::ApiError;
use crate::broker::PublishRequest;
use crate::broker::idempotency::IdempotencyKey;
use crate::hub::{EventId, NewEvent};

/// One event in a publish request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    event: Option<String>,
    /// Accepted for symmetry with SSE; ids are always assigned by Herald.
    #[serde(default, rename = "id")]
    _id: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<'a> {
    #[serde(borrow)]
    events: Vec<PublishBody<'a>>,
}

/// `POST /channels/{*path}`: `.../events` publishes one event,
/// `.../events/batch` publishes several.
pub async fn publish_events(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Identity>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Held to the end: the drain waits for admitted publishes to finish.
    let Some(_admitted) = state.drain.begin_publish() else {
        return Err(ApiError::draining());
    };
    let (channel, batch) = if let Some(c) = path.strip_suffix("/events/batch") {
        (c, true)
    } else if let Some(c) = path.strip_suffix("/events") {
        (c, false)
    } else {
        return Err(ApiError::NotFound(
            "publish to /channels/{channel}/events or /channels/{channel}/events/batch".into(),
        ));
    };
    state.hub().validate_channel(channel)?;
    state.edge.may_publish(&who, channel)?;
    check_json_content_type(&headers)?;
    let events = if batch {
        let parsed: BatchBody = parse_json(&body)?;
        let max = state.http.max_batch_events;
        if parsed.events.is_empty() || parsed.events.len() > max {
            return Err(ApiError::bad_request(
                "invalid_batch",
                format!("a batch holds 1 to {max} events"),
            ));
        }
        parsed
            .events
            .into_iter()
            .map(to_new_event)
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![to_new_event(parse_json(&body)?)?]
    };
    for e in &events {
        state.hub().validate_event(e)?;
    }
    let idempotency = headers
        .get("idempotency-key")
        .map(|raw| IdempotencyKey::new(raw.as_bytes(), who.subject(), channel, batch, &body))
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_idempotency_key", e.to_string()))?;
    state.edge.admit_publish_rate(&who, events.len())?;
    let span = tracing::info_span!("publish", channel = %channel, events = events.len());
    // Taken inside the publish span, so fan-out spans link to it.
    let trace = span.in_scope(crate::telemetry::trace::current_span_context);
    let request = PublishRequest {
        channel,
        events,
        idempotency,
        trace,
    };
    let published = state
        .broker
        .publish(request)
        .instrument(span.clone())
        .await?;
    let ids = published.ids;
    tracing::debug!(parent: &span, first = %ids[0], replayed = published.replayed, "published");
    if state.channel_labels.contains(channel) {
        metrics::counter!(
            crate::telemetry::metrics::CHANNEL_EVENTS_PUBLISHED,
            "channel" => channel.to_owned()
        )
        .increment(ids.len() as u64);
    }
    let body = if batch {
        json!({ "ids": ids.iter().map(ToString::to_string).collect::<Vec<_>>() })
    } else {
        json!({ "id": ids[0].to_string() })
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `GET /channels/{*channel}`: subscriber count, last id, ring fill.
pub async fn channel_stats(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Identity>,
    Path(channel): Path<String>,
) -> Result<Response, ApiError> {
    state.hub().validate_channel(&channel)?;
    state.edge.may_read(&who, &channel)?;
    let stats = state
        .hub()
        .stats(&channel)
        .ok_or_else(|| ApiError::NotFound(format!("channel {channel:?} does not exist")))?;
    let epoch = state.hub().epoch();
    Ok(Json(json!({
        "channel": stats.name,
        "subscribers": stats.subscribers,
        "last_id": stats.last_seq.map(|seq| EventId { epoch, seq }.to_string()),
        "ring": {
            "len": stats.ring_len,
            "capacity": stats.ring_capacity,
            "fill": stats.ring_len as f64 / stats.ring_capacity as f64,
        },
    }))
    .into_response())
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(()),
        Some(ct)
            if ct
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")) =>
        {
            Ok(())
        }
        Some(_) => Err(ApiError::UnsupportedMediaType),
    }
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body is not a valid publish request: {e}"),
        )
    })
}

fn to_new_event(body: PublishBody<'_>) -> Result<NewEvent, ApiError> {
    let raw = body
        .data
        .ok_or_else(|| ApiError::bad_request("missing_data", "the body needs a \"data\" field"))?;
    let text = raw.get();
    let (data, data_is_json) = if text.starts_with('"') {
        let s: String = serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
        (s, false)
    } else {
        (minify_json(text), true)
    };
    Ok(NewEvent {
        event_type: body.event,
        data,
        data_is_json,
    })
}

/// Removes insignificant whitespace from valid JSON text, keeping every
/// number, string and key order exactly as sent.
fn minify_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::minify_json;

    #[test]
    fn minify_keeps_strings_numbers_and_order() {
        assert_eq!(
            minify_json("{ \"b\" : [1, 2.50 ,1e3],\n \"a\": \"x \\\" y\\n\" }"),
            "{\"b\":[1,2.50,1e3],\"a\":\"x \\\" y\\n\"}"
        );
    }
}
