//! One accepted TCP connection, and which path serves it once its first
//! request head is read (`head`): the lean stream path for `GET /events`
//! (`stream_conn`), the lean publish path for `POST /channels/...`
//! (`publish_conn`), or hyper's HTTP/1 server for the rest. What the
//! connection carries through them ([`ConnInfo`] and its [`CloseCell`])
//! lives in [`conn_info`](super::conn_info).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::OptionFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::AppState;
pub use super::conn_info::{CloseCell, CloseReason, ConnInfo, ConnSettings};
use super::head::{self, FirstHead, Prefixed};
use super::publish_conn::{self, Ended};
use super::stream_conn;
use super::watchdog::WatchdogIo;
use crate::limits::PendingConnections;

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
///
/// Everything up to the start of an SSE stream runs boxed and is freed
/// once the stream starts: for the life of a stream, the connection's task
/// holds only [`Streaming`](stream_conn::Streaming), about 140 bytes (the
/// task was 2.9 KB before; see README, Sizing). Publish and hyper
/// connections are served inside the boxed part.
pub fn serve_connection(
    accepted: Accepted,
    handlers: Handlers,
    settings: ConnSettings,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let peer = accepted.peer;
    Box::pin(serve_until_stream(accepted, handlers, settings, shutdown))
        .then(OptionFuture::from)
        .map(move |ended| {
            if let Some(Err(e)) = ended {
                tracing::debug!(peer = %peer, error = %e, "stream connection ended with an error");
            }
        })
}

/// Reads the first head and serves the connection, up to the start of an
/// SSE stream, which comes back to be polled on its own.
async fn serve_until_stream(
    accepted: Accepted,
    handlers: Handlers,
    settings: ConnSettings,
    shutdown: CancellationToken,
) -> Option<stream_conn::Streaming> {
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
        FirstHead::Gone => return None,
        FirstHead::Subscribe(head) => {
            return match stream_conn::open(stream, head, info, app, settings.write_timeout).await {
                Ok(streaming) => streaming,
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "stream connection ended with an error");
                    None
                }
            };
        }
        FirstHead::Publish(head) => {
            // Boxed, like hyper's branch: a stream being opened never
            // carries the publish path's state.
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
                Ok(Ended::Closed) => return None,
                Ok(Ended::HandOff(stream, prefix)) => {
                    Box::pin(serve_http(
                        stream, prefix, info, close, app, settings, shutdown,
                    ))
                    .await;
                    return None;
                }
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "publish connection ended with an error");
                    return None;
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
    None
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Broker;
    use crate::config::Config;
    use crate::hub::HubSettings;
    use std::time::Duration;

    /// An SSE connection's task holds only `Streaming` for the life of the
    /// stream: what runs before it (the head, routing, the other paths) is
    /// boxed and freed. Unboxed, the task was 2.9 KB and an idle stream
    /// cost 3.0 KiB of RSS instead of 1.6.
    #[tokio::test]
    async fn a_connection_task_is_small() {
        let config = Config::load(None, Vec::new()).expect("default config");
        let settings = HubSettings::from_config(
            &config.hub,
            config.sse.max_batch_bytes,
            config.sse.coalesce_ms,
        );
        let broker = Broker::new(&config.broker, settings).expect("memory broker");
        let edge = super::super::edge::Edge::new(&config.auth, &config.limits).expect("edge");
        let state = Arc::new(AppState::new(
            broker,
            edge,
            config.http.clone(),
            config.sse.clone(),
            &[],
            None,
        ));
        let app = super::super::router(Arc::clone(&state), &config.cors, false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let accepted = Accepted {
            stream,
            peer,
            pending: Arc::new(PendingConnections::new(0, vec![])),
            deadline: Instant::now() + Duration::from_secs(1),
        };
        let task = serve_connection(
            accepted,
            Handlers { app, state },
            ConnSettings {
                header_read_timeout: Duration::from_secs(1),
                write_timeout: Duration::from_secs(1),
            },
            CancellationToken::new(),
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 256, "a connection's task future is {size} bytes");
        let streaming = std::mem::size_of::<stream_conn::Streaming>();
        assert!(streaming <= 192, "Streaming is {streaming} bytes");
        drop((task, client));
    }
}
