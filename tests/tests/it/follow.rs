//! The follower under commonware's deterministic runtime, fed by the in-process upstream over a
//! devnet producer in the same simulation: it catches up from genesis across reshares and a full
//! DKG through marshal's gap repair, serves exactly what the devnet serves, rejects bad events
//! without storing anything, a follower of the follower converges on its own, and a restart on
//! the same storage resumes with the epochs it had registered, keeping only a bounded number.

use cairn_devnet::{Devnet, DevnetConfig};
use cairn_epoch::ChainProfile;
use cairn_feed::{ChainReader, FeedState};
use cairn_follow::{
    Engine, EngineConfig,
    engine::EngineContext,
    sync::catchup::{CatchUpConfig, VerifyPolicy},
    upstream::{Sources, in_process},
};
use cairn_primitives::CertifiedBlock;
use cairn_tests::{TestCommittee, test_block};
use commonware_runtime::{Clock, Runner, Supervisor, deterministic};
use std::{collections::BTreeSet, time::Duration};
use tokio::sync::mpsc;

fn devnet_config() -> DevnetConfig {
    DevnetConfig {
        validators: 5,
        committee: 4,
        epoch_length: 4,
        full_dkg_at_epochs: BTreeSet::from([3]),
        ..DevnetConfig::default()
    }
}

/// Starts a follower of `feed` and `chain` (an in-process upstream) in `context`.
async fn follow<E: EngineContext, C: ChainReader>(
    context: &E,
    label: &'static str,
    profile: &ChainProfile,
    feed: FeedState,
    chain: C,
) -> Engine<E> {
    follow_keeping(
        context,
        label,
        profile,
        feed,
        chain,
        cairn_epoch::DEFAULT_MAX_EPOCHS,
    )
    .await
}

/// [`follow`] keeping at most `max_epochs` epoch verifiers.
async fn follow_keeping<E: EngineContext, C: ChainReader>(
    context: &E,
    label: &'static str,
    profile: &ChainProfile,
    feed: FeedState,
    chain: C,
    max_epochs: std::num::NonZeroUsize,
) -> Engine<E> {
    let config = EngineConfig {
        partition_prefix: format!("follow-{label}"),
        max_epochs,
        ..EngineConfig::new(profile.clone())
    };
    follow_with(context, label, feed, chain, config).await
}

/// [`follow`] with `config`.
pub(crate) async fn follow_with<E: EngineContext, C: ChainReader>(
    context: &E,
    label: &'static str,
    feed: FeedState,
    chain: C,
    config: EngineConfig,
) -> Engine<E> {
    let (notifications, receiver) = mpsc::channel(256);
    let (actor, requests) = in_process::init(label, 0, feed, chain, notifications);
    context
        .child("upstream")
        .spawn(|context| actor.run(context));
    let sources = Sources::single(label, requests);
    cairn_tests::start_follower(context, label, config, receiver, sources).await
}

/// Waits (in simulated time) until `follower` has executed `height`.
pub(crate) async fn executed<E: EngineContext + Clock>(
    context: &E,
    follower: &Engine<E>,
    height: u64,
) {
    for _ in 0..6_000 {
        if *follower.executed.borrow() >= height {
            return;
        }
        context.sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "follower stuck at {} waiting for {height}",
        *follower.executed.borrow()
    );
}

/// Every height `1..=to` that `follower` serves equals what `reference` serves.
async fn assert_same_chain<E: EngineContext>(
    follower: &Engine<E>,
    reference: &impl ChainReader,
    to: u64,
) {
    for height in 1..=to {
        let ours = follower.chain.certified_at(height).await.expect("reads");
        let theirs = reference.certified_at(height).await.expect("reads");
        assert!(ours.is_some(), "follower serves height {height}");
        assert_eq!(ours, theirs, "height {height} differs");
    }
}

