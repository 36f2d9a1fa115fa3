//! The feed state: the latest verified finalized block and the event stream subscribers read.
//!
//! Publishing never waits on a subscriber: events go into a bounded broadcast ring, and a
//! subscriber that falls a whole ring behind is told it lagged (the RPC server then drops it).

use cairn_primitives::{CertifiedBlock, Event};
use std::{
    future::Future,
    sync::{Arc, RwLock},
    time::{SystemTime, UNIX_EPOCH},
};
use tokio::sync::broadcast;

/// Default number of events buffered for each subscriber before it counts as lagging.
pub const DEFAULT_EVENT_BUFFER: usize = 1024;

/// Why the chain could not be read.
#[derive(Debug, thiserror::Error)]
#[error("chain storage read failed: {0}")]
pub struct ReadError(pub String);

/// Read access to the finalized chain a node serves (its own store).
pub trait ChainReader: Clone + Send + Sync + 'static {
    /// The height of the finalized tip, if any block has been finalized.
    fn finalized_height(&self) -> Option<u64>;

    /// The lowest height served: 0 for a chain kept from genesis, the checkpoint's height for a
    /// node that started at a verified checkpoint (history below it is not stored), or lower
    /// as that history is backfilled.
    fn first_height(&self) -> u64 {
        0
    }

    /// The certified block at `height` (with its block), if stored.
    fn certified_at(
        &self,
        height: u64,
    ) -> impl Future<Output = Result<Option<CertifiedBlock>, ReadError>> + Send;

    /// The block at `height` (height 0 is genesis), if stored.
    fn block_at(
        &self,
        height: u64,
    ) -> impl Future<Output = Result<Option<cairn_primitives::Block>, ReadError>> + Send;

    /// The raw block at `height` (the RLP `debug_getRawBlock` serves), if stored with its
    /// body. By default the block is read and encoded; a store that keeps blocks in their
    /// encoded form serves it without decoding them.
    fn raw_block_at(
        &self,
        height: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, ReadError>> + Send {
        async move {
            Ok(self
                .block_at(height)
                .await?
                .and_then(|block| block.raw_rlp()))
        }
    }

    /// The block with hash `hash`, if stored.
    fn block_by_hash(
        &self,
        hash: cairn_primitives::Digest,
    ) -> impl Future<Output = Result<Option<cairn_primitives::Block>, ReadError>> + Send;

    /// The served block holding the transaction with hash `hash`, and the transaction's
    /// position in it, if indexed.
    fn transaction_by_hash(
        &self,
        hash: alloy_primitives::B256,
    ) -> impl Future<Output = Result<Option<(cairn_primitives::Block, usize)>, ReadError>> + Send;

    /// How the block at `height` came to be trusted; `Ok(None)` when it is not served. A
    /// chain that keeps no provenance answers [`Explained::Unsupported`].
    fn explain(&self, height: u64) -> impl Future<Output = Result<Explained, ReadError>> + Send {
        let _ = height;
        async { Ok(Explained::Unsupported) }
    }
}

/// What [`ChainReader::explain`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Explained {
    /// The block is served, and this is how it came to be trusted.
    Block(Box<crate::explain::Explanation>),
    /// The height is not served.
    NotServed,
    /// This node does not explain its blocks.
    Unsupported,
}

/// An event as published: the typed value and its JSON, serialized once for all subscribers.
#[derive(Debug)]
pub struct PublishedEvent {
    /// The event.
    pub event: Event,
    /// Its JSON encoding.
    pub json: Box<serde_json::value::RawValue>,
}

#[derive(Debug)]
struct Inner {
    latest: RwLock<Option<CertifiedBlock>>,
    events: broadcast::Sender<Arc<PublishedEvent>>,
    sync: RwLock<Option<SyncProgress>>,
}

/// The block of the latest published finalization, if it carries one.
fn latest_block(latest: &Option<CertifiedBlock>) -> Option<&cairn_primitives::Block> {
    latest.as_ref()?.block.as_ref()
}

/// Where a node stands against its upstreams, for `eth_syncing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncProgress {
    /// Height the node stood at when this catch-up began (its current height when it is not
    /// behind).
    pub starting: u64,
    /// The node's stored, verified height.
    pub current: u64,
    /// The highest height announced by the node's upstreams (0 before any announced one).
    pub highest: u64,
}

impl SyncProgress {
    /// Whether the node is behind what its upstreams announce.
    pub const fn is_syncing(&self) -> bool {
        self.highest > self.current
    }
}

/// The latest finalized block and the event stream (cheap to clone; clones share state).
#[derive(Clone, Debug)]
pub struct FeedState {
    inner: Arc<Inner>,
}

impl FeedState {
    /// A feed buffering `event_buffer` events per subscriber (at least one).
    pub fn new(event_buffer: usize) -> Self {
        let (events, _) = broadcast::channel(event_buffer.max(1));
        Self {
            inner: Arc::new(Inner {
                latest: RwLock::new(None),
                events,
                sync: RwLock::new(None),
            }),
        }
    }

    /// Records `certified` as the latest finalized block and sends a `finalized` event stamped
    /// with the current time.
    pub fn publish_finalized(&self, certified: CertifiedBlock) {
        let mut latest = self.latest_mut();
        self.send_finalized(&mut latest, certified);
    }

    /// Publishes a verified `certified` block at once if it is the child of the latest one (the
    /// next height, naming the latest block's hash as its parent); whether it was published.
    /// A follower publishes a live block this way as soon as its certificate verifies, before
    /// it is durable; the rest arrive through [`Self::publish_in_order`], so subscribers see
    /// every height once, in order.
    pub fn publish_if_next(&self, certified: CertifiedBlock) -> bool {
        let mut latest = self.latest_mut();
        let extends = match (latest_block(&latest), &certified.block) {
            (Some(tip), Some(block)) => {
                block.height() == tip.height() + 1 && block.parent() == tip.hash()
            }
            _ => false,
        };
        if extends {
            self.send_finalized(&mut latest, certified);
        }
        extends
    }

