//! `cairn devnet`: runs the local chain producer on disk and serves it over Tempo's RPC.

use crate::report::{DevnetStatus, NodeStatus};
use crate::{
    common::{lock_datadir, shutdown_signal},
    followers::{FollowerProcess, FollowerView},
};
use cairn_devnet::{
    Devnet, DevnetConfig, EpochEntry, KeyOrigin,
    faults::{Fault, Faults, FaultyChain},
};
use cairn_feed::page::{CeremonyView, CommitteeView, remember_epoch};
use cairn_feed::{ChainReader, FeedState, RpcConfig, StatusSource};
use cairn_storage::registry::IdentityHistory;
use clap::Args;
use commonware_codec::Encode;
use commonware_runtime::{Runner as _, Supervisor as _};
use commonware_utils::{Faults as FaultModel, N3f1};
use eyre::{WrapErr, eyre};
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::time::sleep_until;
use tracing::info;

/// Arguments of `cairn devnet`.
#[derive(Args, Debug)]
pub struct DevnetArgs {
    /// Directory for the chain, the validator keys and the shares (created if missing).
    /// Starting again on the same directory continues the same chain.
    #[arg(long, value_name = "DIR", default_value = ".cairn/devnet")]
    datadir: PathBuf,
    /// Validators in the pool that committees are drawn from.
    #[arg(long, default_value_t = 7)]
    validators: usize,
    /// Committee size (a rotating window over the pool, moving one validator per epoch).
    #[arg(long, default_value_t = 4)]
    committee: usize,
    /// Blocks per epoch; the last block of each epoch carries the next epoch's DKG outcome.
    #[arg(long, default_value_t = 20)]
    epoch_length: u64,
    /// Time between blocks (e.g. 250ms, 1s; 0 produces as fast as possible).
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    block_time: Duration,
    /// Epochs whose key comes from a full DKG (a new network identity), e.g. 3,8. Other epochs
    /// reshare. [default: none; every epoch reshares]
    #[arg(long, value_delimiter = ',', value_name = "EPOCHS")]
    full_dkg_at_epochs: Vec<u64>,
    /// Address of the JSON-RPC server (WebSocket and HTTP); port 0 lets the OS choose.
    #[arg(long, default_value = "127.0.0.1:8546")]
    rpc_addr: String,
    /// Stop producing after this height (the RPC keeps serving until Ctrl-C). [default: none;
    /// produce until Ctrl-C]
    #[arg(long, value_name = "H")]
    until_height: Option<u64>,
    /// First generate this many blocks at full speed (with their ceremonies and real
    /// certificates, written in batches of 4,096 blocks with one sync each, served once
    /// synced, not published as events), then go on as configured. For building long chains
    /// to follow, e.g. `--bulk 1000000 --until-height 1000000`. [default: none; every block
    /// at the block time]
    #[arg(long, value_name = "N")]
    bulk: Option<u64>,
    /// EVM chain id written into the chain profile.
    #[arg(long, default_value_t = 1337)]
    chain_id: u64,
    /// Fix the validator keys, the ceremonies, the transactions and the block schedule (block h
    /// is stamped 2026-01-01 plus h block times): two devnets with the same seed and parameters
    /// produce the same chain byte for byte. [default: none; fresh keys and timestamps]
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Serve byzantine data, to test followers against (repeatable): `bad-signature[:RATE]`,
    /// `wrong-digest[:RATE]` and `malformed[:RATE]` change that share of the events (default
    /// 0.5); `withhold-boundaries` never announces a boundary block; `stall-after:HEIGHT`
    /// announces and serves nothing above HEIGHT; `disconnect-every:DURATION` drops every
    /// connection at that interval; `lie-on-fetch[:RATE]` tampers with that share of block and
    /// finalization answers.
    /// The chain itself is produced and stored honestly. [default: none; honest]
    #[arg(long = "fault", value_name = "MODE")]
    faults: Vec<Fault>,
    /// Produce a different block at height H (certified by the same committee); with the
    /// --seed of another devnet, the two chains carry conflicting certificates from H on.
    /// [default: none]
    #[arg(long, value_name = "H")]
    fork_at: Option<u64>,
    /// Write DKG outcomes in the TIP-1123 layout (`varint(epoch) || Output`, without the next
    /// ceremony) into boundaries stamped at or after this time (and into genesis, if it is
    /// stamped that late), and record it as `tip1123Time` in chain.json so that followers read
    /// each boundary in its layout. A seeded devnet stamps block h at 1767225600 (2026-01-01)
    /// plus h block times. [default: none; the legacy layout throughout]
    #[arg(long, value_name = "UNIX_SECONDS")]
    tip1123_time: Option<u64>,
    /// Answer RPC as a public node does, to try followers in field conditions on one machine:
    /// `typical` (60 ms round trip, 300 calls per second for all clients, batches of at most
    /// 100 calls, `debug_*` refused) or LATENCY,CALLS_PER_SECOND,MAX_BATCH,debug|no-debug
    /// (`25ms,200,50,debug`; 0 for no limit). Calls beyond the budget answer -32005 "rate limit
    /// exceeded", a larger batch -32600, `debug_*` -32601. [default: none; every call answered
    /// at once]
    #[arg(long, value_name = "LIMITS")]
    public_node: Option<cairn_feed::public::PublicNode>,
    /// Also start this many `cairn follow` processes following this devnet, each with its own
    /// datadir under DIR/followers/, and show their verified height and lag each second.
    #[arg(long, default_value_t = 0, value_name = "N")]
    followers: usize,
    /// How blocks are made: `certify` (one process builds each block and has a quorum of the
    /// committee's shares sign it) or `simplex` (real simplex validators, one `cairn validator`
    /// process each in DIR/validators/I, serving RPC on the --rpc-addr port plus I, resharing
    /// the key every epoch; blocks come as fast as consensus finalizes them, --block-time
    /// does not apply).
    #[arg(long, value_enum, default_value = "certify")]
    consensus: Consensus,
}

