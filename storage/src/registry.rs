//! The follower's persisted epoch registry: the identity each verified boundary block announced
//! for the next epoch, in a commonware-storage metadata store. On restart it is loaded into the
//! verifier registry before anything is verified (the strongest startup trust), so an epoch is
//! registered once across the node's lifetime and never re-derived from unverified data.
//!
//! Catch-up registers a key once the boundary block announcing it is stored, and the driver
//! registers one from a boundary marshal delivers, just before the block is executed. A kill
//! between storing a boundary and persisting its key therefore leaves at most the newest keys
//! missing; [`EpochRegistry::load_for_chain`] re-derives them at start from the stored boundary
//! blocks, which were authenticated before they were stored.
//!
//! It also owns the [`IdentityHistory`]: every identity change verified, persisted with the
//! keys and shown by the status.

use crate::StoreContext;
use crate::execution::{ExecutionError, ExecutionProvider};
use cairn_dkg::{Identity, OutcomeLimits};
use cairn_epoch::EpochStrategy;
use cairn_epoch::{
    ChainProfile, RegisterError, Registration, SchemeProvider, VerifyError, boundary_outcome,
};
use commonware_codec::{Decode as _, DecodeExt, Encode};
use commonware_consensus::types::Epoch;
use commonware_runtime::telemetry::metrics::Counter;
use commonware_storage::metadata::{self, Metadata};
use commonware_utils::sequence::U64;
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    ops::Bound,
    sync::{Arc, OnceLock, RwLock},
};
use tokio::sync::Mutex;
use tracing::{info, warn};

/// Encoded size of an identity (a G2 point).
const IDENTITY_BYTES: usize = 96;

/// The key under which the identity history is kept (no epoch reaches it).
const HISTORY_KEY: u64 = u64::MAX;

/// Most bytes of a stored value: the identity history's changes, each an epoch and an
/// identity, with a length prefix.
const MAX_VALUE_BYTES: usize = 16 + MAX_HISTORY_CHANGES * (8 + IDENTITY_BYTES);

/// Why the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The metadata store failed.
    #[error("epoch registry {what}: {error}")]
    Store {
        /// What was being done.
        what: &'static str,
        /// The store's error.
        error: commonware_storage::metadata::Error,
    },
    /// A stored identity does not decode (the datadir is damaged).
    #[error("epoch registry holds an undecodable identity for epoch {epoch}: {error}")]
    Corrupt {
        /// The epoch.
        epoch: u64,
        /// The decode error.
        error: String,
    },
    /// The stored identity of an epoch conflicts with what the chain profile trusts.
    #[error("epoch {epoch}: {error}")]
    Conflict {
        /// The epoch.
        epoch: u64,
        /// The conflict.
        error: RegisterError,
    },
    /// An earlier failed write destroyed the store handle.
    #[error("the epoch registry was poisoned by an earlier failed write")]
    Poisoned,
    /// A stored boundary block could not be read to re-derive the key it announces.
    #[error(
        "reading stored boundary block {height} to re-derive the key of epoch {epoch}: {error}"
    )]
    BoundaryRead {
        /// The epoch whose key was being re-derived.
        epoch: u64,
        /// The boundary's height.
        height: u64,
        /// Why.
        error: ExecutionError,
    },
    /// A stored boundary block carries no valid outcome (the datadir is damaged).
    #[error("stored boundary block {height} announces no key for epoch {epoch}: {error}")]
    BoundaryOutcome {
        /// The epoch whose key was being re-derived.
        epoch: u64,
        /// The boundary's height.
        height: u64,
        /// Why.
        error: VerifyError,
    },
}

/// What [`EpochRegistry::load_for_chain`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Keys loaded from disk.
    pub restored: usize,
    /// Stored keys of epochs above the stored chain's next height, dropped because a key the
    /// chain needs was missing (they are verified again when the chain reaches them).
    pub discarded: Vec<u64>,
    /// Epochs whose key was missing and was re-derived from a stored boundary block.
    pub rederived: Vec<u64>,
}

/// The metadata store behind the registry: epoch -> encoded identity.
type IdentityStore<E> = Metadata<E, U64, Vec<u8>>;

/// Epoch identities on disk (cheap to clone; clones share state).
pub struct EpochRegistry<E: StoreContext> {
    store: Arc<Mutex<Option<IdentityStore<E>>>>,
    keep: u64,
    history: IdentityHistory,
}

