//! Hostile-client hardening: connections capped before their first request,
//! one deadline for a whole request head, prompt drain of unserved sockets,
//! the open-files limit, reserved event types, rate limits on refused
//! publishes, `null` data, and every spelling of `GET /events` on the lean
//! stream path.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{
    ServerProcess, TestServer, WAIT, client, metric, raw_get, read_until_count, read_until_eof,
};

/// A loopback address other than 127.0.0.1, for "another client".
const OTHER_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// An HTTP client whose connections come from [`OTHER_CLIENT`].
fn other_client() -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(OTHER_CLIENT)
        .pool_max_idle_per_host(0)
        .build()
        .expect("reqwest client")
}

/// The soft and hard `Max open files` of a process, from `/proc/<pid>/limits`.
fn open_files_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open files line in {limits}"));
    let mut numbers = line["Max open files".len()..]
        .split_whitespace()
        .map(|n| n.parse::<u64>().unwrap_or(u64::MAX));
    let soft = numbers.next().expect("soft limit");
    let hard = numbers.next().expect("hard limit");
    (soft, hard)
}

/// Raises this test process's soft open-files limit to its hard limit and
/// fails, saying how to fix it, when that is still below `needed`.
fn ensure_own_open_files(needed: u64) {
    let limit = herald::limits::raise_open_files_limit().expect("read the open files limit");
    assert!(
        limit.soft >= needed,
        "this test needs {needed} open files, the hard limit allows {}: raise it (ulimit -Hn {needed})",
        limit.hard
    );
}

