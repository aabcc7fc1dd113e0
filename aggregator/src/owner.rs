//! The one task that owns the state: ingest streams send it commands over a bounded channel;
//! it never awaits while holding the state, so no lock exists at all. HTTP handlers read the
//! [`Snapshot`] it publishes at the end of a tick when one was asked for (and the last one's
//! CPU share allows), never the state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kubenurse_proto::v1::Hello;
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::AggregatorMetrics;
use crate::snapshot::Snapshot;
use crate::state::{ClusterState, Settings};
use crate::validate::{CheckedBatch, Rejection};
use crate::views::{self, StatusDoc};

/// Commands queued to the owner; bounded so a flood slows its senders instead of growing memory.
pub const COMMAND_QUEUE: usize = 4096;

type Query = Box<dyn FnOnce(&ClusterState, i64) + Send>;

/// Small, since every stream's task holds one while it waits for room in the queue: a hello
/// (192 bytes inline) is boxed.
enum Command {
    Hello { hello: Box<Hello>, new_stream: bool, reply: oneshot::Sender<Result<(), Rejection>> },
    Record { node: String, batch: CheckedBatch },
    Disconnect { node: String },
    Query(Query),
}

/// Now, unix µs.
pub fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// A cloneable handle to the owner task.
#[derive(Clone)]
pub struct StateHandle {
    tx: mpsc::Sender<Command>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    status: watch::Receiver<Arc<StatusDoc>>,
    wanted: Arc<AtomicBool>,
    tick_micros: i64,
}

impl StateHandle {
    /// Starts the owner with `settings`, refreshing `metrics`' counters as it goes.
    pub fn spawn(settings: Settings, metrics: Arc<AggregatorMetrics>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Command>(COMMAND_QUEUE);
        let tick_micros = settings.tick_micros.max(10_000);
        let (publish, snapshots) = watch::channel(Arc::new(Snapshot::default()));
        let (publish_status, status) = watch::channel(Arc::new(views::status(&ClusterState::new(settings.clone()))));
        let wanted = Arc::new(AtomicBool::new(true));
        let asked = wanted.clone();
        tokio::spawn(async move {
            let tick_every = Duration::from_micros(tick_micros as u64);
            let mut state = ClusterState::new(settings);
            let mut tick = tokio::time::interval(tick_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        None => return,
                        Some(Command::Hello { hello, new_stream, reply }) => {
                            let _ = reply.send(state.hello(*hello, now_micros(), new_stream));
                        }
                        Some(Command::Record { node, batch }) => {
                            let out = state.record_checked(&node, batch, now_micros());
                            metrics.ingested.inc_by(out.accepted);
                            for (reason, n) in &out.rejected {
                                metrics.ingest_errors.with_label_values(&[&reason.to_string()]).inc_by(*n);
                            }
                        }
                        Some(Command::Disconnect { node }) => state.disconnect(&node, now_micros()),
                        Some(Command::Query(f)) => f(&state, now_micros()),
                    },
                    _ = tick.tick() => {
                        let now = now_micros();
                        state.tick(now);
                        // A few counts, every tick: status polls never cost a snapshot.
                        publish_status.send_replace(Arc::new(views::status(&state)));
                        // Only when someone asked since the last one (an idle API costs
                        // nothing), and once the last one's lifetime is nearly over (a
                        // snapshot's cost is held to its CPU share).
                        let due = {
                            let last = publish.borrow();
                            now - last.at >= last.lifetime_micros(tick_micros) - tick_micros / 2
                        };
                        if due && asked.swap(false, Ordering::Relaxed) {
                            let old = publish.send_replace(Arc::new(Snapshot::take(&state, now)));
                            // Freeing 100,000 cells takes tens of ms: not on the owner.
                            tokio::task::spawn_blocking(move || drop(old));
                        }
                    }
                }
            }
        });
        Self { tx, snapshots, status, wanted, tick_micros }
    }

    /// The latest snapshot, no older than its lifetime (a tick, or longer for a snapshot that
    /// cost more than its CPU share, see [`Snapshot::lifetime_micros`]): a newer one is asked
    /// for every time, and awaited (about a tick) when the latest has outlived it. `None` if
    /// the owner is gone.
    pub async fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.wanted.store(true, Ordering::Relaxed);
        let mut rx = self.snapshots.clone();
        let latest = rx.borrow_and_update().clone();
        if now_micros() - latest.at <= latest.lifetime_micros(self.tick_micros) {
            return Some(latest);
        }
        let wait = Duration::from_micros(2 * self.tick_micros as u64) + Duration::from_secs(1);
        tokio::time::timeout(wait, rx.changed()).await.ok()?.ok()?;
        let fresh = rx.borrow().clone();
        Some(fresh)
    }

    /// `/api/v1/status` as of the last tick (without `auth`); `None` if the owner is gone.
    pub fn status(&self) -> Option<Arc<StatusDoc>> {
        (!self.tx.is_closed()).then(|| self.status.borrow().clone())
    }

    /// Registers a hello; `new_stream` for a stream's first.
    pub async fn hello(&self, hello: Hello, new_stream: bool) -> Result<(), Rejection> {
        let (reply, rx) = oneshot::channel();
        let hello = Box::new(hello);
        self.send(Command::Hello { hello, new_stream, reply }).await.map_err(|()| Rejection::StateUnavailable)?;
        rx.await.map_err(|_| Rejection::StateUnavailable)?
    }

    /// Queues a checked batch of `node` for recording (waits only while the queue is full).
    /// `false` if the owner is gone.
    pub async fn record(&self, node: String, batch: CheckedBatch) -> bool {
        self.send(Command::Record { node, batch }).await.is_ok()
    }

    /// Queues `command` once there is room. Every stream's task holds this future while it
    /// waits, and tokio's send future (command inline, 400 bytes of waiting) made each task
    /// 2.9 KiB, 29 MiB at 10,000 streams: room is taken at once when there is some, and only a
    /// wait for it is boxed.
    async fn send(&self, command: Command) -> Result<(), ()> {
        let permit = match self.tx.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(())) => return Err(()),
            Err(mpsc::error::TrySendError::Full(())) => Box::pin(self.tx.reserve()).await.map_err(|_| ())?,
        };
        permit.send(command);
        Ok(())
    }

    /// Notes that a stream of `node` ended.
    pub async fn disconnect(&self, node: String) {
        let _ = self.send(Command::Disconnect { node }).await;
    }

    /// Runs `f` on the state; `None` if the owner is gone.
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ClusterState, i64) -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        let job: Query = Box::new(move |s, now| {
            let _ = reply.send(f(s, now));
        });
        self.send(Command::Query(job)).await.ok()?;
        rx.await.ok()
    }
}
