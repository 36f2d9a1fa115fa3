//! The follower measured as real processes over loopback (`cairn devnet` upstream, `cairn
//! follow` follower, both the binaries this package builds):
//!
//! 1. catch-up: the devnet first produces the chain with no block time; a fresh follower with
//!    `--verify every-block` (Tempo's policy: every certificate verified, one block in flight)
//!    catches up from genesis, then a fresh follower with the default hash-chain catch-up.
//!    Rates, CPU time per block (from /proc) and certificates verified per block are compared
//!    in the same run. The followers of this step and of step 6 run with `--cpus` on the first
//!    CPU the benchmark may use (`CAIRN_BENCH_CPUS` gives another list; empty leaves them on
//!    every CPU), the devnet on every CPU, so that on a small machine the follower is not
//!    measured fighting its upstream for cores; one more hash-chain follower catches up on
//!    every CPU, for comparison. Last, the devnet restarts answering as a public RPC node does
//!    (`--public-node typical`: 60 ms, 300 calls per second, batches of 100, no `debug_*`) and a
//!    fresh follower with a budget of 290 calls per second catches up through it.
//! 2. live latency: the devnet restarts with a block time; for each height, the follower's
//!    `finalized` event `seen` stamp minus the devnet's `seen` stamp (same machine clock).
//! 3. fan-out: subscribers of the follower (1,000 with `--bench`), opened by this process,
//!    while the devnet produces 10 blocks a second; every subscriber must receive every height.
//! 4. memory: the devnet restarts with no block time up to the long target while the follower
//!    follows live; the follower's resident memory is sampled from /proc once a second.
//! 5. checkpoint start: a second devnet with epochs of 5 blocks runs past `CAIRN_BENCH_EPOCHS`
//!    epochs (1,500, the size of Tempo mainnet's ledger), then produces live blocks; a fresh
//!    follower given only the genesis outcome starts with `--checkpoint latest`, walks every
//!    boundary and follows live. The baseline in the same run is the same follower restarted on
//!    its datadir, which takes its stored checkpoint without walking.
//!
//! 6. memory by chain length: for each length in `CAIRN_BENCH_MEMORY` (100,000 by default), a
//!    chain is generated with `cairn devnet --bulk` (seed 1, epochs of 100, a full DKG), and a
//!    fresh follower catches up from genesis; its peak resident memory (VmHWM) is read at the
//!    end. With `CAIRN_BENCH_CHAINS=DIR`, chains are kept in `DIR/LENGTH` and reused by later
//!    runs.
//!
//! 7. certificate fill: the devnet produces live blocks every 50 ms on top of the chain of step
//!    4, and a fresh follower catches up through the hash chain, then fills every height's
//!    certificate in the background (`--certificates all`). The fill rate is the certificates
//!    filled from the moment it serves its chain to full coverage (`cairn_status`); the live
//!    latency of the heights produced during the fill is set against the same follower's over
//!    the 100 heights after it, in the same run. Heights produced before it reached the
//!    devnet's newest height (while it caught up, started, and closed the gap the catch-up
//!    left) are left out of both; the time that gap took is printed beside them. The follower of steps 1 to 4 runs with
//!    `--certificates on-demand`, so that its fill does not run into the other measurements.
//!    `CAIRN_BENCH_FILL_ONLY=1` runs this step alone, on a chain of `CAIRN_BENCH_CATCHUP`
//!    blocks; with `CAIRN_BENCH_FILL_PUBLIC=1` as well, a second fresh follower then catches up
//!    and fills through the devnet answering as a public RPC node does (`--public-node
//!    typical`), with a budget of 290 calls per second, and the two fill rates are compared.
//!
//! `cargo bench -p cairn-node --bench follow` runs 20,000 blocks of catch-up and follows to
//! 100,000 (`CAIRN_BENCH_CATCHUP` and `CAIRN_BENCH_LONG` override both); without `--bench` (as
//! `cargo test --all-targets` runs it) it does a short smoke run of every step.

use cairn_primitives::Event;
use cairn_tests::{
    env_number,
    process::{
        CairnProcess, block_number, certificate_coverage, first_allowed_cpu,
        profile_without_genesis_header,
    },
    subscribe,
};
use jsonrpsee::http_client::HttpClient;
use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

