//! The first request head of a connection: read whole, under one deadline
//! from accept, before either connection path sees it.
//!
//! Reading the head here, rather than peeking at a prefix and letting each
//! path read it again, gives three things:
//!
//! - **One deadline.** `http.header_read_timeout_secs` bounds the time from
//!   accept to a complete head, however the bytes trickle in; no path
//!   restarts it for the first request.
//! - **No polling.** The socket is read when it is readable and not before:
//!   an idle or stalled socket costs no CPU and no buffer, and the one
//!   deadline is the only timer.
//! - **One classification for every spelling.** The request line is parsed,
//!   so `GET /events` in absolute form (`GET http://host/events?...`) or
//!   after leading empty lines takes the lean stream path too.
//!
//! A connection whose head is complete is handed on with the bytes already
//! read: to `stream_conn` as the parsed head, or to hyper through
//! [`Prefixed`], which replays them before reading the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::Uri;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::telemetry::metrics::CONNECTIONS_UNSERVED;

/// Most bytes read before the head must be complete: hyper's buffer size on
/// the general path, so a head hyper would accept is never cut short. The
/// lean path allows less (`stream_conn::MAX_HEAD`) and answers 431 above it.
pub(crate) const READ_LIMIT: usize = 16 * 1024;
/// Bytes requested per read; most heads arrive in one.
const READ_CHUNK: usize = 1024;
/// Longest method token looked at before deciding the bytes are not HTTP.
const MAX_METHOD: usize = 32;

/// What a connection's first bytes turned out to be.
pub(crate) enum FirstHead {
    /// `GET /events`: served by the lean stream path. Holds every byte
    /// read: the head, complete unless it hit [`READ_LIMIT`].
    Subscribe(Vec<u8>),
    /// Anything else: served by hyper, which is given these bytes first.
    Other(Bytes),
    /// Nothing more to do: the peer closed, the deadline passed, or the
    /// server started draining first.
    Gone,
}

/// Why a connection closed before its first request head was complete,
/// for `herald_connections_unserved_total{reason}`.
#[derive(Debug, Clone, Copy)]
enum Unserved {
    /// The head did not arrive within the header timeout.
    HeaderTimeout,
    /// The server started draining.
    Shutdown,
    /// The peer closed, or the socket failed.
    Client,
}

impl Unserved {
    fn as_str(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::Shutdown => "shutdown",
            Self::Client => "client",
        }
    }
}

/// Reads the first request head by `deadline`, or gives up when the peer
/// closes or `shutdown` is cancelled.
pub(crate) async fn read_first_head(
    stream: &TcpStream,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> FirstHead {
    let outcome = tokio::select! {
        biased;
        () = shutdown.cancelled() => Err(Unserved::Shutdown),
        read = tokio::time::timeout_at(deadline, read_head(stream)) => match read {
            Err(_) => Err(Unserved::HeaderTimeout),
            Ok(Err(_)) => Err(Unserved::Client),
            Ok(Ok(buf)) => Ok(buf),
        },
    };
    match outcome {
        Ok(buf) => classify(buf),
        Err(reason) => {
            if let Unserved::HeaderTimeout = reason {
                tracing::debug!(
                    peer = ?stream.peer_addr().ok(),
                    "closing a connection whose request head did not arrive in time"
                );
            }
            metrics::counter!(CONNECTIONS_UNSERVED, "reason" => reason.as_str()).increment(1);
            FirstHead::Gone
        }
    }
}

/// Reads until the head is complete, the bytes cannot be HTTP, or
/// [`READ_LIMIT`] is reached. Waits for readiness between reads, so a quiet
/// socket costs nothing; the buffer is allocated only once bytes arrive.
async fn read_head(stream: &TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut scan = Scan::default();
    loop {
        stream.readable().await?;
        let filled = buf.len();
        buf.resize((filled + READ_CHUNK).min(READ_LIMIT), 0);
        match stream.try_read(&mut buf[filled..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf.truncate(filled + n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                buf.truncate(filled);
                continue;
            }
            Err(e) => return Err(e),
        }
        if scan.done(&buf) || buf.len() >= READ_LIMIT {
            return Ok(buf);
        }
    }
}

/// Incremental scan for the end of a head: each byte is looked at a
/// bounded number of times however the head is split into reads.
#[derive(Debug, Default)]
struct Scan {
    /// Where the request line starts, once known: after the empty lines a
    /// server must ignore before it (RFC 9112, section 2.2).
    start: Option<usize>,
    /// How far the search for the blank line has got.
    searched: usize,
}

impl Scan {
    /// True once `buf` holds a whole head, or bytes that cannot start one
    /// (hyper then answers them at once).
    fn done(&mut self, buf: &[u8]) -> bool {
        let start = match self.start {
            Some(s) => s,
            None => match buf.iter().position(|b| !matches!(b, b'\r' | b'\n')) {
                Some(s) => {
                    self.start = Some(s);
                    self.searched = s;
                    s
                }
                None => return false,
            },
        };
        let line = &buf[start..];
        let method = line.iter().take(MAX_METHOD).take_while(|b| **b != b' ');
        let method_len = method.clone().count();
        if method.clone().any(|b| !is_tchar(*b)) || method_len == MAX_METHOD {
            return true;
        }
        // The head ends at an empty line: LF, optional CR, LF.
        let from = self.searched.saturating_sub(2).max(start);
        let found = buf[from..]
            .windows(2)
            .enumerate()
            .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && buf.get(from + i + 2) == Some(&b'\n')));
        self.searched = buf.len();
        found
    }
}

