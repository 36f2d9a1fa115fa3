//! `cairn inspect`: offline decoding and verification of a certified block or a DKG outcome.

use alloy_primitives::hex;
use cairn_dkg::{DkgOutcome, OutcomeLayout, OutcomeLimits};
use cairn_epoch::{
    ChainProfile, DEFAULT_MAX_EPOCHS, FinalizationVerifier, IdentityLedger, IdentitySource,
    LedgerError, SchemeProvider, VerifiedBlock, VerifyError, decode_certificate,
};
use cairn_follow::upstream::{ClientConfig, UpstreamClient};
use cairn_primitives::CertifiedBlock;
use clap::{Args, Subcommand};
use commonware_codec::Encode;
use commonware_cryptography::ed25519::PublicKey;
use commonware_utils::ordered::Set;
use eyre::{WrapErr, eyre};
use serde::Serialize;
use std::{io::Read, path::Path, process::ExitCode};

/// Exit status when the input verified / decoded.
const EXIT_VALID: u8 = 0;
/// Exit status when a certificate does not verify.
const EXIT_INVALID: u8 = 1;
/// Exit status when the input (or the profile) is malformed or unreadable.
const EXIT_MALFORMED: u8 = 2;

/// What to inspect.
#[derive(Subcommand, Debug)]
pub enum InspectCommand {
    /// Verify a certified block (the JSON `consensus_getFinalization` returns).
    ///
    /// Runs every check in order: decode, digest, epoch, identity, signature, and for a boundary
    /// block the next epoch's DKG outcome. Exit status: 0 valid, 1 does not verify (the failed
    /// check is named; `boundary_chain` when a boundary on the way from genesis fails), 2
    /// malformed or unreadable input, or an unreachable upstream.
    Certificate(CertificateArgs),
    /// Decode an on-chain DKG outcome (a genesis or boundary header's `extraData`).
    ///
    /// Exit status: 0 decoded, 2 malformed or unreadable input.
    DkgOutcome(OutcomeArgs),
    /// Print a chain profile as the JSON file `--chain FILE` reads.
    ///
    /// Write a built-in profile out to add a network identity Tempo published after this
    /// release, then follow with the file (docs/operator.md). Exit status: 0 printed, 2 the
    /// profile cannot be loaded.
    Profile(ProfileArgs),
}

/// Arguments of `cairn inspect profile`.
#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// A built-in name (tempo-mainnet, tempo-moderato) or a profile JSON file.
    #[arg(value_name = "PROFILE|FILE")]
    chain: String,
}

/// Arguments of `cairn inspect certificate`.
#[derive(Args, Debug)]
pub struct CertificateArgs {
    /// Chain profile: a built-in name (tempo-mainnet, tempo-moderato) or a profile JSON file.
    #[arg(long, value_name = "PROFILE|FILE", default_value = "tempo-mainnet")]
    chain: String,
    /// Learn the certificate's epoch key from first principles: walk the boundary blocks from
    /// the profile's genesis outcome through this node's `consensus_getFinalization`, each
    /// verified with its epoch's key (ws://, wss://, http://, https:// or host:port).
    /// [default: none; the epoch key comes from the profile]
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// The certified block JSON (a bare object or a JSON-RPC response), or `-` for stdin.
    #[arg(value_name = "FILE|-")]
    input: String,
}

/// Arguments of `cairn inspect dkg-outcome`.
#[derive(Args, Debug)]
pub struct OutcomeArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// The byte layout to decode: `legacy` (with the next ceremony's players and kind) or
    /// `tip1123` (the outcome alone). Either is read strictly: bytes after the outcome are an
    /// error. A chain's boundary uses the layout its timestamp selects (the profile's
    /// `tip1123Time`); `inspect certificate` applies that rule itself.
    #[arg(long, value_enum, default_value_t = LayoutArg::Legacy)]
    format: LayoutArg,
    /// The outcome as hex (with or without 0x), a file holding that hex, or `-` for stdin.
    #[arg(value_name = "HEX|FILE|-")]
    input: String,
}

/// An outcome layout named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LayoutArg {
    /// `varint(epoch) || Output || next_players || is_next_full_dkg`.
    Legacy,
    /// `varint(epoch) || Output`.
    Tip1123,
}

