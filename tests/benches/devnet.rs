//! Devnet throughput, measured in one process:
//!
//! - blocks per second the producer sustains with no block time (real on-disk storage with a
//!   sync per write, real ceremonies at each epoch boundary), committee 4 against committee 16;
//! - `finalized` events per second the RPC server delivers over WebSocket to 1 and to 50
//!   subscribers;
//! - what a follower's provenance records cost beside the blocks they describe: a batch of
//!   blocks written to the block store with one sync, against the records of the same heights
//!   written to the provenance store with one flush.
//!
//! `cargo bench -p cairn-tests --bench devnet` runs the full measurement; without `--bench`
//! (as `cargo test --all-targets` runs it) it does a short smoke run of every row.

use cairn_devnet::{Devnet, DevnetConfig};
use cairn_feed::{FeedState, RpcConfig};
use cairn_primitives::CertifiedBlock;
use cairn_tests::{EmptyChain, subscribe};
use commonware_runtime::{Runner as _, Supervisor as _};
use std::time::{Duration, Instant};

/// What one producer run measured.
struct ProducerRun {
    /// Blocks per second over all heights.
    overall: f64,
    /// Blocks per second over the heights that are not epoch boundaries.
    regular: f64,
    /// Mean milliseconds to produce a boundary block (includes the next epoch's ceremony).
    boundary_ms: f64,
}

/// Produces `blocks` heights with no block time.
fn producer_rate(committee: usize, blocks: u64) -> ProducerRun {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = commonware_runtime::tokio::Config::new()
        .with_worker_threads(2)
        .with_storage_directory(dir.path());
    commonware_runtime::tokio::Runner::new(config).start(|context| async move {
        let devnet_config = DevnetConfig {
            validators: committee + 3,
            committee,
            epoch_length: 20,
            ..DevnetConfig::default()
        };
        let mut devnet = Devnet::open(context.child("devnet"), devnet_config, FeedState::default())
            .await
            .expect("devnet opens");
        let (mut regular, mut regular_time) = (0u64, Duration::ZERO);
        let (mut boundary, mut boundary_time) = (0u64, Duration::ZERO);
        let start = Instant::now();
        for _ in 0..blocks {
            let height = devnet.next_height();
            let block_start = Instant::now();
            devnet.produce_next().await.expect("produces");
            if devnet.epochs().is_boundary(height) {
                boundary += 1;
                boundary_time += block_start.elapsed();
            } else {
                regular += 1;
                regular_time += block_start.elapsed();
            }
        }
        ProducerRun {
            overall: blocks as f64 / start.elapsed().as_secs_f64(),
            regular: regular as f64 / regular_time.as_secs_f64(),
            boundary_ms: boundary_time.as_secs_f64() * 1e3 / boundary.max(1) as f64,
        }
    })
}

/// A typical devnet block with its certificate, as the producer publishes it.
fn sample_event() -> CertifiedBlock {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = commonware_runtime::tokio::Config::new().with_storage_directory(dir.path());
    commonware_runtime::tokio::Runner::new(config).start(|context| async move {
        let mut devnet = Devnet::open(
            context.child("devnet"),
            DevnetConfig::default(),
            FeedState::default(),
        )
        .await
        .expect("devnet opens");
        devnet.produce_next().await.expect("produces").certified
    })
}

/// Events per second each subscriber receives while `events` are published as fast as the
/// subscribers take them (buffers sized so nobody is dropped).
async fn delivery_rate(subscribers: usize, events: usize, sample: &CertifiedBlock) -> f64 {
    let feed = FeedState::new(events + 16);
    let config = RpcConfig {
        max_connections: subscribers as u32 + 8,
        message_buffer: events as u32 + 16,
        queued_bytes: usize::MAX,
        ..RpcConfig::default()
    };
    let server = cairn_feed::start("127.0.0.1:0", EmptyChain, feed.clone(), config)
        .await
        .expect("server starts");
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let (client, mut subscription) = subscribe(server.local_addr, events + 16).await;
        readers.push(tokio::spawn(async move {
            let _client = client;
            for _ in 0..events {
                subscription
                    .next()
                    .await
                    .expect("subscription stays open")
                    .expect("event parses");
            }
        }));
    }
    while feed.subscribers() < subscribers {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start = Instant::now();
    for _ in 0..events {
        feed.publish_finalized(sample.clone());
    }
    for reader in readers {
        reader.await.expect("reader finishes");
    }
    let rate = events as f64 / start.elapsed().as_secs_f64();
    server.handle.stop().expect("stops");
    rate
}

