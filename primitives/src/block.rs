//! A Tempo block: Tempo's own header and, when known, Tempo's own body (typed transactions
//! `TempoTxEnvelope`, no ommers, empty withdrawals), checked against the header's roots.
//! Header-only blocks are real data (RPC answers and fixtures often carry only the header), so
//! the body is optional.
//!
//! The JSON form is Tempo's (`{"header": {...}, "body": {"transactions": [...], "ommers": [],
//! "withdrawals": [...]}}`), the raw form is the execution clients' RLP block
//! (`debug_getRawBlock`), and the storage codec wraps the header and body RLP with bounded
//! length prefixes.

use crate::{Digest, TempoHeader, header::HeaderDecodeError, header::HeaderExt};
use alloy_consensus::proofs::calculate_transaction_root;
use alloy_eips::eip4895::Withdrawals;
use alloy_primitives::B256;
use alloy_rlp::{Decodable, Encodable, RlpEncodable};
use bytes::BufMut;
use commonware_codec::{Buf, EncodeSize, Error as CodecError, RangeCfg, Read, ReadExt, Write};
use commonware_cryptography::Digestible;
use serde::{Deserialize, Serialize};
use tempo_primitives::TempoTxEnvelope;

/// The body of a Tempo block: Tempo's `BlockBody` (transactions, ommers, withdrawals).
pub type Body = tempo_primitives::BlockBody;

/// Why a block was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    /// The raw block is not well-formed RLP of the expected shape.
    #[error("malformed block RLP: {0}")]
    Rlp(alloy_rlp::Error),
    /// A complete raw block was followed by more bytes.
    #[error("{0} trailing bytes after the raw block")]
    TrailingBytes(usize),
    /// The body's transactions do not hash to the header's `transactionsRoot`.
    #[error("transactions root mismatch: header has {header}, body hashes to {body}")]
    TransactionsRootMismatch {
        /// Root in the header.
        header: B256,
        /// Root computed from the body.
        body: B256,
    },
    /// The body's ommers do not hash to the header's `sha3Uncles`.
    #[error("ommers hash mismatch: header has {header}, body hashes to {body}")]
    OmmersHashMismatch {
        /// Hash in the header.
        header: B256,
        /// Hash computed from the body.
        body: B256,
    },
    /// The body's withdrawals do not match the header's `withdrawalsRoot`.
    #[error("withdrawals root mismatch: header has {header:?}, body hashes to {body:?}")]
    WithdrawalsRootMismatch {
        /// Root in the header (absent before Shanghai).
        header: Option<B256>,
        /// Root computed from the body (absent when the body has no withdrawals list).
        body: Option<B256>,
    },
}

