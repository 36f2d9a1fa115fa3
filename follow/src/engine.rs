//! The follower's wiring, in one place: the epoch registry and verifier registry, the embedded
//! execution store, commonware's marshal with on-disk archives and our resolver, the executor,
//! the driver, and the feed. The upstream is wired by the caller (a WebSocket actor, or the
//! in-process upstream in simulations), which hands over its notifications and request handle.

use crate::{
    backoff::Backoff,
    certificates::{Coverage, Fill, FillConfig},
    chain::{FollowerChain, TrustContext},
    damage::{
        CheckedFinalizations, DamageLog, StoreCheck, StoreCheckError, StoreCheckReport,
        check_stores, repair_finalization,
    },
    driver::{self, DriverError, MarshalUpdates, UpstreamStatus},
    executor,
    resolver::{FetchConfig, UpstreamFetcher},
    status::{Sampled, StatusBoard, sample},
    sync::backfill::Backfill,
    sync::catchup::{CatchUp, CatchUpConfig, CatchUpReport, VerifyPolicy},
    sync::checkpoint::Checkpoint,
    upstream::{Notification, ServedHook, SourceBook, Sourced, Sources, UpstreamRequests},
};
use cairn_epoch::{
    ChainProfile, Finalization, FinalizationScheme, FinalizationVerifier, SchemeProvider,
};
use cairn_feed::FeedState;
use cairn_primitives::{Block, BlockCodecConfig, Digest};
use cairn_storage::{StoreContext, archive_config, open_anchors, page_cache};
use cairn_storage::{
    execution::{EmbeddedExecution, ExecutionError, ExecutionProvider},
    provenance::{How, Provenance},
    registry::{EpochRegistry, RegistryError},
};
use commonware_consensus::{
    marshal::{self, Start, core::Actor as Marshal, resolver::handler, standard::Standard},
    types::ViewDelta,
};
use commonware_cryptography::{Digested, ed25519};
use commonware_parallel::Sequential;
use commonware_runtime::{
    Clock, Handle, Metrics, Spawner, Storage, buffer::paged::CacheRef,
    telemetry::metrics::MetricsExt as _,
};
use commonware_storage::archive::immutable;
use rand::CryptoRng;
use std::{
    num::{NonZeroU64, NonZeroUsize},
    sync::Arc,
    time::Duration,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

/// Buckets of the fetch latency histogram, in seconds.
const FETCH_LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Catch-up attempts before marshal is left to repair the gap.
const CATCH_UP_ATTEMPTS: u32 = 3;

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

/// Follower settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The chain to follow (its genesis header is required).
    pub profile: ChainProfile,
    /// Epoch verifiers kept in memory and on disk.
    pub max_epochs: usize,
    /// Events kept while their epoch's key is unknown.
    pub max_pending_events: NonZeroUsize,
    /// Bytes of such events kept.
    pub max_pending_bytes: NonZeroUsize,
    /// Heights marshal repairs in parallel.
    pub max_repair: NonZeroUsize,
    /// Blocks marshal dispatches before waiting for acknowledgements.
    pub max_pending_acks: NonZeroUsize,
    /// Resolver fetch settings.
    pub fetch: FetchConfig,
    /// Delay before the resolver retries a key no attempt could fetch.
    pub fetch_retry_delay: Duration,
    /// Mailbox sizes.
    pub mailbox_size: NonZeroUsize,
    /// Prefix of every storage partition, so several followers can share one storage.
    pub partition_prefix: String,
    /// A verified checkpoint to start from instead of genesis (see [`crate::sync::checkpoint`]).
    pub checkpoint: Option<Checkpoint>,
    /// Where evidence of conflicting certificates is written (the follower stops after).
    pub evidence_dir: Option<std::path::PathBuf>,
    /// How a follower far behind catches up.
    pub catch_up: CatchUpConfig,
    /// Fetch the history under a checkpoint start down to genesis, in the background (see
    /// [`crate::sync::backfill`]).
    pub backfill: bool,
    /// Identities verified before the follower started (the boundary walk of a checkpoint
    /// start, as first epoch and identity), added to the identity history.
    pub known_identities: Vec<(u64, cairn_dkg::Identity)>,
    /// The feed the follower publishes its verified blocks on (an RPC server may serve it
    /// while the follower starts, e.g. for `eth_syncing`).
    pub feed: FeedState,
    /// Where the follower's status is kept fresh from the moment its stores are open (during
    /// the start-up catch-up too); its metrics are registered on the engine's context.
    pub status: StatusBoard,
    /// How much of the stores is read at start to find damage.
    pub store_check: StoreCheck,
    /// How the served heights' missing certificates are fetched.
    pub certificates: FillConfig,
}

