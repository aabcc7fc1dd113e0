//! Who checks whom, decided the same way wherever it is decided: by each agent for itself
//! (local discovery, upstream's behaviour) or by the aggregator for every agent (pushed
//! discovery). Both tiers use these rules, this ring and these variables, so the two ways
//! select exactly the same neighbours.

pub mod cache;
pub mod client;
pub mod list_split;
pub mod listwatch;
pub mod neighbourhood;
pub mod ring;
pub mod selector;
pub mod slim;
pub mod vars;
pub mod watch;
