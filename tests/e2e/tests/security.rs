//! The service-account token goes to the API server and nowhere else (upstream sent it to any
//! URL ending in `/version`), a missing token fails only the API checks, and HTTPS works
//! between agents with `KUBENURSE_USE_TLS`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use kubenurse_lab::cluster::{ClusterSpec, LocalCluster};
use kubenurse_testkit::http::{eventually, http_get};
use kubenurse_testkit::pki::{write_file, TestCa};
use serde_json::Value;

fn workdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn last_result(url: &str) -> Option<(u16, Value)> {
    let (code, body) = http_get(&format!("{url}/alive")).await.ok()?;
    let v: Value = serde_json::from_str(&body).ok()?;
    Some((code, v["last_check_result"].clone()))
}

/// A server on 127.0.0.1 that records the Authorization header of every request.
async fn recorder() -> anyhow::Result<(u16, Arc<Mutex<Vec<Option<String>>>>)> {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let record = seen.clone();
    let app = Router::new().route(
        "/version",
        get(move |headers: HeaderMap| {
            let record = record.clone();
            async move {
                let auth = headers.get("authorization").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                record.lock().unwrap_or_else(|p| p.into_inner()).push(auth);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((port, seen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reaches_only_the_api_server() -> anyhow::Result<()> {
    let (port, seen) = recorder().await?;
    let spec = ClusterSpec {
        nodes: 2,
        subnet: 51,
        port: 18080,
        interval: "300ms".into(),
        env: vec![("KUBENURSE_EXTRA_CHECKS".into(), format!("decoy:http://127.0.0.1:{port}/version"))],
        ..ClusterSpec::default()
    };
    let cluster = LocalCluster::start(&spec, &workdir("token")).await?;
    let url = cluster.agents[0].url();
    let result = eventually("all checks ok, decoy included", Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            let (code, r) = last_result(&url).await?;
            (code == 200 && r["decoy"] == "ok").then_some(r)
        }
    })
    .await?;
    // The fake API server answers 401 without the right token: ok means it was sent there.
    assert_eq!(result["api_server_direct"], "ok");
    assert_eq!(result["api_server_dns"], "ok");
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(Option::is_none), "the decoy /version received a token: {seen:?}");
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_fails_api_checks_only() -> anyhow::Result<()> {
    let dir = workdir("no-token");
    let empty_sa = dir.join("empty-sa");
    std::fs::create_dir_all(&empty_sa)?;
    let spec = ClusterSpec {
        nodes: 2,
        subnet: 52,
        port: 18080,
        interval: "300ms".into(),
        env: vec![("KUBENURSE_SERVICE_ACCOUNT_DIR".into(), empty_sa.display().to_string())],
        ..ClusterSpec::default()
    };
    let cluster = LocalCluster::start(&spec, &dir).await?;
    let url = cluster.agents[0].url();
    let result = eventually("a round with the neighbour checked", Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            let (_, r) = last_result(&url).await?;
            (r["path_node-02"] == "ok").then_some(r)
        }
    })
    .await?;
    for check in ["api_server_direct", "api_server_dns"] {
        let text = result[check].as_str().unwrap_or_default();
        assert!(text.starts_with("cannot read service account token"), "{check}: {text}");
    }
    assert_eq!(result["me_service"], "ok");
    let (_, metrics) = http_get(&format!("{url}/metrics")).await?;
    assert!(metrics.contains(r#"kubenurse_errors_total{event="token_error",type="api_server_direct"}"#), "{metrics}");
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_check_each_other_over_https() -> anyhow::Result<()> {
    let dir = workdir("tls");
    let ca = TestCa::new("agents-ca")?;
    let ips: Vec<String> = (1..=3).map(|i| format!("127.0.53.{i}")).collect();
    let names: Vec<&str> = ips.iter().map(String::as_str).collect();
    let leaf = ca.leaf(&names)?;
    let cert = write_file(&dir, "agent.crt", &leaf.cert_pem)?;
    let key = write_file(&dir, "agent.key", &leaf.key_pem)?;
    let ca_file = write_file(&dir, "agents-ca.crt", &ca.cert_pem())?;
    let spec = ClusterSpec {
        nodes: 3,
        subnet: 53,
        port: 18080,
        interval: "300ms".into(),
        env: vec![
            ("KUBENURSE_USE_TLS".into(), "true".into()),
            ("KUBENURSE_HTTPS_PORT".into(), "18443".into()),
            ("KUBENURSE_CERT_FILE".into(), cert.display().to_string()),
            ("KUBENURSE_CERT_KEY".into(), key.display().to_string()),
            ("KUBENURSE_EXTRA_CA".into(), ca_file.display().to_string()),
        ],
        ..ClusterSpec::default()
    };
    let cluster = LocalCluster::start(&spec, &dir).await?;
    let url = cluster.agents[0].url();
    eventually("path checks over verified HTTPS", Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            let (code, r) = last_result(&url).await?;
            (code == 200 && r["path_node-02"] == "ok" && r["path_node-03"] == "ok").then_some(())
        }
    })
    .await?;
    let (_, metrics) = http_get(&format!("{url}/metrics")).await?;
    assert!(
        metrics.contains(r#"kubenurse_httpclient_trace_request_duration_seconds_count{event="tls_handshake_done",type="path_node-02"}"#),
        "TLS handshake phase not recorded"
    );
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verification_is_on_unless_insecure() -> anyhow::Result<()> {
    let dir = workdir("tls-verify");
    let ca = TestCa::new("untrusted-ca")?;
    let leaf = ca.leaf(&["127.0.54.1", "127.0.54.2"])?;
    let cert = write_file(&dir, "agent.crt", &leaf.cert_pem)?;
    let key = write_file(&dir, "agent.key", &leaf.key_pem)?;
    let spec = |insecure: &str| ClusterSpec {
        nodes: 2,
        subnet: 54,
        port: 18080,
        interval: "300ms".into(),
        env: vec![
            ("KUBENURSE_USE_TLS".into(), "true".into()),
            ("KUBENURSE_HTTPS_PORT".into(), "18443".into()),
            ("KUBENURSE_CERT_FILE".into(), cert.display().to_string()),
            ("KUBENURSE_CERT_KEY".into(), key.display().to_string()),
            ("KUBENURSE_INSECURE".into(), insecure.into()),
        ],
        ..ClusterSpec::default()
    };
    // The agents' CA is trusted by nobody: the handshake must fail.
    let cluster = LocalCluster::start(&spec("false"), &dir).await?;
    let url = cluster.agents[0].url();
    // (Until node-02's listener is up its check is refused; what matters is what follows.)
    eventually("path check fails TLS verification", Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            let (_, r) = last_result(&url).await?;
            r["path_node-02"].as_str().is_some_and(|v| v.contains("TLS handshake")).then_some(())
        }
    })
    .await?;
    let (_, metrics) = http_get(&format!("{url}/metrics")).await?;
    assert!(metrics.contains(r#"kubenurse_errors_total{event="tls_handshake_done",type="path_node-02"}"#));
    cluster.stop().await?;

    // KUBENURSE_INSECURE=true: the same certificates are accepted.
    let cluster = LocalCluster::start(&spec("true"), &dir).await?;
    let url = cluster.agents[0].url();
    eventually("insecure path check ok", Duration::from_secs(20), || {
        let url = url.clone();
        async move { (last_result(&url).await?.1["path_node-02"] == "ok").then_some(()) }
    })
    .await?;
    cluster.stop().await
}
