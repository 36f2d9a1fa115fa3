//! The follower's start-up and wiring, in one place, in commonware's actor shape: an
//! [`EngineConfig`], [`Engine::init`] (the start point: genesis, the datadir's checkpoint or one
//! verified by walking the boundary certificates; the stores; the catch-up through the hash
//! chain; marshal and the actors around it), then [`Engine::run`] until it stops.
//!
//! The upstreams are handed in ([`Upstreams`]): WebSocket actors in the node, in-process ones
//! in simulations. Every fetch of the start-up, the walk included, goes through their
//! [`Sources`], so one that fails or lies is passed over.

mod actors;
mod config;
mod start;
mod stores;

pub use config::{EngineConfig, StartFrom};
pub use start::{StartedFrom, genesis_block};

use crate::status::EventCounters;
use crate::{
    certificates::Coverage,
    chain::FollowerChain,
    damage::{StoreCheckError, StoreCheckReport},
    driver::{self, DriverError, UpstreamStatus},
    sync::catchup::{CatchUp, CatchUpReport},
    upstream::{SourceBook, Sourced, Sources, UpstreamRequests},
};
use actors::{spawn_actors, spawn_backfill, start_marshal, start_status};
use cairn_epoch::{FinalizationScheme, SchemeProvider};
use cairn_feed::FeedState;
use cairn_primitives::{Block, Digest};
use cairn_storage::StoreContext;
use cairn_storage::{
    execution::{EmbeddedExecution, ExecutionError},
    provenance::How,
    registry::RegistryError,
};
use commonware_consensus::marshal::Start;
use commonware_cryptography::Digested;
use commonware_runtime::{Clock, Handle, Metrics, Spawner, Storage};
use rand::CryptoRng;
use start::{catch_up_at_start, marshal_floor, rejoin};
use std::time::Duration;
use stores::Stores;
use tokio::sync::{mpsc, watch};

