//! Who takes part in each epoch and with which keys: the committees (a window over the validator
//! pool moving one validator per epoch from epoch 2 on), the per-epoch signing
//! schemes glue's reshare actor registers.

use crate::engine::Scheme;
use commonware_consensus::types::Epoch;
use commonware_cryptography::{
    bls12381::{primitives::group::Share, primitives::variant::MinSig},
    certificate::{Provider, Scoped},
    ed25519::PublicKey,
};
use commonware_glue::dkg::{ParticipantsProvider, Registrar, types::SchemeInfo};
use commonware_utils::{ordered::Set, sequence::Unit};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

/// The validator pool and the size of each epoch's committee.
#[derive(Clone, Debug)]
pub struct Committees {
    pool: Vec<PublicKey>,
    size: usize,
}

impl Committees {
    /// Committees of `size` over `pool` (in its order); `size` is at most the pool's.
    pub fn new(pool: Vec<PublicKey>, size: usize) -> Self {
        let size = size.clamp(1, pool.len().max(1));
        Self { pool, size }
    }

    /// The players of `epoch`: `size` validators of the pool, wrapping, from position
    /// `epoch - 1` (epochs 0 and 1 both from position 0, as genesis announces one committee for
    /// both: Tempo's genesis outcome has room for one).
    pub fn players(&self, epoch: u64) -> Set<PublicKey> {
        let count = self.pool.len() as u64;
        let first = epoch.saturating_sub(1);
        Set::from_iter_dedup(
            (0..self.size as u64).map(|i| self.pool[((first + i) % count) as usize].clone()),
        )
    }

    /// The whole pool.
    pub fn pool(&self) -> &[PublicKey] {
        &self.pool
    }
}

impl ParticipantsProvider for Committees {
    type PublicKey = PublicKey;
    type Directory = Unit;

    async fn participants(&mut self, epoch: Epoch) -> Set<PublicKey> {
        self.players(epoch.get())
    }

    async fn directory(&mut self, _: Epoch, _: Set<PublicKey>) -> Unit {
        Unit
    }
}

/// The consensus scheme of each epoch, as the reshare actor registers them: what simplex signs
/// and verifies with (cheap to clone; clones share the schemes).
#[derive(Clone)]
pub struct SchemeRegistry {
    namespace: &'static [u8],
    public_key: PublicKey,
    schemes: Arc<Mutex<BTreeMap<Epoch, Arc<Scheme>>>>,
}

impl SchemeRegistry {
    /// An empty registry for the validator `public_key`, signing under `namespace`.
    pub fn new(namespace: &'static [u8], public_key: PublicKey) -> Self {
        Self {
            namespace,
            public_key,
            schemes: Arc::default(),
        }
    }

    /// Registers epoch 0's scheme from the genesis information and this validator's share.
    pub fn register_epoch_zero(&self, info: &crate::ValidatorEpochInfo, share: Option<Share>) {
        let info = SchemeInfo::new(
            &self.public_key,
            info.output.players().clone(),
            info.output.public().clone(),
            share,
        );
        self.install(Epoch::zero(), info);
    }

    /// Installs the scheme `info` describes for `epoch`.
    fn install(&self, epoch: Epoch, info: SchemeInfo<MinSig, PublicKey>) {
        let scheme = match info {
            SchemeInfo::Verifier {
                participants,
                sharing,
            } => Scheme::verifier(self.namespace, participants, sharing),
            SchemeInfo::Member {
                participants,
                sharing,
                public_key,
            } => match Scheme::member(
                self.namespace,
                participants.clone(),
                sharing.clone(),
                &public_key,
            ) {
                Some(scheme) => scheme,
                None => Scheme::verifier(self.namespace, participants, sharing),
            },
            SchemeInfo::Signer {
                participants,
                sharing,
                share,
            } => match Scheme::signer(self.namespace, participants.clone(), sharing.clone(), share)
            {
                Some(scheme) => scheme,
                None => Scheme::verifier(self.namespace, participants, sharing),
            },
        };
        self.schemes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(epoch, Arc::new(scheme));
    }
}

impl Provider for SchemeRegistry {
    type Scope = Epoch;
    type Scheme = Scheme;

    fn scoped(&self, scope: Epoch) -> Option<Scoped<Scheme>> {
        self.scheme(scope).map(Scoped::scheme)
    }

    fn scheme(&self, scope: Epoch) -> Option<Arc<Scheme>> {
        self.schemes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&scope)
            .cloned()
    }
}

impl Registrar for SchemeRegistry {
    type Variant = MinSig;
    type PublicKey = PublicKey;

    async fn register(&self, epoch: Epoch, info: SchemeInfo<MinSig, PublicKey>) {
        self.install(epoch, info);
    }
}

#[cfg(test)]
mod tests {
    use super::Committees;
    use commonware_cryptography::{Signer as _, ed25519};

    #[test]
    fn committees_are_a_window_moving_one_validator_per_epoch_from_epoch_two() {
        let pool: Vec<_> = (0..5)
            .map(|seed| ed25519::PrivateKey::from_seed(seed).public_key())
            .collect();
        let committees = Committees::new(pool.clone(), 4);
        let window = |first: usize| -> Vec<_> {
            let mut keys: Vec<_> = (0..4).map(|i| pool[(first + i) % 5].clone()).collect();
            keys.sort();
            keys
        };
        let players = |epoch| {
            committees
                .players(epoch)
                .iter()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(players(0), window(0), "genesis announces one committee");
        assert_eq!(players(1), window(0), "for epochs 0 and 1");
        assert_eq!(players(2), window(1));
        assert_eq!(players(5), window(4), "wrapping around the pool");
        assert_eq!(players(6), window(0));
        // A committee larger than the pool is the pool.
        assert_eq!(Committees::new(pool.clone(), 9).players(3).len(), 5);
    }
}
