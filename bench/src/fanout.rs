//! The subscriber runs (`herald-bench [OPTIONS]`): fan-out, reconnect and
//! storm modes.
//!
//! It opens N real SSE subscribers (spread over 127.0.0.x source addresses
//! and, past one process's fd limit, over child processes), publishes at a
//! paced rate with a send timestamp in every payload, and reports connections
//! held, deliveries/s, publish-to-receive latency, loss, duplicates, order,
//! resets and, given `--server-pid`, the server's RSS per connection and CPU
//! per delivery. Loopback only. This module is the controller; the pieces are
//! [`crate::subscriber`], [`crate::worker`], [`crate::publisher`] and
//! [`crate::report`].

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::accounting::Expected;
use crate::protocol::{Command, WorkerMsg, WorkerReport, unix_ns};
use crate::publisher::{PublishPlan, PublishResult, publish};
use crate::report::{Report, ServerFigures};
use crate::subscriber::{Mode, SubSpec, WorkerPlan};
use crate::target::{Target, source_ip};
use crate::{server_stats, worker};

pub use crate::args::FanoutArgs;

/// Runs the benchmark and prints its report (or, with `--worker-id`, runs
/// as one of the controller's subscriber workers).
pub fn run(args: FanoutArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let targets = Target::parse_all(&args.url)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(t) = args.threads {
        builder.worker_threads(t.max(1));
    }
    let rt = builder.build()?;
    let result = match args.worker_id {
        Some(id) => {
            let count = args.worker_count.unwrap_or(1).max(1);
            let run_id = args
                .run_id
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--worker-id needs --run-id"))?;
            let plan = worker_plan(
                &args,
                targets,
                &run_id,
                id,
                count,
                hard_limit(&args) + Duration::from_secs(10),
            );
            rt.block_on(worker::serve_as_child(plan));
            Ok(())
        }
        None => rt.block_on(control(args, targets)),
    };
    // The stdin reader of a child worker sits in a blocking read: do not wait for it.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

fn validate(a: &FanoutArgs) -> anyhow::Result<()> {
    let secs = |name: &str, v: f64, min: f64| -> anyhow::Result<()> {
        if !v.is_finite() || v < min || v > 86_400.0 {
            anyhow::bail!("--{name} must be between {min} and 86400 seconds (got {v})");
        }
        Ok(())
    };
    secs("duration", a.duration, 0.1)?;
    secs("warmup", a.warmup, 0.0)?;
    secs("drain", a.drain, 0.0)?;
    secs("connect-timeout", a.connect_timeout, 0.1)?;
    secs("reconnect-every", a.reconnect_every, 0.05)?;
    if let Some(s) = a.storm_at {
        secs("storm-at", s, 0.0)?;
        if s >= a.duration {
            anyhow::bail!("--storm-at must fall inside --duration");
        }
    }
    if !a.rate.is_finite() || a.rate < 0.0 || a.rate > 10_000_000.0 {
        anyhow::bail!("--rate must be between 0 and 10,000,000 events/s");
    }
    if a.subscribers == 0 || a.subscribers > 1_000_000 {
        anyhow::bail!("--subscribers must be between 1 and 1,000,000");
    }
    if a.channels == 0 || a.channels > 100_000 {
        anyhow::bail!("--channels must be between 1 and 100,000");
    }
    if a.batch == 0 || a.batch > 10_000 {
        anyhow::bail!("--batch must be between 1 and 10,000");
    }
    if a.publishers == 0 || a.publishers > 1024 {
        anyhow::bail!("--publishers must be between 1 and 1024");
    }
    if a.source_ips > 65_000 {
        anyhow::bail!("--source-ips must be at most 65000");
    }
    if a.payload > 1 << 20 {
        anyhow::bail!("--payload must be at most 1 MiB");
    }
    if a.read_buf < 512 || a.read_buf > 1 << 20 {
        anyhow::bail!("--read-buf must be between 512 B and 1 MiB");
    }
    if a.per_process == 0 {
        anyhow::bail!("--per-process must be at least 1");
    }
    if a.mode == Mode::Storm && a.rate == 0.0 {
        anyhow::bail!("storm mode needs --rate > 0 to tell when subscribers are live again");
    }
    Ok(())
}

/// The longest the whole run may take, from start to report.
fn hard_limit(a: &FanoutArgs) -> Duration {
    Duration::from_secs_f64(a.connect_timeout + a.warmup + a.duration + a.drain + 45.0)
}

/// CPU ticks used so far by the bench's processes (`/proc/PID/stat`).
fn bench_cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| server_stats::sample(*pid).ok())
        .map(|s| s.cpu_ticks)
        .sum()
}

fn channel_names(run_id: &str, count: usize) -> Vec<String> {
    (0..count).map(|c| format!("bench-{run_id}-{c}")).collect()
}

