//! A validator's secrets on disk: its share of each epoch's key, its dealer seed of each epoch,
//! and the private dealings it received, in one commonware-storage metadata store, each write
//! synced before the ceremony goes on (a dealer that forgot its seed could deal twice; a player
//! that forgot its share could not sign).
//!
//! glue's [`SecretStore`] gives a write no way to fail. A failed sync is therefore reported on
//! [`DiskSecrets::failed`] and the write never completes, so the ceremony stops there rather
//! than go on with a secret that is not durable; the process stops on the report.

use bytes::{Buf as _, BufMut as _};
use commonware_codec::{Copying, Encode as _, Read, ReadExt as _};
use commonware_consensus::types::Epoch;
use commonware_cryptography::{
    PublicKey,
    bls12381::{dkg::feldman_desmedt::DealerPrivMsg, primitives::group::Share},
    transcript::Summary,
};
use commonware_glue::dkg::SecretStore;
use commonware_runtime::{Clock, Metrics, Storage};
use commonware_storage::metadata::{self, Metadata};
use commonware_utils::sequence::U64;
use std::sync::Arc;
use tokio::sync::{Mutex, watch};
use tracing::error;

/// Largest record kept (a private dealing is a few hundred bytes).
const MAX_RECORD: usize = 64 * 1024;

/// What a record holds, in the top two bits of its key; the rest is the epoch (shares and
/// seeds) or a digest of the epoch and the dealer (dealings).
#[derive(Clone, Copy)]
enum Kind {
    Share = 1,
    Seed = 2,
    Dealing = 3,
}

/// The key of a share or seed record of `epoch`.
fn key(kind: Kind, epoch: Epoch) -> U64 {
    U64::new(((kind as u64) << 62) | (epoch.get() & ((1 << 62) - 1)))
}

/// The key of the dealing from `dealer` in `epoch`.
fn dealing_key(epoch: Epoch, dealer: &[u8]) -> U64 {
    let digest = alloy_primitives::keccak256([&epoch.get().to_be_bytes()[..], dealer].concat());
    let low = u64::from_be_bytes(digest[..8].try_into().expect("eight bytes"));
    U64::new(((Kind::Dealing as u64) << 62) | (low & ((1 << 62) - 1)))
}

/// The epoch a record belongs to: in the key for shares and seeds, at the start of the value
/// for dealings.
fn epoch_of(key: &U64, value: &[u8]) -> Option<u64> {
    let raw = u64::from(key.clone());
    match raw >> 62 {
        1 | 2 => Some(raw & ((1 << 62) - 1)),
        3 => value
            .get(..8)
            .map(|bytes| u64::from_be_bytes(bytes.try_into().expect("eight bytes"))),
        _ => None,
    }
}

/// The metadata store the records live in (taken out while it syncs, as its sync consumes it).
type Records<E> = Metadata<E, U64, Vec<u8>>;

/// The secrets store (cheap to clone; clones share the store).
pub struct DiskSecrets<E: Clock + Storage + Metrics> {
    store: Arc<Mutex<Option<Records<E>>>>,
    failed: watch::Sender<Option<String>>,
}

impl<E: Clock + Storage + Metrics> Clone for DiskSecrets<E> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            failed: self.failed.clone(),
        }
    }
}

