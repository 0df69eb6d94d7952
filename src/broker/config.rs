//! `[broker]`: which broker carries events between replicas, and how to
//! reach it.

use std::fmt;

use serde::Deserialize;

/// Which broker a deployment runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// Everything inside this process: one replica (the default).
    #[default]
    Memory,
    /// Redis carries sequencing, history and fan-out: many replicas.
    Redis,
}

impl BrokerKind {
    /// The name used in `/readyz` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
        }
    }
}

/// Broker settings.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `memory` (one replica) or `redis` (many).
    pub kind: BrokerKind,
    /// Redis URL: `redis://[user:password@]host:port/db` or `rediss://` for
    /// TLS. With `sentinel_master`, a comma-separated list of Sentinel URLs.
    /// Env `HERALD_BROKER__URL`. Never logged (it may carry a password).
    pub url: Option<String>,
    /// Prefix of every Redis key Herald uses, so several deployments can
    /// share one Redis.
    pub key_prefix: String,
    /// Bound on establishing a Redis connection.
    pub connect_timeout_ms: u64,
    /// Bound on one Redis command; a publish waits at most this long before
    /// answering 503.
    pub command_timeout_ms: u64,
    /// A channel's Redis history expires after this long without a publish.
    pub history_ttl_secs: u64,
    /// A publish retried with the same `Idempotency-Key` within this window
    /// returns the first publish's ids and publishes nothing.
    pub idempotency_window_secs: u64,
    /// Sentinel: the monitored master's name. Empty: no Sentinel.
    pub sentinel_master: String,
    /// PEM file of the CA that signed Redis's TLS certificate, for
    /// `rediss://` with a private CA. Unset: the system's roots.
    pub tls_ca_file: Option<String>,
    /// Memory broker: most idempotency keys remembered at once (the oldest
    /// are forgotten first).
    pub idempotency_max_keys: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Memory,
            url: None,
            key_prefix: "herald".to_string(),
            connect_timeout_ms: 2000,
            command_timeout_ms: 1000,
            history_ttl_secs: 86_400,
            idempotency_window_secs: 300,
            sentinel_master: String::new(),
            tls_ca_file: None,
            idempotency_max_keys: 100_000,
        }
    }
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("kind", &self.kind)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("command_timeout_ms", &self.command_timeout_ms)
            .field("history_ttl_secs", &self.history_ttl_secs)
            .field("idempotency_window_secs", &self.idempotency_window_secs)
            .field("sentinel_master", &self.sentinel_master)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("idempotency_max_keys", &self.idempotency_max_keys)
            .finish()
    }
}

/// Why a `[broker]` section cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerConfigError {
    /// `kind = "redis"` without a URL.
    #[error("url is required when kind = \"redis\" (e.g. redis://127.0.0.1:6379/)")]
    MissingUrl,
    /// The URL does not name a Redis server (the URL itself is not echoed:
    /// it may carry a password).
    #[error("url must start with redis:// or rediss:// (each entry, with Sentinel)")]
    BadUrl,
    /// Sentinel with a private CA (not supported).
    #[error("tls_ca_file cannot be combined with sentinel_master")]
    SentinelTls,
    /// A key prefix with characters that would make keys ambiguous.
    #[error("key_prefix must be 1 to 64 letters, digits, '_', '-', '.' or ':'")]
    BadPrefix,
    /// A value outside its range.
    #[error("{key} must be between {min} and {max}")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// Smallest value allowed.
        min: u64,
        /// Largest value allowed.
        max: u64,
    },
}

impl BrokerConfig {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), BrokerConfigError> {
        let range = |key, value: u64, min, max| {
            if value < min || value > max {
                Err(BrokerConfigError::OutOfRange { key, min, max })
            } else {
                Ok(())
            }
        };
        range("connect_timeout_ms", self.connect_timeout_ms, 10, 60_000)?;
        range("command_timeout_ms", self.command_timeout_ms, 10, 60_000)?;
        range("history_ttl_secs", self.history_ttl_secs, 1, 365 * 86_400)?;
        range(
            "idempotency_window_secs",
            self.idempotency_window_secs,
            1,
            86_400,
        )?;
        range(
            "idempotency_max_keys",
            self.idempotency_max_keys as u64,
            1,
            10_000_000,
        )?;
        let prefix_ok = !self.key_prefix.is_empty()
            && self.key_prefix.len() <= 64
            && self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !prefix_ok {
            return Err(BrokerConfigError::BadPrefix);
        }
        if self.kind == BrokerKind::Redis {
            let url = self.url.as_deref().ok_or(BrokerConfigError::MissingUrl)?;
            if self.urls(url).any(|u| !is_redis_url(u)) {
                return Err(BrokerConfigError::BadUrl);
            }
            if !self.sentinel_master.is_empty() && self.tls_ca_file.is_some() {
                return Err(BrokerConfigError::SentinelTls);
            }
        }
        Ok(())
    }

    /// The URL entries: one, or the Sentinel list.
    pub fn urls<'a>(&self, url: &'a str) -> impl Iterator<Item = &'a str> {
        url.split(',').map(str::trim)
    }
}

fn is_redis_url(url: &str) -> bool {
    ["redis://", "rediss://"]
        .iter()
        .any(|s| url.len() > s.len() && url[..s.len()].eq_ignore_ascii_case(s))
}

/// A URL with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let one = one.trim();
            let Some((scheme, rest)) = one.split_once("://") else {
                return "***".to_string();
            };
            match rest.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split(':').next().unwrap_or("");
                    format!("{scheme}://{user}:***@{host}")
                }
                None => one.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_needs_a_redis_url() {
        let mut cfg = BrokerConfig {
            kind: BrokerKind::Redis,
            ..BrokerConfig::default()
        };
        assert_eq!(cfg.validate(), Err(BrokerConfigError::MissingUrl));
        cfg.url = Some("http://x".into());
        assert_eq!(cfg.validate(), Err(BrokerConfigError::BadUrl));
        cfg.url = Some("rediss://:pw@redis.example:6380/0".into());
        assert_eq!(cfg.validate(), Ok(()));
        cfg.sentinel_master = "mymaster".into();
        cfg.url = Some("redis://10.0.0.1:26379, redis://10.0.0.2:26379".into());
        assert_eq!(cfg.validate(), Ok(()));
        cfg.key_prefix = "a b".into();
        assert_eq!(cfg.validate(), Err(BrokerConfigError::BadPrefix));
    }

    #[test]
    fn passwords_never_reach_debug_output() {
        let cfg = BrokerConfig {
            kind: BrokerKind::Redis,
            url: Some("redis://user:s3cret@host:6379/".into()),
            ..BrokerConfig::default()
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redis://user:***@host:6379/"), "{shown}");
    }
}
