//! The follower's persisted epoch registry: the identity each verified boundary block announced
//! for the next epoch, in a commonware-storage metadata store. On restart it is loaded into the
//! verifier registry before anything is verified (the strongest startup trust), so an epoch is
//! registered once across the node's lifetime and never re-derived from unverified data.

use crate::status::{IdentityHistory, MAX_HISTORY_CHANGES};
use cairn_dkg::Identity;
use cairn_epoch::{RegisterError, Registration, SchemeProvider};
use cairn_feed::StoreContext;
use commonware_codec::{Decode as _, DecodeExt, Encode};
use commonware_consensus::types::Epoch;
use commonware_storage::metadata::{self, Metadata};
use commonware_utils::sequence::U64;
use std::sync::Arc;
use tokio::sync::Mutex;

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
    /// Opens the registry in the partition `partition`, keeping the newest `keep` epochs (at
    /// least one).
    pub async fn open(context: E, partition: &str, keep: usize) -> Result<Self, RegistryError> {
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
            keep: u64::try_from(keep.max(1)).unwrap_or(u64::MAX),
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