/// Seconds to store `blocks` blocks in one batch (one sync), and seconds to record and flush
/// their provenance (each run on fresh storage).
fn provenance_cost(blocks: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = commonware_runtime::tokio::Config::new()
        .with_worker_threads(2)
        .with_storage_directory(dir.path());
    let chain: Vec<_> = (1..=blocks)
        .map(|height| cairn_tests::test_block(height, 0, height, Vec::new()))
        .collect();
    commonware_runtime::tokio::Runner::new(config).start(|context| async move {
        let store = cairn_storage::BlockStore::open(
            context.child("blocks"),
            "bench-blocks",
            cairn_storage::page_cache(),
        )
        .await
        .expect("store opens");
        let start = Instant::now();
        store.put_batch(&chain).await.expect("stores");
        let stored = start.elapsed().as_secs_f64();
        let provenance =
            cairn_storage::provenance::Provenance::open(context.child("provenance"), "bench")
                .await
                .expect("provenance opens");
        let start = Instant::now();
        // As catch-up records them: a range per upstream answer (batches of 100).
        for first in (1..=blocks).step_by(100) {
            provenance.record(
                first,
                (first + 99).min(blocks),
                Some("ws://127.0.0.1:8546"),
                cairn_storage::provenance::How::CatchUp,
            );
        }
        provenance.flush().await.expect("flushes");
        (stored, start.elapsed().as_secs_f64())
    })
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let (blocks, events_one, events_many) = if full {
        (400, 20_000, 2_000)
    } else {
        (25, 200, 20)
    };

    let c4 = producer_rate(4, blocks);
    let c16 = producer_rate(16, blocks);
    println!(
        "devnet producer, --block-time 0, epoch length 20, {blocks} blocks on disk{}",
        if full { "" } else { " (smoke run)" }
    );
    println!(
        "| committee | blocks/s | ratio to committee 4 | blocks/s without boundaries | ms per boundary block (with ceremony) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for (size, run) in [(4, &c4), (16, &c16)] {
        println!(
            "| {size} | {:.1} | {:.2} | {:.1} | {:.0} |",
            run.overall,
            run.overall / c4.overall,
            run.regular,
            run.boundary_ms
        );
    }

    let sample = sample_event();
    let size = serde_json::to_string(&sample).expect("json").len();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let one = runtime.block_on(delivery_rate(1, events_one, &sample));
    let fifty = runtime.block_on(delivery_rate(50, events_many, &sample));
    println!();
    println!("finalized events over WebSocket ({size}-byte events)");
    println!(
        "| subscribers | events/s per subscriber | deliveries/s in total | per-subscriber ratio to 1 |"
    );
    println!("|---:|---:|---:|---:|");
    println!("| 1 | {one:.0} | {one:.0} | 1.00 |");
    println!(
        "| 50 | {fifty:.0} | {:.0} | {:.2} |",
        fifty * 50.0,
        fifty / one
    );

    let heights = if full { 20_000 } else { 200 };
    let (stored, recorded) = provenance_cost(heights);
    println!();
    println!("{heights} heights: blocks stored against their provenance recorded");
    println!("| write | ms | heights/s | ratio to the blocks |");
    println!("|---|---:|---:|---:|");
    for (what, seconds) in [
        ("blocks, one batch, one sync", stored),
        ("provenance records, one flush", recorded),
    ] {
        println!(
            "| {what} | {:.1} | {:.0} | {:.3} |",
            seconds * 1000.0,
            heights as f64 / seconds,
            seconds / stored
        );
    }
}
