//! Typed configuration: built-in defaults, then a TOML file, then `HERALD_*`
//! environment variables (nested keys joined with `__`). Validated once at
//! start, before anything binds, so a bad config exits non-zero with a clear
//! message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Keys whose env value is a comma-separated list, e.g.
/// `HERALD_CORS__ALLOWED_ORIGINS=https://a.example,https://b.example`.
const LIST_KEYS: &[&str] = &[
    "auth.algorithms",
    "auth.public_key_files",
    "auth.anonymous_subscribe",
    "auth.anonymous_publish",
    "limits.trusted_proxies",
    "cors.allowed_origins",
    "cors.allowed_methods",
    "cors.allowed_headers",
    "cors.expose_headers",
    "telemetry.channel_label_allowlist",
];

/// Environment variables with the `HERALD_` prefix that are not config keys.
const NON_KEY_ENV: &[&str] = &["HERALD_CONFIG", "HERALD_JWT_SECRET"];

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an env variable could not be read or parsed.
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// The values parsed but do not make sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole service configuration. Every section has defaults, so an empty
/// file is a valid development config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP listener binds, e.g. `127.0.0.1:8000`.
    pub listen: SocketAddr,
    /// Directory holding the demo page; `None` serves the embedded copy.
    pub static_dir: Option<String>,
    /// The broadcast core: rings, channel limits, reaping.
    pub hub: HubConfig,
    /// Server-Sent Events streams.
    pub sse: SseConfig,
    /// HTTP-level limits and timeouts.
    pub http: HttpConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// JWT verification and channel rights.
    pub auth: crate::auth::AuthConfig,
    /// Rate and connection limits.
    pub limits: crate::limits::LimitsConfig,
    /// CORS policy.
    pub cors: crate::http::cors::CorsConfig,
    /// Metrics, traces and logs.
    pub telemetry: crate::telemetry::TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            static_dir: None,
            hub: HubConfig::default(),
            sse: SseConfig::default(),
            http: HttpConfig::default(),
            shutdown: ShutdownConfig::default(),
            auth: Default::default(),
            limits: Default::default(),
            cors: Default::default(),
            telemetry: Default::default(),
        }
    }
}

/// Settings of the broadcast core.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Events each channel retains for replay and fan-out.
    pub ring_size: usize,
    /// Most channels that may exist at once.
    pub max_channels: usize,
    /// A channel with no subscribers and no publish for this long is reaped.
    pub channel_idle_ttl_secs: u64,
    /// Largest encoded `data` of one event, in bytes.
    pub max_event_bytes: usize,
    /// Longest channel name, in bytes.
    pub max_channel_name_len: usize,
    /// Longest event type, in bytes.
    pub max_event_type_len: usize,
    /// Reaped channels remembered so a late resume still gets a reset.
    pub max_tombstones: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            ring_size: 1024,
            max_channels: 100_000,
            channel_idle_ttl_secs: 300,
            max_event_bytes: 64 * 1024,
            max_channel_name_len: 128,
            max_event_type_len: 64,
            max_tombstones: 100_000,
        }
    }
}

/// Settings of Server-Sent Events streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    /// Interval between heartbeat comments.
    pub heartbeat_secs: u64,
    /// The `retry:` reconnect hint sent at the start of each stream.
    pub retry_ms: u64,
    /// Upper bound of the jittered `retry:` hint sent when the server drains.
    pub shutdown_retry_max_ms: u64,
    /// A stream whose socket accepts no bytes for this long is closed.
    pub write_timeout_secs: u64,
    /// Most channels one connection may subscribe to.
    pub max_channels_per_connection: usize,
    /// Most bytes a woken subscriber writes in one batch.
    pub max_batch_bytes: usize,
    /// Coalescing window: a channel wakes its subscribers at most once per
    /// this many milliseconds, so bursts go out as one write per subscriber.
    /// 0 (the default) wakes them at every publish, for the lowest latency.
    pub coalesce_ms: u64,
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            heartbeat_secs: 15,
            retry_ms: 3000,
            shutdown_retry_max_ms: 5000,
            write_timeout_secs: 30,
            max_channels_per_connection: 32,
            max_batch_bytes: 64 * 1024,
            coalesce_ms: 0,
        }
    }
}

/// HTTP-level limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Time allowed to receive the request headers (slowloris guard).
    pub header_read_timeout_secs: u64,
    /// Deadline of non-streaming requests (408 past it).
    pub request_timeout_secs: u64,
    /// Most events in one batch publish.
    pub max_batch_events: usize,
    /// Listen backlog for the accept queue.
    pub backlog: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            header_read_timeout_secs: 10,
            request_timeout_secs: 10,
            max_batch_events: 1000,
            backlog: 4096,
        }
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// The process exits within this long after SIGTERM or SIGINT.
    pub grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_secs: 10 }
    }
}

