//! What the round loop and the shutdown sequence publish and the HTTP endpoints read.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use crate::checks::RoundResult;
use crate::discovery::Discovery;
use crate::incoming::IncomingChecks;
use crate::metrics::Metrics;

/// What the endpoints read; written by the round loop and the shutdown sequence.
pub struct AgentState {
    /// The agent's metrics.
    pub metrics: Arc<Metrics>,
    /// Origins that checked us.
    pub incoming: IncomingChecks,
    /// The last complete round; `None` until the first one ends.
    pub last_round: RwLock<Option<Arc<RoundResult>>>,
    /// Set on SIGTERM: `/ready` answers 503 from then on.
    pub shutting_down: AtomicBool,
    /// Discovery, when the neighbourhood check is on (for the own node's schedulability).
    pub discovery: Option<Discovery>,
    /// Shown in `/alive` as `hostname`.
    pub hostname: String,
}

impl AgentState {
    /// The last complete round.
    pub fn last_round(&self) -> Option<Arc<RoundResult>> {
        self.last_round.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publishes a complete round.
    pub fn publish(&self, round: RoundResult) {
        *self.last_round.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(round));
    }
}
