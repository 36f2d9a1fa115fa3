//! Clients that never read: each connection's unread events are bounded in bytes, so a hundred
//! connections with sixteen subscriptions each cost a bounded amount of memory, which comes
//! back once they leave, and the follower goes on following meanwhile.

use super::cairn;
use cairn_tests::process::{CairnProcess, block_number, wait_for_height};
use std::time::Duration;
use tokio_util::compat::TokioAsyncReadCompatExt;

/// Resident memory of process `pid`, in bytes.
fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .expect("VmRSS")
}

/// A WebSocket connection that subscribes `subscriptions` times and then never reads.
async fn silent_subscriber(
    addr: &str,
    subscriptions: usize,
) -> soketto::connection::Sender<tokio_util::compat::Compat<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let mut handshake = soketto::handshake::Client::new(socket.compat(), "127.0.0.1", "/");
    let response = handshake.handshake().await.expect("websocket handshake");
    assert!(matches!(
        response,
        soketto::handshake::ServerResponse::Accepted { .. }
    ));
    let (mut sender, receiver) = handshake.into_builder().finish();
    for id in 0..subscriptions {
        sender
            .send_text(format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"consensus_subscribe","params":[]}}"#
            ))
            .await
            .expect("sends");
    }
    sender.flush().await.expect("flushes");
    // The receiving half is dropped unread: nothing is read from the socket again.
    std::mem::forget(receiver);
    sender
}

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_cost_bounded_memory_given_back_when_they_leave() {
    let connections: usize = cairn_tests::env_number("CAIRN_SILENT_CONNECTIONS", 100);
    let dir = tempfile::tempdir().expect("temp dir");
    let devnet = super::seeded_devnet_at(&dir.path().join("devnet"), "25ms", "127.0.0.1:0", &[]);
    let chain = dir.path().join("devnet").join("chain.json");
    wait_for_height(&devnet.http(), 20, Duration::from_secs(120)).await;
    let follower = CairnProcess::follower(
        cairn(),
        &chain,
        &devnet.addr,
        &dir.path().join("follower"),
        &dir.path().join("follower.log"),
    );
    let rpc = follower.http();
    wait_for_height(
        &rpc,
        block_number(&devnet.http()).await,
        Duration::from_secs(120),
    )
    .await;
    // Settled: the follower has followed live for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = resident(follower.id());

    let mut silent = Vec::new();
    for _ in 0..connections {
        silent.push(silent_subscriber(&follower.addr, 16).await);
    }
    let mut peak = before;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        peak = peak.max(resident(follower.id()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = block_number(&rpc).await;
    drop(silent);
    // Given back after they leave (the allocator returns freed memory after a short delay).
    let mut after = resident(follower.id());
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(15) && after > before + 64 * MIB {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = resident(follower.id());
    }
    let tip = block_number(&devnet.http()).await;
    wait_for_height(&rpc, tip, Duration::from_secs(30)).await;
    eprintln!(
        "{connections} connections x 16 silent subscriptions: resident {} MiB before, peak {} MiB (+{} MiB), {} MiB after they left; the follower reached {during} meanwhile and {tip} after",
        before / MIB,
        peak / MIB,
        (peak - before) / MIB,
        after / MIB
    );
    assert!(
        peak - before <= 200 * MIB,
        "peak {} MiB above {} MiB",
        peak / MIB,
        before / MIB
    );
    assert!(
        after <= before + 64 * MIB,
        "{} MiB after the clients left, {} MiB before",
        after / MIB,
        before / MIB
    );
    follower.stop();
    devnet.stop();
}
