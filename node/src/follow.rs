//! `cairn follow`: follows an upstream node, verifying every finalization with its epoch's key,
//! stores what it verified, and serves it again over the same RPC.

use crate::common::{Shutdown, lock_datadir, serve_metrics};
use crate::config::{default_datadir, layered, to_toml};
use crate::cpus::CpuList;
use crate::disk::{DiskGuard, exit_cleanly_on_storage_panics, is_storage_failure, storage_failed};
use crate::progress::Progress;
use crate::report::{EvidenceSummary, FollowerReport, NodeStatus};
use cairn_epoch::{ChainProfile, TrustedBlock, merge_trusted};
use cairn_feed::{ChainReader as _, FeedState, LateChain, RpcConfig, RunningServer, StatusSource};
use cairn_follow::{
    Engine, EngineConfig, EngineError, StartFrom, StartedFrom, Upstreams,
    certificates::{CertificateMode, FillConfig},
    damage::StoreCheck,
    driver::{DriverError, Evidence},
    status::StatusBoard,
    sync::catchup::{CatchUpConfig, VerifyPolicy},
    sync::checkpoint::CheckpointTarget,
    upstream::{self, ClientConfig, QuarantineConfig, Sources, follow_url},
};
use cairn_storage::execution::ExecutionError;
use clap::{ArgMatches, Args};
use commonware_runtime::{Runner as _, Spawner as _, Supervisor as _};
use eyre::{WrapErr, eyre};
use serde::{Deserialize, Serialize};
use serde_with::{DisplayFromStr, serde_as};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

