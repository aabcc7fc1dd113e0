//! The fault proxy's UDP side: it listens on the node's pod address and relays datagrams to
//! the agent's echo port through one upstream socket per client, so replies come back from the
//! pod address the client sent to. The same rules as the TCP side apply ([`udp_effect`]): a
//! loss drops that share of datagrams towards the node, delays add up, a refusal or black hole
//! drops everything.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kubenurse_common::backoff::random_unit;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::debug;

use crate::proxy::{Fault, Rule};

/// Clients relayed at most (a simulated cluster has far fewer neighbours).
pub const MAX_CLIENTS: usize = 1024;

/// What the rules do to a datagram towards the node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpEffect {
    /// Share of datagrams dropped, 0–1.
    pub drop_share: f64,
    /// Delay before forwarding.
    pub delay: Duration,
}

/// The rules in force for a datagram from `peer`: independent losses compose (1 − Π(1 − p)),
/// delays add up, a refusal or black hole drops everything.
pub fn udp_effect(rules: &[Rule], peer: IpAddr) -> UdpEffect {
    let mut pass = 1.0;
    let mut delay = Duration::ZERO;
    for r in rules.iter().filter(|r| r.only_from.as_ref().is_none_or(|set| set.contains(&peer))) {
        match r.fault {
            Fault::Refuse | Fault::Blackhole => pass = 0.0,
            Fault::Loss(percent) => pass *= 1.0 - f64::from(percent.min(100)) / 100.0,
            Fault::Delay(d) => delay += d,
            Fault::Pass => {}
        }
    }
    UdpEffect { drop_share: 1.0 - pass, delay }
}

/// Relays datagrams arriving at `socket` to `upstream` until the task is aborted.
pub async fn run(socket: UdpSocket, upstream: SocketAddr, rules: watch::Receiver<Vec<Rule>>) {
    let socket = Arc::new(socket);
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut relays = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "udp proxy receive error");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let effect = udp_effect(&rules.borrow(), client.ip());
        if effect.drop_share > 0.0 && random_unit() < effect.drop_share {
            continue;
        }
        let up = match clients.get(&client) {
            Some(up) => up.clone(),
            None if clients.len() >= MAX_CLIENTS => continue,
            None => {
                // From the client's own address (every 127/8 address is local), so the agent sees
                // each neighbour as itself, as it would without the proxy.
                let Ok(up) = UdpSocket::bind(SocketAddr::new(client.ip(), 0)).await else { continue };
                let up = Arc::new(up);
                clients.insert(client, up.clone());
                relays.spawn(relay_back(up.clone(), socket.clone(), client));
                up
            }
        };
        let datagram = buf[..n].to_vec();
        if effect.delay.is_zero() {
            let _ = up.send_to(&datagram, upstream).await;
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(effect.delay).await;
                let _ = up.send_to(&datagram, upstream).await;
            });
        }
    }
}

/// Sends what the agent answers on `up` back to `client` from the proxy's address.
async fn relay_back(up: Arc<UdpSocket>, socket: Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; 2048];
    while let Ok((n, _)) = up.recv_from(&mut buf).await {
        let _ = socket.send_to(&buf[..n], client).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_compose_and_refusal_drops_everything() {
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let loss = |p| Rule { fault: Fault::Loss(p), only_from: None };
        let e = udp_effect(&[loss(20), loss(50)], a);
        assert!((e.drop_share - 0.6).abs() < 1e-9, "{e:?}");
        let delayed =
            udp_effect(&[loss(20), Rule { fault: Fault::Delay(Duration::from_millis(80)), only_from: None }], a);
        assert_eq!(delayed.delay, Duration::from_millis(80));
        let cut = Rule { fault: Fault::Refuse, only_from: Some([a].into()) };
        assert_eq!(udp_effect(std::slice::from_ref(&cut), a).drop_share, 1.0);
        assert_eq!(udp_effect(&[cut], b), UdpEffect { drop_share: 0.0, delay: Duration::ZERO });
    }

    #[tokio::test]
    async fn relays_replies_from_the_listening_address_and_drops_its_share() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], from).await;
            }
        });
        let listen = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = listen.local_addr().unwrap();
        let (tx, rx) = watch::channel(Vec::new());
        let task = tokio::spawn(run(listen, echo_addr, rx));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 64];
        client.send_to(b"ping", proxy_addr).await.unwrap();
        let (n, from) =
            tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((&buf[..n], from), (&b"ping"[..], proxy_addr), "the reply comes from the proxy's address");
        tx.send_replace(vec![Rule { fault: Fault::Loss(50), only_from: None }]);
        let (mut answered, sent) = (0, 200);
        for _ in 0..sent {
            client.send_to(b"x", proxy_addr).await.unwrap();
            if tokio::time::timeout(Duration::from_millis(20), client.recv_from(&mut buf)).await.is_ok() {
                answered += 1;
            }
        }
        // 50 % of 200: 100 expected; 60–140 is over 5 standard deviations either side.
        assert!((60..=140).contains(&answered), "{answered} of {sent} answered");
        task.abort();
    }
}
