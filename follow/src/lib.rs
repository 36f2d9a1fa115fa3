//! The cairn follower: actors generic over the commonware runtime, wired around commonware's
//! marshal. The upstream actor keeps a subscription alive and serves requests; the driver
//! verifies events and registers epochs; marshal orders, stores and repairs the chain through
//! our resolver; the executor writes finalized blocks to the execution layer and publishes
//! them on the feed the follower serves. [`engine`] wires them together; [`sync`] moves a
//! follower to the chain's tip in bulk: the checkpoint start, catch-up and backfill.

pub mod backoff;
pub mod certificates;
pub mod chain;
pub mod damage;
pub mod driver;
pub mod engine;
pub mod executor;
pub mod resolver;
pub mod status;
pub mod sync;
pub mod upstream;

pub use engine::{
    Engine, EngineConfig, EngineError, StartFrom, StartedFrom, Upstreams, genesis_block,
};
