//! The gRPC side: one task per agent stream. A stream's credentials are checked before it is
//! read; its first message must be a hello for the node they prove; batches are bounded; bad
//! input is refused with a counted reason and never ends other streams. A node has one live
//! stream: a newer one replaces it. A stream lives no longer than its token, and on shutdown
//! every stream gets a GoAway so agents reconnect elsewhere.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures::Stream;
use kubenurse_common::signal::stopped;
use kubenurse_proto::v1::nurse_server::Nurse;
use kubenurse_proto::v1::{agent_message, aggregator_message, Ack, AgentMessage, AggregatorMessage, GoAway, Targets};
use kubenurse_proto::{MAX_MESSAGE_BYTES, MAX_RESULTS_PER_BATCH};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::auth::gate::Gate;
use crate::auth::AuthFailure;
use crate::discovery::Books;
use crate::guard::Connections;
use crate::metrics::AggregatorMetrics;
use crate::owner::{now_micros, StateHandle};
use crate::validate::{bounded_text as bounded, check_batch, Rejection, TargetSet};

/// How long a new stream may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Acks of a stream are cumulative and go out at most this often, unless a result was refused
/// (then at once): an agent sending faster than this gets one ack for several batches. The
/// ack's h2 frame, not the state, was half the aggregator's CPU per result at 10,000 agents.
pub const ACK_EVERY: Duration = Duration::from_secs(1);

/// The live stream of each node: its id and the flag that tells it it was replaced.
#[derive(Default)]
struct LiveStreams {
    next_id: AtomicU64,
    by_node: DashMap<String, (u64, watch::Sender<bool>)>,
}

impl LiveStreams {
    /// Makes a new stream the node's live one, telling the previous one (if any) to end.
    fn claim(&self, node: &str) -> (u64, watch::Receiver<bool>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(false);
        if let Some((_, (_, old))) = self.by_node.remove(node) {
            let _ = old.send(true);
        }
        self.by_node.insert(node.to_string(), (id, tx));
        (id, rx)
    }

    /// Forgets stream `id` of `node`, unless a newer one has replaced it.
    fn release(&self, node: &str, id: u64) {
        self.by_node.remove_if(node, |_, (live, _)| *live == id);
    }
}

/// The `nurse.v1.Nurse` service.
pub struct Ingest {
    state: StateHandle,
    metrics: Arc<AggregatorMetrics>,
    gate: Arc<Gate>,
    live: Arc<LiveStreams>,
    connections: Arc<Connections>,
    shutdown: watch::Receiver<bool>,
    books: Option<Books>,
}

impl Ingest {
    /// A service feeding `state` with what passes `gate`, marking in `connections` the ones
    /// whose hello was accepted; streams end with a GoAway when `shutdown` turns true.
    pub fn new(
        state: StateHandle,
        metrics: Arc<AggregatorMetrics>,
        gate: Arc<Gate>,
        connections: Arc<Connections>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self { state, metrics, gate, live: Arc::default(), connections, shutdown, books: None }
    }

    /// Pushes each agent that asks for them its targets from `books` (pushed discovery).
    pub fn with_targets(mut self, books: Books) -> Self {
        self.books = Some(books);
        self
    }
}

/// The agent's targets from the latest book, unless it has them already.
fn targets_update(books: &Books, node: &str, pod: &str, sent: &mut Option<Targets>) -> Option<AggregatorMessage> {
    let book = books.borrow().clone()?;
    let targets = book.targets_for(node, pod)?;
    if sent.as_ref() == Some(&targets) {
        return None;
    }
    *sent = Some(targets.clone());
    Some(AggregatorMessage { msg: Some(aggregator_message::Msg::Targets(targets)) })
}

type Outbound = Pin<Box<dyn Stream<Item = Result<AggregatorMessage, Status>> + Send>>;

/// One reply as its queue holds it: tokio's channel allocates 32 slots at a time, and a
/// `Status` (about 180 bytes) or an `AggregatorMessage` (about 200, a `Targets` with its own
/// pod inline) per slot made every stream's queue 6 KiB, 60 MiB at 10,000 streams. Boxed, a
/// slot is 16 bytes; a box per ack (at most one a second per stream) is the price.
type QueuedReply = Result<Box<AggregatorMessage>, Box<Status>>;

/// The queue of what goes back to one agent.
struct Replies(mpsc::Sender<QueuedReply>);

impl Replies {
    /// Queues `reply`, waiting while the queue is full; `Err` once the stream is gone.
    async fn send(&self, reply: Result<AggregatorMessage, Status>) -> Result<(), ()> {
        self.0.send(reply.map(Box::new).map_err(Box::new)).await.map_err(|_| ())
    }

    /// Queues `reply` unless the queue is full (acks are advisory).
    fn try_send(&self, reply: Result<AggregatorMessage, Status>) {
        let _ = self.0.try_send(reply.map(Box::new).map_err(Box::new));
    }
}

