//! The driver's loop.

use super::{
    Config, Delivered, ExecutorPort, FinalizationLookup, MarshalMailbox, MarshalPort, Rejoin,
    RejoinRun,
};
use crate::{
    executor,
    sync::catchup::{CatchUpError, CatchUpReport},
    upstream::{Notification, SourceBook, SourceId, Sourced},
};
use cairn_dkg::OutcomeLimits;
use cairn_epoch::{
    EpochStrategy, Finalization, FinalizationVerifier, Registration, VerifiedBlock, VerifyError,
    boundary_outcome, encode_certificate,
};
use cairn_feed::FeedState;
use cairn_primitives::{Block, CertifiedBlock, Digest, Event};
use cairn_storage::StoreContext;
use cairn_storage::registry::{EpochRegistry, RegistryError};
use commonware_codec::Encode as _;
use commonware_consensus::types::Epoch;
use commonware_cryptography::Digested;
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::PathBuf, sync::Arc};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The epoch registry failed (or conflicts with a delivered boundary).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A finalized boundary block carries no valid outcome for the next epoch: the chain cannot
    /// be followed past it.
    #[error("finalized boundary block {height}: {error}")]
    Boundary {
        /// Height of the boundary block.
        height: u64,
        /// What is wrong with its outcome.
        error: VerifyError,
    },
    /// Marshal stopped dispatching.
    #[error("marshal stopped")]
    MarshalStopped,
    /// The executor stopped.
    #[error("the executor stopped")]
    ExecutorStopped,
    /// Two different blocks at one height carry valid finalizations: a safety fault of the
    /// validator set. The follower stops rather than pick one.
    #[error(
        "conflicting finalizations at height {height}: {first} and {second} served different blocks, both certified by the epoch {epoch} key (a safety fault of the validator set); {evidence}"
    )]
    Conflict {
        /// The height.
        height: u64,
        /// The epoch.
        epoch: u64,
        /// Where the first block came from.
        first: String,
        /// Where the second came from.
        second: String,
        /// Where the evidence was written, or why it was not.
        evidence: String,
    },
}

/// One side of a conflict: a certified block and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceSide {
    /// The upstream that served it, or this node's store.
    pub source: String,
    /// The block and its certificate, in the RPC form.
    pub certified: CertifiedBlock,
}

/// Two conflicting certified blocks, as written to the evidence file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// The height both blocks claim.
    pub height: u64,
    /// The epoch whose key certified both.
    pub epoch: u64,
    /// Hex of that epoch's network identity.
    pub identity: String,
    /// The block seen first.
    pub first: EvidenceSide,
    /// The conflicting block.
    pub second: EvidenceSide,
}

/// How many recent verified heights are kept to deduplicate events and spot conflicts.
const RECENT_HEIGHTS: usize = 256;

/// Where the source of a block already stored is named in evidence.
const STORE: &str = "this node's store";

/// What the driver knows of its upstream, for status displays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// Whether the upstream is connected.
    pub connected: bool,
    /// The highest height of an event that verified or awaits its epoch's key.
    pub announced_height: u64,
    /// Finalized events rejected so far.
    pub rejected: u64,
    /// The same, by the check they failed (`malformed_event` for events that do not parse).
    pub rejected_by_check: BTreeMap<&'static str, u64>,
    /// Times the follower, far behind while running, rejoined through the hash chain.
    pub rejoins: u64,
}

