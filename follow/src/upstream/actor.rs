//! The upstream actor's loop, over any [`Transport`] and on any commonware runtime: time, the
//! reconnect jitter and the request tasks come from the runtime context it runs in.

use super::{
    Message, Notification, SourceId, Sourced, UpstreamError, UpstreamRequests,
    transport::{Connection, Incoming, Transport},
};
use crate::backoff::Backoff;
use cairn_primitives::Event;
use commonware_runtime::{Clock, Spawner};
use futures::StreamExt as _;
use std::{sync::Arc, time::Duration};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

/// How the actor reconnects and bounds its work.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub max_in_flight: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Reported when a message over it ends a connection.
    pub max_response_size: u32,
}

/// The upstream actor (see the module docs).
pub struct Actor<T: Transport> {
    transport: T,
    /// The upstream's name in notifications and logs (its URL).
    url: String,
    source: SourceId,
    limits: Limits,
    mailbox: mpsc::Receiver<Message>,
    notifications: mpsc::Sender<Sourced>,
    in_flight: Arc<Semaphore>,
}

/// Why a connection ended.
enum Ended {
    /// Reconnect after a delay.
    Lost(String),
    /// The mailbox or the consumer went away, or the upstream is gone for good: stop.
    Stop,
}

impl<T: Transport> Actor<T> {
    pub(super) fn new(
        transport: T,
        url: String,
        source: SourceId,
        limits: Limits,
        mailbox: mpsc::Receiver<Message>,
        notifications: mpsc::Sender<Sourced>,
    ) -> Self {
        Self {
            transport,
            url,
            source,
            limits,
            mailbox,
            notifications,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
        }
    }

    /// Runs in `context` until every mailbox handle and the notification receiver are
    /// dropped: connects, announces the upstream's latest finalization, forwards its events
    /// and serves requests, and reconnects with a capped, jittered backoff when the connection
    /// ends.
    pub async fn run<E: Clock + Spawner + rand::Rng>(mut self, mut context: E) {
        let mut backoff = Backoff::new(self.limits.backoff_min, self.limits.backoff_max);
        loop {
            let ended = match self.transport.connect().await {
                Ok(connection) => {
                    info!(url = %self.url, "upstream connected");
                    backoff.reset();
                    let connected = Notification::Connected {
                        url: self.url.clone(),
                    };
                    if !self.notify(connected).await
                        || !self.announce_tip(&connection.requests).await
                    {
                        return;
                    }
                    self.serve(&context, connection).await
                }
                Err(err) => Ended::Lost(err.to_string()),
            };
            let reason = match ended {
                Ended::Stop => return,
                Ended::Lost(reason) => reason,
            };
            warn!(url = %self.url, %reason, retry_in = ?backoff.delay(), "upstream connection lost");
            if !self.notify(Notification::Disconnected { reason }).await {
                return;
            }
            let delay = backoff.next_jittered(&mut context);
            if !self.wait_for_retry(&context, delay).await {
                return;
            }
        }
    }

    /// Hands a notification on; false when the consumer has gone.
    async fn notify(&self, notification: Notification) -> bool {
        self.notifications
            .send((self.source, notification))
            .await
            .is_ok()
    }

