//! The driver: the follower's decision maker. It verifies each `finalized` event from the
//! upstream with its epoch's key (in the verification order of `docs/sync-and-trust.md`) and
//! hands the verified block and its finalization to marshal. When an event's epoch has no key yet, it keeps the event, hints
//! marshal to fetch the boundary of the newest epoch it knows, and retries the event once that
//! boundary's outcome registers the next epoch. For every finalized block marshal dispatches
//! (in height order), it registers the next epoch's verifier from a boundary block before the
//! block goes on to the executor, which acknowledges it once durable.
//!
//! A follower that finds itself far behind while it runs (a verified event, or one whose epoch
//! has no key yet, at least [`Rejoin::gap`] above the executed height) rejoins the chain
//! through a catch-up by hash chain (see [`crate::sync::catchup`]) rather than leaving the gap to
//! marshal's repair, one certificate per block: the driver lets the executor finish what it was
//! given, holds marshal's deliveries and the upstreams' events while the catch-up runs, then
//! hands marshal the verified tip as its new floor and goes on with the held events.
//!
//! Every delivered block must name the block delivered (or stored) below it as its parent. One
//! that does not shows two certified chains parting: the driver looks for both blocks'
//! certificates at the height below among the upstreams, writes the evidence and stops, as it
//! does for two certificates of one height.

mod actor;
mod ingress;
#[cfg(test)]
mod tests;

pub use actor::{Actor, DriverError, Evidence, EvidenceSide, UpstreamStatus};
pub use ingress::Delivered;
pub(crate) use ingress::MarshalUpdates;

use crate::{
    executor,
    sync::catchup::{CatchUpError, CatchUpReport},
    upstream::SourceBook,
};
use cairn_epoch::{Finalization, FinalizationScheme, FinalizationVerifier};
use cairn_feed::FeedState;
use cairn_primitives::{Block, CertifiedBlock, Digest};
use cairn_storage::StoreContext;
use cairn_storage::registry::EpochRegistry;
use commonware_consensus::{
    Reporter as _,
    marshal::{Identifier, core::Mailbox, standard::Standard},
    simplex::types::Activity,
    types::{Height, Round},
};
use commonware_cryptography::{Digested, Signer as _, ed25519};
use commonware_utils::{acknowledgement::Exact, vec::NonEmptyVec};
use std::{future::Future, num::NonZeroUsize, pin::Pin, sync::Arc};
use tokio::sync::watch;

/// Marshal's mailbox as the follower uses it.
pub type MarshalMailbox = Mailbox<FinalizationScheme, Standard<Block>>;

/// What the driver asks of marshal: commonware's mailbox in a follower, a stand-in in tests.
pub trait MarshalPort: Send + Sync + 'static {
    /// Hands over a verified block of `round`; false when it was not persisted.
    fn verified_block(
        &self,
        round: Round,
        block: Digested<Block>,
    ) -> impl Future<Output = bool> + Send;

    /// Reports a verified finalization.
    fn report_finalization(&self, finalization: Finalization);

    /// The finalization stored at `height`.
    fn finalization_at(&self, height: u64) -> impl Future<Output = Option<Finalization>> + Send;

    /// The block stored at `height`.
    fn block_at(&self, height: u64) -> impl Future<Output = Option<Block>> + Send;

    /// Asks for the finalization at `height` to be fetched.
    fn fetch_finalized(&self, height: u64);

    /// Makes `finalization`'s block the next one dispatched: everything below it is in the
    /// execution store already (a catch-up stored it).
    fn set_floor(&self, finalization: Finalization);
}

impl MarshalPort for MarshalMailbox {
    async fn verified_block(&self, round: Round, block: Digested<Block>) -> bool {
        self.certified(round, block).await
    }

    fn report_finalization(&self, finalization: Finalization) {
        let mut mailbox = self.clone();
        let _ = mailbox.report(Activity::Finalization(finalization));
    }

    async fn finalization_at(&self, height: u64) -> Option<Finalization> {
        self.get_finalization(Height::new(height)).await
    }

    async fn block_at(&self, height: u64) -> Option<Block> {
        self.get_block(Identifier::Height(Height::new(height)))
            .await
            .map(|block| block.inner().clone())
    }

