//! What travels through Redis: the pub/sub message of a published batch
//! (`<epoch> <first seq> <body>`, the body JSON built here and passed
//! through the script untouched), and the history script's reply.

use redis::Value;
use serde::{Deserialize, Serialize};

use super::connect::LinkError;
use crate::hub::NewEvent;
use crate::hub::remote::{History, HistoryEvent};

/// The body of one published batch.
#[derive(Debug, Serialize, Deserialize)]
struct Body<'a> {
    /// The channel.
    #[serde(borrow)]
    c: std::borrow::Cow<'a, str>,
    /// Events as `[type or null, data, data is JSON]`.
    e: Vec<(Option<String>, String, bool)>,
    /// The publish span's W3C `traceparent`, so fan-out on every replica
    /// can link to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tp: Option<String>,
}

/// Encodes a batch's body.
pub(super) fn encode_body(
    channel: &str,
    events: &[NewEvent],
    trace: Option<&opentelemetry::trace::SpanContext>,
) -> String {
    let body = Body {
        c: channel.into(),
        e: events
            .iter()
            .map(|e| (e.event_type.clone(), e.data.clone(), e.data_is_json))
            .collect(),
        tp: trace.map(traceparent),
    };
    serde_json::to_string(&body).expect("serializing strings and bools cannot fail")
}

fn traceparent(ctx: &opentelemetry::trace::SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        ctx.trace_id(),
        ctx.span_id(),
        ctx.trace_flags().to_u8()
    )
}

fn parse_traceparent(tp: &str) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let mut parts = tp.split('-');
    let (_, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some(SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    ))
}

/// One published batch as received from pub/sub.
#[derive(Debug)]
pub(super) struct Batch {
    pub epoch: u64,
    pub first_seq: u64,
    pub channel: String,
    pub events: Vec<NewEvent>,
    pub trace: Option<opentelemetry::trace::SpanContext>,
}

/// Decodes `<epoch> <first seq> <body>`.
pub(super) fn decode_batch(payload: &[u8]) -> Result<Batch, LinkError> {
    let bad = || {
        LinkError::Protocol(format!(
            "bad pub/sub message: {:?}",
            String::from_utf8_lossy(&payload[..payload.len().min(80)])
        ))
    };
    let text = std::str::from_utf8(payload).map_err(|_| bad())?;
    let mut parts = text.splitn(3, ' ');
    let (Some(epoch), Some(first), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let body: Body<'_> = serde_json::from_str(body).map_err(|_| bad())?;
    Ok(Batch {
        epoch: epoch.parse().map_err(|_| bad())?,
        first_seq: first.parse().map_err(|_| bad())?,
        channel: body.c.into_owned(),
        events: body
            .e
            .into_iter()
            .map(|(event_type, data, data_is_json)| NewEvent {
                event_type,
                data,
                data_is_json,
            })
            .collect(),
        trace: body.tp.as_deref().and_then(parse_traceparent),
    })
}

/// Reads the history script's reply: `{exists, lost, entries}` with
/// entries newest first, `ring_size + 1` asked for. Nothing above `upto`
/// counts as lost: events after the snapshot arrive live.
pub(super) fn parse_history(
    reply: &Value,
    upto: u64,
    ring_size: usize,
) -> Result<History, LinkError> {
    let bad = |what: &str| LinkError::Protocol(format!("history reply: {what}"));
    let Value::Array(parts) = reply else {
        return Err(bad("not an array"));
    };
    let [exists, lost, entries] = parts.as_slice() else {
        return Err(bad("not three parts"));
    };
    let mut evicted_through = seq_of(lost).ok_or_else(|| bad("lost"))?;
    let mut events = Vec::new();
    if int_of(exists) == Some(1) {
        let Value::Array(entries) = entries else {
            return Err(bad("entries"));
        };
        for (n, entry) in entries.iter().enumerate() {
            let Value::Array(pair) = entry else {
                return Err(bad("entry"));
            };
            let [id, fields] = pair.as_slice() else {
                return Err(bad("entry shape"));
            };
            let seq = seq_of(id).ok_or_else(|| bad("entry id"))?;
            if n == ring_size {
                // One more than the ring holds: everything from here is gone.
                evicted_through = evicted_through.max(seq);
                break;
            }
            let (event, floor) = event_of(fields).ok_or_else(|| bad("entry fields"))?;
            evicted_through = evicted_through.max(floor);
            events.push(HistoryEvent { seq, event });
        }
        events.reverse();
    }
    Ok(History {
        events,
        evicted_through: evicted_through.min(upto),
    })
}

/// A seq from `"<seq>-0"`, a bare number, or an integer.
fn seq_of(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => {
            let text = std::str::from_utf8(b).ok()?;
            text.split('-').next()?.parse().ok()
        }
        Value::SimpleString(s) => s.split('-').next()?.parse().ok(),
        _ => None,
    }
}

