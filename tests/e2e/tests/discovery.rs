//! Pushed discovery end to end: the aggregator watches Pods and Nodes once and pushes every
//! agent its targets; the agents then select exactly what local discovery selects (the ring
//! the agents' test holds local discovery to), open no Pod or full Node watch, fall back to
//! local watches spread over the fallback window when the aggregator goes away, and drop them
//! when it is back.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubenurse_aggregator::state::Settings;
use kubenurse_lab::aggregator::{AggregatorOptions, LocalAggregator};
use kubenurse_lab::cluster::{ClusterSpec, LocalCluster};
use kubenurse_proto::CheckKind;
use kubenurse_testkit::apiserver::{kubenurse_pod, FakeApiServer};
use kubenurse_testkit::http::{eventually, http_get};
use kubenurse_testkit::sim::{ring_targets, SimNode, NAMESPACE};
use serde_json::Value;

const LIMIT: usize = 3;

fn workdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn expected_paths(own: &SimNode, present: &[&SimNode]) -> BTreeSet<String> {
    ring_targets(own, present.iter().copied(), LIMIT).into_iter().map(|n| format!("path_{n}")).collect()
}

async fn alive(url: &str) -> Option<Value> {
    let (_, body) = http_get(&format!("{url}/alive")).await.ok()?;
    serde_json::from_str(&body).ok()
}

fn path_keys(alive: &Value) -> BTreeSet<String> {
    alive["last_check_result"]
        .as_object()
        .map(|o| o.keys().filter(|k| CheckKind::is_path_label(k)).cloned().collect())
        .unwrap_or_default()
}

/// Waits until every agent but `skip` checks exactly its ring neighbours among `present`, with
/// the state `state` (a prefix).
async fn all_check(
    cluster: &LocalCluster,
    present: &[&SimNode],
    skip: Option<&str>,
    state: &str,
) -> anyhow::Result<()> {
    for agent in cluster.agents.iter().filter(|a| Some(a.sim.node.as_str()) != skip) {
        let want = expected_paths(&agent.sim, present);
        let url = agent.url();
        eventually(&format!("{} checks {want:?} ({state})", agent.sim.node), Duration::from_secs(20), || {
            let (url, want) = (url.clone(), want.clone());
            async move {
                let body = alive(&url).await?;
                let ok = path_keys(&body) == want
                    && body["last_check_result"]["neighbourhood_state"].as_str()?.starts_with(state);
                ok.then_some(())
            }
        })
        .await?;
    }
    Ok(())
}

