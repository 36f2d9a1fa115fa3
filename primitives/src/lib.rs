//! Tempo-compatible chain types for cairn: the block header (RLP, keccak256 hash, JSON),
//! blocks with raw EIP-2718 bodies, the 32-byte [`Digest`] used by consensus, and the
//! `consensus` RPC wire types.

mod block;
mod digest;
mod header;
pub mod rpc;

pub use block::{Block, BlockCodecConfig, BlockError, Body};
pub use digest::Digest;
pub use header::{ConsensusContext, HeaderDecodeError, TempoHeader};
pub use rpc::{CertifiedBlock, ConsensusState, Event, Query};
