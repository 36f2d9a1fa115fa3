//! The identity ledger walks boundary blocks from genesis: it learns every identity through
//! reshares and full DKGs, keeps one run per identity with the boundary that announced it, and
//! names the boundary where a broken or unavailable chain stops it.

use cairn_devnet::{Devnet, DevnetConfig};
use cairn_epoch::{
    BoundarySource, ChainProfile, IdentityLedger, LedgerError, SourceError, VerifyError,
    decode_certificate,
};
use cairn_feed::FeedState;
use cairn_primitives::CertifiedBlock;
use commonware_runtime::{Runner, Supervisor, deterministic};
use futures::executor::block_on;
use rand::{SeedableRng, rngs::StdRng};
use std::collections::{BTreeMap, BTreeSet};

/// Boundary blocks served from memory.
struct MemorySource(BTreeMap<u64, CertifiedBlock>);

impl BoundarySource for MemorySource {
    async fn certified_at(&self, height: u64) -> Result<CertifiedBlock, SourceError> {
        self.0
            .get(&height)
            .cloned()
            .ok_or_else(|| SourceError(format!("height {height} is not served")))
    }
}

/// A devnet chain of 25 blocks, epochs of 4, full DKGs at epochs 2 and 4.
fn chain() -> (ChainProfile, BTreeMap<u64, CertifiedBlock>) {
    devnet_chain(5, 25)
}

/// `blocks` heights of a fresh devnet (its own keys) with epochs of 4 and full DKGs at 2 and 4.
fn devnet_chain(seed: u64, blocks: u64) -> (ChainProfile, BTreeMap<u64, CertifiedBlock>) {
    deterministic::Runner::seeded(seed).start(|context| async move {
        let config = DevnetConfig {
            validators: 6,
            committee: 4,
            epoch_length: 4,
            full_dkg_at_epochs: BTreeSet::from([2, 4]),
            ..DevnetConfig::default()
        };
        let mut devnet = Devnet::open(context.child("devnet"), config, FeedState::default())
            .await
            .expect("opens");
        let mut chain = BTreeMap::new();
        for _ in 0..blocks {
            let produced = devnet.produce_next().await.expect("produces");
            chain.insert(
                produced.certified.height.expect("height"),
                produced.certified,
            );
        }
        (devnet.profile("test").expect("profile"), chain)
    })
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(8)
}

#[test]
fn walks_reshares_and_full_dkgs_from_genesis() {
    let (profile, chain) = chain();
    let source = MemorySource(chain.clone());
    let mut ledger = IdentityLedger::from_genesis(&profile);
    assert_eq!(ledger.identity_for(0), Some(*profile.genesis.identity()));
    assert_eq!(ledger.identity_for(1), None, "not walked yet");

    block_on(ledger.advance_to(&mut rng(), &source, 6)).expect("the chain verifies");
    assert_eq!(ledger.known_through(), 6);
    let runs: Vec<_> = ledger
        .runs()
        .iter()
        .map(|run| (run.from_epoch, run.evidence.as_ref().map(|e| e.height)))
        .collect();
    assert_eq!(runs, vec![(0, None), (2, Some(7)), (4, Some(15))]);
    assert_eq!(ledger.identity_for(1), ledger.identity_for(0));
    assert_ne!(ledger.identity_for(2), ledger.identity_for(1));
    assert_eq!(ledger.identity_for(3), ledger.identity_for(2));
    assert_ne!(ledger.identity_for(4), ledger.identity_for(3));
    assert_eq!(ledger.identity_for(6), ledger.identity_for(4));
    assert_eq!(ledger.identity_for(7), None);

    // The evidence is the real boundary: its certificate is the one the chain served.
    let evidence = ledger.runs()[1].evidence.as_ref().expect("evidence");
    assert_eq!(evidence.certificate, chain[&7].certificate);

    // Each block of the last epoch verifies with the identity the ledger learnt.
    let provider = ledger
        .provider_for(&profile.namespace, 6)
        .expect("epoch 6 is known");
    let verifier = cairn_epoch::FinalizationVerifier::new(profile.epochs.clone(), provider);
    for height in 24..=25 {
        verifier
            .verify(&mut rng(), &chain[&height])
            .expect("verifies with the learnt key");
    }
}

