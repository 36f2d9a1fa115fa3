//! A follower killed at any instant of a long catch-up starts again and converges on the chain.
//!
//! The chain changes its network identity at every epoch, the registry keeps three keys, and the
//! catch-up walks windows of eight epochs, so a kill can land after a window's boundaries are
//! verified but before their blocks are stored, between a batch of blocks and the keys its
//! boundaries announce, or in the middle of a batch. The deterministic runtime stops the run at
//! the chosen instant, keeps a random part of the writes that were not synced (as a crash does),
//! and a new run starts the follower on what was kept. The same holds for a kill while the
//! certificates of the heights caught up through the hash chain are filled in, and while the
//! provenance of each height is written.

use crate::follow::{executed, follow_with};
use cairn_epoch::ChainProfile;
use cairn_epoch::SchemeProvider;
use cairn_feed::{ChainReader as _, FeedState};
use cairn_follow::{Engine, EngineConfig, Upstreams, sync::catchup::CatchUpConfig};
use cairn_primitives::CertifiedBlock;
use cairn_storage::{execution::EmbeddedExecution, registry::EpochRegistry};
use cairn_tests::{DistantChain, MemoryChain, TestCommittee, rotating_chain};
use commonware_consensus::types::Epoch;
use commonware_runtime::{
    Clock as _, Runner as _, Supervisor as _,
    deterministic::{self, FaultConfig, PartialWriteMode, WriteConfig},
};
use commonware_utils::Probability;
use std::time::Duration;

const EPOCH_LENGTH: u64 = 5;
const TIP: u64 = 123;
const KEPT_EPOCHS: std::num::NonZeroUsize = commonware_utils::NZUsize!(3);

fn chain() -> (ChainProfile, Vec<CertifiedBlock>) {
    let committees: Vec<_> = (0..3)
        .map(|seed| TestCommittee::new(b"TEMPO", 90 + seed, 4))
        .collect();
    rotating_chain(&committees, TIP, EPOCH_LENGTH)
}

fn config(profile: &ChainProfile) -> EngineConfig {
    EngineConfig {
        partition_prefix: "follow-crash".into(),
        max_epochs: KEPT_EPOCHS,
        catch_up: CatchUpConfig {
            min_gap: 1,
            chunk: std::num::NonZeroU64::new(4).expect("non-zero"),
            in_flight: std::num::NonZeroUsize::new(2).expect("non-zero"),
            write_batch: 7,
            epoch_window: std::num::NonZeroU64::new(8).expect("non-zero"),
            ..CatchUpConfig::default()
        },
        ..EngineConfig::new(profile.clone())
    }
}

/// A runtime that keeps a random prefix of every write not synced when the run stops.
fn runner(seed: u64) -> deterministic::Runner {
    let faults = FaultConfig::default().write(WriteConfig {
        failure_rate: Probability::new(0, 1).expect("valid"),
        retention_rate: Probability::new(1, 2).expect("valid"),
        mode: PartialWriteMode::Prefix,
    });
    deterministic::Runner::new(
        deterministic::Config::default()
            .with_seed(seed)
            .with_storage_fault_config(faults),
    )
}

/// The chain, served by an upstream that answers each read after a millisecond, so that the
/// catch-up spans many instants.
fn upstream(
    context: &deterministic::Context,
    chain: &[CertifiedBlock],
) -> DistantChain<MemoryChain, deterministic::Context> {
    DistantChain::new(
        memory(chain),
        context.child("upstream"),
        Duration::from_millis(1),
    )
}

/// The chain in memory.
fn memory(chain: &[CertifiedBlock]) -> MemoryChain {
    let memory = MemoryChain::default();
    for certified in chain {
        memory.insert(certified.clone());
    }
    memory
}

/// How far a run goes before it is done.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// The tip executed (the catch-up done).
    Executed,
    /// Every served height with its own certificate (the fill done, in batches of 4, one in
    /// flight, so that it spans many instants).
    Filled,
}

