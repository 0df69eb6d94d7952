//! The command-line options of the subscriber runs (fan-out, reconnect,
//! storm): parsed by `main`, validated and run by `fanout`, echoed by
//! `report`.

use crate::subscriber::Mode;

/// Command-line options of the subscriber runs.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Base URL of the Herald server under test (loopback only: 127.0.0.0/8,
    /// localhost, `[::1]`); several, comma-separated, for replicas of one
    /// deployment: subscribers and publisher connections go round-robin.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Concurrent SSE subscribers to open.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Channels; subscriber i reads channel i mod C, and events go round-robin.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Events per second to publish, all channels together (0: only hold connections).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Measured window, seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes of data per event (it starts with the send timestamp).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Warm-up, seconds: published and checked for loss, but not in latency or rates.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Longest wait after publishing for subscribers to catch up, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// fanout: stay connected; reconnect: each subscriber drops and resumes
    /// every --reconnect-every s; storm: all drop and resume at once.
    #[arg(long, value_enum, default_value_t = Mode::Fanout)]
    pub mode: Mode,
    /// Reconnect mode: seconds between one subscriber's drops (first drop staggered at random).
    #[arg(long, default_value_t = 3.0)]
    pub reconnect_every: f64,
    /// Storm mode: seconds into the measured window at which all subscribers drop
    /// [default: a quarter of --duration].
    #[arg(long)]
    pub storm_at: Option<f64>,
    /// Spread subscribers over source addresses 127.0.0.2 ..= 127.0.0.(N+1)
    /// (each has ~28k ephemeral ports); 0 lets the kernel pick 127.0.0.1.
    #[arg(long, default_value_t = 0)]
    pub source_ips: usize,
    /// Subscriber processes; 0 picks ceil(N / --per-process), and 1 runs
    /// in-process when the fd limit allows.
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// Most subscribers one process holds when --processes is automatic.
    #[arg(long, default_value_t = 15_000)]
    pub per_process: usize,
    /// Concurrent publish connections.
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Events per publish request (more than 1 uses the batch endpoint).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Connections opening at once during the initial connect phase.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Time allowed for all subscribers to connect, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub connect_timeout: f64,
    /// Extra attempts for a subscriber whose first connect fails.
    #[arg(long, default_value_t = 2)]
    pub connect_retries: u32,
    /// PID of the server, to report its RSS per connection and CPU per delivery.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Bearer token sent on subscribe and publish requests.
    #[arg(long, env = "HERALD_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Runtime worker threads per process [default: the CPUs this process may use].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Read buffer per subscriber, bytes.
    #[arg(long, default_value_t = 4096)]
    pub read_buf: usize,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Internal: run as subscriber worker I (set when the bench re-executes itself).
    #[arg(long, hide = true)]
    pub worker_id: Option<usize>,
    /// Internal: number of subscriber workers.
    #[arg(long, hide = true)]
    pub worker_count: Option<usize>,
    /// Internal: run id shared by the controller and its workers (names the channels).
    #[arg(long, hide = true)]
    pub run_id: Option<String>,
}
