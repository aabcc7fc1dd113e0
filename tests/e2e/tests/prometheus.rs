//! Real Prometheus (Debian package `prometheus`) scrapes a running lab — every agent and the
//! aggregator — and the test asserts through its HTTP API that every agent's `kubenurse_*`
//! series are there with the expected labels, that the aggregator's metrics pass
//! `promtool check metrics`, that every query of both Grafana dashboards returns data, and
//! that the chart's alert rules (`alerts/`) make the suspect alert pending for a refusing node
//! and drop it once healed.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kubenurse_aggregator::state::Settings;
use kubenurse_lab::cluster::ClusterSpec;
use kubenurse_lab::lab::{FaultSpec, Lab};
use kubenurse_testkit::http::{eventually, http_get, query_escape};
use kubenurse_testkit::proxy::{Fault, Rule};
use serde_json::Value;

/// Kills Prometheus however the test ends.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const PROM: &str = "127.0.0.1:19099";

async fn query(q: &str) -> anyhow::Result<Vec<Value>> {
    let (code, body) = http_get(&format!("http://{PROM}/api/v1/query?query={}", query_escape(q))).await?;
    let v: Value = serde_json::from_str(&body)?;
    anyhow::ensure!(code == 200 && v["status"] == "success", "query {q} failed: {body}");
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn dashboard_queries(file: &str) -> anyhow::Result<Vec<String>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../grafana").join(file);
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&d["panels"], &mut out);
    // Every variable at "All" (the dashboards' allValue is .*), Grafana's interval built-ins.
    Ok(out
        .into_iter()
        .map(|e| {
            e.replace("${__rate_interval}", "30s")
                .replace("$__rate_interval", "30s")
                .replace("$__interval", "5s")
                .replace("$zone", ".*")
                .replace("$node", ".*")
                .replace("$type", ".*")
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Prometheus and promtool (Debian prometheus); scripts/test.sh runs it"]
async fn prometheus_scrapes_the_lab_and_every_dashboard_query_has_data() -> anyhow::Result<()> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prometheus-e2e");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let spec = ClusterSpec {
        nodes: 5,
        subnet: 99,
        port: 18080,
        interval: "1s".into(),
        limit: 10,
        // A failing extra check: the error panels have something to show.
        env: vec![("KUBENURSE_EXTRA_CHECKS".into(), "refused:http://127.0.99.250:9/".into())],
        proxied: true,
        token_audience: None,
        client_cert_dir: None,
    };
    let mut lab = Lab::start(spec, Settings { tick_micros: 250_000, ..Settings::default() }, &dir).await?;
    // A refusing node: the suspects panel has something to show.
    lab.cluster.fault(&lab.cluster.nodes[2].node, Rule { fault: Fault::Refuse, only_from: None })?;

    let config = lab.prometheus_config();
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config)?;
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={PROM}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
        .spawn()
        .map_err(|e| anyhow::anyhow!("prometheus not runnable ({e}); install Debian's prometheus package"))?;
    let _prometheus = Prometheus(child);

    eventually("every target up", Duration::from_secs(40), || async {
        let up = query("up == 1").await.ok()?;
        (up.len() == 6).then_some(())
    })
    .await?;
    // A few scrapes so rate() over 30s has samples.
    eventually("request counters scraped", Duration::from_secs(40), || async {
        let r = query("count by (node) (rate(kubenurse_httpclient_requests_total[30s]) > 0)").await.ok()?;
        (r.len() == 5).then_some(())
    })
    .await?;

    // Every agent's families, with their label names.
    for (family, labels) in [
        ("kubenurse_httpclient_requests_total", &["type", "code"][..]),
        ("kubenurse_httpclient_request_duration_seconds_bucket", &["type", "le"][..]),
        ("kubenurse_httpclient_trace_request_duration_seconds_bucket", &["type", "event", "le"][..]),
        ("kubenurse_errors_total", &["type", "event"][..]),
        ("kubenurse_neighbourhood_incoming_checks", &[][..]),
        ("kubenurse_tcp_syn_retransmits_total", &["type"][..]),
    ] {
        let series = query(family).await?;
        let nodes: std::collections::BTreeSet<&str> =
            series.iter().filter_map(|s| s["metric"]["node"].as_str()).collect();
        assert_eq!(nodes.len(), 5, "{family} on every agent: {nodes:?}");
        for s in &series {
            for l in labels {
                assert!(s["metric"].get(*l).is_some(), "{family} lacks label {l}: {s}");
            }
        }
    }
    let path_types = query("count by (type) (kubenurse_httpclient_requests_total{type=~\"path_.*\"})").await?;
    assert_eq!(path_types.len(), 5, "a path_<node> type per node: {path_types:?}");
    // Per-cell gauges: one error ratio per checked pair (5 sources x 4 targets), never more.
    let cells = query("count(kubenurse_matrix_error_ratio)").await?;
    assert_eq!(cells.first().and_then(|c| c["value"][1].as_str()), Some("20"), "{cells:?}");

    // promtool accepts the aggregator's exposition (the agents' are checked in promtool.rs).
    let (_, text) = http_get(&format!("{}/metrics", lab.aggregator.url())).await?;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    promtool.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?.write_all(text.as_bytes())?;
    let out = promtool.wait_with_output()?;
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every dashboard query returns data from this real Prometheus (rates need a few scrapes of
    // each target first, so ask again for up to 30 s before naming the empty ones).
    let queries: Vec<(String, String)> = ["kubenurse.json", "matrix.json"]
        .into_iter()
        .map(|f| dashboard_queries(f).map(|qs| qs.into_iter().map(move |q| (f.to_string(), q))))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let empty = loop {
        let mut empty = Vec::new();
        for (file, q) in &queries {
            if query(q).await?.is_empty() {
                empty.push(format!("{file}: {q}"));
            }
        }
        if empty.is_empty() || std::time::Instant::now() > deadline {
            break empty;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!("{} dashboard queries run against Prometheus, {} empty", queries.len(), empty.len());
    assert!(empty.is_empty(), "dashboard queries without data:\n{}", empty.join("\n"));

    // The chart's alert rules, loaded by this Prometheus: the refusing node makes the suspect
    // alert pending (its `for` is minutes), with kind and cause; nothing else is pending.
    let suspect = r#"ALERTS{alertname="KubenurseNetworkSuspect", alertstate="pending"}"#;
    let pending = eventually("the suspect alert pending", Duration::from_secs(30), || async {
        let alerts = query(suspect).await.ok()?;
        alerts
            .iter()
            .any(|a| a["metric"]["kind"] == "destination" && a["metric"]["cause"] == "errors")
            .then_some(alerts)
    })
    .await;
    let pending = match pending {
        Ok(p) => p,
        Err(e) => {
            let (_, rules) = http_get(&format!("http://{PROM}/api/v1/rules")).await?;
            let suspects = query("kubenurse_aggregator_suspects").await?;
            anyhow::bail!("{e}: ALERTS {:?}; suspects {suspects:?}; rules {rules}", query("ALERTS").await?);
        }
    };
    println!("pending: {pending:?}");
    // Right after Prometheus starts, a rate over two samples can be 0 and the neighbourhood
    // alert pending for a moment (its `for` is 10 minutes); with a few scrapes, only the
    // suspect's alert is left.
    let only = ["KubenurseNetworkSuspect".to_string()];
    let names = eventually("only the suspect alert pending", Duration::from_secs(30), || async {
        let names: std::collections::BTreeSet<String> = query("ALERTS")
            .await
            .ok()?
            .iter()
            .filter_map(|a| a["metric"]["alertname"].as_str().map(String::from))
            .collect();
        names.iter().eq(only.iter()).then_some(names)
    })
    .await;
    if let Err(e) = names {
        anyhow::bail!("{e}: {:?}", query("ALERTS").await?);
    }
    // Healed: the alert leaves.
    lab.apply(&FaultSpec::Heal).await?;
    eventually("the suspect alert gone", Duration::from_secs(30), || async {
        query(r#"ALERTS{alertname="KubenurseNetworkSuspect"}"#).await.ok()?.is_empty().then_some(())
    })
    .await?;
    lab.stop().await
}
