//! The chores every kubenurse-rs binary (agent, aggregator, lab) does, each done one way here:
//! shutdown signals, log initialisation, the `/metrics` response, jittered backoff, token-bucket
//! rate limits, and the Go duration syntax both tiers accept in their configuration.

pub mod backoff;
pub mod duration;
pub mod logging;
pub mod metrics;
pub mod rate;
pub mod signal;
