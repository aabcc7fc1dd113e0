//! The kubenurse-rs test kit: a fake Kubernetes API server speaking the real wire format, a
//! throwaway CA, and a launcher for local clusters of agents on 127.0.0.0/8 addresses.

pub mod aggregator;
pub mod apiserver;
pub mod cluster;
pub mod lab;
pub mod pki;
pub mod proxy;