/// The driver (see the module docs).
pub struct Actor<E: StoreContext, M = MarshalMailbox, X = executor::Mailbox> {
    verifier: FinalizationVerifier,
    epochs: EpochStrategy,
    registry: EpochRegistry<E>,
    marshal: M,
    executor: X,
    executed: watch::Receiver<u64>,
    pending: BTreeMap<u64, (SourceId, CertifiedBlock, usize)>,
    pending_bytes: usize,
    max_pending: usize,
    max_pending_bytes: usize,
    recent: BTreeMap<u64, (Digest, SourceId, Arc<CertifiedBlock>)>,
    sources: SourceBook,
    served: Option<crate::upstream::ServedHook>,
    evidence_dir: Option<PathBuf>,
    status: watch::Sender<UpstreamStatus>,
    feed: FeedState,
    rejoin: Option<Rejoin>,
    /// A rejoin is running: events wait in `pending`, marshal's deliveries in their channel.
    rejoining: bool,
    /// An event asked for a rejoin; it starts once the current message is handled.
    rejoin_requested: bool,
    /// No rejoin is asked for by an event at or below this height (after one that failed or
    /// found nothing to do, the gap must grow again first).
    rejoin_after: u64,
    /// The tip the last rejoin stored, until the executor's watermark passes it.
    caught_up_to: u64,
    /// The highest block handed to the executor.
    forwarded: u64,
    /// The last block delivered (or the stored tip): the next one must name it as its parent.
    last_delivered: Option<(u64, Digest)>,
    finalizations: Option<FinalizationLookup>,
    counters: Option<crate::status::EventCounters>,
}

impl<E: StoreContext, M: MarshalPort, X: ExecutorPort> Actor<E, M, X> {
    pub(super) fn new(config: Config<E, M, X>) -> Self {
        let epochs = config.verifier.epochs().clone();
        Self {
            verifier: config.verifier,
            epochs,
            registry: config.registry,
            marshal: config.marshal,
            executor: config.executor,
            executed: config.executed,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            max_pending: config.max_pending_events.get(),
            max_pending_bytes: config.max_pending_bytes.get(),
            recent: BTreeMap::new(),
            sources: config.sources,
            served: config.served,
            evidence_dir: config.evidence_dir,
            status: config.status,
            feed: config.feed,
            rejoin: config.rejoin,
            rejoining: false,
            rejoin_requested: false,
            rejoin_after: 0,
            caught_up_to: 0,
            forwarded: 0,
            last_delivered: config.tip,
            finalizations: config.finalizations,
            counters: config.counters,
        }
    }

    /// The upstream status, updated as notifications arrive.
    pub fn status(&self) -> watch::Receiver<UpstreamStatus> {
        self.status.subscribe()
    }

    /// Handles `held` (notifications received before the driver started), then runs until the
    /// upstream notifications end (`Ok`) or a neighbour fails.
    pub async fn run(
        mut self,
        mut rng: impl CryptoRng + Send,
        held: Vec<Sourced>,
        mut notifications: mpsc::Receiver<Sourced>,
        mut delivered: mpsc::UnboundedReceiver<Delivered>,
    ) -> Result<(), DriverError> {
        for (source, notification) in held {
            self.on_notification(&mut rng, source, notification).await?;
        }
        let mut rejoining: Option<RejoinRun> = None;
        loop {
            if self.rejoin_requested && rejoining.is_none() {
                rejoining = self.start_rejoin();
            }
            tokio::select! {
                biased;
                Some(result) = futures::future::OptionFuture::from(rejoining.as_mut()), if rejoining.is_some() => {
                    rejoining = None;
                    self.on_rejoined(&mut rng, result).await?;
                }
                // Held while a rejoin runs: what marshal delivers then was stored by it.
                update = delivered.recv(), if rejoining.is_none() => match update {
                    Some(update) => self.on_delivered(&mut rng, update).await?,
                    None => return Err(DriverError::MarshalStopped),
                },
                notification = notifications.recv() => match notification {
                    Some((source, notification)) => self.on_notification(&mut rng, source, notification).await?,
                    None => return Ok(()),
                },
            }
        }
    }

    /// The executed height, or the tip a rejoin stored if the executor has not reported it yet.
    fn executed_height(&self) -> u64 {
        (*self.executed.borrow()).max(self.caught_up_to)
    }

    /// Whether an event at `height` should start a rejoin.
    fn wants_rejoin(&self, height: u64) -> bool {
        self.rejoin.as_ref().is_some_and(|rejoin| {
            !self.rejoining
                && height > self.rejoin_after
                && height >= self.executed_height().saturating_add(rejoin.gap)
        })
    }

