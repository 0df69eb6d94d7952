//! `herald-bench`: the loopback load generator for sizing a Herald
//! deployment. It talks to Herald over plain HTTP/1.1 and never targets
//! anything but loopback.
//!
//! - [`args`]: the command-line arguments of the subscriber runs.
//! - [`fanout`]: the subscriber runs (fan-out, reconnect, storm): the
//!   controller that starts workers, publishes and reports.
//! - [`rate`]: the publish-rate run (`herald-bench publish`), open or closed
//!   loop, against Herald or another server's publish endpoint.
//! - [`sse`]: chunked-body and SSE decoding, response heads, the payload format.
//! - [`accounting`]: loss / duplicate / order bookkeeping.
//! - [`target`]: the loopback-only URL and socket set-up.
//! - [`subscriber`]: subscriber tasks and the worker that runs a share of them.
//! - [`protocol`]: controller ↔ worker messages and the worker's report.
//! - [`worker`]: running workers in-process or as child processes.
//! - [`client`]: one keep-alive HTTP/1.1 connection that sends requests.
//! - [`publisher`]: the paced publisher of the subscriber runs.
//! - [`server_stats`]: `/proc` sampling of the server.
//! - [`report`]: merging results and printing them.

mod accounting;
mod args;
mod client;
mod fanout;
mod protocol;
mod publisher;
mod rate;
mod report;
mod server_stats;
mod sse;
mod subscriber;
mod target;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load-test a Herald server over loopback. Without a subcommand: SSE
/// subscribers plus a paced publisher (fan-out, reconnect and storm modes).
#[derive(Debug, Parser)]
#[command(
    name = "herald-bench",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    fanout: fanout::FanoutArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish rate: publishes/s, events/s, latency and server CPU per
    /// publish, closed or open loop, no subscribers.
    Publish(rate::PublishArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_fd_limit();
    let result = match cli.command {
        Some(Command::Publish(args)) => rate::run(args),
        None => fanout::run(cli.fanout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft open-file limit to the hard limit: every subscriber is a
/// socket, and the default soft limit (often 1024) is far below what one
/// process may hold. Workers run this too, as they are this same binary.
fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("herald-bench: cannot raise the open-file limit: {e}");
    }
}
