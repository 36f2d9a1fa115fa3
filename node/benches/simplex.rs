//! Real simplex validators measured as processes over loopback: `cairn devnet --consensus
//! simplex` with N validators, all in every committee, and a `cairn follow` of them all.
//!
//! - **blocks/s**: the finalized height of validator 0 over the measured window, divided by
//!   its length;
//! - **finality latency**: for each height finalized in the window, the follower's `finalized`
//!   event `seen` stamp (once the block is verified and stored) minus the block's header
//!   timestamp (stamped by its proposer when it built it), on the same machine clock.
//!
//! `cargo bench -p cairn-node --bench simplex -- --bench` measures 4 and 7 validators for 60 s
//! each (`CAIRN_BENCH_SIMPLEX_SECONDS` overrides); without `--bench` (as `cargo test
//! --all-targets` runs it) it does a short smoke run with 4.

use cairn_primitives::Event;
use cairn_tests::{
    env_number,
    process::{CairnProcess, block_number, wait_for_height},
    subscribe,
};
use std::{
    path::Path,
    time::{Duration, Instant},
};

/// One configuration's figures.
struct Measured {
    validators: usize,
    blocks_per_second: f64,
    latencies: Vec<i64>,
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn measure(validators: usize, window: Duration) -> Measured {
    let binary = Path::new(env!("CARGO_BIN_EXE_cairn"));
    let dir = tempfile::tempdir().expect("temp dir");
    let devnet = CairnProcess::simplex_devnet(binary, dir.path(), validators, validators);
    let network = cairn_validator::process::NetworkFile::load(&dir.path().join("network.json"))
        .expect("network.json");
    let upstreams: Vec<String> = network
        .validators
        .iter()
        .map(|member| format!("ws://{}", member.rpc))
        .collect();
    let validator = jsonrpsee::http_client::HttpClientBuilder::default()
        .build(format!("http://{}", network.validators[0].rpc))
        .expect("http client");
    wait_for_height(&validator, 20, Duration::from_secs(300)).await;
    let follower = CairnProcess::follower(
        binary,
        &dir.path().join("chain.json"),
        &upstreams.join(","),
        &dir.path().join("follower"),
        &dir.path().join("follower.log"),
    );
    let (_client, mut events) = subscribe(&follower.addr, 4096).await;
    // Settled: the follower serves the validators' tip.
    let tip = block_number(&validator).await;
    wait_for_height(&follower.http(), tip, Duration::from_secs(300)).await;

    let first = block_number(&validator).await;
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < window {
        let left = window.saturating_sub(started.elapsed());
        let Ok(Some(Ok(Event::Finalized { block, seen }))) =
            tokio::time::timeout(left, events.next()).await
        else {
            continue;
        };
        if block.height.unwrap_or_default() <= first {
            continue;
        }
        let proposed = block
            .block
            .as_ref()
            .map_or(0, |block| block.header().timestamp_millis());
        latencies.push(seen as i64 - proposed as i64);
    }
    let last = block_number(&validator).await;
    let blocks_per_second = (last - first) as f64 / started.elapsed().as_secs_f64();
    follower.stop();
    devnet.stop();
    latencies.sort_unstable();
    Measured {
        validators,
        blocks_per_second,
        latencies,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let seconds = env_number("CAIRN_BENCH_SIMPLEX_SECONDS", if full { 60 } else { 5 });
    let window = Duration::from_secs(seconds);
    let configurations: &[usize] = if full { &[4, 7] } else { &[4] };
    let mut rows = Vec::new();
    for validators in configurations {
        rows.push(measure(*validators, window).await);
    }
    println!(
        "| validators (all in every committee) | blocks/s | finality latency p50 | p99 | max | heights |"
    );
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        assert!(
            !row.latencies.is_empty(),
            "the follower saw blocks finalized"
        );
        println!(
            "| {} | {:.1} | {} ms | {} ms | {} ms | {} |",
            row.validators,
            row.blocks_per_second,
            percentile(&row.latencies, 0.5),
            percentile(&row.latencies, 0.99),
            row.latencies.last().copied().unwrap_or_default(),
            row.latencies.len()
        );
    }
}
