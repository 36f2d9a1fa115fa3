//! Clients that never read: each connection's unread events are bounded in bytes, so a hundred
//! connections with sixteen subscriptions each cost a bounded amount of memory, which comes
//! back once they leave, and the follower goes on following meanwhile.

use super::cairn;
use cairn_tests::process::{
    CairnProcess, block_number, log_excerpt, silent_subscriber, wait_for_height,
};
use std::time::Duration;

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
    // The follower catches up what it fell behind under the load, then gives back at least
    // half of what the clients cost (the allocator returns freed memory a second after it is
    // freed, page by page).
    let tip = block_number(&devnet.http()).await;
    wait_for_height(&rpc, tip, Duration::from_secs(60)).await;
    let given_back = |after: u64| after <= before + ((peak - before) / 2).max(32 * MIB);
    let mut after = resident(follower.id());
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) && !given_back(after) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = resident(follower.id());
    }
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
        given_back(after),
        "{} MiB after the clients left, {} MiB before, {} MiB at the peak",
        after / MIB,
        before / MIB,
        peak / MIB
    );
    follower.stop();
    devnet.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_under_a_low_open_file_limit_leave_the_follower_following() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let per_port: usize = cairn_tests::env_number("CAIRN_HALF_OPEN_PER_PORT", 1100);
    // This test's own sockets need more than the follower is given.
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .expect("raising this test's open-file limit");
    let dir = tempfile::tempdir().expect("temp dir");
    let devnet = super::seeded_devnet_at(&dir.path().join("devnet"), "100ms", "127.0.0.1:0", &[]);
    let chain = dir.path().join("devnet").join("chain.json");
    wait_for_height(&devnet.http(), 5, Duration::from_secs(120)).await;
    let log = dir.path().join("follower.log");
    let datadir = dir.path().join("follower");
    let args: Vec<&std::ffi::OsStr> = vec![
        "--nofile=1024:1024".as_ref(),
        cairn().as_os_str(),
        "follow".as_ref(),
        "--chain".as_ref(),
        chain.as_os_str(),
        "--upstream".as_ref(),
        devnet.addr.as_ref(),
        "--datadir".as_ref(),
        datadir.as_os_str(),
        "--rpc-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--metrics-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--admin-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--status-interval".as_ref(),
        "200ms".as_ref(),
    ];
    let follower = CairnProcess::start_with_env(
        std::path::Path::new("prlimit"),
        args,
        std::process::Stdio::from(std::fs::File::create(&log).expect("log")),
        &[("CAIRN_LOG", "info"), ("NO_COLOR", "1")],
    );
    let lowered = follower.wait_for_line("warning: open-file limit 1024");
    assert!(
        lowered.contains("--rpc-max-connections lowered"),
        "{lowered}"
    );
    let metrics = follower
        .wait_for_line("metrics on http://")
        .trim_start_matches("metrics on http://")
        .trim_end_matches("/metrics")
        .to_string();
    let admin = follower
        .wait_for_line("admin status page at http://")
        .trim_start_matches("admin status page at http://")
        .split('/')
        .next()
        .expect("an address")
        .to_string();
    let mut follower = follower.with_rpc_addr();
    wait_for_height(
        &follower.http(),
        block_number(&devnet.http()).await,
        Duration::from_secs(60),
    )
    .await;

    // Connections that send nothing, to both servers. Past the caps and the listen backlogs
    // the kernel holds further attempts back, so each attempt waits at most 2 s.
    let mut attempts = tokio::task::JoinSet::new();
    for addr in [metrics.clone(), follower.addr.clone()] {
        for _ in 0..per_port {
            let addr = addr.clone();
            attempts.spawn(async move {
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                    .await
            });
        }
    }
    let mut half_open = Vec::new();
    let mut held_back = 0;
    while let Some(attempt) = attempts.join_next().await {
        match attempt.expect("the attempt ran") {
            Ok(Ok(stream)) => half_open.push(stream),
            Ok(Err(err)) => panic!("a connection was refused: {err}"),
            Err(_) => held_back += 1,
        }
    }
    // The operator is not locked out: the admin listener answers `cairn status`.
    let status = std::process::Command::new(cairn())
        .args(["status", "--rpc", &admin])
        .output()
        .expect("cairn status runs");
    assert!(
        status.status.success(),
        "cairn status on the admin listener: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    // The follower goes on following meanwhile (a block every 100 ms), as its admin listener
    // shows.
    let admin_rpc = jsonrpsee::http_client::HttpClientBuilder::default()
        .build(format!("http://{admin}"))
        .expect("client");
    let from = block_number(&admin_rpc).await;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            follower.exited().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let to = block_number(&admin_rpc).await;
    assert!(from > 0, "the admin listener serves the chain");
    assert!(
        to > from + 20,
        "followed from {from} to {to} with the connections open"
    );
    let half_open_count = half_open.len();
    drop(half_open);
    let tip = block_number(&devnet.http()).await;
    wait_for_height(&follower.http(), tip, Duration::from_secs(30)).await;
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(!text.contains("panicked"), "{}", log_excerpt(&text));
    eprintln!(
        "{} half-open connections under an open-file limit of 1024 ({} established, {held_back} held back by the kernel): followed from {from} to {to} meanwhile, then {tip}",
        2 * per_port,
        half_open_count
    );
    follower.stop();
    devnet.stop();
}
