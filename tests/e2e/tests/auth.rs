//! The authenticated stream end to end: the aggregator reviews agents' projected tokens with
//! the fake API server's TokenReview. Every refusal asserts the gRPC status the client sees,
//! its counter, and that the matrix never shows the impostor's cells; real agents with valid
//! tokens fill the matrix and survive token rotation and an API server outage.

use std::path::PathBuf;
use std::time::Duration;

use kubenurse_aggregator::auth::{Expectation, ServiceAccount, DEFAULT_AUDIENCE};
use kubenurse_aggregator::config::AuthConfig;
use kubenurse_aggregator::state::Settings;
use kubenurse_lab::aggregator::{AggregatorOptions, LocalAggregator};
use kubenurse_lab::cluster::{write_agent_token, ClusterSpec, LocalCluster};
use kubenurse_proto::v1::nurse_client::NurseClient;
use kubenurse_proto::v1::{
    agent_message, aggregator_message, AgentMessage, AggregatorMessage, CheckResult, Hello, Outcome, ResultBatch,
};
use kubenurse_proto::{CheckKind, PROTOCOL_REVISION};
use kubenurse_testkit::apiserver::{kubenurse_pod, node, FakeApiServer, Faults, TokenRequest};
use kubenurse_testkit::http::{eventually, http_get};
use kubenurse_testkit::sim::{SimNode, NAMESPACE, SERVICE_ACCOUNT};
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::{Code, Status, Streaming};

fn workdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// An API server with `n` nodes and their agent pods, and an aggregator reviewing tokens with it.
async fn setup(subnet: u8, n: u8, dir: &std::path::Path) -> anyhow::Result<(FakeApiServer, LocalAggregator)> {
    let api = FakeApiServer::start(dir).await?;
    for i in 1..=n {
        let sim = SimNode::new(subnet, i);
        api.apply_node(node(&sim.node, &sim.zone));
        api.apply_pod(kubenurse_pod(NAMESPACE, &sim.pod, &sim.node, &sim.ip.to_string()));
    }
    let service_account = ServiceAccount { namespace: NAMESPACE.into(), name: SERVICE_ACCOUNT.into() };
    let options = AggregatorOptions {
        tls: None,
        auth: AuthConfig::TokenReview(Expectation { audience: DEFAULT_AUDIENCE.into(), service_account }),
        kube: Some(api.kube_config()),
    };
    let ip = format!("127.0.{subnet}.254");
    let settings = Settings { tick_micros: 100_000, ..Settings::default() };
    let aggregator =
        LocalAggregator::start_with(format!("{ip}:50051").parse()?, format!("{ip}:18080").parse()?, settings, options)
            .await?;
    Ok((api, aggregator))
}

fn token_for(api: &FakeApiServer, sim: &SimNode, audience: &str, service_account: &str, ttl: Duration) -> String {
    api.issue_token(&TokenRequest {
        namespace: NAMESPACE.into(),
        service_account: service_account.into(),
        pod: Some(sim.pod.clone()),
        node: Some(sim.node.clone()),
        audience: audience.into(),
        ttl,
    })
}

fn hello(sim: &SimNode, targets: &[&SimNode]) -> Hello {
    Hello {
        protocol: PROTOCOL_REVISION,
        node: sim.node.clone(),
        pod: sim.pod.clone(),
        zone: sim.zone.clone(),
        interval_micros: 1_000_000,
        neighbour_limit: 10,
        targets: targets.iter().map(|t| t.node.clone()).collect(),
        ..Hello::default()
    }
}

/// A failed path check of `target` (what an impostor would send to frame it).
fn failure(target: &SimNode, round: u64) -> AgentMessage {
    let mut r = CheckResult {
        check: Some(CheckKind::Path { node: target.node.clone() }.to_wire()),
        round,
        duration_micros: 1_000,
        error_kind: "connection_refused".into(),
        ..CheckResult::default()
    };
    r.set_outcome(Outcome::Failed);
    AgentMessage { msg: Some(agent_message::Msg::Batch(ResultBatch { results: vec![r], round_ends: vec![] })) }
}

