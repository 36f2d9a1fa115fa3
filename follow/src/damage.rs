//! Finalizations damaged on disk. Marshal panics on a record its archive cannot read, so the
//! follower hands marshal its finalization archive behind [`CheckedFinalizations`]: a record
//! that fails its checksum (or does not decode) is answered from its repaired copy when there
//! is one, else as missing, and its height is noted in [`DamageLog`]. The engine's repair task
//! fetches it again from the upstreams, verifies it against the stored block with the key of
//! its epoch, and stores it in the anchor store, where the chain reads it.

use crate::{
    certificates::Coverage,
    upstream::{Sources, UpstreamRequests},
};
use cairn_epoch::{
    ChainProfile, Finalization, FinalizationVerifier, SchemeProvider, decode_certificate,
};
use cairn_primitives::Digest;
use cairn_storage::{AnchorStore, StoreContext, is_damage};
use cairn_storage::{
    execution::{EmbeddedExecution, ExecutionError, ExecutionProvider},
    registry::derive_key,
};
use commonware_consensus::{
    marshal::store::Certificates,
    types::{Epoch, Height},
};
use commonware_runtime::Handle;
use commonware_storage::archive::{self, Identifier, immutable};
use rand::CryptoRng;
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, MutexGuard},
};
use tracing::warn;

/// Heights whose stored finalization was found damaged, shared by the archive that finds them
/// and the task that repairs them (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct DamageLog {
    inner: Arc<Mutex<Damage>>,
}

#[derive(Debug, Default)]
struct Damage {
    open: BTreeSet<u64>,
    found: u64,
    repaired: u64,
}

impl DamageLog {
    fn lock(&self) -> MutexGuard<'_, Damage> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes `height` as damaged; returns whether it was new.
    pub fn found(&self, height: u64) -> bool {
        let mut damage = self.lock();
        let new = damage.open.insert(height);
        if new {
            damage.found += 1;
        }
        new
    }

    /// Notes that `height` has a verified copy again.
    pub fn repaired(&self, height: u64) {
        let mut damage = self.lock();
        if damage.open.remove(&height) {
            damage.repaired += 1;
        }
    }

    /// Whether `height` is damaged and not repaired yet.
    pub fn is_open(&self, height: u64) -> bool {
        self.lock().open.contains(&height)
    }

    /// The damaged heights not repaired yet, lowest first.
    pub fn open(&self) -> Vec<u64> {
        self.lock().open.iter().copied().collect()
    }

    /// Damaged heights found, and repaired, since the follower started.
    pub fn counts(&self) -> (u64, u64) {
        let damage = self.lock();
        (damage.found, damage.repaired)
    }
}

/// Marshal's finalization archive, read so that a damaged record never stops the follower:
/// the record's repaired copy in the anchor store is answered instead, or nothing (marshal
/// then treats the height as holding no finalization, and the chain reads the anchor store).
pub struct CheckedFinalizations<E: StoreContext> {
    archive: immutable::Archive<E, Digest, Finalization>,
    repaired: AnchorStore<E>,
    damage: DamageLog,
    coverage: Coverage,
}

impl<E: StoreContext> CheckedFinalizations<E> {
    /// `archive`, with repaired copies read from `repaired`, damage noted in `damage`, and the
    /// heights it holds (and stores from now on) noted in `coverage`.
    pub fn new(
        archive: immutable::Archive<E, Digest, Finalization>,
        repaired: AnchorStore<E>,
        damage: DamageLog,
        coverage: Coverage,
    ) -> Self {
        coverage.marshal_holds(
            Certificates::ranges_from(&archive, Height::new(0))
                .map(|(first, last)| (first.get(), last.get())),
        );
        Self {
            archive,
            repaired,
            damage,
            coverage,
        }
    }

    /// The stored finalization at `height`, as marshal reads it.
    pub async fn at(&self, height: u64) -> Result<Option<Finalization>, archive::Error> {
        Certificates::get(self, Identifier::Index(height)).await
    }

    /// The heights holding a finalization, from `from` up, as ranges.
    pub fn ranges_from(&self, from: u64) -> Vec<(u64, u64)> {
        Certificates::ranges_from(self, Height::new(from))
            .map(|(start, end)| (start.get(), end.get()))
            .collect()
    }
}