fn int_of(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

/// An entry's fields: `d` data, `t` type, `j` JSON flag, `f` floor.
fn event_of(fields: &Value) -> Option<(NewEvent, u64)> {
    let Value::Array(kv) = fields else {
        return None;
    };
    let mut event = NewEvent {
        event_type: None,
        data: String::new(),
        data_is_json: false,
    };
    let mut floor = 0;
    for pair in kv.chunks(2) {
        let [Value::BulkString(k), Value::BulkString(v)] = pair else {
            return None;
        };
        let v = String::from_utf8(v.clone()).ok()?;
        match k.as_slice() {
            b"d" => event.data = v,
            b"t" => event.event_type = Some(v),
            b"j" => event.data_is_json = v == "1",
            b"f" => floor = v.parse().ok()?,
            _ => {}
        }
    }
    Some((event, floor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(seq: u64, data: &str, floor: Option<u64>) -> Value {
        let mut fields = vec![bulk("d"), bulk(data)];
        if let Some(f) = floor {
            fields.extend([bulk("f"), bulk(&f.to_string())]);
        }
        Value::Array(vec![bulk(&format!("{seq}-0")), Value::Array(fields)])
    }

    #[test]
    fn batches_round_trip() {
        let events = vec![
            NewEvent {
                event_type: Some("t".into()),
                data: "a \"quoted\"\nline".into(),
                data_is_json: false,
            },
            NewEvent {
                event_type: None,
                data: "{\"n\":1}".into(),
                data_is_json: true,
            },
        ];
        let body = encode_body("user/alice", &events, None);
        let batch = decode_batch(format!("123 45 {body}").as_bytes()).expect("decodes");
        assert_eq!((batch.epoch, batch.first_seq), (123, 45));
        assert_eq!(batch.channel, "user/alice");
        assert_eq!(batch.events.len(), 2);
        assert_eq!(batch.events[0].data, events[0].data);
        assert!(batch.events[1].data_is_json);
        assert!(decode_batch(b"garbage").is_err());
    }

    #[test]
    fn history_keeps_the_newest_and_knows_what_is_lost() {
        // Asked for ring_size + 1 = 3: the third (oldest) marks the loss.
        let reply = Value::Array(vec![
            Value::Int(1),
            bulk("4-0"),
            Value::Array(vec![
                entry(9, "c", None),
                entry(7, "b", None),
                entry(5, "a", None),
            ]),
        ]);
        let h = parse_history(&reply, 10, 2).expect("parses");
        assert_eq!(h.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [7, 9]);
        assert_eq!(h.evicted_through, 5);
        // A recreated stream's first entry carries the old history's end.
        let reply = Value::Array(vec![
            Value::Int(1),
            bulk("0-0"),
            Value::Array(vec![entry(30, "x", Some(20))]),
        ]);
        let h = parse_history(&reply, 40, 8).expect("parses");
        assert_eq!(h.evicted_through, 20);
        // No stream: where the history ended, capped at the snapshot.
        let reply = Value::Array(vec![Value::Int(0), bulk("55"), Value::Array(vec![])]);
        assert_eq!(
            parse_history(&reply, 50, 8)
                .expect("parses")
                .evicted_through,
            50
        );
    }
}