/// Why the follower could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The profile has no genesis header, so there is no block to anchor marshal at.
    #[error("chain profile `{0}` has no genesis header; following needs one")]
    NoGenesisHeader(String),
    /// The genesis block does not carry the profile's genesis outcome.
    #[error("the genesis block does not carry chain profile `{0}`'s genesis outcome")]
    GenesisOutcome(String),
    /// The datadir belongs to another chain, or cannot be opened.
    #[error(transparent)]
    Execution(#[from] ExecutionError),
    /// The epoch registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A marshal archive could not be opened.
    #[error("opening marshal's {what} archive: {error}")]
    Archive {
        /// Which archive.
        what: &'static str,
        /// Why.
        error: commonware_storage::archive::Error,
    },
    /// The anchor store failed.
    #[error("the store of verified finalizations: {0}")]
    Anchors(cairn_storage::StoreError),
    /// The provenance store could not be opened.
    #[error("{0}")]
    Provenance(cairn_storage::provenance::ProvenanceError),
    /// No checkpoint could be established (the walk or the checkpoint's verification failed,
    /// or the checkpoint store could not be read or written).
    #[error("checkpoint start refused: {0}")]
    Checkpoint(#[from] crate::sync::checkpoint::CheckpointError),
    /// The start-up catch-up could not store what it verified.
    #[error("catching up: {0}")]
    CatchUp(crate::sync::catchup::CatchUpError),
    /// The start-up store check could not read a store.
    #[error("checking the stores: {0}")]
    StoreCheck(#[from] StoreCheckError),
    /// The driver stopped with an error.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// A task ended unexpectedly.
    #[error("the follower's {0} stopped")]
    Stopped(&'static str),
}

/// The runtime context a follower needs.
pub trait EngineContext: StoreContext + Spawner + Clock + Metrics + Storage + CryptoRng {}

impl<E: StoreContext + Spawner + Clock + Metrics + Storage + CryptoRng> EngineContext for E {}

/// The upstreams a follower reads: the notifications of every source, and the sources its
/// fetches go through.
pub struct Upstreams<U> {
    /// Every source's connection changes and events, in order per source.
    pub notifications: mpsc::Receiver<Sourced>,
    /// The same sources, for requests.
    pub sources: Sources<U>,
}

/// A running follower: [`Engine::init`] starts it, [`Engine::run`] waits for its end.
pub struct Engine<E: EngineContext> {
    /// What the follower serves: hand it to `cairn_feed::start`.
    pub chain: FollowerChain<EmbeddedExecution<E>, E>,
    /// The verified events the follower publishes.
    pub feed: FeedState,
    /// The executed (durable, verified) height.
    pub executed: watch::Receiver<u64>,
    /// The upstreams' status, all together.
    pub upstream: watch::Receiver<UpstreamStatus>,
    /// Each upstream's health.
    pub sources: SourceBook,
    /// The verifier registry (epochs with a key).
    pub provider: SchemeProvider,
    /// Where this start began: genesis, the datadir's checkpoint, or a walked one.
    pub started_from: StartedFrom,
    /// What the catch-up through the hash chain did at start, when it ran.
    pub caught_up: Option<CatchUpReport>,
    /// What the start-up store check read and found.
    pub store_check: StoreCheckReport,
    /// How many served heights have their own certificate.
    pub coverage: Coverage,
    /// With [`EngineConfig::backfill`]: set once the history reaches genesis, to how long the
    /// backfill took.
    pub backfilled: watch::Receiver<Option<Duration>>,
    marshal: Handle<()>,
    driver: Handle<Result<(), DriverError>>,
    executor: Handle<Result<(), ExecutionError>>,
    fill: Handle<Result<(), cairn_storage::StoreError>>,
}

impl<E: EngineContext> Engine<E> {
    /// Starts a follower in `context`'s storage from `config`, fed and served by `upstreams`:
    /// finds the start point (genesis, the datadir's checkpoint, or a new checkpoint verified
    /// through the boundary walk), opens the stores, starts the status, catches up through the
    /// hash chain when far behind, starts marshal on the verified floor, and spawns the
    /// resolver, executor, driver, certificate fill and repairs around it. The upstreams'
    /// notifications are held meanwhile, so they never block.
    pub async fn init<U: UpstreamRequests>(
        context: E,
        config: EngineConfig,
        upstreams: Upstreams<U>,
    ) -> Result<Self, EngineError> {
        let Upstreams {
            mut notifications,
            sources,
        } = upstreams;
        let sources = sources.with_runtime(context.child("sources"));
        // Counted where they happen, from the start (the walk's calls too).
        let counters = EventCounters::register(&context.child("status"));
        sources.book().count_events(&counters);
        let mut held = Vec::new();
        let start_point =
            start::resolve(&context, &config, &sources, &mut notifications, &mut held).await?;
        let (stores, start) = Stores::open(&context, &config, &start_point, &counters).await?;
        let sources = sources.recording(stores.served(How::CatchUp));
        let status = start_status(&context, &config, &stores, sources.book(), &counters);

        // Far behind: catch up through the hash chain, then hand marshal the verified tip as
        // its floor. What a failed attempt stored was verified; marshal repairs what is left.
        let mut rng = context.child("catchup");
        let catch_up = CatchUp {
            profile: &config.profile,
            provider: &stores.provider,
            registry: &stores.registry,
            execution: &stores.execution,
            anchors: &stores.anchors,
            sources: &sources,
            config: config.catch_up,
        };
        let caught_up =
            catch_up_at_start(&context, &catch_up, &mut rng, &mut notifications, &mut held).await?;
        let start = marshal_floor(
            &stores,
            &config.profile,
            caught_up.as_ref(),
            start,
            &mut rng,
        )
        .await?;
        // The same catch-up, run again by the driver when it falls far behind.
        let rejoin = rejoin(context.child("rejoin"), &catch_up);
        let marshal = start_marshal(
            &context, &config, &stores, &status, &sources, start, &mut rng,
        )
        .await?;
        let backfilled = spawn_backfill(&context, &config, &stores, &sources);
        let handover = Handover {
            rejoin,
            held,
            notifications,
            caught_up,
            backfilled,
            start_point,
            counters,
        };
        spawn_actors(
            &context, &config, stores, status, &sources, marshal, handover,
        )
        .await
    }

    /// Runs until any part of the follower stops: `Ok` when the upstream notifications
    /// ended, otherwise the error that stopped it.
    pub async fn run(self) -> Result<(), EngineError> {
        let Self {
            marshal,
            mut driver,
            executor,
            fill,
            ..
        } = self;
        // The fill ends only when its store fails.
        let fill_failed = async move {
            match fill.await {
                Ok(Err(err)) => err,
                _ => std::future::pending().await,
            }
        };
        let driver_result = |result: Result<Result<(), DriverError>, _>| match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(EngineError::Stopped("driver")),
        };
        // The executor ends cleanly only when the driver dropped its mailbox, and marshal's end
        // ends the driver: in both cases the driver's own result says why.
        tokio::select! {
            biased;
            result = &mut driver => driver_result(result),
            result = executor => match result {
                Ok(Err(err)) => Err(err.into()),
                _ => driver_result(driver.await),
            },
            _ = marshal => driver_result(driver.await).and(Err(EngineError::Stopped("marshal"))),
            err = fill_failed => Err(EngineError::Anchors(err)),
        }
    }
}

/// Marshal's start: genesis, or a verified finalization as its floor.
type MarshalStart = Start<FinalizationScheme, Digest, Digested<Block>>;

/// What the start-up hands to the live actors.
struct Handover {
    pub(super) rejoin: Option<driver::Rejoin>,
    /// Notifications received during the start-up catch-up.
    pub(super) held: Vec<Sourced>,
    pub(super) notifications: mpsc::Receiver<Sourced>,
    pub(super) caught_up: Option<CatchUpReport>,
    pub(super) backfilled: watch::Receiver<Option<Duration>>,
    pub(super) start_point: start::StartPoint,
    pub(super) counters: EventCounters,
}
