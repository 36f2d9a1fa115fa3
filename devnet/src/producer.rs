//! The chain producer: for each height it builds a Tempo block, has a rotating quorum of the
//! epoch's committee sign finalize votes with their own shares, assembles the certificate, and
//! stores both. At each epoch's last block it runs the next epoch's ceremony (a reshare, or a
//! full DKG at the configured epochs) among a rotating window of the validator pool and writes
//! the outcome into the block's `extraData`.

use crate::{
    ceremony::{CeremonyError, committee_set},
    signer::{CommitteeSigner, SignerError},
};
use crate::{
    secrets::{
        ChainParams, EpochSecrets, PARAMS_KEY, POOL_KEY, Pool, decode_record, encode_record,
    },
    store::{ChainStore, StoreError},
    transactions::{SigningError, TransactionFactory},
};
use alloy_eips::eip4895::Withdrawals;
use alloy_primitives::{Address, B64, B256, Bytes, U256, keccak256};
use cairn_dkg::{DkgOutcome, Identity, NextCeremony, OutcomeLayout, OutcomeLimits};
use cairn_epoch::{ChainProfile, EpochStrategy, Finalization, InvalidEpochLength, certified_block};
use cairn_feed::FeedState;
use cairn_primitives::{Block, Body, ProposerKey, TempoConsensusContext, TempoHeader};
use cairn_storage::StoreContext;
use commonware_codec::Encode;
use commonware_consensus::types::{Epoch, Round, View};
use commonware_cryptography::{
    Signer,
    ed25519::{PrivateKey, PublicKey},
};
use commonware_math::algebra::Random;
use commonware_parallel::Strategy;
use rand::{SeedableRng, rngs::StdRng};
use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};
use tracing::{info, warn};

/// Gas limit for general transactions (as on Tempo mainnet).
const GENERAL_GAS_LIMIT: u64 = 30_000_000;
/// Block gas limit (as on Tempo mainnet).
const GAS_LIMIT: u64 = 500_000_000;
/// Base fee per gas.
const BASE_FEE: u64 = 10_000_000_000;
/// keccak256(rlp([])): the ommers hash of a block without ommers.
const EMPTY_OMMERS_HASH: B256 =
    alloy_primitives::b256!("1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347");
/// Root of an empty trie.
const EMPTY_ROOT: B256 =
    alloy_primitives::b256!("56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421");
