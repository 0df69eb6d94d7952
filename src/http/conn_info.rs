//! What a connection carries through every layer: who is on the other end
//! ([`ConnInfo`]), why it closed ([`CloseReason`], shared through a
//! [`CloseCell`] between the IO watchdog and the stream), and the timeouts
//! it is served with ([`ConnSettings`]). A leaf module: the connection
//! paths, the watchdog and the handlers all use it, and it uses none of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// Per-connection facts, inserted into each request by the connection loop.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The socket peer.
    pub peer: SocketAddr,
    /// Why the connection closed, when the IO layer knows first.
    pub close: Arc<CloseCell>,
}

/// Why a stream ended, for `herald_connections_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// Not decided yet.
    Open = 0,
    /// The client went away.
    Client = 1,
    /// The server is draining.
    Shutdown = 2,
    /// The credential expired mid-stream.
    TokenExpired = 3,
    /// The socket accepted no bytes within the write timeout.
    WriteTimeout = 4,
    /// The connection failed.
    Error = 5,
}

impl CloseReason {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Client,
            2 => Self::Shutdown,
            3 => Self::TokenExpired,
            4 => Self::WriteTimeout,
            5 => Self::Error,
            _ => Self::Open,
        }
    }

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open | Self::Client => "client",
            Self::Shutdown => "shutdown",
            Self::TokenExpired => "token_expired",
            Self::WriteTimeout => "write_timeout",
            Self::Error => "error",
        }
    }
}

/// Shared between a connection's IO watchdog and its stream, so the stream
/// can report why the connection closed.
#[derive(Debug, Default)]
pub struct CloseCell(AtomicU8);

impl CloseCell {
    /// Records a reason unless one is already set.
    pub fn set(&self, reason: CloseReason) {
        let _ = self
            .0
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire);
    }
    /// The recorded reason.
    pub fn get(&self) -> CloseReason {
        CloseReason::from_u8(self.0.load(Ordering::Acquire))
    }
}

/// Timeouts every connection is served with.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    /// Time allowed for a request head to arrive: from accept for the
    /// first, from the end of the previous response for later ones.
    pub header_read_timeout: Duration,
    /// A write that makes no progress this long fails the connection.
    pub write_timeout: Duration,
}
