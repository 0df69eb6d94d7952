//! The HMAC secret: a [`Secret`] wrapper that never prints its value, the
//! environment variable it may come from, and the rules a production
//! config holds it to.

use std::fmt;

use serde::Deserialize;

/// The HMAC secret shipped in `config/development.toml`. It is public, so a
/// config with [`production`](super::AuthConfig::production) set refuses to
/// start with it.
pub const DEV_SECRET: &str = "herald-development-secret-do-not-use-in-production";

/// Shortest HMAC secret, in bytes, that a production config accepts.
pub const MIN_SECRET_BYTES: usize = 32;

/// Environment variable holding the HMAC secret; it wins over the config file.
pub const SECRET_ENV: &str = "HERALD_JWT_SECRET";

/// A secret string whose `Debug` output is redacted.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's bytes. Never log them.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_is_redacted() {
        let secret = Secret::new("hunter2-but-longer");
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(secret.expose(), b"hunter2-but-longer");
    }
}
