//! The executor: hands each finalized block to the execution layer in order, acknowledges it
//! only once it is durable there, and publishes the finalized watermark.

mod actor;
mod ingress;

pub use actor::Actor;
pub use ingress::{Mailbox, Message};

use crate::execution::ExecutionProvider;
use tokio::sync::{mpsc, watch};

/// Executor settings.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Blocks queued in the mailbox.
    pub mailbox_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self { mailbox_size: 256 }
    }
}

/// Creates the executor over `provider`; the returned watch holds the finalized height.
pub fn init<P: ExecutionProvider>(
    config: Config,
    provider: P,
) -> (Actor<P>, Mailbox, watch::Receiver<u64>) {
    let (sender, receiver) = mpsc::channel(config.mailbox_size.max(1));
    let (watermark, watched) = watch::channel(provider.finalized_height());
    (
        Actor::new(provider, receiver, watermark),
        Mailbox::new(sender),
        watched,
    )
}