/// Checks a body against the roots its header commits to: transactions, ommers, withdrawals.
fn check_body(header: &TempoHeader, body: &Body) -> Result<(), BlockError> {
    let transactions_root = calculate_transaction_root(&body.transactions);
    if transactions_root != header.inner.transactions_root {
        return Err(BlockError::TransactionsRootMismatch {
            header: header.inner.transactions_root,
            body: transactions_root,
        });
    }
    let ommers_hash = body.calculate_ommers_root();
    if ommers_hash != header.inner.ommers_hash {
        return Err(BlockError::OmmersHashMismatch {
            header: header.inner.ommers_hash,
            body: ommers_hash,
        });
    }
    let withdrawals_root = body.calculate_withdrawals_root();
    if withdrawals_root != header.inner.withdrawals_root {
        return Err(BlockError::WithdrawalsRootMismatch {
            header: header.inner.withdrawals_root,
            body: withdrawals_root,
        });
    }
    Ok(())
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
    /// Builds a block, checking the body (if any) against the header's roots.
    pub fn new(header: TempoHeader, body: Option<Body>) -> Result<Self, BlockError> {
        if let Some(body) = &body {
            check_body(&header, body)?;
        }
        let hash = header.digest();
        Ok(Self { header, body, hash })
    }

    /// A block known only by its header.
    pub fn header_only(header: TempoHeader) -> Self {
        let hash = header.digest();
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

    /// The transactions, empty when the body is unknown.
    pub fn transactions(&self) -> &[TempoTxEnvelope] {
        self.body
            .as_ref()
            .map_or(&[], |body| body.transactions.as_slice())
    }

    /// The block hash (keccak256 of the header RLP).
    pub const fn hash(&self) -> Digest {
        self.hash
    }

    /// Block height.
    pub const fn height(&self) -> u64 {
        self.header.inner.number
    }

    /// Hash of the parent block.
    pub const fn parent(&self) -> Digest {
        Digest(self.header.inner.parent_hash)
    }

    /// The body, or the empty body when the block is known by its header only and the header
    /// commits to no transactions, ommers or withdrawals (such as a genesis header): that body
    /// follows from the header's roots.
    fn known_body(&self) -> Option<std::borrow::Cow<'_, Body>> {
        if let Some(body) = &self.body {
            return Some(std::borrow::Cow::Borrowed(body));
        }
        let empty = Body {
            transactions: Vec::new(),
            ommers: Vec::new(),
            withdrawals: self
                .header
                .inner
                .withdrawals_root
                .map(|_| Withdrawals::default()),
        };
        check_body(&self.header, &empty)
            .ok()
            .map(|()| std::borrow::Cow::Owned(empty))
    }

    /// The raw block as execution clients serve it from `debug_getRawBlock`:
    /// `rlp([header, [tx...], [ommer...], [withdrawal...]?])`. `None` when the body is unknown
    /// (a block known by its header only, whose header commits to a non-empty body).
    pub fn raw_rlp(&self) -> Option<Vec<u8>> {
        let body = self.known_body()?;
        Some(alloy_rlp::encode(RawBlockRef {
            header: &self.header,
            transactions: &body.transactions,
            ommers: &body.ommers,
            withdrawals: body.withdrawals.as_ref(),
        }))
    }

    /// Decodes a raw block (the inverse of [`Block::raw_rlp`]), checking the body's roots.
    pub fn decode_raw_rlp(bytes: &[u8]) -> Result<Self, BlockError> {
        let mut buf = bytes;
        let block = tempo_primitives::Block::decode(&mut buf).map_err(BlockError::Rlp)?;
        if !buf.is_empty() {
            return Err(BlockError::TrailingBytes(buf.len()));
        }
        Self::new(block.header, Some(block.body))
    }

    /// Splits the block into header and body.
    pub fn into_parts(self) -> (TempoHeader, Option<Body>) {
        (self.header, self.body)
    }
}

/// Borrowed fields of a raw block, encoded exactly as alloy's `Block` encodes.
#[derive(RlpEncodable)]
#[rlp(trailing(no_gaps))]
struct RawBlockRef<'a> {
    header: &'a TempoHeader,
    transactions: &'a Vec<TempoTxEnvelope>,
    ommers: &'a Vec<TempoHeader>,
    withdrawals: Option<&'a Withdrawals>,
}

impl Digestible for Block {
    type Digest = Digest;

    fn digest(&self) -> Digest {
        self.hash
    }
}

impl commonware_consensus::Heightable for Block {
    fn height(&self) -> commonware_consensus::types::Height {
        commonware_consensus::types::Height::new(self.header.inner.number)
    }
}

/// Lets commonware's marshal order, store and repair Tempo blocks.
impl commonware_consensus::Block for Block {
    fn parent(&self) -> Digest {
        Digest(self.header.inner.parent_hash)
    }
}

/// Tempo's JSON shape of a block: `{"header": {...}, "body": {...}}`, the body optional.
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
    /// Largest accepted body encoding, in bytes.
    pub max_body_bytes: usize,
    /// Most transactions accepted in one body.
    pub max_transactions: usize,
}

impl Default for BlockCodecConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 256 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            max_transactions: 65_536,
        }
    }
}

/// Codec layout (for marshal storage): `header_rlp: bytes || has_body: u8 || [body_rlp: bytes]`,
/// where `bytes` is `varint(len) || len` bytes and `body_rlp` is the RLP list
/// `[[tx...], [ommer...], [withdrawal...]?]`.
impl Write for Block {
    fn write(&self, buf: &mut impl BufMut) {
        let header_rlp = self.header.rlp();
        header_rlp.len().write(buf);
        buf.put_slice(&header_rlp);
        self.body.is_some().write(buf);
        if let Some(body) = &self.body {
            body.length().write(buf);
            body.encode(buf);
        }
    }
}

impl EncodeSize for Block {
    fn encode_size(&self) -> usize {
        let header_len = self.header.rlp_len();
        let body_len = self
            .body
            .as_ref()
            .map_or(0, |body| body.length().encode_size() + body.length());
        header_len.encode_size() + header_len + true.encode_size() + body_len
    }
}

impl Read for Block {
    type Cfg = BlockCodecConfig;

