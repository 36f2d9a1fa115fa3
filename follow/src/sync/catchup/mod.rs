//! Catch-up at disk speed: a follower far behind the chain verifies one certificate per epoch
//! instead of one per block.
//!
//! A verified finalization authenticates its block's hash, and a block's hash commits to its
//! parent's hash, so it authenticates every ancestor. The follower therefore verifies:
//!
//! - the certificate of every epoch boundary between its tip and the upstream's (each with its
//!   epoch's key, batched per key and bisected on failure by the [`IdentityLedger`] walk): they
//!   carry the next epoch's key, and their hashes anchor the blocks of their epoch;
//! - the certificate of the upstream's latest block, the last anchor.
//!
//! The blocks between anchors are fetched by height in JSON-RPC batches, several ranges in
//! flight over the healthy upstreams. Each segment (the blocks up to the next anchor) is linked
//! from the anchor's hash down through the parent hashes to the stored tip before anything is
//! written; a block whose hash breaks the chain, or a segment that does not reach the stored
//! tip (a fork below a verified block), is refused with nothing stored. Linked segments are
//! written in batches, one sync each, by a writer running behind the linking. The boundaries
//! are walked, and their blocks stored, a window of epochs at a time, so memory does not grow
//! with the gap. Marshal then takes over at the last anchor as its floor.
//!
//! [`VerifyPolicy::EveryBlock`] skips this and leaves the whole gap to marshal, which verifies
//! every certificate: Tempo's own policy, kept for comparison.

use crate::upstream::{
    Answered, SourceId, Sources, UpstreamError, UpstreamRequests, split_highest,
};
use cairn_epoch::{
    ChainProfile, DEFAULT_WALK_CONCURRENCY, Finalization, FinalizationVerifier, IdentityLedger,
    LedgerError, SchemeProvider, VerifyError,
};
use cairn_primitives::{Block, CertifiedBlock, Digest};
use cairn_storage::{
    AnchorStore, StoreContext, StoreError,
    execution::{EmbeddedExecution, ExecutionError, ExecutionProvider},
    registry::{EpochRegistry, RegistryError},
};
use commonware_consensus::types::Epoch;
use commonware_parallel::Rayon;
use commonware_runtime::Clock;
use futures::{SinkExt as _, StreamExt as _};
use rand::CryptoRng;
use std::{
    num::{NonZeroU64, NonZeroUsize},
    time::Duration,
};
use tracing::{debug, info, warn};

/// How a follower behind the chain verifies what it catches up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VerifyPolicy {
    /// Verify the boundary certificates and the tip; authenticate the blocks between them by
    /// their parent hashes.
    #[default]
    HashChain,
    /// Verify every block's certificate one by one (Tempo's policy).
    EveryBlock,
}

impl std::str::FromStr for VerifyPolicy {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "hash-chain" => Ok(Self::HashChain),
            "every-block" => Ok(Self::EveryBlock),
            other => Err(format!(
                "unknown verify policy `{other}`: use hash-chain or every-block"
            )),
        }
    }
}

impl std::fmt::Display for VerifyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::HashChain => "hash-chain",
            Self::EveryBlock => "every-block",
        })
    }
}

/// Catch-up settings.
#[derive(Clone, Copy, Debug)]
pub struct CatchUpConfig {
    /// How catch-up verifies.
    pub policy: VerifyPolicy,
    /// Blocks per range request.
    pub chunk: NonZeroU64,
    /// Range requests in flight per upstream.
    pub in_flight: NonZeroUsize,
    /// The fast path runs when the upstream's tip is at least this far ahead; a smaller gap is
    /// left to marshal.
    pub min_gap: u64,
    /// How long to wait for a first upstream to answer with its latest finalization.
    pub wait: Duration,
    /// Attempts at a range whose blocks are missing or fail to fetch.
    pub attempts: u32,
    /// Linked blocks written together, with one sync.
    pub write_batch: usize,
    /// Worker threads verifying boundary certificates; 0 verifies on the calling task, which
    /// deterministic simulations need (a node uses one per core).
    pub workers: usize,
    /// Epochs whose boundaries are walked, and whose blocks are stored, before more are
    /// walked: what catch-up holds in memory is bounded by this, not by the gap.
    pub epoch_window: NonZeroU64,
    /// A running follower that sees an event at least this far above its executed height
    /// catches up the same way (it rejoins) instead of leaving the gap to marshal; 0 never
    /// does.
    pub rejoin_gap: u64,
}

