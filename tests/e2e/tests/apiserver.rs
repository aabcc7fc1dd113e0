//! The fake API server against the real kube client: auth, list, watch resumption, 410 Gone,
//! and faults. The agents' tests rely on these behaving like a real API server.

use std::path::PathBuf;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use kubenurse_testkit::apiserver::{kubenurse_pod, node, FakeApiServer, Faults};

fn workdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn client(api: &FakeApiServer) -> anyhow::Result<Client> {
    Ok(Client::try_from(api.kube_config())?)
}

#[tokio::test]
async fn wrong_token_is_401() -> anyhow::Result<()> {
    let api = FakeApiServer::start(&workdir("api-401")).await?;
    let mut config = api.kube_config();
    let bad = workdir("api-401-token");
    std::fs::create_dir_all(&bad)?;
    std::fs::write(bad.join("token"), "wrong")?;
    config.auth_info.token_file = Some(bad.join("token").display().to_string());
    let pods: Api<Pod> = Api::namespaced(Client::try_from(config)?, "kubenurse");
    let err = pods.list(&ListParams::default()).await.expect_err("wrong token must fail");
    assert!(err.to_string().contains("401") || err.to_string().contains("Unauthorized"), "{err}");
    assert_eq!(api.requests("unauthorized"), 1);
    Ok(())
}

