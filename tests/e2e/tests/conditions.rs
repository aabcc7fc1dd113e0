//! Node conditions and events (`--node-conditions`) against the fake API server: a refusing
//! node gets `KubenurseNetworkProblem=True` (its other conditions kept) and a Warning event,
//! healing sets it False; of two replicas only the Lease holder writes; more suspected nodes
//! than the share cap mark none and one event says so; a partitioned zone marks no node; a dry
//! run writes nothing.
//! Subnets 127.0.58.x and 127.0.59.x.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
use k8s_openapi::api::events::v1::Event;
use kubenurse_aggregator::conditions::lease::LEASE_NAME;
use kubenurse_aggregator::conditions::plan::{Policy, CONDITION_TYPE, REASON_CLEARED};
use kubenurse_aggregator::conditions::ConditionsConfig;
use kubenurse_aggregator::state::Settings;
use kubenurse_lab::aggregator::{AggregatorOptions, LocalAggregator};
use kubenurse_lab::cluster::{ClusterSpec, LocalCluster};
use kubenurse_testkit::apiserver::FakeApiServer;
use kubenurse_testkit::http::{eventually, http_get};
use kubenurse_testkit::proxy::{Fault, Rule};
use kubenurse_testkit::sim::NAMESPACE;

/// The namespace the recorder writes Node events to (cluster-scoped objects: `default`).
const EVENTS_NS: &str = "default";

fn workdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn conditions(dry_run: bool) -> ConditionsConfig {
    ConditionsConfig { dry_run, policy: Policy { max_share: 0.1, min_hold_micros: 3_000_000 } }
}

async fn aggregator(api: &FakeApiServer, ip: &str, dry_run: bool) -> anyhow::Result<LocalAggregator> {
    let mut options = AggregatorOptions::token_review(api, 10)?;
    options.conditions = Some(conditions(dry_run));
    let settings = Settings { tick_micros: 250_000, ..Settings::default() };
    LocalAggregator::start_with(format!("{ip}:50051").parse()?, format!("{ip}:18080").parse()?, settings, options).await
}

fn spec(nodes: u8, subnet: u8, urls: String) -> ClusterSpec {
    let mut spec = ClusterSpec::scenario(nodes, subnet);
    spec.env.push(("KUBENURSE_AGGREGATOR_URL".into(), urls));
    spec.token_audience = Some(kubenurse_aggregator::auth::DEFAULT_AUDIENCE.into());
    spec
}

fn condition(api: &FakeApiServer, node: &str, kind: &str) -> Option<NodeCondition> {
    api.node(node)?.status?.conditions?.into_iter().find(|c| c.type_ == kind)
}

fn marked(api: &FakeApiServer) -> Vec<String> {
    (1..=12)
        .map(|i| format!("node-{i:02}"))
        .filter(|n| condition(api, n, CONDITION_TYPE).is_some_and(|c| c.status == "True"))
        .collect()
}

fn events_about(api: &FakeApiServer, node: &str) -> Vec<Event> {
    api.events(EVENTS_NS)
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(node))
        .collect()
}

async fn metric(agg: &LocalAggregator, line_start: &str) -> Option<f64> {
    let (_, text) = http_get(&format!("{}/metrics", agg.url())).await.ok()?;
    text.lines().find(|l| l.starts_with(line_start))?.rsplit(' ').next()?.parse().ok()
}