impl<E: StoreContext> Certificates for CheckedFinalizations<E> {
    type BlockDigest = Digest;
    type Commitment = Digest;
    type Scheme = <immutable::Archive<E, Digest, Finalization> as Certificates>::Scheme;
    type Error = archive::Error;

    async fn put(
        self,
        height: Height,
        digest: Digest,
        finalization: &Finalization,
    ) -> Result<Self, Self::Error> {
        let archive = Certificates::put(self.archive, height, digest, finalization).await?;
        self.coverage.marshal_stored(height.get());
        Ok(Self { archive, ..self })
    }

    async fn sync(self) -> Result<Self, Self::Error> {
        let archive = Certificates::sync(self.archive).await?;
        Ok(Self { archive, ..self })
    }

    async fn start_sync(self) -> Result<(Self, Handle<()>), Self::Error> {
        let (archive, handle) = Certificates::start_sync(self.archive).await?;
        Ok((Self { archive, ..self }, handle))
    }

    async fn get(&self, id: Identifier<'_, Digest>) -> Result<Option<Finalization>, Self::Error> {
        let height = match &id {
            Identifier::Index(height) => Some(*height),
            Identifier::Key(_) => None,
        };
        let error = match Certificates::get(&self.archive, id).await {
            Err(error) if is_damage(&error) => error,
            other => return other,
        };
        let Some(height) = height else {
            warn!(%error, "a stored finalization read by its block's hash is damaged; answered as missing");
            return Ok(None);
        };
        match self
            .repaired
            .get(Identifier::Index(height), "reading a repaired finalization")
            .await
        {
            Ok(Some(finalization)) => return Ok(Some(finalization)),
            Ok(None) => {}
            Err(err) => warn!(height, %err, "the anchor store cannot be read"),
        }
        if self.damage.found(height) {
            warn!(height, %error, "a stored finalization is damaged; it will be fetched again");
        }
        Ok(None)
    }

    async fn has(&self, height: Height) -> Result<bool, Self::Error> {
        Certificates::has(&self.archive, height).await
    }

    async fn prune(self, min: Height) -> Result<Self, Self::Error> {
        let archive = Certificates::prune(self.archive, min).await?;
        Ok(Self { archive, ..self })
    }

    fn last_index(&self) -> Option<Height> {
        Certificates::last_index(&self.archive)
    }

    fn ranges_from(&self, from: Height) -> impl Iterator<Item = (Height, Height)> {
        Certificates::ranges_from(&self.archive, from)
    }
}

/// How much of its stores the follower reads at start to find damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreCheck {
    /// The newest heights, up to this many: where an unclean stop or a failing write lands.
    Newest(u64),
    /// Every stored height (`cairn follow --check-stores`).
    All,
}

impl Default for StoreCheck {
    fn default() -> Self {
        Self::Newest(1024)
    }
}

/// What a store check read and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreCheckReport {
    /// The heights checked, inclusive (`from > to` when nothing is stored).
    pub from: u64,
    /// The highest height checked.
    pub to: u64,
    /// Blocks read whole.
    pub blocks: u64,
    /// Finalizations read whole (a repaired copy counts).
    pub finalizations: u64,
    /// Heights whose block is damaged and has no repaired copy yet.
    pub damaged_blocks: Vec<u64>,
    /// Heights whose finalization is damaged and has no repaired copy yet.
    pub damaged_finalizations: Vec<u64>,
}