    /// Answers requests with "not connected" until `delay` has passed; false when told to stop.
    async fn wait_for_retry(&mut self, context: &impl Clock, delay: Duration) -> bool {
        let sleep = context.sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                () = &mut sleep => return true,
                message = self.mailbox.recv() => match message {
                    Some(message) => message.reject(UpstreamError::NotConnected),
                    None => return false,
                },
            }
        }
    }

    /// Forwards the upstream's latest finalization as an event, so a follower that connects
    /// while the upstream is idle still learns how far the chain goes. False when told to stop.
    async fn announce_tip(&self, requests: &T::Requests) -> bool {
        match self.transport.latest(requests).await {
            Ok(Some(latest)) => {
                let event = Event::Finalized {
                    block: latest,
                    seen: cairn_feed::unix_millis(),
                };
                self.notify(Notification::Event(Box::new(event))).await
            }
            Ok(None) => true,
            Err(err) => {
                debug!(%err, "could not read the upstream's latest finalization");
                true
            }
        }
    }

    /// Forwards events and serves requests over one connection until it ends.
    async fn serve(
        &mut self,
        context: &impl Spawner,
        connection: Connection<T::Requests>,
    ) -> Ended {
        let Connection {
            requests,
            mut incoming,
        } = connection;
        // Events and requests take turns at being looked at first: fair when both keep coming,
        // and the same order on every replay of a deterministic run.
        let mut requests_first = false;
        loop {
            requests_first = !requests_first;
            let step = if requests_first {
                tokio::select! {
                    biased;
                    message = self.mailbox.recv() => Step::Request(message),
                    item = incoming.next() => Step::Incoming(item),
                }
            } else {
                tokio::select! {
                    biased;
                    item = incoming.next() => Step::Incoming(item),
                    message = self.mailbox.recv() => Step::Request(message),
                }
            };
            match step {
                Step::Incoming(Some(Incoming::Event(event))) => {
                    if !self.notify(Notification::Event(event)).await {
                        return Ended::Stop;
                    }
                }
                Step::Incoming(Some(Incoming::Unparsable(err))) => {
                    warn!(url = %self.url, %err, "upstream sent an event that does not parse; skipped");
                    let what = format!("an event that does not parse: {err}");
                    if !self.notify(Notification::Invalid { what }).await {
                        return Ended::Stop;
                    }
                }
                Step::Incoming(Some(Incoming::Lost { reason, oversized })) => {
                    return self.lost(reason, oversized).await;
                }
                Step::Request(Some(message)) => self.dispatch(context, &requests, message),
                Step::Incoming(None) | Step::Request(None) => return Ended::Stop,
            }
        }
    }

    /// Ends a connection that dropped. One that dropped on a message over the size limit is
    /// reported as invalid data first.
    async fn lost(&self, reason: String, oversized: bool) -> Ended {
        if oversized {
            let limit = self.limits.max_response_size;
            warn!(url = %self.url, limit, "upstream sent a message over the size limit");
            let what = format!("a message over the {limit}-byte limit");
            if !self.notify(Notification::Invalid { what }).await {
                return Ended::Stop;
            }
        }
        Ended::Lost(reason)
    }

    /// Runs one request in its own task, bounded by the in-flight limit, and drops it as soon
    /// as its requester stops waiting.
    fn dispatch(&self, context: &impl Spawner, requests: &T::Requests, message: Message) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            message.reject(UpstreamError::Busy);
            return;
        };
        let requests = requests.clone();
        context.child("request").spawn(move |_| async move {
            let _permit = permit;
            answer(requests, message).await;
        });
    }
}

/// What a connection's loop takes next.
enum Step {
    /// What the upstream sent (`None`: the connection ended).
    Incoming(Option<Incoming>),
    /// A request to send it (`None`: every mailbox is gone).
    Request(Option<Message>),
}

/// Answers `message` through `requests`, unless its requester stops waiting first.
async fn answer(requests: impl UpstreamRequests, message: Message) {
    match message {
        Message::GetFinalization {
            height,
            mut response,
        } => {
            tokio::select! {
                biased;
                answer = requests.get_finalization(height) => { let _ = response.send(answer); }
                () = response.closed() => debug!(height, "finalization request cancelled by its requester"),
            }
        }
        Message::GetBlock {
            digest,
            mut response,
        } => {
            tokio::select! {
                biased;
                answer = requests.get_block(digest) => { let _ = response.send(answer); }
                () = response.closed() => debug!(%digest, "block request cancelled by its requester"),
            }
        }
        Message::GetLatest { mut response } => {
            tokio::select! {
                biased;
                answer = requests.get_latest() => { let _ = response.send(answer); }
                () = response.closed() => debug!("latest request cancelled by its requester"),
            }
        }
        Message::GetBlocks {
            first,
            last,
            mut response,
        } => {
            tokio::select! {
                biased;
                answer = requests.get_blocks(first, last) => { let _ = response.send(answer); }
                () = response.closed() => debug!(first, last, "range request cancelled by its requester"),
            }
        }
        Message::GetCertificates {
            heights,
            mut response,
        } => {
            let count = heights.len();
            tokio::select! {
                biased;
                answer = requests.get_certificates(heights) => { let _ = response.send(answer); }
                () = response.closed() => debug!(count, "certificate request cancelled by its requester"),
            }
        }
    }
}
