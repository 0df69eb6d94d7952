//! CORS policy from config. (Being written: see issue 3.)

use serde::Deserialize;

/// CORS settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {}

impl CorsConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The CORS layer, or `None` when no origins are configured.
pub fn layer(_cfg: &CorsConfig) -> Option<tower_http::cors::CorsLayer> {
    None
}
