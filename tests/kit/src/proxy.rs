//! A userspace fault proxy in front of one simulated node's agent (the kernel here has no
//! netem): it listens on the node's pod address and forwards to the agent, passing traffic
//! through, delaying it, refusing connections (listener closed: RST), or black-holing them
//! (accepted, never answered) — for every source, or only for sources in a set (a partition).
//! Several rules compose ([`effect`]): a refusal or black hole wins, delays add up. A UDP side
//! ([`crate::udp_proxy`]) applies the same rules to datagrams, and also losses.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::debug;

/// What the proxy does to a connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward untouched.
    #[default]
    Pass,
    /// Forward after this delay (every request through it takes that much longer).
    Delay(Duration),
    /// Close the listener: connections are refused.
    Refuse,
    /// Accept and hold the connection without ever forwarding.
    Blackhole,
    /// Drop this percentage of UDP datagrams towards the node (TCP passes: its retransmits
    /// hide a loss).
    Loss(u8),
}

/// A fault and the sources it applies to (`None`: everyone).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    /// The fault.
    pub fault: Fault,
    /// Source addresses affected; others pass (refusal applies to all: a closed port is closed).
    pub only_from: Option<BTreeSet<IpAddr>>,
}

/// What the rules in force do to a connection from `peer`: a refusal wins, then a black hole;
/// the delays of every applicable rule add up.
pub fn effect(rules: &[Rule], peer: IpAddr) -> Fault {
    let applicable = rules.iter().filter(|r| r.only_from.as_ref().is_none_or(|set| set.contains(&peer)));
    let mut delay = Duration::ZERO;
    let mut blackhole = false;
    for r in applicable {
        match r.fault {
            Fault::Refuse => return Fault::Refuse,
            Fault::Blackhole => blackhole = true,
            Fault::Delay(d) => delay += d,
            Fault::Pass | Fault::Loss(_) => {}
        }
    }
    match (blackhole, delay.is_zero()) {
        (true, _) => Fault::Blackhole,
        (false, false) => Fault::Delay(delay),
        (false, true) => Fault::Pass,
    }
}

/// Whether the rules close the port (a refusal for every source).
fn refuses_everyone(rules: &[Rule]) -> bool {
    rules.iter().any(|r| r.fault == Fault::Refuse && r.only_from.is_none())
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    listen: SocketAddr,
    rules: watch::Sender<Vec<Rule>>,
    task: tokio::task::JoinHandle<()>,
    udp: Option<tokio::task::JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on `listen`, forwarding to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let (rules, rx) = watch::channel(Vec::new());
        let task = tokio::spawn(run(listener, listen, upstream, rx));
        Ok(Self { listen, rules, task, udp: None })
    }

    /// Same, also relaying UDP datagrams from `listen`'s address on `udp_port` to `upstream`'s
    /// address on the same port.
    pub async fn start_with_udp(listen: SocketAddr, upstream: SocketAddr, udp_port: u16) -> std::io::Result<Self> {
        let socket = tokio::net::UdpSocket::bind(SocketAddr::new(listen.ip(), udp_port)).await?;
        let mut proxy = Self::start(listen, upstream).await?;
        let udp_upstream = SocketAddr::new(upstream.ip(), udp_port);
        proxy.udp = Some(tokio::spawn(crate::udp_proxy::run(socket, udp_upstream, proxy.rules.subscribe())));
        Ok(proxy)
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// Applies `rule` alone to new connections from now on.
    pub fn set(&self, rule: Rule) {
        self.set_all(vec![rule]);
    }

    /// Applies every one of `rules` (composed by [`effect`]) to new connections from now on.
    pub fn set_all(&self, rules: Vec<Rule>) {
        self.rules.send_replace(rules);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(udp) = &self.udp {
            udp.abort();
        }
    }
}