/// Reads the stored blocks and marshal's finalizations of the heights `check` names, up to the
/// stored tip, decoding each: damage found is noted where the repair task finds it. A store that
/// cannot be read at all is an error.
pub async fn check_stores<E: StoreContext>(
    execution: &EmbeddedExecution<E>,
    finalizations: &CheckedFinalizations<E>,
    check: StoreCheck,
) -> Result<StoreCheckReport, StoreCheckError> {
    let to = execution.finalized_height();
    let first = execution.first_height().max(1);
    let from = match check {
        StoreCheck::All => first,
        StoreCheck::Newest(count) => first.max(to.saturating_sub(count.saturating_sub(1))),
    };
    let mut report = StoreCheckReport {
        from,
        to,
        ..StoreCheckReport::default()
    };
    for height in from..=to {
        match execution.block_by_number(height).await {
            Ok(Some(_)) => report.blocks += 1,
            Ok(None) => {}
            Err(ExecutionError::Store(err)) if err.is_corruption() => {
                report.damaged_blocks.push(height);
            }
            Err(err) => return Err(StoreCheckError::Blocks { height, err }),
        }
    }
    for (start, end) in finalizations.ranges_from(from) {
        for height in start.max(from)..=end.min(to) {
            match finalizations.at(height).await {
                Ok(Some(_)) => report.finalizations += 1,
                Ok(None) if finalizations.damage.is_open(height) => {
                    report.damaged_finalizations.push(height);
                }
                Ok(None) => {}
                Err(err) => return Err(StoreCheckError::Finalizations { height, err }),
            }
        }
        if end >= to {
            break;
        }
    }
    Ok(report)
}

/// Why a store check could not read a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreCheckError {
    /// The execution store failed.
    #[error("reading the stored block at {height}: {err}")]
    Blocks {
        /// Where.
        height: u64,
        /// Why.
        err: ExecutionError,
    },
    /// Marshal's finalization archive failed.
    #[error("reading the stored finalization at {height}: {err}")]
    Finalizations {
        /// Where.
        height: u64,
        /// Why.
        err: archive::Error,
    },
}

/// Why a damaged finalization could not be repaired this time.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// The block at the height cannot be read (damaged too: it is repaired first).
    #[error("the stored block cannot be read: {0}")]
    Block(ExecutionError),
    /// The block at the height is not stored.
    #[error("the block is not stored")]
    NoBlock,
    /// No upstream answered with a finalization.
    #[error("no upstream served it: {0}")]
    Unavailable(String),
    /// What was served does not verify against the stored block.
    #[error("what was served does not verify: {0}")]
    Invalid(String),
    /// No key for its epoch: neither registered nor announced by a stored boundary block.
    #[error("no key for epoch {0}")]
    NoKey(u64),
    /// The verified copy could not be stored.
    #[error("storing it: {0}")]
    Store(cairn_storage::StoreError),
}

/// Fetches the finalization at `height` again from `sources`, verifies it against the stored
/// block with the key of its epoch (registered, or announced by the stored boundary block
/// before it), and stores it in `anchors`, where both marshal and the chain read it from now
/// on.
pub async fn repair_finalization<E: StoreContext, U: UpstreamRequests>(
    rng: &mut impl CryptoRng,
    height: u64,
    profile: &ChainProfile,
    execution: &EmbeddedExecution<E>,
    verifier: &FinalizationVerifier,
    anchors: &AnchorStore<E>,
    sources: &Sources<U>,
) -> Result<(), RepairError> {
    let block = execution
        .block_by_number(height)
        .await
        .map_err(RepairError::Block)?
        .ok_or(RepairError::NoBlock)?;
    let certified = sources
        .get_finalization(height)
        .await
        .map_err(|err| RepairError::Unavailable(err.to_string()))?
        .ok_or_else(|| RepairError::Unavailable("none has it".into()))?;
    let finalization = decode_certificate(&certified.certificate)
        .map_err(|err| RepairError::Invalid(err.to_string()))?;
    let epoch = finalization.proposal.round.epoch().get();
    let verified = if verifier.provider().verifier(Epoch::new(epoch)).is_some() {
        verifier.verify_parts(rng, block.clone(), finalization)
    } else {
        // An epoch older than the registry keeps: its key is in the stored boundary before it.
        let identity = derive_key(profile, execution, epoch)
            .await
            .ok()
            .flatten()
            .ok_or(RepairError::NoKey(epoch))?;
        let provider = SchemeProvider::new(&profile.namespace, commonware_utils::NZUsize!(1));
        provider
            .register(Epoch::new(epoch), identity)
            .map_err(|_| RepairError::NoKey(epoch))?;
        FinalizationVerifier::new(profile.epochs.clone(), provider).verify_parts(
            rng,
            block.clone(),
            finalization,
        )
    }
    .map_err(|err| RepairError::Invalid(err.to_string()))?;
    anchors
        .put_sync(
            height,
            block.hash(),
            &verified.finalization,
            "storing a repaired finalization",
        )
        .await
        .map_err(RepairError::Store)
}
