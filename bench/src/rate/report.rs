//! The publish-rate run's report: a table for people, JSON (`--json`) for
//! scripts such as `scripts/bench-publish.sh`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::request::{BodyKind, Endpoint};
use super::{ConnResult, PublishArgs};
use crate::report::Percentiles;

/// The server's CPU over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct ServerCpu {
    /// Server pid.
    pub pid: u32,
    /// CPU time used in the window, seconds (`None` if `/proc` could not be read).
    pub cpu_seconds: Option<f64>,
    /// Length of the window, seconds.
    pub window_s: f64,
}

/// The server's CPU figures.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    /// Server pid.
    pub pid: u32,
    /// CPU time used in the measured window, seconds.
    pub cpu_seconds: Option<f64>,
    /// CPUs busy on average (1.0 = one core).
    pub cpu_utilization: Option<f64>,
    /// CPU per accepted publish request, µs.
    pub cpu_us_per_publish: Option<f64>,
    /// CPU per accepted event, µs (differs from per publish with --batch).
    pub cpu_us_per_event: Option<f64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct RateReport {
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Publish URL template.
    pub url: String,
    /// Body format.
    pub body: BodyKind,
    /// Run id; channels are `bench-<run_id>-<i>`.
    pub run_id: String,
    /// Channels.
    pub channels: usize,
    /// Keep-alive connections.
    pub connections: usize,
    /// Open loop target, requests/s.
    pub rate_target: Option<f64>,
    /// Events per request.
    pub batch: usize,
    /// Bytes of data per event.
    pub payload_bytes: usize,
    /// Measured window, s.
    pub duration_s: f64,
    /// Warm-up, s.
    pub warmup_s: f64,
    /// Requests sent in the whole run, warm-up included.
    pub requests_total: u64,
    /// Of those, answered 2xx.
    pub requests_ok_total: u64,
    /// Events in 2xx answered requests of the whole run.
    pub events_ok_total: u64,
    /// Requests sent in the measured window.
    pub requests_measured: u64,
    /// 2xx answered publishes sent in the measured window, per second.
    pub publishes_per_s: f64,
    /// Events in those, per second.
    pub events_per_s: f64,
    /// Request latency of those publishes, ms.
    pub latency_ms: Percentiles,
    /// Open loop: measured requests sent more than 5 ms late (the bench or
    /// the connections could not keep up with the schedule).
    pub late: u64,
    /// Every status received, by code.
    pub status: BTreeMap<u16, u64>,
    /// Non-2xx statuses, by code.
    pub errors_by_status: BTreeMap<u16, u64>,
    /// Requests that failed on the wire.
    pub io_errors: u64,
    /// With `--server-pid` only.
    pub server: Option<ServerReport>,
    /// CPUs the bench used during the window.
    pub bench_cpu: Option<f64>,
    /// CPUs the bench may run on.
    pub bench_cpus: usize,
    /// CPUs used by other processes (neither bench nor server) in the
    /// window; without `--server-pid` the server's own use is counted here.
    pub other_cpu: Option<f64>,
    /// Why the figures may describe the bench rather than the server.
    pub warnings: Vec<String>,
    /// Sample error messages.
    pub errors: Vec<String>,
}

