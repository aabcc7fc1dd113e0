//! End to end: several agents (each on its own 127.0.S.N address, same port) against the fake
//! API server, through their real HTTP endpoints.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use kubenurse_lab::cluster::{ClusterSpec, LocalCluster};
use kubenurse_proto::CheckKind;
use kubenurse_testkit::apiserver::Faults;
use kubenurse_testkit::http::{eventually, http_get};
use kubenurse_testkit::sim::{ring_targets, SimNode, NAMESPACE};
use serde_json::Value;

fn workdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The path checks the ring says `own` must run, among `present` nodes.
fn expected_paths(own: &SimNode, present: &[&SimNode], limit: usize) -> BTreeSet<String> {
    ring_targets(own, present.iter().copied(), limit).into_iter().map(|n| format!("path_{n}")).collect()
}

async fn alive(url: &str) -> Option<(u16, Value)> {
    let (code, body) = http_get(&format!("{url}/alive")).await.ok()?;
    Some((code, serde_json::from_str(&body).ok()?))
}

fn path_keys(alive: &Value) -> BTreeSet<String> {
    alive["last_check_result"]
        .as_object()
        .map(|o| o.keys().filter(|k| CheckKind::is_path_label(k)).cloned().collect())
        .unwrap_or_default()
}

fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_check_exactly_their_ring_neighbours() -> anyhow::Result<()> {
    let spec = ClusterSpec {
        nodes: 6,
        subnet: 41,
        port: 18080,
        interval: "500ms".into(),
        limit: 3,
        env: Vec::new(),
        proxied: false,
        token_audience: None,
        client_cert_dir: None,
    };
    let cluster = LocalCluster::start(&spec, &workdir("ring")).await?;
    let all: Vec<&SimNode> = cluster.nodes.iter().collect();

    // Every agent: /alive 200 with exactly its ring neighbours, all ok.
    for agent in &cluster.agents {
        let want = expected_paths(&agent.sim, &all, spec.limit);
        assert_eq!(want.len(), spec.limit);
        let url = agent.url();
        let body = eventually(&format!("{} /alive all ok", agent.sim.node), Duration::from_secs(20), || {
            let url = url.clone();
            let want = want.clone();
            async move {
                let (code, body) = alive(&url).await?;
                (code == 200 && path_keys(&body) == want).then_some(body)
            }
        })
        .await?;
        let result = &body["last_check_result"];
        for check in ["api_server_direct", "api_server_dns", "me_ingress", "me_service", "neighbourhood_state"] {
            assert_eq!(result[check], "ok", "{check} on {}: {body}", agent.sim.node);
        }
        assert_eq!(result["neighbourhood"].as_array().map(Vec::len), Some(spec.limit));
        assert_eq!(body["hostname"], agent.sim.pod);
    }

    // /metrics: a 200 counter per selected neighbour, and every node checked by exactly `limit` peers.
    for agent in &cluster.agents {
        let url = format!("{}/metrics", agent.url());
        let want = expected_paths(&agent.sim, &all, spec.limit);
        let metrics = eventually("incoming gauge = limit", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let (_, m) = http_get(&url).await.ok()?;
                (metric_value(&m, "kubenurse_neighbourhood_incoming_checks") == Some(spec.limit as f64)).then_some(m)
            }
        })
        .await?;
        for path in &want {
            let series = format!("kubenurse_httpclient_requests_total{{code=\"200\",type=\"{path}\"}}");
            assert!(
                metric_value(&metrics, &series).is_some_and(|v| v >= 1.0),
                "{series} missing on {}",
                agent.sim.node
            );
            let trace = format!(
                "kubenurse_httpclient_trace_request_duration_seconds_count{{event=\"got_first_resp_byte\",type=\"{path}\"}}"
            );
            assert!(metric_value(&metrics, &trace).is_some_and(|v| v >= 1.0), "{trace} missing");
            // Keep-alive is off by default: every request had its own connection.
            let count = |event: &str| {
                metric_value(
                    &metrics,
                    &format!("kubenurse_httpclient_trace_request_duration_seconds_count{{event=\"{event}\",type=\"{path}\"}}"),
                )
            };
            assert_eq!(count("got_conn"), count("connect_done"), "{path}: a connection was reused");
        }
    }

    // Discovery is a watch: a handful of LISTs at start, not one per round.
    let lists_before = cluster.api.requests("list pods");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(cluster.api.requests("list pods"), lists_before, "pods were LISTed again while nothing changed");
    assert!(
        lists_before <= 2 * cluster.agents.len() as u64,
        "{lists_before} pod LISTs for {} agents",
        cluster.agents.len()
    );

    // A pod deleted: nobody checks its node any more, and its series are gone.
    let gone = cluster.nodes[1].clone();
    assert!(cluster.api.delete_pod(NAMESPACE, &gone.pod));
    let present: Vec<&SimNode> = cluster.nodes.iter().filter(|n| n.node != gone.node).collect();
    for agent in cluster.agents.iter().filter(|a| a.sim.node != gone.node) {
        let want = expected_paths(&agent.sim, &present, spec.limit);
        let url = agent.url();
        let gone_type = format!("type=\"path_{}\"", gone.node);
        eventually(&format!("{} forgets {}", agent.sim.node, gone.node), Duration::from_secs(20), || {
            let url = url.clone();
            let want = want.clone();
            let gone_type = gone_type.clone();
            async move {
                let (_, body) = alive(&url).await?;
                let (_, metrics) = http_get(&format!("{url}/metrics")).await.ok()?;
                (path_keys(&body) == want && !metrics.contains(&gone_type)).then_some(())
            }
        })
        .await?;
    }

    // A node cordoned: no longer checked, and its own agent reports not ready.
    let cordoned = cluster.nodes[2].clone();
    assert!(cluster.api.cordon(&cordoned.node, true));
    let present: Vec<&SimNode> = present.into_iter().filter(|n| n.node != cordoned.node).collect();
    for agent in cluster.agents.iter().filter(|a| a.sim.node != gone.node && a.sim.node != cordoned.node) {
        let want = expected_paths(&agent.sim, &present, spec.limit);
        let url = agent.url();
        eventually(
            &format!("{} stops checking cordoned {}", agent.sim.node, cordoned.node),
            Duration::from_secs(20),
            || {
                let url = url.clone();
                let want = want.clone();
                async move { (path_keys(&alive(&url).await?.1) == want).then_some(()) }
            },
        )
        .await?;
    }
    let cordoned_agent =
        cluster.agents.iter().find(|a| a.sim.node == cordoned.node).map(|a| a.url()).unwrap_or_default();
    eventually("cordoned node's /ready is 503", Duration::from_secs(10), || {
        let url = cordoned_agent.clone();
        async move { (http_get(&format!("{url}/ready")).await.ok()?.0 == 503).then_some(()) }
    })
    .await?;

    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_outage_keeps_path_checks_going() -> anyhow::Result<()> {
    let spec = ClusterSpec {
        nodes: 3,
        subnet: 42,
        port: 18080,
        interval: "300ms".into(),
        limit: 10,
        env: Vec::new(),
        proxied: false,
        token_audience: None,
        client_cert_dir: None,
    };
    let cluster = LocalCluster::start(&spec, &workdir("outage")).await?;
    let url = cluster.agents[0].url();
    let all_ok = |url: String| async move { (alive(&url).await?.0 == 200).then_some(()) };
    eventually("healthy start", Duration::from_secs(20), || all_ok(url.clone())).await?;

    cluster.api.set_faults(Faults { failing: true, ..Faults::default() });
    let body = eventually("API checks fail, watch failure reported", Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            let (code, body) = alive(&url).await?;
            let r = &body["last_check_result"];
            let failing = code == 500
                && r["api_server_direct"] == "503 Service Unavailable"
                && r["api_server_dns"] == "503 Service Unavailable"
                && r["neighbourhood_state"].as_str().is_some_and(|s| s.contains("watch failing"));
            failing.then_some(body)
        }
    })
    .await?;
    let r = &body["last_check_result"];
    assert_eq!(r["path_node-02"], "ok", "{body}");
    assert_eq!(r["path_node-03"], "ok", "{body}");
    assert_eq!(r["me_service"], "ok");

    cluster.api.set_faults(Faults::default());
    eventually("recovery by itself", Duration::from_secs(30), || all_ok(url.clone())).await?;
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_api_server_is_a_slow_check_not_a_failure() -> anyhow::Result<()> {
    let spec = ClusterSpec {
        nodes: 2,
        subnet: 43,
        port: 18080,
        interval: "500ms".into(),
        limit: 10,
        env: Vec::new(),
        proxied: false,
        token_audience: None,
        client_cert_dir: None,
    };
    let cluster = LocalCluster::start(&spec, &workdir("slow")).await?;
    let url = cluster.agents[0].url();
    eventually("healthy start", Duration::from_secs(20), || {
        let url = url.clone();
        async move { (alive(&url).await?.0 == 200).then_some(()) }
    })
    .await?;
    cluster.api.set_faults(Faults { delay: Duration::from_millis(300), failing: false });
    let metrics_url = format!("{url}/metrics");
    eventually("a request slower than 250ms is recorded", Duration::from_secs(20), || {
        let metrics_url = metrics_url.clone();
        async move {
            let (_, m) = http_get(&metrics_url).await.ok()?;
            let le = metric_value(
                &m,
                "kubenurse_httpclient_request_duration_seconds_bucket{type=\"api_server_direct\",le=\"0.25\"}",
            )?;
            let all =
                metric_value(&m, "kubenurse_httpclient_request_duration_seconds_count{type=\"api_server_direct\"}")?;
            (all > le).then_some(())
        }
    })
    .await?;
    let (code, _) = alive(&url).await.ok_or_else(|| anyhow::anyhow!("no /alive"))?;
    assert_eq!(code, 200, "a slow API server within the timeout is still ok");
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_pod_ip_and_node_name_from_own_pod() -> anyhow::Result<()> {
    use kubenurse_lab::cluster::LocalAgent;
    use kubenurse_testkit::apiserver::{kubenurse_pod, node};
    use kubenurse_testkit::sim::agent_env;
    // No KUBENURSE_NODE_NAME: each agent finds its node from its own pod.
    let spec = ClusterSpec {
        nodes: 2,
        subnet: 44,
        port: 18080,
        interval: "300ms".into(),
        limit: 10,
        env: vec![("KUBENURSE_NODE_NAME".into(), String::new())],
        proxied: false,
        token_audience: None,
        client_cert_dir: None,
    };
    let cluster = LocalCluster::start(&spec, &workdir("ipv6")).await?;
    // A third node whose pod has an IPv6 address (::1), its agent listening there.
    let v6 = SimNode {
        node: "node-v6".into(),
        pod: "kubenurse-v6".into(),
        ip: "::1".parse()?,
        bind: "::1".parse()?,
        zone: "zone-a".into(),
    };
    cluster.api.apply_node(node(&v6.node, &v6.zone));
    cluster.api.apply_pod(kubenurse_pod(NAMESPACE, &v6.pod, &v6.node, "::1"));
    let mut env = agent_env(&cluster.api, &v6, spec.port, &spec.interval, spec.limit);
    env.remove("KUBENURSE_NODE_NAME");
    let v6_agent = LocalAgent::start(&cluster.api, v6.clone(), spec.port, env)?;

    let url = cluster.agents[0].url();
    let body = eventually("node-01 checks node-v6 over IPv6", Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            let (code, body) = alive(&url).await?;
            (code == 200 && body["last_check_result"]["path_node-v6"] == "ok").then_some(body)
        }
    })
    .await?;
    assert_eq!(body["last_check_result"]["path_node-02"], "ok");
    let v6_url = v6_agent.url();
    assert!(v6_url.contains("[::1]"));
    eventually("the IPv6 agent checks the others", Duration::from_secs(20), || {
        let url = v6_url.clone();
        async move { (alive(&url).await?.0 == 200).then_some(()) }
    })
    .await?;
    v6_agent.stop().await?;
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_unschedulable_never_watches_nodes() -> anyhow::Result<()> {
    let spec = ClusterSpec {
        nodes: 3,
        subnet: 45,
        port: 18080,
        interval: "300ms".into(),
        limit: 10,
        env: vec![("KUBENURSE_ALLOW_UNSCHEDULABLE".into(), "true".into())],
        proxied: false,
        token_audience: None,
        client_cert_dir: None,
    };
    let cluster = LocalCluster::start(&spec, &workdir("allow-unschedulable")).await?;
    assert!(cluster.api.cordon("node-02", true));
    let url = cluster.agents[0].url();
    // Several rounds after the cordon, node-02 is still checked and /ready stays 200.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, body) = alive(&url).await.ok_or_else(|| anyhow::anyhow!("no /alive"))?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["last_check_result"]["path_node-02"], "ok");
    let node02 = cluster.agents[1].url();
    assert_eq!(http_get(&format!("{node02}/ready")).await?.0, 200);
    assert_eq!(cluster.api.requests("list nodes") + cluster.api.requests("watch nodes"), 0, "nodes were read");
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_connections_keeps_them_alive() -> anyhow::Result<()> {
    let spec = ClusterSpec {
        nodes: 2,
        subnet: 46,
        port: 18080,
        interval: "200ms".into(),
        limit: 10,
        env: vec![("KUBENURSE_REUSE_CONNECTIONS".into(), "true".into())],
        proxied: false,
        token_audience: None,
        client_cert_dir: None,
    };
    let cluster = LocalCluster::start(&spec, &workdir("reuse")).await?;
    let url = format!("{}/metrics", cluster.agents[0].url());
    let series = |event: &str| {
        format!("kubenurse_httpclient_trace_request_duration_seconds_count{{event=\"{event}\",type=\"path_node-02\"}}")
    };
    eventually("requests reuse one connection", Duration::from_secs(20), || {
        let url = url.clone();
        let (got, connected) = (series("got_conn"), series("connect_done"));
        async move {
            let (_, m) = http_get(&url).await.ok()?;
            let got = metric_value(&m, &got)?;
            let connected = metric_value(&m, &connected)?;
            (got >= 5.0 && connected <= 2.0).then_some(())
        }
    })
    .await?;
    cluster.stop().await
}
