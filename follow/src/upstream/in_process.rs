//! The in-process upstream: the same notifications and requests as a WebSocket upstream,
//! served from a [`FeedState`] and a [`ChainReader`] in the same process, so followers run
//! inside deterministic simulations without sockets. Its events and requests go through the same actor
//! loop ([`super::Actor`]) as a WebSocket upstream's.

use super::{
    Actor, Mailbox, SourceId, Sourced, UpstreamError, UpstreamRequests,
    actor::Limits,
    transport::{Connection, Incoming, Transport},
};
use cairn_feed::{ChainReader, FeedState};
use cairn_primitives::{Block, CertifiedBlock, Digest};
use futures::StreamExt as _;
use std::time::Duration;
use tokio::sync::{broadcast::error::RecvError, mpsc};

/// Answers upstream requests from a chain in the same process (cheap to clone): what the
/// in-process actor's request tasks call.
#[derive(Clone, Debug)]
pub struct InProcessUpstream<C> {
    chain: C,
}

/// A feed and a chain in the same process, as a [`Transport`]: a connection subscribes to the
/// feed, and a consumer that falls a whole feed buffer behind loses it, as a slow WebSocket
/// subscriber would.
#[derive(Clone, Debug)]
pub struct InProcess<C> {
    feed: FeedState,
    chain: C,
}

impl<C: ChainReader + Clone> Transport for InProcess<C> {
    type Requests = InProcessUpstream<C>;

    async fn connect(&self) -> Result<Connection<Self::Requests>, UpstreamError> {
        let events = self.feed.subscribe();
        let incoming = futures::stream::unfold(Some(events), |events| async move {
            let mut events = events?;
            match events.recv().await {
                Ok(published) => Some((
                    Incoming::Event(Box::new(published.event.clone())),
                    Some(events),
                )),
                Err(RecvError::Lagged(skipped)) => Some((
                    Incoming::Lost {
                        reason: format!("fell {skipped} events behind the feed"),
                        oversized: false,
                    },
                    None,
                )),
                Err(RecvError::Closed) => None,
            }
        })
        .boxed();
        Ok(Connection {
            requests: InProcessUpstream {
                chain: self.chain.clone(),
            },
            incoming,
        })
    }

    /// The feed's newest event, as the feed would announce it to a new subscriber.
    async fn latest(
        &self,
        _requests: &Self::Requests,
    ) -> Result<Option<CertifiedBlock>, UpstreamError> {
        Ok(self.feed.latest())
    }
}

/// Creates the in-process upstream `source`, named `name`, over `feed` and `chain`: the actor
/// (run it with [`Actor::run`] in a runtime context) and its mailbox. Events and requests both
/// go through the actor, as a WebSocket upstream's do: requests are answered from the chain in
/// tasks bounded in number, and refused as "not connected" while the actor is down or between
/// connections. A lagging consumer is told of a disconnection and a fresh subscription at once
/// (no backoff: the feed is always there). The actor stops once every mailbox handle and the
/// notification receiver are dropped.
pub fn init<C: ChainReader + Clone>(
    name: impl Into<String>,
    source: SourceId,
    feed: FeedState,
    chain: C,
    notifications: mpsc::Sender<Sourced>,
) -> (Actor<InProcess<C>>, Mailbox) {
    let (sender, receiver) = mpsc::channel(IN_PROCESS_MAILBOX);
    let limits = Limits {
        max_in_flight: 64,
        backoff_min: Duration::ZERO,
        backoff_max: Duration::ZERO,
        max_response_size: u32::MAX,
    };
    let transport = InProcess { feed, chain };
    let actor = Actor::new(
        transport,
        name.into(),
        source,
        limits,
        receiver,
        notifications,
    );
    (actor, Mailbox::new(sender))
}

/// Requests an in-process upstream's mailbox holds before callers wait.
const IN_PROCESS_MAILBOX: usize = 64;

impl<C> InProcessUpstream<C> {
    /// Answers requests from `chain` directly, without an actor: for tests of what fetches
    /// through [`super::Sources`], where no upstream connects or drops.
    pub const fn new(chain: C) -> Self {
        Self { chain }
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