impl Config {
    /// Loads defaults, then `file` (if any), then `HERALD_*` variables from
    /// `env`, and validates the result.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let env_keys: HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.starts_with("HERALD_")
                    && !NON_KEY_ENV.contains(&k.as_str())
                    && !is_service_link(k)
            })
            .collect();
        let mut environment = config::Environment::with_prefix("HERALD")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        builder = builder.add_source(environment.source(Some(env_keys)));
        let mut cfg: Config = builder.build()?.try_deserialize()?;
        cfg.resolve_secrets()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads from the process environment, with the file named by `file`
    /// or by `HERALD_CONFIG`.
    pub fn from_env(file: Option<&Path>) -> Result<Self, ConfigError> {
        let from_var = std::env::var_os("HERALD_CONFIG").map(std::path::PathBuf::from);
        let path = file.map(Path::to_path_buf).or(from_var);
        Self::load(path.as_deref(), std::env::vars())
    }

    /// Pulls secrets that live outside the config tree (env or files).
    fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        self.auth
            .resolve_secrets()
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: &str| Err(ConfigError::Invalid(msg.to_string()));
        if self.hub.ring_size == 0 || self.hub.ring_size > 1_000_000 {
            return bad("hub.ring_size must be between 1 and 1000000");
        }
        if self.hub.max_channels == 0 {
            return bad("hub.max_channels must be at least 1");
        }
        if self.hub.max_event_bytes == 0 || self.hub.max_event_bytes > self.http.max_body_bytes {
            return bad("hub.max_event_bytes must be at least 1 and at most http.max_body_bytes");
        }
        if self.hub.max_channel_name_len == 0 || self.hub.max_channel_name_len > 1024 {
            return bad("hub.max_channel_name_len must be between 1 and 1024");
        }
        if self.sse.heartbeat_secs == 0 {
            return bad("sse.heartbeat_secs must be at least 1");
        }
        if self.sse.write_timeout_secs == 0 {
            return bad("sse.write_timeout_secs must be at least 1");
        }
        if self.sse.max_channels_per_connection == 0 {
            return bad("sse.max_channels_per_connection must be at least 1");
        }
        if self.sse.coalesce_ms > 1000 {
            return bad("sse.coalesce_ms must be at most 1000");
        }
        if self.sse.max_batch_bytes < 1024 {
            return bad("sse.max_batch_bytes must be at least 1024");
        }
        if self.http.max_batch_events == 0 {
            return bad("http.max_batch_events must be at least 1");
        }
        if self.http.header_read_timeout_secs == 0 || self.http.request_timeout_secs == 0 {
            return bad("http timeouts must be at least 1 second");
        }
        if self.shutdown.grace_secs == 0 {
            return bad("shutdown.grace_secs must be at least 1");
        }
        self.auth
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("auth: {e}")))?;
        self.limits
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("limits: {e}")))?;
        self.cors
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("cors: {e}")))?;
        Ok(())
    }
}

/// Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT` and
/// `<SERVICE>_PORT_<n>_TCP...` for every Service in the namespace; a Service
/// named `herald...` must not be mistaken for config keys.
fn is_service_link(key: &str) -> bool {
    let rest = &key["HERALD".len()..];
    rest.ends_with("_SERVICE_HOST")
        || rest.contains("_SERVICE_PORT")
        || rest.ends_with("_PORT")
        || rest
            .split_once("_PORT_")
            .is_some_and(|(_, tail)| tail.starts_with(|c: char| c.is_ascii_digit()))
}

impl SseConfig {
    /// Heartbeat interval as a duration.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }
    /// Write-progress timeout as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let cfg = Config::load(None, env(&[])).expect("defaults validate");
        assert_eq!(cfg.listen.port(), 8000);
        assert_eq!(cfg.sse.heartbeat_secs, 15);
    }

    #[test]
    fn env_overrides_nested_keys() {
        let cfg = Config::load(
            None,
            env(&[
                ("HERALD_LISTEN", "127.0.0.1:9999"),
                ("HERALD_HUB__RING_SIZE", "77"),
                ("HERALD_CONFIG", "ignored.toml"),
                ("OTHER", "x"),
            ]),
        )
        .expect("valid");
        assert_eq!(cfg.listen.port(), 9999);
        assert_eq!(cfg.hub.ring_size, 77);
    }

    #[test]
    fn kubernetes_service_links_are_not_config() {
        let cfg = Config::load(
            None,
            env(&[
                ("HERALD_SERVICE_HOST", "10.0.0.1"),
                ("HERALD_SERVICE_PORT", "8000"),
                ("HERALD_SERVICE_PORT_HTTP", "8000"),
                ("HERALD_PORT", "tcp://10.0.0.1:8000"),
                ("HERALD_PORT_8000_TCP", "tcp://10.0.0.1:8000"),
                ("HERALD_PORT_8000_TCP_ADDR", "10.0.0.1"),
                ("HERALD_API_SERVICE_HOST", "10.0.0.2"),
                ("HERALD_HUB__RING_SIZE", "9"),
            ]),
        )
        .expect("service links are ignored");
        assert_eq!(cfg.hub.ring_size, 9);
    }

    #[test]
    fn list_keys_split_on_commas() {
        let cfg = Config::load(
            None,
            env(&[
                ("HERALD_AUTH__ANONYMOUS_SUBSCRIBE", "public/**,news/*"),
                ("HERALD_CORS__ALLOWED_ORIGINS", "https://a.example"),
                ("HERALD_LIMITS__TRUSTED_PROXIES", "10.0.0.0/8,192.168.1.1"),
            ]),
        )
        .expect("valid lists");
        assert_eq!(cfg.auth.anonymous_subscribe, ["public/**", "news/*"]);
        assert_eq!(cfg.cors.allowed_origins, ["https://a.example"]);
        assert_eq!(cfg.limits.trusted_proxies, ["10.0.0.0/8", "192.168.1.1"]);
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = Config::load(None, env(&[("HERALD_HUB__RING_SIZ", "3")])).unwrap_err();
        assert!(err.to_string().contains("ring_siz"), "{err}");
    }

    #[test]
    fn zero_ring_is_rejected() {
        let err = Config::load(None, env(&[("HERALD_HUB__RING_SIZE", "0")])).unwrap_err();
        assert!(err.to_string().contains("ring_size"), "{err}");
    }
}
