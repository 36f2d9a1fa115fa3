//! A verified checkpoint start: how a follower joins a long-running chain without replaying it.
//!
//! The follower fetches the finalization it will start from (the upstream's latest, or a given
//! height), walks the boundary certificates from the profile's genesis outcome to that
//! finalization's epoch with the [`IdentityLedger`] (every key learned from a boundary the key
//! before it certified), checks the identities compiled into the profile against the walk, and
//! verifies the checkpoint's certificate with its epoch's key. The ledger and the checkpoint are
//! persisted, in a commonware-storage metadata store, before anything starts from them: a
//! restart resumes the stored chain without walking again, and a later walk from the stored
//! ledger fetches only the epochs it has not verified.

use crate::upstream::{Sources, UpstreamError, UpstreamRequests};
use cairn_dkg::Identity;
use cairn_epoch::{
    ChainProfile, Finalization, FinalizationVerifier, IdentityLedger, LedgerError, LedgerRecord,
    LedgerStore, MalformedError, TrustedBlock, VerifyError, check_unsigned, decode_certificate,
};
use cairn_primitives::{Block, BlockCodecConfig, CertifiedBlock};
use cairn_storage::StoreContext;
use commonware_codec::{Decode as _, Encode as _, Read as _, ReadExt as _};
use commonware_storage::metadata::{self, Metadata};
use commonware_utils::sequence::U64;
use rand::CryptoRng;
use std::time::Instant;
use tracing::info;

/// Key of the persisted ledger record.
const LEDGER_KEY: u64 = 0;
/// Key of the persisted checkpoint.
const CHECKPOINT_KEY: u64 = 1;
/// Key of the marker written when a node starts following from genesis.
const GENESIS_KEY: u64 = 2;
/// Largest persisted record accepted (a ledger holds one header per identity rotation).
const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

/// Where to start following.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointTarget {
    /// From the genesis block (the profile must carry the genesis header).
    Genesis,
    /// From the upstream's latest finalization.
    Latest,
    /// From the finalization at this height.
    Height(u64),
}

impl std::str::FromStr for CheckpointTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "genesis" => Ok(Self::Genesis),
            "latest" => Ok(Self::Latest),
            height => height
                .parse()
                .map(Self::Height)
                .map_err(|_| format!("`{text}` is not `latest`, `genesis` or a block height")),
        }
    }
}

impl std::fmt::Display for CheckpointTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Genesis => f.write_str("genesis"),
            Self::Latest => f.write_str("latest"),
            Self::Height(height) => write!(f, "{height}"),
        }
    }
}

/// A verified finalization a follower starts from, with the keys it needs there.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The checkpoint block.
    pub block: Block,
    /// Its verified finalization (marshal's floor).
    pub finalization: Finalization,
    /// The identities the walk proved for the checkpoint's epoch and, when the checkpoint is a
    /// boundary, the next one (persisted with it: marshal needs the checkpoint epoch's key to
    /// install its floor).
    pub identities: Vec<(u64, Identity)>,
}

impl Checkpoint {
    /// The checkpoint's height.
    pub const fn height(&self) -> u64 {
        self.block.height()
    }
}

/// What a walk did, for the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkReport {
    /// Boundaries fetched and verified by this walk.
    pub boundaries: u64,
    /// The epoch the ledger was known through before the walk.
    pub from_epoch: u64,
    /// The checkpoint's epoch.
    pub to_epoch: u64,
    /// Identity rotations the ledger knows.
    pub rotations: usize,
    /// Milliseconds the walk and the checkpoint's verification took.
    pub millis: u128,
}

