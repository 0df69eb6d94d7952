//! A lean path for connections whose first request is `GET /events`.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for the life
//! of every connection; for an SSE stream that idles for hours that is most
//! of its memory. A connection that opens with `GET /events` (in any form
//! `head` recognises) is therefore served here instead: the request head,
//! already read by `head`, is parsed with `httparse` into a
//! normal `http::Request`, passed through the same router (so every layer —
//! CORS, auth, limits, metrics, tracing — applies unchanged), and the
//! response is written straight to the socket. The SSE body is sent
//! close-delimited (`Connection: close`, no chunk framing), so each batch
//! is one `write` of the shared `Bytes`, and no buffer outlives the request
//! head. Every other connection is served by hyper.

use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Request, header};
use axum::response::IntoResponse as _;
use bytes::{Buf as _, BufMut as _, BytesMut};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncWrite as _, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::conn_info::{CloseCell, CloseReason, ConnInfo};
use super::error::ApiError;
use super::response_head::put_status_and_headers;
use super::watchdog::WatchdogIo;

/// Largest request head accepted on this path.
const MAX_HEAD: usize = 8 * 1024;
/// Most header lines accepted.
const MAX_HEADERS: usize = 64;
/// Largest non-streaming response body written on this path (errors).
const MAX_PLAIN_BODY: usize = 64 * 1024;

/// Serves a connection whose first request is `GET /events`, given the
/// bytes of its head (read by `head::read_first_head`), up to the stream:
/// routes the request and writes the response head. A stream comes back as
/// [`Streaming`], for the connection's task to poll on its own (see
/// `connection::serve_connection`); any other response is written whole
/// here (`None`). Bytes after the head are a pipelined request, which this
/// path ignores.
pub(crate) async fn open(
    stream: TcpStream,
    head: Vec<u8>,
    info: ConnInfo,
    app: Router,
    write_timeout: Duration,
) -> io::Result<Option<Streaming>> {
    let parsed = parse_head(&head);
    drop(head);
    let mut io = WatchdogIo::new(stream, write_timeout, Arc::clone(&info.close));
    let close = Arc::clone(&info.close);
    let response = match parsed {
        Err(refused) => refused.into_response(),
        Ok(mut request) => {
            request.extensions_mut().insert(ConnectInfo(info));
            match Box::pin(app.oneshot(request)).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        }
    };
    let streaming = response.status().is_success()
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let (parts, body) = response.into_parts();
    let mut head = BytesMut::with_capacity(256);
    put_status_and_headers(&mut head, &parts);
    drop(parts);
    if !streaming {
        return write_plain(io, head, body).await.map(|()| None);
    }
    head.put_slice(b"connection: close\r\n\r\n");
    io.write_all(&head).await?;
    Ok(Some(Streaming {
        io,
        body,
        close,
        data: Bytes::new(),
        ended: false,
    }))
}

/// Writes a complete, non-streaming response (an error) and closes.
async fn write_plain(mut io: WatchdogIo, mut head: BytesMut, body: Body) -> io::Result<()> {
    let bytes = http_body_util::Limited::new(body, MAX_PLAIN_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let _ = write!(
        head,
        "content-length: {}\r\nconnection: close\r\n\r\n",
        bytes.len()
    );
    io.write_all(&head).await?;
    io.write_all(&bytes).await?;
    io.shutdown().await
}

/// Writes SSE frames as the body yields them, until it ends, the client
/// leaves, or the watchdog finds a write making no progress.
///
/// Written by hand rather than as an `async fn`: it lives as long as the
/// connection, and an `async fn` would keep its arguments twice (as upvars
/// and as locals) plus every local of every state, over 400 bytes against
/// this struct's size. One poll: finish the frame being written, then take
/// the next frame, then see whether the client closed its side. Nothing is
/// built per event.
pub(crate) struct Streaming {
    io: WatchdogIo,
    body: Body,
    close: Arc<CloseCell>,
    /// What is left to write of the current frame.
    data: Bytes,
    /// The body ended: shut the socket down, then done.
    ended: bool,
}

impl Future for Streaming {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            while !this.data.is_empty() {
                let n = ready!(Pin::new(&mut this.io).poll_write(cx, &this.data))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                this.data.advance(n);
            }
            if this.ended {
                return Pin::new(&mut this.io).poll_shutdown(cx);
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.data = data;
                    }
                    continue;
                }
                Poll::Ready(Some(Err(_)) | None) => {
                    this.ended = true;
                    continue;
                }
                Poll::Pending => {}
            }
            ready!(this.io.get_ref().poll_read_ready(cx))?;
            // The client sends nothing after its request; a readable socket
            // means it closed (or is pipelining, which we ignore).
            let mut sink = [0u8; 256];
            match this.io.get_ref().try_read(&mut sink) {
                Ok(0) => {
                    this.close.set(CloseReason::Client);
                    return Poll::Ready(Ok(()));
                }
                // Readiness is cleared by `WouldBlock`: poll again, which
                // registers for the next wake.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// A parsed request, or the error refusing it.
type HeadResult = Result<Request<Body>, ApiError>;

fn malformed() -> ApiError {
    ApiError::bad_request("bad_request", "malformed request head")
}

/// Parses a request head read in full (or cut at the read limit).
fn parse_head(buf: &[u8]) -> HeadResult {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => build_request(&parsed),
        Ok(httparse::Status::Complete(_)) => Err(ApiError::HeaderTooLarge),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(ApiError::HeaderTooLarge),
        Ok(httparse::Status::Partial) | Err(_) => Err(malformed()),
    }
}

fn build_request(parsed: &httparse::Request<'_, '_>) -> HeadResult {
    let bad = Err(malformed());
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return bad;
    };
    if method != "GET" {
        return bad;
    }
    let version = match parsed.version {
        Some(0) => axum::http::Version::HTTP_10,
        _ => axum::http::Version::HTTP_11,
    };
    let mut builder = Request::builder().method("GET").uri(path).version(version);
    for h in parsed.headers.iter() {
        let lower = h.name.to_ascii_lowercase();
        if lower == "content-length" || lower == "transfer-encoding" {
            let empty = h
                .value
                .iter()
                .all(|b| b.is_ascii_whitespace() || *b == b'0');
            if !empty {
                return Err(ApiError::bad_request(
                    "body_not_allowed",
                    "GET /events takes no request body",
                ));
            }
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return bad;
        };
        builder = builder.header(name, value);
    }
    builder.body(Body::empty()).map_err(|_| malformed())
}
