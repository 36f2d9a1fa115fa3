//! The devnet producer under commonware's deterministic runtime: every certificate it makes
//! verifies from the genesis outcome alone, committees rotate, the identity changes exactly at
//! the full-DKG epoch, and a restart on the same storage continues the chain.

use cairn_devnet::{Devnet, DevnetConfig, DevnetError, KeyOrigin};
use cairn_dkg::DkgOutcome;
use cairn_epoch::ChainProfile;
use cairn_feed::{ChainReader, FeedState};
use cairn_primitives::{Block, CertifiedBlock, StoredBlock};
use cairn_tests::verify_chain;
use commonware_parallel::Rayon;
use commonware_runtime::{Runner, Supervisor, deterministic};
use std::{collections::BTreeSet, num::NonZeroUsize};

fn config() -> DevnetConfig {
    DevnetConfig {
        validators: 5,
        committee: 4,
        epoch_length: 4,
        full_dkg_at_epochs: BTreeSet::from([2]),
        ..DevnetConfig::default()
    }
}

async fn stored_chain(devnet: &Devnet<deterministic::Context>, to: u64) -> Vec<CertifiedBlock> {
    let mut chain = Vec::new();
    for height in 1..=to {
        let certified = devnet
            .store()
            .certified_at(height)
            .await
            .expect("store reads")
            .unwrap_or_else(|| panic!("height {height} is stored"));
        chain.push(certified);
    }
    chain
}

#[test]
fn devnet_rotates_keys_and_restarts_where_it_stopped() {
    let (first_run, checkpoint) =
        deterministic::Runner::seeded(1).start_and_recover(|context| async move {
            let mut devnet = Devnet::open(context.child("devnet"), config(), FeedState::default())
                .await
                .expect("devnet opens");
            let profile = devnet.profile("test").expect("profile");
            let mut produced = Vec::new();
            let mut entered = Vec::new();
            for _ in 0..17 {
                let next = devnet.produce_next().await.expect("produces");
                if let Some(entry) = next.entered {
                    entered.push((entry.epoch, entry.origin, entry.committee));
                }
                produced.push(next.certified);
            }
            let stored = stored_chain(&devnet, 17).await;
            assert_eq!(
                stored, produced,
                "the store serves exactly what was produced"
            );
            (profile.to_json(), produced, entered)
        });
    let (profile_json, produced, entered) = first_run;
    let profile = ChainProfile::from_json(&profile_json).expect("the written profile loads");

    // Every certificate verifies knowing only the genesis outcome.
    let identities = verify_chain(&profile, &produced);
    assert_eq!(identities.len(), 5, "epochs 0..=4");
    assert_eq!(identities[&0], identities[&1], "reshare keeps the identity");
    assert_ne!(
        identities[&1], identities[&2],
        "full DKG at epoch 2 changes it"
    );
    assert_eq!(identities[&2], identities[&3]);
    assert_eq!(identities[&3], identities[&4]);

    let origins: Vec<_> = entered
        .iter()
        .map(|(epoch, origin, _)| (*epoch, *origin))
        .collect();
    assert_eq!(
        origins,
        vec![
            (0, KeyOrigin::Genesis),
            (1, KeyOrigin::Reshare),
            (2, KeyOrigin::FullDkg),
            (3, KeyOrigin::Reshare),
            (4, KeyOrigin::Reshare)
        ]
    );
    for pair in entered.windows(2) {
        assert_ne!(pair[0].2, pair[1].2, "committees rotate between epochs");
    }

    // Boundary blocks carry the next outcome; dealers of each reshare are the last committee.
    for certified in &produced {
        let block = certified
            .block
            .as_ref()
            .expect("devnet blocks carry bodies");
        let height = block.height();
        if profile.epochs.is_boundary(height) {
            let outcome = DkgOutcome::decode(&block.header().inner.extra_data).expect("outcome");
            let epoch = profile.epochs.epoch_of(height).get();
            assert_eq!(outcome.epoch, epoch + 1);
            assert_eq!(
                outcome.next.as_ref().map(|next| next.full_dkg),
                Some(epoch + 2 == 2)
            );
        } else {
            // Some non-boundary blocks carry dealer-log bytes, as Tempo's do; never an outcome.
            assert!(DkgOutcome::decode(&block.header().inner.extra_data).is_err());
        }
        // Every block after genesis carries real signed transactions.
        assert_eq!(
            block.transactions().len() as u64,
            cairn_devnet::transactions::TRANSACTIONS_PER_BLOCK
        );
        // The raw RLP served by debug_getRawBlock decodes back to the certified block.
        let raw = block.raw_rlp().expect("body known");
        assert_eq!(
            &Block::decode_raw_rlp(&raw).expect("raw block decodes"),
            block
        );
        let context = block.header().consensus_context.expect("consensus context");
        assert_eq!(
            (context.epoch, context.view),
            (certified.epoch, certified.view)
        );
    }
    for pair in produced.windows(2) {
        let (parent, child) = (pair[0].block.as_ref(), pair[1].block.as_ref());
        let (parent, child) = (parent.expect("block"), child.expect("block"));
        assert_eq!(child.parent(), parent.hash());
        assert!(child.header().timestamp_millis() > parent.header().timestamp_millis());
    }

    // Restart on the same storage: the chain continues, nothing is produced twice.
    let restarted = deterministic::Runner::from(checkpoint).start(|context| async move {
        let mut devnet = Devnet::open(context.child("devnet"), config(), FeedState::default())
            .await
            .expect("devnet reopens");
        assert_eq!(devnet.next_height(), 18);
        assert_eq!(devnet.store().finalized_height(), Some(17));
        for _ in 0..6 {
            devnet.produce_next().await.expect("produces after restart");
        }
        stored_chain(&devnet, 23).await
    });
    assert_eq!(
        &restarted[..17],
        &produced[..],
        "the first run's chain is unchanged"
    );
    let identities = verify_chain(&profile, &restarted);
    assert_eq!(identities.len(), 6, "epochs 0..=5");
    let heights: BTreeSet<_> = restarted.iter().filter_map(|c| c.height).collect();
    assert_eq!(heights, (1..=23).collect());
}