/// Arguments of `cairn follow`. Every setting but --config and --print-config can also come
/// from a `CAIRN_*` environment variable or from the --config file (keys named as the flags:
/// `rpc-addr = "127.0.0.1:8545"`); flags win over the environment, the environment over the
/// file, the file over the defaults.
#[serde_as]
#[derive(Args, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FollowArgs {
    /// A TOML file of settings, keyed by the flags' names without dashes (see docs/operator.md).
    /// An unknown key is an error. [default: none; flags, environment and defaults only]
    #[arg(long, value_name = "FILE", env = "CAIRN_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the effective settings (flags over environment over --config file over defaults)
    /// as TOML and exit.
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
    /// The chain: a built-in profile (tempo-mainnet, tempo-moderato) or a chain profile JSON
    /// file, such as the `chain.json` that `cairn devnet` writes. [default: none; required
    /// here, in the environment or in the --config file]
    #[arg(long, value_name = "PROFILE|FILE", env = "CAIRN_CHAIN")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chain: Option<String>,
    /// An upstream node to follow: ws://HOST:PORT, wss://HOST, or HOST:PORT (meaning ws://).
    /// Give it several times (or comma-separated) to follow several upstreams, validators and
    /// followers in any mix: events are deduplicated, fetches go to the healthy ones, and a
    /// source that serves invalid data is quarantined. [default: the network's public endpoint
    /// for the built-in profiles (wss://rpc.presto.tempo.xyz, wss://rpc.moderato.tempo.xyz) and
    /// for profiles that name one in `followUrl`]
    #[arg(
        long,
        value_name = "URL",
        env = "CAIRN_UPSTREAM",
        value_delimiter = ','
    )]
    #[serde(default)]
    upstream: Vec<String>,
    /// Directory for the verified chain, the epoch registry and the checkpoint with its identity
    /// ledger (created if missing). Starting again on the same directory resumes where the last
    /// run stopped. [default: cairn/CHAIN in the platform's data directory, e.g.
    /// ~/.local/share/cairn/tempo-mainnet on Linux]
    #[arg(long, value_name = "DIR", env = "CAIRN_DATADIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    datadir: Option<PathBuf>,
    /// Serve the verified chain over JSON-RPC (WebSocket and HTTP) on this address, so other
    /// followers can follow this one, with a live status page at /status; port 0 lets the OS
    /// choose. [default: not served]
    #[arg(long, value_name = "ADDR", env = "CAIRN_RPC_ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rpc_addr: Option<String>,
    /// Most simultaneous RPC connections (each WebSocket subscriber holds one). The process
    /// also needs as many open files.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2048,
        env = "CAIRN_RPC_MAX_CONNECTIONS"
    )]
    rpc_max_connections: u32,
    /// Also serve the status page, `cairn_status` and every RPC method on this address, with
    /// its own cap of 16 connections, so that the operator is never locked out when
    /// --rpc-addr is full (keep it on loopback or a private network). Port 0 lets the OS
    /// choose. [default: none]
    #[arg(long, value_name = "ADDR", env = "CAIRN_ADMIN_ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin_addr: Option<String>,
    /// Most subscriptions one RPC connection may hold.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        env = "CAIRN_RPC_MAX_SUBSCRIPTIONS"
    )]
    rpc_max_subscriptions: u32,
    /// KiB of events one RPC connection may hold unread; a subscription whose next event
    /// would pass it is ended with an error notification (its client subscribes again), so a
    /// client that never reads costs at most this much.
    #[arg(
        long,
        value_name = "KIB",
        default_value_t = 1024,
        env = "CAIRN_RPC_QUEUED_KIB"
    )]
    rpc_queued_kib: usize,
    /// Where to start: `genesis`, `latest` (the upstream's latest finalization) or a block
    /// height. A start other than genesis walks the boundary certificates from the profile's
    /// genesis outcome to the checkpoint's epoch, verifying each with the key the one before it
    /// announced, then follows from the verified checkpoint; history below it is not stored
    /// (see --backfill) and is answered with 503. Applies to an empty datadir; a datadir that
    /// already follows resumes where it stopped. [default: `genesis` when the profile carries
    /// the genesis header, `latest` when it does not (the built-in Tempo profiles)]
    #[arg(long, value_name = "latest|genesis|HEIGHT", env = "CAIRN_CHECKPOINT")]
    #[serde_as(as = "Option<DisplayFromStr>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checkpoint: Option<CheckpointTarget>,
    /// How a follower that starts 128 blocks or more behind verifies what it catches up.
    /// `hash-chain`: verify the certificate of every epoch boundary (it carries the next key)
    /// and of the upstreams' latest block, and authenticate the blocks between them by their
    /// parent hashes; blocks are fetched in JSON-RPC batches and stored with one sync per 1,024.
    /// `every-block`: verify every block's certificate one by one, one block in flight (Tempo's
    /// own policy; slower, for comparison). Live blocks are always verified one by one.
    #[arg(
        long,
        value_name = "hash-chain|every-block",
        default_value = "hash-chain",
        env = "CAIRN_VERIFY"
    )]
    #[serde_as(as = "DisplayFromStr")]
    verify: VerifyPolicy,
    /// After a start from a checkpoint, also fetch the history under it down to genesis, in the
    /// background while following: each block must hash to the parent hash the block above it
    /// names (no certificates needed), blocks are fetched in JSON-RPC batches and stored with
    /// one sync per 1,024, and each stored batch is served at once. Interrupted or restarted,
    /// it continues from the lowest stored block. Transactions of these blocks are not indexed
    /// for lookup by hash.
    #[arg(long, env = "CAIRN_BACKFILL")]
    backfill: bool,
    /// Which missing certificates to fetch. A catch-up through the hash chain, a rejoin, a
    /// backfill and marshal's gap repair store blocks authenticated by the parent hash of a
    /// certified block above them, without a certificate of their own. `all`: fetch every
    /// served height's certificate in the background, behind live following (batches within
    /// each upstream's manners; each verified with its epoch's key against the stored block,
    /// then stored and served), and any a client asks for at once. `on-demand`: only those
    /// clients ask for (`consensus_getFinalization` of such a height fetches, verifies and
    /// stores it before answering).
    #[arg(
        long,
        value_name = "all|on-demand",
        default_value = "all",
        env = "CAIRN_CERTIFICATES"
    )]
    #[serde_as(as = "DisplayFromStr")]
    #[serde(default)]
    certificates: CertificateMode,
    /// Serve Prometheus metrics at http://ADDR/metrics: the follower's heights, lag, epoch,
    /// identity rotations, rejected events by check, each upstream's health, fetch latency,
    /// blocks/s, and marshal's and the runtime's own metrics. Port 0 lets the OS choose.
    /// [default: not served]
    #[arg(long, value_name = "ADDR", env = "CAIRN_METRICS_ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics_addr: Option<String>,
    /// How often to print a progress line (when output is not a terminal; a terminal shows a
    /// progress bar).
    #[arg(
        long,
        default_value = "1s",
        value_parser = humantime::parse_duration,
        env = "CAIRN_STATUS_INTERVAL"
    )]
    #[serde(with = "humantime_serde")]
    status_interval: Duration,
    /// Run the follower's threads on these CPUs only (Linux): `0`, `0-3`, `0,2`. Its storage
    /// hands every disk read and write to another thread; on the CPUs of one set those
    /// hand-offs stay cheap, which matters most on a virtual machine shared with a busy process
    /// such as an upstream node (docs/operator.md has the measurement). The runtime starts one
    /// worker thread per CPU of the set. [default: every CPU the process may use, two worker
    /// threads]
    #[arg(long, value_name = "LIST", env = "CAIRN_CPUS")]
    #[serde_as(as = "Option<DisplayFromStr>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpus: Option<CpuList>,
    /// Stop (exit status 1, with a message naming the datadir) when less than this many MiB
    /// are free on the datadir's file system, checked at start and twice a second, before a
    /// write can fail on a full disk: the storage layer panics on a failed write. What is
    /// stored stays consistent; with room again the next start continues. 0 turns the check off.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 256,
        env = "CAIRN_MIN_FREE_DISK"
    )]
    min_free_disk: u64,
    /// At start, read every stored block and finalization and check each (its checksum, its
    /// decoding) instead of the newest 1,024 heights only. What is damaged is logged, shown in
    /// the status, and fetched again from the upstreams while the follower follows: a block is
    /// checked against the hash chain, a finalization verified with its epoch's key.
    #[arg(long, env = "CAIRN_CHECK_STORES")]
    #[serde(default)]
    check_stores: bool,
    /// A block you trust at its height, as HEIGHT:HASH (repeatable, or comma-separated; added to
    /// the profile's `trustedBlocks`). A checkpoint start whose verified chain holds another
    /// block there is refused before anything is stored, and so is any later write of another
    /// block at that height (a catch-up, marshal, the backfill), which stops the follower. A
    /// walk from genesis trusts every committee the chain ever had: a recent block you pinned
    /// means leaked keys of an old committee cannot certify another history. [default: the
    /// profile's `trustedBlocks`, none for the built-in profiles]
    #[arg(
        long,
        value_name = "HEIGHT:HASH",
        env = "CAIRN_TRUSTED_BLOCK",
        value_delimiter = ','
    )]
    #[serde_as(as = "Vec<DisplayFromStr>")]
    #[serde(default)]
    trusted_block: Vec<TrustedBlock>,
    /// Calls sent to each upstream per second at most (a batch counts each call). Public RPC
    /// nodes limit calls per client and answer more with "slow down" (-32005, HTTP 429); such
    /// answers are never held against an upstream: the call is sent again after a wait that
    /// doubles up to 2 s, and a batch refused for its size is split. 0 for no budget.
    /// [default: the profile's `upstreamRateLimit` (200 for the built-in Tempo profiles), else
    /// none]
    #[arg(
        long,
        value_name = "CALLS_PER_SECOND",
        env = "CAIRN_UPSTREAM_RATE_LIMIT"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream_rate_limit: Option<u32>,
}

