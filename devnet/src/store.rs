//! The devnet's chain on disk: blocks and finalizations in commonware-storage immutable
//! archives (indexed by height, keyed by block hash), and the secrets in a metadata store.
//!
//! Writes are ordered so that a crash never leaves a finalization without its block: the block
//! is synced first, then its finalization. A block without a finalization is re-certified on
//! restart instead of being replaced.

use cairn_epoch::{Finalization, certified_block};
use cairn_feed::{ChainReader, ReadError};
use cairn_primitives::{Block, CertifiedBlock, Digest};
use cairn_storage::{BlockStore, SharedArchive, StoreContext, archive_config, page_cache};
use commonware_storage::{
    archive::{Archive as _, Identifier, immutable},
    metadata::{self, Metadata},
};
use commonware_utils::sequence::U64;
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use tokio::sync::RwLock;

/// Most bytes of one secrets record (pool keys or one epoch's shares).
const MAX_SECRET_RECORD: usize = 1 << 20;

/// Marker for "no finalized block yet" in the tip atomic.
const NO_TIP: u64 = u64::MAX;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The block or finalization archive failed.
    #[error(transparent)]
    Storage(#[from] cairn_storage::StoreError),
    /// The metadata store failed.
    #[error("metadata {what}: {error}")]
    Metadata {
        /// What was being done.
        what: &'static str,
        /// The metadata error.
        error: commonware_storage::metadata::Error,
    },
    /// A failed write destroyed a store handle; the store cannot be used any more.
    #[error("the store was poisoned by an earlier failed write")]
    Poisoned,
}

type FinalizationArchive<E> = immutable::Archive<E, Digest, Finalization>;
type SecretStore<E> = Metadata<E, U64, Vec<u8>>;

/// The chain store (cheap to clone; clones share state).
pub struct ChainStore<E: StoreContext> {
    blocks: BlockStore<E>,
    finalizations: SharedArchive<FinalizationArchive<E>>,
    secrets: Arc<RwLock<Option<SecretStore<E>>>>,
    tip: Arc<AtomicU64>,
}

impl<E: StoreContext> Clone for ChainStore<E> {
    fn clone(&self) -> Self {
        Self {
            blocks: self.blocks.clone(),
            finalizations: self.finalizations.clone(),
            secrets: self.secrets.clone(),
            tip: self.tip.clone(),
        }
    }
}

impl<E: StoreContext> ChainStore<E> {
    /// Opens (or creates) the store in `context`'s storage.
    pub async fn open(context: E) -> Result<Self, StoreError> {
        Self::open_in(context, "devnet").await
    }

    /// Opens (or creates) the store in `context`'s storage, in partitions named from `prefix`
    /// (several stores can share one storage).
    pub async fn open_in(context: E, prefix: &str) -> Result<Self, StoreError> {
        let page_cache = page_cache();
        let blocks = BlockStore::open(
            context.child("blocks"),
            &format!("{prefix}-blocks"),
            page_cache.clone(),
        )
        .await?;
        let finalizations = immutable::Archive::init(
            context.child("finalizations"),
            archive_config(&format!("{prefix}-finalizations"), page_cache, ()),
        )
        .await
        .map_err(|error| cairn_storage::StoreError::Archive {
            what: "opening finalizations",
            error,
        })?;
        let secrets = Metadata::init(
            context.child("secrets"),
            metadata::Config {
                partition: format!("{prefix}-secrets"),
                codec_config: ((..=MAX_SECRET_RECORD).into(), ()),
            },
        )
        .await
        .map_err(|error| StoreError::Metadata {
            what: "opening secrets",
            error,
        })?;
        let tip = finalizations.last_index().unwrap_or(NO_TIP);
        Ok(Self {
            blocks,
            finalizations: SharedArchive::new(finalizations),
            secrets: Arc::new(RwLock::new(Some(secrets))),
            tip: Arc::new(AtomicU64::new(tip)),
        })
    }

    /// Highest stored block height (genesis is 0), if any.
    pub async fn last_block_height(&self) -> Option<u64> {
        self.blocks.last_height().await
    }

    /// Stores a block and syncs it.
    pub async fn put_block(&self, block: &Block) -> Result<(), StoreError> {
        Ok(self.blocks.put(block).await?)
    }

    /// Stores the finalization of the block at `height`, syncs it, and advances the tip.
    pub async fn put_finalization(
        &self,
        height: u64,
        finalization: &Finalization,
    ) -> Result<(), StoreError> {
        self.finalizations
            .put_sync(
                height,
                finalization.proposal.payload,
                finalization,
                "writing a finalization",
            )
            .await?;
        self.tip.store(height, Ordering::Release);
        Ok(())
    }

