//! DKG for cairn: the on-chain DKG outcome with Tempo's exact byte layout, and in-memory
//! ceremonies (trusted deal, reshare, full DKG) that produce real outcomes and shares.

pub mod ceremony;
mod outcome;

pub use ceremony::{CeremonyError, CeremonyOutput, full_dkg, reshare, trusted_deal};
pub use outcome::{
    DkgOutcome, Identity, NextCeremony, OutcomeError, OutcomeFork, OutcomeLayout, OutcomeLimits,
};
