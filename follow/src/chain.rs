//! What a follower serves: finalized blocks from its execution store and their finalizations
//! from marshal's archive, only up to the executed height, so it never serves a gap.

use crate::{driver::MarshalMailbox, execution::ExecutionProvider};
use cairn_epoch::certified_block;
use cairn_feed::{ChainReader, ReadError};
use cairn_primitives::{Block, CertifiedBlock, Digest};
use commonware_consensus::types::Height;

/// The follower's chain, read by its RPC server (cheap to clone).
#[derive(Clone)]
pub struct FollowerChain<P> {
    execution: P,
    marshal: MarshalMailbox,
}

impl<P: ExecutionProvider> FollowerChain<P> {
    /// Reads blocks from `execution` and finalizations from `marshal`.
    pub const fn new(execution: P, marshal: MarshalMailbox) -> Self {
        Self { execution, marshal }
    }

    /// The execution store itself (not limited to the executed height).
    pub const fn execution(&self) -> &P {
        &self.execution
    }

    /// Marshal, whose archives hold every finalized block and finalization it stored.
    pub const fn marshal(&self) -> &MarshalMailbox {
        &self.marshal
    }
}

fn read_error(err: impl std::fmt::Display) -> ReadError {
    ReadError(err.to_string())
}

impl<P: ExecutionProvider> ChainReader for FollowerChain<P> {
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
        let Some(finalization) = self.marshal.get_finalization(Height::new(height)).await else {
            return Ok(None);
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
