//! A lean keep-alive path for publishers: connections whose requests are
//! plain `POST /channels/{channel}/events[/batch]`.
//!
//! A publisher sends the same small request over and over; for it, hyper's
//! connection machinery and axum's router and middleware cost more than the
//! publish itself (measured: about 106,000 `GET /healthz`/s through them on
//! one core, against about 175,000 publishes/s for Nchan). This path reads
//! the head with `httparse` and the body by its `Content-Length`, then runs
//! exactly what the routed request runs: the request id, the request span,
//! authentication ([`Edge::identify`](super::edge::Edge::identify)), the one
//! publish logic ([`publish::publish`]), the JSON errors of
//! [`ApiError`], the HTTP metrics, the CORS `Vary` header, and the drain.
//!
//! Anything else is handed to hyper, with every byte already read, at the
//! first request that is not a plain publish: another route, a query
//! string, `Origin` (a browser: CORS), `Expect`, `Transfer-Encoding`,
//! `Upgrade`, HTTP/1.0, a body over the cap, or a head `httparse` refuses.
//! So the general path keeps serving every case; this one only makes the
//! common case cheap.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::fmt::Write as _;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse as _, Response};
use bytes::{BufMut as _, Bytes, BytesMut};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::conn_info::{ConnInfo, ConnSettings};
use super::error::ApiError;
use super::publish;
use super::request_id;
use super::response_head::{put_header, put_status_and_headers};
use super::watchdog::WatchdogIo;
use super::{AppState, HttpHandles};

/// The route template the metrics and spans name, as axum's router would.
const ROUTE: &str = "/channels/{*path}";
/// Most header lines parsed; a longer head goes to hyper.
const MAX_HEADERS: usize = 32;
/// Largest head handled here; a longer one goes to hyper.
const MAX_HEAD: usize = 8 * 1024;
/// The headers the publish logic reads; the others are not copied.
const KEPT: [&str; 8] = [
    "authorization",
    "cookie",
    "content-type",
    "idempotency-key",
    "x-request-id",
    "x-forwarded-for",
    "traceparent",
    "tracestate",
];

/// How a lean publish connection ended.
pub(crate) enum Ended {
    /// Closed (or done): nothing more to serve.
    Closed,
    /// A request this path does not serve: hyper takes the socket, with the
    /// bytes read so far.
    HandOff(TcpStream, Bytes),
}

/// Serves publishes on one connection until it closes or sends something
/// else; `first` holds the bytes of the first head (and maybe more).
pub(crate) async fn serve(
    stream: TcpStream,
    first: Vec<u8>,
    info: ConnInfo,
    state: Arc<AppState>,
    settings: ConnSettings,
    shutdown: CancellationToken,
) -> io::Result<Ended> {
    let mut io = WatchdogIo::new(stream, settings.write_timeout, Arc::clone(&info.close));
    let mut buf = BytesMut::from(&first[..]);
    drop(first);
    let request_timeout = Duration::from_secs(state.http.request_timeout_secs);
    let mut out = BytesMut::with_capacity(512);
    let mut waits = Waits::new(&shutdown);
    // The handles of the common answer, resolved once per connection.
    let accepted_metrics = state.http_metrics.handles(ROUTE, "POST", 202);
    // The first head arrived under its own deadline; later ones get the
    // header timeout from the end of the previous response, idle included.
    let mut head_deadline = Instant::now() + settings.header_read_timeout;
    loop {
        let max_body = state.http.max_body_bytes;
        let Some(head) = read_head(&mut io, &mut buf, head_deadline, &mut waits, max_body).await?
        else {
            return Ok(Ended::Closed);
        };
        let Head::Publish(req) = head else {
            return Ok(Ended::HandOff(io.into_inner(), buf.freeze()));
        };
        // The body usually came with the head: no clock read then.
        let mut body_deadline = None;
        while buf.len() < req.head_len + req.body_len {
            let body_deadline =
                *body_deadline.get_or_insert_with(|| Instant::now() + request_timeout);
            match read_more(&mut io, &mut buf, body_deadline, false, &mut waits).await? {
                Read::More => {}
                Read::Closed => return Ok(Ended::Closed),
                Read::TimedOut => {
                    let timed_out = Outcome::Refused(ApiError::RequestTimeout.into_response());
                    respond(&state, &mut out, timed_out, &req, true, &accepted_metrics).await;
                    io.write_all(&out).await?;
                    return Ok(Ended::Closed);
                }
            }
        }
        let head_bytes = buf.split_to(req.head_len);
        let body = buf.split_to(req.body_len).freeze();
        drop(head_bytes);
        let outcome = handle(&state, &info, &req, body).await;
        // Draining: this response is the connection's last.
        let close = req.close || state.drain.is_closing();
        let answered = respond(&state, &mut out, outcome, &req, close, &accepted_metrics).await;
        io.write_all(&out).await?;
        if close {
            io.shutdown().await?;
            return Ok(Ended::Closed);
        }
        // The clock read that timed the response also starts the next wait.
        head_deadline = Instant::from_std(answered) + settings.header_read_timeout;
    }
}

