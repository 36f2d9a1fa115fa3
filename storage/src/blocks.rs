//! On-disk block storage a node serves from: a commonware-storage immutable archive of blocks,
//! indexed by height and keyed by hash, and a persisted, bounded index from transaction hash to
//! its block and position (the most recent transactions). Writes are synced before they return.

use crate::archive::{SharedArchive, StoreContext, StoreError, archive_config};
use alloy_primitives::B256;
use bytes::BufMut;
use cairn_primitives::{Block, BlockCodecConfig, Digest, StoredBlock};
use commonware_codec::{Buf, Error as CodecError, FixedSize, Read, ReadExt, Write};
use commonware_runtime::buffer::paged::CacheRef;
use commonware_storage::{
    archive::{Archive, Identifier, immutable, prunable},
    translator::EightCap,
};
use std::{
    num::{NonZeroU64, NonZeroUsize},
    sync::Arc,
};
use tokio::sync::Mutex;

/// Decodes a stored block.
fn decode(stored: &StoredBlock, what: &'static str) -> Result<Block, StoreError> {
    stored
        .decode(&BlockCodecConfig::default())
        .map_err(|error| StoreError::Decode { what, error })
}

/// Transactions the index keeps by default: the most recent 262,144 (older ones are pruned a
/// section at a time, and looking them up finds nothing, as on nodes with a transaction
/// lookup limit). Its in-memory part costs tens of bytes per transaction.
pub const DEFAULT_TX_INDEX_LIMIT: u64 = 1 << 18;

/// Settings of the transaction index keeping `limit` transactions, pruned in sections of a
/// sixteenth of that.
fn tx_index_config(
    prefix: &str,
    page_cache: CacheRef,
    limit: u64,
) -> prunable::Config<EightCap, ()> {
    let buffer = NonZeroUsize::new(64 * 1024).expect("non-zero");
    prunable::Config {
        translator: EightCap,
        metadata_partition: format!("{prefix}-metadata"),
        key_partition: format!("{prefix}-keys"),
        key_page_cache: page_cache,
        value_partition: format!("{prefix}-values"),
        compression: None,
        codec_config: (),
        items_per_section: NonZeroU64::new((limit / 16).max(1)).expect("non-zero"),
        key_write_buffer: buffer,
        value_write_buffer: buffer,
        replay_buffer: buffer,
    }
}

impl<E: StoreContext> SharedArchive<prunable::Archive<EightCap, E, Digest, TxLocation>> {
    /// Drops the entries below `min` (whole sections).
    async fn prune(&self, min: u64, what: &'static str) -> Result<(), StoreError> {
        let mut guard = self.inner.write().await;
        let archive = guard.take().ok_or(StoreError::Poisoned)?;
        *guard = Some(
            archive
                .prune(min)
                .await
                .map_err(|error| StoreError::Archive { what, error })?,
        );
        Ok(())
    }
}

/// Where a transaction sits: its block's height and its position in the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxLocation {
    /// Height of the block holding the transaction.
    pub height: u64,
    /// Position of the transaction in the block.
    pub index: u32,
}

impl Write for TxLocation {
    fn write(&self, buf: &mut impl BufMut) {
        self.height.write(buf);
        self.index.write(buf);
    }
}

impl FixedSize for TxLocation {
    const SIZE: usize = u64::SIZE + u32::SIZE;
}

impl Read for TxLocation {
    type Cfg = ();

    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(Self {
            height: u64::read(buf)?,
            index: u32::read(buf)?,
        })
    }
}

/// Blocks by height and hash, and transactions by hash (cheap to clone; clones share state).
///
/// The transaction index is a prunable archive keyed by transaction hash, its entries numbered
/// in the order they were written; it keeps the most recent `tx_limit` entries. A block's
/// entries are written and synced before the block itself, so a crash between the two
/// leaves at most entries whose block is missing; reads check the block, and storing the block
/// again skips the entries already there. Only a block at or below the highest indexed height
/// can have entries already, so new blocks are indexed without looking any key up.
pub struct BlockStore<E: StoreContext> {
    archive: SharedArchive<immutable::Archive<E, Digest, StoredBlock>>,
    /// Blocks fetched again for heights whose stored copy is damaged (the archive is
    /// write-once): reads fall back to them.
    repaired: SharedArchive<immutable::Archive<E, Digest, StoredBlock>>,
    /// Heights found damaged and not repaired yet.
    damaged: Arc<std::sync::Mutex<std::collections::BTreeSet<u64>>>,
    /// Damaged heights found, and repaired, since the store was opened.
    counts: Arc<std::sync::Mutex<(u64, u64)>>,
    transactions: SharedArchive<prunable::Archive<EightCap, E, Digest, TxLocation>>,
    cursor: Arc<Mutex<IndexCursor>>,
    tx_limit: u64,
}