    /// Publishes the next durable block, at `height` (in height order), unless a block at that
    /// height or above was published already. `certified` builds the event only when it is
    /// published, so a block the fast path published costs no copy here.
    pub fn publish_in_order(&self, height: u64, certified: impl FnOnce() -> CertifiedBlock) {
        let mut latest = self.latest_mut();
        if latest_block(&latest).is_some_and(|published| height <= published.height()) {
            return;
        }
        self.send_finalized(&mut latest, certified());
    }

    fn latest_mut(&self) -> std::sync::RwLockWriteGuard<'_, Option<CertifiedBlock>> {
        self.inner
            .latest
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `certified` under the lock that makes it the latest, so that events leave in the
    /// order the latest block changes.
    fn send_finalized(&self, latest: &mut Option<CertifiedBlock>, certified: CertifiedBlock) {
        *latest = Some(certified.clone());
        let event = Event::Finalized {
            block: certified,
            seen: unix_millis(),
        };
        let json = match serde_json::value::to_raw_value(&event) {
            Ok(json) => json,
            Err(err) => {
                tracing::warn!(%err, "could not serialize a finalized event; not published");
                return;
            }
        };
        // No receivers is not an error: nobody is subscribed right now.
        let _ = self
            .inner
            .events
            .send(Arc::new(PublishedEvent { event, json }));
    }

    /// The latest finalized block, if any.
    pub fn latest(&self) -> Option<CertifiedBlock> {
        self.inner
            .latest
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Records the node's height and the height upstreams announce; the first call that finds
    /// the node behind fixes the starting height of this catch-up at `current`.
    pub fn set_sync_target(&self, current: u64, highest: u64) {
        let mut sync = self
            .inner
            .sync
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let starting = match *sync {
            Some(progress) if progress.is_syncing() => progress.starting,
            _ => current,
        };
        *sync = Some(SyncProgress {
            starting,
            current,
            highest,
        });
    }

    /// Where the node last stood against its upstreams, once known.
    pub fn sync_progress(&self) -> Option<SyncProgress> {
        *self
            .inner
            .sync
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new subscription to the event stream.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<PublishedEvent>> {
        self.inner.events.subscribe()
    }

    /// Number of live subscriptions.
    pub fn subscribers(&self) -> usize {
        self.inner.events.receiver_count()
    }
}

impl Default for FeedState {
    fn default() -> Self {
        Self::new(DEFAULT_EVENT_BUFFER)
    }
}

/// Milliseconds since the unix epoch (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A chain given to the RPC server before the node can read it, bound once it can: until
/// [`Self::bind`], nothing is finalized (the RPC answers 204 and `null`), while everything that
/// does not read the chain (`cairn_status`, the status page, subscriptions) is served.
#[derive(Debug)]
pub struct LateChain<C> {
    chain: Arc<std::sync::OnceLock<C>>,
}

impl<C> Clone for LateChain<C> {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
        }
    }
}

impl<C> Default for LateChain<C> {
    fn default() -> Self {
        Self {
            chain: Arc::default(),
        }
    }
}

impl<C: ChainReader> LateChain<C> {
    /// Serves `chain` from now on (every clone does); the first chain bound stays.
    pub fn bind(&self, chain: C) {
        let _ = self.chain.set(chain);
    }

    fn bound(&self) -> Option<C> {
        self.chain.get().cloned()
    }
}

impl<C: ChainReader> ChainReader for LateChain<C> {
    fn finalized_height(&self) -> Option<u64> {
        self.chain.get()?.finalized_height()
    }

    fn first_height(&self) -> u64 {
        self.chain.get().map_or(0, ChainReader::first_height)
    }

    fn certified_at(
        &self,
        height: u64,
    ) -> impl Future<Output = Result<Option<CertifiedBlock>, ReadError>> + Send {
        let chain = self.bound();
        async move {
            match chain {
                Some(chain) => chain.certified_at(height).await,
                None => Ok(None),
            }
        }
    }

    fn block_at(
        &self,
        height: u64,
    ) -> impl Future<Output = Result<Option<cairn_primitives::Block>, ReadError>> + Send {
        let chain = self.bound();
        async move {
            match chain {
                Some(chain) => chain.block_at(height).await,
                None => Ok(None),
            }
        }
    }

    fn raw_block_at(
        &self,
        height: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, ReadError>> + Send {
        let chain = self.bound();
        async move {
            match chain {
                Some(chain) => chain.raw_block_at(height).await,
                None => Ok(None),
            }
        }
    }

    fn block_by_hash(
        &self,
        hash: cairn_primitives::Digest,
    ) -> impl Future<Output = Result<Option<cairn_primitives::Block>, ReadError>> + Send {
        let chain = self.bound();
        async move {
            match chain {
                Some(chain) => chain.block_by_hash(hash).await,
                None => Ok(None),
            }
        }
    }

    fn transaction_by_hash(
        &self,
        hash: alloy_primitives::B256,
    ) -> impl Future<Output = Result<Option<(cairn_primitives::Block, usize)>, ReadError>> + Send
    {
        let chain = self.bound();
        async move {
            match chain {
                Some(chain) => chain.transaction_by_hash(hash).await,
                None => Ok(None),
            }
        }
    }

    fn explain(&self, height: u64) -> impl Future<Output = Result<Explained, ReadError>> + Send {
        let chain = self.bound();
        async move {
            match chain {
                Some(chain) => chain.explain(height).await,
                None => Ok(Explained::NotServed),
            }
        }
    }
}