/// sha256 of no requests (EIP-7685).
const EMPTY_REQUESTS_HASH: B256 =
    alloy_primitives::b256!("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

/// Devnet parameters.
#[derive(Clone, Debug)]
pub struct DevnetConfig {
    /// EVM chain id.
    pub chain_id: u64,
    /// Signature namespace.
    pub namespace: Vec<u8>,
    /// Validators in the pool committees are drawn from.
    pub validators: usize,
    /// Committee size.
    pub committee: usize,
    /// Blocks per epoch.
    pub epoch_length: u64,
    /// Epochs whose key comes from a full DKG (a new network identity).
    pub full_dkg_at_epochs: BTreeSet<u64>,
    /// Fixes the validator keys, the ceremonies and the block schedule: two devnets with the
    /// same seed and parameters produce the same chain byte for byte, and a restart continues
    /// it as an uninterrupted run would. Without a seed, randomness comes from the runtime
    /// context's RNG and timestamps from its clock.
    pub seed: Option<u64>,
    /// Produce a different block at this height than the chain would have (one more
    /// millisecond in its timestamp), certified by the same committee: with the seed of
    /// another devnet, a real conflicting certificate.
    pub fork_at: Option<u64>,
    /// Time between blocks in the seeded schedule: block `h` is stamped genesis time plus
    /// `h` times this (at least 1 ms).
    pub block_time: std::time::Duration,
    /// Unix seconds from which outcomes (in boundaries, and in genesis if it is stamped that
    /// late) are written in the TIP-1123 layout; `None` keeps the legacy layout.
    pub tip1123_time: Option<u64>,
}

impl Default for DevnetConfig {
    fn default() -> Self {
        Self {
            chain_id: 1337,
            namespace: b"TEMPO".to_vec(),
            validators: 7,
            committee: 4,
            epoch_length: 20,
            full_dkg_at_epochs: BTreeSet::new(),
            seed: None,
            fork_at: None,
            block_time: std::time::Duration::from_millis(250),
            tip1123_time: None,
        }
    }
}

impl DevnetConfig {
    fn params(&self) -> ChainParams {
        ChainParams {
            chain_id: self.chain_id,
            namespace: self.namespace.clone(),
            epoch_length: self.epoch_length,
            validators: self.validators as u64,
            committee: self.committee as u64,
            full_dkg_at_epochs: self.full_dkg_at_epochs.clone(),
            tip1123_time: self.tip1123_time,
        }
    }
}

/// Why the devnet stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    /// The configuration is unusable.
    #[error("invalid devnet configuration: {0}")]
    Config(String),
    /// The epoch length is unusable.
    #[error("invalid devnet configuration: {0}")]
    EpochLength(#[from] InvalidEpochLength),
    /// The datadir holds a chain with other parameters.
    #[error(
        "the datadir holds a devnet with other parameters ({stored}); start it with the same flags or use another --datadir"
    )]
    ParamsMismatch {
        /// The stored parameters.
        stored: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error("stored {what} is corrupt: {error}")]
    Corrupt {
        /// Which record.
        what: String,
        /// The decode error.
        error: String,
    },
    /// A ceremony failed.
    #[error("DKG ceremony for epoch {epoch} failed: {error}")]
    Ceremony {
        /// The epoch the ceremony was for.
        epoch: u64,
        /// The error.
        error: CeremonyError,
    },
    /// The committee could not sign.
    #[error("committee of epoch {epoch} could not sign height {height}: {error}")]
    Signing {
        /// Epoch.
        epoch: u64,
        /// Height.
        height: u64,
        /// The error.
        error: SignerError,
    },
    /// A block could not be built.
    #[error("block {height} could not be built: {error}")]
    Block {
        /// Height.
        height: u64,
        /// The error.
        error: cairn_primitives::BlockError,
    },
    /// A transaction could not be signed.
    #[error("transactions of block {height} could not be signed: {error}")]
    Transactions {
        /// Height.
        height: u64,
        /// The error.
        error: SigningError,
    },
}

/// How an epoch's key came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Genesis: a trusted dealer.
    Genesis,
    /// A reshare of the previous key (identity kept).
    Reshare,
    /// A full DKG (new identity).
    FullDkg,
}

impl std::fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Genesis => "genesis (trusted deal)",
            Self::Reshare => "reshare",
            Self::FullDkg => "full DKG",
        })
    }
}

/// An epoch the producer entered.
#[derive(Clone, Debug)]
pub struct EpochEntry {
    /// The epoch.
    pub epoch: u64,
    /// Its committee, in participant order.
    pub committee: Vec<PublicKey>,
    /// Its network identity.
    pub identity: Identity,
    /// How its key came about.
    pub origin: KeyOrigin,
}

/// One produced height.
#[derive(Clone, Debug)]
pub struct Produced {
    /// The certified block as served over RPC.
    pub certified: cairn_primitives::CertifiedBlock,
    /// Set when this height is the first of a new epoch.
    pub entered: Option<EpochEntry>,
}

struct ActiveEpoch {
    epoch: u64,
    secrets: EpochSecrets,
    signer: Arc<CommitteeSigner>,
}

/// The devnet chain producer over an on-disk store.
pub struct Devnet<E: StoreContext> {
    config: DevnetConfig,
    epochs: EpochStrategy,
    store: ChainStore<E>,
    feed: FeedState,
    pool: Vec<PrivateKey>,
    genesis: Block,
    active: Option<ActiveEpoch>,
    next_height: u64,
    rng: StdRng,
    clock: E,
    transactions: TransactionFactory,
}

