//! The stream to the aggregator(s): results are queued as checks complete and streamed over
//! gRPC (`nurse.v1`). The agent never waits for it: each replica has a queue bounded in
//! entries and bytes ([`crate::outbox`]) that drops its oldest entries when full (counted), and connections retry with capped, jittered
//! backoff. A DNS name resolving to several addresses (a headless Service) gets one stream per
//! address, so every aggregator replica sees every result.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubenurse_common::backoff::Backoff;
use kubenurse_proto::v1::nurse_client::NurseClient;
use kubenurse_proto::v1::{
    agent_message, aggregator_message, AgentMessage, CheckResult, Hello, Outcome, Phase, RoundEnd, UdpResult,
};
use kubenurse_proto::MAX_MESSAGE_BYTES;
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use tokio::sync::{mpsc, watch, Notify};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tracing::{debug, info, warn};

use crate::checks::CheckOutcome;
use crate::config::vars::read_token;
use crate::config::AggregatorConfig;
use crate::discovery::{Discovery, NeighbourhoodView};
use crate::metrics::UplinkMetrics;
use crate::outbox::{batch_of, Item, Outbox};
use crate::udp::book::LinkReport;

/// First reconnect delay.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Backoff cap: a restarted aggregator has every agent back within about two intervals.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often queued results are flushed at the latest.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How often a DNS name is resolved again for new or removed replicas.
const RESOLVE_EVERY: Duration = Duration::from_secs(15);

