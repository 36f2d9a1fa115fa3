//! The start-up: the checkpoint or genesis to start from, the catch-up through the hash chain
//! while the upstreams' notifications are held, marshal's floor, and the rejoin the driver runs
//! later.

use super::{EngineConfig, EngineContext, EngineError, MarshalStart, StartFrom, stores::Stores};
use crate::sync::checkpoint::{self, CheckpointStore, CheckpointTarget, WalkReport};
use crate::{
    driver::{self},
    sync::catchup::{CatchUp, CatchUpReport, VerifyPolicy},
    sync::checkpoint::Checkpoint,
    upstream::{Notification, SourceBook, Sourced, Sources, UpstreamRequests},
};
use cairn_dkg::Identity;
use cairn_epoch::IdentityLedger;
use cairn_epoch::{ChainProfile, Finalization, FinalizationVerifier, SchemeProvider};
use cairn_primitives::Block;
use cairn_storage::execution::{EmbeddedExecution, ExecutionProvider};
use commonware_consensus::marshal::Start;
use rand::CryptoRng;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Events held while catch-up runs; older ones are dropped (catch-up and marshal cover them).
pub(super) const MAX_HELD_EVENTS: usize = 1024;

/// Holds a notification received before the driver runs: every connection change and invalid
/// event, and the newest [`MAX_HELD_EVENTS`] events.
pub(super) fn hold(held: &mut Vec<Sourced>, notification: Sourced) {
    let is_event = |(_, notification): &Sourced| matches!(notification, Notification::Event(_));
    if is_event(&notification)
        && held.iter().filter(|held| is_event(held)).count() >= MAX_HELD_EVENTS
        && let Some(oldest) = held.iter().position(is_event)
    {
        held.remove(oldest);
    }
    held.push(notification);
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
pub(super) async fn stored_tip_floor<E: EngineContext>(
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
pub(super) fn rejoin<E: EngineContext, U: UpstreamRequests>(
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

/// Catch-up attempts before marshal is left to repair the gap.
pub(super) const CATCH_UP_ATTEMPTS: u32 = 3;

/// The start-up catch-up through the hash chain, up to [`CATCH_UP_ATTEMPTS`] attempts, while
/// the upstreams' notifications are held in `held`. Returns the report of an attempt that
/// caught up (its floor is marshal's). A storage failure or a chain that does not hold a
/// trusted block ends the start; any other failure leaves the gap to marshal.
pub(super) async fn catch_up_at_start<E: EngineContext, U: UpstreamRequests>(
    context: &E,
    catch_up: &CatchUp<'_, E, U>,
    rng: &mut impl CryptoRng,
    notifications: &mut mpsc::Receiver<Sourced>,
    held: &mut Vec<Sourced>,
) -> Result<Option<CatchUpReport>, EngineError> {
    for attempt in 1..=CATCH_UP_ATTEMPTS {
        let running = catch_up.run(context, rng);
        let book = catch_up.sources.book();
        let attempt_result = holding(running, notifications, held, book)
            .await
            .unwrap_or_else(|| Ok(CatchUpReport::default()));
        match attempt_result {
            Ok(report) => {
                if report.floor.is_some() {
                    info!(
                        from = report.from,
                        to = report.to,
                        certificates = report.certificates,
                        "caught up through the hash chain"
                    );
                    return Ok(Some(report));
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
    Ok(None)
}

/// Runs `work` while holding the upstreams' notifications (the newest events only, so the
/// upstreams never block while the work asks them for data). Connection changes show in the
/// status at once; the driver handles them again when it starts. `None` when every upstream
/// has gone before the work ended.
pub(super) async fn holding<T>(
    work: impl Future<Output = T>,
    notifications: &mut mpsc::Receiver<Sourced>,
    held: &mut Vec<Sourced>,
    book: &SourceBook,
) -> Option<T> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            result = &mut work => return Some(result),
            notification = notifications.recv() => {
                let notification = notification?;
                match &notification.1 {
                    Notification::Connected { .. } => book.set_connected(notification.0, true),
                    Notification::Disconnected { .. } => book.set_connected(notification.0, false),
                    _ => {}
                }
                hold(held, notification);
            }
        }
    }
}

/// Where this start began, for the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartedFrom {
    /// Genesis: the datadir follows from genesis.
    Genesis {
        /// The datadir already followed from genesis, so a checkpoint target was set aside.
        target_set_aside: bool,
    },
    /// The checkpoint this datadir started from, resumed without a walk.
    StoredCheckpoint {
        /// Its height.
        height: u64,
    },
    /// A new checkpoint, verified by walking the boundary certificates from genesis.
    Walked {
        /// Its height.
        height: u64,
        /// What the walk did.
        report: WalkReport,
    },
    /// A checkpoint verified before the engine started ([`StartFrom::Checkpoint`]).
    Given {
        /// Its height.
        height: u64,
    },
}

/// The start point: the checkpoint (none for genesis) and the identities verified before
/// the follower started (the boundary walk's, oldest first), for the identity history.
pub(super) struct StartPoint {
    pub(super) checkpoint: Option<Checkpoint>,
    pub(super) identities: Vec<(u64, Identity)>,
    pub(super) from: StartedFrom,
}

/// Finds the start point: the checkpoint this datadir started from; none for a datadir that
/// follows from genesis; else [`EngineConfig::start`]'s target, a new checkpoint verified by
/// walking the boundary certificates through `sources` (then persisted with its ledger).
pub(super) async fn resolve<E: EngineContext, U: UpstreamRequests>(
    context: &E,
    config: &EngineConfig,
    sources: &Sources<U>,
    notifications: &mut mpsc::Receiver<Sourced>,
    held: &mut Vec<Sourced>,
) -> Result<StartPoint, EngineError> {
    let target = match &config.start {
        StartFrom::Checkpoint(checkpoint) => {
            return Ok(StartPoint {
                from: StartedFrom::Given {
                    height: checkpoint.height(),
                },
                checkpoint: Some((**checkpoint).clone()),
                identities: Vec::new(),
            });
        }
        StartFrom::Target(target) => *target,
    };
    let partition = format!("{}-checkpoint", config.partition_prefix);
    let mut store = CheckpointStore::open(context.child("checkpoint"), &partition).await?;
    let (checkpoint, from) = if let Some(checkpoint) = store.checkpoint()? {
        let height = checkpoint.height();
        (Some(checkpoint), StartedFrom::StoredCheckpoint { height })
    } else if store.started_from_genesis()? {
        let target_set_aside = target != CheckpointTarget::Genesis;
        (None, StartedFrom::Genesis { target_set_aside })
    } else if target == CheckpointTarget::Genesis {
        // Checked before anything is written: a profile without its genesis header cannot
        // start there.
        genesis_block(&config.profile)?;
        store.mark_genesis().await?;
        let target_set_aside = false;
        (None, StartedFrom::Genesis { target_set_aside })
    } else {
        info!(%target, "walking the boundary certificates from genesis to the checkpoint");
        let profile = &config.profile;
        let mut rng = context.child("walk");
        let walk = checkpoint::establish(
            &mut rng,
            profile,
            sources,
            &mut store,
            target,
            config.walk_concurrency.get(),
            &profile.trusted_blocks,
        );
        let (checkpoint, report) = holding(walk, notifications, held, sources.book())
            .await
            .ok_or(EngineError::Stopped("upstreams"))??;
        let height = checkpoint.height();
        (Some(checkpoint), StartedFrom::Walked { height, report })
    };
    let identities = match store.ledger()? {
        Some(record) => IdentityLedger::restore(&config.profile, record)
            .map_err(|err| EngineError::Checkpoint(err.into()))?
            .runs()
            .iter()
            .map(|run| (run.from_epoch, run.identity))
            .collect(),
        None => Vec::new(),
    };
    Ok(StartPoint {
        checkpoint,
        identities,
        from,
    })
}

/// Marshal's start: the floor the catch-up verified; else the stored tip's finalization when
/// it verifies (a catch-up whose floor marshal may not have installed before the process
/// stopped), so marshal does not repair the stored blocks again (marshal ignores a floor at
/// or below its own, and panics on one whose epoch has no key or that does not verify, so it
/// is verified here first); else `start`.
pub(super) async fn marshal_floor<E: EngineContext>(
    stores: &Stores<E>,
    profile: &ChainProfile,
    caught_up: Option<&CatchUpReport>,
    start: MarshalStart,
    rng: &mut impl CryptoRng,
) -> Result<MarshalStart, EngineError> {
    if let Some(floor) = caught_up.and_then(|report| report.floor.clone()) {
        return Ok(Start::Floor(floor));
    }
    let stored = stored_tip_floor(
        &stores.execution,
        &stores.anchors,
        &stores.provider,
        profile,
        rng,
    )
    .await
    .map_err(EngineError::Anchors)?;
    Ok(stored.map_or(start, Start::Floor))
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
