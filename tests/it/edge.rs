//! The secure edge's acceptance (issue 3), against the real server: every
//! token rejection with its reason code, each token source (and no query
//! token in the logs), rate and connection limits, CORS, slow and expiring
//! clients, fuzzing, `herald token` and the production config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald::auth::{DEV_SECRET, Secret};
use herald::config::Config;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// The HMAC secret of the test servers (long enough for production rules).
const SECRET: &str = "edge-acceptance-secret-0123456789abcdef-long";

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn key(name: &str) -> PathBuf {
    repo_path("tests/fixtures/keys").join(name)
}

/// Claims valid for an hour with the given rights.
fn claims(sub: &str, subscribe: &[&str], publish: &[&str]) -> Value {
    json!({
        "sub": sub,
        "exp": now() + 3600,
        "herald": {"subscribe": subscribe, "publish": publish},
    })
}

/// `claims` with fields changed by `edit`.
fn claims_with(base: &Value, edit: impl FnOnce(&mut Map<String, Value>)) -> Value {
    let mut c = base.clone();
    edit(c.as_object_mut().expect("claims are an object"));
    c
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("test token signs")
}

/// HS256 with the test servers' secret.
fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

/// RS256 with a fixture private key.
fn rs(private_key: &str, claims: &Value) -> String {
    let pem = std::fs::read(key(private_key)).expect("fixture key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("RSA private key");
    sign(Algorithm::RS256, &key, claims)
}

/// Unpadded base64url, to hand-build tokens.
fn b64url(input: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(input)
}

/// HS256 with the test servers' secret and a `crit` header member.
fn critical(claims: &Value, crit: &[&str]) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(crit.iter().map(|c| c.to_string()).collect());
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&header, claims, &key).expect("test token signs")
}

/// The three dot-separated parts of a JWS.
fn parts(token: &str) -> (&str, &str, &str) {
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) => (h, p, s),
        _ => panic!("not a JWS: {token}"),
    }
}

fn with_auth(c: &mut Config) {
    c.auth.enabled = true;
    c.auth.hs_secret = Some(Secret::new(SECRET));
}

fn bearer(token: &str) -> (String, String) {
    ("Authorization".to_string(), format!("Bearer {token}"))
}

// ---------------------------------------------------------------------------
// Raw HTTP and small client helpers
// ---------------------------------------------------------------------------

/// Extra request headers, as name and value.
type Headers = Vec<(String, String)>;

/// A response read from a raw socket: the head, and the body so far.
struct Raw {
    stream: TcpStream,
    status: u16,
    head: String,
    body: Vec<u8>,
    eof: bool,
}

impl Raw {
    /// `GET target` with extra headers. A 200 is read up to the stream's
    /// `retry:` preamble; any other answer is read to EOF.
    async fn get(addr: SocketAddr, target: &str, headers: &[(String, String)]) -> Raw {
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let stream = raw_get(addr, target, &extra).await;
        Self::read_response(stream).await
    }

    async fn read_response(mut stream: TcpStream) -> Raw {
        let bytes = read_until_count(&mut stream, b"\r\n\r\n", 1, WAIT).await;
        let end = find(&bytes, b"\r\n\r\n").unwrap_or_else(|| {
            panic!(
                "no response head: {:?}",
                String::from_utf8_lossy(&bytes).into_owned()
            )
        });
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let mut raw = Raw {
            stream,
            status,
            head,
            body: bytes[end + 4..].to_vec(),
            eof: false,
        };
        if status == 200 {
            assert!(
                raw.read_until(b"retry:", 1).await,
                "stream preamble: {}",
                raw.text()
            );
        } else {
            raw.read_to_eof(WAIT).await;
            assert!(raw.eof, "a {status} answer is followed by EOF");
        }
        raw
    }

    /// A response header, by case-insensitive name.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}\n{}", self.head, self.text()))
    }

    /// The JSON error's `code`.
    fn code(&self) -> String {
        error_code(&self.json())
    }

    /// Reads until `needle` occurs `count` times in the body; false on EOF
    /// or timeout.
    async fn read_until(&mut self, needle: &[u8], count: usize) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if count_occurrences(&self.body, needle) >= count {
                return true;
            }
            if self.eof {
                return false;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(n)) => self.body.extend_from_slice(&buf[..n]),
                Err(_) => return false,
            }
        }
    }

    async fn read_to_eof(&mut self, wait: Duration) {
        let (more, eof) = read_until_eof(&mut self.stream, wait).await;
        self.body.extend_from_slice(&more);
        self.eof = eof;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn error_code(body: &Value) -> String {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
        .to_string()
}

/// An HTTP answer read completely.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    async fn from(res: reqwest::Response) -> Reply {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    fn code(&self) -> String {
        error_code(&self.body)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `POST {base}/channels/{channel}/events` with `{"data": data}`.
async fn publish(
    http: &reqwest::Client,
    base: &str,
    channel: &str,
    token: Option<&str>,
    data: Value,
) -> Reply {
    let mut req = http
        .post(format!("{base}/channels/{channel}/events"))
        .json(&json!({ "data": data }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Reply::from(req.send().await.expect("publish request")).await
}

fn base(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "herald-edge-{}-{}-{name}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, contents).expect("write temp file");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the real binary to completion (bounded), with a clean environment.
async fn run_herald(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("herald {args:?} did not exit within {WAIT:?}"))
        .expect("run herald")
}

/// Sends SIGTERM and waits (bounded) for the exit; returns every log line.
async fn stop_process(mut server: ServerProcess) -> Vec<String> {
    server.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), server.child.wait())
        .await
        .expect("herald exits after SIGTERM")
        .expect("wait for herald");
    assert!(status.success(), "herald exit status {status}");
    let mut lines = Vec::new();
    // The pipes close with the process, which closes the log channel.
    while let Ok(Some(line)) = tokio::time::timeout(WAIT, server.logs.recv()).await {
        lines.push(line);
    }
    lines
}

// ---------------------------------------------------------------------------
// 1. Rejections
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_its_reason() {
    const AUD: &str = "herald";
    const ISS: &str = "https://issuer.test";
    let server = TestServer::start_with(|c| {
        with_auth(c);
        c.auth.audience = Some(AUD.into());
        c.auth.issuer = Some(ISS.into());
    })
    .await;
    let url = server.url("");
    let good = claims_with(&claims("alice", &["news/*"], &["news/*"]), |c| {
        c.insert("aud".into(), AUD.into());
        c.insert("iss".into(), ISS.into());
    });

    // Control: the well-formed token passes on both paths.
    let valid = hs(&good);
    let ok = Raw::get(server.addr, "/events?channel=news/a", &[bearer(&valid)]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let ok = publish(&server.http, &url, "news/a", Some(&valid), json!(1)).await;
    assert_eq!(ok.status, 202, "{}", ok.body);

    let payload = b64url(good.to_string().as_bytes());
    let (valid_header, _, valid_sig) = parts(&valid);
    let none = |alg: &str| b64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
    let escalated = claims_with(&good, |c| {
        c.insert(
            "herald".into(),
            json!({"subscribe": ["**"], "publish": ["**"]}),
        );
    });
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!("{}.{payload}.", none("none")),
            "alg_none",
        ),
        (
            "alg NoNe",
            format!("{}.{payload}.", none("NoNe")),
            "alg_none",
        ),
        (
            "alg none with a copied signature",
            format!("{}.{payload}.{valid_sig}", none("none")),
            "alg_none",
        ),
        (
            "an algorithm that is not pinned",
            sign(
                Algorithm::HS512,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                &good,
            ),
            "alg_not_allowed",
        ),
        (
            "expired",
            hs(&claims_with(&good, |c| {
                c.insert("exp".into(), (now() - 3600).into());
            })),
            "expired",
        ),
        (
            "nbf in the future",
            hs(&claims_with(&good, |c| {
                c.insert("nbf".into(), (now() + 3600).into());
            })),
            "not_yet_valid",
        ),
        (
            "wrong aud",
            hs(&claims_with(&good, |c| {
                c.insert("aud".into(), "someone-else".into());
            })),
            "bad_audience",
        ),
        (
            "missing aud",
            hs(&claims_with(&good, |c| {
                c.remove("aud");
            })),
            "bad_audience",
        ),
        (
            "wrong iss",
            hs(&claims_with(&good, |c| {
                c.insert("iss".into(), "https://evil.test".into());
            })),
            "bad_issuer",
        ),
        (
            "missing iss",
            hs(&claims_with(&good, |c| {
                c.remove("iss");
            })),
            "bad_issuer",
        ),
        (
            "tampered payload (rights widened, signature kept)",
            format!(
                "{valid_header}.{}.{valid_sig}",
                b64url(escalated.to_string().as_bytes())
            ),
            "bad_signature",
        ),
        (
            "signed with another secret",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-of-sufficient-length!!"),
                &good,
            ),
            "bad_signature",
        ),
        ("garbage", "not.a.jwt".to_string(), "malformed"),
        (
            "crit naming a header Herald does not know",
            critical(&good, &["x-unknown-extension"]),
            "unsupported_crit",
        ),
        (
            "iss as a list holding the configured issuer",
            hs(&claims_with(&good, |c| {
                c.insert("iss".into(), json!([ISS]));
            })),
            "bad_issuer",
        ),
    ];
    for (what, token, code) in &cases {
        let sub = Raw::get(server.addr, "/events?channel=news/a", &[bearer(token)]).await;
        assert_eq!(sub.status, 401, "subscribe, {what}: {}", sub.text());
        assert_eq!(sub.code(), *code, "subscribe, {what}");
        assert_eq!(sub.header("www-authenticate"), Some("Bearer"), "{what}");
        assert!(!sub.head.contains("text/event-stream"), "{what}");
        assert!(!sub.text().contains(token.as_str()), "token echoed: {what}");

        let res = publish(&server.http, &url, "news/a", Some(token), json!(1)).await;
        assert_eq!(res.status, 401, "publish, {what}: {}", res.body);
        assert_eq!(res.code(), *code, "publish, {what}");
    }
    server.stop().await;
}

