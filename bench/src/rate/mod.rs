//! The publish-rate run (`herald-bench publish`): how many publishes per
//! second a server takes over keep-alive HTTP/1.1, and at what latency and
//! server CPU, with no subscribers.
//!
//! - Closed loop (the default): each of `--connections` sends its next
//!   request as soon as the previous response arrives.
//! - Open loop (`--rate R`): R requests/s in all, paced by [`pacing`].
//!
//! Every request is built once per connection ([`request`]) and resent as
//! is; channels go round-robin over connections. Only requests sent inside
//! the measured window (after `--warmup`) count towards rates and latency.
//! `--publish-url` and `--body raw` point it at other servers' publish
//! endpoints (Nchan's `POST /pub?id=…`) for side-by-side figures.

pub mod pacing;
pub mod report;
pub mod request;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::time::Instant;

use self::pacing::Pacer;
use self::report::{RateReport, ServerCpu};
use self::request::{BodyKind, Endpoint};
use crate::client::{Failure, REQUEST_TIMEOUT};
use crate::protocol::new_histogram;
use crate::server_stats;

/// Command-line options of `herald-bench publish`.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// Base URL of the Herald server (loopback only); publishes go to
    /// `<url>/channels/{channel}/events` (or `/events/batch` with --batch > 1).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Full publish URL template instead, with `{channel}` in the path or
    /// query, e.g. `http://127.0.0.1:8080/pub?id={channel}` for Nchan (loopback only).
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Body format: Herald's JSON, or the raw event bytes (Nchan's publisher).
    #[arg(long, value_enum, default_value_t = BodyKind::Herald)]
    pub body: BodyKind,
    /// Keep-alive connections, each with one request in flight.
    #[arg(short = 'c', long, default_value_t = 16)]
    pub connections: usize,
    /// Open loop: requests per second over all connections. Without it the
    /// run is closed loop (each connection sends as fast as responses come).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Events per request; more than 1 uses Herald's batch endpoint.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Channels, assigned round-robin to connections (`bench-<run id>-<i>`).
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Measured window, seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up, seconds: sent, but not counted in rates or latency.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Most requests in the whole run, warm-up included.
    #[arg(long, default_value_t = 100_000_000)]
    pub max_requests: u64,
    /// Bearer token sent with every publish.
    #[arg(long, env = "HERALD_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PID of the server, to report its CPU per publish and per event.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Runtime worker threads [default: the CPUs this process may use].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Open loop: a request sent later than this after it was due counts as
/// late. tokio's timers have 1 ms resolution, so anything tighter would
/// flag the timer rather than the bench.
const LATE: Duration = Duration::from_millis(5);

/// Pause after a failed request, so that a refused connection is not retried in a spin.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Runs the publish-rate benchmark and prints its report.
pub fn run(args: PublishArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let endpoint = match &args.publish_url {
        Some(t) => Endpoint::parse(t)?,
        None => Endpoint::herald(&args.url, args.batch)?,
    };
    let body = request::body(args.body, args.batch, args.payload)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(t) = args.threads {
        builder.worker_threads(t.max(1));
    }
    let rt = builder.build()?;
    let report = rt.block_on(control(&args, endpoint, body))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if report.requests_ok_total == 0 {
        anyhow::bail!(
            "no publish was accepted by {}: {}",
            report.url,
            report
                .errors
                .first()
                .map_or("see the statuses above", String::as_str)
        );
    }
    Ok(())
}

fn validate(a: &PublishArgs) -> anyhow::Result<()> {
    if !a.duration.is_finite() || a.duration < 0.1 || a.duration > 86_400.0 {
        anyhow::bail!("--duration must be between 0.1 and 86400 seconds");
    }
    if !a.warmup.is_finite() || a.warmup < 0.0 || a.warmup > 86_400.0 {
        anyhow::bail!("--warmup must be between 0 and 86400 seconds");
    }
    if a.connections == 0 || a.connections > 4096 {
        anyhow::bail!("--connections must be between 1 and 4096");
    }
    if let Some(r) = a.rate
        && (!r.is_finite() || !(0.001..=10_000_000.0).contains(&r))
    {
        anyhow::bail!("--rate must be between 0.001 and 10,000,000 requests/s");
    }
    if a.batch == 0 || a.batch > 10_000 {
        anyhow::bail!("--batch must be between 1 and 10,000");
    }
    if a.payload > 1 << 20 {
        anyhow::bail!("--payload must be at most 1 MiB");
    }
    if a.channels == 0 || a.channels > 100_000 {
        anyhow::bail!("--channels must be between 1 and 100,000");
    }
    if a.max_requests == 0 {
        anyhow::bail!("--max-requests must be at least 1");
    }
    Ok(())
}

