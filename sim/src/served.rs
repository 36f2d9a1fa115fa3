//! What a node serves to the followers that follow it, as they reach it in-process: its chain
//! while it runs (nothing while it is down), and its feed, through the devnet's byzantine modes
//! while the plan has it lie.
//!
//! A node keeps one feed across its restarts (a follower stays subscribed, and hears nothing
//! while the node is down); its chain is swapped in at each start and out at each crash.

use alloy_primitives::B256;
use cairn_devnet::faults::{Fault, Faults, FaultyChain};
use cairn_feed::{ChainReader, Explained, FeedState, ReadError};
use cairn_primitives::{Block, CertifiedBlock, Digest, Event};
use commonware_runtime::{Spawner as _, deterministic};
use std::sync::{Arc, RwLock};
use tokio::sync::broadcast::error::RecvError;

/// The chain a node serves, while it runs.
#[derive(Clone)]
pub struct Served<C> {
    chain: Arc<RwLock<Option<C>>>,
    lies: Arc<RwLock<Option<Arc<Faults>>>>,
}

impl<C> Default for Served<C> {
    fn default() -> Self {
        Self {
            chain: Arc::new(RwLock::new(None)),
            lies: Arc::new(RwLock::new(None)),
        }
    }
}

fn down() -> ReadError {
    ReadError("the node is down".into())
}

impl<C: Clone> Served<C> {
    /// The node serves `chain` (it started).
    pub fn up(&self, chain: C) {
        *self
            .chain
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(chain);
    }

    /// The node serves nothing (it stopped).
    pub fn down(&self) {
        *self
            .chain
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = None;
    }

    /// The chain, if the node runs.
    pub fn chain(&self) -> Option<C> {
        self.chain
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// From now on, what is served lies in `mode` (`None`: honest again); `seed` decides which
    /// events and answers the lies hit.
    pub fn lie(&self, mode: Option<Fault>, seed: u64) {
        *self
            .lies
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) =
            mode.map(|mode| Faults::new(vec![mode], seed));
    }

    fn lies(&self) -> Option<Arc<Faults>> {
        self.lies
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    fn honest(&self) -> Result<Honest<C>, ReadError> {
        self.chain().map(Honest).ok_or_else(down)
    }
}

/// A running node's chain, served as it is.
#[derive(Clone)]
struct Honest<C>(C);

impl<C: ChainReader> Honest<C> {
    fn through(self, lies: Option<Arc<Faults>>) -> Either<C> {
        match lies {
            Some(faults) => Either::Lying(FaultyChain::new(self.0, faults)),
            None => Either::Honest(self.0),
        }
    }
}

enum Either<C> {
    Honest(C),
    Lying(FaultyChain<C>),
}

impl<C: ChainReader> ChainReader for Served<C> {
    fn finalized_height(&self) -> Option<u64> {
        let chain = self.chain()?;
        match Honest(chain).through(self.lies()) {
            Either::Honest(chain) => chain.finalized_height(),
            Either::Lying(chain) => chain.finalized_height(),
        }
    }

    async fn certified_at(&self, height: u64) -> Result<Option<CertifiedBlock>, ReadError> {
        match self.honest()?.through(self.lies()) {
            Either::Honest(chain) => chain.certified_at(height).await,
            Either::Lying(chain) => chain.certified_at(height).await,
        }
    }

    async fn block_at(&self, height: u64) -> Result<Option<Block>, ReadError> {
        match self.honest()?.through(self.lies()) {
            Either::Honest(chain) => chain.block_at(height).await,
            Either::Lying(chain) => chain.block_at(height).await,
        }
    }

    async fn block_by_hash(&self, hash: Digest) -> Result<Option<Block>, ReadError> {
        match self.honest()?.through(self.lies()) {
            Either::Honest(chain) => chain.block_by_hash(hash).await,
            Either::Lying(chain) => chain.block_by_hash(hash).await,
        }
    }

    async fn transaction_by_hash(&self, hash: B256) -> Result<Option<(Block, usize)>, ReadError> {
        self.honest()?.0.transaction_by_hash(hash).await
    }

    async fn explain(&self, height: u64) -> Result<Explained, ReadError> {
        self.honest()?.0.explain(height).await
    }
}

/// Relays every finalized block the node publishes on `own` to `served` (what its followers
/// subscribe to), through the lies `through` tells at that moment, until `own` closes.
pub fn relay<C: Clone + Send + Sync + 'static>(
    context: deterministic::Context,
    own: &FeedState,
    served: FeedState,
    through: Served<C>,
    epoch_length: u64,
) {
    let mut events = own.subscribe();
    context.spawn(move |_| async move {
        loop {
            let published = match events.recv().await {
                Ok(published) => published,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            let Event::Finalized { block, .. } = &published.event else {
                continue;
            };
            let height = block.height.unwrap_or_default();
            let event = match through.lies() {
                Some(faults) => faults.event(block.clone(), (height + 1) % epoch_length == 0),
                None => Some(block.clone()),
            };
            if let Some(event) = event {
                served.publish_finalized(event);
            }
        }
    });
}
