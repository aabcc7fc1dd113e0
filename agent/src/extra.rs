//! Extra checks that are not HTTP (`KUBENURSE_EXTRA_CHECKS` entries `name:tcp://host:port` and
//! `name:dns://name`): a TCP connect (success = connected; phases dns and connect) and a name
//! lookup with the node's resolver (success = at least one address; phase dns), timed and
//! recorded like the HTTP checks, with [`NON_HTTP_OK`] as their `code` when they succeed.

use std::net::IpAddr;
use std::time::Duration;

use http::Uri;

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
        Some(NonHttp::Dns) => {
            if uri.port_u16().is_some() || !plain_path {
                return Err("dns://server:port/name (asking one server) is not supported: use dns://name, looked up with the node's resolver".into());
            }
            let name = host(uri);
            let ok = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if ok {
                Ok(())
            } else {
                Err(format!("{name:?} is not a DNS name"))
            }
        }
        None => Err("not a tcp:// or dns:// URL".into()),
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

/// Looks `dns://name` up with the node's resolver within `timeout`.
pub async fn dns(uri: &Uri, timeout: Duration) -> ProbeResult {
    let mut trace = RequestTrace::start();
    let name = host(uri);
    let what = format!("lookup {name}");
    trace.mark(Phase::DnsStart);
    trace.begin(Phase::DnsDone);
    let outcome = tokio::time::timeout(timeout, tokio::net::lookup_host((name.as_str(), 0))).await;
    let failure = match outcome {
        Ok(Ok(mut found)) => match found.next() {
            Some(_) => {
                trace.mark(Phase::DnsDone);
                None
            }
            None => Some((FailureKind::Phase(Phase::DnsDone), format!("{what}: no addresses"))),
        },
        Ok(Err(e)) => {
            let kind = match LocalCause::of(&e) {
                Some(cause) => FailureKind::Local(Phase::DnsDone, cause),
                None => FailureKind::Phase(Phase::DnsDone),
            };
            Some((kind, format!("{what}: {e}")))
        }
        Err(_) => Some(timed_out(&trace, &what, timeout)),
    };
    let duration = trace.elapsed();
    ProbeResult { status: None, failure, trace, duration }
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
        for bad in [
            "tcp://db.example",
            "tcp://db.example:5432/x",
            "dns://10.96.0.10:53/kubernetes.default",
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
}
