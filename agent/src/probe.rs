//! The checks' HTTP client: hyper driven directly over our own DNS, TCP and TLS steps so each
//! phase is timed where it happens (reqwest has no such hooks), with upstream's semantics:
//! keep-alive off unless asked, no proxy, a timeout per request naming the phase it hit.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::trace::{FailureKind, LocalCause, Phase, RequestTrace};

/// Most of a response body we read before giving up on it (the checked endpoints answer empty).
const MAX_BODY_BYTES: usize = 1 << 20;

/// The outcome of one GET.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Response status, when a response arrived.
    pub status: Option<StatusCode>,
    /// What failed, if anything (a non-200 status counts as a failure).
    pub failure: Option<(FailureKind, String)>,
    /// The phase timeline.
    pub trace: RequestTrace,
    /// Request start to response headers (upstream's request duration).
    pub duration: Duration,
}

impl ProbeResult {
    /// The `/alive` value: `ok`, the status line, or the error text.
    pub fn summary(&self) -> String {
        match (&self.failure, self.status) {
            (None, _) => "ok".to_string(),
            (Some((FailureKind::Status(_), _)), Some(status)) => status_text(status),
            (Some((_, message)), _) => message.clone(),
        }
    }

    /// SYN retransmissions its TCP connect must have needed; `None` when it opened no new
    /// connection.
    pub fn syn_retransmits(&self) -> Option<u32> {
        self.trace.connect_time(self.duration).map(crate::trace::syn_retransmits)
    }
}

/// `404 Not Found`, as Go's `resp.Status`.
pub fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

#[derive(Default)]
struct IoMarks {
    last_write: Option<Instant>,
    first_read: Option<Instant>,
}

/// Wraps a connection to note when the request was written and when the response began.
struct TimedIo<S> {
    inner: S,
    marks: Arc<Mutex<IoMarks>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            if let Ok(mut m) = self.marks.lock() {
                m.first_read.get_or_insert_with(Instant::now);
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            if let Ok(mut m) = self.marks.lock() {
                m.last_write = Some(Instant::now());
            }
        }
        res
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

struct PooledConn {
    sender: SendRequest<Empty<Bytes>>,
    marks: Arc<Mutex<IoMarks>>,
}

/// The HTTP client of every check.
pub struct ProbeClient {
    tls: TlsConnector,
    reuse_connections: bool,
    idle: Mutex<HashMap<String, PooledConn>>,
    /// Source address of outgoing connections (the pod IP when `KUBENURSE_BIND_ADDRESS` is set).
    source: Option<IpAddr>,
}

struct Target {
    https: bool,
    host: String,
    ip: Option<IpAddr>,
    port: u16,
    key: String,
}

fn target(uri: &Uri) -> Result<Target, String> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => return Err(format!("unsupported URL scheme {other:?} in {uri}")),
    };
    let raw_host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("URL {uri} has no host"))?;
    let host = raw_host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let ip = host.parse::<IpAddr>().ok();
    let key = format!("{}://{}:{}", if https { "https" } else { "http" }, host, port);
    Ok(Target { https, host, ip, port, key })
}

impl ProbeClient {
    /// A client with the given TLS settings (see `tls::client_config`).
    pub fn new(tls: Arc<rustls::ClientConfig>, reuse_connections: bool) -> Self {
        Self { tls: TlsConnector::from(tls), reuse_connections, idle: Mutex::new(HashMap::new()), source: None }
    }

    /// Sends from `source` (same family destinations only), so a peer sees which node checks it.
    pub fn with_source(mut self, source: Option<IpAddr>) -> Self {
        self.source = source.filter(|ip| !ip.is_unspecified());
        self
    }

