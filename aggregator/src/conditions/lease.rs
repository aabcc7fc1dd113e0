//! One writer among the replicas: a coordination.k8s.io/v1 Lease in the aggregator's namespace,
//! held by renewing it and taken over only once it has expired. Conflicts (two replicas racing)
//! are settled by the API server's resourceVersion check: the loser follows.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

/// The Lease's name.
pub const LEASE_NAME: &str = "kubenurse-aggregator-node-conditions";
/// How long a holder that stops renewing keeps the Lease, seconds.
pub const LEASE_SECONDS: i32 = 15;

/// What to do with the Lease as found (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// There is none: create it.
    Create,
    /// It is ours: renew it.
    Renew,
    /// Its holder stopped renewing (or it has none): take it.
    TakeOver,
    /// Someone else holds it.
    Follow(String),
}

/// The step for `spec` as found at `now`, for replica `me`.
pub fn step(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = spec else { return Step::TakeOver };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => Step::Renew,
        None | Some("") => Step::TakeOver,
        Some(holder) => {
            let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
            let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
            match renewed {
                Some(at) if at + SignedDuration::from_secs(seconds) > now => Step::Follow(holder.to_string()),
                _ => Step::TakeOver,
            }
        }
    }
}

/// Holds (or follows) the Lease for replica `identity`.
pub struct Elector {
    api: Api<Lease>,
    identity: String,
}

impl Elector {
    /// An elector for the Lease in `api`'s namespace.
    pub fn new(api: Api<Lease>, identity: String) -> Self {
        Self { api, identity }
    }

    /// This replica's identity (the Lease's holder when it leads).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Creates, renews or takes over the Lease when it may: whether this replica holds it now.
    pub async fn lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let found = self.api.get_opt(LEASE_NAME).await?;
        let step = match &found {
            None => Step::Create,
            Some(lease) => step(lease.spec.as_ref(), &self.identity, now),
        };
        let mine = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let result = match (step, found) {
            (Step::Follow(_), _) => return Ok(false),
            (Step::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(LEASE_NAME.into()), ..ObjectMeta::default() },
                    spec: Some(mine(0, None)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (step, Some(mut lease)) => {
                let old = lease.spec.take().unwrap_or_default();
                let transitions = old.lease_transitions.unwrap_or(0);
                lease.spec = Some(match step {
                    Step::Renew => mine(transitions, old.acquire_time),
                    _ => mine(transitions.saturating_add(1), None),
                });
                self.api.replace(LEASE_NAME, &PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(_) => Ok(true),
            // Another replica created or renewed it first.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_live_holder_is_followed_an_expired_one_replaced() {
        let now = Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let ago = |s: i64| now - SignedDuration::from_secs(s);
        assert_eq!(step(Some(&held("a", ago(5))), "b", now), Step::Follow("a".into()));
        assert_eq!(step(Some(&held("a", ago(16))), "b", now), Step::TakeOver);
        assert_eq!(step(Some(&held("b", ago(5))), "b", now), Step::Renew);
        assert_eq!(step(Some(&held("", ago(1))), "b", now), Step::TakeOver);
        assert_eq!(
            step(Some(&LeaseSpec { holder_identity: Some("a".into()), ..LeaseSpec::default() }), "b", now),
            Step::TakeOver,
            "never renewed"
        );
        assert_eq!(step(None, "b", now), Step::TakeOver);
    }
}
