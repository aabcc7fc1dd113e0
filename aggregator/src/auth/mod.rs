//! Who may stream results: every stream proves which node's agent it is before its hello is
//! believed. The decisions here are pure (a TokenReview status in, a verdict out); the I/O
//! lives in [`review`] (TokenReview and pod lookups) and [`mtls`] (client certificates).

pub mod gate;
pub mod mtls;
pub mod review;

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::TokenReviewStatus;

/// The audience agents' projected tokens carry unless `--auth-audience` says otherwise.
pub const DEFAULT_AUDIENCE: &str = "kubenurse-aggregator";

/// How streams are authenticated (`--auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Projected service-account tokens, checked with the API server's TokenReview.
    #[value(name = "tokenreview")]
    TokenReview,
    /// Client certificates whose DNS name is the node's.
    #[value(name = "mtls")]
    Mtls,
    /// Nobody is checked: anyone reaching the port can feed the matrix.
    #[value(name = "none")]
    None,
}

impl AuthMode {
    /// The name `--auth` takes and `/api/v1/status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenReview => "tokenreview",
            Self::Mtls => "mtls",
            Self::None => "none",
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The agents' service account, `namespace:name` as `--auth-service-account` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Its namespace (also where the agents' pods are).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ServiceAccount {
    /// The user name TokenReview reports for its tokens.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl FromStr for ServiceAccount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (namespace, name) = s.split_once(':').ok_or("expected namespace:name")?;
        for part in [namespace, name] {
            if !kubenurse_proto::kind::is_node_name(part) {
                return Err(format!("{part:?} is not a Kubernetes object name"));
            }
        }
        Ok(Self { namespace: namespace.into(), name: name.into() })
    }
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.namespace, self.name)
    }
}

/// Why a stream was refused; also the `reason` label of the auth-failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthFailure {
    /// No `authorization: Bearer …` metadata.
    #[error("no_token")]
    NoToken,
    /// The API server does not authenticate the token (unknown, expired, revoked, malformed).
    #[error("invalid_token")]
    InvalidToken,
    /// The token is not meant for this aggregator.
    #[error("wrong_audience")]
    WrongAudience,
    /// The token belongs to another service account than the agents'.
    #[error("wrong_service_account")]
    WrongServiceAccount,
    /// The token (or certificate) belongs to another node or pod than the hello names.
    #[error("node_mismatch")]
    NodeMismatch,
    /// The TokenReview API (or the pod lookup) could not answer.
    #[error("review_unavailable")]
    ReviewUnavailable,
    /// No client certificate, or one not valid for the hello's node.
    #[error("bad_client_cert")]
    BadClientCert,
}

impl AuthFailure {
    /// Every reason, so their counters exist (at 0) before the first refusal.
    pub const ALL: [AuthFailure; 7] = [
        AuthFailure::NoToken,
        AuthFailure::InvalidToken,
        AuthFailure::WrongAudience,
        AuthFailure::WrongServiceAccount,
        AuthFailure::NodeMismatch,
        AuthFailure::ReviewUnavailable,
        AuthFailure::BadClientCert,
    ];

    /// The gRPC status an agent gets: it says which check failed, never the token.
    pub fn status(self) -> tonic::Status {
        let message = format!("stream refused: {self}");
        match self {
            Self::NoToken | Self::InvalidToken | Self::WrongAudience | Self::BadClientCert => {
                tonic::Status::unauthenticated(message)
            }
            Self::WrongServiceAccount | Self::NodeMismatch => tonic::Status::permission_denied(message),
            Self::ReviewUnavailable => tonic::Status::unavailable(message),
        }
    }
}

/// Extra keys kube-apiserver puts into a service-account token's TokenReview user.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The node the pod runs on (Kubernetes ≥ 1.30 with node-bound tokens).
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// What a token proves about its holder, once TokenReview accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The pod the token is bound to.
    pub pod: Option<String>,
    /// The node that pod runs on, when the cluster says so in the token.
    pub node: Option<String>,
    /// When the token stops being valid (unix seconds), from its `exp` claim.
    pub expires_at: Option<i64>,
}