impl<E: StoreContext> Clone for EpochRegistry<E> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            keep: self.keep,
            history: self.history.clone(),
        }
    }
}

impl<E: StoreContext> EpochRegistry<E> {
    /// Opens the registry in the partition `partition`, keeping the newest `keep` epochs.
    pub async fn open(
        context: E,
        partition: &str,
        keep: std::num::NonZeroUsize,
    ) -> Result<Self, RegistryError> {
        let store: IdentityStore<E> = Metadata::init(
            context,
            metadata::Config {
                partition: partition.into(),
                codec_config: ((..=MAX_VALUE_BYTES).into(), ()),
            },
        )
        .await
        .map_err(|error| RegistryError::Store {
            what: "opening",
            error,
        })?;
        let history = IdentityHistory::default();
        if let Some(stored) = store.get(&U64::new(HISTORY_KEY)) {
            let changes = Vec::<(u64, Identity)>::decode_cfg(
                bytes::Bytes::copy_from_slice(stored),
                &((..=MAX_HISTORY_CHANGES).into(), ((), ())),
            )
            .map_err(|err| RegistryError::Corrupt {
                epoch: HISTORY_KEY,
                error: format!("the identity history does not decode: {err}"),
            })?;
            for (epoch, identity) in changes {
                history.observe(epoch, identity);
            }
        }
        Ok(Self {
            store: Arc::new(Mutex::new(Some(store))),
            keep: u64::try_from(keep.get()).unwrap_or(u64::MAX),
            history,
        })
    }

    /// Every identity change this registry verified, kept on disk with it (the newest
    /// [`MAX_HISTORY_CHANGES`]).
    pub fn history(&self) -> IdentityHistory {
        self.history.clone()
    }

    /// The stored epochs and identities, oldest first.
    pub async fn entries(&self) -> Result<Vec<(u64, Identity)>, RegistryError> {
        let guard = self.store.lock().await;
        let store = guard.as_ref().ok_or(RegistryError::Poisoned)?;
        let mut entries = Vec::new();
        for key in store.keys() {
            let epoch = u64::from(key);
            if epoch == HISTORY_KEY {
                continue;
            }
            let Some(value) = store.get(key) else {
                continue;
            };
            let identity =
                Identity::decode(value.clone()).map_err(|err| RegistryError::Corrupt {
                    epoch,
                    error: err.to_string(),
                })?;
            entries.push((epoch, identity));
        }
        entries.sort_by_key(|(epoch, _)| *epoch);
        Ok(entries)
    }

    /// Loads every stored epoch into `provider`; returns how many were stored.
    pub async fn load_into(&self, provider: &SchemeProvider) -> Result<usize, RegistryError> {
        let entries = self.entries().await?;
        for (epoch, identity) in &entries {
            register_in(provider, *epoch, *identity)?;
            self.history.observe(*epoch, *identity);
        }
        Ok(entries.len())
    }

