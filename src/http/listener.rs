//! The listening socket: binding it with the configured backlog, and the
//! accept loop that hands each connection to [`serve_connection`] until the
//! server starts draining.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{Accepted, ConnSettings, Handlers, serve_connection};
use crate::limits::PendingConnections;

/// Binding a listening socket failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    pub source: io::Error,
}

/// Binds a listener with the given backlog.
pub fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, BindError> {
    let wrap = |source| BindError { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(wrap)?;
    socket.set_reuseaddr(true).map_err(wrap)?;
    socket.bind(addr).map_err(wrap)?;
    socket.listen(backlog).map_err(wrap)
}

/// Accepts connections until `shutdown` is cancelled, serving each as a task
/// of `tracker` that counts in `pending` while it waits for its first head.
/// Returns when the listener is closed.
pub async fn accept_until(
    listener: TcpListener,
    handlers: Handlers,
    settings: ConnSettings,
    pending: Arc<PendingConnections>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let accepted = Accepted {
                    stream,
                    peer,
                    pending: Arc::clone(&pending),
                    deadline: tokio::time::Instant::now() + settings.header_read_timeout,
                };
                let handlers = handlers.clone();
                let stop = shutdown.clone();
                tracker.spawn(serve_connection(accepted, handlers, settings, stop));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