struct Queue {
    items: Mutex<Outbox>,
    notify: Notify,
    dropped: IntCounter,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One aggregator replica: its queue and the task streaming it.
type Replica = (Arc<Queue>, tokio::task::JoinHandle<()>);

/// Who the agent is, for its hello (node, zone and addresses come from discovery).
#[derive(Debug, Clone)]
pub struct HelloIdentity {
    /// `KUBENURSE_NODE_NAME`, else learnt from the own pod.
    pub node_name: Option<String>,
    /// The own pod.
    pub pod_name: String,
    /// `KUBENURSE_CHECK_INTERVAL`.
    pub check_interval: Duration,
    /// `KUBENURSE_NEIGHBOUR_LIMIT`.
    pub neighbour_limit: usize,
}

impl HelloIdentity {
    /// The hello for the current neighbourhood; `None` while the own node is unknown.
    pub fn hello(&self, discovery: Option<&Discovery>, view: Option<&NeighbourhoodView>) -> Option<Hello> {
        let node = self.node_name.clone().or_else(|| discovery.and_then(Discovery::own_node))?;
        let (pod_ip, host_ip) = discovery.map(Discovery::own_addresses).unwrap_or_default();
        Some(Hello {
            protocol: kubenurse_proto::PROTOCOL_REVISION,
            node,
            pod: self.pod_name.clone(),
            pod_ip,
            host_ip,
            zone: discovery.map(Discovery::own_zone).unwrap_or_default(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            interval_micros: u64::try_from(self.check_interval.as_micros()).unwrap_or(u64::MAX),
            neighbour_limit: u32::try_from(self.neighbour_limit).unwrap_or(u32::MAX),
            targets: view.map(|v| v.neighbours.iter().map(|n| n.node_name.clone()).collect()).unwrap_or_default(),
            wants_targets: discovery.is_some_and(|d| d.mode().wants_targets()),
        })
    }
}

/// The agent's side of the stream.
pub struct Uplink {
    queues: Mutex<HashMap<SocketAddr, Replica>>,
    resolver: Mutex<Option<tokio::task::JoinHandle<()>>>,
    identity: HelloIdentity,
    hello: watch::Sender<Option<Hello>>,
    dropped: IntCounter,
    connected: IntGauge,
    targets_refused: IntCounterVec,
    /// Where pushed targets go (pushed or auto discovery).
    discovery: Option<Discovery>,
}

/// Converts a finished check into its wire form.
pub fn to_wire(o: &CheckOutcome, round: u64) -> CheckResult {
    let kind = &o.spec.kind;
    let mut r = CheckResult {
        check: Some(kind.to_wire()),
        // Revision 1's fields, for aggregators of the previous release.
        check_type: kind.label().into_owned(),
        target_node: kind.target_node().unwrap_or_default().to_string(),
        round,
        ..CheckResult::default()
    };
    match &o.probe {
        Ok(p) => {
            r.start_unix_micros =
                p.trace.started_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
            r.duration_micros = p.duration.as_micros() as u64;
            r.phases = p
                .trace
                .events()
                .map(|(ph, at)| Phase { event: ph.as_str().into(), micros: at.as_micros() as u64 })
                .collect();
            r.status_code = p.status.map_or(0, |s| u32::from(s.as_u16()));
            r.syn_retransmits = p.syn_retransmits().unwrap_or(0);
            match &p.failure {
                None => r.set_outcome(Outcome::Ok),
                Some((kind, message)) => {
                    r.set_outcome(Outcome::Failed);
                    r.error_kind = kind.wire_kind();
                    r.error = message.clone();
                }
            }
        }
        Err(not_sent) => {
            r.set_outcome(Outcome::Failed);
            r.error_kind = not_sent.wire_kind();
            r.error = o.value.clone();
        }
    }
    r
}

/// The wire form of one round's UDP probes to a neighbour, from round `round` started at
/// `started_at`.
pub fn udp_to_wire(r: &LinkReport, round: u64, started_at: std::time::SystemTime) -> UdpResult {
    UdpResult {
        target_node: r.node.clone(),
        round,
        start_unix_micros: started_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64),
        sent: r.sent,
        received: r.received,
        duplicated: r.duplicated,
        reordered: r.reordered,
        rtt_micros: r.rtts.iter().map(|d| d.as_micros() as u64).collect(),
    }
}

impl Uplink {
    /// Starts streaming to every address of every URL (`http://host:port`; a host may
    /// resolve to several replicas, as a headless Service does).
    ///
    /// `https://` URLs use TLS, trusting `ca_pem` and checking the URL's host name.
    pub fn start(
        target: AggregatorConfig,
        identity: HelloIdentity,
        metrics: UplinkMetrics,
        discovery: Option<Discovery>,
    ) -> Arc<Self> {
        let UplinkMetrics { dropped, connected, targets_refused } = metrics;
        let AggregatorConfig { urls, ca_pem, token_file, client_cert } = target;
        let credentials = Arc::new(Credentials { token_file, client_cert });
        let uplink = Arc::new(Self {
            queues: Mutex::new(HashMap::new()),
            resolver: Mutex::new(None),
            identity,
            hello: watch::channel(None).0,
            dropped,
            connected,
            targets_refused,
            discovery: discovery.filter(|d| d.mode().wants_targets()),
        });
        let targets: Vec<(String, u16, Option<ClientTlsConfig>)> = urls
            .iter()
            .map(|u| {
                let host = u.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
                let tls = (u.scheme_str() == Some("https")).then(|| {
                    let config = ClientTlsConfig::new().domain_name(host.clone());
                    match &ca_pem {
                        Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
                        None => config,
                    }
                });
                (host, u.port_u16().unwrap_or(50051), tls)
            })
            .collect();
        let u = Arc::downgrade(&uplink);
        let resolver = tokio::spawn(async move {
            loop {
                let mut addrs = Vec::new();
                let mut complete = true;
                for (host, port, tls) in &targets {
                    match tokio::net::lookup_host((host.as_str(), *port)).await {
                        Ok(found) => addrs.extend(found.map(|a| (a, tls.clone()))),
                        Err(e) => {
                            complete = false;
                            warn!(%host, error = %e, "cannot resolve the aggregator");
                        }
                    }
                }
                let Some(u) = u.upgrade() else { return };
                // A failed lookup keeps the replicas we have rather than dropping them.
                if complete || !addrs.is_empty() {
                    u.set_replicas(addrs, &credentials);
                }
                drop(u);
                tokio::time::sleep(RESOLVE_EVERY).await;
            }
        });
        *uplink.resolver.lock().unwrap_or_else(|p| p.into_inner()) = Some(resolver);
        uplink
    }

    /// Stops every stream (agent shutdown).
    pub fn stop(&self) {
        if let Some(r) = self.resolver.lock().unwrap_or_else(|p| p.into_inner()).take() {
            r.abort();
        }
        for (_, (_, task)) in self.queues.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            task.abort();
        }
        self.connected.set(0);
    }