impl Default for CatchUpConfig {
    fn default() -> Self {
        Self {
            policy: VerifyPolicy::HashChain,
            chunk: NonZeroU64::new(256).expect("non-zero"),
            in_flight: NonZeroUsize::new(8).expect("non-zero"),
            min_gap: 128,
            wait: Duration::from_secs(5),
            attempts: 3,
            write_batch: 1024,
            workers: 0,
            epoch_window: NonZeroU64::new(1024).expect("non-zero"),
            rejoin_gap: 1024,
        }
    }
}

/// What a catch-up did.
#[derive(Clone, Debug, Default)]
pub struct CatchUpReport {
    /// The stored tip before.
    pub from: u64,
    /// The stored tip after.
    pub to: u64,
    /// Certificates verified (boundaries and the tip).
    pub certificates: u64,
    /// The verified finalization of the new tip: marshal's floor. `None` when nothing was
    /// caught up.
    pub floor: Option<Finalization>,
}

/// Why catch-up stopped. What was stored before it stays (it was verified).
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    /// The upstream's latest finalization does not verify.
    #[error("the latest finalization, at height {height}, does not verify: {error}")]
    Tip {
        /// Its height.
        height: u64,
        /// The failed check.
        error: VerifyError,
    },
    /// The boundary walk failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A range of blocks could not be fetched.
    #[error("fetching blocks {first}..={last}: {error}")]
    Fetch {
        /// First height.
        first: u64,
        /// Last height.
        last: u64,
        /// Why.
        error: UpstreamError,
    },
    /// No upstream has a block below the tip it announced.
    #[error("no upstream serves block {0}")]
    Missing(u64),
    /// A block is not the parent of the verified block above it.
    #[error(
        "block {height} hashes to {got}, but the verified block above it names {expected} as its parent"
    )]
    Broken {
        /// Height of the block that breaks the chain.
        height: u64,
        /// Its hash.
        got: Digest,
        /// The hash the block above it names.
        expected: Digest,
    },
    /// The verified chain does not extend the stored chain: it forks below a verified block.
    #[error("the verified chain names {expected} as block {height}, but this node stores {stored}")]
    Fork {
        /// The stored tip's height.
        height: u64,
        /// The stored tip's hash.
        stored: Digest,
        /// The hash the verified chain names at that height.
        expected: Digest,
    },
    /// The execution store failed.
    #[error(transparent)]
    Execution(#[from] ExecutionError),
    /// A trusted block is not on the verified chain, or could not be checked.
    #[error(transparent)]
    Trusted(#[from] crate::sync::trusted::TrustError),
    /// The epoch registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The anchor store failed.
    #[error(transparent)]
    Anchors(#[from] StoreError),
}

impl CatchUpError {
    /// Whether a store failed (a full disk, an I/O error): the node cannot go on storing, so
    /// it stops rather than leave the gap to marshal, which panics on a failed write.
    pub const fn is_storage(&self) -> bool {
        matches!(
            self,
            Self::Execution(ExecutionError::Store(_))
                | Self::Registry(RegistryError::Store { .. } | RegistryError::Poisoned)
                | Self::Anchors(_)
        )
    }

    /// Whether another attempt may succeed (another upstream may answer it): fetches, missing
    /// blocks, and what a lying upstream broke (a chain, a boundary, a tip).
    pub const fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Fetch { .. }
                | Self::Missing(_)
                | Self::Broken { .. }
                | Self::Ledger(_)
                | Self::Tip { .. }
                | Self::Trusted(crate::sync::trusted::TrustError::Unchecked { .. })
        )
    }

    /// Whether the verified chain holds another block than one the operator trusts: nothing
    /// more may be stored from it.
    pub const fn is_untrusted(&self) -> bool {
        matches!(
            self,
            Self::Trusted(crate::sync::trusted::TrustError::Mismatch { .. })
                | Self::Execution(ExecutionError::Untrusted { .. })
        )
    }
}

