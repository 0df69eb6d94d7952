//! The subscriber side of the bench: one "worker" holds a share of the
//! subscribers, either as a task inside the bench process or as a child
//! process (see [`crate::worker`]) when one process cannot hold them all.
//!
//! Each subscriber is one tokio task owning a raw `TcpStream`: it writes a
//! hand-made `GET /events`, reads the response head, then feeds each `read`
//! through the chunk decoder and SSE parser, recording latency per event and
//! one bit per received event for the loss check. The worker is driven by
//! [`Command`]s from the bench's controller and answers with [`WorkerMsg`]s
//! (see [`crate::protocol`]).

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::accounting::{Arrival, Expected, OrderTracker};
use crate::protocol::{Command, WorkerMsg, WorkerReport, histogram_pairs, new_histogram, unix_ns};
use crate::sse::{ChunkDecoder, Payload, SseParser, parse_head, parse_id};
use crate::target::Target;

/// How subscribers behave while the bench publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Connect once and stay connected.
    Fanout,
    /// Each subscriber drops its connection every `--reconnect-every` seconds
    /// (staggered) and resumes with `Last-Event-ID`.
    Reconnect,
    /// All subscribers drop at once and resume at once, while publishing goes on.
    Storm,
}

/// One subscriber to run.
#[derive(Debug, Clone)]
pub struct SubSpec {
    /// Its number among all the bench's subscribers.
    pub global: usize,
    /// Index of the server it connects to in [`WorkerPlan::targets`].
    pub target: usize,
    /// Index of its channel in [`WorkerPlan::channels`].
    pub channel: usize,
    /// Local address to bind before connecting, if spreading sources.
    pub source: Option<Ipv4Addr>,
}

/// Everything a worker needs to run its share.
#[derive(Debug, Clone)]
pub struct WorkerPlan {
    /// The servers (replicas of one deployment).
    pub targets: Vec<Target>,
    /// Bearer token sent with each subscribe request.
    pub token: Option<String>,
    /// All the bench's channel names; a subscriber's `channel` indexes this.
    pub channels: Vec<String>,
    /// This worker's subscribers.
    pub subs: Vec<SubSpec>,
    /// Behaviour while publishing.
    pub mode: Mode,
    /// Reconnect mode: time between a subscriber's drops.
    pub reconnect_every: Duration,
    /// Connections opening at once during the initial connect phase.
    pub connect_concurrency: usize,
    /// Time allowed for one connect + response head.
    pub attempt_timeout: Duration,
    /// Time allowed for the whole initial connect phase.
    pub connect_phase: Duration,
    /// Extra initial attempts after a failed one.
    pub connect_retries: u32,
    /// Nothing runs past this.
    pub hard_deadline: Instant,
    /// Read buffer per subscriber.
    pub read_buf: usize,
}

/// What every subscriber task sees from the worker.
#[derive(Debug, Clone, Default)]
struct Ctl {
    started: Option<u64>,
    storm: Option<u64>,
    finish: Option<Arc<Vec<Expected>>>,
    stop: bool,
}

struct Shared {
    targets: Vec<Target>,
    token: Option<String>,
    channels: Vec<String>,
    mode: Mode,
    reconnect_every: Duration,
    attempt_timeout: Duration,
    connect_retries: u32,
    hard_deadline: Instant,
    read_buf: usize,
    /// Latency histograms, sharded by subscriber to keep lock contention low.
    latency: Vec<Mutex<Histogram<u64>>>,
    /// Bounds concurrent opens during the initial connect phase.
    connect_gate: Semaphore,
}

/// One subscriber's results.
#[derive(Debug, Default)]
struct SubResult {
    channel: usize,
    held: bool,
    connect_errors: u64,
    http_status: Vec<u16>,
    last_error: Option<String>,
    order: OrderTracker,
    events: u64,
    measured: u64,
    duplicates: u64,
    out_of_order: u64,
    foreign: u64,
    resets: u64,
    reconnects: u64,
    disconnects: u64,
    resumed: u64,
    reads: u64,
    comments: u64,
    storm_at: Option<u64>,
    storm_reconnected: Option<u64>,
    storm_recovered: Option<u64>,
}

