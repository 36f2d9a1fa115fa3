//! The executor's loop.

use super::Message;
use crate::execution::ExecutionProvider;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// The executor (see the module docs).
pub struct Actor<P: ExecutionProvider> {
    provider: P,
    mailbox: mpsc::Receiver<Message>,
    watermark: watch::Sender<u64>,
}

impl<P: ExecutionProvider> Actor<P> {
    pub(super) const fn new(
        provider: P,
        mailbox: mpsc::Receiver<Message>,
        watermark: watch::Sender<u64>,
    ) -> Self {
        Self {
            provider,
            mailbox,
            watermark,
        }
    }

    /// Runs until every mailbox handle is dropped.
    pub async fn run(mut self) {
        while let Some(Message::Finalized { block, durable }) = self.mailbox.recv().await {
            let height = block.height();
            let result = self.provider.finalize(block).await;
            match &result {
                Ok(()) => {
                    let finalized = self.provider.finalized_height();
                    self.watermark.send_replace(finalized);
                    debug!(height, finalized, "block durable in the execution layer");
                }
                Err(err) => warn!(height, %err, "execution layer refused a finalized block"),
            }
            // The requester may have stopped waiting; the block is stored either way.
            let _ = durable.send(result);
        }
    }
}