/// Runs a follower on the runtime's storage until it has reached `goal` or `kill_after` has
/// passed; returns the simulated time it ran and whether it reached the goal. A run that is not
/// killed checks what it serves against the chain; after a fill, every stored certificate too,
/// and that blocks are explained with their own certificate and either the right source or
/// none (a kill may take the provenance records of the last second, never write wrong ones).
async fn run_to(
    context: &deterministic::Context,
    profile: &ChainProfile,
    chain: &[CertifiedBlock],
    kill_after: Option<Duration>,
    goal: Goal,
) -> (Duration, bool) {
    let started = context.current();
    let ran = || {
        context
            .current()
            .duration_since(started)
            .expect("time moves forward")
    };
    let following = async {
        let mut config = config(profile);
        if goal == Goal::Filled {
            config.certificates = cairn_follow::certificates::FillConfig {
                batch: std::num::NonZeroUsize::new(4).expect("non-zero"),
                in_flight: std::num::NonZeroUsize::new(1).expect("non-zero"),
                ..Default::default()
            };
        }
        let follower = follow_with(
            context,
            "a",
            FeedState::default(),
            upstream(context, chain),
            config,
        )
        .await;
        executed(context, &follower, TIP).await;
        if goal == Goal::Filled {
            crate::certificates::coverage_until(context, &follower, "the fill", |report| {
                report.served == TIP && report.missing() == 0
            })
            .await;
        }
        (follower, ran())
    };
    let (follower, ran) = match kill_after {
        Some(after) => {
            return tokio::select! {
                (_, ran) = following => (ran, true),
                () = context.sleep(after) => (ran(), false),
            };
        }
        None => following.await,
    };
    assert_serves_the_chain(&follower, chain).await;
    if goal == Goal::Filled {
        crate::certificates::assert_certificates_equal(&follower, &memory(chain), TIP).await;
        for height in [1, TIP / 2, TIP] {
            let cairn_feed::Explained::Block(explained) =
                follower.chain.explain(height).await.expect("explains")
            else {
                panic!("block {height} is explained");
            };
            assert!(matches!(
                explained.authentication,
                cairn_feed::explain::Authentication::Certificate { .. }
            ));
            if let Some(bytes) = explained.bytes {
                assert_eq!(bytes.source.as_deref(), Some("a"), "block {height}");
            }
        }
    }
    (ran, true)
}

/// [`run_to`] the executed tip.
async fn run_until(
    context: &deterministic::Context,
    profile: &ChainProfile,
    chain: &[CertifiedBlock],
    kill_after: Option<Duration>,
) -> (Duration, bool) {
    run_to(context, profile, chain, kill_after, Goal::Executed).await
}

/// Every block 1..=TIP is served byte for byte, and every certificate served is the chain's.
async fn assert_serves_the_chain<E: cairn_follow::engine::EngineContext>(
    follower: &cairn_follow::Engine<E>,
    chain: &[CertifiedBlock],
) {
    for certified in chain {
        let block = certified.block.as_ref().expect("block");
        let height = block.height();
        let served = follower.chain.block_at(height).await.expect("reads");
        assert_eq!(served.as_ref(), Some(block), "block {height}");
        if let Some(served) = follower.chain.certified_at(height).await.expect("reads") {
            assert_eq!(&served, certified, "certificate {height}");
        }
    }
    let tip = follower.chain.certified_at(TIP).await.expect("reads");
    assert_eq!(
        tip.as_ref(),
        chain.last(),
        "the tip is served with its certificate"
    );
}

/// How long a clean catch-up of the whole chain runs, in simulated time.
fn clean_run(profile: &ChainProfile, chain: &[CertifiedBlock]) -> Duration {
    runner(1).start(|context| async move {
        let (ran, reached) = run_until(&context, profile, chain, None).await;
        assert!(reached);
        ran
    })
}

#[test]
fn a_catch_up_killed_at_any_instant_restarts_and_converges() {
    let (profile, chain) = chain();
    let (profile, chain) = (&profile, &chain);
    let clean = clean_run(profile, chain);
    let millis = u64::try_from(clean.as_millis()).expect("short");
    assert!(
        millis > 10,
        "the catch-up spans many instants ({millis} ms)"
    );
    for kill in 1..millis {
        let after = Duration::from_millis(kill);
        let ((_, reached), checkpoint) = runner(kill).start_and_recover(|context| async move {
            run_until(&context, profile, chain, Some(after)).await
        });
        assert!(!reached, "killed at {kill} ms, before the clean run's end");
        let (_, reached) = deterministic::Runner::from(checkpoint)
            .start(|context| async move { run_until(&context, profile, chain, None).await });
        assert!(reached, "restarted after a kill at {kill} ms");
    }
}