const EPOCH_LENGTH: &str = "100";

fn cairn() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cairn"))
}

fn devnet(datadir: &Path, rpc_addr: &str, block_time: &str, until: u64) -> CairnProcess {
    devnet_with_epochs(datadir, EPOCH_LENGTH, rpc_addr, block_time, until)
}

/// The call budget the follower keeps against a `--public-node typical` devnet (which allows
/// 300 calls per second).
const PUBLIC_BUDGET: &str = "290";

/// [`devnet`] serving what it has made so far as a public RPC node does (`--public-node
/// typical`: 60 ms, 300 calls per second, batches of 100, no `debug_*`).
fn devnet_public(datadir: &Path, rpc_addr: &str, until: u64) -> CairnProcess {
    devnet_with_args(
        datadir,
        EPOCH_LENGTH,
        rpc_addr,
        "0",
        until,
        &["--public-node", "typical"],
    )
}

fn devnet_with_epochs(
    datadir: &Path,
    epoch_length: &str,
    rpc_addr: &str,
    block_time: &str,
    until: u64,
) -> CairnProcess {
    devnet_with_args(datadir, epoch_length, rpc_addr, block_time, until, &[])
}

/// [`devnet_with_epochs`] with `extra` arguments.
fn devnet_with_args(
    datadir: &Path,
    epoch_length: &str,
    rpc_addr: &str,
    block_time: &str,
    until: u64,
    extra: &[&str],
) -> CairnProcess {
    let until = until.to_string();
    let mut args = vec![
        "--epoch-length",
        epoch_length,
        "--full-dkg-at-epochs",
        "3",
        "--block-time",
        block_time,
        "--until-height",
        &until,
        "--rpc-addr",
        rpc_addr,
    ];
    args.extend_from_slice(extra);
    CairnProcess::devnet(cairn(), datadir, &args)
}