fn reject(metrics: &AggregatorMetrics, reason: Rejection, n: u64) {
    metrics.ingest_errors.with_label_values(&[&reason.to_string()]).inc_by(n);
}

fn refuse(metrics: &AggregatorMetrics, failure: AuthFailure) -> Status {
    metrics.auth_failures.with_label_values(&[&failure.to_string()]).inc();
    failure.status()
}

fn ack(accepted: u64, rejected: u64, last_rejection: &str) -> Result<AggregatorMessage, Status> {
    let ack = Ack { accepted, rejected, last_rejection: last_rejection.to_string() };
    Ok(AggregatorMessage { msg: Some(aggregator_message::Msg::Ack(ack)) })
}

fn go_away(reason: &str) -> Result<AggregatorMessage, Status> {
    Ok(AggregatorMessage { msg: Some(aggregator_message::Msg::GoAway(GoAway { reason: reason.into() })) })
}

/// How long until `expires_at` (unix seconds); `None` for a credential that does not expire.
fn time_left(expires_at: Option<i64>) -> Option<Duration> {
    let at = expires_at?;
    let left_micros = at.saturating_mul(1_000_000).saturating_sub(now_micros());
    Some(Duration::from_micros(u64::try_from(left_micros).unwrap_or(0)))
}

#[tonic::async_trait]
impl Nurse for Ingest {
    type ReportStream = Outbound;

