//! The connection loop: accepts TCP connections, serves each with hyper's
//! HTTP/1 server (lean per-connection buffers), guards writes with a
//! progress timeout, and drains within the grace period on shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::stream_conn::{self, Opening};
use super::subscribe::CloseCell;
use super::watchdog::WatchdogIo;
use super::{AppState, ConnInfo, admin_router, router};
use crate::config::Config;
use crate::hub::{Hub, HubSettings};
use crate::telemetry::metrics as m;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding or configuring a socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The edge (auth, limits) could not be built from config.
    #[error("{0}")]
    Setup(String),
}

/// Binds a listener with the configured backlog.
pub fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, ServeError> {
    let wrap = |source| ServeError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(wrap)?;
    socket.set_reuseaddr(true).map_err(wrap)?;
    socket.bind(addr).map_err(wrap)?;
    socket.listen(backlog).map_err(wrap)
}

/// Runs Herald on `listener` until `shutdown` is cancelled, then drains:
/// stops accepting, ends every stream with a jittered `retry:` hint, lets
/// in-flight publishes finish, and returns within the grace period.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    // With metrics off no recorder is installed: every `metrics` call is a no-op.
    let handle = config
        .telemetry
        .metrics_enabled
        .then(crate::telemetry::metrics::install);
    let hub = Hub::new(HubSettings::from_config(&config.hub, &config.sse));
    let state = Arc::new(
        AppState::new(
            Arc::clone(&config),
            hub.clone(),
            shutdown.clone(),
            handle.clone(),
        )
        .map_err(ServeError::Setup)?,
    );
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let app = router(Arc::clone(&state));
    let tracker = TaskTracker::new();

    if let (true, Some(admin)) = (
        config.telemetry.metrics_enabled,
        config.telemetry.admin_listen,
    ) {
        let admin_listener = bind(admin, 128)?;
        let admin_app = admin_router(Arc::clone(&state));
        let stop = shutdown.clone();
        tracing::info!(addr = %admin, "admin listener (metrics, health) ready");
        tracker.spawn(async move {
            let served = axum::serve(admin_listener, admin_app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }
    spawn_housekeeping(&tracker, hub, handle, Arc::clone(&state), shutdown.clone());
    if let Some(jwks) = state.edge.jwks() {
        // Fetched before accepting, bounded by the fetch timeout; a failure
        // is logged and the server starts anyway.
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = jwks.startup() => {}
        }
        tracker.spawn(jwks.run(shutdown.clone()));
    }

    tracing::info!(
        addr = %addr,
        epoch = state.hub.epoch(),
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
    let settings = ConnSettings {
        header_read_timeout: Duration::from_secs(config.http.header_read_timeout_secs),
        write_timeout: config.sse.write_timeout(),
    };
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let app = app.clone();
                let stop = shutdown.clone();
                tracker.spawn(serve_connection(stream, peer, app, settings, stop));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    state.start_draining();
    tracing::info!(open_connections = tracker.len(), "draining");
    tracker.close();
    let grace = Duration::from_secs(config.shutdown.grace_secs);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            remaining = tracker.len(),
            "grace period over; closing remaining connections"
        );
    } else {
        tracing::info!("drained");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct ConnSettings {
    header_read_timeout: Duration,
    write_timeout: Duration,
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    settings: ConnSettings,
    shutdown: CancellationToken,
) {
    // Events are small and latency matters: never wait for Nagle.
    let _ = stream.set_nodelay(true);
    let close = Arc::new(CloseCell::default());
    let info = ConnInfo {
        peer,
        close: Arc::clone(&close),
    };
    match stream_conn::classify(&stream, settings.header_read_timeout).await {
        Opening::Gone => return,
        Opening::Subscribe => {
            let served = stream_conn::serve(
                stream,
                info,
                app,
                settings.header_read_timeout,
                settings.write_timeout,
            )
            .await;
            if let Err(e) = served {
                tracing::debug!(peer = %peer, error = %e, "stream connection ended with an error");
            }
            return;
        }
        Opening::Other => {}
    }
    // Boxed: hyper's connection state is large, and only this branch needs it.
    Box::pin(serve_http(stream, info, close, app, settings, shutdown)).await;
}

/// Serves a general HTTP/1 connection with hyper.
async fn serve_http(
    stream: TcpStream,
    info: ConnInfo,
    close: Arc<CloseCell>,
    app: Router,
    settings: ConnSettings,
    shutdown: CancellationToken,
) {
    let peer = info.peer;
    let io = TokioIo::new(WatchdogIo::new(stream, settings.write_timeout, close));
    let service = app.map_request(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(info.clone()));
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(16 * 1024);
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

fn spawn_housekeeping(
    tracker: &TaskTracker,
    hub: Hub,
    handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) {
    let ttl = hub.settings().idle_ttl;
    let reap_every = (ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
    metrics::gauge!(m::CONNECTIONS_LIMIT).set(state.edge.max_connections() as f64);
    tracker.spawn(async move {
        let mut reap = tokio::time::interval(reap_every);
        let mut upkeep = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = reap.tick() => { hub.reap(); }
                _ = upkeep.tick() => {
                    if let Some(h) = &handle {
                        h.run_upkeep();
                    }
                    state.edge.housekeeping();
                }
            }
        }
    });
}
