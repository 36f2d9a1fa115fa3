//! The epoch -> verifier registry.
//!
//! Each epoch's verifier is registered once, from the DKG outcome of the previous epoch's
//! boundary block (or the genesis outcome). A configured network identity, valid from some epoch
//! on, serves epochs that have no registered verifier. The registry holds a bounded number of
//! epochs and drops the oldest first.

use cairn_dkg::Identity;
use commonware_consensus::{simplex::scheme::bls12381_threshold::vrf, types::Epoch};
use commonware_cryptography::{
    bls12381::primitives::variant::MinSig,
    certificate::{Provider, Scoped},
    ed25519::PublicKey,
};
use commonware_utils::NZUsize;
use std::num::NonZeroUsize;
use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

/// The certificate scheme of Tempo finalizations: BLS12-381 threshold VRF, MinSig, ed25519
/// participant keys.
pub type FinalizationScheme = vrf::Scheme<PublicKey, MinSig>;

/// Default number of epochs whose verifiers are kept.
pub const DEFAULT_MAX_EPOCHS: NonZeroUsize = NZUsize!(64);

/// Where the verifier for an epoch came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// Registered for this epoch (genesis or a verified boundary outcome).
    Registered,
    /// A configured network identity valid from the given epoch on.
    Configured {
        /// First epoch the identity is valid for.
        from_epoch: Epoch,
    },
}

/// A verifier chosen for one epoch.
#[derive(Clone, Debug)]
pub struct EpochVerifier {
    /// The scheme that checks recovered certificates.
    pub scheme: Arc<FinalizationScheme>,
    /// The identity it checks against.
    pub identity: Identity,
    /// Where it came from.
    pub source: IdentitySource,
}

/// The result of a registration that did not conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// The epoch had no verifier; it has one now.
    Registered,
    /// The epoch already had a verifier for the same identity; nothing changed.
    AlreadyRegistered,
    /// The epoch is older than everything the bounded registry keeps; nothing was stored.
    Pruned,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    /// The epoch already has a verifier for a different identity.
    #[error("epoch {epoch} already has a verifier for a different identity")]
    Conflict {
        /// The epoch.
        epoch: Epoch,
    },
}

#[derive(Debug)]
struct Registered {
    scheme: Arc<FinalizationScheme>,
    identity: Identity,
}

#[derive(Debug)]
struct Inner {
    namespace: Vec<u8>,
    max_epochs: usize,
    epochs: BTreeMap<Epoch, Registered>,
    /// Epochs below this were pruned and are never registered again.
    floor: Epoch,
    /// Configured network identities by the first epoch each is valid for.
    configured: BTreeMap<Epoch, (Identity, Arc<FinalizationScheme>)>,
}

/// The epoch -> verifier registry (cheap to clone; clones share state).
#[derive(Clone, Debug)]
pub struct SchemeProvider {
    inner: Arc<RwLock<Inner>>,
}

