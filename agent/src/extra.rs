//! Extra checks that are not HTTP (`KUBENURSE_EXTRA_CHECKS` entries `name:tcp://host:port`,
//! `name:dns://name` and `name:dns://server:port/name`): a TCP connect (success = connected;
//! phases dns and connect) and a name lookup, with the node's resolver or by asking one server
//! (success = at least one address; phase dns), timed and recorded like the HTTP checks, with
//! [`NON_HTTP_OK`] as their `code` when they succeed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http::Uri;

use crate::dns_wire::{self, DnsError, TYPE_A, TYPE_AAAA};
use crate::probe::{timed_out, ProbeClient, ProbeResult};
use crate::trace::{FailureKind, LocalCause, Phase, RequestTrace};

/// The `code` label of a successful TCP or DNS check (it has no HTTP status).
pub const NON_HTTP_OK: &str = "ok";

/// Which non-HTTP check a URL asks for, by its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonHttp {
    /// `tcp://host:port`.
    Tcp,
    /// `dns://name`.
    Dns,
}

impl NonHttp {
    /// The kind of `uri`, `None` for HTTP(S).
    pub fn of(uri: &Uri) -> Option<Self> {
        match uri.scheme_str() {
            Some("tcp") => Some(Self::Tcp),
            Some("dns") => Some(Self::Dns),
            _ => None,
        }
    }
}

fn host(uri: &Uri) -> String {
    uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string()
}

/// Validates an extra check's `tcp://` or `dns://` URL (at start: a bad one exits 2).
pub fn validate(uri: &Uri) -> Result<(), String> {
    let plain_path = uri.path().is_empty() || uri.path() == "/";
    match NonHttp::of(uri) {
        Some(NonHttp::Tcp) => {
            if host(uri).is_empty() || uri.port_u16().is_none() {
                return Err("a TCP check is tcp://host:port".into());
            }
            if !plain_path || uri.query().is_some() {
                return Err("a TCP check has no path".into());
            }
            Ok(())
        }
        Some(NonHttp::Dns) => DnsTarget::of(uri).map(|_| ()),
        None => Err("not a tcp:// or dns:// URL".into()),
    }
}

/// What a `dns://` URL asks: a name, and the one server to ask (else the node's resolver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTarget {
    /// The name looked up.
    pub name: String,
    /// `dns://server:port/name` (port 53 when left out): ask this server only.
    pub server: Option<SocketAddr>,
}

impl DnsTarget {
    /// Parses `dns://name` or `dns://server[:port]/name` (the server an IP address).
    pub fn of(uri: &Uri) -> Result<Self, String> {
        let plain_path = uri.path().is_empty() || uri.path() == "/";
        if uri.query().is_some() {
            return Err("a DNS check has no query".into());
        }
        let (name, server) = if plain_path {
            if uri.port_u16().is_some() {
                return Err("dns://server:port/name needs the name after the server".into());
            }
            (host(uri), None)
        } else {
            let ip: IpAddr = host(uri)
                .parse()
                .map_err(|_| format!("the server of dns://server:port/name is an IP address, not {:?}", host(uri)))?;
            let name = uri.path().trim_start_matches('/').to_string();
            (name, Some(SocketAddr::new(ip, uri.port_u16().unwrap_or(53))))
        };
        let labels_ok = name
            .trim_end_matches('.')
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if name.is_empty() || name.len() > 253 || !labels_ok {
            return Err(format!("{name:?} is not a DNS name"));
        }
        Ok(Self { name, server })
    }
}

/// Connects to `tcp://host:port` within `timeout`.
pub async fn tcp(client: &ProbeClient, uri: &Uri, timeout: Duration) -> ProbeResult {
    let mut trace = RequestTrace::start();
    let (host, port) = (host(uri), uri.port_u16().unwrap_or(0));
    let ip = host.parse::<IpAddr>().ok();
    let what = format!("dial {uri}");
    let outcome = tokio::time::timeout(timeout, client.open_tcp(&what, &host, ip, port, &mut trace)).await;
    let duration = trace.elapsed();
    let failure = match outcome {
        Ok(Ok(_connected)) => None,
        Ok(Err(failure)) => Some(failure),
        Err(_) => Some(timed_out(&trace, &what, timeout)),
    };
    ProbeResult { status: None, failure, trace, duration }
}