/// Runs the follower until Ctrl-C (or SIGTERM); `matches` says which settings the command line
/// and the environment gave.
pub fn run(args: FollowArgs, matches: &ArgMatches) -> eyre::Result<()> {
    let config = args.config.clone();
    let print_config = args.print_config;
    let mut args = layered(args, matches, config.as_deref())?;
    let chain = args.chain.clone().ok_or_else(|| {
        eyre!(
            "--chain is required: a built-in profile (tempo-mainnet, tempo-moderato) or a chain profile file (also CAIRN_CHAIN, or `chain` in the --config file)"
        )
    })?;
    let mut profile = ChainProfile::resolve(&chain)
        .wrap_err_with(|| format!("--chain {chain}: cannot load the chain profile"))?;
    profile.trusted_blocks = merge_trusted(&profile.trusted_blocks, &args.trusted_block)
        .map_err(|err| eyre!("--trusted-block: {err}"))?;
    let datadir = args
        .datadir
        .get_or_insert_with(|| default_datadir(&profile.name))
        .clone();
    if args.upstream.is_empty()
        && let Some(url) = &profile.follow_url
    {
        args.upstream.push(url.clone());
    }
    if print_config {
        say!("{}", to_toml(&args)?.trim_end());
        return Ok(());
    }
    say!("datadir {}", datadir.display());
    if args.upstream.is_empty() {
        return Err(eyre!(
            "--upstream is required: the chain profile `{}` names no public endpoint (followUrl)",
            profile.name
        ));
    }
    let mut urls: Vec<String> = Vec::new();
    for upstream in &args.upstream {
        let url = follow_url(upstream).map_err(|err| eyre!("--upstream {upstream}: {err}"))?;
        if urls.contains(&url) {
            return Err(eyre!("--upstream {upstream} is given twice"));
        }
        urls.push(url);
    }
    let target = args
        .checkpoint
        .unwrap_or(if profile.genesis_header.is_some() {
            CheckpointTarget::Genesis
        } else {
            CheckpointTarget::Latest
        });
    if target == CheckpointTarget::Genesis {
        cairn_follow::genesis_block(&profile).wrap_err_with(|| {
            format!(
                "--chain {chain} --checkpoint genesis (use --checkpoint latest to start from a verified checkpoint)"
            )
        })?;
    }
    // Before anything is created, and before the runtime starts its threads (they inherit it).
    let mut workers = 2;
    if let Some(cpus) = &args.cpus {
        cpus.pin_current_thread()
            .wrap_err_with(|| format!("--cpus {cpus}"))?;
        workers = cpus.len();
        say!("running on CPUs {cpus}");
    }
    let _lock = lock_datadir(&datadir)?;
    let disk = DiskGuard::new(&datadir, args.min_free_disk);
    disk.check()?;
    let serving = if args.rpc_addr.is_some() {
        args.rpc_max_connections
    } else {
        0
    };
    let files = crate::fds::budget(
        serving,
        args.metrics_addr.is_some(),
        args.admin_addr.is_some(),
    )?;
    if let Some(warning) = &files.warning {
        tracing::warn!("{warning}");
        say!("warning: {warning}");
        args.rpc_max_connections = files.rpc_connections;
    }
    exit_cleanly_on_storage_panics(&datadir);
    let config = commonware_runtime::tokio::Config::new()
        .with_worker_threads(workers)
        .with_storage_directory(datadir.join("store"));
    commonware_runtime::tokio::Runner::new(config).start(|context| async move {
        follow(
            context.child("cairn"),
            args,
            datadir,
            urls,
            profile,
            target,
            disk,
        )
        .await
    })
}

