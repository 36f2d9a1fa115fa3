//! The executor: marshal's finalized blocks, handed on by the driver in height order, go to the
//! execution layer; each is acknowledged to marshal only once it is durable there. Then the
//! finalized watermark advances and the block is published on the node's feed.

mod actor;
mod ingress;
#[cfg(test)]
mod tests;

pub use actor::Actor;
pub use ingress::{Mailbox, Message, Stopped};

use cairn_feed::FeedState;
use cairn_storage::execution::ExecutionProvider;
use std::num::NonZeroUsize;
use tokio::sync::{mpsc, watch};

/// Executor settings.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Blocks queued in the mailbox.
    pub mailbox_size: NonZeroUsize,
}

/// Blocks queued in the executor's mailbox by default.
const MAILBOX_SIZE: NonZeroUsize = NonZeroUsize::new(256).expect("non-zero");

impl Default for Config {
    fn default() -> Self {
        Self {
            mailbox_size: MAILBOX_SIZE,
        }
    }
}

/// Creates the executor over `provider`, publishing on `feed`; the returned watch holds the
/// finalized height.
pub fn init<P: ExecutionProvider>(
    config: Config,
    provider: P,
    feed: FeedState,
) -> (Actor<P>, Mailbox, watch::Receiver<u64>) {
    let (sender, receiver) = mpsc::channel(config.mailbox_size.get());
    let (watermark, watched) = watch::channel(provider.finalized_height());
    (
        Actor::new(provider, receiver, watermark, feed),
        Mailbox::new(sender),
        watched,
    )
}
