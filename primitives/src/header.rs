//! The Tempo block header: three Tempo fields, the standard Ethereum header, and the optional
//! consensus context, with its RLP encoding, keccak256 hash and camelCase JSON form.

use crate::Digest;
use alloy_primitives::{B256, Bytes, keccak256};
use alloy_rlp::{Decodable, Encodable, RlpDecodable, RlpEncodable};
use serde::{Deserialize, Serialize};

/// The consensus round a Tempo block was proposed in, as written into its header.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, RlpEncodable, RlpDecodable,
)]
#[serde(rename_all = "camelCase")]
pub struct ConsensusContext {
    /// Epoch of the proposal.
    pub epoch: u64,
    /// View of the proposal within its epoch.
    pub view: u64,
    /// View of the parent proposal.
    pub parent_view: u64,
    /// The proposer's 32-byte ed25519 public key.
    pub proposer: B256,
}

/// A Tempo header.
///
/// RLP: `[general_gas_limit, shared_gas_limit, timestamp_millis_part, <ethereum header list>,
/// consensus_context?]`; the block hash is the keccak256 of that encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, RlpEncodable, RlpDecodable)]
#[serde(rename_all = "camelCase")]
#[rlp(trailing)]
pub struct TempoHeader {
    /// Gas limit for general (non-payment) transactions.
    #[serde(rename = "mainBlockGeneralGasLimit", with = "alloy_serde::quantity")]
    pub general_gas_limit: u64,
    /// Gas limit for the shared lane.
    #[serde(with = "alloy_serde::quantity")]
    pub shared_gas_limit: u64,
    /// Milliseconds to add to the header's second-resolution timestamp.
    #[serde(with = "alloy_serde::quantity")]
    pub timestamp_millis_part: u64,
    /// The standard Ethereum header.
    #[serde(flatten)]
    pub inner: alloy_consensus::Header,
    /// The consensus round the block was proposed in (absent on older blocks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus_context: Option<ConsensusContext>,
}

/// Why a header could not be decoded from RLP.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderDecodeError {
    /// The bytes are not a well-formed Tempo header list.
    #[error("malformed header RLP: {0}")]
    Rlp(alloy_rlp::Error),
    /// A complete header was followed by more bytes.
    #[error("{0} trailing bytes after the header")]
    TrailingBytes(usize),
}

impl TempoHeader {
    /// Block height.
    pub const fn number(&self) -> u64 {
        self.inner.number
    }

    /// The header's `extraData` (holds the DKG outcome on genesis and epoch-boundary blocks).
    pub const fn extra_data(&self) -> &Bytes {
        &self.inner.extra_data
    }

    /// Timestamp in milliseconds since the unix epoch.
    pub const fn timestamp_millis(&self) -> u64 {
        self.inner
            .timestamp
            .saturating_mul(1000)
            .saturating_add(self.timestamp_millis_part)
    }

    /// The RLP encoding of the header.
    pub fn rlp(&self) -> Vec<u8> {
        alloy_rlp::encode(self)
    }

    /// The block hash: keccak256 of the RLP encoding.
    pub fn hash(&self) -> Digest {
        Digest(keccak256(self.rlp()))
    }

    /// Decodes exactly one header from `bytes` (no trailing bytes allowed).
    pub fn decode_rlp(bytes: &[u8]) -> Result<Self, HeaderDecodeError> {
        let mut buf = bytes;
        let header = Self::decode(&mut buf).map_err(HeaderDecodeError::Rlp)?;
        if !buf.is_empty() {
            return Err(HeaderDecodeError::TrailingBytes(buf.len()));
        }
        Ok(header)
    }

    /// The encoded length in bytes.
    pub fn rlp_len(&self) -> usize {
        self.length()
    }
}
