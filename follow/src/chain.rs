//! What a follower serves: finalized blocks from its execution store and their finalizations
//! from marshal's archive (or, for the boundaries and tips catch-up verified and the
//! certificates the fill stored, from the anchor store), only up to the executed height, so it
//! never serves a gap. A served height whose certificate is still missing has it fetched at
//! once (see [`crate::certificates`]).
//!
//! It also says how each served block came to be trusted (`cairn_explain`), derived from what
//! is stored: its own certificate when one is stored, else the parent-hash links up to the
//! nearest certified block; the key of the certificate's epoch and the boundary block that
//! announced it; who served the bytes (the [`Provenance`] record); and the root the chain of
//! trust starts from (the genesis outcome, the checkpoint, or a block the profile pins).

use crate::{
    certificates::{CertificateRequests, Coverage},
    driver::MarshalMailbox,
};
use cairn_dkg::Identity;
use cairn_epoch::{ChainProfile, Finalization, SchemeProvider, certified_block};
use cairn_feed::{
    ChainReader, Explained, ReadError,
    explain::{Authentication, BytesOrigin, CertificateTrust, Explanation, KeyOrigin, TrustRoot},
};
use cairn_primitives::{Block, CertifiedBlock, Digest};
use cairn_storage::StoreContext;
use cairn_storage::{
    AnchorStore, execution::ExecutionProvider, provenance::Provenance, registry::IdentityHistory,
};
use commonware_codec::Encode as _;
use commonware_consensus::types::{Epoch, Height};
use commonware_storage::archive::Identifier;
use tracing::warn;

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

/// Certified heights a lookup tries before it gives up on finding the one above a block (the
/// heights it tries are those the coverage and the anchor store name, so a miss is rare).
const MAX_PROBES: usize = 64;

/// What `explain` reads besides the chain's stores.
pub struct TrustContext<E: StoreContext> {
    /// The chain's profile (epochs, genesis outcome, trusted blocks).
    pub profile: ChainProfile,
    /// The registered keys.
    pub provider: SchemeProvider,
    /// The identities seen, for epochs whose key is no longer registered.
    pub identities: IdentityHistory,
    /// Who served each height's bytes.
    pub provenance: Provenance<E>,
    /// The heights marshal holds certificates for.
    pub coverage: Coverage,
    /// The checkpoint this node started from: its height, hash and epoch.
    pub checkpoint: Option<(u64, Digest, u64)>,
}

impl<E: StoreContext> TrustContext<E> {
    fn identity(&self, epoch: u64) -> Option<Identity> {
        self.provider
            .registered_identity(Epoch::new(epoch))
            .or_else(|| {
                self.identities
                    .known()
                    .into_iter()
                    .rev()
                    .find(|(first, _)| *first <= epoch)
                    .map(|(_, identity)| identity)
            })
            .or_else(|| (epoch == 0).then(|| *self.profile.genesis.identity()))
    }
}

fn hex(identity: &Identity) -> String {
    alloy_primitives::hex::encode_prefixed(identity.encode())
}

