//! `[http]` and `[sse]`: the settings of the HTTP surface and of SSE
//! streams, and their validation.

use std::time::Duration;

use serde::Deserialize;

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

impl SseConfig {
    /// Heartbeat interval as a duration.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }

    /// Write-progress timeout as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), HttpConfigError> {
        at_least("heartbeat_secs", self.heartbeat_secs, 1)?;
        at_least("write_timeout_secs", self.write_timeout_secs, 1)?;
        at_least(
            "max_channels_per_connection",
            self.max_channels_per_connection as u64,
            1,
        )?;
        at_least("max_batch_bytes", self.max_batch_bytes as u64, 1024)?;
        if self.coalesce_ms > 1000 {
            return Err(HttpConfigError::AtMost {
                key: "coalesce_ms",
                max: 1000,
            });
        }
        Ok(())
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

impl HttpConfig {
    /// Time allowed for a whole request head.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), HttpConfigError> {
        at_least("max_batch_events", self.max_batch_events as u64, 1)?;
        at_least("header_read_timeout_secs", self.header_read_timeout_secs, 1)?;
        at_least("request_timeout_secs", self.request_timeout_secs, 1)?;
        Ok(())
    }
}

/// Why an `[http]` or `[sse]` section cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpConfigError {
    /// A value is below its minimum.
    #[error("{key} must be at least {min}")]
    AtLeast {
        /// The key.
        key: &'static str,
        /// Smallest value allowed.
        min: u64,
    },
    /// A value is above its maximum.
    #[error("{key} must be at most {max}")]
    AtMost {
        /// The key.
        key: &'static str,
        /// Largest value allowed.
        max: u64,
    },
}

fn at_least(key: &'static str, value: u64, min: u64) -> Result<(), HttpConfigError> {
    if value < min {
        return Err(HttpConfigError::AtLeast { key, min });
    }
    Ok(())
}
