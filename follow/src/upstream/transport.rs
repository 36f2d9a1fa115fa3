//! What carries an upstream: a connection that answers requests and delivers the upstream's
//! events. The actor ([`super::Actor`]) keeps one alive over any [`Transport`]: a WebSocket
//! JSON-RPC connection in the node ([`WebSocket`]), a feed in the same process in simulations
//! ([`super::in_process::InProcess`]).

use super::{CallCounts, ClientConfig, UpstreamClient, UpstreamError, UpstreamRequests};
use cairn_primitives::{CertifiedBlock, Event};
use futures::{StreamExt as _, stream::BoxStream};
use std::{future::Future, sync::Arc};

/// What a connection delivers, in order.
#[derive(Debug)]
pub enum Incoming {
    /// A consensus event (unverified; boxed, as blocks are large).
    Event(Box<Event>),
    /// An event that does not parse, described.
    Unparsable(String),
    /// The connection ended.
    Lost {
        /// Why.
        reason: String,
        /// The upstream sent a message over the size limit: invalid data, not a network
        /// failure.
        oversized: bool,
    },
}

/// An open connection: requests, and the events it delivers (ending with [`Incoming::Lost`],
/// or just ending when the upstream is gone for good).
pub struct Connection<R> {
    /// Answers requests while the connection lasts.
    pub requests: R,
    /// The upstream's events.
    pub incoming: BoxStream<'static, Incoming>,
}

/// Opens connections to one upstream.
pub trait Transport: Send + Sync + 'static {
    /// What answers requests over a connection.
    type Requests: UpstreamRequests;

    /// Opens a connection and subscribes to the upstream's events.
    fn connect(
        &self,
    ) -> impl Future<Output = Result<Connection<Self::Requests>, UpstreamError>> + Send;

    /// The upstream's latest finalization, announced when a connection opens so a follower
    /// learns how far the chain goes while the upstream is idle. By default, asked of it.
    fn latest(
        &self,
        requests: &Self::Requests,
    ) -> impl Future<Output = Result<Option<CertifiedBlock>, UpstreamError>> + Send {
        requests.get_latest()
    }
}

/// A WebSocket JSON-RPC upstream (`consensus_subscribe` for events).
#[derive(Clone, Debug)]
pub struct WebSocket {
    /// The normalised `ws://` or `wss://` URL.
    pub url: String,
    /// Connection settings.
    pub client: ClientConfig,
    /// Where the calls over every connection are counted.
    pub counts: Arc<CallCounts>,
}

impl Transport for WebSocket {
    type Requests = Arc<UpstreamClient>;

    async fn connect(&self) -> Result<Connection<Self::Requests>, UpstreamError> {
        let client =
            UpstreamClient::connect_counting(&self.url, &self.client, self.counts.clone()).await?;
        let client = Arc::new(client);
        let subscription = client.subscribe().await?;
        let events = client.clone();
        // The subscription's items, then why the connection ended.
        let incoming = futures::stream::unfold(Some((events, subscription)), |state| async move {
            let (client, mut subscription) = state?;
            let item = tokio::select! {
                biased;
                event = subscription.next() => match event {
                    Some(Ok(event)) => Incoming::Event(Box::new(event)),
                    Some(Err(err)) => Incoming::Unparsable(err.to_string()),
                    None if !client.is_connected() => {
                        let disconnect = client.disconnected().await;
                        return Some((lost(disconnect.reason, disconnect.oversized), None));
                    }
                    None => {
                        let reason = subscription.close_reason().map_or_else(
                            || "subscription closed".to_string(),
                            |reason| format!("subscription closed: {reason:?}"),
                        );
                        return Some((lost(reason, false), None));
                    }
                },
                disconnect = client.disconnected() => {
                    return Some((lost(disconnect.reason, disconnect.oversized), None));
                }
            };
            Some((item, Some((client, subscription))))
        })
        .boxed();
        Ok(Connection {
            requests: client,
            incoming,
        })
    }
}

const fn lost(reason: String, oversized: bool) -> Incoming {
    Incoming::Lost { reason, oversized }
}
