//! The stores a follower opens before anything runs.

use super::{
    EngineConfig, EngineContext, EngineError, MarshalStart,
    start::{StartPoint, genesis_block},
};
use crate::status::EventCounters;
use crate::{
    certificates::Coverage,
    damage::{CheckedFinalizations, DamageLog, StoreCheck, StoreCheckReport, check_stores},
    sync::checkpoint::Checkpoint,
    upstream::ServedHook,
};
use cairn_epoch::{ChainProfile, Finalization, SchemeProvider};
use cairn_primitives::{Block, Digest};
use cairn_storage::{archive_config, open_anchors};
use cairn_storage::{
    execution::{EmbeddedExecution, ExecutionError, ExecutionProvider},
    provenance::{How, Provenance},
    registry::EpochRegistry,
};
use commonware_consensus::marshal::Start;
use commonware_cryptography::Digested;
use commonware_runtime::buffer::paged::CacheRef;
use commonware_storage::archive::immutable;
use std::{sync::Arc, time::Duration};
use tracing::{info, warn};

/// The stores a follower opens before anything runs, and the trust they hold.
pub(super) struct Stores<E: EngineContext> {
    pub(super) execution: EmbeddedExecution<E>,
    pub(super) provider: SchemeProvider,
    pub(super) registry: EpochRegistry<E>,
    pub(super) identities: cairn_storage::registry::IdentityHistory,
    pub(super) provenance: Provenance<E>,
    pub(super) anchors: cairn_storage::AnchorStore<E>,
}

impl<E: EngineContext> Stores<E> {
    /// Opens the execution store on the checkpoint's block or genesis, the epoch registry with
    /// the startup trust (the registry of an earlier run, the keys a checkpoint's boundary walk
    /// proved, and what the stored chain's boundary blocks announce where a key is missing),
    /// the provenance store and the anchor store (with the checkpoint's finalization). Returns
    /// them with marshal's start before any catch-up.
    pub(super) async fn open(
        context: &E,
        config: &EngineConfig,
        start_point: &StartPoint,
        counters: &EventCounters,
    ) -> Result<(Self, MarshalStart), EngineError> {
        let profile = &config.profile;
        let checkpoint = start_point.checkpoint.as_ref();
        let (anchor, start) = match checkpoint {
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
        let trusted = checkpoint
            .map(|checkpoint| checkpoint.identities.clone())
            .unwrap_or_default();
        // Every identity change verified from here on is a rotation (the history restored from
        // disk is not counted again).
        registry
            .history()
            .count_rotations(counters.identity_rotations.clone());
        let loaded = registry
            .load_for_chain(&provider, profile, &execution, &trusted)
            .await?;
        let identities = registry.history();
        for (epoch, identity) in &start_point.identities {
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
        let provenance = start_provenance(context, prefix, checkpoint).await?;
        let anchors = open_anchors(context.child("anchors"), &format!("{prefix}-anchors"))
            .await
            .map_err(|error| EngineError::Archive {
                what: "anchors",
                error,
            })?;
        // The checkpoint's verified finalization is served from the anchors, as marshal's
        // floor moves on when catch-up runs.
        if let Some(checkpoint) = checkpoint {
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
    pub(super) fn served(&self, how: How) -> ServedHook {
        let provenance = self.provenance.clone();
        Arc::new(move |first, last, source| provenance.record(first, last, Some(source), how))
    }
}

/// Logs what the start-up store check found.
pub(super) fn log_store_check(report: &StoreCheckReport, check: StoreCheck, took: Duration) {
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

/// Opens marshal's finalization archive behind the check that turns a damaged record into a
/// missing one (see [`CheckedFinalizations`]), and checks the stores as `check` says.
#[allow(clippy::too_many_arguments)]
pub(super) async fn open_finalizations<E: EngineContext>(
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
pub(super) async fn start_provenance<E: EngineContext>(
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
pub(super) async fn open_execution<E: EngineContext>(
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