/// How a devnet makes its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Consensus {
    /// The certifying producer.
    Certify,
    /// Simplex validators.
    Simplex,
}

mod simplex;

/// Runs the devnet until Ctrl-C (or SIGTERM).
pub fn run(args: DevnetArgs) -> eyre::Result<()> {
    if args.consensus == Consensus::Simplex {
        // Checked before anything is created.
        simplex::check(&args)?;
    }
    let _lock = lock_datadir(&args.datadir)?;
    if args.consensus == Consensus::Simplex {
        return simplex::run(args);
    }
    let storage = args.datadir.join("store");
    let config = commonware_runtime::tokio::Config::new()
        .with_worker_threads(2)
        .with_storage_directory(storage);
    commonware_runtime::tokio::Runner::new(config)
        .start(|context| async move { serve(context.child("devnet"), args).await })
}

fn short_hex(bytes: &[u8]) -> String {
    alloy_primitives::hex::encode(&bytes[..bytes.len().min(4)])
}

/// Blocks the bulk producer writes between syncs.
const BULK_BATCH: u64 = 4096;

/// Generates `count` blocks at full speed, syncing and serving them every [`BULK_BATCH`];
/// stops early (after a last sync) on Ctrl-C, and then returns true.
async fn bulk<E: cairn_storage::StoreContext>(
    devnet: &mut Devnet<E>,
    count: u64,
    validators: usize,
    board: &DevnetBoard,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> eyre::Result<bool> {
    let started = Instant::now();
    let first = devnet.next_height();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let strategy = commonware_parallel::Rayon::new(
        std::num::NonZeroUsize::new(threads).expect("at least one thread"),
    )
    .map_err(|err| eyre::eyre!("no signing threads: {err}"))?;
    let mut produced_count = 0;
    while produced_count < count {
        let batch = BULK_BATCH.min(count - produced_count);
        for entry in devnet.produce_batch_unsynced(batch, &strategy).await? {
            print_epoch(&entry, validators);
            board.entered(&entry);
        }
        devnet.commit().await?;
        produced_count += batch;
        let elapsed = started.elapsed().as_secs_f64();
        let height = devnet.next_height() - 1;
        board.at_height(height);
        board.update(|status| {
            status.blocks_per_second = produced_count as f64 / elapsed.max(1e-9);
        });
        say!(
            "bulk: height {} | {produced_count} of {count} | {:.1} blocks/s",
            devnet.next_height() - 1,
            produced_count as f64 / elapsed.max(1e-9)
        );
        let stopped = tokio::select! {
            biased;
            () = shutdown.as_mut() => true,
            () = std::future::ready(()) => false,
        };
        if stopped {
            say!("bulk generation stopped by a signal");
            return Ok(true);
        }
    }
    say!(
        "bulk: generated heights {first}..={} in {:.1} s",
        devnet.next_height() - 1,
        started.elapsed().as_secs_f64()
    );
    Ok(false)
}

fn print_epoch(entry: &EpochEntry, validators: usize) {
    let committee = entry
        .committee
        .iter()
        .map(|key| short_hex(&key.encode()))
        .collect::<Vec<_>>()
        .join(" ");
    say!(
        "epoch {} | {} | identity {}.. | committee {} of {}: {}",
        entry.epoch,
        entry.origin,
        alloy_primitives::hex::encode(&entry.identity.encode()[..8]),
        entry.committee.len(),
        validators,
        committee
    );
}

/// The devnet's status, shared with the RPC server (cheap to clone).
#[derive(Clone)]
struct DevnetBoard {
    status: Arc<Mutex<DevnetStatus>>,
    identities: IdentityHistory,
    epochs: cairn_epoch::EpochStrategy,
}

impl DevnetBoard {
    fn new(chain: &str, epochs: cairn_epoch::EpochStrategy) -> Self {
        let status = DevnetStatus {
            chain: chain.to_string(),
            epoch_length: epochs.length(),
            ..DevnetStatus::default()
        };
        Self {
            status: Arc::new(Mutex::new(status)),
            identities: IdentityHistory::default(),
            epochs,
        }
    }

    fn update(&self, f: impl FnOnce(&mut DevnetStatus)) {
        f(&mut self
            .status
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()));
    }

    /// The chain now ends at `height` (produced, stored and served).
    fn at_height(&self, height: u64) {
        let epoch = self.epochs.epoch_of(height).get();
        self.update(|status| {
            status.verified_height = height;
            status.executed_height = height;
            status.target_height = height;
            status.epoch = epoch;
        });
    }

    fn entered(&self, entry: &EpochEntry) {
        self.identities.observe(entry.epoch, entry.identity);
        let epoch = commonware_consensus::types::Epoch::new(entry.epoch);
        let first_height = self.epochs.first_height(epoch).unwrap_or_default();
        let players = entry.committee.len();
        let identities = self.identities.changes(&self.epochs);
        self.update(|status| {
            status.key_epoch = status.key_epoch.max(entry.epoch);
            let dealers = status
                .committees
                .back()
                .map_or(0, |previous| previous.validators.len());
            let committee = CommitteeView {
                epoch: entry.epoch,
                first_height,
                last_height: self.epochs.boundary_height(epoch).unwrap_or_default(),
                validators: entry
                    .committee
                    .iter()
                    .map(|key| short_hex(&key.encode()))
                    .collect(),
                threshold: <N3f1 as FaultModel>::quorum(
                    u32::try_from(players.max(1)).unwrap_or(u32::MAX),
                ),
                identity: alloy_primitives::hex::encode_prefixed(entry.identity.encode()),
            };
            let ceremony = CeremonyView {
                for_epoch: entry.epoch,
                kind: entry.origin.to_string(),
                boundary: first_height.checked_sub(1),
                dealers: if entry.origin == KeyOrigin::Reshare {
                    dealers
                } else {
                    players
                },
                players,
            };
            remember_epoch(
                &mut status.committees,
                &mut status.ceremonies,
                committee,
                ceremony,
            );
            status.identities = identities;
        });
    }

    fn source(&self) -> StatusSource {
        let status = self.status.clone();
        StatusSource(Arc::new(move || {
            let status = status
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone();
            serde_json::to_value(NodeStatus::Devnet(status)).unwrap_or_default()
        }))
    }
}