async fn aggregator(api: &FakeApiServer, subnet: u8) -> anyhow::Result<LocalAggregator> {
    let ip = format!("127.0.{subnet}.254");
    let settings = Settings { tick_micros: 100_000, ..Settings::default() };
    let options = AggregatorOptions::token_review(api, LIMIT)?;
    LocalAggregator::start_with(format!("{ip}:50051").parse()?, format!("{ip}:18090").parse()?, settings, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_targets_are_the_ring_and_need_no_watch_of_all_nodes() -> anyhow::Result<()> {
    let subnet = 47;
    let dir = workdir("discovery-pushed");
    let api = FakeApiServer::start(&dir).await?;
    let agg = aggregator(&api, subnet).await?;
    let spec = ClusterSpec { limit: LIMIT, ..ClusterSpec::streaming(subnet, 7, &agg.grpc_url()) };
    let cluster = LocalCluster::start_on(api, &spec, &dir).await?;
    let result = async {
        let all: Vec<&SimNode> = cluster.nodes.iter().collect();
        all_check(&cluster, &all, None, "ok").await?;
        // Each agent knows who checks it from the aggregator: its incoming gauge counts them;
        // it refused no list (every reason at zero).
        for agent in &cluster.agents {
            let url = format!("{}/metrics", agent.url());
            eventually("incoming checks = limit", Duration::from_secs(20), || {
                let url = url.clone();
                async move {
                    let (_, m) = http_get(&url).await.ok()?;
                    let refused_none = ["too_many", "bad_name", "bad_address"].iter().all(|r| {
                        m.lines()
                            .any(|l| l == format!("kubenurse_aggregator_targets_refused_total{{reason=\"{r}\"}} 0"))
                    });
                    let incoming = m.lines().any(|l| l == format!("kubenurse_neighbourhood_incoming_checks {LIMIT}"));
                    (refused_none && incoming).then_some(())
                }
            })
            .await?;
        }

        // Cordoned: nobody checks it; it still checks others; its own-Node watch turns /ready 503.
        let cordoned = cluster.nodes[1].clone();
        anyhow::ensure!(cluster.api.cordon(&cordoned.node, true));
        let present: Vec<&SimNode> = cluster.nodes.iter().filter(|n| n.node != cordoned.node).collect();
        all_check(&cluster, &present, Some(&cordoned.node), "ok").await?;
        let ready = format!("{}/ready", cluster.agents[1].url());
        eventually("cordoned agent not ready", Duration::from_secs(10), || {
            let ready = ready.clone();
            async move { (http_get(&ready).await.ok()?.0 == 503).then_some(()) }
        })
        .await?;
        anyhow::ensure!(cluster.api.cordon(&cordoned.node, false));

        // Deleted pod: gone from every list; added back: checked again.
        let gone = cluster.nodes[4].clone();
        anyhow::ensure!(cluster.api.delete_pod(NAMESPACE, &gone.pod));
        let present: Vec<&SimNode> = cluster.nodes.iter().filter(|n| n.node != gone.node).collect();
        all_check(&cluster, &present, Some(&gone.node), "ok").await?;
        cluster.api.apply_pod(kubenurse_pod(NAMESPACE, &gone.pod, &gone.node, &gone.ip.to_string()));
        all_check(&cluster, &all, None, "ok").await?;

        // Who watched what: the aggregator alone watches Pods and all Nodes; each agent its Node.
        let agents = cluster.agents.len() as u64;
        let (pods, nodes, own) = (
            cluster.api.open_watches("pods"),
            cluster.api.open_watches("nodes"),
            cluster.api.open_watches("nodes by name"),
        );
        anyhow::ensure!(
            (pods, nodes, own) == (1, 1, agents),
            "open watches: pods {pods}, nodes {nodes}, own node {own}"
        );
        let lists = (cluster.api.requests("list pods"), cluster.api.requests("list nodes"));
        anyhow::ensure!(lists == (1, 1), "Pod and Node LISTs {lists:?}: only the aggregator's");
        anyhow::ensure!(cluster.api.requests("watch nodes") == 1, "one full Node watch, the aggregator's");
        let (_, metrics) = http_get(&format!("{}/metrics", agg.url())).await?;
        let sent = metrics
            .lines()
            .find_map(|l| l.strip_prefix("kubenurse_aggregator_targets_sent_total ")?.parse::<f64>().ok());
        anyhow::ensure!(sent.is_some_and(|s| s >= agents as f64), "targets sent: {sent:?}");
        Ok(())
    }
    .await;
    cluster.stop().await?;
    agg.stop().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_falls_back_spread_over_the_window_and_recovers() -> anyhow::Result<()> {
    let subnet = 48;
    let dir = workdir("discovery-fallback");
    let api = FakeApiServer::start(&dir).await?;
    let agg = aggregator(&api, subnet).await?;
    let mut spec = ClusterSpec { limit: LIMIT, ..ClusterSpec::streaming(subnet, 8, &agg.grpc_url()) };
    let after = Duration::from_secs(2);
    spec.env.push(("KUBENURSE_DISCOVERY_FALLBACK_AFTER".into(), "2s".into()));
    let cluster = LocalCluster::start_on(api, &spec, &dir).await?;
    let mut agg = Some(agg);
    let result = async {
        let all: Vec<&SimNode> = cluster.nodes.iter().collect();
        all_check(&cluster, &all, None, "ok").await?;
        anyhow::ensure!(cluster.api.requests("list pods") == 1, "only the aggregator LISTed Pods");

        // The aggregator goes away: agents keep checking their last targets, saying so...
        if let Some(a) = agg.take() {
            a.stop().await?;
        }
        let down = Instant::now();
        let mut still_checking = BTreeSet::new();
        while down.elapsed() < after - Duration::from_millis(200) && still_checking.len() < cluster.agents.len() {
            for agent in &cluster.agents {
                let Some(body) = alive(&agent.url()).await else { continue };
                let state = body["last_check_result"]["neighbourhood_state"].as_str().unwrap_or_default();
                if state.starts_with("aggregator unreachable") && path_keys(&body) == expected_paths(&agent.sim, &all) {
                    still_checking.insert(agent.sim.node.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::ensure!(still_checking.len() == cluster.agents.len(), "kept checking: {still_checking:?}");
        // ...then LIST and watch for themselves, one by one between 2 s and 4 s after it left.
        let mut fallbacks: Vec<Duration> = Vec::new();
        let mut seen = cluster.api.requests("list pods");
        while down.elapsed() < after * 2 + Duration::from_secs(3) && fallbacks.len() < cluster.agents.len() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = cluster.api.requests("list pods");
            for _ in seen..now {
                fallbacks.push(down.elapsed());
            }
            seen = now;
        }
        anyhow::ensure!(fallbacks.len() == cluster.agents.len(), "fallbacks at {fallbacks:?}");
        let (first, last) = (fallbacks[0], fallbacks[fallbacks.len() - 1]);
        anyhow::ensure!(first >= after, "an agent fell back after {first:?}, before the window");
        anyhow::ensure!(last <= after * 2 + Duration::from_secs(2), "the last fell back after {last:?}");
        anyhow::ensure!(last - first >= Duration::from_millis(300), "fallbacks not spread: {fallbacks:?}");
        // Local discovery checks the same ring.
        all_check(&cluster, &all, None, "ok").await?;

        // Back: the agents take its targets and drop their watches.
        let back = aggregator(&cluster.api, subnet).await?;
        let result = eventually("agents dropped their local watches", Duration::from_secs(20), || async {
            (cluster.api.open_watches("pods") == 1 && cluster.api.open_watches("nodes") == 1).then_some(())
        })
        .await;
        back.stop().await?;
        result
    }
    .await;
    cluster.stop().await?;
    if let Some(a) = agg {
        a.stop().await?;
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_lab_has_every_node_streaming_and_real_agents_checking_simulated_ones() -> anyhow::Result<()> {
    use kubenurse_lab::lab::Lab;
    let (real, simulated) = (3usize, 300usize);
    let spec = ClusterSpec {
        nodes: real as u8,
        subnet: 50,
        port: 18080,
        interval: "1s".into(),
        limit: LIMIT,
        ..ClusterSpec::default()
    };
    let settings = Settings { tick_micros: 100_000, ..Settings::default() };
    let mut lab = Lab::start(spec, settings, &workdir("discovery-big-lab")).await?;
    let result = async {
        lab.simulate(simulated, 20).await?;
        let agg = lab.aggregator.url();
        eventually("every node streams", Duration::from_secs(60), || {
            let agg = agg.clone();
            async move {
                let (_, body) = http_get(&format!("{agg}/api/v1/status")).await.ok()?;
                let status: Value = serde_json::from_str(&body).ok()?;
                (status["connected_agents"].as_u64()? == (real + simulated) as u64).then_some(())
            }
        })
        .await?;
        // Real agents take pushed targets from the whole ring, mostly simulated nodes, and
        // their checks to those are answered (their pods borrow the real agents' addresses).
        let mut simulated_targets = 0;
        for agent in &lab.cluster.agents {
            let url = agent.url();
            let body = eventually(
                &format!("{} checks {LIMIT} neighbours, all ok", agent.sim.node),
                Duration::from_secs(30),
                || {
                    let url = url.clone();
                    async move {
                        let body = alive(&url).await?;
                        let result = body["last_check_result"].as_object()?;
                        let paths: Vec<_> = result.iter().filter(|(k, _)| CheckKind::is_path_label(k)).collect();
                        (paths.len() == LIMIT && paths.iter().all(|(_, v)| *v == "ok")).then_some(body)
                    }
                },
            )
            .await?;
            simulated_targets += path_keys(&body).iter().filter(|k| k.starts_with("path_ip-")).count();
        }
        anyhow::ensure!(simulated_targets > 0, "no real agent checks a simulated node");
        // The matrix holds every node's row.
        let (_, body) = http_get(&format!("{agg}/api/v1/matrix")).await?;
        let matrix: Value = serde_json::from_str(&body)?;
        let sources: BTreeSet<&str> =
            matrix["cells"].as_array().into_iter().flatten().filter_map(|c| c["src"].as_str()).collect();
        anyhow::ensure!(sources.len() == real + simulated, "{} sources in the matrix", sources.len());
        Ok(())
    }
    .await;
    lab.stop().await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_agents_of_an_aggregator_that_never_pushes_discover_for_themselves() -> anyhow::Result<()> {
    // An aggregator without discovery never sends Targets, as one of the previous release.
    let subnet = 55;
    let ip = format!("127.0.{subnet}.254");
    let settings = Settings { tick_micros: 100_000, ..Settings::default() };
    let agg = LocalAggregator::start(format!("{ip}:50051").parse()?, format!("{ip}:18090").parse()?, settings).await?;
    let spec = ClusterSpec {
        nodes: 4,
        subnet,
        port: 18080,
        interval: "500ms".into(),
        limit: LIMIT,
        env: vec![
            ("KUBENURSE_AGGREGATOR_URL".into(), agg.grpc_url()),
            ("KUBENURSE_DISCOVERY_FALLBACK_AFTER".into(), "1s".into()),
        ],
        ..ClusterSpec::default()
    };
    let cluster = LocalCluster::start(&spec, &workdir("discovery-no-push")).await?;
    let result = async {
        let all: Vec<&SimNode> = cluster.nodes.iter().collect();
        all_check(&cluster, &all, None, "ok").await?;
        anyhow::ensure!(cluster.api.open_watches("pods") == cluster.agents.len() as u64, "each agent watches Pods");
        let (_, status) = agg.get_json("/api/v1/status").await?;
        anyhow::ensure!(status["connected_agents"] == 4, "{status}");
        Ok(())
    }
    .await;
    cluster.stop().await?;
    agg.stop().await?;
    result
}
