//! Events. Each event is encoded once, at publish (or arrival) time, into
//! an SSE frame (`Bytes`, built by [`super::frame`]) that every subscriber
//! shares; fan-out adds only a reference count. The frame is the only copy
//! of the data that is kept: the envelope form is derived from it on demand.

use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{ID_LINE_MAX, data_lines_len, put_fields, put_id_line, put_json_string};
use super::id::EventId;

/// Room reserved in front of an encoded frame for its `id:` line, which is
/// only known once the sequencer assigns the seq.
const ID_SLOT: usize = ID_LINE_MAX;

/// Bytes an event costs beyond its frame: the struct, the `Arc` header and
/// its ring slot. Counted against `hub.max_memory_bytes`.
const EVENT_OVERHEAD: usize = std::mem::size_of::<Event>() + 16 + 8;

/// An immutable published event, shared by the ring and every subscriber.
#[derive(Debug)]
pub struct Event {
    /// Its deployment-wide id.
    pub id: EventId,
    /// The channel it was published to.
    pub channel: Arc<str>,
    /// The complete SSE frame, `id:`, `event:`, `data:` lines and the blank line.
    pub frame: Bytes,
    /// The data exactly as published, kept only when it holds a CR, which
    /// the frame's line splitting cannot represent (the envelope needs it).
    raw_data: Option<Box<str>>,
    /// Whether the data is JSON text (an object, number, ...) rather than a plain string.
    pub data_is_json: bool,
    /// When the publish was accepted (or the event arrived), for fan-out latency.
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
    buf: BytesMut,
    raw_data: Option<Box<str>>,
    data_is_json: bool,
}

impl PendingEvent {
    /// Encodes everything but the `id:` line; the `NewEvent` is consumed.
    pub(crate) fn encode(event: NewEvent) -> Self {
        let type_len = event.event_type.as_ref().map_or(0, |t| t.len() + 8);
        // Sized exactly: the frame keeps its allocation for life, so slack
        // (or a reallocation's leftovers) would be retained memory that the
        // budget does not see.
        let size = ID_SLOT + type_len + data_lines_len(&event.data) + 1;
        let mut buf = BytesMut::with_capacity(size);
        buf.put_bytes(0, ID_SLOT);
        put_fields(&mut buf, None, event.event_type.as_deref(), &event.data);
        debug_assert_eq!(buf.len(), size, "frame size estimate");
        let raw_data = event
            .data
            .contains('\r')
            .then(|| event.data.into_boxed_str());
        Self {
            buf,
            raw_data,
            data_is_json: event.data_is_json,
        }
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
            let mut rest = &mut line[..];
            put_id_line(&mut rest, id);
            ID_SLOT - rest.len()
        };
        let mut buf = self.buf;
        let start = ID_SLOT - len;
        buf[start..ID_SLOT].copy_from_slice(&line[..len]);
        let frame = buf.freeze().slice(start..);
        Event {
            id,
            channel,
            frame,
            raw_data: self.raw_data,
            data_is_json: self.data_is_json,
            published_at,
            trace,
        }
    }
}

impl Event {
    /// Bytes this event costs while retained (frame, CR-preserving copy and
    /// fixed overhead), as counted against `hub.max_memory_bytes`.
    pub fn charge(&self) -> usize {
        self.frame.len() + self.raw_data.as_ref().map_or(0, |d| d.len()) + EVENT_OVERHEAD
    }

    /// The event type, read back from the frame.
    pub fn event_type(&self) -> Option<&str> {
        self.fields().0
    }

    /// The data as published (lines joined with `\n`, or the CR-preserving copy).
    pub fn data(&self) -> std::borrow::Cow<'_, str> {
        if let Some(raw) = &self.raw_data {
            return std::borrow::Cow::Borrowed(raw);
        }
        let lines = self.fields().1;
        match lines.as_slice() {
            [one] => std::borrow::Cow::Borrowed(one),
            many => std::borrow::Cow::Owned(many.join("\n")),
        }
    }

    /// The frame's `event:` value and its `data:` lines.
    fn fields(&self) -> (Option<&str>, Vec<&str>) {
        // The frame was built from UTF-8 by `put_fields`.
        let text = std::str::from_utf8(&self.frame).unwrap_or("");
        let mut event_type = None;
        let mut data = Vec::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("event: ") {
                event_type = Some(t);
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push(d);
            }
        }
        (event_type, data)
    }

    /// Appends this event's envelope frame — data becomes
    /// `{"channel","id","event","data"}` JSON — to `buf`. Built per envelope
    /// subscriber per batch, so the ring never holds a second copy.
    pub fn put_envelope(&self, buf: &mut BytesMut) {
        let (event_type, _) = self.fields();
        let data = self.data();
        let mut json = String::with_capacity(data.len() + self.channel.len() + 64);
        json.push_str("{\"channel\":");
        put_json_string(&mut json, &self.channel);
        json.push_str(",\"id\":\"");
        json.push_str(&self.id.to_string());
        json.push_str("\",\"event\":");
        match event_type {
            Some(t) => put_json_string(&mut json, t),
            None => json.push_str("null"),
        }
        json.push_str(",\"data\":");
        if self.data_is_json {
            json.push_str(&data);
        } else {
            put_json_string(&mut json, &data);
        }
        json.push('}');
        put_fields(buf, Some(self.id), event_type, &json);
    }
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

    fn envelope(ev: &Event) -> Bytes {
        let mut buf = BytesMut::new();
        ev.put_envelope(&mut buf);
        buf.freeze()
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
            &envelope(&ev)[..],
            &b"id: 7-12345\ndata: {\"channel\":\"news\",\"id\":\"7-12345\",\"event\":null,\"data\":{\"a\":1}}\n\n"[..]
        );
        let ev = sealed(Some("t"), "x\ny", false);
        assert_eq!(
            &envelope(&ev)[..],
            &b"id: 7-12345\nevent: t\ndata: {\"channel\":\"news\",\"id\":\"7-12345\",\"event\":\"t\",\"data\":\"x\\ny\"}\n\n"[..]
        );
    }

    #[test]
    fn data_is_kept_once_yet_read_back_exactly() {
        let plain = sealed(Some("t"), "one\ntwo\n\nfour", false);
        assert_eq!(plain.data(), "one\ntwo\n\nfour");
        assert_eq!(plain.event_type(), Some("t"));
        assert!(plain.raw_data.is_none(), "no second copy without CR");
        let with_cr = sealed(None, "a\r\nb\rc", false);
        assert_eq!(with_cr.data(), "a\r\nb\rc");
        assert_eq!(
            plain.charge(),
            plain.frame.len() + EVENT_OVERHEAD,
            "the frame is the retained copy"
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
