//! The follower's actors and their wiring around commonware's marshal. So far: the upstream
//! actor (keeps a subscription to an upstream node alive and serves block and finalization
//! requests from it), the execution layer seam with its embedded on-disk store, and the
//! executor that writes finalized blocks to it in order.

pub mod execution;
pub mod executor;
pub mod upstream;
