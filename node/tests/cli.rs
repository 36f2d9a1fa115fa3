//! The `cairn` binary end to end: `inspect certificate` and `inspect dkg-outcome` on the real
//! Tempo fixtures, their exit statuses and their JSON output.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tempo")
        .join(name)
}

fn cairn(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairn starts");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    if let Some(text) = stdin {
        // A command that fails before reading its input may exit before it is written.
        if let Err(err) = pipe.write_all(text.as_bytes()) {
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::BrokenPipe,
                "stdin accepts input: {err}"
            );
        }
    }
    drop(pipe);
    child.wait_with_output().expect("cairn exits")
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is JSON ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

const BOUNDARY: &str = "presto-32723999-boundary.certified-block.json";
const REGULAR: &str = "presto-32724390.certified-block.json";
const MAINNET_IDENTITY: &str = "a217bb85001d4dcf8e5c50136f77af88cb2cab1857279b91c6240f41cca95c4f43f6dcab3e0dfb87dafb3ecbeb6251e90a5df2e6c47432482821cd8b84665ee4642589d2d9628a92b03e2bbfb00e006d038cd98def76d2a41b7c228c05f5a193";

#[test]
fn valid_certificates_exit_zero_with_the_verifying_identity() {
    let path = fixture(BOUNDARY);
    let output = cairn(
        &[
            "inspect",
            "certificate",
            "--chain",
            "tempo-mainnet",
            "--json",
            path.to_str().expect("utf-8"),
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(0));
    let report = json(&output);
    assert_eq!(report["valid"], true);
    assert_eq!(report["error"], serde_json::Value::Null);
    assert_eq!(report["height"], 32_723_999);
    assert_eq!(report["epoch"], 1514);
    assert_eq!(report["view"], 21_600);
    assert_eq!(
        report["digest"],
        "0x9e0a3e45043e93d58aae566b7a10595f4f738d276700c5f982479b6a0400555d"
    );
    assert_eq!(report["identity"], MAINNET_IDENTITY);
    assert_eq!(report["nextEpoch"]["epoch"], 1515);
    assert_eq!(report["nextEpoch"]["threshold"], 11);
    assert_eq!(
        report["nextEpoch"]["players"].as_array().map(Vec::len),
        Some(15)
    );

    let text = cairn(
        &[
            "inspect",
            "certificate",
            fixture(REGULAR).to_str().expect("utf-8"),
        ],
        None,
    );
    assert_eq!(
        text.status.code(),
        Some(0),
        "tempo-mainnet is the default chain"
    );
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("certificate VALID"), "{stdout}");
    assert!(stdout.contains("32724390"), "{stdout}");
}

#[test]
fn a_certificate_that_does_not_verify_exits_one_naming_the_check() {
    let path = fixture(REGULAR);
    let output = cairn(
        &[
            "inspect",
            "certificate",
            "--chain",
            "tempo-moderato",
            "--json",
            path.to_str().expect("utf-8"),
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    assert_eq!(report["valid"], false);
    assert_eq!(report["error"], "bad_signature");
    assert_eq!(report["height"], 32_724_390);
    assert_eq!(report["identity"], serde_json::Value::Null);

    // The regular certificate paired with the boundary block, through stdin.
    let mut swapped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(REGULAR)).expect("fixture"))
            .expect("json");
    let boundary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(BOUNDARY)).expect("fixture"))
            .expect("json");
    swapped["block"] = boundary["block"].clone();
    let output = cairn(
        &["inspect", "certificate", "--json", "-"],
        Some(&swapped.to_string()),
    );
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(json(&output)["error"], "digest_mismatch");
}

#[test]
fn malformed_input_exits_two() {
    let cases: [(&[&str], Option<&str>); 5] = [
        (&["inspect", "certificate", "--json", "-"], Some("not json")),
        (&["inspect", "certificate", "--json", "-"], Some("{}")),
        (
            &["inspect", "certificate", "--json", "-"],
            Some(
                r#"{"epoch":1,"view":1,"digest":"0x0000000000000000000000000000000000000000000000000000000000000000","certificate":"zz"}"#,
            ),
        ),
        (
            &["inspect", "certificate", "--json", "/no/such/file.json"],
            None,
        ),
        (
            &[
                "inspect",
                "certificate",
                "--chain",
                "/no/such/profile.json",
                "--json",
                "-",
            ],
            Some("{}"),
        ),
    ];
    for (args, stdin) in cases {
        let output = cairn(args, stdin);
        assert_eq!(output.status.code(), Some(2), "{args:?} {stdin:?}");
        let report = json(&output);
        assert_eq!(report["valid"], false);
        assert_eq!(report["error"], "malformed");
    }
}

#[test]
fn json_rpc_responses_are_accepted() {
    let certified: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(REGULAR)).expect("fixture"))
            .expect("json");
    let response = serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": certified});
    let output = cairn(
        &["inspect", "certificate", "--json", "-"],
        Some(&response.to_string()),
    );
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(json(&output)["valid"], true);

    // One side of a follower's evidence file is read as its certified block.
    let side = serde_json::json!({"source": "ws://127.0.0.1:8546", "certified": certified});
    let output = cairn(
        &["inspect", "certificate", "--json", "-"],
        Some(&side.to_string()),
    );
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(json(&output)["valid"], true);
}

#[test]
fn dkg_outcomes_decode_from_hex_files_and_stdin() {
    let path = fixture("presto-genesis-extradata.hex");
    let output = cairn(
        &[
            "inspect",
            "dkg-outcome",
            "--json",
            path.to_str().expect("utf-8"),
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(0));
    let report = json(&output);
    assert_eq!(report["epoch"], 0);
    assert_eq!(report["players"].as_array().map(Vec::len), Some(4));
    assert_eq!(report["threshold"], 3);
    assert_eq!(report["identity"], MAINNET_IDENTITY);
    assert_eq!(report["isNextFullDkg"], false);

    let hex = std::fs::read_to_string(&path).expect("fixture");
    let inline = cairn(&["inspect", "dkg-outcome", hex.trim()], None);
    assert_eq!(inline.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&inline.stdout);
    assert!(stdout.contains("threshold      3 of 4 players"), "{stdout}");

    let piped = cairn(&["inspect", "dkg-outcome", "--json", "-"], Some(&hex));
    assert_eq!(piped.status.code(), Some(0));
    assert_eq!(json(&piped)["epoch"], 0);

    for bad in ["0x00", "nothex", &format!("{}00", hex.trim())] {
        let output = cairn(&["inspect", "dkg-outcome", bad], None);
        assert_eq!(output.status.code(), Some(2), "{bad}");
    }
}
