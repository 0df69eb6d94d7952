//! The OpenAPI description, `static/openapi.json`, checked against the real
//! routes from both sides: every operation it documents is served by a real
//! server (on the listeners it names) with a documented success status and
//! media type; every route known from outside, and every `.route(...)` in
//! the source, is in the document; and plausible undocumented paths reach
//! the router's `not_found` fallback. A route added on one side only fails
//! one of these tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TestServer, WAIT, client};

/// The methods checked on every path (HEAD and OPTIONS are left to axum's
/// GET fallback and to CORS).
const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// The channel every probe uses; seeded with one event so its stats exist.
const PROBE_CHANNEL: &str = "openapi-probe";

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn document() -> Value {
    let path = repo_path("static/openapi.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// One documented operation.
#[derive(Debug, Clone)]
struct Operation {
    path: String,
    method: String,
    op: Value,
}

impl Operation {
    fn listeners(&self) -> BTreeSet<String> {
        self.op["x-herald-listeners"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn statuses(&self) -> BTreeSet<u16> {
        self.op["responses"]
            .as_object()
            .map(|r| r.keys().filter_map(|k| k.parse().ok()).collect())
            .unwrap_or_default()
    }

    fn label(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }
}

fn operations(doc: &Value) -> Vec<Operation> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut out = Vec::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for (method, op) in item {
            if METHODS.contains(&method.as_str()) {
                out.push(Operation {
                    path: path.clone(),
                    method: method.clone(),
                    op: op.clone(),
                });
            }
        }
    }
    out
}

/// Follows `$ref`s (local ones only) until a value without one.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    for _ in 0..16 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return v;
        };
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("only local $refs are used: {r}"));
        v = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("$ref {r} does not resolve"));
    }
    panic!("$ref chain too long");
}

/// The parameters of an operation, resolved.
fn parameters<'a>(doc: &'a Value, op: &'a Value) -> Vec<&'a Value> {
    op["parameters"]
        .as_array()
        .map(|a| a.iter().map(|p| resolve(doc, p)).collect())
        .unwrap_or_default()
}

/// Concrete request targets for an operation: path parameters filled with
/// the probe channel or every value of their enum, plus required query
/// parameters.
fn targets(doc: &Value, op: &Operation) -> Vec<String> {
    let mut paths = vec![op.path.clone()];
    let mut query = Vec::new();
    for p in parameters(doc, &op.op) {
        let name = p["name"].as_str().expect("a parameter has a name");
        let schema = resolve(doc, &p["schema"]);
        match p["in"].as_str() {
            Some("path") => {
                let values: Vec<String> = match schema["enum"].as_array() {
                    Some(e) => e
                        .iter()
                        .map(|v| v.as_str().expect("string enum").to_owned())
                        .collect(),
                    None => vec![PROBE_CHANNEL.to_owned()],
                };
                paths = paths
                    .iter()
                    .flat_map(|path| {
                        values
                            .iter()
                            .map(move |v| path.replace(&format!("{{{name}}}"), v))
                    })
                    .collect();
            }
            Some("query") if p["required"] == json!(true) => {
                query.push(format!("{name}={PROBE_CHANNEL}"));
            }
            _ => {}
        }
    }
    for path in &paths {
        assert!(
            !path.contains('{'),
            "{}: path parameter without a declaration",
            op.label()
        );
    }
    if query.is_empty() {
        paths
    } else {
        paths
            .into_iter()
            .map(|p| format!("{p}?{}", query.join("&")))
            .collect()
    }
}

/// The documented example body of an operation, if it takes one.
fn example_body(op: &Operation) -> Option<Value> {
    let content = op.op["requestBody"]["content"].as_object()?;
    let media = content
        .get("application/json")
        .unwrap_or_else(|| panic!("{}: request bodies are JSON", op.label()));
    Some(
        media["example"]
            .as_object()
            .map(|_| media["example"].clone())
            .unwrap_or_else(|| panic!("{}: the request body has an example", op.label())),
    )
}

/// What a probe saw.
#[derive(Debug)]
struct Seen {
    status: u16,
    media: String,
    headers: reqwest::header::HeaderMap,
    json: Option<Value>,
}

impl Seen {
    /// The router's own fallbacks, as opposed to a handler's answer.
    fn is_fallback(&self) -> bool {
        let code = self.json.as_ref().and_then(|j| j["error"]["code"].as_str());
        let message = self
            .json
            .as_ref()
            .and_then(|j| j["error"]["message"].as_str());
        self.status == 405
            || (self.status == 404 && code == Some("not_found") && message == Some("no such route"))
    }
}