/// Why a checkpoint could not be established.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// No upstream answered (one that served a finalization of another height than asked, or
    /// one that does not sign its block, counts as invalid and is passed over).
    #[error("fetching the checkpoint from the upstreams: {0}")]
    Upstream(#[from] UpstreamError),
    /// A trusted block is not on the verified chain, or could not be checked.
    #[error(transparent)]
    Trusted(#[from] crate::sync::trusted::TrustError),
    /// No upstream has such a finalization.
    #[error("no upstream has a finalization {0}")]
    Unavailable(String),
    /// The checkpoint's certificate does not verify.
    #[error("the checkpoint at height {height} does not verify: {error}")]
    Verify {
        /// Its height.
        height: u64,
        /// The failed check.
        error: VerifyError,
    },
    /// The boundary walk failed (its error names the epoch and height).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The checkpoint store failed.
    #[error("checkpoint store {what}: {error}")]
    Store {
        /// What was being done.
        what: &'static str,
        /// The store's error.
        error: metadata::Error,
    },
    /// An earlier failed write destroyed the store handle.
    #[error("the checkpoint store was poisoned by an earlier failed write")]
    Poisoned,
    /// A stored record does not decode (the datadir is damaged).
    #[error("the stored {0} does not decode")]
    Corrupt(&'static str),
}

/// The persisted ledger and checkpoint. commonware's metadata store consumes itself when it
/// syncs, so the handle is an `Option`; a failed sync leaves the store unusable (`Poisoned`).
pub struct CheckpointStore<E: StoreContext> {
    store: Option<Metadata<E, U64, Vec<u8>>>,
}

impl<E: StoreContext> CheckpointStore<E> {
    /// Opens (or creates) the store in partition `partition`.
    pub async fn open(context: E, partition: &str) -> Result<Self, CheckpointError> {
        let store = Metadata::init(
            context,
            metadata::Config {
                partition: partition.into(),
                codec_config: ((..=MAX_RECORD_BYTES).into(), ()),
            },
        )
        .await
        .map_err(|error| CheckpointError::Store {
            what: "opening",
            error,
        })?;
        Ok(Self { store: Some(store) })
    }

    fn metadata(&self) -> Result<&Metadata<E, U64, Vec<u8>>, CheckpointError> {
        self.store.as_ref().ok_or(CheckpointError::Poisoned)
    }

    /// The ledger persisted earlier, if any.
    pub fn ledger(&self) -> Result<Option<LedgerRecord>, CheckpointError> {
        self.metadata()?
            .get(&U64::new(LEDGER_KEY))
            .map(|bytes| {
                serde_json::from_slice(bytes).map_err(|_| CheckpointError::Corrupt("ledger"))
            })
            .transpose()
    }

    /// The checkpoint this node started from, if it started from one.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let Some(bytes) = self.metadata()?.get(&U64::new(CHECKPOINT_KEY)) else {
            return Ok(None);
        };
        let corrupt = || CheckpointError::Corrupt("checkpoint");
        let mut buf = bytes::Bytes::copy_from_slice(bytes);
        let block =
            Block::read_cfg(&mut buf, &BlockCodecConfig::default()).map_err(|_| corrupt())?;
        let finalization = Finalization::read(&mut buf).map_err(|_| corrupt())?;
        let identities = Vec::<(u64, Identity)>::decode_cfg(buf, &((..=2).into(), ((), ())))
            .map_err(|_| corrupt())?;
        Ok(Some(Checkpoint {
            block,
            finalization,
            identities,
        }))
    }

    /// Whether this node started following from genesis.
    pub fn started_from_genesis(&self) -> Result<bool, CheckpointError> {
        Ok(self.metadata()?.get(&U64::new(GENESIS_KEY)).is_some())
    }

    /// Records that this node follows from genesis (a later checkpoint target is ignored).
    pub async fn mark_genesis(&mut self) -> Result<(), CheckpointError> {
        self.write(vec![(GENESIS_KEY, Vec::new())]).await
    }

    /// Writes `entries` with one sync.
    async fn write(&mut self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), CheckpointError> {
        self.change(|store| {
            for (key, value) in entries {
                store.put(U64::new(key), value);
            }
        })
        .await
    }

    /// Applies `apply` to the store and syncs it.
    async fn change(
        &mut self,
        apply: impl FnOnce(&mut Metadata<E, U64, Vec<u8>>),
    ) -> Result<(), CheckpointError> {
        let mut store = self.store.take().ok_or(CheckpointError::Poisoned)?;
        apply(&mut store);
        let store = store.sync().await.map_err(|error| CheckpointError::Store {
            what: "syncing",
            error,
        })?;
        self.store = Some(store);
        Ok(())
    }

    /// Removes the stored ledger (with one sync): what a refused start leaves behind.
    async fn forget_ledger(&mut self) -> Result<(), CheckpointError> {
        self.change(|store| {
            store.remove(&U64::new(LEDGER_KEY));
        })
        .await
    }

    /// Persists `ledger` and, when given, the checkpoint, with one sync.
    pub async fn put(
        &mut self,
        ledger: &IdentityLedger,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), CheckpointError> {
        let record =
            serde_json::to_vec(&ledger.record()).map_err(|_| CheckpointError::Corrupt("ledger"))?;
        let mut entries = vec![(LEDGER_KEY, record)];
        if let Some(checkpoint) = checkpoint {
            let mut bytes = checkpoint.block.encode().to_vec();
            bytes.extend_from_slice(&checkpoint.finalization.encode());
            bytes.extend_from_slice(&checkpoint.identities.encode());
            entries.push((CHECKPOINT_KEY, bytes));
        }
        self.write(entries).await
    }
}

