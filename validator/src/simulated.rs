//! Validators in commonware's deterministic runtime, over commonware-p2p's simulated network:
//! the same engine, block rules, secrets store and serving loop as `cairn validator`, with a
//! trusted deal for epoch 0 instead of a devnet's files. For the validator's own tests and for
//! simulations that put followers beside validators.

use crate::{
    ValidatorBlock, ValidatorBlockConfig, ValidatorEpochInfo, chain_profile,
    committee::Committees,
    engine::{CHANNEL_QUOTA, CHANNELS, Channels, Marshal, ValidatorConfig, start},
    genesis,
    secrets::DiskSecrets,
    serve::serve,
    status::StatusBoard,
};
use cairn_devnet::ChainStore;
use cairn_epoch::ChainProfile;
use cairn_feed::FeedState;
use cairn_primitives::BlockCodecConfig;
use commonware_consensus::types::Epoch;
use commonware_cryptography::{
    Signer as _,
    bls12381::{
        dkg::feldman_desmedt::deal,
        primitives::{group::Share, sharing::Mode, variant::MinSig},
    },
    ed25519,
};
use commonware_glue::dkg::{SecretStore as _, types::EpochOutcome};
use commonware_p2p::simulated;
use commonware_runtime::{Handle, Spawner as _, Supervisor as _, deterministic};
use commonware_utils::{N3f1, sequence::Unit};
use rand::{SeedableRng as _, rngs::StdRng};
use std::{
    num::{NonZeroU32, NonZeroU64},
    time::Duration,
};
use tracing::warn;

/// The chain id simulated validators sign transactions for.
pub const SIMULATED_CHAIN_ID: u64 = 1337;

/// A simulated chain's validators: their keys, the committees, the genesis block and each
/// genesis player's share.
#[derive(Clone)]
pub struct SimulatedChain {
    /// Every validator's key, by position in the pool.
    pub keys: Vec<ed25519::PrivateKey>,
    /// The committee of each epoch.
    pub committees: Committees,
    /// Epoch 0's information, as genesis carries it.
    pub info: ValidatorEpochInfo,
    /// The genesis block.
    pub genesis: ValidatorBlock,
    /// How blocks are read.
    pub blocks: ValidatorBlockConfig,
    /// Each validator's share of epoch 0's key (`None` outside the genesis committee).
    shares: Vec<Option<Share>>,
}

impl SimulatedChain {
    /// `pool` validators (keys from seeds 0..pool) in committees of `committee`, epochs of
    /// `epoch_length`, with epoch 0's key dealt from `seed`.
    pub fn new(seed: u64, pool: usize, committee: usize, epoch_length: u64) -> Self {
        let keys: Vec<_> = (0..pool as u64)
            .map(ed25519::PrivateKey::from_seed)
            .collect();
        let committees =
            Committees::new(keys.iter().map(|key| key.public_key()).collect(), committee);
        let players = committees.players(0);
        let Ok((output, dealt)) = deal::<MinSig, _, N3f1>(
            StdRng::seed_from_u64(seed),
            Mode::NonZeroCounter,
            players.clone(),
        ) else {
            panic!("a trusted deal to {committee} players");
        };
        let info = ValidatorEpochInfo {
            outcome: EpochOutcome::Success,
            epoch: Epoch::zero(),
            output,
            players,
            next_players: committees.players(1),
            directory: Unit,
        };
        let blocks = ValidatorBlockConfig {
            epoch_length: NonZeroU64::new(epoch_length.max(1)).unwrap_or(NonZeroU64::MIN),
            max_participants: NonZeroU32::new(u32::try_from(pool.max(1)).unwrap_or(u32::MAX))
                .unwrap_or(NonZeroU32::MIN),
            block: BlockCodecConfig::default(),
        };
        let Ok(genesis) = genesis(
            info.output.clone(),
            info.players.clone(),
            1_700_000_000_000,
            &blocks,
        ) else {
            panic!("a genesis block for the trusted deal");
        };
        let shares = keys
            .iter()
            .map(|key| {
                dealt
                    .iter_pairs()
                    .find(|(player, _)| **player == key.public_key())
                    .map(|(_, share)| share.clone())
            })
            .collect();
        Self {
            keys,
            committees,
            info,
            genesis,
            blocks,
            shares,
        }
    }

    /// The pool's public keys, in order.
    pub fn pool(&self) -> Vec<ed25519::PublicKey> {
        self.keys.iter().map(|key| key.public_key()).collect()
    }

