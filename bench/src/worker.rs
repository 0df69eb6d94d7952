//! Running subscriber workers: in-process as a task, or as child processes
//! when one process cannot hold every connection under its open-file limit.
//!
//! A child is the same binary re-executed as `herald-bench <same args>
//! --worker-id I --worker-count P --run-id R`; like the controller, it raises
//! its soft fd limit to the hard limit as it starts (see `main`).
//! The controller writes [`Command`]s to its stdin and reads [`WorkerMsg`]s
//! from its stdout, one JSON object per line; its stderr is the bench's.

use std::ffi::OsString;
use std::io::{BufRead as _, Write as _};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command as ProcessCommand};
use tokio::sync::mpsc;

use crate::protocol::{Command, WorkerMsg};
use crate::subscriber::{WorkerPlan, run_worker};

/// The controller's handle on one worker, wherever it runs.
pub struct WorkerHandle {
    /// Commands to the worker; the worker reads the other end.
    pub commands: mpsc::UnboundedSender<Command>,
    /// Keeps a child process alive; it is killed when the handle drops.
    _child: Option<Child>,
}

impl WorkerHandle {
    /// The child's pid, for a worker running as a process.
    pub fn pid(&self) -> Option<u32> {
        self._child.as_ref().and_then(Child::id)
    }
}

/// Starts a worker as a task of this process. Its messages go to `msgs`,
/// tagged with `id`.
pub fn spawn_local(
    id: usize,
    plan: WorkerPlan,
    msgs: mpsc::UnboundedSender<(usize, WorkerMsg)>,
) -> WorkerHandle {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    tokio::spawn(run_worker(plan, cmd_rx, out_tx));
    tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if msgs.send((id, m)).is_err() {
                break;
            }
        }
    });
    WorkerHandle {
        commands: cmd_tx,
        _child: None,
    }
}

/// Starts worker `id` of `count` as a child process running this binary
/// with the bench's own arguments plus the worker flags.
pub fn spawn_process(
    id: usize,
    count: usize,
    run_id: &str,
    msgs: mpsc::UnboundedSender<(usize, WorkerMsg)>,
) -> anyhow::Result<WorkerHandle> {
    let exe = std::env::current_exe()?;
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    args.extend(
        [
            "--worker-id".to_string(),
            id.to_string(),
            "--worker-count".to_string(),
            count.to_string(),
            "--run-id".to_string(),
            run_id.to_string(),
        ]
        .map(OsString::from),
    );
    let mut child = ProcessCommand::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start bench worker {id}: {e}"))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("worker stdin"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("worker stdout"))?;
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Command>();
    tokio::spawn(async move {
        while let Some(c) = cmd_rx.recv().await {
            let mut line = serde_json::to_vec(&c).expect("commands always serialize");
            line.push(b'\n');
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
        // Dropping stdin tells the worker the controller is gone.
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<WorkerMsg>(&line) {
                Ok(m) => {
                    if msgs.send((id, m)).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("bench worker {id}: unreadable line ({e}): {line:.200}"),
            }
        }
    });
    Ok(WorkerHandle {
        commands: cmd_tx,
        _child: Some(child),
    })
}

/// The child side: runs the worker with stdin as its command stream and
/// stdout as its message stream. (tokio's `io-std` feature is not enabled, so
/// stdin is read on a plain thread and the two report lines are written with
/// std's blocking stdout.)
pub async fn serve_as_child(plan: WorkerPlan) {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<WorkerMsg>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Command>(&line) {
                Ok(c) => {
                    if cmd_tx.send(c).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("bench worker: unreadable command ({e})"),
            }
        }
        // EOF: cmd_tx drops, and the worker stops and reports.
    });
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let line = serde_json::to_string(&m).expect("worker messages always serialize");
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").is_err() || out.flush().is_err() {
                break;
            }
        }
    });
    run_worker(plan, cmd_rx, out_tx).await;
    let _ = writer.await;
}
