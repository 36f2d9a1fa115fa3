//! Starting the simulation's nodes, each in one task the harness can kill: a validator
//! (`cairn_validator::simulated`), a cairn follower (the same [`Engine`] the binary runs, its
//! upstreams in-process through the same actor and sources), or the deliberately broken
//! [`FollowerKind::TrustingRelay`].

use crate::served::{Served, relay};
use alloy_primitives::B256;
use cairn_devnet::{ChainStore, Devnet, DevnetConfig};
use cairn_epoch::ChainProfile;
use cairn_feed::{ChainReader, Explained, FeedState, ReadError};
use cairn_follow::{
    Engine, EngineConfig, EngineError, Upstreams,
    chain::FollowerChain,
    driver::DriverError,
    upstream::{QuarantineConfig, Sources, in_process},
};
use cairn_primitives::{Block, CertifiedBlock, Digest, Event};
use cairn_storage::execution::EmbeddedExecution;
use cairn_testkit::MemoryChain;
use cairn_validator::simulated::{SimulatedChain, Timeouts, launch};
use commonware_cryptography::ed25519;
use commonware_p2p::simulated::Oracle;
use commonware_runtime::{Clock as _, Handle, Spawner as _, Supervisor as _, deterministic};
use futures::channel::oneshot;
use std::future::Future;
use tokio::sync::{broadcast::error::RecvError, mpsc};

/// A cairn follower's chain, as it serves it.
pub type CairnChain =
    FollowerChain<EmbeddedExecution<deterministic::Context>, deterministic::Context>;

/// The chain a running node serves.
#[derive(Clone)]
pub enum NodeChain {
    /// A validator's or the producer's store.
    Store(ChainStore<deterministic::Context>),
    /// A cairn follower's chain.
    Cairn(CairnChain),
    /// The trusting relay's memory.
    Relay(MemoryChain),
}

/// `$body` with `$chain` bound to whichever chain `$node` holds.
macro_rules! each {
    ($node:expr, $chain:ident => $body:expr) => {
        match $node {
            NodeChain::Store($chain) => $body,
            NodeChain::Cairn($chain) => $body,
            NodeChain::Relay($chain) => $body,
        }
    };
}

impl ChainReader for NodeChain {
    fn finalized_height(&self) -> Option<u64> {
        each!(self, chain => chain.finalized_height())
    }

    async fn certified_at(&self, height: u64) -> Result<Option<CertifiedBlock>, ReadError> {
        each!(self, chain => chain.certified_at(height).await)
    }

    async fn block_at(&self, height: u64) -> Result<Option<Block>, ReadError> {
        each!(self, chain => chain.block_at(height).await)
    }

    async fn block_by_hash(&self, hash: Digest) -> Result<Option<Block>, ReadError> {
        each!(self, chain => chain.block_by_hash(hash).await)
    }

    async fn transaction_by_hash(&self, hash: B256) -> Result<Option<(Block, usize)>, ReadError> {
        each!(self, chain => chain.transaction_by_hash(hash).await)
    }

    async fn explain(&self, height: u64) -> Result<Explained, ReadError> {
        each!(self, chain => chain.explain(height).await)
    }
}

/// Which follower runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FollowerKind {
    /// cairn's follower.
    #[default]
    Cairn,
    /// A deliberately broken follower, to show that the properties catch one: it serves every
    /// block its upstreams announce, unverified, from memory (so a crash loses it).
    TrustingRelay,
}

/// Why a node's task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// It stopped, for this reason (a storage failure, say).
    Ended(String),
    /// A follower halted on conflicting certificates.
    Halted(String),
    /// It panicked.
    Panicked(String),
}

/// A node's running task.
pub struct Running {
    handle: Handle<()>,
    stopped: oneshot::Receiver<Stop>,
}

impl Running {
    /// Kills the node.
    pub fn kill(self) {
        self.handle.abort();
    }

    /// Why the node stopped, once it has.
    pub fn stopped(&mut self) -> Option<Stop> {
        match self.stopped.try_recv() {
            Ok(stop) => stop,
            Err(_) => Some(Stop::Ended("its task is gone".into())),
        }
    }
}

/// Runs `work` in a task of its own under `context`, reporting why it ended.
fn supervise<F, Fut>(context: deterministic::Context, work: F) -> Running
where
    F: FnOnce(deterministic::Context) -> Fut + Send + 'static,
    Fut: Future<Output = Stop> + Send + 'static,
{
    let (report, stopped) = oneshot::channel();
    let handle = context.spawn(move |context| async move {
        let stop = match context.child("work").spawn(work).await {
            Ok(stop) => stop,
            Err(err) => Stop::Panicked(err.to_string()),
        };
        let _ = report.send(stop);
    });
    Running { handle, stopped }
}

/// What followers reach of a node: its feed (kept across its restarts) and its chain.
#[derive(Clone, Default)]
pub struct Upstream {
    /// Its feed.
    pub feed: FeedState,
    /// Its chain, while it runs.
    pub served: Served<NodeChain>,
}

