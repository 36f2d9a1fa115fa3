//! A simplex validator of a Tempo-format chain whose key is reshared every epoch, built from
//! commonware-glue's DKG pieces.
//!
//! So far this crate holds the block as the validator's consensus handles it ([`block`]): the
//! consensus context its header carries and the reshare payload glue reads from its
//! `extraData`, laid out so that Tempo's nodes and cairn's followers read each boundary's DKG
//! outcome exactly as on Tempo's networks.

pub mod application;
pub mod block;
pub mod committee;
pub mod engine;
pub mod process;
pub mod secrets;
pub mod serve;

pub use block::{
    ValidatorBlock, ValidatorBlockConfig, ValidatorBlockError, ValidatorContext,
    ValidatorEpochInfo, ValidatorPayload, chain_profile, check_outcome_fork, extra_data, genesis,
};