/// Where the transaction index stands.
#[derive(Clone, Copy, Debug)]
struct IndexCursor {
    /// Number of the next entry.
    next_entry: u64,
    /// The highest height with an indexed transaction, if any.
    indexed_through: Option<u64>,
}

impl<E: StoreContext> Clone for BlockStore<E> {
    fn clone(&self) -> Self {
        Self {
            archive: self.archive.clone(),
            repaired: self.repaired.clone(),
            damaged: self.damaged.clone(),
            counts: self.counts.clone(),
            transactions: self.transactions.clone(),
            cursor: self.cursor.clone(),
            tx_limit: self.tx_limit,
        }
    }
}

impl<E: StoreContext> BlockStore<E> {
    /// Opens (or creates) the store in partitions named after `prefix`, indexing the most recent
    /// [`DEFAULT_TX_INDEX_LIMIT`] transactions.
    pub async fn open(context: E, prefix: &str, page_cache: CacheRef) -> Result<Self, StoreError> {
        Self::open_with_tx_limit(context, prefix, page_cache, DEFAULT_TX_INDEX_LIMIT).await
    }

    /// [`Self::open`] keeping the most recent `tx_limit` transactions in the index (at least
    /// one; up to a section more are kept, as pruning goes by sections).
    pub async fn open_with_tx_limit(
        context: E,
        prefix: &str,
        page_cache: CacheRef,
        tx_limit: u64,
    ) -> Result<Self, StoreError> {
        let tx_limit = tx_limit.max(1);
        let archive = immutable::Archive::init(
            context.child("blocks"),
            archive_config(prefix, page_cache.clone(), BlockCodecConfig::default()),
        )
        .await
        .map_err(|error| StoreError::Archive {
            what: "opening blocks",
            error,
        })?;
        let repaired = immutable::Archive::init(
            context.child("repaired"),
            archive_config(
                &format!("{prefix}-repaired"),
                page_cache.clone(),
                BlockCodecConfig::default(),
            ),
        )
        .await
        .map_err(|error| StoreError::Archive {
            what: "opening repaired blocks",
            error,
        })?;
        let transactions = prunable::Archive::init(
            context.child("transactions"),
            tx_index_config(&format!("{prefix}-tx-index"), page_cache, tx_limit),
        )
        .await
        .map_err(|error| StoreError::Archive {
            what: "opening the transaction index",
            error,
        })?;
        let last_entry = transactions.last_index();
        let indexed_through = match last_entry {
            Some(entry) => transactions
                .get(Identifier::Index(entry))
                .await
                .map_err(|error| StoreError::Archive {
                    what: "reading the transaction index",
                    error,
                })?
                .map(|location: TxLocation| location.height),
            None => None,
        };
        Ok(Self {
            archive: SharedArchive::new(archive),
            repaired: SharedArchive::new(repaired),
            damaged: Arc::default(),
            counts: Arc::default(),
            transactions: SharedArchive::new(transactions),
            cursor: Arc::new(Mutex::new(IndexCursor {
                next_entry: last_entry.map_or(0, |last| last + 1),
                indexed_through,
            })),
            tx_limit,
        })
    }

    /// Lowest stored height, if any (0 for a chain stored from genesis).
    pub async fn first_height(&self) -> Option<u64> {
        self.archive.first_index().await
    }

    /// Highest stored height, if any.
    pub async fn last_height(&self) -> Option<u64> {
        self.archive.last_index().await
    }

    /// Stores `block` at its height and indexes its transactions, syncing both; a height
    /// already stored is left unchanged.
    pub async fn put(&self, block: &Block) -> Result<(), StoreError> {
        self.index_transactions(block).await?;
        self.write_block(block).await?;
        self.archive.sync("writing a block").await
    }

