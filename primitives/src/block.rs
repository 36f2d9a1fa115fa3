//! A Tempo block: a header plus, when known, a body of raw EIP-2718 transactions whose
//! transactions root matches the header. Header-only blocks are real data (RPC answers often
//! carry only the header), so the body is optional.

use crate::{Digest, TempoHeader, header::HeaderDecodeError};
use alloy_primitives::{B256, Bytes};
use bytes::BufMut;
use commonware_codec::{Buf, EncodeSize, Error as CodecError, RangeCfg, Read, ReadExt, Write};
use commonware_cryptography::Digestible;
use serde::{Deserialize, Serialize};

/// The transactions of a block, each the raw EIP-2718 encoding of one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    /// Raw EIP-2718 transaction bytes, in block order.
    pub transactions: Vec<Bytes>,
}

impl Body {
    /// The ordered-trie root of the raw transactions, as stored in `transactionsRoot`.
    pub fn transactions_root(&self) -> B256 {
        alloy_trie::root::ordered_trie_root_encoded(&self.transactions)
    }
}

/// Why a block was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    /// The body's transactions do not hash to the header's `transactionsRoot`.
    #[error("transactions root mismatch: header has {header}, body hashes to {body}")]
    TransactionsRootMismatch {
        /// Root in the header.
        header: B256,
        /// Root computed from the body.
        body: B256,
    },
}

/// A block with its hash computed once at construction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BlockJson", into = "BlockJson")]
pub struct Block {
    header: TempoHeader,
    body: Option<Body>,
    hash: Digest,
}

impl Block {
    /// Builds a block, checking the body (if any) against the header's transactions root.
    pub fn new(header: TempoHeader, body: Option<Body>) -> Result<Self, BlockError> {
        if let Some(body) = &body {
            let computed = body.transactions_root();
            if computed != header.inner.transactions_root {
                return Err(BlockError::TransactionsRootMismatch {
                    header: header.inner.transactions_root,
                    body: computed,
                });
            }
        }
        let hash = header.hash();
        Ok(Self { header, body, hash })
    }

    /// A block known only by its header.
    pub fn header_only(header: TempoHeader) -> Self {
        let hash = header.hash();
        Self {
            header,
            body: None,
            hash,
        }
    }

    /// The header.
    pub const fn header(&self) -> &TempoHeader {
        &self.header
    }

    /// The body, if known.
    pub const fn body(&self) -> Option<&Body> {
        self.body.as_ref()
    }

    /// The block hash (keccak256 of the header RLP).
    pub const fn hash(&self) -> Digest {
        self.hash
    }

    /// Block height.
    pub const fn height(&self) -> u64 {
        self.header.number()
    }

    /// Hash of the parent block.
    pub fn parent(&self) -> Digest {
        Digest(self.header.inner.parent_hash)
    }

    /// Splits the block into header and body.
    pub fn into_parts(self) -> (TempoHeader, Option<Body>) {
        (self.header, self.body)
    }
}

impl Digestible for Block {
    type Digest = Digest;

    fn digest(&self) -> Digest {
        self.hash
    }
}

/// The JSON shape of a block: `{"header": {...}, "body": {"transactions": ["0x..."]}}`.
#[derive(Serialize, Deserialize)]
struct BlockJson {
    header: TempoHeader,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<Body>,
}

impl TryFrom<BlockJson> for Block {
    type Error = BlockError;

    fn try_from(json: BlockJson) -> Result<Self, BlockError> {
        Self::new(json.header, json.body)
    }
}

impl From<Block> for BlockJson {
    fn from(block: Block) -> Self {
        let (header, body) = block.into_parts();
        Self { header, body }
    }
}

/// Decode limits for the block codec. Every length prefix is checked against these before
/// anything is allocated for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCodecConfig {
    /// Largest accepted header encoding, in bytes.
    pub max_header_bytes: usize,
    /// Most transactions accepted in one body.
    pub max_transactions: usize,
    /// Largest accepted single transaction, in bytes.
    pub max_transaction_bytes: usize,
}

impl Default for BlockCodecConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 256 * 1024,
            max_transactions: 65_536,
            max_transaction_bytes: 128 * 1024,
        }
    }
}

/// Codec layout (for marshal storage): `header_rlp: bytes || has_body: u8 ||
/// [varint(n) || n x bytes]`, where `bytes` is `varint(len) || len` bytes.
impl Write for Block {
    fn write(&self, buf: &mut impl BufMut) {
        let header_rlp = self.header.rlp();
        header_rlp.len().write(buf);
        buf.put_slice(&header_rlp);
        self.body.is_some().write(buf);
        if let Some(body) = &self.body {
            body.transactions.len().write(buf);
            for tx in &body.transactions {
                tx.len().write(buf);
                buf.put_slice(tx);
            }
        }
    }
}

impl EncodeSize for Block {
    fn encode_size(&self) -> usize {
        let header_len = self.header.rlp_len();
        let body_len = self.body.as_ref().map_or(0, |body| {
            body.transactions.len().encode_size()
                + body
                    .transactions
                    .iter()
                    .map(|tx| tx.len().encode_size() + tx.len())
                    .sum::<usize>()
        });
        header_len.encode_size() + header_len + true.encode_size() + body_len
    }
}

impl Read for Block {
    type Cfg = BlockCodecConfig;

    fn read_cfg(buf: &mut impl Buf, cfg: &BlockCodecConfig) -> Result<Self, CodecError> {
        let header_bytes = bytes::Bytes::read_cfg(buf, &RangeCfg::new(..=cfg.max_header_bytes))?;
        let header = TempoHeader::decode_rlp(&header_bytes).map_err(|err| match err {
            HeaderDecodeError::Rlp(_) => CodecError::Invalid("Block", "malformed header RLP"),
            HeaderDecodeError::TrailingBytes(_) => {
                CodecError::Invalid("Block", "trailing bytes after header RLP")
            }
        })?;
        let has_body = bool::read(buf)?;
        let body = if has_body {
            let transactions = Vec::<bytes::Bytes>::read_cfg(
                buf,
                &(
                    RangeCfg::new(..=cfg.max_transactions),
                    RangeCfg::new(..=cfg.max_transaction_bytes),
                ),
            )?;
            Some(Body {
                transactions: transactions.into_iter().map(Bytes).collect(),
            })
        } else {
            None
        };
        Self::new(header, body)
            .map_err(|_| CodecError::Invalid("Block", "transactions root mismatch"))
    }
}
