//! One connection to an upstream node, over WebSocket or HTTP: typed calls for the data a
//! follower fetches, with the block hash checked on every block it returns.

use super::UpstreamError;
use alloy_primitives::{B256, Bytes, U64};
use cairn_epoch::{BoundarySource, SourceError};
use cairn_feed::{MISSING_CODE, NOT_READY_CODE, RpcBlock, RpcBlockError, block_from_rpc};
use cairn_primitives::{Block, CertifiedBlock, Digest, Event, Query};
use jsonrpsee::{
    client_transport::ws::WsError,
    core::{
        client::{ClientT, Error as ClientError, Subscription, SubscriptionClientT},
        http_helpers::HttpError,
        params::{ArrayParams, BatchRequestBuilder},
    },
    http_client::{HttpClient, HttpClientBuilder, transport::Error as HttpTransportError},
    rpc_params,
    types::error::METHOD_NOT_FOUND_CODE,
    ws_client::{PingConfig, WsClient, WsClientBuilder},
};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Which block to fetch.
#[derive(Clone, Copy, Debug)]
enum BlockRef {
    /// By hash.
    Hash(B256),
    /// By height.
    Number(U64),
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
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            subscription_buffer: 4096,
            max_response_size: 16 * 1024 * 1024,
        }
    }
}

/// Normalises an upstream address: `host:port` means `ws://host:port`.
pub fn normalize_url(url: &str) -> Result<String, UpstreamError> {
    let url = url.trim();
    let normalized = if ["ws://", "wss://", "http://", "https://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        url.to_string()
    } else if url.contains("://") {
        return Err(UpstreamError::InvalidUrl(format!(
            "`{url}`: use ws://, wss://, http://, https:// or host:port"
        )));
    } else {
        format!("ws://{url}")
    };
    let authority = normalized
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    if authority.is_empty() || authority.starts_with('/') {
        return Err(UpstreamError::InvalidUrl(format!("`{url}` has no host")));
    }
    Ok(normalized)
}

/// A connected upstream.
#[derive(Debug)]
pub enum UpstreamClient {
    /// Over WebSocket (can subscribe).
    Ws(WsClient),
    /// Over HTTP (requests only).
    Http(HttpClient),
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
    /// Connects to `url` (see [`normalize_url`]).
    pub async fn connect(url: &str, config: &ClientConfig) -> Result<Self, UpstreamError> {
        let url = normalize_url(url)?;
        if url.starts_with("ws") {
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
                .map(Self::Ws)
                .map_err(|err| UpstreamError::Connect(format!("{url}: {err}")))
        } else {
            HttpClientBuilder::default()
                .request_timeout(config.request_timeout)
                .max_response_size(config.max_response_size)
                .build(&url)
                .map(Self::Http)
                .map_err(|err| UpstreamError::Connect(format!("{url}: {err}")))
        }
    }

    async fn request<R: DeserializeOwned>(
        &self,
        method: &str,
        params: ArrayParams,
    ) -> Result<R, ClientError> {
        match self {
            Self::Ws(client) => client.request(method, params).await,
            Self::Http(client) => client.request(method, params).await,
        }
    }

    /// Subscribes to `consensus_event` notifications (WebSocket only).
    pub async fn subscribe(&self) -> Result<Subscription<Event>, UpstreamError> {
        let Self::Ws(client) = self else {
            return Err(UpstreamError::InvalidUrl(
                "subscriptions need a ws:// or wss:// upstream".into(),
            ));
        };
        client
            .subscribe(
                "consensus_subscribe",
                rpc_params![],
                "consensus_unsubscribe",
            )
            .await
            .map_err(|err| call_error("consensus_subscribe", err))
    }

    /// Resolves when a WebSocket connection drops (never for HTTP).
    pub async fn disconnected(&self) -> Disconnect {
        match self {
            Self::Ws(client) => {
                let err = client.on_disconnect().await;
                Disconnect {
                    reason: err.to_string(),
                    oversized: oversized(&err),
                }
            }
            Self::Http(_) => std::future::pending().await,
        }
    }

