//! HTTP from tests and the lab: one reqwest client setup, and polling until a condition holds.

use std::time::Duration;

/// Longest any kit request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A plain-HTTP GET for tests: status and body, with a timeout.
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    http_get_with(url, &[]).await
}

/// `s` percent-encoded for a URL's query (everything but RFC 3986's unreserved characters),
/// as a PromQL expression must be to reach Prometheus's HTTP API.
pub fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain-HTTP GET with extra headers (reqwest, no proxy, no redirects followed).
pub async fn http_get_with(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
    let mut req = client()?.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// The kit's HTTP client: plain HTTP only, never a proxy, redirects shown not followed, every
/// request bounded by [`REQUEST_TIMEOUT`].
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_escape_keeps_only_unreserved_characters() {
        assert_eq!(super::query_escape("rate(x{le=\"+Inf\"}[5m])"), "rate%28x%7Ble%3D%22%2BInf%22%7D%5B5m%5D%29");
        assert_eq!(super::query_escape("a-b_c.d~9"), "a-b_c.d~9");
    }
}
