//! The JSON-RPC server of a cairn node: Tempo's `consensus` namespace, the `eth_` block and
//! transaction methods a standard Ethereum client calls (answered from the stored blocks, in the
//! shapes Tempo's RPC and `tempo-alloy` use), and the `debug_` raw-block methods followers use for
//! gap repair, over WebSocket and HTTP on one address.
//!
//! Errors follow Tempo: code 204 when the node has nothing finalized yet, 503 when the requested
//! data is missing (the reason is in `data`).

use crate::{ChainReader, FeedState, PublishedEvent, ReadError, page::StatusPageLayer};
use alloy_consensus::{
    Transaction as _,
    transaction::{Recovered, SignerRecoverable, TxHashRef},
};
use alloy_eips::{BlockId, BlockNumberOrTag, eip2718::Encodable2718};
use alloy_primitives::{B256, Bytes, U64, U256};
use alloy_rpc_types_eth::{BlockTransactions, Index, Stage, SyncInfo, SyncStatus};
use cairn_primitives::{
    Block, CertifiedBlock, CertifiedHeader, ConsensusState, Digest, Event, HeaderExt, Query,
    TempoHeader, TempoTxEnvelope,
};
use jsonrpsee::{
    PendingSubscriptionSink, RpcModule, SubscriptionMessage,
    core::{RpcResult, SubscriptionResult, async_trait},
    proc_macros::rpc,
    server::{Server, ServerConfig, ServerHandle},
    types::{ErrorObjectOwned, error::INTERNAL_ERROR_CODE},
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::{borrow::Cow, net::SocketAddr, sync::Arc};
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info, warn};

/// JSON-RPC error code: the node has no finalized block yet.
pub const NOT_READY_CODE: i32 = 204;

/// The `eth_syncing` stage a node reports while it starts (opening its stores, walking to a
/// checkpoint, catching up) and serves no chain yet.
pub const STARTING_STAGE: &str = "starting";
/// JSON-RPC error code: the requested data is not available.
pub const MISSING_CODE: i32 = 503;

/// The error a dropped slow subscriber's subscription closes with.
pub const SLOW_SUBSCRIBER: &str =
    "subscriber too slow: events were dropped; subscribe again and fetch the missing heights";

/// The method that answers a node's status summary (see [`StatusSource`]).
pub const STATUS_METHOD: &str = "cairn_status";

/// What `web3_clientVersion` answers.
pub const CLIENT_VERSION: &str = concat!("cairn/v", env!("CARGO_PKG_VERSION"));

/// What `cairn_status` answers: a fresh JSON summary of the node (the follower's or the
/// devnet's own view), read on every call.
#[derive(Clone)]
pub struct StatusSource(pub std::sync::Arc<dyn Fn() -> serde_json::Value + Send + Sync>);

impl std::fmt::Debug for StatusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusSource")
    }
}

/// Server settings and limits.
#[derive(Clone, Debug)]
pub struct RpcConfig {
    /// The chain's EVM chain id, for `eth_chainId` and `net_version` (unknown: those answer 503).
    pub chain_id: Option<u64>,
    /// Most simultaneous connections.
    pub max_connections: u32,
    /// Most subscriptions per connection.
    pub max_subscriptions_per_connection: u32,
    /// Messages buffered per connection; a subscriber whose buffer is full is dropped.
    pub message_buffer: u32,
    /// Bytes of events queued per connection for a client that does not read them; a
    /// subscription whose next event would pass it is dropped as too slow, so a client that
    /// never reads costs at most this much.
    pub queued_bytes: usize,
    /// Answers `cairn_status` (and feeds the page at `/status`); without it, `cairn_status`
    /// answers 503.
    pub status: Option<StatusSource>,
    /// Answer as a public RPC node does (a round trip, a call budget, a batch cap, no
    /// `debug_*`): for tests and benchmarks of followers in the field.
    pub public_node: Option<crate::public::PublicNode>,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            chain_id: None,
            max_connections: 256,
            max_subscriptions_per_connection: 16,
            message_buffer: 1024,
            queued_bytes: DEFAULT_QUEUED_BYTES,
            status: None,
            public_node: None,
        }
    }
}