    /// Starts the rejoin once the executor has made durable what it was given, so the
    /// catch-up extends the executor's tip and nothing else writes meanwhile.
    fn start_rejoin(&mut self) -> Option<RejoinRun> {
        self.rejoin_requested = false;
        let rejoin = self.rejoin.as_mut()?;
        self.rejoining = true;
        let run = (rejoin.start)();
        let mut executed = self.executed.clone();
        let forwarded = self.forwarded;
        info!(
            executed = self.executed_height(),
            "far behind the upstreams; rejoining through the hash chain"
        );
        Some(Box::pin(async move {
            // A stopped executor ends the wait; the catch-up then finds the tip where it is.
            let _ = executed.wait_for(|executed| *executed >= forwarded).await;
            run.await
        }))
    }

    /// A rejoin ended: marshal's floor moves to the verified tip it stored, and the events
    /// held meanwhile are handled.
    async fn on_rejoined(
        &mut self,
        rng: &mut impl CryptoRng,
        result: Result<CatchUpReport, CatchUpError>,
    ) -> Result<(), DriverError> {
        self.rejoining = false;
        let highest = self.pending.keys().next_back().copied().unwrap_or_default();
        match result {
            Ok(report) => match report.floor {
                Some(floor) => {
                    info!(
                        from = report.from,
                        to = report.to,
                        certificates = report.certificates,
                        "rejoined through the hash chain"
                    );
                    self.caught_up_to = self.caught_up_to.max(report.to);
                    self.last_delivered = Some((report.to, floor.proposal.payload));
                    self.marshal.set_floor(floor);
                    self.status.send_modify(|status| status.rejoins += 1);
                    if let Some(counters) = &self.counters {
                        counters.rejoins.inc();
                    }
                }
                None => {
                    self.rejoin_after = highest;
                    debug!("rejoin found nothing to catch up; marshal repairs the gap");
                }
            },
            Err(err) => {
                self.rejoin_after = highest;
                warn!(%err, "rejoin through the hash chain stopped; marshal repairs the gap block by block");
            }
        }
        self.retry_pending(rng).await
    }

    async fn on_notification(
        &mut self,
        rng: &mut impl CryptoRng,
        source: SourceId,
        notification: Notification,
    ) -> Result<(), DriverError> {
        match notification {
            Notification::Connected { url } => {
                info!(%url, "following upstream");
                self.sources.set_connected(source, true);
                self.update_connected();
            }
            Notification::Disconnected { reason } => {
                warn!(url = %self.sources.url(source), %reason, "upstream disconnected; reconnecting");
                self.sources.set_connected(source, false);
                self.update_connected();
            }
            Notification::Invalid { what } => {
                self.count_rejected("malformed_event");
                self.sources.invalid(source, &what);
            }
            Notification::Event(event) => match *event {
                Event::Finalized { block, .. } => self.on_finalized(rng, source, block).await?,
                Event::Notarized { .. } | Event::Nullified { .. } => {}
            },
        }
        Ok(())
    }

    fn count_rejected(&self, check: &'static str) {
        self.status.send_modify(|status| {
            status.rejected += 1;
            *status.rejected_by_check.entry(check).or_default() += 1;
        });
        if let Some(counters) = &self.counters {
            counters.rejected(check);
        }
    }

    fn update_connected(&self) {
        let connected = self.sources.health().iter().any(|health| health.connected);
        self.status
            .send_modify(|status| status.connected = connected);
    }

