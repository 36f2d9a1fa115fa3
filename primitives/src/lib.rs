//! Tempo-compatible chain types for cairn, built on Tempo's own `tempo-primitives`: the block
//! (Tempo's header and typed-transaction body, checked against the header's roots, with its
//! JSON, raw RLP and storage codec), the 32-byte [`Digest`] used by consensus, and the
//! `consensus` RPC wire types.

mod block;
mod digest;
mod header;
pub mod rpc;

pub use alloy_consensus::BlockHeader;
pub use block::{Block, BlockCodecConfig, BlockError, Body, StoredBlock};
pub use digest::Digest;
pub use header::{HeaderDecodeError, HeaderExt, TempoConsensusContext, TempoHeader};
pub use rpc::{CertifiedBlock, CertifiedHeader, ConsensusState, Event, Query};
pub use tempo_primitives::{TempoTxEnvelope, ed25519::PublicKey as ProposerKey};
