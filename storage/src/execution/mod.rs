//! The execution layer seam: what the follower needs from an execution client (the finalized
//! height, headers and blocks by number or hash, and a durable "this block is finalized"), and
//! the embedded on-disk implementation used until a real execution client plugs in here.

use crate::{BlockStore, StoreContext, StoreError, page_cache};
use alloy_primitives::B256;
use cairn_primitives::{Block, Digest, TempoHeader};
use std::{
    future::Future,
    sync::{Arc, RwLock},
};
use tracing::debug;

/// Why the execution layer refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum ExecutionError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The block is not the next height.
    #[error("finalized blocks must arrive in order: expected height {expected}, got {got}")]
    OutOfOrder {
        /// The next height.
        expected: u64,
        /// The height offered.
        got: u64,
    },
    /// The block does not extend the finalized tip.
    #[error("block {height} has parent {parent}, but the finalized tip is {tip}")]
    ParentMismatch {
        /// Height of the block.
        height: u64,
        /// Its parent hash.
        parent: Digest,
        /// The tip's hash.
        tip: Digest,
    },
    /// A history block is not the parent of the block above it.
    #[error(
        "block {height} hashes to {hash}, but the block above it names {expected} as its parent"
    )]
    NotParent {
        /// Height of the block.
        height: u64,
        /// Its hash.
        hash: Digest,
        /// The parent hash the block above names.
        expected: Digest,
    },
    /// The block is not the one the operator trusts at its height (`--trusted-block`).
    #[error(
        "the verified chain holds {offered} at height {height}, not the trusted block {trusted}: refused, nothing of it stored"
    )]
    Untrusted {
        /// Height.
        height: u64,
        /// The trusted hash.
        trusted: Digest,
        /// The hash of the block offered.
        offered: Digest,
    },
    /// A different block is already finalized at this height.
    #[error("height {height} is already finalized as {stored}, not {offered}")]
    Conflict {
        /// Height.
        height: u64,
        /// Stored hash.
        stored: Digest,
        /// Offered hash.
        offered: Digest,
    },
    /// The store holds another chain's genesis.
    #[error("the store holds genesis {stored}, not this chain's genesis {expected}")]
    GenesisMismatch {
        /// Stored genesis hash.
        stored: Digest,
        /// Expected genesis hash.
        expected: Digest,
    },
    /// A block the store claims to hold is missing.
    #[error("the store lost block {0}")]
    Missing(u64),
}

/// What the follower needs from an execution client.
pub trait ExecutionProvider: Clone + Send + Sync + 'static {
    /// Height of the finalized tip (0 = genesis only).
    fn finalized_height(&self) -> u64;

    /// Height of the first served block: 0 for a chain stored from genesis, the checkpoint's
    /// height for one started at a verified checkpoint, lower as history below the checkpoint
    /// is backfilled.
    fn first_height(&self) -> u64;

    /// The header at `height`.
    fn header_by_number(
        &self,
        height: u64,
    ) -> impl Future<Output = Result<Option<TempoHeader>, ExecutionError>> + Send;

    /// The block at `height`.
    fn block_by_number(
        &self,
        height: u64,
    ) -> impl Future<Output = Result<Option<Block>, ExecutionError>> + Send;

    /// The raw block at `height` (its RLP), if stored with its body. By default the block is
    /// read and encoded.
    fn raw_block_by_number(
        &self,
        height: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, ExecutionError>> + Send {
        async move {
            Ok(self
                .block_by_number(height)
                .await?
                .and_then(|block| block.raw_rlp()))
        }
    }

    /// The block with hash `digest`.
    fn block_by_hash(
        &self,
        digest: Digest,
    ) -> impl Future<Output = Result<Option<Block>, ExecutionError>> + Send;

    /// The finalized block holding the transaction with hash `hash`, and its position in it.
    fn transaction_by_hash(
        &self,
        hash: B256,
    ) -> impl Future<Output = Result<Option<(Block, usize)>, ExecutionError>> + Send;

    /// Makes `block` the finalized tip; it is durable when this returns. Blocks must arrive in
    /// height order and extend the tip; offering an already finalized block again is a no-op.
    fn finalize(&self, block: Block) -> impl Future<Output = Result<(), ExecutionError>> + Send;
}

/// The finalized tip: its height and hash.
#[derive(Clone, Copy, Debug)]
struct Tip {
    height: u64,
    hash: Digest,
}

/// The lowest stored block of the consecutive heights up to the tip: its height, and the hash
/// it names as its parent (what the block below it must hash to).
#[derive(Clone, Copy, Debug)]
struct First {
    height: u64,
    parent: Digest,
}

/// The embedded execution store: finalized blocks on disk (cheap to clone).
pub struct EmbeddedExecution<E: StoreContext> {
    blocks: BlockStore<E>,
    first: Arc<RwLock<First>>,
    tip: Arc<RwLock<Tip>>,
    trusted: Arc<RwLock<std::collections::BTreeMap<u64, Digest>>>,
}

impl<E: StoreContext> Clone for EmbeddedExecution<E> {
    fn clone(&self) -> Self {
        Self {
            blocks: self.blocks.clone(),
            first: self.first.clone(),
            tip: self.tip.clone(),
            trusted: self.trusted.clone(),
        }
    }
}

