//! Service-account tokens and TokenReview as kube-apiserver does them: JWT-shaped bound tokens
//! (audience, expiry, pod and node claims), `POST /apis/authentication.k8s.io/v1/tokenreviews`
//! answered `201 Created` with the review's status (`authenticated`, `user` with the
//! `authentication.kubernetes.io/*` extras, `audiences`, or an `error` naming the audiences
//! on a mismatch), and a token invalidated once its pod is gone.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use sha2::{Digest, Sha256};

use super::*;

/// The audience kube-apiserver's own tokens carry (and reviews without audiences check).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// What a token is issued for (`kubectl create token SA --audience A --bound-object-kind Pod`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// Namespace of the service account (and pod).
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// The pod the token is bound to (`None`: a legacy token bound to nothing).
    pub pod: Option<String>,
    /// The node that pod runs on.
    pub node: Option<String>,
    /// The token's audience.
    pub audience: String,
    /// Lifetime.
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub(super) struct Issued {
    request: TokenRequest,
    expires_at: i64,
    jti: String,
    revoked: bool,
}

/// Token settings and issued tokens.
#[derive(Debug, Default)]
pub(super) struct Tokens {
    issued: HashMap<String, Issued>,
    serial: u64,
    /// Whether reviews carry the node-name extra (kube-apiserver ≥ 1.30 does).
    pub(super) without_node_extra: bool,
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Tokens {
    pub(super) fn issue(&mut self, request: &TokenRequest) -> String {
        self.serial += 1;
        let now = unix_now();
        let expires_at = now + request.ttl.as_secs() as i64;
        let jti = format!("fake-jti-{:08}", self.serial);
        let mut k8s = json!({
            "namespace": request.namespace,
            "serviceaccount": {"name": request.service_account, "uid": format!("uid-sa-{}", request.service_account)},
        });
        if let Some(pod) = &request.pod {
            k8s["pod"] = json!({"name": pod, "uid": format!("uid-pod-{pod}")});
        }
        if let Some(node) = &request.node {
            k8s["node"] = json!({"name": node, "uid": format!("uid-node-{node}")});
        }
        let claims = json!({
            "aud": [request.audience], "exp": expires_at, "iat": now, "nbf": now, "jti": jti,
            "iss": API_AUDIENCE, "kubernetes.io": k8s,
            "sub": format!("system:serviceaccount:{}:{}", request.namespace, request.service_account),
        });
        let payload = b64(claims.to_string().as_bytes());
        let signature = b64(&Sha256::digest(format!("{payload}.{}", self.serial).as_bytes()));
        let token = format!("{}.{payload}.{signature}", b64(br#"{"alg":"RS256","kid":"fake"}"#));
        self.issued.insert(token.clone(), Issued { request: request.clone(), expires_at, jti, revoked: false });
        token
    }

    pub(super) fn revoke(&mut self, token: &str) -> bool {
        self.issued.get_mut(token).map(|t| t.revoked = true).is_some()
    }

    /// The status a review of `token` for `audiences` gets; `pod_exists` says whether a bound
    /// pod is still there (a deleted pod invalidates its tokens).
    pub(super) fn review(
        &self,
        token: &str,
        audiences: &[String],
        pod_exists: impl Fn(&str, &str) -> bool,
    ) -> TokenReviewStatus {
        let invalid = |why: &str| TokenReviewStatus {
            authenticated: None,
            error: Some(format!("[invalid bearer token, {why}]")),
            user: Some(UserInfo::default()),
            audiences: None,
        };
        let Some(t) = self.issued.get(token) else {
            return invalid("square/go-jose: compact JWS format must have three parts");
        };
        let targets: Vec<String> = if audiences.is_empty() { vec![API_AUDIENCE.into()] } else { audiences.to_vec() };
        if !targets.contains(&t.request.audience) {
            return invalid(&format!(
                "token audiences [{:?}] is invalid for the target audiences {targets:?}",
                t.request.audience
            ));
        }
        if t.expires_at <= unix_now() {
            return invalid("service account token has expired");
        }
        if t.revoked {
            return invalid("service account token has been invalidated");
        }
        let ns = &t.request.namespace;
        if let Some(pod) = &t.request.pod {
            if !pod_exists(ns, pod) {
                return invalid(&format!("pods \"{pod}\" not found"));
            }
        }
        let mut extra = BTreeMap::from([(
            "authentication.kubernetes.io/credential-id".to_string(),
            vec![format!("JTI={}", t.jti)],
        )]);
        if let Some(pod) = &t.request.pod {
            extra.insert("authentication.kubernetes.io/pod-name".into(), vec![pod.clone()]);
            extra.insert("authentication.kubernetes.io/pod-uid".into(), vec![format!("uid-pod-{pod}")]);
        }
        if let (Some(node), false) = (&t.request.node, self.without_node_extra) {
            extra.insert("authentication.kubernetes.io/node-name".into(), vec![node.clone()]);
            extra.insert("authentication.kubernetes.io/node-uid".into(), vec![format!("uid-node-{node}")]);
        }
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec![t.request.audience.clone()]),
            error: None,
            user: Some(UserInfo {
                username: Some(format!("system:serviceaccount:{ns}:{}", t.request.service_account)),
                uid: Some(format!("uid-sa-{}", t.request.service_account)),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                    "system:authenticated".into(),
                ]),
                extra: Some(extra),
            }),
        }
    }
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
pub(super) async fn create_token_review(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    shared.count("create tokenreviews".into());
    let mut review: TokenReview = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &format!("decoding TokenReview: {e}")),
    };
    let Some(token) = review.spec.token.clone().filter(|t| !t.is_empty()) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "TokenReview.authentication.k8s.io \"\" is invalid: spec.token: Required value",
        );
    };
    let audiences = review.spec.audiences.clone().unwrap_or_default();
    let store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
    let verdict =
        store.tokens.review(&token, &audiences, |ns, pod| store.pods.contains_key(&(ns.to_string(), pod.to_string())));
    drop(store);
    review.status = Some(verdict);
    let mut value = serde_json::to_value(&review).unwrap_or_default();
    value["metadata"] = json!({"creationTimestamp": null});
    (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}
