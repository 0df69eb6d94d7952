//! `herald-bench` run as a program against a real Herald process over
//! loopback: a short fan-out run (in one process, and over two worker
//! processes) must see every accepted event delivered once, in order, and a
//! short publish-rate run must have every publish accepted, with Herald's own
//! event ids agreeing on the count.
//!
//! Herald is the workspace's `herald` binary, next to `herald-bench` in the
//! target directory (`cargo test --workspace` builds it); when it is not
//! there, the test builds it with cargo first.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_herald-bench");

/// The `herald` binary of this workspace, built if missing.
fn herald_binary() -> PathBuf {
    let path =
        PathBuf::from(BENCH).with_file_name(format!("herald{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "herald", "--bin", "herald"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo to build the herald binary");
        assert!(status.success(), "cargo build -p herald failed");
    }
    assert!(path.exists(), "no herald binary at {}", path.display());
    path
}

/// A Herald process on a free loopback port, killed on drop.
struct Herald {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Herald {
    /// Starts Herald with the repository's development config (anonymous
    /// publish and subscribe, limits well above these runs).
    fn start() -> Herald {
        let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/development.toml");
        // Tests run in parallel threads of one process: one log file each.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let log = std::env::temp_dir().join(format!(
            "herald-bench-test-{}-{}.log",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let log_file = std::fs::File::create(&log).expect("create the server log file");
        let child = Command::new(herald_binary())
            .arg("--config")
            .arg(&config)
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("HERALD_TELEMETRY__LOG_FORMAT", "pretty")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log file handle"))
            .stderr(log_file)
            .spawn()
            .expect("start herald");
        // Owned by the guard from here on, so a failed start still kills it.
        let mut herald = Herald {
            child,
            url: String::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&herald.log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .filter(|l| l.contains("listening"))
                .find_map(|l| l.split_once("addr=").map(|(_, r)| r))
                .map(|r| {
                    r.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                        .next()
                        .unwrap_or("")
                })
            {
                herald.url = format!("http://{addr}");
                return herald;
            }
            if let Ok(Some(status)) = herald.child.try_wait() {
                panic!("herald exited with {status} before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "herald did not report listening:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs herald-bench with `args` and returns its JSON report.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(BENCH)
        .args(args)
        .arg("--json")
        .env_remove("HERALD_BENCH_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run herald-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "herald-bench {args:?} failed: {stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "herald-bench printed no JSON report ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no integer at {path} in {v:#}"))
}

/// A short fan-out run with 6 subscribers on 2 channels, `extra` flags
/// added; checks that every accepted event reached its 3 subscribers once.
fn fanout_run(extra: &[&str]) -> Value {
    let herald = Herald::start();
    let pid = herald.pid();
    let mut args = vec![
        "--url",
        &herald.url,
        "--subscribers",
        "6",
        "--channels",
        "2",
        "--rate",
        "100",
        "--warmup",
        "0.5",
        "--duration",
        "1.5",
        "--server-pid",
        &pid,
    ];
    args.extend_from_slice(extra);
    let r = bench(&args);
    assert_eq!(u(&r, "/connections_held"), 6, "{r:#}");
    let sent = u(&r, "/publish/events_sent");
    let accepted = u(&r, "/publish/events_accepted");
    assert!(sent >= 100, "about 200 events were due, {sent} sent: {r:#}");
    assert_eq!(accepted, sent, "every publish accepted: {r:#}");
    // Events go round-robin over 2 channels with 3 subscribers each, so
    // every event reaches 3 subscribers.
    assert_eq!(u(&r, "/deliveries"), 3 * accepted, "{r:#}");
    assert!(u(&r, "/deliveries_measured") > 0, "{r:#}");
    for zero in [
        "/lost",
        "/duplicated",
        "/out_of_order",
        "/resets",
        "/foreign",
        "/unexpected",
        "/workers_missing",
    ] {
        assert_eq!(u(&r, zero), 0, "{zero} in {r:#}");
    }
    assert!(u(&r, "/latency_ms/count") > 0, "{r:#}");
    assert!(
        r.pointer("/server/cpu_seconds")
            .is_some_and(Value::is_number),
        "{r:#}"
    );
    r
}

#[test]
fn fanout_run_delivers_every_event_once() {
    let r = fanout_run(&[]);
    assert_eq!(u(&r, "/processes"), 1, "{r:#}");
}

#[test]
fn fanout_run_over_worker_processes_delivers_every_event_once() {
    // The controller re-executes herald-bench as two worker processes, which
    // raise their own fd limit and report over their stdout.
    let r = fanout_run(&["--processes", "2"]);
    assert_eq!(u(&r, "/processes"), 2, "{r:#}");
}

#[test]
fn publish_run_counts_what_herald_accepted() {
    let herald = Herald::start();
    let pid = herald.pid();
    // Closed loop, single events, then open loop with batches of 10, on one
    // channel each; both runs end on their own within about 2 s.
    let closed = bench(&[
        "publish",
        "--url",
        &herald.url,
        "-c",
        "2",
        "--warmup",
        "0.2",
        "--duration",
        "0.8",
        "--server-pid",
        &pid,
    ]);
    let open = bench(&[
        "publish",
        "--url",
        &herald.url,
        "-c",
        "2",
        "--rate",
        "200",
        "--batch",
        "10",
        "--warmup",
        "0.2",
        "--duration",
        "0.8",
    ]);
    for r in [&closed, &open] {
        assert_eq!(u(r, "/requests_ok_total"), u(r, "/requests_total"), "{r:#}");
        assert_eq!(u(r, "/io_errors"), 0, "{r:#}");
        assert!(
            r["errors_by_status"]
                .as_object()
                .is_some_and(|m| m.is_empty()),
            "{r:#}"
        );
        assert!(u(r, "/latency_ms/count") > 0, "{r:#}");
        assert_eq!(u(r, "/status/202"), u(r, "/requests_total"), "{r:#}");
    }
    assert_eq!(closed["mode"], "closed");
    assert!(
        closed["server"]["cpu_us_per_publish"].is_number(),
        "{closed:#}"
    );
    assert_eq!(open["mode"], "open");
    // The open loop was asked for 200 requests/s over 1 s in all.
    let sent = u(&open, "/requests_total");
    assert!(
        (150..=200).contains(&sent),
        "{sent} requests at 200/s for 1 s: {open:#}"
    );
    assert_eq!(u(&open, "/events_ok_total"), 10 * sent);

    // Herald numbers events with one global seq from 1, so the newest id on
    // the open run's channel is the count of every event both runs published.
    let channel = format!("bench-{}-0", open["run_id"].as_str().expect("run id"));
    let stats = http_get(&herald.url, &format!("/channels/{channel}"));
    let last_id = stats["last_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{stats:#}"));
    let seq: u64 = last_id
        .rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("seq in id");
    assert_eq!(
        seq,
        u(&closed, "/events_ok_total") + u(&open, "/events_ok_total"),
        "{stats:#}"
    );
}

/// A plain `GET` over a fresh connection, returning the JSON body.
fn http_get(base: &str, path: &str) -> Value {
    use std::io::{Read as _, Write as _};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to herald");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let (head, body) = resp.split_once("\r\n\r\n").expect("a complete response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}