#[tokio::test]
async fn list_and_watch_with_selectors_and_versions() -> anyhow::Result<()> {
    let api = FakeApiServer::start(&workdir("api-watch")).await?;
    api.apply_node(node("n1", "zone-a"));
    api.apply_pod(kubenurse_pod("kubenurse", "p1", "n1", "127.0.0.2"));
    let mut other = kubenurse_pod("kubenurse", "other", "n1", "127.0.0.3");
    other.metadata.labels = Some([("app".to_string(), "other".to_string())].into());
    api.apply_pod(other);
    api.apply_pod(kubenurse_pod("elsewhere", "p9", "n1", "127.0.0.4"));

    let client = client(&api).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kubenurse");
    let selected = ListParams::default().labels("app.kubernetes.io/name=kubenurse");
    let list = pods.list(&selected).await?;
    let names: Vec<_> = list.items.iter().filter_map(|p| p.metadata.name.clone()).collect();
    assert_eq!(names, ["p1"]);
    let rv = list.metadata.resource_version.clone().unwrap_or_default();
    assert_eq!(Api::<Pod>::all(client.clone()).list(&ListParams::default()).await?.items.len(), 3);
    assert_eq!(Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items.len(), 1);
    assert_eq!(pods.get("p1").await?.spec.and_then(|s| s.node_name).as_deref(), Some("n1"));

    // Watch from the listed version: sees later changes only, filtered by selector.
    let wp = WatchParams::default().labels("app.kubernetes.io/name=kubenurse").timeout(10);
    let mut events = pods.watch(&wp, &rv).await?.boxed();
    api.apply_pod(kubenurse_pod("kubenurse", "p2", "n1", "127.0.0.5"));
    assert!(api.delete_pod("kubenurse", "p1"));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.try_next()).await??;
        match ev {
            Some(WatchEvent::Added(p)) => seen.push(format!("added {}", p.metadata.name.unwrap_or_default())),
            Some(WatchEvent::Deleted(p)) => seen.push(format!("deleted {}", p.metadata.name.unwrap_or_default())),
            Some(WatchEvent::Modified(p)) => seen.push(format!("modified {}", p.metadata.name.unwrap_or_default())),
            other => anyhow::bail!("unexpected event {other:?}"),
        }
    }
    assert_eq!(seen, ["added p2", "deleted p1"]);

    // Resuming from a version that left history: 410 Gone, as a real API server says it.
    for i in 0..2100 {
        api.apply_node(node(&format!("churn-{i}"), "zone-a"));
    }
    let mut events = pods.watch(&wp, "1").await?.boxed();
    match tokio::time::timeout(Duration::from_secs(5), events.try_next()).await?? {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => anyhow::bail!("expected 410 Gone, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn failing_closes_watches_and_refuses_requests() -> anyhow::Result<()> {
    let api = FakeApiServer::start(&workdir("api-fail")).await?;
    api.apply_pod(kubenurse_pod("kubenurse", "p1", "n1", "127.0.0.2"));
    let pods: Api<Pod> = Api::namespaced(client(&api).await?, "kubenurse");
    let rv = pods.list(&ListParams::default()).await?.metadata.resource_version.unwrap_or_default();
    let mut events = pods.watch(&WatchParams::default().timeout(60), &rv).await?.boxed();
    api.set_faults(Faults { failing: true, ..Faults::default() });
    let end = tokio::time::timeout(Duration::from_secs(5), events.next()).await?;
    assert!(end.is_none(), "watch must end when the server fails: {end:?}");
    let err = pods.list(&ListParams::default()).await.expect_err("failing server");
    assert!(err.to_string().contains("503") || err.to_string().contains("failing"), "{err}");
    api.set_faults(Faults::default());
    assert_eq!(pods.list(&ListParams::default()).await?.items.len(), 1);
    Ok(())
}

/// TokenReview as the real `kubectl` sees it (`kubectl create -f review.json -o json`): 201,
/// an authenticated service-account user with the pod and node extras, and kube-apiserver's
/// audience error. Skipped, saying so, where kubectl is not installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_speaks_kubectl() -> anyhow::Result<()> {
    use kubenurse_testkit::apiserver::TokenRequest;
    if std::process::Command::new("kubectl").arg("version").arg("--client").output().is_err() {
        eprintln!("kubectl not installed: TokenReview wire check skipped");
        return Ok(());
    }
    let dir = workdir("api-tokenreview");
    let api = FakeApiServer::start(&dir).await?;
    api.apply_pod(kubenurse_pod("kubenurse", "kubenurse-01", "node-01", "127.0.0.2"));
    let token = api.issue_token(&TokenRequest {
        namespace: "kubenurse".into(),
        service_account: "kubenurse".into(),
        pod: Some("kubenurse-01".into()),
        node: Some("node-01".into()),
        audience: "kubenurse-aggregator".into(),
        ttl: Duration::from_secs(600),
    });
    let review = |audience: &str| -> anyhow::Result<serde_json::Value> {
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        });
        let file = dir.join("review.json");
        std::fs::write(&file, body.to_string())?;
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(api.kubeconfig_path())
            .args(["create", "--validate=false", "-o", "json", "-f"])
            .arg(&file)
            .output()?;
        anyhow::ensure!(out.status.success(), "kubectl: {}", String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    // kubectl runs blocking: off the runtime's workers.
    let (good, other) = tokio::task::block_in_place(|| {
        Ok::<_, anyhow::Error>((review("kubenurse-aggregator")?, review("someone-else")?))
    })?;
    let status = &good["status"];
    assert_eq!(status["authenticated"], true, "{good}");
    assert_eq!(status["user"]["username"], "system:serviceaccount:kubenurse:kubenurse");
    assert_eq!(status["user"]["extra"]["authentication.kubernetes.io/pod-name"][0], "kubenurse-01");
    assert_eq!(status["user"]["extra"]["authentication.kubernetes.io/node-name"][0], "node-01");
    assert_eq!(status["audiences"][0], "kubenurse-aggregator");
    assert_ne!(other["status"]["authenticated"], true, "{other}");
    assert!(other["status"]["error"].as_str().unwrap_or_default().contains("audiences"), "{other}");
    assert_eq!(api.requests("create tokenreviews"), 2);
    Ok(())
}