struct Stream {
    tx: mpsc::Sender<AgentMessage>,
    inbound: Streaming<AggregatorMessage>,
}

/// Opens a stream with `token` as bearer (if any) and sends `first`; `Err` is the status the
/// aggregator refused the stream with.
async fn open(agg: &LocalAggregator, token: Option<&str>, first: Hello) -> Result<Stream, Status> {
    let mut client = NurseClient::connect(agg.grpc_url()).await.map_err(|e| Status::unknown(e.to_string()))?;
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    tx.send(AgentMessage { msg: Some(agent_message::Msg::Hello(first)) })
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut request = tonic::Request::new(outbound);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().map_err(|_| Status::unknown("bad token"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let inbound = client.report(request).await?.into_inner();
    Ok(Stream { tx, inbound })
}

impl Stream {
    /// The next message within `wait`: `Ok(None)` when none came, `Err` the stream's end status.
    async fn next(&mut self, wait: Duration) -> Result<Option<AggregatorMessage>, Status> {
        match tokio::time::timeout(wait, self.inbound.message()).await {
            Err(_) => Ok(None),
            Ok(r) => r,
        }
    }

    /// Sends `msg` and waits for the stream's verdict on it: an ack, a GoAway or an error.
    async fn send(&mut self, msg: AgentMessage) -> Result<Option<AggregatorMessage>, Status> {
        // A stream the aggregator ended no longer takes messages: its status says why.
        let _ = self.tx.send(msg).await;
        self.next(Duration::from_secs(3)).await
    }
}

/// The status a stream ends with, whether refused at once or after its hello.
async fn refusal(agg: &LocalAggregator, token: Option<&str>, first: Hello, then: &SimNode) -> Status {
    match open(agg, token, first).await {
        Err(status) => status,
        Ok(mut s) => match s.send(failure(then, 1)).await {
            Err(status) => status,
            Ok(m) => Status::unknown(format!("stream was accepted: {m:?}")),
        },
    }
}

async fn auth_failures(agg: &LocalAggregator, reason: &str) -> anyhow::Result<f64> {
    let (_, text) = http_get(&format!("{}/metrics", agg.url())).await?;
    let line = format!("kubenurse_aggregator_auth_failures_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {reason} counter in /metrics"))
}

/// Source nodes of the matrix's cells.
async fn matrix_sources(agg: &LocalAggregator) -> anyhow::Result<Vec<String>> {
    let (_, m) = agg.get_json("/api/v1/matrix").await?;
    let cells = m["cells"].as_array().cloned().unwrap_or_default();
    Ok(cells.iter().filter_map(|c| c["src"].as_str().map(String::from)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostors_are_refused_with_their_reason_and_never_reach_the_matrix() -> anyhow::Result<()> {
    let dir = workdir("auth-impostors");
    let (api, agg) = setup(75, 3, &dir).await?;
    let [a, b, c] = [SimNode::new(75, 1), SimNode::new(75, 2), SimNode::new(75, 3)];
    let (_, status) = agg.get_json("/api/v1/status").await?;
    assert_eq!(status["auth"], "tokenreview");
    for reason in ["no_token", "invalid_token", "wrong_audience", "wrong_service_account", "node_mismatch"] {
        assert_eq!(auth_failures(&agg, reason).await?, 0.0, "{reason} counter exists at zero");
    }
    let hour = Duration::from_secs(3600);
    let cases: Vec<(&str, Option<String>, Hello, Code)> = vec![
        ("no_token", None, hello(&a, &[&b]), Code::Unauthenticated),
        ("invalid_token", Some("not-a-token".into()), hello(&a, &[&b]), Code::Unauthenticated),
        (
            "wrong_audience",
            Some(token_for(&api, &a, "https://kubernetes.default.svc.cluster.local", SERVICE_ACCOUNT, hour)),
            hello(&a, &[&b]),
            Code::Unauthenticated,
        ),
        (
            "wrong_service_account",
            Some(token_for(&api, &a, DEFAULT_AUDIENCE, "default", hour)),
            hello(&a, &[&b]),
            Code::PermissionDenied,
        ),
        // Node A's valid token saying hello as node B, to frame node C.
        (
            "node_mismatch",
            Some(token_for(&api, &a, DEFAULT_AUDIENCE, SERVICE_ACCOUNT, hour)),
            hello(&b, &[&c]),
            Code::PermissionDenied,
        ),
    ];
    for (reason, token, first, code) in cases {
        let status = refusal(&agg, token.as_deref(), first, &c).await;
        assert_eq!(status.code(), code, "{reason}: {status:?}");
        assert!(status.message().contains(reason), "{reason}: {status:?}");
        if let Some(t) = &token {
            assert!(!status.message().contains(t.as_str()), "the status must not echo the token");
        }
        assert_eq!(auth_failures(&agg, reason).await?, 1.0, "{reason} counted once");
    }
    assert!(matrix_sources(&agg).await?.is_empty(), "no impostor cell in the matrix");
    let (_, status) = agg.get_json("/api/v1/status").await?;
    assert_eq!(status["nodes"], 0, "no impostor node known: {status}");

    // Without the node-name extra (clusters before 1.30) the token's pod is looked up.
    api.set_node_extra(false);
    let token = token_for(&api, &a, DEFAULT_AUDIENCE, SERVICE_ACCOUNT, hour);
    let status = refusal(&agg, Some(&token), hello(&b, &[&c]), &c).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(auth_failures(&agg, "node_mismatch").await?, 2.0);
    let mut s = open(&agg, Some(&token), hello(&a, &[&b])).await?;
    assert!(matches!(
        s.send(failure(&b, 1)).await?,
        Some(AggregatorMessage { msg: Some(aggregator_message::Msg::Ack(_)) })
    ));
    // A stream that later says hello as another node is ended.
    let err = s.send(AgentMessage { msg: Some(agent_message::Msg::Hello(hello(&c, &[&b]))) }).await;
    let err = err.expect_err("a hello for another node must end the stream");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(auth_failures(&agg, "node_mismatch").await?, 3.0);
    assert_eq!(matrix_sources(&agg).await?, vec![a.node.clone()], "only the real node-01's cell");
    drop(api);
    agg.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_expired_and_unreviewable_tokens() -> anyhow::Result<()> {
    let dir = workdir("auth-revoked");
    let (api, agg) = setup(76, 2, &dir).await?;
    let [a, b] = [SimNode::new(76, 1), SimNode::new(76, 2)];
    let token = token_for(&api, &a, DEFAULT_AUDIENCE, SERVICE_ACCOUNT, Duration::from_secs(3600));
    let mut s = open(&agg, Some(&token), hello(&a, &[&b])).await?;
    assert!(s.send(failure(&b, 1)).await?.is_some(), "a valid token is accepted");

    // The review API down: new streams UNAVAILABLE (agents retry), open ones unaffected.
    let fresh = token_for(&api, &b, DEFAULT_AUDIENCE, SERVICE_ACCOUNT, Duration::from_secs(3600));
    api.set_faults(Faults { failing: true, ..Faults::default() });
    let status = refusal(&agg, Some(&fresh), hello(&b, &[&a]), &a).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(auth_failures(&agg, "review_unavailable").await?, 1.0);
    assert!(s.send(failure(&b, 2)).await?.is_some(), "an accepted stream outlives the outage");
    api.set_faults(Faults::default());
    let mut s2 = open(&agg, Some(&fresh), hello(&b, &[&a])).await?;
    assert!(s2.send(failure(&a, 1)).await?.is_some(), "accepted once the API answers again");

    // Revoked: refused on the next connect once the 10 s positive cache has lapsed.
    assert!(api.revoke_token(&token));
    tokio::time::sleep(kubenurse_aggregator::auth::review::POSITIVE_CACHE + Duration::from_millis(500)).await;
    let status = refusal(&agg, Some(&token), hello(&a, &[&b]), &b).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(auth_failures(&agg, "invalid_token").await?, 1.0);

    // A stream lives no longer than its token: GoAway at expiry.
    let short = token_for(&api, &a, DEFAULT_AUDIENCE, SERVICE_ACCOUNT, Duration::from_secs(2));
    let mut s3 = open(&agg, Some(&short), hello(&a, &[&b])).await?;
    let started = std::time::Instant::now();
    let go_away = loop {
        match s3.next(Duration::from_secs(5)).await {
            Ok(Some(AggregatorMessage { msg: Some(aggregator_message::Msg::GoAway(g)) })) => break g,
            Ok(Some(_)) => continue,
            other => anyhow::bail!("expected a GoAway at token expiry, got {other:?}"),
        }
    };
    assert!(go_away.reason.contains("token expired"), "{go_away:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "GoAway {:?} after connecting", started.elapsed());
    drop((s, s2));
    drop(api);
    agg.stop().await
}

/// Real agents with projected tokens fill the matrix; a rotated token file is read on the
/// reconnect its old token's expiry forces, and the API server failing for a while neither
/// ends their streams nor refuses them afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_tokens_fill_the_matrix_and_take_up_rotation() -> anyhow::Result<()> {
    let dir = workdir("auth-agents");
    let (api, agg) = setup(77, 0, &dir).await?;
    let spec = ClusterSpec {
        nodes: 3,
        subnet: 77,
        port: 18080,
        interval: "500ms".into(),
        limit: 10,
        env: vec![("KUBENURSE_AGGREGATOR_URL".into(), agg.grpc_url())],
        token_audience: Some(DEFAULT_AUDIENCE.into()),
        ..ClusterSpec::default()
    };
    let cluster = LocalCluster::start_on(api, &spec, &dir).await?;
    let result = async {
        let url = agg.url();
        eventually("all 6 cells in the matrix", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let (_, body) = http_get(&format!("{url}/api/v1/matrix")).await.ok()?;
                let m: Value = serde_json::from_str(&body).ok()?;
                (m["cells"].as_array()?.len() == 6).then_some(())
            }
        })
        .await?;
        // node-01's token: replaced by a 2 s one, its stream is re-established with that token
        // (the file is read on reconnect), then with a long one written before that expires.
        let n1 = cluster.nodes[0].clone();
        let short = token_for(&cluster.api, &n1, DEFAULT_AUDIENCE, SERVICE_ACCOUNT, Duration::from_secs(2));
        let path = write_agent_token(&cluster.api, &dir, &n1, DEFAULT_AUDIENCE)?;
        std::fs::write(&path, &short)?;
        // Force a reconnect now: a second stream for node-01 replaces the agent's, which reconnects.
        let mut intruder = open(&agg, Some(&short), hello(&n1, &[])).await?;
        let replaced = loop {
            match intruder.next(Duration::from_secs(5)).await {
                Ok(Some(AggregatorMessage { msg: Some(aggregator_message::Msg::GoAway(g)) })) => break g,
                Ok(Some(_)) => continue,
                other => anyhow::bail!("expected the agent's reconnect to replace this stream, got {other:?}"),
            }
        };
        assert!(replaced.reason.contains("replaced"), "{replaced:?}");
        let long = write_agent_token(&cluster.api, &dir, &n1, DEFAULT_AUDIENCE)?;
        anyhow::ensure!(long == path, "token path moved");
        // The short token expires: GoAway, the agent re-reads the file and reconnects.
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.api.set_faults(Faults { failing: true, ..Faults::default() });
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (_, status) = agg.get_json("/api/v1/status").await?;
        assert_eq!(status["connected_agents"], 3, "streams survive the API server failing: {status}");
        cluster.api.set_faults(Faults::default());
        for reason in ["no_token", "invalid_token", "wrong_audience", "wrong_service_account", "node_mismatch"] {
            assert_eq!(auth_failures(&agg, reason).await?, 0.0, "{reason}: the real agents were never refused");
        }
        anyhow::Ok(())
    }
    .await;
    cluster.stop().await?;
    agg.stop().await?;
    result
}
