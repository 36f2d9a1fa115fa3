//! Verification of one certified block, in a fixed order with one typed error per failed check:
//!
//! 1. hex-decode and codec-decode the certificate (size-checked before decoding);
//! 2. the certificate's payload equals the locally recomputed block hash;
//! 3. the certificate's epoch is the epoch containing the block height;
//! 4. choose the verifier (registered for the epoch, else a configured identity);
//! 5. verify the threshold signatures (finalize vote and seed);
//! 6. on a boundary block, decode the next epoch's DKG outcome (and, with
//!    [`FinalizationVerifier::verify_and_register`], register its verifier exactly once).
//!
//! The server-supplied `epoch`, `view` and `digest` fields are never used.

use crate::{
    EpochStrategy, IdentitySource, RegisterError, Registration, SchemeProvider,
    provider::FinalizationScheme,
};
use alloy_primitives::hex;
use cairn_dkg::{DkgOutcome, Identity, OutcomeError, OutcomeLayout, OutcomeLimits};
use cairn_primitives::{Block, CertifiedBlock, Digest};
use commonware_codec::{Decode, Encode};
use commonware_consensus::{
    simplex::types::{self, Subject},
    types::Epoch,
};
use commonware_cryptography::certificate::Verifier as _;
use commonware_parallel::{Sequential, Strategy};
use commonware_utils::iter::NonEmpty;
use rand::CryptoRng;

/// A Tempo finalization certificate.
pub type Finalization = types::Finalization<FinalizationScheme, Digest>;

/// The largest encoded finalization: varint epoch, view, parent view (10 bytes each at most),
/// the 32-byte payload and two 48-byte G1 signatures.
pub const MAX_CERTIFICATE_BYTES: usize = 3 * 10 + 32 + 2 * 48;

/// Checks 2 and 3, which need no key: the certificate signs this block (its payload is the
/// locally recomputed hash) and its epoch is the epoch containing the block's height.
pub fn check_unsigned(
    epochs: &EpochStrategy,
    block: &Block,
    finalization: &Finalization,
) -> Result<(), VerifyError> {
    let height = block.height();
    let computed = block.hash();
    let certified = finalization.proposal.payload;
    if certified != computed {
        return Err(VerifyError::DigestMismatch {
            height,
            certified,
            computed,
        });
    }
    let epoch = finalization.proposal.round.epoch();
    let expected = epochs.epoch_of(height);
    if epoch != expected {
        return Err(VerifyError::EpochMismatch {
            height,
            certificate: epoch,
            expected,
        });
    }
    Ok(())
}

/// Reads the outcome that boundary block `block` announces for the next epoch (check 6), the
/// way Tempo's validators read it, in the layout the block's timestamp selects: a legacy outcome
/// may be followed by bytes (ignored and noted in the log), a TIP-1123 outcome must fill
/// `extraData` exactly. Only the outcome's public polynomial and epoch are relied on; the legacy
/// layout's next ceremony never decides anything (TIP-1123 drops it). Callers only pass boundary
/// blocks: other blocks may carry dealer logs in `extraData`, which stay opaque.
pub fn boundary_outcome(
    epochs: &EpochStrategy,
    block: &Block,
    limits: &OutcomeLimits,
) -> Result<DkgOutcome, VerifyError> {
    let height = block.height();
    let layout = epochs.outcome_layout(block.header().inner.timestamp);
    let (outcome, trailing) =
        DkgOutcome::decode_boundary(block.header().inner.extra_data.as_ref(), layout, limits)
            .map_err(|error| VerifyError::BoundaryOutcome {
                height,
                layout,
                error,
            })?;
    let expected = epochs.epoch_of(height).get().saturating_add(1);
    if outcome.epoch != expected {
        return Err(VerifyError::OutcomeEpochMismatch {
            height,
            expected,
            found: outcome.epoch,
        });
    }
    if trailing > 0 {
        tracing::info!(
            height,
            epoch = expected,
            trailing,
            "boundary outcome followed by bytes Tempo's reader ignores; ignored them too"
        );
    }
    Ok(outcome)
}

/// Why a certified block is malformed (check 1).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MalformedError {
    /// The certified block carries no block, so its hash cannot be recomputed.
    #[error("no block: the certificate's payload cannot be checked")]
    MissingBlock,
    /// The certificate hex is longer than any valid certificate.
    #[error("certificate is {0} hex characters, longer than any valid certificate")]
    CertificateTooLong(usize),
    /// The certificate is not valid hex.
    #[error("certificate is not valid hex: {0}")]
    CertificateHex(String),
    /// The certificate bytes do not decode.
    #[error("certificate does not decode: {0}")]
    CertificateCodec(String),
    /// A signature in the certificate is not a valid G1 point.
    #[error("certificate signature is not a valid G1 point")]
    SignaturePoint,
}