    /// Loads the stored keys into `provider`, with `trusted` (keys the caller verified itself,
    /// such as a checkpoint's), making sure the keys the chain in `execution` needs are there:
    /// those of the stored tip's epoch and of the next height's epoch.
    ///
    /// A kill between storing a boundary and persisting its key leaves that key missing: it is
    /// re-derived from the stored boundary block (or the genesis outcome) and persisted. When a
    /// needed key is missing, keys of epochs above the next height's are dropped first: no
    /// stored block needs them yet, the boundaries that announce them are verified again when
    /// the chain reaches them, and in the bounded registry they would crowd out the keys the tip
    /// needs (an older catch-up stored keys a whole window ahead of its blocks). Keys a little
    /// ahead while the needed ones are present (a boundary delivered and registered before its
    /// block was executed) are kept, so they are not registered twice.
    pub async fn load_for_chain(
        &self,
        provider: &SchemeProvider,
        profile: &ChainProfile,
        execution: &impl ExecutionProvider,
        trusted: &[(u64, Identity)],
    ) -> Result<Loaded, RegistryError> {
        let epochs = &profile.epochs;
        let tip = execution.finalized_height();
        let tip_epoch = epochs.epoch_of(tip).get();
        let horizon = epochs.epoch_of(tip.saturating_add(1)).get();
        let mut loaded = Loaded::default();
        let mut entries = self.entries().await?;
        let present = |epoch: u64| {
            entries
                .iter()
                .chain(trusted)
                .any(|(stored, _)| *stored == epoch)
        };
        let needs_repair = !present(tip_epoch) || !present(horizon);
        if needs_repair {
            loaded.discarded = entries
                .iter()
                .map(|(epoch, _)| *epoch)
                .filter(|epoch| *epoch > horizon)
                .collect();
        }
        if !loaded.discarded.is_empty() {
            entries.retain(|(epoch, _)| *epoch <= horizon);
            self.discard_above(horizon).await?;
            warn!(
                tip,
                epochs = ?loaded.discarded,
                "the epoch registry held keys ahead of the stored chain but not the ones it needs; dropped them, they are verified again from their boundaries"
            );
        }
        for (epoch, identity) in entries.iter().chain(trusted) {
            if register_in(provider, *epoch, *identity)? == Registration::Registered {
                self.history.observe(*epoch, *identity);
            }
        }
        loaded.restored = entries.len();
        self.persist(trusted).await?;
        for epoch in [tip_epoch, horizon] {
            if provider.registered_identity(Epoch::new(epoch)).is_some()
                || loaded.rederived.contains(&epoch)
            {
                continue;
            }
            let Some(identity) = derive_key(profile, execution, epoch).await? else {
                warn!(
                    epoch,
                    tip,
                    "no key for an epoch the stored chain needs, and its boundary is not stored"
                );
                continue;
            };
            self.register(provider, epoch, identity).await?;
            info!(
                epoch,
                tip, "re-derived a missing epoch key from its stored boundary block"
            );
            loaded.rederived.push(epoch);
        }
        Ok(loaded)
    }

    /// Drops the stored keys of epochs above `epoch`, with one sync.
    async fn discard_above(&self, epoch: u64) -> Result<(), RegistryError> {
        let mut guard = self.store.lock().await;
        let mut store = guard.take().ok_or(RegistryError::Poisoned)?;
        store.retain(|key, _| {
            let key = u64::from(key);
            key == HISTORY_KEY || key <= epoch
        });
        let store = store.sync().await.map_err(|error| RegistryError::Store {
            what: "writing",
            error,
        })?;
        *guard = Some(store);
        Ok(())
    }

    /// Registers `identity` for `epoch` in `provider` and, when it is new, persists it (synced
    /// before returning) and drops epochs older than the newest `keep`.
    pub async fn register(
        &self,
        provider: &SchemeProvider,
        epoch: u64,
        identity: Identity,
    ) -> Result<Registration, RegistryError> {
        let registration = register_in(provider, epoch, identity)?;
        if registration == Registration::Registered {
            self.history.observe(epoch, identity);
            self.persist(&[(epoch, identity)]).await?;
        }
        Ok(registration)
    }

    /// [`Self::register`] for consecutive epochs, oldest first, persisted with one sync.
    pub async fn register_all(
        &self,
        provider: &SchemeProvider,
        entries: &[(u64, Identity)],
    ) -> Result<(), RegistryError> {
        let mut registered = Vec::new();
        for (epoch, identity) in entries {
            if register_in(provider, *epoch, *identity)? == Registration::Registered {
                self.history.observe(*epoch, *identity);
                registered.push((*epoch, *identity));
            }
        }
        self.persist(&registered).await
    }

    /// Writes `entries` (oldest first) and the identity history, keeps the newest `keep`
    /// epochs, and syncs once.
    async fn persist(&self, entries: &[(u64, Identity)]) -> Result<(), RegistryError> {
        let Some((newest, _)) = entries.last() else {
            return Ok(());
        };
        let mut guard = self.store.lock().await;
        let mut store = guard.take().ok_or(RegistryError::Poisoned)?;
        let keep_from = newest.saturating_sub(self.keep - 1);
        for (epoch, identity) in entries.iter().filter(|(epoch, _)| *epoch >= keep_from) {
            store.put(U64::new(*epoch), identity.encode().to_vec());
        }
        store.retain(|key, _| u64::from(key) >= keep_from);
        store.put(
            U64::new(HISTORY_KEY),
            self.history.known().encode().to_vec(),
        );
        let store = store.sync().await.map_err(|error| RegistryError::Store {
            what: "writing",
            error,
        })?;
        *guard = Some(store);
        Ok(())
    }
}