async fn probe(http: &reqwest::Client, method: &str, url: &str, body: Option<&Value>) -> Seen {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
    let mut req = http.request(method, url);
    if let Some(body) = body {
        req = req.json(body);
    }
    let res = tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap_or_else(|_| panic!("{url}: no answer in time"))
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let media = res
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    // A stream never ends by itself: its head is all a probe needs.
    let json = if media == "application/json" {
        let text = tokio::time::timeout(WAIT, res.text())
            .await
            .unwrap_or_else(|_| panic!("{url}: body in time"))
            .unwrap_or_else(|e| panic!("{url}: body: {e}"));
        Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}")))
    } else {
        None
    };
    Seen {
        status,
        media,
        headers,
        json,
    }
}

/// Checks a success against the operation's documented response: status,
/// media type, required body fields and, with `headers`, every documented
/// response header (and its value, when the document fixes one).
fn check_success(doc: &Value, op: &Operation, target: &str, seen: &Seen, headers: bool) {
    let what = format!("{} ({target})", op.label());
    assert!(
        (200..300).contains(&seen.status),
        "{what}: a simple request should succeed, got {seen:?}"
    );
    assert!(
        op.statuses().contains(&seen.status),
        "{what}: status {} is not in the document {:?}",
        seen.status,
        op.statuses()
    );
    let response = resolve(doc, &op.op["responses"][seen.status.to_string()]);
    let content = response["content"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: the success response has content"));
    let media = content
        .get(&seen.media)
        .unwrap_or_else(|| panic!("{what}: media type {:?} is not documented", seen.media));
    if let Some(body) = &seen.json {
        let schema = resolve(doc, &media["schema"]);
        for key in schema["required"].as_array().into_iter().flatten() {
            let key = key.as_str().expect("required names are strings");
            assert!(
                body.get(key).is_some(),
                "{what}: the body lacks required {key:?}: {body}"
            );
        }
    }
    if !headers {
        return;
    }
    for (name, header) in response["headers"].as_object().into_iter().flatten() {
        let value = seen
            .headers
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{what}: documented header {name} is missing"));
        let schema = resolve(doc, &resolve(doc, header)["schema"]);
        if let Some(fixed) = schema["const"].as_str() {
            assert_eq!(value, fixed, "{what}: header {name}");
        }
    }
}

/// An error answer must have the documented error shape.
fn check_error_shape(what: &str, seen: &Seen) {
    let body = seen
        .json
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: error {} without a JSON body", seen.status));
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "{what}: error body {body}"
    );
}

/// Whether a concrete path matches a documented template; each `{param}`
/// stands for one non-empty segment.
fn template_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| {
            if t.starts_with('{') && t.ends_with('}') {
                !p.is_empty()
            } else {
                t == p
            }
        })
}

fn documented(ops: &[Operation], method: &str, path: &str) -> Option<Operation> {
    ops.iter()
        .find(|o| o.method == method && template_matches(&o.path, path))
        .cloned()
}

async fn seed(server: &TestServer) {
    server.publish(PROBE_CHANNEL, json!("seed")).await;
}

#[test]
fn document_is_openapi_3_1_and_self_consistent() {
    let doc = document();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "OpenAPI 3.1: {}",
        doc["openapi"]
    );
    assert_eq!(
        doc["info"]["version"],
        json!(env!("CARGO_PKG_VERSION")),
        "info.version follows Cargo.toml"
    );
    let ops = operations(&doc);
    assert!(ops.len() >= 9, "every route is described: {ops:?}");
    let mut ids = BTreeSet::new();
    for op in &ops {
        let id = op.op["operationId"].as_str().expect("operationId");
        assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
        let listeners = op.listeners();
        assert!(
            !listeners.is_empty() && listeners.iter().all(|l| l == "public" || l == "admin"),
            "{}: x-herald-listeners is public and/or admin: {listeners:?}",
            op.label()
        );
        assert!(
            op.statuses().iter().any(|s| (200..300).contains(s)),
            "{}: documents a success",
            op.label()
        );
        for (status, response) in op.op["responses"].as_object().expect("responses") {
            let response = resolve(&doc, response);
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &response["content"]["application/json"]["schema"];
                assert_eq!(
                    schema["$ref"],
                    json!("#/components/schemas/Error"),
                    "{} {status}: errors use the Error schema",
                    op.label()
                );
            }
        }
        // Every `{param}` in the path is declared, and nothing else is.
        let declared: BTreeSet<String> = parameters(&doc, &op.op)
            .iter()
            .filter(|p| p["in"] == json!("path"))
            .map(|p| p["name"].as_str().expect("name").to_owned())
            .collect();
        let in_path: BTreeSet<String> = op
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        assert_eq!(declared, in_path, "{}: path parameters", op.label());
    }
    // Every reference anywhere resolves.
    fn walk(doc: &Value, v: &Value) {
        match v {
            Value::Object(map) => {
                if map.contains_key("$ref") {
                    resolve(doc, v);
                }
                map.values().for_each(|c| walk(doc, c));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(doc, c)),
            _ => {}
        }
    }
    walk(&doc, &doc);
    // Both publish routes take an Idempotency-Key.
    for op in ops.iter().filter(|o| o.method == "post") {
        assert!(
            parameters(&doc, &op.op)
                .iter()
                .any(|p| p["name"] == json!("Idempotency-Key") && p["in"] == json!("header")),
            "{}: documents Idempotency-Key",
            op.label()
        );
    }
}