    /// Verifies one finalized event and reports it to marshal; nothing is stored on rejection.
    /// An event already verified from another source is dropped unverified; a valid one that
    /// conflicts with a block verified or stored at its height stops the follower with
    /// evidence.
    async fn on_finalized(
        &mut self,
        rng: &mut impl CryptoRng,
        source: SourceId,
        certified: CertifiedBlock,
    ) -> Result<(), DriverError> {
        if self.sources.is_quarantined(source) {
            debug!(source = %self.sources.url(source), "event from a quarantined upstream ignored");
            return Ok(());
        }
        let hash = certified.block.as_ref().map(Block::hash);
        let height = certified
            .block
            .as_ref()
            .map(Block::height)
            .or(certified.height)
            .unwrap_or_default();
        self.sources.sequenced(source, height);
        // A certificate is a recovered threshold signature, the same bytes from every honest
        // source: only a byte-identical copy of a verified event is dropped unverified.
        if let (Some(hash), Some((seen, _, earlier))) = (hash, self.recent.get(&height))
            && *seen == hash
            && earlier.certificate == certified.certificate
        {
            self.sources.announced(source, height);
            return Ok(());
        }
        let executed = hash.is_some() && height <= self.executed_height();
        let stored = if executed {
            self.stored_at(height).await
        } else {
            None
        };
        if let (Some(hash), Some((digest, Some(finalization)))) = (hash, &stored)
            && *digest == hash
            && encode_certificate(finalization) == certified.certificate
        {
            debug!(height, "finalized event for a height already executed");
            self.sources.announced(source, height);
            return Ok(());
        }
        if executed && stored.is_none() {
            debug!(height, "finalized event below what this node keeps");
            return Ok(());
        }
        if self.rejoining {
            // Handled once the rejoin ends (most of them are below its tip by then).
            self.keep_pending(height, source, certified);
            return Ok(());
        }
        let result = self.verifier.verify(rng, &certified);
        // Only a verified event says how far the upstream is: a rejected one says nothing, and
        // one whose key is not known yet could claim any height.
        if result.is_ok() {
            self.sources.announced(source, height);
            self.status.send_modify(|status| {
                status.announced_height = status.announced_height.max(height);
            });
        }
        match result {
            Ok(verified) => {
                let digest = verified.digest();
                let certified = Arc::new(certified);
                if let Some((seen, _, _)) = self.recent.get(&height)
                    && *seen == digest
                {
                    // Another valid certificate of a block already handed on.
                    return Ok(());
                }
                if let Some((seen, first, earlier)) = self.recent.get(&height) {
                    let first = EvidenceSide {
                        source: self.sources.url(*first),
                        certified: earlier.as_ref().clone(),
                    };
                    return Err(self.conflict(verified, first, source, &certified, *seen));
                }
                if let Some((stored, finalization)) = stored
                    && stored != digest
                {
                    // The block stored at this height is another one.
                    let first = self.stored_side(height, finalization).await;
                    return Err(self.conflict(verified, first, source, &certified, stored));
                }
                if !executed && self.wants_rejoin(height) {
                    // Verified again after the rejoin, if its tip is below this height.
                    self.rejoin_requested = true;
                    self.keep_pending(height, source, Arc::unwrap_or_clone(certified));
                    return Ok(());
                }
                self.recent.insert(height, (digest, source, certified));
                while self.recent.len() > RECENT_HEIGHTS {
                    self.recent.pop_first();
                }
                if executed {
                    // A block repaired through its child's parent hash was stored without a
                    // certificate; the late event supplies it.
                    debug!(
                        height,
                        "certificate stored for a block repaired by its hash"
                    );
                    self.marshal.report_finalization(verified.finalization);
                } else {
                    // The verified event of the next height goes out to subscribers at once;
                    // the chain serves it once the executor has made it durable.
                    self.feed.publish_if_next(cairn_epoch::certified_block(
                        &verified.finalization,
                        verified.block.clone(),
                    ));
                    if let Some(served) = &self.served {
                        served(height, height, &self.sources.url(source));
                    }
                    self.report(verified).await;
                }
            }
            Err(VerifyError::IdentityUnavailable { epoch, .. }) => {
                debug!(height, %epoch, "no key for this epoch yet; event kept until its boundary is processed");
                let rejoin = self.wants_rejoin(height);
                self.keep_pending(height, source, certified);
                if rejoin {
                    self.rejoin_requested = true;
                } else {
                    self.hint_boundary();
                }
            }
            Err(err) => {
                self.count_rejected(err.check());
                warn!(height, source = %self.sources.url(source), check = err.check(), %err, "rejected finalized event; nothing stored");
                self.sources.invalid(
                    source,
                    &format!("a finalized event at height {height} that fails: {err}"),
                );
            }
        }
        Ok(())
    }

