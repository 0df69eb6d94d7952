//! Scale-out on Redis: real `redis-server` processes on free ports and two
//! or three real `herald` processes on the Redis broker.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Event, ServerProcess, Sse, client, metric};

/// A `redis-server` of this test's own, on a free loopback port.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
    tls: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn redis_server() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join("redis-server");
        if p.is_file() {
            return p;
        }
    }
    panic!("redis-server is not installed: apt-get install redis-server (scripts/test.sh does it)");
}

impl Redis {
    /// Starts a plain Redis with no persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts Redis with extra arguments (a password...); a bare
    /// `--tls-port` serves TLS only, on the chosen port.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "herald-redis-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let port = free_port();
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]
        .map(String::from)
        .to_vec();
        let tls = extra.contains(&"--tls-port");
        args.extend(
            extra
                .iter()
                .filter(|a| **a != "--tls-port")
                .map(|s| s.to_string()),
        );
        let mut redis = Self {
            child: None,
            port,
            dir,
            args,
            tls,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new(redis_server());
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &port]);
        } else {
            cmd.args(["--port", &port]);
        }
        cmd.args(&self.args);
        let child = cmd
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills Redis outright: its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `redis-cli` against it.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (part of redis-server / redis-tools) runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A herald replica on the Redis broker.
pub async fn replica(redis_url: &str, extra: &[(&str, &str)]) -> ServerProcess {
    let mut env = vec![
        ("HERALD_BROKER__KIND", "redis"),
        ("HERALD_BROKER__URL", redis_url),
        ("HERALD_BROKER__KEY_PREFIX", "it"),
    ];
    env.extend_from_slice(extra);
    let server = ServerProcess::spawn(&[], &env).await;
    wait_ready(&server).await;
    server
}