/// `crit` (RFC 7515 §4.1.11) and an `iss` list (RFC 7519 §4.1.1 makes it
/// one string) are refused even where no issuer is configured, on both
/// paths, and counted as auth failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crit_headers_and_issuer_lists_are_refused_without_an_issuer_configured() {
    let server = TestServer::start_with(with_auth).await;
    let url = server.url("");
    let base = claims("alice", &["news/*"], &["news/*"]);
    let with_iss = |iss: Value| {
        hs(&claims_with(&base, |c| {
            c.insert("iss".into(), iss);
        }))
    };
    let failures = |reason: &'static str| {
        let (http, url) = (server.http.clone(), url.clone());
        async move {
            let series = format!("herald_auth_failures_total{{reason=\"{reason}\"}} ");
            metric(&http, &url, &series).await.unwrap_or(0.0)
        }
    };
    let (crit_before, iss_before) = (
        failures("unsupported_crit").await,
        failures("bad_issuer").await,
    );

    // Controls: a string iss is fine when none is configured.
    let fine = with_iss(json!("https://anyone.example"));
    let res = publish(&server.http, &url, "news/a", Some(&fine), json!(1)).await;
    assert_eq!(res.status, 202, "{}", res.body);
    let sub = Raw::get(server.addr, "/events?channel=news/a", &[bearer(&fine)]).await;
    assert_eq!(sub.status, 200, "{}", sub.text());

    let cases = [
        (critical(&base, &["b64"]), "unsupported_crit"),
        (
            critical(&base, &["x-unknown-extension"]),
            "unsupported_crit",
        ),
        (with_iss(json!(["https://anyone.example"])), "bad_issuer"),
        (
            with_iss(json!(["https://a.example", "https://b.example"])),
            "bad_issuer",
        ),
    ];
    for (token, code) in &cases {
        let res = publish(&server.http, &url, "news/a", Some(token), json!(1)).await;
        assert_eq!(
            (res.status, res.code().as_str()),
            (401, *code),
            "publish: {}",
            res.body
        );
        let sub = Raw::get(server.addr, "/events?channel=news/a", &[bearer(token)]).await;
        assert_eq!(
            (sub.status, sub.code()),
            (401, code.to_string()),
            "subscribe: {}",
            sub.text()
        );
        assert!(!sub.head.contains("text/event-stream"));
    }
    // Other tests share the process's recorder, so the counts only grow.
    assert!(failures("unsupported_crit").await >= crit_before + 4.0);
    assert!(failures("bad_issuer").await >= iss_before + 4.0);
    server.stop().await;
}

