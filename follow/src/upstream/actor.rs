//! The upstream actor's loop.

use super::{
    Config, Message, Notification, Sourced, UpstreamClient, UpstreamError, client::Disconnect,
};
use crate::backoff::Backoff;
use cairn_primitives::Event;
use std::{sync::Arc, time::Duration};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

/// The upstream actor (see the module docs).
pub struct Actor {
    config: Config,
    mailbox: mpsc::Receiver<Message>,
    notifications: mpsc::Sender<Sourced>,
    in_flight: Arc<Semaphore>,
}

/// Why a connection ended.
enum Ended {
    /// Reconnect after a delay.
    Lost(String),
    /// The mailbox or the consumer went away: stop.
    Stop,
}

impl Actor {
    pub(super) fn new(
        config: Config,
        mailbox: mpsc::Receiver<Message>,
        notifications: mpsc::Sender<Sourced>,
    ) -> Self {
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight.get()));
        Self {
            config,
            mailbox,
            notifications,
            in_flight,
        }
    }

    /// Runs until every mailbox handle and the notification receiver are dropped.
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max);
        loop {
            let ended = match UpstreamClient::connect_counting(
                &self.config.url,
                &self.config.client,
                self.config.counts.clone(),
            )
            .await
            {
                Ok(client) => {
                    let client = Arc::new(client);
                    match client.subscribe().await {
                        Ok(subscription) => {
                            info!(url = %self.config.url, "upstream connected");
                            backoff.reset();
                            if !self
                                .notify(Notification::Connected {
                                    url: self.config.url.clone(),
                                })
                                .await
                            {
                                return;
                            }
                            if !self.announce_tip(&client).await {
                                return;
                            }
                            self.serve(client, subscription).await
                        }
                        Err(err) => Ended::Lost(err.to_string()),
                    }
                }
                Err(err) => Ended::Lost(err.to_string()),
            };
            let reason = match ended {
                Ended::Stop => return,
                Ended::Lost(reason) => reason,
            };
            warn!(url = %self.config.url, %reason, retry_in = ?backoff.delay(), "upstream connection lost");
            if !self
                .notify(Notification::Disconnected {
                    reason: reason.clone(),
                })
                .await
            {
                return;
            }
            let delay = backoff.next_jittered(&mut rand::rng());
            if !self.wait_for_retry(delay).await {
                return;
            }
        }
    }

    /// Hands a notification on; false when the consumer has gone.
    async fn notify(&self, notification: Notification) -> bool {
        self.notifications
            .send((self.config.source, notification))
            .await
            .is_ok()
    }

    /// Answers requests with "not connected" until `delay` has passed; false when told to stop.
    async fn wait_for_retry(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
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
    async fn announce_tip(&self, client: &UpstreamClient) -> bool {
        match client.get_latest().await {
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
        client: Arc<UpstreamClient>,
        mut subscription: jsonrpsee::core::client::Subscription<cairn_primitives::Event>,
    ) -> Ended {
        loop {
            tokio::select! {
                event = subscription.next() => match event {
                    Some(Ok(event)) => {
                        if !self.notify(Notification::Event(Box::new(event))).await {
                            return Ended::Stop;
                        }
                    }
                    Some(Err(err)) => {
                        warn!(url = %self.config.url, %err, "upstream sent an event that does not parse; skipped");
                        let what = format!("an event that does not parse: {err}");
                        if !self.notify(Notification::Invalid { what }).await {
                            return Ended::Stop;
                        }
                    }
                    None if !client.is_connected() => {
                        return self.lost(client.disconnected().await).await;
                    }
                    None => {
                        let reason = subscription
                            .close_reason()
                            .map_or_else(|| "subscription closed".to_string(), |r| format!("subscription closed: {r:?}"));
                        return Ended::Lost(reason);
                    }
                },
                message = self.mailbox.recv() => match message {
                    Some(message) => self.dispatch(&client, message),
                    None => return Ended::Stop,
                },
                disconnect = client.disconnected() => return self.lost(disconnect).await,
            }
        }
    }

    /// Ends a connection that dropped. One that dropped on a message over the size limit is
    /// reported as invalid data first.
    async fn lost(&self, disconnect: Disconnect) -> Ended {
        if disconnect.oversized {
            let limit = self.config.client.max_response_size;
            warn!(url = %self.config.url, limit, "upstream sent a message over the size limit");
            let what = format!("a message over the {limit}-byte limit");
            if !self.notify(Notification::Invalid { what }).await {
                return Ended::Stop;
            }
        }
        Ended::Lost(disconnect.reason)
    }

    /// Runs one request in its own task, bounded by the in-flight limit, and drops it as soon
    /// as its requester stops waiting.
    fn dispatch(&self, client: &Arc<UpstreamClient>, message: Message) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            message.reject(UpstreamError::Busy);
            return;
        };
        let client = client.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match message {
                Message::GetFinalization {
                    height,
                    mut response,
                } => {
                    tokio::select! {
                        answer = client.get_finalization(height) => { let _ = response.send(answer); }
                        () = response.closed() => debug!(height, "finalization request cancelled by its requester"),
                    }
                }
                Message::GetBlock {
                    digest,
                    mut response,
                } => {
                    tokio::select! {
                        answer = client.get_block(digest) => { let _ = response.send(answer); }
                        () = response.closed() => debug!(%digest, "block request cancelled by its requester"),
                    }
                }
                Message::GetLatest { mut response } => {
                    tokio::select! {
                        answer = client.get_latest() => { let _ = response.send(answer); }
                        () = response.closed() => debug!("latest request cancelled by its requester"),
                    }
                }
                Message::GetBlocks {
                    first,
                    last,
                    mut response,
                } => {
                    tokio::select! {
                        answer = client.get_blocks(first, last) => { let _ = response.send(answer); }
                        () = response.closed() => debug!(first, last, "range request cancelled by its requester"),
                    }
                }
                Message::GetCertificates {
                    heights,
                    mut response,
                } => {
                    let count = heights.len();
                    tokio::select! {
                        answer = client.get_certificates(&heights) => { let _ = response.send(answer); }
                        () = response.closed() => debug!(count, "certificate request cancelled by its requester"),
                    }
                }
            }
        });
    }
}