    /// The chain profile followers of this chain use.
    pub fn profile(&self) -> ChainProfile {
        match chain_profile(
            "simulated",
            SIMULATED_CHAIN_ID,
            self.blocks.epoch_length.get(),
            &self.genesis,
        ) {
            Ok(profile) => profile,
            Err(err) => panic!("the simulated genesis makes a profile: {err}"),
        }
    }
}

/// Timeouts of simulated validators' views.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// How long a leader has to propose.
    pub leader: Duration,
    /// How long a view has to certify.
    pub certification: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            leader: Duration::from_secs(1),
            certification: Duration::from_secs(2),
        }
    }
}

/// A running simulated validator.
pub struct SimulatedValidator {
    /// The task holding every actor of the validator: aborting it crashes the validator, and
    /// it ends if the validator stops on its own (a storage failure).
    pub handle: Handle<()>,
    /// Its marshal.
    pub marshal: Marshal,
    /// What it serves.
    pub store: ChainStore<deterministic::Context>,
    /// Its feed of finalized blocks.
    pub feed: FeedState,
    /// Its status.
    pub board: StatusBoard,
}

/// Starts validator `index` of `chain` in `context` (again after a crash: its stores, secrets
/// included, are where it left them), reachable through `oracle`. Its partitions are prefixed
/// by `validator-{index}`. `None` if its stores cannot be opened (a storage fault).
pub async fn launch(
    context: deterministic::Context,
    chain: &SimulatedChain,
    oracle: &simulated::Oracle<ed25519::PublicKey, deterministic::Context>,
    index: usize,
    timeouts: Timeouts,
) -> Option<SimulatedValidator> {
    let key = chain.keys[index].clone();
    let control = oracle.control(key.public_key());
    let mut pairs = Vec::new();
    for channel in CHANNELS {
        pairs.push(control.register(channel, CHANNEL_QUOTA).await.ok()?);
    }
    let pairs = <[_; 6]>::try_from(pairs).ok()?;
    let channels = Channels::from_pairs(pairs);
    let prefix = format!("validator-{index}");
    let mut secrets = DiskSecrets::open(context.child("secrets"), &format!("{prefix}-secrets"))
        .await
        .map_err(|err| warn!(index, %err, "the validator's secrets do not open"))
        .ok()?;
    if !secrets.holds_shares().await
        && let Some(share) = chain.shares[index].clone()
    {
        secrets.put_share(Epoch::zero(), share).await;
    }
    let store = ChainStore::open_in(context.child("served"), &format!("{prefix}-served"))
        .await
        .map_err(|err| warn!(index, %err, "the validator's chain store does not open"))
        .ok()?;
    let config = ValidatorConfig {
        signer: key.clone(),
        committees: chain.committees.clone(),
        genesis: chain.genesis.clone(),
        blocks: chain.blocks,
        chain_id: SIMULATED_CHAIN_ID,
        partition_prefix: prefix,
        leader_timeout: timeouts.leader,
        certification_timeout: timeouts.certification,
    };
    let feed = FeedState::default();
    let board = StatusBoard::new(
        SIMULATED_CHAIN_ID,
        index,
        key.public_key(),
        chain.blocks.epoch_length.get(),
    );
    let manager = oracle.manager();
    let (serving, published, noted) = (store.clone(), feed.clone(), board.clone());
    let (genesis, blocks) = (chain.genesis.clone(), chain.blocks);
    let (started, marshal) = futures::channel::oneshot::channel();
    let mut failed = secrets.failed();
    let handle = context.spawn(move |context| async move {
        let validator = match start(context, config, secrets, manager, control, channels).await {
            Ok(validator) => validator,
            Err(err) => return warn!(index, %err, "the validator did not start"),
        };
        let _ = started.send(validator.marshal.clone());
        let serving = serve(
            validator.marshal,
            serving,
            published,
            noted,
            genesis,
            blocks,
            validator.finalized,
        );
        tokio::select! {
            biased;
            served = serving => {
                if let Err(err) = served {
                    warn!(index, %err, "the validator stopped serving");
                }
            }
            _ = Handle::select(validator.handles) => warn!(index, "an actor of the validator stopped"),
            _ = failed.wait_for(Option::is_some) => warn!(index, "the validator's secrets failed"),
        }
    });
    let marshal = marshal.await.ok()?;
    Some(SimulatedValidator {
        handle,
        marshal,
        store,
        feed,
        board,
    })
}
