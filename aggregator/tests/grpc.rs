//! The protocol in process (no ports: tonic over in-memory pipes): hello first, results land in
//! the matrix, bad input is refused and counted without ending other streams, oversized
//! messages are refused, shutdown sends GoAway.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should abort the test loudly

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kubenurse_aggregator::metrics::AggregatorMetrics;
use kubenurse_aggregator::owner::StateHandle;
use kubenurse_aggregator::state::Settings;
use kubenurse_proto::v1::nurse_client::NurseClient;
use kubenurse_proto::v1::{
    agent_message, aggregator_message, AgentMessage, AggregatorMessage, CheckResult, Hello, Outcome, ResultBatch,
};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::Streaming;

struct Harness {
    state: StateHandle,
    metrics: Arc<AggregatorMetrics>,
    stop: watch::Sender<bool>,
    connect: mpsc::Sender<tokio::io::DuplexStream>,
}

async fn harness() -> Harness {
    let metrics = Arc::new(AggregatorMetrics::new(kubenurse_aggregator::metrics::CellMetrics::None).unwrap());
    let state = StateHandle::spawn(Settings { tick_micros: 50_000, ..Settings::default() }, metrics.clone());
    let (stop, stop_rx) = watch::channel(false);
    let (connect, pipes) = mpsc::channel::<tokio::io::DuplexStream>(8);
    let incoming = futures::stream::unfold(pipes, |mut pipes| async move {
        pipes.recv().await.map(|pipe| (Ok::<_, std::io::Error>(pipe), pipes))
    });
    let service = kubenurse_aggregator::grpc_service(
        state.clone(),
        metrics.clone(),
        Arc::new(kubenurse_aggregator::auth::gate::Gate::Open),
        Arc::default(),
        stop_rx,
    );
    tokio::spawn(Server::builder().add_service(service).serve_with_incoming(incoming));
    Harness { state, metrics, stop, connect }
}

impl Harness {
    async fn client(&self) -> NurseClient<Channel> {
        let connect = self.connect.clone();
        let channel = Endpoint::try_from("http://in-process")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let connect = connect.clone();
                async move {
                    let (client, server) = tokio::io::duplex(1 << 20);
                    connect.send(server).await.map_err(|_| std::io::Error::other("server gone"))?;
                    Ok::<_, std::io::Error>(TokioIo::new(client))
                }
            }))
            .await
            .unwrap();
        NurseClient::new(channel).max_encoding_message_size(64 << 20)
    }

    async fn open(&self) -> (mpsc::Sender<AgentMessage>, Streaming<AggregatorMessage>) {
        let (tx, rx) = mpsc::channel(16);
        let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let inbound = self.client().await.report(outbound).await.unwrap().into_inner();
        (tx, inbound)
    }

    fn errors(&self, reason: &str) -> u64 {
        self.metrics.ingest_errors.with_label_values(&[reason]).get()
    }
}

fn hello(node: &str, targets: &[&str]) -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            protocol: 1,
            node: node.into(),
            pod: format!("kubenurse-{node}"),
            zone: "zone-a".into(),
            interval_micros: 1_000_000,
            neighbour_limit: 10,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            ..Hello::default()
        })),
    }
}

fn path(target: &str, micros: u64, ok: bool) -> CheckResult {
    CheckResult {
        check_type: format!("path_{target}"),
        target_node: target.into(),
        round: 1,
        duration_micros: micros,
        outcome: if ok { Outcome::Ok } else { Outcome::Failed }.into(),
        error: if ok { String::new() } else { "connection refused".into() },
        ..CheckResult::default()
    }
}

fn batch(results: Vec<CheckResult>) -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Batch(ResultBatch { results, round_ends: Vec::new(), ..ResultBatch::default() })),
    }
}

async fn next_ack(inbound: &mut Streaming<AggregatorMessage>) -> (u64, u64, String) {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), inbound.message()).await.unwrap().unwrap().unwrap();
        if let Some(aggregator_message::Msg::Ack(a)) = m.msg {
            return (a.accepted, a.rejected, a.last_rejection);
        }
    }
}

#[tokio::test]
async fn results_reach_the_matrix_with_microsecond_precision() {
    let h = harness().await;
    let (tx, mut inbound) = h.open().await;
    tx.send(hello("node-a", &["node-b", "node-c"])).await.unwrap();
    tx.send(batch(vec![path("node-b", 250, true), path("node-c", 180, true)])).await.unwrap();
    assert_eq!(next_ack(&mut inbound).await, (2, 0, String::new()));
    let cells = h
        .state
        .query(|s, _| {
            s.matrix.get("node-a").map(|r| r.iter().map(|(d, c)| (d.clone(), c.last_micros)).collect::<Vec<_>>())
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cells.len(), 2);
    assert!(cells.contains(&("node-b".to_string(), 250)));
    let p50 = h
        .state
        .query(|s, now| {
            let cells = kubenurse_aggregator::views::matrix_cells(
                s,
                now,
                s.settings.window_micros,
                kubenurse_aggregator::views::Stat::P50,
            );
            cells.first().and_then(|c| c.p50_ms)
        })
        .await
        .unwrap();
    let v = p50.unwrap();
    assert!(v > 0.15 && v < 0.3, "sub-millisecond latency must survive: {v}");
}

#[tokio::test]
async fn a_stream_must_start_with_a_valid_hello() {
    let h = harness().await;
    let (tx, mut inbound) = h.open().await;
    tx.send(batch(vec![path("node-b", 250, true)])).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), inbound.message()).await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert_eq!(h.errors("no_hello"), 1);

    let (tx, mut inbound) = h.open().await;
    tx.send(hello("Not_A_Node", &[])).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), inbound.message()).await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(h.errors("bad_name"), 1);
}

