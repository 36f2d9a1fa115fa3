//! Real ceremonies and real threshold certificates: reshares keep the identity, full DKGs change
//! it, certificates from a quorum of shares verify under the identity alone, and a verifier that
//! starts from genesis follows the rotations through boundary blocks.

use cairn_devnet::{SignerError, full_dkg, reshare, trusted_deal};
use cairn_dkg::{DkgOutcome, NextCeremony};
use cairn_epoch::{
    EpochStrategy, FinalizationScheme, FinalizationVerifier, IdentitySource, SchemeProvider,
    VerifyError, decode_certificate,
};
use cairn_tests::{TestCommittee, keys, test_block};
use commonware_codec::Encode;
use commonware_consensus::types::{Epoch, Round, View};
use commonware_cryptography::{Signer, ed25519::PrivateKey};
use commonware_parallel::Sequential;
use proptest::prelude::*;
use rand::{SeedableRng, rngs::StdRng};

const NAMESPACE: &[u8] = b"CAIRN_TEST";

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// The previous committee's keys paired with their shares, for dealing in a reshare.
fn dealers_of(
    committee: &TestCommittee,
    count: usize,
) -> Vec<(
    PrivateKey,
    commonware_cryptography::bls12381::primitives::group::Share,
)> {
    committee
        .keys
        .iter()
        .take(count)
        .map(|key| {
            let share = committee.ceremony.shares[&key.public_key()].clone();
            (key.clone(), share)
        })
        .collect()
}

fn certificate_verifies(
    namespace: &[u8],
    identity: &cairn_dkg::Identity,
    committee: &TestCommittee,
) -> bool {
    let block = test_block(5, 0, 5, Vec::new());
    let certified = committee.certify(block, 0, 5);
    let finalization = decode_certificate(&certified.certificate).expect("decodes");
    let scheme = FinalizationScheme::certificate_verifier(namespace, *identity);
    finalization.verify(&mut rng(1), &scheme, &Sequential)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]

    /// For any committee sizes: a reshare from a quorum of the holders keeps the identity (and
    /// the new holders' certificates verify under it); a full DKG produces a new identity.
    #[test]
    fn reshare_keeps_the_identity_and_full_dkg_changes_it(
        seed in 0u64..1_000,
        genesis_size in 1usize..6,
        next_size in 1usize..7,
        third_size in 1usize..6,
    ) {
        let genesis = TestCommittee::new(NAMESPACE, seed, genesis_size);
        let identity = *genesis.ceremony.output.public().public();

        let next_keys = keys(seed + 1, next_size);
        let quorum = genesis.signer.quorum() as usize;
        let reshared = reshare(
            &mut rng(seed + 2),
            NAMESPACE,
            1,
            &genesis.ceremony.output,
            &dealers_of(&genesis, quorum),
            &next_keys,
        )
        .expect("reshare succeeds");
        prop_assert_eq!(*reshared.output.public().public(), identity);
        prop_assert_eq!(reshared.shares.len(), next_size);
        let reshared = TestCommittee::from_ceremony(NAMESPACE, next_keys.clone(), reshared);
        prop_assert!(certificate_verifies(NAMESPACE, &identity, &reshared));

        let third_keys = keys(seed + 3, third_size);
        let fresh = full_dkg(&mut rng(seed + 4), NAMESPACE, 2, &next_keys, &third_keys)
            .expect("DKG succeeds");
        let new_identity = *fresh.output.public().public();
        prop_assert_ne!(new_identity, identity);
        let fresh = TestCommittee::from_ceremony(NAMESPACE, third_keys, fresh);
        prop_assert!(certificate_verifies(NAMESPACE, &new_identity, &fresh));
        prop_assert!(!certificate_verifies(NAMESPACE, &identity, &fresh));
    }
}

