//! A client connection that moves no bytes either way for `limits.idle_timeout` is closed: the
//! one deadline that also covers what the HTTP/1 header deadline cannot see (a client that
//! connects and never sends a byte, an HTTP/2 connection left open with nothing on it).
//!
//! Activity is recorded as an `Instant` on every read or write that makes progress; the timer
//! is re-armed only when it fires, so the byte path pays for a clock read, not a timer reset.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep, sleep_until};

/// An I/O stream with an inactivity deadline (one timer allocation per connection).
pub struct IdleIo<T> {
    inner: T,
    timer: Pin<Box<Sleep>>,
    last: Instant,
    timeout: Duration,
    expired: Counter,
    fired: bool,
}

/// The error an idle connection ends with (`io::ErrorKind::TimedOut` carrying this).
#[derive(Debug, thiserror::Error)]
#[error("no bytes in either direction for {0:?}")]
pub struct IdleTimeout(pub Duration);

impl<T> IdleIo<T> {
    /// Wrap `inner`; the deadline starts now. `expired` counts the connections it ends.
    pub fn new(inner: T, timeout: Duration, expired: Counter) -> Self {
        let now = Instant::now();
        Self {
            inner,
            timer: Box::pin(sleep_until(now + timeout)),
            last: now,
            timeout,
            expired,
            fired: false,
        }
    }
}

impl<T> IdleIo<T> {
    /// Called when the inner stream is pending: an error once the deadline has passed with no
    /// activity since it was armed; otherwise re-arm and wait.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let deadline = self.last + self.timeout;
            if Instant::now() >= deadline {
                if !self.fired {
                    self.fired = true;
                    self.expired.inc();
                }
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    IdleTimeout(self.timeout),
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    /// Record the outcome of an inner poll: progress moves the deadline, pending checks it.
    fn track<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(r) => {
                self.last = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending => {
                self.check(cx)?;
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.track(cx, polled)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(cx, polled)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn a_silent_stream_times_out_and_activity_postpones_it() {
        let timeout = Duration::from_millis(300);
        let (mut client, server) = duplex(64);
        let expired = Counter::default();
        let mut io = Box::pin(IdleIo::new(server, timeout, expired.clone()));
        let mut buf = [0u8; 8];
        // Activity every 200 ms keeps it open well past the first deadline.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        }
        // Then silence: the read fails with TimedOut, no earlier than the deadline.
        let started = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= timeout);
        assert!(err.get_ref().is_some_and(|e| e.is::<IdleTimeout>()));
        assert_eq!(expired.get(), 1);
        // Counted once, however often it is polled after.
        assert!(io.read(&mut buf).await.is_err());
        assert_eq!(expired.get(), 1);
    }
}
