//! OpenTelemetry over OTLP/HTTP: Herald exports real protobuf spans to an
//! in-process receiver, which decodes the wire format. A publish carrying a
//! W3C `traceparent` must produce a `publish` span in that trace (under the
//! incoming span), and its delivery a `fanout` span linked to the publish.
//!
//! The `tracing` subscriber is global, so it is installed once for the whole
//! test process, pointing at one process-wide receiver; every test that
//! needs it calls [`collector`], in any order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use herald::telemetry::TelemetryConfig;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::json;

use crate::common::{TestServer, WAIT};

/// How long a test waits for exported spans.
const SPAN_WAIT: Duration = Duration::from_secs(30);

/// The service name the test process exports under.
const SERVICE: &str = "herald-it";

/// One decoded span and the `service.name` of the resource it came with.
#[derive(Debug, Clone)]
struct Received {
    service: Option<String>,
    span: Span,
}

/// The process-wide OTLP/HTTP receiver.
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    /// Every span received so far whose trace id is `trace_id` (hex).
    fn trace(&self, trace_id: &str) -> Vec<Received> {
        self.spans
            .lock()
            .expect("receiver lock is never poisoned")
            .iter()
            .filter(|r| hex(&r.span.trace_id) == trace_id)
            .cloned()
            .collect()
    }

    /// Flushes Herald's exporter and polls until `done` accepts the spans
    /// of `trace_id`, or fails after [`SPAN_WAIT`].
    async fn wait_for(
        &self,
        trace_id: &str,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + SPAN_WAIT;
        loop {
            tokio::task::spawn_blocking(herald::telemetry::trace::force_flush)
                .await
                .expect("flush task");
            let spans = self.trace(trace_id);
            if done(&spans) {
                return spans;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "no {what} in trace {trace_id} within {SPAN_WAIT:?}; received: {:#?}",
                    summary(&spans)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Starts the receiver and installs Herald's telemetry, both once per
/// process, and returns the receiver.
fn collector() -> &'static Collector {
    static COLLECTOR: OnceLock<Collector> = OnceLock::new();
    let collector = COLLECTOR.get_or_init(|| {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the OTLP receiver");
        listener
            .set_nonblocking(true)
            .expect("nonblocking receiver socket");
        let addr = listener.local_addr().expect("receiver address");
        let state = Arc::clone(&spans);
        // Its own runtime: each #[tokio::test] runtime ends with its test,
        // and the exporter keeps sending for the life of the process.
        std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("receiver runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("receiver listener");
                    let app = axum::Router::new()
                        .route("/v1/traces", post(receive_traces))
                        .with_state(state);
                    axum::serve(listener, app).await.expect("receiver serves");
                });
            })
            .expect("spawn the receiver thread");
        Collector {
            endpoint: format!("http://{addr}/v1/traces"),
            spans,
        }
    });
    let installed = herald::telemetry::trace::init_once(&telemetry_config(collector));
    assert_eq!(installed, Ok(()), "telemetry installs");
    assert!(
        herald::telemetry::trace::enabled(),
        "the process-wide telemetry was installed without an OTLP endpoint"
    );
    collector
}

fn telemetry_config(collector: &Collector) -> TelemetryConfig {
    TelemetryConfig {
        // Logs go to the real stdout; keep test output readable.
        log_filter: "warn".into(),
        otlp_endpoint: Some(collector.endpoint.clone()),
        service_name: SERVICE.into(),
        sampling_ratio: 1.0,
        ..TelemetryConfig::default()
    }
}

/// `POST /v1/traces`: decodes an `ExportTraceServiceRequest`, as a real
/// collector would, and keeps its spans.
async fn receive_traces(
    State(spans): State<Arc<Mutex<Vec<Received>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<([(header::HeaderName, &'static str); 1], Vec<u8>), (StatusCode, String)> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/x-protobuf" {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected application/x-protobuf, got {content_type:?}"),
        ));
    }
    let request = ExportTraceServiceRequest::decode(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad protobuf: {e}")))?;
    let mut out = spans.lock().expect("receiver lock is never poisoned");
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| string_attr(&r.attributes, "service.name"));
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        }
    })
}

/// Every string in a span's name and attributes (for the leak check).
fn span_strings(span: &Span) -> Vec<String> {
    let mut out = vec![span.name.clone()];
    for kv in &span.attributes {
        out.push(kv.key.clone());
        if let Some(any_value::Value::StringValue(s)) =
            kv.value.as_ref().and_then(|v| v.value.as_ref())
        {
            out.push(s.clone());
        }
    }
    out
}

/// Name, ids and links of each span, for failure messages.
fn summary(spans: &[Received]) -> Vec<String> {
    spans
        .iter()
        .map(|r| {
            let s = &r.span;
            let links: Vec<String> = s
                .links
                .iter()
                .map(|l| format!("{}/{}", hex(&l.trace_id), hex(&l.span_id)))
                .collect();
            format!(
                "{} span={} parent={} links={links:?}",
                s.name,
                hex(&s.span_id),
                hex(&s.parent_span_id)
            )
        })
        .collect()
}

