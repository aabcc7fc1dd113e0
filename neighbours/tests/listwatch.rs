//! The streaming list-watch against the kit's fake API server (the real wire format): a LIST
//! of realistic cloud Nodes decoded slim item by item, then watch events for a cordon and a
//! deletion, and an API server failure ending the stream with an error; all through the
//! tiers' watch client (its exact read buffer, no retries).

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::runtime::watcher::Event;
use kube::Api;
use kubenurse_neighbours::client::watch_client;
use kubenurse_neighbours::listwatch::{list_streaming, list_watch, pod_events, Selectors};
use kubenurse_neighbours::neighbourhood::PodFacts as _;
use kubenurse_neighbours::selector::LabelSelector;
use kubenurse_neighbours::slim::{SlimNode, SlimPod};
use kubenurse_testkit::apiserver::{FakeApiServer, Faults};
use kubenurse_testkit::scale::{node_name, pod_ip, populate};
use kubenurse_testkit::sim::NAMESPACE;

const NODES: usize = 300;

fn workdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn a_streamed_list_has_every_object_slim_and_the_version() -> anyhow::Result<()> {
    let api = FakeApiServer::start(&workdir("listwatch-list")).await?;
    populate(&api, NODES, pod_ip);
    let client = watch_client(api.kube_config())?;
    let full = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?;
    let (nodes, version) = list_streaming::<SlimNode>(&Api::all(client.clone()), &Selectors::default()).await?;
    assert_eq!(nodes.len(), NODES);
    assert_eq!(Some(version), full.metadata.resource_version);
    for (slim, full) in nodes.iter().zip(&full.items) {
        // Slim = the full object made slim (the version stays with the stream).
        assert_eq!(slim, &SlimNode::from(full));
        assert!(slim.zone().is_some(), "{slim:?}");
    }
    // Selectors reach the API server: one pod by label and field.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let one = Selectors::named("kubenurse-00007");
    let (pods, _) = list_streaming::<SlimPod>(&pods, &one).await?;
    let names: Vec<_> = pods.iter().map(SlimPod::name).collect();
    assert_eq!(names, ["kubenurse-00007"]);
    assert_eq!(pods[0].pod_ip(), Some(pod_ip(7).as_str()));
    assert!(pods[0].labels().is_some(), "a plain list keeps the labels");

    // The Pod caches' stream keeps the filter's verdict, not the labels.
    let pod_api: Api<Pod> = Api::namespaced(client, NAMESPACE);
    for filter in ["app.kubernetes.io/name=kubenurse", ""] {
        let filter = LabelSelector::parse(filter)?;
        let mut events = Box::pin(pod_events(pod_api.clone(), &filter));
        assert!(matches!(next(&mut events).await?, Some(Ok(Event::Init))));
        match next(&mut events).await? {
            Some(Ok(Event::InitApply(p))) => {
                assert!(p.labels().is_none() && p.selected_by(&filter), "{filter}: {p:?}")
            }
            other => anyhow::bail!("expected a pod, got {other:?}"),
        }
    }
    Ok(())
}

async fn next<K>(
    events: &mut (impl futures::Stream<Item = Result<Event<K>, kube::runtime::watcher::Error>> + Unpin),
) -> anyhow::Result<Option<Result<Event<K>, kube::runtime::watcher::Error>>> {
    Ok(tokio::time::timeout(Duration::from_secs(10), events.next()).await?)
}

#[tokio::test]
async fn the_watch_follows_changes_and_ends_on_failure() -> anyhow::Result<()> {
    let api = FakeApiServer::start(&workdir("listwatch-watch")).await?;
    populate(&api, 20, pod_ip);
    let client = watch_client(api.kube_config())?;
    let mut events = Box::pin(list_watch::<SlimNode>(Api::all(client), Selectors::default()));
    assert!(matches!(next(&mut events).await?, Some(Ok(Event::Init))));
    let mut listed = 0;
    loop {
        match next(&mut events).await? {
            Some(Ok(Event::InitApply(_))) => listed += 1,
            Some(Ok(Event::InitDone)) => break,
            other => anyhow::bail!("unexpected during the list: {other:?}"),
        }
    }
    assert_eq!(listed, 20);

    anyhow::ensure!(api.cordon(&node_name(3), true));
    match next(&mut events).await? {
        Some(Ok(Event::Apply(n))) => {
            assert_eq!(n.name(), node_name(3));
            assert!(n.unschedulable());
        }
        other => anyhow::bail!("expected the cordon, got {other:?}"),
    }
    anyhow::ensure!(api.delete_node(&node_name(4)));
    match next(&mut events).await? {
        Some(Ok(Event::Delete(n))) => assert_eq!(n.name(), node_name(4)),
        other => anyhow::bail!("expected the deletion, got {other:?}"),
    }

    // The API server fails: the stream says so once, then ends (the driver lists afresh).
    api.set_faults(Faults { failing: true, ..Faults::default() });
    assert!(matches!(next(&mut events).await?, Some(Err(_))), "a failure is an error");
    assert!(next(&mut events).await?.is_none(), "and the stream ends after it");
    Ok(())
}