/// Looks a `dns://` URL's name up within `timeout`: with the node's resolver, or by asking its
/// server for A and AAAA records.
pub async fn dns(uri: &Uri, timeout: Duration) -> ProbeResult {
    let mut trace = RequestTrace::start();
    let target = DnsTarget::of(uri);
    let what = match &target {
        Ok(DnsTarget { name, server: Some(server) }) => format!("lookup {name} at {server}"),
        Ok(DnsTarget { name, server: None }) => format!("lookup {name}"),
        Err(_) => format!("lookup {uri}"),
    };
    trace.mark(Phase::DnsStart);
    trace.begin(Phase::DnsDone);
    let found: Result<usize, (FailureKind, String)> = match target {
        // Validated at start: only reachable with a URL built some other way.
        Err(e) => Err((FailureKind::Phase(Phase::DnsDone), format!("{what}: {e}"))),
        Ok(DnsTarget { name, server: None }) => {
            match tokio::time::timeout(timeout, tokio::net::lookup_host((name.as_str(), 0))).await {
                Ok(Ok(found)) => Ok(found.count()),
                Ok(Err(e)) => Err((io_failure(&e), format!("{what}: {e}"))),
                Err(_) => Err(timed_out(&trace, &what, timeout)),
            }
        }
        Ok(DnsTarget { name, server: Some(server) }) => {
            match tokio::time::timeout(timeout, ask_server(server, &name)).await {
                Ok(Ok(n)) => Ok(n),
                Ok(Err(AskError::Io(e))) => Err((io_failure(&e), format!("{what}: {e}"))),
                Ok(Err(AskError::Dns(e))) => Err((FailureKind::Phase(Phase::DnsDone), format!("{what}: {e}"))),
                Err(_) => Err(timed_out(&trace, &what, timeout)),
            }
        }
    };
    let failure = match found {
        Ok(0) => Some((FailureKind::Phase(Phase::DnsDone), format!("{what}: no addresses"))),
        Ok(_) => {
            trace.mark(Phase::DnsDone);
            None
        }
        Err(failure) => Some(failure),
    };
    let duration = trace.elapsed();
    ProbeResult { status: None, failure, trace, duration }
}

fn io_failure(e: &std::io::Error) -> FailureKind {
    match LocalCause::of(e) {
        Some(cause) => FailureKind::Local(Phase::DnsDone, cause),
        None => FailureKind::Phase(Phase::DnsDone),
    }
}

enum AskError {
    Io(std::io::Error),
    Dns(DnsError),
}

