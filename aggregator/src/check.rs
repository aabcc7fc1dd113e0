//! `kubenurse-aggregator check`: reads a running aggregator's API once (or until healthy, up to
//! `--wait`) and answers "is this cluster's network healthy?" with an exit code, for CI
//! pipelines and the chart's `helm test`. The verdict is pure ([`judge`]); the I/O is a plain
//! HTTP/1 GET per document.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::config::GoDuration;
use crate::suspects::{Kind, Suspect};
use crate::views::{CoverageDoc, CoverageRow, StatusDoc};

/// How long one GET may take, connect to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest document read (a 10,000-node coverage list is about 1 MiB).
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Pause between readings while waiting.
pub const POLL_EVERY: Duration = Duration::from_secs(2);
/// Under-covered nodes and suspect examples named in the text summary.
const NAMED: usize = 5;

/// The exit codes, the command's contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// 0: agents stream, coverage is complete, no suspect.
    Healthy,
    /// 1: a suspect, coverage below the limit, or fewer agents than expected.
    Unhealthy,
    /// 2: bad input, or the aggregator cannot be read.
    Error,
}

impl Outcome {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Healthy => 0,
            Self::Unhealthy => 1,
            Self::Error => 2,
        }
    }
}

/// How the verdict is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// A line with the verdict, then one line per problem.
    #[default]
    Text,
    /// One JSON object.
    Json,
}

/// `kubenurse-aggregator check` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The aggregator's HTTP API, e.g. http://kubenurse-aggregator.kubenurse.svc:8080.
    #[arg(long)]
    pub url: String,
    /// Fewer agents streaming than this is unhealthy (0: at least one).
    #[arg(long, default_value_t = 0)]
    pub expect_nodes: usize,
    /// Keep reading until healthy for up to this long before judging (Go duration; 0s: once),
    /// so a fresh install can be gated while its agents connect and fill the window.
    #[arg(long, default_value = "0s", value_parser = parse_wait)]
    pub wait: Duration,
    /// text or json.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    if s == "0" || s == "0s" {
        return Ok(Duration::ZERO);
    }
    s.parse::<GoDuration>().map(|d| d.0)
}

/// Why the aggregator could not be read (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// `--url` is not an `http://host:port` URL.
    #[error("--url {0:?}: {1}")]
    BadUrl(String, String),
    /// Connecting, sending or reading failed, or took over [`REQUEST_TIMEOUT`].
    #[error("GET {0}: {1}")]
    Unreachable(String, String),
    /// An answer other than 200.
    #[error("GET {0}: HTTP {1}")]
    Status(String, u16),
    /// An answer that is not the documented JSON.
    #[error("GET {0}: not the aggregator's answer: {1}")]
    BadAnswer(String, String),
}

/// Where the API is: parsed once from `--url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiUrl {
    host: String,
    port: u16,
    base: String,
}

impl ApiUrl {
    /// Parses `http://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Self, CheckError> {
        let bad = |why: &str| CheckError::BadUrl(url.to_string(), why.to_string());
        let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// URLs (the aggregator's API port is plain HTTP)"));
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| bad("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let base = uri.path().trim_end_matches('/').to_string();
        Ok(Self { host, port: uri.port_u16().unwrap_or(80), base })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}:{}{}{path}", self.host, self.port, self.base)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CheckError> {
        let url = self.url(path);
        let body = tokio::time::timeout(REQUEST_TIMEOUT, self.fetch(path))
            .await
            .map_err(|_| CheckError::Unreachable(url.clone(), format!("no answer within {REQUEST_TIMEOUT:?}")))??;
        serde_json::from_slice(&body).map_err(|e| CheckError::BadAnswer(url, e.to_string()))
    }

    async fn fetch(&self, path: &str) -> Result<Bytes, CheckError> {
        let url = self.url(path);
        let unreachable = |e: &dyn std::fmt::Display| CheckError::Unreachable(url.clone(), e.to_string());
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| unreachable(&e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| unreachable(&e))?;
        let connection = tokio::spawn(connection);
        let authority = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let request = http::Request::get(format!("{}{path}", self.base))
            .header(http::header::HOST, format!("{authority}:{}", self.port))
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable(&e))?;
        let response = sender.send_request(request).await.map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        if status != 200 {
            connection.abort();
            return Err(CheckError::Status(url, status));
        }
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES).collect().await.map_err(|e| unreachable(&*e))?;
        connection.abort();
        Ok(body.to_bytes())
    }
}

#[derive(Debug, Deserialize)]
struct SuspectsDoc {
    suspects: Vec<Suspect>,
}

