//! A hand-driven agent stream, as tests and attackers speak it: any hello, any bearer token,
//! any batch, with the aggregator's answers (acks, GoAways, refusals) read back.

use std::time::Duration;

use kubenurse_proto::v1::nurse_client::NurseClient;
use kubenurse_proto::v1::{agent_message, AgentMessage, AggregatorMessage, CheckResult, Hello, Outcome, ResultBatch};
use kubenurse_proto::{CheckKind, PROTOCOL_REVISION};
use kubenurse_testkit::apiserver::{FakeApiServer, TokenRequest};
use kubenurse_testkit::sim::{SimNode, NAMESPACE};
use tokio::sync::mpsc;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic::{Status, Streaming};

/// A token for `sim`'s pod and node with `audience`, as `service_account`, valid for `ttl`.
pub fn token_for(api: &FakeApiServer, sim: &SimNode, audience: &str, service_account: &str, ttl: Duration) -> String {
    api.issue_token(&TokenRequest {
        namespace: NAMESPACE.into(),
        service_account: service_account.into(),
        pod: Some(sim.pod.clone()),
        node: Some(sim.node.clone()),
        audience: audience.into(),
        ttl,
    })
}

/// A hello as `sim`'s agent checking `targets` every second.
pub fn hello(sim: &SimNode, targets: &[&SimNode]) -> Hello {
    Hello {
        protocol: PROTOCOL_REVISION,
        node: sim.node.clone(),
        pod: sim.pod.clone(),
        zone: sim.zone.clone(),
        interval_micros: 1_000_000,
        neighbour_limit: 10,
        targets: targets.iter().map(|t| t.node.clone()).collect(),
        ..Hello::default()
    }
}

/// A batch with one failed path check of `target` (what a framer sends).
pub fn failure(target: &SimNode, round: u64) -> AgentMessage {
    let mut r = CheckResult {
        check: Some(CheckKind::Path { node: target.node.clone() }.to_wire()),
        round,
        duration_micros: 1_000,
        error_kind: "connect_done".into(),
        ..CheckResult::default()
    };
    r.set_outcome(Outcome::Failed);
    AgentMessage { msg: Some(agent_message::Msg::Batch(ResultBatch { results: vec![r], ..ResultBatch::default() })) }
}

/// An open stream.
pub struct Stream {
    tx: mpsc::Sender<AgentMessage>,
    inbound: Streaming<AggregatorMessage>,
}

/// Opens a stream to `grpc_url` with `token` as bearer (if any) and sends `first`; `Err` is
/// the status the aggregator refused the stream with.
pub async fn open(grpc_url: &str, token: Option<&str>, first: Hello) -> Result<Stream, Status> {
    open_with(grpc_url, None, token, first).await
}

/// Same, over TLS with `tls` (a client certificate in it, for `--auth mtls`).
pub async fn open_with(
    grpc_url: &str,
    tls: Option<ClientTlsConfig>,
    token: Option<&str>,
    first: Hello,
) -> Result<Stream, Status> {
    let unknown = |e: tonic::transport::Error| Status::unknown(format!("{e}: {:?}", std::error::Error::source(&e)));
    let mut endpoint = Endpoint::from_shared(grpc_url.to_string()).map_err(unknown)?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(unknown)?;
    }
    let mut client = NurseClient::new(endpoint.connect().await.map_err(unknown)?);
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    tx.send(AgentMessage { msg: Some(agent_message::Msg::Hello(first)) })
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut request = tonic::Request::new(outbound);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().map_err(|_| Status::unknown("token is not metadata"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let inbound = client.report(request).await?.into_inner();
    Ok(Stream { tx, inbound })
}

impl Stream {
    /// The next message within `wait`: `Ok(None)` when none came, `Err` the stream's end status.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<AggregatorMessage>, Status> {
        match tokio::time::timeout(wait, self.inbound.message()).await {
            Err(_) => Ok(None),
            Ok(r) => r,
        }
    }

    /// Sends `msg` and waits up to 3 s for the stream's answer: an ack, a GoAway or its end.
    pub async fn send(&mut self, msg: AgentMessage) -> Result<Option<AggregatorMessage>, Status> {
        // A stream the aggregator ended no longer takes messages: its status says why.
        let _ = self.tx.send(msg).await;
        self.next(Duration::from_secs(3)).await
    }
}

/// The status a stream ends with, whether refused at once or after its hello (then sending a
/// failure of `then`); a status `Unknown` "stream was accepted" when it was not refused.
pub async fn refusal(grpc_url: &str, token: Option<&str>, first: Hello, then: &SimNode) -> Status {
    match open(grpc_url, token, first).await {
        Err(status) => status,
        Ok(mut s) => match s.send(failure(then, 1)).await {
            Err(status) => status,
            Ok(m) => Status::unknown(format!("stream was accepted: {m:?}")),
        },
    }
}
