//! Backfill under a checkpoint start, under the deterministic runtime against in-process
//! upstreams: the history is authenticated by the parent hashes from the checkpoint block down
//! to genesis, a block that breaks the chain is refused with nothing of it or below it stored,
//! and a restart continues from the lowest stored block.

use crate::{
    sync::backfill::{Backfill, BackfillReport},
    sync::catchup::{CatchUpConfig, CatchUpError},
    upstream::{QuarantineConfig, Sources, in_process::InProcessUpstream},
};
use cairn_primitives::Block;
use cairn_storage::execution::{EmbeddedExecution, ExecutionProvider as _};
use cairn_testkit::{MemoryChain, linked_chain};
use commonware_runtime::{Runner as _, Supervisor as _, deterministic};

const CHECKPOINT: u64 = 30;
const TIP: u64 = 40;

/// What a backfill run left in the store.
struct Outcome {
    result: Result<BackfillReport, CatchUpError>,
    /// The lowest served height after the run.
    first: u64,
    /// Heights whose block the store holds, by number or by the hash of the honest block or
    /// of the block served at that height.
    stored: Vec<u64>,
    /// Whether each stored block is the honest one.
    honest: bool,
}

fn config() -> CatchUpConfig {
    CatchUpConfig {
        chunk: std::num::NonZeroU64::new(4).expect("non-zero"),
        in_flight: std::num::NonZeroUsize::new(3).expect("non-zero"),
        write_batch: 7,
        ..CatchUpConfig::default()
    }
}

/// Runs one backfill on a store that started at the checkpoint block and followed to the tip,
/// from an upstream serving `served`, then reads the store. With a `restart` of the same
/// storage, the store is opened again and a second backfill runs from an upstream serving
/// `then` (a restart continues where the first run stopped).
fn backfill(
    chain: &[Block],
    served: &[Block],
    then: Option<&[Block]>,
) -> (Outcome, Option<Outcome>) {
    let chain = chain.to_vec();
    let served = served.to_vec();
    let then = then.map(<[Block]>::to_vec);
    let ((first, checkpoint_block), recovered) = deterministic::Runner::seeded(3)
        .start_and_recover({
            let chain = chain.clone();
            |context| async move {
                let anchor = chain[CHECKPOINT as usize].clone();
                let execution =
                    EmbeddedExecution::open_in(context.child("execution"), "t", &anchor)
                        .await
                        .expect("opens at the checkpoint");
                execution
                    .finalize_batch(&chain[CHECKPOINT as usize + 1..])
                    .await
                    .expect("followed to the tip");
                assert_eq!(execution.first_height(), CHECKPOINT);
                let outcome = run(&execution, &chain, &served).await;
                (outcome, anchor)
            }
        });
    let second = then.map(|then| {
        deterministic::Runner::from(recovered).start(|context| async move {
            let execution =
                EmbeddedExecution::open_in(context.child("execution"), "t", &checkpoint_block)
                    .await
                    .expect("reopens");
            assert_eq!(execution.finalized_height(), TIP, "the tip survives");
            run(&execution, &chain, &then).await
        })
    });
    (first, second)
}

async fn run(
    execution: &EmbeddedExecution<deterministic::Context>,
    chain: &[Block],
    served: &[Block],
) -> Outcome {
    let upstream = MemoryChain::default();
    for block in served {
        upstream.insert_block(block.clone());
    }
    let sources = Sources::new(
        vec![("upstream".to_string(), InProcessUpstream::new(upstream))],
        QuarantineConfig::default(),
    );
    sources.book().set_connected(0, true);
    let result = Backfill {
        execution,
        sources: &sources,
        config: config(),
    }
    .run()
    .await;
    let mut stored = Vec::new();
    let mut honest = true;
    for height in 0..=TIP {
        let honest_block = &chain[height as usize];
        let by_number = execution.block_by_number(height).await.expect("reads");
        let by_hash = execution
            .block_by_hash(honest_block.hash())
            .await
            .expect("reads");
        let served_hash = served
            .iter()
            .find(|block| block.height() == height)
            .map(Block::hash);
        let by_served_hash = match served_hash {
            Some(hash) => execution.block_by_hash(hash).await.expect("reads"),
            None => None,
        };
        if by_number.is_some() || by_hash.is_some() || by_served_hash.is_some() {
            stored.push(height);
        }
        for block in [by_number, by_hash, by_served_hash].into_iter().flatten() {
            honest &= block == *honest_block;
        }
    }
    Outcome {
        result,
        first: execution.first_height(),
        stored,
        honest,
    }
}