/// CPU time (user and system) `pid` has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 when it cannot be read).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// (current resident, peak resident) of `pid`, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Polls `client` until it serves `target`, sampling `pid`'s memory; returns the peak resident
/// memory seen (MiB).
async fn follow_to(client: &HttpClient, target: u64, pid: u32, limit: Duration) -> f64 {
    let start = Instant::now();
    let mut peak = 0.0f64;
    let mut last_sample = Instant::now();
    loop {
        let current = block_number(client).await;
        if last_sample.elapsed() >= Duration::from_secs(1) {
            peak = peak.max(rss_mib(pid).0);
            last_sample = Instant::now();
        }
        if current >= target {
            return peak.max(rss_mib(pid).0);
        }
        assert!(
            start.elapsed() < limit,
            "follower stuck at {current} of {target}"
        );
        // Polled often: a catch-up of 20,000 blocks takes about two seconds.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Notes the `seen` stamp of a `finalized` event by its height.
fn record_seen<E>(seen_at: &mut BTreeMap<u64, u64>, event: Option<Result<Event, E>>) {
    if let Some(Ok(Event::Finalized { block, seen })) = event {
        seen_at.insert(block.height.unwrap_or_default(), seen);
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let catchup = env_number("CAIRN_BENCH_CATCHUP", if full { 20_000 } else { 150 });
    let live = if full { 300 } else { 20 };
    // The long run starts where the live measurement ends.
    let subscribers = if full { 1_000 } else { 20 };
    let fanout_blocks = if full { 100 } else { 10 };
    let long = env_number("CAIRN_BENCH_LONG", if full { 100_000 } else { 300 })
        .max(catchup + live + fanout_blocks + 100);
    let limit = Duration::from_secs(if full { 3_600 } else { 300 });
    let dir = tempfile::tempdir().expect("temp dir");
    let devnet_dir = dir.path().join("devnet");
    let cpus = std::env::var("CAIRN_BENCH_CPUS").unwrap_or_else(|_| first_allowed_cpu());
    let pinned: Vec<&str> = if cpus.is_empty() {
        Vec::new()
    } else {
        vec!["--cpus", cpus.as_str()]
    };

    if std::env::var_os("CAIRN_BENCH_FILL_ONLY").is_some() {
        let producer = devnet(&devnet_dir, "127.0.0.1:0", "0", catchup);
        let addr = producer.addr.clone();
        producer.wait_for_line_within("reached --until-height", limit);
        producer.stop();
        let fill = |public| {
            certificate_fill(
                dir.path(),
                &devnet_dir,
                &addr,
                catchup,
                &pinned,
                limit,
                public,
            )
        };
        let loopback = fill(false).await;
        // Through an upstream that answers as a public RPC node does: each certificate is one
        // call of its budget.
        let public = if std::env::var_os("CAIRN_BENCH_FILL_PUBLIC").is_some() {
            Some(fill(true).await)
        } else {
            None
        };
        println!("| measurement | value | baseline (same run) | ratio |");
        println!("|---|---|---|---|");
        loopback.print(&cpus);
        if let Some(public) = public {
            public.print(&cpus);
            println!(
                "| public-like fill rate against loopback | {:.0} certificates/s | {:.0} certificates/s | {:.3} |",
                public.rate(),
                loopback.rate(),
                public.rate() / loopback.rate()
            );
        }
        return;
    }

    // 1. Produce, then catch up.
    let produce_start = Instant::now();
    let producer = devnet(&devnet_dir, "127.0.0.1:0", "0", catchup);
    let addr = producer.addr.clone();
    producer.wait_for_line_within("reached --until-height", limit);
    let produce_rate = catchup as f64 / produce_start.elapsed().as_secs_f64();

    // The followers' CPUs (`--cpus`), the same for the baseline and the default policy: the
    // first CPU this process may use unless CAIRN_BENCH_CPUS says otherwise.
    let with_pinned = |extra: &[&'static str]| -> Vec<&str> {
        pinned
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect()
    };
    let target = CatchUpTarget {
        chain: devnet_dir.join("chain.json"),
        addr: addr.clone(),
        dir: dir.path().to_path_buf(),
        height: catchup,
        limit,
    };

    // The baseline first: Tempo's policy, every certificate verified, one block in flight.
    let (
        baseline,
        CatchUpRun {
            rate: baseline_rate,
            cpu_ms: baseline_cpu_ms,
            ..
        },
    ) = target
        .fresh_follower("baseline", &with_pinned(&["--verify", "every-block"]))
        .await;
    baseline.stop();

    // The default policy on every CPU, for comparison with the pinned run below.
    let (
        unpinned,
        CatchUpRun {
            rate: unpinned_rate,
            cpu_ms: unpinned_cpu_ms,
            ..
        },
    ) = target.fresh_follower("unpinned", &[]).await;
    unpinned.stop();

    let (
        follower,
        CatchUpRun {
            rate: catchup_rate,
            cpu_ms: catchup_cpu_ms,
            peak: catchup_peak,
        },
    ) = target
        .fresh_follower("follower", &with_pinned(&["--certificates", "on-demand"]))
        .await;
    let follower_rpc = follower.http();
    let caught_up = follower.wait_for_line_within("caught up ", Duration::from_secs(10));
    let certificates: u64 = caught_up
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("certificates in {caught_up:?}"));

    // 1b. The same catch-up through the devnet answering as a public RPC node does, with a
    //     call budget just under the node's.
    producer.stop();
    let producer = devnet_public(&devnet_dir, &addr, catchup);
    let (
        public_follower,
        CatchUpRun {
            rate: public_rate, ..
        },
    ) = target
        .fresh_follower(
            "public",
            &with_pinned(&["--upstream-rate-limit", PUBLIC_BUDGET]),
        )
        .await;
    public_follower.stop();

    // 2. Live latency at a 50 ms block time.
    producer.stop();
    let producer = devnet(&devnet_dir, &addr, "50ms", catchup + live);
    let (_devnet_ws, mut devnet_events) = subscribe(&producer.addr, 4096).await;
    let (_follower_ws, mut follower_events) = subscribe(&follower.addr, 4096).await;
    let mut upstream_seen: BTreeMap<u64, u64> = BTreeMap::new();
    let mut follower_seen: BTreeMap<u64, u64> = BTreeMap::new();
    let target = catchup + live;
    while follower_seen.keys().next_back().is_none_or(|h| *h < target) {
        tokio::select! {
            event = devnet_events.next() => record_seen(&mut upstream_seen, event),
            event = follower_events.next() => record_seen(&mut follower_seen, event),
            () = tokio::time::sleep(Duration::from_secs(60)) => panic!("no live event for a minute"),
        }
    }
    let mut latencies: Vec<i64> = follower_seen
        .iter()
        .filter_map(|(height, seen)| {
            upstream_seen
                .get(height)
                .map(|upstream| *seen as i64 - *upstream as i64)
        })
        .collect();
    latencies.sort_unstable();
    assert!(!latencies.is_empty(), "heights seen on both sides");

    // 3. Fan-out: subscribers of the follower, in this process, while the devnet produces 10
    //    blocks a second; every subscriber must receive every height.
    producer.stop();
    let fanout_end = target + fanout_blocks;
    let fanout = fan_out(&follower.addr, subscribers, target, fanout_end, || {
        devnet(&devnet_dir, &addr, "100ms", fanout_end)
    })
    .await;

    // 4. Follow live at the producer's full rate up to the long target.
    let long_start = Instant::now();
    let producer = devnet(&devnet_dir, &addr, "0", long);
    let long_peak = follow_to(&follower_rpc, long, follower.id(), limit).await;
    let long_rate = (long - fanout_end) as f64 / long_start.elapsed().as_secs_f64();
    let (_, high_water) = rss_mib(follower.id());
    follower.stop();
    producer.stop();

    // 5. Checkpoint start after a long ledger, against a start that takes its stored
    //    checkpoint without walking.
    let epochs = env_number("CAIRN_BENCH_EPOCHS", if full { 1_500 } else { 20 });
    let checkpoint = checkpoint_start(dir.path(), epochs, limit).await;

    // 6. Memory by chain length.
    let lengths: Vec<u64> = std::env::var("CAIRN_BENCH_MEMORY")
        .ok()
        .map(|list| {
            list.split(',')
                .map(|length| {
                    length
                        .trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("CAIRN_BENCH_MEMORY: {length:?}"))
                })
                .collect()
        })
        .unwrap_or_else(|| vec![if full { 100_000 } else { 1_000 }]);
    let mut memory = Vec::new();
    for length in lengths {
        memory.push(memory_at(dir.path(), length, &pinned, limit).await);
    }

    // 7. The certificate fill after a catch-up of the whole chain, with live blocks coming.
    let fill = certificate_fill(dir.path(), &devnet_dir, &addr, long, &pinned, limit, false).await;

    println!("follower over loopback, epochs of {EPOCH_LENGTH} blocks, committee 4:");
    if cpus.is_empty() {
        println!("followers on every CPU (CAIRN_BENCH_CPUS empty), the devnet on every CPU");
    } else {
        println!("followers with `--cpus {cpus}` (CAIRN_BENCH_CPUS), the devnet on every CPU");
    }
    println!();
    println!("| measurement | value | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| catch-up from genesis, {catchup} blocks, hash chain (default) | {catchup_rate:.1} blocks/s | every certificate verified, one block in flight (`--verify every-block`, Tempo's policy) {baseline_rate:.1} blocks/s | {:.2} |",
        catchup_rate / baseline_rate
    );
    println!(
        "| follower CPU (user + system) per caught-up block | {catchup_cpu_ms:.3} ms | {baseline_cpu_ms:.3} ms | {:.3} |",
        catchup_cpu_ms / baseline_cpu_ms.max(1e-9)
    );
    println!(
        "| catch-up from genesis, {catchup} blocks, hash chain, follower on every CPU | {unpinned_rate:.1} blocks/s, {unpinned_cpu_ms:.3} ms CPU per block | the hash-chain run above: {catchup_rate:.1} blocks/s, {catchup_cpu_ms:.3} ms | {:.2} |",
        unpinned_rate / catchup_rate
    );
    println!(
        "| the same catch-up through a public-like upstream (60 ms, 300 calls/s, batches of 100, no `debug_*`), `--upstream-rate-limit {PUBLIC_BUDGET}` | {public_rate:.1} blocks/s | over loopback: {catchup_rate:.1} blocks/s | {:.3} |",
        public_rate / catchup_rate
    );
    println!(
        "| certificates verified per caught-up block | {:.4} ({certificates} for {catchup} blocks) | at least 1 | |",
        certificates as f64 / catchup as f64
    );
    println!("| producer (devnet, block time 0) | {produce_rate:.1} blocks/s | | |");
    println!(
        "| live latency, devnet seen -> follower seen, {} heights at 50 ms | p50 {} ms, p99 {} ms, max {} ms | | |",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!(
        "| fan-out: {} WebSocket subscribers of the follower, 10 events/s each, {} heights | {} events delivered, {} missing | {} expected | |",
        fanout.subscribers,
        fanout_end - target,
        fanout.delivered,
        fanout.missing,
        fanout.expected
    );
    println!("| following live to {long} at full producer speed | {long_rate:.1} blocks/s | | |");
    println!(
        "| follower resident memory, sampled peak | {long_peak:.1} MiB at {long} | {catchup_peak:.1} MiB at {catchup} | {:.2} |",
        long_peak / catchup_peak.max(1e-3)
    );
    println!("| follower peak resident memory (VmHWM) | {high_water:.1} MiB | | |");
    println!(
        "| checkpoint start, {epochs} epochs of 5: boundary walk and checkpoint verification | {} ms | | |",
        checkpoint.walk_ms
    );
    println!(
        "| checkpoint start: process start -> first verified live block | {} ms (walking {} boundaries) | {} ms (a verified checkpoint copied in, no walk; catches up from it) | {:.2} |",
        checkpoint.with_walk.as_millis(),
        checkpoint.boundaries,
        checkpoint.without_walk.as_millis(),
        checkpoint.with_walk.as_secs_f64() / checkpoint.without_walk.as_secs_f64().max(1e-6)
    );
    fill.print(&cpus);
    let smallest = memory.first().map_or(1e-3, |run| run.peak_mib);
    for run in &memory {
        println!(
            "| follower peak resident memory (VmHWM), catch-up from genesis of {} blocks | {:.1} MiB ({:.1} blocks/s) | {:.1} MiB at {} blocks | {:.2} |",
            run.length,
            run.peak_mib,
            run.rate,
            smallest,
            memory.first().map_or(0, |run| run.length),
            run.peak_mib / smallest.max(1e-3)
        );
    }
}

/// What the certificate fill step measured.
struct FillRun {
    /// Whether the upstream answered as a public RPC node does.
    public: bool,
    /// How long after it served its chain the follower reached the devnet's newest height.
    gap_closed: Duration,
    /// The heights the follower served when the fill was done.
    height: u64,
    /// Certificates filled, and how long from serving the chain to full coverage.
    filled: u64,
    took: Duration,
    /// Live latencies (ms) of the heights seen during the fill, and of those seen after it.
    during: Vec<i64>,
    after: Vec<i64>,
}

impl FillRun {
    fn rate(&self) -> f64 {
        self.filled as f64 / self.took.as_secs_f64().max(1e-6)
    }

    fn print(&self, cpus: &str) {
        let on = if cpus.is_empty() {
            "every CPU".to_string()
        } else {
            format!("`--cpus {cpus}`")
        };
        let through = if self.public {
            format!(
                ", through a public-like upstream (60 ms, 300 calls/s, batches of 100), `--upstream-rate-limit {PUBLIC_BUDGET}`"
            )
        } else {
            String::new()
        };
        println!(
            "| certificate fill after a hash-chain catch-up of {} blocks (follower on {on}, live blocks every 50 ms{through}) | {:.0} certificates/s ({} in {:.2} s) | | |",
            self.height,
            self.rate(),
            self.filled,
            self.took.as_secs_f64()
        );
        println!(
            "| from serving the caught-up chain to the devnet's newest height (blocks produced during the catch-up) | {:.2} s | | |",
            self.gap_closed.as_secs_f64()
        );
        let summary = |latencies: &[i64]| {
            format!(
                "{} heights: p50 {} ms, p99 {} ms, max {} ms",
                latencies.len(),
                percentile(latencies, 0.5),
                percentile(latencies, 0.99),
                latencies.last().copied().unwrap_or_default()
            )
        };
        println!(
            "| live latency during the fill, devnet seen -> follower seen | {} | after the fill, same follower: {} | {:.2} (p99) |",
            summary(&self.during),
            summary(&self.after),
            percentile(&self.during, 0.99) as f64 / percentile(&self.after, 0.99).max(1) as f64
        );
    }
}

/// Live heights measured after the fill, the baseline of the latency during it.
const AFTER_FILL: u64 = 100;

/// Has the devnet in `chain_dir` (at `height`) produce a block every 50 ms while a fresh
/// follower catches up through the hash chain and fills every certificate; measures the fill
/// and the live latency during and after it.
async fn certificate_fill(
    dir: &Path,
    chain_dir: &Path,
    addr: &str,
    height: u64,
    follower_args: &[&str],
    limit: Duration,
    public: bool,
) -> FillRun {
    let producer = if public {
        devnet_with_args(
            chain_dir,
            EPOCH_LENGTH,
            addr,
            "50ms",
            height + 100_000,
            &["--public-node", "typical"],
        )
    } else {
        devnet(chain_dir, addr, "50ms", height + 100_000)
    };
    let (_devnet_ws, mut devnet_events) = subscribe(&producer.addr, 4096).await;
    let mut args = follower_args.to_vec();
    if public {
        args.extend(["--upstream-rate-limit", PUBLIC_BUDGET]);
    }
    let name = if public { "fill-public" } else { "fill" };
    let follower = CairnProcess::follower_with(
        cairn(),
        &chain_dir.join("chain.json"),
        &producer.addr,
        &dir.join(name),
        &dir.join(format!("{name}.log")),
        &args,
    )
    .with_rpc_addr_within(limit);
    // The address is printed once the caught-up chain is served: the fill may start then, and
    // does once the follower has closed the gap the catch-up left.
    let started = Instant::now();
    let serving_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let rpc = follower.http();
    let (_follower_ws, mut follower_events) = subscribe(&follower.addr, 4096).await;
    let mut upstream_seen: BTreeMap<u64, u64> = BTreeMap::new();
    let mut follower_seen: BTreeMap<u64, u64> = BTreeMap::new();
    let mut done: Option<(Duration, u64, u64, u64)> = None;
    // When the follower first reached the devnet's newest height: the gap the catch-up left
    // (blocks produced while it ran) is closed, and what follows is the fill beside live blocks.
    let mut at_tip: Option<(Duration, u64)> = None;
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            event = devnet_events.next() => record_seen(&mut upstream_seen, event),
            event = follower_events.next() => {
                record_seen(&mut follower_seen, event);
                let newest = |seen: &BTreeMap<u64, u64>| seen.keys().next_back().copied();
                if at_tip.is_none() && newest(&follower_seen) >= newest(&upstream_seen) {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |since| since.as_millis() as u64);
                    at_tip = Some((started.elapsed(), now_ms));
                }
            }
            _ = poll.tick(), if done.is_none() => {
                let (served, missing, filled) = certificate_coverage(&rpc).await;
                if served > 0 && missing == 0 {
                    let last = follower_seen.keys().next_back().copied().unwrap_or(height);
                    done = Some((started.elapsed(), filled, last, served));
                }
            }
            () = tokio::time::sleep(Duration::from_secs(60)) => panic!("no live event for a minute"),
        }
        if let Some((_, _, last, _)) = done
            && follower_seen
                .keys()
                .next_back()
                .is_some_and(|seen| *seen >= last + AFTER_FILL)
        {
            break;
        }
        assert!(started.elapsed() < limit, "the fill did not finish");
    }
    let (took, filled, last, served) = done.expect("finished");
    let (gap_closed, at_tip_ms) = at_tip.unwrap_or((Duration::ZERO, serving_ms));
    let latency = |heights: &mut dyn Iterator<Item = (&u64, &u64)>| {
        let mut latencies: Vec<i64> = heights
            .filter_map(|(height, seen)| {
                upstream_seen
                    .get(height)
                    .filter(|upstream| **upstream >= at_tip_ms)
                    .map(|upstream| *seen as i64 - *upstream as i64)
            })
            .collect();
        latencies.sort_unstable();
        latencies
    };
    let during = latency(&mut follower_seen.range(..=last));
    let after = latency(&mut follower_seen.range(last + 1..));
    follower.stop();
    producer.stop();
    FillRun {
        public,
        gap_closed,
        height: served,
        filled,
        took,
        during,
        after,
    }
}

