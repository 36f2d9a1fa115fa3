//! A validator as its own process: the network file every validator shares (the pool with each
//! validator's p2p and RPC address, the chain's parameters and genesis), its own key file, and
//! [`run`], which connects it to its peers over commonware-p2p's authenticated connections,
//! runs its consensus and serves what it finalizes over Tempo's RPC.

use crate::{
    block::{ValidatorBlock, ValidatorBlockConfig},
    committee::Committees,
    engine::{CHANNEL_QUOTA, CHANNELS, Channels, ValidatorConfig, start},
    secrets::DiskSecrets,
    serve::serve,
    status::{StatusBoard, ValidatorStatus},
};
use alloy_primitives::hex;
use cairn_devnet::ChainStore;
use cairn_feed::{FeedState, RpcConfig, StatusSource};
use cairn_primitives::{Block, BlockCodecConfig};
use commonware_codec::{DecodeExt as _, Encode as _};
use commonware_cryptography::{ChaCha20Poly1305, bls12381::primitives::group::Share, ed25519};
use commonware_glue::dkg::SecretStore as _;
use commonware_p2p::{Manager as _, authenticated::discovery};
use commonware_runtime::{Handle, Supervisor as _, tokio};
use commonware_stream::{
    cups::{self, Cups},
    sake::{self, Sake},
};
use commonware_utils::{NZUsize, ordered::Set};
use serde::{Deserialize, Serialize};
use std::{
    net::SocketAddr,
    num::{NonZeroU32, NonZeroU64},
    path::Path,
    sync::Arc,
    time::Duration,
};
use tracing::info;

/// The p2p namespace of validators' connections (distinct from consensus signatures').
const P2P_NAMESPACE: &[u8] = b"TEMPO-P2P";
/// Largest p2p message: a block with its transactions, or a ceremony's dealing (a few
/// kilobytes each).
const MAX_MESSAGE: u32 = 1024 * 1024;

/// One validator of the pool, as every other one knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Its ed25519 public key, hex.
    pub public_key: String,
    /// Where its p2p connections are accepted.
    pub p2p: SocketAddr,
    /// Where it serves RPC.
    pub rpc: SocketAddr,
}

/// What every validator of a chain shares.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkFile {
    /// The chain id transactions are signed for.
    pub chain_id: u64,
    /// Blocks per epoch.
    pub epoch_length: u64,
    /// Validators per committee.
    pub committee: usize,
    /// The pool, in order (committees are windows over it).
    pub validators: Vec<Member>,
    /// The genesis block, as raw RLP (hex).
    pub genesis: String,
    /// How long a leader has to propose, in milliseconds.
    pub leader_timeout_ms: u64,
}

/// One validator's own secrets, as the devnet hands them out.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyFile {
    /// Its ed25519 private key, hex.
    pub private_key: String,
    /// Its share of epoch 0's key, hex, when it is in the genesis committee.
    pub genesis_share: Option<String>,
}

/// Why a validator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A file could not be read or does not parse.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--index` is not in the pool.
    #[error("validator {index} is not in the pool of {pool}")]
    Index {
        /// The index given.
        index: usize,
        /// The pool's size.
        pool: usize,
    },
    /// A store could not be opened or written.
    #[error("storage: {0}")]
    Storage(String),
    /// The RPC server could not start.
    #[error("the RPC server: {0}")]
    Rpc(String),
    /// The validator stopped.
    #[error("the validator stopped: {0}")]
    Stopped(String),
}