#[tokio::test]
async fn bad_results_are_refused_and_counted_while_good_ones_land() {
    let h = harness().await;
    let (tx, mut inbound) = h.open().await;
    tx.send(hello("node-a", &["node-b"])).await.unwrap();
    let mut absurd = path("node-b", 0, true);
    absurd.duration_micros = u64::MAX;
    let mut no_outcome = path("node-b", 10, true);
    no_outcome.outcome = 0;
    tx.send(batch(vec![path("node-b", 300, true), path("node-zz", 300, true), absurd, no_outcome])).await.unwrap();
    let (accepted, rejected, _) = next_ack(&mut inbound).await;
    assert_eq!((accepted, rejected), (1, 3));
    assert_eq!(h.errors("unknown_target"), 1);
    assert_eq!(h.errors("absurd_duration"), 1);
    assert_eq!(h.errors("bad_outcome"), 1);
    // Too many results in one batch: refused whole, the stream goes on.
    tx.send(batch((0..5000).map(|_| path("node-b", 300, true)).collect())).await.unwrap();
    tx.send(batch(vec![path("node-b", 300, true)])).await.unwrap();
    let (accepted, rejected, _) = next_ack(&mut inbound).await;
    assert_eq!((accepted, rejected), (2, 5003));
    assert_eq!(h.errors("batch_too_large"), 5000);
}

#[tokio::test]
async fn acks_are_cumulative_and_coalesced_except_for_refusals() {
    use kubenurse_aggregator::ingest::ACK_EVERY;
    let h = harness().await;
    let (tx, mut inbound) = h.open().await;
    tx.send(hello("node-a", &["node-b"])).await.unwrap();
    let t0 = std::time::Instant::now();
    tx.send(batch(vec![path("node-b", 300, true)])).await.unwrap();
    assert_eq!(next_ack(&mut inbound).await, (1, 0, String::new()), "the first batch is acked at once");
    // Three more batches at once: one ack for all of them, when ACK_EVERY has passed.
    for _ in 0..3 {
        tx.send(batch(vec![path("node-b", 300, true), path("node-b", 310, true)])).await.unwrap();
    }
    assert_eq!(next_ack(&mut inbound).await, (7, 0, String::new()));
    let took = t0.elapsed();
    assert!(took >= ACK_EVERY - Duration::from_millis(50), "coalesced, not acked at once ({took:?})");
    // A refusal is acked at once, with the counts so far.
    let t1 = std::time::Instant::now();
    tx.send(batch(vec![path("node-zz", 300, true)])).await.unwrap();
    assert_eq!(next_ack(&mut inbound).await, (7, 1, "unknown_target".to_string()));
    assert!(t1.elapsed() < ACK_EVERY, "a refusal waits for no timer ({:?})", t1.elapsed());
}

#[tokio::test]
async fn an_oversized_message_ends_only_its_own_stream() {
    let h = harness().await;
    let (good_tx, mut good_in) = h.open().await;
    good_tx.send(hello("node-good", &["node-b"])).await.unwrap();
    let (bad_tx, mut bad_in) = h.open().await;
    bad_tx.send(hello("node-bad", &["node-b"])).await.unwrap();
    let mut huge = path("node-b", 300, false);
    huge.error = "x".repeat(2 << 20);
    bad_tx.send(batch(vec![huge])).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), bad_in.message()).await.unwrap();
    assert!(!matches!(end, Ok(Some(_))), "oversized message must end that stream: {end:?}");
    assert!(matches!(&end, Err(s) if s.code() == tonic::Code::ResourceExhausted), "{end:?}");
    good_tx.send(batch(vec![path("node-b", 300, true)])).await.unwrap();
    assert_eq!(next_ack(&mut good_in).await.0, 1);
    assert_eq!(h.errors("message_too_large"), 1);
    assert_eq!(h.errors("malformed_or_broken"), 0);
    let connected = h.state.query(|s, _| s.nodes.get("node-bad").map(|n| n.connected())).await.unwrap();
    assert_eq!(connected, Some(false));
}

#[tokio::test]
async fn shutdown_sends_go_away() {
    let h = harness().await;
    let (tx, mut inbound) = h.open().await;
    tx.send(hello("node-a", &[])).await.unwrap();
    // Wait until the hello is registered.
    for _ in 0..50 {
        if h.state.query(|s, _| s.nodes.contains_key("node-a")).await.unwrap() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop.send(true).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), inbound.message()).await.unwrap().unwrap().unwrap();
    assert!(matches!(m.msg, Some(aggregator_message::Msg::GoAway(_))), "{m:?}");
}
