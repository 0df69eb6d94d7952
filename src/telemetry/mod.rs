//! Observability: metric names and the Prometheus recorder (`metrics`),
//! logs and traces (`trace`), and the memory limit the process runs under
//! (`memory_limit`).

pub mod memory_limit;
pub mod metrics;
pub mod trace;

use std::net::SocketAddr;

use serde::Deserialize;

/// Metrics, logs and traces settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log format: `pretty` (human-readable) or `json`.
    pub log_format: LogFormat,
    /// `tracing` filter directive; `RUST_LOG` overrides it.
    pub log_filter: String,
    /// Serve `/metrics` on the main listener.
    pub metrics_enabled: bool,
    /// Serve `/metrics` on this separate admin address instead of the main port.
    pub admin_listen: Option<SocketAddr>,
    /// Channel names that may appear as a metric label; all others never do.
    pub channel_label_allowlist: Vec<String>,
    /// OTLP/HTTP traces endpoint, e.g. `http://collector:4318/v1/traces`. Off when unset.
    pub otlp_endpoint: Option<String>,
    /// `service.name` resource attribute of exported spans.
    pub service_name: String,
    /// Fraction of root traces sampled, 0.0 to 1.0.
    pub sampling_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: "info".to_string(),
            metrics_enabled: true,
            admin_listen: None,
            channel_label_allowlist: Vec::new(),
            otlp_endpoint: None,
            service_name: "herald".to_string(),
            sampling_ratio: 1.0,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for development.
    Pretty,
    /// One JSON object per line, for production.
    Json,
}