/// What a TokenReview must say for a stream to be accepted.
#[derive(Debug, Clone)]
pub struct Expectation {
    /// The audience the token must carry.
    pub audience: String,
    /// The agents' service account.
    pub service_account: ServiceAccount,
}

/// Judges a TokenReview answer: authenticated, for our audience, as the agents' service
/// account, bound to a pod.
pub fn judge(status: &TokenReviewStatus, expect: &Expectation) -> Result<TokenClaims, AuthFailure> {
    if status.authenticated != Some(true) {
        // kube-apiserver reports an audience mismatch as an unauthenticated token whose error
        // names the audiences.
        let error = status.error.as_deref().unwrap_or_default();
        return Err(if error.contains("audience") { AuthFailure::WrongAudience } else { AuthFailure::InvalidToken });
    }
    // An API server that ignored spec.audiences must not let another audience's token in.
    if !status.audiences.as_ref().is_some_and(|a| a.contains(&expect.audience)) {
        return Err(AuthFailure::WrongAudience);
    }
    let user = status.user.as_ref().ok_or(AuthFailure::InvalidToken)?;
    if user.username.as_deref() != Some(expect.service_account.username().as_str()) {
        return Err(AuthFailure::WrongServiceAccount);
    }
    let extra = |key: &str| user.extra.as_ref().and_then(|e| e.get(key)).and_then(|v| v.first()).cloned();
    let claims = TokenClaims { pod: extra(EXTRA_POD_NAME), node: extra(EXTRA_NODE_NAME), expires_at: None };
    // A legacy (secret-based) token is bound to no pod, so it proves no node.
    if claims.pod.is_none() && claims.node.is_none() {
        return Err(AuthFailure::NodeMismatch);
    }
    Ok(claims)
}

/// Whether a hello's node and pod are the ones the token is bound to; `pod_node` is the
/// `spec.nodeName` of the token's pod, looked up when the token does not name its node.
pub fn binds(claims: &TokenClaims, pod_node: Option<&str>, hello_node: &str, hello_pod: &str) -> bool {
    let node = claims.node.as_deref().or(pod_node);
    node == Some(hello_node) && claims.pod.as_deref().is_none_or(|p| p == hello_pod)
}

/// The `exp` claim (unix seconds) of a JWT, read without checking the signature: only called
/// on a token the API server has just authenticated.
pub fn jwt_expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()
}

