//! The embedded execution store: blocks become durable in order, out-of-order, detached and
//! conflicting blocks are refused with nothing stored, redeliveries are harmless, a restart
//! keeps the tip, a store of another chain is refused, and the transaction index writes each
//! transaction once and keeps the most recent ones.

use super::{EmbeddedExecution, ExecutionError, ExecutionProvider};
use cairn_testkit::{linked_chain, test_block};
use commonware_runtime::{Runner, Supervisor, deterministic};

#[test]
fn blocks_are_finalized_in_order_and_survive_a_restart() {
    let chain = linked_chain(6);
    let genesis = chain[0].clone();
    let ((), checkpoint) = deterministic::Runner::seeded(1).start_and_recover({
        let chain = chain.clone();
        |context| async move {
            let store = EmbeddedExecution::open(context.child("execution"), &chain[0])
                .await
                .expect("opens");
            assert_eq!(store.finalized_height(), 0);
            for block in &chain[1..=4] {
                store.finalize(block.clone()).await.expect("in order");
            }
            assert_eq!(store.finalized_height(), 4);

            // Out of order: height 6 before 5.
            let err = store.finalize(chain[6].clone()).await.expect_err("gap");
            assert!(
                matches!(
                    err,
                    ExecutionError::OutOfOrder {
                        expected: 5,
                        got: 6
                    }
                ),
                "{err}"
            );
            // Height 5 of another chain does not extend the tip.
            let detached = test_block(5, 0, 5, Vec::new());
            let err = store
                .finalize(detached.clone())
                .await
                .expect_err("detached");
            assert!(
                matches!(err, ExecutionError::ParentMismatch { height: 5, .. }),
                "{err}"
            );
            // Another block at a finalized height.
            let other = test_block(3, 0, 99, Vec::new());
            let err = store.finalize(other.clone()).await.expect_err("conflict");
            assert!(
                matches!(err, ExecutionError::Conflict { height: 3, .. }),
                "{err}"
            );
            // None of them was stored.
            assert_eq!(store.finalized_height(), 4);
            assert_eq!(store.block_by_number(5).await.expect("reads"), None);
            assert_eq!(
                store.block_by_hash(detached.hash()).await.expect("reads"),
                None
            );
            assert_eq!(
                store.block_by_hash(other.hash()).await.expect("reads"),
                None
            );
            assert_eq!(
                store.block_by_number(3).await.expect("reads"),
                Some(chain[3].clone())
            );

            // Redelivery of a finalized block is harmless.
            store.finalize(chain[2].clone()).await.expect("redelivery");
            assert_eq!(store.finalized_height(), 4);
        }
    });

    deterministic::Runner::from(checkpoint).start(|context| async move {
        let store = EmbeddedExecution::open(context.child("execution"), &genesis)
            .await
            .expect("reopens");
        assert_eq!(store.finalized_height(), 4, "the tip survives a restart");
        for height in 0..=4 {
            let block = store
                .block_by_number(height)
                .await
                .expect("reads")
                .expect("stored");
            assert_eq!(block, chain[height as usize]);
            assert_eq!(
                store
                    .header_by_number(height)
                    .await
                    .expect("reads")
                    .as_ref(),
                Some(chain[height as usize].header())
            );
            assert_eq!(
                store.block_by_hash(block.hash()).await.expect("reads"),
                Some(block)
            );
        }
        store
            .finalize(chain[5].clone())
            .await
            .expect("continues after a restart");
        assert_eq!(store.finalized_height(), 5);

        // The same storage opened for another chain is refused.
        drop(store);
        let other_genesis = test_block(0, 0, 7, vec![1]);
        let Err(err) = EmbeddedExecution::open(context.child("other"), &other_genesis).await else {
            panic!("another chain's genesis must be refused");
        };
        assert!(
            matches!(err, ExecutionError::GenesisMismatch { .. }),
            "{err}"
        );
    });
}

/// The transaction index across a restart: blocks stored again (as after a crash between the
/// index write and the block write) add no entries, new blocks add one per transaction, and every
/// transaction is found in its block.
#[test]
fn the_transaction_index_writes_each_transaction_once_across_a_restart() {
    use crate::{BlockStore, page_cache};
    use alloy_consensus::transaction::TxHashRef as _;
    let chain = linked_chain(4);
    let per_block = chain[1].transactions().len() as u64;
    let ((), checkpoint) = deterministic::Runner::seeded(3).start_and_recover({
        let chain = chain.clone();
        |context| async move {
            let store = BlockStore::open(context.child("store"), "index", page_cache())
                .await
                .expect("opens");
            for block in &chain[1..=2] {
                store.put(block).await.expect("stored");
            }
            assert_eq!(store.indexed_transactions().await, 2 * per_block);
        }
    });
    deterministic::Runner::from(checkpoint).start(|context| async move {
        let store = BlockStore::open(context.child("store"), "index", page_cache())
            .await
            .expect("reopens");
        assert_eq!(store.indexed_transactions().await, 2 * per_block);
        store.put(&chain[2]).await.expect("stored again");
        assert_eq!(store.indexed_transactions().await, 2 * per_block);
        store.put(&chain[3]).await.expect("stored");
        assert_eq!(store.indexed_transactions().await, 3 * per_block);
        for block in &chain[1..=3] {
            for (index, tx) in block.transactions().iter().enumerate() {
                let (found, position) = store
                    .transaction(*tx.tx_hash())
                    .await
                    .expect("reads")
                    .expect("indexed");
                assert_eq!((found.hash(), position), (block.hash(), index));
            }
        }
    });
}

/// The transaction index is bounded: with room for 6 transactions (pruned in sections of one),
/// only the most recent 6 are found, before and after a restart, while every block stays.
#[test]
fn the_transaction_index_keeps_only_the_most_recent_transactions() {
    use crate::{BlockStore, page_cache};
    use alloy_consensus::transaction::TxHashRef as _;
    let chain = linked_chain(6);
    let per_block = chain[1].transactions().len();
    assert_eq!(per_block, 3, "the devnet's three transactions per block");
    let check = |store: BlockStore<deterministic::Context>, chain: Vec<cairn_primitives::Block>| async move {
        for block in &chain[1..=6] {
            assert_eq!(
                store.get(block.height()).await.expect("reads").as_ref(),
                Some(block),
                "every block is kept"
            );
            for tx in block.transactions() {
                let found = store.transaction(*tx.tx_hash()).await.expect("reads");
                assert_eq!(
                    found.is_some(),
                    block.height() >= 5,
                    "block {}: only the last 6 transactions are indexed",
                    block.height()
                );
            }
        }
    };
    let ((), checkpoint) = deterministic::Runner::seeded(4).start_and_recover({
        let chain = chain.clone();
        move |context| async move {
            let store =
                BlockStore::open_with_tx_limit(context.child("store"), "bounded", page_cache(), 6)
                    .await
                    .expect("opens");
            for block in &chain[1..=6] {
                store.put(block).await.expect("stored");
            }
            assert_eq!(store.indexed_transactions().await, 18);
            check(store, chain).await;
        }
    });
    deterministic::Runner::from(checkpoint).start(|context| async move {
        let store =
            BlockStore::open_with_tx_limit(context.child("store"), "bounded", page_cache(), 6)
                .await
                .expect("reopens");
        assert_eq!(store.indexed_transactions().await, 18);
        check(store, chain).await;
    });
}
