//! The bench's report: the merged figures, as a table for people and as
//! JSON (`--json`) for scripts.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::FanoutArgs;
use crate::protocol::{WorkerReport, histogram_from_pairs};
use crate::publisher::PublishResult;
use crate::server_stats::ProcSample;
use crate::subscriber::Mode;

/// Raw server samples taken during the run.
#[derive(Debug, Clone)]
pub struct ServerFigures {
    /// The server's pid.
    pub pid: u32,
    /// Before any subscriber connected.
    pub before: Option<ProcSample>,
    /// After all subscribers connected (and a 1 s settle).
    pub connected: Option<ProcSample>,
    /// When publishing started.
    pub cpu_start: Option<ProcSample>,
    /// After the last worker reported.
    pub after: Option<ProcSample>,
    /// Clock ticks per second for the CPU figures.
    pub ticks_per_second: u64,
}

/// Latency percentiles.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    fn from_pairs(pairs: &[(u64, u64)], scale: f64) -> Percentiles {
        Percentiles::from_histogram(&histogram_from_pairs(pairs), scale)
    }

    /// The percentiles of `h`, each multiplied by `scale` (0.001 turns µs into ms).
    pub fn from_histogram(h: &Histogram<u64>, scale: f64) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50) as f64 * scale,
            p99: h.value_at_quantile(0.99) as f64 * scale,
            p999: h.value_at_quantile(0.999) as f64 * scale,
            max: h.max() as f64 * scale,
        }
    }

    /// One line for the tables: `p50 … p99 … p999 … max … (n=…)`.
    pub fn line(&self, unit: &str) -> String {
        format!(
            "p50 {:.2} {unit}  p99 {:.2} {unit}  p999 {:.2} {unit}  max {:.2} {unit}  (n={})",
            self.p50, self.p99, self.p999, self.max, self.count
        )
    }
}

/// What the publisher achieved.
#[derive(Debug, Clone, Serialize)]
pub struct PublishFigures {
    /// Events the schedule called for (rate × (warm-up + duration)).
    pub events_target: u64,
    /// Events sent.
    pub events_sent: u64,
    /// Events accepted (202).
    pub events_accepted: u64,
    /// Requests sent.
    pub requests: u64,
    /// Requests answered 202.
    pub requests_accepted: u64,
    /// Events sent per second in the measured window.
    pub rate_achieved: f64,
    /// Non-202 statuses.
    pub http_status: BTreeMap<u16, u64>,
    /// Requests that failed on the wire.
    pub io_errors: u64,
    /// Request round trip, ms.
    pub rtt_ms: Percentiles,
}

/// Storm-mode figures, ms after the storm.
#[derive(Debug, Clone, Serialize)]
pub struct StormFigures {
    /// Until each subscriber had its resumed stream's 200 head.
    pub reconnected_ms: Percentiles,
    /// Until each subscriber received the first event sent after it resumed
    /// (so it had replayed what it missed and was live again); `max` is the
    /// time for all of them to recover.
    pub recovered_ms: Percentiles,
    /// Subscribers that never got live again.
    pub unrecovered: u64,
}