fn file_error(path: &Path, reason: impl ToString) -> ProcessError {
    ProcessError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl NetworkFile {
    /// Reads the network file at `path`.
    pub fn load(path: &Path) -> Result<Self, ProcessError> {
        let text = std::fs::read_to_string(path).map_err(|err| file_error(path, err))?;
        serde_json::from_str(&text).map_err(|err| file_error(path, err))
    }

    /// How blocks are read.
    pub fn blocks(&self) -> Result<ValidatorBlockConfig, String> {
        Ok(ValidatorBlockConfig {
            epoch_length: NonZeroU64::new(self.epoch_length).ok_or("epochLength is 0")?,
            max_participants: NonZeroU32::new(
                u32::try_from(self.validators.len()).unwrap_or(u32::MAX),
            )
            .ok_or("the pool is empty")?,
            block: BlockCodecConfig::default(),
        })
    }

    /// The pool's public keys, in order.
    pub fn pool(&self) -> Result<Vec<ed25519::PublicKey>, String> {
        self.validators
            .iter()
            .map(|member| {
                let bytes = hex::decode(&member.public_key)
                    .map_err(|err| format!("public key {}: {err}", member.public_key))?;
                ed25519::PublicKey::decode(bytes::Bytes::from(bytes))
                    .map_err(|err| format!("public key {}: {err}", member.public_key))
            })
            .collect()
    }

    /// The genesis block: a block at height 0 carrying epoch 0's outcome.
    pub fn genesis(&self) -> Result<ValidatorBlock, String> {
        let raw = hex::decode(&self.genesis).map_err(|err| format!("genesis: {err}"))?;
        let block = Block::decode_raw_rlp(&raw).map_err(|err| format!("genesis: {err}"))?;
        if block.height() != 0 {
            return Err(format!("genesis: a block at height {}", block.height()));
        }
        ValidatorBlock::new(block, &self.blocks()?).map_err(|err| format!("genesis: {err}"))
    }
}

impl KeyFile {
    /// Reads the key file at `path`.
    pub fn load(path: &Path) -> Result<(ed25519::PrivateKey, Option<Share>), ProcessError> {
        let text = std::fs::read_to_string(path).map_err(|err| file_error(path, err))?;
        let file: Self = serde_json::from_str(&text).map_err(|err| file_error(path, err))?;
        let key = hex::decode(&file.private_key)
            .ok()
            .and_then(|bytes| ed25519::PrivateKey::decode(bytes::Bytes::from(bytes)).ok())
            .ok_or_else(|| file_error(path, "privateKey is not an ed25519 private key"))?;
        let share = match &file.genesis_share {
            None => None,
            Some(text) => Some(
                hex::decode(text)
                    .ok()
                    .and_then(|bytes| Share::decode(bytes::Bytes::from(bytes)).ok())
                    .ok_or_else(|| file_error(path, "genesisShare is not a share"))?,
            ),
        };
        Ok((key, share))
    }

    /// The file for `key` and its genesis `share`.
    pub fn new(key: &ed25519::PrivateKey, share: Option<&Share>) -> Self {
        Self {
            private_key: hex::encode(key.encode()),
            genesis_share: share.map(|share| hex::encode(share.encode())),
        }
    }
}

/// How a process presents its [`ValidatorStatus`] on `cairn_status` (the binary tags it with
/// its role).
pub type RenderStatus = Arc<dyn Fn(ValidatorStatus) -> serde_json::Value + Send + Sync>;

/// Runs validator `index` of `network` in `context` (whose storage is its datadir) with `key`,
/// importing `genesis_share` into its secrets on its first start, until it stops. Its
/// `cairn_status` answers what `render` makes of its status.
pub async fn run(
    context: tokio::Context,
    network: NetworkFile,
    index: usize,
    key: ed25519::PrivateKey,
    genesis_share: Option<Share>,
    render: RenderStatus,
) -> Result<(), ProcessError> {
    let pool = network.pool().map_err(ProcessError::Stopped)?;
    let me = network.validators.get(index).ok_or(ProcessError::Index {
        index,
        pool: pool.len(),
    })?;
    let blocks = network.blocks().map_err(ProcessError::Stopped)?;
    let genesis = network.genesis().map_err(ProcessError::Stopped)?;

    let mut secrets = DiskSecrets::open(context.child("secrets"), "validator-secrets")
        .await
        .map_err(|err| ProcessError::Storage(err.to_string()))?;
    if !secrets.holds_shares().await
        && let Some(share) = genesis_share
    {
        secrets
            .put_share(commonware_consensus::types::Epoch::zero(), share)
            .await;
    }
    let mut failed = secrets.failed();

    let bootstrappers = network
        .validators
        .iter()
        .zip(&pool)
        .filter(|(_, key)| **key != pool[index])
        .map(|(member, key)| (key.clone(), member.p2p.into()))
        .collect();
    let p2p = discovery::Config::local(
        Cups::<_, ChaCha20Poly1305>::new(
            Sake {
                signer: key.clone(),
                synchrony_bound: Duration::from_secs(5),
                max_handshake_age: Duration::from_secs(10),
                version: sake::Version::V1,
            },
            cups::Version::V1,
        ),
        P2P_NAMESPACE,
        me.p2p,
        me.p2p,
        bootstrappers,
        NZUsize!(pool.len().max(1)),
        MAX_MESSAGE,
        NZUsize!(128),
    );
    let (mut p2p, mut oracle) = discovery::Network::new(context.child("p2p"), p2p);
    oracle.track(0, Set::from_iter_dedup(pool.iter().cloned()));
    let channels =
        Channels::from_pairs(CHANNELS.map(|channel| p2p.register(channel, CHANNEL_QUOTA)));
    let p2p = p2p.start();

    let public_key = pool[index].clone();
    let config = ValidatorConfig {
        signer: key,
        committees: Committees::new(pool, network.committee),
        genesis: genesis.clone(),
        blocks,
        chain_id: network.chain_id,
        partition_prefix: "validator".into(),
        leader_timeout: Duration::from_millis(network.leader_timeout_ms.max(100)),
        certification_timeout: Duration::from_millis(network.leader_timeout_ms.max(100) * 2),
    };
    let validator = start(
        context.child("validator"),
        config,
        secrets,
        oracle.clone(),
        oracle,
        channels,
    )
    .await
    .map_err(|err| ProcessError::Storage(err.to_string()))?;

    let store = ChainStore::open_in(context.child("served"), "served")
        .await
        .map_err(|err| ProcessError::Storage(err.to_string()))?;
    let feed = FeedState::default();
    let board = StatusBoard::new(network.chain_id, index, public_key, network.epoch_length);
    let status = {
        let board = board.clone();
        StatusSource(Arc::new(move || render(board.snapshot())))
    };
    let rpc = cairn_feed::start(
        &me.rpc.to_string(),
        store.clone(),
        feed.clone(),
        RpcConfig {
            chain_id: Some(network.chain_id),
            status: Some(status),
            ..RpcConfig::default()
        },
    )
    .await
    .map_err(|err| ProcessError::Rpc(err.to_string()))?;
    info!(rpc = %rpc.local_addr, p2p = %me.p2p, index, "validator started");

    let serving = serve(
        validator.marshal,
        store,
        feed,
        board,
        genesis,
        blocks,
        validator.finalized,
    );
    let actors = Handle::select(
        validator
            .handles
            .into_iter()
            .chain(std::iter::once(p2p))
            .collect::<Vec<_>>(),
    );
    let result = ::tokio::select! {
        biased;
        served = serving => match served {
            Ok(()) => Err(ProcessError::Stopped("marshal stopped delivering".into())),
            Err(err) => Err(ProcessError::Storage(err.to_string())),
        },
        _ = actors => Err(ProcessError::Stopped("an actor stopped".into())),
        reason = failed.wait_for(Option::is_some) => {
            let reason = reason.map(|reason| reason.clone().unwrap_or_default());
            Err(ProcessError::Storage(reason.unwrap_or_else(|_| "the secrets store is gone".into())))
        }
    };
    let _ = rpc.handle.stop();
    result
}

#[cfg(test)]
mod tests {
    use super::NetworkFile;
    use alloy_primitives::hex;
    use cairn_testkit::test_block;

    fn network(genesis: String) -> NetworkFile {
        NetworkFile {
            chain_id: 1337,
            epoch_length: 20,
            committee: 1,
            validators: vec![super::Member {
                public_key: "00".repeat(32),
                p2p: "127.0.0.1:1".parse().expect("an address"),
                rpc: "127.0.0.1:2".parse().expect("an address"),
            }],
            genesis,
            leader_timeout_ms: 1_000,
        }
    }

    #[test]
    fn a_genesis_that_is_not_one_is_refused_naming_why() {
        let at_five = test_block(5, 0, 5, Vec::new()).raw_rlp().expect("a body");
        let err = network(hex::encode(at_five))
            .genesis()
            .expect_err("refused");
        assert!(err.contains("height 5"), "{err}");
        let err = network("zz".into()).genesis().expect_err("refused");
        assert!(err.starts_with("genesis: "), "{err}");
        let empty = test_block(0, 0, 0, Vec::new()).raw_rlp().expect("a body");
        let err = network(hex::encode(empty)).genesis().expect_err("refused");
        assert!(err.starts_with("genesis: "), "{err}");
    }
}
