//! `cairn status` and `cairn explain`: ask a running follower or devnet for `cairn_status` or
//! `cairn_explain` over JSON-RPC and print the summary its status page shows.

use cairn_feed::{
    STATUS_METHOD,
    explain::{EXPLAIN_METHOD, Explanation},
};
use clap::Args;
use eyre::{WrapErr, eyre};
use jsonrpsee::{core::client::ClientT, http_client::HttpClientBuilder, rpc_params};
use serde_json::Value;
use std::{fmt::Write as _, time::Duration};

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
        let url = http_url(&self.rpc);
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

/// The HTTP URL of an RPC address given as `HOST:PORT`, `ws://`, `wss://`, `http://` or
/// `https://`.
fn http_url(rpc: &str) -> String {
    if let Some(rest) = rpc.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = rpc.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if rpc.starts_with("http://") || rpc.starts_with("https://") {
        rpc.to_string()
    } else {
        format!("http://{rpc}")
    }
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

/// Prints the status of the node at `--rpc`.
pub fn run(args: StatusArgs) -> eyre::Result<()> {
    let status: Value = args.node.call(STATUS_METHOD, rpc_params![])?;
    let text = if args.json {
        serde_json::to_string_pretty(&status)?
    } else {
        summary(&status)
    };
    say!("{}", text.trim_end());
    Ok(())
}

fn u64_of(value: &Value, key: &str) -> u64 {
    value.get(key).and_then(Value::as_u64).unwrap_or_default()
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("?")
}

fn list<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The first 14 and last 10 characters of a long hex string (any text the node sent, so cut
/// by characters, never inside one).
fn short(hex: &str) -> String {
    let chars: Vec<char> = hex.chars().collect();
    if chars.len() > 26 {
        let head: String = chars[..14].iter().collect();
        let tail: String = chars[chars.len() - 10..].iter().collect();
        format!("{head}…{tail}")
    } else {
        hex.to_string()
    }
}

/// The status as lines of text (what the status page shows).
pub fn summary(status: &Value) -> String {
    let mut out = String::new();
    let role = str_of(status, "role");
    let rate = status
        .get("blocksPerSecond")
        .and_then(Value::as_f64)
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{role} of {} | executed {} | verified {} | target {} | lag {} | epoch {} (epochs of {}) | {rate:.1} blocks/s",
        str_of(status, "chain"),
        u64_of(status, "executedHeight"),
        u64_of(status, "verifiedHeight"),
        u64_of(status, "targetHeight"),
        u64_of(status, "targetHeight").saturating_sub(u64_of(status, "executedHeight")),
        u64_of(status, "epoch"),
        u64_of(status, "epochLength"),
    );
    if role == "follower" {
        let _ = writeln!(
            out,
            "history from height {} | newest epoch with a key {}",
            u64_of(status, "historyFrom"),
            status
                .get("keyEpoch")
                .and_then(Value::as_u64)
                .map_or("none".to_string(), |epoch| epoch.to_string())
        );
    }
    let _ = writeln!(out, "identities:");
    for change in list(status, "identities") {
        let from = match change.get("boundary").and_then(Value::as_u64) {
            Some(boundary) => format!("boundary {boundary}"),
            None => "genesis".to_string(),
        };
        let _ = writeln!(
            out,
            "  epoch {} from {from}: {}",
            u64_of(change, "epoch"),
            short(str_of(change, "identity"))
        );
    }
    if role == "follower" {
        let upstreams = list(status, "upstreams");
        let healthy = upstreams
            .iter()
            .filter(|u| u.get("healthy").and_then(Value::as_bool) == Some(true))
            .count();
        let _ = writeln!(out, "upstreams {healthy}/{} healthy:", upstreams.len());
        for upstream in upstreams {
            let state = if let Some(left) = upstream.get("quarantinedSecs").and_then(Value::as_u64)
            {
                format!("quarantined ({left} s)")
            } else if upstream.get("healthy").and_then(Value::as_bool) == Some(true) {
                "healthy".into()
            } else if upstream.get("connected").and_then(Value::as_bool) == Some(true) {
                "unhealthy".into()
            } else {
                "disconnected".into()
            };
            let latency = upstream
                .get("latencyMs")
                .and_then(Value::as_f64)
                .map_or("-".to_string(), |ms| format!("{ms:.1} ms"));
            let calls = u64_of(upstream, "calls");
            let slowed = u64_of(upstream, "slowedDown");
            let _ = writeln!(
                out,
                "  {} {state} | announced {} | latency {latency} | served {} | failed {} | invalid {} | drops {} | calls {calls}, slowed down {slowed} ({:.1}%)",
                str_of(upstream, "url"),
                u64_of(upstream, "announcedHeight"),
                u64_of(upstream, "served"),
                u64_of(upstream, "failed"),
                u64_of(upstream, "invalid"),
                u64_of(upstream, "disconnects"),
                100.0 * slowed as f64 / calls.max(1) as f64,
            );
        }
        if let Some(certificates) = status.get("certificates") {
            let served = u64_of(certificates, "served");
            let certified = u64_of(certificates, "certified");
            let _ = writeln!(
                out,
                "certificates ({}): {certified} of {served} served heights have their own ({:.1}%), {} missing | filled {} ({:.1}/s), on demand {}, refused {}",
                str_of(certificates, "mode"),
                if served == 0 {
                    100.0
                } else {
                    100.0 * certified as f64 / served as f64
                },
                u64_of(certificates, "missing"),
                u64_of(certificates, "filled"),
                certificates
                    .get("filledPerSecond")
                    .and_then(Value::as_f64)
                    .unwrap_or_default(),
                u64_of(certificates, "onDemand"),
                u64_of(certificates, "refused"),
            );
        }
        let by_check = status
            .get("rejectedByCheck")
            .and_then(Value::as_object)
            .map(|checks| {
                checks
                    .iter()
                    .map(|(check, count)| format!("{check} {}", count.as_u64().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "rejected events {}{}",
            u64_of(status, "rejected"),
            if by_check.is_empty() {
                String::new()
            } else {
                format!(": {by_check}")
            }
        );
        let damaged = u64_of(status, "damagedBlocks");
        if damaged > 0 {
            let _ = writeln!(
                out,
                "damaged blocks on disk {damaged}, fetched again and repaired {}",
                u64_of(status, "repairedBlocks")
            );
        }
        let damaged = u64_of(status, "damagedCertificates");
        if damaged > 0 {
            let _ = writeln!(
                out,
                "damaged finalizations on disk {damaged}, fetched again, verified and repaired {}",
                u64_of(status, "repairedCertificates")
            );
        }
        let evidence = list(status, "evidence");
        if evidence.is_empty() {
            let _ = writeln!(out, "evidence of conflicting certificates: none");
        }
        for found in evidence {
            let _ = writeln!(
                out,
                "HALTED: conflicting certificates at height {} (epoch {}) from {} and {}; evidence {}",
                u64_of(found, "height"),
                u64_of(found, "epoch"),
                str_of(found, "first"),
                str_of(found, "second"),
                str_of(found, "file"),
            );
        }
    }
    if role == "devnet" {
        let _ = writeln!(out, "committees:");
        for committee in list(status, "committees") {
            let _ = writeln!(
                out,
                "  epoch {} (heights {}..={}): threshold {} of {}",
                u64_of(committee, "epoch"),
                u64_of(committee, "firstHeight"),
                u64_of(committee, "lastHeight"),
                u64_of(committee, "threshold"),
                list(committee, "validators").len(),
            );
        }
        let _ = writeln!(out, "ceremonies:");
        for ceremony in list(status, "ceremonies") {
            let _ = writeln!(
                out,
                "  for epoch {}: {} ({} dealers, {} players)",
                u64_of(ceremony, "forEpoch"),
                str_of(ceremony, "kind"),
                u64_of(ceremony, "dealers"),
                u64_of(ceremony, "players"),
            );
        }
        let _ = writeln!(out, "followers:");
        for follower in list(status, "followers") {
            let _ = writeln!(
                out,
                "  {} at {} | verified {} | lag {}",
                str_of(follower, "name"),
                follower
                    .get("rpc")
                    .and_then(Value::as_str)
                    .unwrap_or("(no rpc yet)"),
                u64_of(follower, "height"),
                u64_of(follower, "lag"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::http_url;

    #[test]
    fn long_values_are_shortened_by_characters() {
        let hex = format!("0x{}", "ab".repeat(48));
        assert_eq!(super::short(&hex), "0xabababababab…ababababab");
        // Multi-byte characters from a misbehaving node are never cut in half.
        let odd = "é".repeat(40);
        assert_eq!(super::short(&odd).chars().count(), 25);
        assert_eq!(super::short("0x12"), "0x12");
    }

    #[test]
    fn rpc_addresses_become_http_urls() {
        assert_eq!(http_url("127.0.0.1:8546"), "http://127.0.0.1:8546");
        assert_eq!(http_url("ws://h:1"), "http://h:1");
        assert_eq!(http_url("wss://h"), "https://h");
        assert_eq!(http_url("https://h"), "https://h");
    }
}
