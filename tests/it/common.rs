//! Test harness: start Herald in-process (or as the real binary), publish,
//! and read SSE streams with a real client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use herald::config::Config;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for anything before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// A Herald server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<()>>,
    pub http: reqwest::Client,
}

impl TestServer {
    /// Starts a server with default config, on port 0.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `edit` adjusts the default config.
    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("valid addr"),
            ..Config::default()
        };
        edit(&mut config);
        config.validate().expect("test config is valid");
        let listener = herald::bind(config.listen, 1024).expect("bind port 0");
        let addr = listener.local_addr().expect("bound address");
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            herald::run(config, listener, token)
                .await
                .expect("server runs");
        });
        Self {
            addr,
            shutdown,
            task: Some(task),
            http: client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GETs `path` and parses the JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        let res = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("GET request");
        res.json().await.expect("JSON body")
    }

    /// Publishes `data` and returns the id.
    pub async fn publish(&self, channel: &str, data: Value) -> String {
        self.publish_event(channel, serde_json::json!({ "data": data }))
            .await
    }

    /// Publishes a full request body and returns the id.
    pub async fn publish_event(&self, channel: &str, body: Value) -> String {
        let res = self
            .http
            .post(self.url(&format!("/channels/{channel}/events")))
            .json(&body)
            .send()
            .await
            .expect("publish request");
        assert_eq!(res.status(), 202, "publish to {channel}");
        let v: Value = res.json().await.expect("json body");
        v["id"].as_str().expect("id in body").to_string()
    }

    /// Opens `/events?{query}`, optionally resuming with a `Last-Event-ID` header.
    pub async fn subscribe(&self, query: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = self.http.get(self.url(&format!("/events?{query}")));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = req.send().await.expect("subscribe request");
        assert_eq!(res.status(), 200, "subscribe {query}");
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Sse::new(res)
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("server drains in time")
                .expect("server task ok");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("reqwest client")
}

/// One parsed SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub event: String,
    pub data: String,
}

/// A real SSE client over a streaming HTTP response.
pub struct Sse {
    stream: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<eventsource_stream::Event, String>> + Send>,
    >,
}

impl Sse {
    /// Reads a streaming response as SSE.
    pub fn new(res: reqwest::Response) -> Self {
        use eventsource_stream::Eventsource;
        let stream = res
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()));
        Self {
            stream: Box::pin(stream),
        }
    }

    /// The next event, or `None` if the stream ended or `wait` passed.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Event> {
        match tokio::time::timeout(wait, self.stream.next()).await {
            Ok(Some(Ok(e))) => Some(Event {
                id: e.id,
                event: e.event,
                data: e.data,
            }),
            Ok(Some(Err(e))) => panic!("SSE stream error: {e}"),
            Ok(None) | Err(_) => None,
        }
    }

    /// The next event; fails the test if none arrives in time.
    pub async fn next(&mut self) -> Event {
        self.next_within(WAIT)
            .await
            .expect("an event within the wait")
    }

    /// Collects exactly `n` events.
    pub async fn take(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            match self.next_within(WAIT).await {
                Some(e) => out.push(e),
                None => panic!("only {i} of {n} events arrived"),
            }
        }
        out
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(e) = self.next_within(wait).await {
            panic!("unexpected event {e:?}");
        }
    }

    /// Whether the server ended the stream within `wait`.
    pub async fn ends_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// Herald started as a real process (for signals and exit codes).
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub logs: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl ServerProcess {
    /// Spawns the `herald` binary with the given env, waits for "listening".
    pub async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.args(args);
        Self::spawn_command(cmd, env).await
    }

    /// Like [`ServerProcess::spawn`], but the process starts with the given
    /// soft and hard open-files limits (set by `sh`, which then `exec`s
    /// Herald, so the pid is Herald's).
    pub async fn spawn_with_nofile(
        soft: u64,
        hard: u64,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "ulimit -S -n {soft} && ulimit -H -n {hard} && exec \"$0\" \"$@\""
            ))
            .arg(env!("CARGO_BIN_EXE_herald"))
            .args(args);
        Self::spawn_command(cmd, env).await
    }

    async fn spawn_command(mut cmd: tokio::process::Command, env: &[(&str, &str)]) -> Self {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn herald binary");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        let mut seen = Vec::new();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = rx.recv().await {
                seen.push(line.clone());
                if let Some(addr) = parse_listening(&line) {
                    return Some(addr);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("herald did not report listening; output: {seen:#?}"));
        let (tx2, rx2) = tokio::sync::mpsc::unbounded_channel();
        for line in seen {
            let _ = tx2.send(line);
        }
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if tx2.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            addr,
            logs: rx2,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("process still running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {pid}");
    }

    /// Every log line seen so far.
    pub fn drain_logs(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.logs.try_recv() {
            out.push(line);
        }
        out
    }
}

fn parse_listening(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    // Pretty: `addr=127.0.0.1:1234`; JSON: `"addr":"127.0.0.1:1234"`.
    let rest = line
        .split_once("addr=")
        .map(|(_, r)| r)
        .or_else(|| line.split_once("\"addr\":\"").map(|(_, r)| r))?;
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))?;
    rest[..end].parse().ok()
}

/// Opens a raw TCP connection and sends `GET {target}` with extra header lines.
pub async fn raw_get(addr: SocketAddr, target: &str, extra_headers: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{extra_headers}\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .expect("send request");
    stream
}

/// Reads from `stream` until EOF or `wait`; returns the bytes and whether EOF was seen.
pub async fn read_until_eof(stream: &mut tokio::net::TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// Reads until `needle` has been seen `count` times in total, or `wait` passes.
pub async fn read_until_count(
    stream: &mut tokio::net::TcpStream,
    needle: &[u8],
    count: usize,
    wait: Duration,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = 0;
    let mut scanned = 0;
    loop {
        // Count only the new bytes (plus an overlap for a split needle).
        seen += count_occurrences(&out[scanned..], needle);
        scanned = out.len().saturating_sub(needle.len() - 1).max(scanned);
        if seen >= count {
            return out;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

pub fn count_occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Fetches `/metrics` and returns the value of the first sample whose line starts with `prefix`.
pub async fn metric(http: &reqwest::Client, base: &str, prefix: &str) -> Option<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Reads VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}
