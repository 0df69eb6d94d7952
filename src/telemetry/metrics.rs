//! Every metric name Herald exports, in one place, and the Prometheus
//! recorder that renders them at `/metrics`.
//!
//! Naming follows `namespace_name_unit[_total]`; label values come only from
//! small fixed sets (route templates, reason codes, results). Channel names
//! never become labels unless an operator allowlists them.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Open SSE connections (gauge).
pub const CONNECTIONS: &str = "herald_connections";
/// SSE connections opened (counter).
pub const CONNECTIONS_OPENED: &str = "herald_connections_opened_total";
/// SSE connections closed, by `reason` (counter).
pub const CONNECTIONS_CLOSED: &str = "herald_connections_closed_total";
/// The configured ceiling on concurrent SSE connections (gauge).
pub const CONNECTIONS_LIMIT: &str = "herald_connections_limit";
/// Channel subscriptions held by open connections (gauge).
pub const SUBSCRIPTIONS: &str = "herald_subscriptions";
/// Channels that exist (gauge).
pub const CHANNELS: &str = "herald_channels";
/// Events accepted by publish (counter).
pub const EVENTS_PUBLISHED: &str = "herald_events_published_total";
/// Event deliveries written to subscribers, the fan-out (counter).
pub const EVENTS_DELIVERED: &str = "herald_events_delivered_total";
/// Seconds from accepting a publish to writing it to a subscriber socket.
pub const FANOUT_LATENCY: &str = "herald_fanout_latency_seconds";
/// Resumes with an event id, by `result` = `complete` | `reset`.
pub const REPLAYS: &str = "herald_replays_total";
/// Reset events sent, by `reason`.
pub const RESETS: &str = "herald_resets_total";
/// Actions taken against slow subscribers, by `action` = `reset` | `closed`.
pub const SLOW_SUBSCRIBERS: &str = "herald_slow_subscribers_total";
/// Refused credentials, by `reason`.
pub const AUTH_FAILURES: &str = "herald_auth_failures_total";
/// Requests refused by a limit, by `limit`.
pub const RATE_LIMITED: &str = "herald_rate_limited_total";
/// HTTP requests, by `route`, `method` and `status`.
pub const HTTP_REQUESTS: &str = "herald_http_requests_total";
/// HTTP request duration (to response head), by `route` and `method`.
pub const HTTP_REQUEST_DURATION: &str = "herald_http_request_duration_seconds";
/// Always 1, labelled with the running `version`.
pub const BUILD_INFO: &str = "herald_build_info";
/// Channels reaped after idling empty (counter).
pub const CHANNELS_REAPED: &str = "herald_channels_reaped_total";
/// Events published to an operator-allowlisted channel, by `channel` (counter).
pub const CHANNEL_EVENTS_PUBLISHED: &str = "herald_channel_events_published_total";
/// Publishes refused by the core, by `reason` (counter).
pub const PUBLISH_ERRORS: &str = "herald_publish_errors_total";
/// JWKS fetches, by `result` = `ok` | `error` (counter).
pub const JWKS_REFRESHES: &str = "herald_jwks_refreshes_total";
/// Whether the broker can serve: 1 or 0, by `broker` (gauge).
pub const BROKER_UP: &str = "herald_broker_up";
/// Broker operations that failed, by `op` (counter).
pub const BROKER_ERRORS: &str = "herald_broker_errors_total";
/// Seconds a publish spent in the broker (histogram), by `broker`.
pub const BROKER_PUBLISH_DURATION: &str = "herald_broker_publish_duration_seconds";
/// Link resyncs after a drop or gap, by `result` (counter).
pub const BROKER_RESYNCS: &str = "herald_broker_resyncs_total";
/// Publishes answered from an earlier one with the same Idempotency-Key,
/// by `result` = `replayed` | `conflict` (counter).
pub const IDEMPOTENT_PUBLISHES: &str = "herald_idempotent_publishes_total";
/// Bytes of retained history, as counted against `hub.max_memory_bytes` (gauge).
pub const HISTORY_BYTES: &str = "herald_history_bytes";
/// Retained events dropped, by `reason` = `ring_full` | `memory_budget` (counter).
pub const HISTORY_EVICTED: &str = "herald_history_evicted_total";
/// The memory the process may use, by `source` = `cgroup` | `host` (gauge).
pub const MEMORY_LIMIT: &str = "herald_memory_limit_bytes";