/// The `consensus` namespace (identical to Tempo's).
#[rpc(server, client, namespace = "consensus")]
pub trait ConsensusApi {
    /// The finalization at `"latest"` or `{"height": N}`.
    #[method(name = "getFinalization")]
    async fn get_finalization(&self, query: Query) -> RpcResult<CertifiedBlock>;

    /// The latest finalized (and notarized, never set by a follower) block.
    #[method(name = "getLatest")]
    async fn get_latest(&self) -> RpcResult<ConsensusState>;

    /// Consensus events (`finalized` from this node).
    #[subscription(name = "subscribe" => "event", unsubscribe = "unsubscribe", item = cairn_primitives::Event)]
    async fn subscribe_events(&self) -> SubscriptionResult;

    /// The finalization at `"latest"` or `{"height": N}` with the block's header only.
    #[method(name = "getFinalizedHeader")]
    async fn get_finalized_header(&self, query: Query) -> RpcResult<CertifiedHeader>;

    /// Each finalization as it is verified, with the block's header only.
    #[subscription(
        name = "subscribeFinalizedHeaders" => "finalizedHeader",
        unsubscribe = "unsubscribeFinalizedHeaders",
        item = CertifiedHeader
    )]
    async fn subscribe_finalized_headers(&self) -> SubscriptionResult;
}

/// The `eth_`, `net_`, `web3_` and `debug_` methods answered from the stored blocks.
#[rpc(server, client)]
pub trait BlockApi {
    /// Height of the finalized tip, as a hex quantity.
    #[method(name = "eth_blockNumber")]
    async fn block_number(&self) -> RpcResult<U64>;

    /// The chain id.
    #[method(name = "eth_chainId")]
    async fn chain_id(&self) -> RpcResult<U64>;

    /// The chain id as a decimal string.
    #[method(name = "net_version")]
    async fn net_version(&self) -> RpcResult<String>;

    /// The node's name and version.
    #[method(name = "web3_clientVersion")]
    async fn client_version(&self) -> RpcResult<String>;

    /// `false`, or the catch-up in progress.
    #[method(name = "eth_syncing")]
    async fn syncing(&self) -> RpcResult<SyncStatus>;

    /// A block by number or tag; `full` lists transaction objects instead of their hashes.
    #[method(name = "eth_getBlockByNumber")]
    async fn block_by_number(
        &self,
        number: BlockNumberOrTag,
        full: Option<bool>,
    ) -> RpcResult<Option<RpcBlock>>;

    /// A block by hash; `full` lists transaction objects instead of their hashes.
    #[method(name = "eth_getBlockByHash")]
    async fn block_by_hash(&self, hash: B256, full: Option<bool>) -> RpcResult<Option<RpcBlock>>;

    /// Number of transactions in a block by number or tag.
    #[method(name = "eth_getBlockTransactionCountByNumber")]
    async fn transaction_count_by_number(&self, number: BlockNumberOrTag)
    -> RpcResult<Option<U64>>;

    /// Number of transactions in a block by hash.
    #[method(name = "eth_getBlockTransactionCountByHash")]
    async fn transaction_count_by_hash(&self, hash: B256) -> RpcResult<Option<U64>>;

    /// A transaction by hash, with its block and position.
    #[method(name = "eth_getTransactionByHash")]
    async fn transaction_by_hash(&self, hash: B256) -> RpcResult<Option<RpcTransaction>>;

    /// A transaction by block number (or tag) and position.
    #[method(name = "eth_getTransactionByBlockNumberAndIndex")]
    async fn transaction_by_number_and_index(
        &self,
        number: BlockNumberOrTag,
        index: Index,
    ) -> RpcResult<Option<RpcTransaction>>;

    /// A transaction by block hash and position.
    #[method(name = "eth_getTransactionByBlockHashAndIndex")]
    async fn transaction_by_hash_and_index(
        &self,
        hash: B256,
        index: Index,
    ) -> RpcResult<Option<RpcTransaction>>;