/// One reading of the aggregator.
#[derive(Debug, Clone)]
pub struct Reading {
    /// `/api/v1/status`.
    pub status: StatusDoc,
    /// `/api/v1/suspects`.
    pub suspects: Vec<Suspect>,
    /// `/api/v1/coverage`.
    pub coverage: CoverageDoc,
}

/// Reads the three documents.
pub async fn read(api: &ApiUrl) -> Result<Reading, CheckError> {
    let status = api.get::<StatusDoc>("/api/v1/status").await?;
    let suspects = api.get::<SuspectsDoc>("/api/v1/suspects").await?.suspects;
    let coverage = api.get::<CoverageDoc>("/api/v1/coverage").await?;
    Ok(Reading { status, suspects, coverage })
}

/// The answer, printed as text or JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Which exit code.
    pub outcome: Outcome,
    /// Agents streaming.
    pub agents: usize,
    /// `--expect-nodes` (0: at least one).
    pub expected_agents: usize,
    /// The aggregator's suspects.
    pub suspects: Vec<Suspect>,
    /// Nodes checked by fewer agents than expected.
    pub under_covered: Vec<CoverageRow>,
    /// One line per problem, for people.
    pub problems: Vec<String>,
}

fn name_of(s: &Suspect) -> String {
    match s.kind {
        Kind::Zone => format!("zone {}", s.zone.as_deref().unwrap_or("?")),
        Kind::Cluster => "the cluster".into(),
        _ => format!("node {}", s.node.as_deref().unwrap_or("?")),
    }
}

/// Judges one reading (pure).
pub fn judge(reading: &Reading, expect_nodes: usize) -> Verdict {
    let agents = reading.status.connected_agents;
    let mut problems = Vec::new();
    if agents == 0 {
        problems.push("no agent is streaming to the aggregator".to_string());
    } else if agents < expect_nodes {
        problems.push(format!("{agents} agents stream to the aggregator, {expect_nodes} expected"));
    }
    for s in &reading.suspects {
        let e = &s.evidence;
        let examples = e.examples.iter().take(NAMED).cloned().collect::<Vec<_>>().join(", ");
        problems.push(format!(
            "suspect {} ({} {:?}): {} of {} cells bad ({:.0} %), e.g. {examples}",
            name_of(s),
            s.kind.as_str(),
            s.cause,
            e.bad_cells,
            e.cells,
            e.ratio * 100.0
        ));
    }
    let under = &reading.coverage.under_covered;
    if !under.is_empty() {
        let named = under
            .iter()
            .take(NAMED)
            .map(|r| format!("{} ({} of {})", r.node, r.checkers, r.expected))
            .collect::<Vec<_>>();
        let more = if under.len() > NAMED { format!(" and {} more", under.len() - NAMED) } else { String::new() };
        problems.push(format!(
            "{} nodes checked by fewer agents than the limit asks: {}{more}",
            under.len(),
            named.join(", ")
        ));
    }
    Verdict {
        outcome: if problems.is_empty() { Outcome::Healthy } else { Outcome::Unhealthy },
        agents,
        expected_agents: expect_nodes,
        suspects: reading.suspects.clone(),
        under_covered: under.clone(),
        problems,
    }
}

/// What the command prints for `verdict`.
pub fn render(verdict: &Verdict, output: Output) -> String {
    match output {
        Output::Json => serde_json::to_string(verdict).unwrap_or_default() + "\n",
        Output::Text => {
            let mut text = match verdict.outcome {
                Outcome::Healthy => {
                    format!("healthy: {} agents streaming, every node covered, no suspect\n", verdict.agents)
                }
                _ => format!("unhealthy: {} problem(s)\n", verdict.problems.len()),
            };
            for p in &verdict.problems {
                text.push_str(&format!("  - {p}\n"));
            }
            text
        }
    }
}

/// What the command prints when the aggregator cannot be read.
pub fn render_error(error: &CheckError, output: Output) -> String {
    match output {
        Output::Json => serde_json::json!({"outcome": Outcome::Error, "error": error.to_string()}).to_string() + "\n",
        Output::Text => format!("error: {error}\n"),
    }
}

