//! Several upstreams. The request side against scripted sources: fetches spread over the
//! healthy sources and move on to the next when one lacks the data or fails; a source that
//! answers with a wrong block or a certificate that does not verify is quarantined (longer on
//! each offence) and not asked while quarantined; one that merely lacks data is never punished.
//! The follower under the deterministic runtime with two in-process upstreams over a chain
//! certified by one committee: a source sending bad events is quarantined and its later events
//! ignored while the honest source is followed; two valid certificates for different blocks at
//! one height stop the follower with an evidence file whose certificates both verify.

use crate::follow::executed;
use cairn_epoch::{ChainProfile, FinalizationVerifier};
use cairn_feed::{ChainReader, FeedState};
use cairn_follow::{
    Engine, EngineConfig, EngineError, Upstreams,
    driver::{DriverError, Evidence},
    engine::EngineContext,
    upstream::{
        CONDUCT_WINDOW, QuarantineConfig, STALL_AFTER, Sources, UpstreamError, UpstreamRequests,
        in_process,
    },
};
use cairn_primitives::{Block, CertifiedBlock, Digest};
use cairn_storage::execution::ExecutionProvider as _;
use cairn_tests::{MemoryChain, TestCommittee, committee_chain};
use commonware_runtime::{Clock, Runner, deterministic};
use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::sync::mpsc;

const NAMESPACE: &[u8] = b"TEMPO";

/// How a scripted source answers.
#[derive(Clone)]
enum Behaviour {
    Honest,
    Lacking,
    Failing,
    /// Answers every block request with this block.
    WrongBlock(Box<Block>),
    /// Answers a finalization request for height h with entry h - 1 (certified by strangers).
    WrongFinalization(Vec<CertifiedBlock>),
    /// Answers with more than the response size limit.
    Oversized,
}

#[derive(Clone)]
struct Scripted {
    chain: MemoryChain,
    behaviour: Behaviour,
    calls: Arc<AtomicUsize>,
}

