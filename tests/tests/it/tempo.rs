//! Conformance with real Tempo mainnet data: both fixture certificates verify with the
//! `tempo-mainnet` profile, and every tampered variant fails with the right typed error while
//! nothing gets registered.

use alloy_primitives::{B256, Bytes, hex};
use cairn_dkg::{DkgOutcome, OutcomeError};
use cairn_epoch::{
    ChainProfile, DEFAULT_MAX_EPOCHS, FinalizationVerifier, IdentitySource, MalformedError,
    Registration, VerifyError, decode_certificate,
};
use cairn_primitives::{Block, CertifiedBlock, HeaderExt as _, TempoHeader};
use cairn_tests::{fixture, fixture_hex, mainnet_boundary, mainnet_regular};
use commonware_codec::Encode;
use commonware_consensus::types::Epoch;
use rand::{SeedableRng, rngs::StdRng};

fn mainnet() -> ChainProfile {
    ChainProfile::builtin("tempo-mainnet").expect("built in")
}

fn verifier_for(profile: &ChainProfile) -> FinalizationVerifier {
    FinalizationVerifier::new(
        profile.epochs.clone(),
        profile.scheme_provider(DEFAULT_MAX_EPOCHS),
    )
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

fn mainnet_identity_hex() -> String {
    let value: serde_json::Value =
        serde_json::from_str(&fixture("presto-mainnet-finalizations.json")).expect("json");
    value["mainnet_identity"]
        .as_str()
        .expect("identity")
        .to_string()
}

#[test]
fn real_mainnet_certificates_verify() {
    let profile = mainnet();
    let verifier = verifier_for(&profile);
    let identity = mainnet_identity_hex();

    let boundary = verifier
        .verify(&mut rng(), &mainnet_boundary())
        .expect("real boundary certificate verifies");
    assert_eq!(boundary.height(), 32_723_999);
    assert_eq!(boundary.epoch(), Epoch::new(1514));
    assert_eq!(boundary.view(), 21_600);
    assert_eq!(boundary.finalization.proposal.parent.get(), 21_599);
    assert_eq!(
        boundary.digest().0,
        "0x9e0a3e45043e93d58aae566b7a10595f4f738d276700c5f982479b6a0400555d"
            .parse::<B256>()
            .expect("hash")
    );
    assert_eq!(hex::encode(boundary.identity.encode()), identity);
    assert_eq!(
        boundary.identity_source,
        IdentitySource::Configured {
            from_epoch: Epoch::zero()
        }
    );

    let next = boundary
        .next_epoch
        .expect("a boundary block carries the next outcome");
    assert_eq!(next.epoch, 1515);
    assert_eq!(next.players().len(), 15);
    assert_eq!(next.threshold(), 11);
    assert_eq!(
        hex::encode(next.identity().encode()),
        identity,
        "mainnet only reshares"
    );

    let regular = verifier
        .verify(&mut rng(), &mainnet_regular())
        .expect("real regular certificate verifies");
    assert_eq!(regular.height(), 32_724_390);
    assert_eq!(regular.epoch(), Epoch::new(1515));
    assert_eq!(regular.view(), 391);
    assert_eq!(regular.finalization.proposal.parent.get(), 390);
    assert!(regular.next_epoch.is_none());
}

#[test]
fn boundary_outcome_registers_the_next_epoch_exactly_once() {
    // Trust only what the chain itself proves: epoch 1514's key (the genesis identity, as
    // mainnet has only reshared), and nothing configured.
    let mut profile = mainnet();
    profile.network_identities.clear();
    let verifier = verifier_for(&profile);
    let provider = verifier.provider();

    let err = verifier
        .verify(&mut rng(), &mainnet_regular())
        .expect_err("epoch 1515 is unknown before the boundary");
    assert!(
        matches!(err, VerifyError::IdentityUnavailable { height: 32_724_390, epoch } if epoch == Epoch::new(1515)),
        "{err}"
    );

    provider
        .register(Epoch::new(1514), *profile.genesis.identity())
        .expect("fresh epoch");
    let (_, registration) = verifier
        .verify_and_register(&mut rng(), &mainnet_boundary())
        .expect("boundary verifies");
    assert_eq!(registration, Some(Registration::Registered));
    let (_, registration) = verifier
        .verify_and_register(&mut rng(), &mainnet_boundary())
        .expect("boundary verifies again");
    assert_eq!(registration, Some(Registration::AlreadyRegistered));

    let regular = verifier
        .verify(&mut rng(), &mainnet_regular())
        .expect("epoch 1515 is known from the boundary outcome");
    assert_eq!(regular.identity_source, IdentitySource::Registered);
}

#[test]
fn genesis_and_boundary_outcomes_decode_with_no_trailing_bytes() {
    for name in [
        "presto-genesis-extradata.hex",
        "moderato-genesis-extradata.hex",
    ] {
        let bytes = fixture_hex(name);
        let outcome = DkgOutcome::decode(&bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(outcome.epoch, 0, "{name}");
        assert_eq!(outcome.to_bytes(), bytes, "{name} re-encodes byte for byte");

        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            matches!(
                DkgOutcome::decode(&longer),
                Err(OutcomeError::TrailingBytes(1))
            ),
            "{name}"
        );
        let shorter = &bytes[..bytes.len() - 1];
        assert!(
            matches!(DkgOutcome::decode(shorter), Err(OutcomeError::Truncated)),
            "{name}"
        );
    }
    let presto = DkgOutcome::decode(&fixture_hex("presto-genesis-extradata.hex")).expect("decodes");
    assert_eq!(presto.players().len(), 4);
    assert_eq!(presto.threshold(), 3);

    let boundary = mainnet_boundary().block.expect("fixture has the block");
    let extra = &boundary.header().inner.extra_data;
    let outcome = DkgOutcome::decode(extra).expect("epoch 1515 outcome decodes");
    assert_eq!(outcome.to_bytes(), extra.to_vec());
    assert_eq!(outcome.epoch, 1515);
    assert_eq!(outcome.next.as_ref().map(|next| next.full_dkg), Some(false));
}

/// The byte regions of an encoded finalization.
struct Regions {
    round_and_parent: std::ops::Range<usize>,
    digest: std::ops::Range<usize>,
    signatures: std::ops::Range<usize>,
}

fn regions(bytes: &[u8]) -> Regions {
    let signatures = bytes.len() - 96..bytes.len();
    let digest = signatures.start - 32..signatures.start;
    Regions {
        round_and_parent: 0..digest.start,
        digest,
        signatures,
    }
}

#[test]
fn every_flipped_certificate_bit_is_rejected_and_nothing_is_registered() {
    for certified in [mainnet_boundary(), mainnet_regular()] {
        let verifier = verifier_for(&mainnet());
        let bytes = hex::decode(&certified.certificate).expect("hex");
        let regions = regions(&bytes);
        let registered_before = verifier.provider().len();
        for bit in 0..bytes.len() * 8 {
            let mut tampered = bytes.clone();
            tampered[bit / 8] ^= 1 << (bit % 8);
            let candidate = CertifiedBlock {
                certificate: hex::encode(&tampered),
                ..certified.clone()
            };
            let err = verifier
                .verify_and_register(&mut rng(), &candidate)
                .expect_err("a flipped bit never verifies");
            let byte = bit / 8;
            if regions.digest.contains(&byte) {
                assert!(
                    matches!(err, VerifyError::DigestMismatch { .. }),
                    "bit {bit}: {err}"
                );
            } else if regions.signatures.contains(&byte) {
                assert!(
                    matches!(
                        err,
                        VerifyError::Malformed(MalformedError::SignaturePoint)
                            | VerifyError::BadSignature { .. }
                    ),
                    "bit {bit}: {err}"
                );
            } else {
                assert!(regions.round_and_parent.contains(&byte));
                assert!(
                    matches!(
                        err,
                        VerifyError::Malformed(_)
                            | VerifyError::EpochMismatch { .. }
                            | VerifyError::BadSignature { .. }
                            | VerifyError::DigestMismatch { .. }
                    ),
                    "bit {bit}: {err}"
                );
            }
            assert_eq!(verifier.provider().len(), registered_before, "bit {bit}");
        }
    }
}

#[test]
fn flipped_view_bits_fail_the_signature_check() {
    // Flipping the lowest bit of the view keeps a valid varint: the certificate decodes, the
    // digest and epoch match, and only the signature check can catch it.
    let certified = mainnet_regular();
    let mut bytes = hex::decode(&certified.certificate).expect("hex");
    let epoch_len = 2; // varint(1515)
    bytes[epoch_len] ^= 1;
    let candidate = CertifiedBlock {
        certificate: hex::encode(&bytes),
        ..certified
    };
    let err = verifier_for(&mainnet())
        .verify(&mut rng(), &candidate)
        .expect_err("tampered view");
    assert!(
        matches!(err, VerifyError::BadSignature { height: 32_724_390, epoch } if epoch == Epoch::new(1515)),
        "{err}"
    );
}

#[test]
fn certificate_paired_with_the_other_block_fails_the_digest_check() {
    let boundary = mainnet_boundary();
    let regular = mainnet_regular();
    let verifier = verifier_for(&mainnet());
    for (certificate_of, block_of) in [(&boundary, &regular), (&regular, &boundary)] {
        let swapped = CertifiedBlock {
            block: block_of.block.clone(),
            ..certificate_of.clone()
        };
        let err = verifier
            .verify_and_register(&mut rng(), &swapped)
            .expect_err("wrong block");
        assert!(matches!(err, VerifyError::DigestMismatch { .. }), "{err}");
    }
    assert_eq!(
        verifier.provider().registered_identity(Epoch::new(1515)),
        None
    );
}

#[test]
fn changed_header_fields_fail_the_digest_check() {
    type Mutation = (&'static str, fn(&mut TempoHeader));
    let mutations: Vec<Mutation> = vec![
        ("number", |h| h.inner.number += 1),
        ("timestamp", |h| h.inner.timestamp += 1),
        ("timestampMillisPart", |h| h.timestamp_millis_part ^= 1),
        ("mainBlockGeneralGasLimit", |h| h.general_gas_limit += 1),
        ("sharedGasLimit", |h| h.shared_gas_limit += 1),
        ("gasUsed", |h| h.inner.gas_used += 1),
        ("stateRoot", |h| h.inner.state_root = B256::repeat_byte(1)),
        ("parentHash", |h| h.inner.parent_hash = B256::ZERO),
        ("extraData", |h| {
            let mut extra = h.inner.extra_data.to_vec();
            extra.push(0);
            h.inner.extra_data = Bytes::from(extra);
        }),
        ("consensusContext.view", |h| {
            if let Some(context) = h.consensus_context.as_mut() {
                context.view += 1;
            }
        }),
        ("consensusContext (dropped)", |h| h.consensus_context = None),
    ];
    let verifier = verifier_for(&mainnet());
    for certified in [mainnet_boundary(), mainnet_regular()] {
        for (field, mutate) in &mutations {
            let mut header = certified.block.as_ref().expect("block").header().clone();
            mutate(&mut header);
            let candidate = CertifiedBlock {
                block: Some(Block::header_only(header)),
                ..certified.clone()
            };
            let err = verifier
                .verify_and_register(&mut rng(), &candidate)
                .expect_err(field);
            assert!(
                matches!(err, VerifyError::DigestMismatch { .. }),
                "{field}: {err}"
            );
        }
    }
    assert_eq!(
        verifier.provider().registered_identity(Epoch::new(1515)),
        None
    );
}

#[test]
fn wrong_profiles_fail_with_the_right_error() {
    // Moderato's identity is configured from epoch 51: it is used, and it is the wrong key.
    let moderato = verifier_for(&ChainProfile::builtin("tempo-moderato").expect("built in"));
    for certified in [mainnet_boundary(), mainnet_regular()] {
        let err = moderato
            .verify(&mut rng(), &certified)
            .expect_err("wrong key");
        assert!(matches!(err, VerifyError::BadSignature { .. }), "{err}");
    }

    // The right key under the wrong namespace.
    let mut renamed = mainnet();
    renamed.namespace = b"NOT_TEMPO".to_vec();
    let err = verifier_for(&renamed)
        .verify(&mut rng(), &mainnet_regular())
        .expect_err("wrong namespace");
    assert!(matches!(err, VerifyError::BadSignature { .. }), "{err}");

    // No key for the epoch at all.
    let mut unconfigured = mainnet();
    unconfigured.network_identities.clear();
    let err = verifier_for(&unconfigured)
        .verify(&mut rng(), &mainnet_boundary())
        .expect_err("no key");
    assert!(
        matches!(err, VerifyError::IdentityUnavailable { epoch, .. } if epoch == Epoch::new(1514)),
        "{err}"
    );

    // The wrong epoch length puts the height in another epoch than the certificate's.
    let mut relengthed = mainnet();
    relengthed.epochs = cairn_epoch::EpochStrategy::new(10_000).expect("valid");
    let err = verifier_for(&relengthed)
        .verify(&mut rng(), &mainnet_regular())
        .expect_err("wrong epoch length");
    assert!(matches!(err, VerifyError::EpochMismatch { .. }), "{err}");
}

#[test]
fn claimed_fields_are_never_trusted() {
    let mut certified = mainnet_regular();
    certified.epoch = 0;
    certified.view = 0;
    certified.height = Some(1);
    certified.digest = B256::ZERO;
    let verified = verifier_for(&mainnet())
        .verify(&mut rng(), &certified)
        .expect("only the certificate and block count");
    assert_eq!(verified.epoch(), Epoch::new(1515));
    assert_eq!(verified.view(), 391);
    assert_eq!(verified.height(), 32_724_390);
}

#[test]
fn missing_block_and_bad_hex_are_malformed() {
    let verifier = verifier_for(&mainnet());
    let mut no_block = mainnet_regular();
    no_block.block = None;
    assert!(matches!(
        verifier.verify(&mut rng(), &no_block),
        Err(VerifyError::Malformed(MalformedError::MissingBlock))
    ));
    let cases = [
        ("zz", "hex"),
        ("", "codec"),
        ("eb0b", "codec"),
        (&"00".repeat(400), "too long"),
    ];
    for (certificate, what) in cases {
        let candidate = CertifiedBlock {
            certificate: certificate.to_string(),
            ..mainnet_regular()
        };
        let err = verifier.verify(&mut rng(), &candidate).expect_err(what);
        assert!(matches!(err, VerifyError::Malformed(_)), "{what}: {err}");
        assert_eq!(err.check(), "malformed");
    }
}

#[test]
fn verbatim_public_fixture_matches_and_verifies() {
    let value: serde_json::Value =
        serde_json::from_str(&fixture("presto-mainnet-finalizations.json")).expect("json");
    let verifier = verifier_for(&mainnet());
    for entry in ["boundary", "regular"] {
        let header_json = value[entry]["block"].clone();
        let claimed_hash: B256 = header_json["hash"]
            .as_str()
            .expect("hash")
            .parse()
            .expect("hash hex");
        let header: TempoHeader = serde_json::from_value(header_json).expect("header JSON parses");
        let block = Block::header_only(header);
        assert_eq!(block.hash().0, claimed_hash, "{entry}");

        let finalization = value[entry]["finalization"].as_str().expect("finalization");
        let decoded = decode_certificate(finalization).expect("decodes");
        assert_eq!(decoded.proposal.payload, block.hash());
        let certified = CertifiedBlock {
            epoch: 0,
            view: 0,
            height: None,
            digest: claimed_hash,
            certificate: finalization.to_string(),
            block: Some(block),
        };
        verifier
            .verify(&mut rng(), &certified)
            .unwrap_or_else(|err| panic!("{entry}: {err}"));
    }
}

#[test]
fn real_blocks_round_trip_through_json_and_rlp() {
    for certified in [mainnet_boundary(), mainnet_regular()] {
        let json = serde_json::to_string(&certified).expect("serializes");
        let again: CertifiedBlock = serde_json::from_str(&json).expect("parses");
        assert_eq!(again, certified);

        let header = certified.block.as_ref().expect("block").header();
        let decoded = TempoHeader::decode_rlp(&header.rlp()).expect("rlp decodes");
        assert_eq!(&decoded, header);
        assert_eq!(decoded.digest().0, certified.digest);
    }
}
