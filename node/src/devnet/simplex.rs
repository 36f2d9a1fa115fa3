//! `cairn devnet --consensus simplex`: real simplex validators, each its own `cairn validator`
//! process with its own datadir, resharing the key every epoch through commonware-glue; the
//! devnet writes their network file and the chain profile, starts them (and `--followers`),
//! prints an epoch line per epoch and a status line per second, and stops them on Ctrl-C.

use super::{DevnetArgs, start_followers, write_atomically};
use crate::common::shutdown_signal;
use alloy_primitives::hex;
use cairn_primitives::Block;
use cairn_validator::{
    ValidatorBlock, ValidatorPayload,
    committee::Committees,
    process::{KeyFile, Member, NetworkFile},
};
use commonware_cryptography::{
    Signer as _,
    bls12381::{dkg::feldman_desmedt::deal, primitives::sharing::Mode},
    ed25519,
};
use commonware_glue::dkg::ReshareBlock as _;
use commonware_math::algebra::Random as _;
use commonware_utils::N3f1;
use eyre::{WrapErr, bail, eyre};
use jsonrpsee::{core::client::ClientT as _, http_client::HttpClientBuilder, rpc_params};
use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// The shortest epoch glue's reshare takes: dealers post their logs in the second half, and
/// every dealer needs a turn as leader there.
fn min_epoch_length(committee: usize) -> u64 {
    2 * committee as u64 + 4
}

/// Refuses what only the certifying producer does, and committees or epochs simplex
/// validators cannot run.
pub(super) fn check(args: &DevnetArgs) -> eyre::Result<()> {
    if !args.full_dkg_at_epochs.is_empty() {
        bail!(
            "--consensus simplex cannot run --full-dkg-at-epochs: commonware-glue 2026.10.0's \
             reshare always starts from the previous output, so the identity never changes; \
             use --consensus certify (the default) to show an identity rotation"
        );
    }
    for (set, flag) in [
        (args.bulk.is_some(), "--bulk"),
        (!args.faults.is_empty(), "--fault"),
        (args.fork_at.is_some(), "--fork-at"),
        (args.tip1123_time.is_some(), "--tip1123-time"),
        (args.public_node.is_some(), "--public-node"),
    ] {
        if set {
            bail!("{flag} is a mode of the certifying producer (--consensus certify)");
        }
    }
    if args.committee == 0 || args.validators < args.committee {
        bail!(
            "--validators ({}) must be at least --committee ({}), which must be at least 1",
            args.validators,
            args.committee
        );
    }
    let shortest = min_epoch_length(args.committee);
    if args.epoch_length < shortest {
        bail!(
            "--epoch-length {} is too short for committees of {}: reshares need at least {shortest} \
             blocks per epoch (dealers post their logs in the second half of the epoch)",
            args.epoch_length,
            args.committee
        );
    }
    Ok(())
}

