//! Catch-up through the hash chain, under the deterministic runtime against an in-process
//! upstream: it stores the chain the boundary and tip certificates authenticate, and refuses,
//! with nothing stored from the bad block on, what the one-by-one path refuses: a tampered interior block (its hash
//! breaks the parent chain), a tampered boundary, a tip whose certificate does not verify, and
//! a chain that forks below the stored tip.

use crate::{
    genesis_block,
    sync::catchup::{CatchUp, CatchUpConfig, CatchUpError, CatchUpReport, VerifyPolicy},
    upstream::{QuarantineConfig, Sources, in_process::InProcessUpstream},
};
use cairn_epoch::{ChainProfile, LedgerError};
use cairn_primitives::{Block, CertifiedBlock};
use cairn_storage::{
    AnchorStore,
    execution::{EmbeddedExecution, ExecutionProvider as _},
    open_anchors,
    registry::EpochRegistry,
};
use cairn_testkit::{MemoryChain, TestCommittee, committee_chain};
use commonware_consensus::types::Epoch;
use commonware_runtime::{Runner as _, Supervisor as _, deterministic};
use commonware_storage::archive::Identifier;

const EPOCH_LENGTH: u64 = 10;
const TIP: u64 = 55;

/// What a catch-up left behind.
struct Outcome {
    /// The last attempt's result.
    result: Result<CatchUpReport, CatchUpError>,
    /// The earlier attempts' results.
    earlier: Vec<Result<CatchUpReport, CatchUpError>>,
    /// Whether each upstream is quarantined at the end.
    quarantined: Vec<bool>,
    /// The height each upstream is taken to have announced, and the requests it served.
    announced: Vec<(u64, u64)>,
    executed: u64,
    /// Heights with a block in the execution store: by height up to the finalized height, or
    /// the served block by its hash at any height (the store itself, not the watermark).
    stored: Vec<u64>,
    /// Heights with a finalization in the anchor store.
    anchored: Vec<u64>,
    /// Epochs with a key.
    epochs: Vec<u64>,
    /// Epochs in the registry on disk.
    persisted: Vec<u64>,
}

/// `block` with one header field changed: another hash, same height and parent.
fn tampered(block: &Block) -> Block {
    let (mut header, body) = block.clone().into_parts();
    header.inner.gas_limit += 1;
    Block::new(header, body).expect("body unchanged")
}

/// `certified` serving `block` under its original certificate.
fn serving(certified: &CertifiedBlock, block: Block) -> CertifiedBlock {
    CertifiedBlock {
        block: Some(block),
        ..certified.clone()
    }
}

/// Stores `stored` (blocks 1..), then catches up from an upstream serving `served`.
fn catch_up(
    profile: &ChainProfile,
    stored: &[CertifiedBlock],
    served: Vec<CertifiedBlock>,
    policy: VerifyPolicy,
) -> Outcome {
    catch_up_with(profile, stored, served, Vec::new(), config(policy), 1)
}

/// [`catch_up`] walking and storing `window` epochs at a time.
fn catch_up_in_windows(
    profile: &ChainProfile,
    served: Vec<CertifiedBlock>,
    window: u64,
) -> Outcome {
    let config = CatchUpConfig {
        epoch_window: std::num::NonZeroU64::new(window).expect("non-zero"),
        ..config(VerifyPolicy::HashChain)
    };
    catch_up_with(profile, &[], served, Vec::new(), config, 1)
}

/// The catch-up settings of these tests: small ranges and batches.
fn config(policy: VerifyPolicy) -> CatchUpConfig {
    CatchUpConfig {
        policy,
        chunk: std::num::NonZeroU64::new(4).expect("non-zero"),
        in_flight: std::num::NonZeroUsize::new(3).expect("non-zero"),
        min_gap: 1,
        write_batch: 15,
        ..CatchUpConfig::default()
    }
}

