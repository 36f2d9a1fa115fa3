//! The running parts: the status sampler, marshal, the backfill, the repairs of damaged
//! records, and the live actors around marshal.

use super::{
    Engine, EngineConfig, EngineContext, EngineError, Handover, MarshalStart,
    config::nonzero,
    stores::{Stores, open_finalizations},
};
use crate::status::EventCounters;
use crate::{
    backoff::Backoff,
    certificates::{Coverage, Fill},
    chain::{FollowerChain, TrustContext},
    damage::{CheckedFinalizations, DamageLog, StoreCheckReport, repair_finalization},
    driver::{self, MarshalUpdates, UpstreamStatus},
    executor,
    resolver::UpstreamFetcher,
    status::{Sampled, sample},
    sync::backfill::Backfill,
    sync::catchup::CatchUpConfig,
    upstream::{SourceBook, Sources, UpstreamRequests},
};
use cairn_epoch::{ChainProfile, FinalizationVerifier, SchemeProvider};
use cairn_primitives::{Block, BlockCodecConfig, Digest};
use cairn_storage::{archive_config, page_cache};
use cairn_storage::{
    execution::{EmbeddedExecution, ExecutionProvider},
    provenance::How,
};
use commonware_consensus::{
    marshal::{self, core::Actor as Marshal, resolver::handler, standard::Standard},
    types::ViewDelta,
};
use commonware_cryptography::ed25519;
use commonware_parallel::Sequential;
use commonware_runtime::telemetry::metrics::MetricsExt as _;
use commonware_storage::archive::immutable;
use rand::CryptoRng;
use std::{num::NonZeroU64, sync::Arc, time::Duration};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// Buckets of the fetch latency histogram, in seconds.
pub(super) const FETCH_LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The longest wait between backfill attempts.
pub(super) const MAX_BACKFILL_DELAY: Duration = Duration::from_secs(60);

/// Backfills the history under the lowest stored block down to genesis, trying again (after
/// a growing delay) whenever the upstreams fail it or serve a broken chain; sends how long it
/// took on `done`.
pub(super) async fn backfill_history<E: EngineContext, U: UpstreamRequests>(
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
pub(super) const REPAIR_INTERVAL: Duration = Duration::from_secs(1);

/// What the repair task reads and writes.
pub(super) struct Repairs<E: EngineContext, U> {
    pub(super) profile: ChainProfile,
    pub(super) execution: EmbeddedExecution<E>,
    pub(super) verifier: FinalizationVerifier,
    pub(super) anchors: cairn_storage::AnchorStore<E>,
    pub(super) sources: Sources<U>,
    pub(super) certificates: DamageLog,
}

impl<E: EngineContext, U: UpstreamRequests> Repairs<E, U> {
    /// One pass over everything found damaged and not repaired yet: blocks first, highest
    /// first (each is checked against the parent hash of the block above it), then
    /// finalizations (each verified against its repaired block).
    pub(super) async fn pass(&self, rng: &mut impl CryptoRng) {
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
pub(super) async fn repair_damaged<E: EngineContext, U: UpstreamRequests>(
    context: E,
    repairs: Repairs<E, U>,
) {
    let mut rng = context.child("rng");
    loop {
        context.sleep(REPAIR_INTERVAL).await;
        repairs.pass(&mut rng).await;
    }
}

/// What the status sampler reads, shared with the actors that update it.
pub(super) struct Status {
    pub(super) upstream_tx: watch::Sender<UpstreamStatus>,
    pub(super) upstream: watch::Receiver<UpstreamStatus>,
    pub(super) certificate_damage: DamageLog,
    pub(super) coverage: Coverage,
}

/// Starts the status sampler (the status board and the metrics), from now on.
pub(super) fn start_status<E: EngineContext>(
    context: &E,
    config: &EngineConfig,
    stores: &Stores<E>,
    book: &SourceBook,
    counters: &EventCounters,
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
    status.coverage.count_in(
        counters.certificates_filled.clone(),
        counters.certificates_refused.clone(),
    );
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
pub(super) struct StartedMarshal<E: EngineContext> {
    pub(super) actor: MarshalActor<E>,
    pub(super) mailbox: driver::MarshalMailbox,
    pub(super) store_check: StoreCheckReport,
}

/// Marshal as the follower runs it.
pub(super) type MarshalActor<E> = Marshal<
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
pub(super) async fn start_marshal<E: EngineContext, U: UpstreamRequests>(
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
pub(super) fn spawn_backfill<E: EngineContext, U: UpstreamRequests>(
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
pub(super) async fn spawn_actors<E: EngineContext, U: UpstreamRequests>(
    context: &E,
    config: &EngineConfig,
    stores: Stores<E>,
    status: Status,
    sources: &Sources<U>,
    marshal: StartedMarshal<E>,
    handover: Handover,
) -> Result<Engine<E>, EngineError> {
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
        counters: Some(handover.counters.clone()),
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
            checkpoint: handover.start_point.checkpoint.as_ref().map(|checkpoint| {
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

    Ok(Engine {
        started_from: handover.start_point.from,
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
pub(super) async fn stored_tip<E: EngineContext>(
    execution: &EmbeddedExecution<E>,
) -> Option<(u64, Digest)> {
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
pub(super) fn finalization_lookup<U: UpstreamRequests>(
    sources: Sources<U>,
) -> driver::FinalizationLookup {
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
