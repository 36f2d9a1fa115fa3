//! Epochs for cairn: the fixed-length epoch strategy, the epoch -> verifier registry
//! ([`SchemeProvider`]), chain profiles, and the [`FinalizationVerifier`] that checks a
//! certified block in the order DESIGN.md fixes, and the [`IdentityLedger`] that learns every
//! epoch's identity from genesis through the boundary blocks.

mod ledger;
mod profile;
mod provider;
mod signer;
mod strategy;
mod verifier;

pub use ledger::{
    BoundaryEvidence, BoundarySource, DEFAULT_WALK_CONCURRENCY, IdentityLedger, IdentityRun,
    LedgerError, LedgerRecord, SourceError, WalkedBoundary,
};
pub use profile::{
    BUILTIN_PROFILES, ChainProfile, ConfiguredIdentity, ProfileError, TrustedBlock, merge_trusted,
    parse_identity,
};
pub use provider::{
    DEFAULT_MAX_EPOCHS, EpochVerifier, FinalizationScheme, IdentitySource, RegisterError,
    Registration, SchemeProvider,
};
pub use signer::{CommitteeSigner, SignerError};
pub use strategy::{EpochStrategy, InvalidEpochLength};
pub use verifier::{
    Finalization, FinalizationVerifier, MAX_CERTIFICATE_BYTES, MalformedError, VerifiedBlock,
    VerifyError, boundary_outcome, certified_block, check_unsigned, decode_certificate,
    encode_certificate, verify_finalizations,
};
