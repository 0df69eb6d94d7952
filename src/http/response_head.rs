//! The status line and header lines of a response that a lean connection
//! path (`stream_conn`, `publish_conn`) writes straight to the socket;
//! hyper writes its own. Framing (`connection`, `content-length`,
//! `transfer-encoding`) is the caller's, so the response's own are left out.

use axum::http::header;
use axum::http::response::Parts;
use bytes::{BufMut as _, BytesMut};

/// Writes `HTTP/1.1 <status> <reason>` and the response's headers, except
/// the framing ones.
pub(crate) fn put_status_and_headers(out: &mut BytesMut, parts: &Parts) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(parts.status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONNECTION
            || name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
        {
            continue;
        }
        put_header(out, name.as_str(), value.as_bytes());
    }
}

/// Writes one header line.
pub(crate) fn put_header(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}
