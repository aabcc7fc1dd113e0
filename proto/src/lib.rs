//! The gRPC contract (`nurse.v1`) between kubenurse agents and the aggregator, generated from
//! `nurse/v1/nurse.proto` at build time without a system `protoc`.

/// Generated messages, client and server of package `nurse.v1`.
#[allow(missing_docs, clippy::unwrap_used, clippy::default_trait_access)]
pub mod v1 {
    tonic::include_proto!("nurse.v1");
}

pub mod codec;
pub mod kind;

pub use kind::{CheckKind, KindError};

/// Protocol revision within v1 that this build speaks (2: typed `CheckResult.check`; 3: the
/// aggregator may push `Targets`).
pub const PROTOCOL_REVISION: u32 = 3;

/// Most targets of one agent: in its hello (the aggregator's default cap), in a `Targets`
/// message and in its `checked_by`. Far above any neighbour limit in use, far below the
/// message size limit.
pub const MAX_TARGETS: usize = 1_000;

/// Oldest revision still understood: revision 1 agents identify checks by `check_type` only.
pub const OLDEST_PROTOCOL_REVISION: u32 = 1;

/// Largest message either side accepts (a batch of a few thousand results fits easily).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Most UDP packets an agent sends one neighbour per round (`KUBENURSE_UDP_PACKETS`); the
/// aggregator refuses a `UdpResult` claiming more.
pub const MAX_UDP_PACKETS: u32 = 100;

/// Most SYN retransmissions one connect can be inferred to have needed (Linux gives up long
/// before: `tcp_syn_retries` is 6 by default).
pub const MAX_SYN_RETRANSMITS: u32 = 16;

/// Most results in one batch.
pub const MAX_RESULTS_PER_BATCH: usize = 4096;

/// `CheckResult.error_kind` of a check that failed for a reason inside the agent's own node
/// (out of file descriptors, no ephemeral port): the agent's failure, never its target's.
pub const LOCAL_ERROR_PREFIX: &str = "local_";