/// What the aggregator writes, as the real `kubectl` writes it: a strategic-merge patch of one
/// Node condition through the `status` subresource (the others kept), an events.k8s.io/v1
/// Event (and the server's refusal of one without `eventTime`), a Lease replaced with a stale
/// resourceVersion (409). Skipped, saying so, where kubectl is not installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_status_events_and_leases_speak_kubectl() -> anyhow::Result<()> {
    if std::process::Command::new("kubectl").arg("version").arg("--client").output().is_err() {
        eprintln!("kubectl not installed: node status, event and lease wire check skipped");
        return Ok(());
    }
    let dir = workdir("api-writes");
    let api = FakeApiServer::start(&dir).await?;
    let mut n = node("node-01", "zone-a");
    n.status = serde_json::from_value(serde_json::json!({"conditions": [{"type": "Ready", "status": "True"}]}))?;
    api.apply_node(n);
    let kubectl = |args: &[&str]| -> anyhow::Result<(bool, String, String)> {
        let out =
            std::process::Command::new("kubectl").arg("--kubeconfig").arg(api.kubeconfig_path()).args(args).output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let write = |name: &str, body: serde_json::Value| -> anyhow::Result<String> {
        let file = dir.join(name);
        std::fs::write(&file, body.to_string())?;
        Ok(file.display().to_string())
    };
    let event = |time: Option<&str>| {
        let mut e = serde_json::json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "node-01.1", "namespace": "default"},
            "regarding": {"apiVersion": "v1", "kind": "Node", "name": "node-01"},
            "reason": "DestinationErrors", "note": "checks into node-01 fail", "action": "MarkNode", "type": "Warning",
            "reportingController": "kubenurse-aggregator", "reportingInstance": "aggregator-0",
        });
        if let Some(t) = time {
            e["eventTime"] = serde_json::json!(t);
        }
        e
    };
    let lease = |rv: Option<&str>| {
        let mut l = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "kubenurse-aggregator-node-conditions", "namespace": "kubenurse"},
            "spec": {"holderIdentity": "aggregator-0", "leaseDurationSeconds": 15},
        });
        if let Some(rv) = rv {
            l["metadata"]["resourceVersion"] = serde_json::json!(rv);
        }
        l
    };
    let (patched, no_time, created, listed, lease_made, stale) = tokio::task::block_in_place(|| {
        let condition = r#"{"status":{"conditions":[{"type":"KubenurseNetworkProblem","status":"True","reason":"DestinationErrors","message":"m"}]}}"#;
        let patched = kubectl(&[
            "patch",
            "node",
            "node-01",
            "--subresource=status",
            "--type=strategic",
            "-p",
            condition,
            "-o",
            "json",
        ])?;
        let no_time = kubectl(&["create", "--validate=false", "-f", &write("e0.json", event(None))?])?;
        let created = kubectl(&[
            "create",
            "--validate=false",
            "-o",
            "json",
            "-f",
            &write("e1.json", event(Some("2026-12-02T07:00:00.000000Z")))?,
        ])?;
        let listed = kubectl(&["get", "events.events.k8s.io", "-n", "default", "-o", "json"])?;
        let lease_made = kubectl(&["create", "--validate=false", "-o", "json", "-f", &write("l.json", lease(None))?])?;
        let stale = kubectl(&["replace", "--validate=false", "-f", &write("l2.json", lease(Some("1")))?])?;
        Ok::<_, anyhow::Error>((patched, no_time, created, listed, lease_made, stale))
    })?;
    anyhow::ensure!(patched.0, "kubectl patch: {}", patched.2);
    let node_json: serde_json::Value = serde_json::from_str(&patched.1)?;
    let types: Vec<&str> =
        node_json["status"]["conditions"].as_array().into_iter().flatten().filter_map(|c| c["type"].as_str()).collect();
    assert_eq!(types, ["Ready", "KubenurseNetworkProblem"], "strategic merge keeps Ready: {node_json}");
    assert_eq!(api.requests("patch node status"), 1);
    assert!(!no_time.0 && no_time.2.contains("eventTime: Required value"), "refused: {no_time:?}");
    anyhow::ensure!(created.0, "kubectl create event: {}", created.2);
    let listed: serde_json::Value = serde_json::from_str(&listed.1)?;
    assert_eq!(listed["items"][0]["reason"], "DestinationErrors", "{listed}");
    assert_eq!(api.events("default").len(), 1);
    anyhow::ensure!(lease_made.0, "kubectl create lease: {}", lease_made.2);
    assert!(!stale.0 && stale.2.contains("the object has been modified"), "a stale replace is a conflict: {stale:?}");
    assert!(api.lease("kubenurse", "kubenurse-aggregator-node-conditions").is_some());
    Ok(())
}
