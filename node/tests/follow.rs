//! `cairn follow` as real processes over loopback: a follower joins a devnet already past five
//! epochs (a full DKG among them), catches up, follows live, survives SIGKILL during catch-up and
//! during live following, reconnects across a devnet restart, and is itself followed; every
//! height it serves equals the devnet's, byte for byte. Bad command lines fail clearly.

use alloy_primitives::Bytes;
use cairn_tests::process::{
    CairnProcess, allowed_cpus, block_number, certificate_coverage, finalization,
    first_allowed_cpu, log_excerpt, profile_without_genesis_header, same_certificates,
    wait_for_height,
};
use jsonrpsee::{core::client::ClientT, http_client::HttpClient, rpc_params};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

#[path = "follow/clients.rs"]
mod clients;
#[path = "follow/disk.rs"]
mod disk;
#[path = "follow/operator.rs"]
mod operator;

fn cairn() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cairn"))
}

fn start_devnet(datadir: &Path, rpc_addr: &str, chain_id: &str) -> CairnProcess {
    CairnProcess::devnet(
        cairn(),
        datadir,
        &[
            "--epoch-length",
            "5",
            "--block-time",
            "40ms",
            "--full-dkg-at-epochs",
            "2",
            "--rpc-addr",
            rpc_addr,
            "--chain-id",
            chain_id,
        ],
    )
}

fn start_follower(chain: &Path, upstream: &str, datadir: &Path, log: &Path) -> CairnProcess {
    CairnProcess::follower(cairn(), chain, upstream, datadir, log)
}

async fn raw_block(client: &HttpClient, height: u64) -> Bytes {
    client
        .request(
            "debug_getRawBlock",
            rpc_params![alloy_primitives::U64::from(height)],
        )
        .await
        .unwrap_or_else(|err| panic!("raw block {height}: {err}"))
}

/// Every block in `heights` that `follower` serves is `reference`'s byte for byte, and every
/// certificate it serves is `reference`'s, boundaries included (epochs of 5). Waits first for
/// `reference` to reach the range's end: with several upstreams, the follower may be ahead of
/// the one it is compared with.
async fn assert_same_chain(
    follower: &HttpClient,
    reference: &HttpClient,
    heights: std::ops::RangeInclusive<u64>,
    what: &str,
) {
    wait_for_height(reference, *heights.end(), Duration::from_secs(120)).await;
    for height in heights.clone() {
        assert_eq!(
            raw_block(follower, height).await,
            raw_block(reference, height).await,
            "{what}: block {height}"
        );
    }
    same_certificates(follower, reference, heights, 5).await;
}

/// Epoch registrations logged across `logs`: epoch -> how many times.
fn registrations(logs: &[PathBuf]) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for log in logs {
        let text = std::fs::read_to_string(log).expect("log readable");
        for line in text.lines().filter(|line| line.contains("entered epoch")) {
            let epoch = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("epoch="))
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("registration line names its epoch: {line}"));
            *counts.entry(epoch).or_default() += 1;
        }
    }
    counts
}

/// The epochs and keys in a stopped follower's registry on disk, oldest first.
fn stored_epochs(datadir: &Path) -> Vec<(u64, cairn_dkg::Identity)> {
    use commonware_runtime::{Runner as _, Supervisor as _};
    let config =
        commonware_runtime::tokio::Config::new().with_storage_directory(datadir.join("store"));
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                commonware_runtime::tokio::Runner::new(config).start(|context| async move {
                    let registry = cairn_storage::registry::EpochRegistry::open(
                        context.child("registry"),
                        "follow-epochs",
                        std::num::NonZeroUsize::MAX,
                    )
                    .await
                    .expect("the registry opens");
                    registry.entries().await.expect("the registry reads")
                })
            })
            .join()
            .expect("reading the registry")
    })
}