impl EngineConfig {
    /// Defaults for following `profile`.
    pub fn new(profile: ChainProfile) -> Self {
        Self {
            profile,
            max_epochs: 64,
            max_pending_events: nonzero(1024),
            max_pending_bytes: nonzero(64 * 1024 * 1024),
            max_repair: nonzero(64),
            max_pending_acks: nonzero(64),
            fetch: FetchConfig::default(),
            fetch_retry_delay: Duration::from_millis(500),
            mailbox_size: nonzero(1024),
            partition_prefix: "follow".into(),
            checkpoint: None,
            evidence_dir: None,
            catch_up: CatchUpConfig::default(),
            backfill: false,
            known_identities: Vec::new(),
            feed: FeedState::default(),
            status: StatusBoard::default(),
            store_check: StoreCheck::default(),
            certificates: FillConfig::default(),
        }
    }
}

/// The runtime context a follower needs.
pub trait EngineContext: StoreContext + Spawner + Clock + Metrics + Storage + CryptoRng {}

impl<E: StoreContext + Spawner + Clock + Metrics + Storage + CryptoRng> EngineContext for E {}

/// A running follower.
pub struct Follower<E: EngineContext> {
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

impl<E: EngineContext> Follower<E> {
    /// Resolves when any part of the follower stops: `Ok` when the upstream notifications
    /// ended, otherwise the error that stopped it.
    pub async fn stopped(self) -> Result<(), EngineError> {
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

/// Events held while catch-up runs; older ones are dropped (catch-up and marshal cover them).
const MAX_HELD_EVENTS: usize = 1024;

/// Holds a notification received before the driver runs: every connection change and invalid
/// event, and the newest [`MAX_HELD_EVENTS`] events.
fn hold(held: &mut Vec<Sourced>, notification: Sourced) {
    let is_event = |(_, notification): &Sourced| matches!(notification, Notification::Event(_));
    if is_event(&notification)
        && held.iter().filter(|held| is_event(held)).count() >= MAX_HELD_EVENTS
        && let Some(oldest) = held.iter().position(is_event)
    {
        held.remove(oldest);
    }
    held.push(notification);
}

/// The longest wait between backfill attempts.
const MAX_BACKFILL_DELAY: Duration = Duration::from_secs(60);

/// Backfills the history under the lowest stored block down to genesis, trying again (after
/// a growing delay) whenever the upstreams fail it or serve a broken chain; sends how long it
/// took on `done`.
async fn backfill_history<E: EngineContext, U: UpstreamRequests>(
    context: E,
    execution: EmbeddedExecution<E>,
    sources: Sources<U>,
    config: CatchUpConfig,
    done: watch::Sender<Option<Duration>>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), MAX_BACKFILL_DELAY);
    let started = context.current();
    loop {
        let backfill = Backfill {
            execution: &execution,
            sources: &sources,
            config,
        };
        match backfill.run().await {
            Ok(report) => {
                let took = context
                    .current()
                    .duration_since(started)
                    .unwrap_or_default();
                info!(
                    from = report.from,
                    ?took,
                    "history backfilled down to genesis"
                );
                done.send_replace(Some(took));
                return;
            }
            Err(err) if err.is_retryable() => {
                let delay = backoff.next_delay();
                warn!(%err, down_to = execution.first_height(), retry_in = ?delay, "backfill interrupted; trying again");
                context.sleep(delay).await;
            }
            Err(err) => {
                error!(%err, down_to = execution.first_height(), "backfill stopped");
                return;
            }
        }
    }
}

/// How often stored blocks found damaged are fetched again.
const REPAIR_INTERVAL: Duration = Duration::from_secs(1);

/// What the repair task reads and writes.
struct Repairs<E: EngineContext, U> {
    profile: ChainProfile,
    execution: EmbeddedExecution<E>,
    verifier: FinalizationVerifier,
    anchors: cairn_storage::AnchorStore<E>,
    sources: Sources<U>,
    certificates: DamageLog,
}

impl<E: EngineContext, U: UpstreamRequests> Repairs<E, U> {
    /// One pass over everything found damaged and not repaired yet: blocks first, highest
    /// first (each is checked against the parent hash of the block above it), then
    /// finalizations (each verified against its repaired block).
    async fn pass(&self, rng: &mut impl CryptoRng) {
        for height in self.execution.damaged().into_iter().rev() {
            let fetched = match self.sources.get_blocks(height, height).await {
                Ok(blocks) => blocks.into_iter().find(|block| block.height() == height),
                Err(err) => {
                    warn!(height, %err, "fetching a damaged block again failed; trying again");
                    None
                }
            };
            let Some(block) = fetched else { continue };
            match self.execution.repair(&block).await {
                Ok(true) => info!(
                    height,
                    "a damaged block was fetched again, checked against the hash chain and stored"
                ),
                Ok(false) => {}
                Err(err) => warn!(height, %err, "a damaged block could not be repaired"),
            }
        }
        for height in self.certificates.open() {
            match repair_finalization(
                rng,
                height,
                &self.profile,
                &self.execution,
                &self.verifier,
                &self.anchors,
                &self.sources,
            )
            .await
            {
                Ok(()) => {
                    self.certificates.repaired(height);
                    info!(
                        height,
                        "a damaged finalization was fetched again, verified with its epoch's key and stored"
                    );
                }
                Err(err) => warn!(height, %err, "a damaged finalization could not be repaired yet"),
            }
        }
    }
}

/// Repairs what is found damaged on disk, every [`REPAIR_INTERVAL`]: a block or finalization
/// whose checksum fails when it is read (by the start-up check, a client or marshal) is
/// fetched again from the upstreams and stored once it checks out.
async fn repair_damaged<E: EngineContext, U: UpstreamRequests>(context: E, repairs: Repairs<E, U>) {
    let mut rng = context.child("rng");
    loop {
        context.sleep(REPAIR_INTERVAL).await;
        repairs.pass(&mut rng).await;
    }
}

/// Logs what the start-up store check found.
fn log_store_check(report: &StoreCheckReport, check: StoreCheck, took: Duration) {
    if report.from > report.to {
        return;
    }
    let scope = match check {
        StoreCheck::All => "every stored height",
        StoreCheck::Newest(_) => "the newest heights",
    };
    if report.damaged_blocks.is_empty() && report.damaged_finalizations.is_empty() {
        info!(
            from = report.from,
            to = report.to,
            blocks = report.blocks,
            finalizations = report.finalizations,
            ?took,
            "stores checked ({scope}): nothing damaged"
        );
    } else {
        warn!(
            from = report.from,
            to = report.to,
            blocks = report.blocks,
            finalizations = report.finalizations,
            damaged_blocks = ?report.damaged_blocks,
            damaged_finalizations = ?report.damaged_finalizations,
            ?took,
            "stores checked ({scope}): damage found; it is fetched again from the upstreams"
        );
    }
}

/// A size that is not zero.
const fn nonzero(value: usize) -> NonZeroUsize {
    match NonZeroUsize::new(value) {
        Some(value) => value,
        None => panic!("a size of zero"),
    }
}

/// The genesis block of `profile`, checked to carry its genesis outcome.
pub fn genesis_block(profile: &ChainProfile) -> Result<Block, EngineError> {
    let header = profile
        .genesis_header
        .clone()
        .ok_or_else(|| EngineError::NoGenesisHeader(profile.name.clone()))?;
    if header.inner.extra_data.as_ref() != profile.genesis.to_bytes().as_slice() {
        return Err(EngineError::GenesisOutcome(profile.name.clone()));
    }
    Ok(Block::header_only(header))
}

/// The stored finalization of the stored tip, when there is one and it verifies against the
/// block stored there with the key of its epoch. One that does not is left out, with a
/// warning: marshal then repairs from its own floor.
async fn stored_tip_floor<E: EngineContext>(
    execution: &EmbeddedExecution<E>,
    anchors: &cairn_storage::AnchorStore<E>,
    provider: &SchemeProvider,
    profile: &ChainProfile,
    rng: &mut impl CryptoRng,
) -> Result<Option<Finalization>, cairn_storage::StoreError> {
    let tip = execution.finalized_height();
    if tip == 0 {
        return Ok(None);
    }
    let Some(floor) = anchors
        .get(
            commonware_storage::archive::Identifier::Index(tip),
            "reading the stored tip's finalization",
        )
        .await?
    else {
        return Ok(None);
    };
    let block = match execution.block_by_number(tip).await {
        Ok(Some(block)) => block,
        Ok(None) => return Ok(None),
        Err(err) => {
            warn!(tip, %err, "the stored tip cannot be read; marshal repairs from its own floor");
            return Ok(None);
        }
    };
    let verifier = FinalizationVerifier::new(profile.epochs.clone(), provider.clone());
    match verifier.verify_parts(rng, block, floor.clone()) {
        Ok(_) => Ok(Some(floor)),
        Err(err) => {
            warn!(tip, %err, "the stored tip's finalization does not verify; marshal repairs from its own floor");
            Ok(None)
        }
    }
}

/// How the driver rejoins through the hash chain when it falls far behind while it runs: the
/// start-up catch-up, run again from wherever the executor stands. `None` under
/// [`VerifyPolicy::EveryBlock`], which leaves every gap to marshal.
fn rejoin<E: EngineContext, U: UpstreamRequests>(
    context: E,
    catch_up: &CatchUp<'_, E, U>,
) -> Option<driver::Rejoin> {
    let config = catch_up.config;
    if config.policy != VerifyPolicy::HashChain || config.rejoin_gap == 0 {
        return None;
    }
    // What the catch-up reads, owned once and shared by every attempt.
    let owned = Arc::new((
        catch_up.profile.clone(),
        catch_up.provider.clone(),
        catch_up.registry.clone(),
        catch_up.execution.clone(),
        catch_up.anchors.clone(),
        catch_up.sources.clone(),
    ));
    Some(driver::Rejoin {
        gap: config.rejoin_gap,
        start: Box::new(move || {
            let clock = context.child("attempt");
            let mut rng = context.child("attempt_rng");
            let owned = owned.clone();
            Box::pin(async move {
                let (profile, provider, registry, execution, anchors, sources) = &*owned;
                CatchUp {
                    profile,
                    provider,
                    registry,
                    execution,
                    anchors,
                    sources,
                    config,
                }
                .run(&clock, &mut rng)
                .await
            })
        }),
    })
}

/// Starts a follower in `context`'s storage, fed by the notifications of every source and
/// fetching from them: opens the stores, starts the status, catches up through the hash chain
/// when far behind, starts marshal on the verified floor, and spawns the resolver, executor,
/// driver, certificate fill and repairs around it.
pub async fn start<E, U>(
    context: E,
    config: EngineConfig,
    mut notifications: mpsc::Receiver<Sourced>,
    sources: Sources<U>,
) -> Result<Follower<E>, EngineError>
where
    E: EngineContext,
    U: UpstreamRequests,
{
    let profile = &config.profile;
    let (stores, start) = Stores::open(&context, &config).await?;
    let sources = sources
        .with_runtime(context.child("sources"))
        .recording(stores.served(How::CatchUp));
    let status = start_status(&context, &config, &stores, sources.book());

    // Far behind: catch up through the hash chain, then hand marshal the verified tip as its
    // floor. What a failed attempt stored was verified; marshal repairs what is left.
    let mut rng = context.child("catchup");
    let catch_up = CatchUp {
        profile,
        provider: &stores.provider,
        registry: &stores.registry,
        execution: &stores.execution,
        anchors: &stores.anchors,
        sources: &sources,
        config: config.catch_up,
    };
    let (caught_up, held) =
        catch_up_at_start(&context, &catch_up, &mut rng, &mut notifications).await?;
    let start = match caught_up.as_ref().and_then(|report| report.floor.clone()) {
        Some(floor) => Start::Floor(floor),
        // A verified finalization of the stored tip (a catch-up whose floor marshal may not
        // have installed before the process stopped) is marshal's floor, so marshal does not
        // repair the stored blocks again; marshal ignores a floor at or below its own. It is
        // verified here first: marshal panics on a floor whose epoch has no key or that does
        // not verify.
        None => match stored_tip_floor(
            &stores.execution,
            &stores.anchors,
            &stores.provider,
            profile,
            &mut rng,
        )
        .await
        .map_err(EngineError::Anchors)?
        {
            Some(floor) => Start::Floor(floor),
            None => start,
        },
    };
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
    };
    spawn_actors(
        &context, &config, stores, status, &sources, marshal, handover,
    )
    .await
}