/// Why a stream ended.
enum StreamEnd {
    /// Drop and resume (planned, storm or server closed).
    Resume,
    /// The subscriber is done.
    Done,
}

/// Runs a worker until it has reported; `out` gets `Connected` then `Report`.
pub async fn run_worker(
    plan: WorkerPlan,
    mut commands: mpsc::UnboundedReceiver<Command>,
    out: mpsc::UnboundedSender<WorkerMsg>,
) {
    let n = plan.subs.len();
    let hard_deadline = plan.hard_deadline;
    let shards = 16.min(n.max(1));
    let shared = Arc::new(Shared {
        targets: plan.targets,
        token: plan.token,
        channels: plan.channels,
        mode: plan.mode,
        reconnect_every: plan.reconnect_every,
        attempt_timeout: plan.attempt_timeout,
        connect_retries: plan.connect_retries,
        hard_deadline,
        read_buf: plan.read_buf,
        latency: (0..shards).map(|_| Mutex::new(new_histogram())).collect(),
        connect_gate: Semaphore::new(plan.connect_concurrency.max(1)),
    });
    let (ctl_tx, ctl_rx) = watch::channel(Ctl::default());
    let (first_tx, mut first_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut tasks = JoinSet::new();
    for spec in plan.subs {
        tasks.spawn(run_subscriber(
            spec,
            shared.clone(),
            ctl_rx.clone(),
            first_tx.clone(),
        ));
    }
    drop(first_tx);
    drop(ctl_rx);

    // Initial connect phase: wait for every subscriber's first outcome.
    let phase_end = (Instant::now() + plan.connect_phase).min(hard_deadline);
    let (mut ok, mut decided) = (0u64, 0usize);
    let mut last_error = None;
    let mut pending = VecDeque::new();
    let mut commands_open = true;
    while decided < n {
        tokio::select! {
            r = first_rx.recv() => match r {
                Some(Ok(())) => { decided += 1; ok += 1; }
                Some(Err(e)) => { decided += 1; last_error = Some(e); }
                None => break,
            },
            c = commands.recv(), if commands_open => match c {
                Some(c) => pending.push_back(c),
                None => { commands_open = false; break; }
            },
            _ = tokio::time::sleep_until(phase_end) => break,
        }
    }
    let _ = out.send(WorkerMsg::Connected {
        held: ok,
        failed: n as u64 - ok,
        error: last_error,
    });

    // Follow the controller until it says Finish (or goes away).
    let mut expected: Option<Arc<Vec<Expected>>> = None;
    let mut drain_end = Instant::now();
    loop {
        let cmd = match pending.pop_front() {
            Some(c) => Some(c),
            None if commands_open => tokio::select! {
                c = commands.recv() => c,
                _ = tokio::time::sleep_until(hard_deadline) => None,
            },
            None => None,
        };
        match cmd {
            Some(Command::Start { unix_ns }) => ctl_tx.send_modify(|c| c.started = Some(unix_ns)),
            Some(Command::Storm { unix_ns }) => ctl_tx.send_modify(|c| c.storm = Some(unix_ns)),
            Some(Command::Finish {
                expected: e,
                drain_ms,
            }) => {
                let e = Arc::new(e);
                expected = Some(e.clone());
                ctl_tx.send_modify(|c| c.finish = Some(e));
                drain_end = Instant::now() + Duration::from_millis(drain_ms);
                break;
            }
            Some(Command::Stop) | None => break,
        }
    }

    // Drain: subscribers end themselves once complete; stop the rest at the deadline.
    let drain_end = drain_end.min(hard_deadline);
    let mut results = Vec::with_capacity(n);
    let mut aborted = 0u64;
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                Some(Ok(res)) => results.push(res),
                Some(Err(_)) => aborted += 1,
                None => break,
            },
            _ = tokio::time::sleep_until(drain_end) => {
                ctl_tx.send_modify(|c| c.stop = true);
                break;
            }
        }
    }
    let grace = Instant::now() + Duration::from_secs(5);
    while let Ok(Some(r)) = tokio::time::timeout_at(grace, tasks.join_next()).await {
        match r {
            Ok(res) => results.push(res),
            Err(_) => aborted += 1,
        }
    }
    aborted += tasks.len() as u64;
    tasks.abort_all();

    let mut report = WorkerReport {
        subscribers: n as u64,
        aborted,
        ..Default::default()
    };
    let mut storm_reconnect = new_histogram();
    let mut storm_recover = new_histogram();
    for r in &results {
        add_result(
            &mut report,
            r,
            expected.as_deref(),
            &mut storm_reconnect,
            &mut storm_recover,
        );
    }
    let mut latency = new_histogram();
    for shard in &shared.latency {
        let h = shard.lock().unwrap_or_else(|e| e.into_inner());
        // Same bounds on both sides, so adding cannot fail.
        let _ = latency.add(&*h);
    }
    report.latency_us = histogram_pairs(&latency);
    report.storm_reconnect_ms = histogram_pairs(&storm_reconnect);
    report.storm_recover_ms = histogram_pairs(&storm_recover);
    let _ = out.send(WorkerMsg::Report(Box::new(report)));
}