/// Ports a validator is given when the OS chooses: below the range Linux hands out for
/// `:0` and outgoing connections (32768 and up), so that nothing opened between this choice
/// and the validator's start can take the port.
const CHOSEN_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port free now on 127.0.0.1, from [`CHOSEN_PORTS`] if one of a few tries is free.
fn free_port() -> eyre::Result<u16> {
    let mut rng = rand::rng();
    for _ in 0..64 {
        let port = rand::RngExt::random_range(&mut rng, CHOSEN_PORTS);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").wrap_err("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Creates the network file, the key files and the chain profile of a new chain in `datadir`.
fn create(args: &DevnetArgs, datadir: &Path) -> eyre::Result<NetworkFile> {
    let mut rng = match args.seed {
        Some(seed) => <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed),
        None => <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng()),
    };
    let keys: Vec<ed25519::PrivateKey> = (0..args.validators)
        .map(|_| ed25519::PrivateKey::random(&mut rng))
        .collect();
    let pool: Vec<_> = keys.iter().map(|key| key.public_key()).collect();
    let committees = Committees::new(pool.clone(), args.committee);
    let players = committees.players(0);
    let (output, shares) = deal::<_, _, N3f1>(&mut rng, Mode::NonZeroCounter, players.clone())
        .map_err(|err| eyre!("dealing the genesis key: {err:?}"))?;
    let rpc: SocketAddr = args
        .rpc_addr
        .parse()
        .map_err(|err| eyre!("--rpc-addr {}: {err}", args.rpc_addr))?;
    let mut validators = Vec::with_capacity(args.validators);
    for (index, key) in pool.iter().enumerate() {
        let rpc_port = match rpc.port() {
            0 => free_port()?,
            port => port
                .checked_add(index as u16)
                .ok_or_else(|| eyre!("--rpc-addr: port {port} plus {index} is out of range"))?,
        };
        validators.push(Member {
            public_key: hex::encode(commonware_codec::Encode::encode(key)),
            p2p: SocketAddr::new(rpc.ip(), free_port()?),
            rpc: SocketAddr::new(rpc.ip(), rpc_port),
        });
    }
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    let network = NetworkFile {
        chain_id: args.chain_id,
        epoch_length: args.epoch_length,
        committee: args.committee,
        validators,
        genesis: String::new(),
        leader_timeout_ms: 1_000,
    };
    let blocks = network.blocks().map_err(|err| eyre!(err))?;
    let genesis = cairn_validator::genesis(output, players, millis, &blocks)?;
    let raw = genesis
        .block()
        .raw_rlp()
        .ok_or_else(|| eyre!("the genesis block has no body"))?;
    let network = NetworkFile {
        genesis: hex::encode(raw),
        ..network
    };
    for (index, key) in keys.iter().enumerate() {
        let dir = datadir.join("validators").join(index.to_string());
        std::fs::create_dir_all(&dir).wrap_err_with(|| format!("creating {}", dir.display()))?;
        let file = KeyFile::new(key, shares.get_value(&key.public_key()));
        write_atomically(&dir.join("key.json"), &serde_json::to_string_pretty(&file)?)?;
    }
    write_atomically(
        &datadir.join("network.json"),
        &serde_json::to_string_pretty(&network)?,
    )?;
    write_atomically(
        &datadir.join("chain.json"),
        &cairn_validator::chain_profile(
            "cairn-devnet-simplex",
            args.chain_id,
            args.epoch_length,
            &genesis,
        )
        .map_err(|err| eyre!(err))?
        .to_json(),
    )?;
    Ok(network)
}

/// A validator child process, stopped when dropped; it also stops by itself when the devnet
/// is gone (its standard input, a pipe from the devnet, closes).
struct ValidatorProcess(Child, bool);

impl ValidatorProcess {
    /// How the process ended, the first time it is seen ended.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.1 {
            return None;
        }
        let status = self.0.try_wait().ok().flatten()?;
        self.1 = true;
        Some(status)
    }
}

