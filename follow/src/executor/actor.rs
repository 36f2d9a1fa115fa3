//! The executor's loop.

use super::Message;
use cairn_epoch::certified_block;
use cairn_feed::FeedState;
use cairn_storage::execution::{ExecutionError, ExecutionProvider};
use commonware_utils::Acknowledgement as _;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error};

/// The executor (see the module docs).
pub struct Actor<P: ExecutionProvider> {
    provider: P,
    mailbox: mpsc::Receiver<Message>,
    watermark: watch::Sender<u64>,
    feed: FeedState,
}

impl<P: ExecutionProvider> Actor<P> {
    pub(super) const fn new(
        provider: P,
        mailbox: mpsc::Receiver<Message>,
        watermark: watch::Sender<u64>,
        feed: FeedState,
    ) -> Self {
        Self {
            provider,
            mailbox,
            watermark,
            feed,
        }
    }

    /// Runs until every mailbox handle is dropped, or until the execution layer refuses a
    /// block: that block's acknowledgement is then dropped, which stops marshal, because a
    /// finalized chain that does not extend the stored one cannot be followed safely.
    pub async fn run(mut self) -> Result<(), ExecutionError> {
        while let Some(Message::Finalized {
            block,
            finalization,
            ack,
        }) = self.mailbox.recv().await
        {
            let height = block.height();
            if let Err(err) = self.provider.finalize(block.as_ref().clone()).await {
                error!(height, %err, "execution layer refused a finalized block; stopping");
                return Err(err);
            }
            ack.acknowledge();
            let finalized = self.provider.finalized_height();
            self.watermark.send_replace(finalized);
            debug!(height, finalized, "block durable in the execution layer");
            if let Some(finalization) = finalization {
                // Unless the driver published it already, when it verified it.
                self.feed.publish_in_order(height, || {
                    certified_block(&finalization, block.as_ref().clone())
                });
            }
        }
        Ok(())
    }
}