/// What a parsed head asks for.
enum Head {
    /// A plain publish, served here.
    Publish(PublishHead),
    /// Anything else, for hyper.
    Other,
}

/// The parts of a publish request this path needs.
struct PublishHead {
    head_len: usize,
    body_len: usize,
    /// The request target's path (`/channels/...`).
    path: String,
    /// The headers the publish logic reads.
    headers: HeaderMap,
    /// `Connection: close` was asked for.
    close: bool,
    started: std::time::Instant,
    request_id: HeaderValue,
}

/// Reads until a whole head is buffered, then classifies it. `None`: the
/// peer closed, the deadline passed with nothing pending, or the server is
/// draining while the connection is idle.
async fn read_head(
    io: &mut WatchdogIo,
    buf: &mut BytesMut,
    deadline: Instant,
    waits: &mut Waits,
    max_body: usize,
) -> io::Result<Option<Head>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                return Ok(Some(classify(&parsed, head_len, max_body)));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            // Too many headers, too long, or not HTTP: hyper answers.
            _ => return Ok(Some(Head::Other)),
        }
        // Idle between requests: a drain closes the connection at once.
        let idle = buf.is_empty();
        match read_more(io, buf, deadline, idle, waits).await? {
            Read::More => {}
            Read::Closed | Read::TimedOut => return Ok(None),
        }
    }
}

/// Decides whether this path serves a parsed head.
fn classify(parsed: &httparse::Request<'_, '_>, head_len: usize, max_body: usize) -> Head {
    let (Some("POST"), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Head::Other;
    };
    let is_publish = target.starts_with("/channels/")
        && !target.contains('?')
        && (target.ends_with("/events") || target.ends_with("/events/batch"));
    if !is_publish {
        return Head::Other;
    }
    let mut body_len = None;
    let mut close = false;
    let mut headers = HeaderMap::new();
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            else {
                return Head::Other;
            };
            if body_len.replace(n).is_some_and(|prev| prev != n) {
                return Head::Other;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            let value = h.value.to_ascii_lowercase();
            if value.windows(5).any(|w| w == b"close") {
                close = true;
            } else if value.windows(7).any(|w| w == b"upgrade") {
                return Head::Other;
            }
        } else if ["transfer-encoding", "expect", "upgrade", "origin"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            return Head::Other;
        } else if let Some(kept) = KEPT.iter().find(|n| name.eq_ignore_ascii_case(n)) {
            let Ok(value) = HeaderValue::from_bytes(h.value) else {
                return Head::Other;
            };
            headers.append(HeaderName::from_static(kept), value);
        }
    }
    let Some(body_len) = body_len else {
        return Head::Other;
    };
    // Over the cap: hyper's path answers 413 the usual way.
    if body_len > max_body {
        return Head::Other;
    }
    let request_id = request_id::from_headers(&headers);
    Head::Publish(PublishHead {
        head_len,
        body_len,
        path: target.to_owned(),
        headers,
        close,
        started: std::time::Instant::now(),
        request_id,
    })
}

/// What a publish came to: its ids, or the error response.
enum Outcome {
    Accepted(Vec<crate::hub::EventId>, bool),
    Refused(Response),
}