#[tokio::test]
async fn every_documented_operation_is_served_on_the_public_listener() {
    let doc = document();
    let ops = operations(&doc);
    let server = TestServer::start().await;
    seed(&server).await;
    let mut paths: BTreeMap<String, Vec<&Operation>> = BTreeMap::new();
    for op in &ops {
        paths.entry(op.path.clone()).or_default().push(op);
    }
    for op in ops.iter().filter(|o| o.listeners().contains("public")) {
        for target in targets(&doc, op) {
            let body = example_body(op);
            let seen = probe(
                &server.http,
                &op.method,
                &server.url(&target),
                body.as_ref(),
            )
            .await;
            check_success(&doc, op, &target, &seen, true);
        }
    }
    // A method the document does not list on a path must not succeed: it
    // reaches the 405 fallback or a handler's refusal, never a hidden route.
    for (path, path_ops) in &paths {
        let listed: BTreeSet<&str> = path_ops.iter().map(|o| o.method.as_str()).collect();
        for target in targets(&doc, path_ops[0]) {
            for method in METHODS.iter().filter(|m| !listed.contains(*m)) {
                let body = json!({ "data": "probe" });
                let seen = probe(&server.http, method, &server.url(&target), Some(&body)).await;
                let what = format!(
                    "{} {target} (undocumented on {path})",
                    method.to_uppercase()
                );
                assert!(
                    !(200..300).contains(&seen.status),
                    "{what}: succeeded with {seen:?}; document it"
                );
                check_error_shape(&what, &seen);
            }
        }
    }
    server.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

#[tokio::test]
async fn the_admin_listener_serves_exactly_its_documented_operations() {
    let doc = document();
    let ops = operations(&doc);
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("valid address");
    let server = TestServer::start_with(|c| c.telemetry.admin_listen = Some(admin)).await;
    let http = client();
    // The admin listener binds inside the spawned server: wait for it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(admin).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "admin listener on {admin}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for op in &ops {
        for target in targets(&doc, op) {
            let url = format!("http://{admin}{target}");
            let body = example_body(op);
            let seen = probe(&http, &op.method, &url, body.as_ref()).await;
            if op.listeners().contains("admin") {
                // The admin listener adds no headers of its own (no request id).
                check_success(&doc, op, &format!("admin {target}"), &seen, false);
            } else {
                assert!(
                    !(200..300).contains(&seen.status),
                    "{} is served on the admin listener but not documented there: {seen:?}",
                    op.label()
                );
            }
        }
    }
    // The document says /metrics leaves the public listener in this mode.
    let seen = probe(&server.http, "get", &server.url("/metrics"), None).await;
    assert_eq!(seen.status, 404, "public /metrics with an admin listener");
    server.stop().await;
}

#[tokio::test]
async fn every_known_route_is_documented_and_served() {
    let doc = document();
    let ops = operations(&doc);
    let server = TestServer::start().await;
    seed(&server).await;
    let publish = json!({ "data": "probe" });
    let batch = json!({ "events": [{ "data": 1 }, { "data": "two" }] });
    let known: [(&str, &str, Option<&Value>); 11] = [
        ("get", "/events?channel=x", None),
        ("get", "/events?channel=x&channel=y&envelope=1", None),
        ("post", "/channels/x/events", Some(&publish)),
        ("post", "/channels/x/events/batch", Some(&batch)),
        ("get", "/channels/x", None),
        ("get", "/healthz", None),
        ("get", "/readyz", None),
        ("get", "/metrics", None),
        ("get", "/", None),
        ("get", "/static/herald.js", None),
        ("get", "/static/herald.css", None),
    ];
    for (method, target, body) in known {
        let path = target.split('?').next().expect("split yields one item");
        let op = documented(&ops, method, path).unwrap_or_else(|| {
            panic!(
                "{} {path} is served by Herald but not in static/openapi.json",
                method.to_uppercase()
            )
        });
        let seen = probe(&server.http, method, &server.url(target), body).await;
        check_success(&doc, &op, target, &seen, true);
    }
    server.stop().await;
}

