//! Node conditions and events (`--node-conditions`): the verdict reaches the Node objects, where
//! the node-problem-detector ecosystem and people with `kubectl describe node` see it. One
//! replica writes (a Lease); what to write is planned by the pure [`plan::Planner`]; `dry-run`
//! plans, logs and counts without writing (and without taking the Lease).

pub mod lease;
pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use serde_json::json;
use tracing::{info, warn};

use crate::metrics::AggregatorMetrics;
use crate::owner::{now_micros, StateHandle};
use lease::{Elector, LEASE_NAME};
use plan::{Change, Mark, Planner, Policy, CONDITION_TYPE};

/// `--node-conditions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NodeConditionsMode {
    /// Nothing is written.
    #[default]
    Off,
    /// Planned, logged and counted, never written.
    DryRun,
    /// Written: Node conditions and Events.
    On,
}

impl std::fmt::Display for NodeConditionsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::DryRun => "dry-run",
            Self::On => "on",
        })
    }
}

/// How often the writer looks at the suspects and renews the Lease.
pub const EVERY: Duration = Duration::from_secs(2);
/// Who writes, in Events' `reportingController`.
pub const CONTROLLER: &str = "kubenurse-aggregator";

/// What the writer needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionsConfig {
    /// Dry run or write.
    pub dry_run: bool,
    /// Share cap and hold time.
    pub policy: Policy,
}

/// The outcome labels of `kubenurse_aggregator_node_condition_writes_total`.
pub const RESULTS: [&str; 3] = ["ok", "error", "dry_run"];

/// The writer task; dropping it stops the task.
pub struct Running(tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A replica identity: the pod's name (`HOSTNAME` in a pod) and a random part, so two replicas
/// in one process (tests) differ too.
pub fn identity() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "kubenurse-aggregator".into());
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("{host}-{:08x}", random as u32)
}

fn node_ref(node: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.into()),
        ..ObjectReference::default()
    }
}

struct Writer {
    nodes: Api<Node>,
    recorder: Recorder,
    lease_ref: ObjectReference,
}

impl Writer {
    async fn write(&self, change: &Change, newly_marked: bool) -> Result<(), kube::Error> {
        let now = Timestamp::now().to_string();
        let (node, status, reason, message, type_, action) = match change {
            Change::Mark { node, reason, message } => (node, "True", reason, message, EventType::Warning, "MarkNode"),
            Change::Clear { node, reason, message } => (node, "False", reason, message, EventType::Normal, "ClearNode"),
            Change::OverCap { suspected, cap, nodes } => {
                let note = format!(
                    "{suspected} of {nodes} nodes are suspected at once, more than the cap of {cap} (--node-conditions-max-share): it is not the nodes, so none is marked"
                );
                let event = Event {
                    type_: EventType::Warning,
                    reason: "TooManyNodesSuspected".into(),
                    note: Some(note),
                    action: "MarkNode".into(),
                    secondary: None,
                };
                return self.recorder.publish(&event, &self.lease_ref).await;
            }
        };
        let mut condition = json!({
            "type": CONDITION_TYPE, "status": status, "reason": reason, "message": message, "lastHeartbeatTime": now,
        });
        // The transition time moves only when the status does (a new reason keeps it).
        if newly_marked || status == "False" {
            condition["lastTransitionTime"] = json!(now);
        }
        let patch = json!({ "status": { "conditions": [condition] } });
        self.nodes.patch_status(node, &PatchParams::default(), &Patch::Strategic(&patch)).await?;
        let event = Event {
            type_,
            reason: reason.clone(),
            note: Some(message.clone()),
            action: action.into(),
            secondary: None,
        };
        self.recorder.publish(&event, &node_ref(node)).await
    }

    /// The marks a previous writer left on the Nodes.
    async fn adopt(&self, planner: &mut Planner) -> Result<(), kube::Error> {
        for node in self.nodes.list(&ListParams::default()).await? {
            let Some(name) = node.metadata.name.clone() else { continue };
            let conditions = node.status.and_then(|s| s.conditions).unwrap_or_default();
            if let Some(c) = conditions.into_iter().find(|c| c.type_ == CONDITION_TYPE && c.status == "True") {
                let mark = Mark {
                    reason: c.reason.unwrap_or_default(),
                    message: c.message.unwrap_or_default(),
                    since: now_micros(),
                };
                planner.adopt(name, mark);
            }
        }
        Ok(())
    }
}

/// Starts the writer: every [`EVERY`], hold the Lease (in `client`'s namespace) and, while
/// holding it, bring the Nodes' conditions to what the suspects say.
pub fn spawn(client: Client, config: ConditionsConfig, state: StateHandle, metrics: Arc<AggregatorMetrics>) -> Running {
    let namespace = client.default_namespace().to_string();
    let elector = Elector::new(Api::namespaced(client.clone(), &namespace), identity());
    let lease_ref = ObjectReference {
        api_version: Some("coordination.k8s.io/v1".into()),
        kind: Some("Lease".into()),
        name: Some(LEASE_NAME.into()),
        namespace: Some(namespace.clone()),
        ..ObjectReference::default()
    };
    let reporter = Reporter { controller: CONTROLLER.into(), instance: Some(elector.identity().to_string()) };
    let writer = Writer { nodes: Api::all(client.clone()), recorder: Recorder::new(client, reporter), lease_ref };
    info!(
        namespace,
        identity = elector.identity(),
        dry_run = config.dry_run,
        "node conditions: writing while holding the Lease"
    );
    Running(tokio::spawn(async move {
        let mut planner = Planner::default();
        let mut leading = false;
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            // A dry run writes nothing, so it needs no Lease and never keeps a writer out.
            let now_leading = config.dry_run
                || match elector.lead().await {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(error = %e, "node conditions: the Lease cannot be read or renewed: not writing");
                        false
                    }
                };
            metrics.condition_writer.set(i64::from(now_leading && !config.dry_run));
            if now_leading && !leading {
                planner = Planner::default();
                if let Err(e) = writer.adopt(&mut planner).await {
                    warn!(error = %e, "node conditions: cannot list the Nodes to adopt earlier marks: retrying");
                    continue;
                }
                info!(marked = planner.marked().len(), "node conditions: this replica writes now");
            }
            leading = now_leading;
            if !leading {
                continue;
            }
            let Some(snapshot) = state.snapshot().await else { return };
            let now = now_micros();
            for change in planner.plan(&snapshot.suspects, snapshot.node_count(), now, &config.policy) {
                let newly = matches!(&change, Change::Mark { node, .. } if !planner.marked().contains_key(node));
                let result = if config.dry_run {
                    info!(?change, "node conditions (dry run): would write");
                    "dry_run"
                } else {
                    match writer.write(&change, newly).await {
                        Ok(()) => {
                            info!(?change, "node conditions: written");
                            "ok"
                        }
                        Err(e) => {
                            warn!(?change, error = %e, "node conditions: write failed: planned again next time");
                            "error"
                        }
                    }
                };
                metrics.condition_writes.with_label_values(&[result]).inc();
                if result != "error" {
                    planner.applied(&change, now);
                }
            }
            metrics.conditions_marked.set(planner.marked().len() as i64);
        }
    }))
}