    fn set_replicas(
        self: &Arc<Self>,
        addrs: Vec<(SocketAddr, Option<ClientTlsConfig>)>,
        credentials: &Arc<Credentials>,
    ) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.retain(|addr, (_, task)| {
            let keep = addrs.iter().any(|(a, _)| a == addr);
            if !keep {
                info!(%addr, "aggregator replica gone");
                task.abort();
            }
            keep
        });
        for (addr, tls) in addrs {
            queues.entry(addr).or_insert_with(|| {
                info!(%addr, tls = tls.is_some(), "streaming to aggregator replica");
                let queue =
                    Arc::new(Queue { items: Mutex::default(), notify: Notify::new(), dropped: self.dropped.clone() });
                let link = Link {
                    addr,
                    tls,
                    credentials: credentials.clone(),
                    queue: queue.clone(),
                    connected: self.connected.clone(),
                    targets_refused: self.targets_refused.clone(),
                    discovery: self.discovery.clone(),
                };
                let task = tokio::spawn(stream_forever(link, self.hello.subscribe()));
                (queue, task)
            });
        }
    }

    /// Works out the hello for this round's neighbourhood and sends it again if it changed.
    pub fn update_hello(&self, discovery: Option<&Discovery>, view: Option<&NeighbourhoodView>) {
        match self.identity.hello(discovery, view) {
            Some(h) => self.set_hello(h),
            None => warn!("own node name not known yet: not streaming to the aggregator"),
        }
    }

    /// Sets who we are and what we check; sent again on every change.
    pub fn set_hello(&self, hello: Hello) {
        self.hello.send_if_modified(|current| {
            let changed = current.as_ref() != Some(&hello);
            if changed {
                *current = Some(hello);
            }
            changed
        });
    }

    fn push(&self, make: impl Fn() -> Item) {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        for (queue, _) in queues.values() {
            let dropped = queue.lock().push(make());
            self.dropped.inc_by(dropped);
            queue.notify.notify_one();
        }
    }

    /// Queues a finished check (never blocks).
    pub fn push_result(&self, result: CheckResult) {
        self.push(|| Item::Result(result.clone()));
    }

    /// Queues one round's UDP probes to a neighbour.
    pub fn push_udp(&self, result: UdpResult) {
        self.push(|| Item::Udp(result.clone()));
    }

    /// Queues the end of a round.
    pub fn push_round_end(&self, end: RoundEnd) {
        self.push(|| Item::RoundEnd(end.clone()));
    }
}

/// What proves who we are to the aggregator; files are read again on every connect, so a
/// rotated token or certificate is taken up.
struct Credentials {
    token_file: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl Credentials {
    /// The `authorization` metadata value, if a token file is configured.
    fn bearer(&self) -> Result<Option<MetadataValue<Ascii>>, String> {
        let Some(path) = &self.token_file else { return Ok(None) };
        let token = read_token(path)?;
        MetadataValue::try_from(format!("Bearer {token}")).map(Some).map_err(|_| "token is not valid metadata".into())
    }

    /// The client identity for TLS, if a certificate is configured.
    fn identity(&self) -> Result<Option<Identity>, String> {
        let Some((cert, key)) = &self.client_cert else { return Ok(None) };
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        Ok(Some(Identity::from_pem(read(cert)?, read(key)?)))
    }
}

/// Why a stream attempt ended badly: refusals by the aggregator's auth are worth a warning.
struct StreamFailure {
    text: String,
    refused: bool,
}

impl From<String> for StreamFailure {
    fn from(text: String) -> Self {
        Self { text, refused: false }
    }
}

impl From<&str> for StreamFailure {
    fn from(text: &str) -> Self {
        Self { text: text.into(), refused: false }
    }
}

impl From<tonic::Status> for StreamFailure {
    fn from(status: tonic::Status) -> Self {
        let refused = matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied);
        Self { text: status.to_string(), refused }
    }
}

