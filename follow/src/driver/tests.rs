//! The driver alone, with stand-ins for marshal and the executor (the ports it reaches them
//! through): one event from three sources is verified and handed on once, while a copy of
//! a verified block under another certificate is verified (and rejected); events waiting for
//! their epoch's key are bounded in count and bytes, keep the lowest heights, never move the
//! announced height, and are handed on once the boundary that announces their key is
//! delivered; two valid blocks at one height stop the driver, and so does a delivered block
//! that does not extend the one below it (with both sides' certificates when an upstream
//! serves them); far behind, the driver rejoins
//! through a catch-up, holding events and deliveries until it ends, then moves marshal's floor.

use crate::{
    driver::{self, Delivered, DriverError, ExecutorPort, MarshalPort},
    executor,
    sync::catchup::{CatchUpError, CatchUpReport},
    upstream::{Notification, QuarantineConfig, SourceBook, Sourced},
};
use cairn_epoch::{Finalization, FinalizationVerifier};
use cairn_primitives::{Block, CertifiedBlock, Digest, Event};
use cairn_storage::registry::EpochRegistry;
use cairn_testkit::{TestCommittee, committee_chain};
use commonware_consensus::types::Round;
use commonware_cryptography::Digested;
use commonware_runtime::{Clock, Runner, Spawner as _, Supervisor as _, deterministic};
use commonware_utils::acknowledgement::{Acknowledgement as _, Exact};
use std::{
    collections::BTreeMap,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::{mpsc, watch};

/// What the stand-in marshal was given.
#[derive(Default)]
struct MarshalLog {
    verified: Vec<u64>,
    blocks: BTreeMap<u64, Block>,
    finalizations: BTreeMap<u64, Finalization>,
    fetches: Vec<u64>,
    /// The blocks named by the floors set, in order.
    floors: Vec<Digest>,
}

#[derive(Clone, Default)]
struct StandInMarshal(Arc<Mutex<MarshalLog>>);

impl StandInMarshal {
    fn log<T>(&self, f: impl FnOnce(&mut MarshalLog) -> T) -> T {
        f(&mut self.0.lock().expect("lock"))
    }
}

impl MarshalPort for StandInMarshal {
    async fn verified_block(&self, _: Round, block: Digested<Block>) -> bool {
        let block = block.inner().clone();
        self.log(|log| {
            log.verified.push(block.height());
            log.blocks.insert(block.height(), block);
        });
        true
    }

    fn report_finalization(&self, finalization: Finalization) {
        self.log(|log| {
            let height = log
                .blocks
                .iter()
                .find(|(_, block)| block.hash() == finalization.proposal.payload)
                .map(|(height, _)| *height);
            if let Some(height) = height {
                log.finalizations.insert(height, finalization);
            }
        });
    }

    async fn finalization_at(&self, height: u64) -> Option<Finalization> {
        self.log(|log| log.finalizations.get(&height).cloned())
    }

    async fn block_at(&self, height: u64) -> Option<Block> {
        self.log(|log| log.blocks.get(&height).cloned())
    }

    fn fetch_finalized(&self, height: u64) {
        self.log(|log| log.fetches.push(height));
    }

    fn set_floor(&self, finalization: Finalization) {
        self.log(|log| log.floors.push(finalization.proposal.payload));
    }
}

/// What a stand-in rejoin returns, sent by the test.
type RejoinResult = Result<CatchUpReport, CatchUpError>;

/// A rejoin that counts its starts and ends with the result the test sends it.
fn stand_in_rejoin(
    gap: u64,
) -> (
    driver::Rejoin,
    Arc<Mutex<u32>>,
    mpsc::UnboundedSender<RejoinResult>,
) {
    let starts = Arc::new(Mutex::new(0));
    let (results, receiver) = mpsc::unbounded_channel();
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let counted = starts.clone();
    let rejoin = driver::Rejoin {
        gap,
        start: Box::new(move || {
            *counted.lock().expect("lock") += 1;
            let receiver = receiver.clone();
            Box::pin(async move {
                let mut receiver = receiver.lock().await;
                receiver
                    .recv()
                    .await
                    .unwrap_or(Err(CatchUpError::Missing(0)))
            })
        }),
    };
    (rejoin, starts, results)
}

/// Executes by acknowledging at once, recording heights and moving the executed height.
#[derive(Clone, Default)]
struct StandInExecutor(Arc<Mutex<Vec<u64>>>, Arc<watch::Sender<u64>>);

impl StandInExecutor {
    /// The heights it was given.
    fn heights(&self) -> Vec<u64> {
        self.0.lock().expect("lock").clone()
    }
}

impl ExecutorPort for StandInExecutor {
    async fn execute(
        &self,
        block: Arc<Block>,
        _: Option<Finalization>,
        ack: Exact,
    ) -> Result<(), executor::Stopped> {
        self.0.lock().expect("lock").push(block.height());
        self.1
            .send_modify(|executed| *executed = (*executed).max(block.height()));
        ack.acknowledge();
        Ok(())
    }
}

struct Harness {
    marshal: StandInMarshal,
    executor: StandInExecutor,
    sources: SourceBook,
    notifications: mpsc::Sender<Sourced>,
    delivered: mpsc::UnboundedSender<Delivered>,
    status: watch::Receiver<driver::UpstreamStatus>,
    counters: crate::status::EventCounters,
    stopped: commonware_runtime::Handle<Result<(), DriverError>>,
}

async fn harness(
    context: &deterministic::Context,
    profile: &cairn_epoch::ChainProfile,
    max_pending_events: usize,
    max_pending_bytes: usize,
) -> Harness {
    harness_rejoining(
        context,
        profile,
        max_pending_events,
        max_pending_bytes,
        None,
        None,
    )
    .await
}

async fn harness_rejoining(
    context: &deterministic::Context,
    profile: &cairn_epoch::ChainProfile,
    max_pending_events: usize,
    max_pending_bytes: usize,
    rejoin: Option<driver::Rejoin>,
    finalizations: Option<driver::FinalizationLookup>,
) -> Harness {
    let provider = profile.scheme_provider(commonware_utils::NZUsize!(16));
    let registry = EpochRegistry::open(
        context.child("registry"),
        "driver-epochs",
        commonware_utils::NZUsize!(16),
    )
    .await
    .expect("registry opens");
    let marshal = StandInMarshal::default();
    let executor = StandInExecutor::default();
    let sources = SourceBook::new(
        ["a", "b", "c"].map(String::from),
        QuarantineConfig::default(),
    );
    let executed = executor.1.subscribe();
    let counters = crate::status::EventCounters::register(&context.child("status"));
    let actor = driver::init(driver::Config {
        verifier: FinalizationVerifier::new(profile.epochs.clone(), provider),
        registry,
        marshal: marshal.clone(),
        executor: executor.clone(),
        executed,
        max_pending_events: NonZeroUsize::new(max_pending_events).expect("non-zero"),
        max_pending_bytes: NonZeroUsize::new(max_pending_bytes).expect("non-zero"),
        sources: sources.clone(),
        evidence_dir: None,
        served: None,
        status: watch::Sender::default(),
        feed: cairn_feed::FeedState::new(16),
        rejoin,
        tip: None,
        finalizations,
        counters: Some(counters.clone()),
    });
    let status = actor.status();
    let (notifications, notifications_rx) = mpsc::channel(64);
    let (delivered, delivered_rx) = mpsc::unbounded_channel();
    let stopped = context.child("driver").spawn(move |rng| async move {
        actor
            .run(rng, Vec::new(), notifications_rx, delivered_rx)
            .await
    });
    Harness {
        marshal,
        executor,
        sources,
        notifications,
        delivered,
        status,
        counters,
        stopped,
    }
}

impl Harness {
    async fn event(&self, source: usize, certified: &CertifiedBlock) {
        let event = Event::Finalized {
            block: certified.clone(),
            seen: 0,
        };
        self.notifications
            .send((source, Notification::Event(Box::new(event))))
            .await
            .expect("driver running");
    }

    fn deliver(&self, certified: &CertifiedBlock) {
        let block = certified.block.clone().expect("block");
        let digest = block.hash();
        let (ack, _waiter) = Exact::handle();
        self.delivered
            .send(Delivered {
                block: Digested::precomputed(block, digest),
                ack,
            })
            .expect("driver running");
    }
}

async fn settle(context: &deterministic::Context) {
    context.sleep(Duration::from_millis(50)).await;
}

#[test]
fn one_event_from_three_sources_is_verified_and_handed_on_once() {
    let committee = TestCommittee::new(b"TEMPO", 41, 4);
    let (profile, chain) = committee_chain(&committee, 3, 5);
    deterministic::Runner::seeded(1).start(|context| async move {
        let driver = harness(&context, &profile, 16, 1 << 20).await;
        for source in 0..3 {
            driver.event(source, &chain[0]).await;
        }
        settle(&context).await;
        assert_eq!(driver.marshal.log(|log| log.verified.clone()), vec![1]);
        assert!(
            driver
                .sources
                .health()
                .iter()
                .all(|health| health.announced_height == 1)
        );
        assert_eq!(driver.status.borrow().rejected, 0);
    });
}

#[test]
fn a_copy_of_a_verified_block_with_another_certificate_is_verified_and_rejected() {
    let committee = TestCommittee::new(b"TEMPO", 45, 4);
    let (profile, chain) = committee_chain(&committee, 3, 5);
    // Block 2 under a certificate carrying the signatures of block 1's.
    let mut forged = cairn_epoch::decode_certificate(&chain[1].certificate).expect("decodes");
    forged.certificate = cairn_epoch::decode_certificate(&chain[0].certificate)
        .expect("decodes")
        .certificate;
    let forged = CertifiedBlock {
        certificate: cairn_epoch::encode_certificate(&forged),
        ..chain[1].clone()
    };
    deterministic::Runner::seeded(5).start(|context| async move {
        let driver = harness(&context, &profile, 16, 1 << 20).await;
        driver.event(0, &chain[1]).await;
        driver.event(1, &forged).await;
        settle(&context).await;
        let health = driver.sources.health();
        assert_eq!(
            health[1].invalid, 1,
            "the forged copy is checked, not deduplicated"
        );
        assert_eq!(health[0].invalid, 0);
        assert_eq!(driver.status.borrow().rejected, 1);
        // Counted where it happened, under the check it failed.
        let check = crate::status::CheckLabel {
            check: "bad_signature".into(),
        };
        assert_eq!(driver.counters.rejected.get_or_create(&check).get(), 1);
        assert_eq!(driver.marshal.log(|log| log.verified.clone()), vec![2]);
    });
}

#[test]
fn events_waiting_for_a_key_keep_the_lowest_heights_and_follow_their_boundaries() {
    let committee = TestCommittee::new(b"TEMPO", 42, 4);
    let (profile, chain) = committee_chain(&committee, 12, 5);
    let at = |height: u64| chain[height as usize - 1].clone();
    deterministic::Runner::seeded(2).start(|context| async move {
        // At most two events kept.
        let driver = harness(&context, &profile, 2, 1 << 20).await;
        for height in [11, 7, 12] {
            driver.event(0, &at(height)).await;
        }
        settle(&context).await;
        assert!(driver.marshal.log(|log| log.verified.is_empty()));
        assert_eq!(
            driver.status.borrow().announced_height,
            0,
            "events without a key move no target"
        );
        assert_eq!(driver.sources.health()[0].announced_height, 0);
        assert!(
            driver.marshal.log(|log| log.fetches.contains(&4)),
            "the boundary of the newest epoch with a key is asked for"
        );

        // The boundary of epoch 0 registers epoch 1: height 7 is handed on, 11 still waits.
        driver.deliver(&at(4));
        settle(&context).await;
        assert_eq!(driver.marshal.log(|log| log.verified.clone()), vec![7]);
        // The boundary of epoch 1 registers epoch 2: 11 is handed on; 12 was dropped for the
        // bound, being the highest.
        driver.deliver(&at(9));
        settle(&context).await;
        assert_eq!(driver.marshal.log(|log| log.verified.clone()), vec![7, 11]);
        assert_eq!(*driver.executor.0.lock().expect("lock"), vec![4, 9]);
    });
}

#[test]
fn events_waiting_for_a_key_are_bounded_in_bytes() {
    let committee = TestCommittee::new(b"TEMPO", 43, 4);
    let (profile, chain) = committee_chain(&committee, 12, 5);
    let at = |height: u64| chain[height as usize - 1].clone();
    let one = {
        let certified = at(7);
        certified.certificate.len()
            + commonware_codec::EncodeSize::encode_size(certified.block.as_ref().expect("block"))
    };
    deterministic::Runner::seeded(3).start(|context| async move {
        // Room for one event by bytes, many by count.
        let driver = harness(&context, &profile, 64, one + one / 2).await;
        for height in [8, 7, 6] {
            driver.event(0, &at(height)).await;
        }
        settle(&context).await;
        driver.deliver(&at(4));
        settle(&context).await;
        assert_eq!(
            driver.marshal.log(|log| log.verified.clone()),
            vec![6],
            "only the lowest event fitted"
        );
    });
}

#[test]
fn two_valid_blocks_at_one_height_stop_the_driver() {
    let committee = TestCommittee::new(b"TEMPO", 44, 4);
    let (profile, chain) = committee_chain(&committee, 3, 5);
    let block = chain[1].block.clone().expect("block");
    let (mut header, body) = block.into_parts();
    header.timestamp_millis_part = (header.timestamp_millis_part + 1) % 1000;
    let other = committee.certify(Block::new(header, body).expect("body unchanged"), 0, 2);
    deterministic::Runner::seeded(4).start(|context| async move {
        let driver = harness(&context, &profile, 16, 1 << 20).await;
        driver.event(0, &chain[1]).await;
        driver.event(2, &other).await;
        let (height, first, second) = conflict(driver.stopped.await.expect("driver task"));
        assert_eq!((height, first.as_str(), second.as_str()), (2, "a", "c"));
        assert_eq!(driver.marshal.log(|log| log.verified.clone()), vec![2]);
    });
}

/// The height and the two sources of the conflict the driver stopped with.
fn conflict(result: Result<(), DriverError>) -> (u64, String, String) {
    match result {
        Err(DriverError::Conflict {
            height,
            first,
            second,
            ..
        }) => (height, first, second),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// A chain parting from `chain` at its first block: another block 1 and a block 2 on top of
/// it, both certified by `committee`.
fn fork_of(
    committee: &TestCommittee,
    chain: &[CertifiedBlock],
) -> (CertifiedBlock, CertifiedBlock) {
    let (mut header, body) = chain[0].block.clone().expect("block").into_parts();
    header.timestamp_millis_part = (header.timestamp_millis_part + 1) % 1000;
    let one = Block::new(header, body).expect("body unchanged");
    let (mut header, body) = chain[1].block.clone().expect("block").into_parts();
    header.inner.parent_hash = one.hash().0;
    let two = Block::new(header, body).expect("body unchanged");
    (committee.certify(one, 0, 1), committee.certify(two, 0, 2))
}

/// A lookup answering every height with `answers`.
fn lookup(answers: Vec<(String, CertifiedBlock)>) -> driver::FinalizationLookup {
    Arc::new(move |height| {
        let answers: Vec<_> = answers
            .iter()
            .filter(|(_, certified)| certified.block.as_ref().map(Block::height) == Some(height))
            .cloned()
            .collect();
        Box::pin(async move { answers })
    })
}

/// Delivers block 1 of `chain` and then `two` (a block 2 on another block 1) to a driver that
/// finds certificates with `lookup`; returns the conflict it stopped with and the heights it
/// handed to the executor.
fn deliver_a_fork(
    seed: u64,
    profile: cairn_epoch::ChainProfile,
    chain: Vec<CertifiedBlock>,
    two: CertifiedBlock,
    lookup: Option<driver::FinalizationLookup>,
) -> ((u64, String, String), Vec<u64>) {
    deterministic::Runner::seeded(seed).start(|context| async move {
        let driver = harness_rejoining(&context, &profile, 16, 1 << 20, None, lookup).await;
        driver.deliver(&chain[0]);
        driver.deliver(&two);
        let conflict = conflict(driver.stopped.await.expect("driver task"));
        (conflict, driver.executor.heights())
    })
}

#[test]
fn a_delivered_block_not_extending_the_one_below_stops_the_driver_with_both_certificates() {
    let committee = TestCommittee::new(b"TEMPO", 45, 4);
    let (profile, chain) = committee_chain(&committee, 3, 5);
    let (one, two) = fork_of(&committee, &chain);
    // Each side's upstream serves its own block 1; one more sends a forgery of it.
    let mut forged = one.clone();
    forged.certificate = chain[1].certificate.clone();
    let answers = vec![
        ("a".to_string(), forged),
        ("b".to_string(), one),
        ("c".to_string(), chain[0].clone()),
    ];
    let ((height, first, second), executed) =
        deliver_a_fork(5, profile, chain, two, Some(lookup(answers)));
    assert_eq!((height, first.as_str(), second.as_str()), (1, "c", "b"));
    assert_eq!(executed, vec![1], "block 2 never executed");
}

#[test]
fn a_fork_no_upstream_serves_certificates_for_still_stops_the_driver() {
    let committee = TestCommittee::new(b"TEMPO", 46, 4);
    let (profile, chain) = committee_chain(&committee, 3, 5);
    let (_, two) = fork_of(&committee, &chain);
    let ((height, first, second), executed) = deliver_a_fork(6, profile, chain, two, None);
    assert_eq!(height, 1);
    assert!(first.starts_with("this node's store"), "{first}");
    assert!(second.starts_with("block 2 naming"), "{second}");
    assert_eq!(executed, vec![1], "block 2 never executed");
}

/// The epoch registry keeps the newest epochs only, but the identity history it keeps with them
/// survives their pruning and a restart: every change, with the boundary that announced it.
#[test]
fn the_identity_history_outlives_pruned_epochs_and_restarts() {
    use commonware_cryptography::bls12381::primitives::{ops::keypair, variant::MinSig};
    use rand::{SeedableRng as _, rngs::StdRng};
    let identity = |seed| keypair::<_, MinSig>(&mut StdRng::seed_from_u64(seed)).1;
    let (first, second, third) = (identity(1), identity(2), identity(3));
    let epochs = cairn_epoch::EpochStrategy::new(10).expect("epoch length");
    let (changes, recovered) = deterministic::Runner::seeded(3).start_and_recover(|context| {
        let epochs = epochs.clone();
        async move {
            let registry = EpochRegistry::open(
                context.child("registry"),
                "history-epochs",
                commonware_utils::NZUsize!(2),
            )
            .await
            .expect("registry opens");
            let provider = cairn_epoch::SchemeProvider::new(b"TEST", commonware_utils::NZUsize!(2));
            for (epoch, identity) in [(0, first), (1, first), (2, second)] {
                registry
                    .register(&provider, epoch, identity)
                    .await
                    .expect("registers");
            }
            registry
                .register_all(&provider, &[(3, second), (4, third), (5, third)])
                .await
                .expect("registers");
            registry.history().changes(&epochs)
        }
    });
    let summary = |changes: &[cairn_storage::registry::IdentityChange]| -> Vec<(u64, Option<u64>)> {
        changes
            .iter()
            .map(|change| (change.epoch, change.boundary))
            .collect()
    };
    assert_eq!(
        summary(&changes),
        vec![(0, None), (2, Some(19)), (4, Some(39))]
    );
    deterministic::Runner::from(recovered).start(|context| async move {
        let registry = EpochRegistry::open(
            context.child("registry"),
            "history-epochs",
            commonware_utils::NZUsize!(2),
        )
        .await
        .expect("registry reopens");
        // Only the newest two epochs are kept ...
        let kept: Vec<u64> = registry
            .entries()
            .await
            .expect("entries read")
            .iter()
            .map(|(epoch, _)| *epoch)
            .collect();
        assert_eq!(kept, vec![4, 5]);
        // ... and every change is still known, identities included.
        let reopened = registry.history().changes(&epochs);
        assert_eq!(reopened, changes);
        assert_eq!(registry.history().rotations(), 2);
    });
}

/// A stored identity history that does not decode (a damaged datadir) is refused with a typed
/// error when the registry opens, never a panic; one that decodes but names the last possible
/// epoch opens without a panic.
#[test]
fn a_damaged_identity_history_is_refused_when_the_registry_opens() {
    use commonware_codec::Encode as _;
    use commonware_cryptography::bls12381::primitives::{ops::keypair, variant::MinSig};
    use commonware_storage::metadata::{self, Metadata};
    use commonware_utils::sequence::U64;
    use rand::{SeedableRng as _, rngs::StdRng};
    let identity = keypair::<_, MinSig>(&mut StdRng::seed_from_u64(9)).1;
    let truncated = {
        // One change whose identity is cut short.
        let mut bytes = vec![(u64::MAX, identity)].encode().to_vec();
        bytes.truncate(40);
        bytes
    };
    let last_epoch = vec![(u64::MAX, identity)].encode().to_vec();
    for (index, value) in [vec![0xff; 10], truncated, last_epoch]
        .into_iter()
        .enumerate()
    {
        let refused = index < 2;
        deterministic::Runner::seeded(index as u64).start(|context| async move {
            let mut store: Metadata<_, U64, Vec<u8>> = Metadata::init(
                context.child("raw"),
                metadata::Config {
                    partition: "damaged-epochs".into(),
                    codec_config: ((..=1024).into(), ()),
                },
            )
            .await
            .expect("metadata opens");
            store.put(U64::new(u64::MAX), value);
            let store = store.sync().await.expect("synced");
            drop(store);
            let opened = EpochRegistry::open(
                context.child("registry"),
                "damaged-epochs",
                commonware_utils::NZUsize!(4),
            )
            .await;
            match opened {
                Err(cairn_storage::registry::RegistryError::Corrupt { error, .. }) if refused => {
                    assert!(error.contains("identity history"), "{error}");
                }
                Ok(registry) if !refused => {
                    let epochs = cairn_epoch::EpochStrategy::new(10).expect("epoch length");
                    let changes = registry.history().changes(&epochs);
                    assert_eq!(changes.len(), 1);
                    assert_eq!(changes[0].epoch, u64::MAX);
                    assert!(registry.entries().await.expect("entries").is_empty());
                }
                Err(other) => panic!("case {index}: {other}"),
                Ok(_) => panic!("case {index}: a damaged history was accepted"),
            }
        });
    }
}

#[test]
fn far_behind_the_driver_rejoins_holding_events_and_deliveries_then_moves_marshal_floor() {
    let committee = TestCommittee::new(b"TEMPO", 46, 4);
    let (profile, chain) = committee_chain(&committee, 12, 5);
    let at = |height: u64| chain[height as usize - 1].clone();
    let finalization =
        |height: u64| cairn_epoch::decode_certificate(&at(height).certificate).expect("decodes");
    let hash = |height: u64| at(height).block.expect("block").hash();
    deterministic::Runner::seeded(6).start(|context| async move {
        let (rejoin, starts, results) = stand_in_rejoin(3);
        let driver = harness_rejoining(&context, &profile, 16, 1 << 20, Some(rejoin), None).await;
        let starts = || *starts.lock().expect("lock");
        let verified = || driver.marshal.log(|log| log.verified.clone());
        let executed = || driver.executor.0.lock().expect("lock").clone();

        // Less than the gap above the executed height (0): handed to marshal.
        driver.event(0, &at(1)).await;
        settle(&context).await;
        assert_eq!((verified(), starts()), (vec![1], 0));

        // The gap: the driver rejoins instead of handing the event to marshal.
        driver.event(0, &at(3)).await;
        settle(&context).await;
        assert_eq!((verified(), starts()), (vec![1], 1));

        // While it runs, events and marshal's deliveries wait, and no second rejoin starts.
        driver.event(1, &at(2)).await;
        driver.deliver(&at(1));
        settle(&context).await;
        assert_eq!((verified(), executed(), starts()), (vec![1], vec![], 1));

        // It stored up to 3: marshal's floor moves there, the held delivery goes on (the
        // executor ignores what is stored), and the held events at or below 3 are dropped.
        results
            .send(Ok(CatchUpReport {
                from: 0,
                to: 3,
                certificates: 1,
                floor: Some(finalization(3)),
            }))
            .expect("rejoin waiting");
        settle(&context).await;
        assert_eq!(driver.marshal.log(|log| log.floors.clone()), vec![hash(3)]);
        assert_eq!(driver.counters.rejoins.get(), 1, "counted as it happened");
        assert_eq!((verified(), executed()), (vec![1], vec![1]));

        // Within the gap of the new tip: handed to marshal.
        driver.event(0, &at(4)).await;
        settle(&context).await;
        assert_eq!((verified(), starts()), (vec![1, 4], 1));

        // An event of an epoch without a key, the gap above the tip: another rejoin, which
        // fails; the event waits for its boundary, and marshal is asked for it.
        driver.event(0, &at(8)).await;
        settle(&context).await;
        assert_eq!(starts(), 2);
        results
            .send(Err(CatchUpError::Missing(5)))
            .expect("rejoin waiting");
        settle(&context).await;
        assert_eq!(driver.marshal.log(|log| log.floors.len()), 1);
        assert!(driver.marshal.log(|log| log.fetches.contains(&4)));
        // The same height again does not start another; a higher one does.
        driver.event(1, &at(8)).await;
        settle(&context).await;
        assert_eq!(starts(), 2);
        driver.event(0, &at(9)).await;
        settle(&context).await;
        assert_eq!(starts(), 3);
    });
}