/// Where the catch-up step's followers start from, and how far they go.
struct CatchUpTarget {
    chain: std::path::PathBuf,
    addr: String,
    dir: std::path::PathBuf,
    height: u64,
    limit: Duration,
}

impl CatchUpTarget {
    /// Starts a fresh follower `name` with `args` and measures its catch-up from genesis; the
    /// follower is returned still running.
    async fn fresh_follower(&self, name: &str, args: &[&str]) -> (CairnProcess, CatchUpRun) {
        let started = Instant::now();
        let follower = CairnProcess::follower_with(
            cairn(),
            &self.chain,
            &self.addr,
            &self.dir.join(name),
            &self.dir.join(format!("{name}.log")),
            args,
        )
        .with_rpc_addr();
        let peak = follow_to(&follower.http(), self.height, follower.id(), self.limit).await;
        let run = CatchUpRun {
            rate: self.height as f64 / started.elapsed().as_secs_f64(),
            cpu_ms: cpu_seconds(follower.id()) * 1000.0 / self.height as f64,
            peak,
        };
        (follower, run)
    }
}

/// What one catch-up from genesis measured.
struct CatchUpRun {
    /// Blocks per second, process start to serving the target.
    rate: f64,
    /// Follower CPU (user and system) per block, in ms.
    cpu_ms: f64,
    /// Sampled peak resident memory, in MiB.
    peak: f64,
}