    fn read_cfg(buf: &mut impl Buf, cfg: &BlockCodecConfig) -> Result<Self, CodecError> {
        StoredBlock::read_cfg(buf, cfg)?.decode(cfg)
    }
}

/// A block in its storage codec layout (see [`Block`]'s `Write`), read without decoding the
/// RLP: a store serves its raw form without decoding and encoding it again, and decodes it
/// into a [`Block`] only when asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlock {
    header: bytes::Bytes,
    body: Option<bytes::Bytes>,
}

impl StoredBlock {
    /// The block's storage form.
    pub fn new(block: &Block) -> Self {
        Self {
            header: block.header.rlp().into(),
            body: block
                .body
                .as_ref()
                .map(|body| alloy_rlp::encode(body).into()),
        }
    }

    /// The block's hash (keccak256 of its header RLP), computed without decoding it.
    pub fn hash(&self) -> Digest {
        Digest(alloy_primitives::keccak256(&self.header))
    }

    /// Decodes the block, checking its body against its header's roots.
    pub fn decode(&self, cfg: &BlockCodecConfig) -> Result<Block, CodecError> {
        let header = TempoHeader::decode_rlp(&self.header).map_err(|err| match err {
            HeaderDecodeError::Rlp(_) => CodecError::Invalid("Block", "malformed header RLP"),
            HeaderDecodeError::TrailingBytes(_) => {
                CodecError::Invalid("Block", "trailing bytes after header RLP")
            }
        })?;
        let body = match &self.body {
            Some(body_bytes) => {
                let mut slice = body_bytes.as_ref();
                let body = Body::decode(&mut slice)
                    .map_err(|_| CodecError::Invalid("Block", "malformed body RLP"))?;
                if !slice.is_empty() {
                    return Err(CodecError::Invalid(
                        "Block",
                        "trailing bytes after body RLP",
                    ));
                }
                if body.transactions.len() > cfg.max_transactions {
                    return Err(CodecError::InvalidLength(body.transactions.len()));
                }
                Some(body)
            }
            None => None,
        };
        Block::new(header, body).map_err(|err| match err {
            BlockError::TransactionsRootMismatch { .. } => {
                CodecError::Invalid("Block", "transactions root mismatch")
            }
            BlockError::OmmersHashMismatch { .. } => {
                CodecError::Invalid("Block", "ommers hash mismatch")
            }
            _ => CodecError::Invalid("Block", "withdrawals root mismatch"),
        })
    }

    /// The raw block (what [`Block::raw_rlp`] gives for the decoded block), composed from the
    /// stored RLP: the header followed by the body list's items, in one list. `None` when the
    /// body is unknown or its RLP is not a list.
    pub fn raw_rlp(&self) -> Option<Vec<u8>> {
        let mut body = self.body.as_ref()?.as_ref();
        let list = alloy_rlp::Header::decode(&mut body).ok()?;
        if !list.list || list.payload_length != body.len() {
            return None;
        }
        let payload_length = self.header.len() + body.len();
        let mut raw =
            Vec::with_capacity(payload_length + alloy_rlp::length_of_length(payload_length));
        alloy_rlp::Header {
            list: true,
            payload_length,
        }
        .encode(&mut raw);
        raw.extend_from_slice(&self.header);
        raw.extend_from_slice(body);
        Some(raw)
    }
}

impl Write for StoredBlock {
    fn write(&self, buf: &mut impl BufMut) {
        self.header.len().write(buf);
        buf.put_slice(&self.header);
        self.body.is_some().write(buf);
        if let Some(body) = &self.body {
            body.len().write(buf);
            buf.put_slice(body);
        }
    }
}

impl EncodeSize for StoredBlock {
    fn encode_size(&self) -> usize {
        self.header.len().encode_size()
            + self.header.len()
            + true.encode_size()
            + self
                .body
                .as_ref()
                .map_or(0, |body| body.len().encode_size() + body.len())
    }
}

impl Read for StoredBlock {
    type Cfg = BlockCodecConfig;

    fn read_cfg(buf: &mut impl Buf, cfg: &BlockCodecConfig) -> Result<Self, CodecError> {
        let header = bytes::Bytes::read_cfg(buf, &RangeCfg::new(..=cfg.max_header_bytes))?;
        let body = if bool::read(buf)? {
            Some(bytes::Bytes::read_cfg(
                buf,
                &RangeCfg::new(..=cfg.max_body_bytes),
            )?)
        } else {
            None
        };
        Ok(Self { header, body })
    }
}
