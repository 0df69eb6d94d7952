//! Request ids: every response, on both connection paths, carries an
//! `x-request-id`; a sane incoming id is echoed, an oversized one replaced.

use std::collections::HashSet;

use crate::common::TestServer;

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let server = TestServer::start().await;
    let mut seen = HashSet::new();
    for path in ["/healthz", "/readyz", "/nope", "/channels/a"] {
        let res = server
            .http
            .get(server.url(path))
            .send()
            .await
            .expect("request");
        let id = res.headers()["x-request-id"]
            .to_str()
            .expect("ascii id")
            .to_string();
        assert!(!id.is_empty() && id.len() <= 64, "{path}: {id:?}");
        assert!(seen.insert(id), "{path}: ids are unique");
    }
    // The SSE stream (served by the lean path) carries one too.
    let res = server
        .http
        .get(server.url("/events?channel=a"))
        .send()
        .await
        .expect("subscribe");
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    drop(res);

    let echoed = server
        .http
        .get(server.url("/healthz"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .expect("request");
    assert_eq!(echoed.headers()["x-request-id"], "trace-abc-123");

    let long = "x".repeat(65);
    let replaced = server
        .http
        .get(server.url("/healthz"))
        .header("x-request-id", &long)
        .send()
        .await
        .expect("request");
    let id = replaced.headers()["x-request-id"].to_str().expect("ascii");
    assert_ne!(id, long, "an oversized incoming id is not echoed");
    assert!(id.len() <= 64);
    server.stop().await;
}
