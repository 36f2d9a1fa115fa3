//! A server that answers as public RPC nodes do, for tests and benchmarks of what followers see
//! in the field: each answer after a round trip, `debug_*` refused as an unknown method, every
//! call of a batch above a size refused with -32600 "batch too large", and calls beyond a
//! budget per second refused with -32005 "rate limit exceeded" (each call of a batch counts). A
//! jsonrpsee RPC middleware, so calls inside batches are limited one by one, as such nodes do.

use jsonrpsee::{
    MethodResponse,
    core::middleware::{Batch, BatchEntry, BatchEntryErr, Notification, RpcServiceT},
    types::{ErrorObject, Request},
};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tower::Layer;

/// JSON-RPC error code public nodes answer when a client exceeds its call budget.
pub const RATE_LIMITED: i32 = -32005;
/// JSON-RPC error code of an unknown method.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// JSON-RPC error code of an invalid request (a batch too large).
pub const INVALID_REQUEST: i32 = -32600;

/// How a public node treats its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicNode {
    /// Added before every answer: the network's round trip.
    pub latency: Duration,
    /// Calls answered per second, all clients together (a batch counts each call); 0 for no
    /// limit.
    pub calls_per_second: u32,
    /// Most calls in one batch; a larger batch is refused whole. 0 for no limit.
    pub max_batch: usize,
    /// Whether `debug_*` is refused as an unknown method.
    pub refuse_debug: bool,
}

impl PublicNode {
    /// What the issue tracker and the benchmark call a public node: 60 ms away, no `debug_*`,
    /// batches of at most 100 calls, 300 calls per second.
    pub const TYPICAL: Self = Self {
        latency: Duration::from_millis(60),
        calls_per_second: 300,
        max_batch: 100,
        refuse_debug: true,
    };
}

impl std::str::FromStr for PublicNode {
    type Err = String;

    /// `LATENCY,CALLS_PER_SECOND,MAX_BATCH,debug|no-debug` (`60ms,300,100,no-debug`), or
    /// `typical`.
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "typical" {
            return Ok(Self::TYPICAL);
        }
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let [latency, calls, batch, debug] = parts.as_slice() else {
            return Err(format!(
                "`{text}` is not `typical` or LATENCY,CALLS_PER_SECOND,MAX_BATCH,debug|no-debug"
            ));
        };
        Ok(Self {
            latency: humantime::parse_duration(latency)
                .map_err(|err| format!("latency `{latency}`: {err}"))?,
            calls_per_second: calls
                .parse()
                .map_err(|_| format!("`{calls}` is not a number of calls per second"))?,
            max_batch: batch
                .parse()
                .map_err(|_| format!("`{batch}` is not a batch size"))?,
            refuse_debug: match *debug {
                "debug" => false,
                "no-debug" => true,
                other => return Err(format!("`{other}` is not `debug` or `no-debug`")),
            },
        })
    }
}

/// Calls left this second.
#[derive(Debug)]
struct Budget {
    second: Instant,
    used: u32,
}

/// The middleware's layer.
#[derive(Clone, Debug)]
pub struct PublicNodeLayer {
    limits: PublicNode,
    budget: Arc<Mutex<Budget>>,
}

impl PublicNodeLayer {
    /// A layer answering as `limits` says.
    pub fn new(limits: PublicNode) -> Self {
        Self {
            limits,
            budget: Arc::new(Mutex::new(Budget {
                second: Instant::now(),
                used: 0,
            })),
        }
    }
}

impl<S> Layer<S> for PublicNodeLayer {
    type Service = PublicNodeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PublicNodeService {
            inner,
            limits: self.limits,
            budget: self.budget.clone(),
        }
    }
}

/// The middleware itself.
#[derive(Clone, Debug)]
pub struct PublicNodeService<S> {
    inner: S,
    limits: PublicNode,
    budget: Arc<Mutex<Budget>>,
}

impl<S> PublicNodeService<S> {
    /// Takes one call from this second's budget; `false` when it is spent.
    fn take(&self) -> bool {
        if self.limits.calls_per_second == 0 {
            return true;
        }
        let mut budget = self
            .budget
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if now.duration_since(budget.second) >= Duration::from_secs(1) {
            budget.second = now;
            budget.used = 0;
        }
        if budget.used >= self.limits.calls_per_second {
            return false;
        }
        budget.used += 1;
        true
    }

    /// The refusal `method` gets, if any.
    fn refusal(&self, method: &str) -> Option<ErrorObject<'static>> {
        if self.limits.refuse_debug && method.starts_with("debug_") {
            return Some(ErrorObject::owned(
                METHOD_NOT_FOUND,
                format!("the method {method} does not exist/is not available"),
                None::<()>,
            ));
        }
        (!self.take()).then(|| ErrorObject::owned(RATE_LIMITED, "rate limit exceeded", None::<()>))
    }
}

impl<S> RpcServiceT for PublicNodeService<S>
where
    S: RpcServiceT<
            MethodResponse = MethodResponse,
            BatchResponse = MethodResponse,
            NotificationResponse = MethodResponse,
        > + Send
        + Sync
        + Clone
        + 'static,
{
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(
        &self,
        request: Request<'a>,
    ) -> impl Future<Output = Self::MethodResponse> + Send + 'a {
        let service = self.clone();
        async move {
            tokio::time::sleep(service.limits.latency).await;
            match service.refusal(request.method_name()) {
                Some(error) => MethodResponse::error(request.id, error),
                None => service.inner.call(request).await,
            }
        }
    }

    fn batch<'a>(
        &self,
        mut batch: Batch<'a>,
    ) -> impl Future<Output = Self::BatchResponse> + Send + 'a {
        let service = self.clone();
        async move {
            tokio::time::sleep(service.limits.latency).await;
            let max = service.limits.max_batch;
            let len = batch.len();
            // Too large: every call answers -32600, without spending the budget.
            let too_large = (max > 0 && len > max).then(|| {
                ErrorObject::owned(
                    INVALID_REQUEST,
                    format!("batch too large: {len} calls, at most {max}"),
                    None::<()>,
                )
            });
            for entry in batch.iter_mut() {
                let refused = match entry {
                    Ok(BatchEntry::Call(request)) => too_large
                        .clone()
                        .or_else(|| service.refusal(request.method_name()))
                        .map(|error| (request.id.clone().into_owned(), error)),
                    _ => None,
                };
                if let Some((id, error)) = refused {
                    *entry = Err(BatchEntryErr::new(id, error));
                }
            }
            service.inner.batch(batch).await
        }
    }

    fn notification<'a>(
        &self,
        notification: Notification<'a>,
    ) -> impl Future<Output = Self::NotificationResponse> + Send + 'a {
        self.inner.notification(notification)
    }
}