/// The server's resources.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    /// Server pid.
    pub pid: u32,
    /// RSS before subscribers connected, KiB.
    pub rss_before_kib: Option<u64>,
    /// RSS with all subscribers connected, KiB.
    pub rss_connected_kib: Option<u64>,
    /// RSS at the end, KiB.
    pub rss_end_kib: Option<u64>,
    /// (RSS connected − RSS before) / connections held, KiB.
    pub rss_per_connection_kib: Option<f64>,
    /// Server CPU from publish start to the last report, seconds.
    pub cpu_seconds: Option<f64>,
    /// That CPU divided by every event delivered (publish handling, heartbeats
    /// and reconnects included), µs.
    pub cpu_us_per_delivery: Option<f64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Mode run.
    pub mode: Mode,
    /// Server URL.
    pub url: String,
    /// Subscribers asked for.
    pub subscribers: usize,
    /// Channels.
    pub channels: usize,
    /// Subscriber processes.
    pub processes: usize,
    /// Source addresses used (0: the kernel's choice).
    pub source_ips: usize,
    /// Target publish rate, events/s.
    pub rate: f64,
    /// Measured window, s.
    pub duration_s: f64,
    /// Warm-up, s.
    pub warmup_s: f64,
    /// Event data size, bytes.
    pub payload_bytes: usize,
    /// Subscribers with a 200 head at the end of the connect phase.
    pub connections_held: u64,
    /// Time to connect them, s.
    pub connect_s: f64,
    /// Failed subscribe attempts.
    pub connect_errors: u64,
    /// Non-200 subscribe statuses.
    pub subscribe_http_status: BTreeMap<u16, u64>,
    /// Publisher figures.
    pub publish: PublishFigures,
    /// Bench events received, all phases, duplicates included.
    pub deliveries: u64,
    /// Deliveries of events sent in the measured window.
    pub deliveries_measured: u64,
    /// `deliveries_measured / duration`.
    pub deliveries_per_s: f64,
    /// Publish-send to receive latency, ms (measured-window events).
    pub latency_ms: Percentiles,
    /// Accepted events on a subscriber's channel that it never received.
    pub lost: u64,
    /// Subscribers that lost something.
    pub subscribers_with_loss: u64,
    /// Events received more than once.
    pub duplicated: u64,
    /// Events whose seq was not above the previous one.
    pub out_of_order: u64,
    /// `herald.reset` events received.
    pub resets: u64,
    /// Received events the publisher never saw accepted (a 202 lost on the way back).
    pub unexpected: u64,
    /// Events that were not the bench's.
    pub foreign: u64,
    /// Planned drops (reconnect and storm modes).
    pub reconnects: u64,
    /// Successful resumptions after any drop.
    pub resumed: u64,
    /// Streams the server ended or broke.
    pub disconnects: u64,
    /// Epoch changes seen in ids.
    pub epoch_changes: u64,
    /// Events per `read` on the subscriber side (how much the server coalesces).
    pub events_per_read: f64,
    /// Time from the end of publishing until every subscriber had everything, s.
    pub drain_s: f64,
    /// Workers that never reported (their subscribers are missing from the counts).
    pub workers_missing: usize,
    /// Subscribers still running when their worker stopped waiting.
    pub subscribers_aborted: u64,
    /// Storm mode only.
    pub storm: Option<StormFigures>,
    /// With `--server-pid` only.
    pub server: Option<ServerReport>,
    /// CPUs the bench's processes used during publishing (1.0 = one core busy).
    pub bench_cpu: f64,
    /// CPUs the bench may run on.
    pub bench_cpus: usize,
    /// CPUs used by other processes (neither bench nor server) while
    /// publishing; more than a little means the figures are noisy.
    /// Without `--server-pid` the server's own use is counted here.
    pub other_cpu: Option<f64>,
    /// Why the figures may describe the bench rather than the server.
    pub warnings: Vec<String>,
    /// Sample error messages.
    pub errors: Vec<String>,
}