impl SchemeProvider {
    /// An empty registry for `namespace` keeping at most `max_epochs` epochs.
    pub fn new(namespace: &[u8], max_epochs: NonZeroUsize) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Inner {
                namespace: namespace.to_vec(),
                max_epochs: max_epochs.get(),
                epochs: BTreeMap::new(),
                floor: Epoch::zero(),
                configured: BTreeMap::new(),
            })),
        }
    }

    /// Adds a network identity for epochs `>= from_epoch` that have no registered verifier
    /// (until the next configured identity's epoch). Tempo's chainspecs compile such a list.
    pub fn set_configured_identity(&self, identity: Identity, from_epoch: Epoch) {
        let mut inner = self.write();
        let scheme = Arc::new(FinalizationScheme::certificate_verifier(
            &inner.namespace,
            identity,
        ));
        inner.configured.insert(from_epoch, (identity, scheme));
    }

    /// Registers the verifier of `epoch` for `identity`, exactly once.
    pub fn register(
        &self,
        epoch: Epoch,
        identity: Identity,
    ) -> Result<Registration, RegisterError> {
        let mut inner = self.write();
        if epoch < inner.floor {
            return Ok(Registration::Pruned);
        }
        if let Some(existing) = inner.epochs.get(&epoch) {
            return if existing.identity == identity {
                Ok(Registration::AlreadyRegistered)
            } else {
                Err(RegisterError::Conflict { epoch })
            };
        }
        let scheme = Arc::new(FinalizationScheme::certificate_verifier(
            &inner.namespace,
            identity,
        ));
        inner.epochs.insert(epoch, Registered { scheme, identity });
        while inner.epochs.len() > inner.max_epochs {
            let Some((oldest, _)) = inner.epochs.pop_first() else {
                break;
            };
            inner.floor = oldest.next();
        }
        Ok(Registration::Registered)
    }

    /// Drops every epoch below `epoch`; they will not be registered again.
    pub fn prune_below(&self, epoch: Epoch) {
        let mut inner = self.write();
        inner.epochs = inner.epochs.split_off(&epoch);
        inner.floor = inner.floor.max(epoch);
    }

    /// The identity registered for `epoch`, if any.
    pub fn registered_identity(&self, epoch: Epoch) -> Option<Identity> {
        self.read().epochs.get(&epoch).map(|r| r.identity)
    }

    /// Number of epochs with a registered verifier.
    pub fn len(&self) -> usize {
        self.read().epochs.len()
    }

    /// Whether no epoch has a registered verifier.
    pub fn is_empty(&self) -> bool {
        self.read().epochs.is_empty()
    }

    /// The highest epoch with a registered verifier.
    pub fn latest_epoch(&self) -> Option<Epoch> {
        self.read().epochs.keys().next_back().copied()
    }

    /// The verifier for `epoch`: its registered one, else the configured identity if valid
    /// for that epoch, else `None`.
    pub fn verifier(&self, epoch: Epoch) -> Option<EpochVerifier> {
        let inner = self.read();
        if let Some(registered) = inner.epochs.get(&epoch) {
            return Some(EpochVerifier {
                scheme: registered.scheme.clone(),
                identity: registered.identity,
                source: IdentitySource::Registered,
            });
        }
        let (from_epoch, (identity, scheme)) = inner.configured.range(..=epoch).next_back()?;
        Some(EpochVerifier {
            scheme: scheme.clone(),
            identity: *identity,
            source: IdentitySource::Configured {
                from_epoch: *from_epoch,
            },
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated: every mutation
        // above completes before the guard drops, so a poisoned lock is still consistent.
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Provider for SchemeProvider {
    type Scope = Epoch;
    type Scheme = FinalizationScheme;

    fn scoped(&self, epoch: Epoch) -> Option<Scoped<FinalizationScheme>> {
        self.verifier(epoch)
            .map(|verifier| Scoped::verifier(verifier.scheme))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commonware_cryptography::bls12381::primitives::ops::keypair;
    use rand::{SeedableRng, rngs::StdRng};

    fn identity(seed: u64) -> Identity {
        keypair::<_, MinSig>(&mut StdRng::seed_from_u64(seed)).1
    }

    #[test]
    fn registers_each_epoch_once() {
        let provider = SchemeProvider::new(b"TEST", NZUsize!(8));
        let a = identity(1);
        let b = identity(2);
        assert_eq!(
            provider.register(Epoch::new(3), a),
            Ok(Registration::Registered)
        );
        assert_eq!(
            provider.register(Epoch::new(3), a),
            Ok(Registration::AlreadyRegistered)
        );
        assert_eq!(
            provider.register(Epoch::new(3), b),
            Err(RegisterError::Conflict {
                epoch: Epoch::new(3)
            })
        );
        assert_eq!(provider.registered_identity(Epoch::new(3)), Some(a));
        assert_eq!(provider.len(), 1);
    }

    #[test]
    fn bounded_and_pruned() {
        let provider = SchemeProvider::new(b"TEST", NZUsize!(4));
        let id = identity(1);
        for epoch in 0..10 {
            provider
                .register(Epoch::new(epoch), id)
                .expect("no conflict");
            assert!(provider.len() <= 4);
        }
        assert_eq!(provider.len(), 4);
        assert!(provider.verifier(Epoch::new(5)).is_none());
        assert!(provider.verifier(Epoch::new(6)).is_some());
        // An evicted epoch is not silently re-added.
        assert_eq!(
            provider.register(Epoch::new(2), id),
            Ok(Registration::Pruned)
        );
        assert_eq!(provider.len(), 4);

        provider.prune_below(Epoch::new(8));
        assert_eq!(provider.len(), 2);
        assert!(provider.verifier(Epoch::new(7)).is_none());
        assert_eq!(provider.latest_epoch(), Some(Epoch::new(9)));
    }

    #[test]
    fn configured_identity_applies_from_its_epoch() {
        let provider = SchemeProvider::new(b"TEST", NZUsize!(4));
        let configured = identity(9);
        provider.set_configured_identity(configured, Epoch::new(51));
        assert!(provider.verifier(Epoch::new(50)).is_none());
        let verifier = provider
            .verifier(Epoch::new(51))
            .expect("configured from 51");
        assert_eq!(verifier.identity, configured);
        assert_eq!(
            verifier.source,
            IdentitySource::Configured {
                from_epoch: Epoch::new(51)
            }
        );
        assert!(provider.scoped(Epoch::new(100)).is_some());

        // A later configured identity takes over from its own epoch.
        let rotated = identity(11);
        provider.set_configured_identity(rotated, Epoch::new(1747));
        let at = |epoch: u64| provider.verifier(Epoch::new(epoch)).map(|v| v.identity);
        assert_eq!(at(1746), Some(configured));
        assert_eq!(at(1747), Some(rotated));
        assert_eq!(at(5000), Some(rotated));
        assert_eq!(at(50), None);

        let registered = identity(10);
        provider
            .register(Epoch::new(60), registered)
            .expect("no conflict");
        let verifier = provider.verifier(Epoch::new(60)).expect("registered");
        assert_eq!(verifier.identity, registered);
        assert_eq!(verifier.source, IdentitySource::Registered);
    }
}