impl From<LayoutArg> for OutcomeLayout {
    fn from(arg: LayoutArg) -> Self {
        match arg {
            LayoutArg::Legacy => Self::Legacy,
            LayoutArg::Tip1123 => Self::Tip1123,
        }
    }
}

/// Runs an inspect command and returns the process exit status.
pub fn run(command: InspectCommand) -> ExitCode {
    match command {
        InspectCommand::Certificate(args) => inspect_certificate(&args),
        InspectCommand::DkgOutcome(args) => inspect_outcome(&args),
        InspectCommand::Profile(args) => match ChainProfile::resolve(&args.chain) {
            Ok(profile) => {
                println!("{}", profile.to_json());
                ExitCode::from(EXIT_VALID)
            }
            Err(err) => {
                eprintln!("error: --chain {}: {err}", args.chain);
                ExitCode::from(EXIT_MALFORMED)
            }
        },
    }
}

/// The `--json` report of `inspect certificate`.
#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct CertificateReport {
    valid: bool,
    /// The failed check (`malformed`, `digest_mismatch`, ...), or null.
    error: Option<&'static str>,
    /// Human-readable reason for the failure, or null.
    reason: Option<String>,
    height: Option<u64>,
    epoch: Option<u64>,
    view: Option<u64>,
    parent_view: Option<u64>,
    digest: Option<String>,
    /// Hex of the identity that verified the certificate.
    identity: Option<String>,
    identity_source: Option<String>,
    boundary: bool,
    next_epoch: Option<OutcomeReport>,
    /// With `--upstream`: the identities learnt from the boundary chain.
    ledger: Option<LedgerReport>,
}

/// What the boundary walk established.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct LedgerReport {
    boundaries_verified: u64,
    runs: Vec<RunReport>,
}

/// One run of epochs sharing an identity.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct RunReport {
    from_epoch: u64,
    identity: String,
    /// The boundary block that announced it (null for genesis).
    boundary_height: Option<u64>,
}

/// The decoded fields of a DKG outcome.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct OutcomeReport {
    epoch: u64,
    identity: String,
    threshold: u32,
    players: Vec<String>,
    dealers: Vec<String>,
    revealed: Vec<String>,
    /// `legacy` or `tip1123`.
    layout: &'static str,
    /// Only in the legacy layout.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_players: Option<Vec<String>>,
    /// Only in the legacy layout.
    #[serde(skip_serializing_if = "Option::is_none")]
    is_next_full_dkg: Option<bool>,
}

impl OutcomeReport {
    fn new(outcome: &DkgOutcome) -> Self {
        Self {
            epoch: outcome.epoch,
            identity: hex::encode(outcome.identity().encode()),
            threshold: outcome.threshold(),
            players: keys_hex(outcome.players()),
            dealers: keys_hex(outcome.dealers()),
            revealed: keys_hex(outcome.output.revealed()),
            layout: outcome.layout().name(),
            next_players: outcome.next.as_ref().map(|next| keys_hex(&next.players)),
            is_next_full_dkg: outcome.next.as_ref().map(|next| next.full_dkg),
        }
    }

    fn print_text(&self, indent: &str) {
        say!("{indent}epoch          {}", self.epoch);
        say!("{indent}identity       {}", self.identity);
        say!(
            "{indent}threshold      {} of {} players",
            self.threshold,
            self.players.len()
        );
        print_keys(indent, "players", &self.players);
        print_keys(indent, "dealers", &self.dealers);
        if !self.revealed.is_empty() {
            print_keys(indent, "revealed", &self.revealed);
        }
        say!("{indent}layout         {}", self.layout);
        if let Some(players) = &self.next_players {
            print_keys(indent, "next players", players);
        }
        say!(
            "{indent}next ceremony  {}",
            match self.is_next_full_dkg {
                Some(true) => "full DKG (new identity)",
                Some(false) => "reshare (identity kept)",
                None => "not announced (the TIP-1123 layout leaves it out)",
            }
        );
    }
}

fn keys_hex(set: &Set<PublicKey>) -> Vec<String> {
    set.iter().map(|key| hex::encode(key.encode())).collect()
}

fn print_keys(indent: &str, label: &str, keys: &[String]) {
    say!("{indent}{label:<14} {}", keys.len());
    for key in keys {
        say!("{indent}  {key}");
    }
}