#[test]
fn a_certificate_fill_killed_at_any_instant_restarts_and_converges() {
    let (profile, chain) = chain();
    let (profile, chain) = (&profile, &chain);
    let caught_up = clean_run(profile, chain);
    let filled = runner(1).start(|context| async move {
        let (ran, done) = run_to(&context, profile, chain, None, Goal::Filled).await;
        assert!(done);
        ran
    });
    let (from, to) = (
        u64::try_from(caught_up.as_millis()).expect("short"),
        u64::try_from(filled.as_millis()).expect("short"),
    );
    assert!(
        to > from + 10,
        "the fill spans many instants ({from} ms to {to} ms)"
    );
    // Every instant of the fill, and around the first provenance flushes (once a second).
    let instants = (from..to)
        .chain((990..1010).step_by(2))
        .chain([1_500, 2_000]);
    for kill in instants {
        let after = Duration::from_millis(kill);
        let ((_, done), checkpoint) = runner(kill).start_and_recover(|context| async move {
            run_to(&context, profile, chain, Some(after), Goal::Filled).await
        });
        if done {
            // Past the clean run's end (the flush instants): nothing was cut short.
            continue;
        }
        let (_, done) = deterministic::Runner::from(checkpoint).start(|context| async move {
            run_to(&context, profile, chain, None, Goal::Filled).await
        });
        assert!(done, "restarted after a kill at {kill} ms");
    }
}

#[test]
fn a_catch_up_killed_again_and_again_converges() {
    let (profile, chain) = chain();
    let (profile, chain) = (&profile, &chain);
    let clean = clean_run(profile, chain);
    let mut kills = 0;
    let mut checkpoint = None;
    for step in 0..20 {
        // Each run is killed a little after it starts again, before it can finish.
        let after = Duration::from_millis(3 + (step * 7) % 11);
        let runner = match checkpoint.take() {
            Some(checkpoint) => deterministic::Runner::from(checkpoint),
            None => runner(7),
        };
        let ((_, reached), recovered) = runner.start_and_recover(|context| async move {
            run_until(&context, profile, chain, Some(after)).await
        });
        checkpoint = Some(recovered);
        if reached {
            break;
        }
        kills += 1;
    }
    assert!(
        kills >= 3,
        "killed {kills} times before the clean run's {clean:?}"
    );
    let runner = deterministic::Runner::from(checkpoint.expect("ran"));
    let (_, reached) =
        runner.start(|context| async move { run_until(&context, profile, chain, None).await });
    assert!(reached);
}

#[test]
fn a_registry_left_ahead_of_the_stored_chain_is_trimmed_and_the_missing_keys_rederived() {
    let (profile, chain) = chain();
    let (profile, chain) = (&profile, &chain);
    let identity_of = |epoch: u64| {
        let boundary = epoch * EPOCH_LENGTH - 1;
        let block = chain[boundary as usize - 1].block.as_ref().expect("block");
        *cairn_epoch::boundary_outcome(&profile.epochs, block, &Default::default())
            .expect("outcome")
            .identity()
    };
    deterministic::Runner::seeded(3).start(|context| async move {
        let genesis = cairn_follow::genesis_block(profile).expect("genesis");
        let execution = EmbeddedExecution::open_in(context.child("execution"), "t", &genesis)
            .await
            .expect("opens");
        // Stored through the boundary of epoch 9 (height 49): the chain needs the keys of
        // epochs 9 and 10.
        let stored: Vec<_> = chain[..49]
            .iter()
            .map(|certified| certified.block.clone().expect("block"))
            .collect();
        execution.finalize_batch(&stored).await.expect("stored");
        // What an older catch-up left: the keys of the newest epochs of its window only.
        let registry = EpochRegistry::open(context.child("registry"), "t-epochs", KEPT_EPOCHS)
            .await
            .expect("opens");
        let ahead: Vec<_> = (14..=16).map(|epoch| (epoch, identity_of(epoch))).collect();
        registry
            .register_all(&SchemeProvider::new(b"TEMPO", KEPT_EPOCHS), &ahead)
            .await
            .expect("persisted");

        let provider = SchemeProvider::new(b"TEMPO", KEPT_EPOCHS);
        let loaded = registry
            .load_for_chain(&provider, profile, &execution, &[])
            .await
            .expect("loads");
        assert_eq!(loaded.discarded, vec![14, 15, 16]);
        assert_eq!(loaded.rederived, vec![9, 10]);
        for epoch in [9, 10] {
            assert_eq!(
                provider.registered_identity(Epoch::new(epoch)),
                Some(identity_of(epoch)),
                "epoch {epoch}"
            );
        }
        assert!(provider.registered_identity(Epoch::new(14)).is_none());
        // On disk: the keys the chain needs, nothing ahead of it.
        let persisted: Vec<_> = registry
            .entries()
            .await
            .expect("reads")
            .into_iter()
            .map(|(epoch, _)| epoch)
            .collect();
        assert_eq!(persisted, vec![9, 10]);

        // A second load finds everything in place.
        let again = SchemeProvider::new(b"TEMPO", KEPT_EPOCHS);
        let loaded = registry
            .load_for_chain(&again, profile, &execution, &[])
            .await
            .expect("loads");
        assert!(loaded.discarded.is_empty() && loaded.rederived.is_empty());
        assert_eq!(loaded.restored, 2);
    });
}