    /// Stores a block and its finalization without syncing either, nor moving the tip: the
    /// bulk producer writes many, then calls [`Self::commit`].
    pub async fn put_unsynced(
        &self,
        block: &Block,
        finalization: &Finalization,
    ) -> Result<(), StoreError> {
        self.blocks.put_unsynced(block).await?;
        self.finalizations
            .put(
                block.height(),
                finalization.proposal.payload,
                finalization,
                "writing a finalization",
            )
            .await?;
        Ok(())
    }

    /// Syncs what [`Self::put_unsynced`] wrote (blocks, then finalizations) and moves the tip
    /// to `height`, so it is served only once durable.
    pub async fn commit(&self, height: u64) -> Result<(), StoreError> {
        self.sync().await?;
        self.tip.store(height, Ordering::Release);
        Ok(())
    }

    /// The finalization stored for `height`.
    pub async fn finalization_at(&self, height: u64) -> Result<Option<Finalization>, StoreError> {
        Ok(self
            .finalizations
            .get(Identifier::Index(height), "reading a finalization")
            .await?)
    }

    /// The block stored for `height`.
    pub async fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        Ok(self.blocks.get(height).await?)
    }

    /// The block with `hash`.
    pub async fn block_with_hash(&self, hash: Digest) -> Result<Option<Block>, StoreError> {
        Ok(self.blocks.get_by_hash(hash).await?)
    }

    /// A secrets record.
    pub async fn secret(&self, key: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let secrets = self.secrets.read().await;
        let store = secrets.as_ref().ok_or(StoreError::Poisoned)?;
        Ok(store.get(&U64::new(key)).cloned())
    }

    /// Writes a secrets record and syncs it; records below `keep_from` (other than keys at or
    /// above `u64::MAX - 16`, reserved for fixed records) are dropped.
    pub async fn put_secret(
        &self,
        key: u64,
        value: Vec<u8>,
        keep_from: u64,
    ) -> Result<(), StoreError> {
        let mut secrets = self.secrets.write().await;
        let mut store = secrets.take().ok_or(StoreError::Poisoned)?;
        store.retain(|k, _| {
            let k = u64::from(k);
            k >= keep_from || k >= u64::MAX - 16
        });
        let store = store
            .put_sync(U64::new(key), value)
            .await
            .map_err(|error| StoreError::Metadata {
                what: "writing secrets",
                error,
            })?;
        *secrets = Some(store);
        Ok(())
    }

    /// Syncs everything (used at shutdown).
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.blocks.sync().await?;
        Ok(self.finalizations.sync("syncing finalizations").await?)
    }

    fn read_error(err: StoreError) -> ReadError {
        ReadError(err.to_string())
    }
}

impl<E: StoreContext> ChainReader for ChainStore<E> {
    fn finalized_height(&self) -> Option<u64> {
        let tip = self.tip.load(Ordering::Acquire);
        (tip != NO_TIP).then_some(tip)
    }

    async fn certified_at(&self, height: u64) -> Result<Option<CertifiedBlock>, ReadError> {
        let Some(finalization) = self
            .finalization_at(height)
            .await
            .map_err(Self::read_error)?
        else {
            return Ok(None);
        };
        let block = self.block(height).await.map_err(Self::read_error)?;
        Ok(block.map(|block| certified_block(&finalization, block)))
    }

    async fn block_at(&self, height: u64) -> Result<Option<Block>, ReadError> {
        self.block(height).await.map_err(Self::read_error)
    }

    async fn raw_block_at(&self, height: u64) -> Result<Option<Vec<u8>>, ReadError> {
        self.blocks
            .get_raw(height)
            .await
            .map_err(|err| ReadError(err.to_string()))
    }

    async fn block_by_hash(&self, hash: Digest) -> Result<Option<Block>, ReadError> {
        self.block_with_hash(hash).await.map_err(Self::read_error)
    }

    async fn transaction_by_hash(
        &self,
        hash: alloy_primitives::B256,
    ) -> Result<Option<(Block, usize)>, ReadError> {
        let found = self
            .blocks
            .transaction(hash)
            .await
            .map_err(|err| ReadError(err.to_string()))?;
        // A block stored a moment before its finalization is not served yet.
        let tip = self.finalized_height();
        Ok(found.filter(|(block, _)| tip.is_some_and(|tip| block.height() <= tip)))
    }
}
