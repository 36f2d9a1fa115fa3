//! The feed's RPC server under a subscriber that stops reading: it is dropped once its bounded
//! buffer is full, with a notification that closes its subscription, publishing never waits
//! for it, and the server keeps serving others. A block
//! held without its own certificate is answered with a reason that says so.

use alloy_primitives::B256;
use cairn_feed::{ChainReader, FeedState, ReadError, RpcConfig};
use cairn_primitives::{Block, CertifiedBlock, Digest, Event, Query};
use cairn_tests::{EmptyChain, MemoryChain, TestCommittee};
use jsonrpsee::{core::client::ClientT, rpc_params};
use std::time::{Duration, Instant};

/// A certified block with a large body, so that socket buffers fill after a few hundred events.
fn large_certified(committee: &TestCommittee, height: u64) -> CertifiedBlock {
    let block = cairn_tests::test_block(height, 0, height, vec![0xab; 48 * 1024]);
    committee.certify(block, 0, height)
}

async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_dropped_without_blocking_publishers() {
    let feed = FeedState::new(256);
    let config = RpcConfig {
        message_buffer: 16,
        ..RpcConfig::default()
    };
    let server = cairn_feed::start("127.0.0.1:0", EmptyChain, feed.clone(), config)
        .await
        .expect("server starts");
    let addr = server.local_addr;

    // A raw WebSocket client that subscribes and then never reads again.
    let (_sender, mut receiver) = cairn_tests::process::silent_subscriber(addr, 1).await;
    wait_until(
        "the stalled client subscribed",
        Duration::from_secs(10),
        || feed.subscribers() == 1,
    )
    .await;

    let committee = TestCommittee::new(b"TEMPO", 3, 4);
    let event = large_certified(&committee, 1);
    let mut slowest_publish = Duration::ZERO;
    let mut published = 0u64;
    let start = Instant::now();
    while feed.subscribers() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the stalled subscriber was never dropped"
        );
        let before = Instant::now();
        feed.publish_finalized(event.clone());
        slowest_publish = slowest_publish.max(before.elapsed());
        published += 1;
        if published.is_multiple_of(16) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(
        published > 16,
        "the buffers absorbed some events before the drop"
    );
    assert!(
        slowest_publish < Duration::from_millis(50),
        "publishing waited {slowest_publish:?} on a subscriber"
    );

    // Reading again, the client finds what was queued, then a notification that closes its
    // subscription with the reason, so it knows to subscribe again rather than wait forever.
    let closing = tokio::time::timeout(Duration::from_secs(30), async {
        let mut frame = Vec::new();
        loop {
            frame.clear();
            receiver
                .receive_data(&mut frame)
                .await
                .expect("the connection stays open");
            let message: serde_json::Value = serde_json::from_slice(&frame).expect("JSON");
            if let Some(error) = message["params"].get("error") {
                break error.to_string();
            }
            if message["id"] == 1 {
                continue; // The answer to the subscription request.
            }
            assert!(
                message["params"]["result"].is_object(),
                "an event: {message}"
            );
        }
    })
    .await
    .expect("the closing notification arrives");
    assert!(
        closing.contains("subscribe again"),
        "the subscription closes with the reason: {closing}"
    );

    // The server still serves a well-behaved subscriber.
    let (_client, mut subscription) = cairn_tests::subscribe(addr, 64).await;
    wait_until("the new client subscribed", Duration::from_secs(10), || {
        feed.subscribers() == 1
    })
    .await;
    let next = large_certified(&committee, 2);
    feed.publish_finalized(next.clone());
    let received = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("parses");
    let Event::Finalized { block, .. } = received else {
        panic!("expected a finalized event, got {received:?}");
    };
    assert_eq!(block, next);
    server.handle.stop().expect("stops");
}

/// A chain whose block at `.1` was repaired through its successor's parent hash: stored, but
/// without a certificate of its own.
#[derive(Clone)]
struct RepairedAt(MemoryChain, u64);

