//! A simplex validator of a Tempo-format chain whose key is reshared every epoch, built from
//! commonware-glue's DKG pieces.
//!
//! - [`block`]: the block as the validator's consensus handles it, the consensus context its
//!   header carries and the reshare payload glue reads from its `extraData`, laid out so that
//!   Tempo's nodes and cairn's followers read each boundary's DKG outcome exactly as on Tempo's
//!   networks;
//! - [`committee`]: committees as windows over the pool, and the signing schemes per epoch;
//! - [`application`]: the Tempo blocks a leader proposes;
//! - [`engine`]: glue's orchestrator and reshare actors with marshal around them;
//! - [`secrets`]: the shares on disk;
//! - [`serve`] and [`status`]: what a validator stores, serves and tells about itself;
//! - [`process`]: a validator as its own process, with p2p and RPC;
//! - [`simulated`]: validators in the deterministic runtime, for simulations.

pub mod application;
pub mod block;
pub mod committee;
pub mod engine;
pub mod process;
pub mod secrets;
pub mod serve;
pub mod simulated;
pub mod status;

pub use block::{
    ValidatorBlock, ValidatorBlockConfig, ValidatorBlockError, ValidatorContext,
    ValidatorEpochInfo, ValidatorPayload, chain_profile, check_outcome_fork, extra_data, genesis,
};
