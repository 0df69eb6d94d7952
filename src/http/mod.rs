//! The HTTP surface: router assembly and shared state. Handlers live in
//! `subscribe` (SSE), `publish` (publish and stats) and `health`; `edge`
//! holds auth and limits; `server` runs the connection loop.

pub mod cors;
pub mod edge;
pub mod error;
pub mod health;
pub mod publish;
pub mod server;
mod stream_conn;
pub mod subscribe;
mod watchdog;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

use crate::config::Config;
use crate::hub::Hub;
use crate::telemetry::metrics as m;
use error::error_response;
use subscribe::CloseCell;

/// State shared by every handler.
#[derive(Debug)]
pub struct AppState {
    /// The broadcast core.
    pub hub: Hub,
    /// The validated config.
    pub config: Arc<Config>,
    /// Cancelled when the server starts draining.
    pub shutdown: CancellationToken,
    /// Renders `/metrics`; `None` when metrics are off on this listener.
    pub metrics: Option<PrometheusHandle>,
    /// Authentication and limits.
    pub edge: edge::Edge,
    /// Metric handles used on the fan-out path, resolved once.
    pub sse_metrics: SseMetrics,
    /// Channels that may appear as a metric label (operator allowlist).
    pub channel_labels: std::collections::HashSet<String>,
    /// Set as soon as the accept loop stops; the one answer to "are we
    /// draining?" for handlers, readiness and every stream wake-up.
    draining: std::sync::atomic::AtomicBool,
}

/// Metric handles for the per-batch path (no registry lookup per write).
#[derive(Debug)]
pub struct SseMetrics {
    /// `herald_events_delivered_total`.
    pub delivered: metrics::Counter,
    /// `herald_fanout_latency_seconds`.
    pub latency: metrics::Histogram,
}

impl SseMetrics {
    fn new() -> Self {
        Self {
            delivered: metrics::counter!(m::EVENTS_DELIVERED),
            latency: metrics::histogram!(m::FANOUT_LATENCY),
        }
    }
}

/// Per-connection facts, inserted into each request by the server loop.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The socket peer.
    pub peer: SocketAddr,
    /// Why the connection closed, when the IO layer knows first.
    pub close: Arc<CloseCell>,
}

impl AppState {
    /// Builds the state from a validated config.
    pub fn new(
        config: Arc<Config>,
        hub: Hub,
        shutdown: CancellationToken,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, String> {
        Ok(Self {
            channel_labels: config
                .telemetry
                .channel_label_allowlist
                .iter()
                .cloned()
                .collect(),
            edge: edge::Edge::new(&config)?,
            hub,
            config,
            shutdown,
            metrics,
            sse_metrics: SseMetrics::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether the server has started draining (cheap: one relaxed load).
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks the server as draining.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The application router: every route, with its middleware.
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = Duration::from_secs(state.config.http.request_timeout_secs);
    let max_body = state.config.http.max_body_bytes;
    // Non-streaming routes get a deadline; the SSE route must not.
    let auth = middleware::from_fn_with_state(Arc::clone(&state), edge::authenticate);
    let bounded = Router::new()
        .route(
            "/channels/{*path}",
            get(publish::channel_stats).post(publish::publish_events),
        )
        .route_layer(auth.clone())
        .route("/healthz", get(health::get_health))
        .route("/readyz", get(health::get_ready))
        .route("/", get(health::get_index))
        .route("/static/{file}", get(health::get_static))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(max_body));
    let mut app = Router::new()
        .route("/events", get(subscribe::subscribe_events))
        .route_layer(auth)
        .merge(bounded);
    if state.config.telemetry.metrics_enabled && state.config.telemetry.admin_listen.is_none() {
        app = app.route("/metrics", get(health::get_metrics));
    }
    let mut app = app
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Arc::clone(&state));
    if let Some(cors) = cors::layer(&state.config.cors) {
        app = app.layer(cors);
    }
    app.layer(middleware::from_fn(observe_request))
}

/// The admin router (`/metrics`, `/healthz`, `/readyz`) for a separate listener.
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(health::get_metrics))
        .route("/healthz", get(health::get_health))
        .route("/readyz", get(health::get_ready))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Request span, HTTP metrics and rejection mapping. The span names the
/// route template, never the raw URI, so query tokens stay out of traces.
async fn observe_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        http.method = %method,
        http.route = %route,
        http.status = tracing::field::Empty,
    );
    crate::telemetry::trace::adopt_remote_parent(&span, req.headers());
    let response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let response = json_rejection(response).await;
    let status = response.status().as_u16();
    span.record("http.status", status);
    let method = method_label(&method);
    metrics::counter!(m::HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status.to_string())
        .increment(1);
    metrics::histogram!(m::HTTP_REQUEST_DURATION, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

fn method_label(method: &axum::http::Method) -> &'static str {
    match *method {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::OPTIONS => "OPTIONS",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Rewrites axum's plain-text rejections (body too large, timeouts) into
/// the JSON error shape; every API error then has the same body.
async fn json_rejection(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text);
    let message = if message.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message.trim().to_string()
    };
    let mut fixed = error_response(status, code, &message);
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}
