//! The identity ledger: the chain of boundary certificates from genesis, verified one epoch at
//! a time. Each boundary block is checked with its own epoch's key, and its DKG outcome gives
//! the next epoch's key, so the ledger learns every identity from the genesis outcome alone,
//! across reshares and full DKGs.
//!
//! It keeps only the first epoch of each run of equal identities, with the boundary block that
//! introduced it (verifiable by the previous identity), and names the boundary that failed when
//! the chain is broken.

use crate::{ChainProfile, EpochStrategy, FinalizationVerifier, SchemeProvider, VerifyError};
use cairn_dkg::Identity;
use cairn_primitives::{CertifiedBlock, TempoHeader};
use commonware_consensus::types::Epoch;
use rand::CryptoRng;
use std::future::Future;
use tracing::{debug, info};

/// Epochs the ledger's own verifier registry keeps while walking (it only ever needs the
/// current and the next one).
const WALK_EPOCHS: usize = 4;

/// Why a boundary could not be fetched.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// Where the ledger gets boundary blocks with their certificates (an upstream node's
/// `consensus_getFinalization`, completed with the block when the answer lacks it).
pub trait BoundarySource {
    /// The certified block at `height`, including the block.
    fn certified_at(
        &self,
        height: u64,
    ) -> impl Future<Output = Result<CertifiedBlock, SourceError>> + Send;
}

/// Why the ledger could not advance.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A boundary block could not be fetched.
    #[error("could not fetch the boundary of epoch {epoch} (height {height}): {error}")]
    Source {
        /// Epoch whose boundary was fetched.
        epoch: u64,
        /// Its height.
        height: u64,
        /// The source's error.
        error: SourceError,
    },
    /// A boundary block did not verify: the chain of identities is broken there.
    #[error("the boundary of epoch {epoch} (height {height}) does not verify: {error}")]
    Broken {
        /// Epoch whose boundary failed.
        epoch: u64,
        /// Its height.
        height: u64,
        /// The failed check.
        error: VerifyError,
    },
    /// The source answered with another height than the boundary asked for.
    #[error("asked for the boundary of epoch {epoch} (height {height}), got height {got}")]
    NotTheBoundary {
        /// Epoch whose boundary was fetched.
        epoch: u64,
        /// The boundary height.
        height: u64,
        /// The height received.
        got: u64,
    },
    /// The epoch has no boundary height (overflow).
    #[error("epoch {0} has no boundary height")]
    NoBoundary(u64),
}

/// The boundary block that announced an identity, with its certificate.
#[derive(Clone, Debug)]
pub struct BoundaryEvidence {
    /// Height of the boundary block.
    pub height: u64,
    /// Its header (its `extraData` holds the outcome with the new identity).
    pub header: TempoHeader,
    /// Unprefixed hex of its finalization certificate (signed by the previous identity).
    pub certificate: String,
}

/// A run of epochs sharing one identity.
#[derive(Clone, Debug)]
pub struct IdentityRun {
    /// First epoch of the run.
    pub from_epoch: u64,
    /// The identity.
    pub identity: Identity,
    /// The boundary that announced it (`None` for the genesis identity).
    pub evidence: Option<BoundaryEvidence>,
}

/// The verified chain of identities from genesis.
#[derive(Clone, Debug)]
pub struct IdentityLedger {
    epochs: EpochStrategy,
    verifier: FinalizationVerifier,
    runs: Vec<IdentityRun>,
    known_through: u64,
}

impl IdentityLedger {
    /// A ledger that knows the genesis identity (epoch 0) of `profile`.
    pub fn from_genesis(profile: &ChainProfile) -> Self {
        let provider = SchemeProvider::new(&profile.namespace, WALK_EPOCHS);
        let identity = *profile.genesis.identity();
        provider
            .register(Epoch::zero(), identity)
            .expect("an empty registry has no conflicts");
        Self {
            epochs: profile.epochs.clone(),
            verifier: FinalizationVerifier::new(profile.epochs.clone(), provider),
            runs: vec![IdentityRun {
                from_epoch: 0,
                identity,
                evidence: None,
            }],
            known_through: 0,
        }
    }

    /// The runs of equal identities, oldest first.
    pub fn runs(&self) -> &[IdentityRun] {
        &self.runs
    }

    /// The highest epoch whose identity is known.
    pub const fn known_through(&self) -> u64 {
        self.known_through
    }

    /// The identity of `epoch`, if the ledger has reached it.
    pub fn identity_for(&self, epoch: u64) -> Option<Identity> {
        if epoch > self.known_through {
            return None;
        }
        self.runs
            .iter()
            .rev()
            .find(|run| run.from_epoch <= epoch)
            .map(|run| run.identity)
    }

    /// Walks the boundary blocks until the identity of `epoch` is known.
    pub async fn advance_to(
        &mut self,
        rng: &mut impl CryptoRng,
        source: &impl BoundarySource,
        epoch: u64,
    ) -> Result<(), LedgerError> {
        while self.known_through < epoch {
            let current = self.known_through;
            let height = self
                .epochs
                .boundary_height(Epoch::new(current))
                .ok_or(LedgerError::NoBoundary(current))?;
            let certified =
                source
                    .certified_at(height)
                    .await
                    .map_err(|error| LedgerError::Source {
                        epoch: current,
                        height,
                        error,
                    })?;
            // A valid certificate for another block of the epoch must not pass for the boundary.
            let got = certified
                .block
                .as_ref()
                .map_or(height, |block| block.height());
            if got != height {
                return Err(LedgerError::NotTheBoundary {
                    epoch: current,
                    height,
                    got,
                });
            }
            let (verified, _) =
                self.verifier
                    .verify_and_register(rng, &certified)
                    .map_err(|error| LedgerError::Broken {
                        epoch: current,
                        height,
                        error,
                    })?;
            let Some(outcome) = verified.next_epoch.as_ref() else {
                return Err(LedgerError::NotTheBoundary {
                    epoch: current,
                    height,
                    got: verified.height(),
                });
            };
            let next_identity = *outcome.identity();
            let previous = self
                .runs
                .last()
                .expect("the ledger always holds the genesis run")
                .identity;
            if next_identity != previous {
                info!(
                    epoch = current + 1,
                    height, "network identity rotated (full DKG)"
                );
                self.runs.push(IdentityRun {
                    from_epoch: current + 1,
                    identity: next_identity,
                    evidence: Some(BoundaryEvidence {
                        height,
                        header: verified.block.header().clone(),
                        certificate: certified.certificate.clone(),
                    }),
                });
            } else {
                debug!(epoch = current + 1, height, "identity kept (reshare)");
            }
            self.known_through = current + 1;
        }
        Ok(())
    }

    /// A verifier registry holding the identity of `epoch` (after [`Self::advance_to`]).
    pub fn provider_for(&self, namespace: &[u8], epoch: u64) -> Option<SchemeProvider> {
        let identity = self.identity_for(epoch)?;
        let provider = SchemeProvider::new(namespace, 1);
        provider
            .register(Epoch::new(epoch), identity)
            .expect("an empty registry has no conflicts");
        Some(provider)
    }
}