/// What the memory step measured at one chain length.
struct MemoryRun {
    length: u64,
    peak_mib: f64,
    rate: f64,
}

/// Generates (or reuses, under `CAIRN_BENCH_CHAINS`) a chain of `length` blocks with `cairn
/// devnet --bulk`, and has a fresh follower catch up from genesis.
async fn memory_at(dir: &Path, length: u64, follower_args: &[&str], limit: Duration) -> MemoryRun {
    let kept = std::env::var_os("CAIRN_BENCH_CHAINS").map(std::path::PathBuf::from);
    let chain_dir = kept.as_ref().map_or_else(
        || dir.join(format!("chain-{length}")),
        |kept| kept.join(length.to_string()),
    );
    let until = length.to_string();
    let mut args = vec![
        "--epoch-length",
        EPOCH_LENGTH,
        "--full-dkg-at-epochs",
        "3",
        "--seed",
        "1",
        "--block-time",
        "0",
        "--until-height",
        &until,
        "--rpc-addr",
        "127.0.0.1:0",
    ];
    if !chain_dir.join("chain.json").exists() {
        args.extend(["--bulk", until.as_str()]);
    }
    let producer = CairnProcess::devnet(cairn(), &chain_dir, &args);
    producer.wait_for_line_within("reached --until-height", limit);
    let started = Instant::now();
    let follower = CairnProcess::follower_with(
        cairn(),
        &chain_dir.join("chain.json"),
        &producer.addr,
        &dir.join(format!("memory-follower-{length}")),
        &dir.join(format!("memory-follow-{length}.log")),
        follower_args,
    )
    .with_rpc_addr_within(limit);
    follow_to(&follower.http(), length, follower.id(), limit).await;
    let rate = length as f64 / started.elapsed().as_secs_f64();
    let (_, peak_mib) = rss_mib(follower.id());
    follower.stop();
    producer.stop();
    let _ = std::fs::remove_dir_all(dir.join(format!("memory-follower-{length}")));
    MemoryRun {
        length,
        peak_mib,
        rate,
    }
}

