//! The TIP-1123 outcome layout: `varint(epoch) || Output` from the chain's fork time on, read
//! strictly, the legacy layout (trailing bytes ignored) before it, chosen by the boundary
//! block's timestamp and never by trying both decoders; a devnet writing what its profile says.

use cairn_devnet::{Devnet, DevnetConfig, DevnetError};
use cairn_dkg::{DkgOutcome, OutcomeError, OutcomeLayout, OutcomeLimits};
use cairn_epoch::{ChainProfile, EpochStrategy, FinalizationVerifier, SchemeProvider, VerifyError};
use cairn_feed::{ChainReader as _, FeedState};
use cairn_primitives::Block;
use cairn_tests::{TestCommittee, test_block};
use commonware_codec::EncodeSize as _;
use commonware_consensus::types::Epoch;
use commonware_runtime::{Runner as _, Supervisor as _, deterministic};
use rand::{SeedableRng as _, rngs::StdRng};
use std::collections::BTreeSet;

const NAMESPACE: &[u8] = b"TEMPO";

/// Test blocks are stamped 1,700,000,000 plus their height: with this fork, boundary 3 (epoch
/// length 4) is before it and boundary 7 exactly at it.
const FORK: u64 = 1_700_000_007;

fn limits() -> OutcomeLimits {
    OutcomeLimits::default()
}

#[test]
fn a_tip1123_outcome_is_the_output_alone_and_is_read_strictly() {
    let committee = TestCommittee::new(NAMESPACE, 71, 4);
    let legacy = committee.outcome(9, true);
    let compact = legacy.compact();
    let bytes = compact.to_bytes();
    let next = legacy
        .next
        .as_ref()
        .expect("a legacy outcome names the next ceremony");

    // Exactly varint(epoch) || Output: the next players and the flag are gone.
    assert_eq!(bytes.len(), 1 + legacy.output.encode_size());
    assert_eq!(
        legacy.to_bytes().len(),
        bytes.len() + next.players.encode_size() + 1
    );
    assert_eq!(legacy.to_bytes()[..bytes.len()], bytes[..]);
    assert_eq!(compact.layout(), OutcomeLayout::Tip1123);
    let decoded =
        DkgOutcome::decode_strict(&bytes, OutcomeLayout::Tip1123, &limits()).expect("decodes");
    assert_eq!(decoded, compact);
    assert_eq!(decoded.identity(), legacy.identity());
    assert!(decoded.next.is_none());

    // One byte more is refused, at a boundary too: after the fork nothing trails the outcome.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        DkgOutcome::decode_strict(&longer, OutcomeLayout::Tip1123, &limits()),
        Err(OutcomeError::TrailingBytes(1))
    ));
    assert!(matches!(
        DkgOutcome::decode_boundary(&longer, OutcomeLayout::Tip1123, &limits()),
        Err(OutcomeError::TrailingBytes(1))
    ));
    // One byte less is truncated.
    assert!(
        DkgOutcome::decode_strict(&bytes[..bytes.len() - 1], OutcomeLayout::Tip1123, &limits())
            .is_err()
    );
    // The layouts are not interchangeable: a legacy outcome read as TIP-1123 has the next
    // ceremony trailing; a TIP-1123 outcome read as legacy lacks it.
    assert!(matches!(
        DkgOutcome::decode_boundary(&legacy.to_bytes(), OutcomeLayout::Tip1123, &limits()),
        Err(OutcomeError::TrailingBytes(n)) if n == next.players.encode_size() + 1
    ));
    assert!(DkgOutcome::decode_boundary(&bytes, OutcomeLayout::Legacy, &limits()).is_err());

    // Before the fork, bytes after a legacy outcome are ignored as Tempo ignores them.
    let mut trailing = legacy.to_bytes();
    trailing.extend_from_slice(&[0xde, 0xad]);
    let (read, ignored) = DkgOutcome::decode_boundary(&trailing, OutcomeLayout::Legacy, &limits())
        .expect("legacy boundaries may carry trailing bytes");
    assert_eq!((read, ignored), (legacy, 2));
}

/// A boundary certified by the genesis committee announcing `next`'s key in `extra`.
fn boundary(
    genesis: &TestCommittee,
    height: u64,
    extra: Vec<u8>,
) -> cairn_primitives::CertifiedBlock {
    let epoch = height / 4;
    genesis.certify(test_block(height, epoch, height, extra), epoch, height)
}

