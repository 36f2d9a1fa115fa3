//! Chain profiles: what a follower must know about a chain before it sees any block (signature
//! namespace, epoch length, the genesis DKG outcome, and optionally a network identity with the
//! epoch it is valid from).
//!
//! Built in: `tempo-mainnet` and `tempo-moderato`. Any other profile is a JSON file of the same
//! shape:
//!
//! ```json
//! { "name": "my-devnet", "chainId": 1337, "namespace": "TEMPO", "epochLength": 20,
//!   "genesisOutcome": "0x...", "networkIdentity": { "identity": "0x...", "fromEpoch": 0 } }
//! ```
//!
//! A profile may carry the whole genesis header (`genesisHeader`, in the header's JSON form)
//! instead of, or beside, `genesisOutcome`; its `extraData` is the genesis outcome.

use crate::{EpochStrategy, InvalidEpochLength, SchemeProvider};
use alloy_primitives::hex;
use cairn_dkg::{DkgOutcome, Identity, OutcomeError, OutcomeLayout, OutcomeLimits};
use cairn_primitives::{BlockHeader as _, Digest, TempoHeader};
use commonware_codec::DecodeExt;
use commonware_consensus::types::Epoch;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const TEMPO_MAINNET: &str = include_str!("../profiles/tempo-mainnet.json");
const TEMPO_MODERATO: &str = include_str!("../profiles/tempo-moderato.json");

/// Names of the built-in profiles.
pub const BUILTIN_PROFILES: [&str; 2] = ["tempo-mainnet", "tempo-moderato"];

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The argument is not a built-in name and the file could not be read.
    #[error(
        "`{}` is neither a built-in profile ({}) nor a readable file: {error}",
        path.display(),
        BUILTIN_PROFILES.join(", ")
    )]
    Read {
        /// The path tried.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The JSON does not have the profile shape.
    #[error("profile is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    /// The namespace is empty.
    #[error("profile namespace is empty")]
    EmptyNamespace,
    /// The epoch length is unusable.
    #[error("profile {0}")]
    EpochLength(#[from] InvalidEpochLength),
    /// The genesis outcome is not valid hex.
    #[error("genesisOutcome is not valid hex: {0}")]
    GenesisHex(hex::FromHexError),
    /// The genesis outcome does not decode in the layout its timestamp selects.
    #[error("genesisOutcome does not decode in the {0} layout: {1}")]
    GenesisOutcome(OutcomeLayout, OutcomeError),
    /// Neither a genesis outcome nor a genesis header was given.
    #[error("profile needs genesisOutcome or genesisHeader")]
    NoGenesis,
    /// The genesis header's `extraData` differs from `genesisOutcome`.
    #[error("genesisHeader.extraData does not match genesisOutcome")]
    GenesisMismatch,
    /// The genesis header is not at height 0.
    #[error("genesisHeader is at height {0}, expected 0")]
    GenesisHeight(u64),
    /// The genesis outcome is for an epoch other than 0.
    #[error("genesisOutcome is for epoch {0}, expected 0")]
    GenesisEpoch(u64),
    /// Two configured identities start at the same epoch.
    #[error("networkIdentities lists two identities from epoch {0}")]
    DuplicateIdentityEpoch(u64),
    /// The configured identity is not a valid G2 point.
    #[error("networkIdentity.identity is not a valid BLS12-381 G2 point (96 bytes hex): {0}")]
    Identity(String),
    /// A trusted block is unusable.
    #[error("trustedBlocks: {0}")]
    TrustedBlock(String),
}

/// A block an operator trusts at a height (weak subjectivity): a start or catch-up whose
/// verified chain holds another block there is refused. A walk from genesis trusts every past
/// committee; a recent block pinned this way means old committees' keys, leaked, cannot
/// certify another history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedBlock {
    /// Its height.
    pub height: u64,
    /// Its hash.
    pub hash: Digest,
}

impl std::str::FromStr for TrustedBlock {
    type Err = String;