/// Asks `server` for `name`'s A and AAAA records at once; the addresses of the first answer
/// that has some, or of both. Datagrams from elsewhere or with other ids are ignored.
async fn ask_server(server: SocketAddr, name: &str) -> Result<usize, AskError> {
    let local: IpAddr = if server.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let socket = tokio::net::UdpSocket::bind((local, 0)).await.map_err(AskError::Io)?;
    socket.connect(server).await.map_err(AskError::Io)?;
    let id = kubenurse_common::backoff::random_u64() as u16;
    let questions = [(id, TYPE_A), (id.wrapping_add(1), TYPE_AAAA)];
    for (id, qtype) in questions {
        socket.send(&dns_wire::query(id, name, qtype)).await.map_err(AskError::Io)?;
    }
    let mut pending: Vec<(u16, u16)> = questions.to_vec();
    let mut last_error = None;
    let mut buf = vec![0u8; dns_wire::MAX_REPLY];
    while !pending.is_empty() {
        let n = socket.recv(&mut buf).await.map_err(AskError::Io)?;
        let reply = &buf[..n];
        let Some(at) = pending.iter().position(|&(id, _)| dns_wire::reply_id(reply) == Some(id)) else { continue };
        let (id, qtype) = pending.swap_remove(at);
        match dns_wire::addresses(reply, id, qtype) {
            Ok(0) => {}
            Ok(found) => return Ok(found),
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(e) => Err(AskError::Dns(e)),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn only_well_formed_tcp_and_dns_urls_pass() {
        assert_eq!(validate(&uri("tcp://10.0.0.1:5432")), Ok(()));
        assert_eq!(validate(&uri("tcp://db.example:5432/")), Ok(()));
        assert_eq!(validate(&uri("dns://kubernetes.default.svc.cluster.local")), Ok(()));
        let server = DnsTarget::of(&uri("dns://10.96.0.10:5353/kubernetes.default")).unwrap();
        assert_eq!(server.server, Some("10.96.0.10:5353".parse().unwrap()));
        assert_eq!(server.name, "kubernetes.default");
        let port_53 = DnsTarget::of(&uri("dns://[fd00::a]/kubernetes.default.")).unwrap();
        assert_eq!(port_53.server, Some("[fd00::a]:53".parse().unwrap()));
        for bad in [
            "tcp://db.example",
            "tcp://db.example:5432/x",
            "dns://10.96.0.10:53",
            "dns://coredns.example:53/kubernetes.default",
            "dns://10.96.0.10:53/bad_name",
            "dns://bad_name",
            "dns://a..b",
        ] {
            assert!(validate(&uri(bad)).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_tcp_check_connects_or_names_the_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = ProbeClient::new(
            crate::tls::client_config(true, std::path::Path::new("/nonexistent"), &[]).unwrap(),
            false,
        );
        let ok = tcp(&client, &uri(&format!("tcp://127.0.0.1:{port}")), Duration::from_secs(2)).await;
        assert!(ok.failure.is_none(), "{:?}", ok.failure);
        assert!(ok.trace.get(Phase::ConnectDone).is_some());
        drop(listener);
        let refused = tcp(&client, &uri(&format!("tcp://127.0.0.1:{port}")), Duration::from_secs(2)).await;
        assert!(matches!(refused.failure, Some((FailureKind::Phase(Phase::ConnectDone), _))), "{:?}", refused.failure);
    }

    #[tokio::test]
    async fn a_dns_check_resolves_with_the_nodes_resolver() {
        // /etc/hosts: no query leaves the machine.
        let ok = dns(&uri("dns://localhost"), Duration::from_secs(2)).await;
        assert!(ok.failure.is_none(), "{:?}", ok.failure);
        assert!(ok.trace.get(Phase::DnsDone).is_some());
        assert_eq!(ok.summary(), "ok");
    }

    /// A DNS server on loopback answering `a.test` with one address, NXDOMAIN for anything
    /// else, and a stray datagram with a wrong id before every real answer.
    async fn fake_server() -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            for _ in 0..16 {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
                let q = buf[..n].to_vec();
                let is_a_test = q.windows(7).any(|w| w == b"\x01a\x04test");
                let qtype = u16::from_be_bytes([q[n - 4], q[n - 3]]);
                let r = match (is_a_test, qtype) {
                    (true, TYPE_A) => crate::dns_wire::tests::reply(&q, 0, &[&[10, 0, 0, 1]]),
                    (true, _) => crate::dns_wire::tests::reply(&q, 0, &[]),
                    (false, _) => crate::dns_wire::tests::reply(&q, 3, &[]),
                };
                let mut stray = r.clone();
                stray[0] ^= 0xff;
                let _ = socket.send_to(&stray, from).await;
                let _ = socket.send_to(&r, from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_dns_check_asks_its_server_and_names_nxdomain() {
        let server = fake_server().await;
        let ok = dns(&uri(&format!("dns://{server}/a.test")), Duration::from_secs(2)).await;
        assert!(ok.failure.is_none(), "{:?}", ok.failure);
        assert!(ok.trace.get(Phase::DnsDone).is_some());
        let missing = dns(&uri(&format!("dns://{server}/b.test")), Duration::from_secs(2)).await;
        let (kind, text) = missing.failure.expect("NXDOMAIN fails the check");
        assert_eq!(kind, FailureKind::Phase(Phase::DnsDone));
        assert!(text.contains("NXDOMAIN") && text.contains(&server.to_string()), "{text}");
        // Nobody answering: the timeout, named as such.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let quiet = silent.local_addr().unwrap();
        let timed = dns(&uri(&format!("dns://{quiet}/a.test")), Duration::from_millis(200)).await;
        assert!(timed.failure.is_some_and(|(_, t)| t.contains("timeout") || t.contains("timed out")));
    }
}
