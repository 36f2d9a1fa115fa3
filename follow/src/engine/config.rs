//! The follower's settings.

use crate::sync::checkpoint::CheckpointTarget;
use crate::{
    certificates::FillConfig, damage::StoreCheck, resolver::FetchConfig, status::StatusBoard,
    sync::catchup::CatchUpConfig, sync::checkpoint::Checkpoint,
};
use cairn_epoch::ChainProfile;
use cairn_epoch::DEFAULT_WALK_CONCURRENCY;
use cairn_feed::FeedState;
use std::{num::NonZeroUsize, time::Duration};

/// Where a follower starts.
#[derive(Clone, Debug)]
pub enum StartFrom {
    /// Where the datadir started (its checkpoint, or genesis); an empty datadir starts at the
    /// target: genesis, or a checkpoint verified by walking the boundary certificates from
    /// genesis through the upstreams, persisted with the identities the walk proved.
    Target(CheckpointTarget),
    /// A checkpoint verified beforehand; nothing about it is read from or written to the
    /// checkpoint store.
    Checkpoint(Box<Checkpoint>),
}

impl Default for StartFrom {
    fn default() -> Self {
        Self::Target(CheckpointTarget::Genesis)
    }
}

/// Follower settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The chain to follow (its genesis header is required).
    pub profile: ChainProfile,
    /// Epoch verifiers kept in memory and on disk.
    pub max_epochs: NonZeroUsize,
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
    /// Where to start (see [`StartFrom`]).
    pub start: StartFrom,
    /// Boundaries fetched at once by a checkpoint start's walk.
    pub walk_concurrency: NonZeroUsize,
    /// Where evidence of conflicting certificates is written (the follower stops after).
    pub evidence_dir: Option<std::path::PathBuf>,
    /// How a follower far behind catches up.
    pub catch_up: CatchUpConfig,
    /// Fetch the history under a checkpoint start down to genesis, in the background (see
    /// [`crate::sync::backfill`]).
    pub backfill: bool,
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
            max_epochs: nonzero(64),
            max_pending_events: nonzero(1024),
            max_pending_bytes: nonzero(64 * 1024 * 1024),
            max_repair: nonzero(64),
            max_pending_acks: nonzero(64),
            fetch: FetchConfig::default(),
            fetch_retry_delay: Duration::from_millis(500),
            mailbox_size: nonzero(1024),
            partition_prefix: "follow".into(),
            start: StartFrom::default(),
            walk_concurrency: nonzero(DEFAULT_WALK_CONCURRENCY),
            evidence_dir: None,
            catch_up: CatchUpConfig::default(),
            backfill: false,
            feed: FeedState::default(),
            status: StatusBoard::default(),
            store_check: StoreCheck::default(),
            certificates: FillConfig::default(),
        }
    }
}

/// A size that is not zero.
pub(super) const fn nonzero(value: usize) -> NonZeroUsize {
    match NonZeroUsize::new(value) {
        Some(value) => value,
        None => panic!("a size of zero"),
    }
}
