//! HTTP from tests and the lab: one reqwest client setup, and polling until a condition holds.

use std::time::Duration;

/// Longest any kit request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A plain-HTTP GET for tests: status and body, with a timeout.
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    http_get_with(url, &[]).await
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
