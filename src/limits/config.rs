//! `[limits]`: the settings of the rate and connection limits, and their
//! validation.

use std::str::FromStr;

use serde::Deserialize;

use super::client_ip::{InvalidNet, IpNet};

/// Rate and connection limit settings (`[limits]`).
///
/// The defaults are the development values: generous enough that
/// `herald bench` over loopback holds 19,000 subscribers from one IP and
/// publishes 1,000 events/s without touching a limit. Suggested production
/// values are given on each field.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sustained publishes per second per subject (or per IP when anonymous);
    /// `0` disables the limit. Env `HERALD_LIMITS__PUBLISH_PER_SECOND`.
    /// Production: about 50.
    pub publish_per_second: u32,
    /// Publishes a key may make at once before the rate applies. A batch of
    /// `n` events costs `n`; a batch larger than this is always refused, so
    /// keep `http.max_batch_events` at or below it.
    /// Env `HERALD_LIMITS__PUBLISH_BURST`. Production: about 1000.
    pub publish_burst: u32,
    /// Sustained new SSE streams per second per client IP; `0` disables.
    /// Production: about 5.
    pub streams_per_ip_per_second: u32,
    /// New SSE streams one IP may open at once. Production: about 50.
    pub streams_per_ip_burst: u32,
    /// Concurrent SSE streams per client IP; `0` disables. Production: a few
    /// hundred, more if many users share one NAT address.
    pub max_streams_per_ip: usize,
    /// Concurrent SSE streams per token subject; `0` disables.
    /// Production: about 20.
    pub max_streams_per_subject: usize,
    /// Concurrent SSE streams in total; `0` disables. Size it to memory
    /// (roughly 10–20 KiB per idle stream) and file descriptors.
    pub max_connections: usize,
    /// `Retry-After` sent when a concurrent-stream cap refuses a stream.
    pub stream_retry_after_secs: u64,
    /// Connections per client IP that may wait for the rest of their first
    /// request head (one whose head has fully arrived when it is first read
    /// never counts); past it a new connection is closed at once.
    /// Keyed on the socket peer (no head, so no `X-Forwarded-For`); peers in
    /// `trusted_proxies` are exempt. `0` disables.
    /// Env `HERALD_LIMITS__MAX_PENDING_PER_IP`.
    pub max_pending_per_ip: usize,
    /// Proxies whose `X-Forwarded-For` is believed: addresses or CIDR
    /// blocks, e.g. `["10.0.0.0/8", "::1"]`. Empty: the socket peer is the
    /// client.
    pub trusted_proxies: Vec<String>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            publish_per_second: 10_000,
            publish_burst: 20_000,
            streams_per_ip_per_second: 10_000,
            streams_per_ip_burst: 20_000,
            max_streams_per_ip: 100_000,
            max_streams_per_subject: 100_000,
            max_connections: 50_000,
            stream_retry_after_secs: 5,
            max_pending_per_ip: 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Why a `[limits]` section cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsConfigError {
    /// A rate is set but its burst is zero, so nothing could ever pass.
    #[error("{burst} must be at least 1 when {rate} is set")]
    BurstWithoutRoom {
        /// The burst key.
        burst: &'static str,
        /// The rate key.
        rate: &'static str,
    },
    /// `stream_retry_after_secs` is zero.
    #[error("stream_retry_after_secs must be at least 1")]
    ZeroRetryAfter,
    /// A `trusted_proxies` entry is not an address or CIDR block.
    #[error("trusted_proxies: {0}")]
    TrustedProxy(#[from] InvalidNet),
}

impl LimitsConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), LimitsConfigError> {
        if self.publish_per_second > 0 && self.publish_burst == 0 {
            return Err(LimitsConfigError::BurstWithoutRoom {
                burst: "publish_burst",
                rate: "publish_per_second",
            });
        }
        if self.streams_per_ip_per_second > 0 && self.streams_per_ip_burst == 0 {
            return Err(LimitsConfigError::BurstWithoutRoom {
                burst: "streams_per_ip_burst",
                rate: "streams_per_ip_per_second",
            });
        }
        if self.stream_retry_after_secs == 0 {
            return Err(LimitsConfigError::ZeroRetryAfter);
        }
        self.trusted_proxies()?;
        Ok(())
    }

    /// The parsed `trusted_proxies`.
    pub fn trusted_proxies(&self) -> Result<Vec<IpNet>, LimitsConfigError> {
        self.trusted_proxies
            .iter()
            .map(|s| IpNet::from_str(s).map_err(LimitsConfigError::from))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_refuses_what_cannot_work() {
        assert!(LimitsConfig::default().validate().is_ok());
        let bad = [
            LimitsConfig {
                publish_burst: 0,
                ..LimitsConfig::default()
            },
            LimitsConfig {
                streams_per_ip_burst: 0,
                ..LimitsConfig::default()
            },
            LimitsConfig {
                stream_retry_after_secs: 0,
                ..LimitsConfig::default()
            },
            LimitsConfig {
                trusted_proxies: vec!["10.0.0.0/99".into()],
                ..LimitsConfig::default()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
        let off = LimitsConfig {
            publish_per_second: 0,
            publish_burst: 0,
            ..LimitsConfig::default()
        };
        assert!(off.validate().is_ok());
    }
}
