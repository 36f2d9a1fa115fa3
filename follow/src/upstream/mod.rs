//! The upstream actor: keeps one upstream connection alive (reconnecting with capped,
//! jittered backoff and resubscribing after any stream error), forwards its consensus events,
//! and serves `get_finalization` / `get_block` requests, cancelling a request whose requester
//! went away. It runs on any commonware runtime and over any [`Transport`]: WebSocket JSON-RPC
//! ([`transport::WebSocket`]), or a feed in the same process ([`in_process`]) in simulations,
//! where the same loop runs in the deterministic runtime.

mod actor;
mod client;
pub mod in_process;
mod ingress;
mod manners;
mod sources;
#[cfg(test)]
mod tests;
pub mod transport;

pub use actor::Actor;
pub(crate) use client::normalize_url;
pub use client::{ClientConfig, UpstreamClient, http_url};
pub use ingress::{Mailbox, Message};
pub use manners::CallCounts;
pub(crate) use sources::split_highest;
pub use sources::{
    Answered, CONDUCT_WINDOW, QuarantineConfig, STALL_AFTER, ServedHook, SourceBook, SourceHealth,
    SourceId, Sources,
};
pub use transport::{Transport, WebSocket};

use cairn_primitives::{Block, CertifiedBlock, Digest, Event};
use std::{future::Future, num::NonZeroUsize, time::Duration};
use tokio::sync::mpsc;

/// Why an upstream request failed.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamError {
    /// The URL is unusable.
    #[error("invalid upstream URL {0}")]
    InvalidUrl(String),
    /// The connection could not be opened.
    #[error("cannot connect to upstream {0}")]
    Connect(String),
    /// There is no live connection right now.
    #[error("upstream is not connected")]
    NotConnected,
    /// The request took longer than allowed.
    #[error("upstream request timed out")]
    Timeout,
    /// The upstream answered with an error.
    #[error("upstream error: {0}")]
    Rpc(String),
    /// The upstream sent a block other than the one requested.
    #[error("upstream sent block {got} for requested hash {requested}")]
    HashMismatch {
        /// Requested hash.
        requested: Digest,
        /// Hash of what was sent.
        got: Digest,
    },
    /// The upstream sent bytes that are not a block.
    #[error("upstream sent a malformed block: {0}")]
    MalformedBlock(String),
    /// Every upstream that answered served invalid data (each was recorded for it).
    #[error("upstream served invalid data: {0}")]
    Invalid(String),
    /// The upstream answered with more bytes than the response size limit.
    #[error("upstream answered {0} with a message over the size limit")]
    Oversized(String),
    /// Too many requests are in flight.
    #[error("too many upstream requests in flight")]
    Busy,
    /// The actor has stopped.
    #[error("the upstream actor stopped")]
    Stopped,
    /// No upstream answered: each one asked, by its URL, with its failure.
    #[error("no upstream answered ({0})")]
    NoneAnswered(String),
}

/// The requests a follower makes of its upstream, whichever transport carries them.
pub trait UpstreamRequests: Clone + Send + Sync + 'static {
    /// The certified block at `height`, with its block; `None` when the upstream lacks it.
    fn get_finalization(
        &self,
        height: u64,
    ) -> impl Future<Output = Result<Option<CertifiedBlock>, UpstreamError>> + Send;

    /// The block with hash `digest`, body included and hash checked; `None` when missing.
    fn get_block(
        &self,
        digest: Digest,
    ) -> impl Future<Output = Result<Option<Block>, UpstreamError>> + Send;

    /// The upstream's latest certified block, with its block; `None` before its first.
    fn get_latest(
        &self,
    ) -> impl Future<Output = Result<Option<CertifiedBlock>, UpstreamError>> + Send;

    /// The blocks at heights `first..=last`, in order, bodies included and checked against
    /// their roots. A shorter answer (a prefix) means the upstream lacks the rest. Nothing in
    /// it is authenticated: the caller links it to a verified block by parent hashes.
    fn get_blocks(
        &self,
        first: u64,
        last: u64,
    ) -> impl Future<Output = Result<Vec<Block>, UpstreamError>> + Send;

    /// The finalization certificates (unprefixed hex, as in [`CertifiedBlock::certificate`])
    /// of the blocks at `heights`, in their order; `None` for a height the upstream has no
    /// certificate for. Nothing in it is checked. By default, one finalization at a time.
    fn get_certificates(
        &self,
        heights: Vec<u64>,
    ) -> impl Future<Output = Result<Vec<Option<String>>, UpstreamError>> + Send {
        async move {
            let mut certificates = Vec::with_capacity(heights.len());
            for height in heights {
                let certified = self.get_finalization(height).await?;
                certificates.push(certified.map(|certified| certified.certificate));
            }
            Ok(certificates)
        }
    }
}

