//! Epochs for cairn: the fixed-length epoch strategy, the epoch -> verifier registry
//! ([`SchemeProvider`]), chain profiles, the [`FinalizationVerifier`] that checks a certified
//! block in the verification order `docs/sync-and-trust.md` gives, and the [`IdentityLedger`]
//! that learns every epoch's identity from genesis through the boundary blocks. The committee
//! side (ceremonies and the signer that makes certificates) is the devnet's.

mod ledger;
mod profile;
mod provider;
mod strategy;
mod verifier;

pub use ledger::{
    BoundaryEvidence, BoundarySource, DEFAULT_WALK_CONCURRENCY, IdentityLedger, IdentityRun,
    LedgerError, LedgerRecord, LedgerStore, SourceError, WalkedBoundary,
};
pub use profile::{
    BUILTIN_PROFILES, ChainProfile, ConfiguredIdentity, ProfileError, TrustedBlock, merge_trusted,
    parse_identity,
};
pub use provider::{
    DEFAULT_MAX_EPOCHS, EpochVerifier, FinalizationScheme, IdentitySource, RegisterError,
    Registration, SchemeProvider,
};
pub use strategy::{EpochStrategy, InvalidEpochLength};
pub use verifier::{
    Finalization, FinalizationVerifier, MAX_CERTIFICATE_BYTES, MalformedError, VerifiedBlock,
    VerifyError, boundary_outcome, certified_block, check_unsigned, decode_certificate,
    encode_certificate, verify_finalizations,
};
