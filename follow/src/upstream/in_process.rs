//! The in-process upstream: the same notifications and requests as the WebSocket actor, served
//! from a [`FeedState`] and a [`ChainReader`] in the same process, so followers can run inside
//! deterministic simulations without sockets.

use super::{Notification, SourceId, Sourced, UpstreamError, UpstreamRequests};
use cairn_feed::{ChainReader, FeedState, unix_millis};
use cairn_primitives::{Block, CertifiedBlock, Digest, Event};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tracing::warn;

/// Forwards a feed's events as upstream notifications.
pub struct InProcessActor {
    feed: FeedState,
    notifications: mpsc::Sender<Sourced>,
    name: String,
    source: SourceId,
}

/// Answers upstream requests from a chain in the same process (cheap to clone).
#[derive(Clone, Debug)]
pub struct InProcessUpstream<C> {
    chain: C,
}

/// Creates the in-process upstream `source`, named `name`, over `feed` and `chain`.
pub fn init<C: ChainReader>(
    name: impl Into<String>,
    source: SourceId,
    feed: FeedState,
    chain: C,
    notifications: mpsc::Sender<Sourced>,
) -> (InProcessActor, InProcessUpstream<C>) {
    (
        InProcessActor {
            feed,
            notifications,
            name: name.into(),
            source,
        },
        InProcessUpstream { chain },
    )
}

impl InProcessActor {
    /// Runs until the notification receiver is dropped. A lagging consumer is reported as a
    /// disconnection followed by a fresh subscription, as the WebSocket actor would.
    pub async fn run(self) {
        loop {
            let mut events = self.feed.subscribe();
            let connected = Notification::Connected {
                url: self.name.clone(),
            };
            if self
                .notifications
                .send((self.source, connected))
                .await
                .is_err()
            {
                return;
            }
            // As the WebSocket actor does: announce the tip, in case the chain is idle.
            if let Some(latest) = self.feed.latest() {
                let event = Event::Finalized {
                    block: latest,
                    seen: unix_millis(),
                };
                if self
                    .notifications
                    .send((self.source, Notification::Event(Box::new(event))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let reason = loop {
                match events.recv().await {
                    Ok(published) => {
                        let event = Box::new(published.event.clone());
                        if self
                            .notifications
                            .send((self.source, Notification::Event(event)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(skipped)) => {
                        break format!("fell {skipped} events behind the feed");
                    }
                    Err(RecvError::Closed) => return,
                }
            };
            warn!(upstream = %self.name, %reason, "in-process upstream resubscribing");
            let lost = Notification::Disconnected { reason };
            if self.notifications.send((self.source, lost)).await.is_err() {
                return;
            }
        }
    }
}

impl<C: ChainReader> UpstreamRequests for InProcessUpstream<C> {
    async fn get_finalization(&self, height: u64) -> Result<Option<CertifiedBlock>, UpstreamError> {
        self.chain
            .certified_at(height)
            .await
            .map_err(|err| UpstreamError::Rpc(err.to_string()))
    }

    async fn get_block(&self, digest: Digest) -> Result<Option<Block>, UpstreamError> {
        let block = self
            .chain
            .block_by_hash(digest)
            .await
            .map_err(|err| UpstreamError::Rpc(err.to_string()))?;
        match block {
            Some(block) if block.hash() != digest => Err(UpstreamError::HashMismatch {
                requested: digest,
                got: block.hash(),
            }),
            other => Ok(other),
        }
    }

    async fn get_latest(&self) -> Result<Option<CertifiedBlock>, UpstreamError> {
        match self.chain.finalized_height() {
            Some(height) => self.get_finalization(height).await,
            None => Ok(None),
        }
    }

    async fn get_blocks(&self, first: u64, last: u64) -> Result<Vec<Block>, UpstreamError> {
        let mut blocks = Vec::new();
        for height in first..=last {
            match self
                .chain
                .block_at(height)
                .await
                .map_err(|err| UpstreamError::Rpc(err.to_string()))?
            {
                Some(block) => blocks.push(block),
                None => break,
            }
        }
        Ok(blocks)
    }
}