    /// The EIP-2718 bytes of a transaction by hash.
    #[method(name = "eth_getRawTransactionByHash")]
    async fn raw_transaction_by_hash(&self, hash: B256) -> RpcResult<Option<Bytes>>;

    /// The RLP bytes of a block.
    #[method(name = "debug_getRawBlock")]
    async fn raw_block(&self, block: BlockId) -> RpcResult<Bytes>;

    /// The RLP bytes of a header.
    #[method(name = "debug_getRawHeader")]
    async fn raw_header(&self, block: BlockId) -> RpcResult<Bytes>;
}

/// A header as Tempo's RPC serves it (`tempo-alloy`'s header response): hash, the header
/// fields, size, and the timestamp in milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RpcHeader {
    /// Hash, header fields and size.
    #[serde(flatten)]
    pub inner: alloy_rpc_types_eth::Header<TempoHeader>,
    /// Block timestamp in milliseconds.
    #[serde(with = "alloy_serde::quantity")]
    pub timestamp_millis: u64,
}

/// A transaction object: the signed transaction, its sender, block and position.
pub type RpcTransaction = alloy_rpc_types_eth::Transaction<TempoTxEnvelope>;

/// A block in the `eth_getBlockBy*` shape.
pub type RpcBlock = alloy_rpc_types_eth::Block<RpcTransaction, RpcHeader>;

/// The transaction at `index` of `block` as a transaction object, its sender recovered from the
/// signature. `None` past the end of the block or when the sender cannot be recovered (a block
/// that verified never holds such a transaction, but this is served, not trusted).
fn rpc_transaction(block: &Block, index: usize) -> Option<RpcTransaction> {
    let tx = block.transactions().get(index)?;
    let sender = match tx.recover_signer() {
        Ok(sender) => sender,
        Err(err) => {
            warn!(height = block.height(), index, %err, "stored transaction has no recoverable sender");
            return None;
        }
    };
    let base_fee = block.header().inner.base_fee_per_gas;
    Some(alloy_rpc_types_eth::Transaction {
        effective_gas_price: Some(tx.effective_gas_price(base_fee)),
        inner: Recovered::new_unchecked(tx.clone(), sender),
        block_hash: Some(block.hash().0),
        block_number: Some(block.height()),
        transaction_index: Some(index as u64),
        block_timestamp: Some(block.header().inner.timestamp),
    })
}

/// Why an `eth_getBlockBy*` answer is not a usable block.
#[derive(Debug, thiserror::Error)]
pub enum RpcBlockError {
    /// The answer lists transaction hashes, not transaction objects (`full` was ignored).
    #[error("the block lists transaction hashes, not transactions")]
    HashesOnly,
    /// The answer names uncles, which Tempo blocks never have.
    #[error("the block names {0} uncles")]
    Uncles(usize),
    /// The header and transactions do not form a valid block.
    #[error(transparent)]
    Block(#[from] cairn_primitives::BlockError),
}

/// The block in an `eth_getBlockBy*` answer with full transactions (what Tempo's own follower
/// fetches for gap repair), its body checked against the header's roots. The answer's `hash`,
/// senders and positions are not trusted: the hash is recomputed from the header.
pub fn block_from_rpc(rpc: RpcBlock) -> Result<Block, RpcBlockError> {
    if !rpc.uncles.is_empty() {
        return Err(RpcBlockError::Uncles(rpc.uncles.len()));
    }
    let BlockTransactions::Full(transactions) = rpc.transactions else {
        // An empty block may come back as an empty list of either kind.
        if rpc.transactions.is_empty() {
            return Ok(Block::new(
                rpc.header.inner.inner,
                Some(cairn_primitives::Body {
                    transactions: Vec::new(),
                    ommers: Vec::new(),
                    withdrawals: rpc.withdrawals,
                }),
            )?);
        }
        return Err(RpcBlockError::HashesOnly);
    };
    let body = cairn_primitives::Body {
        transactions: transactions
            .into_iter()
            .map(|tx| tx.inner.into_inner())
            .collect(),
        ommers: Vec::new(),
        withdrawals: rpc.withdrawals,
    };
    Ok(Block::new(rpc.header.inner.inner, Some(body))?)
}

/// `block` in the `eth_getBlockBy*` shape, with transaction objects when `full` is set.
pub fn rpc_block(block: &Block, full: bool) -> RpcBlock {
    let transactions = if full {
        BlockTransactions::Full(
            (0..block.transactions().len())
                .filter_map(|index| rpc_transaction(block, index))
                .collect(),
        )
    } else {
        BlockTransactions::Hashes(
            block
                .transactions()
                .iter()
                .map(|tx| *tx.tx_hash())
                .collect(),
        )
    };
    let size = block
        .raw_rlp()
        .map_or_else(|| block.header().rlp_len(), |raw| raw.len());
    RpcBlock {
        header: RpcHeader {
            inner: alloy_rpc_types_eth::Header {
                hash: block.hash().0,
                inner: block.header().clone(),
                total_difficulty: None,
                size: Some(U256::from(size)),
            },
            timestamp_millis: block.header().timestamp_millis(),
        },
        uncles: Vec::new(),
        transactions,
        withdrawals: block.body().and_then(|body| body.withdrawals.clone()),
    }
}

fn not_ready() -> ErrorObjectOwned {
    ErrorObjectOwned::owned(
        NOT_READY_CODE,
        "not ready",
        Some(
            "no finalized block served yet: the node is starting (eth_syncing shows its progress)",
        ),
    )
}

/// A height given as a number, or as a decimal or 0x-hex string.
fn height_param(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(number) => number.as_u64(),
        serde_json::Value::String(text) => match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => text.parse().ok(),
        },
        _ => None,
    }
}