    async fn report(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Outbound>, Status> {
        let peer = request.remote_addr();
        // Credentials first: nothing an unauthenticated stream sends is read.
        let admission = match self.gate.admit(request.metadata(), request.peer_certs()).await {
            Ok(a) => a,
            Err(failure) => {
                debug!(?peer, reason = %failure, "stream refused");
                return Err(refuse(&self.metrics, failure));
            }
        };
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let tx = Replies(tx);
        let (state, metrics, gate, live) =
            (self.state.clone(), self.metrics.clone(), self.gate.clone(), self.live.clone());
        let mut shutdown = self.shutdown.clone();
        let connections = self.connections.clone();
        let books = self.books.clone();
        tokio::spawn(async move {
            // The hello.
            let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await;
            let hello = match first {
                Ok(Ok(Some(AgentMessage { msg: Some(agent_message::Msg::Hello(h)) }))) => h,
                Ok(Err(status)) => {
                    reject(&metrics, Rejection::NoHello, 1);
                    return debug!(?peer, %status, "stream failed before hello");
                }
                _ => {
                    reject(&metrics, Rejection::NoHello, 1);
                    let _ = tx.send(Err(Status::invalid_argument("the first message must be a hello"))).await;
                    return;
                }
            };
            // Boxed: binding may call the API server, and an inline future would make every
            // stream's task as large as that call for the stream's whole life.
            if let Err(failure) = Box::pin(gate.bind(&admission, &hello)).await {
                warn!(?peer, node = %bounded(&hello.node), pod = %bounded(&hello.pod), reason = %failure, "hello refused: not the node its credentials belong to");
                let _ = tx.send(Err(refuse(&metrics, failure))).await;
                return;
            }
            let (node, mut targets) = (hello.node.clone(), TargetSet::new(&hello.targets));
            let (pod, mut books) = (hello.pod.clone(), books.filter(|_| hello.wants_targets));
            if let Err(reason) = state.hello(hello, true).await {
                reject(&metrics, reason, 1);
                let _ = tx.send(Err(Status::invalid_argument(format!("hello refused: {reason}")))).await;
                return;
            }
            connections.admit(peer);
            let (stream_id, mut replaced) = live.claim(&node);
            info!(%node, ?peer, auth = %gate.mode(), "agent connected");
            let expiry = time_left(admission.expires_at());
            let token_expired = async move {
                match expiry {
                    Some(left) => tokio::time::sleep(left).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(token_expired);
            // Made once a stream, not once a message: each would take the shared flag's lock to
            // register its waiter, and again to remove it, for every message of every stream.
            let (shutdown, replaced) = (stopped(&mut shutdown), stopped(&mut replaced));
            tokio::pin!(shutdown, replaced);
            let (mut accepted, mut rejected, mut last_rejection) = (0u64, 0u64, String::new());
            let mut sent_targets = None;
            // When the last ack went out, and when the next one is due (counts not yet acked).
            let (mut acked_at, mut ack_due) = (None::<Instant>, None::<Instant>);
            if let Some(update) = books.as_ref().and_then(|b| targets_update(b, &node, &pod, &mut sent_targets)) {
                metrics.targets_sent.inc();
                let _ = tx.send(Ok(update)).await;
            }
            loop {
                let msg = tokio::select! {
                    changed = async {
                        match books.as_mut() {
                            Some(b) => b.changed().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        let update = match (&changed, &books) {
                            (Ok(()), Some(b)) => targets_update(b, &node, &pod, &mut sent_targets),
                            _ => None,
                        };
                        if changed.is_err() {
                            books = None;
                        }
                        if let Some(update) = update {
                            metrics.targets_sent.inc();
                            if tx.send(Ok(update)).await.is_err() {
                                break;
                            }
                        }
                        continue;
                    }
                    () = &mut shutdown => {
                        let _ = tx.send(go_away("aggregator shutting down")).await;
                        break;
                    }
                    () = &mut replaced => {
                        info!(%node, "a newer stream of this node replaces this one");
                        let _ = tx.send(go_away("replaced by a newer stream of this node")).await;
                        break;
                    }
                    () = &mut token_expired => {
                        info!(%node, "the stream's token expired: asking the agent to reconnect");
                        let _ = tx.send(go_away("token expired: reconnect with a fresh one")).await;
                        break;
                    }
                    () = async {
                        match ack_due {
                            Some(due) => tokio::time::sleep_until(due.into()).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        tx.try_send(ack(accepted, rejected, &last_rejection));
                        (acked_at, ack_due) = (Some(Instant::now()), None);
                        continue;
                    }
                    msg = inbound.message() => msg,
                };
                match msg {
                    Ok(Some(AgentMessage { msg: Some(agent_message::Msg::Hello(h)) })) => {
                        if h.node != node {
                            warn!(%node, named = %bounded(&h.node), "a stream's hello named another node: ending it");
                            let _ = tx.send(Err(refuse(&metrics, AuthFailure::NodeMismatch))).await;
                            break;
                        }
                        let new_targets = Some(TargetSet::new(&h.targets)).filter(|new| *new != targets);
                        match state.hello(h, false).await {
                            Ok(()) => {
                                if let Some(new) = new_targets {
                                    info!(%node, old = ?targets, new = ?new, "agent changed its targets");
                                    targets = new;
                                }
                            }
                            Err(reason) => {
                                reject(&metrics, reason, 1);
                                rejected += 1;
                                last_rejection = format!("hello: {reason}");
                            }
                        }
                    }
                    Ok(Some(AgentMessage { msg: Some(agent_message::Msg::Batch(batch)) })) => {
                        if batch.results.len() > MAX_RESULTS_PER_BATCH {
                            reject(&metrics, Rejection::BatchTooLarge, batch.results.len() as u64);
                            rejected += batch.results.len() as u64;
                            last_rejection = Rejection::BatchTooLarge.to_string();
                            continue;
                        }
                        // Checked here, on this stream's task; the owner only records.
                        let (checked, refused) = check_batch(batch, &targets);
                        accepted += checked.results.len() as u64;
                        for (reason, n) in &refused {
                            reject(&metrics, *reason, *n);
                            rejected += n;
                            last_rejection = reason.to_string();
                        }
                        if !state.record(node.clone(), checked).await {
                            break;
                        }
                        // At once when a result was refused or nothing was acked for ACK_EVERY;
                        // else the cumulative counts go out when ACK_EVERY has passed.
                        let now = Instant::now();
                        if !refused.is_empty() || acked_at.is_none_or(|at| now - at >= ACK_EVERY) {
                            // Acks are advisory: a slow reader misses some, never blocks ingest.
                            tx.try_send(ack(accepted, rejected, &last_rejection));
                            (acked_at, ack_due) = (Some(now), None);
                        } else if ack_due.is_none() {
                            ack_due = acked_at.map(|at| at + ACK_EVERY);
                        }
                    }
                    Ok(Some(AgentMessage { msg: None })) => {
                        reject(&metrics, Rejection::EmptyMessage, 1);
                    }
                    Ok(None) => break,
                    Err(status) if is_too_large(&status) => {
                        reject(&metrics, Rejection::MessageTooLarge, 1);
                        warn!(%node, %status, "agent sent a message over the limit");
                        let _ = tx
                            .send(Err(Status::resource_exhausted(format!(
                                "message over the {MAX_MESSAGE_BYTES}-byte limit"
                            ))))
                            .await;
                        break;
                    }
                    Err(status) => {
                        // Malformed message, or the connection broke.
                        metrics.ingest_errors.with_label_values(&[crate::validate::MALFORMED_OR_BROKEN]).inc();
                        warn!(%node, %status, "agent stream failed");
                        break;
                    }
                }
            }
            live.release(&node, stream_id);
            state.disconnect(node.clone()).await;
            info!(%node, accepted, rejected, "agent disconnected");
        });
        let out = futures::stream::unfold(rx, |mut rx: mpsc::Receiver<QueuedReply>| async move {
            rx.recv().await.map(|m| (m.map(|m| *m).map_err(|e| *e), rx))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// Whether tonic refused a message for its size (its decoder reports that as OUT_OF_RANGE or
/// RESOURCE_EXHAUSTED, depending on the version, with this wording).
fn is_too_large(status: &Status) -> bool {
    matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted)
        && status.message().contains("too large")
}