#[tokio::test]
async fn undocumented_paths_reach_the_fallback() {
    let doc = document();
    let ops = operations(&doc);
    let server = TestServer::start().await;
    let guesses = [
        "/api",
        "/openapi.json",
        "/static/openapi.json",
        "/docs",
        "/version",
        "/health",
        "/ready",
        "/live",
        "/livez",
        "/status",
        "/stats",
        "/info",
        "/config",
        "/admin",
        "/debug",
        "/events/x",
        "/events/batch",
        "/publish",
        "/subscribe",
        "/channels",
        "/metrics/x",
        "/healthz/x",
    ];
    for path in guesses {
        for method in ["get", "post"] {
            if documented(&ops, method, path).is_some() {
                continue;
            }
            let body = json!({ "data": "probe" });
            let seen = probe(&server.http, method, &server.url(path), Some(&body)).await;
            assert!(
                seen.is_fallback(),
                "{} {path} is served ({seen:?}) but not in static/openapi.json",
                method.to_uppercase()
            );
            check_error_shape(path, &seen);
        }
    }
    server.stop().await;
}

/// Every `.route("PATH", METHOD(...)...)` outside test modules under `src/`,
/// as (path, methods).
fn source_routes() -> Vec<(String, BTreeSet<String>)> {
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    files(&repo_path("src"), &mut paths);
    let mut routes = Vec::new();
    for file in paths {
        let text = std::fs::read_to_string(&file).expect("read source");
        // Routers built inside unit tests are not Herald's routes.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let mut rest = text;
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let Some(lit) = rest.trim_start().strip_prefix('"') else {
                continue;
            };
            let end = lit.find('"').expect("closed string literal");
            let path = lit[..end].to_owned();
            // The method router: up to the parenthesis closing `.route(`.
            let mut depth = 1usize;
            let mut methods = BTreeSet::new();
            let mut ident = String::new();
            for c in lit[end + 1..].chars() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    ident.push(c);
                    continue;
                }
                if c == '(' {
                    if METHODS.contains(&ident.as_str()) || ident == "any" {
                        methods.insert(ident.clone());
                    }
                    depth += 1;
                } else if c == ')' {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                ident.clear();
            }
            assert!(
                !methods.is_empty(),
                "{}: could not read the methods of route {path}",
                file.display()
            );
            routes.push((path, methods));
        }
    }
    routes
}

/// `/a/{x}/b` → `/a/{}/b`, so parameter names may differ.
fn normalize(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_route_in_the_source_is_documented_and_back() {
    let doc = document();
    let ops = operations(&doc);
    let routes = source_routes();
    let names: BTreeSet<&str> = routes.iter().map(|(p, _)| p.as_str()).collect();
    for expected in [
        "/events",
        "/channels/{*path}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            names.contains(expected),
            "the source scan found {expected} (scan: {names:?})"
        );
    }
    // Source → document.
    for (path, methods) in &routes {
        assert!(
            !methods.contains("any"),
            "{path}: an `any` route cannot be documented per method"
        );
        for method in methods {
            let found = match path.split_once("{*") {
                Some((prefix, _)) => ops
                    .iter()
                    .any(|o| o.method == *method && o.path.starts_with(prefix)),
                None => ops
                    .iter()
                    .any(|o| o.method == *method && normalize(&o.path) == normalize(path)),
            };
            assert!(
                found,
                "route {} {path} is in the source but not in static/openapi.json",
                method.to_uppercase()
            );
        }
    }
    // Document → source.
    for op in &ops {
        let served = routes.iter().any(|(path, methods)| {
            methods.contains(&op.method)
                && match path.split_once("{*") {
                    Some((prefix, _)) => op.path.starts_with(prefix),
                    None => normalize(path) == normalize(&op.path),
                }
        });
        assert!(
            served,
            "{} is documented but no route serves it",
            op.label()
        );
    }
}
