//! The `cairn` binary end to end: `inspect certificate` and `inspect dkg-outcome` on the real
//! Tempo fixtures, `inspect profile`, their exit statuses and their JSON output.

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
    assert_eq!(report["layout"], "legacy");

    // The same outcome in the TIP-1123 layout: without the next players (a 1-byte count and
    // 32 bytes each) and the full-DKG flag.
    let next = report["nextPlayers"].as_array().map_or(0, Vec::len);
    let legacy = hex.trim().trim_start_matches("0x");
    let compact = &legacy[..legacy.len() - 2 * (1 + 32 * next + 1)];
    let output = cairn(
        &[
            "inspect",
            "dkg-outcome",
            "--format",
            "tip1123",
            "--json",
            compact,
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(0));
    let tip1123 = json(&output);
    assert_eq!(tip1123["layout"], "tip1123");
    assert_eq!(tip1123["identity"], MAINNET_IDENTITY);
    assert_eq!(tip1123["players"], report["players"]);
    assert!(tip1123.get("nextPlayers").is_none() && tip1123.get("isNextFullDkg").is_none());
    let text = cairn(
        &["inspect", "dkg-outcome", "--format", "tip1123", compact],
        None,
    );
    assert!(String::from_utf8_lossy(&text.stdout).contains("layout         tip1123"));
    // Each layout is read strictly, and never as the other.
    for (format, bad) in [
        ("tip1123", format!("{compact}00")),
        ("tip1123", legacy.to_string()),
        ("legacy", compact.to_string()),
    ] {
        let output = cairn(&["inspect", "dkg-outcome", "--format", format, &bad], None);
        assert_eq!(output.status.code(), Some(2), "{format}: {bad}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(&format!("in the {format} layout")),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `cairn ARGS` in an environment holding only `env` (and PATH).
fn cairn_in_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("cairn runs")
}

fn settings(output: &Output) -> toml::Table {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .parse()
        .expect("--print-config prints TOML")
}

#[test]
fn settings_come_from_flags_over_environment_over_the_config_file_over_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cairn.toml");
    std::fs::write(
        &file,
        r#"
chain = "tempo-moderato"
rpc-addr = "127.0.0.1:1001"
metrics-addr = "127.0.0.1:2001"
verify = "every-block"
status-interval = "5s"
backfill = true
cpus = "1,0"
upstream = ["ws://file-a:1", "ws://file-b:2"]
"#,
    )
    .expect("config written");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let config = file.to_str().expect("utf-8");

    // Defaults only (the datadir is the chain's, in the platform data directory).
    let defaults = settings(&cairn_in_env(
        &["follow", "--chain", "tempo-mainnet", "--print-config"],
        &[("XDG_DATA_HOME", data), ("HOME", data)],
    ));
    assert_eq!(defaults["verify"].as_str(), Some("hash-chain"));
    assert_eq!(defaults["status-interval"].as_str(), Some("1s"));
    assert_eq!(defaults["rpc-max-connections"].as_integer(), Some(2048));
    assert_eq!(defaults["backfill"].as_bool(), Some(false));
    assert!(defaults.get("rpc-addr").is_none());
    assert!(defaults.get("cpus").is_none());
    // The built-in profile's public endpoint is the default upstream.
    assert_eq!(
        defaults["upstream"]
            .as_array()
            .and_then(|urls| urls.first())
            .and_then(|url| url.as_str()),
        Some("wss://rpc.presto.tempo.xyz")
    );
    assert_eq!(
        defaults["datadir"].as_str(),
        Some(format!("{data}/cairn/tempo-mainnet").as_str())
    );

    // The file over the defaults.
    let from_file = settings(&cairn_in_env(
        &["follow", "--config", config, "--print-config"],
        &[("XDG_DATA_HOME", data), ("HOME", data)],
    ));
    assert_eq!(from_file["chain"].as_str(), Some("tempo-moderato"));
    assert_eq!(from_file["rpc-addr"].as_str(), Some("127.0.0.1:1001"));
    assert_eq!(from_file["verify"].as_str(), Some("every-block"));
    assert_eq!(from_file["status-interval"].as_str(), Some("5s"));
    assert_eq!(from_file["backfill"].as_bool(), Some(true));
    assert_eq!(from_file["cpus"].as_str(), Some("0-1"));
    assert_eq!(from_file["upstream"].as_array().map(Vec::len), Some(2));
    assert_eq!(from_file["rpc-max-connections"].as_integer(), Some(2048));
    assert_eq!(
        from_file["datadir"].as_str(),
        Some(format!("{data}/cairn/tempo-moderato").as_str())
    );

    // The environment over the file (the file named by CAIRN_CONFIG), the flags over both.
    let layered = settings(&cairn_in_env(
        &["follow", "--rpc-addr", "127.0.0.1:3003", "--print-config"],
        &[
            ("XDG_DATA_HOME", data),
            ("HOME", data),
            ("CAIRN_CONFIG", config),
            ("CAIRN_RPC_ADDR", "127.0.0.1:1002"),
            ("CAIRN_METRICS_ADDR", "127.0.0.1:2002"),
            ("CAIRN_VERIFY", "hash-chain"),
            ("CAIRN_UPSTREAM", "ws://env-a:1,ws://env-b:2,ws://env-c:3"),
            ("CAIRN_CPUS", "0"),
        ],
    ));
    assert_eq!(layered["cpus"].as_str(), Some("0"));
    assert_eq!(layered["rpc-addr"].as_str(), Some("127.0.0.1:3003"));
    assert_eq!(layered["metrics-addr"].as_str(), Some("127.0.0.1:2002"));
    assert_eq!(layered["verify"].as_str(), Some("hash-chain"));
    assert_eq!(layered["upstream"].as_array().map(Vec::len), Some(3));
    assert_eq!(layered["status-interval"].as_str(), Some("5s"));
    assert_eq!(layered["chain"].as_str(), Some("tempo-moderato"));
}

#[test]
fn a_bad_config_file_is_an_error_that_names_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cairn.toml");
    std::fs::write(&file, "chain = \"tempo-mainnet\"\nrpc_adress = \"x\"\n").expect("written");
    let config = file.to_str().expect("utf-8");
    let output = cairn_in_env(&["follow", "--config", config, "--print-config"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown field"), "{stderr}");
    assert!(stderr.contains("rpc_adress"), "{stderr}");
    assert!(output.stdout.is_empty());

    std::fs::write(&file, "chain = \"tempo-mainnet\"\nverify = \"sometimes\"\n").expect("written");
    let output = cairn_in_env(&["follow", "--config", config, "--print-config"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sometimes"), "{stderr}");

    let missing = dir.path().join("missing.toml");
    let output = cairn_in_env(
        &["follow", "--config", missing.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no such file"));

    let output = cairn_in_env(&["follow", "--print-config"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--chain is required"));
}

#[test]
fn a_bad_cpu_list_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let datadir = dir.path().join("data");
    let datadir = datadir.to_str().expect("utf-8");
    let follow = |cpus: &str| {
        cairn_in_env(
            &[
                "follow",
                "--chain",
                "tempo-mainnet",
                "--upstream",
                "ws://127.0.0.1:9",
                "--datadir",
                datadir,
                "--cpus",
                cpus,
            ],
            &[],
        )
    };
    let output = follow("2-1");
    assert_eq!(
        output.status.code(),
        Some(2),
        "a malformed list is a usage error"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the range 2-1 runs backwards"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing created");

    // A CPU the machine does not have (no test machine has 1,024): refused before the datadir
    // is created.
    let output = follow("1023");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--cpus 1023"), "{stderr}");
    assert!(
        stderr.contains("CPU 1023 is not available to this process (it may use "),
        "{stderr}"
    );
    assert!(!dir.path().join("data").exists(), "nothing created");
}

#[test]
fn what_simplex_validators_cannot_run_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let datadir = dir.path().join("devnet");
    let datadir = datadir.to_str().expect("utf-8");
    let simplex = |extra: &[&str]| {
        let mut args = vec!["devnet", "--consensus", "simplex", "--datadir", datadir];
        args.extend_from_slice(extra);
        cairn(&args, None)
    };
    for (extra, says) in [
        (
            &["--full-dkg-at-epochs", "3"][..],
            "the identity never changes",
        ),
        (
            &["--committee", "4", "--epoch-length", "8"][..],
            "reshares need at least 12 blocks per epoch",
        ),
        (
            &["--validators", "3", "--committee", "4"][..],
            "--validators (3) must be at least --committee (4)",
        ),
        (
            &["--bulk", "100"][..],
            "--bulk is a mode of the certifying producer",
        ),
    ] {
        let output = simplex(extra);
        assert_eq!(output.status.code(), Some(1), "{extra:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
        assert!(!dir.path().join("devnet").exists(), "nothing created");
    }

    // A validator without its network file names it.
    let missing = dir.path().join("network.json");
    let output = cairn(
        &[
            "validator",
            "--network",
            missing.to_str().expect("utf-8"),
            "--index",
            "0",
            "--datadir",
            datadir,
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("network.json"), "{stderr}");
    assert!(!dir.path().join("devnet").exists(), "nothing created");
}

/// Output cut short (a reader that closed, as `| head` does) ends the command quietly.
#[test]
fn output_cut_short_exits_quietly() {
    let outcome = fixture("presto-genesis-extradata.hex");
    let commands: [&[&str]; 3] = [
        &["inspect", "dkg-outcome", outcome.to_str().expect("utf-8")],
        &["follow", "--chain", "tempo-mainnet", "--print-config"],
        &["follow", "--help"],
    ];
    for args in commands {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cairn starts");
        // Close the reading end before anything is read.
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("cairn exits");
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// Every flag of every subcommand is explained, and every flag that takes a value names its
/// default, or says it has none.
#[test]
fn help_explains_every_flag() {
    let subcommands: [&[&str]; 7] = [
        &["follow"],
        &["devnet"],
        &["status"],
        &["inspect", "certificate"],
        &["inspect", "dkg-outcome"],
        &["inspect", "profile"],
        &[],
    ];
    for subcommand in subcommands {
        let mut args = subcommand.to_vec();
        args.push("--help");
        let output = cairn_in_env(&args, &[]);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        let help = String::from_utf8_lossy(&output.stdout).to_string();
        // `--help` shows each option on its own line, its explanation on the lines after it;
        // an option that takes a value names its default (or says there is none).
        let lines: Vec<&str> = help.lines().collect();
        // Options are indented by at most 6 spaces, their explanations by 10.
        let is_option = |line: &str| {
            let trimmed = line.trim_start();
            line.len() - trimmed.len() <= 6 && trimmed.starts_with('-')
        };
        for (index, line) in lines.iter().enumerate() {
            if !is_option(line) {
                continue;
            }
            let block: Vec<&str> = lines[index + 1..]
                .iter()
                .take_while(|next| !is_option(next))
                .copied()
                .collect();
            let explanation = block.first().map_or("", |first| first.trim());
            assert!(
                !explanation.is_empty(),
                "{args:?}: {} is not explained",
                line.trim()
            );
            if line.contains('<') {
                assert!(
                    block.iter().any(|text| text.contains("[default")),
                    "{args:?}: {} does not name its default",
                    line.trim()
                );
            }
        }
    }
}

#[test]
fn a_profile_written_out_takes_a_new_identity_and_loads_again() {
    let output = cairn(&["inspect", "profile", "tempo-mainnet"], None);
    assert_eq!(output.status.code(), Some(0));
    let mut profile = json(&output);
    let identities = profile["networkIdentities"]
        .as_array_mut()
        .expect("networkIdentities");
    let from: Vec<u64> = identities
        .iter()
        .map(|identity| identity["fromEpoch"].as_u64().expect("fromEpoch"))
        .collect();
    assert_eq!(from, [0, 2042], "mainnet's compiled identities");
    // An identity published later, here the genesis key again from epoch 4000.
    let genesis = identities[0]["identity"].clone();
    identities.push(serde_json::json!({"identity": genesis, "fromEpoch": 4000}));
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tempo-mainnet.json");
    std::fs::write(&file, profile.to_string()).expect("write");
    let again = cairn(&["inspect", "profile", file.to_str().expect("utf-8")], None);
    assert_eq!(again.status.code(), Some(0));
    let again = json(&again);
    assert_eq!(again["name"], "tempo-mainnet", "the same datadir name");
    assert_eq!(again["networkIdentities"].as_array().map(Vec::len), Some(3));

    // A broken identity is refused with status 2, naming the file.
    profile["networkIdentities"][2]["identity"] = serde_json::json!("0x1234");
    std::fs::write(&file, profile.to_string()).expect("write");
    let refused = cairn(&["inspect", "profile", file.to_str().expect("utf-8")], None);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("tempo-mainnet.json"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
