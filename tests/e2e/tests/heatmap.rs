//! The aggregator's heatmap page in headless Chromium (Debian `chromium`): it loads with no
//! console output, draws the running lab's matrix, and lists an injected fault as the top
//! suspect. A screenshot is written to `target/heatmap.png` for a person to look at.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use kubenurse_aggregator::state::Settings;
use kubenurse_lab::cluster::ClusterSpec;
use kubenurse_lab::lab::Lab;
use kubenurse_testkit::http::{eventually, http_get};
use kubenurse_testkit::proxy::{Fault, Rule};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium on `url` with `extra` flags; returns (stdout, console lines).
fn chromium(url: &str, extra: &[&str], profile: &Path) -> anyhow::Result<(String, Vec<String>)> {
    anyhow::ensure!(Path::new(CHROMIUM).exists(), "{CHROMIUM} missing: install Debian's chromium package");
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=8000",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Chromium prints every console message (log, error, uncaught exception) as CONSOLE.
    let console = stderr.lines().filter(|l| l.contains(":CONSOLE")).map(String::from).collect();
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), console))
}

/// The aggregator's top suspect node (and the whole answer, for a failure message).
async fn top_suspect(agg: &str) -> Option<(String, String)> {
    let (_, body) = http_get(&format!("{agg}/api/v1/suspects")).await.ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((v["suspects"][0]["node"].as_str()?.to_string(), body))
}

fn attr(dom: &str, name: &str) -> Option<String> {
    let start = dom.find(&format!("{name}=\""))? + name.len() + 2;
    Some(dom[start..].split('"').next()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs headless Chromium (Debian chromium); scripts/test.sh runs it"]
async fn heatmap_draws_the_lab_and_its_top_suspect() -> anyhow::Result<()> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("heatmap");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    // The console detector can fail: a page that logs and throws is caught.
    let broken = Router::new().route(
        "/",
        get(|| async {
            axum::response::Html("<html><body><script>throw new Error('deliberate')</script></body></html>")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let broken_url = format!("http://{}/", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, broken).await });
    let (_, console) = tokio::task::spawn_blocking({
        let profile = dir.join("profile-control");
        move || chromium(&broken_url, &["--dump-dom"], &profile)
    })
    .await??;
    assert!(console.iter().any(|l| l.contains("deliberate")), "detector missed an uncaught error: {console:?}");

    let spec = ClusterSpec {
        nodes: 9,
        subnet: 98,
        port: 18080,
        interval: "1s".into(),
        limit: 4,
        env: Vec::new(),
        proxied: true,
        token_audience: None,
        client_cert_dir: None,
    };
    let lab = Lab::start(spec, Settings { tick_micros: 250_000, ..Settings::default() }, &dir).await?;
    let victim = lab.cluster.nodes[4].node.clone();
    lab.cluster.fault(&victim, Rule { fault: Fault::Refuse, only_from: None })?;
    let agg = lab.aggregator.url();
    // The suspects ranking is live: a neighbour's own startup errors can briefly outrank the
    // victim between the API read and the page's fetch. The page is loaded again (at most three
    // times) when it shows another node first; a page that draws the wrong suspect fails all three.
    let url = format!("{agg}/");
    let mut shown = None;
    for attempt in 1..=3 {
        eventually("the refusing node is the aggregator's top suspect", Duration::from_secs(20), || {
            let (agg, victim) = (agg.clone(), victim.clone());
            async move { (top_suspect(&agg).await?.0 == victim).then_some(()) }
        })
        .await?;
        let (dom, console) = tokio::task::spawn_blocking({
            let (url, profile) = (url.clone(), dir.join(format!("profile-dom-{attempt}")));
            move || chromium(&url, &["--dump-dom"], &profile)
        })
        .await??;
        assert!(console.is_empty(), "the page wrote to the console: {console:#?}");
        let cells: usize = attr(&dom, "data-cells").and_then(|v| v.parse().ok()).unwrap_or(0);
        let nodes: usize = attr(&dom, "data-nodes").and_then(|v| v.parse().ok()).unwrap_or(0);
        assert_eq!(nodes, 9, "nodes drawn");
        assert!(cells >= 9 * 4 - 4, "cells drawn: {cells}");
        let first_suspect = dom.find("class=\"suspect").map(|i| &dom[i..]).unwrap_or_default();
        shown = attr(first_suspect, "data-node");
        if shown.as_deref() == Some(victim.as_str()) {
            break;
        }
        let now = top_suspect(&agg).await.map(|(_, body)| body);
        eprintln!("attempt {attempt}: the page showed {shown:?} first; the API's suspects now: {now:?}");
    }
    assert_eq!(shown.as_deref(), Some(victim.as_str()), "top suspect shown");

    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/heatmap.png");
    let (_, console) = tokio::task::spawn_blocking({
        let (url, profile, shot) = (url.clone(), dir.join("profile-shot"), shot.clone());
        move || chromium(&url, &[&format!("--screenshot={}", shot.display())], &profile)
    })
    .await??;
    assert!(console.is_empty(), "{console:#?}");
    assert!(std::fs::metadata(&shot)?.len() > 10_000, "screenshot written to {}", shot.display());
    println!("screenshot: {}", shot.display());

    // The loss view: the refusal healed, half of the UDP packets to another node lost (HTTP
    // passes): every cell has a loss value to colour, and the lossy node is the top suspect,
    // cause loss.
    lab.cluster.fault(&victim, Rule { fault: Fault::Pass, only_from: None })?;
    let lossy = lab.cluster.nodes[7].node.clone();
    lab.cluster.fault(&lossy, Rule { fault: Fault::Loss(50), only_from: None })?;
    eventually("the lossy node is the top suspect, cause loss", Duration::from_secs(30), || {
        let (agg, lossy) = (agg.clone(), lossy.clone());
        async move {
            let (_, body) = http_get(&format!("{agg}/api/v1/suspects")).await.ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let list = v["suspects"].as_array()?;
            (list.len() == 1 && list[0]["node"] == lossy.as_str() && list[0]["cause"] == "loss").then_some(())
        }
    })
    .await?;
    let (dom, console) = tokio::task::spawn_blocking({
        let (url, profile) = (format!("{agg}/?stat=loss_ratio"), dir.join("profile-loss"));
        move || chromium(&url, &["--dump-dom"], &profile)
    })
    .await??;
    assert!(console.is_empty(), "the loss view wrote to the console: {console:#?}");
    let cells: usize = attr(&dom, "data-cells").and_then(|v| v.parse().ok()).unwrap_or(0);
    let valued: usize = attr(&dom, "data-valued").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(cells >= 9 * 4 - 4 && valued == cells, "every cell has a loss value: {valued} of {cells}");
    let first_suspect = dom.find("class=\"suspect").map(|i| &dom[i..]).unwrap_or_default();
    assert_eq!(attr(first_suspect, "data-node").as_deref(), Some(lossy.as_str()), "the lossy node shown first");
    assert_eq!(attr(first_suspect, "data-cause").as_deref(), Some("loss"));
    assert!(dom.contains("data-stat=\"loss_ratio\" class=\"on\""), "the loss button is on");
    lab.stop().await
}