/// What the fan-out step measured.
struct FanOut {
    subscribers: usize,
    expected: u64,
    delivered: u64,
    missing: u64,
}

/// Subscribes `count` WebSocket clients to the follower at `addr`, then starts the producer
/// (`start`) and collects every subscriber's `finalized` events for heights `after + 1..=end`.
async fn fan_out(
    addr: &str,
    count: usize,
    after: u64,
    end: u64,
    start: impl FnOnce() -> CairnProcess,
) -> FanOut {
    let mut subscriptions = Vec::with_capacity(count);
    for _ in 0..count {
        subscriptions.push(subscribe(addr, 1024).await);
    }
    let producer = start();
    let tasks: Vec<_> = subscriptions
        .into_iter()
        .map(|(client, mut events)| {
            tokio::spawn(async move {
                let _client = client;
                let mut heights = std::collections::BTreeSet::new();
                while let Ok(Some(Ok(event))) =
                    tokio::time::timeout(Duration::from_secs(30), events.next()).await
                {
                    if let Event::Finalized { block, .. } = event {
                        let height = block.height.unwrap_or_default();
                        if height > after {
                            heights.insert(height);
                        }
                        if height >= end {
                            break;
                        }
                    }
                }
                heights
            })
        })
        .collect();
    let per_subscriber = end - after;
    let mut delivered = 0;
    let mut missing = 0;
    for task in tasks {
        let heights = task.await.expect("subscriber task");
        delivered += heights.len() as u64;
        missing += (after + 1..=end)
            .filter(|height| !heights.contains(height))
            .count() as u64;
    }
    producer.stop();
    FanOut {
        subscribers: count,
        expected: per_subscriber * count as u64,
        delivered,
        missing,
    }
}