/// Marshal's start: genesis, or a verified finalization as its floor.
type MarshalStart = Start<FinalizationScheme, Digest, Digested<Block>>;

/// What the start-up hands to the live actors.
struct Handover {
    rejoin: Option<driver::Rejoin>,
    /// Notifications received during the start-up catch-up.
    held: Vec<Sourced>,
    notifications: mpsc::Receiver<Sourced>,
    caught_up: Option<CatchUpReport>,
    backfilled: watch::Receiver<Option<Duration>>,
}

/// The stores a follower opens before anything runs, and the trust they hold.
struct Stores<E: EngineContext> {
    execution: EmbeddedExecution<E>,
    provider: SchemeProvider,
    registry: EpochRegistry<E>,
    identities: cairn_storage::registry::IdentityHistory,
    provenance: Provenance<E>,
    anchors: cairn_storage::AnchorStore<E>,
}

impl<E: EngineContext> Stores<E> {
    /// Opens the execution store on the checkpoint's block or genesis, the epoch registry with
    /// the startup trust (the registry of an earlier run, the keys a checkpoint's boundary walk
    /// proved, and what the stored chain's boundary blocks announce where a key is missing),
    /// the provenance store and the anchor store (with the checkpoint's finalization). Returns
    /// them with marshal's start before any catch-up.
    async fn open(context: &E, config: &EngineConfig) -> Result<(Self, MarshalStart), EngineError> {
        let profile = &config.profile;
        let (anchor, start) = match &config.checkpoint {
            Some(checkpoint) => (
                checkpoint.block.clone(),
                Start::Floor(checkpoint.finalization.clone()),
            ),
            None => {
                let genesis = genesis_block(profile)?;
                let start = Start::Genesis(Digested::precomputed(genesis.clone(), genesis.hash()));
                (genesis, start)
            }
        };
        let prefix = &config.partition_prefix;
        let execution = open_execution(context, prefix, &anchor, profile).await?;
        let provider = SchemeProvider::new(&profile.namespace, config.max_epochs);
        let registry = EpochRegistry::open(
            context.child("registry"),
            &format!("{prefix}-epochs"),
            config.max_epochs,
        )
        .await?;
        let trusted = config
            .checkpoint
            .as_ref()
            .map(|checkpoint| checkpoint.identities.clone())
            .unwrap_or_default();
        let loaded = registry
            .load_for_chain(&provider, profile, &execution, &trusted)
            .await?;
        let identities = registry.history();
        for (epoch, identity) in &config.known_identities {
            identities.observe(*epoch, *identity);
        }
        for configured in &profile.network_identities {
            provider.set_configured_identity(configured.identity, configured.from_epoch);
        }
        info!(
            epochs = provider.len(),
            restored = loaded.restored,
            executed = execution.finalized_height(),
            "follower state opened"
        );
        let provenance = start_provenance(context, prefix, config.checkpoint.as_ref()).await?;
        let anchors = open_anchors(context.child("anchors"), &format!("{prefix}-anchors"))
            .await
            .map_err(|error| EngineError::Archive {
                what: "anchors",
                error,
            })?;
        // The checkpoint's verified finalization is served from the anchors, as marshal's
        // floor moves on when catch-up runs.
        if let Some(checkpoint) = &config.checkpoint {
            anchors
                .put_sync(
                    checkpoint.height(),
                    checkpoint.block.hash(),
                    &checkpoint.finalization,
                    "storing the checkpoint's finalization",
                )
                .await
                .map_err(EngineError::Anchors)?;
        }
        let stores = Self {
            execution,
            provider,
            registry,
            identities,
            provenance,
            anchors,
        };
        Ok((stores, start))
    }