#[test]
fn a_damaged_block_on_disk_is_found_fetched_again_and_served() {
    let (profile, chain) = chain();
    let (profile, chain) = (&profile, &chain);
    let (_, checkpoint) = runner(5).start_and_recover(|context| async move {
        let (_, reached) = run_until(&context, profile, chain, None).await;
        assert!(reached);
    });
    deterministic::Runner::from(checkpoint).start(|context| async move {
        use commonware_runtime::{Blob as _, Storage as _};
        // Bytes in the middle of the blocks' value file turned to garbage.
        let partition = "follow-crash-execution-blocks-freezer-value";
        let names = context
            .scan(partition)
            .await
            .expect("the blocks are stored");
        let (blob, size) = context.open(partition, &names[0]).await.expect("opens");
        blob.write_at(size / 2, vec![0xff_u8; 64], Default::default())
            .await
            .expect("writes");
        blob.sync().await.expect("syncs");
        drop(blob);

        let board = cairn_follow::status::StatusBoard::default();
        let follower = follow_with(
            &context,
            "a",
            FeedState::default(),
            upstream(&context, chain),
            EngineConfig {
                status: board.clone(),
                ..config(profile)
            },
        )
        .await;
        // Read every block until each is served right: the damaged ones fail at first, are
        // fetched again in the background, and are then served from their repaired copy.
        let mut failed = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let mut wrong = 0;
            for certified in chain {
                let block = certified.block.as_ref().expect("block");
                match follower.chain.block_at(block.height()).await {
                    Ok(Some(served)) => assert_eq!(&served, block, "block {}", block.height()),
                    Ok(None) => panic!("block {} is stored", block.height()),
                    Err(err) => {
                        assert!(err.to_string().contains("damaged"), "{err}");
                        failed.insert(block.height());
                        wrong += 1;
                    }
                }
            }
            if wrong == 0 && !failed.is_empty() {
                break;
            }
            context.sleep(Duration::from_millis(500)).await;
        }
        assert!(!failed.is_empty(), "the garbage hit a block");
        assert_serves_the_chain(&follower, chain).await;
        context.sleep(Duration::from_millis(500)).await;
        let status = board.latest();
        assert_eq!(
            (status.damaged_blocks, status.repaired_blocks),
            (failed.len() as u64, failed.len() as u64),
            "{failed:?}"
        );
    });
}

/// Garbage over 64 bytes at `at` (a share of its length) of the first file of `partition`.
async fn damage(context: &deterministic::Context, partition: &str, at: f64) {
    use commonware_runtime::{Blob as _, Storage as _};
    let names = context.scan(partition).await.expect("stored");
    let (blob, size) = context.open(partition, &names[0]).await.expect("opens");
    blob.write_at(
        (size as f64 * at) as u64,
        vec![0xff_u8; 64],
        Default::default(),
    )
    .await
    .expect("writes");
    blob.sync().await.expect("syncs");
}

