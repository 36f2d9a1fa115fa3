//! The cairn follower: actors generic over the commonware runtime, wired around commonware's
//! marshal. The upstream actor keeps a subscription alive and serves requests; the driver
//! verifies events and registers epochs; marshal orders, stores and repairs the chain through
//! our resolver; the executor writes finalized blocks to the execution layer and publishes
//! them on the feed the follower serves. [`engine`] wires them together; [`checkpoint`] lets a
//! follower join a long-running chain at a verified finalization.

pub mod backfill;
pub mod catchup;
pub mod certificates;
pub mod chain;
pub mod checkpoint;
pub mod damage;
pub mod driver;
pub mod engine;
pub mod executor;
pub mod resolver;
pub mod status;
pub mod trusted;
pub mod upstream;

pub use engine::{EngineConfig, EngineError, Follower, genesis_block, start};