/// `cairn_explain(height)`: how the block at `height` came to be trusted.
fn explain_module<C: ChainReader>(chain: C) -> RpcModule<C> {
    let mut module = RpcModule::new(chain);
    module
        .register_async_method(
            crate::explain::EXPLAIN_METHOD,
            |params, chain, _| async move {
                let value: serde_json::Value = params.one().map_err(|_| {
                    ErrorObjectOwned::owned(
                        jsonrpsee::types::error::INVALID_PARAMS_CODE,
                        "expected one parameter: a block height",
                        None::<()>,
                    )
                })?;
                let height = height_param(&value).ok_or_else(|| {
                    ErrorObjectOwned::owned(
                        jsonrpsee::types::error::INVALID_PARAMS_CODE,
                        format!("not a block height: {value}"),
                        None::<()>,
                    )
                })?;
                match chain.explain(height).await.map_err(internal)? {
                    crate::Explained::Block(explanation) => Ok(*explanation),
                    crate::Explained::NotServed => Err(missing(format!(
                        "block {height} is not served by this node"
                    ))),
                    crate::Explained::Unsupported => {
                        Err(missing("this node does not explain its blocks"))
                    }
                }
            },
        )
        .expect("cairn_explain is registered once, on a fresh module");
    module
}

fn missing(reason: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(MISSING_CODE, "missing", Some(reason.into()))
}

fn internal(err: ReadError) -> ErrorObjectOwned {
    warn!(%err, "rpc read failed");
    ErrorObjectOwned::owned(INTERNAL_ERROR_CODE, err.to_string(), None::<()>)
}

/// Bytes of events a connection that does not read may hold queued, by default.
pub const DEFAULT_QUEUED_BYTES: usize = 1024 * 1024;

/// The RPC handlers over a chain store and a feed.
#[derive(Clone, Debug)]
pub struct RpcHandlers<C> {
    chain: C,
    feed: FeedState,
    chain_id: Option<u64>,
    queued_bytes: usize,
}

impl<C: ChainReader> RpcHandlers<C> {
    /// Handlers serving `chain` and `feed` of chain `chain_id`, dropping a subscription whose
    /// connection would hold more than `queued_bytes` of unread events.
    pub const fn new(
        chain: C,
        feed: FeedState,
        chain_id: Option<u64>,
        queued_bytes: usize,
    ) -> Self {
        Self {
            chain,
            feed,
            chain_id,
            queued_bytes,
        }
    }

    fn known_chain_id(&self) -> Result<u64, ErrorObjectOwned> {
        self.chain_id
            .ok_or_else(|| missing("this node's chain profile has no chain id"))
    }