/// The followers' part of a status line.
fn follower_statuses(followers: &mut [FollowerProcess], chain_height: u64) -> String {
    followers
        .iter_mut()
        .enumerate()
        .map(|(index, follower)| format!(" | {}", follower.status(index + 1, chain_height)))
        .collect()
}

/// The followers for the status page.
fn follower_views(followers: &mut [FollowerProcess], chain_height: u64) -> Vec<FollowerView> {
    followers
        .iter_mut()
        .enumerate()
        .map(|(index, follower)| follower.view(index + 1, chain_height))
        .collect()
}

/// Writes `contents` to `path` through a temporary file, so readers never see half a file.
fn write_atomically(path: &Path, contents: &str) -> eyre::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, contents).wrap_err_with(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).wrap_err_with(|| format!("writing {}", path.display()))?;
    Ok(())
}

async fn serve(context: commonware_runtime::tokio::Context, args: DevnetArgs) -> eyre::Result<()> {
    let config = devnet_config(&args);
    // The producer publishes to a feed of its own; what is served goes through the faults.
    let feed = FeedState::default();
    let faults = Faults::new(args.faults.clone(), args.seed.unwrap_or_else(rand::random));
    let mut devnet = Devnet::open(context, config, FeedState::default())
        .await
        .wrap_err_with(|| format!("opening the devnet in {}", args.datadir.display()))?;
    if let Some(tip) = devnet.store().finalized_height()
        && let Some(latest) = devnet.store().certified_at(tip).await?
        && let Some(event) = faults.event(latest, devnet.epochs().is_boundary(tip))
    {
        feed.publish_finalized(event);
    }

    let profile_path = args.datadir.join("chain.json");
    let profile = devnet.profile("cairn-devnet")?;
    write_atomically(&profile_path, &profile.to_json())?;

    let served = FaultyChain::new(devnet.store().clone(), faults.clone());
    let board = DevnetBoard::new(&profile.name, devnet.epochs().clone());
    let tip = devnet.next_height().saturating_sub(1);
    board.at_height(tip);
    let rpc_config = RpcConfig {
        chain_id: profile.chain_id,
        status: Some(board.source()),
        public_node: args.public_node,
        ..RpcConfig::default()
    };
    let mut server = cairn_feed::start(
        &args.rpc_addr,
        served.clone(),
        feed.clone(),
        rpc_config.clone(),
    )
    .await?;
    say!(
        "rpc listening on {} (ws and http); status page at http://{}/status",
        server.local_addr,
        server.local_addr
    );
    if !args.faults.is_empty() {
        let modes: Vec<String> = args
            .faults
            .iter()
            .map(|fault| format!("{fault:?}"))
            .collect();
        say!("serving byzantine data: {}", modes.join(", "));
    }
    let mut disconnects = faults
        .disconnect_interval()
        .map(|interval| tokio::time::interval_at(tokio::time::Instant::now() + interval, interval));
    say!("chain profile {}", profile_path.display());
    say!(
        "genesis {} | epoch length {} | next height {}",
        devnet.genesis().hash(),
        args.epoch_length,
        devnet.next_height()
    );

    let mut followers = start_followers(&args, &profile_path, &server.local_addr.to_string())?;

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let stopped_in_bulk = match args.bulk {
        Some(count) => bulk(&mut devnet, count, args.validators, &board, &mut shutdown).await?,
        None => false,
    };
    let mut deadline = tokio::time::Instant::now();
    let mut last_report = Instant::now();
    let mut produced_since_report = 0u64;
    loop {
        if stopped_in_bulk {
            break;
        }
        if args
            .until_height
            .is_some_and(|until| devnet.next_height() > until)
        {
            say!(
                "reached --until-height {}; serving until Ctrl-C",
                devnet.next_height() - 1
            );
            idle_until(&devnet, &mut followers, &board, &mut shutdown).await;
            break;
        }
        tokio::select! {
            () = &mut shutdown => break,
            _ = async { disconnects.as_mut().expect("only polled when set").tick().await }, if disconnects.is_some() => {
                // Drop every connection: stop the server and serve again on the same address.
                server = serve_again(server, &served, &feed, &rpc_config).await?;
                continue;
            }
            () = sleep_until(deadline) => {}
        }
        let produced = devnet.produce_next().await?;
        let height = produced.certified.height.unwrap_or_default();
        if let Some(event) = faults.event(
            produced.certified.clone(),
            devnet.epochs().is_boundary(height),
        ) {
            feed.publish_finalized(event);
        }
        produced_since_report += 1;
        board.at_height(height);
        if let Some(entry) = &produced.entered {
            print_epoch(entry, args.validators);
            board.entered(entry);
            info!(epoch = entry.epoch, origin = %entry.origin, "entered epoch");
        }
        let elapsed = last_report.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let rate = produced_since_report as f64 / elapsed.as_secs_f64();
            board.update(|status| {
                status.blocks_per_second = rate;
                status.followers = follower_views(&mut followers, height);
            });
            say!(
                "height {} | epoch {} view {} | {:.1} blocks/s | {} subscribers{}",
                height,
                produced.certified.epoch,
                produced.certified.view,
                rate,
                feed.subscribers(),
                follower_statuses(&mut followers, height)
            );
            last_report = Instant::now();
            produced_since_report = 0;
        }
        let now = tokio::time::Instant::now();
        deadline = (deadline + args.block_time).max(now);
        if args.block_time.is_zero() {
            tokio::task::yield_now().await;
        }
    }

    for follower in followers {
        follower.stop(Duration::from_secs(10));
    }
    server
        .handle
        .stop()
        .map_err(|_| eyre!("the rpc server had already stopped"))?;
    devnet.store().sync().await?;
    say!(
        "stopped at height {}",
        devnet.store().finalized_height().unwrap_or_default()
    );
    Ok(())
}

