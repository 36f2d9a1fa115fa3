//! One connection to an upstream node, over WebSocket or HTTP: typed calls for the data a
//! follower fetches, with the block hash checked on every block it returns.

use super::{
    UpstreamError,
    manners::{BatchSize, CallCounts, Pace},
};
use alloy_eips::{BlockId, BlockNumberOrTag};
use alloy_primitives::{B256, Bytes, U64};
use cairn_epoch::{BoundarySource, SourceError};
use cairn_feed::{MISSING_CODE, NOT_READY_CODE, RpcBlock, RpcBlockError, block_from_rpc};
use cairn_feed::{
    methods,
    rpc::{BlockApiClient, ConsensusApiClient},
};
use cairn_primitives::{Block, CertifiedBlock, Digest, Event, Query};
use jsonrpsee::{
    client_transport::ws::WsError,
    core::{
        client::{BatchResponse, ClientT, Error as ClientError, Subscription, SubscriptionClientT},
        http_helpers::HttpError,
        params::{ArrayParams, BatchRequestBuilder},
        traits::ToRpcParams,
    },
    http_client::{HttpClient, HttpClientBuilder, transport::Error as HttpTransportError},
    rpc_params,
    types::{ErrorObjectOwned, error::METHOD_NOT_FOUND_CODE},
    ws_client::{PingConfig, WsClient, WsClientBuilder},
};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use url::Url;

/// Which block to fetch.
#[derive(Clone, Copy, Debug)]
enum BlockRef {
    /// By hash.
    Hash(B256),
    /// By height.
    Number(u64),
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Time allowed for one request.
    pub request_timeout: Duration,
    /// Time allowed to open the connection.
    pub connect_timeout: Duration,
    /// WebSocket keep-alive ping interval; the connection is closed after three missed pongs.
    pub ping_interval: Duration,
    /// Events buffered for the subscription before the connection counts as lagging.
    pub subscription_buffer: usize,
    /// Largest answer or event accepted, in bytes; a larger one fails the request (or, for an
    /// event, the connection).
    pub max_response_size: u32,
    /// Calls sent per second at most (a batch counts each call); `None` for no budget. Either
    /// way, a "slow down" halves the rate and answers grow it back (never above the budget).
    pub calls_per_second: Option<u32>,
    /// The most calls sent in one batch, before the upstream says less.
    pub max_batch: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            subscription_buffer: 4096,
            max_response_size: 16 * 1024 * 1024,
            calls_per_second: None,
            max_batch: 1024,
        }
    }
}