fn add_result(
    report: &mut WorkerReport,
    r: &SubResult,
    expected: Option<&Vec<Expected>>,
    storm_reconnect: &mut Histogram<u64>,
    storm_recover: &mut Histogram<u64>,
) {
    report.held += r.held as u64;
    report.connect_errors += r.connect_errors;
    for s in &r.http_status {
        *report.http_status.entry(*s).or_default() += 1;
    }
    if report.last_error.is_none() {
        report.last_error.clone_from(&r.last_error);
    }
    report.events += r.events;
    report.measured += r.measured;
    report.duplicates += r.duplicates;
    report.out_of_order += r.out_of_order;
    report.foreign += r.foreign;
    report.resets += r.resets;
    report.reconnects += r.reconnects;
    report.disconnects += r.disconnects;
    report.resumed += r.resumed;
    report.reads += r.reads;
    report.comments += r.comments;
    report.epoch_changes += r.order.epoch_changes;
    if r.held
        && let Some(exp) = expected.and_then(|e| e.get(r.channel))
    {
        let (_, lost, unexpected) = exp.compare(&r.order.received);
        report.lost += lost;
        report.unexpected += unexpected;
        report.subs_with_loss += (lost > 0) as u64;
    }
    if let Some(storm) = r.storm_at
        && r.held
    {
        if let Some(t) = r.storm_reconnected {
            storm_reconnect.saturating_record((t.saturating_sub(storm) / 1_000_000).max(1));
        }
        match r.storm_recovered {
            Some(t) => {
                storm_recover.saturating_record((t.saturating_sub(storm) / 1_000_000).max(1))
            }
            None => report.storm_unrecovered += 1,
        }
    }
}

/// A subscriber's connection and decoding state.
struct Subscriber {
    spec: SubSpec,
    shared: Arc<Shared>,
    ctl: watch::Receiver<Ctl>,
    parser: SseParser,
    buf: Vec<u8>,
    latency: Vec<u64>,
    res: SubResult,
    /// Storm time already acted on.
    storm_seen: Option<u64>,
    /// Reconnect mode: when to drop next.
    next_drop: Option<Instant>,
    finish: Option<Arc<Vec<Expected>>>,
    stop: bool,
}

