//! The identity ledger: the chain of boundary certificates from genesis, each verified with its
//! own epoch's key, each outcome giving the next epoch's key, so the ledger learns every identity
//! from the genesis outcome alone, across reshares and full DKGs.
//!
//! Boundaries are fetched with bounded concurrency. Everything that needs no key (the
//! certificate decodes, signs this block, belongs to the block's epoch, the block is the
//! boundary and carries the next epoch's outcome) is checked first; each next key is then taken
//! from the outcome, and the certificates that share a key are verified in one batch, bisected
//! to name the first bad boundary when a batch fails. A batch that verifies proves every outcome
//! in it (each was certified by the key the previous outcome announced), so the result is the
//! same as verifying one boundary after the other.
//!
//! It keeps only the first epoch of each run of equal identities, with the boundary block that
//! introduced it (verifiable by the previous identity), and names the boundary that failed when
//! the chain is broken. Its [`LedgerRecord`] can be persisted, so a restart walks only new epochs.

use crate::{
    ChainProfile, ConfiguredIdentity, EpochStrategy, Finalization, MalformedError, VerifyError,
    boundary_outcome, check_unsigned, decode_certificate, parse_identity, verify_finalizations,
};
use alloy_primitives::hex;
use cairn_dkg::{Identity, OutcomeLimits};
use cairn_primitives::{CertifiedBlock, TempoHeader};
use commonware_codec::Encode;
use commonware_consensus::types::Epoch;
use commonware_parallel::{Rayon, Sequential, Strategy};
use futures::StreamExt as _;
use rand::{CryptoRng, SeedableRng as _, rngs::StdRng};
use serde::{Deserialize, Serialize};
use std::future::Future;
use tracing::{debug, info};

/// Boundaries fetched at once while walking, unless configured otherwise.
pub const DEFAULT_WALK_CONCURRENCY: usize = 32;

/// Boundaries per round of the walk: a round is checked and verified on the worker pool while
/// the next one is fetched, and bounds memory for long chains.
const WALK_WINDOW: u64 = 256;

/// Boundaries checked per job on the worker pool.
const CHECK_CHUNK: usize = 64;

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

/// Where a walk keeps what it verified as it goes ([`IdentityLedger::advance_saving`]), so
/// that a walk cut short by a kill or a failure starts again from there.
pub trait LedgerStore {
    /// A failed write; a walk's own failure converts into it.
    type Error: From<LedgerError>;

    /// Persists `ledger` (its [`IdentityLedger::record`]).
    fn save(
        &mut self,
        ledger: &IdentityLedger,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Keeps nothing: the walk of [`IdentityLedger::advance_to`].
struct Unsaved;

impl LedgerStore for Unsaved {
    type Error = LedgerError;

    async fn save(&mut self, _: &IdentityLedger) -> Result<(), LedgerError> {
        Ok(())
    }
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
    /// A network identity compiled into the profile disagrees with the one the walk verified.
    #[error(
        "the network identity compiled for epoch {epoch} is {compiled}, but the boundary chain from genesis proves {walked}"
    )]
    IdentityDisagrees {
        /// The epoch the compiled identity is valid from.
        epoch: u64,
        /// Hex of the compiled identity.
        compiled: String,
        /// Hex of the identity the walk verified for that epoch.
        walked: String,
    },
    /// A persisted ledger record does not fit this chain or does not decode.
    #[error("the stored identity ledger is unusable: {0}")]
    Corrupt(String),
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
    namespace: Vec<u8>,
    runs: Vec<IdentityRun>,
    known_through: u64,
    concurrency: usize,
    window: u64,
    pool: Option<Rayon>,
    walked: Vec<WalkedBoundary>,
}

/// A boundary block the walk verified: its certificate verified with its epoch's key, so its
/// hash authenticates every block below it through parent hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalkedBoundary {
    /// The epoch it ends.
    pub epoch: u64,
    /// Its height.
    pub height: u64,
    /// The identity it announced for the next epoch.
    pub next_identity: Identity,
    /// Its verified finalization (which names its hash).
    pub finalization: Finalization,
}

