//! Typed configuration: built-in defaults, then a TOML file, then `HERALD_*`
//! environment variables (nested keys joined with `__`). Validated once at
//! start, before anything binds, so a bad config exits non-zero with a clear
//! message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::auth::{AuthConfig, AuthError};
use crate::broker::{BrokerConfig, BrokerConfigError};
use crate::http::config::{HttpConfig, HttpConfigError, SseConfig};
use crate::http::cors::{CorsConfig, CorsConfigError};
use crate::hub::{HubConfig, HubConfigError};
use crate::limits::{LimitsConfig, LimitsConfigError};
use crate::shutdown::{ShutdownConfig, ShutdownConfigError};
use crate::telemetry::TelemetryConfig;

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
    /// The named config file does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(String),
    /// `[hub]` values that cannot work.
    #[error("invalid configuration: hub.{0}")]
    Hub(#[from] HubConfigError),
    /// `[broker]` values that cannot work.
    #[error("invalid configuration: broker.{0}")]
    Broker(#[from] BrokerConfigError),
    /// `[http]` or `[sse]` values that cannot work.
    #[error("invalid configuration: {section}.{source}")]
    Http {
        /// `http` or `sse`.
        section: &'static str,
        /// What is wrong.
        source: HttpConfigError,
    },
    /// `[shutdown]` values that cannot work.
    #[error("invalid configuration: shutdown.{0}")]
    Shutdown(#[from] ShutdownConfigError),
    /// `[auth]` values that cannot work, or a secret that cannot be read.
    #[error("invalid configuration: auth: {0}")]
    Auth(#[from] AuthError),
    /// `[limits]` values that cannot work.
    #[error("invalid configuration: limits: {0}")]
    Limits(#[from] LimitsConfigError),
    /// `[cors]` values that cannot work.
    #[error("invalid configuration: cors: {0}")]
    Cors(#[from] CorsConfigError),
    /// Values of two sections that contradict each other.
    #[error("invalid configuration: {0}")]
    Mismatch(&'static str),
}

/// The whole service configuration: each section is owned by the module
/// that uses it, and only composed here. Every section has defaults, so an
/// empty file is a valid development config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP listener binds, e.g. `127.0.0.1:8000`.
    pub listen: SocketAddr,
    /// The broadcast core: rings, channel limits, reaping.
    pub hub: HubConfig,
    /// Which broker carries events between replicas.
    pub broker: BrokerConfig,
    /// Server-Sent Events streams.
    pub sse: SseConfig,
    /// HTTP-level limits and timeouts.
    pub http: HttpConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// JWT verification and channel rights.
    pub auth: AuthConfig,
    /// Rate and connection limits.
    pub limits: LimitsConfig,
    /// CORS policy.
    pub cors: CorsConfig,
    /// Metrics, traces and logs.
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            hub: HubConfig::default(),
            broker: BrokerConfig::default(),
            sse: SseConfig::default(),
            http: HttpConfig::default(),
            shutdown: ShutdownConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            cors: CorsConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
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
                return Err(ConfigError::MissingFile(path.display().to_string()));
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
        Ok(self.auth.resolve_secrets()?)
    }

    /// Checks every section, then the values that span sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.hub.validate()?;
        self.broker.validate()?;
        self.sse.validate().map_err(|source| ConfigError::Http {
            section: "sse",
            source,
        })?;
        self.http.validate().map_err(|source| ConfigError::Http {
            section: "http",
            source,
        })?;
        self.shutdown.validate()?;
        self.auth.validate()?;
        self.limits.validate()?;
        self.cors.validate()?;
        if self.hub.max_event_bytes > self.http.max_body_bytes {
            return Err(ConfigError::Mismatch(
                "hub.max_event_bytes must be at most http.max_body_bytes",
            ));
        }
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

    #[test]
    fn limits_env_keys_map_onto_fields() {
        let env = [
            ("HERALD_LIMITS__PUBLISH_PER_SECOND", "7"),
            ("HERALD_LIMITS__PUBLISH_BURST", "9"),
            ("HERALD_LIMITS__MAX_CONNECTIONS", "11"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let cfg = Config::load(None, env).expect("valid");
        assert_eq!(cfg.limits.publish_per_second, 7);
        assert_eq!(cfg.limits.publish_burst, 9);
        assert_eq!(cfg.limits.max_connections, 11);
    }
}