    fn fetch_finalized(&self, height: u64) {
        // The opaque resolver has no peers and ignores hint targets; marshal's API wants one.
        let target = ed25519::PrivateKey::from_seed(0).public_key();
        self.hint_finalized(Height::new(height), NonEmptyVec::new(target));
    }

    fn set_floor(&self, finalization: Finalization) {
        Mailbox::set_floor(self, finalization);
    }
}

/// A catch-up by hash chain from the executed height, as the driver starts it.
pub type RejoinRun = Pin<Box<dyn Future<Output = Result<CatchUpReport, CatchUpError>> + Send>>;

/// How a running follower far behind rejoins the chain (see the module docs).
pub struct Rejoin {
    /// How far above the executed height an event must be for the driver to rejoin rather
    /// than leave the gap to marshal.
    pub gap: u64,
    /// Starts a catch-up (it reads the executed height when first polled).
    pub start: Box<dyn FnMut() -> RejoinRun + Send + Sync>,
}

/// Asks every upstream for its certified block at a height, answering with each that
/// carries its block and signs it, named by the upstream's address. Where two certified chains
/// part, it finds each side's certificate for the evidence.
pub type FinalizationLookup = Arc<
    dyn Fn(u64) -> Pin<Box<dyn Future<Output = Vec<(String, CertifiedBlock)>> + Send>>
        + Send
        + Sync,
>;

impl std::fmt::Debug for Rejoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejoin").field("gap", &self.gap).finish()
    }
}

/// Where the driver hands finalized blocks, in height order: the executor in a follower, a
/// stand-in in tests.
pub trait ExecutorPort: Send + Sync + 'static {
    /// Executes `block`; `ack` is released once it is durable.
    fn execute(
        &self,
        block: Arc<Block>,
        finalization: Option<Finalization>,
        ack: Exact,
    ) -> impl Future<Output = Result<(), executor::Stopped>> + Send;
}

impl ExecutorPort for executor::Mailbox {
    async fn execute(
        &self,
        block: Arc<Block>,
        finalization: Option<Finalization>,
        ack: Exact,
    ) -> Result<(), executor::Stopped> {
        self.finalized(block, finalization, ack).await
    }
}

/// Driver settings and neighbours.
pub struct Config<E: StoreContext, M = MarshalMailbox, X = executor::Mailbox> {
    /// Verifies events; shares its verifier registry with marshal.
    pub verifier: FinalizationVerifier,
    /// Where registrations are persisted.
    pub registry: EpochRegistry<E>,
    /// Marshal.
    pub marshal: M,
    /// The executor.
    pub executor: X,
    /// The executor's finalized height.
    pub executed: watch::Receiver<u64>,
    /// Most events kept while their epoch's key is unknown (the lowest heights are kept).
    pub max_pending_events: NonZeroUsize,
    /// Most bytes of such events (certificate and block).
    pub max_pending_bytes: NonZeroUsize,
    /// The upstreams' health records: the driver marks connections, announced heights and
    /// invalid events, and ignores the events of quarantined sources.
    pub sources: SourceBook,
    /// Where an evidence file is written when two valid certificates conflict.
    pub evidence_dir: Option<std::path::PathBuf>,
    /// Where the driver reports the upstreams' status (see [`Actor::status`]).
    pub status: watch::Sender<UpstreamStatus>,
    /// The follower's own feed: a verified event that extends what it published goes out at
    /// once (see [`FeedState::publish_if_next`]).
    pub feed: FeedState,
    /// How to rejoin when far behind; `None` leaves every gap to marshal.
    pub rejoin: Option<Rejoin>,
    /// Told the height and source of each verified event whose block goes to marshal (the
    /// provenance of blocks taken live).
    pub served: Option<crate::upstream::ServedHook>,
    /// The stored tip (height and hash) the first block marshal delivers must extend; `None`
    /// leaves that first link to marshal's archive.
    pub tip: Option<(u64, Digest)>,
    /// Where the certificates of a fork are looked for when a delivered block does not extend
    /// the one below it; `None` writes the evidence with what is stored.
    pub finalizations: Option<FinalizationLookup>,
    /// Where rejected events and rejoins are counted as they happen; `None` counts them only
    /// in [`Config::status`].
    pub counters: Option<crate::status::EventCounters>,
}

/// Creates the driver.
pub fn init<E: StoreContext, M: MarshalPort, X: ExecutorPort>(
    config: Config<E, M, X>,
) -> Actor<E, M, X> {
    Actor::new(config)
}
