//! Marshal's resolver: answers the keys marshal asks for while repairing gaps, as encoded bytes
//! marshal validates itself. A block by digest comes from the local execution store first, then
//! from the upstream; a finalized height (certificate and block) comes from the upstream. Every
//! block is hash-checked before it is handed on, each attempt has a timeout, and a fetch makes
//! a bounded number of attempts with backoff before the resolver's own retry takes over.

use crate::{backoff::Backoff, upstream::UpstreamRequests};
use bytes::Bytes;
use cairn_epoch::decode_certificate;
use cairn_primitives::{Block, Digest};
use cairn_storage::execution::ExecutionProvider;
use commonware_codec::Encode;
use commonware_consensus::marshal::resolver::handler::Key;
use commonware_resolver::opaque::Fetcher;
use commonware_runtime::Clock;
use std::{num::NonZeroU32, sync::Arc, time::Duration};
use tracing::debug;

/// Resolver settings.
#[derive(Clone, Copy, Debug)]
pub struct FetchConfig {
    /// Time allowed for one attempt.
    pub attempt_timeout: Duration,
    /// Attempts per fetch before giving the key back to the resolver's retry loop.
    pub attempts: NonZeroU32,
    /// Delay after the first failed attempt; it doubles after each further failure.
    pub backoff: Duration,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(10),
            attempts: NonZeroU32::new(3).expect("non-zero"),
            backoff: Duration::from_millis(100),
        }
    }
}

/// The fetcher behind marshal's opaque resolver.
pub(crate) struct UpstreamFetcher<E, U, P> {
    context: Arc<E>,
    upstream: U,
    execution: P,
    config: FetchConfig,
}

impl<E, U, P> UpstreamFetcher<E, U, P>
where
    E: Clock + Send + Sync + 'static,
    U: UpstreamRequests,
    P: ExecutionProvider,
{
    /// A fetcher asking `execution`, then `upstream`.
    pub fn new(context: E, upstream: U, execution: P, config: FetchConfig) -> Self {
        Self {
            context: Arc::new(context),
            upstream,
            execution,
            config,
        }
    }

    /// One attempt at `key`; `None` when the data is missing or the source failed.
    async fn attempt(&self, key: Key<Digest>) -> Option<Bytes> {
        match key {
            Key::Block(digest) => {
                if let Ok(Some(block)) = self.execution.block_by_hash(digest).await {
                    return Some(Bytes::from(block.encode().to_vec()));
                }
                let upstream = self.upstream.clone();
                let block = self
                    .context
                    .timeout(self.config.attempt_timeout, async move {
                        upstream.get_block(digest).await
                    })
                    .await;
                match block {
                    Ok(Ok(Some(block))) if block.hash() == digest => {
                        Some(Bytes::from(block.encode().to_vec()))
                    }
                    Ok(Ok(Some(block))) => {
                        debug!(%digest, got = %block.hash(), "upstream sent another block; dropped");
                        None
                    }
                    Ok(Ok(None)) => None,
                    Ok(Err(err)) => {
                        debug!(%digest, %err, "block fetch failed");
                        None
                    }
                    Err(_) => {
                        debug!(%digest, "block fetch timed out");
                        None
                    }
                }
            }
            Key::Finalized { height } => {
                let height = height.get();
                let upstream = self.upstream.clone();
                let certified = self
                    .context
                    .timeout(self.config.attempt_timeout, async move {
                        upstream.get_finalization(height).await
                    })
                    .await;
                let certified = match certified {
                    Ok(Ok(Some(certified))) => certified,
                    Ok(Ok(None)) => return None,
                    Ok(Err(err)) => {
                        debug!(height, %err, "finalization fetch failed");
                        return None;
                    }
                    Err(_) => {
                        debug!(height, "finalization fetch timed out");
                        return None;
                    }
                };
                encode_finalized(height, &certified.certificate, certified.block?)
            }
            Key::Notarized { .. } => None,
        }
    }
}

impl<E, U: Clone, P: Clone> Clone for UpstreamFetcher<E, U, P> {
    fn clone(&self) -> Self {
        Self {
            context: self.context.clone(),
            upstream: self.upstream.clone(),
            execution: self.execution.clone(),
            config: self.config,
        }
    }
}

/// Marshal's encoding of a finalized height: the finalization, then the block. Answers whose
/// block is for another height or does not match the certificate are dropped here already
/// (marshal checks both again, and the signatures).
fn encode_finalized(height: u64, certificate: &str, block: Block) -> Option<Bytes> {
    let finalization = match decode_certificate(certificate) {
        Ok(finalization) => finalization,
        Err(err) => {
            debug!(height, %err, "upstream finalization does not decode");
            return None;
        }
    };
    if block.height() != height || finalization.proposal.payload != block.hash() {
        debug!(height, "upstream finalization does not match its block");
        return None;
    }
    Some(Bytes::from((finalization, block).encode().to_vec()))
}

impl<E, U, P> Fetcher for UpstreamFetcher<E, U, P>
where
    E: Clock + Send + Sync + 'static,
    U: UpstreamRequests,
    P: ExecutionProvider,
{
    type Key = Key<Digest>;
    type Value = Bytes;

    async fn fetch(&self, key: Self::Key) -> Option<Self::Value> {
        // A follower never reports notarizations and the upstream has no request for one: the
        // key stays pending (instead of being retried in a loop) until marshal drops it.
        if matches!(key, Key::Notarized { .. }) {
            return std::future::pending().await;
        }
        let mut backoff = Backoff::new(self.config.backoff, Duration::MAX);
        let attempts = self.config.attempts.get();
        for attempt in 1..=attempts {
            if let Some(value) = self.attempt(key).await {
                return Some(value);
            }
            if attempt < attempts {
                self.context.sleep(backoff.next_delay()).await;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