    /// Refuses heights below the first one this node stores, saying why.
    fn check_served(&self, height: u64) -> Result<(), ErrorObjectOwned> {
        let first = self.chain.first_height();
        if height < first {
            return Err(missing(format!(
                "height {height} is below this node's checkpoint {first}: it started from a verified checkpoint and serves heights {first} and up"
            )));
        }
        Ok(())
    }

    /// The served block at a number or tag, if any.
    async fn block_at_number(&self, number: BlockNumberOrTag) -> RpcResult<Option<Block>> {
        let height = self.height_of(number)?;
        self.check_served(height)?;
        self.chain.block_at(height).await.map_err(internal)
    }

    /// The served block with hash `hash`, if any.
    async fn block_with_hash(&self, hash: B256) -> RpcResult<Option<Block>> {
        self.tip()?;
        self.chain
            .block_by_hash(Digest(hash))
            .await
            .map_err(internal)
    }

    /// The finalized tip; 204 until the node serves a chain (while it starts), so that no
    /// answer claims height 0 meanwhile.
    fn tip(&self) -> Result<u64, ErrorObjectOwned> {
        self.chain.finalized_height().ok_or_else(not_ready)
    }

    /// Resolves a number or tag to a height; every tag but `earliest` means the finalized tip.
    /// 204 while the node serves no chain.
    fn height_of(&self, number: BlockNumberOrTag) -> Result<u64, ErrorObjectOwned> {
        let tip = self.tip()?;
        Ok(match number {
            BlockNumberOrTag::Number(height) => height,
            BlockNumberOrTag::Earliest => self.chain.first_height(),
            _ => tip,
        })
    }

    /// The served block holding the transaction with hash `hash`, and its position.
    async fn served_transaction(&self, hash: B256) -> RpcResult<Option<(Block, usize)>> {
        self.tip()?;
        self.chain.transaction_by_hash(hash).await.map_err(internal)
    }