/// Two valid certificates for different blocks at one height: the follower stopped with
/// evidence (exit status 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SafetyFault(pub String);

async fn follow(
    context: commonware_runtime::tokio::Context,
    args: FollowArgs,
    datadir: PathBuf,
    urls: Vec<String>,
    profile: ChainProfile,
    target: CheckpointTarget,
    disk: DiskGuard,
) -> eyre::Result<()> {
    // Ctrl-C and SIGTERM stop the follower cleanly from here on, the boundary walk and the
    // start-up catch-up included.
    let mut shutdown = Shutdown::install()?;
    if let Some(addr) = &args.metrics_addr {
        let local = serve_metrics(addr, context.child("metrics"))
            .await
            .wrap_err_with(|| format!("--metrics-addr {addr}"))?;
        say!("metrics on http://{local}/metrics");
    }
    // The RPC server binds now, so a taken address fails at once, and answers `cairn_status`,
    // the status page and `eth_syncing` through the boundary walk and the start-up catch-up;
    // the chain itself is served once the follower has started (until then it answers 204).
    let feed = FeedState::default();
    let board = StatusBoard::default();
    let served = LateChain::default();
    let (server, admin) = start_servers(&args, &profile, &served, &feed, &board, &datadir).await?;
    let upstream_client = client_config(&profile, args.upstream_rate_limit);
    let upstreams = spawn_upstreams(&context, &urls, &upstream_client)?;

    let starting = Instant::now();
    let progress = Progress::show(&board, &feed, args.status_interval);
    let starting_follower = Engine::init(
        context.child("follower"),
        follower_config(&args, &profile, target, &datadir, &board, &feed),
        upstreams,
    );
    let started = tokio::select! {
        started = starting_follower => started,
        err = disk.full() => return Err(err),
        () = shutdown.wait() => {
            // What the start-up stored is durable batch by batch; the next start resumes it.
            say!(
                "stopped during start-up at stored height {}",
                board.latest().executed_height
            );
            return Ok(());
        }
    };
    let follower = started.map_err(|err| match err {
        EngineError::Execution(ExecutionError::GenesisMismatch { .. }) => eyre!(
            "datadir {} belongs to a different chain than `{}`: {err}",
            datadir.display(),
            profile.name
        ),
        EngineError::Checkpoint(_) => eyre!("{err}"),
        other => eyre!("starting the follower in {}: {other}", datadir.display()),
    })?;

    say_start_point(follower.started_from);
    served.bind(follower.chain.clone());
    if let Some(server) = &server {
        let addr = server.local_addr;
        say!("rpc listening on {addr} (ws and http); status page at http://{addr}/status");
    }
    say_started(&follower, &args, &urls, &profile, starting);

    progress.started();
    let result = report_until_stopped(
        follower,
        &profile,
        args.status_interval,
        args.backfill,
        !progress.has_bar(),
        &mut shutdown,
        &disk,
    )
    .await;
    drop(progress);
    for server in [server, admin].into_iter().flatten() {
        let _ = server.handle.stop();
    }
    result
}

