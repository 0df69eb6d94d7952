//! Shutdown: the signal (one `CancellationToken`, cancelled on SIGTERM or
//! SIGINT, stops the accept loop) and the [`Drain`] that follows it, which
//! refuses new work, lets admitted publishes finish, and only then lets
//! every stream write out what it still owes and end with a jittered
//! `retry:` hint.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use serde::Deserialize;
use tokio::sync::Notify;
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

/// The drain, in the order that keeps every accepted event deliverable:
///
/// 1. [`Drain::close`]: new publishes and streams are refused (503) and
///    readiness turns 503, while publishes already admitted run on.
/// 2. [`Drain::settled`] resolves once those publishes have finished: every
///    event that got a 202 is now in its ring.
/// 3. [`Drain::release_streams`] with the head at that moment: each stream
///    writes out everything at or below it, then its `retry:` hint, and ends.
#[derive(Debug, Default)]
pub struct Drain {
    closing: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
    /// Head every stream must reach before it ends; set at release.
    final_head: AtomicU64,
    released: CancellationToken,
}

/// Held by an admitted publish; dropping it lets the drain proceed.
#[derive(Debug)]
pub struct PublishGuard<'a>(&'a Drain);

impl Drop for PublishGuard<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Whether new work is refused (readiness, new publishes and streams).
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Admits a publish, or `None` once closing. Counting before checking
    /// (both sequentially consistent) means the drain either sees this
    /// publish in flight or this publish sees the drain.
    pub fn begin_publish(&self) -> Option<PublishGuard<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = PublishGuard(self);
        if self.closing.load(Ordering::SeqCst) {
            return None;
        }
        Some(guard)
    }

    /// Step 1: refuse new work.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Step 2: resolves when no admitted publish is still running.
    pub async fn settled(&self) {
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Step 3: streams deliver everything up to `head`, then end.
    pub fn release_streams(&self, head: u64) {
        self.final_head.store(head, Ordering::Release);
        self.released.cancel();
    }

    /// The head a stream must deliver before ending, once released.
    pub fn stream_end(&self) -> Option<u64> {
        self.released
            .is_cancelled()
            .then(|| self.final_head.load(Ordering::Acquire))
    }

    /// Resolves at release; streams wait on it while idle.
    pub fn released(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.released.clone().cancelled_owned()
    }
}
