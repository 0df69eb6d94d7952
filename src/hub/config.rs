//! `[hub]`: the settings of the broadcast core, and their validation.

use serde::Deserialize;

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
    /// Budget for all retained history together, in bytes (each event
    /// counts its SSE frame plus about 100 bytes). Past it, the oldest
    /// events across channels are evicted first. Env
    /// `HERALD_HUB__MAX_MEMORY_BYTES`.
    pub max_memory_bytes: usize,
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
            max_memory_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Why a `[hub]` section cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubConfigError {
    /// A value lies outside the range the core supports.
    #[error("{key} must be between {min} and {max}")]
    OutOfRange {
        /// The key, e.g. `ring_size`.
        key: &'static str,
        /// Smallest value allowed.
        min: u64,
        /// Largest value allowed.
        max: u64,
    },
}

impl HubConfig {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), HubConfigError> {
        let range = |key, value: usize, min: u64, max: u64| {
            let value = value as u64;
            if value < min || value > max {
                Err(HubConfigError::OutOfRange { key, min, max })
            } else {
                Ok(())
            }
        };
        range("ring_size", self.ring_size, 1, 1_000_000)?;
        range("max_channels", self.max_channels, 1, u64::MAX)?;
        range("max_event_bytes", self.max_event_bytes, 1, u64::MAX)?;
        range("max_channel_name_len", self.max_channel_name_len, 1, 1024)?;
        // Room for at least a few of the largest events (whose frames can be
        // up to 7 times their data: every newline becomes "\ndata: ").
        let least = (8 * self.max_event_bytes as u64).max(1 << 20);
        range("max_memory_bytes", self.max_memory_bytes, least, u64::MAX)?;
        Ok(())
    }
}
