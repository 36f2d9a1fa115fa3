//! The Tempo block header is Tempo's own [`TempoHeader`] (from `tempo-primitives`): three Tempo
//! fields, the standard Ethereum header and the optional consensus context. This module adds the
//! few operations cairn needs on it: its RLP bytes, its hash as a consensus [`Digest`], and an
//! exact decode that refuses trailing bytes.

use crate::Digest;
use alloy_primitives::keccak256;
use alloy_rlp::{Decodable, Encodable};
pub use tempo_primitives::{TempoConsensusContext, TempoHeader};

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

/// What cairn computes from a Tempo header.
pub trait HeaderExt: Sized {
    /// The RLP encoding of the header (what `debug_getRawHeader` serves).
    fn rlp(&self) -> Vec<u8>;

    /// The encoded length in bytes.
    fn rlp_len(&self) -> usize;

    /// The block hash: keccak256 of the RLP encoding, the payload a finalization signs.
    fn digest(&self) -> Digest {
        Digest(keccak256(self.rlp()))
    }

    /// Decodes exactly one header from `bytes` (no trailing bytes allowed).
    fn decode_rlp(bytes: &[u8]) -> Result<Self, HeaderDecodeError>;
}

impl HeaderExt for TempoHeader {
    fn rlp(&self) -> Vec<u8> {
        alloy_rlp::encode(self)
    }

    fn rlp_len(&self) -> usize {
        self.length()
    }

    fn decode_rlp(bytes: &[u8]) -> Result<Self, HeaderDecodeError> {
        let mut buf = bytes;
        let header = Self::decode(&mut buf).map_err(HeaderDecodeError::Rlp)?;
        if !buf.is_empty() {
            return Err(HeaderDecodeError::TrailingBytes(buf.len()));
        }
        Ok(header)
    }
}
