//! How a served block came to be trusted, derived from what the follower stored: its own
//! certificate when one is stored, else the parent-hash links up to the nearest certified
//! block; the key of the certificate's epoch and the boundary block that announced it; who
//! served the bytes (the [`Provenance`] record); and the root the chain of trust starts from
//! (the genesis outcome, the checkpoint, or a block the profile pins).

use crate::{
    certificates::Coverage, chain::FollowerChain, execution::ExecutionProvider,
    provenance::Provenance, registry::IdentityHistory,
};
use cairn_dkg::Identity;
use cairn_epoch::{ChainProfile, Finalization, SchemeProvider};
use cairn_feed::{
    Explained, ReadError, StoreContext,
    explain::{Authentication, BytesOrigin, CertificateTrust, Explanation, KeyOrigin, TrustRoot},
};
use cairn_primitives::Digest;
use commonware_codec::Encode as _;
use commonware_consensus::types::Epoch;
use tracing::warn;

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

fn read_error(err: impl std::fmt::Display) -> ReadError {
    ReadError(err.to_string())
}

impl<P: ExecutionProvider, E: StoreContext> FollowerChain<P, E> {
    /// How the block at `height` came to be trusted.
    pub(crate) async fn explain_height(
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