/// A token character of RFC 9110, section 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Picks the path from the request line: `GET` of the path `/events`, in
/// origin or absolute form, goes to the lean stream path.
fn classify(buf: Vec<u8>) -> FirstHead {
    let start = buf
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let line = line
        .iter()
        .position(|b| *b == b'\n')
        .map_or(line, |end| &line[..end]);
    let mut parts = line.split(|b| *b == b' ');
    let is_subscribe = parts.next() == Some(b"GET")
        && parts
            .next()
            .and_then(|target| Uri::try_from(target).ok())
            .is_some_and(|uri| uri.path() == "/events");
    if is_subscribe {
        FirstHead::Subscribe(buf)
    } else {
        FirstHead::Other(Bytes::from(buf))
    }
}

/// An IO that yields `prefix` before reading from `inner`: how hyper is
/// given the bytes of a head that were read before it took over.
pub(crate) struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            // Release the head's buffer now, not with the connection.
            self.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` to a fresh scan in pieces of `step`; the length read
    /// when the scan says done.
    fn done_after(bytes: &[u8], step: usize) -> Option<usize> {
        let mut scan = Scan::default();
        (step..=bytes.len() + step - 1)
            .step_by(step)
            .map(|end| end.min(bytes.len()))
            .find(|end| scan.done(&bytes[..*end]))
    }

    #[test]
    fn a_head_is_done_at_its_blank_line_however_it_is_split() {
        let head = b"GET /events?channel=a HTTP/1.1\r\nHost: x\r\n\r\n";
        for step in 1..=head.len() {
            assert_eq!(done_after(head, step), Some(head.len()), "step {step}");
        }
        let bare_lf = b"GET / HTTP/1.1\nHost: x\n\n";
        assert_eq!(done_after(bare_lf, 1), Some(bare_lf.len()));
        let partial = b"POST /channels/a/events HTTP/1.1\r\nHost: x\r\n";
        assert_eq!(done_after(partial, 1), None);
        // Leading empty lines are skipped, not taken for the end of a head.
        let leading = b"\r\n\r\n\nGET /events HTTP/1.1\r\n\r\n";
        assert_eq!(done_after(leading, 1), Some(leading.len()));
    }

    #[test]
    fn bytes_that_cannot_be_http_end_the_scan_at_once() {
        assert_eq!(done_after(b"\x16\x03\x01\x02\x00", 1), Some(1));
        assert_eq!(done_after(&[b'A'; 40], 1), Some(MAX_METHOD));
    }

    #[test]
    fn only_get_of_events_takes_the_lean_path() {
        let lean = |head: &str| matches!(classify(head.into()), FirstHead::Subscribe(_));
        assert!(lean("GET /events?channel=a HTTP/1.1\r\n\r\n"));
        assert!(lean("GET /events HTTP/1.0\r\n\r\n"));
        assert!(lean("\r\n\r\nGET /events?channel=a HTTP/1.1\r\n\r\n"));
        assert!(lean("GET http://h:1/events?channel=a HTTP/1.1\r\n\r\n"));
        // Cut short by the read limit: still the lean path, which answers 431.
        assert!(lean("GET /events?channel=a HTTP/1.1\r\nX: aaaa"));
        assert!(!lean("GET /eventsx HTTP/1.1\r\n\r\n"));
        assert!(!lean("GET /events/x HTTP/1.1\r\n\r\n"));
        assert!(!lean("HEAD /events HTTP/1.1\r\n\r\n"));
        assert!(!lean("POST /events HTTP/1.1\r\n\r\n"));
        assert!(!lean("GET /healthz HTTP/1.1\r\n\r\n"));
        assert!(!lean("\x16\x03\x01"));
    }

    #[tokio::test]
    async fn prefixed_replays_then_reads_on() {
        use tokio::io::AsyncReadExt;
        let mut io = Prefixed::new(Bytes::from_static(b"head "), &b"body"[..]);
        let mut out = String::new();
        io.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "head body");
    }
}