fn inspect_certificate(args: &CertificateArgs) -> ExitCode {
    let mut report = CertificateReport::default();
    let status = match certificate_report(args, &mut report) {
        Ok(status) => status,
        Err(err) => {
            report.error = Some("malformed");
            report.reason = Some(format!("{err:#}"));
            EXIT_MALFORMED
        }
    };
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serializes")
        );
    } else {
        print_certificate_text(&report);
    }
    ExitCode::from(status)
}

/// Fills `report`; `Err` means the input or profile could not be read at all.
fn certificate_report(args: &CertificateArgs, report: &mut CertificateReport) -> eyre::Result<u8> {
    let profile = ChainProfile::resolve(&args.chain)
        .wrap_err_with(|| format!("loading chain profile `{}`", args.chain))?;
    let text = read_input(&args.input)?;
    let certified = parse_certified_block(&text)
        .wrap_err_with(|| format!("parsing a certified block from {}", describe(&args.input)))?;

    // Describe whatever can be decoded, even when verification fails later.
    if let Some(block) = &certified.block {
        report.height = Some(block.height());
        report.digest = Some(block.hash().to_string());
        report.boundary = profile.epochs.is_boundary(block.height());
    }
    if let Ok(finalization) = decode_certificate(&certified.certificate) {
        report.epoch = Some(finalization.proposal.round.epoch().get());
        report.view = Some(finalization.proposal.round.view().get());
        report.parent_view = Some(finalization.proposal.parent.get());
    }

    let provider = match (&args.upstream, report.epoch) {
        (Some(url), Some(epoch)) => match walk_boundaries(&profile, url, epoch, report) {
            Ok(provider) => provider,
            Err(status) => return Ok(status),
        },
        _ => profile.scheme_provider(DEFAULT_MAX_EPOCHS),
    };
    let verifier = FinalizationVerifier::new(profile.epochs.clone(), provider);
    match verifier.verify(&mut rand::rng(), &certified) {
        Ok(verified) => {
            fill_verified(report, &verified);
            if let Some(ledger) = &report.ledger {
                report.identity_source = Some(format!(
                    "boundary chain from genesis ({} boundaries verified)",
                    ledger.boundaries_verified
                ));
            }
            Ok(EXIT_VALID)
        }
        Err(err) => {
            report.error = Some(err.check());
            report.reason = Some(err.to_string());
            Ok(match err {
                VerifyError::Malformed(_) => EXIT_MALFORMED,
                _ => EXIT_INVALID,
            })
        }
    }
}

/// Walks the boundary chain up to `epoch` through `url`; on failure fills `report` and returns
/// the exit status.
fn walk_boundaries(
    profile: &ChainProfile,
    url: &str,
    epoch: u64,
    report: &mut CertificateReport,
) -> Result<SchemeProvider, u8> {
    let mut ledger = IdentityLedger::from_genesis(profile).with_machine_pool();
    let walked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| eyre!("starting the async runtime: {err}"))
        .and_then(|runtime| {
            runtime.block_on(async {
                let upstream = UpstreamClient::connect(url, &ClientConfig::default()).await?;
                ledger
                    .advance_to(&mut rand::rng(), &upstream, epoch)
                    .await
                    .map_err(eyre::Report::new)
            })
        });
    report.ledger = Some(LedgerReport {
        boundaries_verified: ledger.known_through(),
        runs: ledger
            .runs()
            .iter()
            .map(|run| RunReport {
                from_epoch: run.from_epoch,
                identity: hex::encode(run.identity.encode()),
                boundary_height: run.evidence.as_ref().map(|evidence| evidence.height),
            })
            .collect(),
    });
    if let Err(err) = walked {
        let broken = matches!(
            err.downcast_ref::<LedgerError>(),
            Some(LedgerError::Broken { .. } | LedgerError::NotTheBoundary { .. })
        );
        report.error = Some(if broken { "boundary_chain" } else { "upstream" });
        report.reason = Some(format!("{err:#}"));
        return Err(if broken { EXIT_INVALID } else { EXIT_MALFORMED });
    }
    Ok(ledger
        .provider_for(&profile.namespace, epoch)
        .expect("the ledger reached the epoch"))
}

