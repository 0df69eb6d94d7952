//! Herald scraped by a real Prometheus: the test drives every kind of
//! traffic the dashboards chart (publish, subscribe, a replay, a reset, an
//! auth failure, a rate-limited request, a slow subscriber, 4xx and 5xx),
//! then runs every PromQL expression from `scripts/check-dashboards.py`
//! through Prometheus's HTTP API. Every expression must parse, and every
//! dashboard panel must return data.
//!
//! Needs Debian's `prometheus` binary (`scripts/test.sh` installs it); the
//! test fails, never skips, when it is missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::common::{TestServer, WAIT, metric};

/// Bound on every wait for Prometheus: start-up, first scrape, and data.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);

/// A JSON-string payload close to the default 64 KiB event limit, so a
/// subscriber that never reads fills its socket buffers quickly.
const BIG_EVENT_BYTES: usize = 60_000;

/// Most concurrent streams one IP may hold in this test's config.
const STREAMS_PER_IP: usize = 8;

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real Prometheus scraping one Herald every second. Killed on drop.
struct Prometheus {
    child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
    log: PathBuf,
    // Dropped last: the process must be gone before its storage goes.
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus with a temp config and storage, and waits until it
    /// is ready.
    async fn start(target: SocketAddr) -> Self {
        let binary = find_in_path("prometheus")
            .unwrap_or_else(|| panic!("install prometheus: apt-get install prometheus"));
        let dir = TempDir::new("herald-prometheus");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: herald\n    scrape_interval: 1s\n    \
                 metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = dir.0.join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("create the Prometheus log");
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log handle"))
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn prometheus");
        let mut prometheus = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: crate::common::client(),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + PROMETHEUS_WAIT;
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!(
                    "prometheus exited with {status} before it was ready:\n{}",
                    prometheus.log_text()
                );
            }
            let ready = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.base))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            if Instant::now() >= deadline {
                panic!(
                    "prometheus was not ready within {PROMETHEUS_WAIT:?}:\n{}",
                    prometheus.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs an instant query: `Ok(result vector)`, or `Err` with
    /// Prometheus's error when the expression does not evaluate.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .finish();
        let res = self
            .http
            .get(format!("{}/api/v1/query?{query}", self.base))
            .send()
            .await
            .map_err(|e| format!("query request failed: {e}"))?;
        let body: Value = res
            .json()
            .await
            .map_err(|e| format!("query response is not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!(
                "{}: {}",
                body["errorType"].as_str().unwrap_or("error"),
                body["error"].as_str().unwrap_or("(no message)")
            ));
        }
        match &body["data"]["result"] {
            Value::Array(items) => Ok(items.clone()),
            // Scalars and strings are one value: data.
            other => Ok(vec![other.clone()]),
        }
    }

    /// Polls `expr` until it returns data; `Err` says why it never did.
    async fn wait_for_data(&self, expr: &str, deadline: Instant) -> Result<Vec<Value>, String> {
        loop {
            let result = self.query(expr).await?;
            if !result.is_empty() {
                return Ok(result);
            }
            if Instant::now() >= deadline {
                return Err("returned no data".into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A config where auth, limits and slow subscribers are easy to trigger.
fn edge_config(cfg: &mut herald::config::Config) {
    cfg.auth.enabled = true;
    cfg.auth.algorithms = vec!["HS256".into()];
    cfg.auth.hs_secret = Some(herald::auth::Secret::new(
        "prometheus-test-secret-0123456789abcdef",
    ));
    cfg.auth.anonymous_subscribe = vec!["**".into()];
    cfg.auth.anonymous_publish = vec!["**".into()];
    cfg.limits.max_streams_per_ip = STREAMS_PER_IP;
    cfg.sse.write_timeout_secs = 1;
    // Streams whose client went away are noticed at the next heartbeat.
    cfg.sse.heartbeat_secs = 1;
}

/// Publishes one event and returns the status and JSON body.
async fn publish(
    server: &TestServer,
    channel: &str,
    body: Value,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = server
        .http
        .post(server.url(&format!("/channels/{channel}/events")))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("publish request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Opens an SSE stream that never reads, with a small receive buffer, so
/// the server's writes stall and its write timeout closes the stream.
async fn open_stalled_stream(addr: SocketAddr, channel: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("client socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("shrink the receive buffer");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET /events?channel={channel} HTTP/1.1\r\nHost: herald\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send the subscribe request");
    stream
}

/// Renders `/metrics` and returns the value of the first sample whose line
/// starts with `series`.
async fn scraped(server: &TestServer, series: &str) -> Option<f64> {
    metric(&server.http, &server.url(""), series).await
}

/// Drives a publish on a second, draining server into a real 503: the
/// request is in flight when shutdown starts, so the handler refuses it.
/// Both servers share the process-wide recorder, so the scraped server's
/// `/metrics` counts it.
async fn draining_503() -> Result<(), String> {
    let sidecar = TestServer::start().await;
    let mut stream = TcpStream::connect(sidecar.addr)
        .await
        .map_err(|e| format!("connect to the draining server: {e}"))?;
    let body = br#"{"data":1}"#;
    let head = format!(
        "POST /channels/drain/events HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(&body[..4])
        .await
        .map_err(|e| e.to_string())?;
    // Let the server read the head and start waiting for the body.
    tokio::time::sleep(Duration::from_millis(200)).await;
    sidecar.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream
        .write_all(&body[4..])
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 1024];
        while !response.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    sidecar.stop().await;
    let head = String::from_utf8_lossy(&response);
    if read.is_err() || !head.starts_with("HTTP/1.1 503") {
        return Err(format!(
            "expected a 503 from the draining server, got {head:?}"
        ));
    }
    Ok(())
}

/// Every dashboard expression and alert rule against a real Prometheus
/// scraping a real Herald that has seen every kind of traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_query_works_against_real_prometheus() {
    let server = TestServer::start_with(edge_config).await;
    let prometheus = Prometheus::start(server.addr).await;
    let deadline = Instant::now() + PROMETHEUS_WAIT;
    if let Err(e) = prometheus
        .wait_for_data(r#"up{job="herald"} == 1"#, deadline)
        .await
    {
        panic!(
            "prometheus never scraped herald ({e}):\n{}",
            prometheus.log_text()
        );
    }

    // Traffic problems are collected, so one run reports everything the
    // server does not do yet, and the queries still run.
    let mut problems: Vec<String> = Vec::new();

    // Publish and subscribe (connections, publishes, deliveries, latency).
    let mut live = server.subscribe("channel=news", None).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, body) = publish(&server, "news", json!({ "data": { "n": n } }), None).await;
        assert_eq!(status, 202, "publish: {body}");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    let got = live.take(3).await;
    assert_eq!(
        got.iter().map(|e| &e.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>()
    );

    // A replay: resume after the first id; the rest arrives.
    let mut replay = server.subscribe("channel=news", Some(&ids[0])).await;
    let replayed = replay.take(2).await;
    assert_eq!(replayed[1].id, ids[2], "replay delivers what was missed");
    drop(replay);

    // A reset: a resume id that cannot be parsed.
    let mut reset = server.subscribe("channel=news", Some("garbage")).await;
    let first = reset.next().await;
    assert_eq!(first.event, "herald.reset", "an unparsable id gets a reset");
    drop(reset);

    // An auth failure: a bearer token that is not a JWT.
    let (status, body) = publish(&server, "news", json!({ "data": 1 }), Some("not-a-jwt")).await;
    if status != 401 {
        problems.push(format!(
            "a publish with a malformed token got {status} {body}, not 401 (is auth wired into src/http/edge.rs?)"
        ));
    }

    // 4xx: an unknown route and a malformed body.
    let res = server
        .http
        .get(server.url("/no-such-route"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 404);
    let res = server
        .http
        .post(server.url("/channels/news/events"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 400);

    // 5xx: a publish refused while a server drains.
    if let Err(e) = draining_503().await {
        problems.push(e);
    }

    // A slow subscriber: it never reads, so the write timeout closes it.
    let stalled = open_stalled_stream(server.addr, "slow").await;
    let big = "x".repeat(BIG_EVENT_BYTES);
    let slow_deadline = Instant::now() + Duration::from_secs(30);
    let closed = r#"herald_slow_subscribers_total{action="closed"}"#;
    loop {
        for _ in 0..8 {
            let (status, body) = publish(&server, "slow", json!({ "data": big }), None).await;
            assert_eq!(status, 202, "big publish: {body}");
        }
        if scraped(&server, closed).await.is_some_and(|v| v > 0.0) {
            break;
        }
        if Instant::now() >= slow_deadline {
            problems.push("a subscriber that never reads was not closed as slow".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(stalled);

    // A rate-limited request: more concurrent streams than one IP may hold.
    let mut held = Vec::new();
    let mut limited = false;
    for _ in 0..STREAMS_PER_IP + 4 {
        let res = server
            .http
            .get(server.url("/events?channel=crowd"))
            .send()
            .await
            .expect("subscribe request");
        if res.status() == 429 {
            limited = true;
            break;
        }
        assert_eq!(res.status(), 200, "subscribe");
        held.push(res);
    }
    if !limited {
        problems.push(format!(
            "{} concurrent streams from one IP were all admitted with limits.max_streams_per_ip = {STREAMS_PER_IP} (are limits wired into src/http/edge.rs?)",
            held.len() + 1
        ));
    }
    drop(held);

    // Prometheus saw the traffic.
    let deadline = Instant::now() + PROMETHEUS_WAIT;
    for expr in [
        "herald_events_published_total > 0",
        "herald_events_delivered_total > 0",
        "herald_fanout_latency_seconds_count > 0",
        "herald_connections_opened_total > 0",
        r#"herald_replays_total{result="complete"} > 0"#,
        r#"herald_replays_total{result="reset"} > 0"#,
        r#"herald_resets_total{reason="invalid_id"} > 0"#,
        "herald_auth_failures_total > 0",
        "herald_rate_limited_total > 0",
        "herald_slow_subscribers_total > 0",
        r#"herald_http_requests_total{status=~"4.."} > 0"#,
        r#"herald_http_requests_total{status=~"5.."} > 0"#,
    ] {
        if let Err(e) = prometheus.wait_for_data(expr, deadline).await {
            problems.push(format!("traffic not seen by Prometheus: {expr} {e}"));
        }
    }

    // Every expression in the dashboards and alert rules.
    let output = std::process::Command::new("python3")
        .arg("scripts/check-dashboards.py")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run python3 scripts/check-dashboards.py");
    assert!(
        output.status.success(),
        "check-dashboards.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("check-dashboards prints JSON lines"))
        .collect();
    assert!(
        records.iter().any(|r| r["kind"] == "panel")
            && records.iter().any(|r| r["kind"] == "alert"),
        "check-dashboards.py listed no panel or no alert expressions"
    );
    // Rates over 1m need two samples of each new series; keep polling.
    let deadline = Instant::now() + PROMETHEUS_WAIT;
    let mut panels = 0;
    for r in &records {
        let expr = r["expr"].as_str().expect("expr is a string");
        let kind = r["kind"].as_str().expect("kind is a string");
        let name = format!(
            "{} {kind} {:?}",
            r["source"].as_str().unwrap_or("?"),
            r["panel"]
        );
        let outcome = if kind == "panel" {
            panels += 1;
            prometheus.wait_for_data(expr, deadline).await.map(drop)
        } else {
            prometheus.query(expr).await.map(drop)
        };
        if let Err(e) = outcome {
            problems.push(format!("{name}: {e}\n    {expr}"));
        }
    }

    server.stop().await;
    assert!(
        problems.is_empty(),
        "{} problem(s) across {} expressions ({panels} panel queries):\n{}",
        problems.len(),
        records.len(),
        problems.join("\n")
    );
}