    /// The digest of the block stored at `height`, with its finalization when stored.
    async fn stored_at(&self, height: u64) -> Option<(Digest, Option<Finalization>)> {
        let finalization = self.marshal.finalization_at(height).await;
        if let Some(finalization) = finalization {
            return Some((finalization.proposal.payload, Some(finalization)));
        }
        self.marshal
            .block_at(height)
            .await
            .map(|block| (block.hash(), None))
    }

    /// The hash of the block last delivered at `height`, else of the one stored there.
    async fn hash_at(&self, height: u64) -> Option<Digest> {
        match self.last_delivered {
            Some((delivered, hash)) if delivered == height => Some(hash),
            _ => self.stored_at(height).await.map(|(digest, _)| digest),
        }
    }

    /// The stored side of a conflict: the block stored at `height` with its certificate, or
    /// with none when it was authenticated through a later block's parent hash.
    async fn stored_side(&self, height: u64, finalization: Option<Finalization>) -> EvidenceSide {
        let block = self.marshal.block_at(height).await;
        let certified = match (block, &finalization) {
            (Some(block), Some(finalization)) => cairn_epoch::certified_block(finalization, block),
            (block, _) => uncertified(height, block),
        };
        let source = if finalization.is_some() {
            STORE.to_string()
        } else {
            format!(
                "{STORE} (no certificate of its own: authenticated through the parent hash of a later certified block)"
            )
        };
        EvidenceSide { source, certified }
    }

    /// Writes the evidence of two valid certificates for different blocks at one height and
    /// returns the error that stops the follower.
    fn conflict(
        &self,
        verified: VerifiedBlock,
        first: EvidenceSide,
        source: SourceId,
        second: &CertifiedBlock,
        first_digest: Digest,
    ) -> DriverError {
        let second = EvidenceSide {
            source: self.sources.url(source),
            certified: second.clone(),
        };
        let evidence = Evidence {
            height: verified.height(),
            epoch: verified.finalization.proposal.round.epoch().get(),
            identity: alloy_primitives::hex::encode(verified.identity.encode()),
            first,
            second,
        };
        self.halt(evidence, first_digest, verified.digest())
    }

    /// A delivered block whose parent is not `stored`, the block below it: two certified
    /// chains part at that height. The evidence is both blocks there with their certificates,
    /// looked for among the upstreams when not stored; a side none of them serves is shown by
    /// what names it (the stored block without a certificate, the certified child).
    async fn fork(&self, rng: &mut impl CryptoRng, child: &Block, stored: Digest) -> DriverError {
        let height = child.height() - 1;
        let parent = child.parent();
        let finalization = self.marshal.finalization_at(height).await;
        let mut first = self.stored_side(height, finalization).await;
        let mut second = None;
        if let Some(lookup) = &self.finalizations {
            for (source, certified) in lookup(height).await {
                let Some(hash) = certified.block.as_ref().map(Block::hash) else {
                    continue;
                };
                if self.verifier.verify(rng, &certified).is_err() {
                    continue;
                }
                if hash == parent && second.is_none() {
                    second = Some(EvidenceSide { source, certified });
                } else if hash == stored && first.certified.certificate.is_empty() {
                    first = EvidenceSide { source, certified };
                }
            }
        }
        let second = match second {
            Some(side) => side,
            None => {
                let certified = match self.marshal.finalization_at(height + 1).await {
                    Some(finalization) => {
                        cairn_epoch::certified_block(&finalization, child.clone())
                    }
                    None => uncertified(height + 1, Some(child.clone())),
                };
                EvidenceSide {
                    source: format!(
                        "block {} naming {parent} as its parent (no upstream served that block's certificate)",
                        height + 1
                    ),
                    certified,
                }
            }
        };
        let epoch = self.epochs.epoch_of(height);
        let identity = self
            .verifier
            .provider()
            .verifier(epoch)
            .map(|verifier| alloy_primitives::hex::encode(verifier.identity.encode()))
            .unwrap_or_default();
        let evidence = Evidence {
            height,
            epoch: epoch.get(),
            identity,
            first,
            second,
        };
        self.halt(evidence, stored, parent)
    }

