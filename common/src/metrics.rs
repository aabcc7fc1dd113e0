//! The `/metrics` response: Prometheus text exposition of a registry, the same in every binary.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, Registry, TextEncoder};

/// Content type of the Prometheus text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Encodes every family of `registry` in the text format.
pub fn encode(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// The HTTP answer of `/metrics`: 200 with the exposition, or 500 saying why it failed.
pub fn response(registry: &Registry) -> Response {
    match encode(registry) {
        Ok(body) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_registry() {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("kubenurse_test_total", "A test counter.").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc();
        let text = encode(&registry).unwrap();
        assert!(text.contains("kubenurse_test_total 1"), "{text}");
        assert_eq!(response(&registry).status(), StatusCode::OK);
    }
}
