//! The local lab: in-process agents (one per simulated node, each on its own loopback address)
//! and aggregators over the test kit's fake API server and fault proxies, plus the fault specs
//! the `kubenurse-lab` demo and the scenario tests apply.

pub mod aggregator;
pub mod cluster;
pub mod impostor;
pub mod lab;
pub mod simulated;
