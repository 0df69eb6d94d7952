//! Logs and traces: the `tracing` subscriber (human-readable or JSON lines)
//! and, when an endpoint is configured, the OTLP/HTTP span exporter.
//!
//! With `telemetry.otlp_endpoint` unset no OpenTelemetry layer exists and
//! [`enabled`] is false, so the per-request and per-batch hooks here return
//! after one relaxed atomic load. With it set, spans from `herald` at INFO
//! and above are exported (independently of the log filter), an incoming
//! W3C `traceparent` becomes the parent of the request span, and each
//! fan-out batch that carries a published event's context gets one
//! `fanout` span linked to that event's `publish` span.

use std::io::IsTerminal as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{
    Link, SpanContext, SpanKind, TraceContextExt as _, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample,
};
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use super::{LogFormat, TelemetryConfig};

/// True once an OTLP layer is installed: the cheap gate on every hook here.
static TRACES_ON: AtomicBool = AtomicBool::new(false);

/// The installed provider, kept so tests can flush it without a guard.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// How long shutdown waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid log filter: {0}")]
    Filter(String),
    /// `sampling_ratio` is not a fraction.
    #[error("telemetry.sampling_ratio must be between 0.0 and 1.0, got {0}")]
    SamplingRatio(f64),
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    /// Another global `tracing` subscriber is already installed.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps exporters alive; call [`TelemetryGuard::shutdown`] before exit to flush.
#[derive(Debug)]
pub struct TelemetryGuard {
    /// The span pipeline; `None` when traces are off.
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes and stops exporters.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            TRACES_ON.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                eprintln!("herald: flushing traces at shutdown failed: {e}");
            }
        }
    }
}

/// Installs the global `tracing` subscriber and, when `cfg.otlp_endpoint`
/// is set, the OTLP/HTTP span exporter. Fails if a subscriber is already
/// installed; see [`init_once`] for processes that start several servers.
pub fn init(cfg: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(&cfg.log_filter),
    }
    .map_err(|e| TelemetryError::Filter(e.to_string()))?;
    let provider = cfg
        .otlp_endpoint
        .as_deref()
        .map(|endpoint| build_provider(cfg, endpoint))
        .transpose()?;
    let fmt = match cfg.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
        // Colour only on a terminal: piped logs stay plain, grep-able text.
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
    };
    // Traces get their own filter, so that a quiet log level does not
    // silence them and a verbose one does not export dependency spans.
    // Herald's spans count from DEBUG: the per-stream `subscription` span is
    // DEBUG so that it costs nothing unless traces are on.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("herald"))
            .with_filter(
                // Decided once per callsite, so it costs nothing per span.
                filter_fn(|meta| {
                    let floor = if meta.is_span() {
                        Level::DEBUG
                    } else {
                        Level::INFO
                    };
                    let target = meta.target();
                    (target == "herald" || target.starts_with("herald::")) && *meta.level() <= floor
                })
                .with_max_level_hint(LevelFilter::DEBUG),
            )
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    if let Some(p) = &provider {
        // Only the first successful init gets here: try_init guards it.
        let _ = PROVIDER.set(p.clone());
        TRACES_ON.store(true, Ordering::Relaxed);
    }
    Ok(TelemetryGuard { provider })
}

/// Installs telemetry once per process and keeps it until the process
/// exits. Meant for test processes that start many servers: the first
/// call's config wins and every later call returns its outcome.
pub fn init_once(cfg: &TelemetryConfig) -> Result<(), String> {
    static ONCE: OnceLock<Result<(), String>> = OnceLock::new();
    ONCE.get_or_init(|| {
        // The provider stays reachable through PROVIDER, so dropping the
        // guard here neither stops nor flushes the exporter.
        init(cfg).map(drop).map_err(|e| e.to_string())
    })
    .clone()
}

/// Exports every finished span now. Blocks; call it off the async runtime.
pub fn force_flush() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.force_flush()
    {
        tracing::debug!(error = %e, "flushing spans failed");
    }
}

/// True when spans are exported: the cheap check for hot paths.
#[inline]
pub fn enabled() -> bool {
    TRACES_ON.load(Ordering::Relaxed)
}