/// A verified finalization at a height: the blocks up to it are authenticated from its hash.
#[derive(Clone, Debug)]
struct Anchor {
    height: u64,
    finalization: Finalization,
    /// For a boundary: the next epoch and the key its outcome announces.
    announces: Option<(u64, cairn_dkg::Identity)>,
}

impl Anchor {
    /// The hash of the block it certifies.
    const fn digest(&self) -> Digest {
        self.finalization.proposal.payload
    }
}

/// What catch-up writes to and verifies with.
pub struct CatchUp<'a, E: StoreContext, U> {
    /// The chain.
    pub profile: &'a ChainProfile,
    /// The verifier registry (keys are registered as boundaries verify).
    pub provider: &'a SchemeProvider,
    /// The persisted epoch registry.
    pub registry: &'a EpochRegistry<E>,
    /// The execution store.
    pub execution: &'a EmbeddedExecution<E>,
    /// Where the verified anchors' finalizations go.
    pub anchors: &'a AnchorStore<E>,
    /// The upstreams (without a verifier: catch-up verifies itself).
    pub sources: &'a Sources<U>,
    /// Settings.
    pub config: CatchUpConfig,
}

impl<E: StoreContext, U: UpstreamRequests> CatchUp<'_, E, U> {
    /// Catches the execution store up to the upstreams' latest verified finalization. Returns
    /// at once, with nothing done, under [`VerifyPolicy::EveryBlock`], when no upstream answers
    /// within the wait, or when the gap is under `min_gap`.
    pub async fn run(
        &self,
        context: &impl Clock,
        rng: &mut impl CryptoRng,
    ) -> Result<CatchUpReport, CatchUpError> {
        let from = self.execution.finalized_height();
        let mut report = CatchUpReport {
            from,
            to: from,
            ..CatchUpReport::default()
        };
        if self.config.policy == VerifyPolicy::EveryBlock {
            return Ok(report);
        }
        let Some((tip_source, tip, others)) = self.latest(context).await else {
            info!(
                waited = ?self.config.wait,
                "no upstream answered with its latest finalization; marshal catches up"
            );
            return Ok(report);
        };
        let Some(tip_height) = tip.block.as_ref().map(Block::height) else {
            return Ok(report);
        };
        if tip_height < from.saturating_add(self.config.min_gap) {
            return Ok(report);
        }
        info!(from, to = tip_height, "catching up through the hash chain");

        // The keys: walk the boundaries from the stored tip's epoch to the tip's.
        let epochs = &self.profile.epochs;
        let first_epoch = epochs.epoch_of(from.saturating_add(1)).get();
        let tip_epoch = epochs.epoch_of(tip_height).get();
        let identity = self
            .provider
            .registered_identity(Epoch::new(first_epoch))
            .ok_or(CatchUpError::Tip {
                height: tip_height,
                error: VerifyError::IdentityUnavailable {
                    height: from + 1,
                    epoch: Epoch::new(first_epoch),
                },
            })?;
        // Boundaries are asked of the sources in turn: as many in flight per source as one
        // source gets alone, so that several sources walk faster than one.
        let sources = self.sources.count().max(1);
        let mut ledger = IdentityLedger::from_epoch(self.profile, first_epoch, identity)
            .with_concurrency(DEFAULT_WALK_CONCURRENCY.saturating_mul(sources));
        if let Some(workers) = NonZeroUsize::new(self.config.workers) {
            match Rayon::new(workers) {
                Ok(pool) => ledger = ledger.with_pool(pool),
                Err(err) => warn!(%err, "no worker pool for catch-up; verifying on one thread"),
            }
        }
        // The boundaries are walked, and the blocks up to them stored, a window of epochs at a
        // time, so that what catch-up holds does not grow with the gap. A boundary's key is
        // registered once its block is stored (see `write`), so a kill never leaves keys far
        // ahead of the stored chain.
        let mut walked_to = first_epoch;
        let mut stored = from;
        let last_anchors = loop {
            let target = tip_epoch.min(walked_to.saturating_add(self.config.epoch_window.get()));
            let walked = ledger.advance_to(rng, self.sources, target).await;
            let boundaries = ledger.take_walked();
            report.certificates += boundaries.len() as u64;
            let anchors: Vec<Anchor> = boundaries
                .into_iter()
                .filter(|boundary| boundary.height > stored && boundary.height < tip_height)
                .map(|boundary| Anchor {
                    height: boundary.height,
                    finalization: boundary.finalization,
                    announces: Some((boundary.epoch + 1, boundary.next_identity)),
                })
                .collect();
            if let Err(err) = walked {
                // The boundaries verified before the failure anchor their blocks: those are
                // stored before the walk's error is returned.
                self.fill(stored, &anchors).await?;
                return Err(err.into());
            }
            if target >= tip_epoch {
                break anchors;
            }
            self.fill(stored, &anchors).await?;
            stored = self.execution.finalized_height();
            walked_to = target;
            debug!(epoch = target, stored, "catch-up window stored");
        };

        // The tip, with the key the walk proved for its epoch (registered once the boundary
        // announcing it is stored), or the registered one when the walk crossed no boundary.
        let provider = ledger
            .provider_for(&self.profile.namespace, tip_epoch)
            .unwrap_or_else(|| self.provider.clone());
        let verifier = FinalizationVerifier::new(epochs.clone(), provider);
        let verified = match verifier.verify(rng, &tip) {
            Ok(verified) => verified,
            Err(error) => {
                // A source whose latest finalization does not verify lied: it is quarantined,
                // and the next attempt takes another source's.
                self.sources.book().invalid(
                    tip_source,
                    &format!("a latest finalization at {tip_height} that fails: {error}"),
                );
                return Err(CatchUpError::Tip {
                    height: tip_height,
                    error,
                });
            }
        };
        report.certificates += 1;
        self.sources.book().announced(tip_source, tip_height);
        // The other sources' latest finalizations say how far each is, so that the blocks are
        // asked of all of them and not only of the tip's source: a copy of the verified tip, or
        // one that verifies, is taken as announced. One that does not is not held against its
        // source here (it may be of an epoch whose key is not known yet).
        for (source, certified) in others {
            let same = certified.block.as_ref().map(Block::hash) == Some(verified.digest())
                && certified.certificate == tip.certificate;
            if let Some(height) = certified.block.as_ref().map(Block::height)
                && (same || verifier.verify(rng, &certified).is_ok())
            {
                self.sources.book().announced(source, height);
            }
        }

        let mut anchors = last_anchors;
        anchors.push(Anchor {
            height: tip_height,
            finalization: verified.finalization.clone(),
            announces: verified
                .next_epoch
                .as_ref()
                .map(|outcome| (outcome.epoch, *outcome.identity())),
        });
        self.fill(stored, &anchors).await?;
        report.to = self.execution.finalized_height();
        report.floor = Some(verified.finalization);
        Ok(report)
    }

    /// The highest latest finalization any upstream answers with and its source, with the other
    /// sources' answers, waiting up to `wait` for a first answer.
    async fn latest(
        &self,
        context: &impl Clock,
    ) -> Option<(SourceId, CertifiedBlock, Vec<Answered>)> {
        let deadline = context.current() + self.config.wait;
        loop {
            match self.sources.latest_of_each().await.map(split_highest) {
                Ok(Some(((source, tip), others))) => return Some((source, tip, others)),
                Ok(None) => debug!("no upstream has a finalization yet"),
                Err(err) => debug!(%err, "asking the upstreams for their latest finalization"),
            }
            if context.current() >= deadline {
                return None;
            }
            context.sleep(Duration::from_millis(10)).await;
        }
    }

    /// Fetches the blocks from `from + 1` to the last anchor and links each segment from its
    /// anchor down to the block below it (the stored tip, or the segment before). Three stages
    /// run at once: fetching, linking, and writing. Linked segments go to the writer once
    /// `write_batch` blocks are waiting (and at the end, or before a linking error is
    /// returned), and each batch is written with one sync while the next is fetched and linked.
    async fn fill(&self, from: u64, anchors: &[Anchor]) -> Result<(), CatchUpError> {
        // A trusted block under these anchors must be on their chain before any of it is
        // stored (the store refuses another block at its height too, but only batch by batch).
        let trusted: Vec<_> = self
            .profile
            .trusted_blocks
            .iter()
            .filter(|block| block.height > from)
            .copied()
            .collect();
        if !trusted.is_empty() {
            let verified: Vec<_> = anchors
                .iter()
                .map(|anchor| (anchor.height, anchor.finalization.proposal.payload))
                .collect();
            crate::sync::trusted::check(&trusted, &verified, |first, last| async move {
                self.sources
                    .get_blocks(first, last)
                    .await
                    .map_err(|err| err.to_string())
            })
            .await?;
        }
        let chunk = self.config.chunk.get();
        let mut ranges = Vec::new();
        let mut first = from + 1;
        for anchor in anchors {
            while first <= anchor.height {
                let last = anchor.height.min(first.saturating_add(chunk - 1));
                ranges.push((first, last));
                first = last + 1;
            }
        }
        let (fetching, received) = fetch_in_order(self.sources, &self.config, ranges);
        let (mut to_writer, writing) = write_behind(|batch| self.write(batch));
        let linking = async move {
            // Owned here, so that fetching stops as soon as linking does.
            let mut received = received;
            let mut below = (from, self.execution.finalized_hash());
            let mut segment: Vec<Block> = Vec::new();
            let mut linked = Linked::default();
            let mut anchors = anchors.iter();
            let mut anchor = anchors.next();
            let mut failure = None;
            while let Some(blocks) = received.next().await {
                let blocks = match blocks {
                    Ok(blocks) => blocks,
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                };
                segment.extend(blocks);
                let Some(current) = anchor else { break };
                if segment.last().map(Block::height) != Some(current.height) {
                    continue;
                }
                if let Err(err) = link(current, &segment, below) {
                    failure = Some(err);
                    break;
                }
                below = (current.height, current.digest());
                linked.blocks.append(&mut segment);
                linked.anchors.push(current);
                if linked.blocks.len() >= self.config.write_batch
                    && to_writer.send(std::mem::take(&mut linked)).await.is_err()
                {
                    // The writer failed; it reports why.
                    return Ok(());
                }
                anchor = anchors.next();
            }
            // What was linked before a failure is verified: it is written first.
            if !linked.blocks.is_empty() {
                let _ = to_writer.send(linked).await;
            }
            failure.map_or(Ok(()), Err)
        };
        let ((), linked, written) = futures::join!(fetching, linking, writing);
        // A failed write stops linking, so its error comes first.
        written?;
        linked
    }

    /// Writes linked segments: their anchors' finalizations with one sync, then the blocks with
    /// one sync, then the keys their boundaries announce. A kill between two steps leaves
    /// finalizations above the stored tip (never served: reads stop at the tip), or boundary
    /// blocks whose keys are re-derived at the next start (see [`EpochRegistry`]).
    async fn write(&self, linked: Linked<'_>) -> Result<(), CatchUpError> {
        if linked.blocks.is_empty() {
            return Ok(());
        }
        for anchor in &linked.anchors {
            self.anchors
                .put(
                    anchor.height,
                    anchor.digest(),
                    &anchor.finalization,
                    "storing a verified finalization",
                )
                .await?;
        }
        self.anchors
            .sync("syncing the verified finalizations")
            .await?;
        self.execution.finalize_batch(&linked.blocks).await?;
        let keys: Vec<_> = linked
            .anchors
            .iter()
            .filter_map(|anchor| anchor.announces)
            .collect();
        self.registry.register_all(self.provider, &keys).await?;
        debug!(
            to = linked.blocks.last().map(Block::height),
            blocks = linked.blocks.len(),
            segments = linked.anchors.len(),
            "linked segments stored"
        );
        Ok(())
    }
}