fn worker_plan(
    a: &FanoutArgs,
    targets: Vec<Target>,
    run_id: &str,
    id: usize,
    count: usize,
    limit: Duration,
) -> WorkerPlan {
    let subs = (id..a.subscribers)
        .step_by(count.max(1))
        .map(|i| SubSpec {
            global: i,
            target: i % targets.len(),
            channel: i % a.channels,
            source: source_ip(i, a.source_ips),
        })
        .collect();
    WorkerPlan {
        targets,
        token: a.token.clone(),
        channels: channel_names(run_id, a.channels),
        subs,
        mode: a.mode,
        reconnect_every: Duration::from_secs_f64(a.reconnect_every),
        connect_concurrency: a.connect_concurrency,
        attempt_timeout: Duration::from_secs(10).min(Duration::from_secs_f64(a.connect_timeout)),
        connect_phase: Duration::from_secs_f64(a.connect_timeout),
        connect_retries: a.connect_retries,
        hard_deadline: Instant::now() + limit,
        read_buf: a.read_buf,
    }
}

/// How the subscribers are split over processes.
struct Layout {
    processes: usize,
    in_process: bool,
}

fn layout(a: &FanoutArgs) -> anyhow::Result<Layout> {
    // main() has already raised the soft limit as far as the hard one allows.
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    // Room for the runtime, stdio and the publisher's connections.
    let reserve = 64 + a.publishers as u64;
    let per_process_cap = (a.per_process as u64)
        .min(hard.saturating_sub(reserve))
        .max(1);
    let processes = if a.processes > 0 {
        a.processes
    } else {
        a.subscribers.div_ceil(per_process_cap as usize)
    }
    .min(a.subscribers)
    .max(1);
    let share = a.subscribers.div_ceil(processes) as u64;
    if share + reserve > hard {
        anyhow::bail!(
            "{share} subscribers per process exceed the open-file hard limit {hard}: use more --processes"
        );
    }
    let in_process = processes == 1 && a.subscribers as u64 + reserve <= soft;
    Ok(Layout {
        processes,
        in_process,
    })
}