    async fn block_for(&self, id: BlockId) -> Result<Block, ErrorObjectOwned> {
        let block = match id {
            BlockId::Hash(hash) => self.block_with_hash(hash.block_hash).await?,
            BlockId::Number(number) => self.block_at_number(number).await?,
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
        self.check_served(height)?;
        if let Some(certified) = self.chain.certified_at(height).await.map_err(internal)? {
            return Ok(certified);
        }
        // Gap repair authenticates a block through its successor's parent hash; such a block
        // is stored and served without a certificate of its own. Genesis needs none: it is the
        // root of trust.
        let reason = if height == 0 {
            "block 0 is the genesis block, the root of trust: it has no certificate; its extraData holds the genesis DKG outcome the chain profile pins".to_string()
        } else if self
            .chain
            .block_at(height)
            .await
            .map_err(internal)?
            .is_some()
        {
            format!(
                "block {height} is stored, authenticated through the parent hash of a later certified block; this node holds no certificate for it"
            )
        } else {
            format!("no finalization stored for height {height}")
        };
        Err(missing(reason))
    }

    async fn get_latest(&self) -> RpcResult<ConsensusState> {
        self.tip()?;
        Ok(ConsensusState {
            finalized: self.feed.latest(),
            notarized: None,
        })
    }

    async fn subscribe_events(&self, pending: PendingSubscriptionSink) -> SubscriptionResult {
        self.stream(pending, "consensus", |event| {
            Some(Cow::Borrowed(&*event.json))
        })
        .await
    }

    async fn get_finalized_header(&self, query: Query) -> RpcResult<CertifiedHeader> {
        let certified = self.get_finalization(query).await?;
        CertifiedHeader::of(&certified).ok_or_else(|| {
            missing(format!(
                "no block stored with the finalization at {query:?}"
            ))
        })
    }

    async fn subscribe_finalized_headers(
        &self,
        pending: PendingSubscriptionSink,
    ) -> SubscriptionResult {
        self.stream(pending, "finalized header", |event| match &event.event {
            Event::Finalized { block, .. } => CertifiedHeader::of(block)
                .and_then(|header| serde_json::value::to_raw_value(&header).ok())
                .map(Cow::Owned),
            _ => None,
        })
        .await
    }
}

impl<C: ChainReader> RpcHandlers<C> {
    /// Sends `pending` what `select` makes of each published event (nothing when it returns
    /// `None`), as long as the subscription lasts: a subscriber too slow for its buffers is
    /// dropped with a closing error notification (sent once the client has read what was queued
    /// before it), so its client sees the subscription end and can subscribe again.
    async fn stream(
        &self,
        pending: PendingSubscriptionSink,
        what: &'static str,
        select: impl Fn(&PublishedEvent) -> Option<Cow<'_, RawValue>>,
    ) -> SubscriptionResult {
        // Listening before the subscription is confirmed: every event published once the
        // client holds its subscription id reaches it.
        let mut events = self.feed.subscribe();
        let mut sink = pending.accept().await?;
        debug!(
            subscribers = self.feed.subscribers(),
            what, "subscription opened"
        );
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                () = sink.closed() => return Ok(()),
            };
            match event {
                Ok(event) => {
                    let Some(json) = select(&event) else { continue };
                    // What the connection holds unread is bounded in bytes too: the messages
                    // waiting in its buffer, counted at this event's size (the events of one
                    // feed are alike in size), plus this one.
                    let waiting = sink.max_capacity().saturating_sub(sink.capacity());
                    let size = json.get().len();
                    if waiting > 0
                        && waiting.saturating_add(1).saturating_mul(size) > self.queued_bytes
                    {
                        warn!(
                            waiting,
                            size,
                            limit = self.queued_bytes,
                            what,
                            "dropping a slow subscriber: its unread events pass the byte limit"
                        );
                        return Err(SLOW_SUBSCRIBER.into());
                    }
                    let message = match SubscriptionMessage::new(
                        sink.method_name(),
                        sink.subscription_id().clone(),
                        &json,
                    ) {
                        Ok(message) => message,
                        Err(err) => {
                            warn!(%err, what, "could not serialize an event");
                            continue;
                        }
                    };
                    if sink.try_send(message).is_err() {
                        if sink.is_closed() {
                            return Ok(());
                        }
                        warn!(what, "dropping a slow subscriber: its buffer is full");
                        return Err(SLOW_SUBSCRIBER.into());
                    }
                }
                Err(RecvError::Lagged(skipped)) => {
                    warn!(
                        skipped,
                        what, "dropping a slow subscriber: it fell behind the event buffer"
                    );
                    return Err(SLOW_SUBSCRIBER.into());
                }
                Err(RecvError::Closed) => return Ok(()),
            }
        }
    }
}

#[async_trait]
impl<C: ChainReader> BlockApiServer for RpcHandlers<C> {
    async fn block_number(&self) -> RpcResult<U64> {
        Ok(U64::from(self.tip()?))
    }

    async fn chain_id(&self) -> RpcResult<U64> {
        Ok(U64::from(self.known_chain_id()?))
    }

    async fn net_version(&self) -> RpcResult<String> {
        Ok(self.known_chain_id()?.to_string())
    }

    async fn client_version(&self) -> RpcResult<String> {
        Ok(CLIENT_VERSION.to_string())
    }

    /// Syncing while the node starts (stage `starting`: its chain is not served yet) and while
    /// it is behind what its upstreams announce; `false` only once it serves the announced tip.
    async fn syncing(&self) -> RpcResult<SyncStatus> {
        let progress = self.feed.sync_progress();
        let info = |starting: u64, current: u64, highest: u64, stage: Option<&str>| {
            SyncStatus::Info(Box::new(SyncInfo {
                starting_block: U256::from(starting),
                current_block: U256::from(current),
                highest_block: U256::from(highest.max(current)),
                stages: stage.map(|name| {
                    vec![Stage {
                        name: name.to_string(),
                        block: current,
                    }]
                }),
                ..SyncInfo::default()
            }))
        };
        let Some(current) = self.chain.finalized_height() else {
            let (starting, current, highest) =
                progress.map_or((0, 0, 0), |p| (p.starting, p.current, p.highest));
            return Ok(info(starting, current, highest, Some(STARTING_STAGE)));
        };
        Ok(match progress {
            Some(progress) if progress.highest > current => {
                info(progress.starting, current, progress.highest, None)
            }
            _ => SyncStatus::None,
        })
    }