    /// Whether a WebSocket connection is still up (HTTP is always).
    pub fn is_connected(&self) -> bool {
        match self {
            Self::Ws(client) => client.is_connected(),
            Self::Http(_) => true,
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
        let mut certified: CertifiedBlock = match self
            .request("consensus_getFinalization", rpc_params![query])
            .await
        {
            Ok(certified) => certified,
            Err(err) if is_missing(&err) => return Ok(None),
            Err(err) => return Err(call_error("consensus_getFinalization", err)),
        };
        if certified.block.is_none() {
            let height = match (query, certified.height) {
                (Query::Height(height), _) | (Query::Latest, Some(height)) => height,
                (Query::Latest, None) => return Ok(None),
            };
            certified.block = self
                .fetch_block(BlockRef::Number(U64::from(height)))
                .await?;
            if certified.block.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(certified))
    }

    /// The blocks at heights `first..=last` in one JSON-RPC batch of `debug_getRawBlock`
    /// calls, each decoded and checked against its roots; the answer stops before the first
    /// height the upstream lacks. An upstream that does not answer the batch is asked block
    /// by block.
    pub async fn get_blocks(&self, first: u64, last: u64) -> Result<Vec<Block>, UpstreamError> {
        const METHOD: &str = "debug_getRawBlock";
        if first > last {
            return Ok(Vec::new());
        }
        let mut batch = BatchRequestBuilder::new();
        for height in first..=last {
            batch
                .insert(METHOD, rpc_params![U64::from(height)])
                .map_err(|err| UpstreamError::Rpc(format!("{METHOD}: {err}")))?;
        }
        let answer = match self {
            Self::Ws(client) => client.batch_request::<Bytes>(batch).await,
            Self::Http(client) => client.batch_request::<Bytes>(batch).await,
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(ClientError::Call(call)) if call.code() == METHOD_NOT_FOUND_CODE => {
                return self.blocks_one_by_one(first, last).await;
            }
            Err(err) => return Err(call_error(METHOD, err)),
        };
        let mut blocks = Vec::with_capacity(answer.len());
        for (height, entry) in (first..=last).zip(answer) {
            let raw = match entry {
                Ok(raw) => raw,
                Err(err) if err.code() == MISSING_CODE || err.code() == NOT_READY_CODE => break,
                Err(err) if err.code() == METHOD_NOT_FOUND_CODE => {
                    return self.blocks_one_by_one(first, last).await;
                }
                Err(err) => return Err(UpstreamError::Rpc(format!("{METHOD} {height}: {err}"))),
            };
            let block = Block::decode_raw_rlp(&raw).map_err(|err| {
                UpstreamError::MalformedBlock(format!("{METHOD} {height}: {err}"))
            })?;
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

    /// [`Self::get_blocks`] one request per block, for upstreams without batches or
    /// `debug_getRawBlock`.
    async fn blocks_one_by_one(&self, first: u64, last: u64) -> Result<Vec<Block>, UpstreamError> {
        let mut blocks = Vec::new();
        for height in first..=last {
            match self
                .fetch_block(BlockRef::Number(U64::from(height)))
                .await?
            {
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
        let (method, answer) = match block {
            BlockRef::Hash(hash) => (
                "eth_getBlockByHash",
                self.request::<Option<RpcBlock>>("eth_getBlockByHash", rpc_params![hash, true])
                    .await,
            ),
            BlockRef::Number(number) => (
                "eth_getBlockByNumber",
                self.request::<Option<RpcBlock>>("eth_getBlockByNumber", rpc_params![number, true])
                    .await,
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
        match block {
            BlockRef::Hash(hash) => self.raw_block(hash).await,
            BlockRef::Number(number) => self.raw_block(number).await,
        }
    }

    async fn raw_block(
        &self,
        id: impl serde::Serialize + Send,
    ) -> Result<Option<Block>, UpstreamError> {
        let raw: Bytes = match self.request("debug_getRawBlock", rpc_params![id]).await {
            Ok(raw) => raw,
            Err(err) if is_missing(&err) => return Ok(None),
            Err(err) => return Err(call_error("debug_getRawBlock", err)),
        };
        Block::decode_raw_rlp(&raw)
            .map(Some)
            .map_err(|err| UpstreamError::MalformedBlock(err.to_string()))
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
    use super::normalize_url;

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
    }
}