async fn healthy_matrix(agg: &LocalAggregator, cells: usize) -> anyhow::Result<()> {
    let url = agg.url();
    eventually("a full healthy matrix", Duration::from_secs(40), || {
        let url = url.clone();
        async move {
            let (_, body) = http_get(&format!("{url}/api/v1/matrix")).await.ok()?;
            let m: serde_json::Value = serde_json::from_str(&body).ok()?;
            let fresh = m["cells"].as_array()?.iter().filter(|c| c["stale"] == false && c["failing"] == false).count();
            (fresh == cells).then_some(())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_node_is_marked_by_one_replica_and_cleared_when_healed() -> anyhow::Result<()> {
    let dir = workdir("conditions-e2e");
    std::fs::create_dir_all(&dir)?;
    let api = FakeApiServer::start(&dir).await?;
    let (a, b) = (aggregator(&api, "127.0.58.254", false).await?, aggregator(&api, "127.0.58.253", false).await?);
    let urls = format!("{},{}", a.grpc_url(), b.grpc_url());
    let cluster = LocalCluster::start_on(api.clone(), &spec(12, 58, urls), &dir).await?;
    healthy_matrix(&a, 12 * 10).await?;
    // A condition of its own (kubelet's), which the aggregator's patch must keep.
    let mut node05 = api.node("node-05").ok_or_else(|| anyhow::anyhow!("no node-05"))?;
    let ready = NodeCondition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: Some("KubeletReady".into()),
        ..NodeCondition::default()
    };
    node05.status = Some(NodeStatus { conditions: Some(vec![ready]), ..NodeStatus::default() });
    api.apply_node(node05);

    cluster.fault("node-05", Rule { fault: Fault::Refuse, only_from: None })?;
    let set = eventually("node-05 marked", Duration::from_secs(20), || async {
        condition(&api, "node-05", CONDITION_TYPE).filter(|c| c.status == "True")
    })
    .await?;
    assert_eq!(set.reason.as_deref(), Some("DestinationErrors"), "{set:?}");
    assert!(set.message.as_deref().is_some_and(|m| m.contains("into node-05 fail")), "{set:?}");
    assert!(set.last_transition_time.is_some() && set.last_heartbeat_time.is_some(), "{set:?}");
    assert_eq!(condition(&api, "node-05", "Ready").map(|c| c.status), Some("True".into()), "kubelet's condition kept");
    assert_eq!(marked(&api), ["node-05"], "only the refusing node");
    // One writer: the Lease's holder, the only reporting instance of the events.
    let lease = api.lease(NAMESPACE, LEASE_NAME).ok_or_else(|| anyhow::anyhow!("no Lease"))?;
    let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    let events = eventually("a Warning event about node-05", Duration::from_secs(10), || async {
        let e = events_about(&api, "node-05");
        (!e.is_empty()).then_some(e)
    })
    .await?;
    let first = &events[0];
    assert_eq!(
        (first.type_.as_deref(), first.reason.as_deref()),
        (Some("Warning"), Some("DestinationErrors")),
        "{first:?}"
    );
    assert!(
        events.iter().all(|e| e.reporting_instance.as_deref() == Some(holder.as_str())),
        "one writer: {holder} {events:?}"
    );
    let writers = [
        metric(&a, "kubenurse_aggregator_node_conditions_writer ").await,
        metric(&b, "kubenurse_aggregator_node_conditions_writer ").await,
    ];
    assert_eq!(writers.iter().flatten().sum::<f64>(), 1.0, "exactly one replica writes: {writers:?}");

    // Healed: False after the hold, with a Normal event.
    cluster.fault("node-05", Rule::default())?;
    let cleared = eventually("node-05 cleared", Duration::from_secs(30), || async {
        condition(&api, "node-05", CONDITION_TYPE).filter(|c| c.status == "False")
    })
    .await?;
    assert_eq!(cleared.reason.as_deref(), Some(REASON_CLEARED));
    assert!(events_about(&api, "node-05").iter().any(|e| e.type_.as_deref() == Some("Normal")));

    // Two refusing nodes of 12: over the cap of 1. One event says so, and no node is marked.
    cluster.fault("node-05", Rule { fault: Fault::Refuse, only_from: None })?;
    cluster.fault("node-09", Rule { fault: Fault::Refuse, only_from: None })?;
    eventually("the over-cap event", Duration::from_secs(30), || async {
        // About the Lease, in the aggregator's namespace.
        api.events(NAMESPACE).iter().any(|e| e.reason.as_deref() == Some("TooManyNodesSuspected")).then_some(())
    })
    .await?;
    for _ in 0..10 {
        let now = marked(&api);
        assert!(now.is_empty() || now == ["node-05"] || now == ["node-09"], "at most the cap: {now:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(marked(&api), Vec::<String>::new(), "over the cap nothing stays marked");

    // A partitioned zone (4 of 12 nodes): the zone is the suspect, and no node is marked.
    cluster.fault("node-05", Rule::default())?;
    cluster.fault("node-09", Rule::default())?;
    cluster.partition(Some("zone-a"))?;
    let url = a.url();
    eventually("the zone suspected", Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            let (_, body) = http_get(&format!("{url}/api/v1/suspects")).await.ok()?;
            let s: serde_json::Value = serde_json::from_str(&body).ok()?;
            s["suspects"].as_array()?.iter().any(|s| s["kind"] == "zone" && s["zone"] == "zone-a").then_some(())
        }
    })
    .await?;
    for _ in 0..8 {
        assert_eq!(marked(&api), Vec::<String>::new(), "a zone marks no node");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.partition(None)?;
    cluster.stop().await?;
    a.stop().await?;
    b.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing_and_counts_what_it_would() -> anyhow::Result<()> {
    let dir = workdir("conditions-dry-run-e2e");
    std::fs::create_dir_all(&dir)?;
    let api = FakeApiServer::start(&dir).await?;
    let agg = aggregator(&api, "127.0.59.254", true).await?;
    let cluster = LocalCluster::start_on(api.clone(), &spec(5, 59, agg.grpc_url()), &dir).await?;
    healthy_matrix(&agg, 5 * 4).await?;
    // node-02 shares zone-c with node-05: a destination, not a zone.
    cluster.fault("node-02", Rule { fault: Fault::Refuse, only_from: None })?;
    let planned = eventually("a dry-run plan counted", Duration::from_secs(20), || async {
        metric(&agg, "kubenurse_aggregator_node_condition_writes_total{result=\"dry_run\"}").await.filter(|n| *n >= 1.0)
    })
    .await?;
    assert!(planned >= 1.0);
    assert!(condition(&api, "node-02", CONDITION_TYPE).is_none(), "no condition written");
    assert!(api.events(EVENTS_NS).is_empty() && api.events(NAMESPACE).is_empty(), "no event written");
    assert!(api.lease(NAMESPACE, LEASE_NAME).is_none(), "a dry run takes no Lease");
    assert_eq!(api.requests("patch node status"), 0);
    cluster.stop().await?;
    agg.stop().await
}
