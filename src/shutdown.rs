//! The drain signal. One `CancellationToken` is cancelled on SIGTERM or
//! SIGINT; the accept loop stops, `/readyz` turns 503, and every SSE stream
//! sends a jittered `retry:` hint and ends.

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Graceful shutdown settings (`[shutdown]`).
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

/// Why a `[shutdown]` section cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShutdownConfigError {
    /// A zero grace period would cut every stream off mid-drain.
    #[error("grace_secs must be at least 1")]
    ZeroGrace,
}

impl ShutdownConfig {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ShutdownConfigError> {
        if self.grace_secs == 0 {
            return Err(ShutdownConfigError::ZeroGrace);
        }
        Ok(())
    }

    /// The grace period as a duration.
    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.grace_secs)
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, draining"),
        () = terminate => tracing::info!("SIGTERM received, draining"),
    }
}

/// A token cancelled when a shutdown signal arrives.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        signal().await;
        t.cancel();
    });
    token
}