impl Report {
    /// Assembles the report from what the controller gathered.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        args: &FanoutArgs,
        (bench_cpu, bench_cpus, other_cpu): (f64, usize, Option<f64>),
        processes: usize,
        connections_held: u64,
        connect_s: f64,
        drain_s: f64,
        workers_missing: usize,
        p: &PublishResult,
        s: &WorkerReport,
        storm: bool,
        server: Option<ServerFigures>,
    ) -> Report {
        let rtt_ms = p
            .rtt_us
            .as_ref()
            .map(|h| Percentiles::from_histogram(h, 0.001))
            .unwrap_or_default();
        let server = server.map(|f| {
            let rss_per_connection_kib = match (f.before, f.connected) {
                (Some(b), Some(c)) if connections_held > 0 => {
                    Some((c.rss_kib as f64 - b.rss_kib as f64) / connections_held as f64)
                }
                _ => None,
            };
            let cpu_seconds = match (f.cpu_start, f.after) {
                (Some(a), Some(b)) => {
                    Some(b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / f.ticks_per_second as f64)
                }
                _ => None,
            };
            ServerReport {
                pid: f.pid,
                rss_before_kib: f.before.map(|x| x.rss_kib),
                rss_connected_kib: f.connected.map(|x| x.rss_kib),
                rss_end_kib: f.after.map(|x| x.rss_kib),
                rss_per_connection_kib,
                cpu_us_per_delivery: cpu_seconds
                    .filter(|_| s.events > 0)
                    .map(|c| c * 1e6 / s.events as f64),
                cpu_seconds,
            }
        });
        let mut warnings = Vec::new();
        if bench_cpu > 0.9 * bench_cpus as f64 {
            warnings.push(format!(
                "the bench used {bench_cpu:.2} of its {bench_cpus} CPU(s): latency and rates are bench-bound; give it more cores or lower the load"
            ));
        }
        if let Some(o) = other_cpu.filter(|&o| o > 0.15 && args.server_pid.is_some()) {
            warnings.push(format!(
                "other processes used {o:.2} CPUs during the run: figures are noisy"
            ));
        }
        let target = args.rate * args.duration;
        if target > 0.0 && (p.events_sent_measured as f64) < 0.95 * target {
            warnings.push(format!(
                "the publisher sent {} of {:.0} scheduled events in the window",
                p.events_sent_measured, target
            ));
        }
        let mut errors = Vec::new();
        errors.extend(s.last_error.iter().map(|e| format!("subscribe: {e}")));
        errors.extend(p.last_error.iter().map(|e| format!("publish: {e}")));
        Report {
            mode: args.mode,
            url: args.url.clone(),
            subscribers: args.subscribers,
            channels: args.channels,
            processes,
            source_ips: args.source_ips,
            rate: args.rate,
            duration_s: args.duration,
            warmup_s: args.warmup,
            payload_bytes: args.payload,
            connections_held,
            connect_s,
            connect_errors: s.connect_errors,
            subscribe_http_status: s.http_status.clone(),
            publish: PublishFigures {
                events_target: (args.rate * (args.warmup + args.duration)).round() as u64,
                events_sent: p.events_sent,
                events_accepted: p.events_accepted,
                requests: p.requests,
                requests_accepted: p.requests_ok,
                rate_achieved: p.events_sent_measured as f64 / args.duration,
                http_status: p.http_status.clone(),
                io_errors: p.io_errors,
                rtt_ms,
            },
            deliveries: s.events,
            deliveries_measured: s.measured,
            deliveries_per_s: s.measured as f64 / args.duration,
            latency_ms: Percentiles::from_pairs(&s.latency_us, 0.001),
            lost: s.lost,
            subscribers_with_loss: s.subs_with_loss,
            duplicated: s.duplicates,
            out_of_order: s.out_of_order,
            resets: s.resets,
            unexpected: s.unexpected,
            foreign: s.foreign,
            reconnects: s.reconnects,
            resumed: s.resumed,
            disconnects: s.disconnects,
            epoch_changes: s.epoch_changes,
            events_per_read: if s.reads > 0 {
                s.events as f64 / s.reads as f64
            } else {
                0.0
            },
            drain_s,
            workers_missing,
            subscribers_aborted: s.aborted,
            storm: storm.then(|| StormFigures {
                reconnected_ms: Percentiles::from_pairs(&s.storm_reconnect_ms, 1.0),
                recovered_ms: Percentiles::from_pairs(&s.storm_recover_ms, 1.0),
                unrecovered: s.storm_unrecovered,
            }),
            server,
            bench_cpu,
            bench_cpus,
            other_cpu,
            warnings,
            errors,
        }
    }

    /// The report as an aligned table.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(o, "  {k:<26} {v}");
        };
        let pct = |p: &Percentiles, unit: &str| p.line(unit);
        row(
            "run",
            format!(
                "mode {:?}, {} subscribers on {} channel(s), {} process(es), {} ev/s for {} s (+{} s warm-up), {} B payload",
                self.mode,
                self.subscribers,
                self.channels,
                self.processes,
                self.rate,
                self.duration_s,
                self.warmup_s,
                self.payload_bytes
            ),
        );
        row(
            "connections held",
            format!(
                "{} / {} (in {:.1} s, {} connect errors{})",
                self.connections_held,
                self.subscribers,
                self.connect_s,
                self.connect_errors,
                if self.subscribe_http_status.is_empty() {
                    String::new()
                } else {
                    format!(", statuses {:?}", self.subscribe_http_status)
                }
            ),
        );
        // With --rate 0 the run only holds connections: nothing to show here.
        if self.rate > 0.0 {
            let p = &self.publish;
            row(
                "publishes",
                format!(
                    "{} sent, {} accepted of {} scheduled ({:.1} ev/s achieved){}{}",
                    p.events_sent,
                    p.events_accepted,
                    p.events_target,
                    p.rate_achieved,
                    if p.http_status.is_empty() {
                        String::new()
                    } else {
                        format!(", statuses {:?}", p.http_status)
                    },
                    if p.io_errors > 0 {
                        format!(", {} io errors", p.io_errors)
                    } else {
                        String::new()
                    }
                ),
            );
            row("publish round trip", pct(&p.rtt_ms, "ms"));
            row(
                "deliveries",
                format!(
                    "{} total, {} measured, {:.0}/s, {:.2} events per read",
                    self.deliveries,
                    self.deliveries_measured,
                    self.deliveries_per_s,
                    self.events_per_read
                ),
            );
            row("latency (send→receive)", pct(&self.latency_ms, "ms"));
        }
        row(
            "lost",
            format!(
                "{} (subscribers affected: {})",
                self.lost, self.subscribers_with_loss
            ),
        );
        row("duplicated", self.duplicated.to_string());
        row("out of order", self.out_of_order.to_string());
        row("resets received", self.resets.to_string());
        if self.unexpected + self.foreign + self.epoch_changes > 0 {
            row(
                "unexpected / foreign",
                format!(
                    "{} / {} (epoch changes {})",
                    self.unexpected, self.foreign, self.epoch_changes
                ),
            );
        }
        row(
            "reconnects",
            format!(
                "{} planned, {} resumed, {} server-side disconnects",
                self.reconnects, self.resumed, self.disconnects
            ),
        );
        row("drain", format!("{:.2} s", self.drain_s));
        if let Some(s) = &self.storm {
            row("storm: reconnected", pct(&s.reconnected_ms, "ms"));
            row("storm: recovered (live)", pct(&s.recovered_ms, "ms"));
            row("storm: unrecovered", s.unrecovered.to_string());
        }
        if let Some(s) = &self.server {
            row(
                "server RSS",
                format!(
                    "{} → {} → {} KiB (before → connected → end)",
                    opt(s.rss_before_kib),
                    opt(s.rss_connected_kib),
                    opt(s.rss_end_kib)
                ),
            );
            row(
                "server RSS / connection",
                s.rss_per_connection_kib
                    .map(|v| format!("{v:.2} KiB"))
                    .unwrap_or_else(|| "-".into()),
            );
            row(
                "server CPU / delivery",
                match (s.cpu_us_per_delivery, s.cpu_seconds) {
                    (Some(u), Some(c)) => format!("{u:.2} µs ({c:.2} s CPU)"),
                    (None, Some(c)) => format!("- ({c:.2} s CPU, no deliveries)"),
                    _ => "-".into(),
                },
            );
        }
        if self.workers_missing > 0 || self.subscribers_aborted > 0 {
            row(
                "incomplete",
                format!(
                    "{} worker(s) never reported, {} subscriber(s) aborted",
                    self.workers_missing, self.subscribers_aborted
                ),
            );
        }
        row(
            "bench CPU",
            format!(
                "{:.2} of {} CPU(s) while publishing",
                self.bench_cpu, self.bench_cpus
            ),
        );
        for w in &self.warnings {
            row("WARNING", w.clone());
        }
        for e in &self.errors {
            row("last error", e.clone());
        }
        o
    }
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::new_histogram;

    #[test]
    fn percentiles_of_a_known_distribution() {
        // 1..=10,000 µs, once each: the k-th percentile is k% of 10,000,
        // within the histogram's 3 significant digits.
        let mut h = new_histogram();
        for v in 1..=10_000 {
            h.record(v).unwrap();
        }
        let p = Percentiles::from_histogram(&h, 0.001);
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1e-9;
        assert_eq!(p.count, 10_000);
        assert!(near(p.p50, 5.0), "p50 {}", p.p50);
        assert!(near(p.p99, 9.9), "p99 {}", p.p99);
        assert!(near(p.p999, 9.99), "p999 {}", p.p999);
        assert!(near(p.max, 10.0), "max {}", p.max);
        // A skewed one: 990 fast requests and 10 slow ones.
        let mut h = new_histogram();
        h.record_n(100, 990).unwrap();
        h.record_n(50_000, 10).unwrap();
        let p = Percentiles::from_histogram(&h, 1.0);
        assert_eq!(p.p50, 100.0);
        assert_eq!(p.p99, 100.0, "the 99th percentile is still a fast one");
        assert!(near(p.p999, 50_000.0));
        assert!(Percentiles::from_histogram(&new_histogram(), 1.0).count == 0);
    }
}