/// A writer behind the linking: the batches sent to the returned sender are written in their
/// order by the returned future (join it with the sending side), one waiting while another is
/// written. It stops at the first failed write and returns its error; the sender's next send
/// then fails. Dropping the sender ends it once what was sent is written.
pub(crate) fn write_behind<'a, B: 'a, W, F>(
    mut write: W,
) -> (
    futures::channel::mpsc::Sender<B>,
    impl std::future::Future<Output = Result<(), CatchUpError>> + 'a,
)
where
    W: FnMut(B) -> F + 'a,
    F: std::future::Future<Output = Result<(), CatchUpError>> + 'a,
{
    // A buffer of 0 holds one batch (one per sender): one written, one waiting.
    let (sender, mut batches) = futures::channel::mpsc::channel::<B>(0);
    let writing = async move {
        while let Some(batch) = batches.next().await {
            write(batch).await?;
        }
        Ok(())
    };
    (sender, writing)
}

/// Fetches `ranges` in their order, `config.in_flight` at a time per upstream (each range is
/// asked of one, in turn, so several upstreams have as many in flight each as one alone),
/// and hands each range's blocks to the receiver while the next ones are fetched: the
/// returned future does the fetching (join it with the consumer). It stops after the first
/// failed range, or when the receiver is dropped.
pub(crate) fn fetch_in_order<'a, U: UpstreamRequests>(
    sources: &'a Sources<U>,
    config: &CatchUpConfig,
    ranges: Vec<(u64, u64)>,
) -> (
    impl std::future::Future<Output = ()> + 'a,
    futures::channel::mpsc::Receiver<Result<Vec<Block>, CatchUpError>>,
) {
    let in_flight = config
        .in_flight
        .get()
        .saturating_mul(sources.count().max(1));
    let attempts = config.attempts;
    let (mut sender, received) = futures::channel::mpsc::channel(in_flight);
    let fetching = async move {
        let mut fetched = futures::stream::iter(ranges)
            .map(|(first, last)| fetch_range(sources, attempts, first, last))
            .buffered(in_flight);
        while let Some(result) = fetched.next().await {
            let failed = result.is_err();
            if sender.send(result).await.is_err() || failed {
                break;
            }
        }
    };
    (fetching, received)
}

