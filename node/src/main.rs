//! `cairn`: a verifying follower for epoch-rotating Commonware BFT chains, wire-compatible with
//! Tempo.

mod common;
mod devnet;
mod follow;
mod followers;
mod inspect;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// A verifying follower for epoch-rotating Commonware BFT chains (wire-compatible with Tempo).
#[derive(Parser, Debug)]
#[command(name = "cairn", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Decode and verify consensus artifacts (certificates, DKG outcomes) offline.
    #[command(subcommand)]
    Inspect(inspect::InspectCommand),
    /// Run a local chain with real DKG rotation and real threshold certificates, served over
    /// Tempo's RPC.
    Devnet(devnet::DevnetArgs),
    /// Follow an upstream node: verify every finalization with its epoch's key, repair gaps,
    /// store the verified chain and serve it again over the same RPC.
    Follow(follow::FollowArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect(command) => inspect::run(command),
        Command::Devnet(args) => exit_code(devnet::run(args)),
        Command::Follow(args) => exit_code(follow::run(args)),
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
