//! What every store is built on: the runtime context a store needs, the error of a store
//! operation, commonware-storage archive settings, and an archive shared between tasks.

use commonware_runtime::{Clock, Metrics, Storage, buffer::paged::CacheRef};
use commonware_storage::archive::{Archive, Identifier, immutable};
use std::{
    num::{NonZeroU16, NonZeroU64, NonZeroUsize},
    sync::Arc,
};
use tokio::sync::RwLock;

/// The storage context a store needs (the commonware tokio or deterministic runtime).
pub trait StoreContext: Storage + Clock + Metrics + Send + Sync + 'static {}

impl<E: Storage + Clock + Metrics + Send + Sync + 'static> StoreContext for E {}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An archive failed.
    #[error("archive {what}: {error}")]
    Archive {
        /// What was being done.
        what: &'static str,
        /// The archive error.
        error: commonware_storage::archive::Error,
    },
    /// A stored block does not decode.
    #[error("{what}: the stored block does not decode: {error}")]
    Decode {
        /// What was being done.
        what: &'static str,
        /// The codec error.
        error: commonware_codec::Error,
    },
    /// A failed write destroyed the archive handle; the store cannot be used any more.
    #[error("the store was poisoned by an earlier failed write")]
    Poisoned,
    /// The block stored at a height fails its checksum or does not decode, and no repaired
    /// copy is stored yet.
    #[error("block {height} is damaged on disk ({detail}); it is fetched again from the upstreams")]
    Corrupt {
        /// Its height.
        height: u64,
        /// What the store found.
        detail: String,
    },
}

/// Whether an archive read failed because the stored record itself is damaged (a checksum
/// that fails, a record that does not decode), as opposed to a store that cannot be read.
pub fn is_damage(error: &commonware_storage::archive::Error) -> bool {
    let text = error.to_string().to_lowercase();
    text.contains("checksum") || text.contains("corrupt") || text.contains("codec")
}

impl StoreError {
    /// Whether the stored data itself is damaged (a checksum that fails, a record that does
    /// not decode), as opposed to a store that cannot be read or written.
    pub fn is_corruption(&self) -> bool {
        match self {
            Self::Decode { .. } | Self::Corrupt { .. } => true,
            Self::Archive { error, .. } => is_damage(error),
            Self::Poisoned => false,
        }
    }
}

/// The page cache shared by a node's archives.
pub fn page_cache() -> CacheRef {
    CacheRef::new(
        NonZeroU16::new(4096).expect("non-zero"),
        NonZeroUsize::new(256).expect("non-zero"),
    )
}

/// Archive settings for partitions named after `prefix`.
pub fn archive_config<C>(
    prefix: &str,
    page_cache: CacheRef,
    codec_config: C,
) -> immutable::Config<C> {
    let buffer = NonZeroUsize::new(64 * 1024).expect("non-zero");
    immutable::Config {
        metadata_partition: format!("{prefix}-metadata"),
        freezer_table_partition: format!("{prefix}-freezer-table"),
        freezer_table_initial_size: 1024,
        freezer_table_resize_frequency: 4,
        freezer_table_resize_chunk_size: 1024,
        freezer_key_partition: format!("{prefix}-freezer-key"),
        freezer_key_page_cache: page_cache,
        freezer_value_partition: format!("{prefix}-freezer-value"),
        freezer_value_target_size: 64 * 1024 * 1024,
        freezer_value_compression: None,
        ordinal_partition: format!("{prefix}-ordinal"),
        items_per_section: NonZeroU64::new(4096).expect("non-zero"),
        freezer_key_write_buffer: buffer,
        freezer_value_write_buffer: buffer,
        ordinal_write_buffer: buffer,
        replay_buffer: buffer,
        codec_config,
    }
}

/// An archive shared between tasks. commonware archives consume themselves on every write, so
/// the handle lives behind a lock, and a failed write leaves the store poisoned rather than
/// half-updated.
pub struct SharedArchive<A> {
    pub(crate) inner: Arc<RwLock<Option<A>>>,
}

impl<A> Clone for SharedArchive<A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<A: Archive> SharedArchive<A> {
    /// Shares `archive`.
    pub fn new(archive: A) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Some(archive))),
        }
    }

    /// Lowest stored index, if any.
    pub async fn first_index(&self) -> Option<u64> {
        self.inner.read().await.as_ref()?.first_index()
    }

    /// Highest stored index, if any.
    pub async fn last_index(&self) -> Option<u64> {
        self.inner.read().await.as_ref()?.last_index()
    }

    /// The first index of the run of consecutive stored indices that holds `index`, if
    /// `index` is stored.
    pub async fn run_holding(&self, index: u64) -> Option<u64> {
        let guard = self.inner.read().await;
        let archive = guard.as_ref()?;
        archive
            .ranges_from(index)
            .next()
            .filter(|(first, _)| *first <= index)
            .map(|(first, _)| first)
    }

    /// The runs of consecutive stored indices that end at or above `from`, lowest first.
    pub async fn ranges_from(&self, from: u64) -> Vec<(u64, u64)> {
        let guard = self.inner.read().await;
        guard
            .as_ref()
            .map(|archive| archive.ranges_from(from).collect())
            .unwrap_or_default()
    }

    /// Stores `value` at `index` under `key` and syncs it (an index already stored is kept).
    pub async fn put_sync(
        &self,
        index: u64,
        key: A::Key,
        value: &A::Value,
        what: &'static str,
    ) -> Result<(), StoreError> {
        self.put(index, key, value, what).await?;
        self.sync(what).await
    }

    /// Stores `value` at `index` under `key` without syncing (an index already stored is kept).
    pub async fn put(
        &self,
        index: u64,
        key: A::Key,
        value: &A::Value,
        what: &'static str,
    ) -> Result<(), StoreError> {
        let mut guard = self.inner.write().await;
        let archive = guard.take().ok_or(StoreError::Poisoned)?;
        let archive = archive
            .put(index, key, value)
            .await
            .map_err(|error| StoreError::Archive { what, error })?;
        *guard = Some(archive);
        Ok(())
    }

    /// Whether `identifier` is stored.
    pub async fn has(
        &self,
        identifier: Identifier<'_, A::Key>,
        what: &'static str,
    ) -> Result<bool, StoreError> {
        let guard = self.inner.read().await;
        let archive = guard.as_ref().ok_or(StoreError::Poisoned)?;
        archive
            .has(identifier)
            .await
            .map_err(|error| StoreError::Archive { what, error })
    }

    /// The value at `identifier`.
    pub async fn get(
        &self,
        identifier: Identifier<'_, A::Key>,
        what: &'static str,
    ) -> Result<Option<A::Value>, StoreError> {
        let guard = self.inner.read().await;
        let archive = guard.as_ref().ok_or(StoreError::Poisoned)?;
        archive
            .get(identifier)
            .await
            .map_err(|error| StoreError::Archive { what, error })
    }

    /// Syncs pending writes.
    pub async fn sync(&self, what: &'static str) -> Result<(), StoreError> {
        let mut guard = self.inner.write().await;
        let archive = guard.take().ok_or(StoreError::Poisoned)?;
        *guard = Some(
            archive
                .sync()
                .await
                .map_err(|error| StoreError::Archive { what, error })?,
        );
        Ok(())
    }
}