    async fn block_by_number(
        &self,
        number: BlockNumberOrTag,
        full: Option<bool>,
    ) -> RpcResult<Option<RpcBlock>> {
        let block = self.block_at_number(number).await?;
        Ok(block.map(|block| rpc_block(&block, full.unwrap_or(false))))
    }

    async fn block_by_hash(&self, hash: B256, full: Option<bool>) -> RpcResult<Option<RpcBlock>> {
        let block = self.block_with_hash(hash).await?;
        Ok(block.map(|block| rpc_block(&block, full.unwrap_or(false))))
    }

    async fn transaction_count_by_number(
        &self,
        number: BlockNumberOrTag,
    ) -> RpcResult<Option<U64>> {
        let block = self.block_at_number(number).await?;
        Ok(block.map(|block| U64::from(block.transactions().len())))
    }

    async fn transaction_count_by_hash(&self, hash: B256) -> RpcResult<Option<U64>> {
        let block = self.block_with_hash(hash).await?;
        Ok(block.map(|block| U64::from(block.transactions().len())))
    }

    async fn transaction_by_hash(&self, hash: B256) -> RpcResult<Option<RpcTransaction>> {
        let found = self.served_transaction(hash).await?;
        Ok(found.and_then(|(block, index)| rpc_transaction(&block, index)))
    }

    async fn transaction_by_number_and_index(
        &self,
        number: BlockNumberOrTag,
        index: Index,
    ) -> RpcResult<Option<RpcTransaction>> {
        let block = self.block_at_number(number).await?;
        Ok(block.and_then(|block| rpc_transaction(&block, index.0)))
    }

    async fn transaction_by_hash_and_index(
        &self,
        hash: B256,
        index: Index,
    ) -> RpcResult<Option<RpcTransaction>> {
        let block = self.block_with_hash(hash).await?;
        Ok(block.and_then(|block| rpc_transaction(&block, index.0)))
    }

    async fn raw_transaction_by_hash(&self, hash: B256) -> RpcResult<Option<Bytes>> {
        let found = self.served_transaction(hash).await?;
        Ok(found.and_then(|(block, index)| {
            block
                .transactions()
                .get(index)
                .map(|tx| Bytes::from(tx.encoded_2718()))
        }))
    }

