//! The aggregator's own metrics, plus per-cell gauges refreshed at scrape time (bounded by the
//! cells agents currently target: at most nodes × limit series).

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::snapshot::Snapshot;
use crate::views::Stat;

/// Whether `/metrics` carries a series per matrix cell (`--cell-metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CellMetrics {
    /// Only the aggregator's own families: the matrix is in `/api/v1/matrix` (a 10,000-node
    /// cluster would otherwise export 300,000 series on every scrape).
    #[default]
    None,
    /// `kubenurse_matrix_{p50,p99}_seconds`, `kubenurse_matrix_error_ratio` and
    /// `kubenurse_matrix_loss_ratio` for every cell agents target now (up to 4 × nodes × limit
    /// series), which the matrix dashboard reads.
    All,
}

impl std::fmt::Display for CellMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::All => "all",
        })
    }
}

/// Metric families of the aggregator.
pub struct AggregatorMetrics {
    registry: Registry,
    cell_metrics: CellMetrics,
    /// Agents streaming now.
    pub connected_agents: IntGauge,
    /// Results recorded.
    pub ingested: IntCounter,
    /// Results or streams refused, by reason.
    pub ingest_errors: IntCounterVec,
    /// Streams refused by authentication, by reason.
    pub auth_failures: IntCounterVec,
    /// Matrix cells held.
    pub cells: IntGauge,
    /// Target lists pushed to agents (pushed discovery).
    pub targets_sent: IntCounter,
    /// Expensive HTTP answers refused, by reason ([`crate::api::Shed`]).
    pub queries_shed: IntCounterVec,
    /// Nodes checked by fewer live agents than they should be (`/api/v1/coverage`).
    pub under_covered: IntGauge,
    /// Node condition writes (or dry-run plans), by result.
    pub condition_writes: IntCounterVec,
    /// Nodes this replica has marked with the condition now.
    pub conditions_marked: IntGauge,
    /// 1 while this replica holds the node-conditions Lease.
    pub condition_writer: IntGauge,
    /// Current suspects by kind and cause.
    pub suspects: GaugeVec,
    p50: GaugeVec,
    p99: GaugeVec,
    error_ratio: GaugeVec,
    loss_ratio: GaugeVec,
}