/// Why the secrets store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("opening the validator's secrets: {0}")]
pub struct SecretsError(#[from] metadata::Error);

impl<E: Clock + Storage + Metrics> DiskSecrets<E> {
    /// Opens (or creates) the store in `context`'s storage, in partition `partition`.
    pub async fn open(context: E, partition: &str) -> Result<Self, SecretsError> {
        let store = Metadata::init(
            context,
            metadata::Config {
                partition: partition.to_string(),
                codec_config: ((..=MAX_RECORD).into(), ()),
            },
        )
        .await?;
        Ok(Self {
            store: Arc::new(Mutex::new(Some(store))),
            failed: watch::channel(None).0,
        })
    }

    /// Reports the first failed write (the store then completes no write).
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.failed.subscribe()
    }

    /// Whether any share is stored (a validator imports its genesis share once).
    pub async fn holds_shares(&self) -> bool {
        let store = self.store.lock().await;
        store.as_ref().is_some_and(|store| {
            store
                .keys()
                .any(|key| u64::from(key.clone()) >> 62 == Kind::Share as u64)
        })
    }

    /// Applies `change` and syncs; on a failure, reports it and never returns (see the module
    /// docs).
    async fn write(&self, change: impl FnOnce(&mut Records<E>)) {
        let mut guard = self.store.lock().await;
        let Some(mut store) = guard.take() else {
            return std::future::pending().await;
        };
        change(&mut store);
        match store.sync().await {
            Ok(store) => *guard = Some(store),
            Err(err) => {
                let message = format!("writing the validator's secrets failed: {err}");
                error!("{message}");
                self.failed.send_replace(Some(message));
                drop(guard);
                std::future::pending::<()>().await;
            }
        }
    }

    /// The record under `key`, decoded.
    async fn read<T: Read<Cfg = ()>>(&self, key: &U64, skip: usize) -> Option<T> {
        let store = self.store.lock().await;
        let bytes = store.as_ref()?.get(key)?;
        let mut buf = Copying(bytes.get(skip..)?);
        let value = T::read(&mut buf).ok()?;
        (buf.remaining() == 0).then_some(value)
    }
}

impl<E: Clock + Storage + Metrics> SecretStore for DiskSecrets<E> {
    async fn put_share(&mut self, epoch: Epoch, share: Share) {
        let value = share.encode().to_vec();
        self.write(|store| {
            store.put(key(Kind::Share, epoch), value);
        })
        .await;
    }

    async fn get_share(&mut self, epoch: Epoch) -> Option<Share> {
        self.read(&key(Kind::Share, epoch), 0).await
    }

    async fn put_seed(&mut self, epoch: Epoch, seed: Summary) {
        let value = seed.encode().to_vec();
        self.write(|store| {
            store.put(key(Kind::Seed, epoch), value);
        })
        .await;
    }

    async fn get_seed(&mut self, epoch: Epoch) -> Option<Summary> {
        self.read(&key(Kind::Seed, epoch), 0).await
    }

    async fn put_dealing<P: PublicKey>(&mut self, epoch: Epoch, dealer: P, private: DealerPrivMsg) {
        let dealer = dealer.encode().to_vec();
        let mut value = Vec::new();
        value.put_u64(epoch.get());
        value.put_u32(dealer.len() as u32);
        value.extend_from_slice(&dealer);
        value.extend_from_slice(&private.encode());
        let key = dealing_key(epoch, &dealer);
        self.write(|store| {
            store.put(key, value);
        })
        .await;
    }

    async fn get_dealing<P: PublicKey>(
        &mut self,
        epoch: Epoch,
        dealer: &P,
    ) -> Option<DealerPrivMsg> {
        let dealer = dealer.encode().to_vec();
        let key = dealing_key(epoch, &dealer);
        let stored = {
            let store = self.store.lock().await;
            store.as_ref()?.get(&key)?.clone()
        };
        let mut buf = stored.as_slice();
        if buf.remaining() < 12 || buf.get_u64() != epoch.get() {
            return None;
        }
        let length = buf.get_u32() as usize;
        if buf.get(..length)? != dealer.as_slice() {
            return None;
        }
        let mut buf = Copying(&buf[length..]);
        let private = DealerPrivMsg::read(&mut buf).ok()?;
        (buf.remaining() == 0).then_some(private)
    }