    /// Records who served the blocks a fetch brings, and how.
    fn served(&self, how: How) -> ServedHook {
        let provenance = self.provenance.clone();
        Arc::new(move |first, last, source| provenance.record(first, last, Some(source), how))
    }
}

/// What the status sampler reads, shared with the actors that update it.
struct Status {
    upstream_tx: watch::Sender<UpstreamStatus>,
    upstream: watch::Receiver<UpstreamStatus>,
    certificate_damage: DamageLog,
    coverage: Coverage,
}

/// Starts the status sampler (the status board and the metrics), from now on.
fn start_status<E: EngineContext>(
    context: &E,
    config: &EngineConfig,
    stores: &Stores<E>,
    book: &SourceBook,
) -> Status {
    let (upstream_tx, upstream) = watch::channel(UpstreamStatus::default());
    let status_context = context.child("status");
    book.observe_fetch_latency(status_context.histogram(
        "fetch_latency_seconds",
        "Round-trip time of requests the upstreams served (blocks, finalizations, batches)",
        FETCH_LATENCY_BUCKETS,
    ));
    let status = Status {
        upstream_tx,
        upstream,
        certificate_damage: DamageLog::default(),
        coverage: Coverage::default(),
    };
    let sampled = Sampled {
        chain: config.profile.name.clone(),
        epochs: config.profile.epochs.clone(),
        execution: stores.execution.clone(),
        provider: stores.provider.clone(),
        identities: stores.identities.clone(),
        sources: book.clone(),
        upstream: status.upstream.clone(),
        certificate_damage: status.certificate_damage.clone(),
        coverage: status.coverage.clone(),
    };
    let board = config.status.clone();
    status_context.spawn(move |context| sample(context, sampled, board));
    status
}