/// What every connection task shares.
struct Plan {
    endpoint: Endpoint,
    requests: Vec<Vec<u8>>,
    rate: Option<f64>,
    connections: usize,
    max_requests: u64,
    start: Instant,
    measure_start: Instant,
    end: Instant,
    /// Closed loop: requests started so far, for the count bound.
    started: AtomicU64,
}

/// What one connection did (and, merged, all of them).
#[derive(Debug)]
pub struct ConnResult {
    /// Requests sent, warm-up included.
    pub requests: u64,
    /// Of those, answered 2xx.
    pub requests_ok: u64,
    /// Requests sent in the measured window and answered 2xx.
    pub measured_ok: u64,
    /// Requests sent in the measured window, whatever came of them.
    pub measured: u64,
    /// Open loop: measured requests sent more than [`LATE`] after they were due.
    pub late: u64,
    /// Every status received, by code (measured window and warm-up).
    pub status: BTreeMap<u16, u64>,
    /// Requests that failed on the wire (connect, reset, timeout).
    pub io_errors: u64,
    /// One error message, for diagnosis.
    pub last_error: Option<String>,
    /// Latency of measured 2xx requests, µs: from send (closed loop) or from
    /// when the request was due (open loop) until the whole response was read.
    pub latency_us: Histogram<u64>,
}

impl ConnResult {
    fn new() -> ConnResult {
        ConnResult {
            requests: 0,
            requests_ok: 0,
            measured_ok: 0,
            measured: 0,
            late: 0,
            status: BTreeMap::new(),
            io_errors: 0,
            last_error: None,
            latency_us: new_histogram(),
        }
    }

    fn merge(&mut self, o: ConnResult) {
        self.requests += o.requests;
        self.requests_ok += o.requests_ok;
        self.measured_ok += o.measured_ok;
        self.measured += o.measured;
        self.late += o.late;
        for (k, v) in o.status {
            *self.status.entry(k).or_default() += v;
        }
        self.io_errors += o.io_errors;
        if self.last_error.is_none() {
            self.last_error = o.last_error;
        }
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency_us.add(&o.latency_us);
    }
}

