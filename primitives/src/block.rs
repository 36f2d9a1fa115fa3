//! A Tempo block: a header plus, when known, a body of raw EIP-2718 transactions whose
//! transactions root matches the header. Header-only blocks are real data (RPC answers often
//! carry only the header), so the body is optional.

use crate::{Digest, TempoHeader, header::HeaderDecodeError};
use alloy_primitives::{B256, Bytes};
use alloy_rlp::{Decodable, Encodable};
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
    /// The raw block is not well-formed RLP of the expected shape.
    #[error("malformed block RLP: {0}")]
    Rlp(alloy_rlp::Error),
    /// The raw block has ommers or withdrawals, which Tempo blocks never carry.
    #[error("raw block carries {0}, which Tempo blocks never have")]
    UnexpectedSection(&'static str),
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
        commonware_consensus::Block::parent(self)
    }

    /// The raw block as execution clients serve it from `debug_getRawBlock`:
    /// `rlp([header, [tx...], [], []?])`, where a typed transaction is an RLP string of its
    /// EIP-2718 bytes, a legacy one its RLP list, and the empty withdrawals list is present when
    /// the header has a withdrawals root. `None` for a block whose body is unknown.
    pub fn raw_rlp(&self) -> Option<Vec<u8>> {
        let body = self.body.as_ref()?;
        let header = self.header.rlp();
        let mut transactions = Vec::new();
        for tx in &body.transactions {
            if tx
                .first()
                .is_some_and(|first| *first >= alloy_rlp::EMPTY_LIST_CODE)
            {
                transactions.extend_from_slice(tx);
            } else {
                tx.as_ref().encode(&mut transactions);
            }
        }
        let with_withdrawals = self.header.inner.withdrawals_root.is_some();
        let mut payload = header;
        alloy_rlp::Header {
            list: true,
            payload_length: transactions.len(),
        }
        .encode(&mut payload);
        payload.extend_from_slice(&transactions);
        payload.push(alloy_rlp::EMPTY_LIST_CODE);
        if with_withdrawals {
            payload.push(alloy_rlp::EMPTY_LIST_CODE);
        }
        let mut out = Vec::with_capacity(payload.len() + 9);
        alloy_rlp::Header {
            list: true,
            payload_length: payload.len(),
        }
        .encode(&mut out);
        out.extend_from_slice(&payload);
        Some(out)
    }

    /// Decodes a raw block (the inverse of [`Block::raw_rlp`]), checking the transactions root.
    pub fn decode_raw_rlp(bytes: &[u8]) -> Result<Self, BlockError> {
        let mut buf = bytes;
        let mut payload =
            alloy_rlp::Header::decode_bytes(&mut buf, true).map_err(BlockError::Rlp)?;
        if !buf.is_empty() {
            return Err(BlockError::TrailingBytes(buf.len()));
        }
        let header = TempoHeader::decode(&mut payload).map_err(BlockError::Rlp)?;
        let mut txs_payload =
            alloy_rlp::Header::decode_bytes(&mut payload, true).map_err(BlockError::Rlp)?;
        let mut transactions = Vec::new();
        while !txs_payload.is_empty() {
            let start = txs_payload;
            let item = alloy_rlp::Header::decode(&mut txs_payload).map_err(BlockError::Rlp)?;
            if item.payload_length > txs_payload.len() {
                return Err(BlockError::Rlp(alloy_rlp::Error::InputTooShort));
            }
            let (content, rest) = txs_payload.split_at(item.payload_length);
            let consumed = start.len() - rest.len();
            transactions.push(if item.list {
                Bytes::copy_from_slice(&start[..consumed])
            } else {
                Bytes::copy_from_slice(content)
            });
            txs_payload = rest;
        }
        let ommers =
            alloy_rlp::Header::decode_bytes(&mut payload, true).map_err(BlockError::Rlp)?;
        if !ommers.is_empty() {
            return Err(BlockError::UnexpectedSection("ommers"));
        }
        if !payload.is_empty() {
            let withdrawals =
                alloy_rlp::Header::decode_bytes(&mut payload, true).map_err(BlockError::Rlp)?;
            if !withdrawals.is_empty() {
                return Err(BlockError::UnexpectedSection("withdrawals"));
            }
        }
        if !payload.is_empty() {
            return Err(BlockError::Rlp(alloy_rlp::Error::ListLengthMismatch {
                expected: 0,
                got: payload.len(),
            }));
        }
        Self::new(header, Some(Body { transactions }))
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

impl commonware_consensus::Heightable for Block {
    fn height(&self) -> commonware_consensus::types::Height {
        commonware_consensus::types::Height::new(self.header.number())
    }
}

/// Lets commonware's marshal order, store and repair Tempo blocks.
impl commonware_consensus::Block for Block {
    fn parent(&self) -> Digest {
        Digest(self.header.inner.parent_hash)
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
