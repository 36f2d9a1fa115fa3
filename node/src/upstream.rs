//! A JSON-RPC client to an upstream node (`ws://`, `wss://`, `http://`, `https://`, or
//! `host:port` meaning `ws://`), used to fetch boundary blocks for the identity ledger.

use alloy_primitives::U64;
use cairn_epoch::{BoundarySource, SourceError};
use cairn_primitives::{Block, CertifiedBlock, Query, TempoHeader};
use eyre::{WrapErr, eyre};
use jsonrpsee::{
    core::{client::ClientT, params::ArrayParams},
    http_client::{HttpClient, HttpClientBuilder},
    rpc_params,
    ws_client::{WsClient, WsClientBuilder},
};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Time allowed for one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected upstream.
pub enum Upstream {
    /// Over WebSocket.
    Ws(WsClient),
    /// Over HTTP.
    Http(HttpClient),
}

/// Normalises an upstream address: `host:port` means `ws://host:port`.
pub fn normalize_url(url: &str) -> eyre::Result<String> {
    let url = url.trim();
    let normalized = if ["ws://", "wss://", "http://", "https://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        url.to_string()
    } else if url.contains("://") {
        return Err(eyre!(
            "unsupported upstream URL `{url}`: use ws://, wss://, http://, https:// or host:port"
        ));
    } else {
        format!("ws://{url}")
    };
    let authority = normalized
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    if authority.is_empty() || authority.starts_with('/') {
        return Err(eyre!("upstream URL `{url}` has no host"));
    }
    Ok(normalized)
}

impl Upstream {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> eyre::Result<Self> {
        let url = normalize_url(url)?;
        if url.starts_with("ws") {
            let client = WsClientBuilder::default()
                .request_timeout(REQUEST_TIMEOUT)
                .build(&url)
                .await
                .wrap_err_with(|| format!("connecting to upstream {url}"))?;
            Ok(Self::Ws(client))
        } else {
            let client = HttpClientBuilder::default()
                .request_timeout(REQUEST_TIMEOUT)
                .build(&url)
                .wrap_err_with(|| format!("connecting to upstream {url}"))?;
            Ok(Self::Http(client))
        }
    }

    async fn request<R: DeserializeOwned>(
        &self,
        method: &str,
        params: ArrayParams,
    ) -> Result<R, jsonrpsee::core::client::Error> {
        match self {
            Self::Ws(client) => client.request(method, params).await,
            Self::Http(client) => client.request(method, params).await,
        }
    }
}

impl BoundarySource for Upstream {
    async fn certified_at(&self, height: u64) -> Result<CertifiedBlock, SourceError> {
        let mut certified: CertifiedBlock = self
            .request(
                "consensus_getFinalization",
                rpc_params![Query::Height(height)],
            )
            .await
            .map_err(|err| SourceError(format!("consensus_getFinalization: {err}")))?;
        if certified.block.is_none() {
            // Servers that answer without the block still serve its header.
            let header: Option<TempoHeader> = self
                .request(
                    "eth_getBlockByNumber",
                    rpc_params![U64::from(height), false],
                )
                .await
                .map_err(|err| SourceError(format!("eth_getBlockByNumber: {err}")))?;
            let header =
                header.ok_or_else(|| SourceError(format!("no block at height {height}")))?;
            certified.block = Some(Block::header_only(header));
        }
        Ok(certified)
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