/// Opens a devnet in `context`, produces `blocks` heights, and returns it with its profile and
/// an upstream feed whose latest finalization is the tip.
async fn devnet_with<E: EngineContext>(
    context: &E,
    blocks: u64,
) -> (Devnet<E>, ChainProfile, FeedState) {
    devnet_from(context, devnet_config(), blocks).await
}

/// [`devnet_with`] with `config`.
pub(crate) async fn devnet_from<E: EngineContext>(
    context: &E,
    config: DevnetConfig,
    blocks: u64,
) -> (Devnet<E>, ChainProfile, FeedState) {
    let mut devnet = Devnet::open(context.child("devnet"), config, FeedState::default())
        .await
        .expect("devnet opens");
    let profile = devnet.profile("simulation").expect("profile");
    let upstream = FeedState::default();
    for _ in 0..blocks {
        let produced = devnet.produce_next().await.expect("produces");
        upstream.publish_finalized(produced.certified);
    }
    (devnet, profile, upstream)
}

#[test]
fn follower_catches_up_rejects_bad_events_and_is_followed() {
    deterministic::Runner::seeded(11).start(|context| async move {
        // Six epochs (one full DKG among them) exist before the follower starts.
        let (mut devnet, profile, upstream) = devnet_with(&context, 26).await;

        let follower = follow(
            &context,
            "a",
            &profile,
            upstream.clone(),
            devnet.store().clone(),
        )
        .await;
        executed(&context, &follower, 26).await;
        assert_same_chain(&follower, devnet.store(), 26).await;
        assert_eq!(follower.provider.latest_epoch().map(|e| e.get()), Some(6));

        // Live: the next block arrives as an event, after four bad versions of it.
        let good = devnet.produce_next().await.expect("produces").certified;
        let block = good.block.clone().expect("carries its block");
        let (epoch, view) = (good.epoch, good.view);
        let stranger = TestCommittee::new(&profile.namespace, 99, 4);
        let other_block = test_block(27, epoch, view, Vec::new());
        let bad: Vec<CertifiedBlock> = vec![
            CertifiedBlock {
                certificate: "zz".into(),
                ..good.clone()
            },
            CertifiedBlock {
                block: Some(other_block.clone()),
                ..good.clone()
            },
            stranger.certify(block.clone(), epoch + 1, view),
            stranger.certify(block.clone(), epoch, view),
        ];
        for event in bad {
            upstream.publish_finalized(event);
        }
        for _ in 0..1_000 {
            if follower.upstream.borrow().rejected >= 4 {
                break;
            }
            context.sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            follower.upstream.borrow().rejected,
            4,
            "all four bad events are rejected"
        );
        assert_eq!(*follower.executed.borrow(), 26, "nothing was executed");
        assert_eq!(
            follower.upstream.borrow().announced_height,
            26,
            "rejected events do not move the target"
        );
        assert!(
            follower
                .chain
                .certified_at(27)
                .await
                .expect("reads")
                .is_none()
        );
        assert!(
            follower
                .chain
                .block_by_hash(other_block.hash())
                .await
                .expect("reads")
                .is_none()
        );
        assert!(
            follower
                .chain
                .block_by_hash(block.hash())
                .await
                .expect("reads")
                .is_none()
        );

        upstream.publish_finalized(good.clone());
        executed(&context, &follower, 27).await;
        assert_eq!(
            follower.chain.certified_at(27).await.expect("reads"),
            Some(good)
        );

        // A follower of the follower converges from the first follower's feed and store alone.
        let second = follow(
            &context,
            "b",
            &profile,
            follower.feed.clone(),
            follower.chain.clone(),
        )
        .await;
        executed(&context, &second, 27).await;
        assert_same_chain(&second, devnet.store(), 27).await;
        for _ in 0..4 {
            upstream.publish_finalized(devnet.produce_next().await.expect("produces").certified);
        }
        executed(&context, &second, 31).await;
        assert_same_chain(&second, devnet.store(), 31).await;
    });
}