impl<E: StoreContext> EmbeddedExecution<E> {
    /// Opens the store for the chain starting at `genesis` (stored on first open; a store of
    /// another chain is refused).
    pub async fn open(context: E, genesis: &Block) -> Result<Self, ExecutionError> {
        Self::open_in(context, "execution", genesis).await
    }

    /// [`Self::open`] in partitions named after `prefix`, for several stores in one storage.
    ///
    /// `anchor` is the first block of the stored chain: the genesis block, or the block of a
    /// verified checkpoint. An empty store starts at it; a store that already holds a chain
    /// continues that chain (a genesis anchor must match its stored genesis).
    pub async fn open_in(context: E, prefix: &str, anchor: &Block) -> Result<Self, ExecutionError> {
        let blocks = BlockStore::open(context, &format!("{prefix}-blocks"), page_cache()).await?;
        match blocks.first_height().await {
            None => blocks.put(anchor).await?,
            Some(0) if anchor.height() == 0 => {
                let stored = blocks.get(0).await?.ok_or(ExecutionError::Missing(0))?;
                if stored.hash() != anchor.hash() {
                    return Err(ExecutionError::GenesisMismatch {
                        stored: stored.hash(),
                        expected: anchor.hash(),
                    });
                }
            }
            Some(_) => {}
        }
        // Blocks above the anchor are only ever written in order, so the last index is the
        // tip; history below it is written downwards from the anchor, so the served chain is
        // the run of consecutive heights that holds the tip.
        let height = blocks.last_height().await.unwrap_or(anchor.height());
        let tip_block = blocks
            .get(height)
            .await?
            .ok_or(ExecutionError::Missing(height))?;
        let first = blocks.consecutive_down_from(height).await.unwrap_or(height);
        let first_block = blocks
            .get(first)
            .await?
            .ok_or(ExecutionError::Missing(first))?;
        Ok(Self {
            blocks,
            first: Arc::new(RwLock::new(First {
                height: first,
                parent: first_block.parent(),
            })),
            tip: Arc::new(RwLock::new(Tip {
                height,
                hash: tip_block.hash(),
            })),
            trusted: Arc::default(),
        })
    }

    /// Refuses, from now on, every write of a block at a height of `trusted` that is not the
    /// trusted block, before anything of its write is stored.
    pub fn trust(&self, trusted: &[cairn_epoch::TrustedBlock]) {
        self.trusted
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(trusted.iter().map(|block| (block.height, block.hash)));
    }