/// The RPC server (`--rpc-addr`) and the admin listener (`--admin-addr`), bound before the
/// follower starts: they answer `cairn_status`, the status page and `eth_syncing` through the
/// boundary walk and the start-up catch-up, and serve the chain once `served` is bound.
async fn start_servers<C>(
    args: &FollowArgs,
    profile: &ChainProfile,
    served: &LateChain<C>,
    feed: &FeedState,
    board: &StatusBoard,
    datadir: &Path,
) -> eyre::Result<(Option<RunningServer>, Option<RunningServer>)>
where
    LateChain<C>: cairn_feed::ChainReader,
{
    let rpc_config = |max_connections| RpcConfig {
        chain_id: profile.chain_id,
        max_connections,
        max_subscriptions_per_connection: args.rpc_max_subscriptions,
        queued_bytes: args.rpc_queued_kib.saturating_mul(1024),
        status: Some(status_source(board.clone(), datadir.to_path_buf())),
        ..RpcConfig::default()
    };
    let server = match &args.rpc_addr {
        Some(addr) => Some(
            cairn_feed::start(
                addr,
                served.clone(),
                feed.clone(),
                rpc_config(args.rpc_max_connections),
            )
            .await
            .wrap_err_with(|| format!("--rpc-addr {addr}"))?,
        ),
        None => None,
    };
    if let Some(server) = &server {
        let addr = server.local_addr;
        say!(
            "status page at http://{addr}/status (the chain is served once the follower has started)"
        );
    }
    let admin = match &args.admin_addr {
        Some(addr) => {
            let admin = cairn_feed::start(
                addr,
                served.clone(),
                feed.clone(),
                rpc_config(crate::fds::ADMIN_CONNECTIONS),
            )
            .await
            .wrap_err_with(|| format!("--admin-addr {addr}"))?;
            say!(
                "admin status page at http://{}/status (cairn status --rpc {0})",
                admin.local_addr
            );
            Some(admin)
        }
        None => None,
    };
    Ok((server, admin))
}