#[test]
fn a_tampered_boundary_is_named_and_stops_the_walk() {
    let (profile, mut chain) = chain();
    // Flip a bit in the seed signature of epoch 3's boundary certificate (height 15).
    let certified = chain.get_mut(&15).expect("height 15");
    let mut bytes = alloy_primitives::hex::decode(&certified.certificate).expect("hex");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    certified.certificate = alloy_primitives::hex::encode(bytes);

    let mut ledger = IdentityLedger::from_genesis(&profile);
    let err = block_on(ledger.advance_to(&mut rng(), &MemorySource(chain), 6))
        .expect_err("the chain is broken at epoch 3");
    assert!(
        matches!(
            err,
            LedgerError::Broken {
                epoch: 3,
                height: 15,
                error: VerifyError::Malformed(_) | VerifyError::BadSignature { .. }
            }
        ),
        "{err}"
    );
    assert_eq!(
        ledger.known_through(),
        3,
        "what was verified before the break stays known"
    );
    assert_eq!(
        ledger.runs().len(),
        2,
        "the identity announced at the broken boundary is not kept"
    );
}

/// A worker pool of two threads.
fn pool() -> commonware_parallel::Rayon {
    commonware_parallel::Rayon::new(std::num::NonZeroUsize::new(2).expect("two"))
        .expect("pool starts")
}

#[test]
fn a_pool_and_rounds_of_two_walk_the_same_ledger_and_stop_at_the_same_break() {
    let (profile, chain) = chain();
    let mut inline = IdentityLedger::from_genesis(&profile);
    block_on(inline.advance_to(&mut rng(), &MemorySource(chain.clone()), 6)).expect("verifies");
    // Rounds of two boundaries: each round is checked on the pool while the next is fetched.
    let mut pooled = IdentityLedger::from_genesis(&profile)
        .with_window(2)
        .with_pool(pool());
    block_on(pooled.advance_to(&mut rng(), &MemorySource(chain.clone()), 6)).expect("verifies");
    assert_eq!(pooled.known_through(), 6);
    let runs = |ledger: &IdentityLedger| -> Vec<_> {
        ledger
            .runs()
            .iter()
            .map(|run| (run.from_epoch, run.identity))
            .collect()
    };
    assert_eq!(runs(&pooled), runs(&inline));

    // A bad signature at epoch 3 (the second round): the first round stays verified.
    let mut broken = chain;
    let other = decode_certificate(&broken[&7].certificate).expect("decodes");
    let certified = broken.get_mut(&15).expect("height 15");
    let mut finalization = decode_certificate(&certified.certificate).expect("decodes");
    finalization.certificate = other.certificate;
    certified.certificate = cairn_epoch::encode_certificate(&finalization);
    let mut pooled = IdentityLedger::from_genesis(&profile)
        .with_window(2)
        .with_pool(pool());
    let err = block_on(pooled.advance_to(&mut rng(), &MemorySource(broken), 6))
        .expect_err("broken at epoch 3");
    assert!(
        matches!(
            err,
            LedgerError::Broken {
                epoch: 3,
                height: 15,
                error: VerifyError::BadSignature { .. }
            }
        ),
        "{err}"
    );
    assert_eq!(pooled.known_through(), 3);
}

#[test]
fn a_forged_boundary_does_not_rotate_the_identity() {
    let (profile, mut chain) = chain();
    // Replace epoch 1's boundary with one from another chain (same heights, other keys).
    let (_, other) = devnet_chain(6, 8);
    chain.insert(7, other[&7].clone());
    let mut ledger = IdentityLedger::from_genesis(&profile);
    let err = block_on(ledger.advance_to(&mut rng(), &MemorySource(chain), 4))
        .expect_err("forged boundary");
    assert!(
        matches!(
            err,
            LedgerError::Broken {
                epoch: 1,
                height: 7,
                error: VerifyError::BadSignature { .. }
            }
        ),
        "{err}"
    );
    assert_eq!(ledger.runs().len(), 1);
}