#[test]
fn followers_follow_across_the_tip1123_fork_live_and_in_a_catch_up() {
    deterministic::Runner::seeded(13).start(|context| async move {
        // One-second blocks from 1,767,225,600: boundaries 3 and 7 are stamped before the fork,
        // 11 and later after it.
        let config = DevnetConfig {
            seed: Some(13),
            block_time: Duration::from_secs(1),
            tip1123_time: Some(1_767_225_600 + 10),
            ..devnet_config()
        };
        let (mut devnet, profile, upstream) = devnet_from(&context, config, 9).await;
        let live = follow(
            &context,
            "live",
            &profile,
            upstream.clone(),
            devnet.store().clone(),
        )
        .await;
        executed(&context, &live, 9).await;
        // The fork passes while the follower is live.
        for _ in 9..26 {
            upstream.publish_finalized(devnet.produce_next().await.expect("produces").certified);
        }
        executed(&context, &live, 26).await;
        assert_same_chain(&live, devnet.store(), 26).await;
        assert_eq!(live.provider.latest_epoch().map(|e| e.get()), Some(6));
        for height in [3, 7, 11, 23] {
            let block = live
                .chain
                .certified_at(height)
                .await
                .expect("reads")
                .and_then(|certified| certified.block)
                .expect("stored");
            let outcome =
                cairn_epoch::boundary_outcome(&profile.epochs, &block, &Default::default())
                    .expect("its layout");
            let compact = height >= 11;
            assert_eq!(outcome.next.is_none(), compact, "boundary {height}");
        }

        // A second follower catches up from genesis over both layouts.
        let late = follow(
            &context,
            "late",
            &profile,
            upstream.clone(),
            devnet.store().clone(),
        )
        .await;
        executed(&context, &late, 26).await;
        assert_same_chain(&late, devnet.store(), 26).await;
        assert_eq!(late.provider.latest_epoch().map(|e| e.get()), Some(6));
    });
}

#[test]
fn follower_restart_resumes_with_its_registered_epochs() {
    let (profile_json, checkpoint) =
        deterministic::Runner::seeded(5).start_and_recover(|context| async move {
            let (devnet, profile, upstream) = devnet_with(&context, 18).await;
            // Two verifiers at most: the registry stays bounded however long the chain.
            let follower = follow_keeping(
                &context,
                "a",
                &profile,
                upstream,
                devnet.store().clone(),
                commonware_utils::NZUsize!(2),
            )
            .await;
            executed(&context, &follower, 18).await;
            assert!(
                follower.provider.len() <= 2,
                "the verifier registry is bounded"
            );
            profile.to_json()
        });
    deterministic::Runner::from(checkpoint).start(|context| async move {
        let profile = ChainProfile::from_json(&profile_json).expect("profile");
        let mut devnet = Devnet::open(
            context.child("devnet"),
            devnet_config(),
            FeedState::default(),
        )
        .await
        .expect("devnet reopens");
        let upstream = FeedState::default();
        let follower = follow_keeping(
            &context,
            "a",
            &profile,
            upstream.clone(),
            devnet.store().clone(),
            commonware_utils::NZUsize!(2),
        )
        .await;
        assert_eq!(*follower.executed.borrow(), 18, "resumes from disk");
        assert_eq!(
            follower.feed.latest(),
            follower.chain.certified_at(18).await.expect("reads"),
            "the latest finalization is republished at once, before any new event"
        );
        assert!(follower.feed.latest().is_some());
        assert!(
            follower.provider.len() <= 2,
            "only the newest epochs were kept on disk"
        );
        assert_eq!(
            follower.provider.latest_epoch().map(|e| e.get()),
            Some(4),
            "the epochs registered before the restart are restored"
        );
        for _ in 0..6 {
            upstream.publish_finalized(devnet.produce_next().await.expect("produces").certified);
        }
        executed(&context, &follower, 24).await;
        assert_same_chain(&follower, devnet.store(), 24).await;
        assert!(
            follower.provider.len() <= 2,
            "the verifier registry is bounded"
        );
    });
}