async fn run_subscriber(
    spec: SubSpec,
    shared: Arc<Shared>,
    ctl: watch::Receiver<Ctl>,
    first: mpsc::UnboundedSender<Result<(), String>>,
) -> SubResult {
    let mut sub = Subscriber {
        res: SubResult {
            channel: spec.channel,
            ..Default::default()
        },
        buf: vec![0; shared.read_buf],
        spec,
        shared,
        ctl,
        parser: SseParser::new(),
        latency: Vec::new(),
        storm_seen: None,
        next_drop: None,
        finish: None,
        stop: false,
    };
    sub.run(first).await;
    sub.res.comments = sub.parser.comments;
    sub.res
}

impl Subscriber {
    async fn run(&mut self, first: mpsc::UnboundedSender<Result<(), String>>) {
        let mut first = Some(first);
        let mut failures: u32 = 0;
        let mut resuming = false;
        loop {
            if self.sync_ctl() || self.complete() || Instant::now() >= self.shared.hard_deadline {
                break;
            }
            let attempt = {
                // Only the initial connect phase is gated: a storm is meant to be all at once.
                let shared = self.shared.clone();
                let _permit = match first {
                    Some(_) => shared.connect_gate.acquire().await.ok(),
                    None => None,
                };
                let deadline =
                    (Instant::now() + self.shared.attempt_timeout).min(self.shared.hard_deadline);
                tokio::time::timeout_at(deadline, self.open()).await
            };
            let (stream, head_len, filled, chunked) = match attempt {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    self.fail(e, &mut failures);
                    if self.give_up(failures, &mut first) {
                        break;
                    }
                    self.backoff(failures).await;
                    continue;
                }
                Err(_) => {
                    self.fail("connect timed out".to_string(), &mut failures);
                    if self.give_up(failures, &mut first) {
                        break;
                    }
                    continue;
                }
            };
            failures = 0;
            self.res.held = true;
            if let Some(f) = first.take() {
                let _ = f.send(Ok(()));
            }
            if resuming {
                self.res.resumed += 1;
            }
            if self.res.storm_at.is_some() && self.res.storm_reconnected.is_none() {
                self.res.storm_reconnected = Some(unix_ns());
            }
            if self.shared.mode == Mode::Reconnect
                && let Some(next) = self.next_drop
                && next <= Instant::now()
            {
                self.next_drop = Some(Instant::now() + self.shared.reconnect_every);
            }
            match self.read_stream(stream, head_len, filled, chunked).await {
                StreamEnd::Done => break,
                StreamEnd::Resume => resuming = true,
            }
        }
        if let Some(f) = first.take() {
            let _ = f.send(Err("stopped before connecting".into()));
        }
    }

    /// Reads the worker's control state; true when told to stop.
    fn sync_ctl(&mut self) -> bool {
        let c = self.ctl.borrow_and_update().clone();
        if c.stop {
            self.stop = true;
        }
        if let Some(f) = c.finish {
            self.finish = Some(f);
            self.next_drop = None;
        }
        if self.shared.mode == Mode::Reconnect
            && self.finish.is_none()
            && self.next_drop.is_none()
            && self.res.reconnects == 0
            && c.started.is_some()
        {
            let every = self.shared.reconnect_every.as_secs_f64();
            let offset = Duration::from_secs_f64(fastrand::f64() * every);
            self.next_drop = Some(Instant::now() + offset);
        }
        if let Some(t) = c.storm
            && self.storm_seen != Some(t)
        {
            self.storm_seen = Some(t);
            self.res.storm_at = Some(t);
        }
        self.stop
    }

    /// True once the worker has said what to expect and all of it arrived.
    fn complete(&self) -> bool {
        let Some(f) = &self.finish else { return false };
        let Some(exp) = f.get(self.spec.channel) else {
            return true;
        };
        self.res.order.received.len() >= exp.count() && exp.compare(&self.res.order.received).1 == 0
    }

    fn fail(&mut self, e: String, failures: &mut u32) {
        *failures += 1;
        self.res.connect_errors += 1;
        self.res.last_error = Some(e);
    }

    /// Whether to stop retrying; reports a failed initial connect.
    fn give_up(
        &mut self,
        failures: u32,
        first: &mut Option<mpsc::UnboundedSender<Result<(), String>>>,
    ) -> bool {
        let limit = if self.res.held {
            50
        } else {
            self.shared.connect_retries + 1
        };
        if failures >= limit {
            if let Some(f) = first.take() {
                let _ = f.send(Err(self.res.last_error.clone().unwrap_or_default()));
            }
            return true;
        }
        false
    }

    async fn backoff(&mut self, failures: u32) {
        let base = 50u64 << failures.min(5);
        let wait = Duration::from_millis(base.min(2000) + fastrand::u64(0..50));
        let until = (Instant::now() + wait).min(self.shared.hard_deadline);
        tokio::time::sleep_until(until).await;
    }

    /// Connects, sends the subscribe request and reads the response head.
    /// Returns the stream, the head length, the bytes read so far, and
    /// whether the body is chunked.
    async fn open(&mut self) -> Result<(TcpStream, usize, usize, bool), String> {
        let sh = &self.shared;
        let target = &sh.targets[self.spec.target % sh.targets.len()];
        let mut stream = target
            .connect(self.spec.source)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut req = String::with_capacity(256);
        req.push_str("GET ");
        req.push_str(&target.base_path);
        req.push_str("/events?channel=");
        req.push_str(&sh.channels[self.spec.channel]);
        req.push_str(" HTTP/1.1\r\nHost: ");
        req.push_str(&target.host);
        req.push_str("\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n");
        if let Some(t) = &sh.token {
            req.push_str("Authorization: Bearer ");
            req.push_str(t);
            req.push_str("\r\n");
        }
        let last = self.parser.last_id();
        if !last.is_empty() {
            req.push_str("Last-Event-ID: ");
            req.push_str(&String::from_utf8_lossy(last));
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut filled = 0;
        loop {
            if filled == self.buf.len() {
                return Err("response head larger than the read buffer".into());
            }
            let n = stream
                .read(&mut self.buf[filled..])
                .await
                .map_err(|e| format!("read head: {e}"))?;
            if n == 0 {
                return Err("server closed before the response head".into());
            }
            filled += n;
            if let Some((head, len)) = parse_head(&self.buf[..filled]).map_err(String::from)? {
                if head.status != 200 {
                    self.res.http_status.push(head.status);
                    return Err(format!("status {}", head.status));
                }
                if !head.event_stream {
                    return Err("200 but not text/event-stream".into());
                }
                return Ok((stream, len, filled, head.chunked));
            }
        }
    }

    /// Reads events until the stream should end.
    async fn read_stream(
        &mut self,
        mut stream: TcpStream,
        head_len: usize,
        filled: usize,
        chunked: bool,
    ) -> StreamEnd {
        self.parser.reset_stream();
        let mut decoder = chunked.then(ChunkDecoder::default);
        let mut start = head_len;
        let mut n = filled;
        // Both timers are created once per connection and re-armed, not per read.
        let hard_stop = tokio::time::sleep_until(self.shared.hard_deadline);
        tokio::pin!(hard_stop);
        let far = self.shared.hard_deadline + Duration::from_secs(3600);
        let mut armed = self.next_drop;
        let drop_timer = tokio::time::sleep_until(armed.unwrap_or(far));
        tokio::pin!(drop_timer);
        // A control-change future kept across reads: making one per read
        // would register and unregister a waiter every time.
        let mut control = Box::pin(control_changed(self.ctl.clone()));
        loop {
            if n > start {
                match self.process(&mut decoder, start, n) {
                    Ok(false) => {}
                    Ok(true) => {
                        self.res.disconnects += 1;
                        return StreamEnd::Resume;
                    }
                    Err(()) => {
                        self.res.disconnects += 1;
                        self.res.last_error = Some("bad chunked encoding".into());
                        return StreamEnd::Resume;
                    }
                }
                if self.complete() {
                    return StreamEnd::Done;
                }
            }
            start = 0;
            if self.next_drop != armed {
                armed = self.next_drop;
                drop_timer.as_mut().reset(armed.unwrap_or(far));
            }
            tokio::select! {
                r = stream.read(&mut self.buf) => match r {
                    Ok(0) | Err(_) => {
                        self.res.disconnects += 1;
                        return StreamEnd::Resume;
                    }
                    Ok(k) => n = k,
                },
                (alive, watcher) = &mut control => {
                    n = 0;
                    if !alive {
                        return StreamEnd::Done;
                    }
                    control.set(control_changed(watcher));
                    let storm_before = self.storm_seen;
                    if self.sync_ctl() || self.complete() {
                        return StreamEnd::Done;
                    }
                    if self.storm_seen != storm_before {
                        self.res.reconnects += 1;
                        return StreamEnd::Resume;
                    }
                },
                _ = &mut drop_timer, if armed.is_some() => {
                    self.res.reconnects += 1;
                    self.next_drop = Some(Instant::now() + self.shared.reconnect_every);
                    return StreamEnd::Resume;
                },
                _ = &mut hard_stop => return StreamEnd::Done,
            }
        }
    }

    /// Decodes `buf[start..end]`; `Ok(true)` if the body ended.
    fn process(
        &mut self,
        decoder: &mut Option<ChunkDecoder>,
        start: usize,
        end: usize,
    ) -> Result<bool, ()> {
        let now = unix_ns();
        let Subscriber {
            parser,
            buf,
            latency,
            res,
            ..
        } = self;
        res.reads += 1;
        let mut on_event = |ev: crate::sse::SseEvent<'_>| record_event(res, latency, now, ev);
        let ended = match decoder {
            Some(d) => d
                .feed(&buf[start..end], &mut |chunk| {
                    parser.feed(chunk, &mut on_event)
                })
                .map_err(|_| ())?,
            None => {
                parser.feed(&buf[start..end], &mut on_event);
                false
            }
        };
        if !self.latency.is_empty() {
            let shards = &self.shared.latency;
            let mut h = shards[self.spec.global % shards.len()]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for &us in &self.latency {
                h.saturating_record(us.max(1));
            }
            drop(h);
            self.latency.clear();
        }
        Ok(ended)
    }
}