#[test]
fn reshare_needs_a_quorum_of_previous_holders() {
    let genesis = TestCommittee::new(NAMESPACE, 11, 4);
    let result = reshare(
        &mut rng(12),
        NAMESPACE,
        1,
        &genesis.ceremony.output,
        &dealers_of(&genesis, 2),
        &keys(13, 4),
    );
    assert!(result.is_err(), "2 of 4 dealers is below the quorum of 3");
}

#[test]
fn below_quorum_cannot_certify() {
    let committee = TestCommittee::new(NAMESPACE, 21, 4);
    let finalize = |signers: &[commonware_cryptography::ed25519::PublicKey]| {
        committee.signer.finalize(
            Round::new(Epoch::zero(), View::new(1)),
            View::zero(),
            test_block(1, 0, 1, Vec::new()).hash(),
            signers,
        )
    };
    let err = finalize(&committee.quorum_from(0)[..2]).expect_err("two of four");
    assert_eq!(err, SignerError::BelowQuorum { got: 2, quorum: 3 });

    let outsider = keys(99, 1)[0].public_key();
    let err = finalize(std::slice::from_ref(&outsider)).expect_err("not a member");
    assert_eq!(err, SignerError::UnknownSigner(outsider.to_string()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    /// Any quorum of any committee recovers the same certificate, which verifies under the
    /// identity alone and under no other identity or namespace.
    #[test]
    fn certificates_verify_under_the_identity_only(seed in 0u64..1_000, n in 1usize..8, offset in 0usize..8) {
        let committee = TestCommittee::new(NAMESPACE, seed, n);
        let identity = *committee.ceremony.output.public().public();
        let block = test_block(40 + seed, 2, 7, Vec::new());
        let round = Round::new(Epoch::new(2), View::new(7));
        let a = committee.signer.finalize(round, View::new(6), block.hash(), &committee.quorum_from(offset)).expect("quorum");
        let b = committee.signer.finalize(round, View::new(6), block.hash(), &committee.quorum_from(offset + 1)).expect("quorum");
        prop_assert_eq!(a.encode(), b.encode());

        let right = FinalizationScheme::certificate_verifier(NAMESPACE, identity);
        prop_assert!(a.verify(&mut rng(seed), &right, &Sequential));

        let other = TestCommittee::new(NAMESPACE, seed + 1_000, n);
        let wrong_identity = FinalizationScheme::certificate_verifier(NAMESPACE, *other.ceremony.output.public().public());
        prop_assert!(!a.verify(&mut rng(seed), &wrong_identity, &Sequential));

        let wrong_namespace = FinalizationScheme::certificate_verifier(b"OTHER", identity);
        prop_assert!(!a.verify(&mut rng(seed), &wrong_namespace, &Sequential));
    }

    /// Outcomes of real ceremonies survive encode/decode for any epoch and flag.
    #[test]
    fn outcome_round_trip(seed in 0u64..1_000, n in 1usize..10, epoch in any::<u64>(), full in any::<bool>(), next in 1usize..10) {
        let players = keys(seed, n);
        let ceremony = trusted_deal(&mut rng(seed), &players).expect("deal");
        let next_players = cairn_devnet::ceremony::committee_set(&keys(seed + 1, next)).expect("set");
        let outcome = DkgOutcome { epoch, output: ceremony.output, next: Some(NextCeremony { players: next_players, full_dkg: full }) };
        let bytes = outcome.to_bytes();
        let decoded = DkgOutcome::decode(&bytes).expect("decodes");
        prop_assert_eq!(decoded.to_bytes(), bytes);
        prop_assert_eq!(decoded, outcome);
    }
}

/// Three epochs of length 4: genesis (trusted deal), a reshare into epoch 1, a full DKG into
/// epoch 2. A verifier that knows only the genesis outcome verifies all of it by registering
/// each next epoch from its boundary block, and learns the new identity at epoch 2.
#[test]
fn verifier_follows_reshare_and_full_dkg_from_genesis() {
    let epochs = EpochStrategy::new(4).expect("valid");
    let genesis = TestCommittee::new(NAMESPACE, 31, 4);
    let genesis_identity = *genesis.ceremony.output.public().public();

    let keys_1 = keys(32, 5);
    let epoch_1 = reshare(
        &mut rng(33),
        NAMESPACE,
        1,
        &genesis.ceremony.output,
        &dealers_of(&genesis, 4),
        &keys_1,
    )
    .expect("reshare");
    let epoch_1 = TestCommittee::from_ceremony(NAMESPACE, keys_1.clone(), epoch_1);

    let keys_2 = keys(34, 4);
    let epoch_2 = full_dkg(&mut rng(35), NAMESPACE, 2, &keys_1, &keys_2).expect("full DKG");
    let epoch_2 = TestCommittee::from_ceremony(NAMESPACE, keys_2, epoch_2);
    let new_identity = *epoch_2.ceremony.output.public().public();
    assert_ne!(new_identity, genesis_identity);

    let committees = [&genesis, &epoch_1, &epoch_2];
    let provider = SchemeProvider::new(NAMESPACE, commonware_utils::NZUsize!(8));
    provider
        .register(Epoch::zero(), genesis_identity)
        .expect("fresh");
    let verifier = FinalizationVerifier::new(epochs.clone(), provider.clone());

    let mut identities = Vec::new();
    for height in 1..11u64 {
        let epoch = epochs.epoch_of(height).get();
        let committee = committees[epoch as usize];
        let extra = if epochs.is_boundary(height) {
            let next = committees[epoch as usize + 1];
            next.outcome(epoch + 1, epoch + 1 == 1).to_bytes()
        } else {
            Vec::new()
        };
        let block = test_block(height, epoch, height, extra);
        let certified = committee.certify(block, epoch, height);

        let (verified, _) = verifier
            .verify_and_register(&mut rng(height), &certified)
            .unwrap_or_else(|err| panic!("height {height}: {err}"));
        assert_eq!(verified.identity_source, IdentitySource::Registered);
        identities.push((epoch, verified.identity));
    }
    for (epoch, identity) in identities {
        let expected = if epoch < 2 {
            genesis_identity
        } else {
            new_identity
        };
        assert_eq!(identity, expected, "epoch {epoch}");
    }
    assert_eq!(provider.len(), 3);
}

#[test]
fn a_forged_boundary_outcome_is_not_registered() {
    let epochs = EpochStrategy::new(4).expect("valid");
    let genesis = TestCommittee::new(NAMESPACE, 41, 4);
    let provider = SchemeProvider::new(NAMESPACE, commonware_utils::NZUsize!(8));
    provider
        .register(Epoch::zero(), *genesis.ceremony.output.public().public())
        .expect("fresh");
    let verifier = FinalizationVerifier::new(epochs, provider.clone());

    // An attacker committee signs a boundary block announcing its own key for epoch 1.
    let attacker = TestCommittee::new(NAMESPACE, 42, 4);
    let block = test_block(3, 0, 3, attacker.outcome(1, false).to_bytes());
    let forged = attacker.certify(block.clone(), 0, 3);
    let err = verifier
        .verify_and_register(&mut rng(1), &forged)
        .expect_err("forged");
    assert!(matches!(err, VerifyError::BadSignature { .. }), "{err}");
    assert_eq!(provider.registered_identity(Epoch::new(1)), None);

    // The real committee signing an outcome for the wrong epoch is refused as well.
    let wrong_epoch = test_block(3, 0, 3, genesis.outcome(5, false).to_bytes());
    let err = verifier
        .verify_and_register(&mut rng(2), &genesis.certify(wrong_epoch, 0, 3))
        .expect_err("outcome for epoch 5 at the end of epoch 0");
    assert!(
        matches!(
            err,
            VerifyError::OutcomeEpochMismatch {
                expected: 1,
                found: 5,
                ..
            }
        ),
        "{err}"
    );
    // And garbage in a boundary block's extraData.
    let garbage = test_block(3, 0, 3, vec![0xff; 40]);
    let err = verifier
        .verify_and_register(&mut rng(3), &genesis.certify(garbage, 0, 3))
        .expect_err("garbage outcome");
    assert!(
        matches!(err, VerifyError::BoundaryOutcome { height: 3, .. }),
        "{err}"
    );
    assert_eq!(provider.len(), 1);
}

/// What Tempo's validators accept, a follower accepts: a boundary outcome followed by extra
/// bytes is read as Tempo reads it, and an outcome-shaped `extraData` in a non-boundary block
/// (where Tempo writes dealer logs) is never read as an outcome.
#[test]
fn boundary_outcomes_are_read_as_tempo_reads_them_and_only_at_boundaries() {
    let epochs = EpochStrategy::new(4).expect("valid");
    let genesis = TestCommittee::new(NAMESPACE, 61, 4);
    let next = TestCommittee::new(NAMESPACE, 62, 4);
    let provider = SchemeProvider::new(NAMESPACE, commonware_utils::NZUsize!(8));
    provider
        .register(Epoch::zero(), *genesis.ceremony.output.public().public())
        .expect("fresh");
    let verifier = FinalizationVerifier::new(epochs, provider.clone());

    // A valid outcome for epoch 1 in a non-boundary block of epoch 0 registers nothing.
    let dealer_log = test_block(2, 0, 2, next.outcome(1, false).to_bytes());
    let (verified, registration) = verifier
        .verify_and_register(&mut rng(4), &genesis.certify(dealer_log, 0, 2))
        .expect("a non-boundary block verifies whatever its extraData holds");
    assert!(verified.next_epoch.is_none());
    assert!(registration.is_none());
    assert_eq!(provider.registered_identity(Epoch::new(1)), None);

    // The boundary's outcome followed by bytes Tempo's reader ignores.
    let mut extra = next.outcome(1, false).to_bytes();
    extra.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let boundary = test_block(3, 0, 3, extra);
    let (verified, registration) = verifier
        .verify_and_register(&mut rng(5), &genesis.certify(boundary, 0, 3))
        .expect("trailing bytes after the outcome are ignored");
    assert_eq!(
        verified.next_epoch.as_ref().map(|outcome| outcome.epoch),
        Some(1)
    );
    assert!(registration.is_some());
    assert_eq!(
        provider.registered_identity(Epoch::new(1)),
        Some(*next.ceremony.output.public().public())
    );
}

#[test]
fn shares_that_do_not_fit_the_committee_are_refused() {
    use commonware_cryptography::bls12381::primitives::group::Share;
    let committee = TestCommittee::new(NAMESPACE, 51, 4);
    let keys: Vec<_> = committee.ceremony.shares.keys().cloned().collect();

    // A share index beyond the committee (as corrupt storage could produce).
    let mut shares = committee.ceremony.shares.clone();
    let first = shares[&keys[0]].clone();
    shares.insert(
        keys[0].clone(),
        Share::new(
            commonware_utils::Participant::new(99),
            first.private.clone(),
        ),
    );
    let err = cairn_devnet::CommitteeSigner::new(NAMESPACE, &committee.ceremony.output, &shares)
        .expect_err("index out of range");
    assert_eq!(err, SignerError::ShareMismatch(keys[0].to_string()));

    // Two members' shares swapped.
    let mut shares = committee.ceremony.shares.clone();
    let (a, b) = (shares[&keys[0]].clone(), shares[&keys[1]].clone());
    shares.insert(keys[0].clone(), b);
    shares.insert(keys[1].clone(), a);
    assert!(matches!(
        cairn_devnet::CommitteeSigner::new(NAMESPACE, &committee.ceremony.output, &shares),
        Err(SignerError::ShareMismatch(_))
    ));
}