impl Drop for ValidatorProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts validator `index` on `network_path`, its log in its datadir.
fn start_validator(datadir: &Path, network_path: &Path, index: usize) -> eyre::Result<Child> {
    let dir = datadir.join("validators").join(index.to_string());
    let log_path = dir.join("validator.log");
    let log =
        File::create(&log_path).wrap_err_with(|| format!("creating {}", log_path.display()))?;
    let binary = std::env::current_exe().wrap_err("locating the cairn binary")?;
    Command::new(binary)
        .arg("validator")
        .arg("--network")
        .arg(network_path)
        .arg("--index")
        .arg(index.to_string())
        .arg("--datadir")
        .arg(&dir)
        .arg("--stop-with-stdin")
        .env(
            "CAIRN_LOG",
            std::env::var("CAIRN_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .wrap_err_with(|| format!("starting validator {index}"))
}

/// A validator's finalized height, from its RPC (`None` while it does not answer).
async fn height_of(rpc: &SocketAddr) -> Option<u64> {
    let client = HttpClientBuilder::default()
        .request_timeout(Duration::from_millis(500))
        .build(format!("http://{rpc}"))
        .ok()?;
    let number: alloy_primitives::U64 = client
        .request("eth_blockNumber", rpc_params![])
        .await
        .ok()?;
    Some(number.to())
}

/// The epoch line for the boundary at `height`, read from `rpc`.
async fn epoch_line(rpc: &SocketAddr, height: u64, network: &NetworkFile) -> Option<String> {
    let client = HttpClientBuilder::default()
        .request_timeout(Duration::from_secs(2))
        .build(format!("http://{rpc}"))
        .ok()?;
    let raw: alloy_primitives::Bytes = client
        .request(
            "debug_getRawBlock",
            rpc_params![alloy_primitives::U64::from(height)],
        )
        .await
        .ok()?;
    let block = Block::decode_raw_rlp(&raw).ok()?;
    let block = ValidatorBlock::new(block, &network.blocks().ok()?).ok()?;
    let Some(ValidatorPayload::EpochInfo(info)) = block.payload() else {
        return None;
    };
    let committee: Vec<String> = info
        .output
        .players()
        .iter()
        .map(|key| hex::encode(&commonware_codec::Encode::encode(key)[..3]))
        .collect();
    Some(format!(
        "epoch {} | committee {} | reshare of epoch {} {:?} | identity {}",
        info.epoch.get(),
        committee.join(","),
        info.epoch.get().saturating_sub(1),
        info.outcome,
        hex::encode(&commonware_codec::Encode::encode(info.output.public().public())[..6]),
    ))
}

/// Runs the simplex devnet until Ctrl-C.
pub(super) fn run(args: DevnetArgs) -> eyre::Result<()> {
    let datadir = args.datadir.clone();
    let network_path = datadir.join("network.json");
    let network = if network_path.exists() {
        NetworkFile::load(&network_path)?
    } else {
        create(&args, &datadir)?
    };
    if network.validators.len() != args.validators || network.committee != args.committee {
        bail!(
            "{} was created with {} validators in committees of {}; start it with the same, or \
             use another --datadir",
            datadir.display(),
            network.validators.len(),
            network.committee
        );
    }
    let mut validators = Vec::with_capacity(network.validators.len());
    for index in 0..network.validators.len() {
        validators.push(ValidatorProcess(
            start_validator(&datadir, &network_path, index)?,
            false,
        ));
    }
    say!(
        "started {} simplex validators (committees of {}, epochs of {}) | chain profile {} | \
         logs under {}",
        network.validators.len(),
        network.committee,
        network.epoch_length,
        datadir.join("chain.json").display(),
        datadir.join("validators").display()
    );
    for (index, member) in network.validators.iter().enumerate() {
        say!(
            "validator {index}: rpc http://{} | p2p {}",
            member.rpc,
            member.p2p
        );
    }
    let upstreams: Vec<String> = network
        .validators
        .iter()
        .map(|member| format!("ws://{}", member.rpc))
        .collect();
    let mut followers = start_followers(&args, &datadir.join("chain.json"), &upstreams.join(","))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .wrap_err("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let mut announced = 0;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = ticker.tick() => {}
            }
            for (index, validator) in validators.iter_mut().enumerate() {
                if let Some(status) = validator.exited() {
                    say!(
                        "validator {index} exited ({status}); its log: {}",
                        datadir
                            .join("validators")
                            .join(index.to_string())
                            .join("validator.log")
                            .display()
                    );
                }
            }
            let mut heights = Vec::with_capacity(network.validators.len());
            for member in &network.validators {
                heights.push(height_of(&member.rpc).await);
            }
            let top = heights.iter().flatten().copied().max().unwrap_or(0);
            while (announced + 1) * network.epoch_length <= top + 1 {
                let boundary = (announced + 1) * network.epoch_length - 1;
                if let Some(line) = epoch_line(&network.validators[0].rpc, boundary, &network).await
                {
                    say!("{line}");
                }
                announced += 1;
            }
            let heights: Vec<String> = heights
                .iter()
                .enumerate()
                .map(|(index, height)| match height {
                    Some(height) => format!("v{index} {height}"),
                    None => format!("v{index} down"),
                })
                .collect();
            say!(
                "height {top} | {}{}",
                heights.join(" | "),
                super::follower_statuses(&mut followers, top)
            );
        }
    });
    say!("stopping the validators");
    drop(followers);
    drop(validators);
    Ok(())
}