#[test]
fn a_restart_with_other_chain_parameters_is_refused() {
    let ((), checkpoint) =
        deterministic::Runner::seeded(2).start_and_recover(|context| async move {
            let mut devnet = Devnet::open(context.child("devnet"), config(), FeedState::default())
                .await
                .expect("opens");
            devnet.produce_next().await.expect("produces");
        });
    deterministic::Runner::from(checkpoint).start(|context| async move {
        let other = DevnetConfig {
            epoch_length: 8,
            ..config()
        };
        let Err(err) = Devnet::open(context.child("devnet"), other, FeedState::default()).await
        else {
            panic!("a different epoch length must be refused");
        };
        assert!(matches!(err, DevnetError::ParamsMismatch { .. }), "{err}");
        // The stored chain is untouched and still opens with the right parameters.
        let devnet = Devnet::open(
            context.child("devnet_again"),
            config(),
            FeedState::default(),
        )
        .await
        .expect("reopens");
        assert_eq!(devnet.next_height(), 2);
    });
}

#[test]
fn invalid_configurations_are_refused_before_anything_is_stored() {
    let cases = [
        DevnetConfig {
            committee: 0,
            ..config()
        },
        DevnetConfig {
            validators: 3,
            committee: 4,
            ..config()
        },
        DevnetConfig {
            full_dkg_at_epochs: BTreeSet::from([0]),
            ..config()
        },
        DevnetConfig {
            epoch_length: 1,
            ..config()
        },
    ];
    for (i, bad) in cases.into_iter().enumerate() {
        deterministic::Runner::seeded(i as u64).start(|context| async move {
            let result = Devnet::open(context.child("devnet"), bad, FeedState::default()).await;
            let Err(err) = result else {
                panic!("case {i} must be refused");
            };
            assert!(
                matches!(err, DevnetError::Config(_) | DevnetError::EpochLength(_)),
                "case {i}: {err}"
            );
            // Nothing was written: a valid devnet on the same storage starts from genesis.
            let devnet = Devnet::open(
                context.child("devnet_valid"),
                config(),
                FeedState::default(),
            )
            .await
            .expect("opens");
            assert_eq!(devnet.next_height(), 1);
        });
    }
}

/// Produces `heights` blocks with `config` under a deterministic runtime seeded with
/// `runtime_seed`, restarting the devnet on its storage after `restart_after` of them.
fn produce(
    config: DevnetConfig,
    runtime_seed: u64,
    heights: u64,
    restart_after: u64,
) -> Vec<CertifiedBlock> {
    let first = config.clone();
    let (_, checkpoint) =
        deterministic::Runner::seeded(runtime_seed).start_and_recover(|context| async move {
            let mut devnet = Devnet::open(context.child("devnet"), first, FeedState::default())
                .await
                .expect("devnet opens");
            for _ in 0..restart_after {
                devnet.produce_next().await.expect("produces");
            }
        });
    deterministic::Runner::from(checkpoint).start(|context| async move {
        let mut devnet = Devnet::open(context.child("devnet"), config, FeedState::default())
            .await
            .expect("devnet reopens");
        for _ in restart_after..heights {
            devnet.produce_next().await.expect("produces");
        }
        stored_chain(&devnet, heights).await
    })
}