/// One upstream actor per URL, with the sources they answer through and their notifications.
fn spawn_upstreams(
    context: &commonware_runtime::tokio::Context,
    urls: &[String],
    upstream_client: &ClientConfig,
) -> eyre::Result<Upstreams<upstream::Mailbox>> {
    let (notifications_tx, notifications) = mpsc::channel(1024);
    let mut requests = Vec::new();
    let mut counts = Vec::new();
    for (source, url) in urls.iter().enumerate() {
        let config = upstream::Config {
            source,
            client: upstream_client.clone(),
            ..upstream::Config::new(url.clone())
        };
        counts.push(config.counts.clone());
        let (upstream_actor, mailbox) = upstream::init(config, notifications_tx.clone())
            .map_err(|err| eyre!("--upstream {url}: {err}"))?;
        context
            .child("upstream")
            .spawn(|context| upstream_actor.run(context));
        requests.push((url.clone(), mailbox));
    }
    drop(notifications_tx);
    let sources = Sources::new(requests, QuarantineConfig::default());
    for (source, counts) in counts.into_iter().enumerate() {
        sources.book().count_calls(source, counts);
    }
    Ok(Upstreams {
        notifications,
        sources,
    })
}

/// The engine's settings from the command line.
fn follower_config(
    args: &FollowArgs,
    profile: &ChainProfile,
    target: CheckpointTarget,
    datadir: &Path,
    board: &StatusBoard,
    feed: &FeedState,
) -> EngineConfig {
    EngineConfig {
        start: StartFrom::Target(target),
        evidence_dir: Some(datadir.to_path_buf()),
        catch_up: CatchUpConfig {
            policy: args.verify,
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            ..CatchUpConfig::default()
        },
        backfill: args.backfill,
        certificates: FillConfig {
            mode: args.certificates,
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            ..FillConfig::default()
        },
        store_check: if args.check_stores {
            StoreCheck::All
        } else {
            StoreCheck::default()
        },
        status: board.clone(),
        feed: feed.clone(),
        ..engine_config(profile, args.verify)
    }
}

/// Where the follower started: the datadir's checkpoint, genesis, or the checkpoint the
/// boundary walk verified.
fn say_start_point(started_from: StartedFrom) {
    match started_from {
        StartedFrom::StoredCheckpoint { height } => say!(
            "checkpoint {height} taken from the datadir: resuming the chain started there (no boundary walk)"
        ),
        StartedFrom::Genesis {
            target_set_aside: true,
        } => say!("this datadir follows from genesis; --checkpoint applies to an empty datadir"),
        StartedFrom::Walked { height, report } => say!(
            "checkpoint {height} (epoch {}) verified: walked {} boundaries (epochs {}..{}), {} identity rotations, in {} ms",
            report.to_epoch,
            report.boundaries,
            report.from_epoch,
            report.to_epoch,
            report.rotations,
            report.millis
        ),
        StartedFrom::Genesis { .. } | StartedFrom::Given { .. } => {}
    }
}

/// What the follower did at start: the catch-up, the store check, and what it follows.
fn say_started<E: cairn_follow::engine::EngineContext>(
    follower: &Engine<E>,
    args: &FollowArgs,
    urls: &[String],
    profile: &ChainProfile,
    starting: Instant,
) {
    if let Some(report) = &follower.caught_up {
        let blocks = report.to - report.from;
        let seconds = starting.elapsed().as_secs_f64();
        say!(
            "caught up {blocks} blocks ({}..={}) through the hash chain in {seconds:.2} s: {} certificates verified",
            report.from + 1,
            report.to,
            report.certificates
        );
    }
    let check = &follower.store_check;
    let damaged = check.damaged_blocks.len() + check.damaged_finalizations.len();
    if args.check_stores || damaged > 0 {
        say!(
            "stores checked, heights {}..={}: {} blocks and {} finalizations read, {} damaged{}",
            check.from,
            check.to,
            check.blocks,
            check.finalizations,
            damaged,
            if damaged > 0 {
                " (fetched again from the upstreams; `cairn status` shows the repairs)"
            } else {
                ""
            }
        );
    }
    say!(
        "following {} | chain {} | verified height {} | {} epochs with a key",
        urls.join(", "),
        profile.name,
        *follower.executed.borrow(),
        follower.provider.len()
    );
}