#[test]
fn catch_up_converges_under_several_schedules() {
    for seed in 0..4 {
        deterministic::Runner::seeded(seed).start(|context| async move {
            let (mut devnet, profile, upstream) = devnet_with(&context, 13).await;
            let follower = follow(
                &context,
                "a",
                &profile,
                upstream.clone(),
                devnet.store().clone(),
            )
            .await;
            // Live events race the catch-up: they arrive while marshal is still repairing.
            for _ in 0..3 {
                upstream
                    .publish_finalized(devnet.produce_next().await.expect("produces").certified);
            }
            executed(&context, &follower, 16).await;
            assert_same_chain(&follower, devnet.store(), 16).await;
        });
    }
}

#[test]
fn a_running_follower_far_behind_rejoins_through_the_hash_chain() {
    deterministic::Runner::seeded(17).start(|context| async move {
        let (mut devnet, profile, upstream) = devnet_with(&context, 3).await;
        let config = |label: &str, policy: VerifyPolicy| EngineConfig {
            partition_prefix: format!("follow-{label}"),
            catch_up: CatchUpConfig {
                policy,
                min_gap: 8,
                rejoin_gap: 8,
                ..CatchUpConfig::default()
            },
            ..EngineConfig::new(profile.clone())
        };
        // Three blocks: under the start-up catch-up's minimum gap, so marshal follows them.
        let fast = follow_with(
            &context,
            "fast",
            upstream.clone(),
            devnet.store().clone(),
            config("fast", VerifyPolicy::HashChain),
        )
        .await;
        let every = follow_with(
            &context,
            "every",
            upstream.clone(),
            devnet.store().clone(),
            config("every", VerifyPolicy::EveryBlock),
        )
        .await;
        executed(&context, &fast, 3).await;
        executed(&context, &every, 3).await;

        // The upstream falls silent while the chain goes on for seven epochs, the full DKG
        // among them; then its next event is block 33.
        let mut produced = Vec::new();
        for _ in 4..=33 {
            produced.push(devnet.produce_next().await.expect("produces").certified);
        }
        upstream.publish_finalized(produced.last().expect("produced").clone());
        executed(&context, &fast, 33).await;
        executed(&context, &every, 33).await;
        assert_eq!(
            fast.upstream.borrow().rejoins,
            1,
            "the follower rejoined once"
        );
        assert_eq!(
            every.upstream.borrow().rejoins,
            0,
            "Tempo's policy leaves it to marshal"
        );
        assert_eq!(fast.provider.latest_epoch(), every.provider.latest_epoch());
        for height in 1..=33 {
            let reference = devnet.store().block_at(height).await.expect("reads");
            assert!(reference.is_some());
            assert_eq!(
                fast.chain.block_at(height).await.expect("reads"),
                reference,
                "{height}"
            );
            assert_eq!(
                every.chain.block_at(height).await.expect("reads"),
                reference,
                "{height}"
            );
        }
        // The rejoin verified the boundaries it walked and the tip: their certificates are
        // served; marshal, given every certificate, serves them all.
        for height in [7, 11, 15, 19, 23, 27, 31, 33] {
            assert_eq!(
                fast.chain.certified_at(height).await.expect("reads"),
                devnet.store().certified_at(height).await.expect("reads"),
                "{height}"
            );
        }
        assert_same_chain(&every, devnet.store(), 33).await;

        // Marshal goes on from the rejoin's tip: the next blocks arrive live and verify.
        for _ in 34..=36 {
            let certified = devnet.produce_next().await.expect("produces").certified;
            upstream.publish_finalized(certified);
        }
        executed(&context, &fast, 36).await;
        for height in 34..=36 {
            assert_eq!(
                fast.chain.certified_at(height).await.expect("reads"),
                devnet.store().certified_at(height).await.expect("reads"),
                "{height}"
            );
        }
        assert_eq!(fast.upstream.borrow().rejoins, 1);
    });
}
