//! The gRPC side: one task per agent stream. The first message must be a hello; batches are
//! bounded; bad input is refused with a counted reason and never ends other streams; on
//! shutdown every stream gets a GoAway so agents reconnect elsewhere.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use kubenurse_common::signal::stopped;
use kubenurse_proto::v1::nurse_server::Nurse;
use kubenurse_proto::v1::{agent_message, aggregator_message, Ack, AgentMessage, AggregatorMessage, GoAway};
use kubenurse_proto::{MAX_MESSAGE_BYTES, MAX_RESULTS_PER_BATCH};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::metrics::AggregatorMetrics;
use crate::owner::StateHandle;
use crate::validate::Rejection;

/// How long a new stream may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The `nurse.v1.Nurse` service.
pub struct Ingest {
    state: StateHandle,
    metrics: Arc<AggregatorMetrics>,
    shutdown: watch::Receiver<bool>,
}

impl Ingest {
    /// A service feeding `state`; streams end with a GoAway when `shutdown` turns true.
    pub fn new(state: StateHandle, metrics: Arc<AggregatorMetrics>, shutdown: watch::Receiver<bool>) -> Self {
        Self { state, metrics, shutdown }
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<AggregatorMessage, Status>> + Send>>;

fn reject(metrics: &AggregatorMetrics, reason: Rejection, n: u64) {
    metrics.ingest_errors.with_label_values(&[&reason.to_string()]).inc_by(n);
}

#[tonic::async_trait]
impl Nurse for Ingest {
    type ReportStream = Outbound;

    async fn report(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Outbound>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<AggregatorMessage, Status>>(16);
        let (state, metrics, mut shutdown) = (self.state.clone(), self.metrics.clone(), self.shutdown.clone());
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
            let node = hello.node.clone();
            if let Err(reason) = state.hello(hello, true).await {
                reject(&metrics, reason, 1);
                let _ = tx.send(Err(Status::invalid_argument(format!("hello refused: {reason}")))).await;
                return;
            }
            info!(%node, ?peer, "agent connected");
            let (mut accepted, mut rejected, mut last_rejection) = (0u64, 0u64, String::new());
            loop {
                let msg = tokio::select! {
                    _ = stopped(&mut shutdown) => {
                        let go_away = GoAway { reason: "aggregator shutting down".into() };
                        let _ = tx.send(Ok(AggregatorMessage { msg: Some(aggregator_message::Msg::GoAway(go_away)) })).await;
                        break;
                    }
                    msg = inbound.message() => msg,
                };
                match msg {
                    Ok(Some(AgentMessage { msg: Some(agent_message::Msg::Hello(h)) })) => {
                        let result = if h.node == node { state.hello(h, false).await } else { Err(Rejection::BadName) };
                        if let Err(reason) = result {
                            reject(&metrics, reason, 1);
                            rejected += 1;
                            last_rejection = format!("hello: {reason}");
                        }
                    }
                    Ok(Some(AgentMessage { msg: Some(agent_message::Msg::Batch(batch)) })) => {
                        if batch.results.len() > MAX_RESULTS_PER_BATCH {
                            reject(&metrics, Rejection::BatchTooLarge, batch.results.len() as u64);
                            rejected += batch.results.len() as u64;
                            last_rejection = Rejection::BatchTooLarge.to_string();
                            continue;
                        }
                        let Some(out) = state.batch(node.clone(), batch).await else { break };
                        accepted += out.accepted;
                        if let Some((reason, _)) = out.rejected.iter().next() {
                            last_rejection = reason.to_string();
                        }
                        rejected += out.rejected.values().sum::<u64>();
                        let ack = Ack { accepted, rejected, last_rejection: last_rejection.clone() };
                        // Acks are advisory: a slow reader misses some, never blocks ingest.
                        let _ = tx.try_send(Ok(AggregatorMessage { msg: Some(aggregator_message::Msg::Ack(ack)) }));
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
            state.disconnect(node.clone()).await;
            info!(%node, accepted, rejected, "agent disconnected");
        });
        let out = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(Response::new(Box::pin(out)))
    }
}

/// Whether tonic refused a message for its size (its decoder reports that as OUT_OF_RANGE or
/// RESOURCE_EXHAUSTED, depending on the version, with this wording).
fn is_too_large(status: &Status) -> bool {
    matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted)
        && status.message().contains("too large")
}
