//! DKG for cairn: the on-chain DKG outcome with Tempo's exact byte layout, as a follower reads
//! it. The ceremonies that produce outcomes live with the chains that run them (the devnet).

mod outcome;

pub use outcome::{
    DkgOutcome, Identity, NextCeremony, OutcomeError, OutcomeFork, OutcomeLayout, OutcomeLimits,
};