/// Reads a raw response's head (up to the blank line), or what came before EOF.
async fn response_head(stream: &mut TcpStream) -> String {
    let bytes = read_until_count(stream, b"\r\n\r\n", 1, WAIT).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_open_files_limit_is_raised_to_the_hard_limit() {
    // Start Herald with a soft limit below its hard one, as many service
    // managers do, and see it raised.
    let (_, own_hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("own limits");
    let hard = own_hard.min(4096);
    let soft = hard / 2;
    assert!(
        soft >= 256,
        "the hard open-files limit ({own_hard}) is too low to run Herald"
    );
    let mut server = ServerProcess::spawn_with_nofile(soft, hard, &[], &[]).await;
    let pid = server.child.id().expect("herald runs");
    assert_eq!(open_files_limits(pid), (hard, hard), "soft raised to hard");
    let logs = server.drain_logs().join("\n");
    let line = logs
        .lines()
        .find(|l| l.contains("open files limit"))
        .unwrap_or_else(|| panic!("no open files log line: {logs}"));
    for field in [
        format!("soft_before={soft}"),
        format!("soft={hard}"),
        format!("hard={hard}"),
    ] {
        assert!(line.contains(&field), "{field} in {line}");
    }
}

/// Polls `/metrics` until the sample starting with `prefix` equals `want`.
async fn wait_for_metric(http: &reqwest::Client, base: &str, prefix: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = metric(http, base, prefix).await;
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{prefix}: {got:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_one_address_leave_service_to_others() {
    const IDLE: usize = 3000;
    const CAP: usize = 100;
    // Herald gets fewer descriptors than the idle sockets need, so only the
    // pending-connection cap can keep it serving.
    let mut server = ServerProcess::spawn_with_nofile(
        2048,
        2048,
        &[],
        &[("HERALD_LIMITS__MAX_PENDING_PER_IP", &CAP.to_string())],
    )
    .await;
    ensure_own_open_files(IDLE as u64 + 1024);
    let addr = server.addr;
    let base = server.url("");
    let other = other_client();

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(
            tokio::time::timeout(WAIT, TcpStream::connect(addr))
                .await
                .expect("connect in time")
                .expect("connect"),
        );
    }
    // Every socket past the cap is refused as soon as it is accepted.
    let refused_metric = "herald_rate_limited_total{limit=\"pending_per_ip\"}";
    wait_for_metric(&other, &base, refused_metric, (IDLE - CAP) as f64).await;
    assert_eq!(
        metric(&other, &base, "herald_connections_pending ").await,
        Some(CAP as f64)
    );

    // The acceptance check: another address is served within a second.
    let health = tokio::time::timeout(
        Duration::from_secs(1),
        other.get(server.url("/healthz")).send(),
    )
    .await
    .expect("/healthz answers within a second")
    .expect("/healthz request");
    assert_eq!(health.status(), 200);

    // One more idle socket from the capped address is closed unanswered...
    let mut refused = TcpStream::connect(addr).await.expect("connect");
    let (bytes, eof) = read_until_eof(&mut refused, WAIT).await;
    assert!(eof && bytes.is_empty(), "{bytes:?}");
    wait_for_metric(&other, &base, refused_metric, (IDLE - CAP + 1) as f64).await;
    // ...until one of its pending sockets completes a head, which frees a
    // slot for the next one.
    let first = &mut idle[0];
    first
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("complete a head");
    assert!(response_head(first).await.starts_with("HTTP/1.1 200"));
    wait_for_metric(
        &other,
        &base,
        "herald_connections_pending ",
        (CAP - 1) as f64,
    )
    .await;
    let mut admitted = TcpStream::connect(addr).await.expect("connect");
    wait_for_metric(&other, &base, "herald_connections_pending ", CAP as f64).await;
    admitted
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send a head");
    assert!(
        response_head(&mut admitted)
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert_eq!(
        metric(&other, &base, refused_metric).await,
        Some((IDLE - CAP + 1) as f64),
        "the socket that got the freed slot was not refused"
    );
    drop(idle);
    let _ = server.child.start_kill();
}

/// When each byte of a head of `len` bytes is sent, after the first: the
/// first `slow` bytes 750 ms apart, the rest evenly, the last at 15 s.
fn trickle_schedule(len: usize, slow: usize) -> Vec<Duration> {
    let slow_gap = Duration::from_millis(750);
    let slow_part = slow_gap * slow.saturating_sub(1) as u32;
    let rest_gap = (Duration::from_secs(15) - slow_part) / (len - slow.max(1)) as u32;
    (0..len)
        .map(|i| {
            if i < slow {
                slow_gap * i as u32
            } else {
                slow_part + rest_gap * (i + 1 - slow.max(1)) as u32
            }
        })
        .collect()
}

/// Opens a connection, sends `head` byte by byte on `schedule`, and returns
/// what the server wrote and when (after connecting) it closed the
/// connection.
async fn trickled(
    addr: SocketAddr,
    head: &str,
    schedule: Vec<Duration>,
) -> (Vec<u8>, Option<Duration>) {
    let conn = TcpStream::connect(addr).await.expect("connect");
    let started = tokio::time::Instant::now();
    let (mut read, mut write) = conn.into_split();
    let bytes = head.as_bytes().to_vec();
    let sender = tokio::spawn(async move {
        for (byte, at) in bytes.into_iter().zip(schedule) {
            tokio::time::sleep_until(started + at).await;
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
        }
        // Keep the socket open until the server closes it.
        tokio::time::sleep(WAIT).await;
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = started + Duration::from_secs(25);
    let closed = loop {
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break None,
        }
    };
    sender.abort();
    (got, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_past_the_header_timeout_is_never_served() {
    let server = TestServer::start_with(|c| c.http.header_read_timeout_secs = 10).await;
    let addr = server.addr;
    // Each head is complete only after 15 s. The subscribe head spends 8 s
    // on the bytes that tell which path serves it, as a client that knew
    // about a separate classification timeout would; then every byte
    // arrives well within any per-read timeout.
    let subscribe = "GET /events?channel=slow HTTP/1.1\r\n\r\n";
    let publish = "POST /channels/slow/events HTTP/1.1\r\nContent-Length: 12\r\n\r\n";
    let (sub, publ) = tokio::join!(
        trickled(addr, subscribe, trickle_schedule(subscribe.len(), 12)),
        trickled(addr, publish, trickle_schedule(publish.len(), 0)),
    );
    for (what, (bytes, closed)) in [("GET /events", sub), ("POST", publ)] {
        let closed = closed.unwrap_or_else(|| panic!("{what}: still open after 25 s"));
        assert!(
            bytes.is_empty(),
            "{what}: answered {:?}",
            String::from_utf8_lossy(&bytes)
        );
        // Closed by the one deadline: after the 10 s timeout, before the
        // head could be complete.
        assert!(
            closed >= Duration::from_secs(9) && closed < Duration::from_secs(15),
            "{what}: closed after {closed:?}"
        );
    }
    // The publish never happened.
    let res = server
        .http
        .get(server.url("/channels/slow"))
        .send()
        .await
        .expect("stats");
    assert_eq!(res.status(), 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_connections_without_a_head_at_once() {
    let mut server = ServerProcess::spawn(
        &[],
        &[
            ("HERALD_HTTP__HEADER_READ_TIMEOUT_SECS", "60"),
            ("HERALD_SHUTDOWN__GRACE_SECS", "30"),
        ],
    )
    .await;
    let openings = [
        "",
        "GET /ev",
        "GET /events?channel=a HTTP/1.1\r\nHost: x\r\n",
        "POST /channels/a/events HTTP/1.1\r\nContent-Length: 2\r\n",
        "\r\n",
    ];
    let mut stalled = Vec::new();
    for opening in openings {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        s.write_all(opening.as_bytes()).await.expect("send");
        stalled.push(s);
    }
    let http = client();
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&http, &server.url(""), "herald_connections_pending ").await
        != Some(openings.len() as f64)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled sockets were not all accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.signal("TERM");
    // Well before the 60 s header timeout or the 30 s grace period.
    let prompt = Duration::from_secs(10);
    let status = tokio::time::timeout(prompt, server.child.wait())
        .await
        .expect("herald exits promptly")
        .expect("wait for herald");
    assert!(status.success(), "exit status {status}");
    for (opening, s) in openings.iter().zip(&mut stalled) {
        let (bytes, eof) = read_until_eof(s, Duration::from_secs(1)).await;
        assert!(eof, "{opening:?}: still open");
        assert!(bytes.is_empty(), "{opening:?}: answered {bytes:?}");
    }
    let logs = server.drain_logs().join("\n");
    assert!(logs.contains("drained"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_whole_heads_is_never_refused_as_pending() {
    // Only a connection still waiting for its head counts as pending, so a
    // client that sends each head at once is served, however many
    // connections it opens. (src/http/head.rs checks the same with a socket
    // accepted after its head arrived and no slot left.)
    let server = TestServer::start_with(|c| c.limits.max_pending_per_ip = 16).await;
    let request = format!(
        "GET /events?channel=burst HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.addr
    );
    let mut streams = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("send");
        streams.push(s);
    }
    for (i, s) in streams.iter_mut().enumerate() {
        let bytes = read_until_count(s, b"retry: ", 1, WAIT).await;
        assert!(
            bytes.starts_with(b"HTTP/1.1 200"),
            "stream {i}: {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_not_pending_and_time_out() {
    // With a cap of one, a kept-alive connection waiting for its next request
    // must not count: a new connection from the same address that has to
    // wait for its head still gets the one slot.
    let server = ServerProcess::spawn(
        &[],
        &[
            ("HERALD_LIMITS__MAX_PENDING_PER_IP", "1"),
            ("HERALD_HTTP__HEADER_READ_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let (addr, base, other) = (server.addr, server.url(""), other_client());
    let mut kept = raw_get(addr, "/healthz", "").await;
    let first = read_until_count(&mut kept, b"\"ok\"", 1, WAIT).await;
    assert!(first.starts_with(b"HTTP/1.1 200"), "{first:?}");
    let mut next = TcpStream::connect(addr).await.expect("connect");
    wait_for_metric(&other, &base, "herald_connections_pending ", 1.0).await;
    let refused = "herald_rate_limited_total{limit=\"pending_per_ip\"}";
    assert_eq!(
        metric(&other, &base, refused).await,
        None,
        "nothing refused"
    );
    next.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send the head");
    assert!(response_head(&mut next).await.starts_with("HTTP/1.1 200"));
    // An idle keep-alive connection still holds a descriptor, so it is
    // closed once it has waited the header timeout for a next request.
    let started = Instant::now();
    let (_, eof) = read_until_eof(&mut kept, WAIT).await;
    assert!(eof, "an idle keep-alive connection stayed open");
    assert!(started.elapsed() >= Duration::from_secs(1));
}

/// POSTs `body` (sent as is, as JSON) to `path`; returns status and JSON body.
async fn post(server: &TestServer, path: &str, body: String) -> (u16, Value) {
    let res = server
        .http
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("publish request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_cannot_use_reserved_event_types() {
    let server = TestServer::start().await;
    server.publish("own", json!("first")).await;
    let last_id = || async {
        server.get_json("/channels/own").await["last_id"]
            .as_str()
            .expect("last id")
            .to_string()
    };
    let before = last_id().await;
    for event in ["herald.reset", "herald.token_expired", "herald.other"] {
        let (status, body) = post(
            &server,
            "/channels/own/events",
            json!({ "data": "x", "event": event }).to_string(),
        )
        .await;
        assert_eq!(status, 400, "{event}: {body}");
        assert_eq!(body["error"]["code"], "reserved_event_type", "{body}");
        let batch = json!({ "events": [
            { "data": "fine", "event": "greeting" },
            { "data": "x", "event": event },
        ]});
        let (status, body) = post(&server, "/channels/own/events/batch", batch.to_string()).await;
        assert_eq!(status, 400, "{event} in a batch: {body}");
        assert_eq!(body["error"]["code"], "reserved_event_type", "{body}");
    }
    assert_eq!(last_id().await, before, "nothing was published");
    // A type that merely starts with "herald" is the publisher's own.
    server
        .publish_event("own", json!({ "data": "x", "event": "heraldry" }))
        .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_publishes_are_charged_to_the_publish_rate() {
    let server = TestServer::start_with(|c| {
        c.limits.publish_per_second = 1;
        c.limits.publish_burst = 3;
        c.http.max_body_bytes = 1024;
        c.hub.max_event_bytes = 512;
    })
    .await;
    // Each kind of refused body costs one unit, like a publish.
    let refusals = [
        (json!({ "data": "x".repeat(2000) }).to_string(), 413),
        ("not json".to_string(), 400),
        (
            json!({ "data": "x", "event": "herald.reset" }).to_string(),
            400,
        ),
    ];
    for (body, status) in refusals {
        let (got, reply) = post(&server, "/channels/flood/events", body).await;
        assert_eq!(got, status, "{reply}");
    }
    // The burst is spent: more invalid bodies get 429 (one unit refills
    // per second, so a slow run may see one more 400 first).
    let mut limited = None;
    for _ in 0..5 {
        let (status, reply) = post(&server, "/channels/flood/events", "{".to_string()).await;
        if status == 429 {
            limited = Some(reply);
            break;
        }
        assert_eq!(status, 400, "{reply}");
    }
    let reply = limited.expect("a flood of invalid bodies is rate-limited");
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    // And the same key's valid publishes wait too.
    let (status, _) = post(
        &server,
        "/channels/flood/events",
        json!({ "data": "ok" }).to_string(),
    )
    .await;
    assert_eq!(status, 429);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_data_is_delivered_as_null() {
    let server = TestServer::start().await;
    let mut plain = server.subscribe("channel=nil", None).await;
    let mut enveloped = server.subscribe("channel=nil&envelope=1", None).await;
    let id = server.publish("nil", Value::Null).await;
    let event = plain.next().await;
    assert_eq!(
        (event.id.as_str(), event.data.as_str()),
        (id.as_str(), "null")
    );
    let envelope: Value = serde_json::from_str(&enveloped.next().await.data).expect("envelope");
    assert_eq!(envelope["data"], Value::Null, "{envelope}");
    assert!(envelope.get("data").is_some(), "{envelope}");
    let (status, body) = post(
        &server,
        "/channels/nil/events/batch",
        r#"{"events":[{"data":null},{"data":"x"}]}"#.to_string(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(plain.next().await.data, "null");
    assert_eq!(plain.next().await.data, "x");
    // A missing field is still refused.
    let (status, body) = post(&server, "/channels/nil/events", "{}".to_string()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("missing_data"))
    );
    server.stop().await;
}

/// Sends `request` on a new connection and reads up to the stream's first
/// `retry:` line; returns the connection and the lower-cased text so far.
async fn open_stream(addr: SocketAddr, request: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("send");
    let bytes = read_until_count(&mut s, b"retry: ", 1, WAIT).await;
    (s, String::from_utf8_lossy(&bytes).to_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_get_events_takes_the_lean_path() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let requests = [
        format!("GET http://{addr}/events?channel=forms HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        format!("\r\n\r\nGET /events?channel=forms HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        format!("GET /events?channel=forms HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    ];
    let mut streams = Vec::new();
    for request in &requests {
        let (s, head) = open_stream(addr, request).await;
        assert!(head.starts_with("http/1.1 200"), "{request:?}: {head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        // What the lean path writes: close-delimited, no chunk framing.
        assert!(head.contains("connection: close"), "{request:?}: {head}");
        assert!(!head.contains("transfer-encoding"), "{request:?}: {head}");
        streams.push(s);
    }
    let id = server.publish("forms", json!("to all")).await;
    for (request, s) in requests.iter().zip(&mut streams) {
        let body = read_until_count(s, b"data: to all\n\n", 1, WAIT).await;
        assert!(
            String::from_utf8_lossy(&body).contains(&format!("id: {id}\ndata: to all\n\n")),
            "{request:?}: {body:?}"
        );
    }
    // Control: the same check tells hyper's path apart. A stream asked for
    // on a connection kept alive after another request is served by hyper,
    // chunked.
    let mut kept = raw_get(addr, "/healthz", "").await;
    let first = read_until_count(&mut kept, b"\"ok\"", 1, WAIT).await;
    assert!(first.starts_with(b"HTTP/1.1 200"), "{first:?}");
    kept.write_all(
        format!("GET /events?channel=forms HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("second request");
    let bytes = read_until_count(&mut kept, b"retry: ", 1, WAIT).await;
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    server.stop().await;
}