/// What `cairn_status` answers for a follower: its newest status snapshot, with the evidence
/// files of conflicting certificates found in its datadir.
fn status_source(board: StatusBoard, datadir: PathBuf) -> StatusSource {
    StatusSource(Arc::new(move || {
        let report = FollowerReport {
            status: board.latest(),
            evidence: evidence_in(&datadir),
        };
        serde_json::to_value(NodeStatus::Follower(report)).unwrap_or_default()
    }))
}

/// The evidence files of conflicting certificates in `datadir` (`evidence-HEIGHT.json`); a file
/// that does not parse is listed with what is wrong.
fn evidence_in(datadir: &std::path::Path) -> Vec<EvidenceSummary> {
    let Ok(entries) = std::fs::read_dir(datadir) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("evidence-") && name.ends_with(".json"))
        })
        .map(|path| {
            let file = path.display().to_string();
            let parsed = std::fs::read(&path)
                .map_err(|err| err.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Evidence>(&bytes).map_err(|err| err.to_string())
                });
            match parsed {
                Ok(evidence) => EvidenceSummary {
                    file,
                    height: evidence.height,
                    epoch: evidence.epoch,
                    first: evidence.first.source,
                    second: evidence.second.source,
                },
                Err(err) => EvidenceSummary {
                    file,
                    height: 0,
                    epoch: 0,
                    first: format!("unreadable: {err}"),
                    second: String::new(),
                },
            }
        })
        .collect();
    found.sort_by_key(|summary| summary.height);
    found
}

/// The engine's defaults for `profile` under `policy`: Tempo's policy also keeps one block in
/// flight, as Tempo's follow mode does.
fn engine_config(profile: &ChainProfile, policy: VerifyPolicy) -> EngineConfig {
    let defaults = EngineConfig::new(profile.clone());
    match policy {
        VerifyPolicy::HashChain => defaults,
        VerifyPolicy::EveryBlock => EngineConfig {
            max_repair: std::num::NonZeroUsize::MIN,
            max_pending_acks: std::num::NonZeroUsize::MIN,
            ..defaults
        },
    }
}

