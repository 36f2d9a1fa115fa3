//! `cairn status` and `cairn explain`: ask a running follower or devnet for `cairn_status` or
//! `cairn_explain` over JSON-RPC and print the summary its status page shows.

use crate::report::NodeStatus;
use cairn_feed::{
    STATUS_METHOD,
    explain::{EXPLAIN_METHOD, Explanation},
};
use cairn_follow::upstream::http_url;
use clap::Args;
use eyre::{WrapErr, eyre};
use jsonrpsee::{core::client::ClientT, http_client::HttpClientBuilder, rpc_params};
use std::time::Duration;

/// The running node a command asks.
#[derive(Args, Debug)]
pub struct NodeAddress {
    /// The node's RPC address (its --rpc-addr; 127.0.0.1:8546 is a devnet's default):
    /// http://HOST:PORT, ws://HOST:PORT or HOST:PORT.
    #[arg(long, value_name = "URL", default_value = "127.0.0.1:8546")]
    rpc: String,
    /// How long to wait for the answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl NodeAddress {
    /// Calls `method` with `params` on the node.
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: jsonrpsee::core::params::ArrayParams,
    ) -> eyre::Result<T> {
        let url = http_url(&self.rpc).map_err(|err| eyre!("--rpc: {err}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .wrap_err("starting the async runtime")?;
        runtime.block_on(async {
            let client = HttpClientBuilder::default()
                .request_timeout(self.timeout)
                .build(&url)
                .map_err(|err| eyre!("--rpc {}: {err}", self.rpc))?;
            client
                .request(method, params)
                .await
                .map_err(|err| eyre!("{method} from {url}: {err}"))
        })
    }
}

/// Arguments of `cairn status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    node: NodeAddress,
    /// Print the status as JSON (what `cairn_status` answers) instead of the summary.
    #[arg(long)]
    json: bool,
}

/// Arguments of `cairn explain`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The block height to explain.
    #[arg(value_name = "HEIGHT")]
    height: u64,
    #[command(flatten)]
    node: NodeAddress,
    /// Print the explanation as JSON (what `cairn_explain` answers).
    #[arg(long)]
    json: bool,
}

/// Prints how the block at the height came to be trusted, as the node at `--rpc` explains it.
pub fn explain(args: ExplainArgs) -> eyre::Result<()> {
    let explanation: Explanation = args.node.call(EXPLAIN_METHOD, rpc_params![args.height])?;
    let text = if args.json {
        serde_json::to_string_pretty(&explanation)?
    } else {
        explanation.render()
    };
    say!("{}", text.trim_end());
    Ok(())
}

/// Prints the status of the node at `--rpc`: typed, as text or as JSON.
pub fn run(args: StatusArgs) -> eyre::Result<()> {
    let status: NodeStatus = args.node.call(STATUS_METHOD, rpc_params![])?;
    let text = if args.json {
        serde_json::to_string_pretty(&status)?
    } else {
        status.to_string()
    };
    say!("{}", text.trim_end());
    Ok(())
}
