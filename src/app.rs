//! The composition root: builds every part of a running Herald from the
//! validated config and wires them together, then serves until shutdown
//! and drains. Reading `main.rs`, then this file, shows the whole program.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, BrokerSetupError};
use crate::config::Config;
use crate::http::connection::{ConnSettings, Handlers};
use crate::http::edge::{Edge, EdgeError};
use crate::http::listener::{BindError, accept_until, bind};
use crate::http::{AppState, admin_router, router};
use crate::hub::{Hub, HubSettings};
use crate::telemetry::metrics as m;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding a socket failed.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The edge (auth, limits) could not be built from config.
    #[error(transparent)]
    Edge(#[from] EdgeError),
    /// The configured broker cannot be built.
    #[error(transparent)]
    Broker(#[from] BrokerSetupError),
}

/// Runs Herald on `listener` until `shutdown` is cancelled, then drains:
/// stops accepting, ends every stream with a jittered `retry:` hint, lets
/// in-flight publishes finish, and returns within the grace period.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let telemetry = &config.telemetry;
    // With metrics off no recorder is installed: every `metrics` call is a no-op.
    let metrics = telemetry
        .metrics_enabled
        .then(crate::telemetry::metrics::install);
    let tracker = TaskTracker::new();

    let broker = Broker::new(
        &config.broker,
        HubSettings::from_config(
            &config.hub,
            config.sse.max_batch_bytes,
            config.sse.coalesce_ms,
        ),
    )?;
    let hub = broker.hub().clone();
    let edge = Edge::new(&config.auth, &config.limits)?;
    let mut state = AppState::new(
        broker.clone(),
        edge,
        config.http.clone(),
        config.sse.clone(),
        &telemetry.channel_label_allowlist,
        metrics.clone(),
    );
    state.cors_headers = crate::http::cors::headers_without_origin(&config.cors);
    let state = Arc::new(state);
    let admin = telemetry.admin_listen.filter(|_| telemetry.metrics_enabled);
    let app = router(
        Arc::clone(&state),
        &config.cors,
        telemetry.metrics_enabled && admin.is_none(),
    );

    if let Some(addr) = admin {
        let admin_listener = bind(addr, 128)?;
        let admin_app = admin_router(Arc::clone(&state));
        let stop = shutdown.clone();
        tracing::info!(addr = %addr, "admin listener (metrics, health) ready");
        tracker.spawn(async move {
            let served = axum::serve(admin_listener, admin_app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }
    spawn_housekeeping(&tracker, hub, metrics, Arc::clone(&state), shutdown.clone());
    broker.start(&tracker, shutdown.clone());
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
        addr = %listener.local_addr().map_err(|source| BindError { addr: config.listen, source })?,
        broker = broker.kind().as_str(),
        epoch = state.hub().epoch(),
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
    let settings = ConnSettings {
        header_read_timeout: config.http.header_read_timeout(),
        write_timeout: config.sse.write_timeout(),
    };
    let pending = state.edge.pending_connections();
    let handlers = Handlers {
        app,
        state: Arc::clone(&state),
    };
    accept_until(listener, handlers, settings, pending, &tracker, &shutdown).await;

    // Refuse new work, let admitted publishes finish, then let every stream
    // write out everything up to the final head before it ends.
    state.drain.close();
    tracing::info!(open_connections = tracker.len(), "draining");
    tracker.close();
    let deadline = tokio::time::Instant::now() + config.shutdown.grace();
    if tokio::time::timeout_at(deadline, state.drain.settled())
        .await
        .is_err()
    {
        tracing::warn!("publishes still running at the end of the grace period");
    }
    let head = state.hub().head();
    tracing::info!(final_head = %head, "publishes settled; streams deliver up to the final head");
    state.drain.release_streams(head.seq);
    let hub_tasks = state.hub().tasks();
    hub_tasks.close();
    let drained = async { tokio::join!(tracker.wait(), hub_tasks.wait()) };
    if tokio::time::timeout_at(deadline, drained).await.is_err() {
        tracing::warn!(
            remaining = tracker.len(),
            "grace period over; closing remaining connections"
        );
    } else {
        tracing::info!("drained");
    }
    Ok(())
}

/// Periodic upkeep: reaping idle channels, the metrics exporter's upkeep,
/// and evicting idle limiter keys.
fn spawn_housekeeping(
    tracker: &TaskTracker,
    hub: Hub,
    metrics: Option<PrometheusHandle>,
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
                    if let Some(h) = &metrics {
                        h.run_upkeep();
                    }
                    state.edge.housekeeping();
                }
            }
        }
    });
}