    async fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        match self.source {
            Some(src) if src.is_ipv4() == addr.is_ipv4() => {
                let socket =
                    if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
                socket.bind(SocketAddr::new(src, 0))?;
                socket.connect(addr).await
            }
            _ => TcpStream::connect(addr).await,
        }
    }

    /// GETs `uri` with `headers`, giving up after `timeout`; never panics, never hangs.
    pub async fn get(&self, uri: &Uri, headers: &HeaderMap, timeout: Duration) -> ProbeResult {
        let mut trace = RequestTrace::start();
        let outcome = tokio::time::timeout(timeout, self.get_inner(uri, headers, &mut trace)).await;
        let duration = trace.elapsed();
        let (status, failure) = match outcome {
            Ok(Ok(status)) if status == StatusCode::OK => (Some(status), None),
            Ok(Ok(status)) => (Some(status), Some((FailureKind::Status(status.as_u16()), status_text(status)))),
            Ok(Err(failure)) => (None, Some(failure)),
            Err(_) => (None, Some(timed_out(&trace, &format!("GET {uri}"), timeout))),
        };
        ProbeResult { status, failure, trace, duration }
    }

    async fn get_inner(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        trace: &mut RequestTrace,
    ) -> Result<StatusCode, (FailureKind, String)> {
        let target = target(uri).map_err(|e| (FailureKind::RoundTrip, e))?;
        let pooled = if self.reuse_connections {
            self.idle.lock().ok().and_then(|mut idle| idle.remove(&target.key))
        } else {
            None
        };
        let mut conn = match pooled {
            Some(mut c) => match c.sender.ready().await {
                Ok(()) => c,
                Err(_) => self.connect(uri, &target, trace).await?,
            },
            None => self.connect(uri, &target, trace).await?,
        };
        trace.mark(Phase::GotConn);
        if let Ok(mut m) = conn.marks.lock() {
            *m = IoMarks::default();
        }

        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut builder = Request::get(path);
        let authority = uri.authority().map_or(target.host.as_str(), |a| a.as_str());
        builder = builder.header(http::header::HOST, authority);
        builder = builder.header(http::header::USER_AGENT, concat!("kubenurse-agent/", env!("CARGO_PKG_VERSION")));
        if !self.reuse_connections {
            builder = builder.header(http::header::CONNECTION, "close");
        }
        let mut request =
            builder.body(Empty::<Bytes>::new()).map_err(|e| (FailureKind::RoundTrip, format!("GET {uri}: {e}")))?;
        request.headers_mut().extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));

        trace.begin(Phase::WroteRequest);
        let response = conn.sender.send_request(request).await;
        let marks = conn.marks.lock().map(|m| (m.last_write, m.first_read)).unwrap_or_default();
        if let Some(at) = marks.0 {
            trace.mark_at(Phase::WroteRequest, at);
        }
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                let kind =
                    if marks.0.is_none() { FailureKind::Phase(Phase::WroteRequest) } else { FailureKind::RoundTrip };
                return Err((kind, format!("GET {uri}: {}", error_chain(&e))));
            }
        };
        if let Some(at) = marks.1 {
            trace.mark_at(Phase::GotFirstRespByte, at);
        }
        trace.begin(Phase::GotFirstRespByte);
        let status = response.status();
        let mut body = response.into_body();
        let mut read = 0usize;
        while read <= MAX_BODY_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                Some(Err(_)) | None => break,
            }
        }
        if self.reuse_connections && !conn.sender.is_closed() {
            if let Ok(mut idle) = self.idle.lock() {
                idle.insert(target.key, conn);
            }
        }
        Ok(status)
    }

    /// Resolves `host` (unless `ip` is given) and connects to `port` on the first address that
    /// answers, marking the DNS and connect phases; error texts start with `what`.
    pub(crate) async fn open_tcp(
        &self,
        what: &str,
        host: &str,
        ip: Option<IpAddr>,
        port: u16,
        trace: &mut RequestTrace,
    ) -> Result<TcpStream, (FailureKind, String)> {
        let addrs: Vec<SocketAddr> = match ip {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => {
                trace.mark(Phase::DnsStart);
                trace.begin(Phase::DnsDone);
                let found = tokio::net::lookup_host((host, port)).await;
                let found: Vec<SocketAddr> = found
                    .map_err(|e| {
                        let kind = match LocalCause::of(&e) {
                            Some(cause) => FailureKind::Local(Phase::DnsDone, cause),
                            None => FailureKind::Phase(Phase::DnsDone),
                        };
                        (kind, format!("{what}: lookup {host}: {e}"))
                    })?
                    .collect();
                if found.is_empty() {
                    return Err((FailureKind::Phase(Phase::DnsDone), format!("{what}: lookup {host}: no addresses")));
                }
                trace.mark(Phase::DnsDone);
                found
            }
        };
        trace.mark(Phase::ConnectStart);
        trace.begin(Phase::ConnectDone);
        let mut last_err = None;
        let mut local = None;
        let mut tcp = None;
        for addr in &addrs {
            match self.dial(*addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => {
                    local = local.or(LocalCause::of(&e));
                    last_err = Some(format!("dial tcp {addr}: {e}"));
                }
            }
        }
        let tcp = tcp.ok_or_else(|| {
            let kind = match local {
                Some(cause) => FailureKind::Local(Phase::ConnectDone, cause),
                None => FailureKind::Phase(Phase::ConnectDone),
            };
            (kind, format!("{what}: {}", last_err.unwrap_or_default()))
        })?;
        trace.mark(Phase::ConnectDone);
        Ok(tcp)
    }

    async fn connect(
        &self,
        uri: &Uri,
        target: &Target,
        trace: &mut RequestTrace,
    ) -> Result<PooledConn, (FailureKind, String)> {
        let tcp = self.open_tcp(&format!("GET {uri}"), &target.host, target.ip, target.port, trace).await?;
        // Latency probes: never wait for Nagle.
        let _ = tcp.set_nodelay(true);

        let stream = if target.https {
            trace.mark(Phase::TlsHandshakeStart);
            trace.begin(Phase::TlsHandshakeDone);
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| (FailureKind::Phase(Phase::TlsHandshakeDone), format!("GET {uri}: bad TLS name: {e}")))?;
            let tls =
                self.tls.connect(name, tcp).await.map_err(|e| {
                    (FailureKind::Phase(Phase::TlsHandshakeDone), format!("GET {uri}: TLS handshake: {e}"))
                })?;
            trace.mark(Phase::TlsHandshakeDone);
            Stream::Tls(Box::new(tls))
        } else {
            Stream::Plain(tcp)
        };
        let marks = Arc::new(Mutex::new(IoMarks::default()));
        let io = TokioIo::new(TimedIo { inner: stream, marks: marks.clone() });
        trace.begin(Phase::WroteRequest);
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|e| (FailureKind::RoundTrip, format!("GET {uri}: {}", error_chain(&e))))?;
        tokio::spawn(async move {
            // Errors surface through the request future; nothing more to report here.
            let _ = connection.await;
        });
        Ok(PooledConn { sender, marks })
    }
}

/// The failure of a check that ran out of time: the phase it was waiting for (`what` starts
/// the text).
pub(crate) fn timed_out(trace: &RequestTrace, what: &str, timeout: Duration) -> (FailureKind, String) {
    let phase = trace.in_progress();
    let kind = match phase {
        Some(p @ (Phase::DnsDone | Phase::ConnectDone | Phase::TlsHandshakeDone | Phase::WroteRequest)) => {
            FailureKind::Phase(p)
        }
        _ => FailureKind::RoundTrip,
    };
    let during = phase.map(|p| format!(" waiting for {}", p.as_str())).unwrap_or_default();
    (kind, format!("{what}: timeout after {timeout:?}{during}"))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