async fn run(listener: TcpListener, listen: SocketAddr, upstream: SocketAddr, mut rule: watch::Receiver<Vec<Rule>>) {
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let mut listener = Some(listener);
    loop {
        let refusing = refuses_everyone(&rule.borrow());
        match (&listener, refusing) {
            (Some(_), true) => {
                listener = None;
                held.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
            (None, false) => match TcpListener::bind(listen).await {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    debug!(%listen, error = %e, "proxy cannot listen again yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ => {}
        }
        let Some(l) = &listener else {
            if rule.changed().await.is_err() {
                return;
            }
            continue;
        };
        let (client, peer) = tokio::select! {
            changed = rule.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            accepted = l.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let fault = effect(&rule.borrow(), peer.ip());
        let held = held.clone();
        tokio::spawn(async move {
            match fault {
                Fault::Blackhole => {
                    // Keep it open and silent; dropped when the rule changes back or the proxy stops.
                    held.lock().unwrap_or_else(|p| p.into_inner()).push(client);
                    return;
                }
                // Refusal for some sources only: close at once, before any answer.
                Fault::Refuse => {
                    drop(client);
                    return;
                }
                Fault::Delay(d) => tokio::time::sleep(d).await,
                // Never the effect of the rules: a loss is UDP's.
                Fault::Pass | Fault::Loss(_) => {}
            }
            let Ok(mut server) = TcpStream::connect(upstream).await else { return };
            let mut client = client;
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    if let Ok(n) = s.read(&mut buf).await {
                        let _ = s.write_all(&buf[..n]).await;
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(addr: SocketAddr) -> std::io::Result<Duration> {
        let start = std::time::Instant::now();
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut buf)).await??;
        Ok(start.elapsed())
    }

    #[test]
    fn rules_compose_refusal_first_delays_add_up() {
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let ms = Duration::from_millis;
        let delay = |d| Rule { fault: Fault::Delay(ms(d)), only_from: None };
        let cut_from_a = Rule { fault: Fault::Refuse, only_from: Some([a].into()) };
        let rules = vec![delay(80), cut_from_a.clone(), delay(20)];
        assert_eq!(effect(&rules, a), Fault::Refuse, "the partition holds with the delay");
        assert_eq!(effect(&rules, b), Fault::Delay(ms(100)), "the delay holds with the partition");
        assert_eq!(effect(&[], b), Fault::Pass);
        let hole = Rule { fault: Fault::Blackhole, only_from: None };
        assert_eq!(effect(&[delay(5), hole], b), Fault::Blackhole);
        assert!(!refuses_everyone(&rules) && refuses_everyone(&[Rule { fault: Fault::Refuse, only_from: None }]));
    }

    #[tokio::test]
    async fn pass_delay_refuse_blackhole() {
        let upstream = echo_server().await;
        let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), upstream).await;
        // Port 0 cannot be re-bound to the same port after a refusal: bind a concrete one.
        drop(proxy);
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = probe.local_addr().unwrap();
        drop(probe);
        let proxy = FaultProxy::start(listen, upstream).await.unwrap();
        assert!(roundtrip(listen).await.unwrap() < Duration::from_millis(50));
        proxy.set(Rule { fault: Fault::Delay(Duration::from_millis(80)), only_from: None });
        assert!(roundtrip(listen).await.unwrap() >= Duration::from_millis(80));
        proxy.set(Rule { fault: Fault::Refuse, only_from: None });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = TcpStream::connect(listen).await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(std::io::ErrorKind::ConnectionRefused));
        proxy.set(Rule { fault: Fault::Blackhole, only_from: None });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(roundtrip(listen).await.is_err(), "black hole must not answer");
        proxy.set(Rule::default());
        assert!(roundtrip(listen).await.is_ok());
        // Only some sources: others pass.
        let other: IpAddr = "127.0.0.99".parse().unwrap();
        proxy.set(Rule { fault: Fault::Blackhole, only_from: Some([other].into()) });
        assert!(roundtrip(listen).await.is_ok());
    }
}