/// The bearer token of an `authorization` header value, if it is one.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn expect() -> Expectation {
        Expectation { audience: "kubenurse-aggregator".into(), service_account: "kubenurse:agent".parse().unwrap() }
    }

    fn accepted(user: &str, extra: &[(&str, &str)]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec!["kubenurse-aggregator".into()]),
            user: Some(UserInfo {
                username: Some(user.into()),
                extra: Some(
                    extra.iter().map(|(k, v)| (k.to_string(), vec![v.to_string()])).collect::<BTreeMap<_, _>>(),
                ),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    #[test]
    fn a_bound_agent_token_is_accepted_with_its_pod_and_node() {
        let s = accepted(
            "system:serviceaccount:kubenurse:agent",
            &[(EXTRA_POD_NAME, "kubenurse-abc"), (EXTRA_NODE_NAME, "node-01")],
        );
        let claims = judge(&s, &expect()).unwrap();
        assert_eq!((claims.pod.as_deref(), claims.node.as_deref()), (Some("kubenurse-abc"), Some("node-01")));
        assert!(binds(&claims, None, "node-01", "kubenurse-abc"));
        assert!(!binds(&claims, None, "node-02", "kubenurse-abc"));
        assert!(!binds(&claims, None, "node-01", "kubenurse-other"));
    }

    #[test]
    fn without_the_node_extra_the_pods_node_decides() {
        let s = accepted("system:serviceaccount:kubenurse:agent", &[(EXTRA_POD_NAME, "kubenurse-abc")]);
        let claims = judge(&s, &expect()).unwrap();
        assert!(binds(&claims, Some("node-01"), "node-01", "kubenurse-abc"));
        assert!(!binds(&claims, Some("node-02"), "node-01", "kubenurse-abc"));
        assert!(!binds(&claims, None, "node-01", "kubenurse-abc"));
    }

    #[test]
    fn every_wrong_answer_has_its_reason() {
        let e = expect();
        let mut s = accepted("system:serviceaccount:kubenurse:other", &[(EXTRA_POD_NAME, "p")]);
        assert_eq!(judge(&s, &e), Err(AuthFailure::WrongServiceAccount));
        s = accepted("system:serviceaccount:kubenurse:agent", &[]);
        assert_eq!(judge(&s, &e), Err(AuthFailure::NodeMismatch), "a token bound to no pod proves no node");
        s = accepted("system:serviceaccount:kubenurse:agent", &[(EXTRA_POD_NAME, "p")]);
        s.audiences = Some(vec!["https://kubernetes.default.svc".into()]);
        assert_eq!(judge(&s, &e), Err(AuthFailure::WrongAudience));
        s.audiences = None;
        assert_eq!(judge(&s, &e), Err(AuthFailure::WrongAudience));
        let refused = |error: &str| TokenReviewStatus {
            authenticated: Some(false),
            error: Some(error.into()),
            ..TokenReviewStatus::default()
        };
        assert_eq!(
            judge(&refused("token audiences [\"x\"] is invalid for the target audiences [\"y\"]"), &e),
            Err(AuthFailure::WrongAudience)
        );
        assert_eq!(judge(&refused("invalid bearer token"), &e), Err(AuthFailure::InvalidToken));
        assert_eq!(judge(&TokenReviewStatus::default(), &e), Err(AuthFailure::InvalidToken));
    }

    #[test]
    fn statuses_say_which_check_failed_and_never_echo_the_token() {
        for f in AuthFailure::ALL {
            let s = f.status();
            assert!(s.message().ends_with(&f.to_string()), "{s:?}");
        }
        assert_eq!(AuthFailure::NoToken.status().code(), tonic::Code::Unauthenticated);
        assert_eq!(AuthFailure::NodeMismatch.status().code(), tonic::Code::PermissionDenied);
        assert_eq!(AuthFailure::ReviewUnavailable.status().code(), tonic::Code::Unavailable);
    }

    #[test]
    fn service_accounts_and_bearers_parse_strictly() {
        let sa: ServiceAccount = "kubenurse:kubenurse-agent".parse().unwrap();
        assert_eq!(sa.username(), "system:serviceaccount:kubenurse:kubenurse-agent");
        assert_eq!(sa.to_string(), "kubenurse:kubenurse-agent");
        for bad in ["", "kubenurse", ":a", "a:", "a:b:c", "A:b", "a b:c"] {
            assert!(bad.parse::<ServiceAccount>().is_err(), "{bad:?}");
        }
        assert_eq!(bearer("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        for bad in ["", "Bearer", "Bearer ", "Basic abc", "abc"] {
            assert_eq!(bearer(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn expiry_comes_from_the_jwt_payload() {
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = format!("{}.{}.sig", enc(r#"{"alg":"RS256"}"#), enc(r#"{"exp":1767225600,"sub":"x"}"#));
        assert_eq!(jwt_expiry(&token), Some(1_767_225_600));
        for bad in ["", "abc", "a.!!!.c", &format!("a.{}.c", enc("[]")), &format!("a.{}.c", enc(r#"{"exp":"soon"}"#))] {
            assert_eq!(jwt_expiry(bad), None, "{bad:?}");
        }
    }
}
