//! The upstream actor against a real RPC server on loopback: it forwards events, serves
//! finalization and block requests (hash-checked), reconnects and resubscribes when the server
//! goes away and comes back, and refuses URLs it cannot follow.

use crate::upstream::{self, Config, Notification, Sourced, UpstreamError};
use cairn_feed::{ChainReader, FeedState, ReadError, RpcConfig};
use cairn_primitives::{Block, CertifiedBlock, Digest, Event};
use cairn_testkit::{MemoryChain, TestCommittee, test_block};
use commonware_runtime::{Runner as _, Spawner as _, Supervisor as _};
use std::time::Duration;
use tokio::sync::mpsc;

fn certified(committee: &TestCommittee, height: u64) -> CertifiedBlock {
    committee.certify(test_block(height, 0, height, Vec::new()), 0, height)
}

async fn next_notification(notifications: &mut mpsc::Receiver<Sourced>) -> Notification {
    let (source, notification) =
        tokio::time::timeout(Duration::from_secs(20), notifications.recv())
            .await
            .expect("a notification arrives in time")
            .expect("the actor is running");
    assert_eq!(source, 0, "notifications carry their source");
    notification
}

/// The block of a `finalized` event notification.
fn finalized(notification: Notification) -> CertifiedBlock {
    match notification {
        Notification::Event(event) => match *event {
            Event::Finalized { block, .. } => block,
            other => panic!("expected a finalized event, got {other:?}"),
        },
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Serves `chain` and `feed` on a free loopback port.
async fn serve<C: ChainReader>(chain: C, feed: FeedState) -> cairn_feed::RunningServer {
    cairn_feed::start("127.0.0.1:0", chain, feed, RpcConfig::default())
        .await
        .expect("server starts")
}

fn fast_config(url: String) -> Config {
    Config {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..Config::new(url)
    }
}

#[test]
fn forwards_events_serves_requests_and_reconnects() {
    commonware_runtime::tokio::Runner::default().start(|context| async move {
        let committee = TestCommittee::new(b"TEMPO", 7, 4);
        let chain = MemoryChain::default();
        for height in 1..=3 {
            chain.insert(certified(&committee, height));
        }
        let feed = FeedState::default();
        let server = serve(chain.clone(), feed.clone()).await;
        let addr = server.local_addr;

        let (sender, mut notifications) = mpsc::channel(64);
        let (actor, mailbox) =
            upstream::init(fast_config(addr.to_string()), sender).expect("valid url");
        let handle = context
            .child("upstream")
            .spawn(|context| actor.run(context));
        assert_eq!(
            next_notification(&mut notifications).await,
            Notification::Connected {
                url: format!("ws://{addr}")
            }
        );

        // On connecting, the upstream's latest finalization is announced as an event.
        assert_eq!(
            finalized(next_notification(&mut notifications).await),
            chain.certified_at(3).await.expect("reads").expect("stored")
        );

        // Events are forwarded as they are published.
        let fourth = certified(&committee, 4);
        chain.insert(fourth.clone());
        feed.publish_finalized(fourth.clone());
        assert_eq!(
            finalized(next_notification(&mut notifications).await),
            fourth
        );

        // Requests: present, missing, and blocks by hash with their bodies.
        let second = mailbox
            .get_finalization(2)
            .await
            .expect("answers")
            .expect("height 2 is served");
        assert_eq!(
            second,
            chain.certified_at(2).await.expect("reads").expect("stored")
        );
        assert_eq!(mailbox.get_finalization(99).await.expect("answers"), None);
        let block = second.block.expect("block");
        assert_eq!(
            mailbox.get_block(block.hash()).await.expect("answers"),
            Some(block)
        );
        assert_eq!(
            mailbox
                .get_block(Digest::from([9u8; 32]))
                .await
                .expect("answers"),
            None
        );

        // The server goes away: the actor says so, refuses requests meanwhile, and comes back.
        server.handle.stop().expect("stops");
        server.handle.stopped().await;
        let Notification::Disconnected { .. } = next_notification(&mut notifications).await else {
            panic!("expected a disconnection");
        };
        assert_eq!(
            mailbox.get_finalization(1).await,
            Err(UpstreamError::NotConnected)
        );
        let server = cairn_feed::start(
            &addr.to_string(),
            chain.clone(),
            feed.clone(),
            RpcConfig::default(),
        )
        .await
        .expect("server restarts on the same port");
        loop {
            match next_notification(&mut notifications).await {
                Notification::Connected { .. } => break,
                Notification::Disconnected { .. } => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        // The tip is announced again after reconnecting.
        assert_eq!(
            finalized(next_notification(&mut notifications).await),
            fourth
        );
        let fifth = certified(&committee, 5);
        chain.insert(fifth.clone());
        feed.publish_finalized(fifth.clone());
        assert_eq!(
            finalized(next_notification(&mut notifications).await),
            fifth
        );

        // Dropping every handle and the receiver stops the actor.
        drop(mailbox);
        drop(notifications);
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("the actor stops")
            .expect("the actor does not panic");
        server.handle.stop().expect("stops");
    });
}

#[test]
fn an_event_over_the_size_limit_is_reported_as_invalid_data_and_the_connection_reopened() {
    commonware_runtime::tokio::Runner::default().start(|context| async move {
        let committee = TestCommittee::new(b"TEMPO", 8, 4);
        let chain = MemoryChain::default();
        let feed = FeedState::default();
        let server = serve(chain.clone(), feed.clone()).await;
        let limit = 1024;
        let mut config = fast_config(server.local_addr.to_string());
        config.client.max_response_size = limit;
        let (sender, mut notifications) = mpsc::channel(64);
        let (actor, _mailbox) = upstream::init(config, sender).expect("valid url");
        let handle = context
            .child("upstream")
            .spawn(|context| actor.run(context));
        let Notification::Connected { .. } = next_notification(&mut notifications).await else {
            panic!("expected a connection");
        };

        let big = certified(&committee, 1);
        let event = serde_json::to_vec(&Event::Finalized {
            block: big.clone(),
            seen: 0,
        })
        .expect("serializes");
        assert!(
            event.len() > limit as usize,
            "the event is {} bytes",
            event.len()
        );
        feed.publish_finalized(big);
        assert_eq!(
            next_notification(&mut notifications).await,
            Notification::Invalid {
                what: format!("a message over the {limit}-byte limit")
            }
        );
        let Notification::Disconnected { reason } = next_notification(&mut notifications).await
        else {
            panic!("expected a disconnection");
        };
        assert!(reason.contains("too large"), "{reason}");
        // The connection is reopened: a dropped connection is not a reason to stop following.
        let Notification::Connected { .. } = next_notification(&mut notifications).await else {
            panic!("expected a reconnection");
        };
        handle.abort();
        server.handle.stop().expect("stops");
    });
}

/// A chain whose blocks by hash are the wrong blocks.
#[derive(Clone)]
struct LyingChain(MemoryChain, Block);

impl ChainReader for LyingChain {
    fn finalized_height(&self) -> Option<u64> {
        self.0.finalized_height()
    }

    async fn certified_at(&self, height: u64) -> Result<Option<CertifiedBlock>, ReadError> {
        self.0.certified_at(height).await
    }

    async fn block_at(&self, height: u64) -> Result<Option<Block>, ReadError> {
        self.0.block_at(height).await
    }

    async fn block_by_hash(&self, _: Digest) -> Result<Option<Block>, ReadError> {
        Ok(Some(self.1.clone()))
    }

    async fn transaction_by_hash(
        &self,
        hash: alloy_primitives::B256,
    ) -> Result<Option<(Block, usize)>, ReadError> {
        self.0.transaction_by_hash(hash).await
    }
}

#[test]
fn a_block_with_the_wrong_hash_is_refused() {
    commonware_runtime::tokio::Runner::default().start(|context| async move {
        let committee = TestCommittee::new(b"TEMPO", 8, 4);
        let chain = MemoryChain::default();
        chain.insert(certified(&committee, 1));
        let impostor = test_block(2, 0, 2, Vec::new());
        let server = serve(LyingChain(chain, impostor.clone()), FeedState::default()).await;
        let (sender, mut notifications) = mpsc::channel(8);
        let (actor, mailbox) =
            upstream::init(fast_config(server.local_addr.to_string()), sender).expect("valid url");
        let handle = context
            .child("upstream")
            .spawn(|context| actor.run(context));
        let Notification::Connected { .. } = next_notification(&mut notifications).await else {
            panic!("expected a connection");
        };
        let requested = Digest::from([1u8; 32]);
        assert_eq!(
            mailbox.get_block(requested).await,
            Err(UpstreamError::HashMismatch {
                requested,
                got: impostor.hash()
            })
        );
        handle.abort();
        server.handle.stop().expect("stops");
    });
}

#[test]
fn urls_that_cannot_be_followed_are_refused() {
    for url in ["http://127.0.0.1:1", "ftp://host:1", "ws://", ""] {
        let (sender, _receiver) = mpsc::channel(1);
        assert!(
            matches!(
                upstream::init(Config::new(url), sender),
                Err(UpstreamError::InvalidUrl(_))
            ),
            "{url}"
        );
    }
}

#[test]
fn the_in_process_upstream_forwards_events_and_answers_from_the_chain() {
    use crate::upstream::in_process;
    use commonware_runtime::deterministic;

    deterministic::Runner::seeded(3).start(|context| async move {
        let committee = TestCommittee::new(b"TEMPO", 9, 4);
        let chain = MemoryChain::default();
        let first = certified(&committee, 1);
        chain.insert(first.clone());
        let feed = FeedState::new(4);
        let (sender, mut notifications) = mpsc::channel(2);
        let (actor, upstream) = in_process::init("local", 2, feed.clone(), chain.clone(), sender);
        let consumer = async move {
            assert_eq!(
                notifications.recv().await,
                Some((
                    2,
                    Notification::Connected {
                        url: "local".into()
                    }
                ))
            );
            let second = certified(&committee, 2);
            chain.insert(second.clone());
            feed.publish_finalized(second.clone());
            assert_eq!(
                finalized(notifications.recv().await.expect("running").1),
                second
            );

            assert_eq!(upstream.get_finalization(1).await, Ok(Some(first.clone())));
            assert_eq!(upstream.get_finalization(5).await, Ok(None));
            let block = first.block.clone().expect("block");
            assert_eq!(upstream.get_block(block.hash()).await, Ok(Some(block)));
            assert_eq!(upstream.get_block(Digest::from([3u8; 32])).await, Ok(None));

            // Falling a whole feed buffer behind reads as a disconnection and a resubscription.
            for height in 3..13 {
                feed.publish_finalized(certified(&committee, height));
            }
            let Some((2, Notification::Disconnected { reason })) = notifications.recv().await
            else {
                panic!("expected a disconnection after lagging");
            };
            assert!(reason.contains("behind"), "{reason}");
            assert_eq!(
                notifications.recv().await,
                Some((
                    2,
                    Notification::Connected {
                        url: "local".into()
                    }
                ))
            );
            // Dropping the receiver stops the actor at its next event.
            drop(notifications);
            feed.publish_finalized(certified(&committee, 13));
            (upstream, first)
        };
        let ((), (upstream, first)) =
            futures::join!(actor.run(context.child("upstream")), consumer);
        // Requests go through the actor too: once it has stopped, none is answered, though
        // the chain still holds the block.
        assert_eq!(
            upstream
                .get_finalization(first.height.expect("height"))
                .await,
            Err(UpstreamError::Stopped)
        );
    });
}

/// How a hand-made server answers block requests.
#[derive(Clone, Copy, Debug)]
enum BlockServer {
    /// Like a public Tempo RPC node: `eth_getBlockByHash` with full transactions, no `debug_*`.
    EthOnly,
    /// Only `debug_getRawBlock` (no `eth_getBlockByHash`).
    RawOnly,
    /// `eth_getBlockByHash` ignores `full` and lists hashes; `debug_getRawBlock` works.
    HashesThenRaw,
    /// `eth_getBlockByHash` answers with one transaction dropped from the body.
    EthTampered,
}

async fn block_server(
    mode: BlockServer,
    block: Block,
) -> (jsonrpsee::server::ServerHandle, std::net::SocketAddr) {
    use jsonrpsee::{RpcModule, server::Server};
    let server = Server::builder()
        .build("127.0.0.1:0")
        .await
        .expect("server binds");
    let addr = server.local_addr().expect("bound");
    let mut module = RpcModule::new(block);
    if !matches!(mode, BlockServer::RawOnly) {
        module
            .register_method("eth_getBlockByHash", move |_, block, _| {
                let full = !matches!(mode, BlockServer::HashesThenRaw);
                let mut rpc =
                    serde_json::to_value(cairn_feed::rpc_block(block, full)).expect("serializes");
                if matches!(mode, BlockServer::EthTampered) {
                    rpc["transactions"]
                        .as_array_mut()
                        .expect("a list of transactions")
                        .pop();
                }
                rpc
            })
            .expect("registers");
    }
    if !matches!(mode, BlockServer::EthOnly | BlockServer::EthTampered) {
        module
            .register_method("debug_getRawBlock", |_, block, _| {
                serde_json::to_value(alloy_primitives::Bytes::from(
                    block.raw_rlp().expect("body known"),
                ))
                .expect("serializes")
            })
            .expect("registers");
    }
    (server.start(module), addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_come_from_eth_get_block_by_hash_or_the_raw_form_and_are_checked() {
    use crate::upstream::{ClientConfig, UpstreamClient};
    let block = test_block(5, 0, 5, Vec::new());
    for mode in [
        BlockServer::EthOnly,
        BlockServer::RawOnly,
        BlockServer::HashesThenRaw,
        BlockServer::EthTampered,
    ] {
        let (handle, addr) = block_server(mode, block.clone()).await;
        let client = UpstreamClient::connect(&format!("ws://{addr}"), &ClientConfig::default())
            .await
            .expect("connects");
        let fetched = client.get_block(block.hash()).await;
        match mode {
            BlockServer::EthTampered => assert!(
                matches!(&fetched, Err(UpstreamError::MalformedBlock(reason)) if reason.contains("transactions root mismatch")),
                "{mode:?}: {fetched:?}"
            ),
            _ => assert_eq!(
                fetched.as_ref().ok().and_then(Option::as_ref),
                Some(&block),
                "{mode:?}: {fetched:?}"
            ),
        }
        handle.stop().expect("stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_size_limit_is_an_oversized_error_over_http_and_websocket() {
    use crate::upstream::{ClientConfig, UpstreamClient};
    let committee = TestCommittee::new(b"TEMPO", 9, 4);
    let chain = MemoryChain::default();
    chain.insert(certified(&committee, 1));
    let server = serve(chain.clone(), FeedState::default()).await;
    let small = ClientConfig {
        max_response_size: 1024,
        ..ClientConfig::default()
    };
    for scheme in ["http", "ws"] {
        let url = format!("{scheme}://{}", server.local_addr);
        let client = UpstreamClient::connect(&url, &small)
            .await
            .expect("connects");
        assert_eq!(
            client.get_finalization(1).await,
            Err(UpstreamError::Oversized("consensus_getFinalization".into())),
            "{scheme}"
        );
        // The same answer within the default limit is served.
        let client = UpstreamClient::connect(&url, &ClientConfig::default())
            .await
            .expect("connects");
        assert!(
            matches!(client.get_finalization(1).await, Ok(Some(_))),
            "{scheme}"
        );
    }
    server.handle.stop().expect("stops");
}