/// A boundary whose checks that need no key passed.
struct CheckedBoundary {
    epoch: u64,
    height: u64,
    header: TempoHeader,
    certificate: String,
    finalization: Finalization,
    next_identity: Identity,
}

impl IdentityLedger {
    /// A ledger that knows the genesis identity (epoch 0) of `profile`.
    pub fn from_genesis(profile: &ChainProfile) -> Self {
        Self {
            epochs: profile.epochs.clone(),
            namespace: profile.namespace.clone(),
            runs: vec![IdentityRun {
                from_epoch: 0,
                identity: *profile.genesis.identity(),
                evidence: None,
            }],
            known_through: 0,
            concurrency: DEFAULT_WALK_CONCURRENCY,
            window: WALK_WINDOW,
            pool: None,
            walked: Vec::new(),
        }
    }

    /// A ledger that knows `identity` for `epoch` (verified earlier, as a follower's registry
    /// holds it) and walks on from there; it knows nothing of earlier epochs.
    pub fn from_epoch(profile: &ChainProfile, epoch: u64, identity: Identity) -> Self {
        Self {
            runs: vec![IdentityRun {
                from_epoch: epoch,
                identity,
                evidence: None,
            }],
            known_through: epoch,
            ..Self::from_genesis(profile)
        }
    }

    /// The boundaries this ledger walked (not those it was restored with), in epoch order.
    pub fn walked(&self) -> &[WalkedBoundary] {
        &self.walked
    }

    /// The boundaries verified since the last call, oldest first.
    pub fn take_walked(&mut self) -> Vec<WalkedBoundary> {
        std::mem::take(&mut self.walked)
    }

    /// Walks `window` boundaries per round (at least one; 256 by default).
    pub fn with_window(mut self, window: u64) -> Self {
        self.window = window.max(1);
        self
    }

    /// Checks and verifies boundaries on `pool`, overlapped with fetching the next ones (by
    /// default everything runs on the calling task).
    pub fn with_pool(mut self, pool: Rayon) -> Self {
        self.pool = Some(pool);
        self
    }

