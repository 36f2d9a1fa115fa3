//! The JSON-RPC method names a node answers and a follower calls, in one place: the client and
//! its batches use these, and a test checks that the server answers every one of them (the
//! server's `#[method]` attributes need literals, so the test is what ties the two together).

pub use crate::{explain::EXPLAIN_METHOD as EXPLAIN, rpc::STATUS_METHOD as STATUS};

/// A finalization with its block, at `"latest"` or `{"height": N}`.
pub const GET_FINALIZATION: &str = "consensus_getFinalization";
/// A finalization with its block's header only.
pub const GET_FINALIZED_HEADER: &str = "consensus_getFinalizedHeader";
/// The latest finalized block.
pub const GET_LATEST: &str = "consensus_getLatest";
/// Consensus events.
pub const SUBSCRIBE: &str = "consensus_subscribe";
/// Ends a [`SUBSCRIBE`] subscription.
pub const UNSUBSCRIBE: &str = "consensus_unsubscribe";
/// A block by number, with full transactions when asked.
pub const GET_BLOCK_BY_NUMBER: &str = "eth_getBlockByNumber";
/// A block by hash, with full transactions when asked.
pub const GET_BLOCK_BY_HASH: &str = "eth_getBlockByHash";
/// A block as raw RLP bytes.
pub const GET_RAW_BLOCK: &str = "debug_getRawBlock";

/// Every name above.
pub const ALL: [&str; 10] = [
    GET_FINALIZATION,
    GET_FINALIZED_HEADER,
    GET_LATEST,
    SUBSCRIBE,
    UNSUBSCRIBE,
    GET_BLOCK_BY_NUMBER,
    GET_BLOCK_BY_HASH,
    GET_RAW_BLOCK,
    STATUS,
    EXPLAIN,
];
