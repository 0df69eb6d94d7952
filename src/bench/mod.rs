//! `herald bench`: the load generator users run to size a deployment.
//! (Being written: see issue 2, item 11.)

/// Command-line options of `herald bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the Herald server under test (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
}

/// Runs the benchmark and prints its report.
pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("herald bench is not built yet")
}
