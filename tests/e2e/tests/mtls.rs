//! `--auth mtls`: agents prove their node with a client certificate whose DNS name is the node;
//! the aggregator checks the chain (TLS) and the name against the hello. Real agents fill the
//! matrix; another node's certificate and no certificate get nothing in.

use std::path::PathBuf;
use std::time::Duration;

use kubenurse_aggregator::config::AuthConfig;
use kubenurse_aggregator::state::Settings;
use kubenurse_lab::aggregator::{AggregatorOptions, LocalAggregator};
use kubenurse_lab::cluster::{ClusterSpec, LocalCluster};
use kubenurse_lab::impostor::{failure, hello, open_with};
use kubenurse_testkit::http::{eventually, http_get};
use kubenurse_testkit::pki::{write_file, TestCa};
use kubenurse_testkit::sim::SimNode;
use serde_json::Value;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_the_node() -> anyhow::Result<()> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("auth-mtls");
    let _ = std::fs::remove_dir_all(&dir);
    let subnet = 86;
    let ip = format!("127.0.{subnet}.254");
    let server_ca = TestCa::new("aggregator-ca")?;
    let server = server_ca.leaf(&[ip.as_str()])?;
    let server_ca_file = write_file(&dir, "aggregator-ca.crt", &server_ca.cert_pem())?;
    let agents_ca = TestCa::new("agents-ca")?;
    let certs = dir.join("client-certs");
    let nodes: Vec<SimNode> = (1..=3).map(|i| SimNode::new(subnet, i)).collect();
    for n in &nodes {
        let leaf = agents_ca.leaf(&[n.node.as_str()])?;
        write_file(&certs, &format!("{}.crt", n.node), &leaf.cert_pem)?;
        write_file(&certs, &format!("{}.key", n.node), &leaf.key_pem)?;
    }
    let options = AggregatorOptions {
        tls: Some((server.cert_pem.clone().into_bytes(), server.key_pem.clone().into_bytes())),
        auth: AuthConfig::Mtls { client_ca_pem: agents_ca.cert_pem().into_bytes() },
        kube: None,
        discovery: None,
        conditions: None,
    };
    let settings = Settings { tick_micros: 100_000, ..Settings::default() };
    let agg =
        LocalAggregator::start_with(format!("{ip}:50051").parse()?, format!("{ip}:18080").parse()?, settings, options)
            .await?;
    let url = format!("https://{ip}:50051");
    let spec = ClusterSpec {
        nodes: 3,
        subnet,
        port: 18080,
        interval: "500ms".into(),
        limit: 10,
        // No API server for this aggregator: the agents discover for themselves.
        env: vec![
            ("KUBENURSE_DISCOVERY".into(), "local".into()),
            ("KUBENURSE_AGGREGATOR_URL".into(), url.clone()),
            ("KUBENURSE_AGGREGATOR_CA".into(), server_ca_file.display().to_string()),
        ],
        client_cert_dir: Some(certs.clone()),
        ..ClusterSpec::default()
    };
    let cluster = LocalCluster::start(&spec, &dir).await?;
    let result = async {
        let (_, status) = agg.get_json("/api/v1/status").await?;
        assert_eq!(status["auth"], "mtls");
        let matrix = format!("{}/api/v1/matrix", agg.url());
        eventually("all 6 cells from certified agents", Duration::from_secs(20), || {
            let matrix = matrix.clone();
            async move {
                let (_, body) = http_get(&matrix).await.ok()?;
                let m: Value = serde_json::from_str(&body).ok()?;
                (m["cells"].as_array()?.len() == 6).then_some(())
            }
        })
        .await?;
        let tls = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(server_ca.cert_pem()));
        // node-02's certificate saying hello as node-01.
        let (key, crt) = (std::fs::read(certs.join("node-02.key"))?, std::fs::read(certs.join("node-02.crt"))?);
        let with_cert = tls().identity(Identity::from_pem(crt, key));
        let refused = match open_with(&url, Some(with_cert), None, hello(&nodes[0], &[&nodes[2]])).await {
            Err(status) => status,
            Ok(mut s) => {
                s.send(failure(&nodes[2], 1)).await.err().unwrap_or_else(|| tonic::Status::unknown("accepted"))
            }
        };
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert_eq!(agg.auth_failures("node_mismatch").await?, 1.0);
        // No certificate at all: the TLS handshake fails, nothing is read.
        let none = open_with(&url, Some(tls()), None, hello(&nodes[0], &[&nodes[2]])).await;
        assert!(none.is_err(), "a stream without a client certificate must fail");
        // A certificate from another CA for the right node: refused by TLS too.
        let stranger = TestCa::new("someone-else")?.leaf(&[nodes[0].node.as_str()])?;
        let foreign = tls().identity(Identity::from_pem(stranger.cert_pem, stranger.key_pem));
        let foreign = match open_with(&url, Some(foreign), None, hello(&nodes[0], &[&nodes[2]])).await {
            Err(status) => status,
            Ok(mut s) => {
                s.send(failure(&nodes[2], 1)).await.err().unwrap_or_else(|| tonic::Status::unknown("accepted"))
            }
        };
        // TLS 1.3 sends the client's certificate after the handshake looks done to the client:
        // the refusal shows as the UnknownCA alert or as the connection dropped, never as a
        // stream that was taken.
        assert_ne!(foreign.message(), "accepted", "{foreign:?}");
        let (_, m) = agg.get_json("/api/v1/matrix").await?;
        let cells = m["cells"].as_array().cloned().unwrap_or_default();
        assert_eq!(cells.len(), 6, "no impostor cell: {m}");
        anyhow::Ok(())
    }
    .await;
    cluster.stop().await?;
    agg.stop().await?;
    result
}
