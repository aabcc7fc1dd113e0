//! The gate every stream passes: credentials are checked before anything the stream says is
//! read ([`Gate::admit`]), and the hello's node is checked against them ([`Gate::bind`]).

use std::sync::Arc;
use std::time::Instant;

use kubenurse_proto::v1::Hello;
use rustls::pki_types::CertificateDer;
use tonic::metadata::MetadataMap;

use super::mtls::check_client_cert;
use super::review::TokenReviewer;
use super::{bearer, binds, AuthFailure, AuthMode, TokenClaims};

/// How streams are checked, with what each mode needs.
pub enum Gate {
    /// Everyone is let in (`--auth none`).
    Open,
    /// Bearer tokens reviewed by the API server.
    TokenReview(Box<TokenReviewer>),
    /// Client certificates (the chain is checked by TLS).
    Mtls,
}

/// What a stream's credentials proved, before its hello.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    claims: Option<TokenClaims>,
    certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl Admission {
    /// When the stream must end because its credential does (unix seconds).
    pub fn expires_at(&self) -> Option<i64> {
        self.claims.as_ref().and_then(|c| c.expires_at)
    }
}

impl Gate {
    /// The mode, as `/api/v1/status` shows it.
    pub fn mode(&self) -> AuthMode {
        match self {
            Self::Open => AuthMode::None,
            Self::TokenReview(_) => AuthMode::TokenReview,
            Self::Mtls => AuthMode::Mtls,
        }
    }

    /// Checks the stream's credentials (its `authorization` metadata or client certificate).
    pub async fn admit(
        &self,
        metadata: &MetadataMap,
        certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    ) -> Result<Admission, AuthFailure> {
        match self {
            Self::Open => Ok(Admission::default()),
            Self::Mtls => match certs {
                Some(c) if !c.is_empty() => Ok(Admission { claims: None, certs: Some(c) }),
                _ => Err(AuthFailure::BadClientCert),
            },
            Self::TokenReview(reviewer) => {
                let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
                let token = header.and_then(bearer).ok_or(AuthFailure::NoToken)?;
                let claims = reviewer.review(token, Instant::now()).await?;
                Ok(Admission { claims: Some(claims), certs: None })
            }
        }
    }

    /// Checks that the hello speaks for the node (and pod) the credentials belong to.
    pub async fn bind(&self, admission: &Admission, hello: &Hello) -> Result<(), AuthFailure> {
        match self {
            Self::Open => Ok(()),
            Self::Mtls => check_client_cert(admission.certs.as_deref().map(Vec::as_slice), &hello.node),
            Self::TokenReview(reviewer) => {
                let claims = admission.claims.as_ref().ok_or(AuthFailure::NoToken)?;
                let pod_node = match (&claims.node, &claims.pod) {
                    (None, Some(pod)) => reviewer.node_of_pod(pod).await?,
                    _ => None,
                };
                if binds(claims, pod_node.as_deref(), &hello.node, &hello.pod) {
                    Ok(())
                } else {
                    Err(AuthFailure::NodeMismatch)
                }
            }
        }
    }
}