    /// Writes `evidence` and returns the error that stops the follower.
    fn halt(&self, evidence: Evidence, first_digest: Digest, second_digest: Digest) -> DriverError {
        let Evidence { height, epoch, .. } = evidence;
        let written = match &self.evidence_dir {
            Some(dir) => write_evidence(dir, &evidence)
                .map(|path| format!("evidence written to {}", path.display()))
                .unwrap_or_else(|err| format!("the evidence file could not be written: {err}")),
            None => "no evidence directory configured".to_string(),
        };
        tracing::error!(
            height,
            epoch,
            first = %evidence.first.source,
            first_digest = %first_digest,
            second = %evidence.second.source,
            second_digest = %second_digest,
            "conflicting finalizations; stopping"
        );
        DriverError::Conflict {
            height,
            epoch,
            first: evidence.first.source,
            second: evidence.second.source,
            evidence: written,
        }
    }

    /// Hands a verified block and its finalization to marshal.
    async fn report(&mut self, verified: VerifiedBlock) {
        let height = verified.height();
        let round = verified.finalization.proposal.round;
        let digest = verified.digest();
        let block = Digested::precomputed(verified.block, digest);
        if !self.marshal.verified_block(round, block).await {
            warn!(height, "marshal did not persist a verified block");
            return;
        }
        self.marshal.report_finalization(verified.finalization);
        debug!(height, %round, "verified finalization reported to marshal");
    }

    /// Asks marshal for the boundary of the newest epoch with a key: its outcome is the key of
    /// the epoch after it.
    fn hint_boundary(&self) {
        let Some(latest) = self.verifier.provider().latest_epoch() else {
            return;
        };
        let Some(boundary) = self.epochs.boundary_height(latest) else {
            return;
        };
        if boundary <= self.executed_height() {
            return;
        }
        debug!(epoch = %latest, boundary, "hinting marshal to fetch the epoch boundary");
        self.marshal.fetch_finalized(boundary);
    }

    /// A finalized block from marshal, in height order: register the next epoch from a
    /// boundary, then hand it to the executor (which acknowledges it once durable).
    async fn on_delivered(
        &mut self,
        rng: &mut impl CryptoRng,
        delivered: Delivered,
    ) -> Result<(), DriverError> {
        let block: Arc<Block> = delivered.block.inner_shared();
        let height = block.height();
        if let Some(below) = height.checked_sub(1)
            && let Some(stored) = self.hash_at(below).await
            && stored != block.parent()
        {
            return Err(self.fork(rng, &block, stored).await);
        }
        let registered = if height > 0 && self.epochs.is_boundary(height) {
            self.register_next_epoch(&block).await?
        } else {
            false
        };
        let finalization = if height == 0 {
            None
        } else {
            self.marshal.finalization_at(height).await
        };
        let hash = block.hash();
        self.executor
            .execute(block, finalization, delivered.ack)
            .await
            .map_err(|_| DriverError::ExecutorStopped)?;
        self.forwarded = self.forwarded.max(height);
        if self.last_delivered.is_none_or(|(last, _)| height > last) {
            self.last_delivered = Some((height, hash));
        }
        if registered {
            self.retry_pending(rng).await?;
        }
        Ok(())
    }