async fn control(
    args: &PublishArgs,
    endpoint: Endpoint,
    body: Vec<u8>,
) -> anyhow::Result<RateReport> {
    let run_id = format!("{:08x}", fastrand::u32(..));
    let channels: Vec<String> = (0..args.channels)
        .map(|c| format!("bench-{run_id}-{c}"))
        .collect();
    let requests = channels
        .iter()
        .map(|c| request::build(&endpoint, c, args.body, &body, args.token.as_deref()))
        .collect();
    let start = Instant::now() + Duration::from_millis(20);
    let measure_start = start + Duration::from_secs_f64(args.warmup);
    let end = measure_start + Duration::from_secs_f64(args.duration);
    let plan = Arc::new(Plan {
        endpoint: endpoint.clone(),
        requests,
        rate: args.rate,
        connections: args.connections,
        max_requests: args.max_requests,
        start,
        measure_start,
        end,
        started: AtomicU64::new(0),
    });
    eprintln!(
        "bench {run_id}: {} to {} over {} connection(s), {} s (+{} s warm-up)",
        match args.rate {
            Some(r) => format!("{r} requests/s (open loop)"),
            None => "publishing as fast as answered (closed loop)".to_string(),
        },
        endpoint.display(),
        args.connections,
        args.duration,
        args.warmup
    );
    let mut tasks = tokio::task::JoinSet::new();
    for j in 0..args.connections {
        tasks.spawn(connection(plan.clone(), j));
    }

    // CPU over the measured window: the server's (--server-pid) and the bench's own.
    let ticks = server_stats::clock_ticks_per_second();
    let me = std::process::id();
    tokio::time::sleep_until(measure_start).await;
    let server_a = args.server_pid.map(server_stats::sample).transpose()?;
    let bench_a = server_stats::sample(me).ok();
    let machine_a = server_stats::machine_busy_ticks();
    let window_a = Instant::now();
    tokio::time::sleep_until(end).await;
    let window = window_a.elapsed().as_secs_f64().max(1e-3);
    let server_b = args.server_pid.and_then(|p| server_stats::sample(p).ok());
    let bench_b = server_stats::sample(me).ok();
    let machine_b = server_stats::machine_busy_ticks();

    let mut total = ConnResult::new();
    let join_deadline = end + REQUEST_TIMEOUT + Duration::from_secs(1);
    while let Ok(Some(r)) = tokio::time::timeout_at(join_deadline, tasks.join_next()).await {
        if let Ok(r) = r {
            total.merge(r);
        }
    }
    let unfinished = tasks.len();
    tasks.abort_all();

    let cpu =
        |a: Option<server_stats::ProcSample>, b: Option<server_stats::ProcSample>| match (a, b) {
            (Some(a), Some(b)) => {
                Some(b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / ticks as f64)
            }
            _ => None,
        };
    let server_cpu = cpu(server_a, server_b);
    let bench_cpu = cpu(bench_a, bench_b);
    // Everyone else's CPU in the window (neither the bench nor the server):
    // more than a little means the figures are noisy.
    let other_cpu = match (machine_a, machine_b) {
        (Some(a), Some(b)) => Some(
            (b.saturating_sub(a) as f64 / ticks as f64
                - server_cpu.unwrap_or(0.0)
                - bench_cpu.unwrap_or(0.0))
            .max(0.0)
                / window,
        ),
        _ => None,
    };
    let server = args.server_pid.map(|pid| ServerCpu {
        pid,
        cpu_seconds: server_cpu,
        window_s: window,
    });
    Ok(RateReport::build(
        args,
        &endpoint,
        &run_id,
        &total,
        server,
        (bench_cpu.map(|c| c / window), other_cpu),
        unfinished,
    ))
}

/// One keep-alive connection's loop, bounded by the end of the window and by
/// `--max-requests`.
async fn connection(plan: Arc<Plan>, j: usize) -> ConnResult {
    let req = &plan.requests[j % plan.requests.len()];
    let mut res = ConnResult::new();
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; 16 * 1024];
    let mut pacer = plan.rate.map(|rate| {
        Pacer::new(
            j,
            plan.connections,
            rate,
            plan.max_requests,
            plan.end.saturating_duration_since(plan.start),
        )
    });
    loop {
        // When this request counts from: its due time (open loop) or now.
        let t0 = match &mut pacer {
            Some(p) => {
                let Some((_, due)) = p.next() else { break };
                let due = plan.start + due;
                tokio::time::sleep_until(due).await;
                due
            }
            None => {
                let now = Instant::now().max(plan.start);
                if now >= plan.end
                    || plan.started.fetch_add(1, Ordering::Relaxed) >= plan.max_requests
                {
                    break;
                }
                if now == plan.start {
                    tokio::time::sleep_until(plan.start).await;
                }
                now
            }
        };
        let sent = Instant::now();
        if sent >= plan.end {
            break;
        }
        let measured = t0 >= plan.measure_start;
        res.requests += 1;
        if measured {
            res.measured += 1;
            if sent.duration_since(t0) > LATE {
                res.late += 1;
            }
        }
        match crate::client::request(&plan.endpoint.target, &mut conn, req, &mut buf).await {
            Ok(status) => {
                *res.status.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    res.requests_ok += 1;
                    if measured {
                        res.measured_ok += 1;
                        res.latency_us
                            .saturating_record((t0.elapsed().as_micros() as u64).max(1));
                    }
                }
            }
            Err(failure) => {
                res.io_errors += 1;
                let pause = matches!(failure, Failure::Io(_));
                res.last_error = Some(failure.message());
                if pause {
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        }
    }
    res
}