#[test]
fn a_seed_fixes_the_chain_and_a_runtime_seed_replays_it() {
    let seeded = DevnetConfig {
        seed: Some(42),
        ..config()
    };
    // The same devnet seed under different runtime seeds, restarted at different heights: the
    // same chain byte for byte (keys, ceremonies, full DKG, transactions, timestamps).
    let a = produce(seeded.clone(), 1, 14, 3);
    let b = produce(seeded.clone(), 2, 14, 9);
    assert_eq!(a, b, "same seed, same chain");
    let genesis_millis = 1_767_225_600_000u64;
    for certified in &a {
        let block = certified.block.as_ref().expect("block");
        assert_eq!(
            block.header().timestamp_millis(),
            genesis_millis + block.height() * 250,
            "the seeded schedule stamps block {}",
            block.height()
        );
    }
    // Another seed is another chain.
    let other = produce(
        DevnetConfig {
            seed: Some(43),
            ..config()
        },
        1,
        14,
        3,
    );
    assert_ne!(a[0].certificate, other[0].certificate);
    // Without a seed, keys come from the runtime's RNG: one runtime seed replays the same
    // keys and ceremonies (the timestamps follow the simulated clock).
    let strip = |chain: Vec<CertifiedBlock>| -> Vec<(u64, String)> {
        chain
            .into_iter()
            .map(|certified| {
                (
                    certified.epoch,
                    certified
                        .block
                        .expect("block")
                        .header()
                        .inner
                        .extra_data
                        .to_string(),
                )
            })
            .collect()
    };
    let replay_a = produce(config(), 5, 14, 3);
    let replay_b = produce(config(), 5, 14, 3);
    assert_eq!(
        replay_a, replay_b,
        "one runtime seed replays the chain exactly"
    );
    let elsewhere = produce(config(), 6, 14, 3);
    assert_ne!(
        strip(replay_a),
        strip(elsewhere),
        "another runtime seed deals other keys"
    );
}

#[test]
fn bulk_generation_stores_the_same_chain_and_serves_it_only_once_synced() {
    let seeded = DevnetConfig {
        seed: Some(42),
        ..config()
    };
    let one_by_one = produce(seeded.clone(), 1, 14, 14);
    let bulk = deterministic::Runner::seeded(1).start(|context| async move {
        let feed = FeedState::default();
        let mut events = feed.subscribe();
        let mut devnet = Devnet::open(context.child("devnet"), seeded, feed)
            .await
            .expect("devnet opens");
        // Signed on two threads, in batches that cross epoch boundaries.
        let threads = Rayon::new(NonZeroUsize::new(2).expect("non-zero")).expect("pool");
        let entered = devnet
            .produce_batch_unsynced(6, &threads)
            .await
            .expect("produces");
        let epochs: Vec<u64> = entered.iter().map(|entry| entry.epoch).collect();
        assert_eq!(
            epochs,
            vec![0, 1],
            "epochs 0 and 1 entered within the first batch"
        );
        // Written, not yet served: the tip moves only when the batch is synced.
        assert_eq!(devnet.store().finalized_height(), None);
        devnet.commit().await.expect("commits");
        assert_eq!(devnet.store().finalized_height(), Some(6));
        devnet
            .produce_batch_unsynced(8, &threads)
            .await
            .expect("produces");
        devnet.commit().await.expect("commits");
        assert_eq!(devnet.store().finalized_height(), Some(14));
        assert!(events.try_recv().is_err(), "bulk blocks are not published");
        let chain = stored_chain(&devnet, 14).await;
        // The raw blocks served from the stored form, without decoding, are the decoded
        // blocks' raw form byte for byte.
        let mut transactions = 0;
        for certified in &chain {
            let block = certified.block.as_ref().expect("block");
            transactions += block.transactions().len();
            let raw = devnet
                .store()
                .raw_block_at(block.height())
                .await
                .expect("reads");
            assert_eq!(raw, block.raw_rlp(), "raw block {}", block.height());
            assert_eq!(
                Block::decode_raw_rlp(&raw.expect("stored with its body")).as_ref(),
                Ok(block)
            );
        }
        assert!(transactions > 0, "blocks with transactions");
        assert_eq!(
            StoredBlock::new(&Block::header_only(
                chain[0].block.as_ref().expect("block").header().clone()
            ))
            .raw_rlp(),
            None,
            "a block without its body has no raw form"
        );
        chain
    });
    assert_eq!(bulk, one_by_one, "the same chain byte for byte");
}