    /// Stores `block` and indexes its transactions without syncing (see [`Self::sync`]): a
    /// producer writing many blocks at once syncs them together.
    pub async fn put_unsynced(&self, block: &Block) -> Result<(), StoreError> {
        self.index_transactions_unsynced(block).await?;
        self.write_block(block).await
    }

    /// Writes `block` to the block archive, without syncing or indexing.
    async fn write_block(&self, block: &Block) -> Result<(), StoreError> {
        self.archive
            .put(
                block.height(),
                block.hash(),
                &StoredBlock::new(block),
                "writing a block",
            )
            .await
    }

    /// Stores `blocks` (consecutive heights) and indexes their transactions with one sync of
    /// each store: the index first, then the blocks, so a block on disk is always indexed.
    /// Heights already stored are left unchanged.
    pub async fn put_batch(&self, blocks: &[Block]) -> Result<(), StoreError> {
        // The two stores are written at once (block writes mostly wait on the disk, indexing
        // mostly computes); nothing is durable before the syncs, which keep that order.
        let indexing = async {
            for block in blocks {
                self.index_transactions_unsynced(block).await?;
            }
            Ok::<_, StoreError>(())
        };
        let writing = async {
            for block in blocks {
                self.write_block(block).await?;
            }
            Ok::<_, StoreError>(())
        };
        let (indexed, written) = futures::join!(indexing, writing);
        indexed?;
        written?;
        self.transactions
            .sync("syncing the transaction index")
            .await?;
        self.prune_transactions().await?;
        self.archive.sync("writing blocks").await
    }

    /// Stores `blocks` with one sync of the block archive, without indexing their transactions
    /// (for history below the stored blocks: the index keeps the newest transactions, and those
    /// are older than every indexed one). Heights already stored are left unchanged.
    pub async fn put_unindexed(&self, blocks: &[Block]) -> Result<(), StoreError> {
        for block in blocks {
            self.write_block(block).await?;
        }
        self.archive.sync("writing blocks").await
    }

    /// The lowest height of the consecutive stored heights that hold `height`.
    pub async fn consecutive_down_from(&self, height: u64) -> Option<u64> {
        self.archive.run_holding(height).await
    }

    /// Number of transaction index entries written.
    pub async fn indexed_transactions(&self) -> u64 {
        self.cursor.lock().await.next_entry
    }

    /// Writes the index entries of `block` that are not there yet, with one sync.
    async fn index_transactions(&self, block: &Block) -> Result<(), StoreError> {
        if self.index_transactions_unsynced(block).await? {
            self.transactions
                .sync("syncing the transaction index")
                .await?;
            self.prune_transactions().await?;
        }
        Ok(())
    }

    /// Drops the oldest index entries beyond the limit.
    async fn prune_transactions(&self) -> Result<(), StoreError> {
        let cursor = self.cursor.lock().await;
        if let Some(min) = cursor.next_entry.checked_sub(self.tx_limit) {
            self.transactions
                .prune(min, "pruning the transaction index")
                .await?;
        }
        Ok(())
    }

    /// Writes the index entries of `block` that are not there yet, without syncing; whether
    /// any was written.
    async fn index_transactions_unsynced(&self, block: &Block) -> Result<bool, StoreError> {
        use alloy_consensus::transaction::TxHashRef as _;
        if block.transactions().is_empty() {
            return Ok(false);
        }
        let mut cursor = self.cursor.lock().await;
        let height = block.height();
        let may_be_indexed = cursor
            .indexed_through
            .is_some_and(|through| height <= through);
        let mut wrote = false;
        for (index, tx) in block.transactions().iter().enumerate() {
            let key = Digest(*tx.tx_hash());
            if may_be_indexed
                && self
                    .transactions
                    .has(Identifier::Key(&key), "reading the transaction index")
                    .await?
            {
                continue;
            }
            let location = TxLocation {
                height,
                index: u32::try_from(index).unwrap_or(u32::MAX),
            };
            self.transactions
                .put(cursor.next_entry, key, &location, "indexing a transaction")
                .await?;
            cursor.next_entry += 1;
            wrote = true;
        }
        if wrote {
            cursor.indexed_through = cursor.indexed_through.max(Some(height));
        }
        Ok(wrote)
    }

