//! The write-progress watchdog shared by both connection paths (hyper and
//! the lean stream path): a write that stays blocked for the timeout fails
//! the connection, so a subscriber that never reads is dropped instead of
//! pinning buffers forever. A write into a socket with room costs no timer;
//! only a blocked write arms one, and any progress disarms it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::conn_info::{CloseCell, CloseReason};

/// A TCP stream whose writes must make progress within `timeout`.
pub(crate) struct WatchdogIo {
    inner: TcpStream,
    stall: Stall,
}

/// The stall timer: allocated on the first blocked write only.
struct Stall {
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    timeout: Duration,
    /// Told why the connection closed, for the stream's metrics.
    close: Arc<CloseCell>,
}

impl WatchdogIo {
    pub(crate) fn new(inner: TcpStream, timeout: Duration, close: Arc<CloseCell>) -> Self {
        Self {
            inner,
            stall: Stall {
                sleep: None,
                armed: false,
                timeout,
                close,
            },
        }
    }

    /// Gives the socket back (to hand the connection to another path).
    pub(crate) fn into_inner(self) -> TcpStream {
        self.inner
    }

    /// The socket, for readiness checks that bypass the watchdog.
    pub(crate) fn get_ref(&self) -> &TcpStream {
        &self.inner
    }
}

impl Stall {
    /// Clears the timer on progress, arms it when blocked, and fails the
    /// write once it fires.
    fn check<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let deadline = Instant::now() + self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.close.set(CloseReason::WriteTimeout);
        tracing::info!("closing a connection that accepted no bytes within the write timeout");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "write stalled",
        )))
    }
}

impl AsyncRead for WatchdogIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WatchdogIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.stall.check(polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.stall.check(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