impl AggregatorMetrics {
    /// Registers every family; per-cell series only with [`CellMetrics::All`].
    pub fn new(cell_metrics: CellMetrics) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let connected_agents = IntGauge::new("kubenurse_aggregator_connected_agents", "Agents streaming results now.")?;
        let ingested = IntCounter::new("kubenurse_aggregator_results_ingested_total", "Check results recorded.")?;
        let ingest_errors = IntCounterVec::new(
            Opts::new("kubenurse_aggregator_ingest_errors_total", "Results or streams refused, by reason."),
            &["reason"],
        )?;
        // Every reason at 0 from the start: dashboards and alerts see a series, not absence.
        for reason in crate::validate::Rejection::ALL {
            ingest_errors.with_label_values(&[&reason.to_string()]);
        }
        ingest_errors.with_label_values(&[crate::validate::MALFORMED_OR_BROKEN]);
        let auth_failures = IntCounterVec::new(
            Opts::new("kubenurse_aggregator_auth_failures_total", "Streams refused by authentication, by reason."),
            &["reason"],
        )?;
        for reason in crate::auth::AuthFailure::ALL {
            auth_failures.with_label_values(&[&reason.to_string()]);
        }
        let cells = IntGauge::new("kubenurse_aggregator_matrix_cells", "Source-destination cells in the matrix.")?;
        let targets_sent = IntCounter::new(
            "kubenurse_aggregator_targets_sent_total",
            "Target lists pushed to agents (pushed discovery).",
        )?;
        let queries_shed = IntCounterVec::new(
            Opts::new(
                "kubenurse_aggregator_queries_shed_total",
                "Expensive HTTP answers refused, by reason: permits (too many at once, 503), rate (429).",
            ),
            &["reason"],
        )?;
        for why in crate::api::Shed::ALL {
            queries_shed.with_label_values(&[why.as_str()]);
        }
        let under_covered = IntGauge::new(
            "kubenurse_aggregator_under_covered_nodes",
            "Nodes checked by fewer live agents than the neighbour limit asks for.",
        )?;
        let condition_writes = IntCounterVec::new(
            Opts::new(
                "kubenurse_aggregator_node_condition_writes_total",
                "Node condition and event writes (--node-conditions), by result: ok, error, dry_run.",
            ),
            &["result"],
        )?;
        for result in crate::conditions::RESULTS {
            condition_writes.with_label_values(&[result]);
        }
        let conditions_marked = IntGauge::new(
            "kubenurse_aggregator_node_conditions_marked",
            "Nodes this replica has marked KubenurseNetworkProblem=True.",
        )?;
        let condition_writer = IntGauge::new(
            "kubenurse_aggregator_node_conditions_writer",
            "1 while this replica holds the node-conditions Lease (only it writes).",
        )?;
        let suspects = GaugeVec::new(
            Opts::new("kubenurse_aggregator_suspects", "Current fault suspects by kind and cause."),
            &["kind", "cause"],
        )?;
        let cell_gauge = |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), &["src", "dst"]);
        let p50 = cell_gauge("kubenurse_matrix_p50_seconds", "Median path-check latency over the window.")?;
        let p99 = cell_gauge("kubenurse_matrix_p99_seconds", "99th percentile path-check latency over the window.")?;
        let error_ratio = cell_gauge("kubenurse_matrix_error_ratio", "Failed share of path checks over the window.")?;
        let loss_ratio = cell_gauge(
            "kubenurse_matrix_loss_ratio",
            "Lost share of UDP echo packets over the window (cells with UDP data).",
        )?;
        for c in [
            Box::new(connected_agents.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ingested.clone()),
            Box::new(ingest_errors.clone()),
            Box::new(auth_failures.clone()),
            Box::new(cells.clone()),
            Box::new(targets_sent.clone()),
            Box::new(queries_shed.clone()),
            Box::new(under_covered.clone()),
            Box::new(condition_writes.clone()),
            Box::new(conditions_marked.clone()),
            Box::new(condition_writer.clone()),
            Box::new(suspects.clone()),
            Box::new(p50.clone()),
            Box::new(p99.clone()),
            Box::new(error_ratio.clone()),
            Box::new(loss_ratio.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Self {
            registry,
            cell_metrics,
            connected_agents,
            ingested,
            ingest_errors,
            auth_failures,
            cells,
            targets_sent,
            queries_shed,
            under_covered,
            condition_writes,
            conditions_marked,
            condition_writer,
            suspects,
            p50,
            p99,
            error_ratio,
            loss_ratio,
        })
    }

    /// Refreshes the gauges that mirror the state from a snapshot of it (off the owner).
    pub fn refresh(&self, snapshot: &Snapshot) {
        self.connected_agents.set(snapshot.connected_agents() as i64);
        self.cells.set(snapshot.snapshot_cells().len() as i64);
        self.under_covered.set(snapshot.under_covered_nodes() as i64);
        self.suspects.reset();
        for s in &snapshot.suspects {
            self.suspects.with_label_values(&[s.kind.as_str(), s.cause.as_str()]).inc();
        }
        self.p50.reset();
        self.p99.reset();
        self.error_ratio.reset();
        self.loss_ratio.reset();
        if self.cell_metrics == CellMetrics::None {
            return;
        }
        for cell in snapshot.snapshot_cells() {
            let c = cell.view(Stat::P99);
            // Only what agents check now: no series lingers for departed nodes or old targets.
            if !cell.targeted || c.stale {
                continue;
            }
            let labels = [c.src, c.dst];
            if let Some(v) = c.p50_ms {
                self.p50.with_label_values(&labels).set(v / 1000.0);
            }
            if let Some(v) = c.p99_ms {
                self.p99.with_label_values(&labels).set(v / 1000.0);
            }
            self.error_ratio.with_label_values(&labels).set(c.error_ratio);
            if let Some(v) = c.loss_ratio {
                self.loss_ratio.with_label_values(&labels).set(v);
            }
        }
    }

    /// The registry `/metrics` exposes.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