/// The key of `epoch` as the stored chain announces it: the genesis outcome's for epoch 0, else
/// the outcome in the stored boundary block of the epoch before. `None` when that boundary is
/// not stored (below a checkpoint, or above the tip).
pub async fn derive_key(
    profile: &ChainProfile,
    execution: &impl ExecutionProvider,
    epoch: u64,
) -> Result<Option<Identity>, RegistryError> {
    let Some(previous) = epoch.checked_sub(1) else {
        return Ok(Some(*profile.genesis.identity()));
    };
    let Some(height) = profile.epochs.boundary_height(Epoch::new(previous)) else {
        return Ok(None);
    };
    if height < execution.first_height() || height > execution.finalized_height() {
        return Ok(None);
    }
    let block =
        execution
            .block_by_number(height)
            .await
            .map_err(|error| RegistryError::BoundaryRead {
                epoch,
                height,
                error,
            })?;
    let Some(block) = block else {
        return Ok(None);
    };
    let outcome =
        boundary_outcome(&profile.epochs, &block, &OutcomeLimits::default()).map_err(|error| {
            RegistryError::BoundaryOutcome {
                epoch,
                height,
                error,
            }
        })?;
    Ok(Some(*outcome.identity()))
}

/// Registers `identity` for `epoch` in `provider` (memory only).
fn register_in(
    provider: &SchemeProvider,
    epoch: u64,
    identity: Identity,
) -> Result<Registration, RegistryError> {
    provider
        .register(Epoch::new(epoch), identity)
        .map_err(|error| RegistryError::Conflict { epoch, error })
}

/// Network identities by the first epoch each signed, as the follower verified them (cheap to
/// clone; clones share state). Only changes are kept: an epoch whose identity equals the one
/// before it adds nothing.
#[derive(Clone, Debug, Default)]
pub struct IdentityHistory {
    changes: Arc<RwLock<BTreeMap<u64, Identity>>>,
    rotations: Arc<OnceLock<Counter>>,
}

/// One entry of the identity history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityChange {
    /// The first epoch it signs.
    pub epoch: u64,
    /// The boundary block that announced it (the last block of the epoch before); `None` for
    /// epoch 0, whose identity the genesis block carries.
    pub boundary: Option<u64>,
    /// The identity (a BLS12-381 G2 point), 0x-prefixed hex.
    pub identity: String,
}

/// Most identity changes a history keeps (the newest).
pub const MAX_HISTORY_CHANGES: usize = 4096;

impl IdentityHistory {
    /// Notes that `identity` signs `epoch`.
    pub fn observe(&self, epoch: u64, identity: Identity) {
        let mut changes = self
            .changes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = changes.range(..epoch).next_back().map(|(_, known)| *known);
        if before == Some(identity) {
            return;
        }
        let known = changes.insert(epoch, identity);
        if before.is_some()
            && known != Some(identity)
            && let Some(rotations) = self.rotations.get()
        {
            rotations.inc();
        }
        // An entry after it that repeats it is no longer a change.
        if let Some((&next, known)) = changes
            .range((Bound::Excluded(epoch), Bound::Unbounded))
            .next()
            && *known == identity
        {
            changes.remove(&next);
        }
        while changes.len() > MAX_HISTORY_CHANGES {
            changes.pop_first();
        }
    }

    /// Counts every identity change observed from now on in `rotations` (the changes already
    /// known, restored from disk, are not counted again).
    pub fn count_rotations(&self, rotations: Counter) {
        let _ = self.rotations.set(rotations);
    }