impl RateReport {
    /// Assembles the report.
    pub fn build(
        args: &PublishArgs,
        endpoint: &Endpoint,
        run_id: &str,
        r: &ConnResult,
        server: Option<ServerCpu>,
        (bench_cpu, other_cpu): (Option<f64>, Option<f64>),
        unfinished: usize,
    ) -> RateReport {
        let batch = args.batch as u64;
        let publishes_per_s = r.measured_ok as f64 / args.duration;
        let server = server.map(|s| ServerReport {
            pid: s.pid,
            cpu_seconds: s.cpu_seconds,
            cpu_utilization: s.cpu_seconds.map(|c| c / s.window_s),
            cpu_us_per_publish: s
                .cpu_seconds
                .filter(|_| r.measured_ok > 0)
                .map(|c| c * 1e6 / r.measured_ok as f64),
            cpu_us_per_event: s
                .cpu_seconds
                .filter(|_| r.measured_ok > 0)
                .map(|c| c * 1e6 / (r.measured_ok * batch) as f64),
        });
        let bench_cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let mut warnings = Vec::new();
        if let Some(b) = bench_cpu.filter(|&b| b > 0.9 * bench_cpus as f64) {
            warnings.push(format!(
                "the bench used {b:.2} of its {bench_cpus} CPU(s): the rate may be bench-bound"
            ));
        }
        if let Some(o) = other_cpu.filter(|&o| o > 0.15 && args.server_pid.is_some()) {
            warnings.push(format!(
                "other processes used {o:.2} CPUs during the window: figures are noisy"
            ));
        }
        if args.rate.is_some() && r.late > r.measured / 100 {
            warnings.push(format!(
                "{} of {} requests went out more than 5 ms late: the target rate was not held",
                r.late, r.measured
            ));
        }
        if unfinished > 0 {
            warnings.push(format!(
                "{unfinished} connection(s) did not finish in time; their counts are missing"
            ));
        }
        let errors_by_status = r
            .status
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(s, n)| (*s, *n))
            .collect();
        RateReport {
            mode: if args.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            url: endpoint.display(),
            body: args.body,
            run_id: run_id.to_string(),
            channels: args.channels,
            connections: args.connections,
            rate_target: args.rate,
            batch: args.batch,
            payload_bytes: args.payload,
            duration_s: args.duration,
            warmup_s: args.warmup,
            requests_total: r.requests,
            requests_ok_total: r.requests_ok,
            events_ok_total: r.requests_ok * batch,
            requests_measured: r.measured,
            publishes_per_s,
            events_per_s: publishes_per_s * batch as f64,
            latency_ms: Percentiles::from_histogram(&r.latency_us, 0.001),
            late: r.late,
            status: r.status.clone(),
            errors_by_status,
            io_errors: r.io_errors,
            server,
            bench_cpu,
            bench_cpus,
            other_cpu,
            warnings,
            errors: r.last_error.iter().cloned().collect(),
        }
    }

    /// The report as an aligned table.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(o, "  {k:<26} {v}");
        };
        row(
            "run",
            format!(
                "{} loop{}, {} connection(s), {} channel(s), batch {}, {:?} body, {} B events, {} s (+{} s warm-up)",
                self.mode,
                self.rate_target
                    .map(|r| format!(" at {r} requests/s"))
                    .unwrap_or_default(),
                self.connections,
                self.channels,
                self.batch,
                self.body,
                self.payload_bytes,
                self.duration_s,
                self.warmup_s
            ),
        );
        row("url", format!("POST {}", self.url));
        row(
            "publishes",
            format!(
                "{:.0}/s ({:.0} events/s); {} requests in the window, {} in all",
                self.publishes_per_s,
                self.events_per_s,
                self.requests_measured,
                self.requests_total
            ),
        );
        row("latency", self.latency_ms.line("ms"));
        row(
            "errors",
            format!(
                "{} by status {:?}, {} io errors",
                self.errors_by_status.values().sum::<u64>(),
                self.errors_by_status,
                self.io_errors
            ),
        );
        if self.rate_target.is_some() {
            row("late (> 5 ms)", self.late.to_string());
        }
        if let Some(s) = &self.server {
            row(
                "server CPU",
                match (s.cpu_utilization, s.cpu_us_per_publish, s.cpu_us_per_event) {
                    (Some(u), Some(p), Some(e)) => {
                        format!("{u:.2} CPUs; {p:.2} µs per publish, {e:.3} µs per event")
                    }
                    (Some(u), _, _) => format!("{u:.2} CPUs; no publish accepted"),
                    _ => "-".into(),
                },
            );
        }
        if let Some(b) = self.bench_cpu {
            row(
                "bench CPU",
                format!(
                    "{b:.2} of {} CPU(s) in the window{}",
                    self.bench_cpus,
                    self.other_cpu
                        .map(|o| format!("; other processes {o:.2} CPUs"))
                        .unwrap_or_default()
                ),
            );
        }
        for w in &self.warnings {
            row("WARNING", w.clone());
        }
        for e in &self.errors {
            row("last error", e.clone());
        }
        o
    }
}
