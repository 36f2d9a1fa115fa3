//! Backfill: the history under a checkpoint start, fetched down to genesis in the background.
//!
//! A follower that started at a verified checkpoint stores nothing below it. Its lowest stored
//! block is authenticated (by the checkpoint's certificate, or by the hash chain from it), and
//! names its parent's hash, so the history below needs no certificate at all: each block must
//! hash to the parent hash the block above it names, down to genesis. Ranges are fetched the
//! way catch-up fetches them (JSON-RPC batches, several in flight over the healthy upstreams),
//! linked downwards, and written in batches with one sync each, while the next batch is fetched
//! and linked; a batch is served once it is durable. A block that breaks the chain is refused,
//! with nothing of it or below it stored.
//!
//! Transactions of history blocks are not indexed: the transaction index keeps the newest ones.

use crate::{
    sync::catchup::{CatchUpConfig, CatchUpError, fetch_in_order, write_behind},
    upstream::{Sources, UpstreamRequests},
};
use cairn_primitives::Block;
use cairn_storage::StoreContext;
use cairn_storage::execution::EmbeddedExecution;
use futures::{SinkExt as _, StreamExt as _};
use tracing::debug;

/// What a backfill did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackfillReport {
    /// The lowest served height before.
    pub from: u64,
    /// The lowest served height after (0 once history reaches genesis).
    pub to: u64,
}

/// What backfill reads from and writes to.
pub struct Backfill<'a, E: StoreContext, U> {
    /// The execution store; history goes under its lowest block.
    pub execution: &'a EmbeddedExecution<E>,
    /// The upstreams.
    pub sources: &'a Sources<U>,
    /// Fetch and write settings (the policy and the worker count do not apply).
    pub config: CatchUpConfig,
}

impl<E: StoreContext, U: UpstreamRequests> Backfill<'_, E, U> {
    /// Fetches and stores the history from the lowest served height down to genesis. On an
    /// error, what was written before it stays (it was authenticated) and is served; running
    /// again continues from there.
    pub async fn run(&self) -> Result<BackfillReport, CatchUpError> {
        let (from, parent) = self.execution.history_start();
        let chunk = self.config.chunk.get();
        let mut ranges = Vec::new();
        let mut below = from;
        while below > 0 {
            let first = below.saturating_sub(chunk);
            ranges.push((first, below - 1));
            below = first;
        }
        let (fetching, received) = fetch_in_order(self.sources, &self.config, ranges);
        let (mut to_writer, writing) = write_behind(|batch| self.write(batch));
        let linking = async move {
            // Owned here, so that fetching stops as soon as linking does.
            let mut received = received;
            let mut expected = parent;
            let mut linked: Vec<Block> = Vec::new();
            let mut failure = None;
            'ranges: while let Some(blocks) = received.next().await {
                let blocks = match blocks {
                    Ok(blocks) => blocks,
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                };
                for block in blocks.into_iter().rev() {
                    if block.hash() != expected {
                        failure = Some(CatchUpError::Broken {
                            height: block.height(),
                            got: block.hash(),
                            expected,
                        });
                        break 'ranges;
                    }
                    expected = block.parent();
                    linked.push(block);
                }
                if linked.len() >= self.config.write_batch
                    && to_writer.send(std::mem::take(&mut linked)).await.is_err()
                {
                    // The writer failed; it reports why.
                    return Ok(());
                }
            }
            // What was linked before a failure is authenticated: it is written first.
            if !linked.is_empty() {
                let _ = to_writer.send(linked).await;
            }
            failure.map_or(Ok(()), Err)
        };
        let ((), linked, written) = futures::join!(fetching, linking, writing);
        // A failed write stops linking, so its error comes first.
        written?;
        linked?;
        Ok(BackfillReport {
            from,
            to: self.execution.history_start().0,
        })
    }

    /// Writes linked history with one sync.
    async fn write(&self, linked: Vec<Block>) -> Result<(), CatchUpError> {
        if linked.is_empty() {
            return Ok(());
        }
        self.execution.store_history(&linked).await?;
        debug!(
            down_to = linked.last().map(Block::height),
            blocks = linked.len(),
            "history stored"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests;
