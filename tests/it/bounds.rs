//! Bounded under hostile load (the core's side): a memory budget for all
//! retained history, a channel table subscribers cannot squat, and a drain
//! that delivers every event that got a 202.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::{ServerProcess, TestServer, client, rss_kib};

/// What the README documents as the allowance above the budget: request
/// buffers, one publish in flight, allocator slack.
const OVERHEAD_MIB: u64 = 48;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_memory_stays_within_the_budget() {
    const BUDGET_MIB: u64 = 64;
    let server = ServerProcess::spawn(
        &[],
        &[(
            "HERALD_HUB__MAX_MEMORY_BYTES",
            &(BUDGET_MIB << 20).to_string(),
        )],
    )
    .await;
    let pid = server.child.id().expect("pid");
    let http = client();
    // 64 KiB of newlines: each becomes "data: \n", a 448 KiB frame.
    let newlines = "\n".repeat(64 * 1024);
    let one = json!({ "events": [{ "data": newlines }] });
    let first = http
        .post(server.url("/channels/flood/0/events/batch"))
        .json(&one)
        .send()
        .await
        .expect("publish");
    assert_eq!(first.status(), 202);
    let first_id = first.json::<Value>().await.expect("json")["ids"][0]
        .as_str()
        .expect("id")
        .to_string();
    let rss_before = rss_kib(pid);
    // Seven events a request keeps each body under the 1 MiB cap.
    let batch = json!({ "events": vec![json!({ "data": newlines }); 7] });
    let mut published = 1;
    for channel in 0..4 {
        let url = server.url(&format!("/channels/flood/{channel}/events/batch"));
        let mut sent = if channel == 0 { 1 } else { 0 };
        while sent < 1024 {
            let res = http.post(&url).json(&batch).send().await.expect("publish");
            assert_eq!(res.status(), 202);
            sent += 7;
            published += 7;
        }
    }
    let rss_after = rss_kib(pid);
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    eprintln!("history_memory_stays_within_the_budget: RSS grew {growth_mib} MiB");
    // Unbounded, this would be ~1.8 GiB of frames.
    assert!(
        growth_mib <= BUDGET_MIB + OVERHEAD_MIB,
        "RSS grew {growth_mib} MiB over {published} events of 448 KiB frames; budget {BUDGET_MIB} MiB"
    );
    let retained = crate::common::metric(&http, &server.url(""), "herald_history_bytes ")
        .await
        .expect("herald_history_bytes is exported");
    assert!(
        retained <= ((BUDGET_MIB << 20) + ((7 * 460) << 10)) as f64,
        "retained {retained} bytes"
    );
    let evicted = crate::common::metric(
        &http,
        &server.url(""),
        "herald_history_evicted_total{reason=\"memory_budget\"}",
    )
    .await
    .expect("evictions counted");
    assert!(evicted > 3000.0, "evicted {evicted}");
    // The first event is long gone: resuming from before it gets a reset.
    let res = http
        .get(server.url("/events?channel=flood/0"))
        .header("last-event-id", &first_id)
        .send()
        .await
        .expect("subscribe");
    let mut body = res.bytes_stream();
    let mut text = String::new();
    while !text.contains("herald.reset") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("reset arrives")
            .expect("stream open")
            .expect("chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains("\"reason\":\"expired\""),
        "{}",
        &text[..400.min(text.len())]
    );
}

const SECRET: &str = "bounds-acceptance-secret-0123456789abcdef-long";

fn publisher_token() -> String {
    let claims = json!({
        "sub": "publisher",
        "exp": 4_000_000_000u64,
        "herald": { "publish": ["**"] },
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token signs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_subscribers_cannot_squat_the_channel_table() {
    let server = TestServer::start_with(|c| {
        c.hub.max_channels = 640;
        c.auth.enabled = true;
        c.auth.hs_secret = Some(herald::auth::Secret::new(SECRET));
        c.auth.anonymous_subscribe = vec!["public/**".into()];
    })
    .await;
    let token = publisher_token();
    let publish = |channel: String| {
        let req = server
            .http
            .post(server.url(&format!("/channels/{channel}/events")))
            .bearer_auth(&token)
            .json(&json!({ "data": "hello" }));
        async move { req.send().await.expect("publish").status() }
    };
    // 30 anonymous streams of 32 fresh channels each: 960 > 640.
    let mut streams = Vec::new();
    for s in 0..30 {
        let query: Vec<String> = (0..32).map(|c| format!("channel=public/{s}/{c}")).collect();
        let res = server
            .http
            .get(server.url(&format!("/events?{}", query.join("&"))))
            .send()
            .await
            .expect("subscribe");
        assert_eq!(res.status(), 200, "anonymous stream {s}");
        streams.push(res);
    }
    // While they are open, publishers still have the whole capacity.
    assert_eq!(publish("news/while-open".into()).await, 202);
    drop(streams);
    // After they leave, nothing of theirs lingers for the idle TTL.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = server
            .http
            .get(server.url("/channels/public/0/0"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("stats");
        if stats.status() == 404 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "an empty channel outlived its subscribers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..600 {
        assert_eq!(publish(format!("news/after/{i}")).await, 202, "publish {i}");
    }
    server.stop().await;
}

/// Reads one subscriber to EOF; returns the ids it received.
async fn read_ids(res: reqwest::Response) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut body = res.bytes_stream();
    let mut pending = String::new();
    let read = async {
        while let Some(Ok(chunk)) = body.next().await {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                if let Some(id) = line.trim_end().strip_prefix("id: ") {
                    ids.insert(id.to_string());
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the stream ends after SIGTERM");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_every_accepted_event() {
    for trial in 0..5 {
        let mut server = ServerProcess::spawn(&[], &[("HERALD_SHUTDOWN__GRACE_SECS", "10")]).await;
        let http = client();
        let mut readers = Vec::new();
        for _ in 0..20 {
            let res = http
                .get(server.url("/events?channel=drain/a&channel=drain/b"))
                .send()
                .await
                .expect("subscribe");
            assert_eq!(res.status(), 200);
            readers.push(tokio::spawn(read_ids(res)));
        }
        let mut publishers = Vec::new();
        for p in 0..2 {
            let url = server.url(&format!("/channels/drain/{}/events", ["a", "b"][p]));
            let http = http.clone();
            publishers.push(tokio::spawn(async move {
                let mut accepted = Vec::new();
                // Flat out until the server stops answering (bounded).
                for i in 0..200_000 {
                    let Ok(res) = http.post(&url).json(&json!({ "data": i })).send().await else {
                        break;
                    };
                    if res.status() != 202 {
                        break;
                    }
                    let v: Value = res.json().await.expect("json");
                    accepted.push(v["id"].as_str().expect("id").to_string());
                }
                accepted
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.signal("TERM");
        let mut accepted = BTreeSet::new();
        for p in publishers {
            accepted.extend(p.await.expect("publisher"));
        }
        assert!(!accepted.is_empty(), "trial {trial}: nothing was published");
        for (n, r) in readers.into_iter().enumerate() {
            let got = r.await.expect("reader");
            let missing: Vec<_> = accepted.difference(&got).take(5).collect();
            assert!(
                missing.is_empty(),
                "trial {trial}: subscriber {n} missed {} of {} accepted events, e.g. {missing:?}",
                accepted.difference(&got).count(),
                accepted.len()
            );
        }
        let status = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
            .await
            .expect("exits within the grace period")
            .expect("wait");
        assert!(status.success(), "trial {trial}: exit {status:?}");
        let _ = server.drain_logs();
    }
}
