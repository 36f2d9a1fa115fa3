//! The executor: it acknowledges a block only once the execution store made it durable.

use crate::executor;
use cairn_feed::FeedState;
use cairn_storage::execution::{EmbeddedExecution, ExecutionError, ExecutionProvider};
use cairn_testkit::{linked_chain, test_block};
use commonware_runtime::{Runner, Supervisor, deterministic};
use commonware_utils::{Acknowledgement as _, acknowledgement::Exact};
use std::sync::Arc;

#[test]
fn the_executor_acknowledges_only_durable_blocks() {
    let chain = linked_chain(3);
    deterministic::Runner::seeded(2).start(|context| async move {
        let store = EmbeddedExecution::open(context.child("execution"), &chain[0])
            .await
            .expect("opens");
        let feed = FeedState::default();
        let (actor, mailbox, mut watermark) =
            executor::init(executor::Config::default(), store.clone(), feed.clone());
        let driver = async move {
            for block in &chain[1..=2] {
                let (ack, waiter) = Exact::handle();
                mailbox
                    .finalized(Arc::new(block.clone()), None, ack)
                    .await
                    .expect("running");
                waiter.await.expect("acknowledged");
                // Acknowledged means stored.
                assert_eq!(
                    store
                        .block_by_number(block.height())
                        .await
                        .expect("reads")
                        .as_ref(),
                    Some(block)
                );
                assert_eq!(*watermark.borrow_and_update(), block.height());
            }
            // A refused block is never acknowledged (which stops marshal) and changes nothing.
            let (ack, waiter) = Exact::handle();
            mailbox
                .finalized(Arc::new(test_block(3, 0, 3, Vec::new())), None, ack)
                .await
                .expect("running");
            assert!(waiter.await.is_err(), "a refused block is not acknowledged");
            assert_eq!(*watermark.borrow(), 2);
            assert!(
                store.block_by_number(3).await.expect("reads").is_none(),
                "nothing was stored"
            );
        };
        let (stopped, ()) = futures::join!(actor.run(), driver);
        assert!(matches!(
            stopped,
            Err(ExecutionError::ParentMismatch { .. })
        ));
        assert!(
            feed.latest().is_none(),
            "blocks without finalization are not published"
        );
    });
}