/// Starts validator `index` of `chain`, serving on `served` and `feed`.
pub fn start_validator(
    context: deterministic::Context,
    chain: SimulatedChain,
    oracle: Oracle<ed25519::PublicKey, deterministic::Context>,
    index: usize,
    timeouts: Timeouts,
    Upstream { feed, served }: Upstream,
) -> Running {
    supervise(context, move |context| async move {
        let epoch_length = chain.blocks.epoch_length.get();
        let Some(validator) =
            launch(context.child("validator"), &chain, &oracle, index, timeouts).await
        else {
            return Stop::Ended("its stores did not open".into());
        };
        served.up(NodeChain::Store(validator.store.clone()));
        relay(
            context.child("relay"),
            &validator.feed,
            feed,
            served,
            epoch_length,
        );
        match validator.handle.await {
            Ok(()) => Stop::Ended("the validator stopped".into()),
            Err(err) => Stop::Panicked(err.to_string()),
        }
    })
}

/// Starts the certifying producer of `config` (its seed fixes its keys, ceremonies and
/// timestamps), producing a block every `block_time` and serving on `served` and `feed`. After
/// a crash it resumes after the last height it stored.
pub fn start_producer(
    context: deterministic::Context,
    config: DevnetConfig,
    Upstream { feed, served }: Upstream,
) -> Running {
    supervise(context, move |context| async move {
        let (block_time, epoch_length) = (config.block_time, config.epoch_length);
        let own = FeedState::default();
        let mut devnet = match Devnet::open(context.child("devnet"), config, own.clone()).await {
            Ok(devnet) => devnet,
            Err(err) => return Stop::Ended(format!("it did not start: {err}")),
        };
        served.up(NodeChain::Store(devnet.store().clone()));
        relay(context.child("relay"), &own, feed, served, epoch_length);
        loop {
            context.sleep(block_time).await;
            match devnet.produce_next().await {
                Ok(produced) => own.publish_finalized(produced.certified),
                Err(err) => return Stop::Ended(err.to_string()),
            }
        }
    })
}

/// The chain profile of the producer of `config`, from its genesis (created in `context`'s
/// storage if it is not there yet).
pub async fn producer_profile(
    context: deterministic::Context,
    config: DevnetConfig,
) -> Result<ChainProfile, String> {
    let devnet = Devnet::open(context, config, FeedState::default())
        .await
        .map_err(|err| err.to_string())?;
    devnet.profile("simulated").map_err(|err| err.to_string())
}

/// Starts follower `index` of kind `kind` following `upstreams`, serving on `served` (its
/// feed and chain).
pub fn start_follower(
    context: deterministic::Context,
    config: EngineConfig,
    index: usize,
    kind: FollowerKind,
    upstreams: Vec<(String, Upstream)>,
    served: Upstream,
) -> Running {
    supervise(context, move |context| async move {
        let epoch_length = config.profile.epochs.length();
        match kind {
            FollowerKind::Cairn => {
                run_cairn(context, config, index, upstreams, served, epoch_length).await
            }
            FollowerKind::TrustingRelay => run_relay(upstreams, served).await,
        }
    })
}

async fn run_cairn(
    context: deterministic::Context,
    config: EngineConfig,
    index: usize,
    upstreams: Vec<(String, Upstream)>,
    Upstream { feed, served }: Upstream,
    epoch_length: u64,
) -> Stop {
    let (notifications_tx, notifications) = mpsc::channel(1024);
    let mut requests = Vec::with_capacity(upstreams.len());
    for (source, (name, upstream)) in upstreams.into_iter().enumerate() {
        let (actor, mailbox) = in_process::init(
            name.clone(),
            source,
            upstream.feed,
            upstream.served,
            notifications_tx.clone(),
        );
        context
            .child("upstream")
            .spawn(|context| actor.run(context));
        requests.push((name, mailbox));
    }
    drop(notifications_tx);
    let own = FeedState::default();
    let config = EngineConfig {
        partition_prefix: format!("follower-{index}"),
        feed: own.clone(),
        ..config
    };
    let upstreams = Upstreams {
        notifications,
        sources: Sources::new(requests, QuarantineConfig::default()),
    };
    let engine = match Engine::init(context.child("engine"), config, upstreams).await {
        Ok(engine) => engine,
        Err(err) => return Stop::Ended(format!("it did not start: {err}")),
    };
    served.up(NodeChain::Cairn(engine.chain.clone()));
    relay(context.child("relay"), &own, feed, served, epoch_length);
    match engine.run().await {
        Ok(()) => Stop::Ended("its upstreams ended".into()),
        Err(err @ EngineError::Driver(DriverError::Conflict { .. })) => {
            Stop::Halted(err.to_string())
        }
        Err(err) => Stop::Ended(err.to_string()),
    }
}

/// The trusting relay: every finalized block any upstream announces goes into memory and out
/// on its feed, unchecked.
async fn run_relay(
    upstreams: Vec<(String, Upstream)>,
    Upstream { feed, served }: Upstream,
) -> Stop {
    let chain = MemoryChain::default();
    served.up(NodeChain::Relay(chain.clone()));
    let mut events: Vec<_> = upstreams
        .iter()
        .map(|(_, upstream)| upstream.feed.subscribe())
        .collect();
    loop {
        let next =
            futures::future::select_all(events.iter_mut().map(|events| Box::pin(events.recv())));
        let (published, _, _) = next.await;
        match published {
            Ok(published) => {
                if let Event::Finalized { block, .. } = &published.event
                    && block.block.is_some()
                {
                    chain.insert(block.clone());
                    feed.publish_finalized(block.clone());
                }
            }
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return Stop::Ended("an upstream's feed closed".into()),
        }
    }
}