/// A publish with `traceparent` is a child of the caller's span, and its
/// fan-out is a span linked to the publish span. No span carries the raw
/// URI or query (where tokens travel).
#[tokio::test]
async fn publish_honours_traceparent_and_fanout_links_to_it() {
    let collector = collector();
    let endpoint = collector.endpoint.clone();
    let server = TestServer::start_with(|cfg| {
        cfg.telemetry.otlp_endpoint = Some(endpoint);
        cfg.telemetry.service_name = SERVICE.into();
    })
    .await;
    let channel = format!("otlp-{}", random_hex(4));
    let secret = format!("secret-{}", random_hex(8));

    // The subscribe request carries its own trace, so its spans can be found.
    let subscribe_trace = random_hex(16);
    let res = server
        .http
        .get(server.url(&format!("/events?channel={channel}&access_token={secret}")))
        .header(
            "traceparent",
            format!("00-{subscribe_trace}-{}-01", random_hex(8)),
        )
        .send()
        .await
        .expect("subscribe request");
    assert_eq!(res.status(), 200, "subscribe");
    let mut sub = Box::pin(res.bytes_stream().eventsource());

    let trace_id = random_hex(16);
    let caller_span = random_hex(8);
    let res = server
        .http
        .post(server.url(&format!("/channels/{channel}/events")))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({ "data": { "n": 1 } }))
        .send()
        .await
        .expect("publish request");
    assert_eq!(res.status(), 202, "publish");
    let event = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("the event arrives in time")
        .expect("the stream is open")
        .expect("a well-formed event");
    assert_eq!(event.data, r#"{"n":1}"#);

    // The publish span: in the caller's trace, under the caller's span.
    let spans = collector
        .wait_for(&trace_id, "publish span", |spans| {
            spans.iter().any(|r| r.span.name == "publish")
        })
        .await;
    let publish = spans
        .iter()
        .find(|r| r.span.name == "publish")
        .expect("waited for it");
    assert_eq!(publish.service.as_deref(), Some(SERVICE), "service.name");
    let by_id: HashMap<String, &Span> = spans
        .iter()
        .map(|r| (hex(&r.span.span_id), &r.span))
        .collect();
    let mut chain = vec![publish.span.name.clone()];
    let mut parent = hex(&publish.span.parent_span_id);
    for _ in 0..8 {
        if parent == caller_span {
            break;
        }
        let Some(up) = by_id.get(&parent) else {
            panic!(
                "the parent chain {chain:?} stops at {parent} before the caller's span \
                 {caller_span}; trace: {:#?}",
                summary(&spans)
            );
        };
        chain.push(up.name.clone());
        parent = hex(&up.parent_span_id);
    }
    assert_eq!(
        parent, caller_span,
        "the publish span descends from the incoming traceparent; chain {chain:?}"
    );

    // The fan-out span: its own trace, linked to the publish span.
    let publish_id = hex(&publish.span.span_id);
    let fanout = {
        let deadline = tokio::time::Instant::now() + SPAN_WAIT;
        loop {
            tokio::task::spawn_blocking(herald::telemetry::trace::force_flush)
                .await
                .expect("flush task");
            let found = collector
                .spans
                .lock()
                .expect("receiver lock is never poisoned")
                .iter()
                .find(|r| {
                    r.span.name == "fanout"
                        && r.span.links.iter().any(|l| hex(&l.span_id) == publish_id)
                })
                .cloned();
            if let Some(f) = found {
                break f;
            }
            if tokio::time::Instant::now() >= deadline {
                let fanouts: Vec<Received> = collector
                    .spans
                    .lock()
                    .expect("receiver lock is never poisoned")
                    .iter()
                    .filter(|r| {
                        r.span.name == "fanout"
                            && r.span.links.iter().any(|l| hex(&l.trace_id) == trace_id)
                    })
                    .cloned()
                    .collect();
                panic!(
                    "no fanout span linked to publish span {publish_id} within {SPAN_WAIT:?} \
                     (the context must be taken inside the publish span); \
                     publish trace: {:#?}; fanout spans linked into it: {:#?}",
                    summary(&spans),
                    summary(&fanouts)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let link = fanout
        .span
        .links
        .iter()
        .find(|l| hex(&l.span_id) == publish_id)
        .expect("found by this link");
    assert_eq!(
        hex(&link.trace_id),
        trace_id,
        "the link names the publish trace"
    );
    assert_eq!(int_attr(&fanout.span.attributes, "events"), Some(1));

    // The subscription span ends with the stream; then check for leaks.
    drop(sub);
    let subscribe_spans = collector
        .wait_for(&subscribe_trace, "subscription span", |spans| {
            spans.iter().any(|r| r.span.name == "subscription")
        })
        .await;
    let all = spans
        .iter()
        .chain(&subscribe_spans)
        .chain(std::iter::once(&fanout));
    for r in all {
        for s in span_strings(&r.span) {
            assert!(
                !s.contains(&secret) && !s.contains('?'),
                "span {:?} leaks the query string: {s:?}",
                r.span.name
            );
        }
    }
    server.stop().await;
}