    /// The changes as (first epoch, identity), oldest first.
    pub fn known(&self) -> Vec<(u64, Identity)> {
        self.changes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(epoch, identity)| (*epoch, *identity))
            .collect()
    }

    /// The changes, oldest first.
    pub fn changes(&self, epochs: &EpochStrategy) -> Vec<IdentityChange> {
        let changes = self
            .changes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        changes
            .iter()
            .map(|(epoch, identity)| IdentityChange {
                epoch: *epoch,
                boundary: epoch
                    .checked_sub(1)
                    .and_then(|before| epochs.boundary_height(Epoch::new(before))),
                identity: alloy_primitives::hex::encode_prefixed(identity.encode()),
            })
            .collect()
    }

    /// Identity rotations seen: changes after the first.
    pub fn rotations(&self) -> usize {
        self.changes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
            .saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::{EpochRegistry, IdentityHistory, RegistryError};
    use cairn_dkg::Identity;
    use cairn_epoch::{EpochStrategy, Registration, SchemeProvider};
    use commonware_consensus::types::Epoch;
    use commonware_cryptography::bls12381::primitives::{ops::keypair, variant::MinSig};
    use commonware_runtime::{Runner as _, Supervisor as _, deterministic};
    use commonware_utils::NZUsize;
    use rand::{SeedableRng as _, rngs::StdRng};

    fn identity(seed: u64) -> Identity {
        keypair::<_, MinSig>(&mut StdRng::seed_from_u64(seed)).1
    }

    /// The registry in partition `epochs`, opened in a child context labelled `label`.
    async fn open(
        context: &deterministic::Context,
        label: &'static str,
        keep: std::num::NonZeroUsize,
    ) -> EpochRegistry<deterministic::Context> {
        EpochRegistry::open(context.child(label), "epochs", keep)
            .await
            .expect("opens")
    }

    fn new_provider() -> SchemeProvider {
        SchemeProvider::new(b"TEMPO", NZUsize!(16))
    }

    #[test]
    fn registered_keys_survive_a_restart_and_only_the_newest_kept_epochs_stay() {
        deterministic::Runner::default().start(|context| async move {
            let registry = open(&context, "a", NZUsize!(3)).await;
            let provider = new_provider();
            for epoch in 0..=3 {
                let registered = registry
                    .register(&provider, epoch, identity(epoch / 2))
                    .await
                    .expect("stored");
                assert_eq!(registered, Registration::Registered);
            }
            registry
                .register_all(&provider, &[(4, identity(2)), (5, identity(2))])
                .await
                .expect("stored");
            // The same key again changes nothing.
            assert_eq!(
                registry
                    .register(&provider, 5, identity(2))
                    .await
                    .expect("stored"),
                Registration::AlreadyRegistered
            );
            drop(registry);

            let reopened = open(&context, "b", NZUsize!(3)).await;
            let entries = reopened.entries().await.expect("reads");
            assert_eq!(
                entries,
                vec![(3, identity(1)), (4, identity(2)), (5, identity(2))],
                "the newest three epochs"
            );
            // The identity history outlives the pruned keys: genesis, then the changes at 2 and 4.
            let history: Vec<u64> = reopened
                .history()
                .known()
                .iter()
                .map(|(epoch, _)| *epoch)
                .collect();
            assert_eq!(history, vec![0, 2, 4]);
            let fresh = new_provider();
            assert_eq!(reopened.load_into(&fresh).await.expect("loads"), 3);
            assert_eq!(fresh.registered_identity(Epoch::new(4)), Some(identity(2)));
            assert_eq!(fresh.registered_identity(Epoch::new(2)), None);
        });
    }

    #[test]
    fn a_second_key_for_a_registered_epoch_is_refused_and_not_stored() {
        deterministic::Runner::default().start(|context| async move {
            let registry = open(&context, "a", NZUsize!(8)).await;
            let provider = new_provider();
            registry
                .register(&provider, 1, identity(1))
                .await
                .expect("stored");
            match registry.register(&provider, 1, identity(2)).await {
                Err(RegistryError::Conflict { epoch: 1, .. }) => {}
                other => panic!("expected a conflict at epoch 1, got {other:?}"),
            }
            assert_eq!(
                provider.registered_identity(Epoch::new(1)),
                Some(identity(1))
            );
            drop(registry);
            let reopened = open(&context, "b", NZUsize!(8)).await;
            assert_eq!(
                reopened.entries().await.expect("reads"),
                vec![(1, identity(1))],
                "only the first key is on disk"
            );
            assert_eq!(reopened.history().rotations(), 0);
        });
    }

    #[test]
    fn history_keeps_only_changes_with_their_boundaries() {
        let history = IdentityHistory::default();
        history.observe(0, identity(1));
        history.observe(1, identity(1));
        history.observe(2, identity(1));
        history.observe(3, identity(2));
        history.observe(4, identity(2));
        // Out of order: epoch 5 before 4 was known would still merge.
        history.observe(6, identity(3));
        history.observe(5, identity(3));
        let epochs = EpochStrategy::new(10).expect("valid length");
        let changes = history.changes(&epochs);
        let epochs_and_boundaries: Vec<_> = changes
            .iter()
            .map(|change| (change.epoch, change.boundary))
            .collect();
        assert_eq!(
            epochs_and_boundaries,
            vec![(0, None), (3, Some(29)), (5, Some(49))]
        );
        assert_eq!(history.rotations(), 2);
        assert_ne!(changes[0].identity, changes[1].identity);
    }
}