#[test]
fn a_damaged_finalization_on_disk_is_found_fetched_again_verified_and_served() {
    use cairn_follow::{damage::StoreCheck, sync::catchup::VerifyPolicy};
    let (profile, chain) = chain();
    let (profile, chain) = (&profile, &chain);
    // Every block verified by its own certificate: marshal stores every finalization.
    let every_block = |check: StoreCheck, board: &cairn_follow::status::StatusBoard| EngineConfig {
        catch_up: CatchUpConfig {
            policy: VerifyPolicy::EveryBlock,
            ..CatchUpConfig::default()
        },
        store_check: check,
        status: board.clone(),
        max_epochs: cairn_epoch::DEFAULT_MAX_EPOCHS,
        ..config(profile)
    };
    let partition = "follow-crash-finalizations-freezer-value";
    let (_, checkpoint) = runner(6).start_and_recover(|context| async move {
        // The tip's event: marshal fetches every block and finalization below it.
        let board = Default::default();
        let feed = FeedState::default();
        let follower = follow_with(
            &context,
            "a",
            feed.clone(),
            upstream(&context, chain),
            every_block(StoreCheck::default(), &board),
        )
        .await;
        feed.publish_finalized(chain.last().expect("tip").clone());
        executed(&context, &follower, TIP).await;
    });
    let certificates = |follower: &cairn_follow::Engine<deterministic::Context>| {
        let chain = follower.chain.clone();
        async move {
            let mut served = Vec::new();
            for height in 1..=TIP {
                served.push(chain.certified_at(height).await.expect("reads"));
            }
            served
        }
    };

    // Found by a read: answered as missing (never wrong), fetched again in the background,
    // verified, and then served.
    let (_, checkpoint) =
        deterministic::Runner::from(checkpoint).start_and_recover(|context| async move {
            damage(&context, partition, 0.5).await;
            let board = cairn_follow::status::StatusBoard::default();
            let follower = follow_with(
                &context,
                "a",
                FeedState::default(),
                upstream(&context, chain),
                every_block(StoreCheck::Newest(1), &board),
            )
            .await;
            assert!(follower.store_check.damaged_finalizations.is_empty());
            let first = certificates(&follower).await;
            let missing: Vec<u64> = (1..=TIP)
                .filter(|height| first[*height as usize - 1].is_none())
                .collect();
            assert!(!missing.is_empty(), "the garbage hit a finalization");
            for (served, certified) in first.iter().zip(chain) {
                if let Some(served) = served {
                    assert_eq!(served, certified);
                }
            }
            context.sleep(Duration::from_secs(3)).await;
            let again = certificates(&follower).await;
            for (served, certified) in again.iter().zip(chain) {
                assert_eq!(served.as_ref(), Some(certified));
            }
            let status = board.latest();
            assert_eq!(
                (status.damaged_certificates, status.repaired_certificates),
                (missing.len() as u64, missing.len() as u64),
                "{missing:?}"
            );
        });

    // Found by the store check at start: repaired before the follower is up.
    deterministic::Runner::from(checkpoint).start(|context| async move {
        damage(&context, partition, 0.25).await;
        let board = cairn_follow::status::StatusBoard::default();
        let follower = follow_with(
            &context,
            "a",
            FeedState::default(),
            upstream(&context, chain),
            every_block(StoreCheck::All, &board),
        )
        .await;
        let found = follower.store_check.damaged_finalizations.clone();
        assert!(!found.is_empty(), "the check found the garbage");
        assert_eq!(follower.store_check.finalizations + found.len() as u64, TIP);
        for (served, certified) in certificates(&follower).await.iter().zip(chain) {
            assert_eq!(served.as_ref(), Some(certified));
        }
        context.sleep(Duration::from_millis(500)).await;
        let status = board.latest();
        assert_eq!(
            (status.damaged_certificates, status.repaired_certificates),
            (found.len() as u64, found.len() as u64)
        );
    });
}

