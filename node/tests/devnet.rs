//! `cairn devnet` as a real process on an OS-chosen port: live `finalized` events over
//! WebSocket and `consensus_getFinalization` answers verify against the written chain profile
//! across reshares and a full DKG, raw blocks decode to the certified blocks, bad requests get
//! JSON-RPC errors, and a restart continues the chain. `cairn devnet --consensus simplex`: five
//! validator processes in committees of four reshare every epoch, serve one chain that verifies
//! from the genesis outcome, go on while one is killed, and are followed.

use cairn_epoch::{ChainProfile, decode_certificate};
use cairn_primitives::{Block, CertifiedBlock, Event, HeaderExt as _, Query};
use cairn_tests::{
    process::{CairnProcess, finalization},
    verify_chain,
};
use cairn_validator::status::ValidatorStatus;
use jsonrpsee::{core::client::ClientT, rpc_params};
use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

/// Starts `cairn devnet` on `datadir` with small epochs and an OS-chosen port.
fn start_devnet(datadir: &Path, extra: &[&str]) -> CairnProcess {
    let binary = Path::new(env!("CARGO_BIN_EXE_cairn"));
    CairnProcess::small_devnet(binary, datadir, "40ms", "127.0.0.1:0", extra)
}

/// The JSON-RPC error code of a failed call.
fn error_code(err: jsonrpsee::core::client::Error) -> i32 {
    match err {
        jsonrpsee::core::client::Error::Call(call) => call.code(),
        other => panic!("expected a JSON-RPC error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_and_finalizations_verify_across_rotations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let devnet = start_devnet(dir.path(), &["--until-height", "27"]);
    let (ws, mut subscription) = cairn_tests::subscribe(&devnet.addr, 1024).await;

    let mut events: BTreeMap<u64, CertifiedBlock> = BTreeMap::new();
    while events.keys().next_back() != Some(&27) {
        let event = tokio::time::timeout(Duration::from_secs(120), subscription.next())
            .await
            .expect("an event arrives in time")
            .expect("the subscription is open")
            .expect("the event parses");
        let Event::Finalized { block, seen } = event else {
            panic!("the devnet only emits finalized events");
        };
        assert!(seen > 0);
        let height = block.height.expect("height is set");
        assert!(
            events.insert(height, block).is_none(),
            "height {height} twice"
        );
    }

    let profile = ChainProfile::load(&dir.path().join("chain.json")).expect("chain.json loads");
    let http = devnet.http();
    let mut chain = Vec::new();
    for height in 1..=27 {
        let answer = finalization(&http, height).await;
        if let Some(event) = events.get(&height) {
            assert_eq!(&answer, event, "height {height}: event and query agree");
        }
        chain.push(answer);
    }
    let first_event = *events.keys().next().expect("events arrived");
    assert!(27 - first_event >= 15, "live events span several epochs");
    let identities = verify_chain(&profile, &chain);
    assert_eq!(identities.len(), 6, "epochs 0..=5");
    assert_eq!(identities[&0], identities[&1]);
    assert_ne!(
        identities[&1], identities[&2],
        "the full DKG at epoch 2 rotates the identity"
    );
    for epoch in 3..=5 {
        assert_eq!(identities[&epoch], identities[&2], "epoch {epoch} reshares");
    }

    // debug_getRawBlock decodes to the block the certificate signs.
    for height in [1u64, 4, 9, 27] {
        let raw: alloy_primitives::Bytes = http
            .request("debug_getRawBlock", rpc_params![format!("{height:#x}")])
            .await
            .expect("raw block");
        let block = Block::decode_raw_rlp(&raw).expect("raw block decodes");
        let certificate =
            decode_certificate(&chain[height as usize - 1].certificate).expect("decodes");
        assert_eq!(
            block.hash(),
            certificate.proposal.payload,
            "height {height}"
        );
        let header: alloy_primitives::Bytes = http
            .request("debug_getRawHeader", rpc_params![block.hash().0])
            .await
            .expect("raw header by hash");
        assert_eq!(header.as_ref(), block.header().rlp().as_slice());
    }
    let number: alloy_primitives::U64 = http
        .request("eth_blockNumber", rpc_params![])
        .await
        .expect("number");
    assert_eq!(number.to::<u64>(), 27);
    let by_hash: serde_json::Value = http
        .request("eth_getBlockByHash", rpc_params![chain[3].digest, false])
        .await
        .expect("block by hash");
    assert_eq!(by_hash["number"], "0x4");
    assert_eq!(by_hash["hash"], serde_json::json!(chain[3].digest));

    // `inspect --upstream` verifies the tip knowing only the genesis outcome.
    let tip_file = dir.path().join("tip.json");
    std::fs::write(&tip_file, serde_json::to_string(&chain[26]).expect("json")).expect("write");
    let profile_path = dir.path().join("chain.json");
    let output = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["inspect", "certificate", "--json", "--chain"])
        .arg(&profile_path)
        .args(["--upstream", &devnet.addr])
        .arg(&tip_file)
        .output()
        .expect("inspect runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json report");
    assert_eq!(report["epoch"], 5);
    assert_eq!(report["ledger"]["boundariesVerified"], 5);
    let runs = report["ledger"]["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "genesis and the full DKG at epoch 2");
    assert_eq!(runs[1]["fromEpoch"], 2);
    assert_eq!(runs[1]["boundaryHeight"], 9);
    assert_eq!(report["identity"], runs[1]["identity"]);
    // Without the walk (or a configured identity) epoch 5's key is unknown.
    let output = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["inspect", "certificate", "--json", "--chain"])
        .arg(&profile_path)
        .arg(&tip_file)
        .output()
        .expect("inspect runs");
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json report");
    assert_eq!(report["error"], "identity_unavailable");

    // Bad requests get JSON-RPC errors, and the server stays healthy.
    let unknown = http
        .request::<serde_json::Value, _>("consensus_nope", rpc_params![])
        .await;
    assert_eq!(error_code(unknown.expect_err("unknown method")), -32601);
    let above = http
        .request::<CertifiedBlock, _>(
            "consensus_getFinalization",
            rpc_params![Query::Height(1_000)],
        )
        .await;
    assert_eq!(error_code(above.expect_err("above the tip")), 503);
    let malformed = http
        .request::<CertifiedBlock, _>("consensus_getFinalization", rpc_params!["yesterday"])
        .await;
    assert_eq!(error_code(malformed.expect_err("malformed")), -32602);
    let malformed = http
        .request::<serde_json::Value, _>("eth_getBlockByNumber", rpc_params![[1, 2], "x"])
        .await;
    assert_eq!(error_code(malformed.expect_err("malformed")), -32602);

    // A client that disconnects mid-subscription leaves the server serving others.
    drop(subscription);
    drop(ws);
    let latest: serde_json::Value = http
        .request("consensus_getLatest", rpc_params![])
        .await
        .expect("healthy");
    assert_eq!(latest["finalized"]["height"], 27);
    assert!(latest["notarized"].is_null());

    devnet.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_devnet_continues_its_chain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = start_devnet(dir.path(), &["--until-height", "8"]);
    first.wait_for_line("reached --until-height 8");
    let http = first.http();
    let mut before = Vec::new();
    for height in 1..=8 {
        before.push(finalization(&http, height).await);
    }
    // A second process on the same datadir is refused while the first runs.
    let second = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["devnet", "--rpc-addr", "127.0.0.1:0", "--datadir"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by another cairn process"));
    first.stop();

    let second = start_devnet(dir.path(), &["--until-height", "16"]);
    second.wait_for_line("reached --until-height 16");
    let http = second.http();
    let mut after = Vec::new();
    for height in 1..=16 {
        after.push(finalization(&http, height).await);
    }
    assert_eq!(
        &after[..8],
        &before[..],
        "stored heights are served unchanged"
    );
    let profile = ChainProfile::load(&dir.path().join("chain.json")).expect("chain.json loads");
    let identities = verify_chain(&profile, &after);
    assert_eq!(identities.len(), 4, "epochs 0..=3");
    for pair in after.windows(2) {
        let parent = pair[0].block.as_ref().expect("block");
        let child = pair[1].block.as_ref().expect("block");
        assert_eq!(child.parent(), parent.hash(), "height {}", child.height());
    }
    second.stop();
}

/// `eth_blockNumber` of every validator in `network`.
async fn validator_heights(clients: &[jsonrpsee::http_client::HttpClient]) -> Vec<u64> {
    let mut heights = Vec::with_capacity(clients.len());
    for client in clients {
        heights.push(cairn_tests::process::block_number(client).await);
    }
    heights
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simplex_validators_reshare_every_epoch_survive_a_kill_and_are_followed() {
    const EPOCH: u64 = 20;
    const EPOCHS: u64 = 6;
    let binary = Path::new(env!("CARGO_BIN_EXE_cairn"));
    let dir = tempfile::tempdir().expect("temp dir");
    let devnet = CairnProcess::simplex_devnet(binary, dir.path(), 5, 4);
    let network_path = dir.path().join("network.json");
    let network = cairn_validator::process::NetworkFile::load(&network_path).expect("network.json");
    let clients: Vec<_> = network
        .validators
        .iter()
        .map(|member| {
            jsonrpsee::http_client::HttpClientBuilder::default()
                .build(format!("http://{}", member.rpc))
                .expect("http client")
        })
        .collect();
    let tip = EPOCH * EPOCHS;
    for client in &clients {
        cairn_tests::process::wait_for_height(client, tip, Duration::from_secs(300)).await;
    }

    // Every validator serves the same blocks and certificates, which verify from the genesis
    // outcome with each epoch's key registered from its boundary: one identity throughout.
    let profile = ChainProfile::load(&dir.path().join("chain.json")).expect("chain.json loads");
    let mut chain = Vec::new();
    for height in 1..=tip {
        let first = finalization(&clients[0], height).await;
        for client in &clients[1..] {
            assert_eq!(finalization(client, height).await, first, "height {height}");
        }
        chain.push(first);
    }
    let identities = cairn_tests::verify_chain(&profile, &chain);
    assert_eq!(
        identities.len() as u64,
        EPOCHS + 1,
        "epochs 0..={EPOCHS} verified"
    );
    let mut distinct: Vec<_> = identities.values().collect();
    distinct.dedup();
    assert_eq!(distinct.len(), 1, "resharing keeps the identity");
    // Each certificate verifies with `cairn inspect` and the chain profile alone (which
    // records the network identity, as Tempo's chainspecs do).
    for certified in &chain {
        let file = dir.path().join("certified.json");
        std::fs::write(&file, serde_json::to_string(certified).expect("json")).expect("written");
        let inspect = Command::new(binary)
            .args(["inspect", "certificate", "--chain"])
            .arg(dir.path().join("chain.json"))
            .arg(&file)
            .output()
            .expect("inspect runs");
        assert!(inspect.status.success(), "{inspect:?}");
    }

    // A follower that starts after six epochs, given every validator, catches up and serves
    // the same chain.
    let upstreams: Vec<String> = network
        .validators
        .iter()
        .map(|member| format!("ws://{}", member.rpc))
        .collect();
    let follower = CairnProcess::follower_with(
        binary,
        &dir.path().join("chain.json"),
        &upstreams.join(","),
        &dir.path().join("follower"),
        &dir.path().join("follower.log"),
        &[],
    );
    let follower = follower.with_rpc_addr();
    let caught_up = follower.wait_for_line("caught up ");
    assert!(caught_up.contains("through the hash chain"), "{caught_up}");
    let follower_http = follower.http();
    cairn_tests::process::wait_for_height(&follower_http, tip, Duration::from_secs(300)).await;
    // It registered each epoch's key from its boundary: one identity, from genesis on.
    let status: serde_json::Value = follower_http
        .request("cairn_status", rpc_params![])
        .await
        .expect("cairn_status");
    let identities = status["identities"].as_array().expect("identities");
    assert_eq!(identities.len(), 1, "{identities:?}");
    for height in 1..=tip {
        assert_eq!(
            finalization(&follower_http, height).await,
            chain[height as usize - 1],
            "the follower at {height}"
        );
    }

    // Validator 3 killed for ten seconds: committees of four tolerate one fault, so the others
    // go on, skipping its views as leader.
    let killed = Command::new("pkill")
        .args(["-KILL", "-f", "validator --network .* --index 3 "])
        .status()
        .expect("pkill runs");
    assert!(killed.success(), "validator 3 was running");
    let at_kill = cairn_tests::process::block_number(&clients[0]).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = cairn_tests::process::block_number(&clients[0]).await;
    assert!(
        after > at_kill + 3,
        "the chain goes on: {at_kill} -> {after}"
    );
    let mut skipped = 0;
    for height in at_kill + 1..=after {
        let certified = finalization(&clients[0], height).await;
        let header = certified.block.expect("block").header().clone();
        let context = header.consensus_context.expect("context");
        if context.view > context.parent_view + 1 {
            skipped += 1;
        }
    }
    assert!(skipped > 0, "views were skipped while it was down");
    let followed = cairn_tests::process::block_number(&follower_http).await;
    assert!(
        followed + 5 >= after,
        "the follower keeps up: {followed} of {after}"
    );

    // Restarted on its datadir, it catches up from its peers and serves the same chain.
    let log = std::fs::File::create(dir.path().join("restarted.log")).expect("log");
    let restarted = CairnProcess::start(
        binary,
        [
            "validator".as_ref(),
            "--network".as_ref(),
            network_path.as_os_str(),
            "--index".as_ref(),
            "3".as_ref(),
            "--datadir".as_ref(),
            dir.path().join("validators").join("3").as_os_str(),
        ],
        std::process::Stdio::from(log),
    );
    let now = *validator_heights(&clients)
        .await
        .iter()
        .max()
        .expect("heights");
    cairn_tests::process::wait_for_height(&clients[3], now, Duration::from_secs(120)).await;
    for height in [at_kill, after, now] {
        assert_eq!(
            finalization(&clients[3], height).await.block,
            finalization(&clients[0], height).await.block,
            "the restarted validator at {height}"
        );
    }
    // It missed the ceremonies run while it was down; it takes part again from the finalized
    // outcomes (glue's reshare follows them), so it leads blocks again.
    let key = &network.validators[3].public_key;
    let mut height = now;
    let led = loop {
        height += 1;
        cairn_tests::process::wait_for_height(&clients[0], height, Duration::from_secs(120)).await;
        let certified = finalization(&clients[0], height).await;
        let header = certified.block.expect("block").header().clone();
        let proposer = header.consensus_context.expect("context").proposer;
        if alloy_primitives::hex::encode(alloy_primitives::B256::from(proposer)) == *key {
            break height;
        }
        assert!(
            height < now + 200,
            "validator 3 leads no block after its restart"
        );
    };
    assert!(led > now);

    // Each validator's `cairn_status` tells its place and what its chain went through: validator
    // 0 counted the views skipped while 3 was down; the restarted one rebuilt its committees
    // and identity from the boundaries it had stored.
    let status: serde_json::Value = clients[0]
        .request("cairn_status", rpc_params![])
        .await
        .expect("cairn_status");
    assert_eq!(status["role"], "validator", "{status}");
    let first: ValidatorStatus = serde_json::from_value(status).expect("a validator's status");
    assert_eq!(
        (first.index, first.chain.clone()),
        (0, network.chain_id.to_string())
    );
    assert!(first.skipped_views >= skipped, "{first:?}");
    assert!(first.verified_height >= led, "{first:?}");
    let shown = Command::new(binary)
        .args(["status", "--rpc", &network.validators[3].rpc.to_string()])
        .output()
        .expect("cairn status runs");
    assert!(shown.status.success(), "{shown:?}");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.starts_with("validator 3 of chain "), "{shown}");
    assert!(shown.contains("  epoch 0 from genesis: "), "{shown}");
    let epoch = now / EPOCH;
    assert!(
        shown.contains(&format!("  epoch {epoch} (heights {}..=", epoch * EPOCH)),
        "the committee of epoch {epoch} is listed: {shown}"
    );
    restarted.stop();
    devnet.stop();
}