/// The CPU list each thread of process `pid` may run on.
fn threads_allowed_cpus(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .filter_map(|status| allowed_cpus(&status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_catches_up_survives_kills_and_restarts_and_is_followed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let devnet_dir = dir.path().join("devnet");
    let chain = devnet_dir.join("chain.json");
    let mut devnet = start_devnet(&devnet_dir, "127.0.0.1:0", "1337");
    let devnet_addr = devnet.addr.clone();
    let devnet_rpc = devnet.http();
    // Six epochs of five blocks, the key of epoch 2 from a full DKG.
    wait_for_height(&devnet_rpc, 31, Duration::from_secs(120)).await;

    let a_dir = dir.path().join("a");
    let mut logs = Vec::new();
    let mut run = |n: usize| {
        let log = dir.path().join(format!("a-{n}.log"));
        logs.push(log.clone());
        start_follower(&chain, &devnet_addr, &a_dir, &log)
    };

    // Killed during catch-up (as soon as it has verified anything), then during live following.
    let a = run(1);
    wait_for_height(&a.http(), 1, Duration::from_secs(120)).await;
    a.kill();
    let a = run(2);
    let tip = block_number(&devnet_rpc).await;
    wait_for_height(&a.http(), tip, Duration::from_secs(120)).await;
    a.kill();
    let a = run(3);
    let tip = block_number(&devnet_rpc).await;
    wait_for_height(&a.http(), tip + 5, Duration::from_secs(120)).await;

    // The upstream restarts on the same address; the follower reconnects and converges.
    devnet.stop();
    devnet = start_devnet(&devnet_dir, &devnet_addr, "1337");
    let devnet_rpc = devnet.http();
    let tip = wait_for_height(&devnet_rpc, tip + 10, Duration::from_secs(120)).await;
    let a_rpc = a.http();
    wait_for_height(&a_rpc, tip, Duration::from_secs(120)).await;

    // A follower of the follower, its threads on one CPU.
    let b_log = dir.path().join("b.log");
    let cpu = first_allowed_cpu();
    let b = CairnProcess::follower_with(
        cairn(),
        &chain,
        &a.addr,
        &dir.path().join("b"),
        &b_log,
        &["--cpus", &cpu],
    )
    .with_rpc_addr();
    let b_rpc = b.http();
    let tip = block_number(&a_rpc).await;
    let served = wait_for_height(&b_rpc, tip + 3, Duration::from_secs(120)).await;

    let a_without = same_certificates(&a_rpc, &devnet_rpc, 1..=served, 5).await;
    let b_without = same_certificates(&b_rpc, &devnet_rpc, 1..=served, 5).await;
    eprintln!("heights 1..={served} held without a certificate: A {a_without}, B {b_without}");
    for h in 1..=served {
        let raw = raw_block(&devnet_rpc, h).await;
        assert_eq!(raw_block(&a_rpc, h).await, raw, "follower A block {h}");
        assert_eq!(raw_block(&b_rpc, h).await, raw, "follower B block {h}");
    }

    let threads = threads_allowed_cpus(b.id());
    assert!(threads.len() > 2, "the runtime's threads: {threads:?}");
    for allowed in &threads {
        assert_eq!(allowed, &cpu, "every thread of B on CPU {cpu}: {threads:?}");
    }

    b.stop();
    a.stop();
    devnet.stop();

    let a_registrations = registrations(&logs);
    let last_epoch = (served + 1) / 5 - 1;
    for epoch in 1..=last_epoch {
        assert_eq!(
            a_registrations.get(&epoch),
            Some(&1),
            "epoch {epoch} registered exactly once across three runs and two kills: {a_registrations:?}"
        );
    }
    let b_text = std::fs::read_to_string(&b_log).expect("log");
    assert!(
        b_text.contains("network identity rotated"),
        "the full DKG is noticed by the second-hand follower too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_command_lines_fail_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |args: &[&str]| {
        let output = Command::new(cairn())
            .args(args)
            .output()
            .expect("cairn runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let datadir = dir.path().join("f").display().to_string();

    let (code, stderr) = run(&[
        "follow",
        "--chain",
        "tempo-mainnet",
        "--upstream",
        "ftp://x",
        "--datadir",
        &datadir,
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--upstream"), "{stderr}");

    let missing = dir.path().join("missing.json").display().to_string();
    let (code, stderr) = run(&[
        "follow",
        "--chain",
        &missing,
        "--upstream",
        "127.0.0.1:1",
        "--datadir",
        &datadir,
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot load the chain profile"), "{stderr}");

    // Built-in Tempo profiles carry no genesis header: a genesis start is refused, and the
    // default checkpoint start needs a reachable upstream.
    let (code, stderr) = run(&[
        "follow",
        "--chain",
        "tempo-mainnet",
        "--upstream",
        "127.0.0.1:1",
        "--datadir",
        &datadir,
        "--checkpoint",
        "genesis",
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("genesis header"), "{stderr}");
    let (code, stderr) = run(&[
        "follow",
        "--chain",
        "tempo-mainnet",
        "--upstream",
        "127.0.0.1:1",
        "--datadir",
        &datadir,
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    let (code, stderr) = run(&[
        "follow",
        "--chain",
        "tempo-mainnet",
        "--checkpoint",
        "tip",
        "--datadir",
        &datadir,
    ]);
    assert_eq!(code, Some(2), "clap refuses a bad --checkpoint: {stderr}");
    assert!(stderr.contains("--checkpoint"), "{stderr}");

    // A datadir that belongs to another chain.
    let first = start_devnet(&dir.path().join("one"), "127.0.0.1:0", "1");
    let second = start_devnet(&dir.path().join("two"), "127.0.0.1:0", "2");
    let one = dir.path().join("one/chain.json");
    let two = dir.path().join("two/chain.json");

    // A profile that names no public endpoint needs --upstream.
    let (code, stderr) = run(&[
        "follow",
        "--chain",
        &one.display().to_string(),
        "--datadir",
        &datadir,
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--upstream is required"), "{stderr}");
    let follower = start_follower(
        &one,
        &first.addr,
        Path::new(&datadir),
        &dir.path().join("f.log"),
    );
    wait_for_height(&follower.http(), 1, Duration::from_secs(120)).await;
    follower.stop();
    let two = two.display().to_string();
    let (code, stderr) = run(&[
        "follow",
        "--chain",
        &two,
        "--upstream",
        &second.addr,
        "--datadir",
        &datadir,
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("belongs to a different chain"), "{stderr}");
    first.stop();
    second.stop();
}

/// A standard Ethereum client library (alloy's provider with Tempo's own `tempo-alloy` network
/// types) connects to a follower, reads blocks with full transaction objects, and finds every
/// transaction by hash with the same fields as in its block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_ethereum_client_reads_blocks_and_transactions_from_a_follower() {
    use alloy_provider::{Provider, ProviderBuilder};
    use tempo_alloy::TempoNetwork;

    let dir = tempfile::tempdir().expect("temp dir");
    let devnet_dir = dir.path().join("devnet");
    let devnet = start_devnet(&devnet_dir, "127.0.0.1:0", "4321");
    let follower = start_follower(
        &devnet_dir.join("chain.json"),
        &devnet.addr,
        &dir.path().join("follower"),
        &dir.path().join("follower.log"),
    );
    wait_for_height(&follower.http(), 12, Duration::from_secs(120)).await;

    let url = format!("http://{}", follower.addr)
        .parse()
        .expect("follower url");
    let provider = ProviderBuilder::new_with_network::<TempoNetwork>().connect_http(url);
    assert_eq!(provider.get_chain_id().await.expect("eth_chainId"), 4321);
    let version = provider
        .get_client_version()
        .await
        .expect("web3_clientVersion");
    assert!(version.starts_with("cairn/"), "{version}");
    assert!(provider.get_block_number().await.expect("eth_blockNumber") >= 12);

    let mut types = std::collections::BTreeSet::new();
    for height in 1..=12u64 {
        let block = provider
            .get_block_by_number(height.into())
            .full()
            .await
            .unwrap_or_else(|err| panic!("block {height}: {err}"))
            .unwrap_or_else(|| panic!("block {height} is served"));
        assert_eq!(block.header.inner.inner.inner.number, height);
        let transactions = block
            .transactions
            .as_transactions()
            .unwrap_or_else(|| panic!("block {height} has full transactions"));
        assert!(!transactions.is_empty(), "block {height} has transactions");
        for (index, tx) in transactions.iter().enumerate() {
            use alloy_consensus::{Typed2718 as _, transaction::TxHashRef as _};
            types.insert(tx.inner.inner().ty());
            assert_eq!(tx.block_number, Some(height));
            assert_eq!(tx.transaction_index, Some(index as u64));
            assert_eq!(tx.block_hash, Some(block.header.inner.hash));
            let hash = *tx.inner.inner().tx_hash();
            let by_hash = provider
                .get_transaction_by_hash(hash)
                .await
                .expect("eth_getTransactionByHash")
                .unwrap_or_else(|| panic!("transaction {hash} is indexed"));
            assert_eq!(
                serde_json::to_value(&by_hash).expect("serializes"),
                serde_json::to_value(tx).expect("serializes"),
                "transaction {hash} by hash equals the one in block {height}"
            );
            let raw = provider
                .get_raw_transaction_by_hash(hash)
                .await
                .expect("eth_getRawTransactionByHash")
                .expect("raw transaction served");
            use alloy_eips::eip2718::Encodable2718 as _;
            assert_eq!(raw.as_ref(), tx.inner.inner().encoded_2718().as_slice());
        }
        let count = provider
            .get_block_transaction_count_by_number(height.into())
            .await
            .expect("eth_getBlockTransactionCountByNumber");
        assert_eq!(count, Some(transactions.len() as u64));
    }
    assert_eq!(
        types,
        [0x00u8, 0x02, 0x76].into_iter().collect(),
        "legacy, EIP-1559 and Tempo transactions are all read"
    );
    let unknown = provider
        .get_transaction_by_hash(alloy_primitives::B256::repeat_byte(0xab))
        .await
        .expect("eth_getTransactionByHash");
    assert!(unknown.is_none());
    follower.stop();
    devnet.stop();
}

/// A follower with only the genesis outcome joins a devnet past 50 epochs (two full DKGs) at its
/// latest finalization: it walks every boundary, verifies the checkpoint, follows live from
/// there byte for byte, answers 503 below the checkpoint, and resumes after a restart without
/// walking again. A compiled identity that disagrees with the walk is refused with both keys,
/// and nothing of that walk is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_start_walks_the_boundaries_and_follows_from_the_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let devnet_dir = dir.path().join("devnet");
    let devnet = CairnProcess::devnet(
        cairn(),
        &devnet_dir,
        &[
            "--epoch-length",
            "5",
            "--block-time",
            "10ms",
            "--full-dkg-at-epochs",
            "2,30",
            "--rpc-addr",
            "127.0.0.1:0",
        ],
    );
    let devnet_rpc = devnet.http();
    wait_for_height(&devnet_rpc, 255, Duration::from_secs(240)).await;
    let chain = devnet_dir.join("chain.json");

    // A compiled identity that disagrees: the genesis key claimed for epoch 40 (after the full
    // DKGs of epochs 2 and 30).
    let genesis_identity = {
        let profile: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&chain).expect("chain.json"))
                .expect("json");
        let outcome = profile["genesisOutcome"]
            .as_str()
            .expect("outcome")
            .to_string();
        let output = Command::new(cairn())
            .args(["inspect", "dkg-outcome", "--json", &outcome])
            .output()
            .expect("inspect runs");
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
        value["identity"].as_str().expect("identity").to_string()
    };
    let wrong = dir.path().join("wrong-identity.json");
    profile_without_genesis_header(
        &chain,
        &wrong,
        serde_json::json!({"networkIdentities": [{"identity": format!("0x{genesis_identity}"), "fromEpoch": 40}]}),
    );
    let refused_dir = dir.path().join("refused");
    let output = Command::new(cairn())
        .args(["follow", "--chain"])
        .arg(&wrong)
        .args(["--upstream", &devnet.addr, "--datadir"])
        .arg(&refused_dir)
        .output()
        .expect("cairn runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("compiled for epoch 40") && stderr.contains(&genesis_identity),
        "{stderr}"
    );

    // The follower that starts from the latest finalization.
    let profile = dir.path().join("no-genesis-header.json");
    profile_without_genesis_header(&chain, &profile, serde_json::json!({}));
    let datadir = dir.path().join("follower");
    let log = dir.path().join("follower.log");
    let follower = CairnProcess::follower_with(
        cairn(),
        &profile,
        &devnet.addr,
        &datadir,
        &log,
        &["--checkpoint", "latest"],
    );
    let line = follower.wait_for_line("checkpoint ");
    let checkpoint: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|height| height.parse().ok())
        .unwrap_or_else(|| panic!("the checkpoint line names its height: {line}"));
    let walked: u64 = line
        .split("walked ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("the checkpoint line counts the boundaries: {line}"));
    assert!(checkpoint >= 255, "{line}");
    assert_eq!(
        walked,
        checkpoint / 5,
        "every boundary below the checkpoint: {line}"
    );
    assert!(line.contains("2 identity rotations"), "{line}");
    let follower = follower.with_rpc_addr();
    let follower_rpc = follower.http();
    let live = wait_for_height(&follower_rpc, checkpoint + 20, Duration::from_secs(120)).await;
    same_certificates(&follower_rpc, &devnet_rpc, checkpoint..=live, 5).await;
    for height in checkpoint..=live {
        assert_eq!(
            raw_block(&follower_rpc, height).await,
            raw_block(&devnet_rpc, height).await,
            "height {height}"
        );
    }
    let below: Result<serde_json::Value, _> = follower_rpc
        .request(
            "consensus_getFinalization",
            rpc_params![serde_json::json!({"height": checkpoint - 1})],
        )
        .await;
    let err = below.expect_err("below the checkpoint");
    assert!(
        err.to_string().contains("503") && err.to_string().contains("below this node's checkpoint"),
        "{err}"
    );

    // A restart resumes the stored chain without walking again.
    follower.stop();
    let restarted = CairnProcess::follower_with(
        cairn(),
        &profile,
        &devnet.addr,
        &datadir,
        &dir.path().join("restarted.log"),
        &["--checkpoint", "latest"],
    );
    let line = restarted.wait_for_line("checkpoint ");
    assert_eq!(
        line,
        format!(
            "checkpoint {checkpoint} taken from the datadir: resuming the chain started there (no boundary walk)"
        )
    );
    let restarted = restarted.with_rpc_addr();
    wait_for_height(&restarted.http(), live + 10, Duration::from_secs(120)).await;
    // Its identity history holds what the walk verified: the genesis identity and the full DKGs
    // of epochs 2 and 30, each with the boundary that announced it.
    let status: serde_json::Value = restarted
        .http()
        .request("cairn_status", rpc_params![])
        .await
        .expect("cairn_status answers");
    let history: Vec<(u64, Option<u64>)> = status["identities"]
        .as_array()
        .expect("an identity history")
        .iter()
        .map(|change| {
            (
                change["epoch"].as_u64().unwrap_or(u64::MAX),
                change["boundary"].as_u64(),
            )
        })
        .collect();
    assert_eq!(history, vec![(0, None), (2, Some(9)), (30, Some(149))]);

    // A start at a given height (a non-boundary block of epoch 20) serves from that height.
    let at_height = CairnProcess::follower_with(
        cairn(),
        &profile,
        &devnet.addr,
        &dir.path().join("at-height"),
        &dir.path().join("at-height.log"),
        &["--checkpoint", "102"],
    );
    let line = at_height.wait_for_line("checkpoint ");
    assert!(
        line.starts_with("checkpoint 102 (epoch 20) verified: walked 20 boundaries"),
        "{line}"
    );
    let at_height = at_height.with_rpc_addr();
    let at_height_rpc = at_height.http();
    wait_for_height(&at_height_rpc, 110, Duration::from_secs(120)).await;
    same_certificates(&at_height_rpc, &devnet_rpc, 102..=110, 5).await;
    assert_eq!(
        finalization(&at_height_rpc, 102).await,
        finalization(&devnet_rpc, 102).await,
        "the checkpoint's own certificate"
    );
    let below: Result<serde_json::Value, _> = at_height_rpc
        .request(
            "debug_getRawBlock",
            rpc_params![alloy_primitives::U64::from(101)],
        )
        .await;
    assert!(
        below
            .expect_err("below the checkpoint")
            .to_string()
            .contains("below this node's checkpoint 102"),
    );
    at_height.stop();

    // The same start with --backfill fetches the history under the checkpoint down to
    // genesis, linked through the parent hashes, and serves it.
    let backfilled = CairnProcess::follower_with(
        cairn(),
        &profile,
        &devnet.addr,
        &dir.path().join("backfilled"),
        &dir.path().join("backfilled.log"),
        &["--checkpoint", "102", "--backfill"],
    )
    .with_rpc_addr();
    let line = backfilled.wait_for_line_within("backfilled ", Duration::from_secs(120));
    assert!(
        line.starts_with("backfilled 102 blocks (0..=101) in "),
        "{line}"
    );
    let backfilled_rpc = backfilled.http();
    wait_for_height(&backfilled_rpc, 110, Duration::from_secs(120)).await;
    for height in 0..=110 {
        assert_eq!(
            raw_block(&backfilled_rpc, height).await,
            raw_block(&devnet_rpc, height).await,
            "backfilled block {height}"
        );
    }
    let earliest: serde_json::Value = backfilled_rpc
        .request("eth_getBlockByNumber", rpc_params!["earliest", false])
        .await
        .expect("earliest block");
    assert_eq!(earliest["number"], "0x0", "history reaches genesis");
    backfilled.stop();

    // The refused start kept nothing: the same datadir with the right profile walks from
    // genesis.
    let again = CairnProcess::follower_with(
        cairn(),
        &profile,
        &devnet.addr,
        &refused_dir,
        &dir.path().join("again.log"),
        &[],
    );
    let line = again.wait_for_line("checkpoint ");
    assert!(line.contains("(epochs 0.."), "{line}");
    let again = again.with_rpc_addr();
    wait_for_height(&again.http(), live, Duration::from_secs(120)).await;
    again.stop();
    restarted.stop();
    devnet.stop();
}

/// The next status line of `process` that contains `text`, among those read until `limit`
/// from now (lines already printed are read first).
fn status_line_within(process: &CairnProcess, text: &str, limit: Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        let line = process.wait_for_line_within("verified ", Duration::from_secs(10));
        if line.contains(text) {
            return Some(line);
        }
    }
    None
}

/// [`status_line_within`]; panics when no such line comes.
fn status_line_with(process: &CairnProcess, text: &str, limit: Duration) -> String {
    status_line_within(process, text, limit)
        .unwrap_or_else(|| panic!("no status line with {text:?} within {limit:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_several_upstreams_goes_on_when_one_dies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let devnet = start_devnet(&dir.path().join("devnet"), "127.0.0.1:0", "1337");
    let chain = dir.path().join("devnet").join("chain.json");
    let devnet_rpc = devnet.http();
    wait_for_height(&devnet_rpc, 8, Duration::from_secs(120)).await;
    let a = start_follower(
        &chain,
        &devnet.addr,
        &dir.path().join("a"),
        &dir.path().join("a.log"),
    );
    wait_for_height(&a.http(), 8, Duration::from_secs(120)).await;

    // Three upstreams: the devnet, a follower of it, and an address nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .to_string();
    let c_log = dir.path().join("c.log");
    let c = CairnProcess::follower_with(
        cairn(),
        &chain,
        &devnet.addr,
        &dir.path().join("c"),
        &c_log,
        &[
            "--upstream",
            &a.addr,
            "--upstream",
            &dead,
            "--status-interval",
            "200ms",
        ],
    );
    let c = c.with_rpc_addr();
    let following = c.wait_for_line("following ");
    assert!(
        following.contains(&devnet.addr)
            && following.contains(&a.addr)
            && following.contains(&dead),
        "{following}"
    );
    let c_rpc = c.http();
    let tip = block_number(&devnet_rpc).await;
    wait_for_height(&c_rpc, tip + 3, Duration::from_secs(120)).await;
    let line = status_line_with(&c, "upstreams 2/3 healthy", Duration::from_secs(30));
    assert!(
        line.contains(&format!("disconnected ws://{dead}")),
        "{line}"
    );

    // One live upstream dies; the follower goes on with the other.
    let a_addr = a.addr.clone();
    a.kill();
    let line = status_line_with(&c, "upstreams 1/3 healthy", Duration::from_secs(30));
    assert!(
        line.contains(&format!("disconnected ws://{a_addr}")),
        "{line}"
    );
    let tip = block_number(&devnet_rpc).await;
    let served = wait_for_height(&c_rpc, tip + 10, Duration::from_secs(120)).await;
    assert_same_chain(&c_rpc, &devnet_rpc, 1..=served, "three upstreams").await;
    c.stop();
    devnet.stop();
    let log = std::fs::read_to_string(&c_log).expect("log");
    assert!(
        !log.contains(Shown::Quarantined.logged()),
        "no honest or merely dead source is quarantined:\n{log}"
    );
}

/// Two upstreams answering as public nodes do (60 calls per second each, batches of at most 16,
/// no `debug_*`): the follower's catch-up is told "slow down" and slows down, both upstreams stay
/// healthy (a rate limit is neither invalid data nor a failure), and what it stores is the
/// devnet's chain byte for byte, certificates included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_nodes_saying_slow_down_are_never_quarantined_and_the_chain_is_stored_whole() {
    const TIP: u64 = 400;
    let dir = tempfile::tempdir().expect("temp dir");
    let until = TIP.to_string();
    let public = [
        "--until-height",
        &until,
        "--public-node",
        "5ms,60,16,no-debug",
    ];
    let a = bulk_devnet(&dir.path().join("a"), TIP, &public);
    let b = bulk_devnet(&dir.path().join("b"), TIP, &public);
    for devnet in [&a, &b] {
        devnet.wait_for_line("reached --until-height");
    }
    let log = dir.path().join("follower.log");
    let follower = CairnProcess::follower_with(
        cairn(),
        &dir.path().join("a").join("chain.json"),
        &a.addr,
        &dir.path().join("follower"),
        &log,
        &["--upstream", &b.addr, "--status-interval", "100ms"],
    )
    .with_rpc_addr();
    let follower_rpc = follower.http();
    wait_for_height(&follower_rpc, TIP, Duration::from_secs(180)).await;
    let slowed = status_line_within(&follower, "slowed down", Duration::from_secs(15));
    let text = std::fs::read_to_string(&log).expect("log");
    let slowed = slowed.unwrap_or_else(|| {
        panic!(
            "no status line shows calls refused with slow down:\n{}",
            log_excerpt(&text)
        )
    });
    assert!(slowed.contains("upstreams 2/2 healthy"), "{slowed}");
    for devnet in [&a, &b] {
        let url = format!("ws://{}", devnet.addr);
        assert!(
            !text
                .lines()
                .any(|line| line.contains(&url) && line.contains(Shown::Quarantined.logged())),
            "{url} only said slow down, yet was quarantined:\n{}",
            log_excerpt(&text)
        );
    }

    // The same chain, served again without the limits, is what the follower stored.
    a.stop();
    b.stop();
    let plain = CairnProcess::devnet(
        cairn(),
        &dir.path().join("a"),
        &[
            "--seed",
            "7",
            "--epoch-length",
            "10",
            "--until-height",
            &until,
            "--rpc-addr",
            "127.0.0.1:0",
        ],
    );
    let reference = plain.http();
    for height in 1..=TIP {
        assert_eq!(
            raw_block(&follower_rpc, height).await,
            raw_block(&reference, height).await,
            "block {height}"
        );
    }
    same_certificates(&follower_rpc, &reference, 1..=TIP, 10).await;
    follower.stop();
    plain.stop();
}

/// Waits until `client` reports at least `served` heights, every one with its own certificate;
/// how long that took, or `None` after `limit`.
async fn every_certificate_within(
    client: &HttpClient,
    served: u64,
    limit: Duration,
) -> Option<Duration> {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        let (now_served, missing, _) = certificate_coverage(client).await;
        if now_served >= served && missing == 0 {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_hash_chain_catch_up_every_height_gets_its_certificate_and_so_does_a_follower_of_it()
 {
    const TIP: u64 = 1_500;
    let dir = tempfile::tempdir().expect("temp dir");
    // After the bulk, the devnet goes on producing live blocks while the followers fill.
    let devnet = bulk_devnet(&dir.path().join("devnet"), TIP, &["--block-time", "100ms"]);
    devnet.wait_for_line("bulk: generated heights");
    let devnet_rpc = devnet.http();
    let chain = dir.path().join("devnet").join("chain.json");

    let first_log = dir.path().join("first.log");
    let first = CairnProcess::follower(
        cairn(),
        &chain,
        &devnet.addr,
        &dir.path().join("first"),
        &first_log,
    );
    let first_rpc = first.http();
    wait_for_height(&first_rpc, TIP, Duration::from_secs(120)).await;
    let text = std::fs::read_to_string(&first_log).expect("log");
    assert!(
        text.contains("caught up through the hash chain"),
        "{}",
        log_excerpt(&text)
    );
    let took = every_certificate_within(&first_rpc, TIP, Duration::from_secs(60)).await;
    let (served, missing, filled) = certificate_coverage(&first_rpc).await;
    let took = took.unwrap_or_else(|| {
        panic!(
            "after 60 s, {missing} of {served} heights without a certificate:\n{}",
            log_excerpt(&std::fs::read_to_string(&first_log).unwrap_or_default())
        )
    });
    eprintln!(
        "first follower: {filled} certificates filled, every height covered {took:?} after the catch-up"
    );
    assert!(filled > TIP / 2, "filled in the background: {filled}");
    assert_eq!(
        same_certificates(&first_rpc, &devnet_rpc, 1..=TIP, 10).await,
        0
    );
    // `cairn explain`: an interior block caught up through the hash chain now has its own
    // certificate; its bytes came from the devnet.
    let explained = explain_json(&first.addr, 700);
    assert_eq!(
        explained["authentication"]["kind"], "certificate",
        "{explained}"
    );
    assert_eq!(explained["bytes"]["how"], "catch-up", "{explained}");
    let source = explained["bytes"]["source"].as_str().unwrap_or_default();
    assert!(source.ends_with(&devnet.addr), "{explained}");
    assert_eq!(
        explained["trustRoot"]["kind"], "genesisOutcome",
        "{explained}"
    );
    let text = run_cairn(&["explain", "--rpc", &first.addr, "700"]);
    assert!(
        text.contains("authenticated by its own certificate"),
        "{text}"
    );
    assert!(text.contains("trust root: the genesis outcome"), "{text}");
    let text = run_cairn(&["explain", "--rpc", &first.addr, "99999999"]);
    assert!(text.contains("block 99999999 is not served"), "{text}");

    // A follower of the follower: it catches up from it through the hash chain, and fills from
    // it.
    let second_log = dir.path().join("second.log");
    let second = CairnProcess::follower(
        cairn(),
        &chain,
        &first.addr,
        &dir.path().join("second"),
        &second_log,
    );
    let second_rpc = second.http();
    wait_for_height(&second_rpc, TIP, Duration::from_secs(120)).await;
    let took = every_certificate_within(&second_rpc, TIP, Duration::from_secs(60)).await;
    let (served, missing, _) = certificate_coverage(&second_rpc).await;
    let took = took.unwrap_or_else(|| {
        panic!(
            "after 60 s, {missing} of {served} heights of the second follower without a certificate:\n{}",
            log_excerpt(&std::fs::read_to_string(&second_log).unwrap_or_default())
        )
    });
    eprintln!("second follower: every height covered {took:?} after the catch-up");
    assert_eq!(
        same_certificates(&second_rpc, &devnet_rpc, 1..=TIP, 10).await,
        0
    );
    let explained = explain_json(&second.addr, 700);
    let source = explained["bytes"]["source"].as_str().unwrap_or_default();
    assert!(source.ends_with(&first.addr), "{explained}");
    second.stop();
    first.stop();
    devnet.stop();
}

/// What `cairn` prints (its stdout and stderr) for `args`.
fn run_cairn(args: &[&str]) -> String {
    let output = std::process::Command::new(cairn())
        .args(args)
        .output()
        .expect("cairn runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `cairn explain --json HEIGHT` of the node at `addr`.
fn explain_json(addr: &str, height: u64) -> serde_json::Value {
    let text = run_cairn(&["explain", "--json", "--rpc", addr, &height.to_string()]);
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text}"))
}

/// A devnet with seed 7 (so that several of them produce one chain), epochs of 5 blocks and a
/// full DKG at epoch 2, with `extra` arguments.
fn seeded_devnet(datadir: &Path, extra: &[&str]) -> CairnProcess {
    seeded_devnet_at(datadir, "40ms", "127.0.0.1:0", extra)
}

/// [`seeded_devnet`] with its block time and RPC address.
fn seeded_devnet_at(datadir: &Path, block_time: &str, addr: &str, extra: &[&str]) -> CairnProcess {
    let mut args = vec!["--seed", "7"];
    args.extend_from_slice(extra);
    CairnProcess::small_devnet(cairn(), datadir, block_time, addr, &args)
}

/// A devnet with seed 7 and epochs of 10 that first generates `blocks` blocks at full speed,
/// with `extra` arguments.
fn bulk_devnet(datadir: &Path, blocks: u64, extra: &[&str]) -> CairnProcess {
    let blocks = blocks.to_string();
    let mut args = vec![
        "--seed",
        "7",
        "--epoch-length",
        "10",
        "--bulk",
        &blocks,
        "--rpc-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    CairnProcess::devnet(cairn(), datadir, &args)
}

/// What the follower shows of a byzantine source: its label in the status line and a phrase of
/// the `warn` line that logs it.
#[derive(Clone, Copy, Debug)]
enum Shown {
    Quarantined,
    Stalled,
    Flapping,
    Skipping,
}

impl Shown {
    fn label(self) -> &'static str {
        match self {
            Self::Quarantined => "quarantined",
            Self::Stalled => "stalled",
            Self::Flapping => "flapping",
            Self::Skipping => "skipping",
        }
    }

    fn logged(self) -> &'static str {
        match self {
            Self::Quarantined => "upstream served invalid data; quarantined",
            Self::Stalled => "upstream stalled",
            Self::Flapping => "upstream flapping",
            Self::Skipping => "upstream skipped heights",
        }
    }
}

/// Two honest devnets and one running `fault`, all with one seed; a follower of the three
/// (started once the chain is past height 12, so that it also fetches) must reach height 40
/// with the honest chain byte for byte, show the byzantine source as `shown` in its status
/// line and log, never quarantine it unless `shown` says so, and never show an honest source
/// as anything.
async fn follow_with_one_byzantine(dir: &Path, fault: &str, shown: Shown) {
    let honest_a = seeded_devnet(&dir.join("honest-a"), &[]);
    let honest_b = seeded_devnet(&dir.join("honest-b"), &[]);
    let byzantine = seeded_devnet(&dir.join("byzantine"), &["--fault", fault]);
    let chain = dir.join("honest-a").join("chain.json");
    let honest_rpc = honest_a.http();
    wait_for_height(&honest_rpc, 12, Duration::from_secs(120)).await;
    let log = dir.join("follower.log");
    let follower = CairnProcess::follower_with(
        cairn(),
        &chain,
        &honest_a.addr,
        &dir.join("follower"),
        &log,
        &[
            "--upstream",
            &byzantine.addr,
            "--upstream",
            &honest_b.addr,
            "--status-interval",
            "100ms",
        ],
    )
    .with_rpc_addr();
    let follower_rpc = follower.http();
    let served = wait_for_height(&follower_rpc, 40, Duration::from_secs(120)).await;
    let byzantine_url = format!("ws://{}", byzantine.addr);
    let status = status_line_within(
        &follower,
        &format!("{} {byzantine_url}", shown.label()),
        Duration::from_secs(15),
    );
    assert_same_chain(&follower_rpc, &honest_rpc, 1..=served, fault).await;
    follower.stop();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        status.is_some(),
        "{fault}: no status line shows {} {byzantine_url}:\n{}",
        shown.label(),
        log_excerpt(&text)
    );
    let logged = |phrase: &str, url: &str| {
        text.lines()
            .any(|line| line.contains(phrase) && line.contains(url))
    };
    assert!(
        logged(shown.logged(), &byzantine_url),
        "{fault}: the log shows {byzantine_url} as {}:\n{}",
        shown.label(),
        log_excerpt(&text)
    );
    if !matches!(shown, Shown::Quarantined) {
        assert!(
            !logged(Shown::Quarantined.logged(), &byzantine_url),
            "{fault}: {byzantine_url} served nothing invalid, yet was quarantined:\n{}",
            log_excerpt(&text)
        );
    }
    // An honest source is never punished nor shown misbehaving in its stream or connection.
    // It may be shown stalled: a devnet process starved of CPU by the other tests does stop
    // announcing while the other devnets go on, and that is what "stalled" reports.
    for honest in [&honest_a.addr, &honest_b.addr] {
        let url = format!("ws://{honest}");
        for shown in [Shown::Quarantined, Shown::Flapping, Shown::Skipping] {
            assert!(
                !logged(shown.logged(), &url),
                "{fault}: the honest {url} was shown as {}:\n{}",
                shown.label(),
                log_excerpt(&text)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_upstreams_one_lying_the_liar_is_quarantined_and_the_honest_chain_followed() {
    for fault in [
        "bad-signature:1",
        "wrong-digest:1",
        "malformed:1",
        "lie-on-fetch:1",
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        follow_with_one_byzantine(dir.path(), fault, Shown::Quarantined).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_upstreams_one_failing_the_failure_is_shown_never_punished_and_the_chain_followed() {
    // Withholding, stalling and dropping connections are not invalid data: an honest node that
    // is syncing or restarting does the same. The follower gets what it needs elsewhere, shows
    // the conduct, and quarantines no one.
    for (fault, shown) in [
        ("withhold-boundaries", Shown::Skipping),
        ("stall-after:15", Shown::Stalled),
        ("disconnect-every:300ms", Shown::Flapping),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        follow_with_one_byzantine(dir.path(), fault, shown).await;
    }
}

/// A follower started with the two chains at their first blocks meets the fork in the events
/// of one height; one started after both passed height 40 meets it where marshal's repair,
/// fetching from either upstream, delivers a block that does not extend the one below it. Both
/// stop with status 3 and one evidence file of two verifying certificates at one height.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_certificates_from_a_forked_devnet_end_the_follower_with_status_3() {
    let dir = tempfile::tempdir().expect("temp dir");
    let honest = seeded_devnet(&dir.path().join("honest"), &[]);
    let forked = seeded_devnet(&dir.path().join("forked"), &["--fork-at", "12"]);
    let chain = dir.path().join("honest").join("chain.json");
    halts_on_the_fork(dir.path(), "early", &chain, &honest.addr, &forked.addr);
    for devnet in [&honest, &forked] {
        wait_for_height(&devnet.http(), 40, Duration::from_secs(60)).await;
    }
    halts_on_the_fork(dir.path(), "late", &chain, &honest.addr, &forked.addr);
}

/// Runs a follower of `honest` and `forked` in `dir/name` and checks it halts with evidence.
fn halts_on_the_fork(dir: &Path, name: &str, chain: &Path, honest: &str, forked: &str) {
    let datadir = dir.join(name);
    let log = dir.join(format!("{name}.log"));
    let follower = CairnProcess::follower_with(
        cairn(),
        chain,
        honest,
        &datadir,
        &log,
        &["--upstream", forked],
    );
    let status = follower.wait();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        status,
        Some(3),
        "{name}: a safety fault exits with status 3:\n{}",
        log_excerpt(&log)
    );
    let evidence: Vec<PathBuf> = std::fs::read_dir(&datadir)
        .expect("datadir")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("evidence-"))
        })
        .collect();
    assert_eq!(evidence.len(), 1, "{name}: one evidence file: {evidence:?}");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&evidence[0]).expect("evidence"))
            .expect("evidence is JSON");
    let height = file["height"].as_u64().expect("height");
    assert!(
        height >= 12,
        "{name}: the chains agree below the fork: {height}"
    );
    assert_ne!(
        file["first"]["certified"]["block"], file["second"]["certified"]["block"],
        "{name}: two different blocks"
    );
    // Both certificates verify with `cairn inspect certificate`, which learns the epoch's key by
    // walking the boundaries from the profile's genesis outcome through the honest devnet.
    for side in ["first", "second"] {
        assert_eq!(
            file[side]["certified"]["block"]["header"]["number"],
            serde_json::json!(format!("{height:#x}")),
            "{name}: {side} is a block at the evidence's height"
        );
        let path = dir.join(format!("{name}-{side}.json"));
        std::fs::write(&path, file[side]["certified"].to_string()).expect("write side");
        let output = Command::new(cairn())
            .args(["inspect", "certificate", "--chain"])
            .arg(chain)
            .args(["--upstream", honest])
            .arg(&path)
            .output()
            .expect("inspect runs");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{name} {side}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_restarting_every_two_seconds_leaves_the_follower_within_a_block_time() {
    // Two minutes by default, as the goal is stated; CAIRN_RESTART_SECS shortens it.
    let seconds: u64 = cairn_tests::env_number("CAIRN_RESTART_SECS", 120);
    let block_time = Duration::from_millis(250);
    let dir = tempfile::tempdir().expect("temp dir");
    let steady = seeded_devnet_at(&dir.path().join("steady"), "250ms", "127.0.0.1:0", &[]);
    let restarting_dir = dir.path().join("restarting");
    let mut restarting = seeded_devnet_at(&restarting_dir, "250ms", "127.0.0.1:0", &[]);
    let restarting_addr = restarting.addr.clone();
    let chain = dir.path().join("steady").join("chain.json");
    let steady_rpc = steady.http();
    wait_for_height(&steady_rpc, 3, Duration::from_secs(60)).await;
    let follower = CairnProcess::follower_with(
        cairn(),
        &chain,
        &restarting_addr,
        &dir.path().join("follower"),
        &dir.path().join("follower.log"),
        &["--upstream", &steady.addr],
    )
    .with_rpc_addr();
    let follower_rpc = follower.http();
    let tip = block_number(&steady_rpc).await;
    wait_for_height(&follower_rpc, tip, Duration::from_secs(60)).await;

    // Sample both tips: when each height first appears at the steady upstream and at the
    // follower.
    let sampling = tokio::spawn({
        let (steady_rpc, follower_rpc) = (steady_rpc.clone(), follower_rpc.clone());
        async move {
            let mut upstream_seen = BTreeMap::new();
            let mut follower_seen = BTreeMap::new();
            let end = std::time::Instant::now() + Duration::from_secs(seconds);
            while std::time::Instant::now() < end {
                let now = std::time::Instant::now();
                upstream_seen
                    .entry(block_number(&steady_rpc).await)
                    .or_insert(now);
                follower_seen
                    .entry(block_number(&follower_rpc).await)
                    .or_insert(std::time::Instant::now());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The upstream's last sampled heights reach the follower a moment after the
            // sampling ended: sample the follower until it passes them, within a bound.
            let last = upstream_seen.keys().next_back().copied().unwrap_or(0);
            let bound = std::time::Instant::now() + Duration::from_secs(10);
            while follower_seen.keys().next_back().copied().unwrap_or(0) < last
                && std::time::Instant::now() < bound
            {
                follower_seen
                    .entry(block_number(&follower_rpc).await)
                    .or_insert(std::time::Instant::now());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (upstream_seen, follower_seen)
        }
    });
    let end = std::time::Instant::now() + Duration::from_secs(seconds);
    let mut restarts = 0;
    while std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(2)).await;
        restarting.kill();
        restarting = seeded_devnet_at(&restarting_dir, "250ms", &restarting_addr, &[]);
        restarts += 1;
    }
    let (upstream_seen, follower_seen) = sampling.await.expect("sampling");
    let mut largest = Duration::ZERO;
    let mut compared = 0;
    for (height, seen) in &upstream_seen {
        // The first height sampled is not when it appeared.
        if Some(height) == upstream_seen.keys().next() {
            continue;
        }
        let caught = follower_seen
            .range(height..)
            .next()
            .map(|(_, at)| *at)
            .expect("the follower reached every height the upstream did");
        largest = largest.max(caught.saturating_duration_since(*seen));
        compared += 1;
    }
    eprintln!(
        "{restarts} restarts in {seconds} s, {compared} heights: largest lag {} ms",
        largest.as_millis()
    );
    assert!(compared > 0);
    assert!(
        largest <= block_time + Duration::from_secs(1),
        "largest lag {largest:?} above one block time plus 1 s"
    );
    follower.stop();
    restarting.stop();
    steady.stop();
    // The restarting upstream is honest: shown as flapping, never quarantined.
    let log = std::fs::read_to_string(dir.path().join("follower.log")).expect("log");
    assert!(
        !log.contains(Shown::Quarantined.logged()),
        "an honest restarting upstream was quarantined:\n{log}"
    );
    assert!(
        log.lines()
            .any(|line| line.contains(Shown::Flapping.logged())
                && line.contains(&format!("ws://{restarting_addr}"))),
        "the restarting upstream is shown as flapping"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sigkills_lose_and_repeat_nothing() {
    use rand::{RngExt as _, SeedableRng as _};
    let kills: usize = cairn_tests::env_number("CAIRN_KILLS", 100);
    let dir = tempfile::tempdir().expect("temp dir");
    let upstreams: Vec<CairnProcess> = ["a", "b", "c"]
        .iter()
        .map(|name| seeded_devnet_at(&dir.path().join(name), "40ms", "127.0.0.1:0", &[]))
        .collect();
    let chain = dir.path().join("a").join("chain.json");
    let honest_rpc = upstreams[0].http();
    // A chain ahead of the follower, so that the first kills land during catch-up.
    wait_for_height(&honest_rpc, 60, Duration::from_secs(120)).await;
    let extra = [
        "--upstream",
        upstreams[1].addr.as_str(),
        "--upstream",
        upstreams[2].addr.as_str(),
    ];
    let datadir = dir.path().join("follower");
    let mut rng = rand::rngs::StdRng::seed_from_u64(100);
    let mut logs = Vec::new();
    let mut watermark = 0;
    let started = std::time::Instant::now();
    for run in 0..=kills {
        let log = dir.path().join(format!("follower-{run}.log"));
        logs.push(log.clone());
        let follower = CairnProcess::follower_with(
            cairn(),
            &chain,
            &upstreams[0].addr,
            &datadir,
            &log,
            &extra,
        )
        .with_rpc_addr();
        let rpc = follower.http();
        let resumed = block_number(&rpc).await;
        assert!(
            resumed >= watermark,
            "run {run} resumed at {resumed}, below the {watermark} served before the kill"
        );
        if run == kills {
            // The last run follows to the tip.
            let tip = block_number(&honest_rpc).await;
            let reached = wait_for_height(&rpc, tip, Duration::from_secs(120)).await;
            assert_same_chain(&rpc, &honest_rpc, 1..=reached, "after the kills").await;
            follower.stop();
            let counts = registrations(&logs);
            let last_epoch = (reached + 1) / 5 - 1;
            for epoch in 1..=last_epoch {
                assert!(
                    counts.get(&epoch).copied().unwrap_or(0) <= 1,
                    "epoch {epoch} registered more than once across {kills} kills: {counts:?}"
                );
            }
            // Registered at most once (the log), and held once with the key its boundary
            // announced (the registry on disk, which keeps the newest 64 epochs).
            let stored = stored_epochs(&datadir);
            let epochs: Vec<u64> = stored.iter().map(|(epoch, _)| *epoch).collect();
            let newest = epochs.last().copied().expect("the registry holds epochs");
            assert!(newest >= last_epoch, "{epochs:?}");
            let oldest = newest.saturating_sub(63);
            assert_eq!(
                epochs,
                (oldest..=newest).collect::<Vec<_>>(),
                "the registry holds each of the newest epochs once"
            );
            let profile = cairn_epoch::ChainProfile::load(&chain).expect("profile");
            for (epoch, identity) in stored.iter().filter(|(epoch, _)| *epoch <= last_epoch) {
                let expected = if *epoch == 0 {
                    *profile.genesis.identity()
                } else {
                    let boundary = epoch * 5 - 1;
                    let block = cairn_primitives::Block::decode_raw_rlp(
                        &raw_block(&honest_rpc, boundary).await,
                    )
                    .expect("boundary block");
                    *cairn_epoch::boundary_outcome(&profile.epochs, &block, &Default::default())
                        .expect("boundary outcome")
                        .identity()
                };
                assert_eq!(
                    *identity, expected,
                    "epoch {epoch} holds its boundary's key"
                );
            }
            eprintln!(
                "{kills} SIGKILLs in {:.1} s; the follower then reached height {reached} with every block and certificate the upstream serves",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..600))).await;
        watermark = block_number(&rpc).await;
        follower.kill();
    }
    for upstream in upstreams {
        upstream.stop();
    }
}

/// The height `eth_syncing` reports as current while a follower starts or catches up, or its
/// served height once it is synced; `None` when it does not answer.
async fn current_height(client: &HttpClient) -> Option<u64> {
    let syncing: alloy_rpc_types_eth::SyncStatus =
        client.request("eth_syncing", rpc_params![]).await.ok()?;
    match syncing {
        alloy_rpc_types_eth::SyncStatus::Info(info) => Some(info.current_block.to::<u64>()),
        alloy_rpc_types_eth::SyncStatus::None => Some(block_number(client).await),
    }
}

/// While a follower starts or catches up towards `tip`: `eth_blockNumber` answers 204 or a
/// height above 0, and `eth_syncing` is not `false` while the follower is more than 128 blocks
/// behind. Returns how many answers were checked.
async fn assert_honest_while_behind(client: &HttpClient, tip: u64) -> usize {
    let number: Result<alloy_primitives::U64, _> =
        client.request("eth_blockNumber", rpc_params![]).await;
    let served = match number {
        Ok(number) => {
            assert!(number.to::<u64>() > 0, "eth_blockNumber answered 0");
            Some(number.to::<u64>())
        }
        Err(jsonrpsee::core::ClientError::Call(err)) => {
            assert_eq!(err.code(), 204, "{err}");
            None
        }
        Err(_) => return 0,
    };
    let syncing: Result<alloy_rpc_types_eth::SyncStatus, _> =
        client.request("eth_syncing", rpc_params![]).await;
    if let Ok(alloy_rpc_types_eth::SyncStatus::None) = syncing {
        let served = served.unwrap_or(0);
        assert!(
            served + 128 >= tip,
            "eth_syncing false at {served}, {} behind",
            tip - served
        );
    }
    2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_at_random_points_of_a_long_catch_up_never_stop_a_restart() {
    use rand::{RngExt as _, SeedableRng as _};
    // The reported case: 12,000 blocks over epochs of 10 (1,200 boundaries, far more than the
    // 64 keys the registry keeps and than one epoch window), killed 20 times.
    let blocks: u64 = cairn_tests::env_number("CAIRN_CRASH_BLOCKS", 12_000);
    let kills: usize = cairn_tests::env_number("CAIRN_CRASH_KILLS", 20);
    let dir = tempfile::tempdir().expect("temp dir");
    let tip = blocks.to_string();
    let devnet = bulk_devnet(
        &dir.path().join("devnet"),
        blocks,
        &["--until-height", &tip],
    );
    let devnet_rpc = devnet.http();
    wait_for_height(&devnet_rpc, blocks, Duration::from_secs(600)).await;
    let chain = dir.path().join("devnet").join("chain.json");
    let datadir = dir.path().join("follower");
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let mut logs = Vec::new();
    let mut kill_heights = Vec::new();
    let mut stored = 0;
    let mut answers = 0;
    for run in 0..=kills {
        let log = dir.path().join(format!("follower-{run}.log"));
        logs.push(log.clone());
        let mut follower =
            CairnProcess::follower_with(cairn(), &chain, &devnet.addr, &datadir, &log, &[])
                .with_status_addr();
        let rpc = follower.http();
        if run == kills {
            let follower = follower.with_rpc_addr_within(Duration::from_secs(600));
            let rpc = follower.http();
            wait_for_height(&rpc, blocks, Duration::from_secs(600)).await;
            // Every block byte for byte, and the certificate of every boundary and the tip.
            let heights: Vec<u64> = (0..=blocks).collect();
            for chunk in heights.chunks(200) {
                let ours = futures::future::join_all(chunk.iter().map(|h| raw_block(&rpc, *h)));
                let theirs =
                    futures::future::join_all(chunk.iter().map(|h| raw_block(&devnet_rpc, *h)));
                let (ours, theirs) = futures::join!(ours, theirs);
                for ((height, ours), theirs) in chunk.iter().zip(ours).zip(theirs) {
                    assert_eq!(ours, theirs, "block {height} after {kills} kills");
                }
            }
            for height in (9..=blocks).step_by(10).chain([blocks]) {
                assert_eq!(
                    finalization(&rpc, height).await,
                    finalization(&devnet_rpc, height).await,
                    "certificate {height}"
                );
            }
            follower.stop();
            break;
        }
        // Even runs are killed at a random moment of their start-up (a debug build opens its
        // stores and walks a window of boundaries in a few seconds), odd ones at a random moment
        // after they stored a new batch of blocks, so that the kills spread over the catch-up.
        if run % 2 == 1 && stored < blocks {
            let progressed = std::time::Instant::now() + Duration::from_secs(30);
            while current_height(&rpc).await.unwrap_or(0) <= stored
                && std::time::Instant::now() < progressed
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let delay = Duration::from_millis(if run % 2 == 1 {
            rng.random_range(0..=200)
        } else {
            rng.random_range(100..=2_200)
        });
        let until = std::time::Instant::now() + delay;
        while std::time::Instant::now() < until {
            assert!(
                follower.exited().is_none(),
                "run {run} exited: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            answers += assert_honest_while_behind(&rpc, blocks).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stored = current_height(&rpc).await.unwrap_or(stored).max(stored);
        kill_heights.push((u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), stored));
        follower.kill();
    }
    for log in &logs {
        let text = std::fs::read_to_string(log).expect("log");
        assert!(
            !text.contains("panicked"),
            "{}: {}",
            log.display(),
            log_excerpt(&text)
        );
    }
    let during_catch_up = kill_heights.iter().filter(|(_, at)| *at < blocks).count();
    eprintln!(
        "{kills} SIGKILLs (ms after start, stored height seen last): {kill_heights:?}; {during_catch_up} before the catch-up ended; {answers} answers of eth_blockNumber and eth_syncing checked meanwhile; then every block of {blocks} equal to the devnet's"
    );
    assert!(during_catch_up >= kills / 2, "{kill_heights:?}");
    assert!(answers > 100, "{answers} start-up answers checked");
    devnet.stop();
}