    async fn prune(&mut self, min: Epoch) {
        self.write(|store| {
            store.retain(|key, value| epoch_of(key, value).is_none_or(|epoch| epoch >= min.get()));
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::DiskSecrets;
    use commonware_codec::{Copying, ReadExt as _};
    use commonware_consensus::types::Epoch;
    use commonware_cryptography::{
        Signer as _,
        bls12381::{
            dkg::feldman_desmedt::{DealerPrivMsg, deal},
            primitives::{group::Scalar, sharing::Mode, variant::MinSig},
        },
        ed25519,
        transcript::Summary,
    };
    use commonware_glue::dkg::SecretStore as _;
    use commonware_math::algebra::Random as _;
    use commonware_runtime::{Clock as _, Runner as _, Supervisor as _, deterministic};
    use commonware_utils::{N3f1, ordered::Set};
    use rand::{SeedableRng as _, rngs::StdRng};

    #[test]
    fn secrets_survive_a_reopen_and_pruning_drops_older_epochs() {
        deterministic::Runner::default().start(|context| async move {
            let mut rng = StdRng::seed_from_u64(3);
            let dealer = ed25519::PrivateKey::from_seed(1).public_key();
            let other = ed25519::PrivateKey::from_seed(2).public_key();
            let (_, shares) = deal::<MinSig, _, N3f1>(
                StdRng::seed_from_u64(4),
                Mode::NonZeroCounter,
                Set::from_iter_dedup([dealer.clone(), other.clone()]),
            )
            .expect("deals");
            let share = shares.get_value(&dealer).expect("a share").clone();
            let seed = Summary::read(&mut Copying(&[7u8; 32][..])).expect("32 bytes");
            let private = DealerPrivMsg::new(Scalar::random(&mut rng));

            let mut secrets = DiskSecrets::open(context.child("first"), "secrets")
                .await
                .expect("opens");
            assert!(!secrets.holds_shares().await);
            secrets.put_share(Epoch::new(3), share.clone()).await;
            secrets.put_seed(Epoch::new(3), seed).await;
            secrets
                .put_dealing(Epoch::new(3), dealer.clone(), private.clone())
                .await;
            secrets.put_share(Epoch::new(5), share.clone()).await;
            drop(secrets);

            // What was written is read back after a reopen, and only for its own key.
            let mut secrets = DiskSecrets::open(context.child("second"), "secrets")
                .await
                .expect("reopens");
            assert!(secrets.holds_shares().await);
            assert_eq!(secrets.get_share(Epoch::new(3)).await, Some(share.clone()));
            assert_eq!(secrets.get_share(Epoch::new(4)).await, None);
            assert_eq!(secrets.get_seed(Epoch::new(3)).await, Some(seed));
            assert_eq!(
                secrets.get_dealing(Epoch::new(3), &dealer).await,
                Some(private.clone())
            );
            assert_eq!(secrets.get_dealing(Epoch::new(3), &other).await, None);
            assert_eq!(secrets.get_dealing(Epoch::new(4), &dealer).await, None);

            secrets.prune(Epoch::new(4)).await;
            assert_eq!(secrets.get_share(Epoch::new(3)).await, None);
            assert_eq!(secrets.get_seed(Epoch::new(3)).await, None);
            assert_eq!(secrets.get_dealing(Epoch::new(3), &dealer).await, None);
            assert_eq!(secrets.get_share(Epoch::new(5)).await, Some(share));
            assert!(secrets.failed().borrow().is_none(), "no write failed");
        });
    }

    #[test]
    fn a_write_that_cannot_be_synced_is_reported_and_never_completes() {
        deterministic::Runner::default().start(|context| async move {
            let (_, shares) = deal::<MinSig, _, N3f1>(
                StdRng::seed_from_u64(4),
                Mode::NonZeroCounter,
                Set::from_iter_dedup([ed25519::PrivateKey::from_seed(1).public_key()]),
            )
            .expect("deals");
            let share = shares.values()[0].clone();
            let mut secrets = DiskSecrets::open(context.child("secrets"), "secrets")
                .await
                .expect("opens");
            let failed = secrets.failed();
            context.storage_fault_config().write().sync_rate =
                Some(commonware_utils::Probability::new(1, 1).expect("a probability"));
            let write = secrets.put_share(Epoch::new(1), share);
            let waited = context.sleep(std::time::Duration::from_secs(5));
            futures::pin_mut!(write, waited);
            assert!(
                matches!(
                    futures::future::select(write, waited).await,
                    futures::future::Either::Right(_)
                ),
                "the write does not complete"
            );
            let reported = failed.borrow().clone().expect("the failure is reported");
            assert!(reported.contains("secrets"), "{reported}");
        });
    }
}
