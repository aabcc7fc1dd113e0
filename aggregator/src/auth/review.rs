//! TokenReview against the API server, with kube-apiserver's own caching rule: accepted tokens
//! are remembered (by hash) for at most [`POSITIVE_CACHE`], refusals never, so a revoked token
//! is refused on its next connect.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use tracing::warn;

use super::{judge, jwt_expiry, AuthFailure, Expectation, TokenClaims};

/// How long an accepted token is believed without asking again.
pub const POSITIVE_CACHE: Duration = Duration::from_secs(10);
/// How long one review or pod lookup may take before the stream is refused as unavailable.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Cached verdicts at most; beyond, expired ones are swept and, failing that, all dropped.
const CACHE_MAX: usize = 50_000;

/// Reviews agents' tokens with the API server.
pub struct TokenReviewer {
    reviews: Api<TokenReview>,
    pods: Api<Pod>,
    expect: Expectation,
    cache: DashMap<[u8; 32], (Instant, TokenClaims)>,
}

impl TokenReviewer {
    /// A reviewer using `client`; agents' pods are looked up in the service account's namespace.
    pub fn new(client: Client, expect: Expectation) -> Self {
        Self {
            reviews: Api::all(client.clone()),
            pods: Api::namespaced(client, &expect.service_account.namespace),
            expect,
            cache: DashMap::new(),
        }
    }

    /// The audience and service account tokens must have.
    pub fn expectation(&self) -> &Expectation {
        &self.expect
    }

    /// What `token` proves, or why it proves nothing.
    pub async fn review(&self, token: &str, now: Instant) -> Result<TokenClaims, AuthFailure> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cache.get(&key) {
            if now.saturating_duration_since(hit.0) < POSITIVE_CACHE {
                return Ok(hit.1.clone());
            }
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.into()), audiences: Some(vec![self.expect.audience.clone()]) },
            ..TokenReview::default()
        };
        let created = tokio::time::timeout(REVIEW_TIMEOUT, self.reviews.create(&PostParams::default(), &review)).await;
        let answer = match created {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                warn!(error = %e, "TokenReview failed: refusing new streams until it answers");
                return Err(AuthFailure::ReviewUnavailable);
            }
            Err(_) => {
                warn!(timeout = ?REVIEW_TIMEOUT, "TokenReview timed out: refusing new streams until it answers");
                return Err(AuthFailure::ReviewUnavailable);
            }
        };
        let mut claims = judge(&answer.status.unwrap_or_default(), &self.expect)?;
        claims.expires_at = jwt_expiry(token);
        if self.cache.len() >= CACHE_MAX {
            self.cache.retain(|_, (at, _)| now.saturating_duration_since(*at) < POSITIVE_CACHE);
            if self.cache.len() >= CACHE_MAX {
                self.cache.clear();
            }
        }
        self.cache.insert(key, (now, claims.clone()));
        Ok(claims)
    }

    /// The node an agent pod runs on (`spec.nodeName`), for tokens that do not name it.
    pub async fn node_of_pod(&self, pod: &str) -> Result<Option<String>, AuthFailure> {
        match tokio::time::timeout(REVIEW_TIMEOUT, self.pods.get_opt(pod)).await {
            Ok(Ok(found)) => Ok(found.and_then(|p| p.spec).and_then(|s| s.node_name)),
            Ok(Err(e)) => {
                warn!(%pod, error = %e, "cannot look up an agent's pod");
                Err(AuthFailure::ReviewUnavailable)
            }
            Err(_) => Err(AuthFailure::ReviewUnavailable),
        }
    }
}