    /// `HEIGHT:HASH`, the hash as 32 bytes of hex (with or without `0x`).
    fn from_str(text: &str) -> Result<Self, String> {
        let (height, hash) = text
            .split_once(':')
            .ok_or_else(|| format!("`{text}` is not HEIGHT:HASH"))?;
        let height = height
            .trim()
            .parse()
            .map_err(|_| format!("`{height}` in `{text}` is not a block height"))?;
        let bytes = hex::decode(hash.trim())
            .map_err(|err| format!("the hash in `{text}` is not hex: {err}"))?;
        let hash: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            format!("the hash in `{text}` has {} bytes, not 32", bytes.len())
        })?;
        if height == 0 {
            return Err("height 0 is genesis, which the profile pins already".into());
        }
        Ok(Self {
            height,
            hash: Digest::from(hash),
        })
    }
}

impl std::fmt::Display for TrustedBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.height, self.hash)
    }
}

/// Adds `more` to `trusted`, sorted by height; two different hashes at one height are refused.
pub fn merge_trusted(
    trusted: &[TrustedBlock],
    more: &[TrustedBlock],
) -> Result<Vec<TrustedBlock>, String> {
    let mut merged: Vec<TrustedBlock> = trusted.iter().chain(more).copied().collect();
    merged.sort_by_key(|block| (block.height, block.hash));
    merged.dedup();
    if let Some(pair) = merged
        .windows(2)
        .find(|pair| pair[0].height == pair[1].height)
    {
        return Err(format!(
            "two different blocks are trusted at height {}: {} and {}",
            pair[0].height, pair[0].hash, pair[1].hash
        ));
    }
    Ok(merged)
}

/// A network identity configured as trusted from some epoch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfiguredIdentity {
    /// The identity.
    pub identity: Identity,
    /// The first epoch it is valid for.
    pub from_epoch: Epoch,
}

/// A validated chain profile.
#[derive(Clone, Debug)]
pub struct ChainProfile {
    /// Profile name.
    pub name: String,
    /// EVM chain id, if known.
    pub chain_id: Option<u64>,
    /// Base signature namespace of consensus messages.
    pub namespace: Vec<u8>,
    /// The epoch strategy.
    pub epochs: EpochStrategy,
    /// The DKG outcome for epoch 0 (genesis `extraData`).
    pub genesis: DkgOutcome,
    /// The genesis header, when the profile carries it.
    pub genesis_header: Option<TempoHeader>,
    /// Network identities trusted from an epoch on (each until the next one's epoch), in
    /// epoch order; Tempo's chainspecs compile such a list.
    pub network_identities: Vec<ConfiguredIdentity>,
    /// A public endpoint to follow, if known.
    pub follow_url: Option<String>,
    /// Blocks trusted at their heights, in height order (see [`TrustedBlock`]).
    pub trusted_blocks: Vec<TrustedBlock>,
    /// Calls per second a follower sends each upstream by default (public RPC nodes limit
    /// calls per client); `None` for no budget.
    pub upstream_rate_limit: Option<u32>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileFile {
    name: String,
    #[serde(default)]
    chain_id: Option<u64>,
    namespace: String,
    epoch_length: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    genesis_outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    genesis_header: Option<TempoHeader>,
    /// One identity (the older shape of `networkIdentities`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network_identity: Option<IdentityFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    network_identities: Vec<IdentityFile>,
    #[serde(default)]
    follow_url: Option<String>,
    /// `HEIGHT:HASH` strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    trusted_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream_rate_limit: Option<u32>,
    /// Unix seconds from which boundary outcomes are in the TIP-1123 layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tip1123_time: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IdentityFile {
    identity: String,
    from_epoch: u64,
}

impl ChainProfile {
    /// A built-in profile by name.
    pub fn builtin(name: &str) -> Option<Self> {
        let json = match name {
            "tempo-mainnet" => TEMPO_MAINNET,
            "tempo-moderato" => TEMPO_MODERATO,
            _ => return None,
        };
        Some(Self::from_json(json).expect("built-in profiles are valid (checked by tests)"))
    }

