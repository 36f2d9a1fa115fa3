//! What reaches the driver from marshal: finalized blocks in height order, each with the
//! acknowledgement marshal waits for.

use cairn_primitives::Block;
use commonware_actor::Feedback;
use commonware_consensus::{Reporter, marshal::Update};
use commonware_cryptography::Digested;
use commonware_utils::acknowledgement::Exact;
use tokio::sync::mpsc;

/// A finalized block marshal dispatched, with its acknowledgement.
pub struct Delivered {
    /// The block.
    pub block: Digested<Block>,
    /// Acknowledged once the block is durable in the execution layer. Dropping it stops marshal.
    pub ack: Exact,
}

/// Marshal's application: forwards dispatched blocks to the driver.
///
/// The channel needs no bound of its own: marshal never dispatches more than its
/// `max_pending_acks` blocks without their acknowledgements, and tip updates (which marshal
/// does not bound) are not forwarded, as the executor's watermark carries the same information
/// once the block is durable.
#[derive(Clone)]
pub struct MarshalUpdates {
    sender: mpsc::UnboundedSender<Delivered>,
}

impl MarshalUpdates {
    /// The application handle and the driver's receiving end.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Delivered>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Self { sender }, receiver)
    }
}

impl Reporter for MarshalUpdates {
    type Activity = Update<Block, Exact>;

    fn report(&mut self, activity: Self::Activity) -> Feedback {
        match activity {
            Update::Tip(..) => Feedback::Ok,
            Update::Block(block, ack) => match self.sender.send(Delivered { block, ack }) {
                Ok(()) => Feedback::Ok,
                Err(_) => Feedback::Closed,
            },
        }
    }
}