/// Normalises an upstream address: `host:port` means `ws://host:port`.
pub(crate) fn normalize_url(url: &str) -> Result<String, UpstreamError> {
    let url = url.trim();
    let text = if url.contains("://") {
        url.to_string()
    } else {
        format!("ws://{url}")
    };
    let parsed =
        Url::parse(&text).map_err(|err| UpstreamError::InvalidUrl(format!("`{url}`: {err}")))?;
    if !matches!(parsed.scheme(), "ws" | "wss" | "http" | "https") {
        return Err(UpstreamError::InvalidUrl(format!(
            "`{url}`: use ws://, wss://, http://, https:// or host:port"
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(UpstreamError::InvalidUrl(format!("`{url}` has no host")));
    }
    Ok(text)
}

/// The HTTP address of a node given as `host:port` or a `ws`, `wss`, `http` or `https` URL
/// (`ws` becomes `http`, `wss` becomes `https`), for one-off calls such as `cairn status`.
pub fn http_url(url: &str) -> Result<String, UpstreamError> {
    let text = normalize_url(url)?;
    let (scheme, rest) = text.split_once("://").unwrap_or(("ws", &text));
    let scheme = match scheme {
        "ws" | "http" => "http",
        _ => "https",
    };
    Ok(format!("{scheme}://{rest}"))
}

/// A connected upstream, and what it was found to serve.
#[derive(Debug)]
pub struct UpstreamClient {
    transport: Transport,
    manners: Manners,
}

/// The connection itself.
#[derive(Debug)]
enum Transport {
    /// Over WebSocket (can subscribe).
    Ws(WsClient),
    /// Over HTTP (requests only).
    Http(HttpClient),
}

/// How to ask an upstream: learnt from its answers, as public nodes differ. Many refuse
/// `debug_*`, cap batch sizes, and answer calls beyond a budget with "slow down" (-32005,
/// HTTP 429).
#[derive(Debug)]
struct Manners {
    /// Whether `debug_getRawBlock` was refused as an unknown method.
    no_raw_blocks: AtomicBool,
    /// Whether `consensus_getFinalizedHeader` was refused as an unknown method.
    no_finalized_headers: AtomicBool,
    /// The calls a batch holds.
    batch: BatchSize,
    /// The call rate.
    pace: Pace,
    /// Calls sent and refused, kept across reconnections when the owner passes them in.
    counts: Arc<CallCounts>,
}

/// How long to wait after the first "slow down", doubled on each one that follows.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a call is retried while the upstream keeps saying "slow down".
const SLOW_DOWN_LIMIT: Duration = Duration::from_secs(60);

/// Whether an answer asks the client to slow down: JSON-RPC -32005 ("limit exceeded", what
/// public Ethereum nodes send), HTTP 429, or an error that says so. Not invalid data, and not a
/// failure of the node.
fn is_slow_down(err: &ClientError) -> bool {
    match err {
        ClientError::Call(call) => call.code() == -32005 || says_slow_down(call.message()),
        ClientError::Transport(err) => says_slow_down(&err.to_string()),
        _ => false,
    }
}

fn says_slow_down(text: &str) -> bool {
    let text = text.to_lowercase();
    [
        "rate limit",
        "too many requests",
        "slow down",
        "exceeded the limit",
    ]
    .iter()
    .any(|sign| text.contains(sign))
}

/// Whether an error refuses a batch for its size.
fn is_batch_too_large(err: &ClientError) -> bool {
    match err {
        ClientError::Call(call) => is_batch_too_large_message(call.message()),
        other => is_batch_too_large_message(&other.to_string()),
    }
}

fn is_batch_too_large_message(text: &str) -> bool {
    let text = text.to_lowercase();
    text.contains("batch")
        && ["too large", "too many", "exceed", "limit"]
            .iter()
            .any(|sign| text.contains(sign))
}

fn call_error(method: &str, err: ClientError) -> UpstreamError {
    if oversized(&err) {
        return UpstreamError::Oversized(method.to_string());
    }
    match err {
        ClientError::RequestTimeout => UpstreamError::Timeout,
        ClientError::RestartNeeded(_) => UpstreamError::NotConnected,
        other => UpstreamError::Rpc(format!("{method}: {other}")),
    }
}

/// Why a WebSocket connection ended.
#[derive(Clone, Debug)]
pub struct Disconnect {
    /// The client's error.
    pub reason: String,
    /// Whether the upstream sent a message over [`ClientConfig::max_response_size`]: invalid
    /// data, not a network failure.
    pub oversized: bool,
}

/// Whether an error (or the end of a connection) is a received message over the size limit.
fn oversized(err: &ClientError) -> bool {
    match err {
        ClientError::RestartNeeded(inner) => oversized(inner),
        ClientError::Transport(err) => {
            matches!(
                err.downcast_ref::<WsError>(),
                Some(WsError::Connection(
                    soketto::connection::Error::MessageTooLarge { .. }
                ))
            ) || matches!(
                err.downcast_ref::<HttpTransportError>(),
                Some(HttpTransportError::Http(HttpError::TooLarge))
            )
        }
        _ => false,
    }
}

/// Whether a JSON-RPC error means "the upstream does not have it".
fn is_missing(err: &ClientError) -> bool {
    matches!(err, ClientError::Call(call) if call.code() == MISSING_CODE || call.code() == NOT_READY_CODE)
}

impl UpstreamClient {
    /// Connects to `url` (`host:port` is taken as `ws://host:port`).
    pub async fn connect(url: &str, config: &ClientConfig) -> Result<Self, UpstreamError> {
        Self::connect_counting(url, config, Arc::default()).await
    }

    /// [`Self::connect`], adding the calls it sends to `counts`.
    pub async fn connect_counting(
        url: &str,
        config: &ClientConfig,
        counts: Arc<CallCounts>,
    ) -> Result<Self, UpstreamError> {
        let url = normalize_url(url)?;
        let manners = Manners {
            no_raw_blocks: AtomicBool::new(false),
            no_finalized_headers: AtomicBool::new(false),
            batch: BatchSize::new(config.max_batch),
            pace: Pace::new(config.calls_per_second),
            counts,
        };
        let transport = if url.starts_with("ws") {
            let ping = PingConfig::new()
                .ping_interval(config.ping_interval)
                .inactive_limit(config.ping_interval * 3);
            WsClientBuilder::default()
                .request_timeout(config.request_timeout)
                .connection_timeout(config.connect_timeout)
                .enable_ws_ping(ping)
                .max_buffer_capacity_per_subscription(config.subscription_buffer)
                .max_response_size(config.max_response_size)
                .build(&url)
                .await
                .map(Transport::Ws)
                .map_err(|err| UpstreamError::Connect(format!("{url}: {err}")))?
        } else {
            HttpClientBuilder::default()
                .request_timeout(config.request_timeout)
                .max_response_size(config.max_response_size)
                .build(&url)
                .map(Transport::Http)
                .map_err(|err| UpstreamError::Connect(format!("{url}: {err}")))?
        };
        Ok(Self { transport, manners })
    }

    /// Calls sent, and of those refused with "slow down" (and retried).
    pub fn call_counts(&self) -> (u64, u64) {
        (self.manners.counts.calls(), self.manners.counts.refused())
    }

    /// Waits out "slow down" answer number `refusals` (from 1), or gives up once
    /// [`SLOW_DOWN_LIMIT`] has passed since `started`.
    async fn back_off(&self, refusals: u32, started: tokio::time::Instant) -> bool {
        if started.elapsed() >= SLOW_DOWN_LIMIT {
            return false;
        }
        let wait = FIRST_BACKOFF
            .saturating_mul(1 << refusals.saturating_sub(1).min(5))
            .min(MAX_BACKOFF);
        tokio::time::sleep(wait).await;
        true
    }

    /// One call, within the budget; retried while the upstream says "slow down".
    async fn paced_request<R: DeserializeOwned>(
        &self,
        method: &str,
        params: Serialized,
    ) -> Result<R, ClientError> {
        let started = tokio::time::Instant::now();
        let mut refusals = 0;
        loop {
            self.manners.pace.wait(1).await;
            self.manners.counts.sent(1);
            // Only the refusal is kept across the wait (an answer need not be `Send`).
            let refusal = {
                let answer = match &self.transport {
                    Transport::Ws(client) => client.request(method, params.clone()).await,
                    Transport::Http(client) => client.request(method, params.clone()).await,
                };
                match answer {
                    Err(err) if is_slow_down(&err) => err,
                    other => {
                        if other.is_ok() {
                            self.manners.pace.answered(1);
                        }
                        return other;
                    }
                }
            };
            self.manners.counts.slowed(1);
            self.manners.pace.slowed_down();
            refusals += 1;
            if !self.back_off(refusals, started).await {
                return Err(refusal);
            }
        }
    }

    /// `calls` (method and parameters) in batches the upstream takes, within the budget: a
    /// batch refused for its size is split, and the size kept for the next ones; calls refused
    /// with "slow down" are sent again after a wait. Answers come in the order of `calls`.
    async fn batch<R: DeserializeOwned + std::fmt::Debug + Send + 'static>(
        &self,
        calls: &[(&'static str, ArrayParams)],
    ) -> Result<Vec<Result<R, ErrorObjectOwned>>, ClientError> {
        let mut answers: Vec<Option<Result<R, ErrorObjectOwned>>> =
            (0..calls.len()).map(|_| None).collect();
        let started = tokio::time::Instant::now();
        let mut refusals = 0;
        loop {
            let pending: Vec<usize> = (0..calls.len()).filter(|i| answers[*i].is_none()).collect();
            if pending.is_empty() {
                return Ok(answers
                    .into_iter()
                    .map(|answer| answer.expect("answered"))
                    .collect());
            }
            let size = self
                .manners
                .batch
                .current()
                .min(self.manners.pace.batch_limit());
            let mut slowed = false;
            for group in pending.chunks(size) {
                let mut batch = BatchRequestBuilder::new();
                for index in group {
                    let (method, params) = &calls[*index];
                    batch
                        .insert(method, params.clone())
                        .map_err(|err| ClientError::Custom(err.to_string()))?;
                }
                self.manners.pace.wait(group.len()).await;
                self.manners.counts.sent(group.len() as u64);
                let answer = match &self.transport {
                    Transport::Ws(client) => client.batch_request::<R>(batch).await,
                    Transport::Http(client) => client.batch_request::<R>(batch).await,
                };
                let answer = match answer {
                    // Some nodes refuse a large batch call by call.
                    Ok(answer)
                        if answer.iter().any(|entry| {
                            matches!(entry, Err(err) if is_batch_too_large_message(err.message()))
                        }) =>
                    {
                        Err(ClientError::Custom("batch too large".into()))
                    }
                    other => other,
                };
                match answer {
                    Ok(answer) => {
                        self.manners.batch.answered(group.len());
                        let (mut refused, mut answered) = (0, 0);
                        for (index, entry) in group.iter().zip(answer) {
                            match entry {
                                Err(err)
                                    if err.code() == -32005 || says_slow_down(err.message()) =>
                                {
                                    refused += 1;
                                }
                                entry => {
                                    answered += usize::from(entry.is_ok());
                                    answers[*index] = Some(entry);
                                }
                            }
                        }
                        // Only what the upstream served says what it takes (a refused
                        // `debug_*` call costs it nothing).
                        self.manners.pace.answered(answered);
                        if refused > 0 {
                            self.manners.counts.slowed(refused as u64);
                            self.manners.pace.slowed_down();
                            slowed = true;
                        }
                    }
                    Err(err) if is_batch_too_large(&err) && group.len() > 1 => {
                        let smaller = self.manners.batch.refused(group.len());
                        tracing::debug!(
                            size = smaller,
                            "the upstream refused a batch for its size; sending smaller ones"
                        );
                        slowed = false;
                        break;
                    }
                    Err(err) if is_slow_down(&err) => {
                        self.manners.counts.slowed(group.len() as u64);
                        self.manners.pace.slowed_down();
                        slowed = true;
                    }
                    Err(err) => return Err(err),
                }
            }
            if slowed {
                refusals += 1;
                if !self.back_off(refusals, started).await {
                    return Err(ClientError::Custom(
                        "rate limit exceeded: the upstream kept saying slow down".into(),
                    ));
                }
            }
        }
    }

    /// Subscribes to `consensus_event` notifications (WebSocket only).
    pub async fn subscribe(&self) -> Result<Subscription<Event>, UpstreamError> {
        let Transport::Ws(client) = &self.transport else {
            return Err(UpstreamError::InvalidUrl(
                "subscriptions need a ws:// or wss:// upstream".into(),
            ));
        };
        ConsensusApiClient::subscribe_events(client)
            .await
            .map_err(|err| call_error(methods::SUBSCRIBE, err))
    }

    /// Resolves when a WebSocket connection drops (never for HTTP).
    pub async fn disconnected(&self) -> Disconnect {
        match &self.transport {
            Transport::Ws(client) => {
                let err = client.on_disconnect().await;
                Disconnect {
                    reason: err.to_string(),
                    oversized: oversized(&err),
                }
            }
            Transport::Http(_) => std::future::pending().await,
        }
    }

    /// Whether a WebSocket connection is still up (HTTP is always).
    pub fn is_connected(&self) -> bool {
        match &self.transport {
            Transport::Ws(client) => client.is_connected(),
            Transport::Http(_) => true,
        }
    }

    /// The certified block at `height`, with its block (fetched separately when the answer
    /// lacks it). `None` when the upstream does not have it.
    pub async fn get_finalization(
        &self,
        height: u64,
    ) -> Result<Option<CertifiedBlock>, UpstreamError> {
        self.certified(Query::Height(height)).await
    }

    /// The upstream's latest certified block, with its block; `None` before its first.
    pub async fn get_latest(&self) -> Result<Option<CertifiedBlock>, UpstreamError> {
        self.certified(Query::Latest).await
    }

    async fn certified(&self, query: Query) -> Result<Option<CertifiedBlock>, UpstreamError> {
        let mut certified = match ConsensusApiClient::get_finalization(self, query).await {
            Ok(certified) => certified,
            Err(err) if is_missing(&err) => return Ok(None),
            Err(err) => return Err(call_error(methods::GET_FINALIZATION, err)),
        };
        if certified.block.is_none() {
            let height = match (query, certified.height) {
                (Query::Height(height), _) | (Query::Latest, Some(height)) => height,
                (Query::Latest, None) => return Ok(None),
            };
            certified.block = self.fetch_block(BlockRef::Number(height)).await?;
            if certified.block.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(certified))
    }

    /// The blocks at heights `first..=last`, each decoded and checked against its roots; the
    /// answer stops before the first height the upstream lacks. Asked in JSON-RPC batches of
    /// `debug_getRawBlock` (the raw RLP: the least to send and decode), or of
    /// `eth_getBlockByNumber [n, true]` once the upstream refused `debug_*` (as public nodes
    /// do); block by block from an upstream that takes no batches.
    pub async fn get_blocks(&self, first: u64, last: u64) -> Result<Vec<Block>, UpstreamError> {
        const RAW: &str = methods::GET_RAW_BLOCK;
        const BY_NUMBER: &str = methods::GET_BLOCK_BY_NUMBER;
        if first > last {
            return Ok(Vec::new());
        }
        if !self.manners.no_raw_blocks.load(Ordering::Relaxed) {
            let calls: Vec<_> = (first..=last)
                .map(|height| (RAW, rpc_params![U64::from(height)]))
                .collect();
            let refused = match self.batch::<Bytes>(&calls).await {
                Ok(answers) => {
                    if answers.iter().any(
                        |answer| matches!(answer, Err(err) if err.code() == METHOD_NOT_FOUND_CODE),
                    ) {
                        true
                    } else {
                        return decode_raw_blocks(first, answers);
                    }
                }
                Err(ClientError::Call(call)) if call.code() == METHOD_NOT_FOUND_CODE => true,
                Err(err) if is_slow_down(&err) => return Err(call_error(RAW, err)),
                // A batch answered with one error, or not as a batch: asked block by block.
                Err(ClientError::Call(_) | ClientError::ParseError(_)) => {
                    return self.blocks_one_by_one(first, last).await;
                }
                Err(err) => return Err(call_error(RAW, err)),
            };
            if refused {
                self.manners.no_raw_blocks.store(true, Ordering::Relaxed);
                tracing::debug!(
                    "the upstream refuses debug_getRawBlock; asking eth_getBlockByNumber in batches"
                );
            }
        }
        let calls: Vec<_> = (first..=last)
            .map(|height| (BY_NUMBER, rpc_params![U64::from(height), true]))
            .collect();
        let answers = match self.batch::<Option<RpcBlock>>(&calls).await {
            Ok(answers) => answers,
            Err(err) if is_slow_down(&err) => return Err(call_error(BY_NUMBER, err)),
            Err(ClientError::Call(_) | ClientError::ParseError(_)) => {
                return self.blocks_one_by_one(first, last).await;
            }
            Err(err) => return Err(call_error(BY_NUMBER, err)),
        };
        let mut blocks = Vec::with_capacity(answers.len());
        for (height, answer) in (first..=last).zip(answers) {
            let rpc = match answer {
                Ok(Some(rpc)) => rpc,
                Ok(None) => break,
                Err(err) if err.code() == MISSING_CODE || err.code() == NOT_READY_CODE => break,
                Err(err) if err.code() == METHOD_NOT_FOUND_CODE => {
                    return self.blocks_one_by_one(height, last).await.map(|rest| {
                        blocks.extend(rest);
                        blocks
                    });
                }
                Err(err) => {
                    return Err(UpstreamError::Rpc(format!("{BY_NUMBER} {height}: {err}")));
                }
            };
            let block = match block_from_rpc(rpc) {
                Ok(block) => block,
                // Hashes only: the raw block is not to be had either; ask one by one.
                Err(RpcBlockError::HashesOnly) => {
                    match self.fetch_block(BlockRef::Number(height)).await? {
                        Some(block) => block,
                        None => break,
                    }
                }
                Err(err) => {
                    return Err(UpstreamError::MalformedBlock(format!(
                        "{BY_NUMBER} {height}: {err}"
                    )));
                }
            };
            if block.height() != height {
                return Err(UpstreamError::MalformedBlock(format!(
                    "{BY_NUMBER} {height} answered block {}",
                    block.height()
                )));
            }
            blocks.push(block);
        }
        Ok(blocks)
    }

    /// The certificates of the blocks at `heights`, in their order (`None` where the upstream
    /// has none), asked in batches: `consensus_getFinalizedHeader` (no transactions to send)
    /// until the upstream refuses it as an unknown method, then `consensus_getFinalization`
    /// (Tempo's nodes before header-only finalizations); one by one from an upstream that
    /// takes no batches.
    pub async fn get_certificates(
        &self,
        heights: &[u64],
    ) -> Result<Vec<Option<String>>, UpstreamError> {
        const HEADER: &str = methods::GET_FINALIZED_HEADER;
        const FULL: &str = methods::GET_FINALIZATION;
        let method = if self.manners.no_finalized_headers.load(Ordering::Relaxed) {
            FULL
        } else {
            HEADER
        };
        let calls: Vec<_> = heights
            .iter()
            .map(|height| (method, rpc_params![Query::Height(*height)]))
            .collect();
        let answers = match self.batch::<CertificateOnly>(&calls).await {
            Ok(answers)
                if method == HEADER
                    && answers.iter().any(
                        |answer| matches!(answer, Err(err) if err.code() == METHOD_NOT_FOUND_CODE),
                    ) =>
            {
                return self.refused_finalized_headers(heights).await;
            }
            Ok(answers) => answers,
            Err(ClientError::Call(call))
                if method == HEADER && call.code() == METHOD_NOT_FOUND_CODE =>
            {
                return self.refused_finalized_headers(heights).await;
            }
            Err(err) if is_slow_down(&err) => return Err(call_error(method, err)),
            // A batch answered with one error, or not as a batch: asked one by one.
            Err(ClientError::Call(_) | ClientError::ParseError(_)) => {
                let mut certificates = Vec::with_capacity(heights.len());
                for height in heights {
                    let certified = self.certified(Query::Height(*height)).await?;
                    certificates.push(certified.map(|certified| certified.certificate));
                }
                return Ok(certificates);
            }
            Err(err) => return Err(call_error(method, err)),
        };
        Ok(heights
            .iter()
            .zip(answers)
            .map(|(height, answer)| match answer {
                Ok(answer) => Some(answer.certificate),
                Err(err) => {
                    if err.code() != MISSING_CODE && err.code() != NOT_READY_CODE {
                        tracing::debug!(height, %err, method, "no certificate from the upstream");
                    }
                    None
                }
            })
            .collect())
    }

    /// [`Self::get_certificates`] after the upstream refused `consensus_getFinalizedHeader`:
    /// remembered, and asked again with `consensus_getFinalization`.
    async fn refused_finalized_headers(
        &self,
        heights: &[u64],
    ) -> Result<Vec<Option<String>>, UpstreamError> {
        self.manners
            .no_finalized_headers
            .store(true, Ordering::Relaxed);
        tracing::debug!(
            "the upstream refuses consensus_getFinalizedHeader; asking consensus_getFinalization"
        );
        Box::pin(self.get_certificates(heights)).await
    }

    /// [`Self::get_blocks`] one request per block, for upstreams without batches or
    /// `debug_getRawBlock`.
    async fn blocks_one_by_one(&self, first: u64, last: u64) -> Result<Vec<Block>, UpstreamError> {
        let mut blocks = Vec::new();
        for height in first..=last {
            match self.fetch_block(BlockRef::Number(height)).await? {
                Some(block) if block.height() == height => blocks.push(block),
                Some(block) => {
                    return Err(UpstreamError::MalformedBlock(format!(
                        "block {height} answered block {}",
                        block.height()
                    )));
                }
                None => break,
            }
        }
        Ok(blocks)
    }

    /// The block with hash `digest`, body included; a block with another hash is an error.
    pub async fn get_block(&self, digest: Digest) -> Result<Option<Block>, UpstreamError> {
        let block = self.fetch_block(BlockRef::Hash(B256::from(digest))).await?;
        match block {
            Some(block) if block.hash() != digest => Err(UpstreamError::HashMismatch {
                requested: digest,
                got: block.hash(),
            }),
            other => Ok(other),
        }
    }

    /// A block with its body: `eth_getBlockBy*` with full transactions first (what every Tempo
    /// RPC node serves, and what Tempo's own follower asks for), `debug_getRawBlock` when the
    /// upstream does not answer that method or leaves out the transactions. Every body is
    /// checked against its header's roots.
    async fn fetch_block(&self, block: BlockRef) -> Result<Option<Block>, UpstreamError> {
        let full = Some(true);
        let (method, answer) = match block {
            BlockRef::Hash(hash) => (
                methods::GET_BLOCK_BY_HASH,
                BlockApiClient::block_by_hash(self, hash, full).await,
            ),
            BlockRef::Number(number) => (
                methods::GET_BLOCK_BY_NUMBER,
                BlockApiClient::block_by_number(self, BlockNumberOrTag::Number(number), full).await,
            ),
        };
        match answer {
            Ok(None) => return Ok(None),
            Ok(Some(rpc)) => match block_from_rpc(rpc) {
                Ok(block) => return Ok(Some(block)),
                Err(RpcBlockError::HashesOnly) => {}
                Err(err) => return Err(UpstreamError::MalformedBlock(format!("{method}: {err}"))),
            },
            Err(err) if is_missing(&err) => return Ok(None),
            Err(ClientError::Call(call)) if call.code() == METHOD_NOT_FOUND_CODE => {}
            Err(ClientError::ParseError(err)) => {
                return Err(UpstreamError::MalformedBlock(format!("{method}: {err}")));
            }
            Err(err) => return Err(call_error(method, err)),
        }
        let id = match block {
            BlockRef::Hash(hash) => BlockId::from(hash),
            BlockRef::Number(number) => BlockId::number(number),
        };
        let raw = match BlockApiClient::raw_block(self, id).await {
            Ok(raw) => raw,
            Err(err) if is_missing(&err) => return Ok(None),
            Err(err) => return Err(call_error(methods::GET_RAW_BLOCK, err)),
        };
        Block::decode_raw_rlp(&raw)
            .map(Some)
            .map_err(|err| UpstreamError::MalformedBlock(err.to_string()))
    }
}

/// Parameters serialized once, sent as they are again when a call is retried.
#[derive(Clone, Debug)]
struct Serialized(Option<Box<RawValue>>);

impl ToRpcParams for Serialized {
    fn to_rpc_params(self) -> Result<Option<Box<RawValue>>, serde_json::Error> {
        Ok(self.0)
    }
}

/// A JSON-RPC client that keeps the upstream's manners: every call waits for its turn in the
/// call budget and is counted, and a single call is sent again while the upstream says "slow
/// down". The clients jsonrpsee generates from the server's own traits
/// ([`ConsensusApiClient`], [`BlockApiClient`]) run on it, so a follower calls exactly the
/// methods, parameters and answers a cairn node serves. A batch sent through
/// [`ClientT::batch_request`] goes out as it is (the follower's own batches are split and
/// retried by [`UpstreamClient::get_blocks`] and [`UpstreamClient::get_certificates`]).
impl ClientT for UpstreamClient {
    async fn notification<Params>(&self, method: &str, params: Params) -> Result<(), ClientError>
    where
        Params: ToRpcParams + Send,
    {
        let params = Serialized(params.to_rpc_params()?);
        self.manners.pace.wait(1).await;
        self.manners.counts.sent(1);
        match &self.transport {
            Transport::Ws(client) => client.notification(method, params).await,
            Transport::Http(client) => client.notification(method, params).await,
        }
    }

    async fn request<R, Params>(&self, method: &str, params: Params) -> Result<R, ClientError>
    where
        R: DeserializeOwned,
        Params: ToRpcParams + Send,
    {
        self.paced_request(method, Serialized(params.to_rpc_params()?))
            .await
    }

    async fn batch_request<'a, R>(
        &self,
        batch: BatchRequestBuilder<'a>,
    ) -> Result<BatchResponse<'a, R>, ClientError>
    where
        R: DeserializeOwned + std::fmt::Debug + 'a,
    {
        let calls = batch.iter().count();
        self.manners.pace.wait(calls).await;
        self.manners.counts.sent(calls as u64);
        match &self.transport {
            Transport::Ws(client) => client.batch_request(batch).await,
            Transport::Http(client) => client.batch_request(batch).await,
        }
    }
}

/// Subscriptions over WebSocket; an HTTP upstream has none.
impl SubscriptionClientT for UpstreamClient {
    async fn subscribe<'a, Notif, Params>(
        &self,
        subscribe_method: &'a str,
        params: Params,
        unsubscribe_method: &'a str,
    ) -> Result<Subscription<Notif>, ClientError>
    where
        Params: ToRpcParams + Send,
        Notif: DeserializeOwned,
    {
        match &self.transport {
            Transport::Ws(client) => {
                client
                    .subscribe(subscribe_method, params, unsubscribe_method)
                    .await
            }
            Transport::Http(_) => Err(ClientError::HttpNotImplemented),
        }
    }

    async fn subscribe_to_method<Notif>(
        &self,
        method: &str,
    ) -> Result<Subscription<Notif>, ClientError>
    where
        Notif: DeserializeOwned,
    {
        match &self.transport {
            Transport::Ws(client) => client.subscribe_to_method(method).await,
            Transport::Http(_) => Err(ClientError::HttpNotImplemented),
        }
    }
}

/// The one field of a finalization answer the certificate fill reads.
#[derive(Debug, serde::Deserialize)]
struct CertificateOnly {
    certificate: String,
}

/// The blocks of `debug_getRawBlock` answers for heights from `first`, up to the first the
/// upstream lacks.
fn decode_raw_blocks(
    first: u64,
    answers: Vec<Result<Bytes, ErrorObjectOwned>>,
) -> Result<Vec<Block>, UpstreamError> {
    const METHOD: &str = methods::GET_RAW_BLOCK;
    let mut blocks = Vec::with_capacity(answers.len());
    for (height, answer) in (first..).zip(answers) {
        let raw = match answer {
            Ok(raw) => raw,
            Err(err) if err.code() == MISSING_CODE || err.code() == NOT_READY_CODE => break,
            Err(err) => return Err(UpstreamError::Rpc(format!("{METHOD} {height}: {err}"))),
        };
        let block = Block::decode_raw_rlp(&raw)
            .map_err(|err| UpstreamError::MalformedBlock(format!("{METHOD} {height}: {err}")))?;
        if block.height() != height {
            return Err(UpstreamError::MalformedBlock(format!(
                "{METHOD} {height} answered block {}",
                block.height()
            )));
        }
        blocks.push(block);
    }
    Ok(blocks)
}

/// A shared client answers the follower's requests directly: what the actor's request tasks
/// call over a WebSocket connection ([`super::transport::WebSocket`]), and what a walk can run
/// on through [`super::Sources`] without an actor.
impl super::UpstreamRequests for Arc<UpstreamClient> {
    async fn get_finalization(&self, height: u64) -> Result<Option<CertifiedBlock>, UpstreamError> {
        UpstreamClient::get_finalization(self, height).await
    }

    async fn get_block(&self, digest: Digest) -> Result<Option<Block>, UpstreamError> {
        UpstreamClient::get_block(self, digest).await
    }

    async fn get_latest(&self) -> Result<Option<CertifiedBlock>, UpstreamError> {
        UpstreamClient::get_latest(self).await
    }

    async fn get_blocks(&self, first: u64, last: u64) -> Result<Vec<Block>, UpstreamError> {
        UpstreamClient::get_blocks(self, first, last).await
    }

    async fn get_certificates(
        &self,
        heights: Vec<u64>,
    ) -> Result<Vec<Option<String>>, UpstreamError> {
        UpstreamClient::get_certificates(self, &heights).await
    }
}

impl BoundarySource for UpstreamClient {
    async fn certified_at(&self, height: u64) -> Result<CertifiedBlock, SourceError> {
        self.get_finalization(height)
            .await
            .map_err(|err| SourceError(err.to_string()))?
            .ok_or_else(|| {
                SourceError(format!(
                    "the upstream has no finalization at height {height}"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::{normalize_url, says_slow_down};

    #[test]
    fn slow_down_is_told_by_its_words_not_by_digits() {
        assert!(says_slow_down("rate limit exceeded"));
        assert!(says_slow_down("HTTP 429 Too Many Requests"));
        // A bare "429" would match heights in errors that mean something else.
        assert!(!says_slow_down("no finalization stored for height 4290"));
        assert!(!says_slow_down("block 14290 is damaged on disk"));
    }

    #[test]
    fn urls() {
        assert_eq!(
            normalize_url("127.0.0.1:8546").expect("ok"),
            "ws://127.0.0.1:8546"
        );
        assert_eq!(
            normalize_url("wss://rpc.example").expect("ok"),
            "wss://rpc.example"
        );
        assert_eq!(normalize_url("http://h:1").expect("ok"), "http://h:1");
        assert!(normalize_url("ftp://h:1").is_err());
        assert!(normalize_url("ws://").is_err());
        assert!(normalize_url("").is_err());
        assert!(normalize_url("ws://:8546").is_err());
        assert!(normalize_url("host:port:extra").is_err());
        assert_eq!(
            super::http_url("127.0.0.1:8546").expect("ok"),
            "http://127.0.0.1:8546"
        );
        assert_eq!(super::http_url("ws://h:1").expect("ok"), "http://h:1");
        assert_eq!(super::http_url("wss://h").expect("ok"), "https://h");
        assert_eq!(super::http_url("https://h/x").expect("ok"), "https://h/x");
    }
}