/// `block` with one header field changed: another hash, same height and parent.
fn tampered(block: &Block) -> Block {
    let (mut header, body) = block.clone().into_parts();
    header.inner.gas_limit += 1;
    Block::new(header, body).expect("body unchanged")
}

#[test]
fn history_under_a_checkpoint_is_stored_down_to_genesis_through_the_parent_hashes() {
    let chain = linked_chain(TIP);
    let (outcome, _) = backfill(&chain, &chain[..CHECKPOINT as usize], None);
    let report = outcome.result.expect("backfilled");
    assert_eq!(
        report,
        BackfillReport {
            from: CHECKPOINT,
            to: 0
        }
    );
    assert_eq!(outcome.first, 0, "genesis is served");
    assert_eq!(outcome.stored, (0..=TIP).collect::<Vec<_>>());
    assert!(outcome.honest, "every stored block is the chain's");
}

#[test]
fn a_block_that_breaks_the_parent_chain_is_refused_and_a_restart_continues_above_it() {
    let chain = linked_chain(TIP);
    let mut lying: Vec<Block> = chain[..CHECKPOINT as usize].to_vec();
    lying[17] = tampered(&chain[17]);
    let (outcome, resumed) = backfill(&chain, &lying, Some(&chain[..CHECKPOINT as usize]));
    match outcome.result {
        Err(CatchUpError::Broken { height, .. }) => assert_eq!(height, 17),
        other => panic!("expected a broken chain at 17, got {other:?}"),
    }
    // What was linked above the tampered block was stored and is served; nothing of it or
    // below it (neither the tampered block nor the honest one it replaced).
    assert_eq!(outcome.first, 18);
    assert_eq!(outcome.stored, (18..=TIP).collect::<Vec<_>>());
    assert!(outcome.honest);

    // After a restart, an honest upstream: backfill continues from 18, not from the checkpoint.
    let resumed = resumed.expect("second run");
    let report = resumed.result.expect("backfilled");
    assert_eq!(report, BackfillReport { from: 18, to: 0 });
    assert_eq!(resumed.first, 0);
    assert_eq!(resumed.stored, (0..=TIP).collect::<Vec<_>>());
    assert!(resumed.honest);
}

#[test]
fn history_from_another_chain_is_refused_with_nothing_stored() {
    let chain = linked_chain(TIP);
    // A chain whose every block differs: the first block below the checkpoint already breaks
    // the chain.
    let other: Vec<Block> = chain[..CHECKPOINT as usize].iter().map(tampered).collect();
    let (outcome, _) = backfill(&chain, &other, None);
    match outcome.result {
        Err(CatchUpError::Broken { height, .. }) => assert_eq!(height, CHECKPOINT - 1),
        other => panic!(
            "expected a broken chain at {}, got {other:?}",
            CHECKPOINT - 1
        ),
    }
    assert_eq!(outcome.first, CHECKPOINT);
    assert_eq!(outcome.stored, (CHECKPOINT..=TIP).collect::<Vec<_>>());
    assert!(outcome.honest);
}

#[test]
fn an_upstream_without_the_history_leaves_the_store_as_it_was_above_the_gap() {
    let chain = linked_chain(TIP);
    // The upstream itself started at a checkpoint at 14: it has nothing below.
    let (outcome, _) = backfill(&chain, &chain[14..CHECKPOINT as usize], None);
    match outcome.result {
        Err(CatchUpError::Missing(height)) => assert_eq!(height, 10, "the range below 14"),
        other => panic!("expected missing history, got {other:?}"),
    }
    assert_eq!(outcome.first, 14, "what it had is stored and served");
    assert_eq!(outcome.stored, (14..=TIP).collect::<Vec<_>>());
    assert!(outcome.honest);
}
