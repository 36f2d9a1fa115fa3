//! `cairn validator`: one simplex validator as its own process, with its own datadir, joining
//! the validators of a network file (as `cairn devnet --consensus simplex` writes them).

use crate::report::NodeStatus;
use cairn_validator::process::{KeyFile, NetworkFile, RenderStatus};
use clap::Args;
use commonware_runtime::Runner as _;
use eyre::{WrapErr, eyre};
use std::{path::PathBuf, sync::Arc};

/// Arguments of `cairn validator`.
#[derive(Args, Debug)]
pub struct ValidatorArgs {
    /// The network file every validator shares: the pool with each validator's p2p and RPC
    /// address, the chain's parameters and its genesis block.
    #[arg(long, value_name = "FILE")]
    network: PathBuf,
    /// This validator's position in the pool (from 0).
    #[arg(long, value_name = "I")]
    index: usize,
    /// Directory for this validator's chain, consensus state and secrets (created if missing).
    /// Starting again on it continues where the validator stopped.
    #[arg(long, value_name = "DIR")]
    datadir: PathBuf,
    /// The validator's key file (its ed25519 key, and its share of the genesis key when it is
    /// in the first committee; the share is moved into the datadir's secrets on the first
    /// start). [default: DIR/key.json]
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Stop when standard input closes: a supervisor that starts validators with a pipe there
    /// takes them down with it, however it ends.
    #[arg(long)]
    stop_with_stdin: bool,
}

/// Resolves once standard input reaches its end (or fails).
async fn stdin_closed() {
    let (closed, wait) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        let _ = closed.send(());
    });
    let _ = wait.await;
}

/// Runs the validator until it stops (on Ctrl-C or SIGTERM, or when standard input closes with
/// `--stop-with-stdin`); an error names why.
pub fn run(args: ValidatorArgs) -> eyre::Result<()> {
    let network = NetworkFile::load(&args.network)?;
    let key_path = args.key.unwrap_or_else(|| args.datadir.join("key.json"));
    let (key, share) = KeyFile::load(&key_path)?;
    std::fs::create_dir_all(&args.datadir)
        .wrap_err_with(|| format!("creating {}", args.datadir.display()))?;
    let config = commonware_runtime::tokio::Config::new()
        .with_worker_threads(2)
        .with_storage_directory(args.datadir.join("store"));
    let index = args.index;
    let stop_with_stdin = args.stop_with_stdin;
    let render: RenderStatus =
        Arc::new(|status| serde_json::to_value(NodeStatus::Validator(status)).unwrap_or_default());
    commonware_runtime::tokio::Runner::new(config).start(|context| async move {
        let stdin = async {
            if stop_with_stdin {
                stdin_closed().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = cairn_validator::process::run(context, network, index, key, share, render) => {
                result.map_err(|err| eyre!("validator {index}: {err}"))
            }
            () = crate::common::shutdown_signal() => Ok(()),
            () = stdin => Ok(()),
        }
    })
}