    /// The block at `height`. A stored copy that is damaged is answered from its repaired
    /// copy when there is one, else with [`StoreError::Corrupt`] (the height is then listed by
    /// [`Self::damaged`]).
    pub async fn get(&self, height: u64) -> Result<Option<Block>, StoreError> {
        const WHAT: &str = "reading a block";
        self.read(height, WHAT, |stored| decode(stored, WHAT)).await
    }

    /// The raw block at `height` (as [`Block::raw_rlp`] gives it), read without decoding
    /// the block; `None` when it is not stored or its body is unknown.
    pub async fn get_raw(&self, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let raw = self
            .read(height, "reading a raw block", |stored| Ok(stored.raw_rlp()))
            .await?;
        Ok(raw.flatten())
    }

    /// The hash of the block at `height`, read without decoding the block; `None` when it is
    /// not stored.
    pub async fn hash_at(&self, height: u64) -> Result<Option<Digest>, StoreError> {
        self.read(height, "reading a block's hash", |stored| Ok(stored.hash()))
            .await
    }

    /// `read` of the block stored at `height`, from its repaired copy when the first one is
    /// damaged (its checksum fails, or `read` finds it does not decode).
    async fn read<T>(
        &self,
        height: u64,
        what: &'static str,
        read: impl Fn(&StoredBlock) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let damage = match self.archive.get(Identifier::Index(height), what).await {
            Ok(Some(stored)) => match read(&stored) {
                Ok(value) => return Ok(Some(value)),
                Err(error) => error,
            },
            Ok(None) => return Ok(None),
            Err(error) if error.is_corruption() => error,
            Err(error) => return Err(error),
        };
        if let Some(repaired) = self.repaired.get(Identifier::Index(height), what).await? {
            return read(&repaired).map(Some);
        }
        let newly = self
            .damaged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(height);
        if newly {
            self.counts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0 += 1;
            tracing::warn!(height, %damage, "a stored block is damaged; it will be fetched again");
        }
        Err(StoreError::Corrupt {
            height,
            detail: damage.to_string(),
        })
    }

    /// The heights found damaged and not repaired yet, lowest first.
    pub fn damaged(&self) -> Vec<u64> {
        self.damaged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Damaged heights found and repaired since the store was opened.
    pub fn damage_counts(&self) -> (u64, u64) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores `block` as the repaired copy of its height, synced; the caller has checked that
    /// it is the block the chain holds there.
    pub async fn put_repaired(&self, block: &Block) -> Result<(), StoreError> {
        self.repaired
            .put_sync(
                block.height(),
                block.hash(),
                &StoredBlock::new(block),
                "storing a repaired block",
            )
            .await?;
        self.damaged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&block.height());
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .1 += 1;
        Ok(())
    }

    /// The block with hash `hash`.
    pub async fn get_by_hash(&self, hash: Digest) -> Result<Option<Block>, StoreError> {
        const WHAT: &str = "reading a block by hash";
        let stored = self.archive.get(Identifier::Key(&hash), WHAT).await?;
        stored.map(|stored| decode(&stored, WHAT)).transpose()
    }

    /// The stored block holding the transaction with hash `hash`, and its position in it.
    pub async fn transaction(&self, hash: B256) -> Result<Option<(Block, usize)>, StoreError> {
        use alloy_consensus::transaction::TxHashRef as _;
        let Some(location) = self
            .transactions
            .get(
                Identifier::Key(&Digest(hash)),
                "reading the transaction index",
            )
            .await?
        else {
            return Ok(None);
        };
        let Some(block) = self.get(location.height).await? else {
            return Ok(None);
        };
        let index = location.index as usize;
        let found = block
            .transactions()
            .get(index)
            .is_some_and(|tx| *tx.tx_hash() == hash);
        Ok(found.then_some((block, index)))
    }

    /// Syncs pending writes: the transaction index first, then the blocks (every `put`
    /// already syncs; this is for [`Self::put_unsynced`] and shutdown).
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.transactions
            .sync("syncing the transaction index")
            .await?;
        self.prune_transactions().await?;
        self.archive.sync("syncing blocks").await
    }
}