/// Marshal's actor, not started yet, with its mailbox and what the store check found.
struct StartedMarshal<E: EngineContext> {
    actor: MarshalActor<E>,
    mailbox: driver::MarshalMailbox,
    store_check: StoreCheckReport,
}

/// Marshal as the follower runs it.
type MarshalActor<E> = Marshal<
    E,
    Standard<Block>,
    SchemeProvider,
    CheckedFinalizations<E>,
    immutable::Archive<E, Digest, Arc<Block>>,
    commonware_consensus::types::FixedEpocher,
    Sequential,
>;

/// Opens marshal's archives (checking the stores as configured, fetching damaged
/// finalizations again first, since marshal panics on a missing newest one), initialises
/// marshal at `start`, and spawns the repair of what the check found damaged.
async fn start_marshal<E: EngineContext, U: UpstreamRequests>(
    context: &E,
    config: &EngineConfig,
    stores: &Stores<E>,
    status: &Status,
    sources: &Sources<U>,
    start: MarshalStart,
    rng: &mut impl CryptoRng,
) -> Result<StartedMarshal<E>, EngineError> {
    let profile = &config.profile;
    let prefix = &config.partition_prefix;
    let cache = page_cache();
    let (finalizations, store_check) = open_finalizations(
        context,
        prefix,
        cache.clone(),
        &stores.execution,
        &stores.anchors,
        &status.certificate_damage,
        &status.coverage,
        config.store_check,
    )
    .await?;
    let repairs = Repairs {
        profile: profile.clone(),
        execution: stores.execution.clone(),
        verifier: FinalizationVerifier::new(profile.epochs.clone(), stores.provider.clone()),
        anchors: stores.anchors.clone(),
        sources: sources.clone().recording(stores.served(How::Repair)),
        certificates: status.certificate_damage.clone(),
    };
    if !store_check.damaged_finalizations.is_empty() {
        repairs.pass(rng).await;
    }
    let blocks: immutable::Archive<E, Digest, Arc<Block>> = immutable::Archive::init(
        context.child("blocks"),
        archive_config(
            &format!("{prefix}-blocks"),
            cache.clone(),
            BlockCodecConfig::default(),
        ),
    )
    .await
    .map_err(|error| EngineError::Archive {
        what: "blocks",
        error,
    })?;
    let buffer = nonzero(64 * 1024);
    let marshal_config = marshal::Config {
        provider: stores.provider.clone(),
        epocher: profile.epochs.epocher().clone(),
        start,
        partition_prefix: format!("{prefix}-marshal"),
        mailbox_size: config.mailbox_size,
        view_retention: ViewDelta::new(profile.epochs.length()),
        prunable_items_per_section: NonZeroU64::new(4096).expect("non-zero"),
        page_cache: cache,
        replay_buffer: buffer,
        key_write_buffer: buffer,
        value_write_buffer: buffer,
        block_codec_config: BlockCodecConfig::default(),
        max_repair: config.max_repair,
        max_pending_acks: config.max_pending_acks,
        strategy: Sequential,
    };
    let (actor, mailbox, _floor) = Marshal::<_, Standard<Block>, _, _, _, _, _>::init(
        context.child("marshal"),
        finalizations,
        blocks,
        marshal_config,
    )
    .await;
    context
        .child("repair")
        .spawn(move |context| repair_damaged(context, repairs));
    Ok(StartedMarshal {
        actor,
        mailbox,
        store_check,
    })
}

