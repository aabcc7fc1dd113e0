//! The API-server client both tiers watch Pods and Nodes with. kube-rs's default client is
//! built for anything a controller may ask; a watch needs less. Its hyper connections read
//! with an adaptive buffer that grows to 400 KiB on the first LIST page and stays that size
//! for the life of the watch connection. Here the buffer is [`WATCH_READ_BUFFER_BYTES`]: an
//! agent with its two watches at 5,000 Nodes went from 21.2 to 19.8 MiB (discovery_scale
//! bench). Everything else is kube-rs's stack: TLS from the config, base URI, auth (token files
//! re-read), extra headers, the config's timeouts. Nothing is retried: the watchers back off by
//! themselves, and kube's retry of 503s for minutes would hide an outage from
//! `neighbourhood_state`.

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt as _;
use tower::{BoxError, ServiceBuilder};

/// Bytes each watch connection reads at a time (hyper's exact read size). A LIST page of
/// 500 cloud Nodes (4 MiB) is then read in 256 reads, which costs nothing next to decoding it.
pub const WATCH_READ_BUFFER_BYTES: usize = 16 * 1024;

/// A client for the discovery watches built from `config`. Configs with a proxy or an exec
/// credential plugin get kube-rs's own stack, which knows how to tunnel and to renew exec
/// certificates, with the default read buffer. Retries are off either way.
pub fn watch_client(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    config.default_retry = false;
    if config.proxy_url.is_some() || config.auth_info.exec.is_some() {
        return kube::Client::try_from(config);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let mut connector = hyper_timeout::TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let hyper = hyper_util::client::legacy::Builder::new(TokioExecutor::new())
        .http1_read_buf_exact_size(WATCH_READ_BUFFER_BYTES)
        .build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(kube::client::ClientBuilder::new(service, config.default_namespace.clone()).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> kube::Config {
        kube::Config::new(url.parse().expect("a URL"))
    }

    #[tokio::test]
    async fn a_plain_config_builds_the_watch_client() {
        assert!(watch_client(config("https://127.0.0.1:6443")).is_ok());
    }

    #[tokio::test]
    async fn a_proxied_config_keeps_kube_rs_stack() {
        let mut c = config("https://127.0.0.1:6443");
        // kube-rs is built without its proxy features here: the same refusal it gives.
        c.proxy_url = Some("http://127.0.0.1:3128".parse().expect("a URL"));
        match watch_client(c) {
            Ok(_) => panic!("a proxy with no proxy support compiled in"),
            Err(err) => assert!(err.to_string().contains("proxy"), "{err}"),
        }
    }
}
