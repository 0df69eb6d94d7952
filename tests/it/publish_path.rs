//! The lean keep-alive publish path, over raw sockets: what it answers must
//! be what the routed (hyper) path answers, and anything it does not serve
//! must reach hyper intact on the same connection.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{TestServer, metric};

/// Reads one HTTP/1.1 response (head and `content-length` body).
async fn read_response(conn: &mut TcpStream, pending: &mut Vec<u8>) -> (String, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if pending.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&pending[end + 4..end + 4 + len]).to_string();
                pending.drain(..end + 4 + len);
                return (head, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, conn.read(&mut chunk))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(
            n > 0,
            "the connection closed mid-response: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    }
}

fn publish_request(channel: &str, body: &str, extra: &str) -> String {
    format!(
        "POST /channels/{channel}/events HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_publishes_then_anything_else_on_the_same_connection() {
    let server = TestServer::start_with(|c| {
        c.cors.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    let mut pending = Vec::new();
    let mut ids = Vec::new();
    // Three publishes, the last two pipelined in one write.
    conn.write_all(publish_request("lean", r#"{"data":"one"}"#, "").as_bytes())
        .await
        .expect("write");
    let (head, body) = read_response(&mut conn, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 202 Accepted"), "{head}");
    assert_eq!(header(&head, "content-type"), Some("application/json"));
    assert!(
        header(&head, "x-request-id").is_some_and(|v| !v.is_empty()),
        "{head}"
    );
    assert!(header(&head, "date").is_some(), "{head}");
    assert!(
        header(&head, "vary").is_some_and(|v| v.contains("origin")),
        "CORS Vary: {head}"
    );
    ids.push(body);
    let two = publish_request(
        "lean",
        r#"{"data":"two","event":"t"}"#,
        "X-Request-Id: mine-42\r\n",
    ) + &publish_request("lean", r#"{"data":{"n":3}}"#, "");
    conn.write_all(two.as_bytes()).await.expect("write");
    for expected_id in [Some("mine-42"), None] {
        let (head, body) = read_response(&mut conn, &mut pending).await;
        assert!(head.starts_with("HTTP/1.1 202"), "{head}");
        if let Some(id) = expected_id {
            assert_eq!(header(&head, "x-request-id"), Some(id));
        }
        ids.push(body);
    }
    // An error answers like the routed path, and the connection goes on.
    conn.write_all(publish_request("lean", r#"{"data":1,"event":"herald.reset"}"#, "").as_bytes())
        .await
        .expect("write");
    let (head, body) = read_response(&mut conn, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(body.contains("reserved_event_type"), "{body}");
    // A request this path does not serve goes to hyper on the same socket.
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("write");
    let (head, body) = read_response(&mut conn, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("ok"), "{body}");
    // hyper keeps serving publishes (with Origin: CORS) on it.
    conn.write_all(
        publish_request(
            "lean",
            r#"{"data":"four"}"#,
            "Origin: https://app.example\r\n",
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let (head, _) = read_response(&mut conn, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 202"), "{head}");
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some("https://app.example"),
        "{head}"
    );
    // Every publish is in the channel, in order.
    let stats = server.get_json("/channels/lean").await;
    assert_eq!(stats["ring"]["len"], 4, "{stats}");
    let seqs: Vec<u64> = ids
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).expect("json");
            v["id"]
                .as_str()
                .expect("id")
                .rsplit('-')
                .next()
                .expect("seq")
                .parse()
                .expect("num")
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // Counted like the routed path.
    let ok = metric(
        &server.http,
        &server.url(""),
        r#"herald_http_requests_total{route="/channels/{*path}",method="POST",status="202"}"#,
    )
    .await
    .expect("counted");
    assert!(ok >= 4.0, "{ok}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_slow_bodies_and_oversized_bodies() {
    let server = TestServer::start_with(|c| {
        c.http.request_timeout_secs = 1;
        c.http.max_body_bytes = 256;
        c.hub.max_event_bytes = 128;
    })
    .await;
    // Connection: close is honoured.
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    let mut pending = Vec::new();
    conn.write_all(publish_request("c", r#"{"data":1}"#, "Connection: close\r\n").as_bytes())
        .await
        .expect("write");
    let (head, _) = read_response(&mut conn, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 202"), "{head}");
    assert_eq!(header(&head, "connection"), Some("close"));
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("read");
    assert_eq!(n, 0, "nothing after the last response");

    // A body that arrives in pieces is read whole.
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    let request = publish_request("c", r#"{"data":"in pieces"}"#, "");
    let (a, b) = request.split_at(request.len() - 5);
    conn.write_all(a.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.write_all(b.as_bytes()).await.expect("write");
    let mut pending = Vec::new();
    let (head, _) = read_response(&mut conn, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 202"), "{head}");

    // A body that never completes gets 408 at the request timeout.
    conn.write_all(
        b"POST /channels/c/events HTTP/1.1\r\nHost: h\r\nContent-Length: 50\r\n\r\n{\"data\"",
    )
    .await
    .expect("write");
    let (head, body) = read_response(&mut conn, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(body.contains("request_timeout"), "{body}");

    // A body over the cap is answered 413, as on the routed path.
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    let big = format!(r#"{{"data":"{}"}}"#, "x".repeat(300));
    conn.write_all(publish_request("c", &big, "").as_bytes())
        .await
        .expect("write");
    let mut pending = Vec::new();
    let (head, body) = read_response(&mut conn, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(body.contains("payload_too_large"), "{body}");
    server.stop().await;
}