impl UpstreamRequests for Mailbox {
    async fn get_finalization(&self, height: u64) -> Result<Option<CertifiedBlock>, UpstreamError> {
        Mailbox::get_finalization(self, height).await
    }

    async fn get_block(&self, digest: Digest) -> Result<Option<Block>, UpstreamError> {
        Mailbox::get_block(self, digest).await
    }

    async fn get_latest(&self) -> Result<Option<CertifiedBlock>, UpstreamError> {
        Mailbox::get_latest(self).await
    }

    async fn get_blocks(&self, first: u64, last: u64) -> Result<Vec<Block>, UpstreamError> {
        Mailbox::get_blocks(self, first, last).await
    }

    async fn get_certificates(
        &self,
        heights: Vec<u64>,
    ) -> Result<Vec<Option<String>>, UpstreamError> {
        Mailbox::get_certificates(self, heights).await
    }
}

/// What the actor reports to its consumer, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// A connection (and subscription) was established.
    Connected {
        /// The upstream URL.
        url: String,
    },
    /// The connection was lost; the actor is reconnecting.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// A consensus event from the upstream (unverified; boxed, as blocks are large).
    Event(Box<Event>),
    /// The upstream sent an event that does not parse.
    Invalid {
        /// What was wrong with it.
        what: String,
    },
}

/// A notification with the upstream it came from.
pub type Sourced = (SourceId, Notification);

/// Upstream actor settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The upstream (`ws://`, `wss://`, or `host:port`).
    pub url: String,
    /// Which upstream this is: its notifications carry it.
    pub source: SourceId,
    /// Connection settings.
    pub client: ClientConfig,
    /// Requests queued in the mailbox.
    pub mailbox_size: NonZeroUsize,
    /// Most requests in flight at once; more are refused with [`UpstreamError::Busy`].
    pub max_in_flight: NonZeroUsize,
    /// First reconnect delay; it doubles on each failure.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Where the calls sent over every connection to this upstream are counted (share it with
    /// [`SourceBook::count_calls`] to show them in its health).
    pub counts: std::sync::Arc<CallCounts>,
}

impl Config {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            source: 0,
            client: ClientConfig::default(),
            mailbox_size: NonZeroUsize::new(1024).expect("non-zero"),
            max_in_flight: NonZeroUsize::new(64).expect("non-zero"),
            counts: std::sync::Arc::default(),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// Normalises an upstream address to follow: it must carry subscriptions, so WebSocket only.
pub fn follow_url(url: &str) -> Result<String, UpstreamError> {
    let url = normalize_url(url)?;
    if !url.starts_with("ws") {
        return Err(UpstreamError::InvalidUrl(format!(
            "`{url}`: following needs a subscription, so use ws://, wss:// or host:port"
        )));
    }
    Ok(url)
}

/// Creates the actor of a WebSocket upstream and its mailbox; notifications go to
/// `notifications` (bounded: a slow consumer slows the actor's reading of the stream, never the
/// other way round). Run it with [`Actor::run`] in a runtime context.
pub fn init(
    config: Config,
    notifications: mpsc::Sender<Sourced>,
) -> Result<(Actor<WebSocket>, Mailbox), UpstreamError> {
    let url = follow_url(&config.url)?;
    let (sender, receiver) = mpsc::channel(config.mailbox_size.get());
    let limits = actor::Limits {
        max_in_flight: config.max_in_flight.get(),
        backoff_min: config.backoff_min,
        backoff_max: config.backoff_max,
        max_response_size: config.client.max_response_size,
    };
    let transport = WebSocket {
        url: url.clone(),
        client: config.client,
        counts: config.counts,
    };
    Ok((
        Actor::new(
            transport,
            url,
            config.source,
            limits,
            receiver,
            notifications,
        ),
        Mailbox::new(sender),
    ))
}
