//! JWKS keys (issue 3, item 1), against the real server: a loopback HTTP
//! server publishes the key set and counts fetches; Herald fetches it at
//! start, verifies tokens by `kid`, refreshes on an unknown `kid` at most
//! once per minimum interval, follows key rotation, and survives a JWKS
//! endpoint that is down or hangs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald::auth::Secret;
use herald::config::Config;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::common::*;

const INITIAL: &str = include_str!("../fixtures/jwks/initial.json");
const ROTATED: &str = include_str!("../fixtures/jwks/rotated.json");
const SECRET: &str = "jwks-acceptance-secret-0123456789abcdef-long";

// ---------------------------------------------------------------------------
// The JWKS endpoint
// ---------------------------------------------------------------------------

#[derive(Default)]
struct JwksState {
    /// The document served, or `None` while "down" (503).
    body: Mutex<Option<String>>,
    /// Requests received.
    fetches: AtomicUsize,
    /// Requests answered with the document.
    served: AtomicUsize,
}

/// A JWKS endpoint on `127.0.0.1:0`.
struct JwksServer {
    addr: SocketAddr,
    state: Arc<JwksState>,
    task: JoinHandle<()>,
}

impl JwksServer {
    async fn start(body: Option<&str>) -> Self {
        let state = Arc::new(JwksState::default());
        state.set(body);
        let app = Router::new()
            .route("/.well-known/jwks.json", axum::routing::get(serve_jwks))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the JWKS server");
        let addr = listener.local_addr().expect("JWKS address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("JWKS server runs");
        });
        Self { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn serve(&self, body: Option<&str>) {
        self.state.set(body);
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    fn served(&self) -> usize {
        self.state.served.load(Ordering::SeqCst)
    }

    /// Waits until `cond` holds for the counters; fails after [`WAIT`].
    async fn wait_for(&self, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} (fetches {}, served {})",
                self.fetches(),
                self.served()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksState {
    fn set(&self, body: Option<&str>) {
        *self.body.lock().expect("lock") = body.map(str::to_owned);
    }
}

async fn serve_jwks(State(state): State<Arc<JwksState>>) -> Response {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let body = state.body.lock().expect("lock").clone();
    match body {
        Some(body) => {
            state.served.fetch_add(1, Ordering::SeqCst);
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

// ---------------------------------------------------------------------------
// Herald and tokens
// ---------------------------------------------------------------------------

fn key(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

/// Auth with the JWKS at `url`, RS256/ES256/EdDSA and HS256 pinned.
fn with_jwks(url: String, refresh_secs: u64, min_interval_secs: u64) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.auth.enabled = true;
        c.auth.algorithms = ["HS256", "RS256", "ES256", "EdDSA"]
            .map(String::from)
            .to_vec();
        c.auth.hs_secret = Some(Secret::new(SECRET));
        c.auth.jwks_url = Some(url);
        c.auth.jwks_refresh_secs = refresh_secs;
        c.auth.jwks_min_refresh_interval_secs = min_interval_secs;
        c.auth.jwks_timeout_secs = 2;
    }
}

fn claims() -> Value {
    json!({
        "sub": "jwks-user",
        "exp": jsonwebtoken::get_current_timestamp() + 3600,
        "herald": {"subscribe": ["news/*"], "publish": ["news/*"]},
    })
}

/// A token signed by `key`, naming `kid` when given.
fn token(alg: Algorithm, key: &EncodingKey, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims(), key).expect("test token signs")
}

fn pem_key(name: &str) -> Vec<u8> {
    std::fs::read(key(name)).expect("fixture key")
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&pem_key(name)).expect("RSA private key")
}

/// RS256 with `private_key`, naming `kid`.
fn rs(private_key: &str, kid: &str) -> String {
    token(Algorithm::RS256, &rsa(private_key), Some(kid))
}

/// Publishes with `token`; returns the status and the error code, if any.
async fn publish(server: &TestServer, token: &str) -> (u16, String) {
    let res = server
        .http
        .post(server.url("/channels/news/jwks/events"))
        .bearer_auth(token)
        .json(&json!({"data": "hello"}))
        .send()
        .await
        .expect("publish request");
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    (status, code)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tokens_verify_with_the_key_their_kid_names() {
    let jwks = JwksServer::start(Some(INITIAL)).await;
    let server = TestServer::start_with(|c| {
        with_jwks(jwks.url(), 300, 30)(c);
        // A static key too: tokens without a kid still use it.
        c.auth.public_key_files = vec![key("rsa-other-public.pem")];
    })
    .await;

    assert_eq!(
        publish(&server, &rs("rsa-private.pem", "rsa-1")).await.0,
        202
    );
    // The set was fetched once, at start, before the first request was served.
    assert_eq!(jwks.fetches(), 1);

    let ec = EncodingKey::from_ec_pem(&pem_key("ec-p256-private.pem")).expect("EC key");
    let ed = EncodingKey::from_ed_pem(&pem_key("ed25519-private.pem")).expect("Ed key");
    let no_kid = token(Algorithm::RS256, &rsa("rsa-other-private.pem"), None);
    for (name, tok) in [
        ("ES256 ec-1", token(Algorithm::ES256, &ec, Some("ec-1"))),
        (
            "EdDSA ed-1 (no alg in the JWK)",
            token(Algorithm::EdDSA, &ed, Some("ed-1")),
        ),
        ("no kid, static PEM key", no_kid),
    ] {
        assert_eq!(publish(&server, &tok).await, (202, String::new()), "{name}");
    }

    // The named key and only it: another key's signature is refused.
    let wrong = rs("rsa-other-private.pem", "rsa-1");
    assert_eq!(
        publish(&server, &wrong).await,
        (401, "bad_signature".into())
    );
    // The set's `oct` key is never used: HS tokens keep to the HS secret.
    let trap = EncodingKey::from_secret(b"herald-jwks-hmac-trap");
    let hs_trap = token(Algorithm::HS256, &trap, Some("hs-trap"));
    assert_eq!(
        publish(&server, &hs_trap).await,
        (401, "bad_signature".into())
    );
    // Valid key, missing right: still 403.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let read_only = jsonwebtoken::encode(
        &header,
        &json!({"sub": "r", "exp": jsonwebtoken::get_current_timestamp() + 60,
                "herald": {"subscribe": ["news/*"]}}),
        &rsa("rsa-private.pem"),
    )
    .expect("signs");
    assert_eq!(publish(&server, &read_only).await.0, 403);

    // Known kids never cause a fetch.
    assert_eq!(jwks.fetches(), 1);
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("herald_jwks_refreshes_total{result=\"ok\"}"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_kid_triggers_one_refresh_per_min_interval() {
    let jwks = JwksServer::start(Some(INITIAL)).await;
    let server = TestServer::start_with(with_jwks(jwks.url(), 300, 2)).await;
    jwks.wait_for("the startup fetch", |j| j.fetches() == 1)
        .await;
    // Let the minimum interval since the startup fetch pass.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let unknown = rs("rsa-private.pem", "nobody-1");
    assert_eq!(
        publish(&server, &unknown).await,
        (401, "unknown_key".into())
    );
    assert_eq!(jwks.fetches(), 2, "exactly one extra fetch");

    // Within the minimum interval: refused at once, no further fetch.
    for kid in ["nobody-2", "nobody-3", "nobody-1"] {
        let t = rs("rsa-private.pem", kid);
        assert_eq!(
            publish(&server, &t).await,
            (401, "unknown_key".into()),
            "{kid}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(jwks.fetches(), 2, "rate-limited");
    // Known kids are unaffected.
    assert_eq!(
        publish(&server, &rs("rsa-private.pem", "rsa-1")).await.0,
        202
    );
    assert_eq!(jwks.fetches(), 2);
    server.stop().await;
}

#[tokio::test]
async fn a_rotated_key_verifies_after_the_unknown_kid_refresh() {
    let jwks = JwksServer::start(Some(INITIAL)).await;
    let server = TestServer::start_with(with_jwks(jwks.url(), 300, 1)).await;
    jwks.wait_for("the startup fetch", |j| j.fetches() == 1)
        .await;
    let old = rs("rsa-private.pem", "rsa-1");
    assert_eq!(publish(&server, &old).await.0, 202);

    // The identity provider rotates: rsa-1 is gone, rsa-2 is new.
    jwks.serve(Some(ROTATED));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new = rs("rsa-other-private.pem", "rsa-2");
    // The first token naming rsa-2 refreshes the set and verifies at once.
    assert_eq!(publish(&server, &new).await, (202, String::new()));
    assert_eq!(jwks.fetches(), 2);
    assert_eq!(publish(&server, &new).await.0, 202);
    // The retired key no longer verifies.
    assert_eq!(publish(&server, &old).await, (401, "unknown_key".into()));
    server.stop().await;
}

#[tokio::test]
async fn a_jwks_down_at_start_is_picked_up_by_the_periodic_refresh() {
    let jwks = JwksServer::start(None).await;
    let server = TestServer::start_with(with_jwks(jwks.url(), 1, 1)).await;
    jwks.wait_for("the startup fetch", |j| j.fetches() >= 1)
        .await;

    // The server runs; tokens naming a kid fail until the set loads.
    let tok = rs("rsa-private.pem", "rsa-1");
    assert_eq!(publish(&server, &tok).await, (401, "unknown_key".into()));
    assert_eq!(server.get_json("/healthz").await["status"], "ok");

    // The endpoint comes up; with no token sent, the periodic refresh loads it.
    jwks.serve(Some(INITIAL));
    jwks.wait_for("a periodic fetch that succeeds", |j| j.served() >= 1)
        .await;
    assert_eq!(publish(&server, &tok).await, (202, String::new()));
    server.stop().await;
}

#[tokio::test]
async fn a_hanging_jwks_endpoint_delays_start_by_at_most_the_timeout() {
    // Accepts connections (the kernel backlog) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://{}/.well-known/jwks.json",
        silent.local_addr().expect("addr")
    );
    let started = Instant::now();
    let server = TestServer::start_with(|c| {
        with_jwks(url, 300, 30)(c);
        c.auth.jwks_timeout_secs = 1;
    })
    .await;
    assert_eq!(server.get_json("/healthz").await["status"], "ok");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "start took {waited:?}");
    // Within the minimum interval since the failed start fetch: no waiting.
    let before = Instant::now();
    let tok = rs("rsa-private.pem", "rsa-1");
    assert_eq!(publish(&server, &tok).await, (401, "unknown_key".into()));
    assert!(before.elapsed() < Duration::from_millis(900));
    server.stop().await;
    drop(silent);
}
