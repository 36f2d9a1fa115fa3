//! The feed of a cairn node: the latest verified finalized block, the event stream, and the
//! JSON-RPC server (`consensus_*`, `eth_blockNumber`, `eth_getBlockBy*`, `debug_getRaw*`) that
//! serves them from the node's own store, so followers can follow it, and the on-disk block
//! store nodes serve from.

pub mod rpc;
mod state;
pub mod store;

pub use rpc::{
    MISSING_CODE, NOT_READY_CODE, RpcBlock, RpcConfig, RunningServer, StartError, start,
};
pub use state::{
    ChainReader, DEFAULT_EVENT_BUFFER, FeedState, PublishedEvent, ReadError, unix_millis,
};
pub use store::{BlockStore, StoreContext, StoreError};