/// The blocks `first..=last`, asking again (up to `attempts` times in all) for what a source
/// left out.
async fn fetch_range<U: UpstreamRequests>(
    sources: &Sources<U>,
    attempts: u32,
    first: u64,
    last: u64,
) -> Result<Vec<Block>, CatchUpError> {
    let mut blocks = Vec::with_capacity((last - first + 1) as usize);
    let mut failed = 0;
    let mut next = first;
    while next <= last {
        match sources.get_blocks(next, last).await {
            Ok(more) if !more.is_empty() => {
                next += more.len() as u64;
                blocks.extend(more);
            }
            Ok(_) => {
                failed += 1;
                if failed >= attempts {
                    return Err(CatchUpError::Missing(next));
                }
            }
            Err(error) => {
                failed += 1;
                if failed >= attempts {
                    return Err(CatchUpError::Fetch { first, last, error });
                }
            }
        }
    }
    Ok(blocks)
}

/// Segments linked to their anchors and waiting to be written.
#[derive(Default)]
struct Linked<'a> {
    blocks: Vec<Block>,
    anchors: Vec<&'a Anchor>,
}

/// Checks that `segment` (consecutive blocks ending at `anchor`) is the chain `anchor`
/// authenticates, and that it extends `below` (the height and hash of the block under it).
fn link(anchor: &Anchor, segment: &[Block], below: (u64, Digest)) -> Result<(), CatchUpError> {
    let mut expected = anchor.digest();
    for block in segment.iter().rev() {
        if block.hash() != expected {
            return Err(CatchUpError::Broken {
                height: block.height(),
                got: block.hash(),
                expected,
            });
        }
        expected = block.parent();
    }
    let (height, stored) = below;
    if expected != stored {
        return Err(CatchUpError::Fork {
            height,
            stored,
            expected,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
