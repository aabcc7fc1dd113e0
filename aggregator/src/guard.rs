//! Bounds on gRPC connections before and after they prove anything: a connection that has not
//! had a hello accepted within [`HELLO_TIMEOUT`](crate::ingest::HELLO_TIMEOUT) of being opened
//! is closed (however far it got: TCP only, TLS half done, HTTP/2 preface but no stream), and
//! one that reads nothing for [`IDLE_TIMEOUT`] is closed too (agents ping every 20 s).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A connection that reads nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Open connections by peer address, so the service can mark the one a hello arrived on.
#[derive(Default)]
pub struct Connections {
    by_peer: DashMap<SocketAddr, Arc<AtomicBool>>,
}

impl Connections {
    /// Marks the connection from `peer` as having had a hello accepted: it may stay open.
    pub fn admit(&self, peer: Option<SocketAddr>) {
        if let Some(flag) = peer.and_then(|p| self.by_peer.get(&p).map(|f| f.clone())) {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// A TCP connection with a hello deadline and an idle timeout.
pub struct Guarded {
    inner: TcpStream,
    peer: Option<SocketAddr>,
    admitted: Arc<AtomicBool>,
    registry: Arc<Connections>,
    last_read: Instant,
    timer: Pin<Box<Sleep>>,
    hello_timeout: Duration,
}

impl Guarded {
    /// Guards `inner`, registered in `registry` until dropped.
    pub fn new(inner: TcpStream, registry: Arc<Connections>, hello_timeout: Duration) -> Self {
        let peer = inner.peer_addr().ok();
        let admitted = Arc::new(AtomicBool::new(false));
        if let Some(p) = peer {
            registry.by_peer.insert(p, admitted.clone());
        }
        let now = Instant::now();
        let timer = Box::pin(tokio::time::sleep_until(now + hello_timeout));
        Self { inner, peer, admitted, registry, last_read: now, timer, hello_timeout }
    }

    /// Whether the connection must close: its hello deadline passed without an accepted
    /// hello, or (once admitted) it read nothing for [`IDLE_TIMEOUT`]. The timer is re-armed
    /// lazily when it fires, not on every read.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            if !self.admitted.load(Ordering::Relaxed) {
                let why = format!("no accepted hello within {:?}", self.hello_timeout);
                return Err(io::Error::new(io::ErrorKind::TimedOut, why));
            }
            let idle_until = self.last_read + IDLE_TIMEOUT;
            if idle_until <= Instant::now() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no traffic for {IDLE_TIMEOUT:?}")));
            }
            self.timer.as_mut().reset(idle_until);
        }
        Ok(())
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(p) = self.peer {
            self.registry.by_peer.remove_if(&p, |_, flag| Arc::ptr_eq(flag, &self.admitted));
        }
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo { local_addr: self.inner.local_addr().ok(), remote_addr: self.peer }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last_read = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