/// Runs the publish, as the routed request would, up to the response.
async fn handle(state: &AppState, info: &ConnInfo, req: &PublishHead, body: Bytes) -> Outcome {
    let span = super::request_span("POST", ROUTE, &req.request_id, &req.headers);
    let work = async {
        let who = state.edge.identify(info, &req.headers, None).await?;
        let path = publish::channel_path(&req.path)?;
        publish::publish(state, &who, &path, &req.headers, Ok(body)).await
    };
    let outcome = match crate::telemetry::trace::in_span(work, &span).await {
        Ok((ids, batch)) => Outcome::Accepted(ids, batch),
        Err(e) => Outcome::Refused(e.into_response()),
    };
    let status = match &outcome {
        Outcome::Accepted(..) => 202,
        Outcome::Refused(r) => r.status().as_u16(),
    };
    span.record("http.status", status);
    outcome
}

/// Writes the response into `out` as an HTTP/1.1 message with the headers
/// the routed path adds (request id, CORS `Vary`, `Date`), and counts it;
/// returns when it was answered.
async fn respond(
    state: &AppState,
    out: &mut BytesMut,
    outcome: Outcome,
    req: &PublishHead,
    close: bool,
    accepted_metrics: &HttpHandles,
) -> std::time::Instant {
    out.clear();
    let status = match outcome {
        Outcome::Accepted(ids, batch) => {
            out.put_slice(b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n");
            put_common(state, out, req, close);
            // The body is written first with room left for its length.
            let mut json = Vec::with_capacity(16 + ids.len() * 44);
            publish::accepted_json(&mut json, &ids, batch);
            let _ = write!(out, "content-length: {}\r\n\r\n", json.len());
            out.put_slice(&json);
            202
        }
        Outcome::Refused(response) => {
            let (parts, body) = response.into_parts();
            // Every error here is a small, complete JSON body.
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            put_status_and_headers(out, &parts);
            put_common(state, out, req, close);
            let _ = write!(out, "content-length: {}\r\n\r\n", body.len());
            out.put_slice(&body);
            parts.status.as_u16()
        }
    };
    let answered = std::time::Instant::now();
    let elapsed = answered.duration_since(req.started).as_secs_f64();
    if status == 202 {
        accepted_metrics.0.increment(1);
        accepted_metrics.1.record(elapsed);
    } else {
        let (count, duration) = state.http_metrics.handles(ROUTE, "POST", status);
        count.increment(1);
        duration.record(elapsed);
    }
    answered
}

/// The headers every response of this path carries, as the routed path's
/// layers would add them.
fn put_common(state: &AppState, out: &mut BytesMut, req: &PublishHead, close: bool) {
    put_header(out, "x-request-id", req.request_id.as_bytes());
    for (name, value) in &state.cors_headers {
        put_header(out, name.as_str(), value.as_bytes());
    }
    if close {
        put_header(out, "connection", b"close");
    }
    put_date(out);
}

/// Writes the `Date` header, its value formatted once per second.
fn put_date(out: &mut BytesMut) {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((0, String::new()))
        };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        put_header(out, "date", c.1.as_bytes());
    });
}

/// What one read brought.
enum Read {
    More,
    Closed,
    TimedOut,
}

/// The timer and the drain signal a connection waits on, made once per
/// connection and re-armed for each wait (no timer or waiter is created
/// and dropped per request).
struct Waits {
    timer: Pin<Box<Sleep>>,
    drained: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Waits {
    fn new(shutdown: &CancellationToken) -> Self {
        Self {
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            drained: Box::pin(shutdown.clone().cancelled_owned()),
        }
    }
}

/// Reads what the socket has into `buf`, waiting until `deadline`; when
/// `idle`, a drain ends the wait too (as closed).
async fn read_more(
    io: &mut WatchdogIo,
    buf: &mut BytesMut,
    deadline: Instant,
    idle: bool,
    waits: &mut Waits,
) -> io::Result<Read> {
    buf.reserve(4096);
    // What has arrived is taken without arming anything.
    match io.get_ref().try_read_buf(buf) {
        Ok(0) => return Ok(Read::Closed),
        Ok(_) => return Ok(Read::More),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    waits.timer.as_mut().reset(deadline);
    let Waits { timer, drained } = waits;
    let read = io.read_buf(buf);
    tokio::select! {
        biased;
        () = drained.as_mut(), if idle => Ok(Read::Closed),
        () = timer.as_mut() => Ok(Read::TimedOut),
        r = read => match r {
            Ok(0) => Ok(Read::Closed),
            Ok(_) => Ok(Read::More),
            Err(e) => Err(e),
        },
    }
}