/// [`catch_up`] with `config`, a second upstream serving `other` (when not empty), in
/// `attempts` runs.
fn catch_up_with(
    profile: &ChainProfile,
    stored: &[CertifiedBlock],
    served: Vec<CertifiedBlock>,
    other: Vec<CertifiedBlock>,
    config: CatchUpConfig,
    attempts: usize,
) -> Outcome {
    let profile = profile.clone();
    let stored: Vec<Block> = stored
        .iter()
        .map(|certified| certified.block.clone().expect("block"))
        .collect();
    deterministic::Runner::default().start(|context| async move {
        let genesis = genesis_block(&profile).expect("genesis");
        let execution = EmbeddedExecution::open_in(context.child("execution"), "t", &genesis)
            .await
            .expect("execution opens");
        execution
            .finalize_batch(&stored)
            .await
            .expect("prefix stored");
        let provider = profile.scheme_provider(commonware_utils::NZUsize!(64));
        let registry = EpochRegistry::open(
            context.child("registry"),
            "t-epochs",
            commonware_utils::NZUsize!(64),
        )
        .await
        .expect("registry opens");
        let anchors: AnchorStore<_> = open_anchors(context.child("anchors"), "t-anchors")
            .await
            .expect("anchors open");
        let served_hashes: Vec<_> = served
            .iter()
            .map(|certified| certified.block.as_ref().expect("block").hash())
            .collect();
        let chain = MemoryChain::default();
        for certified in served {
            chain.insert(certified);
        }
        let mut upstreams = vec![("upstream".to_string(), InProcessUpstream::new(chain))];
        if !other.is_empty() {
            let chain = MemoryChain::default();
            for certified in other {
                chain.insert(certified);
            }
            upstreams.push(("other".to_string(), InProcessUpstream::new(chain)));
        }
        let sources = Sources::new(upstreams, QuarantineConfig::default());
        for source in 0..sources.book().health().len() {
            sources.book().set_connected(source, true);
        }
        let catch_up = CatchUp {
            profile: &profile,
            provider: &provider,
            registry: &registry,
            execution: &execution,
            anchors: &anchors,
            sources: &sources,
            config,
        };
        let mut rng = context.child("rng");
        let mut earlier = Vec::new();
        let mut result = catch_up.run(&context, &mut rng).await;
        for _ in 1..attempts {
            earlier.push(result);
            result = catch_up.run(&context, &mut rng).await;
        }
        let quarantined = (0..sources.book().health().len())
            .map(|source| sources.book().is_quarantined(source))
            .collect();
        let announced = sources
            .book()
            .health()
            .iter()
            .map(|health| (health.announced_height, health.served))
            .collect();
        let mut stored = Vec::new();
        let mut anchored = Vec::new();
        for (height, hash) in (1..=TIP).zip(served_hashes) {
            let by_number = execution.block_by_number(height).await.expect("reads");
            let by_hash = execution.block_by_hash(hash).await.expect("reads");
            if by_number.is_some() || by_hash.is_some() {
                stored.push(height);
            }
            if has_anchor(&anchors, height).await {
                anchored.push(height);
            }
        }
        let epochs = (0..=TIP / EPOCH_LENGTH + 1)
            .filter(|epoch| provider.verifier(Epoch::new(*epoch)).is_some())
            .collect();
        let persisted = registry
            .entries()
            .await
            .expect("registry reads")
            .into_iter()
            .map(|(epoch, _)| epoch)
            .collect();
        Outcome {
            result,
            earlier,
            quarantined,
            announced,
            executed: execution.finalized_height(),
            stored,
            anchored,
            epochs,
            persisted,
        }
    })
}

async fn has_anchor<E: cairn_storage::StoreContext>(anchors: &AnchorStore<E>, height: u64) -> bool {
    anchors
        .has(Identifier::Index(height), "reading")
        .await
        .expect("reads")
}

/// The block at `height` of `chain` (blocks 1..).
fn block_at(chain: &[CertifiedBlock], height: u64) -> &Block {
    chain[height as usize - 1].block.as_ref().expect("block")
}

