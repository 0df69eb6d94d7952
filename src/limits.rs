//! Rate and connection limits. (Being written: see issue 3.)

use serde::Deserialize;

/// Rate and connection limit settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {}

impl LimitsConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
