//! The executor's mailbox.

use crate::execution::ExecutionError;
use cairn_primitives::Block;
use tokio::sync::{mpsc, oneshot};

/// A finalized block for the execution layer.
#[derive(Debug)]
pub enum Message {
    /// Finalize `block`; `durable` answers once it is on disk (or why it was refused).
    Finalized {
        /// The block (the next height).
        block: Block,
        /// The acknowledgement.
        durable: oneshot::Sender<Result<(), ExecutionError>>,
    },
}

/// Handle to the executor (cheap to clone).
#[derive(Clone, Debug)]
pub struct Mailbox {
    sender: mpsc::Sender<Message>,
}

/// The executor stopped before answering.
#[derive(Debug, thiserror::Error)]
#[error("the executor stopped")]
pub struct Stopped;

impl Mailbox {
    pub(super) const fn new(sender: mpsc::Sender<Message>) -> Self {
        Self { sender }
    }

    /// Queues `block` and returns the receiver of its durability acknowledgement.
    pub async fn finalized(
        &self,
        block: Block,
    ) -> Result<oneshot::Receiver<Result<(), ExecutionError>>, Stopped> {
        let (durable, acknowledged) = oneshot::channel();
        self.sender
            .send(Message::Finalized { block, durable })
            .await
            .map_err(|_| Stopped)?;
        Ok(acknowledged)
    }
}