    /// Decodes a finalized boundary block's outcome and registers the next epoch's verifier
    /// (persisted before returning). Returns whether a new epoch was registered.
    async fn register_next_epoch(&mut self, block: &Block) -> Result<bool, DriverError> {
        let height = block.height();
        let epoch = self.epochs.epoch_of(height).get();
        let outcome = boundary_outcome(&self.epochs, block, &OutcomeLimits::default())
            .map_err(|error| DriverError::Boundary { height, error })?;
        let expected = outcome.epoch;
        let identity = *outcome.identity();
        let previous = self
            .verifier
            .provider()
            .verifier(Epoch::new(epoch))
            .map(|verifier| verifier.identity);
        let registration = self
            .registry
            .register(self.verifier.provider(), expected, identity)
            .await?;
        match registration {
            Registration::Registered => {
                info!(
                    epoch = expected,
                    boundary = height,
                    players = outcome.players().len(),
                    threshold = outcome.threshold(),
                    "entered epoch: verifier registered from the boundary outcome"
                );
                if previous.is_some_and(|previous| previous != identity) {
                    warn!(
                        epoch = expected,
                        boundary = height,
                        "network identity rotated (full DKG); the new key was announced by a boundary the old key certified"
                    );
                }
                Ok(true)
            }
            Registration::AlreadyRegistered | Registration::Pruned => {
                debug!(epoch = expected, "epoch already registered");
                Ok(false)
            }
        }
    }

    /// Keeps an event whose epoch has no key yet, within the count and byte bounds. One event
    /// per height is kept (the first). Over a bound, the highest heights go first: they are the
    /// furthest from a key, and an event claiming a far height cannot push out the ones a
    /// boundary will soon make verifiable.
    fn keep_pending(&mut self, height: u64, source: SourceId, certified: CertifiedBlock) {
        if self.pending.contains_key(&height) {
            return;
        }
        let size = certified.certificate.len()
            + certified
                .block
                .as_ref()
                .map_or(0, commonware_codec::EncodeSize::encode_size);
        self.pending.insert(height, (source, certified, size));
        self.pending_bytes += size;
        while self.pending.len() > self.max_pending || self.pending_bytes > self.max_pending_bytes {
            let Some((dropped, (_, _, size))) = self.pending.pop_last() else {
                break;
            };
            self.pending_bytes -= size;
            debug!(
                height = dropped,
                "event dropped: the events kept for a key are at their bound"
            );
        }
    }

    /// Retries kept events whose epoch now has a key; hints the next boundary if some still
    /// wait.
    async fn retry_pending(&mut self, rng: &mut impl CryptoRng) -> Result<(), DriverError> {
        let executed = self.executed_height();
        self.pending = self.pending.split_off(&executed.saturating_add(1));
        self.pending_bytes = self.pending.values().map(|(_, _, size)| size).sum();
        let provider = self.verifier.provider().clone();
        let ready: Vec<u64> = self
            .pending
            .keys()
            .copied()
            .filter(|height| provider.verifier(self.epochs.epoch_of(*height)).is_some())
            .collect();
        for height in ready {
            if let Some((source, certified, size)) = self.pending.remove(&height) {
                self.pending_bytes -= size;
                self.on_finalized(rng, source, certified).await?;
            }
        }
        if !self.pending.is_empty() {
            self.hint_boundary();
        }
        Ok(())
    }
}

/// A block at `height` in the evidence's form, without a certificate.
fn uncertified(height: u64, block: Option<Block>) -> CertifiedBlock {
    CertifiedBlock {
        epoch: 0,
        view: 0,
        height: Some(height),
        digest: block
            .as_ref()
            .map(|block| block.hash().0)
            .unwrap_or_default(),
        certificate: String::new(),
        block,
    }
}

/// Writes `evidence` to `dir/evidence-HEIGHT.json` (synced) and returns the path.
fn write_evidence(dir: &std::path::Path, evidence: &Evidence) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("evidence-{}.json", evidence.height));
    let json = serde_json::to_vec_pretty(evidence).map_err(std::io::Error::other)?;
    let mut file = std::fs::File::create(&path)?;
    file.write_all(&json)?;
    file.sync_all()?;
    Ok(path)
}
