//! The first request head of a connection: read whole, under one deadline
//! from accept, before either connection path sees it.
//!
//! Reading the head here, rather than peeking at a prefix and letting each
//! path read it again, gives four things:
//!
//! - **One deadline.** `http.header_read_timeout_secs` bounds the time from
//!   accept to a complete head, however the bytes trickle in; no path
//!   restarts it for the first request.
//! - **No polling.** What has arrived is read at once; after that the
//!   socket is read when it is readable and not before: an idle or stalled
//!   socket costs no CPU and no buffer, and the one deadline is the only
//!   timer.
//! - **A precise pending count.** Only a connection still waiting for the
//!   rest of its head holds a slot among its address's pending connections
//!   (`limits.max_pending_per_ip`).
//! - **One classification for every spelling.** The request line is parsed,
//!   so `GET /events` in absolute form (`GET http://host/events?...`) or
//!   after leading empty lines takes the lean stream path too.
//!
//! A connection whose head is complete is handed on with the bytes already
//! read: to `stream_conn` as the parsed head, or to hyper through
//! [`Prefixed`], which replays them before reading the socket.

use std::io::{self, Read as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::Uri;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::limits::PendingConnections;
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
    /// `POST /channels/...`: served by the lean publish path, which hands
    /// the connection to hyper at the first request it does not serve.
    Publish(Vec<u8>),
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
///
/// Whatever has already arrived is read at once. Only a connection whose
/// head is still incomplete then is *pending*: it takes a slot among its
/// address's pending connections (none left: it is closed at once) and
/// keeps it while it waits. So a burst of connections that each send a
/// whole head at once never counts, however far the accept loop runs ahead
/// of their tasks, while idle and stalled sockets do.
pub(crate) async fn read_first_head(
    stream: &TcpStream,
    peer: SocketAddr,
    pending: &Arc<PendingConnections>,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> FirstHead {
    let mut head = Head::default();
    let outcome = match head.read_available(stream) {
        Err(_) => Err(Unserved::Client),
        Ok(()) if head.done => Ok(()),
        Ok(()) => match pending.admit(peer.ip()) {
            None => {
                tracing::debug!(
                    peer = %peer,
                    "closed a new connection: its address holds too many without a request head"
                );
                return FirstHead::Gone;
            }
            Some(_waiting) => tokio::select! {
                biased;
                () = shutdown.cancelled() => Err(Unserved::Shutdown),
                read = tokio::time::timeout_at(deadline, head.read_rest(stream)) => match read {
                    Err(_) => Err(Unserved::HeaderTimeout),
                    Ok(Err(_)) => Err(Unserved::Client),
                    Ok(Ok(())) => Ok(()),
                },
            },
        },
    };
    match outcome {
        Ok(()) => classify(head.buf),
        Err(reason) => {
            if let Unserved::HeaderTimeout = reason {
                tracing::debug!(
                    peer = %peer,
                    "closing a connection whose request head did not arrive in time"
                );
            }
            metrics::counter!(CONNECTIONS_UNSERVED, "reason" => reason.as_str()).increment(1);
            FirstHead::Gone
        }
    }
}

/// A first request head being read.
#[derive(Debug, Default)]
struct Head {
    /// Every byte read; allocated only once bytes arrive.
    buf: Vec<u8>,
    scan: Scan,
    /// The head is complete, the bytes cannot be HTTP, or the read limit
    /// is reached: nothing more to read.
    done: bool,
}

impl Head {
    /// Reads whatever the socket already holds, without waiting. The read
    /// goes straight to the socket, not through the runtime's readiness,
    /// which may not have seen a just-accepted socket's bytes yet.
    fn read_available(&mut self, stream: &TcpStream) -> io::Result<()> {
        let socket = socket2::SockRef::from(stream);
        while !self.done {
            match self.read_with(|buf| (&*socket).read(buf)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                other => other?,
            }
        }
        Ok(())
    }

    /// Reads until done, waiting for readiness between reads, so a quiet
    /// socket costs nothing.
    async fn read_rest(&mut self, stream: &TcpStream) -> io::Result<()> {
        while !self.done {
            stream.readable().await?;
            match self.read_with(|buf| stream.try_read(buf)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => other?,
            }
        }
        Ok(())
    }

    /// One read into the buffer with `read`; an end of stream before the
    /// head is complete is an error.
    fn read_with(&mut self, read: impl FnOnce(&mut [u8]) -> io::Result<usize>) -> io::Result<()> {
        let filled = self.buf.len();
        self.buf.resize((filled + READ_CHUNK).min(READ_LIMIT), 0);
        let n = read(&mut self.buf[filled..]);
        self.buf.truncate(filled + *n.as_ref().unwrap_or(&0));
        match n? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => {
                self.done = self.scan.done(&self.buf) || self.buf.len() >= READ_LIMIT;
                Ok(())
            }
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
    let method = parts.next();
    let target = parts.next();
    let is_subscribe = method == Some(b"GET")
        && target
            .and_then(|target| Uri::try_from(target).ok())
            .is_some_and(|uri| uri.path() == "/events");
    if is_subscribe {
        FirstHead::Subscribe(buf)
    } else if method == Some(b"POST") && target.is_some_and(|t| t.starts_with(b"/channels/")) {
        FirstHead::Publish(buf)
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

    /// A connection accepted with `sent` already in its socket.
    async fn accepted_after(sent: &[u8]) -> (TcpStream, SocketAddr, TcpStream) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        // On loopback the bytes are in the server socket once this returns.
        client.write_all(sent).await.expect("send");
        let (server, peer) = listener.accept().await.expect("accept");
        (server, peer, client)
    }

    #[tokio::test]
    async fn only_a_connection_that_must_wait_needs_a_pending_slot() {
        let pending = Arc::new(PendingConnections::new(1, vec![]));
        let ip: std::net::IpAddr = [127, 0, 0, 1].into();
        let _only_slot = pending.admit(ip).expect("the one slot");
        let far = Instant::now() + std::time::Duration::from_secs(60);
        let stop = CancellationToken::new();
        let read = |server, peer| {
            let pending = Arc::clone(&pending);
            let stop = stop.clone();
            async move {
                let first = read_first_head(&server, peer, &pending, far, &stop);
                tokio::time::timeout(std::time::Duration::from_secs(5), first)
                    .await
                    .expect("decided without waiting")
            }
        };
        // A whole head already there is read before the runtime has even
        // polled the new socket, and takes no slot.
        let (server, peer, _client) =
            accepted_after(b"GET /events?channel=a HTTP/1.1\r\n\r\n").await;
        assert!(matches!(read(server, peer).await, FirstHead::Subscribe(_)));
        // A partial one must wait, and with no slot left it is refused at once.
        let (server, peer, _client) = accepted_after(b"GET /ev").await;
        assert!(matches!(read(server, peer).await, FirstHead::Gone));
        assert_eq!(pending.of(ip), 1);
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