/// The devnet's settings from the command line.
fn devnet_config(args: &DevnetArgs) -> DevnetConfig {
    DevnetConfig {
        chain_id: args.chain_id,
        validators: args.validators,
        committee: args.committee,
        epoch_length: args.epoch_length,
        full_dkg_at_epochs: args
            .full_dkg_at_epochs
            .iter()
            .copied()
            .collect::<BTreeSet<_>>(),
        seed: args.seed,
        fork_at: args.fork_at,
        block_time: args.block_time,
        tip1123_time: args.tip1123_time,
        ..DevnetConfig::default()
    }
}

/// Starts `--followers` follower processes of the devnet at `upstream`.
fn start_followers(
    args: &DevnetArgs,
    profile_path: &Path,
    upstream: &str,
) -> eyre::Result<Vec<FollowerProcess>> {
    let mut followers = Vec::with_capacity(args.followers);
    for index in 1..=args.followers {
        followers.push(FollowerProcess::start(
            &args.datadir,
            index,
            profile_path,
            upstream,
        )?);
    }
    if !followers.is_empty() {
        say!(
            "started {} followers (datadirs and logs under {})",
            followers.len(),
            args.datadir.join("followers").display()
        );
    }
    Ok(followers)
}

/// Serves until `shutdown`, reporting the followers once a second while there are any.
async fn idle_until(
    devnet: &Devnet<commonware_runtime::tokio::Context>,
    followers: &mut [FollowerProcess],
    board: &DevnetBoard,
    shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
) {
    if followers.is_empty() {
        shutdown.await;
        return;
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = &mut *shutdown => return,
            _ = ticker.tick() => {
                let height = devnet.next_height() - 1;
                board.update(|status| {
                    status.blocks_per_second = 0.0;
                    status.followers = follower_views(followers, height);
                });
                say!(
                    "height {height} | epoch {} | idle{}",
                    devnet.epochs().epoch_of(height),
                    follower_statuses(followers, height)
                );
            }
        }
    }
}

/// Stops `server`, dropping every connection, and serves again on its address.
async fn serve_again<C: cairn_feed::ChainReader + Clone>(
    server: cairn_feed::RunningServer,
    served: &C,
    feed: &FeedState,
    rpc_config: &RpcConfig,
) -> eyre::Result<cairn_feed::RunningServer> {
    let addr = server.local_addr;
    let _ = server.handle.stop();
    server.handle.clone().stopped().await;
    // The old listener closes once its accept loop has seen the stop: until then
    // the address may still be taken, so binding it is tried again for a while.
    let mut attempts = 0;
    let server = loop {
        match cairn_feed::start(
            &addr.to_string(),
            served.clone(),
            feed.clone(),
            rpc_config.clone(),
        )
        .await
        {
            Ok(server) => break server,
            Err(_) if attempts < 250 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => {
                return Err(err)
                    .wrap_err_with(|| format!("serving again on {addr} after a disconnect"));
            }
        }
    };
    info!(%addr, "disconnected every subscriber (fault)");
    Ok(server)
}