/// The controller: starts the workers, publishes, and reports.
async fn control(args: FanoutArgs, targets: Vec<Target>) -> anyhow::Result<()> {
    let started = Instant::now();
    let hard_deadline = started + hard_limit(&args);
    let run_id = format!("{:08x}", fastrand::u32(..));
    let channels = channel_names(&run_id, args.channels);
    let lay = layout(&args)?;
    if args.source_ips == 0 && args.subscribers > 25_000 {
        eprintln!(
            "warning: {} subscribers from one source address may exhaust its ~28k ephemeral ports; consider --source-ips",
            args.subscribers
        );
    }
    let ticks = server_stats::clock_ticks_per_second();
    let before = match args.server_pid {
        Some(pid) => Some(server_stats::sample(pid)?),
        None => None,
    };

    let (msg_tx, mut msgs) = mpsc::unbounded_channel::<(usize, WorkerMsg)>();
    let mut workers = Vec::with_capacity(lay.processes);
    if lay.in_process {
        let plan = worker_plan(&args, targets.clone(), &run_id, 0, 1, hard_limit(&args));
        workers.push(worker::spawn_local(0, plan, msg_tx.clone()));
    } else {
        for id in 0..lay.processes {
            workers.push(worker::spawn_process(
                id,
                lay.processes,
                &run_id,
                msg_tx.clone(),
            )?);
        }
    }
    drop(msg_tx);
    eprintln!(
        "bench {run_id}: connecting {} subscribers to {} ({} channel(s), {} {})",
        args.subscribers,
        args.url,
        args.channels,
        lay.processes,
        if lay.in_process {
            "process (in-process)"
        } else {
            "worker process(es)"
        },
    );

    // Phase 1: every worker connects its share.
    let mut held = vec![None::<(u64, u64)>; workers.len()];
    let mut reports: Vec<Option<WorkerReport>> = vec![None; workers.len()];
    let mut connect_error: Option<String> = None;
    let connect_deadline =
        (Instant::now() + Duration::from_secs_f64(args.connect_timeout) + Duration::from_secs(20))
            .min(hard_deadline);
    while held.iter().any(Option::is_none) {
        match tokio::time::timeout_at(connect_deadline, msgs.recv()).await {
            Ok(Some((
                id,
                WorkerMsg::Connected {
                    held: h,
                    failed,
                    error,
                },
            ))) => {
                held[id] = Some((h, failed));
                connect_error = connect_error.or(error);
            }
            Ok(Some((id, WorkerMsg::Report(r)))) => {
                held[id].get_or_insert((0, r.subscribers));
                reports[id] = Some(*r);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connections_held: u64 = held.iter().flatten().map(|h| h.0).sum();
    eprintln!(
        "held {connections_held}/{} subscribers after {connect_secs:.1} s",
        args.subscribers
    );
    if connections_held == 0 {
        anyhow::bail!(
            "no subscriber connected to {}: {}",
            args.url,
            connect_error.unwrap_or_else(|| "connect phase timed out".into())
        );
    }
    let connected = match (args.server_pid, before) {
        (Some(pid), Some(_)) => {
            // Let the server settle its buffers before reading its RSS.
            tokio::time::sleep(Duration::from_secs(1)).await;
            server_stats::sample(pid).ok()
        }
        _ => None,
    };

    // Phase 2: publish (and storm) for warm-up + duration.
    let start = Instant::now() + Duration::from_millis(50);
    let measure_start = start + Duration::from_secs_f64(args.warmup);
    let end = measure_start + Duration::from_secs_f64(args.duration);
    for w in &workers {
        let _ = w.commands.send(Command::Start { unix_ns: unix_ns() });
    }
    let cpu_start = args
        .server_pid
        .and_then(|pid| server_stats::sample(pid).ok());
    eprintln!(
        "publishing {} events/s for {} s (+{} s warm-up), mode {:?}",
        args.rate, args.duration, args.warmup, args.mode
    );
    // The publisher gets its own thread and runtime, so that its pacing does
    // not queue behind thousands of subscriber tasks when the bench is busy.
    let publisher = (args.rate > 0.0).then(|| {
        let plan = PublishPlan {
            targets: targets.clone(),
            token: args.token.clone(),
            channels: channels.clone(),
            rate: args.rate,
            batch: args.batch,
            payload: args.payload,
            connections: args.publishers,
            start,
            measure_start,
            end,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("bench-publisher".into())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| rt.block_on(publish(plan)));
                let _ = tx.send(result);
            });
        spawned.map(|_| rx)
    });
    let bench_pids: Vec<u32> = std::iter::once(std::process::id())
        .chain(workers.iter().filter_map(|w| w.pid()))
        .collect();
    let bench_cpu_start = bench_cpu_ticks(&bench_pids);
    let machine_start = server_stats::machine_busy_ticks();
    let bench_window_start = Instant::now();
    let mut storm_unix_ns = None;
    if args.mode == Mode::Storm {
        let at = args.storm_at.unwrap_or(args.duration / 4.0);
        tokio::time::sleep_until(measure_start + Duration::from_secs_f64(at)).await;
        let t = unix_ns();
        storm_unix_ns = Some(t);
        eprintln!("storm: dropping all subscribers");
        for w in &workers {
            let _ = w.commands.send(Command::Storm { unix_ns: t });
        }
    }
    tokio::time::sleep_until(end).await;
    // CPU use in the publishing window: the bench's, and everyone else's
    // (neither the bench nor the server) as a noise check.
    let window = bench_window_start.elapsed().as_secs_f64().max(1e-3);
    let bench_ticks = bench_cpu_ticks(&bench_pids).saturating_sub(bench_cpu_start);
    let server_ticks = match (args.server_pid, cpu_start) {
        (Some(pid), Some(a)) => server_stats::sample(pid)
            .map(|b| b.cpu_ticks.saturating_sub(a.cpu_ticks))
            .unwrap_or(0),
        _ => 0,
    };
    let other_cpu = match (machine_start, server_stats::machine_busy_ticks()) {
        (Some(a), Some(b)) => Some(
            b.saturating_sub(a)
                .saturating_sub(bench_ticks + server_ticks) as f64
                / ticks as f64
                / window,
        ),
        _ => None,
    };
    let bench_cpu = bench_ticks as f64 / ticks as f64 / window;
    let published = match publisher {
        Some(Ok(rx)) => match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(Ok(r))) => r,
            Ok(Ok(Err(e))) => anyhow::bail!("publisher runtime: {e}"),
            _ => anyhow::bail!("publisher did not finish"),
        },
        Some(Err(e)) => anyhow::bail!("cannot start the publisher thread: {e}"),
        None => PublishResult::default(),
    };

    // Phase 3: tell workers what to expect, let them drain, collect reports.
    let expected: Vec<Expected> = (0..args.channels)
        .map(|c| {
            published
                .accepted
                .get(c)
                .map(Expected::from_accepted)
                .unwrap_or_default()
        })
        .collect();
    let drain_started = Instant::now();
    for w in &workers {
        let _ = w.commands.send(Command::Finish {
            expected: expected.clone(),
            drain_ms: (args.drain * 1000.0) as u64,
        });
    }
    let report_deadline =
        (Instant::now() + Duration::from_secs_f64(args.drain) + Duration::from_secs(20))
            .min(hard_deadline);
    while reports.iter().any(Option::is_none) {
        match tokio::time::timeout_at(report_deadline, msgs.recv()).await {
            Ok(Some((id, WorkerMsg::Report(r)))) => reports[id] = Some(*r),
            Ok(Some((_, WorkerMsg::Connected { .. }))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let after = args
        .server_pid
        .and_then(|pid| server_stats::sample(pid).ok());
    let missing_reports = reports.iter().filter(|r| r.is_none()).count();
    let mut subs = WorkerReport::default();
    for r in reports.iter().flatten() {
        subs.merge(r);
    }
    drop(workers);

    let server = args.server_pid.map(|pid| ServerFigures {
        pid,
        before,
        connected,
        cpu_start,
        after,
        ticks_per_second: ticks,
    });
    let bench_cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let report = Report::build(
        &args,
        (bench_cpu, bench_cpus, other_cpu),
        lay.processes,
        connections_held,
        connect_secs,
        drain_secs,
        missing_reports,
        &published,
        &subs,
        storm_unix_ns.is_some(),
        server,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
