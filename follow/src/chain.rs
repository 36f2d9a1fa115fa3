//! What a follower serves: finalized blocks from its execution store and their finalizations
//! from marshal's archive (or, for the boundaries and tips catch-up verified, from the anchor
//! store), only up to the executed height, so it never serves a gap. It serves from the moment
//! the stores are open: during the start-up catch-up, before marshal is attached, the
//! finalizations come from the anchor store alone.

use crate::{catchup::AnchorStore, driver::MarshalMailbox, execution::ExecutionProvider};
use cairn_epoch::certified_block;
use cairn_feed::{ChainReader, ReadError, StoreContext};
use cairn_primitives::{Block, CertifiedBlock, Digest};
use commonware_consensus::types::Height;
use commonware_storage::archive::Identifier;
use std::sync::{Arc, OnceLock};

/// The follower's chain, read by its RPC server (cheap to clone).
pub struct FollowerChain<P, E: StoreContext> {
    execution: P,
    marshal: Arc<OnceLock<MarshalMailbox>>,
    anchors: AnchorStore<E>,
}

impl<P: Clone, E: StoreContext> Clone for FollowerChain<P, E> {
    fn clone(&self) -> Self {
        Self {
            execution: self.execution.clone(),
            marshal: self.marshal.clone(),
            anchors: self.anchors.clone(),
        }
    }
}

impl<P: ExecutionProvider, E: StoreContext> FollowerChain<P, E> {
    /// Reads blocks from `execution` and finalizations from `anchors`, and from marshal once
    /// [`Self::attach_marshal`] gives it.
    pub fn new(execution: P, anchors: AnchorStore<E>) -> Self {
        Self {
            execution,
            marshal: Arc::default(),
            anchors,
        }
    }

    /// Reads finalizations from `marshal` first from now on (every clone of this chain does);
    /// the first marshal attached stays.
    pub fn attach_marshal(&self, marshal: MarshalMailbox) {
        let _ = self.marshal.set(marshal);
    }

    /// The execution store itself (not limited to the executed height).
    pub const fn execution(&self) -> &P {
        &self.execution
    }

    /// Marshal, whose archives hold every finalized block and finalization it stored, once
    /// attached.
    pub fn marshal(&self) -> Option<&MarshalMailbox> {
        self.marshal.get()
    }
}

fn read_error(err: impl std::fmt::Display) -> ReadError {
    ReadError(err.to_string())
}

impl<P: ExecutionProvider, E: StoreContext> ChainReader for FollowerChain<P, E> {
    fn finalized_height(&self) -> Option<u64> {
        let height = self.execution.finalized_height();
        (height > 0).then_some(height)
    }

    fn first_height(&self) -> u64 {
        self.execution.first_height()
    }

    async fn certified_at(&self, height: u64) -> Result<Option<CertifiedBlock>, ReadError> {
        if height == 0 || height > self.execution.finalized_height() {
            return Ok(None);
        }
        let from_marshal = match self.marshal.get() {
            Some(marshal) => marshal.get_finalization(Height::new(height)).await,
            None => None,
        };
        let finalization = match from_marshal {
            Some(finalization) => finalization,
            None => match self
                .anchors
                .get(Identifier::Index(height), "reading a verified finalization")
                .await
                .map_err(read_error)?
            {
                Some(finalization) => finalization,
                None => return Ok(None),
            },
        };
        let block = self
            .execution
            .block_by_number(height)
            .await
            .map_err(read_error)?;
        Ok(block.map(|block| certified_block(&finalization, block)))
    }

    async fn block_at(&self, height: u64) -> Result<Option<Block>, ReadError> {
        self.execution
            .block_by_number(height)
            .await
            .map_err(read_error)
    }

    async fn raw_block_at(&self, height: u64) -> Result<Option<Vec<u8>>, ReadError> {
        self.execution
            .raw_block_by_number(height)
            .await
            .map_err(read_error)
    }

    async fn block_by_hash(&self, hash: Digest) -> Result<Option<Block>, ReadError> {
        let block = self
            .execution
            .block_by_hash(hash)
            .await
            .map_err(read_error)?;
        // The store may hold a block a moment before the watermark names it.
        Ok(block.filter(|block| block.height() <= self.execution.finalized_height()))
    }

    async fn transaction_by_hash(
        &self,
        hash: alloy_primitives::B256,
    ) -> Result<Option<(Block, usize)>, ReadError> {
        self.execution
            .transaction_by_hash(hash)
            .await
            .map_err(read_error)
    }
}