impl<P: ExecutionProvider, E: StoreContext> FollowerChain<P, E> {
    /// How the block at `height` came to be trusted.
    async fn explain_height(
        &self,
        trust: &TrustContext<E>,
        height: u64,
    ) -> Result<Explained, ReadError> {
        let tip = self.execution().finalized_height();
        if height > tip || height < self.execution().first_height() {
            return Ok(Explained::NotServed);
        }
        let Some(block) = self
            .execution()
            .block_by_number(height)
            .await
            .map_err(read_error)?
        else {
            return Ok(Explained::NotServed);
        };
        let hash = block.hash();
        let authentication = if height == 0 {
            Authentication::Genesis
        } else if let Some(finalization) = self.stored_certificate(height).await? {
            Authentication::Certificate {
                certificate: self.certificate_trust(trust, height, &finalization).await?,
            }
        } else {
            let child = self
                .execution()
                .block_by_number(height + 1)
                .await
                .map_err(read_error)?;
            match (child, self.certified_above(trust, height, tip).await?) {
                (Some(child), Some((certified, finalization))) => {
                    if child.parent() != hash {
                        return Err(ReadError(format!(
                            "block {} does not name block {height} as its parent: the store is damaged",
                            height + 1
                        )));
                    }
                    Authentication::ParentHash {
                        child: height + 1,
                        child_hash: child.hash(),
                        links: certified - height,
                        certificate: self
                            .certificate_trust(trust, certified, &finalization)
                            .await?,
                    }
                }
                _ if trust
                    .profile
                    .trusted_blocks
                    .iter()
                    .any(|trusted| trusted.height >= height) =>
                {
                    Authentication::TrustedBlock
                }
                _ => {
                    return Err(ReadError(format!(
                        "block {height} is stored but no certified block above it is: the store is damaged"
                    )));
                }
            }
        };
        // A damaged record costs only this line.
        let served = trust.provenance.get(height).await.unwrap_or_else(|err| {
            warn!(height, %err, "the provenance record does not read");
            None
        });
        let bytes = served.map(|served| BytesOrigin {
            source: served.source,
            at_ms: served.at_ms,
            how: served.how.to_string(),
        });
        let trust_root = match (&authentication, trust.checkpoint) {
            (Authentication::TrustedBlock, _) => trust
                .profile
                .trusted_blocks
                .iter()
                .filter(|trusted| trusted.height >= height)
                .min_by_key(|trusted| trusted.height)
                .map(|trusted| TrustRoot::TrustedBlock {
                    height: trusted.height,
                    hash: trusted.hash,
                })
                .expect("a trusted block at or above the height was found just above"),
            (_, Some((height, hash, epoch))) => TrustRoot::Checkpoint {
                height,
                hash,
                epoch,
            },
            (_, None) => TrustRoot::GenesisOutcome {
                identity: trust.identity(0).as_ref().map(hex),
            },
        };
        Ok(Explained::Block(Box::new(Explanation {
            height,
            hash,
            authentication,
            bytes,
            trust_root,
        })))
    }

    /// The nearest height above `height` (up to `tip`) with a stored certificate, and that
    /// certificate. Candidates come from marshal's heights (the coverage) and the anchor store.
    async fn certified_above(
        &self,
        trust: &TrustContext<E>,
        height: u64,
        tip: u64,
    ) -> Result<Option<(u64, Finalization)>, ReadError> {
        let mut from = height + 1;
        for _ in 0..MAX_PROBES {
            if from > tip {
                return Ok(None);
            }
            let anchored = self
                .anchors()
                .ranges_from(from)
                .await
                .first()
                .map(|(first, _)| (*first).max(from));
            let candidate = [anchored, trust.coverage.marshal_from(from)]
                .into_iter()
                .flatten()
                .min();
            let Some(candidate) = candidate.filter(|candidate| *candidate <= tip) else {
                return Ok(None);
            };
            if let Some(finalization) = self.stored_certificate(candidate).await? {
                return Ok(Some((candidate, finalization)));
            }
            from = candidate + 1;
        }
        Ok(None)
    }

    async fn certificate_trust(
        &self,
        trust: &TrustContext<E>,
        height: u64,
        finalization: &Finalization,
    ) -> Result<CertificateTrust, ReadError> {
        let epoch = finalization.proposal.round.epoch().get();
        let key_from = match epoch.checked_sub(1) {
            None => KeyOrigin::GenesisOutcome,
            Some(before) => {
                let boundary = trust
                    .profile
                    .epochs
                    .boundary_height(Epoch::new(before))
                    .ok_or_else(|| ReadError(format!("epoch {before} has no boundary height")))?;
                let hash = if boundary >= self.execution().first_height()
                    && boundary <= self.execution().finalized_height()
                {
                    self.execution()
                        .block_by_number(boundary)
                        .await
                        .map_err(read_error)?
                        .map(|block| block.hash())
                } else {
                    None
                };
                KeyOrigin::Boundary {
                    height: boundary,
                    hash,
                }
            }
        };
        Ok(CertificateTrust {
            height,
            epoch,
            view: finalization.proposal.round.view().get(),
            identity: trust.identity(epoch).as_ref().map(hex),
            key_from,
        })
    }
}
