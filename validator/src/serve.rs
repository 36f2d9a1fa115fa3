//! What a validator serves: every block its marshal finalizes, with its finalization, kept in a
//! chain store of the devnet's format (what cairn's RPC server reads) and published to the feed,
//! so followers follow validators over the same RPC as they follow the certifying producer.

use crate::{
    block::{ValidatorBlock, ValidatorBlockConfig},
    engine::Marshal,
    status::StatusBoard,
};
use cairn_devnet::{ChainStore, StoreError};
use cairn_epoch::certified_block;
use cairn_feed::FeedState;
use cairn_storage::StoreContext;
use commonware_actor::Feedback;
use commonware_consensus::{Heightable as _, Reporter, marshal::Update};
use commonware_cryptography::Digested;
use commonware_utils::acknowledgement::{Acknowledgement as _, Exact};
use tokio::sync::mpsc;
use tracing::warn;

/// A finalized block marshal delivered, with the acknowledgement it waits for.
type Delivered = (Digested<ValidatorBlock>, Exact);

/// Marshal's reporter for what is served: hands each finalized block to [`serve`].
///
/// The channel needs no bound of its own: marshal dispatches at most its `max_pending_acks`
/// blocks before their acknowledgements.
#[derive(Clone)]
pub struct Finalized {
    sender: mpsc::UnboundedSender<Delivered>,
}

impl Finalized {
    /// The reporter and the receiving end [`serve`] reads.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Delivered>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Self { sender }, receiver)
    }
}

impl Reporter for Finalized {
    type Activity = Update<ValidatorBlock, Exact>;

    fn report(&mut self, activity: Self::Activity) -> Feedback {
        match activity {
            Update::Tip(..) => Feedback::Ok,
            Update::Block(block, ack) => match self.sender.send((block, ack)) {
                Ok(()) => Feedback::Ok,
                Err(_) => Feedback::Closed,
            },
        }
    }
}

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The chain store failed (the block is not acknowledged, so marshal delivers it again
    /// after a restart).
    #[error("storing finalized block {height}: {error}")]
    Store {
        /// The block's height.
        height: u64,
        /// The store's error.
        error: StoreError,
    },
}

/// Stores each block `delivered` brings, with the finalization marshal holds for it, publishes
/// it to `feed`, notes it on `board`, and only then acknowledges it. Stores `genesis` first when
/// the store is empty; otherwise restores the board from the stored boundaries and tip.
/// A block marshal holds no finalization of its own for (one it finalized through a
/// descendant's) is stored without one: followers link it to the chain by its hash.
pub async fn serve<E: StoreContext>(
    marshal: Marshal,
    store: ChainStore<E>,
    feed: FeedState,
    board: StatusBoard,
    genesis: ValidatorBlock,
    blocks: ValidatorBlockConfig,
    mut delivered: mpsc::UnboundedReceiver<Delivered>,
) -> Result<(), ServeError> {
    match store.last_block_height().await {
        None => {
            store
                .put_block(genesis.block())
                .await
                .map_err(|error| ServeError::Store { height: 0, error })?;
            board.served(&genesis, false);
        }
        Some(tip) => restore(&store, &board, &genesis, &blocks, tip).await?,
    }
    while let Some((block, ack)) = delivered.recv().await {
        let height = block.height();
        let stored = |error| ServeError::Store {
            height: height.get(),
            error,
        };
        let block = block.inner().clone();
        store.put_block(block.block()).await.map_err(stored)?;
        let finalization = marshal.get_finalization(height).await;
        if let Some(finalization) = &finalization {
            store
                .put_finalization(height.get(), finalization)
                .await
                .map_err(stored)?;
        }
        board.served(&block, finalization.is_some());
        if let Some(finalization) = finalization {
            feed.publish_finalized(certified_block(&finalization, block.into_block()));
        }
        ack.acknowledge();
    }
    Ok(())
}

/// Notes on `board` what the store already serves up to `tip`: genesis, every boundary (the
/// committees and identities they announce), and the tip.
async fn restore<E: StoreContext>(
    store: &ChainStore<E>,
    board: &StatusBoard,
    genesis: &ValidatorBlock,
    config: &ValidatorBlockConfig,
    tip: u64,
) -> Result<(), ServeError> {
    board.restored(genesis);
    let length = config.epoch_length.get();
    let boundaries = (1..=tip.saturating_add(1) / length).map(|epoch| epoch * length - 1);
    for height in boundaries.chain((tip % length != length - 1).then_some(tip)) {
        let read = |error| ServeError::Store { height, error };
        let Some(block) = store.block(height).await.map_err(read)? else {
            continue;
        };
        match ValidatorBlock::new(block, config) {
            Ok(block) => board.restored(&block),
            Err(err) => warn!(height, %err, "a stored block does not read as a validator's"),
        }
    }
    Ok(())
}