/// Genesis time of a seeded devnet (2026-01-01T00:00:00Z, in unix milliseconds).
const SEEDED_GENESIS_MILLIS: u64 = 1_767_225_600_000;

/// What a seeded RNG is for: each use gets its own stream, so a restart draws what an
/// uninterrupted run would.
#[derive(Clone, Copy)]
enum Draw {
    Pool,
    Genesis,
    Ceremony(u64),
}

/// An RNG for `draw`: derived from `seed` when there is one, else drawn from `fallback` (the
/// runtime context's RNG).
fn rng_for(seed: Option<u64>, draw: Draw, fallback: &mut StdRng) -> StdRng {
    let Some(seed) = seed else {
        return StdRng::from_rng(fallback);
    };
    let (tag, epoch): (&[u8], u64) = match draw {
        Draw::Pool => (b"pool", 0),
        Draw::Genesis => (b"genesis", 0),
        Draw::Ceremony(epoch) => (b"ceremony", epoch),
    };
    let material = keccak256([&seed.to_be_bytes()[..], tag, &epoch.to_be_bytes()].concat());
    StdRng::from_seed(material.0)
}

fn millis_of(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn corrupt(what: impl Into<String>, error: impl std::fmt::Display) -> DevnetError {
    DevnetError::Corrupt {
        what: what.into(),
        error: error.to_string(),
    }
}

/// The committee (a window over the pool moving one validator per epoch) of `epoch`.
fn committee_keys(pool: &[PrivateKey], committee: usize, epoch: u64) -> Vec<PrivateKey> {
    let validators = pool.len() as u64;
    (0..committee as u64)
        .map(|i| pool[((epoch % validators + i) % validators) as usize].clone())
        .collect()
}

/// The players of the ceremony run during `epoch` (the committee of `epoch + 1`).
fn next_players(
    pool: &[PrivateKey],
    committee: usize,
    epoch: u64,
) -> Result<commonware_utils::ordered::Set<PublicKey>, DevnetError> {
    committee_set(&committee_keys(pool, committee, epoch + 1)).map_err(|error| {
        DevnetError::Ceremony {
            epoch: epoch + 1,
            error,
        }
    })
}

/// A body with the given transactions, no ommers and an empty withdrawals list (the headers
/// carry the empty withdrawals root).
fn body_with(transactions: Vec<cairn_primitives::TempoTxEnvelope>) -> Body {
    Body {
        transactions,
        ommers: Vec::new(),
        withdrawals: Some(Withdrawals::default()),
    }
}

/// Opaque bytes in the `extraData` of some non-boundary blocks, where Tempo's validators write
/// their dealer logs: a follower must parse an outcome only at boundary heights. Derived from the
/// height so that a block's content follows from its height.
fn dealer_log(height: u64) -> Vec<u8> {
    let mut log = Vec::new();
    let mut link = keccak256(height.to_be_bytes());
    for _ in 0..(3 + height % 4) {
        log.extend_from_slice(link.as_slice());
        link = keccak256(link);
    }
    log
}

/// A header at `number` with the fields every devnet header shares (gas limits, fee and fork
/// fields, empty ommers, receipts and withdrawals); the caller fills in the rest.
fn header_template(number: u64, millis: u64, extra_data: Bytes) -> TempoHeader {
    TempoHeader {
        general_gas_limit: GENERAL_GAS_LIMIT,
        shared_gas_limit: 0,
        timestamp_millis_part: millis % 1000,
        inner: alloy_consensus::Header {
            ommers_hash: EMPTY_OMMERS_HASH,
            transactions_root: EMPTY_ROOT,
            receipts_root: EMPTY_ROOT,
            difficulty: U256::ZERO,
            number,
            gas_limit: GAS_LIMIT,
            timestamp: millis / 1000,
            extra_data,
            mix_hash: B256::ZERO,
            nonce: B64::ZERO,
            base_fee_per_gas: Some(BASE_FEE),
            withdrawals_root: Some(EMPTY_ROOT),
            blob_gas_used: Some(0),
            excess_blob_gas: Some(0),
            parent_beacon_block_root: Some(B256::ZERO),
            requests_hash: Some(EMPTY_REQUESTS_HASH),
            ..Default::default()
        },
        consensus_context: None,
    }
}

/// A genesis block stamped `millis` (unix milliseconds) with `extraData` (epoch 0's outcome):
/// a devnet header without a consensus context, over an empty body.
pub fn tempo_genesis(
    millis: u64,
    extra_data: Vec<u8>,
) -> Result<Block, cairn_primitives::BlockError> {
    let header = header_template(0, millis, Bytes::from(extra_data));
    Block::new(header, Some(body_with(Vec::new())))
}

/// The block after `parent`, stamped `millis` (unix milliseconds), proposed in `context`, with
/// `extraData` and `transactions`: a devnet header (its beneficiary derived from the proposer,
/// its state root chained from the parent's) over a body with those transactions.
pub fn tempo_block(
    parent: &Block,
    millis: u64,
    extra_data: Vec<u8>,
    transactions: Vec<cairn_primitives::TempoTxEnvelope>,
    context: TempoConsensusContext,
) -> Result<Block, cairn_primitives::BlockError> {
    let height = parent.height() + 1;
    let gas_used = TransactionFactory::gas_used(&transactions);
    let body = body_with(transactions);
    let mut header = header_template(height, millis, Bytes::from(extra_data));
    header.inner.parent_hash = parent.hash().0;
    header.inner.beneficiary = Address::from_slice(&keccak256(B256::from(context.proposer))[12..]);
    header.inner.state_root = keccak256(
        [
            parent.header().inner.state_root.as_slice(),
            &height.to_be_bytes(),
        ]
        .concat(),
    );
    header.inner.transactions_root =
        alloy_consensus::proofs::calculate_transaction_root(&body.transactions);
    header.inner.gas_used = gas_used;
    header.consensus_context = Some(context);
    Block::new(header, Some(body))
}

/// `outcome` as a block stamped `millis` carries it: in the layout the chain's TIP-1123 fork
/// time selects for that second.
fn outcome_bytes(epochs: &EpochStrategy, outcome: &DkgOutcome, millis: u64) -> Vec<u8> {
    match epochs.outcome_layout(millis / 1000) {
        OutcomeLayout::Legacy => outcome.to_bytes(),
        OutcomeLayout::Tip1123 => outcome.compact().to_bytes(),
    }
}

/// Deals the genesis key to the epoch-0 committee, stores its secrets and the genesis block
/// (whose `extraData` is the epoch-0 outcome).
/// Has a quorum of `signer`'s committee, rotating with the view, sign `block` at `view` of
/// `epoch`, and assembles their votes into its finalization.
fn certify(
    signer: &CommitteeSigner,
    block: &Block,
    epoch: u64,
    view: u64,
) -> Result<Finalization, DevnetError> {
    let players: Vec<PublicKey> = signer.players().iter().cloned().collect();
    let quorum = signer.quorum() as usize;
    // Rotate which members are missing from the certificate.
    let signers: Vec<PublicKey> = (0..quorum)
        .map(|i| players[(view as usize + i) % players.len()].clone())
        .collect();
    signer
        .finalize(
            Round::new(Epoch::new(epoch), View::new(view)),
            View::new(view - 1),
            block.hash(),
            &signers,
        )
        .map_err(|error| DevnetError::Signing {
            epoch,
            height: block.height(),
            error,
        })
}

async fn create_genesis<E: StoreContext>(
    store: &ChainStore<E>,
    config: &DevnetConfig,
    epochs: &EpochStrategy,
    pool: &[PrivateKey],
    rng: &mut StdRng,
    millis: u64,
) -> Result<Block, DevnetError> {
    let keys = committee_keys(pool, config.committee, 0);
    let ceremony = crate::ceremony::trusted_deal(rng, &keys)
        .map_err(|error| DevnetError::Ceremony { epoch: 0, error })?;
    let secrets = EpochSecrets {
        outcome: DkgOutcome {
            epoch: 0,
            output: ceremony.output,
            next: Some(NextCeremony {
                players: next_players(pool, config.committee, 0)?,
                full_dkg: config.full_dkg_at_epochs.contains(&1),
            }),
        },
        shares: ceremony.shares,
    };
    store.put_secret(0, encode_record(&secrets), 0).await?;
    let genesis = tempo_genesis(millis, outcome_bytes(epochs, &secrets.outcome, millis))
        .map_err(|error| DevnetError::Block { height: 0, error })?;
    store.put_block(&genesis).await?;
    info!(hash = %genesis.hash(), "devnet genesis created");
    Ok(genesis)
}

impl<E: StoreContext> Devnet<E> {
    /// Opens the devnet in `context`'s storage: creates the pool and genesis on first start,
    /// or checks the parameters and resumes after the last stored height.
    pub async fn open(
        mut context: E,
        config: DevnetConfig,
        feed: FeedState,
    ) -> Result<Self, DevnetError>
    where
        E: rand::CryptoRng,
    {
        if config.committee == 0 {
            return Err(DevnetError::Config("--committee must be at least 1".into()));
        }
        if config.validators < config.committee {
            return Err(DevnetError::Config(format!(
                "--validators ({}) must be at least --committee ({})",
                config.validators, config.committee
            )));
        }
        if config.full_dkg_at_epochs.contains(&0) {
            return Err(DevnetError::Config(
                "epoch 0 is keyed by the genesis deal; --full-dkg-at-epochs takes epochs from 1"
                    .into(),
            ));
        }
        let epochs =
            EpochStrategy::new(config.epoch_length)?.with_tip1123_time(config.tip1123_time);
        let mut rng = StdRng::from_rng(&mut context);
        let clock = context.child("clock");
        let store = ChainStore::open(context).await?;

        let params = config.params();
        match store.secret(PARAMS_KEY).await? {
            Some(bytes) => {
                let stored: ChainParams =
                    decode_record(&bytes).map_err(|err| corrupt("chain parameters", err))?;
                if stored != params {
                    return Err(DevnetError::ParamsMismatch {
                        stored: format!(
                            "chain id {}, {} validators, committee {}, epoch length {}, full DKG at {:?}, TIP-1123 time {}",
                            stored.chain_id,
                            stored.validators,
                            stored.committee,
                            stored.epoch_length,
                            stored.full_dkg_at_epochs,
                            stored
                                .tip1123_time
                                .map_or_else(|| "none".to_string(), |time| time.to_string())
                        ),
                    });
                }
            }
            None => {
                store
                    .put_secret(PARAMS_KEY, encode_record(&params), 0)
                    .await?;
            }
        }

        let pool = match store.secret(POOL_KEY).await? {
            Some(bytes) => {
                decode_record::<Pool>(&bytes)
                    .map_err(|err| corrupt("validator pool", err))?
                    .0
            }
            None => {
                let mut draw = rng_for(config.seed, Draw::Pool, &mut rng);
                let pool = Pool(
                    (0..config.validators)
                        .map(|_| PrivateKey::random(&mut draw))
                        .collect(),
                );
                store.put_secret(POOL_KEY, encode_record(&pool), 0).await?;
                pool.0
            }
        };
        if pool.len() != config.validators {
            return Err(corrupt(
                "validator pool",
                format!("{} keys for {} validators", pool.len(), config.validators),
            ));
        }

        let transactions = TransactionFactory::new(config.chain_id, BASE_FEE);
        let genesis = match store.block(0).await? {
            Some(genesis) => genesis,
            None => {
                let mut draw = rng_for(config.seed, Draw::Genesis, &mut rng);
                let millis = match config.seed {
                    Some(_) => SEEDED_GENESIS_MILLIS,
                    None => millis_of(clock.current()),
                };
                create_genesis(&store, &config, &epochs, &pool, &mut draw, millis).await?
            }
        };
        let mut devnet = Self {
            config,
            epochs,
            store,
            feed,
            pool,
            genesis,
            active: None,
            next_height: 1,
            rng,
            clock,
            transactions,
        };
        devnet.resume().await?;
        Ok(devnet)
    }

    /// The genesis block.
    pub const fn genesis(&self) -> &Block {
        &self.genesis
    }

    /// The chain store.
    pub const fn store(&self) -> &ChainStore<E> {
        &self.store
    }

    /// The next height to produce.
    pub const fn next_height(&self) -> u64 {
        self.next_height
    }

    /// The epoch strategy.
    pub const fn epochs(&self) -> &EpochStrategy {
        &self.epochs
    }

    /// The chain profile followers need (no secrets): namespace, epoch length, genesis header.
    pub fn profile(&self, name: &str) -> Result<ChainProfile, DevnetError> {
        let header = self.genesis.header();
        let genesis = DkgOutcome::decode_strict(
            &header.inner.extra_data,
            self.epochs.outcome_layout(header.inner.timestamp),
            &OutcomeLimits::default(),
        )
        .map_err(|err| corrupt("genesis outcome", err))?;
        Ok(ChainProfile {
            name: name.to_string(),
            chain_id: Some(self.config.chain_id),
            namespace: self.config.namespace.clone(),
            epochs: self.epochs.clone(),
            genesis,
            genesis_header: Some(self.genesis.header().clone()),
            network_identities: Vec::new(),
            follow_url: None,
            trusted_blocks: Vec::new(),
            upstream_rate_limit: None,
        })
    }

    /// The committee (pool window) of `epoch`.
    fn committee_keys(&self, epoch: u64) -> Vec<PrivateKey> {
        committee_keys(&self.pool, self.config.committee, epoch)
    }

    /// The epoch containing `height` and the height's view in it (views start at 1).
    fn round_of(&self, height: u64) -> (u64, u64) {
        let epoch = self.epochs.epoch_of(height);
        let first = self.epochs.first_height(epoch).unwrap_or(0);
        (epoch.get(), height - first + 1)
    }

    /// Finds where to continue: re-certifies a stored block that lost its finalization in a
    /// crash, then continues after the last finalized height.
    async fn resume(&mut self) -> Result<(), DevnetError> {
        let last_block = self.store.last_block_height().await.unwrap_or(0);
        let tip = cairn_feed::ChainReader::finalized_height(&self.store).unwrap_or(0);
        self.next_height = tip + 1;
        if last_block > tip {
            let block = self.store.block(tip + 1).await?.ok_or_else(|| {
                corrupt(format!("block {}", tip + 1), "missing below the stored tip")
            })?;
            warn!(
                height = block.height(),
                "re-certifying a block stored without its finalization"
            );
            self.certify_and_store(block).await?;
        }
        if let Some(certified) =
            cairn_feed::ChainReader::certified_at(&self.store, self.next_height - 1)
                .await
                .map_err(|err| corrupt("latest finalization", err))?
        {
            self.feed.publish_finalized(certified);
        }
        Ok(())
    }

    /// Loads (or, at an epoch's start, activates) the committee of `epoch`.
    async fn activate(&mut self, epoch: u64) -> Result<Option<EpochEntry>, DevnetError> {
        if self
            .active
            .as_ref()
            .is_some_and(|active| active.epoch == epoch)
        {
            return Ok(None);
        }
        let bytes = self
            .store
            .secret(epoch)
            .await?
            .ok_or_else(|| corrupt(format!("secrets of epoch {epoch}"), "missing"))?;
        let secrets: EpochSecrets = decode_record(&bytes)
            .map_err(|err| corrupt(format!("secrets of epoch {epoch}"), err))?;
        let signer = CommitteeSigner::new(
            &self.config.namespace,
            &secrets.outcome.output,
            &secrets.shares,
        )
        .map(Arc::new)
        .map_err(|error| DevnetError::Signing {
            epoch,
            height: self.next_height,
            error,
        })?;
        let origin = if epoch == 0 {
            KeyOrigin::Genesis
        } else if self.config.full_dkg_at_epochs.contains(&epoch) {
            KeyOrigin::FullDkg
        } else {
            KeyOrigin::Reshare
        };
        let entry = EpochEntry {
            epoch,
            committee: secrets.outcome.players().iter().cloned().collect(),
            identity: *secrets.outcome.identity(),
            origin,
        };
        self.active = Some(ActiveEpoch {
            epoch,
            secrets,
            signer,
        });
        Ok(Some(entry))
    }

    /// The secrets of `epoch + 1`, running its ceremony if they were not stored yet (a restart
    /// between storing them and writing the boundary block reuses them).
    async fn next_epoch_secrets(&mut self, epoch: u64) -> Result<EpochSecrets, DevnetError> {
        let next = epoch + 1;
        if let Some(bytes) = self.store.secret(next).await? {
            return decode_record(&bytes)
                .map_err(|err| corrupt(format!("secrets of epoch {next}"), err));
        }
        let active = self
            .active
            .as_ref()
            .filter(|active| active.epoch == epoch)
            .ok_or_else(|| {
                corrupt(
                    format!("secrets of epoch {epoch}"),
                    "not active at its boundary",
                )
            })?;
        let dealers = self.committee_keys(epoch);
        let players = self.committee_keys(next);
        let mut rng = rng_for(self.config.seed, Draw::Ceremony(next), &mut self.rng);
        let ceremony = if self.config.full_dkg_at_epochs.contains(&next) {
            crate::ceremony::full_dkg(&mut rng, &self.config.namespace, next, &dealers, &players)
        } else {
            let dealers = dealers
                .into_iter()
                .filter_map(|key| {
                    let share = active.secrets.shares.get(&key.public_key())?.clone();
                    Some((key, share))
                })
                .collect::<Vec<_>>();
            crate::ceremony::reshare(
                &mut rng,
                &self.config.namespace,
                next,
                &active.secrets.outcome.output,
                &dealers,
                &players,
            )
        }
        .map_err(|error| DevnetError::Ceremony { epoch: next, error })?;
        let secrets = EpochSecrets {
            outcome: DkgOutcome {
                epoch: next,
                output: ceremony.output,
                next: Some(NextCeremony {
                    players: next_players(&self.pool, self.config.committee, next)?,
                    full_dkg: self.config.full_dkg_at_epochs.contains(&(next + 1)),
                }),
            },
            shares: ceremony.shares,
        };
        // Keep the active epoch's record (its shares sign until the boundary is stored).
        self.store
            .put_secret(next, encode_record(&secrets), epoch)
            .await?;
        Ok(secrets)
    }

    /// Builds, certifies and stores the next height (synced), and publishes it.
    pub async fn produce_next(&mut self) -> Result<Produced, DevnetError> {
        let height = self.next_height;
        let parent = self
            .store
            .block(height - 1)
            .await?
            .ok_or_else(|| corrupt(format!("block {}", height - 1), "missing parent"))?;
        let (block, entered) = self.build(height, &parent).await?;
        self.store.put_block(&block).await?;
        let certified = self.certify_and_store(block).await?;
        Ok(Produced { certified, entered })
    }

    /// Syncs what [`Self::produce_batch_unsynced`] wrote and serves it.
    pub async fn commit(&mut self) -> Result<(), DevnetError> {
        Ok(self.store.commit(self.next_height - 1).await?)
    }

    /// Builds the next `count` heights, has their committees sign them on `strategy`'s
    /// threads, and writes them without syncing: bulk generation, made durable and served by
    /// [`Self::commit`]. Returns each new epoch entered, in order.
    pub async fn produce_batch_unsynced(
        &mut self,
        count: u64,
        strategy: &impl Strategy,
    ) -> Result<Vec<EpochEntry>, DevnetError> {
        let first = self.next_height;
        let mut parent = self
            .store
            .block(first - 1)
            .await?
            .ok_or_else(|| corrupt(format!("block {}", first - 1), "missing parent"))?;
        let mut entered = Vec::new();
        let mut built = Vec::with_capacity(count as usize);
        for height in first..first + count {
            let (block, entry) = self.build(height, &parent).await?;
            entered.extend(entry);
            let signer = self
                .active
                .as_ref()
                .expect("build() activated the epoch")
                .signer
                .clone();
            parent = block.clone();
            built.push((self.round_of(height), block, signer));
        }
        let finalizations = strategy
            .try_map_collect_vec(&built, |((epoch, view), block, signer)| {
                certify(signer, block, *epoch, *view)
            })?;
        for ((_, block, _), finalization) in built.into_iter().zip(finalizations) {
            self.store.put_unsynced(&block, &finalization).await?;
            self.next_height = block.height() + 1;
        }
        Ok(entered)
    }

    /// Builds the block at `height` on `parent`, running the next epoch's ceremony at a
    /// boundary; returns it with the epoch it enters, if it is an epoch's first height.
    async fn build(
        &mut self,
        height: u64,
        parent: &Block,
    ) -> Result<(Block, Option<EpochEntry>), DevnetError> {
        let (epoch, view) = self.round_of(height);
        let entered = self.activate(epoch).await?;
        let proposer = {
            let active = self.active.as_ref().expect("activate() just set the epoch");
            let players = active.signer.players();
            let index = (view % players.len() as u64) as usize;
            players[index].clone()
        };
        let transactions = self
            .transactions
            .transactions(height)
            .map_err(|error| DevnetError::Transactions { height, error })?;
        let parent_millis = parent.header().timestamp_millis();
        let millis = match self.config.seed {
            Some(_) => {
                let slot = u64::try_from(self.config.block_time.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                self.genesis
                    .header()
                    .timestamp_millis()
                    .saturating_add(height.saturating_mul(slot))
            }
            None => millis_of(self.clock.current()),
        }
        .max(parent_millis + 1)
            + u64::from(self.config.fork_at == Some(height));
        let extra_data = if self.epochs.is_boundary(height) {
            let secrets = self.next_epoch_secrets(epoch).await?;
            outcome_bytes(&self.epochs, &secrets.outcome, millis)
        } else if view % 3 == 2 {
            dealer_log(height)
        } else {
            Vec::new()
        };
        let context = TempoConsensusContext {
            epoch,
            view,
            parent_view: view - 1,
            proposer: ProposerKey::try_from(B256::from_slice(&proposer.encode()))
                .map_err(|err| corrupt(format!("proposer key of epoch {epoch}"), err))?,
        };
        let block = tempo_block(parent, millis, extra_data, transactions, context)
            .map_err(|error| DevnetError::Block { height, error })?;
        Ok((block, entered))
    }

    /// Has a rotating quorum sign the block, stores the finalization (synced) and publishes
    /// it.
    async fn certify_and_store(
        &mut self,
        block: Block,
    ) -> Result<cairn_primitives::CertifiedBlock, DevnetError> {
        let height = block.height();
        let (epoch, view) = self.round_of(height);
        self.activate(epoch).await?;
        let active = self.active.as_ref().expect("activate() just set the epoch");
        let finalization = certify(&active.signer, &block, epoch, view)?;
        self.store.put_finalization(height, &finalization).await?;
        self.next_height = height + 1;
        let certified = certified_block(&finalization, block);
        self.feed.publish_finalized(certified.clone());
        Ok(certified)
    }
}