/// A walk's progress, kept after every round once what the round reached agrees with the
/// operator's trust: the identities compiled into the profile for the epochs walked so far, and
/// the trusted blocks at or below its highest boundary. A stored ledger so never holds a
/// boundary that a check refuses.
struct Progress<'a, E: StoreContext, U: UpstreamRequests> {
    store: &'a mut CheckpointStore<E>,
    profile: &'a ChainProfile,
    upstream: &'a Sources<U>,
    trusted: &'a [TrustedBlock],
    /// The trusted blocks at or below this height are checked.
    trusted_through: u64,
}

impl<E: StoreContext, U: UpstreamRequests> Progress<'_, E, U> {
    /// Passes `err` on after removing the ledger the walk kept, so a refused start leaves
    /// nothing stored (the walk is done again on the next try).
    async fn refuse<T>(&mut self, err: impl Into<CheckpointError>) -> Result<T, CheckpointError> {
        self.store.forget_ledger().await?;
        Err(err.into())
    }

    /// Checks `ledger` against the identities compiled for the epochs it knows.
    async fn check_compiled(&mut self, ledger: &IdentityLedger) -> Result<(), CheckpointError> {
        let known = ledger.known_through();
        let compiled: Vec<_> = (self.profile.network_identities.iter())
            .filter(|configured| configured.from_epoch.get() <= known)
            .cloned()
            .collect();
        match ledger.check_compiled(&compiled) {
            Ok(()) => Ok(()),
            Err(err) => self.refuse(err).await,
        }
    }

    /// Checks the trusted blocks above [`Self::trusted_through`] and at or below the highest of
    /// `anchors` (verified blocks); returns how many it checked.
    async fn check_trusted(
        &mut self,
        anchors: &[(u64, cairn_primitives::Digest)],
    ) -> Result<usize, CheckpointError> {
        let Some(top) = anchors.iter().map(|(height, _)| *height).max() else {
            return Ok(0);
        };
        let pending: Vec<TrustedBlock> = self
            .trusted
            .iter()
            .filter(|block| block.height > self.trusted_through)
            .cloned()
            .collect();
        let upstream = self.upstream;
        let checked = crate::sync::trusted::check(&pending, anchors, |first, last| async move {
            upstream
                .get_blocks(first, last)
                .await
                .map_err(|err| err.to_string())
        })
        .await;
        match checked {
            Ok(checked) => {
                self.trusted_through = self.trusted_through.max(top);
                Ok(checked)
            }
            Err(err) => self.refuse(err).await,
        }
    }
}

impl<E: StoreContext, U: UpstreamRequests> LedgerStore for Progress<'_, E, U> {
    type Error = CheckpointError;

    async fn save(&mut self, ledger: &IdentityLedger) -> Result<(), CheckpointError> {
        self.check_compiled(ledger).await?;
        self.check_trusted(&anchors(ledger)).await?;
        self.store.put(ledger, None).await
    }
}

/// The height and hash of every boundary `ledger` walked.
fn anchors(ledger: &IdentityLedger) -> Vec<(u64, cairn_primitives::Digest)> {
    ledger
        .walked()
        .iter()
        .map(|boundary| (boundary.height, boundary.finalization.proposal.payload))
        .collect()
}

