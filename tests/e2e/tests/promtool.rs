//! Every agent's `/metrics` passes `promtool check metrics` (Debian package `prometheus`;
//! `scripts/test.sh` installs it), including after errors and a neighbour's departure.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use kubenurse_lab::cluster::{ClusterSpec, LocalCluster};

use kubenurse_testkit::http::{eventually, http_get};

use kubenurse_testkit::sim::NAMESPACE;

fn promtool_check(text: &str) -> anyhow::Result<(bool, String)> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("promtool not runnable ({e}); install Debian's prometheus package"))?;
    child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?.write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), report))
}

#[test]
#[ignore = "needs promtool (Debian prometheus); scripts/test.sh runs it"]
fn promtool_rejects_broken_exposition() -> anyhow::Result<()> {
    // The check below can fail: promtool does flag a bad exposition.
    let (ok, _) = promtool_check("# TYPE x_total counter\nx_total{a=\"1\"} not-a-number\n")?;
    assert!(!ok);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs promtool (Debian prometheus); scripts/test.sh runs it"]
async fn every_agent_metrics_output_passes_promtool() -> anyhow::Result<()> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("promtool");
    let _ = std::fs::remove_dir_all(&dir);
    // A TCP extra check's target, and a DNS one resolved from /etc/hosts (nothing leaves).
    let listener = tokio::net::TcpListener::bind("127.0.61.251:0").await?;
    let tcp_port = listener.local_addr()?.port();
    let accepting = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            drop(conn);
        }
    });
    let extra = format!("refused:http://127.0.61.250:9/|tcpok:tcp://127.0.61.251:{tcp_port}|names:dns://localhost");
    let spec = ClusterSpec {
        nodes: 4,
        subnet: 61,
        port: 18080,
        interval: "300ms".into(),
        limit: 2,
        // A failing extra check puts errors_total and round_trip_error series in the output;
        // the TCP and DNS ones succeed with code "ok".
        env: vec![("KUBENURSE_EXTRA_CHECKS".into(), extra)],
        proxied: false,
        token_audience: None,
        client_cert_dir: None,
    };
    let cluster = LocalCluster::start(&spec, &dir).await?;
    for agent in &cluster.agents {
        let url = format!("{}/metrics", agent.url());
        eventually("a few rounds", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let (_, m) = http_get(&url).await.ok()?;
                m.contains("kubenurse_errors_total{event=\"connect_done\",type=\"refused\"}").then_some(())
            }
        })
        .await?;
    }
    cluster.api.delete_pod(NAMESPACE, &cluster.nodes[3].pod);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for agent in &cluster.agents {
        let (code, text) = http_get(&format!("{}/metrics", agent.url())).await?;
        assert_eq!(code, 200);
        for family in [
            "kubenurse_httpclient_requests_total",
            "kubenurse_httpclient_request_duration_seconds",
            "kubenurse_httpclient_trace_request_duration_seconds",
            "kubenurse_errors_total",
            "kubenurse_neighbourhood_incoming_checks",
        ] {
            assert!(text.contains(&format!("# TYPE {family} ")), "{family} missing on {}", agent.sim.node);
        }
        for ok_check in ["tcpok", "names"] {
            let line = format!("kubenurse_httpclient_requests_total{{code=\"ok\",type=\"{ok_check}\"}}");
            assert!(text.contains(&line), "{line} missing on {}", agent.sim.node);
        }
        assert!(text.contains(
            "kubenurse_httpclient_trace_request_duration_seconds_count{event=\"connect_done\",type=\"tcpok\"}"
        ));
        assert!(text
            .contains("kubenurse_httpclient_trace_request_duration_seconds_count{event=\"dns_done\",type=\"names\"}"));
        let (ok, report) = promtool_check(&text)?;
        assert!(ok, "promtool check metrics failed for {}:\n{report}", agent.sim.node);
        let (_, alive) = http_get(&format!("{}/alive", agent.url())).await?;
        let alive: serde_json::Value = serde_json::from_str(&alive)?;
        let last = &alive["last_check_result"];
        assert_eq!((&last["tcpok"], &last["names"]), (&serde_json::json!("ok"), &serde_json::json!("ok")), "{last}");
    }
    accepting.abort();
    cluster.stop().await
}