fn record_event(
    res: &mut SubResult,
    latency: &mut Vec<u64>,
    now: u64,
    ev: crate::sse::SseEvent<'_>,
) {
    if ev.event == b"herald.reset" {
        res.resets += 1;
        return;
    }
    let Some(p) = Payload::parse(ev.data) else {
        res.foreign += 1;
        return;
    };
    match res.order.record(p.index, parse_id(ev.id)) {
        Arrival::New => {}
        Arrival::OutOfOrder => res.out_of_order += 1,
        Arrival::Duplicate => res.duplicates += 1,
        Arrival::Foreign => {
            res.foreign += 1;
            return;
        }
    }
    res.events += 1;
    if p.measured {
        res.measured += 1;
        latency.push(now.saturating_sub(p.sent_unix_ns) / 1000);
    }
    if let Some(rc) = res.storm_reconnected
        && res.storm_recovered.is_none()
        && p.sent_unix_ns >= rc
    {
        res.storm_recovered = Some(now);
    }
}

/// Resolves when the worker's control state changes (false: the worker is
/// gone), handing the receiver back for the next wait.
async fn control_changed(mut rx: watch::Receiver<Ctl>) -> (bool, watch::Receiver<Ctl>) {
    let alive = rx.changed().await.is_ok();
    (alive, rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::histogram_from_pairs;
    use tokio::net::TcpListener;

    /// A fake server: every subscriber gets the same chunked stream, split
    /// awkwardly across chunks, then the connection stays open.
    async fn fake_server(listener: TcpListener, body: &'static [u8]) {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let _ = s.write_all(head).await;
                for piece in body.chunks(37) {
                    let frame = format!("{:x}\r\n", piece.len());
                    let _ = s.write_all(frame.as_bytes()).await;
                    let _ = s.write_all(piece).await;
                    let _ = s.write_all(b"\r\n").await;
                }
                // Hold the stream open until the client goes.
                let _ = s.read(&mut buf).await;
            });
        }
    }

    #[tokio::test]
    async fn worker_counts_loss_duplicates_order_and_resets() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let now = unix_ns();
        // Index 2 never comes (lost), 1 comes twice (duplicate), 4 comes
        // with a lower seq than 3 (out of order), and one reset.
        let body: &'static [u8] = Box::leak(
            format!(
                "retry: 1000\n\n: hi\n\n\
                 id: 9-10\ndata: {now} 0 m x\n\n\
                 id: 9-11\ndata: {now} 1 m x\n\n\
                 id: 9-11\ndata: {now} 1 m x\n\n\
                 id: 9-14\ndata: {now} 3 w x\n\n\
                 id: 9-13\ndata: {now} 4 m x\n\n\
                 event: herald.reset\ndata: {{\"reason\":\"test\"}}\n\n\
                 data: not the bench's\n\n"
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        tokio::spawn(fake_server(listener, body));
        let targets = vec![Target::parse(&format!("http://{addr}")).unwrap()];
        let plan = WorkerPlan {
            targets,
            token: None,
            channels: vec!["c".into()],
            subs: (0..3)
                .map(|i| SubSpec {
                    global: i,
                    target: 0,
                    channel: 0,
                    source: None,
                })
                .collect(),
            mode: Mode::Fanout,
            reconnect_every: Duration::from_secs(3),
            connect_concurrency: 2,
            attempt_timeout: Duration::from_secs(5),
            connect_phase: Duration::from_secs(5),
            connect_retries: 0,
            hard_deadline: Instant::now() + Duration::from_secs(20),
            read_buf: 512,
        };
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel();
        let worker = tokio::spawn(run_worker(plan, cmd_rx, out_tx));
        match out_rx.recv().await.unwrap() {
            WorkerMsg::Connected { held, failed, .. } => assert_eq!((held, failed), (3, 0)),
            other => panic!("expected Connected, got {other:?}"),
        }
        cmd_tx.send(Command::Start { unix_ns: now }).unwrap();
        // Index 2 never arrives, so the subscribers never complete and the
        // worker reports at the end of the drain, by which time the rest of
        // the (tiny, loopback) stream has long arrived.
        cmd_tx
            .send(Command::Finish {
                expected: vec![Expected {
                    end: 5,
                    missing: vec![],
                }],
                drain_ms: 2000,
            })
            .unwrap();
        let report = match out_rx.recv().await.unwrap() {
            WorkerMsg::Report(r) => r,
            other => panic!("expected Report, got {other:?}"),
        };
        worker.await.unwrap();
        assert_eq!(report.subscribers, 3);
        assert_eq!(report.held, 3);
        assert_eq!(report.events, 3 * 5);
        assert_eq!(report.measured, 3 * 4, "index 3 was a warm-up event");
        assert_eq!(report.lost, 3);
        assert_eq!(report.subs_with_loss, 3);
        assert_eq!(report.duplicates, 3);
        assert_eq!(report.out_of_order, 3);
        assert_eq!(report.resets, 3);
        assert_eq!(report.foreign, 3);
        assert_eq!(report.comments, 3);
        let latency = histogram_from_pairs(&report.latency_us);
        assert_eq!(latency.len(), 3 * 4);
    }
}
