//! The SSE wire encoder: every byte Herald writes to a stream is built
//! here. Event frames (`id:`, `event:`, `data:` lines and the blank line
//! that dispatches them), control events such as `herald.reset`, `retry:`
//! hints and heartbeat comments.
//!
//! Multi-line data becomes one `data:` line per line, and CR, LF and CRLF
//! all end a line, as the SSE parser treats them, so no payload can start a
//! new field or event.

use bytes::{BufMut, Bytes, BytesMut};

use super::id::EventId;

/// Name of the event sent when replay cannot be complete.
pub const RESET_EVENT: &str = "herald.reset";

/// Name of the event that ends a stream whose credential expired.
pub const TOKEN_EXPIRED_EVENT: &str = "herald.token_expired";

/// Event types starting with this are Herald's own; publishers may not use it.
pub const RESERVED_PREFIX: &str = "herald.";

/// The comment sent when a stream has been quiet for a heartbeat interval.
pub const HEARTBEAT: Bytes = Bytes::from_static(b": heartbeat\n\n");

/// Writes `data` as one `data:` line per line of input. CR, LF and CRLF all
/// end a line, as the SSE parser treats them, so no payload can start a new
/// field or event.
pub fn put_data_lines(buf: &mut BytesMut, data: &str) {
    let bytes = data.as_bytes();
    let mut start = 0;
    // Line ends are found with a vectorized search: most data has none.
    for end in memchr::memchr2_iter(b'\n', b'\r', bytes) {
        if end < start {
            // The LF of a CRLF, already consumed with its CR.
            continue;
        }
        buf.put_slice(b"data: ");
        buf.put_slice(&bytes[start..end]);
        buf.put_u8(b'\n');
        start = end + 1;
        if bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n') {
            start += 1;
        }
    }
    buf.put_slice(b"data: ");
    buf.put_slice(&bytes[start..]);
    buf.put_u8(b'\n');
}

/// Bytes [`put_data_lines`] writes for `data`: each line gets `data: ` and
/// `\n`; CR, LF and CRLF each end one line.
pub(crate) fn data_lines_len(data: &str) -> usize {
    let bytes = data.as_bytes();
    let mut breaks = 0;
    let mut separators = 0;
    let mut after_cr = None;
    for end in memchr::memchr2_iter(b'\n', b'\r', bytes) {
        if after_cr == Some(end) && bytes[end] == b'\n' {
            // The LF of a CRLF: part of the break the CR began.
            separators += 1;
            continue;
        }
        breaks += 1;
        separators += 1;
        after_cr = (bytes[end] == b'\r').then_some(end + 1);
    }
    data.len() - separators + 7 * (breaks + 1)
}

/// Builds a standalone SSE frame with the given fields (used for resets).
pub fn control_frame(id: Option<EventId>, event_type: &str, data: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(data.len() + 64);
    put_fields(&mut buf, id, Some(event_type), data);
    buf.freeze()
}

/// Writes one whole SSE event: the optional `id:` and `event:` lines, the
/// `data:` lines and the blank line that dispatches it. Every frame Herald
/// sends is built here.
pub(crate) fn put_fields(
    buf: &mut BytesMut,
    id: Option<EventId>,
    event_type: Option<&str>,
    data: &str,
) {
    if let Some(id) = id {
        put_id_line(buf, id);
    }
    if let Some(t) = event_type {
        buf.put_slice(b"event: ");
        buf.put_slice(t.as_bytes());
        buf.put_u8(b'\n');
    }
    put_data_lines(buf, data);
    buf.put_u8(b'\n');
}

/// Longest `id:` line: `id: `, the id, `\n`.
pub(crate) const ID_LINE_MAX: usize = 4 + EventId::MAX_LEN + 1;

/// Writes the `id:` line, at most [`ID_LINE_MAX`] bytes, without the
/// formatting machinery: every event frame, envelope and stream start has one.
pub(crate) fn put_id_line(buf: &mut impl BufMut, id: EventId) {
    let mut text = [0u8; EventId::MAX_LEN];
    let n = id.write_into(&mut text);
    buf.put_slice(b"id: ");
    buf.put_slice(&text[..n]);
    buf.put_u8(b'\n');
}

/// Appends `s` as a JSON string literal.
pub(crate) fn put_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("serializing a str cannot fail"));
}

/// The start of every stream: the `retry:` hint, then an event with only
/// an `id:`, the position the stream starts from. EventSource sets its last
/// event id from it without dispatching anything (an event with no data is
/// not dispatched), so a client that loses the connection before its first
/// real event still resumes from where it began, not from "now".
pub fn preamble(retry_ms: u64, start: EventId) -> Bytes {
    let mut buf = BytesMut::with_capacity(24 + ID_LINE_MAX);
    buf.put_slice(&retry_frame(retry_ms));
    put_id_line(&mut buf, start);
    buf.put_u8(b'\n');
    buf.freeze()
}

/// A `retry:` hint: the client's reconnect delay, in milliseconds.
pub fn retry_frame(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// The last bytes of a stream whose credential expired: a
/// `herald.token_expired` event, then a `retry:` hint.
pub fn token_expired_frame(retry_ms: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(160);
    put_fields(
        &mut buf,
        None,
        Some(TOKEN_EXPIRED_EVENT),
        r#"{"reason":"token_expired","message":"refresh the token and reconnect"}"#,
    );
    buf.put_slice(&retry_frame(retry_ms));
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_ending_mix_is_sized_exactly() {
        // Every string of up to 7 characters over {a, CR, LF}.
        let alphabet = ['a', '\r', '\n'];
        for len in 0..=7u32 {
            for mut n in 0..3usize.pow(len) {
                let mut data = String::new();
                for _ in 0..len {
                    data.push(alphabet[n % 3]);
                    n /= 3;
                }
                let mut buf = BytesMut::new();
                put_data_lines(&mut buf, &data);
                assert_eq!(buf.len(), data_lines_len(&data), "{data:?}");
                // Every line is a data line, and the lines read back as the
                // data with each line ending made a LF.
                let text = std::str::from_utf8(&buf).expect("utf8");
                let lines: Vec<&str> = text
                    .split_terminator('\n')
                    .map(|l| l.strip_prefix("data: ").expect("a data line"))
                    .collect();
                let expected = data.replace("\r\n", "\n").replace('\r', "\n");
                assert_eq!(lines.join("\n"), expected, "{data:?}");
            }
        }
    }

    #[test]
    fn control_frames_are_whole_events() {
        assert_eq!(&retry_frame(2500)[..], b"retry: 2500\n\n");
        assert_eq!(
            &preamble(2500, EventId { epoch: 7, seq: 42 })[..],
            b"retry: 2500\n\nid: 7-42\n\n"
        );
        assert_eq!(
            &token_expired_frame(3000)[..],
            &b"event: herald.token_expired\ndata: {\"reason\":\"token_expired\",\"message\":\"refresh the token and reconnect\"}\n\nretry: 3000\n\n"[..]
        );
        let reset = control_frame(Some(EventId { epoch: 1, seq: 2 }), RESET_EVENT, "{}");
        assert_eq!(&reset[..], b"id: 1-2\nevent: herald.reset\ndata: {}\n\n");
    }
}