/// With [`EngineConfig::backfill`] on a checkpoint start, fetches the history below it in the
/// background.
fn spawn_backfill<E: EngineContext, U: UpstreamRequests>(
    context: &E,
    config: &EngineConfig,
    stores: &Stores<E>,
    sources: &Sources<U>,
) -> watch::Receiver<Option<Duration>> {
    let (backfill_done, backfilled) = watch::channel(None);
    if config.backfill && stores.execution.first_height() > 0 {
        let execution = stores.execution.clone();
        let sources = sources.clone().recording(stores.served(How::Backfill));
        let settings = config.catch_up;
        context.child("backfill").spawn(move |context| {
            backfill_history(context, execution, sources, settings, backfill_done)
        });
    }
    backfilled
}
/// Spawns the resolver, the executor, the driver (which starts marshal's deliveries), and the
/// certificate fill, and returns the running follower.
async fn spawn_actors<E: EngineContext, U: UpstreamRequests>(
    context: &E,
    config: &EngineConfig,
    stores: Stores<E>,
    status: Status,
    sources: &Sources<U>,
    marshal: StartedMarshal<E>,
    handover: Handover,
) -> Result<Follower<E>, EngineError> {
    let profile = &config.profile;
    let (repaired, live) = (stores.served(How::Repair), stores.served(How::Live));
    let (execution, provider) = (stores.execution.clone(), stores.provider.clone());
    let verifier = FinalizationVerifier::new(profile.epochs.clone(), provider.clone());
    let fetcher = UpstreamFetcher::new(
        context.child("fetcher"),
        sources
            .clone()
            .with_verifier(verifier.clone())
            .recording(repaired),
        execution.clone(),
        config.fetch,
    );
    let (handler_rx, handler) = handler::init(context.child("handler"), config.mailbox_size);
    let resolver = commonware_resolver::opaque::init::<_, _, _, ed25519::PublicKey>(
        context.child("resolver"),
        fetcher,
        handler,
        config.mailbox_size,
        config.fetch_retry_delay,
    );

    let feed = config.feed.clone();
    let (executor_actor, executor, executed) =
        executor::init(executor::Config::default(), execution.clone(), feed.clone());
    let executor_handle = context
        .child("executor")
        .spawn(|_| async move { executor_actor.run().await });

    let driver_actor = driver::init(driver::Config {
        verifier,
        registry: stores.registry,
        marshal: marshal.mailbox.clone(),
        executor,
        executed: executed.clone(),
        max_pending_events: config.max_pending_events,
        max_pending_bytes: config.max_pending_bytes,
        sources: sources.book().clone(),
        evidence_dir: config.evidence_dir.clone(),
        status: status.upstream_tx,
        feed: feed.clone(),
        rejoin: handover.rejoin,
        served: Some(live),
        tip: stored_tip(&execution).await,
        finalizations: Some(finalization_lookup(sources.clone())),
    });
    let (updates, delivered) = MarshalUpdates::new();
    let (held, notifications) = (handover.held, handover.notifications);
    let driver_handle = context
        .child("driver")
        .spawn(|rng| async move { driver_actor.run(rng, held, notifications, delivered).await });
    let marshal_handle = marshal
        .actor
        .start_unbuffered(updates, (handler_rx, resolver));

    // The certificates of the served heights that have none, behind live following.
    let (certificate_requests, requested) = crate::certificates::requests();
    let fill = Fill {
        profile: profile.clone(),
        provider: provider.clone(),
        execution: execution.clone(),
        anchors: stores.anchors.clone(),
        sources: sources.clone(),
        coverage: status.coverage.clone(),
        config: config.certificates,
    };
    let fill_handle = context
        .child("certificates")
        .spawn(move |context| async move {
            let mut rng = context.child("rng");
            fill.run(context, &mut rng, requested).await
        });
    let chain = FollowerChain::new(execution.clone(), marshal.mailbox, stores.anchors)
        .with_certificates(certificate_requests)
        .with_trust(TrustContext {
            profile: profile.clone(),
            provider: provider.clone(),
            identities: stores.identities,
            provenance: stores.provenance,
            coverage: status.coverage.clone(),
            checkpoint: config.checkpoint.as_ref().map(|checkpoint| {
                (
                    checkpoint.height(),
                    checkpoint.block.hash(),
                    profile.epochs.epoch_of(checkpoint.height()).get(),
                )
            }),
        });
    // After a restart, what was last verified is the latest finalization from the first
    // moment, so `consensus_getLatest` and `eth_blockNumber` agree.
    let tip = execution.finalized_height();
    if tip > 0
        && let Ok(Some(latest)) = cairn_feed::ChainReader::certified_at(&chain, tip).await
    {
        feed.publish_finalized(latest);
    }

    Ok(Follower {
        chain,
        feed,
        executed,
        upstream: status.upstream,
        sources: sources.book().clone(),
        provider,
        caught_up: handover.caught_up,
        store_check: marshal.store_check,
        coverage: status.coverage,
        backfilled: handover.backfilled,
        marshal: marshal_handle,
        driver: driver_handle,
        executor: executor_handle,
        fill: fill_handle,
    })
}

