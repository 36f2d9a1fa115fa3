//! `cairn`: a verifying follower for epoch-rotating Commonware BFT chains, wire-compatible with
//! Tempo.

/// `println!` for commands: a line on stdout, and a quiet exit when stdout is gone (a pipe
/// whose reader closed, as in `cairn inspect ... | head -3`).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::common::print_line(format_args!($($arg)*))
    };
}

mod common;
mod config;
mod cpus;
mod devnet;
mod disk;
mod fds;
mod follow;
mod followers;
mod inspect;
mod progress;
mod report;
mod status;
mod validator;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};
use commonware_allocator::mimalloc::{Config as AllocatorConfig, MiMalloc, Purge};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// mimalloc, purging freed memory back to the system a second after it is freed: glibc's
/// allocator kept the memory of a burst of slow clients after they left (about 100 MiB for a
/// hundred connections).
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc::new(AllocatorConfig {
    purge: Purge::After(std::time::Duration::from_secs(1)),
    // With transparent huge pages, only whole 2 MiB granules are purged.
    transparent_huge_pages: false,
    ..AllocatorConfig::DEFAULT
});

/// A verifying follower for epoch-rotating Commonware BFT chains (wire-compatible with Tempo).
#[derive(Parser, Debug)]
#[command(name = "cairn", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr: `text` for people, `json` (one object per line) for log shippers.
    /// The level comes from CAIRN_LOG (e.g. `info`, `cairn_follow=debug`; `warn` when unset).
    #[arg(
        long,
        global = true,
        value_name = "text|json",
        default_value = "text",
        env = "CAIRN_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How the log is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Decode and verify consensus artifacts (certificates, DKG outcomes) offline.
    #[command(subcommand)]
    Inspect(inspect::InspectCommand),
    /// Run a local chain with real DKG rotation and real threshold certificates, served over
    /// Tempo's RPC.
    Devnet(devnet::DevnetArgs),
    /// Run one simplex validator (as `cairn devnet --consensus simplex` starts them): it
    /// connects to the pool of a network file, takes part in consensus and in every epoch's
    /// reshare, and serves what it finalizes over Tempo's RPC.
    Validator(validator::ValidatorArgs),
    /// Follow an upstream node: verify every finalization with its epoch's key, repair gaps,
    /// store the verified chain and serve it again over the same RPC.
    Follow(follow::FollowArgs),
    /// Print the status of a running follower or devnet (what its /status page shows): heights
    /// and lag, the identity history, upstreams, rejected events, committees.
    Status(status::StatusArgs),
    /// Say how the block at a height came to be trusted: its hash, the certificate or the
    /// parent-hash links that authenticate it, the key and boundary behind that certificate,
    /// the upstream that served its bytes and when, and the root of trust.
    Explain(status::ExplainArgs),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let filter = EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Inspect(command) => inspect::run(command),
        Command::Devnet(args) => exit_code(devnet::run(args)),
        Command::Validator(args) => exit_code(validator::run(args)),
        Command::Follow(args) => {
            let follow_matches = matches
                .subcommand_matches("follow")
                .cloned()
                .unwrap_or_default();
            exit_code(follow::run(args, &follow_matches))
        }
        Command::Status(args) => exit_code(status::run(args)),
        Command::Explain(args) => exit_code(status::explain(args)),
    }
}

/// Exit status of a follower that halted on conflicting certificates.
const EXIT_SAFETY_FAULT: u8 = 3;

fn exit_code(result: eyre::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<follow::SafetyFault>().is_some() {
                ExitCode::from(EXIT_SAFETY_FAULT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
