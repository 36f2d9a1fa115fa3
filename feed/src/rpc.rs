//! The JSON-RPC server of a cairn node: Tempo's `consensus` namespace plus the `eth_` and
//! `debug_` block methods followers use for gap repair, over WebSocket and HTTP on one address.
//!
//! Errors follow Tempo: code 204 when the node has nothing finalized yet, 503 when the requested
//! data is missing (the reason is in `data`).

use crate::{ChainReader, FeedState, ReadError};
use alloy_eips::{BlockId, BlockNumberOrTag};
use alloy_primitives::{B256, Bytes, U64, keccak256};
use cairn_primitives::{Block, CertifiedBlock, ConsensusState, Digest, Query, TempoHeader};
use jsonrpsee::{
    PendingSubscriptionSink, SubscriptionMessage,
    core::{RpcResult, SubscriptionResult, async_trait},
    proc_macros::rpc,
    server::{Server, ServerConfig, ServerHandle},
    types::{ErrorObjectOwned, error::INTERNAL_ERROR_CODE},
};
use serde::Serialize;
use std::net::SocketAddr;
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info, warn};

/// JSON-RPC error code: the node has no finalized block yet.
pub const NOT_READY_CODE: i32 = 204;
/// JSON-RPC error code: the requested data is not available.
pub const MISSING_CODE: i32 = 503;

/// Server limits.
#[derive(Clone, Copy, Debug)]
pub struct RpcConfig {
    /// Most simultaneous connections.
    pub max_connections: u32,
    /// Most subscriptions per connection.
    pub max_subscriptions_per_connection: u32,
    /// Messages buffered per connection; a subscriber whose buffer is full is dropped.
    pub message_buffer: u32,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_subscriptions_per_connection: 16,
            message_buffer: 1024,
        }
    }
}

/// The `consensus` namespace (identical to Tempo's).
#[rpc(server, namespace = "consensus")]
pub trait ConsensusApi {
    /// The finalization at `"latest"` or `{"height": N}`.
    #[method(name = "getFinalization")]
    async fn get_finalization(&self, query: Query) -> RpcResult<CertifiedBlock>;

    /// The latest finalized (and notarized, never set by a follower) block.
    #[method(name = "getLatest")]
    async fn get_latest(&self) -> RpcResult<ConsensusState>;

    /// Consensus events (`finalized` from this node).
    #[subscription(name = "subscribe" => "event", unsubscribe = "unsubscribe", item = cairn_primitives::Event)]
    async fn subscribe(&self) -> SubscriptionResult;
}

/// The block methods of the `eth` and `debug` namespaces.
#[rpc(server)]
pub trait BlockApi {
    /// Height of the finalized tip, as a hex quantity.
    #[method(name = "eth_blockNumber")]
    async fn block_number(&self) -> RpcResult<U64>;

    /// A block by number or tag; `full` lists raw transactions instead of their hashes.
    #[method(name = "eth_getBlockByNumber")]
    async fn block_by_number(
        &self,
        number: BlockNumberOrTag,
        full: Option<bool>,
    ) -> RpcResult<Option<RpcBlock>>;

    /// A block by hash; `full` lists raw transactions instead of their hashes.
    #[method(name = "eth_getBlockByHash")]
    async fn block_by_hash(&self, hash: B256, full: Option<bool>) -> RpcResult<Option<RpcBlock>>;

    /// The RLP bytes of a block.
    #[method(name = "debug_getRawBlock")]
    async fn raw_block(&self, block: BlockId) -> RpcResult<Bytes>;

    /// The RLP bytes of a header.
    #[method(name = "debug_getRawHeader")]
    async fn raw_header(&self, block: BlockId) -> RpcResult<Bytes>;
}

/// A block in the `eth_getBlockBy*` shape: the header fields, its hash, and its transactions.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RpcBlock {
    /// Block hash.
    pub hash: B256,
    /// Header fields.
    #[serde(flatten)]
    pub header: TempoHeader,
    /// Transaction hashes, or raw transactions when `full` was requested.
    pub transactions: Vec<serde_json::Value>,
    /// Always empty.
    pub uncles: Vec<B256>,
}

