//! The feed of a cairn node: the latest verified finalized block, the event stream, and the
//! JSON-RPC server (`consensus_*`, the `eth_` block and transaction methods a standard Ethereum
//! client calls, `debug_getRaw*`) that serves them from the node's own store, so followers can
//! follow it.

pub mod explain;
pub mod methods;
pub mod page;
pub mod public;
pub mod rpc;
mod state;

pub use rpc::{
    CLIENT_VERSION, MISSING_CODE, NOT_READY_CODE, RpcBlock, RpcBlockError, RpcConfig, RpcHeader,
    RpcTransaction, RunningServer, STATUS_METHOD, StartError, StatusSource, block_from_rpc,
    rpc_block, start,
};
pub use state::{
    ChainReader, DEFAULT_EVENT_BUFFER, Explained, FeedState, LateChain, PublishedEvent, ReadError,
    SyncProgress, unix_millis,
};