/// Copies the directory tree at `from` to `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("directory created");
    for entry in std::fs::read_dir(from).expect("directory readable") {
        let entry = entry.expect("entry readable");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("file copied");
        }
    }
}

/// What the checkpoint-start step measured.
struct CheckpointRun {
    walk_ms: u64,
    boundaries: u64,
    with_walk: Duration,
    without_walk: Duration,
}

/// Starts `cairn follow --checkpoint latest` of a profile without its genesis header and
/// returns when the follower serves a block the devnet made after the follower started.
async fn start_to_first_live_block(
    profile: &Path,
    devnet: &CairnProcess,
    datadir: &Path,
    log: &Path,
    limit: Duration,
) -> (CairnProcess, Duration, Option<String>) {
    let devnet_rpc = devnet.http();
    let started = Instant::now();
    let above = block_number(&devnet_rpc).await;
    let follower = CairnProcess::follower_with(
        cairn(),
        profile,
        &devnet.addr,
        datadir,
        log,
        &["--checkpoint", "latest"],
    );
    let line = follower.wait_for_line_within("checkpoint ", limit);
    let walked = line.contains("verified: walked").then_some(line);
    let follower = follower.with_rpc_addr();
    let rpc = follower.http();
    loop {
        if block_number(&rpc).await > above {
            break;
        }
        assert!(started.elapsed() < limit, "no live block within the limit");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (follower, started.elapsed(), walked)
}

async fn checkpoint_start(dir: &Path, epochs: u64, limit: Duration) -> CheckpointRun {
    let devnet_dir = dir.join("ledger-devnet");
    let ledger_devnet = |block_time: &str, until: u64, rpc_addr: &str| {
        devnet_with_epochs(&devnet_dir, "5", rpc_addr, block_time, until)
    };
    let producer = ledger_devnet("0", epochs * 5 + 1, "127.0.0.1:0");
    producer.wait_for_line_within("reached --until-height", limit);
    let addr = producer.addr.clone();
    producer.stop();
    let producer = ledger_devnet("50ms", epochs * 5 + 100_000, &addr);
    let profile = dir.join("ledger-no-genesis-header.json");
    profile_without_genesis_header(
        &dir.join("ledger-devnet/chain.json"),
        &profile,
        serde_json::json!({}),
    );
    let datadir = dir.join("checkpoint-follower");
    let (follower, with_walk, line) =
        start_to_first_live_block(&profile, &producer, &datadir, &dir.join("cp.log"), limit).await;
    let line = line.expect("a fresh datadir walks");
    let number_after = |marker: &str| -> u64 {
        line.split(marker)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{marker:?} in {line}"))
    };
    let boundaries = number_after("walked ");
    let walk_ms = number_after(" in ");
    follower.stop();
    // The baseline: a fresh datadir holding only the checkpoint store of the first run (its
    // verified ledger and checkpoint), so the follower takes that checkpoint without walking.
    let baseline = dir.join("checkpoint-baseline");
    copy_dir(
        &datadir.join("store/follow-checkpoint"),
        &baseline.join("store/follow-checkpoint"),
    );
    let (follower, without_walk, walked) =
        start_to_first_live_block(&profile, &producer, &baseline, &dir.join("cp2.log"), limit)
            .await;
    assert!(
        walked.is_none(),
        "the copied checkpoint is taken without a walk"
    );
    follower.stop();
    producer.stop();
    CheckpointRun {
        walk_ms,
        boundaries,
        with_walk,
        without_walk,
    }
}