fn chain() -> (TestCommittee, ChainProfile, Vec<CertifiedBlock>) {
    let committee = TestCommittee::new(b"TEMPO", 61, 4);
    let (profile, chain) = committee_chain(&committee, TIP, EPOCH_LENGTH);
    (committee, profile, chain)
}

#[test]
fn the_hash_chain_from_verified_boundaries_and_tip_is_stored_with_their_certificates() {
    let (_, profile, chain) = chain();
    let outcome = catch_up(&profile, &[], chain.clone(), VerifyPolicy::HashChain);
    let report = outcome.result.expect("caught up");
    assert_eq!((report.from, report.to), (0, TIP));
    // Five boundaries (9, 19, .., 49) and the tip: one certificate per epoch.
    assert_eq!(report.certificates, 6);
    assert!(report.floor.is_some());
    assert_eq!(outcome.executed, TIP);
    assert_eq!(outcome.stored, (1..=TIP).collect::<Vec<_>>());
    assert_eq!(outcome.anchored, vec![9, 19, 29, 39, 49, TIP]);
    assert_eq!(outcome.epochs, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(
        outcome.persisted,
        vec![1, 2, 3, 4, 5],
        "registered with one sync"
    );

    // Tempo's policy leaves everything to marshal: nothing is done here.
    let outcome = catch_up(&profile, &[], chain, VerifyPolicy::EveryBlock);
    let report = outcome.result.expect("nothing to do");
    assert_eq!((report.from, report.to, report.certificates), (0, 0, 0));
    assert!(report.floor.is_none() && outcome.stored.is_empty());
}

/// Every source whose latest finalization is the verified tip counts as having it, so the last
/// window's blocks are asked of all of them, not only of the one whose tip was taken.
#[test]
fn the_blocks_are_asked_of_every_source_that_has_them() {
    let (_, profile, chain) = chain();
    let config = CatchUpConfig {
        epoch_window: std::num::NonZeroU64::new(1_000).expect("non-zero"),
        chunk: std::num::NonZeroU64::new(2).expect("non-zero"),
        ..config(VerifyPolicy::HashChain)
    };
    let outcome = catch_up_with(&profile, &[], chain.clone(), chain, config, 1);
    outcome.result.expect("caught up");
    assert_eq!(outcome.stored, (1..=TIP).collect::<Vec<_>>());
    // One window: every block is fetched after the tip was verified. Both sources are taken
    // to be at the tip, and both served a share of the 28 ranges of two blocks.
    let [(first, first_served), (second, second_served)] = outcome.announced[..] else {
        panic!("two sources: {:?}", outcome.announced);
    };
    assert_eq!((first, second), (TIP, TIP));
    assert!(
        first_served >= 10 && second_served >= 10,
        "served {first_served} and {second_served}"
    );
}

#[test]
fn a_tampered_interior_block_breaks_the_chain_and_its_segment_is_not_stored() {
    let (_, profile, mut chain) = chain();
    let original = chain[22].block.clone().expect("block");
    chain[22] = serving(&chain[22], tampered(&original));
    let outcome = catch_up(&profile, &[], chain, VerifyPolicy::HashChain);
    match outcome.result {
        Err(CatchUpError::Broken { height, .. }) => assert_eq!(height, 23),
        other => panic!("expected a broken chain at 23, got {other:?}"),
    }
    // The segments below, linked to their verified boundaries, were stored; nothing of the
    // segment holding the tampered block, nor its anchor.
    assert_eq!(outcome.executed, 19);
    assert_eq!(outcome.stored, (1..=19).collect::<Vec<_>>());
    assert_eq!(outcome.anchored, vec![9, 19]);
}

#[test]
fn a_tampered_boundary_stops_the_walk_and_nothing_from_it_on_is_stored() {
    let (_, profile, mut chain) = chain();
    let original = chain[18].block.clone().expect("block");
    chain[18] = serving(&chain[18], tampered(&original));
    let outcome = catch_up(&profile, &[], chain, VerifyPolicy::HashChain);
    // The upstream layer already finds that the certificate does not sign the block.
    match &outcome.result {
        Err(CatchUpError::Ledger(LedgerError::Source { height, error, .. })) => {
            assert_eq!(*height, 19);
            assert!(
                error.0.contains("served invalid data") && error.0.contains("signing"),
                "{error}"
            );
        }
        other => panic!("expected the walk to stop at 19, got {other:?}"),
    }
    // The segment under the boundary verified before it (9) is stored with that boundary's
    // certificate and the key it announces; nothing above it.
    assert_eq!(outcome.executed, 9);
    assert_eq!(outcome.stored, (1..=9).collect::<Vec<_>>());
    assert_eq!(outcome.anchored, vec![9]);
    // The key the tampered boundary would announce is not taken.
    assert_eq!(outcome.epochs, vec![0, 1]);
    assert_eq!(outcome.persisted, vec![1]);
}

#[test]
fn catch_up_in_windows_of_epochs_stores_the_same_and_stops_at_a_tampered_boundary() {
    let (_, profile, chain) = chain();
    // Windows of two epochs: boundaries 9 and 19, then 29 and 39, then 49 and the tip.
    let outcome = catch_up_in_windows(&profile, chain.clone(), 2);
    let report = outcome.result.expect("caught up");
    assert_eq!((report.from, report.to, report.certificates), (0, TIP, 6));
    assert_eq!(outcome.stored, (1..=TIP).collect::<Vec<_>>());
    assert_eq!(outcome.anchored, vec![9, 19, 29, 39, 49, TIP]);
    assert_eq!(outcome.persisted, vec![1, 2, 3, 4, 5]);

    // A tampered boundary in the second window: the first window's blocks, linked to their
    // verified boundaries, stay stored; nothing at or above the tampered one is.
    let mut chain = chain;
    let original = chain[28].block.clone().expect("block");
    chain[28] = serving(&chain[28], tampered(&original));
    let outcome = catch_up_in_windows(&profile, chain, 2);
    match &outcome.result {
        Err(CatchUpError::Ledger(LedgerError::Source { height, .. })) => assert_eq!(*height, 29),
        other => panic!("expected the walk to stop at 29, got {other:?}"),
    }
    assert_eq!(outcome.executed, 19);
    assert_eq!(outcome.stored, (1..=19).collect::<Vec<_>>());
    assert_eq!(outcome.anchored, vec![9, 19]);
    assert_eq!(outcome.epochs, vec![0, 1, 2]);
}

#[test]
fn a_tip_whose_certificate_does_not_verify_stores_nothing() {
    let (_, profile, mut chain) = chain();
    let stranger = TestCommittee::new(b"TEMPO", 62, 4);
    let tip = chain[TIP as usize - 1].block.clone().expect("block");
    chain[TIP as usize - 1] = stranger.certify(tip, TIP / EPOCH_LENGTH, TIP);
    let outcome = catch_up(&profile, &[], chain, VerifyPolicy::HashChain);
    match &outcome.result {
        Err(CatchUpError::Tip { height, .. }) => assert_eq!(*height, TIP),
        other => panic!("expected the tip to fail, got {other:?}"),
    }
    assert_eq!(outcome.executed, 0);
    assert!(outcome.stored.is_empty() && outcome.anchored.is_empty());
}

#[test]
fn a_chain_forking_below_the_stored_tip_is_never_stored() {
    let (committee, profile, chain) = chain();
    // Another chain, certified by the same committee, that differs from height 3 on.
    let mut fork = chain[..2].to_vec();
    let mut parent = chain[1].block.as_ref().expect("block").hash();
    for certified in &chain[2..] {
        let block = certified.block.as_ref().expect("block");
        let (mut header, body) = block.clone().into_parts();
        header.inner.parent_hash = parent.0;
        if block.height() == 3 {
            header.inner.gas_limit += 1;
        }
        let block = Block::new(header, body).expect("body unchanged");
        parent = block.hash();
        let height = block.height();
        fork.push(committee.certify(block, height / EPOCH_LENGTH, height));
    }
    let outcome = catch_up(&profile, &chain[..5], fork, VerifyPolicy::HashChain);
    match &outcome.result {
        Err(CatchUpError::Fork { height, .. }) => assert_eq!(*height, 5),
        other => panic!("expected a fork below the stored tip, got {other:?}"),
    }
    assert_eq!(outcome.executed, 5);
    assert_eq!(outcome.stored, (1..=5).collect::<Vec<_>>());
    assert!(outcome.anchored.is_empty());
}

#[test]
fn a_source_whose_latest_finalization_does_not_verify_is_quarantined_and_another_followed() {
    let (_, profile, chain) = chain();
    // The liar serves the chain and claims one more block, certified by strangers.
    let stranger = TestCommittee::new(b"TEMPO", 63, 4);
    let (_, longer) = committee_chain(&stranger, TIP + 1, EPOCH_LENGTH);
    let mut lying = chain.clone();
    let mut extra = longer[TIP as usize].clone();
    let (mut header, body) = extra.block.take().expect("block").into_parts();
    header.inner.parent_hash = chain[TIP as usize - 1]
        .block
        .as_ref()
        .expect("block")
        .hash()
        .0;
    extra = stranger.certify(
        Block::new(header, body).expect("body unchanged"),
        (TIP + 1) / EPOCH_LENGTH,
        TIP + 1,
    );
    lying.push(extra);
    let outcome = catch_up_with(
        &profile,
        &[],
        lying,
        chain,
        config(VerifyPolicy::HashChain),
        2,
    );
    match &outcome.earlier[..] {
        [Err(CatchUpError::Tip { height, .. })] => assert_eq!(*height, TIP + 1),
        other => panic!("expected the liar's tip to fail first, got {other:?}"),
    }
    assert_eq!(outcome.quarantined, vec![true, false]);
    let report = outcome.result.expect("caught up from the honest source");
    assert_eq!(report.to, TIP);
    assert_eq!(outcome.executed, TIP);
    assert_eq!(outcome.stored, (1..=TIP).collect::<Vec<_>>());
}

/// Boundaries 9 and 19 are stamped before this fork time, 29, 39 and 49 after it.
const TIP1123_TIME: u64 = 1_700_000_025;

#[test]
fn a_catch_up_across_the_tip1123_fork_reads_each_boundary_in_its_layout() {
    let committee = TestCommittee::new(b"TEMPO", 61, 4);
    let (profile, chain) = cairn_testkit::rotating_chain_forked(
        std::slice::from_ref(&committee),
        TIP,
        EPOCH_LENGTH,
        Some(TIP1123_TIME),
    );
    let extra = |height: u64| block_at(&chain, height).header().inner.extra_data.len();
    let compact = committee.outcome(1, false).compact().to_bytes().len();
    assert!(extra(19) > compact && extra(29) == compact && extra(49) == compact);
    let outcome = catch_up(&profile, &[], chain.clone(), VerifyPolicy::HashChain);
    outcome.result.expect("caught up across the fork");
    assert_eq!(outcome.stored, (1..=TIP).collect::<Vec<_>>());
    assert_eq!(outcome.epochs, vec![0, 1, 2, 3, 4, 5]);

    // After the fork a trailing byte is not ignored: the boundary at 39 carrying one (certified
    // by its committee) stops the walk, and nothing of its segment or its key is stored.
    let mut served = chain;
    let (mut header, body) = served[38].block.clone().expect("block").into_parts();
    let mut bytes = header.inner.extra_data.to_vec();
    bytes.push(0);
    header.inner.extra_data = bytes.into();
    let block = Block::new(header, body).expect("body unchanged");
    served[38] = committee.certify(block, 3, 39);
    let outcome = catch_up(&profile, &[], served, VerifyPolicy::HashChain);
    let err = outcome.result.expect_err("refused at 39");
    assert!(
        matches!(
            &err,
            CatchUpError::Ledger(LedgerError::Broken { height: 39, .. })
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("tip1123 layout") && err.to_string().contains("trailing"),
        "{err}"
    );
    assert_eq!(outcome.executed, 29);
    assert_eq!(outcome.stored, (1..=29).collect::<Vec<_>>());
    assert_eq!(outcome.anchored, vec![9, 19, 29]);
    assert_eq!(outcome.epochs, vec![0, 1, 2, 3]);
    assert_eq!(outcome.persisted, vec![1, 2, 3]);
}

#[test]
fn a_trusted_block_the_verified_chain_does_not_hold_stops_the_catch_up_before_anything_is_stored() {
    let (_, mut profile, chain) = chain();
    let hash = |height: u64| block_at(&chain, height).hash();
    // The chain holds block 23; the operator trusts another one there.
    profile.trusted_blocks = vec![cairn_epoch::TrustedBlock {
        height: 23,
        hash: hash(24),
    }];
    let outcome = catch_up(&profile, &[], chain.clone(), VerifyPolicy::HashChain);
    let err = outcome.result.expect_err("refused");
    assert!(err.is_untrusted() && !err.is_retryable(), "{err}");
    assert!(err.to_string().contains(&hash(23).to_string()), "{err}");
    assert_eq!(outcome.executed, 0);
    assert!(outcome.stored.is_empty() && outcome.anchored.is_empty());
    assert!(outcome.persisted.is_empty(), "no key registered");

    // The right block at 23 and the tip's own hash: the whole chain is stored.
    profile.trusted_blocks = vec![
        cairn_epoch::TrustedBlock {
            height: 23,
            hash: hash(23),
        },
        cairn_epoch::TrustedBlock {
            height: TIP,
            hash: hash(TIP),
        },
    ];
    let outcome = catch_up(&profile, &[], chain, VerifyPolicy::HashChain);
    outcome.result.expect("caught up");
    assert_eq!(outcome.stored, (1..=TIP).collect::<Vec<_>>());
}

#[test]
fn the_execution_store_refuses_another_block_at_a_trusted_height_and_stores_nothing_of_its_write() {
    use cairn_storage::execution::ExecutionError;
    let (_, profile, chain) = chain();
    let blocks: Vec<Block> = chain
        .iter()
        .map(|certified| certified.block.clone().expect("block"))
        .collect();
    deterministic::Runner::default().start(|context| async move {
        let genesis = genesis_block(&profile).expect("genesis");
        let execution = EmbeddedExecution::open_in(context.child("execution"), "g", &genesis)
            .await
            .expect("opens");
        execution.trust(&[cairn_epoch::TrustedBlock {
            height: 5,
            hash: blocks[4].hash(),
        }]);
        execution
            .finalize_batch(&blocks[..3])
            .await
            .expect("below it");
        // Another block 5 on the same parent, in a batch and alone.
        let other = tampered(&blocks[4]);
        assert_eq!(other.parent(), blocks[4].parent());
        let batch = vec![blocks[3].clone(), other.clone()];
        let refused = [
            execution.finalize_batch(&batch).await.expect_err("batch"),
            {
                execution
                    .finalize_batch(&blocks[3..4])
                    .await
                    .expect("block 4");
                execution.finalize(other.clone()).await.expect_err("alone")
            },
        ];
        for err in refused {
            assert!(
                matches!(err, ExecutionError::Untrusted { height: 5, trusted, offered }
                    if trusted == blocks[4].hash() && offered == other.hash()),
                "{err}"
            );
        }
        assert_eq!(
            execution.finalized_height(),
            4,
            "block 4 only once it came alone"
        );
        assert!(
            execution
                .block_by_hash(other.hash())
                .await
                .expect("reads")
                .is_none()
        );
        assert!(execution.block_by_number(5).await.expect("reads").is_none());
        // The trusted one goes in.
        execution
            .finalize_batch(&blocks[4..6])
            .await
            .expect("the trusted block");
        assert_eq!(execution.finalized_height(), 6);
    });
}