    /// A built-in profile if `arg` names one, else the JSON file at path `arg`.
    pub fn resolve(arg: &str) -> Result<Self, ProfileError> {
        if let Some(profile) = Self::builtin(arg) {
            return Ok(profile);
        }
        Self::load(Path::new(arg))
    }

    /// Loads a profile from a JSON file.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let json = std::fs::read_to_string(path).map_err(|error| ProfileError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_json(&json)
    }

    /// Parses and validates a profile from JSON text.
    pub fn from_json(json: &str) -> Result<Self, ProfileError> {
        let file: ProfileFile = serde_json::from_str(json)?;
        if file.namespace.is_empty() {
            return Err(ProfileError::EmptyNamespace);
        }
        let epochs = EpochStrategy::new(file.epoch_length)?.with_tip1123_time(file.tip1123_time);
        let genesis_bytes = match (&file.genesis_outcome, &file.genesis_header) {
            (Some(outcome), header) => {
                let bytes = hex::decode(outcome.trim()).map_err(ProfileError::GenesisHex)?;
                if header
                    .as_ref()
                    .is_some_and(|h| h.extra_data().as_ref() != bytes.as_slice())
                {
                    return Err(ProfileError::GenesisMismatch);
                }
                bytes
            }
            (None, Some(header)) => header.extra_data().to_vec(),
            (None, None) => return Err(ProfileError::NoGenesis),
        };
        if let Some(header) = &file.genesis_header
            && header.number() != 0
        {
            return Err(ProfileError::GenesisHeight(header.number()));
        }
        // The genesis outcome is in the layout its block's timestamp selects (0 when the
        // profile has no genesis header: only a fork at time 0 makes it compact).
        let genesis_layout = epochs.outcome_layout(
            file.genesis_header
                .as_ref()
                .map_or(0, |header| header.inner.timestamp),
        );
        let genesis =
            DkgOutcome::decode_strict(&genesis_bytes, genesis_layout, &OutcomeLimits::default())
                .map_err(|error| ProfileError::GenesisOutcome(genesis_layout, error))?;
        if genesis.epoch != 0 {
            return Err(ProfileError::GenesisEpoch(genesis.epoch));
        }
        let mut network_identities = file
            .network_identity
            .into_iter()
            .chain(file.network_identities)
            .map(|configured| {
                Ok::<_, ProfileError>(ConfiguredIdentity {
                    identity: parse_identity(&configured.identity)
                        .map_err(ProfileError::Identity)?,
                    from_epoch: Epoch::new(configured.from_epoch),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        network_identities.sort_by_key(|configured| configured.from_epoch);
        if let Some(pair) = network_identities
            .windows(2)
            .find(|pair| pair[0].from_epoch == pair[1].from_epoch)
        {
            return Err(ProfileError::DuplicateIdentityEpoch(
                pair[0].from_epoch.get(),
            ));
        }
        let trusted_blocks = file
            .trusted_blocks
            .iter()
            .map(|text| text.parse())
            .collect::<Result<Vec<TrustedBlock>, _>>()
            .and_then(|listed| merge_trusted(&[], &listed))
            .map_err(ProfileError::TrustedBlock)?;
        Ok(Self {
            name: file.name,
            chain_id: file.chain_id,
            namespace: file.namespace.into_bytes(),
            epochs,
            genesis,
            genesis_header: file.genesis_header,
            network_identities,
            follow_url: file.follow_url,
            trusted_blocks,
            upstream_rate_limit: file.upstream_rate_limit,
        })
    }

    /// The profile as JSON (the same shape [`ChainProfile::from_json`] reads).
    pub fn to_json(&self) -> String {
        let file = ProfileFile {
            name: self.name.clone(),
            chain_id: self.chain_id,
            namespace: String::from_utf8_lossy(&self.namespace).into_owned(),
            epoch_length: self.epochs.length(),
            genesis_outcome: Some(hex::encode_prefixed(self.genesis.to_bytes())),
            genesis_header: self.genesis_header.clone(),
            network_identity: None,
            network_identities: self
                .network_identities
                .iter()
                .map(|configured| IdentityFile {
                    identity: hex::encode_prefixed(commonware_codec::Encode::encode(
                        &configured.identity,
                    )),
                    from_epoch: configured.from_epoch.get(),
                })
                .collect(),
            follow_url: self.follow_url.clone(),
            tip1123_time: self.epochs.tip1123_time(),
            trusted_blocks: self
                .trusted_blocks
                .iter()
                .map(ToString::to_string)
                .collect(),
            upstream_rate_limit: self.upstream_rate_limit,
        };
        serde_json::to_string_pretty(&file).expect("profile serializes")
    }

    /// A verifier registry seeded with what this profile trusts: the genesis outcome for
    /// epoch 0, and the configured network identities.
    pub fn scheme_provider(&self, max_epochs: std::num::NonZeroUsize) -> SchemeProvider {
        let provider = SchemeProvider::new(&self.namespace, max_epochs);
        provider
            .register(Epoch::zero(), *self.genesis.identity())
            .expect("an empty registry has no conflicts");
        for configured in &self.network_identities {
            provider.set_configured_identity(configured.identity, configured.from_epoch);
        }
        provider
    }
}

/// Parses a 96-byte G2 identity from hex (with or without `0x`).
pub fn parse_identity(text: &str) -> Result<Identity, String> {
    let bytes = hex::decode(text.trim()).map_err(|err| err.to_string())?;
    Identity::decode(bytes).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_load_and_carry_the_public_facts() {
        let mainnet = ChainProfile::builtin("tempo-mainnet").expect("built in");
        assert_eq!(mainnet.chain_id, Some(4217));
        assert_eq!(mainnet.namespace, b"TEMPO");
        assert_eq!(mainnet.epochs.length(), 21_600);
        assert_eq!(mainnet.genesis.players().len(), 4);
        let [genesis, rotated] = mainnet.network_identities.as_slice() else {
            panic!("mainnet compiles two identities");
        };
        // The genesis key until a full DKG rotated it at epoch 2042 (Tempo v1.16.1).
        assert_eq!(genesis.from_epoch, Epoch::zero());
        assert_eq!(*mainnet.genesis.identity(), genesis.identity);
        assert_eq!(rotated.from_epoch, Epoch::new(2042));
        assert_eq!(
            alloy_primitives::hex::encode(commonware_codec::Encode::encode(&rotated.identity)),
            "8627d33753b0d90a8eae75363d6b393ab9204076545b3af6caf831903e4bedde4374f1106551b481fb5ea35e59d51c92165c963881c718216e3e4570a307c08885af55c274f19488f709afe021ca3d9e567138ab097860d9146e895407bea182"
        );
        let provider = mainnet.scheme_provider(commonware_utils::NZUsize!(4));
        let at = |epoch: u64| provider.verifier(Epoch::new(epoch)).map(|v| v.identity);
        assert_eq!(at(2041), Some(genesis.identity));
        assert_eq!(at(2042), Some(rotated.identity));
        assert_eq!(
            mainnet.follow_url.as_deref(),
            Some("wss://rpc.presto.tempo.xyz")
        );

        let moderato = ChainProfile::builtin("tempo-moderato").expect("built in");
        assert_eq!(moderato.chain_id, Some(42431));
        let epochs: Vec<u64> = moderato
            .network_identities
            .iter()
            .map(|configured| configured.from_epoch.get())
            .collect();
        assert_eq!(epochs, [0, 51, 1747]);
        // Epochs 0-50 used the genesis key; full DKGs rotated it at 51 and 1747.
        let identities = &moderato.network_identities;
        assert_eq!(identities[0].identity, *moderato.genesis.identity());
        assert_ne!(identities[1].identity, identities[0].identity);
        assert_ne!(identities[2].identity, identities[1].identity);
        let provider = moderato.scheme_provider(commonware_utils::NZUsize!(4));
        let at = |epoch: u64| provider.verifier(Epoch::new(epoch)).map(|v| v.identity);
        assert_eq!(at(50), Some(identities[0].identity));
        assert_eq!(at(51), Some(identities[1].identity));
        assert_eq!(at(1746), Some(identities[1].identity));
        assert_eq!(at(1747), Some(identities[2].identity));
    }

    #[test]
    fn json_round_trip() {
        let mainnet = ChainProfile::builtin("tempo-mainnet").expect("built in");
        let again = ChainProfile::from_json(&mainnet.to_json()).expect("round trip");
        assert_eq!(again.name, mainnet.name);
        assert_eq!(again.genesis, mainnet.genesis);
        assert_eq!(again.network_identities, mainnet.network_identities);
        let moderato = ChainProfile::builtin("tempo-moderato").expect("built in");
        let again = ChainProfile::from_json(&moderato.to_json()).expect("round trip");
        assert_eq!(again.network_identities, moderato.network_identities);
    }

    #[test]
    fn rejects_bad_profiles() {
        let good = ChainProfile::builtin("tempo-mainnet")
            .expect("built in")
            .to_json();
        let mut value: serde_json::Value = serde_json::from_str(&good).expect("json");
        type Case = (&'static str, serde_json::Value, fn(&ProfileError) -> bool);
        let cases: Vec<Case> = vec![
            ("epochLength", 1.into(), |e| {
                matches!(e, ProfileError::EpochLength(_))
            }),
            ("namespace", "".into(), |e| {
                matches!(e, ProfileError::EmptyNamespace)
            }),
            ("genesisOutcome", "0xzz".into(), |e| {
                matches!(e, ProfileError::GenesisHex(_))
            }),
            ("genesisOutcome", "0x0001".into(), |e| {
                matches!(e, ProfileError::GenesisOutcome(_, _))
            }),
            (
                "networkIdentity",
                serde_json::json!({"identity": "0x00", "fromEpoch": 0}),
                |e| matches!(e, ProfileError::Identity(_)),
            ),
            (
                "networkIdentities",
                serde_json::json!([{"identity": "0x00", "fromEpoch": 3}]),
                |e| matches!(e, ProfileError::Identity(_)),
            ),
            (
                "networkIdentity",
                serde_json::json!({"identity": format!("0x{}", "a217bb85001d4dcf8e5c50136f77af88cb2cab1857279b91c6240f41cca95c4f43f6dcab3e0dfb87dafb3ecbeb6251e90a5df2e6c47432482821cd8b84665ee4642589d2d9628a92b03e2bbfb00e006d038cd98def76d2a41b7c228c05f5a193"), "fromEpoch": 0}),
                |e| matches!(e, ProfileError::DuplicateIdentityEpoch(0)),
            ),
            ("unexpected", 1.into(), |e| {
                matches!(e, ProfileError::Json(_))
            }),
        ];
        for (field, bad, check) in cases {
            let original = value.get(field).cloned();
            value[field] = bad;
            let err = ChainProfile::from_json(&value.to_string()).expect_err(field);
            assert!(check(&err), "{field}: unexpected error {err}");
            match original {
                Some(original) => value[field] = original,
                None => {
                    value.as_object_mut().expect("object").remove(field);
                }
            }
        }
        assert!(ChainProfile::from_json(&value.to_string()).is_ok());
    }

    #[test]
    fn unknown_name_that_is_not_a_file() {
        let err = ChainProfile::resolve("no-such-profile").expect_err("unknown");
        assert!(matches!(err, ProfileError::Read { .. }));
        assert!(err.to_string().contains("tempo-mainnet"));
    }
}