fn build_provider(
    cfg: &TelemetryConfig,
    endpoint: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    if !(0.0..=1.0).contains(&cfg.sampling_ratio) {
        return Err(TelemetryError::SamplingRatio(cfg.sampling_ratio));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let sampler = LinkAwareSampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        cfg.sampling_ratio,
    ))));
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        .build())
}

/// The exporter posts to the endpoint as given when set in code, so a bare
/// collector address (`http://collector:4318`) gets the standard path.
fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim();
    let after_scheme = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    match after_scheme.find('/') {
        None => format!("{endpoint}/v1/traces"),
        Some(i) if after_scheme[i..] == *"/" => format!("{endpoint}v1/traces"),
        Some(_) => endpoint.to_owned(),
    }
}

/// `ParentBased(TraceIdRatioBased)`, except that a root span linked to a
/// sampled span is sampled too: the fan-out of a sampled publish is kept
/// whatever the ratio decides for its fresh trace id.
#[derive(Debug, Clone)]
struct LinkAwareSampler(Sampler);

impl ShouldSample for LinkAwareSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let is_root = parent_context.is_none_or(|cx| !cx.has_active_span());
        if is_root && links.iter().any(|l| l.span_context.is_sampled()) {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        self.0
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// The OpenTelemetry context of the current `tracing` span, when traces
/// are exported and the span is sampled.
pub fn current_span_context() -> Option<SpanContext> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    (sc.is_valid() && sc.is_sampled()).then(|| sc.clone())
}

/// Runs `fut` inside `span`, or alone when the span is disabled (DEBUG
/// spans with traces off): `Instrumented` enters and exits even a disabled
/// span on every poll: on the lean publish path, skipping that measured
/// 0.1–0.25 µs a publish (alternated runs; near this machine's noise).
pub fn in_span<F: std::future::Future>(
    fut: F,
    span: &tracing::Span,
) -> futures_util::future::Either<F, tracing::instrument::Instrumented<F>> {
    use futures_util::future::Either;
    use tracing::Instrument as _;
    if span.is_disabled() {
        Either::Left(fut)
    } else {
        Either::Right(fut.instrument(span.clone()))
    }
}

/// Makes an incoming W3C `traceparent` the parent of `span`. Call it before
/// the span is entered: a started span's parent cannot change.
pub fn adopt_remote_parent(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if !enabled() || !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        // Fails only if the span is disabled or already started; either
        // way the request is simply traced without the remote parent.
        let _ = span.set_parent(parent);
    }
}

/// Opens the span for one fan-out batch that carries a published event's
/// context: a root span linked to that `publish` span, so every delivery of
/// an event can be found from the publish, however long the stream lives.
/// The caller checks [`enabled`] first; the span closes when dropped.
pub fn fanout_span(publish: &SpanContext, events: usize) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "fanout",
        otel.kind = "consumer",
        // As i64 so the exported attribute is an integer, not a string.
        events = i64::try_from(events).unwrap_or(i64::MAX),
    );
    span.add_link(publish.clone());
    span
}

/// Reads W3C trace-context headers from an HTTP request.
struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_adds_the_standard_path_only_to_bare_addresses() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example/custom/traces"),
            "https://otel.example/custom/traces"
        );
    }

    #[test]
    fn header_extractor_reads_traceparent() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .expect("valid header value"),
        );
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn sampler_keeps_roots_linked_to_sampled_spans() {
        let never = LinkAwareSampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            0.0,
        ))));
        let linked = SpanContext::new(
            TraceId::from(7),
            opentelemetry::trace::SpanId::from(9),
            opentelemetry::trace::TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let link = Link::with_context(linked);
        let with_link = never.should_sample(
            None,
            TraceId::from(1),
            "fanout",
            &SpanKind::Consumer,
            &[],
            std::slice::from_ref(&link),
        );
        assert_eq!(with_link.decision, SamplingDecision::RecordAndSample);
        let without = never.should_sample(
            None,
            TraceId::from(1),
            "fanout",
            &SpanKind::Consumer,
            &[],
            &[],
        );
        assert_eq!(without.decision, SamplingDecision::Drop);
    }
}
