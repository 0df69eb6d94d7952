//! Events. Each event is encoded once, at publish time, into an SSE frame
//! (`Bytes`, built by [`super::frame`]) that every subscriber shares;
//! fan-out adds only a reference count.

use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::put_fields;
use super::id::EventId;

/// Room reserved in front of an encoded frame for its `id:` line, which is
/// only known once the sequencer assigns the seq: `id: ` + 20 + `-` + 20 + `\n`.
const ID_SLOT: usize = 48;

/// An immutable published event, shared by the ring and every subscriber.
#[derive(Debug)]
pub struct Event {
    /// Its deployment-wide id.
    pub id: EventId,
    /// The channel it was published to.
    pub channel: Arc<str>,
    /// Optional SSE event type.
    pub event_type: Option<Box<str>>,
    /// The data as sent to subscribers.
    pub data: Box<str>,
    /// Whether `data` is JSON text (an object, number, ...) rather than a plain string.
    pub data_is_json: bool,
    /// The complete SSE frame, `id:`, `event:`, `data:` lines and the blank line.
    pub frame: Bytes,
    /// The envelope frame, built on first use by an envelope subscriber.
    envelope: OnceLock<Bytes>,
    /// When the publish was accepted, for fan-out latency.
    pub published_at: Instant,
    /// The publish span's context, so fan-out can link to it.
    pub trace: Option<opentelemetry::trace::SpanContext>,
}

/// An event the caller wants published, validated but not yet sequenced.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Optional SSE event type; must contain no CR or LF.
    pub event_type: Option<String>,
    /// Data as subscribers will receive it.
    pub data: String,
    /// Whether `data` is JSON text rather than a plain string.
    pub data_is_json: bool,
}

/// A `NewEvent` encoded outside the sequencer lock, waiting for its id.
pub(crate) struct PendingEvent {
    event: NewEvent,
    buf: BytesMut,
}

impl PendingEvent {
    /// Encodes everything but the `id:` line.
    pub(crate) fn encode(event: NewEvent) -> Self {
        let type_len = event.event_type.as_ref().map_or(0, |t| t.len() + 8);
        let mut buf = BytesMut::with_capacity(ID_SLOT + type_len + event.data.len() + 16);
        buf.put_bytes(0, ID_SLOT);
        put_fields(&mut buf, None, event.event_type.as_deref(), &event.data);
        Self { event, buf }
    }

    /// Writes the id in front of the frame and seals the event.
    pub(crate) fn finish(
        self,
        id: EventId,
        channel: Arc<str>,
        published_at: Instant,
        trace: Option<opentelemetry::trace::SpanContext>,
    ) -> Event {
        let mut line = [0u8; ID_SLOT];
        let len = {
            let mut cursor = &mut line[..];
            // 46 bytes at most, so it always fits the slot.
            let _ = writeln!(cursor, "id: {id}");
            ID_SLOT - cursor.len()
        };
        let mut buf = self.buf;
        let start = ID_SLOT - len;
        buf[start..ID_SLOT].copy_from_slice(&line[..len]);
        let frame = buf.freeze().slice(start..);
        Event {
            id,
            channel,
            event_type: self.event.event_type.map(String::into_boxed_str),
            data: self.event.data.into_boxed_str(),
            data_is_json: self.event.data_is_json,
            frame,
            envelope: OnceLock::new(),
            published_at,
            trace,
        }
    }
}

impl Event {
    /// The envelope frame: data is `{"channel","id","event","data"}` JSON.
    /// Built once per event, then shared by every envelope subscriber.
    pub fn envelope_frame(&self) -> &Bytes {
        self.envelope.get_or_init(|| {
            let mut json = String::with_capacity(self.data.len() + self.channel.len() + 64);
            json.push_str("{\"channel\":");
            push_json_string(&mut json, &self.channel);
            json.push_str(",\"id\":\"");
            json.push_str(&self.id.to_string());
            json.push_str("\",\"event\":");
            match &self.event_type {
                Some(t) => push_json_string(&mut json, t),
                None => json.push_str("null"),
            }
            json.push_str(",\"data\":");
            if self.data_is_json {
                json.push_str(&self.data);
            } else {
                push_json_string(&mut json, &self.data);
            }
            json.push('}');
            let mut buf = BytesMut::with_capacity(json.len() + 64);
            put_fields(&mut buf, Some(self.id), self.event_type.as_deref(), &json);
            buf.freeze()
        })
    }
}

fn push_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("serializing a str cannot fail"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(event_type: Option<&str>, data: &str, json: bool) -> Event {
        PendingEvent::encode(NewEvent {
            event_type: event_type.map(str::to_string),
            data: data.to_string(),
            data_is_json: json,
        })
        .finish(
            EventId {
                epoch: 7,
                seq: 12345,
            },
            Arc::from("news"),
            Instant::now(),
            None,
        )
    }

    #[test]
    fn frame_has_id_type_and_data() {
        let ev = sealed(Some("greeting"), "hello", false);
        assert_eq!(
            &ev.frame[..],
            b"id: 7-12345\nevent: greeting\ndata: hello\n\n"
        );
    }

    #[test]
    fn every_line_ending_splits_data() {
        let ev = sealed(None, "a\nb\r\nc\rd\n\ndata: x", false);
        assert_eq!(
            &ev.frame[..],
            &b"id: 7-12345\ndata: a\ndata: b\ndata: c\ndata: d\ndata: \ndata: data: x\n\n"[..]
        );
    }

    #[test]
    fn envelope_embeds_json_and_strings() {
        let ev = sealed(None, "{\"a\":1}", true);
        assert_eq!(
            &ev.envelope_frame()[..],
            &b"id: 7-12345\ndata: {\"channel\":\"news\",\"id\":\"7-12345\",\"event\":null,\"data\":{\"a\":1}}\n\n"[..]
        );
        let ev = sealed(Some("t"), "x\ny", false);
        assert_eq!(
            &ev.envelope_frame()[..],
            &b"id: 7-12345\nevent: t\ndata: {\"channel\":\"news\",\"id\":\"7-12345\",\"event\":\"t\",\"data\":\"x\\ny\"}\n\n"[..]
        );
    }

    #[test]
    fn largest_id_fits_the_slot() {
        let ev = PendingEvent::encode(NewEvent {
            event_type: None,
            data: "d".into(),
            data_is_json: false,
        })
        .finish(
            EventId {
                epoch: u64::MAX,
                seq: u64::MAX,
            },
            Arc::from("c"),
            Instant::now(),
            None,
        );
        assert!(
            ev.frame
                .starts_with(format!("id: {}-{}\n", u64::MAX, u64::MAX).as_bytes())
        );
    }
}
