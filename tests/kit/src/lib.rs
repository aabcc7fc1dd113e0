//! The kubenurse-rs test kit: a fake Kubernetes API server speaking the real wire format, a
//! throwaway CA, a userspace fault proxy, simulated nodes and an HTTP client. It depends on no
//! product crate, so the agent and the aggregator can use it in their own tests and benches.

pub mod apiserver;
pub mod http;
pub mod measure;
pub mod pki;
pub mod proxy;
pub mod scale;
pub mod serve;
pub mod sim;
pub mod udp_proxy;
