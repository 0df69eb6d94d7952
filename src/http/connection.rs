//! One accepted TCP connection: who is on the other end ([`ConnInfo`]), why
//! it closed ([`CloseReason`], shared through a [`CloseCell`]), and which of
//! the two paths serves it once its first request head is read (`head`):
//! the lean stream path for a first request of `GET /events`
//! (`stream_conn`), or hyper's HTTP/1 server for the rest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::AppState;
use super::head::{self, FirstHead, Prefixed};
use super::publish_conn::{self, Ended};
use super::stream_conn;
use super::watchdog::WatchdogIo;
use crate::limits::PendingConnections;

/// Per-connection facts, inserted into each request by the connection loop.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The socket peer.
    pub peer: SocketAddr,
    /// Why the connection closed, when the IO layer knows first.
    pub close: Arc<CloseCell>,
}

/// Why a stream ended, for `herald_connections_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// Not decided yet.
    Open = 0,
    /// The client went away.
    Client = 1,
    /// The server is draining.
    Shutdown = 2,
    /// The credential expired mid-stream.
    TokenExpired = 3,
    /// The socket accepted no bytes within the write timeout.
    WriteTimeout = 4,
    /// The connection failed.
    Error = 5,
}

impl CloseReason {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Client,
            2 => Self::Shutdown,
            3 => Self::TokenExpired,
            4 => Self::WriteTimeout,
            5 => Self::Error,
            _ => Self::Open,
        }
    }

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open | Self::Client => "client",
            Self::Shutdown => "shutdown",
            Self::TokenExpired => "token_expired",
            Self::WriteTimeout => "write_timeout",
            Self::Error => "error",
        }
    }
}

/// Shared between a connection's IO watchdog and its stream, so the stream
/// can report why the connection closed.
#[derive(Debug, Default)]
pub struct CloseCell(AtomicU8);

impl CloseCell {
    /// Records a reason unless one is already set.
    pub fn set(&self, reason: CloseReason) {
        let _ = self
            .0
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire);
    }
    /// The recorded reason.
    pub fn get(&self) -> CloseReason {
        CloseReason::from_u8(self.0.load(Ordering::Acquire))
    }
}

/// Timeouts every connection is served with.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    /// Time allowed for a request head to arrive: from accept for the
    /// first, from the end of the previous response for later ones.
    pub header_read_timeout: Duration,
    /// A write that makes no progress this long fails the connection.
    pub write_timeout: Duration,
}

/// What serves a connection's requests: the router (every route, every
/// layer), and the state the lean paths call into directly.
#[derive(Debug, Clone)]
pub struct Handlers {
    /// The application router.
    pub app: Router,
    /// The state behind it.
    pub state: Arc<AppState>,
}

/// A connection just accepted, with the deadline for its first request head.
#[derive(Debug)]
pub struct Accepted {
    /// The socket.
    pub stream: TcpStream,
    /// The socket peer.
    pub peer: SocketAddr,
    /// The per-address counts it joins while it waits for the rest of its
    /// first request head.
    pub pending: Arc<PendingConnections>,
    /// When the first request head must be complete (accept time plus the
    /// header timeout).
    pub deadline: Instant,
}

/// Serves one accepted connection on the path its first request head asks
/// for. The head is read here, under the one deadline; a connection over
/// its address's cap of pending connections, or still without a whole head
/// when the server starts draining, is closed.
pub async fn serve_connection(
    accepted: Accepted,
    handlers: Handlers,
    settings: ConnSettings,
    shutdown: CancellationToken,
) {
    let Handlers { app, state } = handlers;
    let Accepted {
        stream,
        peer,
        pending,
        deadline,
    } = accepted;
    // Events are small and latency matters: never wait for Nagle.
    let _ = stream.set_nodelay(true);
    let first = Box::pin(head::read_first_head(
        &stream, peer, &pending, deadline, &shutdown,
    ))
    .await;
    drop(pending);
    let close = Arc::new(CloseCell::default());
    let info = ConnInfo {
        peer,
        close: Arc::clone(&close),
    };
    let prefix = match first {
        FirstHead::Gone => return,
        FirstHead::Subscribe(head) => {
            let served = stream_conn::serve(stream, head, info, app, settings.write_timeout).await;
            if let Err(e) = served {
                tracing::debug!(peer = %peer, error = %e, "stream connection ended with an error");
            }
            return;
        }
        FirstHead::Publish(head) => {
            // Boxed, like hyper's branch: a task holds only the path it runs.
            let served = Box::pin(publish_conn::serve(
                stream,
                head,
                info.clone(),
                state,
                settings,
                shutdown.clone(),
            ))
            .await;
            match served {
                Ok(Ended::Closed) => return,
                Ok(Ended::HandOff(stream, prefix)) => {
                    Box::pin(serve_http(
                        stream, prefix, info, close, app, settings, shutdown,
                    ))
                    .await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "publish connection ended with an error");
                    return;
                }
            }
        }
        FirstHead::Other(prefix) => prefix,
    };
    // Boxed: hyper's connection state is large, and only this branch needs it.
    Box::pin(serve_http(
        stream, prefix, info, close, app, settings, shutdown,
    ))
    .await;
}

/// Serves a general HTTP/1 connection with hyper, replaying `prefix` (the
/// bytes of the first head, already read) before reading the socket.
/// hyper's own header timeout bounds each later request on the connection,
/// idle time before it included.
async fn serve_http(
    stream: TcpStream,
    prefix: Bytes,
    info: ConnInfo,
    close: Arc<CloseCell>,
    app: Router,
    settings: ConnSettings,
    shutdown: CancellationToken,
) {
    let peer = info.peer;
    let io = TokioIo::new(Prefixed::new(
        prefix,
        WatchdogIo::new(stream, settings.write_timeout, close),
    ));
    let service = app.map_request(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(info.clone()));
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(head::READ_LIMIT);
    let conn = builder.serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}