/// The stored tip's height and hash, which the first block marshal delivers must extend.
async fn stored_tip<E: EngineContext>(execution: &EmbeddedExecution<E>) -> Option<(u64, Digest)> {
    let tip = execution.finalized_height();
    match execution.hash_by_number(tip).await {
        Ok(hash) => hash.map(|hash| (tip, hash)),
        Err(err) => {
            debug!(%err, "the stored tip's hash cannot be read; marshal's archive names it");
            None
        }
    }
}

/// Asks every source for its certified block at a height, for the evidence of a fork.
fn finalization_lookup<U: UpstreamRequests>(sources: Sources<U>) -> driver::FinalizationLookup {
    Arc::new(move |height| {
        let sources = sources.clone();
        Box::pin(async move {
            let answers = sources
                .finalization_of_each(height)
                .await
                .unwrap_or_default();
            answers
                .into_iter()
                .map(|(source, certified)| (sources.book().url(source), certified))
                .collect()
        })
    })
}

/// Opens marshal's finalization archive behind the check that turns a damaged record into a
/// missing one (see [`CheckedFinalizations`]), and checks the stores as `check` says.
#[allow(clippy::too_many_arguments)]
async fn open_finalizations<E: EngineContext>(
    context: &E,
    prefix: &str,
    cache: CacheRef,
    execution: &EmbeddedExecution<E>,
    anchors: &cairn_storage::AnchorStore<E>,
    damage: &DamageLog,
    coverage: &Coverage,
    check: StoreCheck,
) -> Result<(CheckedFinalizations<E>, StoreCheckReport), EngineError> {
    let finalizations: immutable::Archive<E, Digest, Finalization> = immutable::Archive::init(
        context.child("finalizations"),
        archive_config(&format!("{prefix}-finalizations"), cache, ()),
    )
    .await
    .map_err(|error| EngineError::Archive {
        what: "finalizations",
        error,
    })?;
    let finalizations = CheckedFinalizations::new(
        finalizations,
        anchors.clone(),
        damage.clone(),
        coverage.clone(),
    );
    let checking = context.current();
    let store_check = check_stores(execution, &finalizations, check).await?;
    let took = context
        .current()
        .duration_since(checking)
        .unwrap_or_default();
    log_store_check(&store_check, check, took);
    Ok((finalizations, store_check))
}

/// Opens the provenance store (see [`Provenance`]), records the checkpoint block's when the
/// store has none, and starts writing what is recorded once a second.
async fn start_provenance<E: EngineContext>(
    context: &E,
    prefix: &str,
    checkpoint: Option<&Checkpoint>,
) -> Result<Provenance<E>, EngineError> {
    let provenance =
        Provenance::open_or_reset(context.child("provenance"), &format!("{prefix}-provenance"))
            .await
            .map_err(EngineError::Provenance)?;
    if let Some(checkpoint) = checkpoint
        && provenance
            .get(checkpoint.height())
            .await
            .map_err(EngineError::Provenance)?
            .is_none()
    {
        let height = checkpoint.height();
        provenance.record(height, height, None, How::Checkpoint);
    }
    context.child("provenance").spawn({
        let provenance = provenance.clone();
        move |context| provenance.run(context)
    });
    Ok(provenance)
}

