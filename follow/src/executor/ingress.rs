//! The executor's mailbox.

use cairn_epoch::Finalization;
use cairn_primitives::Block;
use commonware_utils::acknowledgement::Exact;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A finalized block for the execution layer.
#[derive(Debug)]
pub enum Message {
    /// Finalize `block` (the next height), then acknowledge `ack` and publish it.
    Finalized {
        /// The block.
        block: Arc<Block>,
        /// Its finalization, published with it (`None` for the genesis anchor).
        finalization: Option<Finalization>,
        /// Marshal's acknowledgement, released once the block is durable.
        ack: Exact,
    },
}

/// Handle to the executor (cheap to clone).
#[derive(Clone, Debug)]
pub struct Mailbox {
    sender: mpsc::Sender<Message>,
}

/// The executor stopped.
#[derive(Debug, thiserror::Error)]
#[error("the executor stopped")]
pub struct Stopped;

impl Mailbox {
    pub(super) const fn new(sender: mpsc::Sender<Message>) -> Self {
        Self { sender }
    }

    /// Queues `block`; its acknowledgement is released once it is durable.
    pub async fn finalized(
        &self,
        block: Arc<Block>,
        finalization: Option<Finalization>,
        ack: Exact,
    ) -> Result<(), Stopped> {
        self.sender
            .send(Message::Finalized {
                block,
                finalization,
                ack,
            })
            .await
            .map_err(|_| Stopped)
    }
}