/// Runs the check: the outcome and the text to print (stdout).
pub async fn run(args: &CheckArgs) -> (Outcome, String) {
    let CheckArgs { url, expect_nodes, wait, output } = args;
    let api = match ApiUrl::parse(url) {
        Ok(api) => api,
        Err(e) => return (Outcome::Error, render_error(&e, *output)),
    };
    let deadline = tokio::time::Instant::now() + *wait;
    loop {
        let last = match read(&api).await {
            Ok(reading) => Ok(judge(&reading, *expect_nodes)),
            Err(e) => Err(e),
        };
        let done = matches!(&last, Ok(v) if v.outcome == Outcome::Healthy);
        if done || tokio::time::Instant::now() + POLL_EVERY > deadline {
            return match last {
                Ok(v) => (v.outcome, render(&v, *output)),
                Err(e) => (Outcome::Error, render_error(&e, *output)),
            };
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suspects::{Cause, Evidence};

    fn reading(agents: usize, suspects: Vec<Suspect>, under: Vec<CoverageRow>) -> Reading {
        Reading {
            status: StatusDoc { nodes: 4, connected_agents: agents, cells: 12, results_ingested: 99, suspects: 0 },
            suspects,
            coverage: CoverageDoc { complete: under.is_empty(), under_covered: under.clone(), nodes: under },
        }
    }

    fn refusing(node: &str) -> Suspect {
        Suspect {
            kind: Kind::Destination,
            node: Some(node.into()),
            zone: None,
            cause: Cause::Errors,
            score: 3.0,
            evidence: Evidence { bad_cells: 3, cells: 3, ratio: 1.0, examples: vec![format!("a->{node}")], note: None },
        }
    }

    #[test]
    fn healthy_only_with_agents_coverage_and_no_suspect() {
        let v = judge(&reading(4, vec![], vec![]), 4);
        assert_eq!((v.outcome, v.problems.len()), (Outcome::Healthy, 0), "{v:?}");
        assert_eq!(judge(&reading(4, vec![], vec![]), 0).outcome, Outcome::Healthy, "0: any number");
        let none = judge(&reading(0, vec![], vec![]), 0);
        assert_eq!(none.outcome, Outcome::Unhealthy, "no agent is never healthy");
        let few = judge(&reading(3, vec![], vec![]), 4);
        assert_eq!(few.problems, ["3 agents stream to the aggregator, 4 expected"]);
    }

    #[test]
    fn a_suspect_is_named_with_its_evidence() {
        let v = judge(&reading(4, vec![refusing("node-03")], vec![]), 4);
        assert_eq!(v.outcome, Outcome::Unhealthy);
        assert_eq!(v.problems.len(), 1);
        assert!(v.problems[0].contains("node node-03 (destination Errors)"), "{}", v.problems[0]);
        assert!(v.problems[0].contains("3 of 3 cells bad (100 %), e.g. a->node-03"), "{}", v.problems[0]);
        let text = render(&v, Output::Text);
        assert!(text.starts_with("unhealthy: 1 problem(s)\n  - suspect node node-03"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&render(&v, Output::Json)).unwrap_or_default();
        assert_eq!(json["outcome"], "unhealthy");
        assert_eq!(json["suspects"][0]["node"], "node-03");
    }

    #[test]
    fn under_coverage_names_a_few_nodes() {
        let under = (0..7).map(|i| CoverageRow { node: format!("n{i}"), checkers: 1, expected: 2 }).collect();
        let v = judge(&reading(8, vec![], under), 8);
        assert_eq!(v.outcome, Outcome::Unhealthy);
        assert_eq!(
            v.problems,
            ["7 nodes checked by fewer agents than the limit asks: n0 (1 of 2), n1 (1 of 2), n2 (1 of 2), n3 (1 of 2), n4 (1 of 2) and 2 more"]
        );
    }

    #[test]
    fn urls_are_parsed_once_and_only_http() {
        let api = ApiUrl::parse("http://agg.kubenurse.svc:8080/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(api.url("/api/v1/status"), "http://agg.kubenurse.svc:8080/api/v1/status");
        let prefixed = ApiUrl::parse("http://127.0.0.1/kubenurse").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prefixed.url("/api/v1/status"), "http://127.0.0.1:80/kubenurse/api/v1/status");
        for bad in ["https://agg:8080", "agg:8080", "http://", "not a url"] {
            assert!(matches!(ApiUrl::parse(bad), Err(CheckError::BadUrl(..))), "{bad}");
        }
    }

    #[test]
    fn the_documents_read_back_as_the_aggregator_writes_them() {
        let suspects = serde_json::json!({ "suspects": [refusing("node-03")] }).to_string();
        let doc: SuspectsDoc = serde_json::from_str(&suspects).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(doc.suspects, [refusing("node-03")]);
        let status = serde_json::to_value(reading(2, vec![], vec![]).status).unwrap_or_default();
        let mut served = status.clone();
        served["auth"] = "none".into();
        let back: StatusDoc = serde_json::from_value(served).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serde_json::to_value(back).unwrap_or_default(), status);
        assert!(serde_json::from_str::<CoverageDoc>(r#"{"complete": true}"#).is_err(), "a partial answer is refused");
    }

    #[test]
    fn wait_takes_zero_or_a_go_duration() {
        assert_eq!(parse_wait("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_wait("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_wait("soon").is_err());
    }
}