/// Opens the execution store (starting at `anchor` when empty) and checks that what it holds
/// agrees with the profile's trusted blocks (a damaged block is left to the repair task); from
/// then on the store refuses any other block at their heights.
async fn open_execution<E: EngineContext>(
    context: &E,
    prefix: &str,
    anchor: &Block,
    profile: &ChainProfile,
) -> Result<EmbeddedExecution<E>, EngineError> {
    let execution = EmbeddedExecution::open_in(
        context.child("execution"),
        &format!("{prefix}-execution"),
        anchor,
    )
    .await?;
    // Blocks the operator trusts: what is stored must hold them, and nothing else is written
    // at their heights.
    for trusted in &profile.trusted_blocks {
        let stored = match execution.block_by_number(trusted.height).await {
            Ok(stored) => stored,
            // Damaged: fetched again, through the hash chain, by the repair task.
            Err(ExecutionError::Store(err)) if err.is_corruption() => None,
            Err(err) => return Err(err.into()),
        };
        if let Some(stored) = stored
            && stored.hash() != trusted.hash
        {
            return Err(ExecutionError::Untrusted {
                height: trusted.height,
                trusted: trusted.hash,
                offered: stored.hash(),
            }
            .into());
        }
    }
    execution.trust(&profile.trusted_blocks);
    Ok(execution)
}

/// The start-up catch-up through the hash chain, up to [`CATCH_UP_ATTEMPTS`] attempts, while
/// the upstreams' notifications are held (the newest events only, so that they never block).
/// Returns the report of an attempt that caught up (its floor is marshal's), and what was held
/// for the driver. A storage failure or a chain that does not hold a trusted block ends the
/// start; any other failure leaves the gap to marshal.
async fn catch_up_at_start<E: EngineContext, U: UpstreamRequests>(
    context: &E,
    catch_up: &CatchUp<'_, E, U>,
    rng: &mut impl CryptoRng,
    notifications: &mut mpsc::Receiver<Sourced>,
) -> Result<(Option<CatchUpReport>, Vec<Sourced>), EngineError> {
    let mut held = Vec::new();
    for attempt in 1..=CATCH_UP_ATTEMPTS {
        let attempt_result = {
            let running = catch_up.run(context, rng);
            tokio::pin!(running);
            // The upstreams go on sending while catch-up asks them for data: their
            // notifications are held here (the newest events only) so they never block.
            loop {
                tokio::select! {
                    result = &mut running => break result,
                    notification = notifications.recv() => match notification {
                        Some(notification) => {
                            // Connection changes show in the status at once; the driver
                            // handles them again when it starts.
                            match &notification.1 {
                                Notification::Connected { .. } => catch_up.sources.book().set_connected(notification.0, true),
                                Notification::Disconnected { .. } => catch_up.sources.book().set_connected(notification.0, false),
                                _ => {}
                            }
                            hold(&mut held, notification);
                        }
                        None => break Ok(CatchUpReport::default()),
                    },
                }
            }
        };
        match attempt_result {
            Ok(report) => {
                if report.floor.is_some() {
                    info!(
                        from = report.from,
                        to = report.to,
                        certificates = report.certificates,
                        "caught up through the hash chain"
                    );
                    return Ok((Some(report), held));
                }
                break;
            }
            Err(err) if err.is_storage() || err.is_untrusted() => {
                return Err(EngineError::CatchUp(err));
            }
            Err(err) if err.is_retryable() && attempt < CATCH_UP_ATTEMPTS => {
                warn!(%err, attempt, "catch-up attempt failed; trying again");
            }
            Err(err) => {
                warn!(%err, "catch-up through the hash chain stopped; marshal repairs the gap block by block");
                break;
            }
        }
    }
    Ok((None, held))
}

#[cfg(test)]
mod tests {
    use super::{MAX_HELD_EVENTS, hold};
    use crate::upstream::Notification;
    use cairn_primitives::{CertifiedBlock, Event};

    fn event(height: u64) -> Notification {
        Notification::Event(Box::new(Event::Finalized {
            block: CertifiedBlock {
                epoch: 0,
                view: height,
                height: Some(height),
                digest: Default::default(),
                certificate: String::new(),
                block: None,
            },
            seen: 0,
        }))
    }

    #[test]
    fn held_notifications_keep_connection_changes_and_the_newest_events() {
        let mut held = Vec::new();
        hold(&mut held, (0, Notification::Connected { url: "a".into() }));
        let events = MAX_HELD_EVENTS as u64 + 10;
        for height in 1..=events {
            hold(&mut held, (0, event(height)));
        }
        hold(
            &mut held,
            (
                0,
                Notification::Disconnected {
                    reason: "gone".into(),
                },
            ),
        );
        assert_eq!(held.len(), MAX_HELD_EVENTS + 2);
        assert!(matches!(held[0].1, Notification::Connected { .. }));
        assert!(matches!(
            held[held.len() - 1].1,
            Notification::Disconnected { .. }
        ));
        // The oldest events went; the newest stayed, in order.
        assert_eq!(held[1].1, event(11));
        assert_eq!(held[MAX_HELD_EVENTS].1, event(events));
    }
}
