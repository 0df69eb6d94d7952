//! Publish and channel stats: `POST /channels/{channel}/events`,
//! `POST /channels/{channel}/events/batch` and `GET /channels/{channel}`.
//! Channel names may contain `/`, so the route is a wildcard and the suffix
//! picks the action.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::telemetry::trace::in_span;

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
    /// `None` only when the field is missing: `"data": null` is JSON data
    /// like any other, and is delivered as `null`.
    #[serde(borrow, default, deserialize_with = "present")]
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

/// Deserializes a field that is present, `null` included, as `Some`.
fn present<'de, D>(d: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&'de RawValue as Deserialize<'de>>::deserialize(d).map(Some)
}

/// `POST /channels/{*path}`: `.../events` publishes one event,
/// `.../events/batch` publishes several.
///
/// The request is taken whole, so nothing is cloned out of it: this is the
/// hot path of every publisher.
pub async fn publish_events(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let who = parts
        .extensions
        .remove::<Identity>()
        .ok_or_else(|| ApiError::Internal("identity missing".into()))?;
    let path = channel_path(parts.uri.path())?;
    let body = axum::body::to_bytes(body, state.http.max_body_bytes)
        .await
        .map_err(|e| {
            // Only the length limit fails here before any byte is read wrong.
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                ApiError::PayloadTooLarge(format!(
                    "the body is larger than {} bytes",
                    state.http.max_body_bytes
                ))
            } else {
                ApiError::bad_request("bad_request", format!("cannot read the body: {e}"))
            }
        });
    let (ids, batch) = publish(&state, &who, &path, &parts.headers, body).await?;
    let mut json = Vec::with_capacity(16 + ids.len() * 44);
    accepted_json(&mut json, &ids, batch);
    Ok((
        StatusCode::ACCEPTED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response())
}

/// Publishes the body of `POST /channels/{path}` once the request is read:
/// the one publish logic of both connection paths (hyper's, through
/// [`publish_events`], and the lean keep-alive path, `publish_conn`).
pub(crate) async fn publish(
    state: &AppState,
    who: &Identity,
    path: &str,
    headers: &HeaderMap,
    body: Result<Bytes, ApiError>,
) -> Result<(Vec<EventId>, bool), ApiError> {
    // Admitted once the body is in; held to the end: the drain waits for
    // admitted publishes to finish, and refuses the rest.
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
    let (events, idempotency) = match checked_events(state, who, channel, batch, headers, body) {
        Ok(checked) => checked,
        Err(refused) => {
            // A refused publish costs one unit of the publish rate, so a
            // flood of bad requests is limited like a flood of good ones.
            state.edge.admit_publish_rate(who, 1)?;
            return Err(refused);
        }
    };
    state.edge.admit_publish_rate(who, events.len())?;
    let span = tracing::debug_span!("publish", channel = %channel, events = events.len());
    // Taken inside the publish span, so fan-out spans link to it.
    let trace = span.in_scope(crate::telemetry::trace::current_span_context);
    let request = PublishRequest {
        channel,
        events,
        idempotency,
        trace,
    };
    let published = in_span(state.broker.publish(request), &span).await?;
    let ids = published.ids;
    tracing::debug!(parent: &span, first = %ids[0], replayed = published.replayed, "published");
    if !state.channel_labels.is_empty() && state.channel_labels.contains(channel) {
        metrics::counter!(
            crate::telemetry::metrics::CHANNEL_EVENTS_PUBLISHED,
            "channel" => channel.to_owned()
        )
        .increment(ids.len() as u64);
    }
    Ok((ids, batch))
}

/// The `202` body: `{"id": "..."}`, or `{"ids": [...]}` for a batch,
/// appended to `out` (ids are digits and `-`: nothing to escape).
pub(crate) fn accepted_json(out: &mut Vec<u8>, ids: &[EventId], batch: bool) {
    let mut text = [0u8; EventId::MAX_LEN];
    let mut put = |out: &mut Vec<u8>, id: &EventId| {
        let n = id.write_into(&mut text);
        out.push(b'"');
        out.extend_from_slice(&text[..n]);
        out.push(b'"');
    };
    if batch {
        out.extend_from_slice(b"{\"ids\":[");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            put(out, id);
        }
        out.extend_from_slice(b"]}");
    } else if let Some(id) = ids.first() {
        out.extend_from_slice(b"{\"id\":");
        put(out, id);
        out.push(b'}');
    }
}

/// The channel part of `/channels/{*path}`, percent-decoded only when it
/// holds a `%` (channel names never need one, but clients may encode `/`).
pub(crate) fn channel_path(path: &str) -> Result<std::borrow::Cow<'_, str>, ApiError> {
    let rest = path.strip_prefix("/channels/").unwrap_or(path);
    if !rest.contains('%') {
        return Ok(std::borrow::Cow::Borrowed(rest));
    }
    percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("invalid_channel", "the channel is not valid UTF-8"))
}

/// The events of a publish request and its idempotency key, once the
/// channel, the right, the body, every event and the key have been checked.
fn checked_events(
    state: &AppState,
    who: &Identity,
    channel: &str,
    batch: bool,
    headers: &HeaderMap,
    body: Result<Bytes, ApiError>,
) -> Result<(Vec<NewEvent>, Option<IdempotencyKey>), ApiError> {
    state.hub().validate_channel(channel)?;
    state.edge.may_publish(who, channel)?;
    check_json_content_type(headers)?;
    let body = body?;
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
    Ok((events, idempotency))
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
    fn null_data_is_data_and_missing_data_is_not() {
        let null: super::PublishBody = serde_json::from_str(r#"{"data":null}"#).expect("parses");
        let event = super::to_new_event(null).expect("null is JSON data");
        assert_eq!((event.data.as_str(), event.data_is_json), ("null", true));
        let missing: super::PublishBody = serde_json::from_str(r#"{"event":"x"}"#).expect("parses");
        let refused = super::to_new_event(missing).expect_err("no data field");
        assert_eq!(refused.parts().1, "missing_data");
    }

    #[test]
    fn minify_keeps_strings_numbers_and_order() {
        assert_eq!(
            minify_json("{ \"b\" : [1, 2.50 ,1e3],\n \"a\": \"x \\\" y\\n\" }"),
            "{\"b\":[1,2.50,1e3],\"a\":\"x \\\" y\\n\"}"
        );
    }
}