    async fn raw_block(&self, id: BlockId) -> RpcResult<Bytes> {
        if let BlockId::Number(number) = id {
            let height = self.height_of(number)?;
            self.check_served(height)?;
            if let Some(raw) = self.chain.raw_block_at(height).await.map_err(internal)? {
                return Ok(Bytes::from(raw));
            }
        }
        // By hash, or missing: the block says why.
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

/// How long a new connection may take to send its first byte: a connection that sends nothing
/// (half-open, or a client that connected and stalled) is closed then, and its slot freed.
pub const FIRST_BYTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Every method the server answers: the `consensus` and block APIs, `cairn_status` and
/// `cairn_explain`.
fn methods<C: ChainReader>(
    chain: C,
    feed: FeedState,
    chain_id: Option<u64>,
    queued_bytes: usize,
    status: Option<StatusSource>,
) -> Result<jsonrpsee::Methods, StartError> {
    let register =
        |err: jsonrpsee::core::RegisterMethodError| StartError::Register(err.to_string());
    let handlers = RpcHandlers::new(chain.clone(), feed, chain_id, queued_bytes);
    let mut module = ConsensusApiServer::into_rpc(handlers.clone());
    module
        .merge(BlockApiServer::into_rpc(handlers))
        .map_err(register)?;
    let mut status = RpcModule::new(status);
    status
        .register_method(STATUS_METHOD, |_, source, _| match source.as_ref() {
            Some(source) => Ok((source.0)()),
            None => Err(missing("this node serves no status")),
        })
        .map_err(register)?;
    module.merge(status).map_err(register)?;
    module.merge(explain_module(chain)).map_err(register)?;
    Ok(module.into())
}

/// Starts the server on `addr` (WebSocket and HTTP on the same port).
///
/// The server accepts at most `max_connections` connections at once: past that it stops
/// accepting, and further ones wait in the kernel's listen backlog, holding no descriptor of
/// this process (jsonrpsee's own cap applies only once a request arrives, so connections that
/// send nothing would each hold one). A connection that sends nothing within
/// [`FIRST_BYTE_TIMEOUT`] is closed.
pub async fn start<C: ChainReader>(
    addr: &str,
    chain: C,
    feed: FeedState,
    config: RpcConfig,
) -> Result<RunningServer, StartError> {
    let bind_error = |error| StartError::Bind {
        addr: addr.to_string(),
        error,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let server_config = ServerConfig::builder()
        .max_connections(config.max_connections)
        .max_subscriptions_per_connection(config.max_subscriptions_per_connection)
        .set_message_buffer_capacity(config.message_buffer)
        .build();
    let services = Server::builder()
        .set_config(server_config)
        .set_http_middleware(tower::ServiceBuilder::new().layer(StatusPageLayer))
        .set_rpc_middleware(
            jsonrpsee::server::middleware::rpc::RpcServiceBuilder::new()
                .option_layer(config.public_node.map(crate::public::PublicNodeLayer::new)),
        )
        .to_service_builder();
    let methods = methods(
        chain,
        feed,
        config.chain_id,
        config.queued_bytes,
        config.status,
    )?;
    let (stop, handle) = jsonrpsee::server::stop_channel();
    let slots = Arc::new(tokio::sync::Semaphore::new(
        usize::try_from(config.max_connections.max(1)).unwrap_or(usize::MAX),
    ));
    tokio::spawn(async move {
        let stopped = stop.clone().shutdown();
        tokio::pin!(stopped);
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot,
                () = &mut stopped => return,
            };
            let Ok(slot) = slot else { return };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of descriptors, most likely: wait for some to be freed.
                        warn!(%err, "the rpc server could not accept a connection");
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                        continue;
                    }
                },
                () = &mut stopped => return,
            };
            let service = services.clone().build(methods.clone(), stop.clone());
            let stopping = stop.clone().shutdown();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)).await {
                    Ok(Ok(read)) if read > 0 => {}
                    _ => return,
                }
                if let Err(err) =
                    jsonrpsee::server::serve_with_graceful_shutdown(stream, service, stopping).await
                {
                    debug!(%err, "rpc connection ended");
                }
                drop(slot);
            });
        }
    });
    info!(%local_addr, "rpc server listening (ws and http)");
    Ok(RunningServer { local_addr, handle })
}

#[cfg(test)]
mod tests {
    use super::methods;
    use crate::{FeedState, ReadError, methods::ALL};

    /// A chain with nothing in it: only the method table is looked at.
    #[derive(Clone)]
    struct Empty;

    impl crate::ChainReader for Empty {
        fn finalized_height(&self) -> Option<u64> {
            None
        }

        async fn certified_at(
            &self,
            _height: u64,
        ) -> Result<Option<cairn_primitives::CertifiedBlock>, ReadError> {
            Ok(None)
        }

        async fn block_at(
            &self,
            _height: u64,
        ) -> Result<Option<cairn_primitives::Block>, ReadError> {
            Ok(None)
        }

        async fn block_by_hash(
            &self,
            _hash: cairn_primitives::Digest,
        ) -> Result<Option<cairn_primitives::Block>, ReadError> {
            Ok(None)
        }

        async fn transaction_by_hash(
            &self,
            _hash: alloy_primitives::B256,
        ) -> Result<Option<(cairn_primitives::Block, usize)>, ReadError> {
            Ok(None)
        }
    }

    #[test]
    fn the_server_answers_every_method_name_the_client_calls() {
        let methods = methods(Empty, FeedState::default(), None, 1024, None).expect("registers");
        let served: Vec<&str> = methods.method_names().collect();
        for name in ALL {
            assert!(served.contains(&name), "{name} is not served: {served:?}");
        }
    }
}
