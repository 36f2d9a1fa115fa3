//! The status page: `GET /status` on the RPC address answers with one HTML page that renders
//! what `cairn_status` answers and updates itself over the node's own WebSocket (a
//! `consensus_subscribe` subscription for every finalization, `cairn_status` every second).
//! Every other request goes on to the JSON-RPC server.

use jsonrpsee::{
    core::BoxError,
    server::{HttpBody, HttpRequest, HttpResponse},
};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};
use tower::{Layer, Service};

/// Where the page is served.
pub const STATUS_PATH: &str = "/status";

/// The page (it needs nothing but the node it came from).
pub const STATUS_PAGE: &str = include_str!("status.html");

/// Serves [`STATUS_PAGE`] on `GET` [`STATUS_PATH`].
#[derive(Clone, Copy, Debug, Default)]
pub struct StatusPageLayer;

impl<S> Layer<S> for StatusPageLayer {
    type Service = StatusPage<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StatusPage { inner }
    }
}

/// The service [`StatusPageLayer`] wraps around the JSON-RPC server.
#[derive(Clone, Debug)]
pub struct StatusPage<S> {
    inner: S,
}

impl<S, B> Service<HttpRequest<B>> for StatusPage<S>
where
    S: Service<HttpRequest<B>, Response = HttpResponse>,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: HttpRequest<B>) -> Self::Future {
        if request.method() == http::Method::GET && request.uri().path() == STATUS_PATH {
            let mut response = HttpResponse::new(HttpBody::from(STATUS_PAGE));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            return Box::pin(async move { Ok(response) });
        }
        let future = self.inner.call(request);
        Box::pin(async move { future.await.map_err(Into::into) })
    }
}

/// One committee, as a status page shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitteeView {
    /// The epoch it signs.
    pub epoch: u64,
    /// The epoch's first height.
    pub first_height: u64,
    /// The epoch's last height (its boundary).
    pub last_height: u64,
    /// Its members, each by the first bytes of its public key in hex.
    pub validators: Vec<String>,
    /// Signatures a certificate needs.
    pub threshold: u32,
    /// The epoch's identity (a BLS12-381 G2 point), 0x-prefixed hex.
    pub identity: String,
}

/// One DKG ceremony: the one whose outcome the boundary before `for_epoch` carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CeremonyView {
    /// The epoch whose key it made.
    pub for_epoch: u64,
    /// What it was (a reshare or a full DKG, and how it ended where that is known).
    pub kind: String,
    /// The boundary block carrying its outcome; `None` for genesis.
    pub boundary: Option<u64>,
    /// Dealers that took part.
    pub dealers: usize,
    /// Players that received shares.
    pub players: usize,
}

/// Epochs whose committee and ceremony a status page keeps (the newest).
pub const STATUS_EPOCHS: usize = 32;

/// Adds an epoch's `committee` and the `ceremony` that made its key, keeping the newest
/// [`STATUS_EPOCHS`] of each (one of each per epoch: the two lists grow together).
pub fn remember_epoch(
    committees: &mut VecDeque<CommitteeView>,
    ceremonies: &mut VecDeque<CeremonyView>,
    committee: CommitteeView,
    ceremony: CeremonyView,
) {
    committees.push_back(committee);
    ceremonies.push_back(ceremony);
    if committees.len() > STATUS_EPOCHS {
        committees.pop_front();
        ceremonies.pop_front();
    }
}
