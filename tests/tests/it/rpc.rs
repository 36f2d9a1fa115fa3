//! The feed's RPC server under a subscriber that stops reading: it is dropped once its bounded
//! buffer is full, publishing never waits for it, and the server keeps serving others.

use cairn_feed::{FeedState, RpcConfig};
use cairn_primitives::{CertifiedBlock, Event};
use cairn_tests::{EmptyChain, TestCommittee};
use std::time::{Duration, Instant};
use tokio_util::compat::TokioAsyncReadCompatExt;

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
    let socket = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let mut handshake = soketto::handshake::Client::new(socket.compat(), "127.0.0.1", "/");
    let response = handshake.handshake().await.expect("websocket handshake");
    assert!(matches!(
        response,
        soketto::handshake::ServerResponse::Accepted { .. }
    ));
    let (mut sender, _receiver) = handshake.into_builder().finish();
    sender
        .send_text(r#"{"jsonrpc":"2.0","id":1,"method":"consensus_subscribe","params":[]}"#)
        .await
        .expect("sends");
    sender.flush().await.expect("flushes");
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
