//! The driver: the follower's decision maker. It verifies each `finalized` event from the
//! upstream with its epoch's key (DESIGN.md order) and hands the verified block and its
//! finalization to marshal. When an event's epoch has no key yet, it keeps the event, hints
//! marshal to fetch the boundary of the newest epoch it knows, and retries the event once that
//! boundary's outcome registers the next epoch. For every finalized block marshal dispatches
//! (in height order), it registers the next epoch's verifier from a boundary block before the
//! block goes on to the executor, which acknowledges it once durable.

mod actor;
mod ingress;

pub use actor::{Actor, DriverError, Evidence, EvidenceSide, UpstreamStatus};
pub use ingress::{Delivered, MarshalUpdates};

use crate::{executor, registry::EpochRegistry, upstream::SourceBook};
use cairn_epoch::{FinalizationScheme, FinalizationVerifier};
use cairn_feed::StoreContext;
use cairn_primitives::Block;
use commonware_consensus::marshal::{core::Mailbox, standard::Standard};
use tokio::sync::watch;

/// Marshal's mailbox as the follower uses it.
pub type MarshalMailbox = Mailbox<FinalizationScheme, Standard<Block>>;

/// Driver settings and neighbours.
pub struct Config<E: StoreContext> {
    /// Verifies events; shares its verifier registry with marshal.
    pub verifier: FinalizationVerifier,
    /// Where registrations are persisted.
    pub registry: EpochRegistry<E>,
    /// Marshal.
    pub marshal: MarshalMailbox,
    /// The executor.
    pub executor: executor::Mailbox,
    /// The executor's finalized height.
    pub executed: watch::Receiver<u64>,
    /// Most events kept while their epoch's key is unknown (the lowest heights are kept).
    pub max_pending_events: usize,
    /// Most bytes of such events (certificate and block).
    pub max_pending_bytes: usize,
    /// The upstreams' health records: the driver marks connections, announced heights and
    /// invalid events, and ignores the events of quarantined sources.
    pub sources: SourceBook,
    /// Where an evidence file is written when two valid certificates conflict.
    pub evidence_dir: Option<std::path::PathBuf>,
}

/// Creates the driver.
pub fn init<E: StoreContext>(config: Config<E>) -> Actor<E> {
    Actor::new(config)
}