#[test]
fn an_unavailable_boundary_is_named() {
    let (profile, mut chain) = chain();
    chain.remove(&11);
    let mut ledger = IdentityLedger::from_genesis(&profile);
    let err = block_on(ledger.advance_to(&mut rng(), &MemorySource(chain), 5))
        .expect_err("height 11 is missing");
    assert!(
        matches!(
            err,
            LedgerError::Source {
                epoch: 2,
                height: 11,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(ledger.known_through(), 2);
}

#[test]
fn another_block_of_the_epoch_does_not_pass_for_its_boundary() {
    let (profile, mut chain) = chain();
    // Height 6 is validly certified in epoch 1, but it is not epoch 1's boundary (height 7).
    let not_boundary = chain[&6].clone();
    chain.insert(7, not_boundary);
    let mut ledger = IdentityLedger::from_genesis(&profile);
    let err =
        block_on(ledger.advance_to(&mut rng(), &MemorySource(chain), 3)).expect_err("wrong height");
    assert!(
        matches!(
            err,
            LedgerError::NotTheBoundary {
                epoch: 1,
                height: 7,
                got: 6
            }
        ),
        "{err}"
    );
    assert_eq!(ledger.known_through(), 1);
}

/// A source that counts the boundaries it was asked for.
struct CountingSource(MemorySource, std::sync::atomic::AtomicUsize);

impl BoundarySource for CountingSource {
    async fn certified_at(&self, height: u64) -> Result<CertifiedBlock, SourceError> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.certified_at(height).await
    }
}

#[test]
fn a_restored_ledger_walks_only_the_new_epochs() {
    let (profile, chain) = chain();
    let source = CountingSource(MemorySource(chain), Default::default());
    let mut ledger = IdentityLedger::from_genesis(&profile).with_concurrency(3);
    block_on(ledger.advance_to(&mut rng(), &source, 3)).expect("walks");
    assert_eq!(source.1.load(std::sync::atomic::Ordering::Relaxed), 3);

    // What a node persists, through its JSON form, and restores on the next start.
    let json = serde_json::to_string(&ledger.record()).expect("serializes");
    let record = serde_json::from_str(&json).expect("parses");
    let mut restored = IdentityLedger::restore(&profile, record).expect("restores");
    assert_eq!(restored.known_through(), 3);
    assert_eq!(restored.runs().len(), ledger.runs().len());
    block_on(restored.advance_to(&mut rng(), &source, 6)).expect("walks on");
    assert_eq!(
        source.1.load(std::sync::atomic::Ordering::Relaxed),
        6,
        "only epochs 3, 4 and 5 were fetched after the restore"
    );
    let mut fresh = IdentityLedger::from_genesis(&profile);
    block_on(fresh.advance_to(&mut rng(), &source.0, 6)).expect("walks");
    for epoch in 0..=6 {
        assert_eq!(restored.identity_for(epoch), fresh.identity_for(epoch));
    }

    // A record of another chain is refused.
    let (other, _) = devnet_chain(6, 1);
    let err = IdentityLedger::restore(&other, ledger.record()).expect_err("other chain");
    assert!(matches!(err, LedgerError::Corrupt(_)), "{err}");
}

#[test]
fn a_compiled_identity_that_disagrees_with_the_walk_is_refused() {
    let (mut profile, chain) = chain();
    let mut ledger = IdentityLedger::from_genesis(&profile);
    block_on(ledger.advance_to(&mut rng(), &MemorySource(chain), 6)).expect("walks");
    // The walked identities of the rotations (epochs 2 and 4) agree with themselves.
    let agreeing: Vec<_> = ledger
        .runs()
        .iter()
        .map(|run| cairn_epoch::ConfiguredIdentity {
            identity: run.identity,
            from_epoch: commonware_consensus::types::Epoch::new(run.from_epoch),
        })
        .collect();
    ledger.check_compiled(&agreeing).expect("agrees");
    // Epoch 3 still uses the epoch-2 key: compiling epoch 0's key from epoch 3 disagrees.
    profile.network_identities = vec![cairn_epoch::ConfiguredIdentity {
        identity: ledger.runs()[0].identity,
        from_epoch: commonware_consensus::types::Epoch::new(3),
    }];
    let err = ledger
        .check_compiled(&profile.network_identities)
        .expect_err("disagrees");
    let LedgerError::IdentityDisagrees {
        epoch,
        compiled,
        walked,
    } = &err
    else {
        panic!("unexpected error {err}");
    };
    assert_eq!(*epoch, 3);
    assert_ne!(compiled, walked);
    assert!(err.to_string().contains(compiled) && err.to_string().contains(walked));
}

#[test]
fn a_boundary_with_another_outcome_is_named() {
    let (profile, mut chain) = chain();
    // Epoch 1's boundary (height 7) with its outcome replaced: the header no longer hashes to
    // the certified payload.
    let other = chain_outcome_of_epoch_2(&chain);
    let certified = chain.get_mut(&7).expect("height 7");
    let block = certified.block.take().expect("block");
    let (mut header, body) = block.into_parts();
    header.inner.extra_data = other.into();
    certified.block = Some(cairn_primitives::Block::new(header, body).expect("body unchanged"));
    let mut ledger = IdentityLedger::from_genesis(&profile);
    let err = block_on(ledger.advance_to(&mut rng(), &MemorySource(chain), 4))
        .expect_err("tampered outcome");
    assert!(
        matches!(
            err,
            LedgerError::Broken {
                epoch: 1,
                height: 7,
                error: VerifyError::DigestMismatch { .. }
            }
        ),
        "{err}"
    );
    assert_eq!(ledger.known_through(), 1);
}

/// The `extraData` of epoch 2's boundary (height 11): a valid outcome, for another epoch.
fn chain_outcome_of_epoch_2(chain: &BTreeMap<u64, CertifiedBlock>) -> Vec<u8> {
    cairn_tests::extra_data(&chain[&11])
}