/// Every auth failure goes out with the status of its kind: 401 (with
/// `WWW-Authenticate`) for a token that is missing or refused, 403 for a
/// missing right, 503 for a config error (which validation stops at start,
/// so no server can be made to answer it), each with its code in the body.
#[tokio::test]
async fn every_auth_error_has_its_status() {
    use axum::response::IntoResponse;
    use herald::auth::AuthError;
    use herald::http::error::ApiError;

    let expect = [
        (AuthError::AlgNone, "alg_none", 401),
        (AuthError::AlgNotAllowed, "alg_not_allowed", 401),
        (AuthError::BadSignature, "bad_signature", 401),
        (AuthError::Expired, "expired", 401),
        (AuthError::NotYetValid, "not_yet_valid", 401),
        (AuthError::BadAudience, "bad_audience", 401),
        (AuthError::BadIssuer, "bad_issuer", 401),
        (AuthError::UnsupportedCrit, "unsupported_crit", 401),
        (AuthError::Malformed, "malformed", 401),
        (AuthError::MissingToken, "missing_token", 401),
        (AuthError::UnknownKey, "unknown_key", 401),
        (
            AuthError::Forbidden {
                action: "publish",
                channel: "x".into(),
            },
            "forbidden",
            403,
        ),
        (AuthError::Config("x".into()), "auth_config", 503),
    ];
    for (err, code, status) in expect {
        let res = ApiError::from(err).into_response();
        assert_eq!(res.status().as_u16(), status, "{code}");
        let challenge = res.headers().get("www-authenticate").cloned();
        assert_eq!(challenge.is_some(), status == 401, "{code}");
        let body = axum::body::to_bytes(res.into_body(), 64 * 1024)
            .await
            .expect("an error body is small");
        let body: Value = serde_json::from_slice(&body).expect("a JSON error body");
        assert_eq!(error_code(&body), code);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs_rs_key_confusion_is_refused() {
    let public_pem = std::fs::read(key("rsa-public.pem")).expect("public key");
    let all = claims("mallory", &["**"], &["**"]);
    // The attack: HS256 with the (public) RSA key as the HMAC secret.
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        &all,
    );

    // Pinned to RS256 only: HS256 is not even considered.
    let rs_only = TestServer::start_with(|c| {
        c.auth.enabled = true;
        c.auth.algorithms = vec!["RS256".into()];
        c.auth.public_key_files = vec![key("rsa-public.pem")];
    })
    .await;
    let url = rs_only.url("");
    let res = publish(&rs_only.http, &url, "x", Some(&forged), json!(1)).await;
    assert_eq!((res.status, res.code().as_str()), (401, "alg_not_allowed"));
    let sub = Raw::get(rs_only.addr, "/events?channel=x", &[bearer(&forged)]).await;
    assert_eq!((sub.status, sub.code().as_str()), (401, "alg_not_allowed"));
    // Controls: the right key works, another RSA key does not.
    let genuine = rs("rsa-private.pem", &all);
    let res = publish(&rs_only.http, &url, "x", Some(&genuine), json!(1)).await;
    assert_eq!(res.status, 202, "{}", res.body);
    let other = rs("rsa-other-private.pem", &all);
    let res = publish(&rs_only.http, &url, "x", Some(&other), json!(1)).await;
    assert_eq!((res.status, res.code().as_str()), (401, "bad_signature"));
    rs_only.stop().await;

    // Both families pinned: HS256 is verified with the HMAC secret only,
    // never with the PEM.
    let both = TestServer::start_with(|c| {
        with_auth(c);
        c.auth.algorithms = vec!["HS256".into(), "RS256".into()];
        c.auth.public_key_files = vec![key("rsa-public.pem")];
    })
    .await;
    let url = both.url("");
    let res = publish(&both.http, &url, "x", Some(&forged), json!(1)).await;
    assert_eq!((res.status, res.code().as_str()), (401, "bad_signature"));
    for token in [genuine, hs(&all)] {
        let res = publish(&both.http, &url, "x", Some(&token), json!(1)).await;
        assert_eq!(res.status, 202, "{}", res.body);
    }
    both.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_without_the_right_is_forbidden() {
    let server = TestServer::start_with(with_auth).await;
    let url = server.url("");
    let token = hs(&claims("alice", &["news/*"], &["news/*"]));

    let res = publish(&server.http, &url, "news/x", Some(&token), json!(1)).await;
    assert_eq!(res.status, 202, "{}", res.body);
    for channel in ["other/x", "news/x/deeper", "news"] {
        let res = publish(&server.http, &url, channel, Some(&token), json!(1)).await;
        assert_eq!(res.status, 403, "publish {channel}: {}", res.body);
        assert_eq!(res.code(), "forbidden");
        let target = format!("/events?channel={channel}");
        let sub = Raw::get(server.addr, &target, &[bearer(&token)]).await;
        assert_eq!(sub.status, 403, "subscribe {channel}: {}", sub.text());
        assert_eq!(sub.code(), "forbidden");
    }
    // No token at all is a 401, not a 403.
    let res = publish(&server.http, &url, "news/x", None, json!(1)).await;
    assert_eq!((res.status, res.code().as_str()), (401, "missing_token"));
    let sub = Raw::get(server.addr, "/events?channel=news/x", &[]).await;
    assert_eq!((sub.status, sub.code().as_str()), (401, "missing_token"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_channels_with_a_right_to_one_streams_nothing() {
    let server = TestServer::start_with(with_auth).await;
    let token = hs(&claims("alice", &["news/*"], &["news/*"]));
    for target in [
        "/events?channel=news/a&channel=sport/a",
        "/events?channel=sport/a&channel=news/a",
    ] {
        let raw = Raw::get(server.addr, target, &[bearer(&token)]).await;
        assert_eq!(raw.status, 403, "{target}: {}", raw.text());
        assert_eq!(raw.code(), "forbidden");
        assert!(
            raw.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "{}",
            raw.head
        );
        assert!(raw.eof, "the connection ends after the error");
        let body = raw.text();
        assert!(
            !body.contains("retry:") && !body.contains("data:"),
            "{body}"
        );
        assert!(
            raw.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("sport/a"))
        );
    }
    // No subscription was made on the allowed channel either.
    let stats = Reply::from(
        server
            .http
            .get(server.url("/channels/news/a"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("stats"),
    )
    .await;
    match stats.status {
        404 => {}
        200 => assert_eq!(stats.body["subscribers"], 0, "{}", stats.body),
        s => panic!("stats: {s} {}", stats.body),
    }
    // Control: two channels the token covers do stream.
    let ok = Raw::get(
        server.addr,
        "/events?channel=news/a&channel=news/b",
        &[bearer(&token)],
    )
    .await;
    assert_eq!(ok.status, 200);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Token sources
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_cookie_and_query_tokens_all_work() {
    let server = TestServer::start_with(with_auth).await;
    let url = server.url("");
    let token = hs(&claims("alice", &["news/*"], &["news/*"]));
    let sources: Vec<(&str, String, Headers)> = vec![
        ("header", "news/h".into(), vec![bearer(&token)]),
        (
            "cookie",
            "news/c".into(),
            vec![(
                "Cookie".into(),
                format!("theme=dark; herald_token={token}; x=y"),
            )],
        ),
        ("query", "news/q".into(), vec![]),
    ];
    for (source, channel, headers) in sources {
        let target = if source == "query" {
            format!("/events?channel={channel}&access_token={token}")
        } else {
            format!("/events?channel={channel}")
        };
        let mut raw = Raw::get(server.addr, &target, &headers).await;
        assert_eq!(raw.status, 200, "{source}: {}", raw.text());
        let res = publish(
            &server.http,
            &url,
            &channel,
            Some(&token),
            json!({"via": source}),
        )
        .await;
        assert_eq!(res.status, 202, "{}", res.body);
        let expected = format!("data: {{\"via\":\"{source}\"}}");
        assert!(
            raw.read_until(expected.as_bytes(), 1).await,
            "{source}: {}",
            raw.text()
        );
    }
    // The query token also authorizes a publish.
    let res = Reply::from(
        server
            .http
            .post(server.url(&format!("/channels/news/q/events?access_token={token}")))
            .json(&json!({"data": 1}))
            .send()
            .await
            .expect("publish"),
    )
    .await;
    assert_eq!(res.status, 202, "{}", res.body);
    // A bad token in an earlier source is an error, never skipped.
    let bad = format!("{}x", token);
    let raw = Raw::get(
        server.addr,
        "/events?channel=news/h",
        &[
            bearer(&bad),
            ("Cookie".into(), format!("herald_token={token}")),
        ],
    )
    .await;
    assert_eq!((raw.status, raw.code().as_str()), (401, "bad_signature"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_name_and_query_source_follow_config() {
    let server = TestServer::start_with(|c| {
        with_auth(c);
        c.auth.cookie_name = "sess".into();
        c.auth.query_param_enabled = false;
    })
    .await;
    let token = hs(&claims("alice", &["news/*"], &[]));
    let raw = Raw::get(
        server.addr,
        "/events?channel=news/a",
        &[("Cookie".into(), format!("sess={token}"))],
    )
    .await;
    assert_eq!(raw.status, 200, "{}", raw.text());
    let raw = Raw::get(
        server.addr,
        "/events?channel=news/a",
        &[("Cookie".into(), format!("herald_token={token}"))],
    )
    .await;
    assert_eq!((raw.status, raw.code().as_str()), (401, "missing_token"));
    let target = format!("/events?channel=news/a&access_token={token}");
    let raw = Raw::get(server.addr, &target, &[]).await;
    assert_eq!((raw.status, raw.code().as_str()), (401, "missing_token"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_tokens_never_reach_the_logs() {
    let config = TempFile::new(
        "query-logs.toml",
        r#"
[auth]
enabled = true
algorithms = ["HS256"]
anonymous_subscribe = ["public/**"]

[telemetry]
log_format = "json"
log_filter = "debug"
"#,
    );
    let server = ServerProcess::spawn(
        &["--config", config.path()],
        &[("RUST_LOG", "debug"), ("HERALD_JWT_SECRET", SECRET)],
    )
    .await;
    let http = client();
    let url = base(server.addr);
    let good = hs(&claims("alice", &["news/*"], &["news/*"]));
    let expired = hs(&claims_with(&claims("alice", &["news/*"], &[]), |c| {
        c.insert("exp".into(), (now() - 3600).into());
    }));
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"not-the-server-secret-but-long-enough"),
        &claims("alice", &["**"], &["**"]),
    );

    // Success: a stream, and a publish that reaches it.
    let target = format!("/events?channel=news/a&access_token={good}");
    let mut stream = Raw::get(server.addr, &target, &[]).await;
    assert_eq!(stream.status, 200, "{}", stream.text());
    let res = Reply::from(
        http.post(format!("{url}/channels/news/a/events?access_token={good}"))
            .json(&json!({"data": "hello"}))
            .send()
            .await
            .expect("publish"),
    )
    .await;
    assert_eq!(res.status, 202, "{}", res.body);
    assert!(stream.read_until(b"data: hello", 1).await);
    drop(stream);

    // Failures on both connection paths.
    let failing = [
        (format!("/events?channel=secret/x&access_token={good}"), 403),
        (
            format!("/events?channel=news/a&access_token={expired}"),
            401,
        ),
        (format!("/events?channel=news/a&access_token={forged}"), 401),
        (
            format!("/events?channel=bad%20name&access_token={good}"),
            400,
        ),
        (format!("/events?access_token={good}"), 400),
        (
            format!("/events?channel=public/x&access_token={forged}"),
            401,
        ),
    ];
    for (target, status) in &failing {
        let raw = Raw::get(server.addr, target, &[]).await;
        assert_eq!(raw.status, *status, "{target}: {}", raw.text());
        for t in [&good, &expired, &forged] {
            assert!(!raw.text().contains(t.as_str()), "token in the answer");
        }
    }
    for (path, status) in [
        (
            format!("/channels/secret/x/events?access_token={good}"),
            403,
        ),
        (
            format!("/channels/news/x/events?access_token={forged}"),
            401,
        ),
        (
            format!("/channels/news/x/events?access_token={expired}"),
            401,
        ),
        (format!("/nowhere?access_token={good}"), 404),
    ] {
        let res = http
            .post(format!("{url}{path}"))
            .json(&json!({"data": 1}))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status().as_u16(), status, "{path}");
    }
    // A malformed request head carrying the token.
    let mut raw = TcpStream::connect(server.addr).await.expect("connect");
    let head =
        format!("GET /events?channel=news/a&access_token={good} HTTP/1.1\r\nBad Header\r\n\r\n");
    raw.write_all(head.as_bytes()).await.expect("send");
    let (answer, _) = read_until_eof(&mut raw, WAIT).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"));

    let logs = stop_process(server).await;
    assert!(
        logs.iter().any(|l| l.contains("stream opened")),
        "debug logs were not on: {logs:#?}"
    );
    for token in [&good, &expired, &forged] {
        let (_, _, signature) = parts(token);
        for line in &logs {
            assert!(!line.contains(token.as_str()), "token logged: {line}");
            assert!(!line.contains(signature), "signature logged: {line}");
        }
    }
}

// ---------------------------------------------------------------------------
// 3. Limits
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_burst_then_429_then_recovery() {
    let server = TestServer::start_with(|c| {
        with_auth(c);
        c.limits.publish_per_second = 1;
        c.limits.publish_burst = 3;
    })
    .await;
    let url = server.url("");
    let alice = hs(&claims("alice", &[], &["**"]));
    let bob = hs(&claims("bob", &[], &["**"]));
    for i in 0..3 {
        let res = publish(&server.http, &url, "rate", Some(&alice), json!(i)).await;
        assert_eq!(res.status, 202, "publish {i} of the burst: {}", res.body);
    }
    let limited = publish(&server.http, &url, "rate", Some(&alice), json!(3)).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.code(), "rate_limited");
    let retry_after: u64 = limited
        .header("retry-after")
        .expect("Retry-After header")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=3).contains(&retry_after), "Retry-After {retry_after}");
    // Limits are per subject: bob is unaffected.
    let res = publish(&server.http, &url, "rate", Some(&bob), json!("bob")).await;
    assert_eq!(res.status, 202, "{}", res.body);
    // A batch larger than the burst can never pass.
    let batch = Reply::from(
        server
            .http
            .post(server.url("/channels/rate/events/batch"))
            .bearer_auth(&bob)
            .json(&json!({"events": [{"data": 1}, {"data": 2}, {"data": 3}, {"data": 4}]}))
            .send()
            .await
            .expect("batch"),
    )
    .await;
    assert_eq!((batch.status, batch.code().as_str()), (429, "rate_limited"));

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let res = publish(&server.http, &url, "rate", Some(&alice), json!(4)).await;
    assert_eq!(res.status, 202, "after Retry-After: {}", res.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_limit_env_keys_work_on_the_real_binary() {
    let server = ServerProcess::spawn(
        &[],
        &[
            ("HERALD_LIMITS__PUBLISH_PER_SECOND", "1"),
            ("HERALD_LIMITS__PUBLISH_BURST", "2"),
        ],
    )
    .await;
    let http = client();
    let url = base(server.addr);
    for i in 0..2 {
        let res = publish(&http, &url, "env", None, json!(i)).await;
        assert_eq!(res.status, 202, "{}", res.body);
    }
    let res = publish(&http, &url, "env", None, json!(2)).await;
    assert_eq!((res.status, res.code().as_str()), (429, "rate_limited"));
    assert!(res.header("retry-after").is_some());
    stop_process(server).await;
}

/// Opens streams until one is refused; returns the open ones and the refusal.
async fn open_until_refused(
    addr: SocketAddr,
    target: &str,
    headers: &[(String, String)],
    max: usize,
) -> (Vec<Raw>, Raw) {
    let mut open = Vec::new();
    for _ in 0..max {
        let raw = Raw::get(addr, target, headers).await;
        if raw.status != 200 {
            return (open, raw);
        }
        open.push(raw);
    }
    panic!("{max} streams opened and none was refused");
}

/// After a slot frees, polls (bounded) until a new stream is admitted.
async fn admitted_again(addr: SocketAddr, target: &str, headers: &[(String, String)]) -> Raw {
    let deadline = Instant::now() + WAIT;
    loop {
        let raw = Raw::get(addr, target, headers).await;
        if raw.status == 200 {
            return raw;
        }
        assert_eq!(raw.status, 429, "{}", raw.text());
        assert!(
            Instant::now() < deadline,
            "no stream admitted after a slot was freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_stream_limited(raw: &Raw, limit: &str, retry_after: &str) {
    assert_eq!(raw.status, 429, "{}", raw.text());
    assert_eq!(raw.code(), "rate_limited");
    assert_eq!(raw.header("retry-after"), Some(retry_after), "{}", raw.head);
    let message = raw.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(message.contains(limit), "{limit}: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_per_ip_are_capped() {
    let server = TestServer::start_with(|c| {
        c.limits.max_streams_per_ip = 2;
        c.limits.stream_retry_after_secs = 7;
    })
    .await;
    let (mut open, refused) = open_until_refused(server.addr, "/events?channel=cap", &[], 5).await;
    assert_eq!(open.len(), 2, "exactly two streams fit");
    assert_stream_limited(&refused, "streams_per_ip", "7");
    // The open streams still work.
    server.publish("cap", json!("still here")).await;
    for s in &mut open {
        assert!(s.read_until(b"data: still here", 1).await);
    }
    drop(open.pop());
    let again = admitted_again(server.addr, "/events?channel=cap", &[]).await;
    let third = Raw::get(server.addr, "/events?channel=cap", &[]).await;
    assert_stream_limited(&third, "streams_per_ip", "7");
    drop((open, again));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_connection_cap_holds() {
    let server = TestServer::start_with(|c| {
        c.limits.max_connections = 2;
        c.limits.max_streams_per_ip = 0;
    })
    .await;
    let (mut open, refused) =
        open_until_refused(server.addr, "/events?channel=global", &[], 5).await;
    assert_eq!(open.len(), 2);
    assert_stream_limited(&refused, "connections", "5");
    // Non-streaming requests are not counted.
    assert_eq!(server.get_json("/healthz").await["status"], "ok");
    drop(open.pop());
    let again = admitted_again(server.addr, "/events?channel=global", &[]).await;
    drop((open, again));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_per_subject_are_capped() {
    let server = TestServer::start_with(|c| {
        with_auth(c);
        c.limits.max_streams_per_subject = 1;
    })
    .await;
    let alice = vec![bearer(&hs(&claims("alice", &["**"], &[])))];
    let bob = vec![bearer(&hs(&claims("bob", &["**"], &[])))];
    let (open, refused) = open_until_refused(server.addr, "/events?channel=s", &alice, 3).await;
    assert_eq!(open.len(), 1);
    assert_stream_limited(&refused, "streams_per_subject", "5");
    let b = Raw::get(server.addr, "/events?channel=s", &bob).await;
    assert_eq!(b.status, 200, "another subject is not affected");
    drop(open);
    let again = admitted_again(server.addr, "/events?channel=s", &alice).await;
    drop((b, again));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_streams_per_ip_are_rate_limited() {
    let server = TestServer::start_with(|c| {
        c.limits.streams_per_ip_per_second = 1;
        c.limits.streams_per_ip_burst = 2;
    })
    .await;
    // The burst of two is admitted; at one per second, a third opened right
    // after is refused (a slow machine may earn one more, hence the loop).
    let (open, refused) = open_until_refused(server.addr, "/events?channel=n", &[], 6).await;
    assert!(open.len() >= 2, "the burst is admitted");
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.code(), "rate_limited");
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(message.contains("new_streams"), "{message}");
    let secs: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let again = Raw::get(server.addr, "/events?channel=n", &[]).await;
    assert_eq!(again.status, 200, "{}", again.text());
    drop((open, again));
    server.stop().await;
}

// ---------------------------------------------------------------------------
// 4. CORS
// ---------------------------------------------------------------------------

const APP_ORIGIN: &str = "https://app.example.com";

async fn preflight(
    server: &TestServer,
    path: &str,
    origin: &str,
    method: &str,
    headers: &str,
) -> reqwest::Response {
    server
        .http
        .request(reqwest::Method::OPTIONS, server.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers)
        .send()
        .await
        .expect("preflight")
}

fn header_list(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_from_allowed_and_disallowed_origins() {
    let server = TestServer::start_with(|c| {
        with_auth(c);
        c.cors.allowed_origins = vec![APP_ORIGIN.into()];
        c.cors.allow_credentials = true;
    })
    .await;
    let token = hs(&claims("alice", &["news/*"], &["news/*"]));

    // Publishing with an Authorization header.
    let res = preflight(
        &server,
        "/channels/news/a/events",
        APP_ORIGIN,
        "POST",
        "authorization,content-type",
    )
    .await;
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(header_list(&res, "access-control-allow-origin"), APP_ORIGIN);
    assert_eq!(
        header_list(&res, "access-control-allow-credentials"),
        "true"
    );
    assert!(header_list(&res, "access-control-allow-methods").contains("post"));
    let allowed = header_list(&res, "access-control-allow-headers");
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert!(header_list(&res, "vary").contains("origin"));

    // EventSource reconnecting with Last-Event-ID and credentials.
    let res = preflight(&server, "/events", APP_ORIGIN, "GET", "last-event-id").await;
    assert!(res.status().is_success());
    assert_eq!(header_list(&res, "access-control-allow-origin"), APP_ORIGIN);
    assert_eq!(
        header_list(&res, "access-control-allow-credentials"),
        "true"
    );
    assert!(header_list(&res, "access-control-allow-headers").contains("last-event-id"));

    // The credentialed requests themselves carry the CORS headers.
    let res = server
        .http
        .get(server.url("/events?channel=news/a"))
        .header("origin", APP_ORIGIN)
        .header("cookie", format!("herald_token={token}"))
        .send()
        .await
        .expect("credentialed EventSource");
    assert_eq!(res.status(), 200);
    assert_eq!(header_list(&res, "access-control-allow-origin"), APP_ORIGIN);
    assert_eq!(
        header_list(&res, "access-control-allow-credentials"),
        "true"
    );
    drop(res);
    let res = server
        .http
        .post(server.url("/channels/news/a/events"))
        .header("origin", APP_ORIGIN)
        .bearer_auth(&token)
        .json(&json!({"data": 1}))
        .send()
        .await
        .expect("cross-origin publish");
    assert_eq!(res.status(), 202);
    assert_eq!(header_list(&res, "access-control-allow-origin"), APP_ORIGIN);
    assert!(header_list(&res, "access-control-expose-headers").contains("retry-after"));

    // Disallowed origins get no Access-Control-Allow-Origin at all.
    for origin in [
        "https://evil.example.com",
        "null",
        "https://app.example.com.evil.test",
    ] {
        let res = preflight(
            &server,
            "/channels/news/a/events",
            origin,
            "POST",
            "authorization",
        )
        .await;
        assert!(
            res.headers().get("access-control-allow-origin").is_none(),
            "{origin}: {:?}",
            res.headers()
        );
        let res = server
            .http
            .get(server.url("/events?channel=news/a"))
            .header("origin", origin)
            .header("cookie", format!("herald_token={token}"))
            .send()
            .await
            .expect("cross-origin EventSource");
        assert!(res.headers().get("access-control-allow-origin").is_none());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_wildcard_without_credentials() {
    let server = TestServer::start_with(|c| c.cors.allowed_origins = vec!["*".into()]).await;
    let res = preflight(
        &server,
        "/channels/a/events",
        "https://any.test",
        "POST",
        "content-type",
    )
    .await;
    assert_eq!(header_list(&res, "access-control-allow-origin"), "*");
    assert!(
        res.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_origin_with_credentials_is_refused() {
    let mut cfg = Config::default();
    cfg.cors.allowed_origins = vec!["*".into()];
    cfg.cors.allow_credentials = true;
    let err = cfg.validate().expect_err("wildcard with credentials");
    assert!(err.to_string().contains("allow_credentials"), "{err}");

    let refused = TempFile::new(
        "cors-star-creds.toml",
        "[cors]\nallowed_origins = [\"*\"]\nallow_credentials = true\n",
    );
    let out = run_herald(&["check-config", refused.path()], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-config accepted it: {stderr}");
    assert!(stderr.contains("allow_credentials"), "{stderr}");
    // Control: the same file without credentials passes.
    let accepted = TempFile::new("cors-star.toml", "[cors]\nallowed_origins = [\"*\"]\n");
    let out = run_herald(&["check-config", accepted.path()], &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// 5. Slow and expiring clients
// ---------------------------------------------------------------------------

/// Partial request heads: one served by the lean `GET /events` path, one
/// by hyper.
const SLOW_OPENINGS: [&str; 2] = [
    "GET /events?channel=a HTTP/1.1\r\nHost: x\r\n",
    "POST /channels/a/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_are_closed_after_the_header_timeout() {
    let server = TestServer::start_with(|c| c.http.header_read_timeout_secs = 1).await;
    // The third stalls before the server can even tell which path it takes.
    for opening in SLOW_OPENINGS.into_iter().chain(["GET /ev"]) {
        let mut conn = TcpStream::connect(server.addr).await.expect("connect");
        conn.write_all(opening.as_bytes()).await.expect("send");
        let started = Instant::now();
        let (bytes, eof) = read_until_eof(&mut conn, Duration::from_secs(5)).await;
        let took = started.elapsed();
        assert!(eof, "{opening:?}: still open after 5 s");
        assert!(
            took >= Duration::from_millis(500),
            "{opening:?}: closed after {took:?}, before the timeout"
        );
        let answer = String::from_utf8_lossy(&bytes);
        assert!(
            !answer.contains(" 200 ") && !answer.contains(" 202 "),
            "{answer}"
        );
    }
    // Control: a head completed within the timeout is served.
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    conn.write_all(SLOW_OPENINGS[0].as_bytes())
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.write_all(b"\r\n").await.expect("send");
    let raw = Raw::read_response(conn).await;
    assert_eq!(raw.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_heads_are_closed_after_the_header_timeout() {
    let server = TestServer::start_with(|c| c.http.header_read_timeout_secs = 1).await;
    // The last one trickles through the very first bytes, before the server
    // can tell which path serves it.
    let cases = [
        (SLOW_OPENINGS[0], "X-Slow: "),
        (SLOW_OPENINGS[1], "X-Slow: "),
        ("", "GET /events?channel=a HTTP/1.1\r\nX-Slow: "),
    ];
    for (opening, trickled) in cases {
        let conn = TcpStream::connect(server.addr).await.expect("connect");
        let (mut read, mut write) = conn.into_split();
        write.write_all(opening.as_bytes()).await.expect("send");
        // One more byte every 100 ms: progress, but never a full head.
        let trickle = tokio::spawn(async move {
            let bytes = trickled.as_bytes().iter().chain(std::iter::repeat(&b'a'));
            for &byte in bytes.take(100) {
                if write.write_all(&[byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 1024];
        let eof = loop {
            match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => {}
                Err(_) => break false,
            }
        };
        trickle.abort();
        assert!(
            eof,
            "{opening:?} + {trickled:?}: a trickling client kept the connection 5 s"
        );
        assert!(started.elapsed() >= Duration::from_millis(500));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_ends_the_stream_with_a_refresh_event() {
    let server = TestServer::start_with(|c| {
        with_auth(c);
        c.sse.retry_ms = 2500;
    })
    .await;
    let short = claims_with(&claims("alice", &["news/*"], &["news/*"]), |c| {
        c.insert("exp".into(), (now() + 2).into());
    });
    let token = hs(&short);
    let started = Instant::now();
    let mut raw = Raw::get(server.addr, "/events?channel=news/exp", &[bearer(&token)]).await;
    assert_eq!(raw.status, 200, "{}", raw.text());
    // Events still flow until expiry.
    let res = publish(
        &server.http,
        &server.url(""),
        "news/exp",
        Some(&token),
        json!("before"),
    )
    .await;
    assert_eq!(res.status, 202);
    raw.read_to_eof(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(raw.eof, "the stream did not end: {}", raw.text());
    assert!(took >= Duration::from_millis(500), "ended after {took:?}");
    let text = raw.text();
    assert!(text.contains("data: before"), "{text}");
    let expired = text
        .find("event: herald.token_expired\ndata: ")
        .unwrap_or_else(|| panic!("no token_expired event: {text}"));
    let data_line = text[expired..].lines().nth(1).unwrap_or("");
    let data: Value =
        serde_json::from_str(data_line.trim_start_matches("data: ")).expect("JSON data");
    assert_eq!(data["reason"], "token_expired");
    assert!(
        text[expired..].ends_with("\n\nretry: 2500\n\n"),
        "the retry hint is last: {text:?}"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------
// 6. Fuzzing
// ---------------------------------------------------------------------------

/// One server shared by every case of a property.
struct Fuzz {
    rt: tokio::runtime::Runtime,
    server: Option<TestServer>,
    http: reqwest::Client,
    token: String,
}

impl Fuzz {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt.block_on(TestServer::start_with(|c| {
            with_auth(c);
            c.auth.anonymous_subscribe = vec!["public/**".into()];
            c.auth.anonymous_publish = vec!["public/**".into()];
            c.http.max_body_bytes = 16 * 1024;
            c.hub.max_event_bytes = 8 * 1024;
            c.http.header_read_timeout_secs = 2;
        }));
        Self {
            rt,
            server: Some(server),
            http: client(),
            token: hs(&claims("fuzzer", &["**"], &["**"])),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().expect("running").addr
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// Runs `cases` cases of `test` over `strategy`; panics on a failure.
    fn run<S: Strategy>(&self, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
        let mut runner = TestRunner::new(ProptestConfig {
            cases: 96,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        if let Err(e) = runner.run(&strategy, test) {
            panic!("{e}");
        }
    }

    /// Sends a request; the answer must come, and be a 2xx or 4xx.
    async fn answer(&self, req: reqwest::RequestBuilder, what: &str) -> Result<u16, TestCaseError> {
        let res = match tokio::time::timeout(WAIT, req.send()).await {
            Err(_) => return Err(TestCaseError::fail(format!("{what}: no answer"))),
            Ok(Err(e)) => return Err(TestCaseError::fail(format!("{what}: {e:?}"))),
            Ok(Ok(res)) => res,
        };
        let status = res.status();
        prop_assert!(
            status.is_success() || status.is_client_error(),
            "{}: status {}",
            what,
            status
        );
        Ok(status.as_u16())
    }

    /// The server still answers, publishes and streams.
    fn assert_healthy(mut self) {
        let server = self.server.take().expect("running");
        self.rt.block_on(async {
            let res = self
                .http
                .get(server.url("/healthz"))
                .send()
                .await
                .expect("healthz");
            assert_eq!(res.status(), 200);
            let mut raw = Raw::get(server.addr, "/events?channel=public/health", &[]).await;
            assert_eq!(raw.status, 200);
            server.publish("public/health", json!("alive")).await;
            assert!(raw.read_until(b"data: alive", 1).await, "{}", raw.text());
            drop(raw);
            server.stop().await;
        });
    }
}

/// Percent-encodes every byte but unreserved ones (and `/` when asked).
fn pct(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn header_value(prefix: &str, bytes: &[u8]) -> Option<reqwest::header::HeaderValue> {
    let mut v = prefix.as_bytes().to_vec();
    v.extend_from_slice(bytes);
    reqwest::header::HeaderValue::from_bytes(&v).ok()
}

/// Arbitrary bytes, arbitrary text, and text shaped like the real thing.
fn fuzz_bytes(shaped: impl Strategy<Value = String> + 'static) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        ".{0,120}".prop_map(String::into_bytes),
        shaped.prop_map(String::into_bytes),
    ]
    .boxed()
}

fn token_strategy(valid: String) -> BoxedStrategy<Vec<u8>> {
    let jws_like = prop::collection::vec("[A-Za-z0-9_=+/-]{0,60}", 0..5).prop_map(|p| p.join("."));
    let len = valid.len();
    let mutated = (0..len, 1u8..=255).prop_map(move |(i, x)| {
        let mut bytes = valid.clone().into_bytes();
        bytes[i] ^= x;
        bytes
    });
    prop_oneof![fuzz_bytes(jws_like), mutated].boxed()
}

#[test]
fn fuzz_tokens() {
    let fx = Fuzz::start();
    fx.run(token_strategy(fx.token.clone()), |token| {
        fx.rt.block_on(async {
            let q = pct(&token, false);
            let req = fx
                .http
                .get(fx.url(&format!("/events?channel=public/a&access_token={q}")));
            fx.answer(req, "query token").await?;
            let req = fx
                .http
                .get(fx.url(&format!("/events?channel=news/a&access_token={q}")));
            fx.answer(req, "query token, private channel").await?;
            if let Some(v) = header_value("Bearer ", &token) {
                let req = fx
                    .http
                    .get(fx.url("/events?channel=news/a"))
                    .header("authorization", v.clone());
                fx.answer(req, "header token").await?;
                let req = fx
                    .http
                    .post(fx.url("/channels/news/a/events"))
                    .header("authorization", v)
                    .json(&json!({"data": 1}));
                fx.answer(req, "header token, publish").await?;
            }
            if let Some(v) = header_value("herald_token=", &token) {
                let req = fx
                    .http
                    .get(fx.url("/events?channel=news/a"))
                    .header("cookie", v);
                fx.answer(req, "cookie token").await?;
            }
            Ok(())
        })
    });
    fx.assert_healthy();
}

#[test]
fn fuzz_last_event_ids() {
    let fx = Fuzz::start();
    // Publish once so resumes have a ring to look at.
    fx.rt.block_on(async {
        fx.server
            .as_ref()
            .expect("running")
            .publish("public/a", json!(1))
            .await;
    });
    let shaped = "[0-9]{0,20}-[0-9]{0,20}(-[0-9]{0,5})?";
    fx.run(fuzz_bytes(shaped), |id| {
        fx.rt.block_on(async {
            if let Some(v) = header_value("", &id) {
                let req = fx
                    .http
                    .get(fx.url("/events?channel=public/a"))
                    .header("last-event-id", v);
                fx.answer(req, "Last-Event-ID header").await?;
            }
            let q = pct(&id, false);
            let req = fx
                .http
                .get(fx.url(&format!("/events?channel=public/a&lastEventId={q}")));
            fx.answer(req, "lastEventId query").await?;
            Ok(())
        })
    });
    fx.assert_healthy();
}

#[test]
fn fuzz_channel_names() {
    let fx = Fuzz::start();
    let shaped = "(public/)?[a-zA-Z0-9_.:*/%-]{0,40}";
    fx.run(fuzz_bytes(shaped), |name| {
        fx.rt.block_on(async {
            let q = pct(&name, false);
            let path = pct(&name, true);
            let req = fx.http.get(fx.url(&format!("/events?channel={q}")));
            fx.answer(req, "subscribe, anonymous").await?;
            let req = fx
                .http
                .get(fx.url(&format!("/events?channel=public/a&channel={q}")))
                .bearer_auth(&fx.token);
            fx.answer(req, "subscribe, token").await?;
            let req = fx
                .http
                .post(fx.url(&format!("/channels/{path}/events")))
                .bearer_auth(&fx.token)
                .json(&json!({"data": 1}));
            fx.answer(req, "publish").await?;
            let req = fx
                .http
                .post(fx.url(&format!("/channels/{path}/events")))
                .json(&json!({"data": 1}));
            fx.answer(req, "publish, anonymous").await?;
            let req = fx
                .http
                .get(fx.url(&format!("/channels/{path}")))
                .bearer_auth(&fx.token);
            fx.answer(req, "stats").await?;
            Ok(())
        })
    });
    fx.assert_healthy();
}

fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

fn publish_body() -> impl Strategy<Value = Vec<u8>> {
    let event = (
        json_value(),
        prop::option::of(".{0,80}"),
        prop::option::of(json_value()),
    )
        .prop_map(|(data, event, id)| {
            let mut body = json!({ "data": data });
            if let Some(e) = event {
                body["event"] = e.into();
            }
            if let Some(id) = id {
                body["id"] = id;
            }
            body
        })
        .boxed();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        ".{0,200}".prop_map(String::into_bytes),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        event.clone().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(event, 0..5)
            .prop_map(|events| json!({ "events": events }).to_string().into_bytes()),
    ]
}

#[test]
fn fuzz_publish_bodies() {
    let fx = Fuzz::start();
    let content_types = prop_oneof![
        Just(None),
        Just(Some("application/json")),
        Just(Some("application/json; charset=utf-8")),
        Just(Some("text/plain")),
    ];
    let strategy = (publish_body(), content_types, any::<bool>(), any::<bool>());
    fx.run(strategy, |(body, content_type, batch, with_token)| {
        fx.rt.block_on(async {
            let suffix = if batch { "events/batch" } else { "events" };
            for channel in ["public/b", "news/b"] {
                let mut req = fx
                    .http
                    .post(fx.url(&format!("/channels/{channel}/{suffix}")))
                    .body(body.clone());
                if let Some(ct) = content_type {
                    req = req.header("content-type", ct);
                }
                if with_token {
                    req = req.bearer_auth(&fx.token);
                }
                fx.answer(req, "publish body").await?;
            }
            Ok(())
        })
    });
    fx.assert_healthy();
}

#[test]
fn fuzz_raw_request_heads() {
    let fx = Fuzz::start();
    let bytes = || prop::collection::vec(any::<u8>(), 0..120);
    let strategy = (any::<bool>(), bytes(), bytes(), bytes());
    fx.run(strategy, |(get, target, header, body)| {
        fx.rt.block_on(async {
            let mut req = Vec::new();
            if get {
                req.extend_from_slice(b"GET /events?channel=public/a&x=");
                req.extend_from_slice(&target);
                req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nLast-Event-ID: ");
                req.extend_from_slice(&header);
                req.extend_from_slice(b"\r\n\r\n");
            } else {
                req.extend_from_slice(b"POST /channels/public/");
                req.extend_from_slice(&target);
                req.extend_from_slice(b"/events HTTP/1.1\r\nHost: x\r\nX-Fuzz: ");
                req.extend_from_slice(&header);
                req.extend_from_slice(
                    format!(
                        "\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                req.extend_from_slice(&body);
            }
            let mut conn = TcpStream::connect(fx.addr()).await.expect("connect");
            // The server may close early on garbage; that is an answer too.
            let _ = conn.write_all(&req).await;
            let answer = read_until_count(&mut conn, b"\r\n", 1, Duration::from_secs(5)).await;
            let line = String::from_utf8_lossy(&answer);
            if let Some(rest) = line.strip_prefix("HTTP/1.") {
                let status: u16 = rest
                    .get(2..5)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| TestCaseError::fail(format!("bad status line {line:?}")))?;
                prop_assert!(
                    (200..500).contains(&status),
                    "status {} for {:?}",
                    status,
                    line
                );
            } else {
                prop_assert!(answer.is_empty(), "not an HTTP answer: {:?}", line);
            }
            Ok(())
        })
    });
    fx.assert_healthy();
}

// ---------------------------------------------------------------------------
// 7. `herald token` and the shipped configs
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_token_mints_a_token_the_dev_server_accepts() {
    let dev = repo_path("config/development.toml");
    let dev = dev.to_str().expect("UTF-8 path");
    let out = run_herald(
        &[
            "--config",
            dev,
            "token",
            "--sub",
            "alice",
            "--subscribe",
            "news/*",
            "--publish",
            "news/*",
            "--ttl",
            "1h",
        ],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("UTF-8")
        .trim()
        .to_string();
    let (_, payload, _) = parts(&token);
    assert!(!payload.is_empty());

    // The development server (real binary, shipped config).
    let server = ServerProcess::spawn(&["--config", dev], &[]).await;
    let http = client();
    let url = base(server.addr);
    let res = publish(&http, &url, "news/x", Some(&token), json!("minted")).await;
    assert_eq!(res.status, 202, "{}", res.body);
    let target = format!("/events?channel=news/x&access_token={token}");
    let raw = Raw::get(server.addr, &target, &[]).await;
    assert_eq!(raw.status, 200, "{}", raw.text());
    drop(raw);
    // Tokens are checked when presented, even where anonymous access is open.
    let forged = format!("{token}x");
    let res = publish(&http, &url, "news/x", Some(&forged), json!(1)).await;
    assert_eq!((res.status, res.code().as_str()), (401, "bad_signature"));
    // The shipped dev config lets anyone publish anywhere (the demo page
    // needs it), so a token's rights only bite once that is turned off.
    let res = publish(&http, &url, "other/x", Some(&token), json!(1)).await;
    assert_eq!(res.status, 202, "dev config: anonymous publishing is open");
    stop_process(server).await;

    // The same config with anonymous publishing off enforces the rights.
    let text = std::fs::read_to_string(repo_path("config/development.toml")).expect("dev config");
    assert!(
        text.contains("anonymous_publish = [\"**\"]"),
        "dev config changed"
    );
    let strict = TempFile::new(
        "dev-strict.toml",
        &text.replace("anonymous_publish = [\"**\"]", "anonymous_publish = []"),
    );
    let server = ServerProcess::spawn(&["--config", strict.path()], &[]).await;
    let url = base(server.addr);
    let res = publish(&http, &url, "news/x", Some(&token), json!(1)).await;
    assert_eq!(res.status, 202, "{}", res.body);
    let res = publish(&http, &url, "other/x", Some(&token), json!(1)).await;
    assert_eq!((res.status, res.code().as_str()), (403, "forbidden"));
    stop_process(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_config_starts_with_only_a_secret_and_listen() {
    let prod = repo_path("config/production.toml");
    let secret: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(48)
        .collect();
    let server = ServerProcess::spawn(
        &["--config", prod.to_str().expect("UTF-8 path")],
        &[("HERALD_JWT_SECRET", secret.as_str())],
    )
    .await;
    let http = client();
    let url = base(server.addr);
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        &claims("svc", &["orders/*"], &["orders/*"]),
    );
    let target = format!("/events?channel=orders/1&access_token={token}");
    let mut raw = Raw::get(server.addr, &target, &[]).await;
    assert_eq!(raw.status, 200, "{}", raw.text());
    let res = publish(&http, &url, "orders/1", Some(&token), json!({"paid": true})).await;
    assert_eq!(res.status, 202, "{}", res.body);
    assert!(
        raw.read_until(b"data: {\"paid\":true}", 1).await,
        "{}",
        raw.text()
    );
    drop(raw);
    // Production requires auth.
    let res = publish(&http, &url, "orders/1", None, json!(1)).await;
    assert_eq!((res.status, res.code().as_str()), (401, "missing_token"));
    let dev_token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(DEV_SECRET.as_bytes()),
        &claims("svc", &["**"], &["**"]),
    );
    let res = publish(&http, &url, "orders/1", Some(&dev_token), json!(1)).await;
    assert_eq!((res.status, res.code().as_str()), (401, "bad_signature"));
    stop_process(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_config_refuses_a_missing_or_development_secret() {
    let prod = repo_path("config/production.toml");
    let prod = prod.to_str().expect("UTF-8 path");
    let cases: [(&str, Option<&str>, &str); 3] = [
        ("no secret", None, "HERALD_JWT_SECRET"),
        ("development secret", Some(DEV_SECRET), "development secret"),
        ("short secret", Some("short-secret"), "32 bytes"),
    ];
    for (what, secret, message) in cases {
        let env: Vec<(&str, &str)> = secret
            .map(|s| ("HERALD_JWT_SECRET", s))
            .into_iter()
            .collect();
        let out = run_herald(&["--config", prod], &env).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: it started");
        assert!(stderr.contains(message), "{what}: {stderr}");
        assert!(!stderr.contains("listening"), "{what}: {stderr}");
    }
}