#[test]
fn a_finalization_served_for_a_repair_that_does_not_verify_is_not_stored() {
    use cairn_epoch::FinalizationVerifier;
    use cairn_follow::{
        damage::{RepairError, repair_finalization},
        upstream::{Sources, in_process},
    };
    use cairn_storage::open_anchors;
    use commonware_storage::archive::Identifier;
    let (profile, chain) = chain();
    let (profile, chain) = (&profile, &chain);
    deterministic::Runner::seeded(8).start(|context| async move {
        let genesis = cairn_follow::genesis_block(profile).expect("genesis");
        let execution = EmbeddedExecution::open_in(context.child("execution"), "r", &genesis)
            .await
            .expect("opens");
        let blocks: Vec<_> = chain
            .iter()
            .map(|certified| certified.block.clone().expect("block"))
            .collect();
        execution.finalize_batch(&blocks).await.expect("stored");
        let anchors = open_anchors(context.child("anchors"), "r-anchors")
            .await
            .expect("opens");
        // No key registered: each repair reads its epoch's key from the stored boundary.
        let verifier = FinalizationVerifier::new(
            profile.epochs.clone(),
            SchemeProvider::new(&profile.namespace, KEPT_EPOCHS),
        );
        let sources_serving = |served: Vec<CertifiedBlock>, label: &'static str| {
            let memory = MemoryChain::default();
            for certified in served {
                memory.insert(certified);
            }
            Sources::single(label, in_process::InProcessUpstream::new(memory))
        };
        let height = 62;
        // Height 62 served with the certificate of height 63 (the sources turn it down: it
        // does not sign the block served with it), then with the right block signed by
        // another committee (the repair turns it down: its epoch's key does not verify it).
        let mut swapped = chain.clone();
        swapped[height as usize - 1].certificate = chain[height as usize].certificate.clone();
        let mut foreign = chain.clone();
        let honest = &chain[height as usize - 1];
        foreign[height as usize - 1] = TestCommittee::new(b"TEMPO", 190, 4).certify(
            blocks[height as usize - 1].clone(),
            honest.epoch,
            honest.view,
        );
        for (served, label) in [(swapped, "swapped"), (foreign, "foreign")] {
            let sources = sources_serving(served, label);
            let mut rng = context.child("rng");
            let result = repair_finalization(
                &mut rng, height, profile, &execution, &verifier, &anchors, &sources,
            )
            .await;
            let turned_down = match label {
                "swapped" => matches!(
                    &result,
                    Err(RepairError::Unavailable(why)) if why.contains("invalid data")
                ),
                _ => matches!(result, Err(RepairError::Invalid(_))),
            };
            assert!(turned_down, "{label}: {result:?}");
            assert!(
                anchors
                    .get(Identifier::Index(height), "reading")
                    .await
                    .expect("reads")
                    .is_none(),
                "{label}: nothing stored"
            );
        }
        // The right one verifies and is stored.
        let sources = sources_serving(chain.clone(), "honest");
        let mut rng = context.child("rng");
        repair_finalization(
            &mut rng, height, profile, &execution, &verifier, &anchors, &sources,
        )
        .await
        .expect("repaired");
        let stored = anchors
            .get(Identifier::Index(height), "reading")
            .await
            .expect("reads")
            .expect("stored");
        assert_eq!(
            cairn_epoch::certified_block(&stored, blocks[height as usize - 1].clone()),
            chain[height as usize - 1]
        );
    });
}

#[test]
fn a_datadir_holding_another_block_at_a_trusted_height_refuses_to_start() {
    use cairn_follow::{
        EngineError,
        upstream::{Sources, in_process},
    };
    use cairn_storage::execution::ExecutionError;
    use commonware_runtime::Spawner as _;
    let (profile, chain) = chain();
    let (profile, chain) = (&profile, &chain);
    let (_, checkpoint) = runner(9).start_and_recover(|context| async move {
        let (_, reached) = run_until(&context, profile, chain, None).await;
        assert!(reached);
    });
    deterministic::Runner::from(checkpoint).start(|context| async move {
        let stored = chain[39].block.as_ref().expect("block").hash();
        let other = chain[40].block.as_ref().expect("block").hash();
        let mut trusting = profile.clone();
        trusting.trusted_blocks = vec![cairn_epoch::TrustedBlock {
            height: 40,
            hash: other,
        }];
        let (notifications, receiver) = tokio::sync::mpsc::channel(16);
        let (actor, requests) = in_process::init(
            "a",
            0,
            FeedState::default(),
            upstream(&context, chain),
            notifications,
        );
        context
            .child("upstream")
            .spawn(|context| actor.run(context));
        let started = Engine::init(
            context.child("a"),
            config(&trusting),
            Upstreams {
                notifications: receiver,
                sources: Sources::single("a", requests),
            },
        )
        .await;
        match started {
            Err(EngineError::Execution(ExecutionError::Untrusted {
                height,
                trusted,
                offered,
            })) => assert_eq!((height, trusted, offered), (40, other, stored)),
            Err(err) => panic!("another refusal: {err}"),
            Ok(_) => panic!("started on a datadir without the trusted block"),
        }
    });
}
