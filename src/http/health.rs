//! Health, readiness, metrics and the embedded demo page.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;

/// `GET /healthz`: the process is alive.
pub async fn get_health() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: 200 while accepting work, 503 while draining.
pub async fn get_ready(State(state): State<Arc<AppState>>) -> Response {
    if state.drain.is_closing() {
        return ApiError::draining().into_response();
    }
    let broker = state.broker.kind().as_str();
    if !state.broker.is_ready() {
        return ApiError::Unavailable {
            code: "broker_unavailable",
            message: format!("broker {broker} is not reachable"),
        }
        .into_response();
    }
    Json(json!({ "status": "ready", "broker": broker, "epoch": state.hub().epoch().to_string() }))
        .into_response()
}

/// `GET /metrics`: Prometheus exposition text.
pub async fn get_metrics(State(state): State<Arc<AppState>>) -> Response {
    // Gauges that are cheaper to read at scrape time than to keep current.
    metrics::gauge!(crate::telemetry::metrics::HISTORY_BYTES)
        .set(state.hub().retained_bytes() as f64);
    match &state.metrics {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            )],
            crate::telemetry::metrics::render(handle),
        )
            .into_response(),
        None => ApiError::NotFound("metrics are disabled".into()).into_response(),
    }
}

const INDEX_HTML: &str = include_str!("../../static/index.html");
const HERALD_JS: &str = include_str!("../../static/herald.js");
const HERALD_CSS: &str = include_str!("../../static/herald.css");

/// `GET /`: the demo page, embedded in the binary.
pub async fn get_index() -> Response {
    static_response("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /static/{file}`: the demo page's assets, embedded in the binary.
pub async fn get_static(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "herald.js" => static_response("text/javascript; charset=utf-8", HERALD_JS),
        "herald.css" => static_response("text/css; charset=utf-8", HERALD_CSS),
        "index.html" => static_response("text/html; charset=utf-8", INDEX_HTML),
        _ => ApiError::NotFound("no such file".into()).into_response(),
    }
}

fn static_response(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