    /// [`Self::with_pool`] with a pool of one thread per core; unchanged when no pool can be
    /// started.
    pub fn with_machine_pool(self) -> Self {
        let threads = std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN);
        match Rayon::new(threads) {
            Ok(pool) => self.with_pool(pool),
            Err(err) => {
                tracing::warn!(%err, "no worker pool for the boundary walk; checking on one thread");
                self
            }
        }
    }

    /// Fetches at most `concurrency` boundaries at once (at least one).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
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
        if epoch > self.known_through || epoch < self.runs.first()?.from_epoch {
            return None;
        }
        self.runs
            .iter()
            .rev()
            .find(|run| run.from_epoch <= epoch)
            .map(|run| run.identity)
    }

    /// Walks the boundary blocks until the identity of `epoch` is known. When a boundary fails,
    /// the boundaries verified before it stay known and the error names the one that failed;
    /// nothing after it is taken. Each round of boundaries is checked and verified while the
    /// next round is fetched.
    pub async fn advance_to(
        &mut self,
        rng: &mut impl CryptoRng,
        source: &impl BoundarySource,
        epoch: u64,
    ) -> Result<(), LedgerError> {
        self.advance_saving(rng, source, epoch, &mut Unsaved).await
    }

    /// [`Self::advance_to`], saving the ledger to `store` after every round but the last, and
    /// before returning a boundary's failure, so no verified boundary is walked twice.
    pub async fn advance_saving<S: LedgerStore>(
        &mut self,
        rng: &mut impl CryptoRng,
        source: &impl BoundarySource,
        epoch: u64,
        store: &mut S,
    ) -> Result<(), S::Error> {
        let window = self.window;
        let round_end = |first: u64| epoch.min(first.saturating_add(window));
        let mut first = self.known_through;
        let mut fetched = self.fetch(source, first, round_end(first)).await;
        while first < epoch {
            let end = round_end(first);
            let key = self
                .runs
                .last()
                .expect("the ledger always holds the genesis run")
                .identity;
            let job_rng = StdRng::from_rng(rng);
            let fetch_failed = fetched.last().is_some_and(Result::is_err);
            let checking = Self::check_and_verify(
                self.epochs.clone(),
                self.namespace.clone(),
                self.pool.clone(),
                key,
                job_rng,
                fetched,
            );
            // Nothing after a failed fetch is needed.
            let next = async {
                if end < epoch && !fetch_failed {
                    self.fetch(source, end, round_end(end)).await
                } else {
                    Vec::new()
                }
            };
            let ((verified, failure), next) = futures::join!(checking, next);
            let progressed = !verified.is_empty();
            for boundary in verified {
                self.accept(boundary);
            }
            // The last round is left to the caller, who keeps it with what it walked to.
            if progressed && (end < epoch || failure.is_some()) {
                store.save(self).await?;
            }
            if let Some(err) = failure {
                return Err(err.into());
            }
            first = end;
            fetched = next;
        }
        Ok(())
    }

    /// Fetches the boundaries of epochs `first..end` with bounded concurrency, in epoch order,
    /// up to the first that fails.
    async fn fetch(
        &self,
        source: &impl BoundarySource,
        first: u64,
        end: u64,
    ) -> Vec<Result<(u64, u64, CertifiedBlock), LedgerError>> {
        let epochs = &self.epochs;
        let mut fetched: Vec<_> = futures::stream::iter(first..end)
            .map(|epoch| async move {
                let height = epochs
                    .boundary_height(Epoch::new(epoch))
                    .ok_or(LedgerError::NoBoundary(epoch))?;
                let certified =
                    source
                        .certified_at(height)
                        .await
                        .map_err(|error| LedgerError::Source {
                            epoch,
                            height,
                            error,
                        })?;
                Ok((epoch, height, certified))
            })
            .buffered(self.concurrency)
            .collect()
            .await;
        if let Some(failed) = fetched.iter().position(Result::is_err) {
            fetched.truncate(failed + 1);
        }
        fetched
    }

    /// Runs the checks that need no key on `fetched` (in chunks on the pool), then verifies the
    /// signatures of the boundaries that passed, starting from `key`. Returns the boundaries
    /// verified, in order, and the first failure.
    async fn check_and_verify(
        epochs: EpochStrategy,
        namespace: Vec<u8>,
        pool: Option<Rayon>,
        key: Identity,
        mut rng: StdRng,
        fetched: Vec<Result<(u64, u64, CertifiedBlock), LedgerError>>,
    ) -> (Vec<CheckedBoundary>, Option<LedgerError>) {
        let mut chunks = Vec::new();
        let mut items = fetched.into_iter().peekable();
        while items.peek().is_some() {
            let chunk: Vec<_> = items.by_ref().take(CHECK_CHUNK).collect();
            let epochs = epochs.clone();
            chunks.push(offload(pool.clone(), chunk.len(), move || {
                chunk
                    .into_iter()
                    .map(|item| {
                        let (epoch, height, certified) = item?;
                        Self::check_boundary(&epochs, epoch, height, &certified)
                    })
                    .collect::<Vec<_>>()
            }));
        }
        let mut checked = Vec::new();
        let mut failure = None;
        for result in futures::future::join_all(chunks)
            .await
            .into_iter()
            .flatten()
        {
            match result {
                Ok(boundary) => checked.push(boundary),
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        let len = checked.len();
        let verify_pool = pool.clone();
        offload(pool, len, move || {
            let verified = match verify_pool {
                Some(pool) => Self::verify_signatures(&namespace, key, &mut rng, &checked, &pool),
                None => Self::verify_signatures(&namespace, key, &mut rng, &checked, &Sequential),
            };
            let (count, bad) = match verified {
                Ok(()) => (checked.len(), None),
                Err((index, err)) => (index, Some(err)),
            };
            checked.truncate(count);
            (checked, bad.or(failure))
        })
        .await
    }

    /// Checks a fetched boundary without its key: it is the boundary block of `epoch`, its
    /// certificate decodes, signs it and belongs to its epoch, and it announces epoch + 1.
    fn check_boundary(
        epochs: &EpochStrategy,
        epoch: u64,
        height: u64,
        certified: &CertifiedBlock,
    ) -> Result<CheckedBoundary, LedgerError> {
        let broken = |error: VerifyError| LedgerError::Broken {
            epoch,
            height,
            error,
        };
        let block = certified
            .block
            .as_ref()
            .ok_or_else(|| broken(MalformedError::MissingBlock.into()))?;
        // A valid certificate for another block of the epoch must not pass for the boundary.
        if block.height() != height {
            return Err(LedgerError::NotTheBoundary {
                epoch,
                height,
                got: block.height(),
            });
        }
        let finalization =
            decode_certificate(&certified.certificate).map_err(|err| broken(err.into()))?;
        check_unsigned(epochs, block, &finalization).map_err(broken)?;
        let outcome = boundary_outcome(epochs, block, &OutcomeLimits::default()).map_err(broken)?;
        Ok(CheckedBoundary {
            epoch,
            height,
            header: block.header().clone(),
            certificate: certified.certificate.clone(),
            finalization,
            next_identity: *outcome.identity(),
        })
    }

    /// Verifies the certificates of `checked` (consecutive boundaries, the first certified by
    /// `key`): each with the key the previous outcome announced, one batch per run of equal
    /// keys. On failure, returns the position of the first boundary that does not verify.
    fn verify_signatures(
        namespace: &[u8],
        mut key: Identity,
        rng: &mut impl CryptoRng,
        checked: &[CheckedBoundary],
        strategy: &impl Strategy,
    ) -> Result<(), (usize, LedgerError)> {
        let mut start = 0;
        while start < checked.len() {
            let identity = key;
            let mut end = start;
            while end < checked.len() {
                key = checked[end].next_identity;
                end += 1;
                if key != identity {
                    break;
                }
            }
            Self::verify_batch(namespace, rng, identity, &checked[start..end], strategy)
                .map_err(|(index, err)| (start + index, err))?;
            start = end;
        }
        Ok(())
    }

    /// Verifies one batch under `identity`; on failure, names the first boundary that fails
    /// and its position in the batch.
    fn verify_batch(
        namespace: &[u8],
        rng: &mut impl CryptoRng,
        identity: Identity,
        batch: &[CheckedBoundary],
        strategy: &impl Strategy,
    ) -> Result<(), (usize, LedgerError)> {
        let finalizations: Vec<_> = batch
            .iter()
            .map(|boundary| &boundary.finalization)
            .collect();
        let results = verify_finalizations(namespace, identity, rng, &finalizations, strategy);
        let Some(index) = results.iter().position(|verified| !verified) else {
            return Ok(());
        };
        let bad = &batch[index];
        Err((
            index,
            LedgerError::Broken {
                epoch: bad.epoch,
                height: bad.height,
                error: VerifyError::BadSignature {
                    height: bad.height,
                    epoch: Epoch::new(bad.epoch),
                },
            },
        ))
    }

    /// Records a verified boundary: the next epoch's identity, a new run when it changed.
    fn accept(&mut self, boundary: CheckedBoundary) {
        let previous = self
            .runs
            .last()
            .expect("the ledger always holds the genesis run")
            .identity;
        let next_epoch = boundary.epoch + 1;
        self.walked.push(WalkedBoundary {
            epoch: boundary.epoch,
            height: boundary.height,
            next_identity: boundary.next_identity,
            finalization: boundary.finalization.clone(),
        });
        if boundary.next_identity != previous {
            info!(
                epoch = next_epoch,
                height = boundary.height,
                "network identity rotated (full DKG)"
            );
            self.runs.push(IdentityRun {
                from_epoch: next_epoch,
                identity: boundary.next_identity,
                evidence: Some(BoundaryEvidence {
                    height: boundary.height,
                    header: boundary.header,
                    certificate: boundary.certificate,
                }),
            });
        } else {
            debug!(
                epoch = next_epoch,
                height = boundary.height,
                "identity kept (reshare)"
            );
        }
        self.known_through = next_epoch;
    }

    /// Checks every identity compiled into a profile against the walked chain: one valid from
    /// an epoch the ledger has reached must be the identity the boundaries proved for it.
    pub fn check_compiled(&self, compiled: &[ConfiguredIdentity]) -> Result<(), LedgerError> {
        for configured in compiled {
            let epoch = configured.from_epoch.get();
            let Some(walked) = self.identity_for(epoch) else {
                continue;
            };
            if walked != configured.identity {
                return Err(LedgerError::IdentityDisagrees {
                    epoch,
                    compiled: hex::encode(configured.identity.encode()),
                    walked: hex::encode(walked.encode()),
                });
            }
        }
        Ok(())
    }

    /// A verifier registry holding the identity of `epoch` (after [`Self::advance_to`]).
    pub fn provider_for(&self, namespace: &[u8], epoch: u64) -> Option<crate::SchemeProvider> {
        let identity = self.identity_for(epoch)?;
        let provider = crate::SchemeProvider::new(namespace, commonware_utils::NZUsize!(1));
        provider
            .register(Epoch::new(epoch), identity)
            .expect("an empty registry has no conflicts");
        Some(provider)
    }

    /// What to persist so a restart does not walk these epochs again.
    pub fn record(&self) -> LedgerRecord {
        LedgerRecord {
            known_through: self.known_through,
            runs: self
                .runs
                .iter()
                .map(|run| RunRecord {
                    from_epoch: run.from_epoch,
                    identity: hex::encode_prefixed(run.identity.encode()),
                    evidence: run.evidence.clone().map(|evidence| EvidenceRecord {
                        height: evidence.height,
                        header: evidence.header,
                        certificate: evidence.certificate,
                    }),
                })
                .collect(),
        }
    }

    /// A ledger of `profile` restored from a record this node persisted earlier. The record
    /// must start at the profile's genesis identity.
    pub fn restore(profile: &ChainProfile, record: LedgerRecord) -> Result<Self, LedgerError> {
        let mut ledger = Self::from_genesis(profile);
        let mut runs = Vec::with_capacity(record.runs.len());
        for run in record.runs {
            let identity = parse_identity(&run.identity).map_err(LedgerError::Corrupt)?;
            runs.push(IdentityRun {
                from_epoch: run.from_epoch,
                identity,
                evidence: run.evidence.map(|evidence| BoundaryEvidence {
                    height: evidence.height,
                    header: evidence.header,
                    certificate: evidence.certificate,
                }),
            });
        }
        let genesis = &ledger.runs[0];
        match runs.first() {
            Some(first) if first.from_epoch == 0 && first.identity == genesis.identity => {}
            _ => {
                return Err(LedgerError::Corrupt(format!(
                    "it does not start at chain profile `{}`'s genesis identity",
                    profile.name
                )));
            }
        }
        if runs
            .windows(2)
            .any(|pair| pair[0].from_epoch >= pair[1].from_epoch)
            || runs
                .last()
                .is_some_and(|run| run.from_epoch > record.known_through)
        {
            return Err(LedgerError::Corrupt("its runs are out of order".into()));
        }
        ledger.runs = runs;
        ledger.known_through = record.known_through;
        Ok(ledger)
    }
}

/// The persisted form of an [`IdentityLedger`] (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LedgerRecord {
    /// The highest epoch whose identity is known.
    pub known_through: u64,
    runs: Vec<RunRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RunRecord {
    from_epoch: u64,
    identity: String,
    evidence: Option<EvidenceRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EvidenceRecord {
    height: u64,
    header: TempoHeader,
    certificate: String,
}

/// Runs `job` on `pool` (`len` sizes it for the pool's policy), or on the calling task without
/// one.
async fn offload<T: Send + 'static>(
    pool: Option<Rayon>,
    len: usize,
    job: impl FnOnce() -> T + Send + 'static,
) -> T {
    match pool {
        Some(pool) => pool.spawn(len, move |_| job()).await,
        None => job(),
    }
}

#[cfg(test)]
mod tests {
    //! The ledger's persisted form and the checks on its compiled identities. Walks over
    //! certified chains need committees and chains from the test kit, which depends on this
    //! crate, so they are in `tests/tests/it/ledger.rs`.

    use super::{IdentityLedger, LedgerError, LedgerRecord};
    use crate::{ChainProfile, ConfiguredIdentity};
    use commonware_consensus::types::Epoch;
    use commonware_cryptography::bls12381::primitives::{ops::keypair, variant::MinSig};
    use rand::{SeedableRng as _, rngs::StdRng};

    fn mainnet() -> ChainProfile {
        ChainProfile::builtin("tempo-mainnet").expect("built in")
    }

    fn record(json: serde_json::Value) -> LedgerRecord {
        serde_json::from_value(json).expect("a record")
    }

    #[test]
    fn a_fresh_ledger_knows_the_genesis_identity_and_round_trips_through_its_record() {
        let profile = mainnet();
        let ledger = IdentityLedger::from_genesis(&profile);
        assert_eq!(ledger.runs().len(), 1);
        assert_eq!(ledger.identity_for(0), Some(*profile.genesis.identity()));
        assert_eq!(
            ledger.identity_for(1),
            None,
            "nothing is known past the walk"
        );
        let record = ledger.record();
        let text = serde_json::to_string(&record).expect("serialises");
        let restored =
            IdentityLedger::restore(&profile, serde_json::from_str(&text).expect("parses"))
                .expect("restores");
        assert_eq!(restored.record(), record);
    }

    #[test]
    fn a_record_that_does_not_start_at_the_genesis_identity_or_is_out_of_order_is_refused() {
        let profile = mainnet();
        let genesis = IdentityLedger::from_genesis(&profile).record();
        let genesis_identity =
            serde_json::to_value(&genesis).expect("serialises")["runs"][0]["identity"].clone();
        let other = keypair::<_, MinSig>(&mut StdRng::seed_from_u64(9)).1;
        let other =
            alloy_primitives::hex::encode_prefixed(commonware_codec::Encode::encode(&other));
        let cases = [
            // Another identity at epoch 0.
            serde_json::json!({"knownThrough": 0, "runs": [{"fromEpoch": 0, "identity": other, "evidence": null}]}),
            // No run at all.
            serde_json::json!({"knownThrough": 0, "runs": []}),
            // A run starting after what the record says is known.
            serde_json::json!({"knownThrough": 2, "runs": [
                {"fromEpoch": 0, "identity": genesis_identity, "evidence": null},
                {"fromEpoch": 3, "identity": other, "evidence": null}]}),
            // Runs out of order.
            serde_json::json!({"knownThrough": 9, "runs": [
                {"fromEpoch": 0, "identity": genesis_identity, "evidence": null},
                {"fromEpoch": 5, "identity": other, "evidence": null},
                {"fromEpoch": 5, "identity": genesis_identity, "evidence": null}]}),
            // An identity that is not a G2 point.
            serde_json::json!({"knownThrough": 0, "runs": [{"fromEpoch": 0, "identity": "0x1234", "evidence": null}]}),
        ];
        for case in cases {
            let err = IdentityLedger::restore(&profile, record(case.clone())).expect_err("refused");
            assert!(matches!(err, LedgerError::Corrupt(_)), "{case}: {err}");
        }
    }

    #[test]
    fn a_compiled_identity_is_checked_only_where_the_walk_reached() {
        let profile = mainnet();
        let ledger = IdentityLedger::from_genesis(&profile);
        let other = keypair::<_, MinSig>(&mut StdRng::seed_from_u64(9)).1;
        let compiled = |epoch: u64, identity| ConfiguredIdentity {
            from_epoch: Epoch::new(epoch),
            identity,
        };
        // The walk has not reached epoch 5: nothing to compare yet.
        assert!(ledger.check_compiled(&[compiled(5, other)]).is_ok());
        assert!(
            ledger
                .check_compiled(&[compiled(0, *profile.genesis.identity())])
                .is_ok()
        );
        match ledger.check_compiled(&[compiled(0, other)]) {
            Err(LedgerError::IdentityDisagrees { epoch: 0, .. }) => {}
            other => panic!("expected a disagreement at epoch 0, got {other:?}"),
        }
    }
}
