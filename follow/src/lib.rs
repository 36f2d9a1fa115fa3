//! The follower's actors and their wiring around commonware's marshal. So far: the upstream
//! actor, which keeps a subscription to an upstream node's finalization events alive and serves
//! block and finalization requests from it.

pub mod upstream;