fn fill_verified(report: &mut CertificateReport, verified: &VerifiedBlock) {
    report.valid = true;
    report.identity = Some(hex::encode(verified.identity.encode()));
    report.identity_source = Some(match verified.identity_source {
        IdentitySource::Registered => "registered for the epoch".to_string(),
        IdentitySource::Configured { from_epoch } => {
            format!("configured network identity, valid from epoch {from_epoch}")
        }
    });
    report.next_epoch = verified.next_epoch.as_ref().map(OutcomeReport::new);
}

fn print_certificate_text(report: &CertificateReport) {
    if report.valid {
        say!("certificate VALID");
    } else {
        say!(
            "certificate INVALID ({}): {}",
            report.error.unwrap_or("unknown"),
            report.reason.as_deref().unwrap_or("")
        );
    }
    let show = |label: &str, value: Option<String>| {
        if let Some(value) = value {
            say!("  {label:<14} {value}");
        }
    };
    show("height", report.height.map(|h| h.to_string()));
    show("epoch", report.epoch.map(|e| e.to_string()));
    show(
        "view",
        report
            .view
            .map(|v| format!("{v} (parent {})", report.parent_view.unwrap_or_default())),
    );
    show("digest", report.digest.clone());
    show("identity", report.identity.clone());
    show("identity from", report.identity_source.clone());
    if let Some(next) = &report.next_epoch {
        say!("  boundary block: DKG outcome for the next epoch");
        next.print_text("    ");
    }
}

fn inspect_outcome(args: &OutcomeArgs) -> ExitCode {
    let decoded = outcome_bytes(&args.input).and_then(|bytes| {
        let layout = OutcomeLayout::from(args.format);
        DkgOutcome::decode_strict(&bytes, layout, &OutcomeLimits::default())
            .map_err(|err| eyre!("not a valid DKG outcome in the {layout} layout: {err}"))
    });
    match decoded {
        Ok(outcome) => {
            let report = OutcomeReport::new(&outcome);
            if args.json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("the report serializes")
                );
            } else {
                say!("DKG outcome");
                report.print_text("  ");
            }
            ExitCode::from(EXIT_VALID)
        }
        Err(err) => {
            if args.json {
                let value = serde_json::json!({ "valid": false, "error": format!("{err:#}") });
                say!("{value:#}");
            } else {
                eprintln!("error: {err:#}");
            }
            ExitCode::from(EXIT_MALFORMED)
        }
    }
}

/// The outcome bytes from hex given inline, in a file, or on stdin.
fn outcome_bytes(input: &str) -> eyre::Result<Vec<u8>> {
    let text = if input == "-" || Path::new(input).is_file() {
        read_input(input)?
    } else {
        input.to_string()
    };
    hex::decode(text.trim()).map_err(|err| {
        eyre!(
            "{} is not hex ({err}) and not a readable file",
            describe(input)
        )
    })
}

/// Parses a certified block given bare, wrapped in a JSON-RPC response (`{"result": {...}}`),
/// or as one side of an evidence file (`{"source": ..., "certified": {...}}`).
fn parse_certified_block(text: &str) -> eyre::Result<CertifiedBlock> {
    let mut value: serde_json::Value = serde_json::from_str(text).wrap_err("invalid JSON")?;
    if let Some(result) = value.get_mut("result").map(serde_json::Value::take) {
        if result.is_null() {
            return Err(eyre!("the JSON-RPC response has a null result"));
        }
        value = result;
    }
    if let Some(certified) = value.get_mut("certified").map(serde_json::Value::take) {
        value = certified;
    }
    serde_json::from_value(value).wrap_err("not a certified block")
}

/// Most bytes read from a file or stdin.
const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

fn read_input(input: &str) -> eyre::Result<String> {
    let mut text = String::new();
    if input == "-" {
        std::io::stdin()
            .take(MAX_INPUT_BYTES)
            .read_to_string(&mut text)
            .wrap_err("reading stdin")?;
    } else {
        std::fs::File::open(input)
            .wrap_err_with(|| format!("opening {input}"))?
            .take(MAX_INPUT_BYTES)
            .read_to_string(&mut text)
            .wrap_err_with(|| format!("reading {input}"))?;
    }
    Ok(text)
}

fn describe(input: &str) -> String {
    if input == "-" {
        "stdin".to_string()
    } else {
        format!("`{input}`")
    }
}