impl RpcBlock {
    fn new(block: Block, full: bool) -> Self {
        let transactions = block
            .body()
            .map(|body| {
                body.transactions
                    .iter()
                    .map(|tx| {
                        if full {
                            serde_json::Value::String(tx.to_string())
                        } else {
                            serde_json::Value::String(keccak256(tx).to_string())
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let hash = block.hash().0;
        let (header, _) = block.into_parts();
        Self {
            hash,
            header,
            transactions,
            uncles: Vec::new(),
        }
    }
}

fn not_ready() -> ErrorObjectOwned {
    ErrorObjectOwned::owned(NOT_READY_CODE, "not ready", Some("no finalized block yet"))
}

fn missing(reason: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(MISSING_CODE, "missing", Some(reason.into()))
}

fn internal(err: ReadError) -> ErrorObjectOwned {
    warn!(%err, "rpc read failed");
    ErrorObjectOwned::owned(INTERNAL_ERROR_CODE, err.to_string(), None::<()>)
}

/// The RPC handlers over a chain store and a feed.
#[derive(Clone, Debug)]
pub struct RpcHandlers<C> {
    chain: C,
    feed: FeedState,
}

impl<C: ChainReader> RpcHandlers<C> {
    /// Handlers serving `chain` and `feed`.
    pub const fn new(chain: C, feed: FeedState) -> Self {
        Self { chain, feed }
    }

    fn tip(&self) -> Result<u64, ErrorObjectOwned> {
        self.chain.finalized_height().ok_or_else(not_ready)
    }

    /// Resolves a number or tag to a height; every tag but `earliest` means the finalized tip.
    fn height_of(&self, number: BlockNumberOrTag) -> u64 {
        match number {
            BlockNumberOrTag::Number(height) => height,
            BlockNumberOrTag::Earliest => 0,
            _ => self.chain.finalized_height().unwrap_or(0),
        }
    }

    async fn block_for(&self, id: BlockId) -> Result<Block, ErrorObjectOwned> {
        let block = match id {
            BlockId::Hash(hash) => self
                .chain
                .block_by_hash(Digest(hash.block_hash))
                .await
                .map_err(internal)?,
            BlockId::Number(number) => {
                let height = self.height_of(number);
                self.chain.block_at(height).await.map_err(internal)?
            }
        };
        block.ok_or_else(|| missing(format!("no block {id}")))
    }
}

#[async_trait]
impl<C: ChainReader> ConsensusApiServer for RpcHandlers<C> {
    async fn get_finalization(&self, query: Query) -> RpcResult<CertifiedBlock> {
        let tip = self.tip()?;
        let height = match query {
            Query::Latest => tip,
            Query::Height(height) if height > tip => {
                return Err(missing(format!(
                    "height {height} is above the finalized tip {tip}"
                )));
            }
            Query::Height(height) => height,
        };
        self.chain
            .certified_at(height)
            .await
            .map_err(internal)?
            .ok_or_else(|| missing(format!("no finalization stored for height {height}")))
    }

    async fn get_latest(&self) -> RpcResult<ConsensusState> {
        Ok(ConsensusState {
            finalized: self.feed.latest(),
            notarized: None,
        })
    }

    async fn subscribe(&self, pending: PendingSubscriptionSink) -> SubscriptionResult {
        let mut sink = pending.accept().await?;
        let mut events = self.feed.subscribe();
        debug!(
            subscribers = self.feed.subscribers(),
            "consensus subscription opened"
        );
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    () = sink.closed() => break,
                };
                match event {
                    Ok(event) => {
                        let message = match SubscriptionMessage::new(
                            sink.method_name(),
                            sink.subscription_id().clone(),
                            &event.json,
                        ) {
                            Ok(message) => message,
                            Err(err) => {
                                warn!(%err, "could not serialize a consensus event");
                                continue;
                            }
                        };
                        if sink.try_send(message).is_err() {
                            if !sink.is_closed() {
                                warn!("dropping a slow consensus subscriber: its buffer is full");
                            }
                            break;
                        }
                    }
                    Err(RecvError::Lagged(skipped)) => {
                        warn!(
                            skipped,
                            "dropping a slow consensus subscriber: it fell behind the event buffer"
                        );
                        break;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
        Ok(())
    }
}

#[async_trait]
impl<C: ChainReader> BlockApiServer for RpcHandlers<C> {
    async fn block_number(&self) -> RpcResult<U64> {
        Ok(U64::from(self.chain.finalized_height().unwrap_or(0)))
    }

    async fn block_by_number(
        &self,
        number: BlockNumberOrTag,
        full: Option<bool>,
    ) -> RpcResult<Option<RpcBlock>> {
        let height = self.height_of(number);
        let block = self.chain.block_at(height).await.map_err(internal)?;
        Ok(block.map(|block| RpcBlock::new(block, full.unwrap_or(false))))
    }

    async fn block_by_hash(&self, hash: B256, full: Option<bool>) -> RpcResult<Option<RpcBlock>> {
        let block = self
            .chain
            .block_by_hash(Digest(hash))
            .await
            .map_err(internal)?;
        Ok(block.map(|block| RpcBlock::new(block, full.unwrap_or(false))))
    }

    async fn raw_block(&self, id: BlockId) -> RpcResult<Bytes> {
        let block = self.block_for(id).await?;
        block
            .raw_rlp()
            .map(Bytes::from)
            .ok_or_else(|| missing(format!("the body of block {} is not stored", block.hash())))
    }

    async fn raw_header(&self, id: BlockId) -> RpcResult<Bytes> {
        let block = self.block_for(id).await?;
        Ok(Bytes::from(block.header().rlp()))
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Two methods share a name (a programming error, reported instead of panicking).
    #[error("rpc method registration failed: {0}")]
    Register(String),
}

/// A running RPC server.
#[derive(Debug)]
pub struct RunningServer {
    /// The address it listens on (with the OS-chosen port resolved).
    pub local_addr: SocketAddr,
    /// Stops the server when told to.
    pub handle: ServerHandle,
}

/// Starts the server on `addr` (WebSocket and HTTP on the same port).
pub async fn start<C: ChainReader>(
    addr: &str,
    chain: C,
    feed: FeedState,
    config: RpcConfig,
) -> Result<RunningServer, StartError> {
    let server_config = ServerConfig::builder()
        .max_connections(config.max_connections)
        .max_subscriptions_per_connection(config.max_subscriptions_per_connection)
        .set_message_buffer_capacity(config.message_buffer)
        .build();
    let server = Server::builder()
        .set_config(server_config)
        .build(addr)
        .await
        .map_err(|error| StartError::Bind {
            addr: addr.to_string(),
            error,
        })?;
    let local_addr = server.local_addr().map_err(|error| StartError::Bind {
        addr: addr.to_string(),
        error,
    })?;
    let handlers = RpcHandlers::new(chain, feed);
    let mut module = ConsensusApiServer::into_rpc(handlers.clone());
    module
        .merge(BlockApiServer::into_rpc(handlers))
        .map_err(|err| StartError::Register(err.to_string()))?;
    let handle = server.start(module);
    info!(%local_addr, "rpc server listening (ws and http)");
    Ok(RunningServer { local_addr, handle })
}
