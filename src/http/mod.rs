//! The HTTP surface: router assembly and the state handlers share.
//!
//! - [`config`]: the `[http]` and `[sse]` sections.
//! - [`error`]: the one API error type; every error becomes a response there.
//! - [`edge`]: authentication and limits in front of the handlers.
//! - [`cors`]: the CORS layer.
//! - [`subscribe`], [`publish`], [`health`]: the handlers.
//! - [`listener`]: binding and the accept loop; [`connection`]: one
//!   connection and its two paths (hyper, or `stream_conn` for `GET /events`),
//!   chosen once `head` has read the first request head under one deadline;
//!   `watchdog`: the write-progress timeout both paths share.

pub mod config;
pub mod conn_info;
pub mod connection;
pub mod cors;
pub mod edge;
pub mod error;
mod head;
pub mod health;
pub mod listener;
pub mod publish;
mod publish_conn;
mod request_id;
mod response_head;
mod stream_conn;
pub mod subscribe;
mod watchdog;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::timeout::TimeoutLayer;

use crate::broker::Broker;
use crate::hub::Hub;
use crate::shutdown::Drain;
use crate::telemetry::metrics as m;
use config::{HttpConfig, SseConfig};
use cors::CorsConfig;
use error::{ApiError, json_rejection};

/// State shared by every handler.
#[derive(Debug)]
pub struct AppState {
    /// Where events are sequenced and carried (memory or Redis).
    pub broker: Broker,
    /// `[http]` settings.
    pub http: HttpConfig,
    /// `[sse]` settings.
    pub sse: SseConfig,
    /// The drain: refuses new work, then lets streams wind down.
    pub drain: Drain,
    /// Renders `/metrics`; `None` when metrics are off on this listener.
    pub metrics: Option<PrometheusHandle>,
    /// Authentication and limits.
    pub edge: edge::Edge,
    /// Metric handles used on the fan-out path, resolved once.
    pub sse_metrics: SseMetrics,
    /// HTTP metric handles, resolved once per route, method and status.
    pub http_metrics: HttpMetrics,
    /// What the CORS layer adds to a response without `Origin` (its
    /// `Vary`), for the lean publish path to add the same.
    pub cors_headers: axum::http::HeaderMap,
    /// Channels that may appear as a metric label (operator allowlist).
    pub channel_labels: std::collections::HashSet<String>,
}

/// HTTP metric handles by route, method and status, resolved once each:
/// building label sets and looking them up in the registry per request cost
/// allocations on the publish path.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    by_route: std::sync::RwLock<HashMap<Box<str>, ByMethodStatus>>,
}

/// A route's handles by method and status.
type ByMethodStatus = HashMap<(&'static str, u16), HttpHandles>;

/// One route, method and status's metric handles.
pub(crate) type HttpHandles = (metrics::Counter, metrics::Histogram);

impl HttpMetrics {
    /// The handles for a route template, method and status.
    pub(crate) fn handles(&self, route: &str, method: &'static str, status: u16) -> HttpHandles {
        if let Some(h) = self
            .by_route
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .and_then(|m| m.get(&(method, status)))
        {
            return h.clone();
        }
        let handles = (
            metrics::counter!(m::HTTP_REQUESTS, "route" => route.to_owned(), "method" => method, "status" => status.to_string()),
            metrics::histogram!(m::HTTP_REQUEST_DURATION, "route" => route.to_owned(), "method" => method),
        );
        self.by_route
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(route.into())
            .or_default()
            .insert((method, status), handles.clone());
        handles
    }
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

impl AppState {
    /// Builds the state from its validated parts.
    pub fn new(
        broker: Broker,
        edge: edge::Edge,
        http: HttpConfig,
        sse: SseConfig,
        channel_labels: &[String],
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        Self {
            channel_labels: channel_labels.iter().cloned().collect(),
            edge,
            broker,
            http,
            sse,
            drain: Drain::default(),
            metrics,
            sse_metrics: SseMetrics::new(),
            http_metrics: HttpMetrics::default(),
            cors_headers: axum::http::HeaderMap::new(),
        }
    }

    /// The hub local subscribers read from.
    pub fn hub(&self) -> &Hub {
        self.broker.hub()
    }
}

/// The application router: every route, with its middleware. `/metrics` is
/// served here only with `serve_metrics` (no separate admin listener).
pub fn router(state: Arc<AppState>, cors: &CorsConfig, serve_metrics: bool) -> Router {
    let timeout = Duration::from_secs(state.http.request_timeout_secs);
    let max_body = state.http.max_body_bytes;
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
    if serve_metrics {
        app = app.route("/metrics", get(health::get_metrics));
    }
    let mut app = app
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Arc::clone(&state));
    if let Some(cors) = cors::layer(cors) {
        app = app.layer(cors);
    }
    app.layer(middleware::from_fn_with_state(
        Arc::clone(&state),
        observe_request,
    ))
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

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Request id, span, HTTP metrics and rejection mapping. The span names
/// the route template, never the raw URI, so query tokens stay out of
/// traces; it is a DEBUG span, so it costs nothing unless traces are
/// exported or debug logs are on.
async fn observe_request(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id::of(&req);
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", |p| p.as_str());
    let method = method_label(req.method());
    let span = request_span(method, route, &id, req.headers());
    let response = crate::telemetry::trace::in_span(next.run(req), &span).await;
    let mut response = json_rejection(response).await;
    let status = response.status().as_u16();
    span.record("http.status", status);
    let (count, duration) = state.http_metrics.handles(route, method, status);
    count.increment(1);
    duration.record(started.elapsed().as_secs_f64());
    response.headers_mut().insert(&request_id::X_REQUEST_ID, id);
    response
}

/// The span of one request, on either connection path (routed here, or the
/// lean publish path): DEBUG, so it costs nothing unless traces are
/// exported; an incoming `traceparent` becomes its parent.
pub(crate) fn request_span(
    method: &'static str,
    route: &str,
    id: &HeaderValue,
    headers: &HeaderMap,
) -> tracing::Span {
    let span = tracing::debug_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        http.method = method,
        http.route = route,
        http.status = tracing::field::Empty,
        request_id = ?id,
    );
    if !span.is_disabled() {
        crate::telemetry::trace::adopt_remote_parent(&span, headers);
    }
    span
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