impl Scripted {
    fn new(chain: &MemoryChain, behaviour: Behaviour) -> Self {
        Self {
            chain: chain.clone(),
            behaviour,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl UpstreamRequests for Scripted {
    async fn get_finalization(&self, height: u64) -> Result<Option<CertifiedBlock>, UpstreamError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match &self.behaviour {
            Behaviour::Honest | Behaviour::WrongBlock(_) => {
                Ok(self.chain.certified_at(height).await.expect("reads"))
            }
            Behaviour::Lacking => Ok(None),
            Behaviour::Failing => Err(UpstreamError::Timeout),
            Behaviour::WrongFinalization(forged) => Ok(forged.get(height as usize - 1).cloned()),
            Behaviour::Oversized => {
                Err(UpstreamError::Oversized("consensus_getFinalization".into()))
            }
        }
    }

    async fn get_block(&self, digest: Digest) -> Result<Option<Block>, UpstreamError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match &self.behaviour {
            Behaviour::Honest | Behaviour::WrongFinalization(_) => {
                Ok(self.chain.block_by_hash(digest).await.expect("reads"))
            }
            Behaviour::Lacking => Ok(None),
            Behaviour::Failing => Err(UpstreamError::Timeout),
            Behaviour::WrongBlock(block) => Ok(Some(block.as_ref().clone())),
            Behaviour::Oversized => Err(UpstreamError::Oversized("eth_getBlockByHash".into())),
        }
    }

    async fn get_latest(&self) -> Result<Option<CertifiedBlock>, UpstreamError> {
        match self.chain.finalized_height() {
            Some(height) => self.get_finalization(height).await,
            None => Ok(None),
        }
    }

    async fn get_blocks(&self, first: u64, last: u64) -> Result<Vec<Block>, UpstreamError> {
        let mut blocks = Vec::new();
        for height in first..=last {
            let Some(block) = self.chain.block_at(height).await.expect("reads") else {
                break;
            };
            match self.get_block(block.hash()).await? {
                Some(block) => blocks.push(block),
                None => break,
            }
        }
        Ok(blocks)
    }
}

fn certified_chain(committee: &TestCommittee, count: u64) -> (ChainProfile, Vec<CertifiedBlock>) {
    committee_chain(committee, count, 1_000)
}

/// The same block at the same height, with another timestamp: another hash, same parent.
fn sibling(certified: &CertifiedBlock, committee: &TestCommittee) -> CertifiedBlock {
    let block = certified.block.clone().expect("carries its block");
    let (mut header, body) = block.into_parts();
    header.inner.timestamp += 1;
    let block = Block::new(header, body).expect("body unchanged");
    let view = block.height();
    committee.certify(block, 0, view)
}

fn fast_quarantine() -> QuarantineConfig {
    QuarantineConfig {
        base: Duration::from_millis(200),
        max: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn fetches_spread_move_on_and_quarantine_only_sources_that_lie() {
    let committee = TestCommittee::new(NAMESPACE, 21, 4);
    let (profile, certified) = certified_chain(&committee, 6);
    let honest = MemoryChain::default();
    for block in &certified {
        honest.insert(block.clone());
    }
    let blocks: Vec<Block> = certified
        .iter()
        .map(|c| c.block.clone().expect("block"))
        .collect();
    let stranger = TestCommittee::new(NAMESPACE, 99, 4);
    let forged = blocks
        .iter()
        .map(|block| stranger.certify(block.clone(), 0, block.height()))
        .collect();

    let a = Scripted::new(&honest, Behaviour::Honest);
    let b = Scripted::new(&honest, Behaviour::Honest);
    let lacking = Scripted::new(&honest, Behaviour::Lacking);
    let failing = Scripted::new(&honest, Behaviour::Failing);
    let wrong_block = Scripted::new(&honest, Behaviour::WrongBlock(Box::new(blocks[0].clone())));
    let forger = Scripted::new(&honest, Behaviour::WrongFinalization(forged));
    let oversized = Scripted::new(&honest, Behaviour::Oversized);
    let verifier = FinalizationVerifier::new(
        profile.epochs.clone(),
        profile.scheme_provider(commonware_utils::NZUsize!(8)),
    );
    let sources = Sources::new(
        vec![
            ("a".into(), a.clone()),
            ("b".into(), b.clone()),
            ("lacking".into(), lacking.clone()),
            ("failing".into(), failing.clone()),
            ("wrong-block".into(), wrong_block.clone()),
            ("forger".into(), forger.clone()),
            ("oversized".into(), oversized.clone()),
        ],
        fast_quarantine(),
    )
    .with_verifier(verifier);
    let book = sources.book().clone();
    for source in 0..7 {
        book.set_connected(source, true);
        book.announced(source, 6);
    }

    // Every request is answered with the right data, whichever sources are asked first.
    for round in 0..12 {
        let block = &blocks[round % 6];
        assert_eq!(
            sources.get_block(block.hash()).await,
            Ok(Some(block.clone()))
        );
        let height = (round % 6) as u64 + 1;
        assert_eq!(
            sources.get_finalization(height).await,
            Ok(Some(certified[height as usize - 1].clone()))
        );
    }
    let health = book.health();
    // Spread: both honest sources served.
    assert!(health[0].served > 0 && health[1].served > 0, "{health:?}");
    // Lacking and failing are recorded, never quarantined.
    assert!(health[2].missing > 0, "{:?}", health[2]);
    assert_eq!(health[2].invalid, 0);
    assert!(health[2].quarantined_for.is_none());
    assert!(health[3].timed_out > 0, "{:?}", health[3]);
    assert!(health[3].quarantined_for.is_none());
    // The three liars are quarantined after their first offence, and not asked again while it
    // lasts.
    for liar in [4, 5, 6] {
        assert_eq!(health[liar].invalid, 1, "{:?}", health[liar]);
        assert!(health[liar].quarantined_for.is_some(), "{:?}", health[liar]);
    }
    assert!(
        health[4]
            .last_invalid
            .as_deref()
            .is_some_and(|what| what.contains("for requested hash")),
        "{:?}",
        health[4]
    );
    assert!(
        health[5]
            .last_invalid
            .as_deref()
            .is_some_and(|what| what.contains("bad signature")),
        "{:?}",
        health[5]
    );
    assert!(
        health[6]
            .last_invalid
            .as_deref()
            .is_some_and(|what| what.contains("over the size limit")),
        "{:?}",
        health[6]
    );
    let (wrong_calls, forger_calls, oversized_calls) =
        (wrong_block.calls(), forger.calls(), oversized.calls());
    for _ in 0..4 {
        sources.get_block(blocks[1].hash()).await.expect("served");
        sources.get_finalization(2).await.expect("served");
    }
    assert_eq!(wrong_block.calls(), wrong_calls, "not asked in quarantine");
    assert_eq!(forger.calls(), forger_calls, "not asked in quarantine");
    assert_eq!(
        oversized.calls(),
        oversized_calls,
        "not asked in quarantine"
    );
    assert!(book.is_quarantined(4) && book.is_quarantined(5) && book.is_quarantined(6));
    assert!(!(0..4).any(|source| book.is_quarantined(source)));

    // After the quarantine the liar is asked again; a second offence doubles it.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!book.is_quarantined(4));
    for height in 1..=6u64 {
        sources
            .get_block(blocks[height as usize - 1].hash())
            .await
            .expect("served");
    }
    assert!(
        wrong_block.calls() > wrong_calls,
        "asked again after the quarantine"
    );
    let health = book.health();
    assert_eq!(health[4].invalid, 2);
    assert!(
        health[4].quarantined_for.expect("quarantined again") > Duration::from_millis(250),
        "a second offence quarantines for twice as long: {:?}",
        health[4].quarantined_for
    );

    // When every source lacks a block the answer is "missing", not a failure.
    let unknown = Digest::from([7u8; 32]);
    assert_eq!(sources.get_block(unknown).await, Ok(None));
    // A lone source that lies is recorded but not quarantined: there is nothing to fall back on.
    // The answer says what was invalid.
    let alone = Sources::new(
        vec![("alone".into(), wrong_block.clone())],
        fast_quarantine(),
    );
    alone.book().set_connected(0, true);
    assert!(
        matches!(
            alone.get_block(blocks[3].hash()).await,
            Err(UpstreamError::Invalid(what)) if what.contains("for requested hash")
        ),
        "the lie is named"
    );
    assert_eq!(alone.book().health()[0].invalid, 1);
    assert!(!alone.book().is_quarantined(0));
}

#[tokio::test]
async fn stalling_flapping_and_skipping_sources_are_observed_asked_last_and_never_quarantined() {
    let committee = TestCommittee::new(NAMESPACE, 22, 4);
    let (_, certified) = certified_chain(&committee, 4);
    let honest = MemoryChain::default();
    for block in &certified {
        honest.insert(block.clone());
    }
    let now = Arc::new(std::sync::Mutex::new(std::time::SystemTime::UNIX_EPOCH));
    let clock = {
        let now = now.clone();
        Arc::new(move || *now.lock().expect("clock"))
    };
    let advance = |by: Duration| *now.lock().expect("clock") += by;
    let names = ["steady", "flapping", "stalled", "skipping"];
    let scripted: Vec<Scripted> = names
        .iter()
        .map(|_| Scripted::new(&honest, Behaviour::Honest))
        .collect();
    let sources = Sources::new(
        names
            .iter()
            .zip(&scripted)
            .map(|(name, source)| (name.to_string(), source.clone()))
            .collect(),
        fast_quarantine(),
    )
    .with_clock(clock);
    let book = sources.book().clone();
    for source in 0..4 {
        book.set_connected(source, true);
    }
    for height in 1..=4 {
        for source in [0, 1, 3] {
            book.sequenced(source, height);
            book.announced(source, height);
        }
        advance(Duration::from_millis(100));
    }
    // Source 2 announced height 1, then nothing; source 3 jumps from 4 to 9.
    book.sequenced(2, 1);
    book.announced(2, 1);
    for height in [9, 10] {
        for source in [0, 1, 3] {
            if source != 3 {
                for skipped in 5..height {
                    book.sequenced(source, skipped);
                }
            }
            book.sequenced(source, height);
            book.announced(source, height);
        }
    }
    // Source 1 loses its connection three times within the window.
    for _ in 0..3 {
        book.set_connected(1, false);
        advance(Duration::from_millis(500));
        book.set_connected(1, true);
    }
    // A disconnect reported twice is one disconnect.
    book.set_connected(2, false);
    book.set_connected(2, false);
    book.set_connected(2, true);
    advance(STALL_AFTER);

    let health = book.health();
    assert!(!health[0].misbehaving(), "{:?}", health[0]);
    assert_eq!(
        (health[1].disconnects, health[1].recent_disconnects),
        (3, 3)
    );
    assert!(health[1].flapping(), "{:?}", health[1]);
    assert_eq!(health[2].disconnects, 1);
    assert!(!health[2].flapping());
    assert!(
        health[2]
            .stalled_for
            .is_some_and(|stalled| stalled >= STALL_AFTER),
        "{:?}",
        health[2]
    );
    assert_eq!(
        health[3].recent_skipped, 4,
        "heights 5 to 8: {:?}",
        health[3]
    );
    for source in [0, 1, 3] {
        assert!(health[source].stalled_for.is_none(), "{:?}", health[source]);
    }
    assert!(
        health
            .iter()
            .all(|source| source.quarantined_for.is_none() && source.invalid == 0)
    );

    // The well-behaved source is asked first for everything.
    for round in 0..8 {
        let block = certified[round % 4].block.clone().expect("block");
        assert_eq!(sources.get_block(block.hash()).await, Ok(Some(block)));
    }
    assert_eq!(scripted[0].calls(), 8);
    assert!(scripted[1..].iter().all(|source| source.calls() == 0));

    // Misconduct is forgotten after the window; a stalled source that announces again is
    // no longer stalled.
    book.sequenced(2, 10);
    book.announced(2, 10);
    advance(CONDUCT_WINDOW);
    let health = book.health();
    assert!(
        health.iter().all(|source| !source.misbehaving()),
        "{health:?}"
    );
}

/// Starts a follower of `upstreams` (name, feed, chain), writing evidence to `evidence`.
async fn follow_sources<E: EngineContext>(
    context: &E,
    profile: &ChainProfile,
    upstreams: Vec<(&'static str, FeedState, MemoryChain)>,
    evidence: &Path,
) -> Engine<E> {
    let (notifications, receiver) = mpsc::channel(256);
    let mut requests = Vec::new();
    for (source, (name, feed, chain)) in upstreams.into_iter().enumerate() {
        let (actor, upstream) = in_process::init(name, source, feed, chain, notifications.clone());
        context
            .child("upstream")
            .spawn(|context| actor.run(context));
        requests.push((name.to_string(), upstream));
    }
    let config = EngineConfig {
        partition_prefix: "sources".into(),
        evidence_dir: Some(evidence.to_path_buf()),
        ..EngineConfig::new(profile.clone())
    };
    Engine::init(
        context.child("follower"),
        config,
        Upstreams {
            notifications: receiver,
            sources: Sources::new(requests, QuarantineConfig::default()),
        },
    )
    .await
    .expect("the follower starts")
}

#[test]
fn a_source_sending_bad_events_is_quarantined_and_the_honest_one_followed() {
    let committee = TestCommittee::new(NAMESPACE, 22, 4);
    let (profile, certified) = certified_chain(&committee, 8);
    let dir = tempfile::tempdir().expect("temp dir");
    let evidence = dir.path().to_path_buf();
    deterministic::Runner::seeded(5).start(|context| async move {
        let (honest_feed, honest_chain) = (FeedState::default(), MemoryChain::default());
        let (liar_feed, liar_chain) = (FeedState::default(), MemoryChain::default());
        for block in &certified[..4] {
            honest_chain.insert(block.clone());
            liar_chain.insert(block.clone());
        }
        let follower = follow_sources(
            &context,
            &profile,
            vec![
                ("honest", honest_feed.clone(), honest_chain.clone()),
                ("liar", liar_feed.clone(), liar_chain.clone()),
            ],
            &evidence,
        )
        .await;
        // Both announce block 4; the follower catches up once, from either.
        honest_feed.publish_finalized(certified[3].clone());
        liar_feed.publish_finalized(certified[3].clone());
        executed(&context, &follower, 4).await;

        // The liar sends block 5 with a certificate from another committee.
        let stranger = TestCommittee::new(NAMESPACE, 98, 4);
        let block = certified[4].block.clone().expect("block");
        liar_feed.publish_finalized(stranger.certify(block.clone(), 0, 5));
        for _ in 0..1_000 {
            if follower.sources.is_quarantined(1) {
                break;
            }
            context.sleep(Duration::from_millis(10)).await;
        }
        let health = follower.sources.health();
        assert!(health[1].quarantined_for.is_some(), "{:?}", health[1]);
        assert_eq!(health[1].invalid, 1);
        // Nothing of it in the stores themselves (not only below the served height).
        assert!(
            follower
                .chain
                .execution()
                .block_by_hash(block.hash())
                .await
                .expect("reads")
                .is_none(),
            "nothing in the execution store from the bad event"
        );
        assert!(
            follower
                .chain
                .marshal()
                .get_block(commonware_consensus::marshal::Identifier::Digest(
                    block.hash()
                ))
                .await
                .is_none(),
            "nothing in marshal's archives from the bad event"
        );

        // While quarantined, even its valid events are ignored: block 6 from the liar alone is
        // not taken.
        liar_chain.insert(certified[4].clone());
        liar_chain.insert(certified[5].clone());
        liar_feed.publish_finalized(certified[5].clone());
        context.sleep(Duration::from_secs(1)).await;
        assert_eq!(
            *follower.executed.borrow(),
            4,
            "a quarantined source moves nothing"
        );

        // An event in an epoch without a key yet (a stranger's, far ahead) is kept, but moves
        // neither the follower's target nor the source's announced height.
        let far = cairn_tests::test_block(5_000, 5, 5_000, Vec::new());
        honest_feed.publish_finalized(stranger.certify(far, 5, 5_000));
        context.sleep(Duration::from_millis(200)).await;
        assert_eq!(follower.sources.health()[0].announced_height, 4);
        assert_eq!(follower.upstream.borrow().announced_height, 4);

        // The honest source carries the follower on.
        for block in &certified[4..8] {
            honest_chain.insert(block.clone());
            honest_feed.publish_finalized(block.clone());
        }
        executed(&context, &follower, 8).await;
        for height in 1..=8 {
            assert_eq!(
                follower.chain.certified_at(height).await.expect("reads"),
                Some(certified[height as usize - 1].clone()),
                "height {height}"
            );
        }
        let health = follower.sources.health();
        assert!(health[0].quarantined_for.is_none(), "{:?}", health[0]);
        assert_eq!(health[0].invalid, 0);
        assert_eq!(follower.upstream.borrow().rejected, 1);
    });
}

/// Source `a` serves a chain of six blocks and announces block 5; source `b` announces another
/// block at `fork`, certified by the same committee. Returns how the follower stopped and the
/// evidence directory.
fn run_conflict(fork: u64, seed: u64) -> (EngineError, tempfile::TempDir, ChainProfile) {
    let committee = TestCommittee::new(NAMESPACE, 23, 4);
    let (profile, certified) = certified_chain(&committee, 6);
    let forked = sibling(&certified[fork as usize - 1], &committee);
    let dir = tempfile::tempdir().expect("temp dir");
    let evidence_dir = dir.path().to_path_buf();
    let follower_profile = profile.clone();
    let result = deterministic::Runner::seeded(seed).start(|context| async move {
        let (a_feed, a_chain) = (FeedState::default(), MemoryChain::default());
        let (b_feed, b_chain) = (FeedState::default(), MemoryChain::default());
        for block in &certified[..5] {
            a_chain.insert(block.clone());
        }
        for block in &certified[..fork as usize - 1] {
            b_chain.insert(block.clone());
        }
        b_chain.insert(forked.clone());
        let follower = follow_sources(
            &context,
            &follower_profile,
            vec![
                ("a", a_feed.clone(), a_chain.clone()),
                ("b", b_feed.clone(), b_chain.clone()),
            ],
            &evidence_dir,
        )
        .await;
        a_feed.publish_finalized(certified[4].clone());
        executed(&context, &follower, 5).await;
        b_feed.publish_finalized(forked.clone());
        let stopped = follower.run();
        let timeout = context.sleep(Duration::from_secs(30));
        tokio::select! {
            result = stopped => result,
            () = timeout => panic!("the follower did not stop on conflicting certificates"),
        }
    });
    let err = result.expect_err("the follower stops");
    (err, dir, profile)
}

/// Checks the conflict error and the evidence file, and returns the first side's source.
fn check_conflict(err: &EngineError, dir: &Path, profile: &ChainProfile, fork: u64) -> String {
    let EngineError::Driver(DriverError::Conflict {
        height,
        first,
        second,
        evidence,
        ..
    }) = err
    else {
        panic!("expected a conflict, got {err}");
    };
    assert_eq!(*height, fork);
    assert_eq!(second, "b");
    assert!(
        evidence.contains(&format!("evidence-{fork}.json")),
        "{evidence}"
    );
    assert!(err.to_string().contains("safety fault"), "{err}");

    let file =
        std::fs::read_to_string(dir.join(format!("evidence-{fork}.json"))).expect("evidence file");
    let evidence: Evidence = serde_json::from_str(&file).expect("evidence parses");
    assert_eq!(evidence.height, fork);
    assert_eq!(&evidence.first.source, first);
    assert_ne!(
        evidence.first.certified.block.as_ref().map(Block::hash),
        evidence.second.certified.block.as_ref().map(Block::hash),
        "two different blocks"
    );
    let verifier = FinalizationVerifier::new(
        profile.epochs.clone(),
        profile.scheme_provider(commonware_utils::NZUsize!(8)),
    );
    let mut rng = rand::rng();
    verifier
        .verify(&mut rng, &evidence.second.certified)
        .expect("the second side verifies");
    if !evidence.first.certified.certificate.is_empty() {
        verifier
            .verify(&mut rng, &evidence.first.certified)
            .expect("the first side verifies");
    }
    first.clone()
}

#[test]
fn conflicting_certificates_stop_the_follower_with_evidence() {
    // At the tip: both blocks arrived as events; the first is named by its source.
    let (err, dir, profile) = run_conflict(5, 6);
    assert_eq!(check_conflict(&err, dir.path(), &profile, 5), "a");

    // Below the tip: the conflicting block is checked against what the store holds.
    let (err, dir, profile) = run_conflict(3, 7);
    let first = check_conflict(&err, dir.path(), &profile, 3);
    assert!(first.starts_with("this node's store"), "{first}");
}