/// Fetches the finalization to start from, walks the boundaries up to its epoch (starting from
/// the ledger `store` holds, if any, and persisting it after every round; every fetch
/// through `upstream`'s sources, so a source that fails or lies is passed over as in
/// catch-up), checks the compiled identities, verifies the checkpoint, and persists the ledger
/// and the checkpoint. `target` is [`CheckpointTarget::Latest`] or a height.
pub async fn establish<E: StoreContext, U: UpstreamRequests>(
    rng: &mut impl CryptoRng,
    profile: &ChainProfile,
    upstream: &Sources<U>,
    store: &mut CheckpointStore<E>,
    target: CheckpointTarget,
    concurrency: usize,
    trusted: &[TrustedBlock],
) -> Result<(Checkpoint, WalkReport), CheckpointError> {
    let started = Instant::now();
    let certified = match target {
        CheckpointTarget::Height(height) => upstream
            .get_finalization(height)
            .await?
            .ok_or_else(|| CheckpointError::Unavailable(format!("at height {height}")))?,
        CheckpointTarget::Latest | CheckpointTarget::Genesis => upstream
            .get_latest()
            .await?
            .ok_or_else(|| CheckpointError::Unavailable("yet".into()))?,
    };
    let (block, finalization) = unsigned_checkpoint(profile, &certified)?;
    let height = block.height();
    let epoch = profile.epochs.epoch_of(height).get();

    let restored = match store.ledger()? {
        Some(record) => Some(IdentityLedger::restore(profile, record)?),
        None => None,
    };
    // A trusted block under the restored boundaries could only be reached through the parent
    // hashes below the first boundary walked now: walking again from genesis is shorter.
    let restored = restored.filter(|ledger| {
        let below = ledger.known_through().checked_sub(1).and_then(|epoch| {
            profile
                .epochs
                .boundary_height(commonware_consensus::types::Epoch::new(epoch))
        });
        !below.is_some_and(|top| trusted.iter().any(|block| block.height <= top))
    });
    let mut ledger = restored
        .unwrap_or_else(|| IdentityLedger::from_genesis(profile))
        .with_concurrency(concurrency)
        .with_machine_pool();
    let from_epoch = ledger.known_through();
    // The ledger is persisted after every round, so a walk stopped by a kill or a failed fetch
    // starts again where it stopped (a verified boundary stays verified whatever comes after:
    // each was certified by the key before it, from genesis).
    let mut progress = Progress {
        store,
        profile,
        upstream,
        trusted,
        trusted_through: 0,
    };
    ledger
        .advance_saving(rng, upstream, epoch, &mut progress)
        .await?;
    if let Err(err) = ledger.check_compiled(&profile.network_identities) {
        return progress.refuse(err).await;
    }

    let provider = ledger
        .provider_for(&profile.namespace, epoch)
        .expect("the ledger was just walked to the checkpoint's epoch");
    let verifier = FinalizationVerifier::new(profile.epochs.clone(), provider);
    let verified = match verifier.verify_parts(rng, block, finalization) {
        Ok(verified) => verified,
        Err(error) => {
            return progress
                .refuse(CheckpointError::Verify { height, error })
                .await;
        }
    };
    // Every trusted block at or below the checkpoint must be on the verified chain, found
    // through the parent hashes under the lowest verified block above it: those under the
    // boundaries walked were checked round by round, the rest are checked here.
    let mut anchors = anchors(&ledger);
    anchors.push((height, verified.block.hash()));
    progress.check_trusted(&anchors).await?;
    let store = progress.store;
    if !trusted.is_empty() {
        info!(
            trusted = trusted
                .iter()
                .filter(|block| block.height <= height)
                .count(),
            "the trusted blocks are on the verified chain"
        );
    }
    let mut identities = vec![(epoch, verified.identity)];
    if let Some(next) = &verified.next_epoch {
        identities.push((next.epoch, *next.identity()));
    }
    let checkpoint = Checkpoint {
        block: verified.block,
        finalization: verified.finalization,
        identities,
    };
    store.put(&ledger, Some(&checkpoint)).await?;
    let report = WalkReport {
        boundaries: epoch.saturating_sub(from_epoch),
        from_epoch,
        to_epoch: epoch,
        rotations: ledger.runs().len() - 1,
        millis: started.elapsed().as_millis(),
    };
    info!(
        height,
        epoch,
        boundaries = report.boundaries,
        millis = report.millis as u64,
        "checkpoint verified through the boundary chain from genesis"
    );
    Ok((checkpoint, report))
}

/// The checkpoint's block and decoded certificate, after the checks that need no key.
fn unsigned_checkpoint(
    profile: &ChainProfile,
    certified: &CertifiedBlock,
) -> Result<(Block, Finalization), CheckpointError> {
    let block = certified.block.clone().ok_or(CheckpointError::Verify {
        height: certified.height.unwrap_or_default(),
        error: MalformedError::MissingBlock.into(),
    })?;
    let height = block.height();
    let finalization =
        decode_certificate(&certified.certificate).map_err(|err| CheckpointError::Verify {
            height,
            error: err.into(),
        })?;
    check_unsigned(&profile.epochs, &block, &finalization)
        .map_err(|error| CheckpointError::Verify { height, error })?;
    Ok((block, finalization))
}

#[cfg(test)]
mod tests;