    /// [`ExecutionError::Untrusted`] for the first of `blocks` that is not the block trusted
    /// at its height.
    fn check_trusted<'a>(
        &self,
        blocks: impl IntoIterator<Item = &'a Block>,
    ) -> Result<(), ExecutionError> {
        let trusted = self
            .trusted
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if trusted.is_empty() {
            return Ok(());
        }
        for block in blocks {
            if let Some(hash) = trusted.get(&block.height())
                && *hash != block.hash()
            {
                return Err(ExecutionError::Untrusted {
                    height: block.height(),
                    trusted: *hash,
                    offered: block.hash(),
                });
            }
        }
        Ok(())
    }

    /// Stores `blocks`, history directly below the first stored block in descending heights
    /// (each the parent of the one before), with one sync, then serves them. The caller has
    /// authenticated them through the parent hashes from the first stored block; the first of
    /// them must be its parent.
    pub async fn store_history(&self, blocks: &[Block]) -> Result<(), ExecutionError> {
        let Some(last) = blocks.last() else {
            return Ok(());
        };
        let first = self.first();
        let mut expected = (first.height, first.parent);
        for block in blocks {
            let height = expected
                .0
                .checked_sub(1)
                .ok_or(ExecutionError::OutOfOrder {
                    expected: 0,
                    got: block.height(),
                })?;
            if block.height() != height {
                return Err(ExecutionError::OutOfOrder {
                    expected: height,
                    got: block.height(),
                });
            }
            if block.hash() != expected.1 {
                return Err(ExecutionError::NotParent {
                    height,
                    hash: block.hash(),
                    expected: expected.1,
                });
            }
            expected = (height, block.parent());
        }
        self.check_trusted(blocks)?;
        self.blocks.put_unindexed(blocks).await?;
        *self
            .first
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = First {
            height: last.height(),
            parent: last.parent(),
        };
        Ok(())
    }

    /// The lowest served height and the hash its block names as its parent: where history
    /// below it continues.
    pub fn history_start(&self) -> (u64, Digest) {
        let first = self.first();
        (first.height, first.parent)
    }

    fn first(&self) -> First {
        *self
            .first
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores `blocks`, the consecutive heights after the tip each the parent of the next,
    /// with one sync, then moves the tip to the last. The caller has authenticated them (by
    /// parent hashes from a verified certificate); the first must extend the tip.
    pub async fn finalize_batch(&self, blocks: &[Block]) -> Result<(), ExecutionError> {
        let Some(last) = blocks.last() else {
            return Ok(());
        };
        let tip = self.tip();
        let mut expected = (tip.height + 1, tip.hash);
        for block in blocks {
            if block.height() != expected.0 {
                return Err(ExecutionError::OutOfOrder {
                    expected: expected.0,
                    got: block.height(),
                });
            }
            if block.parent() != expected.1 {
                return Err(ExecutionError::ParentMismatch {
                    height: block.height(),
                    parent: block.parent(),
                    tip: expected.1,
                });
            }
            expected = (block.height() + 1, block.hash());
        }
        self.check_trusted(blocks)?;
        self.blocks.put_batch(blocks).await?;
        *self
            .tip
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Tip {
            height: last.height(),
            hash: last.hash(),
        };
        Ok(())
    }

    /// The heights whose stored block is damaged and not repaired yet, lowest first.
    pub fn damaged(&self) -> Vec<u64> {
        self.blocks.damaged()
    }

    /// Damaged heights found, and repaired, since the store was opened.
    pub fn damage_counts(&self) -> (u64, u64) {
        self.blocks.damage_counts()
    }

    /// Stores `block`, fetched again for a height whose stored copy is damaged, once it is the
    /// block the stored chain holds there: the parent the stored block above names, or the
    /// tip's hash for the tip. Returns whether it was stored; `false` when the block above is
    /// damaged too (it is repaired first, from the top).
    pub async fn repair(&self, block: &Block) -> Result<bool, ExecutionError> {
        let height = block.height();
        let tip = self.tip();
        let expected = if height == tip.height {
            tip.hash
        } else {
            match self.blocks.get(height + 1).await {
                Ok(Some(above)) => above.parent(),
                Ok(None) => return Err(ExecutionError::Missing(height + 1)),
                Err(err) if err.is_corruption() => return Ok(false),
                Err(err) => return Err(err.into()),
            }
        };
        if block.hash() != expected {
            return Err(ExecutionError::NotParent {
                height,
                hash: block.hash(),
                expected,
            });
        }
        self.blocks.put_repaired(block).await?;
        Ok(true)
    }

    /// The hash of the served block at `height`, read without decoding the block.
    pub async fn hash_by_number(&self, height: u64) -> Result<Option<Digest>, ExecutionError> {
        if height > self.tip().height {
            return Ok(None);
        }
        Ok(self.blocks.hash_at(height).await?)
    }

    /// The hash of the block at the finalized height.
    pub fn finalized_hash(&self) -> Digest {
        self.tip().hash
    }

    fn tip(&self) -> Tip {
        *self
            .tip
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<E: StoreContext> ExecutionProvider for EmbeddedExecution<E> {
    fn finalized_height(&self) -> u64 {
        self.tip().height
    }

    fn first_height(&self) -> u64 {
        self.first().height
    }

    async fn header_by_number(&self, height: u64) -> Result<Option<TempoHeader>, ExecutionError> {
        Ok(self
            .block_by_number(height)
            .await?
            .map(|block| block.into_parts().0))
    }

    async fn block_by_number(&self, height: u64) -> Result<Option<Block>, ExecutionError> {
        if height > self.tip().height {
            return Ok(None);
        }
        Ok(self.blocks.get(height).await?)
    }

    async fn raw_block_by_number(&self, height: u64) -> Result<Option<Vec<u8>>, ExecutionError> {
        if height > self.tip().height {
            return Ok(None);
        }
        Ok(self.blocks.get_raw(height).await?)
    }

    async fn block_by_hash(&self, digest: Digest) -> Result<Option<Block>, ExecutionError> {
        // Only the served heights: a block written but not yet finalized (its batch failed
        // before the tip moved) is not served.
        let found = self.blocks.get_by_hash(digest).await?;
        let (first, tip) = (self.first().height, self.tip().height);
        Ok(found.filter(|block| (first..=tip).contains(&block.height())))
    }

    async fn transaction_by_hash(
        &self,
        hash: B256,
    ) -> Result<Option<(Block, usize)>, ExecutionError> {
        let found = self.blocks.transaction(hash).await?;
        let tip = self.tip().height;
        Ok(found.filter(|(block, _)| block.height() <= tip))
    }

    async fn finalize(&self, block: Block) -> Result<(), ExecutionError> {
        let tip = self.tip();
        let height = block.height();
        if height <= tip.height {
            let stored = self
                .blocks
                .get(height)
                .await?
                .ok_or(ExecutionError::Missing(height))?;
            if stored.hash() == block.hash() {
                debug!(height, "block already finalized; redelivery ignored");
                return Ok(());
            }
            return Err(ExecutionError::Conflict {
                height,
                stored: stored.hash(),
                offered: block.hash(),
            });
        }
        if height != tip.height + 1 {
            return Err(ExecutionError::OutOfOrder {
                expected: tip.height + 1,
                got: height,
            });
        }
        if block.parent() != tip.hash {
            return Err(ExecutionError::ParentMismatch {
                height,
                parent: block.parent(),
                tip: tip.hash,
            });
        }
        self.check_trusted([&block])?;
        self.blocks.put(&block).await?;
        *self
            .tip
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Tip {
            height,
            hash: block.hash(),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests;
