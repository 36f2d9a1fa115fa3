//! A local chain that makes exactly the artifacts a Tempo validator set makes: Tempo-format
//! blocks, finalization certificates assembled from a quorum of committee members' own shares,
//! and a DKG outcome in every epoch's last block (reshares by default, full DKGs at configured
//! epochs), real signed transactions in every block, kept on disk so a restart continues the same chain.

pub mod ceremony;
pub mod faults;
mod producer;
mod secrets;
mod signer;
mod store;
pub mod transactions;

pub use cairn_storage::StoreContext;
pub use ceremony::{CeremonyError, CeremonyOutput, full_dkg, reshare, trusted_deal};
pub use producer::{
    Devnet, DevnetConfig, DevnetError, EpochEntry, KeyOrigin, Produced, tempo_block, tempo_genesis,
};
pub use signer::{CommitteeSigner, SignerError};
pub use store::{ChainStore, StoreError};
