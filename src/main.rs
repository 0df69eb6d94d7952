//! The `herald` binary: parse the CLI, load and check config, start
//! telemetry, run the server, map the outcome to an exit code.

// The connection futures (hyper, axum, the lean paths) nest deeply.
#![recursion_limit = "256"]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use herald::config::Config;

/// mimalloc, not glibc's malloc: fewer cycles per allocation on the
/// publish path, and freed memory goes back for reuse across threads
/// instead of piling up per-thread arenas (see README, Benchmarks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Herald: real-time notifications over Server-Sent Events.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    /// TOML config file (also HERALD_CONFIG). Defaults to
    /// config/development.toml when that file exists.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Validate a config file and exit.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Mint a token signed with the configured HS key.
    Token(herald::auth::TokenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => match Config::load(Some(&file), std::env::vars()) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(2)
            }
        },
        Some(Command::Token(args)) => {
            let config = match load(cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            report(herald::auth::run_token_command(&config.auth, args))
        }
        None | Some(Command::Serve) => {
            let config = match load(cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            report(serve(config))
        }
    }
}

/// Loads config from `--config`, `HERALD_CONFIG`, or the development file.
fn load(file: Option<PathBuf>) -> Result<Config, ExitCode> {
    let dev = PathBuf::from("config/development.toml");
    let file = file
        .or_else(|| (std::env::var_os("HERALD_CONFIG").is_none() && dev.exists()).then_some(dev));
    Config::from_env(file.as_deref()).map_err(|e| {
        eprintln!("herald: {e}");
        ExitCode::from(2)
    })
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let telemetry =
            herald::telemetry::trace::init(&config.telemetry).context("cannot start telemetry")?;
        match herald::limits::raise_open_files_limit() {
            Ok(l) => tracing::info!(
                soft_before = l.soft_before,
                soft = l.soft,
                hard = l.hard,
                "open files limit"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
        }
        let listener = herald::bind(config.listen, config.http.backlog)?;
        let shutdown = herald::shutdown::on_signal();
        let result = herald::run(config, listener, shutdown).await;
        telemetry.shutdown();
        result.map_err(anyhow::Error::from)
    })
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}
