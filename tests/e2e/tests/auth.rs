//! The authenticated stream end to end: the aggregator reviews agents' projected tokens with
//! the fake API server's TokenReview. Every refusal asserts the gRPC status the client sees,
//! its counter, and that the matrix never shows the impostor's cells; real agents with valid
//! tokens fill the matrix and survive token rotation and an API server outage.

use std::path::PathBuf;
use std::time::Duration;

use kubenurse_aggregator::auth::DEFAULT_AUDIENCE;
use kubenurse_lab::aggregator::LocalAggregator;
use kubenurse_lab::cluster::{write_agent_token, ClusterSpec, LocalCluster};
use kubenurse_lab::impostor::{failure, hello, open, token_for};
use kubenurse_proto::v1::{agent_message, aggregator_message, AgentMessage, AggregatorMessage, Hello};
use kubenurse_testkit::apiserver::{kubenurse_pod, node, FakeApiServer, Faults};
use kubenurse_testkit::http::{eventually, http_get};
use kubenurse_testkit::sim::{SimNode, NAMESPACE, SERVICE_ACCOUNT};
use serde_json::Value;
use tonic::{Code, Status};

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
    let aggregator = LocalAggregator::reviewing(&api, subnet).await?;
    Ok((api, aggregator))
}

async fn refusal(agg: &LocalAggregator, token: Option<&str>, first: Hello, then: &SimNode) -> Status {
    kubenurse_lab::impostor::refusal(&agg.grpc_url(), token, first, then).await
}

/// Waits until the API's snapshot is sure to include what was sent before: it is at most one
/// tick (100 ms for `LocalAggregator::reviewing`) old when read.
async fn settled() {
    tokio::time::sleep(Duration::from_millis(300)).await;
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
        assert_eq!(agg.auth_failures(reason).await?, 0.0, "{reason} counter exists at zero");
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
        assert_eq!(agg.auth_failures(reason).await?, 1.0, "{reason} counted once");
    }
    settled().await;
    assert!(matrix_sources(&agg).await?.is_empty(), "no impostor cell in the matrix");
    let (_, status) = agg.get_json("/api/v1/status").await?;
    assert_eq!(status["nodes"], 0, "no impostor node known: {status}");

    // Without the node-name extra (clusters before 1.30) the token's pod is looked up.
    api.set_node_extra(false);
    let token = token_for(&api, &a, DEFAULT_AUDIENCE, SERVICE_ACCOUNT, hour);
    let status = refusal(&agg, Some(&token), hello(&b, &[&c]), &c).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(agg.auth_failures("node_mismatch").await?, 2.0);
    let mut s = open(&agg.grpc_url(), Some(&token), hello(&a, &[&b])).await?;
    assert!(matches!(
        s.send(failure(&b, 1)).await?,
        Some(AggregatorMessage { msg: Some(aggregator_message::Msg::Ack(_)) })
    ));
    // A stream that later says hello as another node is ended.
    let err = s.send(AgentMessage { msg: Some(agent_message::Msg::Hello(hello(&c, &[&b]))) }).await;
    let err = err.expect_err("a hello for another node must end the stream");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(agg.auth_failures("node_mismatch").await?, 3.0);
    settled().await;
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
    let mut s = open(&agg.grpc_url(), Some(&token), hello(&a, &[&b])).await?;
    assert!(s.send(failure(&b, 1)).await?.is_some(), "a valid token is accepted");

    // The review API down: new streams UNAVAILABLE (agents retry), open ones unaffected.
    let fresh = token_for(&api, &b, DEFAULT_AUDIENCE, SERVICE_ACCOUNT, Duration::from_secs(3600));
    api.set_faults(Faults { failing: true, ..Faults::default() });
    let status = refusal(&agg, Some(&fresh), hello(&b, &[&a]), &a).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(agg.auth_failures("review_unavailable").await?, 1.0);
    assert!(s.send(failure(&b, 2)).await?.is_some(), "an accepted stream outlives the outage");
    api.set_faults(Faults::default());
    let mut s2 = open(&agg.grpc_url(), Some(&fresh), hello(&b, &[&a])).await?;
    assert!(s2.send(failure(&a, 1)).await?.is_some(), "accepted once the API answers again");

    // Revoked: refused on the next connect once the 10 s positive cache has lapsed.
    assert!(api.revoke_token(&token));
    tokio::time::sleep(kubenurse_aggregator::auth::review::POSITIVE_CACHE + Duration::from_millis(500)).await;
    let status = refusal(&agg, Some(&token), hello(&a, &[&b]), &b).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(agg.auth_failures("invalid_token").await?, 1.0);

    // A stream lives no longer than its token: GoAway at expiry.
    let short = token_for(&api, &a, DEFAULT_AUDIENCE, SERVICE_ACCOUNT, Duration::from_secs(2));
    let mut s3 = open(&agg.grpc_url(), Some(&short), hello(&a, &[&b])).await?;
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
    let cluster = LocalCluster::start_on(api, &ClusterSpec::streaming(77, 3, &agg.grpc_url()), &dir).await?;
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
        let mut intruder = open(&agg.grpc_url(), Some(&short), hello(&n1, &[])).await?;
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
            assert_eq!(agg.auth_failures(reason).await?, 0.0, "{reason}: the real agents were never refused");
        }
        anyhow::Ok(())
    }
    .await;
    cluster.stop().await?;
    agg.stop().await?;
    result
}
