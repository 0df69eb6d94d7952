//! The core service's acceptance: delivery, framing, replay, resets,
//! ordering under concurrency, slow subscribers, limits and shutdown.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscribers_receive_identical_sequences() {
    let server = TestServer::start().await;
    let mut a = server.subscribe("channel=room", None).await;
    let mut b = server.subscribe("channel=room", None).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(server.publish("room", json!(format!("message {i}"))).await);
    }
    let got_a = a.take(20).await;
    let got_b = b.take(20).await;
    assert_eq!(got_a, got_b);
    assert_eq!(got_a.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(got_a[7].data, "message 7");
    assert_eq!(got_a[7].event, "message");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_headers_retry_and_heartbeat() {
    let server = TestServer::start_with(|c| {
        c.sse.heartbeat_secs = 1;
        c.sse.retry_ms = 1234;
    })
    .await;
    let res = server
        .http
        .get(server.url("/events?channel=hb"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    drop(res);
    let mut raw = raw_get(server.addr, "/events?channel=hb", "").await;
    let bytes = read_until_count(&mut raw, b": heartbeat", 2, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&bytes);
    let body_start = text.find("\r\n\r\n").expect("response head") + 4;
    assert!(text[body_start..].contains("retry: 1234\n\n"), "{text}");
    assert!(
        text.find("retry: 1234").expect("retry") < text.find(": heartbeat").expect("heartbeat")
    );
    assert_eq!(count_occurrences(&bytes, b": heartbeat"), 2, "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_round_trips_exactly_and_cannot_inject_events() {
    let server = TestServer::start().await;
    let mut sub = server.subscribe("channel=fmt", None).await;
    let multi = "line one\nline two\n\nline four";
    let inject = "harmless\n\ndata: x\n\nevent: evil\nid: 999-1";
    server.publish("fmt", json!(multi)).await;
    server.publish("fmt", json!(inject)).await;
    // Sent as raw text: key order and number spelling must survive.
    let res = server
        .http
        .post(server.url("/channels/fmt/events"))
        .header("content-type", "application/json")
        .body(
            r#"{"data": { "b" : [1, 2.50, true],
            "a": {"n": null} }}"#,
        )
        .send()
        .await
        .expect("publish");
    assert_eq!(res.status(), 202);
    server.publish("fmt", json!(42)).await;
    let got = sub.take(4).await;
    assert_eq!(got[0].data, multi);
    assert_eq!(got[1].data, inject);
    assert_eq!(got[1].event, "message");
    assert_eq!(got[2].data, r#"{"b":[1,2.50,true],"a":{"n":null}}"#);
    assert_eq!(got[3].data, "42");
    // Exactly four events arrived: the payload did not start a fifth.
    sub.assert_quiet(Duration::from_millis(300)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_types_and_bad_input_get_clear_errors() {
    let server = TestServer::start_with(|c| {
        c.http.max_body_bytes = 4096;
        c.hub.max_event_bytes = 1024;
        c.sse.max_channels_per_connection = 3;
    })
    .await;
    let mut sub = server.subscribe("channel=typed", None).await;
    server
        .publish_event("typed", json!({ "data": "x", "event": "greeting" }))
        .await;
    assert_eq!(sub.next().await.event, "greeting");

    let post = |path: &str, body: String| {
        server
            .http
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/channels/typed/events",
            json!({"data": "x", "event": "a\nb"}).to_string(),
            400,
            "invalid_event_type",
        ),
        (
            "/channels/typed/events",
            json!({"data": "x", "event": "a\rb"}).to_string(),
            400,
            "invalid_event_type",
        ),
        (
            "/channels/typed/events",
            "not json".into(),
            400,
            "invalid_json",
        ),
        (
            "/channels/typed/events",
            json!({"event": "x"}).to_string(),
            400,
            "missing_data",
        ),
        (
            "/channels/typed/events",
            json!({"data": "x".repeat(2000)}).to_string(),
            413,
            "payload_too_large",
        ),
        (
            "/channels/typed/events",
            json!({"data": "x".repeat(8000)}).to_string(),
            413,
            "payload_too_large",
        ),
        (
            "/channels/bad%20name/events",
            json!({"data": "x"}).to_string(),
            400,
            "invalid_channel",
        ),
        (
            "/channels/typed/events/batch",
            json!({"events": []}).to_string(),
            400,
            "invalid_batch",
        ),
        (
            "/channels/typed/nope",
            json!({"data": "x"}).to_string(),
            404,
            "not_found",
        ),
    ];
    for (path, body, status, code) in cases {
        let res = post(path, body.clone()).await.expect("request");
        assert_eq!(res.status().as_u16(), status, "{path} {body:.80}");
        let v: Value = res.json().await.expect("JSON error body");
        assert_eq!(v["error"]["code"], code, "{path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    for (query, code) in [
        (
            "channel=a&channel=b&channel=c&channel=d",
            "too_many_channels",
        ),
        ("channel=bad%20name", "invalid_channel"),
        ("channel=", "invalid_channel"),
        ("", "missing_channel"),
        (&format!("channel={}", "x".repeat(200)), "invalid_channel"),
    ] {
        let res = server
            .http
            .get(server.url(&format!("/events?{query}")))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), 400, "{query}");
        let v: Value = res.json().await.expect("JSON error body");
        assert_eq!(v["error"]["code"], code, "{query}");
    }
    // Nothing was published by the bad requests.
    sub.assert_quiet(Duration::from_millis(300)).await;
    let stats: Value = server
        .http
        .get(server.url("/channels/typed"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["ring"]["len"], 1, "{stats}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_publish_and_channel_stats() {
    let server = TestServer::start_with(|c| c.hub.ring_size = 8).await;
    let mut sub = server.subscribe("channel=news/sports", None).await;
    let res = server
        .http
        .post(server.url("/channels/news/sports/events/batch"))
        .json(
            &json!({ "events": [{ "data": "a" }, { "data": "b", "event": "t" }, { "data": [1] }] }),
        )
        .send()
        .await
        .expect("batch");
    assert_eq!(res.status(), 202);
    let v: Value = res.json().await.expect("json");
    let ids: Vec<String> = v["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|i| i.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    let got = sub.take(3).await;
    assert_eq!(
        got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["a", "b", "[1]"]
    );
    assert_eq!(got.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);
    let stats: Value = server
        .http
        .get(server.url("/channels/news/sports"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["subscribers"], 1);
    assert_eq!(stats["last_id"], ids[2].as_str());
    assert_eq!(stats["ring"]["len"], 3);
    assert_eq!(stats["ring"]["capacity"], 8);
    let missing = server
        .http
        .get(server.url("/channels/nobody"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_an_earlier_id_gets_exactly_the_later_events() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(server.publish("resume", json!(i.to_string())).await);
    }
    // Header form.
    let mut sub = server.subscribe("channel=resume", Some(&ids[3])).await;
    let got = sub.take(6).await;
    assert_eq!(
        got.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        ids[4..]
    );
    sub.assert_quiet(Duration::from_millis(200)).await;
    // Query form, then live continues after the replay.
    let mut sub = server
        .subscribe(&format!("channel=resume&lastEventId={}", ids[7]), None)
        .await;
    let live = server.publish("resume", json!("live")).await;
    let got = sub.take(3).await;
    assert_eq!(
        got.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        [ids[8].clone(), ids[9].clone(), live]
    );
    // The header wins over a stale query id (what browsers send on reconnect).
    let mut sub = server
        .subscribe(
            &format!("channel=resume&lastEventId={}", ids[0]),
            Some(&ids[8]),
        )
        .await;
    assert_eq!(sub.next().await.id, ids[9]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_channels_resume_from_one_id_in_seq_order() {
    let server = TestServer::start().await;
    let start = server.publish("x", json!("before")).await;
    let mut expected = Vec::new();
    for i in 0..5 {
        for ch in ["c", "a", "other", "b"] {
            let id = server.publish(ch, json!(format!("{ch}{i}"))).await;
            if ch != "other" {
                expected.push((id, format!("{ch}{i}")));
            }
        }
    }
    let mut sub = server
        .subscribe("channel=a&channel=b&channel=c&envelope=1", Some(&start))
        .await;
    let got = sub.take(expected.len()).await;
    for (e, (id, data)) in got.iter().zip(&expected) {
        assert_eq!(&e.id, id);
        let env: Value = serde_json::from_str(&e.data).expect("envelope JSON");
        assert_eq!(env["data"], data.as_str());
        assert_eq!(env["id"], id.as_str());
        assert_eq!(env["channel"], &data[..1]);
    }
    let seqs: Vec<u64> = got
        .iter()
        .map(|e| e.id.split_once('-').unwrap().1.parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    sub.assert_quiet(Duration::from_millis(200)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_replay_sends_reset_first_then_live_events() {
    let server = TestServer::start_with(|c| c.hub.ring_size = 4).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(server.publish("gap", json!(i.to_string())).await);
    }
    let epoch = ids[0].split_once('-').unwrap().0.to_string();
    let cases = [
        ("expired", ids[1].clone()),
        ("unknown_epoch", "12345-3".to_string()),
        ("invalid_id", "garbage".to_string()),
        ("invalid_id", "x".repeat(500)),
    ];
    let mut head = ids[9].clone();
    for (reason, last_id) in cases {
        let mut sub = server.subscribe("channel=gap", Some(&last_id)).await;
        let reset = sub.next().await;
        assert_eq!(reset.event, "herald.reset", "{reason}");
        let body: Value = serde_json::from_str(&reset.data).expect("reset JSON");
        assert_eq!(body["reason"], reason, "{body}");
        assert_eq!(body["channels"], json!(["gap"]));
        assert!(
            body["lost"]["through"]
                .as_str()
                .unwrap()
                .starts_with(&epoch),
            "{body}"
        );
        if reason == "expired" {
            // The lost range is exact, and the retained tail follows.
            assert_eq!(body["lost"]["after"], ids[1].as_str());
            assert_eq!(body["lost"]["through"], ids[5].as_str());
            let tail = sub.take(4).await;
            assert_eq!(
                tail.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
                ids[6..]
            );
        } else {
            // The reset carries the id to resume from: the current head.
            assert_eq!(reset.id, head);
        }
        let live = server.publish("gap", json!("live")).await;
        let next = sub.next().await;
        assert_eq!(
            (next.id.as_str(), next.data.as_str()),
            (live.as_str(), "live"),
            "{reason}"
        );
        head = live;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_give_fifty_subscribers_one_total_order() {
    const PUBLISHERS: usize = 8;
    const PER_PUBLISHER: usize = 40;
    let server = TestServer::start().await;
    let mut subs = Vec::new();
    for _ in 0..50 {
        subs.push(server.subscribe("channel=race", None).await);
    }
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let http = server.http.clone();
        let url = server.url("/channels/race/events");
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..PER_PUBLISHER {
                let res = http
                    .post(&url)
                    .json(&json!({ "data": format!("{p}:{i}") }))
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(res.status(), 202);
                let v: Value = res.json().await.expect("json");
                ids.push(v["id"].as_str().expect("id").to_string());
            }
            ids
        }));
    }
    let mut published = HashSet::new();
    for t in tasks {
        published.extend(t.await.expect("publisher task"));
    }
    let total = PUBLISHERS * PER_PUBLISHER;
    assert_eq!(published.len(), total);
    let mut first: Option<Vec<common_event_key::Key>> = None;
    for sub in &mut subs {
        let got = sub.take(total).await;
        let keys: Vec<_> = got.iter().map(common_event_key::key).collect();
        let unique: HashSet<_> = got.iter().map(|e| e.id.clone()).collect();
        assert_eq!(unique.len(), total, "no duplicates");
        assert_eq!(unique, published, "no gaps");
        let seqs: Vec<u64> = got
            .iter()
            .map(|e| e.id.split_once('-').unwrap().1.parse().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq order");
        match &first {
            None => first = Some(keys),
            Some(f) => assert_eq!(f, &keys, "same total order for every subscriber"),
        }
        sub.assert_quiet(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

mod common_event_key {
    pub type Key = (String, String);
    pub fn key(e: &crate::common::Event) -> Key {
        (e.id.clone(), e.data.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_subscriber_neither_slows_others_nor_grows_memory() {
    const EVENTS: usize = 8000;
    const BATCH: usize = 16;
    let payload = "p".repeat(8 * 1024);
    let server = ServerProcess::spawn(
        &[],
        &[
            ("HERALD_HUB__RING_SIZE", "1024"),
            ("HERALD_SSE__WRITE_TIMEOUT_SECS", "3"),
        ],
    )
    .await;
    let pid = server.child.id().expect("pid");
    let http = client();
    // The stalled subscriber sends its request and never reads a byte.
    let stalled = raw_get(server.addr, "/events?channel=flood", "").await;
    let mut fast = raw_get(server.addr, "/events?channel=flood", "").await;
    let reader = tokio::spawn(async move {
        read_until_count(&mut fast, b"\ndata: ", EVENTS, Duration::from_secs(120)).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_kib(pid);
    let url = server.url("/channels/flood/events/batch");
    let events: Vec<Value> = (0..BATCH).map(|_| json!({ "data": payload })).collect();
    for _ in 0..EVENTS / BATCH {
        let res = http
            .post(&url)
            .json(&json!({ "events": events }))
            .send()
            .await
            .expect("publish");
        assert_eq!(res.status(), 202);
    }
    let rss_after = rss_kib(pid);
    let bytes = reader.await.expect("reader task");
    // Count the events' data lines: the stream's opening (`retry:` and an
    // id-only position event) carries none.
    let delivered = count_occurrences(&bytes, b"\ndata: ");
    assert_eq!(delivered, EVENTS, "the fast subscriber got every event");
    assert_eq!(
        count_occurrences(&bytes, b"herald.reset"),
        0,
        "the fast subscriber was never reset"
    );
    // 8000 x 8 KiB = 64 MiB went out; the server keeps only the ring (8 MiB).
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    assert!(
        growth_mib < 32,
        "server RSS grew {growth_mib} MiB while a subscriber stalled"
    );
    // The stalled connection is closed once writes stop progressing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let closed = metric(
            &http,
            &server.url(""),
            "herald_slow_subscribers_total{action=\"closed\"}",
        )
        .await;
        if closed == Some(1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled subscriber was not closed: {closed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let timed_out = metric(
        &http,
        &server.url(""),
        "herald_connections_closed_total{reason=\"write_timeout\"}",
    )
    .await;
    assert_eq!(
        timed_out,
        Some(1.0),
        "exactly one stream (the stalled one) hit the write timeout"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits_within_grace() {
    let mut server = ServerProcess::spawn(&[], &[("HERALD_SHUTDOWN__GRACE_SECS", "5")]).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(raw_get(server.addr, "/events?channel=bye", "").await);
    }
    let http = client();
    let ready = http
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    // Wait until all three are counted as open.
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&http, &server.url(""), "herald_connections ").await != Some(3.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "streams did not open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = std::time::Instant::now();
    server.signal("TERM");
    for s in &mut streams {
        let (bytes, eof) = read_until_eof(s, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&bytes);
        assert!(eof, "stream ended: {text}");
        // The last frame is a jittered retry hint, sent after the initial one.
        assert!(text.matches("retry: ").count() >= 2, "{text}");
    }
    let status = tokio::time::timeout(Duration::from_secs(8), server.child.wait())
        .await
        .expect("process exits within the grace period")
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    let logs = server.drain_logs().join("\n");
    assert!(logs.contains("SIGTERM received"), "{logs}");
    // New connections are refused once it has stopped.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_not_found_are_json() {
    let server = TestServer::start().await;
    let health = server.get_json("/healthz").await;
    assert_eq!(health["status"], "ok");
    let ready = server.get_json("/readyz").await;
    assert_eq!(ready["status"], "ready");
    let res = server.http.get(server.url("/nope")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    let page = server.http.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_accepts_good_files_and_rejects_bad_ones() {
    let bin = env!("CARGO_BIN_EXE_herald");
    let dir = std::env::temp_dir().join(format!("herald-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "listen = \"127.0.0.1:9\"\n[hub]\nring_size = 16\n").unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[hub]\nring_size = 0\n").unwrap();
    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "[hub]\nring_sise = 4\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["check-config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for (file, needle) in [(&bad, "ring_size"), (&typo, "ring_sise")] {
        let out = std::process::Command::new(bin)
            .args(["check-config", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err}");
    }
    // A bad env value stops `serve` before it binds, with a non-zero exit.
    let out = std::process::Command::new(bin)
        .env_clear()
        .env("HERALD_LISTEN", "not-an-address")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listen"),
        "{out:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_in_two_chromium_tabs() {
    let server = TestServer::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/two_tabs.mjs");
    let modules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/browser/node_modules/playwright-core"
    );
    assert!(
        std::path::Path::new(modules).exists(),
        "playwright-core is missing: run scripts/test.sh (it runs `npm ci` in tests/browser)"
    );
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg(script)
            .arg(server.url("/"))
            .output(),
    )
    .await
    .expect("browser test finishes in time")
    .expect("run node (install nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "two-tab browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("\"ok\":true"), "{stdout}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_work_on_a_kept_alive_connection_and_reject_bad_heads() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    // A keep-alive connection that first fetches something else is served by
    // the general HTTP path; its later subscription must work all the same.
    let mut conn = raw_get(server.addr, "/healthz", "").await;
    let first = read_until_count(&mut conn, b"\"ok\"", 1, WAIT).await;
    assert!(
        String::from_utf8_lossy(&first).starts_with("HTTP/1.1 200"),
        "{first:?}"
    );
    let req = format!(
        "GET /events?channel=reuse HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.addr
    );
    conn.write_all(req.as_bytes())
        .await
        .expect("second request");
    let head = read_until_count(&mut conn, b"retry: ", 1, WAIT).await;
    assert!(
        String::from_utf8_lossy(&head).contains("text/event-stream"),
        "{head:?}"
    );
    let id = server.publish("reuse", json!("again")).await;
    let body = read_until_count(&mut conn, b"data: again", 1, WAIT).await;
    assert!(
        String::from_utf8_lossy(&body).contains(&format!("id: {id}")),
        "{body:?}"
    );

    // A dedicated stream connection is close-delimited, with no chunk framing.
    let mut fresh = raw_get(server.addr, "/events?channel=reuse", "").await;
    let head = read_until_count(&mut fresh, b"retry: ", 1, WAIT).await;
    let text = String::from_utf8_lossy(&head);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    let id = server.publish("reuse", json!("plain")).await;
    let body = read_until_count(&mut fresh, b"data: plain\n\n", 1, WAIT).await;
    assert!(
        String::from_utf8_lossy(&body).contains(&format!("id: {id}\ndata: plain\n\n")),
        "{body:?}"
    );

    // Malformed or oversized heads get a JSON 4xx and a closed connection.
    for (raw, status) in [
        (
            "GET /events?channel=a HTTP/1.1\r\nBad Header\r\n\r\n".to_string(),
            "400",
        ),
        (
            format!(
                "GET /events?channel=a HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "x".repeat(9000)
            ),
            "431",
        ),
        (
            "GET /events?channel=a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_string(),
            "400",
        ),
        (
            "GET /events?channel=bad%20name HTTP/1.1\r\n\r\n".to_string(),
            "400",
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        s.write_all(raw.as_bytes()).await.expect("send");
        let (bytes, eof) = read_until_eof(&mut s, WAIT).await;
        let text = String::from_utf8_lossy(&bytes);
        assert!(eof, "connection closed");
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
        let body = &text[text.find("\r\n\r\n").expect("head end") + 4..];
        let v: Value = serde_json::from_str(body).expect("JSON error body");
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_names_become_metric_labels_only_when_allowlisted() {
    let server = ServerProcess::spawn(
        &[],
        &[(
            "HERALD_TELEMETRY__CHANNEL_LABEL_ALLOWLIST",
            "vip,ops/alerts",
        )],
    )
    .await;
    let http = client();
    for channel in ["vip", "secret-room", "ops/alerts", "vip"] {
        let res = http
            .post(server.url(&format!("/channels/{channel}/events")))
            .json(&json!({ "data": "x" }))
            .send()
            .await
            .expect("publish");
        assert_eq!(res.status(), 202);
    }
    let text = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("herald_channel_events_published_total{channel=\"vip\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("herald_channel_events_published_total{channel=\"ops/alerts\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("secret-room"),
        "a channel outside the allowlist leaked into metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_window_batches_bursts_without_loss_or_reorder() {
    let server = TestServer::start_with(|c| c.sse.coalesce_ms = 150).await;
    let mut subs = Vec::new();
    for _ in 0..5 {
        subs.push(server.subscribe("channel=burst&channel=other", None).await);
    }
    let mut ids = Vec::new();
    for i in 0..30 {
        let ch = if i % 3 == 0 { "other" } else { "burst" };
        ids.push(server.publish(ch, json!(i.to_string())).await);
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for sub in &mut subs {
        let got = sub.take(30).await;
        assert_eq!(got.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);
        sub.assert_quiet(Duration::from_millis(300)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_publish_on_the_memory_broker() {
    let server = TestServer::start().await;
    let mut sse = server.subscribe("channel=idem", None).await;
    let send = |key: &str, body: Value, batch: bool| {
        let path = if batch {
            "/channels/idem/events/batch"
        } else {
            "/channels/idem/events"
        };
        server
            .http
            .post(server.url(path))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = send("k-1", json!({ "data": "once" }), false).await.unwrap();
    assert_eq!(first.status(), 202);
    let id = first.json::<Value>().await.unwrap()["id"].clone();
    let retry = send("k-1", json!({ "data": "once" }), false).await.unwrap();
    assert_eq!(retry.status(), 202);
    assert_eq!(retry.json::<Value>().await.unwrap()["id"], id);
    // The same key with another body is refused, and publishes nothing.
    let clash = send("k-1", json!({ "data": "twice" }), false)
        .await
        .unwrap();
    assert_eq!(clash.status(), 422);
    let v: Value = clash.json().await.unwrap();
    assert_eq!(v["error"]["code"], "idempotency_key_reused");
    // Batches replay all their ids.
    let batch = json!({ "events": [{ "data": 1 }, { "data": 2 }] });
    let b1 = send("k-2", batch.clone(), true).await.unwrap();
    let ids = b1.json::<Value>().await.unwrap()["ids"].clone();
    let b2 = send("k-2", batch, true).await.unwrap();
    assert_eq!(b2.json::<Value>().await.unwrap()["ids"], ids);
    // A bad key is a clear 400.
    let bad = send("has space", json!({ "data": "x" }), false)
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let v: Value = bad.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_idempotency_key");
    // Subscribers saw each event once.
    let got = sse.take(3).await;
    assert_eq!(got[0].id, id.as_str().unwrap());
    assert_eq!(got[1].id, ids[0].as_str().unwrap());
    assert_eq!(got[2].id, ids[1].as_str().unwrap());
    sse.assert_quiet(Duration::from_millis(100)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_before_its_first_event_resumes_without_a_gap() {
    let server = TestServer::start().await;
    server.publish("first-cut", json!("before")).await;
    // The stream opens with the position it starts from, as an id-only
    // event: EventSource takes it as its last event id.
    let mut conn = raw_get(server.addr, "/events?channel=first-cut", "").await;
    // The retry block and the id block.
    let head = read_until_count(&mut conn, b"\n\n", 2, WAIT).await;
    let text = String::from_utf8_lossy(&head);
    let start = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("no starting id in {text:?}"))
        .to_string();
    assert_eq!(
        start,
        server.get_json("/channels/first-cut").await["last_id"]
    );
    drop(conn);
    // Published while the client was away, before it saw any event.
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(server.publish("first-cut", json!(n)).await);
    }
    let mut sse = server.subscribe("channel=first-cut", Some(&start)).await;
    let got: Vec<String> = sse.take(3).await.into_iter().map(|e| e.id).collect();
    assert_eq!(got, ids, "nothing published during the gap is missed");
    server.stop().await;
}