impl ChainReader for RepairedAt {
    fn finalized_height(&self) -> Option<u64> {
        self.0.finalized_height()
    }

    async fn certified_at(&self, height: u64) -> Result<Option<CertifiedBlock>, ReadError> {
        if height == self.1 {
            return Ok(None);
        }
        self.0.certified_at(height).await
    }

    async fn block_at(&self, height: u64) -> Result<Option<Block>, ReadError> {
        self.0.block_at(height).await
    }

    async fn block_by_hash(&self, hash: Digest) -> Result<Option<Block>, ReadError> {
        self.0.block_by_hash(hash).await
    }

    async fn transaction_by_hash(&self, hash: B256) -> Result<Option<(Block, usize)>, ReadError> {
        self.0.transaction_by_hash(hash).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_held_without_its_certificate_is_served_and_its_certificate_is_refused_with_the_reason()
 {
    let committee = TestCommittee::new(b"TEMPO", 7, 4);
    let chain = MemoryChain::default();
    for height in 1..=3 {
        let block = cairn_tests::test_block(height, 0, height, Vec::new());
        chain.insert(committee.certify(block, 0, height));
    }
    let (_server, client) = serve(RepairedAt(chain.clone(), 2)).await;

    let certificate = |height: u64| {
        let client = client.clone();
        async move {
            client
                .request::<CertifiedBlock, _>(
                    "consensus_getFinalization",
                    rpc_params![Query::Height(height)],
                )
                .await
        }
    };
    assert_eq!(
        certificate(3).await.expect("certified"),
        chain.certified_at(3).await.expect("reads").expect("stored")
    );
    let err = certificate(2)
        .await
        .expect_err("no certificate at 2")
        .to_string();
    assert!(
        err.contains("503")
            && err.contains("block 2 is stored, authenticated through the parent hash"),
        "{err}"
    );
    let err = certificate(4).await.expect_err("nothing at 4").to_string();
    assert!(err.contains("above the finalized tip 3"), "{err}");

    // The block itself is served.
    let block: serde_json::Value = client
        .request(
            "eth_getBlockByNumber",
            rpc_params![alloy_primitives::U64::from(2), false],
        )
        .await
        .expect("block 2");
    assert_eq!(block["number"], "0x2");
}

/// The follower's feed publishes a verified block at once when it is the child of the latest
/// published one, and otherwise leaves it to the in-order path: subscribers see every height
/// once, in order, whichever path published it.
#[test]
fn feed_publishes_each_height_once_in_order() {
    let committee = TestCommittee::new(b"TEMPO", 7, 4);
    let chain = cairn_tests::linked_chain(6);
    let certified: Vec<CertifiedBlock> = chain
        .iter()
        .map(|block| committee.certify(block.clone(), 0, block.height()))
        .collect();
    let feed = FeedState::new(64);
    let mut events = feed.subscribe();

    // Nothing published yet: there is no latest block to extend.
    assert!(!feed.publish_if_next(certified[1].clone()));
    feed.publish_in_order(0, || certified[0].clone());
    assert!(feed.publish_if_next(certified[1].clone()));
    // Height 1 comes through the in-order path after the fast one published it: skipped,
    // without building its event.
    feed.publish_in_order(1, || {
        panic!("height 1 was published; its event is not built again")
    });
    // A gap (2 is missing) is not published early.
    assert!(!feed.publish_if_next(certified[3].clone()));
    // A block of the next height that is not the child of the latest is not published.
    let stranger = cairn_tests::test_block(2, 0, 99, Vec::new());
    assert!(!feed.publish_if_next(committee.certify(stranger, 0, 2)));
    feed.publish_in_order(2, || certified[2].clone());
    feed.publish_in_order(3, || certified[3].clone());
    assert!(feed.publish_if_next(certified[4].clone()));
    feed.publish_in_order(4, || certified[4].clone());
    feed.publish_in_order(5, || certified[5].clone());
    // An older block never goes out again.
    feed.publish_in_order(3, || {
        panic!("height 3 was published; its event is not built again")
    });

    let mut heights = Vec::new();
    while let Ok(event) = events.try_recv() {
        match &event.event {
            Event::Finalized { block, .. } => heights.push(block.height),
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(heights, (0..=5).map(Some).collect::<Vec<_>>());
    assert_eq!(
        feed.latest().and_then(|latest| latest.height),
        Some(5),
        "the latest block is the highest published"
    );
}

/// The error code of a JSON-RPC call that failed, and its message and data.
fn error_of<T: std::fmt::Debug>(result: Result<T, jsonrpsee::core::ClientError>) -> (i32, String) {
    match result {
        Err(jsonrpsee::core::ClientError::Call(error)) => (
            error.code(),
            format!(
                "{} {}",
                error.message(),
                error.data().map(|data| data.get()).unwrap_or_default()
            ),
        ),
        other => panic!("expected a call error, got {other:?}"),
    }
}

/// An RPC server over `chain` with default settings, and an HTTP client of it (the server stops
/// when its handle is dropped).
async fn serve(
    chain: impl ChainReader,
) -> (
    cairn_feed::RunningServer,
    jsonrpsee::http_client::HttpClient,
) {
    let server = cairn_feed::start(
        "127.0.0.1:0",
        chain,
        FeedState::default(),
        RpcConfig::default(),
    )
    .await
    .expect("server starts");
    let client = jsonrpsee::http_client::HttpClientBuilder::default()
        .build(format!("http://{}", server.local_addr))
        .expect("client");
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_node_answers_not_ready_and_syncing_never_height_zero() {
    use alloy_rpc_types_eth::SyncStatus;
    let feed = FeedState::default();
    let chain = cairn_feed::LateChain::<MemoryChain>::default();
    let server = cairn_feed::start(
        "127.0.0.1:0",
        chain.clone(),
        feed.clone(),
        RpcConfig::default(),
    )
    .await
    .expect("server starts");
    let client = jsonrpsee::http_client::HttpClientBuilder::default()
        .build(format!("http://{}", server.local_addr))
        .expect("client");
    // The stores hold 40 blocks; the upstreams announce 500.
    feed.set_sync_target(40, 500);

    let hash = B256::repeat_byte(7);
    let not_ready = [
        error_of(
            client
                .request::<alloy_primitives::U64, _>("eth_blockNumber", rpc_params![])
                .await,
        ),
        error_of(
            client
                .request::<serde_json::Value, _>(
                    "eth_getBlockByNumber",
                    rpc_params!["latest", false],
                )
                .await,
        ),
        error_of(
            client
                .request::<serde_json::Value, _>("eth_getBlockByNumber", rpc_params!["0x5", false])
                .await,
        ),
        error_of(
            client
                .request::<serde_json::Value, _>("eth_getBlockByHash", rpc_params![hash, false])
                .await,
        ),
        error_of(
            client
                .request::<serde_json::Value, _>("eth_getTransactionByHash", rpc_params![hash])
                .await,
        ),
        error_of(
            client
                .request::<serde_json::Value, _>("consensus_getLatest", rpc_params![])
                .await,
        ),
        error_of(
            client
                .request::<serde_json::Value, _>(
                    "consensus_getFinalization",
                    rpc_params![Query::Latest],
                )
                .await,
        ),
        error_of(
            client
                .request::<serde_json::Value, _>("debug_getRawBlock", rpc_params!["0x0"])
                .await,
        ),
    ];
    for (code, message) in not_ready {
        assert_eq!(code, cairn_feed::rpc::NOT_READY_CODE, "{message}");
        assert!(message.contains("starting"), "{message}");
    }
    let syncing: SyncStatus = client
        .request("eth_syncing", rpc_params![])
        .await
        .expect("answers");
    let SyncStatus::Info(info) = syncing else {
        panic!("a starting node is syncing, got {syncing:?}")
    };
    assert_eq!(info.current_block, alloy_primitives::U256::from(40));
    assert_eq!(info.highest_block, alloy_primitives::U256::from(500));
    let stages = info.stages.expect("stages");
    assert_eq!(stages[0].name, cairn_feed::rpc::STARTING_STAGE);

    // Served from here on: behind the announced height it is syncing, at it it is not.
    let committee = TestCommittee::new(b"TEMPO", 5, 4);
    let served = MemoryChain::default();
    for height in 1..=3 {
        served.insert(committee.certify(
            cairn_tests::test_block(height, 0, height, Vec::new()),
            0,
            height,
        ));
    }
    chain.bind(served);
    feed.set_sync_target(3, 500);
    let number: alloy_primitives::U64 = client
        .request("eth_blockNumber", rpc_params![])
        .await
        .expect("answers");
    assert_eq!(number.to::<u64>(), 3);
    let syncing: SyncStatus = client
        .request("eth_syncing", rpc_params![])
        .await
        .expect("answers");
    assert!(
        matches!(&syncing, SyncStatus::Info(info) if info.stages.is_none() && info.highest_block == alloy_primitives::U256::from(500)),
        "{syncing:?}"
    );
    feed.set_sync_target(3, 3);
    let syncing: SyncStatus = client
        .request("eth_syncing", rpc_params![])
        .await
        .expect("answers");
    assert_eq!(syncing, SyncStatus::None);
    let _ = server.handle.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genesis_is_served_raw_and_explained_as_the_root_of_trust() {
    let committee = TestCommittee::new(b"TEMPO", 5, 4);
    // A follower knows genesis by its header (from the chain profile); a genesis header commits
    // to an empty body, so the raw block is the same as a producer that stored the body serves.
    let (mut header, _) = cairn_tests::test_block(0, 0, 0, Vec::new()).into_parts();
    header.inner.transactions_root = alloy_consensus::EMPTY_ROOT_HASH;
    header.inner.withdrawals_root = Some(alloy_consensus::EMPTY_ROOT_HASH);
    let header_only = Block::header_only(header.clone());
    let with_body = Block::new(
        header,
        Some(cairn_primitives::Body {
            transactions: Vec::new(),
            ommers: Vec::new(),
            withdrawals: Some(Default::default()),
        }),
    );
    let served = MemoryChain::default();
    served.insert_block(Block::header_only(header_only.header().clone()));
    served.insert(committee.certify(cairn_tests::test_block(1, 0, 1, Vec::new()), 0, 1));
    let (server, client) = serve(served).await;
    let expected = alloy_primitives::Bytes::from(
        with_body
            .expect("an empty body matches")
            .raw_rlp()
            .expect("raw"),
    );
    for id in [
        serde_json::json!("0x0"),
        serde_json::json!("earliest"),
        serde_json::json!(header_only.hash()),
    ] {
        let raw: alloy_primitives::Bytes = client
            .request("debug_getRawBlock", rpc_params![id.clone()])
            .await
            .unwrap_or_else(|err| panic!("raw genesis by {id}: {err}"));
        assert_eq!(raw, expected, "by {id}");
    }
    let (code, message) = error_of(
        client
            .request::<serde_json::Value, _>(
                "consensus_getFinalization",
                rpc_params![Query::Height(0)],
            )
            .await,
    );
    assert_eq!(code, cairn_feed::rpc::MISSING_CODE);
    assert!(message.contains("root of trust"), "{message}");
    assert!(!message.contains("parent hash"), "{message}");
    let _ = server.handle.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalized_headers_are_the_finalizations_header_and_certificate_by_query_and_by_subscription()
 {
    use cairn_primitives::CertifiedHeader;
    use jsonrpsee::core::client::SubscriptionClientT;
    let committee = TestCommittee::new(b"TEMPO", 8, 4);
    let chain = MemoryChain::default();
    let feed = FeedState::default();
    let certified: Vec<CertifiedBlock> = (1..=3)
        .map(|height| {
            committee.certify(
                cairn_tests::test_block(height, 0, height, Vec::new()),
                0,
                height,
            )
        })
        .collect();
    chain.insert(certified[0].clone());
    chain.insert(certified[1].clone());
    feed.publish_finalized(certified[1].clone());
    let server = cairn_feed::start(
        "127.0.0.1:0",
        chain.clone(),
        feed.clone(),
        RpcConfig::default(),
    )
    .await
    .expect("server starts");
    let client = jsonrpsee::ws_client::WsClientBuilder::default()
        .build(format!("ws://{}", server.local_addr))
        .await
        .expect("client");
    let expected = |certified: &CertifiedBlock| {
        let block = certified.block.as_ref().expect("block");
        (
            certified.epoch,
            certified.view,
            certified.digest,
            certified.certificate.clone(),
            block.header().clone(),
        )
    };
    let parts = |header: CertifiedHeader| {
        (
            header.epoch,
            header.view,
            header.digest,
            header.certificate,
            header.header,
        )
    };
    for (query, index) in [(Query::Height(1), 0), (Query::Latest, 1)] {
        let header: CertifiedHeader = client
            .request("consensus_getFinalizedHeader", rpc_params![query])
            .await
            .expect("header");
        let full: CertifiedBlock = client
            .request("consensus_getFinalization", rpc_params![query])
            .await
            .expect("finalization");
        assert_eq!(full, certified[index]);
        assert_eq!(parts(header), expected(&full), "{query:?}");
    }
    let err = client
        .request::<CertifiedHeader, _>(
            "consensus_getFinalizedHeader",
            rpc_params![Query::Height(3)],
        )
        .await
        .expect_err("above the tip");
    assert!(
        err.to_string().contains("above the finalized tip 2"),
        "{err}"
    );

    // The stream: the next finalization, header only.
    let mut headers = client
        .subscribe::<CertifiedHeader, _>(
            "consensus_subscribeFinalizedHeaders",
            rpc_params![],
            "consensus_unsubscribeFinalizedHeaders",
        )
        .await
        .expect("subscribes");
    chain.insert(certified[2].clone());
    feed.publish_finalized(certified[2].clone());
    let streamed = tokio::time::timeout(Duration::from_secs(10), headers.next())
        .await
        .expect("in time")
        .expect("an item")
        .expect("decodes");
    assert_eq!(parts(streamed), expected(&certified[2]));
    headers.unsubscribe().await.expect("unsubscribes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairn_explain_refuses_what_is_not_a_height_and_says_what_it_cannot_explain() {
    let explain = |client: jsonrpsee::http_client::HttpClient, params| async move {
        client
            .request::<serde_json::Value, _>("cairn_explain", params)
            .await
    };
    let chain = MemoryChain::default();
    let committee = TestCommittee::new(b"TEMPO", 7, 4);
    chain.insert(committee.certify(cairn_tests::test_block(1, 0, 1, Vec::new()), 0, 1));
    let (_server, client) = serve(chain).await;
    for params in [
        rpc_params!["abc"],
        rpc_params![-1],
        rpc_params![],
        rpc_params![true],
    ] {
        let (code, message) = error_of(explain(client.clone(), params).await);
        assert_eq!(code, -32602, "{message}");
    }
    // Decimal, hex and numbers are heights: this chain does not serve them.
    for params in [rpc_params![7], rpc_params!["7"], rpc_params!["0x7"]] {
        let (code, message) = error_of(explain(client.clone(), params).await);
        assert_eq!(code, 503);
        assert!(message.contains("block 7 is not served"), "{message}");
    }
    // A chain that keeps no provenance says so for the heights it serves.
    let (code, message) = error_of(explain(client, rpc_params![1]).await);
    assert_eq!(code, 503);
    assert!(message.contains("does not explain its blocks"), "{message}");
}