/// Why a certified block was rejected.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Check 1: the input is malformed.
    #[error("malformed certified block: {0}")]
    Malformed(#[from] MalformedError),
    /// Check 2: the certificate signs another block.
    #[error(
        "digest mismatch at height {height}: certificate signs {certified}, block hashes to {computed}"
    )]
    DigestMismatch {
        /// Height of the block.
        height: u64,
        /// Payload of the certificate.
        certified: Digest,
        /// Recomputed block hash.
        computed: Digest,
    },
    /// Check 3: the certificate is for another epoch than the block height's.
    #[error(
        "epoch mismatch at height {height}: certificate epoch {certificate}, height is in epoch {expected}"
    )]
    EpochMismatch {
        /// Height of the block.
        height: u64,
        /// Epoch in the certificate.
        certificate: Epoch,
        /// Epoch containing the height.
        expected: Epoch,
    },
    /// Check 4: no verifier is known for the epoch.
    #[error("identity unavailable for epoch {epoch} (height {height})")]
    IdentityUnavailable {
        /// Height of the block.
        height: u64,
        /// Epoch without a verifier.
        epoch: Epoch,
    },
    /// Check 5: the threshold signatures do not verify.
    #[error(
        "bad signature at height {height}: certificate does not verify under the epoch {epoch} identity"
    )]
    BadSignature {
        /// Height of the block.
        height: u64,
        /// Epoch of the certificate.
        epoch: Epoch,
    },
    /// Check 6: the boundary block's `extraData` is not a DKG outcome in the layout its
    /// timestamp selects.
    #[error("boundary block {height} carries no valid DKG outcome in the {layout} layout: {error}")]
    BoundaryOutcome {
        /// Height of the boundary block.
        height: u64,
        /// The layout the block's timestamp selects.
        layout: OutcomeLayout,
        /// The decode error.
        error: OutcomeError,
    },
    /// Check 6: the boundary outcome is for the wrong epoch.
    #[error("boundary block {height} carries the outcome for epoch {found}, expected {expected}")]
    OutcomeEpochMismatch {
        /// Height of the boundary block.
        height: u64,
        /// Epoch the outcome should be for.
        expected: u64,
        /// Epoch the outcome is for.
        found: u64,
    },
    /// Check 6: the next epoch already has a verifier for a different identity.
    #[error("boundary block {height}: {error}")]
    Registration {
        /// Height of the boundary block.
        height: u64,
        /// The conflict.
        error: RegisterError,
    },
}

impl VerifyError {
    /// A short stable name of the failed check (used in JSON output and logs).
    pub const fn check(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::DigestMismatch { .. } => "digest_mismatch",
            Self::EpochMismatch { .. } => "epoch_mismatch",
            Self::IdentityUnavailable { .. } => "identity_unavailable",
            Self::BadSignature { .. } => "bad_signature",
            Self::BoundaryOutcome { .. } => "boundary_outcome",
            Self::OutcomeEpochMismatch { .. } => "outcome_epoch_mismatch",
            Self::Registration { .. } => "registration_conflict",
        }
    }
}

/// A certified block that passed every check.
#[derive(Clone, Debug)]
pub struct VerifiedBlock {
    /// The block.
    pub block: Block,
    /// The decoded finalization.
    pub finalization: Finalization,
    /// The identity that verified it.
    pub identity: Identity,
    /// Where that identity came from.
    pub identity_source: IdentitySource,
    /// For a boundary block: the DKG outcome for the next epoch.
    pub next_epoch: Option<DkgOutcome>,
}

impl VerifiedBlock {
    /// Block height.
    pub fn height(&self) -> u64 {
        self.block.height()
    }

    /// Certificate epoch.
    pub const fn epoch(&self) -> Epoch {
        self.finalization.proposal.round.epoch()
    }

    /// Certificate view.
    pub const fn view(&self) -> u64 {
        self.finalization.proposal.round.view().get()
    }

    /// Block hash (= certificate payload).
    pub fn digest(&self) -> Digest {
        self.block.hash()
    }
}

/// Verifies certified blocks against a chain's epochs and verifier registry.
#[derive(Clone, Debug)]
pub struct FinalizationVerifier {
    epochs: EpochStrategy,
    provider: SchemeProvider,
    outcome_limits: OutcomeLimits,
}

impl FinalizationVerifier {
    /// A verifier over `epochs` choosing keys from `provider`.
    pub fn new(epochs: EpochStrategy, provider: SchemeProvider) -> Self {
        Self {
            epochs,
            provider,
            outcome_limits: OutcomeLimits::default(),
        }
    }

    /// The verifier registry.
    pub const fn provider(&self) -> &SchemeProvider {
        &self.provider
    }

    /// The epoch strategy.
    pub const fn epochs(&self) -> &EpochStrategy {
        &self.epochs
    }