async fn wait_ready(server: &ServerProcess) {
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(res) = http.get(server.url("/readyz")).send().await
            && res.status() == 200
        {
            let body: Value = res.json().await.expect("readyz json");
            assert_eq!(body["broker"], "redis");
            return;
        }
        assert!(Instant::now() < deadline, "replica never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `{"data": data}` to `channel` on the server at `base`.
async fn publish(
    http: &reqwest::Client,
    base: &str,
    channel: &str,
    data: Value,
) -> reqwest::Response {
    http.post(format!("{base}/channels/{channel}/events"))
        .json(&json!({ "data": data }))
        .send()
        .await
        .expect("publish request")
}

/// The id of an accepted publish (asserts 202).
async fn accepted_id(res: reqwest::Response) -> String {
    assert_eq!(res.status(), 202, "publish accepted");
    res.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string()
}

/// Publishes and returns the id.
async fn publish_id(http: &reqwest::Client, base: &str, channel: &str, data: Value) -> String {
    accepted_id(publish(http, base, channel, data).await).await
}

async fn subscribe(server: &ServerProcess, query: &str, last_event_id: Option<&str>) -> Sse {
    let mut req = client().get(server.url(&format!("/events?{query}")));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let res = req.send().await.expect("subscribe");
    assert_eq!(res.status(), 200, "subscribe {query}");
    Sse::new(res)
}

fn seq(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("id seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_deliver_one_total_order_to_everyone() {
    let redis = Redis::start();
    let a = replica(&redis.url(), &[]).await;
    let b = replica(&redis.url(), &[]).await;
    let replicas = [&a, &b];
    let channels = ["order/0", "order/1", "order/2", "order/3"];
    // 100 subscribers, spread over both replicas, two or three channels each.
    let mut subs = Vec::new();
    for i in 0..100usize {
        let mut mine = vec![channels[i % 4], channels[(i + 1) % 4]];
        if i % 3 == 0 {
            mine.push(channels[(i + 2) % 4]);
        }
        let query: Vec<String> = mine.iter().map(|c| format!("channel={c}")).collect();
        let sse = subscribe(replicas[i % 2], &query.join("&"), None).await;
        subs.push((mine, sse));
    }
    // 8 publishers, four on each replica, 60 events each.
    let http = client();
    let published: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
    let mut tasks = Vec::new();
    for p in 0..8usize {
        let (http, url, published) = (
            http.clone(),
            replicas[p % 2].url(""),
            Arc::clone(&published),
        );
        tasks.push(tokio::spawn(async move {
            for n in 0..60usize {
                let channel = channels[(p + n) % 4];
                let id = publish_id(&http, &url, channel, json!(format!("{p}-{n}"))).await;
                published
                    .lock()
                    .expect("lock")
                    .entry(channel.to_string())
                    .or_default()
                    .push(id);
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    let published = published.lock().expect("lock").clone();
    for (i, (mine, sse)) in subs.iter_mut().enumerate() {
        let expected: BTreeSet<String> = mine
            .iter()
            .flat_map(|c| published.get(*c).cloned().unwrap_or_default())
            .collect();
        let got: Vec<Event> = sse.take(expected.len()).await;
        let ids: Vec<u64> = got.iter().map(|e| seq(&e.id)).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "subscriber {i} (on replica {}): out of order {ids:?}",
            i % 2
        );
        let got: BTreeSet<String> = got.into_iter().map(|e| e.id).collect();
        assert_eq!(
            got, expected,
            "subscriber {i}: exactly its channels' events"
        );
        sse.assert_quiet(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_meets_live_on_another_replica_with_nothing_lost_or_repeated() {
    let redis = Redis::start();
    let a = replica(&redis.url(), &[]).await;
    // B forgets a channel as soon as its subscriber leaves, so every join
    // below makes B fill the channel from Redis while A publishes.
    let b = replica(&redis.url(), &[("HERALD_HUB__CHANNEL_IDLE_TTL_SECS", "0")]).await;
    const CHANNELS: usize = 4;
    const ROUNDS: usize = 40;
    const TAKE: usize = 12;
    let http = client();
    let newest: Arc<Mutex<Option<String>>> = Arc::default();
    let log: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A publishes as fast as four connections can, over a few channels.
    let mut publishers = Vec::new();
    for p in 0..4usize {
        let (http, url, newest, log, stop) = (
            http.clone(),
            a.url(""),
            Arc::clone(&newest),
            Arc::clone(&log),
            Arc::clone(&stop),
        );
        publishers.push(tokio::spawn(async move {
            for n in 0..200_000usize {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let c = (n + p) % CHANNELS;
                let id = publish_id(&http, &url, &format!("handoff/{c}"), json!(n)).await;
                log.lock().expect("lock").push((c, id.clone()));
                let mut newest = newest.lock().expect("lock");
                if newest.as_ref().is_none_or(|old| seq(old) < seq(&id)) {
                    *newest = Some(id);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut joins = Vec::new();
    for round in 0..ROUNDS {
        let c = round % CHANNELS;
        let from = newest
            .lock()
            .expect("lock")
            .clone()
            .expect("something published");
        let mut sse = subscribe(&b, &format!("channel=handoff/{c}"), Some(&from)).await;
        let got = sse.take(TAKE).await;
        drop(sse);
        joins.push((c, from, got));
        // Let B reap the channel, so the next join fills it again.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in publishers {
        p.await.expect("publisher");
    }
    let mut log = log.lock().expect("lock").clone();
    log.sort_by_key(|(_, id)| seq(id));
    for (c, from, got) in joins {
        assert!(
            got.iter()
                .all(|e| e.event.is_empty() || e.event == "message"),
            "channel {c} from {from}: unexpected reset {got:?}"
        );
        let expected: Vec<&String> = log
            .iter()
            .filter(|(ch, id)| *ch == c && seq(id) > seq(&from))
            .map(|(_, id)| id)
            .take(TAKE)
            .collect();
        let ids: Vec<&String> = got.iter().map(|e| &e.id).collect();
        assert_eq!(ids, expected, "channel {c} resumed after {from}");
    }
    let fills = metric(&http, &b.url(""), "herald_channels_reaped_total")
        .await
        .unwrap_or(0.0);
    assert!(
        fills >= (ROUNDS / 2) as f64,
        "B reaped {fills} channels: the joins did not refill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_resumes_on_another_replica_after_a_crash() {
    let redis = Redis::start();
    let mut a = replica(&redis.url(), &[]).await;
    let b = replica(&redis.url(), &[]).await;
    let http = client();
    let mut sse = subscribe(&a, "channel=crash", None).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(publish_id(&http, &b.url(""), "crash", json!(n)).await);
    }
    let first_half = sse.take(20).await;
    assert_eq!(
        first_half.iter().map(|e| &e.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>()
    );
    a.signal("KILL");
    let _ = a.child.wait().await;
    for n in 20..40 {
        ids.push(publish_id(&http, &b.url(""), "crash", json!(n)).await);
    }
    let last_seen = &first_half[19].id;
    let mut resumed = subscribe(&b, "channel=crash", Some(last_seen)).await;
    let rest = resumed.take(20).await;
    assert_eq!(
        rest.iter().map(|e| &e.id).collect::<Vec<_>>(),
        ids[20..].iter().collect::<Vec<_>>(),
        "exactly the rest, no reset"
    );
    resumed.assert_quiet(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_pubsub_link_loses_nothing_silently() {
    let redis = Redis::start();
    let a = replica(&redis.url(), &[]).await;
    let b = replica(&redis.url(), &[]).await;
    let http = client();
    let mut sse = subscribe(&b, "channel=cut", None).await;
    let resyncs_before = metric(
        &http,
        &b.url(""),
        "herald_broker_resyncs_total{result=\"complete\"}",
    )
    .await
    .unwrap_or(0.0);
    // Four publishers flat out on A while B's link is cut three times.
    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut publishers = Vec::new();
    for _ in 0..4 {
        let (http, url, ids, stop) = (http.clone(), a.url(""), Arc::clone(&ids), Arc::clone(&stop));
        publishers.push(tokio::spawn(async move {
            for n in 0..100_000u64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let id = publish_id(&http, &url, "cut", json!(n)).await;
                ids.lock().expect("lock").push(id);
            }
        }));
    }
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert!(killed.trim() != "0", "no pub/sub client to cut");
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in publishers {
        p.await.expect("publisher");
    }
    let mut ids = ids.lock().expect("lock").clone();
    ids.sort_by_key(|id| seq(id));
    let got = sse.take(ids.len()).await;
    let resets: Vec<&Event> = got.iter().filter(|e| e.event == "herald.reset").collect();
    assert!(
        resets.is_empty(),
        "with history at hand, no reset is needed: {resets:?}"
    );
    assert_eq!(
        got.iter().map(|e| &e.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>(),
        "every event, in order, none twice"
    );
    let resyncs = metric(
        &http,
        &b.url(""),
        "herald_broker_resyncs_total{result=\"complete\"}",
    )
    .await
    .expect("resync counter");
    assert!(
        resyncs >= resyncs_before + 3.0,
        "each cut was healed by a resync"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_then_back_empty() {
    let mut redis = Redis::start();
    let timeout_ms = 800u64;
    let a = replica(
        &redis.url(),
        &[("HERALD_BROKER__COMMAND_TIMEOUT_MS", "800")],
    )
    .await;
    let http = client();
    let mut sse = subscribe(&a, "channel=outage", None).await;
    let before = publish_id(&http, &a.url(""), "outage", json!(1)).await;
    assert_eq!(sse.next().await.id, before);
    redis.kill();
    // Publish answers 503 within the command timeout, with a JSON error.
    let started = Instant::now();
    let res = publish(&http, &a.url(""), "outage", json!(2)).await;
    let took = started.elapsed();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "broker_unavailable");
    assert!(
        took < Duration::from_millis(timeout_ms + 1500),
        "a publish waited {took:?} for a dead Redis"
    );
    // Readiness says so, naming the broker.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = http.get(a.url("/readyz")).send().await.expect("readyz");
        if ready.status() == 503 {
            let body: Value = ready.json().await.expect("json");
            assert_eq!(body["error"]["code"], "broker_unavailable");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("redis")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz stayed 200 with Redis down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The open stream stays open.
    assert!(
        !sse.ends_within(Duration::from_millis(500)).await,
        "the stream closed"
    );
    // Redis comes back empty: service resumes by itself.
    redis.restart_empty();
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let res = publish(&http, &a.url(""), "outage", json!(3)).await;
        if res.status() == 202 {
            break accepted_id(res).await;
        }
        assert!(Instant::now() < deadline, "publishing never resumed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(
        before.split('-').next(),
        after.split('-').next(),
        "Redis lost its data: a new epoch"
    );
    // The open stream learns it with a reset, then goes on.
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Event| e.id == after) {
        seen.push(sse.next().await);
    }
    assert!(
        seen.iter()
            .any(|e| e.event == "herald.reset" && e.data.contains("unknown_epoch")),
        "{seen:?}"
    );
    // A resume with a pre-outage id gets a reset first.
    let mut late = subscribe(&a, "channel=outage", Some(&before)).await;
    let first = late.next().await;
    assert_eq!(first.event, "herald.reset");
    assert!(first.data.contains("unknown_epoch"), "{}", first.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotent_retry_on_another_replica_publishes_once() {
    let redis = Redis::start();
    let a = replica(&redis.url(), &[]).await;
    let b = replica(&redis.url(), &[]).await;
    let http = client();
    let mut sse = subscribe(&b, "channel=idem", None).await;
    let send = |server: &ServerProcess, key: &str, data: &str| {
        http.post(server.url("/channels/idem/events"))
            .header("idempotency-key", key)
            .json(&json!({ "data": data }))
            .send()
    };
    let first = send(&a, "retry-1", "once").await.expect("publish");
    assert_eq!(first.status(), 202);
    let id = first.json::<Value>().await.expect("json")["id"].clone();
    let retry = send(&b, "retry-1", "once").await.expect("retry");
    assert_eq!(retry.status(), 202);
    assert_eq!(
        retry.json::<Value>().await.expect("json")["id"],
        id,
        "same id"
    );
    let clash = send(&b, "retry-1", "a different body")
        .await
        .expect("clash");
    assert_eq!(clash.status(), 422);
    let after = publish_id(&http, &a.url(""), "idem", json!(2)).await;
    let got = sse.take(2).await;
    assert_eq!(got[0].id, id.as_str().expect("id"));
    assert_eq!(got[1].id, after, "the retry published nothing");
    let replayed = metric(
        &http,
        &b.url(""),
        "herald_idempotent_publishes_total{result=\"replayed\"}",
    )
    .await
    .expect("idempotency counter");
    assert!(replayed >= 1.0);
}

/// Makes a CA and a server certificate for 127.0.0.1 / localhost with openssl.
fn tls_files(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=herald-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "redis.key",
        "-out",
        "redis.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "redis.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "redis.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("redis.crt"),
        dir.join("redis.key"),
    )
}

/// One publish on `publisher` seen by a subscriber on `reader`.
async fn round_trip(publisher: &ServerProcess, reader: &ServerProcess, channel: &str) {
    let mut sse = subscribe(reader, &format!("channel={channel}"), None).await;
    let id = publish_id(&client(), &publisher.url(""), channel, json!(7)).await;
    assert_eq!(sse.next().await.id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_passwords_and_sentinel_work() {
    // A password: and it never reaches the logs.
    let redis = Redis::start_with(&["--requirepass", "s3cret-pass"]);
    let url = format!("redis://:s3cret-pass@127.0.0.1:{}/", redis.port);
    let mut a = replica(&url, &[]).await;
    round_trip(&a, &a, "auth").await;
    let logs = a.drain_logs().join("\n");
    assert!(!logs.contains("s3cret-pass"), "the password was logged");

    // rediss:// with a private CA.
    let dir = std::env::temp_dir().join(format!("herald-tls-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).expect("dir");
    let (ca, cert, key) = tls_files(&dir);
    let tls = Redis::start_with(&[
        "--tls-port",
        "--tls-cert-file",
        cert.to_str().expect("path"),
        "--tls-key-file",
        key.to_str().expect("path"),
        "--tls-ca-cert-file",
        ca.to_str().expect("path"),
        "--tls-auth-clients",
        "no",
    ]);
    let tls_url = format!("rediss://localhost:{}/", tls.port);
    let a = replica(
        &tls_url,
        &[("HERALD_BROKER__TLS_CA_FILE", ca.to_str().expect("path"))],
    )
    .await;
    let b = replica(
        &tls_url,
        &[("HERALD_BROKER__TLS_CA_FILE", ca.to_str().expect("path"))],
    )
    .await;
    round_trip(&a, &b, "tls").await;
    let _ = std::fs::remove_dir_all(&dir);

    // Sentinel: Herald asks the sentinel for the master.
    let master = Redis::start();
    let sentinel_dir = std::env::temp_dir().join(format!("herald-sentinel-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&sentinel_dir).expect("dir");
    let sentinel_port = free_port();
    let conf = sentinel_dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor hmaster 127.0.0.1 {} 1\n",
            master.port
        ),
    )
    .expect("sentinel conf");
    let mut sentinel = Command::new(redis_server())
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server --sentinel");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", sentinel_port)).is_err() {
        assert!(Instant::now() < deadline, "sentinel did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sentinel_url = format!("redis://127.0.0.1:{sentinel_port}/");
    let a = replica(
        &sentinel_url,
        &[("HERALD_BROKER__SENTINEL_MASTER", "hmaster")],
    )
    .await;
    round_trip(&a, &a, "sentinel").await;
    let _ = sentinel.kill();
    let _ = sentinel.wait();
    let _ = std::fs::remove_dir_all(&sentinel_dir);
}