#[test]
fn a_boundary_is_read_in_the_layout_its_timestamp_selects() {
    let epochs = EpochStrategy::new(4)
        .expect("valid")
        .with_tip1123_time(Some(FORK));
    let genesis = TestCommittee::new(NAMESPACE, 72, 4);
    let next = TestCommittee::new(NAMESPACE, 73, 4);
    let verifier =
        |provider: &SchemeProvider| FinalizationVerifier::new(epochs.clone(), provider.clone());
    let provider_from = |epoch: u64| {
        let provider = SchemeProvider::new(NAMESPACE, commonware_utils::NZUsize!(8));
        provider
            .register(
                Epoch::new(epoch),
                *genesis.ceremony.output.public().public(),
            )
            .expect("fresh");
        provider
    };
    let mut rng = StdRng::seed_from_u64(5);
    let legacy = next.outcome(1, false);
    let compact = next.outcome(2, false).compact();
    let next_identity = Some(*next.ceremony.output.public().public());

    // Boundary 3, a second before the fork: legacy, trailing bytes ignored.
    let provider = provider_from(0);
    let mut bytes = legacy.to_bytes();
    bytes.push(0x01);
    let (verified, registration) = verifier(&provider)
        .verify_and_register(&mut rng, &boundary(&genesis, 3, bytes))
        .expect("legacy before the fork");
    assert_eq!(
        verified.next_epoch.map(|outcome| outcome.layout()),
        Some(OutcomeLayout::Legacy)
    );
    assert!(registration.is_some());
    assert_eq!(provider.registered_identity(Epoch::new(1)), next_identity);
    // The compact layout before the fork is refused, and nothing registered.
    let provider = provider_from(0);
    let err = verifier(&provider)
        .verify_and_register(
            &mut rng,
            &boundary(&genesis, 3, next.outcome(1, false).compact().to_bytes()),
        )
        .expect_err("compact before the fork");
    assert!(
        matches!(
            err,
            VerifyError::BoundaryOutcome {
                height: 3,
                layout: OutcomeLayout::Legacy,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(provider.registered_identity(Epoch::new(1)), None);

    // Boundary 7, stamped at the fork time: TIP-1123, exactly.
    let provider = provider_from(1);
    let (verified, registration) = verifier(&provider)
        .verify_and_register(&mut rng, &boundary(&genesis, 7, compact.to_bytes()))
        .expect("compact at the fork");
    assert_eq!(verified.next_epoch.as_ref(), Some(&compact));
    assert!(registration.is_some());
    assert_eq!(provider.registered_identity(Epoch::new(2)), next_identity);
    // A trailing byte, or the legacy layout, is refused there and registers nothing.
    let mut longer = compact.to_bytes();
    longer.push(0x00);
    for (bytes, what) in [
        (longer, "a trailing byte"),
        (next.outcome(2, false).to_bytes(), "legacy"),
    ] {
        let provider = provider_from(1);
        let err = verifier(&provider)
            .verify_and_register(&mut rng, &boundary(&genesis, 7, bytes))
            .expect_err(what);
        assert!(
            matches!(
                err,
                VerifyError::BoundaryOutcome {
                    height: 7,
                    layout: OutcomeLayout::Tip1123,
                    error: OutcomeError::TrailingBytes(_),
                }
            ),
            "{what}: {err}"
        );
        assert!(err.to_string().contains("tip1123 layout"), "{err}");
        assert_eq!(provider.registered_identity(Epoch::new(2)), None, "{what}");
    }
}

fn devnet_config(tip1123_time: Option<u64>) -> DevnetConfig {
    DevnetConfig {
        validators: 5,
        committee: 4,
        epoch_length: 4,
        full_dkg_at_epochs: BTreeSet::from([3]),
        seed: Some(3),
        block_time: std::time::Duration::from_secs(1),
        tip1123_time,
        ..DevnetConfig::default()
    }
}

/// The seeded devnet stamps block h at 1,767,225,600 + h seconds (one-second blocks).
const DEVNET_FORK: u64 = 1_767_225_600 + 10;

/// A devnet with the fork at `tip1123_time`, opened in `context` and `blocks` heights long.
async fn devnet_of(
    context: &deterministic::Context,
    tip1123_time: Option<u64>,
    blocks: u64,
) -> Devnet<deterministic::Context> {
    let mut devnet = Devnet::open(
        context.child("devnet"),
        devnet_config(tip1123_time),
        FeedState::default(),
    )
    .await
    .expect("devnet opens");
    for _ in 0..blocks {
        devnet.produce_next().await.expect("produces");
    }
    devnet
}

/// The `extraData` of the block `devnet` stores at `height`.
async fn extra_data_at(devnet: &Devnet<deterministic::Context>, height: u64) -> (u64, Vec<u8>) {
    let block: Block = devnet
        .store()
        .certified_at(height)
        .await
        .expect("reads")
        .and_then(|certified| certified.block)
        .expect("stored");
    let header = block.header();
    (header.inner.timestamp, header.inner.extra_data.to_vec())
}

#[test]
fn the_devnet_writes_the_layout_its_profile_names_and_keeps_its_fork_time() {
    deterministic::Runner::seeded(3).start(|context| async move {
        let devnet = devnet_of(&context, Some(DEVNET_FORK), 20).await;
        let profile = devnet.profile("forked").expect("profile");
        assert_eq!(profile.epochs.tip1123_time(), Some(DEVNET_FORK));
        // chain.json carries the fork time, and reads back the same.
        let json = profile.to_json();
        assert!(
            json.contains(&format!("\"tip1123Time\": {DEVNET_FORK}")),
            "{json}"
        );
        let read = ChainProfile::from_json(&json).expect("reads back");
        assert_eq!(read.epochs, profile.epochs);
        assert_eq!(read.genesis.layout(), OutcomeLayout::Legacy);

        // Boundaries 3 and 7 are stamped before the fork, 11, 15 and 19 after it.
        for height in [3u64, 7, 11, 15, 19] {
            let (timestamp, extra) = extra_data_at(&devnet, height).await;
            let layout = if timestamp >= DEVNET_FORK {
                OutcomeLayout::Tip1123
            } else {
                OutcomeLayout::Legacy
            };
            assert_eq!(
                layout == OutcomeLayout::Tip1123,
                height >= 11,
                "height {height}"
            );
            let outcome = DkgOutcome::decode_strict(&extra, layout, &limits())
                .unwrap_or_else(|err| panic!("boundary {height} in the {layout} layout: {err}"));
            assert_eq!(outcome.epoch, height / 4 + 1);
            assert_eq!(outcome.layout(), layout);
            let other = match layout {
                OutcomeLayout::Legacy => OutcomeLayout::Tip1123,
                OutcomeLayout::Tip1123 => OutcomeLayout::Legacy,
            };
            assert!(
                DkgOutcome::decode_strict(&extra, other, &limits()).is_err(),
                "boundary {height} also reads as {other}"
            );
        }
    });

    // A restart with another fork time is refused.
    let ((), checkpoint) =
        deterministic::Runner::seeded(4).start_and_recover(|context| async move {
            devnet_of(&context, Some(DEVNET_FORK), 1).await;
        });
    deterministic::Runner::from(checkpoint).start(|context| async move {
        let Err(err) = Devnet::open(
            context.child("devnet"),
            devnet_config(Some(DEVNET_FORK + 1)),
            FeedState::default(),
        )
        .await
        else {
            panic!("another fork time must be refused");
        };
        assert!(matches!(err, DevnetError::ParamsMismatch { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("TIP-1123 time {DEVNET_FORK}")),
            "{err}"
        );
    });

    // Without a fork time the legacy layout stays, and chain.json has no key for it.
    deterministic::Runner::seeded(5).start(|context| async move {
        let plain = devnet_of(&context, None, 12).await;
        let profile = plain.profile("plain").expect("profile");
        assert!(!profile.to_json().contains("tip1123Time"));
        let (_, extra) = extra_data_at(&plain, 11).await;
        DkgOutcome::decode_strict(&extra, OutcomeLayout::Legacy, &limits())
            .expect("legacy without a fork time");
    });
}

/// A genesis stamped at or after the fork holds a compact outcome, and the profile reads it
/// in that layout.
#[test]
fn a_devnet_forked_from_genesis_writes_compact_outcomes_throughout() {
    deterministic::Runner::seeded(5).start(|context| async move {
        let devnet = devnet_of(&context, Some(0), 8).await;
        let profile = devnet.profile("from-genesis").expect("profile");
        assert_eq!(profile.genesis.layout(), OutcomeLayout::Tip1123);
        let read = ChainProfile::from_json(&profile.to_json()).expect("reads back");
        assert_eq!(read.genesis, profile.genesis);
    });
}