/// Latency buckets in seconds, from 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle.
/// Later calls (several servers in one test process) share the first one.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(FANOUT_LATENCY.into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(HTTP_REQUEST_DURATION.into()),
                        LATENCY_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(BROKER_PUBLISH_DURATION.into()),
                        LATENCY_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty constants");
            let handle = builder
                .install_recorder()
                .expect("the recorder is installed once, guarded by OnceLock");
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            if let Some((bytes, source)) = super::memory_limit::read() {
                metrics::gauge!(MEMORY_LIMIT, "source" => source.as_str()).set(bytes as f64);
            }
            process_collector().describe();
            handle
        })
        .clone()
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Renders the exposition text, refreshing process metrics first.
pub fn render(handle: &PrometheusHandle) -> String {
    process_collector().collect();
    handle.render()
}

fn describe() {
    describe_gauge!(CONNECTIONS, "Open SSE connections");
    describe_counter!(CONNECTIONS_OPENED, "SSE connections opened");
    describe_counter!(CONNECTIONS_CLOSED, "SSE connections closed, by reason");
    describe_gauge!(
        CONNECTIONS_LIMIT,
        "Configured maximum of concurrent SSE connections"
    );
    describe_gauge!(
        SUBSCRIPTIONS,
        "Channel subscriptions held by open connections"
    );
    describe_gauge!(CHANNELS, "Channels that exist");
    describe_counter!(EVENTS_PUBLISHED, "Events accepted by publish");
    describe_counter!(EVENTS_DELIVERED, "Event deliveries written to subscribers");
    describe_histogram!(
        FANOUT_LATENCY,
        Unit::Seconds,
        "Time from accepting a publish to writing it to a subscriber (sampled: one batch in 8 per stream)"
    );
    describe_counter!(REPLAYS, "Resumes with an event id, by result");
    describe_counter!(RESETS, "Reset events sent, by reason");
    describe_counter!(SLOW_SUBSCRIBERS, "Actions against slow subscribers");
    describe_counter!(AUTH_FAILURES, "Refused credentials, by reason");
    describe_counter!(RATE_LIMITED, "Requests refused by a limit");
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route, method and status");
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "HTTP request duration to the response head"
    );
    describe_gauge!(BUILD_INFO, "Build information");
    describe_counter!(CHANNELS_REAPED, "Channels reaped after idling empty");
    describe_counter!(PUBLISH_ERRORS, "Publishes refused by the core, by reason");
    describe_counter!(
        CHANNEL_EVENTS_PUBLISHED,
        "Events published to allowlisted channels, by channel"
    );
    describe_counter!(JWKS_REFRESHES, "JWKS fetches, by result");
    describe_gauge!(BROKER_UP, "Whether the broker can serve (1) or not (0)");
    describe_counter!(BROKER_ERRORS, "Broker operations that failed, by op");
    describe_histogram!(
        BROKER_PUBLISH_DURATION,
        Unit::Seconds,
        "Time a publish spent in the broker"
    );
    describe_counter!(
        BROKER_RESYNCS,
        "Link resyncs after a dropped connection or a gap, by result"
    );
    describe_counter!(
        IDEMPOTENT_PUBLISHES,
        "Publishes answered from an earlier one with the same Idempotency-Key"
    );
    describe_gauge!(
        HISTORY_BYTES,
        Unit::Bytes,
        "Bytes of retained history, counted against hub.max_memory_bytes"
    );
    describe_counter!(
        HISTORY_EVICTED,
        "Retained events dropped to make room, by reason"
    );
    describe_gauge!(
        MEMORY_LIMIT,
        Unit::Bytes,
        "Memory the process may use: its cgroup limit, or the host's total"
    );
}
