//! The driver's loop.

use super::{Config, Delivered, MarshalMailbox};
use crate::{
    executor,
    registry::{EpochRegistry, RegistryError},
    upstream::Notification,
};
use cairn_dkg::OutcomeLimits;
use cairn_epoch::{
    EpochStrategy, FinalizationVerifier, Registration, VerifiedBlock, VerifyError, boundary_outcome,
};
use cairn_feed::StoreContext;
use cairn_primitives::{Block, CertifiedBlock, Event};
use commonware_consensus::{
    Reporter as _,
    simplex::types::Activity,
    types::{Epoch, Height},
};
use commonware_cryptography::{Digested, Signer as _, ed25519};
use commonware_utils::vec::NonEmptyVec;
use rand::CryptoRng;
use std::{collections::BTreeMap, sync::Arc};
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
}

/// What the driver knows of its upstream, for status displays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// Whether the upstream is connected.
    pub connected: bool,
    /// The highest height of an event that verified or awaits its epoch's key.
    pub announced_height: u64,
    /// Finalized events rejected so far.
    pub rejected: u64,
}

/// The driver (see the module docs).
pub struct Actor<E: StoreContext> {
    verifier: FinalizationVerifier,
    epochs: EpochStrategy,
    registry: EpochRegistry<E>,
    marshal: MarshalMailbox,
    executor: executor::Mailbox,
    executed: watch::Receiver<u64>,
    pending: BTreeMap<u64, CertifiedBlock>,
    max_pending: usize,
    hint_target: ed25519::PublicKey,
    status: watch::Sender<UpstreamStatus>,
}

impl<E: StoreContext> Actor<E> {
    pub(super) fn new(config: Config<E>) -> Self {
        let epochs = config.verifier.epochs().clone();
        Self {
            verifier: config.verifier,
            epochs,
            registry: config.registry,
            marshal: config.marshal,
            executor: config.executor,
            executed: config.executed,
            pending: BTreeMap::new(),
            max_pending: config.max_pending_events.max(1),
            // The opaque resolver has no peers and ignores hint targets; marshal's API wants one.
            hint_target: ed25519::PrivateKey::from_seed(0).public_key(),
            status: watch::channel(UpstreamStatus::default()).0,
        }
    }

    /// The upstream status, updated as notifications arrive.
    pub fn status(&self) -> watch::Receiver<UpstreamStatus> {
        self.status.subscribe()
    }

    /// Runs until the upstream notifications end (`Ok`) or a neighbour fails.
    pub async fn run(
        mut self,
        mut rng: impl CryptoRng + Send,
        mut notifications: mpsc::Receiver<Notification>,
        mut delivered: mpsc::UnboundedReceiver<Delivered>,
    ) -> Result<(), DriverError> {
        loop {
            tokio::select! {
                biased;
                update = delivered.recv() => match update {
                    Some(update) => self.on_delivered(&mut rng, update).await?,
                    None => return Err(DriverError::MarshalStopped),
                },
                notification = notifications.recv() => match notification {
                    Some(notification) => self.on_notification(&mut rng, notification).await,
                    None => return Ok(()),
                },
            }
        }
    }

    async fn on_notification(&mut self, rng: &mut impl CryptoRng, notification: Notification) {
        match notification {
            Notification::Connected { url } => {
                info!(%url, "following upstream");
                self.status.send_modify(|status| status.connected = true);
            }
            Notification::Disconnected { reason } => {
                warn!(%reason, "upstream disconnected; reconnecting");
                self.status.send_modify(|status| status.connected = false);
            }
            Notification::Event(event) => match *event {
                Event::Finalized { block, .. } => self.on_finalized(rng, block).await,
                Event::Notarized { .. } | Event::Nullified { .. } => {}
            },
        }
    }

    /// Verifies one finalized event and reports it to marshal; nothing is stored on rejection.
    async fn on_finalized(&mut self, rng: &mut impl CryptoRng, certified: CertifiedBlock) {
        let height = certified
            .block
            .as_ref()
            .map(Block::height)
            .or(certified.height)
            .unwrap_or_default();
        let executed = certified.block.is_some() && height <= *self.executed.borrow();
        if executed
            && self
                .marshal
                .get_finalization(Height::new(height))
                .await
                .is_some()
        {
            debug!(height, "finalized event for a height already executed");
            return;
        }
        let result = self.verifier.verify(rng, &certified);
        // A rejected event says nothing about the upstream's height.
        if matches!(
            &result,
            Ok(_) | Err(VerifyError::IdentityUnavailable { .. })
        ) {
            self.status.send_modify(|status| {
                status.announced_height = status.announced_height.max(height);
            });
        }
        match result {
            // A block repaired through its child's parent hash was stored without a
            // certificate; the late event supplies it.
            Ok(verified) if executed => {
                debug!(
                    height,
                    "certificate stored for a block repaired by its hash"
                );
                let _ = self
                    .marshal
                    .report(Activity::Finalization(verified.finalization));
            }
            Ok(verified) => self.report(verified).await,
            Err(VerifyError::IdentityUnavailable { epoch, .. }) => {
                debug!(height, %epoch, "no key for this epoch yet; event kept until its boundary is processed");
                self.pending.insert(height, certified);
                while self.pending.len() > self.max_pending {
                    self.pending.pop_first();
                }
                self.hint_boundary();
            }
            Err(err) => {
                self.status.send_modify(|status| status.rejected += 1);
                warn!(height, check = err.check(), %err, "rejected finalized event; nothing stored");
            }
        }
    }

    /// Hands a verified block and its finalization to marshal.
    async fn report(&mut self, verified: VerifiedBlock) {
        let height = verified.height();
        let round = verified.finalization.proposal.round;
        let digest = verified.digest();
        let block = Digested::precomputed(verified.block, digest);
        if !self.marshal.certified(round, block).await {
            warn!(height, "marshal did not persist a verified block");
            return;
        }
        let _ = self
            .marshal
            .report(Activity::Finalization(verified.finalization));
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
        if boundary <= *self.executed.borrow() {
            return;
        }
        debug!(epoch = %latest, boundary, "hinting marshal to fetch the epoch boundary");
        self.marshal.hint_finalized(
            Height::new(boundary),
            NonEmptyVec::new(self.hint_target.clone()),
        );
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
        let registered = if height > 0 && self.epochs.is_boundary(height) {
            self.register_next_epoch(&block).await?
        } else {
            false
        };
        let finalization = if height == 0 {
            None
        } else {
            self.marshal.get_finalization(Height::new(height)).await
        };
        self.executor
            .finalized(block, finalization, delivered.ack)
            .await
            .map_err(|_| DriverError::ExecutorStopped)?;
        if registered {
            self.retry_pending(rng).await;
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

    /// Retries kept events whose epoch now has a key; hints the next boundary if some still
    /// wait.
    async fn retry_pending(&mut self, rng: &mut impl CryptoRng) {
        let executed = *self.executed.borrow();
        self.pending = self.pending.split_off(&executed.saturating_add(1));
        let provider = self.verifier.provider().clone();
        let ready: Vec<u64> = self
            .pending
            .keys()
            .copied()
            .filter(|height| provider.verifier(self.epochs.epoch_of(*height)).is_some())
            .collect();
        for height in ready {
            if let Some(certified) = self.pending.remove(&height) {
                self.on_finalized(rng, certified).await;
            }
        }
        if !self.pending.is_empty() {
            self.hint_boundary();
        }
    }
}