/// One replica's stream and what it feeds.
struct Link {
    addr: SocketAddr,
    tls: Option<ClientTlsConfig>,
    credentials: Arc<Credentials>,
    queue: Arc<Queue>,
    connected: IntGauge,
    targets_refused: IntCounterVec,
    discovery: Option<Discovery>,
}

async fn stream_forever(link: Link, mut hello: watch::Receiver<Option<Hello>>) {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let addr = link.addr;
    loop {
        // Nothing to say before we know who we are.
        if hello.wait_for(Option::is_some).await.is_err() {
            return;
        }
        let started = Instant::now();
        let mut up = false;
        let result = stream_once(&link, &mut hello, &mut up).await;
        if up {
            link.connected.dec();
        }
        if let Some(d) = &link.discovery {
            // This replica's targets are no longer live (a no-op if it never sent any).
            let _ = d.pushed(addr, None);
        }
        match result {
            Ok(reason) => info!(%addr, %reason, "aggregator stream ended, reconnecting"),
            Err(e) if e.refused => warn!(%addr, error = %e.text, "the aggregator refused our credentials"),
            Err(e) => debug!(%addr, error = %e.text, "aggregator stream failed"),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn stream_once(
    link: &Link,
    hello: &mut watch::Receiver<Option<Hello>>,
    up: &mut bool,
) -> Result<String, StreamFailure> {
    let Link { addr, tls, credentials, queue, connected, targets_refused, discovery } = link;
    let (addr, tls) = (*addr, tls.clone());
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| e.to_string())?;
    let bearer = credentials.bearer()?;
    if let Some(mut tls) = tls {
        if let Some(identity) = credentials.identity()? {
            tls = tls.identity(identity);
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
    }
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e}"))?;
    let mut client = NurseClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<AgentMessage>(8);
    let first = hello.borrow_and_update().clone().ok_or("no hello yet")?;
    tx.send(AgentMessage { msg: Some(agent_message::Msg::Hello(first)) }).await.map_err(|e| e.to_string())?;
    let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut request = tonic::Request::new(outbound);
    if let Some(bearer) = bearer {
        request.metadata_mut().insert("authorization", bearer);
    }
    let mut inbound = client.report(request).await?.into_inner();
    *up = true;
    connected.inc();
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            _ = queue.notify.notified() => {}
            _ = flush.tick() => {}
            changed = hello.changed() => {
                if changed.is_err() {
                    return Ok("agent stopping".into());
                }
                let h = hello.borrow_and_update().clone();
                if let Some(h) = h {
                    tx.send(AgentMessage { msg: Some(agent_message::Msg::Hello(h)) }).await.map_err(|e| e.to_string())?;
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(m)) => match m.msg {
                    Some(aggregator_message::Msg::GoAway(g)) => return Ok(format!("go away: {}", g.reason)),
                    Some(aggregator_message::Msg::Ack(a)) if a.rejected > 0 => {
                        debug!(%addr, rejected = a.rejected, last = %a.last_rejection, "aggregator rejected results");
                    }
                    Some(aggregator_message::Msg::Targets(t)) => match discovery {
                        Some(d) => {
                            let count = t.targets.len();
                            match d.pushed(addr, Some(t)) {
                                Ok(()) => debug!(%addr, targets = count, "targets from the aggregator"),
                                Err(e) => {
                                    targets_refused.with_label_values(&[e.reason()]).inc();
                                    warn!(%addr, error = %e, "refused the aggregator's targets, keeping the previous ones");
                                }
                            }
                        }
                        None => debug!(%addr, "targets from the aggregator ignored: KUBENURSE_DISCOVERY=local"),
                    },
                    _ => {}
                },
                Ok(None) => return Ok("closed by the aggregator".into()),
                Err(status) => return Err(status.into()),
            },
        }
        // Send everything queued, in batches that fit a message; on failure put the batch back.
        loop {
            let items = queue.lock().take_batch();
            if items.is_empty() {
                break;
            }
            let message = AgentMessage { msg: Some(agent_message::Msg::Batch(batch_of(items.clone()))) };
            if tx.send(message).await.is_err() {
                let dropped = queue.lock().put_back(items);
                queue.dropped.inc_by(dropped);
                return Err("stream closed while sending".into());
            }
        }
    }
}
