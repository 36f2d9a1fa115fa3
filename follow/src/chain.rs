//! What a follower serves: finalized blocks from its execution store and their finalizations
//! from marshal's archive (or, for the boundaries and tips catch-up verified and the
//! certificates the fill stored, from the anchor store), only up to the executed height, so it
//! never serves a gap. A served height whose certificate is still missing has it fetched at
//! once (see [`crate::certificates`]).

use crate::{
    catchup::AnchorStore, certificates::CertificateRequests, driver::MarshalMailbox,
    execution::ExecutionProvider, explain::TrustContext,
};
use cairn_epoch::{Finalization, certified_block};
use cairn_feed::{ChainReader, Explained, ReadError, StoreContext};
use cairn_primitives::{Block, CertifiedBlock, Digest};
use commonware_consensus::types::Height;
use commonware_storage::archive::Identifier;

/// The follower's chain, read by its RPC server (cheap to clone).
pub struct FollowerChain<P, E: StoreContext> {
    execution: P,
    marshal: MarshalMailbox,
    anchors: AnchorStore<E>,
    certificates: Option<CertificateRequests>,
    trust: Option<std::sync::Arc<TrustContext<E>>>,
}

impl<P: Clone, E: StoreContext> Clone for FollowerChain<P, E> {
    fn clone(&self) -> Self {
        Self {
            execution: self.execution.clone(),
            marshal: self.marshal.clone(),
            anchors: self.anchors.clone(),
            certificates: self.certificates.clone(),
            trust: self.trust.clone(),
        }
    }
}

impl<P: ExecutionProvider, E: StoreContext> FollowerChain<P, E> {
    /// Reads blocks from `execution` and finalizations from `marshal`, then `anchors`.
    pub const fn new(execution: P, marshal: MarshalMailbox, anchors: AnchorStore<E>) -> Self {
        Self {
            execution,
            marshal,
            anchors,
            certificates: None,
            trust: None,
        }
    }

    /// Fetches a served height's missing certificate through `certificates` when it is asked
    /// for.
    pub fn with_certificates(mut self, certificates: CertificateRequests) -> Self {
        self.certificates = Some(certificates);
        self
    }

    /// Explains its blocks (`cairn_explain`) with what `trust` holds.
    pub fn with_trust(mut self, trust: TrustContext<E>) -> Self {
        self.trust = Some(std::sync::Arc::new(trust));
        self
    }

    /// The store of the finalizations catch-up verified and the fill stored.
    pub const fn anchors(&self) -> &AnchorStore<E> {
        &self.anchors
    }

    /// The certificate stored for `height`: marshal's, else the anchor store's. Nothing is
    /// fetched.
    pub async fn stored_certificate(&self, height: u64) -> Result<Option<Finalization>, ReadError> {
        if let Some(finalization) = self.marshal.get_finalization(Height::new(height)).await {
            return Ok(Some(finalization));
        }
        self.anchors
            .get(Identifier::Index(height), "reading a verified finalization")
            .await
            .map_err(read_error)
    }

    /// [`Self::stored_certificate`], fetched now when it is missing.
    async fn finalization_at(&self, height: u64) -> Result<Option<Finalization>, ReadError> {
        if let Some(finalization) = self.stored_certificate(height).await? {
            return Ok(Some(finalization));
        }
        let Some(certificates) = &self.certificates else {
            return Ok(None);
        };
        match certificates.fetch(height).await {
            Some(finalization) => Ok(Some(finalization)),
            // Stored by the fill since the first read, perhaps.
            None => self.stored_certificate(height).await,
        }
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
        let Some(finalization) = self.finalization_at(height).await? else {
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

    async fn explain(&self, height: u64) -> Result<Explained, ReadError> {
        match &self.trust {
            Some(trust) => self.explain_height(trust, height).await,
            None => Ok(Explained::Unsupported),
        }
    }
}
