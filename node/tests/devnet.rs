//! `cairn devnet` as a real process on an OS-chosen port: live `finalized` events over
//! WebSocket and `consensus_getFinalization` answers verify against the written chain profile
//! across reshares and a full DKG, raw blocks decode to the certified blocks, bad requests get
//! JSON-RPC errors, and a restart continues the chain.

use cairn_epoch::{ChainProfile, decode_certificate};
use cairn_primitives::{Block, CertifiedBlock, Event, HeaderExt as _, Query};
use cairn_tests::{
    process::{CairnProcess, finalization},
    verify_chain,
};
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