/// Prints progress lines until Ctrl-C, or until the follower stops.
async fn report_until_stopped<E: cairn_follow::engine::EngineContext>(
    follower: Engine<E>,
    profile: &ChainProfile,
    interval: Duration,
    backfill: bool,
    lines: bool,
    shutdown: &mut Shutdown,
    disk: &DiskGuard,
) -> eyre::Result<()> {
    let mut executed = follower.executed.clone();
    let chain = follower.chain.clone();
    let mut history = backfill
        .then(|| chain.first_height())
        .filter(|first| *first > 0);
    let backfilled = follower.backfilled.clone();
    let upstream = follower.upstream.clone();
    let sources = follower.sources.clone();
    let provider = follower.provider.clone();
    let stopped = follower.run();
    tokio::pin!(stopped);
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
    let mut last = (Instant::now(), *executed.borrow());
    let mut last_epoch = provider.latest_epoch();
    loop {
        tokio::select! {
            () = shutdown.wait() => {
                say!("stopping at verified height {}", *executed.borrow_and_update());
                return Ok(());
            }
            err = disk.full() => return Err(err),
            result = &mut stopped => {
                return match result {
                    Ok(()) => Ok(()),
                    Err(EngineError::Driver(err @ DriverError::Conflict { .. })) => {
                        Err(SafetyFault(format!("follower halted: {err}")).into())
                    }
                    // A write that failed (a full disk, an I/O error): named as such, with
                    // the datadir, as a storage panic is.
                    Err(err) if is_storage_failure(&err.to_string(), "") => {
                        Err(eyre!(storage_failed(disk.datadir(), &err.to_string())))
                    }
                    Err(err) => Err(eyre!("follower stopped: {err}")),
                };
            }
            _ = ticker.tick() => {
                let height = *executed.borrow_and_update();
                let status = upstream.borrow().clone();
                let target = status.announced_height.max(height);
                let elapsed = last.0.elapsed().as_secs_f64();
                let rate = height.saturating_sub(last.1) as f64 / elapsed.max(1e-3);
                last = (Instant::now(), height);
                let epoch = profile.epochs.epoch_of(height);
                let latest_epoch = provider.latest_epoch();
                if latest_epoch != last_epoch {
                    if let Some(latest) = latest_epoch {
                        say!("epoch {latest} has a verified key");
                    }
                    last_epoch = latest_epoch;
                }
                let first = chain.first_height();
                let backfilling = match history {
                    Some(from) if first == 0 => {
                        let took = *backfilled.borrow();
                        if let Some(took) = took {
                            say!(
                                "backfilled {from} blocks (0..={}) in {:.2} s",
                                from.saturating_sub(1),
                                took.as_secs_f64()
                            );
                            history = None;
                        }
                        String::new()
                    }
                    Some(_) => format!(" | history from {first}"),
                    None => String::new(),
                };
                if lines {
                    say!(
                        "verified {height} | target {target} | epoch {epoch} | {rate:.1} blocks/s{backfilling} | {} | rejected {}",
                        upstreams_summary(&sources.health()),
                        status.rejected
                    );
                }
            }
        }
    }
}

/// `upstreams 2/3 healthy`, the share of calls answered "slow down" if any (`slowed down 0.4%
/// of 5120 calls`), then each source that is not healthy: `quarantined URL (12s)` or
/// `disconnected URL`, and each that misbehaves without serving invalid data: `flapping URL
/// (4 drops/60s)`, `stalled URL at 15 (4s)`, `skipping URL (3 heights/60s)`.
fn upstreams_summary(health: &[upstream::SourceHealth]) -> String {
    let healthy = health.iter().filter(|source| source.healthy()).count();
    let mut summary = format!("upstreams {healthy}/{} healthy", health.len());
    let calls: u64 = health.iter().map(|source| source.calls).sum();
    let slowed: u64 = health.iter().map(|source| source.slowed_down).sum();
    if slowed > 0 {
        summary.push_str(&format!(
            " | slowed down {:.1}% of {calls} calls",
            100.0 * slowed as f64 / calls.max(1) as f64
        ));
    }
    let window = upstream::CONDUCT_WINDOW.as_secs();
    for source in health {
        let url = &source.url;
        if let Some(left) = source.quarantined_for {
            summary.push_str(&format!(
                " | quarantined {url} ({}s)",
                left.as_secs().max(1)
            ));
            continue;
        }
        if !source.connected {
            summary.push_str(&format!(" | disconnected {url}"));
        }
        if source.flapping() {
            let drops = source.recent_disconnects;
            summary.push_str(&format!(" | flapping {url} ({drops} drops/{window}s)"));
        }
        if let Some(stalled) = source.stalled_for {
            let at = source.announced_height;
            summary.push_str(&format!(
                " | stalled {url} at {at} ({}s)",
                stalled.as_secs()
            ));
        }
        if source.recent_skipped > 0 {
            let skipped = source.recent_skipped;
            summary.push_str(&format!(" | skipping {url} ({skipped} heights/{window}s)"));
        }
    }
    summary
}

/// The upstream connection settings: the call budget from `--upstream-rate-limit`, else the
/// profile's (0 turns it off).
pub fn client_config(profile: &ChainProfile, rate_limit: Option<u32>) -> ClientConfig {
    let calls_per_second = rate_limit
        .or(profile.upstream_rate_limit)
        .filter(|calls| *calls > 0);
    ClientConfig {
        calls_per_second,
        ..ClientConfig::default()
    }
}