    /// Runs checks 1-6 without registering anything.
    pub fn verify(
        &self,
        rng: &mut impl CryptoRng,
        certified: &CertifiedBlock,
    ) -> Result<VerifiedBlock, VerifyError> {
        let block = certified
            .block
            .as_ref()
            .ok_or(MalformedError::MissingBlock)?;
        let finalization = decode_certificate(&certified.certificate)?;
        self.verify_parts(rng, block.clone(), finalization)
    }

    /// Runs checks 2-6 on an already decoded finalization and block.
    pub fn verify_parts(
        &self,
        rng: &mut impl CryptoRng,
        block: Block,
        finalization: Finalization,
    ) -> Result<VerifiedBlock, VerifyError> {
        check_unsigned(&self.epochs, &block, &finalization)?;
        let height = block.height();
        let epoch = finalization.proposal.round.epoch();
        let verifier = self
            .provider
            .verifier(epoch)
            .ok_or(VerifyError::IdentityUnavailable { height, epoch })?;

        if !finalization.verify(rng, verifier.scheme.as_ref(), &Sequential) {
            return Err(VerifyError::BadSignature { height, epoch });
        }

        let next_epoch = if self.epochs.is_boundary(height) {
            Some(boundary_outcome(
                &self.epochs,
                &block,
                &self.outcome_limits,
            )?)
        } else {
            None
        };

        Ok(VerifiedBlock {
            block,
            finalization,
            identity: verifier.identity,
            identity_source: verifier.source,
            next_epoch,
        })
    }

    /// Runs checks 1-6 and, for a boundary block, registers the next epoch's verifier.
    pub fn verify_and_register(
        &self,
        rng: &mut impl CryptoRng,
        certified: &CertifiedBlock,
    ) -> Result<(VerifiedBlock, Option<Registration>), VerifyError> {
        let verified = self.verify(rng, certified)?;
        let registration = self.register_next_epoch(&verified)?;
        Ok((verified, registration))
    }

    /// Registers the next epoch's verifier from a verified boundary block (no-op otherwise).
    pub fn register_next_epoch(
        &self,
        verified: &VerifiedBlock,
    ) -> Result<Option<Registration>, VerifyError> {
        let Some(outcome) = &verified.next_epoch else {
            return Ok(None);
        };
        self.provider
            .register(Epoch::new(outcome.epoch), *outcome.identity())
            .map(Some)
            .map_err(|error| VerifyError::Registration {
                height: verified.height(),
                error,
            })
    }
}

/// Check 5 for many finalizations signed under one `identity`: one batch on `strategy`, bisected
/// when it fails. Whether each verified, in their order.
pub fn verify_finalizations(
    namespace: &[u8],
    identity: Identity,
    rng: &mut impl CryptoRng,
    finalizations: &[&Finalization],
    strategy: &impl Strategy,
) -> Vec<bool> {
    let scheme = FinalizationScheme::certificate_verifier(namespace, identity);
    let items: Vec<_> = finalizations
        .iter()
        .map(|finalization| {
            (
                Subject::Finalize {
                    proposal: &finalization.proposal,
                },
                &finalization.certificate,
            )
        })
        .collect();
    let Some(batch) = NonEmpty::try_new(items.iter().cloned()) else {
        return Vec::new();
    };
    if scheme.verify_certificates::<_, Digest, _>(rng, batch, strategy) {
        return vec![true; items.len()];
    }
    scheme.verify_certificates_bisect::<_, Digest>(rng, &items, strategy)
}

/// Check 1: hex- and codec-decodes a certificate, refusing oversized input before decoding and
/// invalid signature points after.
pub fn decode_certificate(hex_text: &str) -> Result<Finalization, MalformedError> {
    let hex_text = hex_text.trim();
    let digits = hex_text.strip_prefix("0x").unwrap_or(hex_text);
    if digits.len() > 2 * MAX_CERTIFICATE_BYTES {
        return Err(MalformedError::CertificateTooLong(digits.len()));
    }
    let bytes =
        hex::decode(digits).map_err(|err| MalformedError::CertificateHex(err.to_string()))?;
    let finalization = Finalization::decode_cfg(bytes, &())
        .map_err(|err| MalformedError::CertificateCodec(err.to_string()))?;
    if finalization.certificate.get().is_none() {
        return Err(MalformedError::SignaturePoint);
    }
    Ok(finalization)
}

/// The unprefixed hex of an encoded finalization (the `certificate` field of the wire types).
pub fn encode_certificate(finalization: &Finalization) -> String {
    hex::encode(finalization.encode())
}

/// The wire form (`consensus_getFinalization`, `finalized` events) of a finalization and the
/// block it certifies.
pub fn certified_block(finalization: &Finalization, block: Block) -> CertifiedBlock {
    let round = finalization.proposal.round;
    CertifiedBlock {
        epoch: round.epoch().get(),
        view: round.view().get(),
        height: Some(block.height()),
        digest: block.hash().0,
        certificate: encode_certificate(finalization),
        block: Some(block),
    }
}
