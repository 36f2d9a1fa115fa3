//! One validator's service stack, as commonware-glue composes it: marshal (with the inline
//! wrapper, which fits Tempo headers), glue's reshare actor running each epoch's ceremony, and
//! glue's orchestrator running one simplex engine per epoch, over any runtime and any
//! commonware-p2p network.

use crate::{
    application::TempoApplication,
    block::{ValidatorBlock, ValidatorBlockConfig, ValidatorEpochInfo},
    committee::{Committees, SchemeRegistry},
    serve::Finalized,
};
use commonware_broadcast::buffered;
use commonware_consensus::{
    Reporters,
    marshal::{
        self, Start,
        core::{Actor as MarshalActor, Mailbox as MarshalMailbox},
        resolver::p2p as marshal_resolver,
        standard::{Inline, Standard},
    },
    simplex::{
        self,
        config::{ForwardPolicy, SkipPolicy},
        elector::RoundRobin,
        scheme::bls12381_threshold::vrf,
    },
    types::{Epoch, FixedEpocher, ViewDelta},
};
use commonware_cryptography::{
    Digested, Digestible as _, Sha256, Signer as _,
    bls12381::{
        dkg::feldman_desmedt::Reveal,
        primitives::{sharing::Mode, variant::MinSig},
    },
    certificate::ConstantProvider,
    ed25519,
};
use commonware_glue::dkg::{
    SecretStore,
    fence::Fence,
    orchestrator, reshare,
    state_sync::{Config as StateSyncConfig, Plan as StateSyncPlan},
};
use commonware_p2p::{Blocker, Manager, Receiver, Sender};
use commonware_parallel::Sequential;
use commonware_runtime::{
    Clock, Handle, Metrics, Network, Spawner, Storage, buffer::paged::CacheRef,
};
use commonware_storage::{archive::prunable, translator::TwoCap};
use commonware_utils::{NZDuration, NZU16, NZU64, NZUsize, acknowledgement::Exact};
use rand::CryptoRng;
use std::{
    num::{NonZeroU16, NonZeroUsize},
    time::Duration,
};
use tokio::sync::mpsc;

/// The threshold signature scheme Tempo's consensus uses.
pub type Scheme = vrf::Scheme<ed25519::PublicKey, MinSig>;

/// A validator's marshal mailbox.
pub type Marshal = MarshalMailbox<Scheme, Standard<ValidatorBlock>>;

/// The namespace Tempo signs under.
pub const NAMESPACE: &[u8] = b"TEMPO";

const PAGE_SIZE: NonZeroU16 = NZU16!(4096);
const PAGE_CACHE_PAGES: NonZeroUsize = NZUsize!(256);
const IO_BUFFER: NonZeroUsize = NZUsize!(64 * 1024);
const MAILBOX: NonZeroUsize = NZUsize!(1024);

/// What a validator is: its key, the chain it runs, and the timing of its consensus.
#[derive(Clone)]
pub struct ValidatorConfig {
    /// The validator's key.
    pub signer: ed25519::PrivateKey,
    /// The validator pool and the committee of each epoch.
    pub committees: Committees,
    /// The genesis block, carrying epoch 0's information.
    pub genesis: ValidatorBlock,
    /// How blocks are read.
    pub blocks: ValidatorBlockConfig,
    /// The chain id the block's transactions are signed for.
    pub chain_id: u64,
    /// Prefix of every storage partition.
    pub partition_prefix: String,
    /// How long a leader has to propose before its view is nullified.
    pub leader_timeout: Duration,
    /// How long a view has to certify.
    pub certification_timeout: Duration,
}

impl ValidatorConfig {
    /// Epoch 0's information, from the genesis block.
    fn genesis_info(&self) -> Result<ValidatorEpochInfo, StartError> {
        match commonware_glue::dkg::ReshareBlock::payload(&self.genesis) {
            Some(commonware_glue::dkg::types::Payload::EpochInfo(info)) => Ok(info),
            _ => Err(StartError::NotGenesis),
        }
    }
}

/// Why a validator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configured genesis block carries no epoch 0 information.
    #[error("the configured genesis block carries no information for epoch 0")]
    NotGenesis,
    /// One of marshal's archives could not be opened.
    #[error("opening the {what} archive: {error}")]
    Archive {
        /// Which archive.
        what: &'static str,
        /// Why.
        error: commonware_storage::archive::Error,
    },
}

/// The p2p channels a validator sends and receives on.
pub struct Channels<S, R> {
    /// Consensus votes.
    pub votes: (S, R),
    /// Consensus certificates.
    pub certificates: (S, R),
    /// Consensus's fetches of missing certificates.
    pub resolver: (S, R),
    /// Marshal's fetches of missing blocks and finalizations.
    pub backfill: (S, R),
    /// Proposed blocks.
    pub broadcast: (S, R),
    /// The reshare ceremonies' dealings and acknowledgements.
    pub dkg: (S, R),
}

/// The p2p channel ids, in the order of [`Channels`].
pub const CHANNELS: [u64; 6] = [0, 1, 2, 3, 4, 5];

/// What each channel may receive from one peer per second.
pub const CHANNEL_QUOTA: commonware_runtime::Quota =
    commonware_runtime::Quota::per_second(commonware_utils::NZU32!(1_024));

impl<S, R> Channels<S, R> {
    /// The channels from their pairs, registered in the order of [`CHANNELS`].
    pub fn from_pairs(pairs: [(S, R); 6]) -> Self {
        let [votes, certificates, resolver, backfill, broadcast, dkg] = pairs;
        Self {
            votes,
            certificates,
            resolver,
            backfill,
            broadcast,
            dkg,
        }
    }
}

/// A running validator.
pub struct Validator {
    /// Its marshal: the finalized chain.
    pub marshal: Marshal,
    /// The blocks marshal finalizes, each waiting for its acknowledgement: hand them to
    /// [`crate::serve::serve`] (marshal stops delivering while one is unacknowledged).
    pub finalized: mpsc::UnboundedReceiver<(Digested<ValidatorBlock>, Exact)>,
    /// Its actors.
    pub handles: Vec<Handle<()>>,
}

/// Starts a validator in `context`: its stores, marshal, reshare actor and orchestrator, on
/// `channels`, with peers from `manager` and `blocker`. Its shares and ceremony secrets are kept
/// in `secrets` (which holds its epoch-0 share, if it has one). An error if the genesis block is
/// not one or a store cannot be opened (commonware's actors themselves stop on a storage
/// failure once running).
pub async fn start<E, S, R, M, B, SS>(
    context: E,
    config: ValidatorConfig,
    secrets: SS,
    manager: M,
    blocker: B,
    channels: Channels<S, R>,
) -> Result<Validator, StartError>
where
    E: Spawner + Metrics + Clock + Storage + Network + CryptoRng,
    S: Sender<PublicKey = ed25519::PublicKey>,
    R: Receiver<PublicKey = ed25519::PublicKey>,
    M: Manager<PublicKey = ed25519::PublicKey> + Clone,
    B: Blocker<PublicKey = ed25519::PublicKey> + Clone,
    SS: SecretStore + Clone,
{
    let public_key = config.signer.public_key();
    let prefix = config.partition_prefix.clone();
    let epoch_length = config.blocks.epoch_length;
    let page_cache = CacheRef::new(PAGE_SIZE, PAGE_CACHE_PAGES);
    let info = config.genesis_info()?;
    let identity = *info.output.public().public();

    // Epoch 0's scheme, from the genesis output and this validator's share (if any).
    let registry = SchemeRegistry::new(NAMESPACE, public_key.clone());
    let share = secrets.clone().get_share(Epoch::zero()).await;
    registry.register_epoch_zero(&info, share);

    let resolver = marshal_resolver::init(
        context.child("marshal_resolver"),
        marshal_resolver::Config {
            public_key: public_key.clone(),
            peer_provider: manager.clone(),
            blocker: blocker.clone(),
            mailbox_size: MAILBOX,
            fetch_timeout: NZDuration!(Duration::from_secs(2)),
            fetch_retry_delay: Duration::from_millis(100),
            priority_requests: false,
            priority_responses: false,
        },
        channels.backfill,
    );
    let (broadcast_engine, buffer) = buffered::Engine::new(
        context.child("broadcast"),
        buffered::Config {
            public_key: public_key.clone(),
            mailbox_size: MAILBOX,
            deque_size: 10,
            priority: false,
            codec_config: config.blocks,
            peer_provider: manager.clone(),
            strategy: Sequential,
        },
    );
    broadcast_engine.start(channels.broadcast);

    let finalizations = prunable::Archive::init(
        context.child("finalizations"),
        archive_config(&prefix, "finalizations", page_cache.clone(), ()),
    )
    .await
    .map_err(|error| StartError::Archive {
        what: "finalizations",
        error,
    })?;
    let blocks = prunable::Archive::init(
        context.child("blocks"),
        archive_config(&prefix, "blocks", page_cache.clone(), config.blocks),
    )
    .await
    .map_err(|error| StartError::Archive {
        what: "blocks",
        error,
    })?;
    let genesis = Digested::precomputed(config.genesis.clone(), config.genesis.digest());
    let (marshal_actor, marshal, _floor) = MarshalActor::init(
        context.child("marshal"),
        finalizations,
        blocks,
        marshal::Config {
            provider: ConstantProvider::<_, Epoch>::new(Scheme::certificate_verifier(
                NAMESPACE, identity,
            )),
            epocher: FixedEpocher::new(epoch_length),
            start: Start::Genesis(genesis),
            partition_prefix: format!("{prefix}-marshal"),
            mailbox_size: MAILBOX,
            view_retention: ViewDelta::new(epoch_length.get()),
            prunable_items_per_section: NZU64!(4096),
            page_cache: page_cache.clone(),
            replay_buffer: IO_BUFFER,
            key_write_buffer: IO_BUFFER,
            value_write_buffer: IO_BUFFER,
            block_codec_config: config.blocks,
            max_repair: NZUsize!(16),
            max_pending_acks: NZUsize!(1),
            strategy: Sequential,
        },
    )
    .await;

    let (fence, gate) = Fence::new();
    let state_sync = StateSyncPlan::init(
        context.child("state_sync"),
        StateSyncConfig {
            partition_prefix: format!("{prefix}-state-sync"),
            max_participants: config.blocks.max_participants,
            max_supported_mode:
                commonware_cryptography::bls12381::primitives::sharing::ModeVersion::v0(),
        },
        None,
    )
    .await;
    let (reshare_actor, reshare_mailbox) = reshare::Actor::new(
        context.child("reshare"),
        reshare::Config {
            signer: config.signer.clone(),
            manager: manager.clone(),
            blocker: blocker.clone(),
            participants_provider: config.committees.clone(),
            secret_store: secrets,
            strategy: Sequential,
            registrar: registry.clone(),
            marshal: marshal.clone(),
            state_sync: state_sync.clone(),
            fence,
            namespace: NAMESPACE,
            sharing_mode: Mode::NonZeroCounter,
            reveal: Reveal::V1,
            mailbox_size: MAILBOX,
            partition_prefix: format!("{prefix}-reshare"),
            page_cache: page_cache.clone(),
            write_buffer: IO_BUFFER,
            replay_buffer: IO_BUFFER,
            max_participants: config.blocks.max_participants,
            blocks_per_epoch: epoch_length,
        },
    );
    let reshare_handle = reshare_actor.start(channels.dkg);

    let application = Inline::new(
        context.child("inline"),
        reshare::Application::new(
            TempoApplication::new(config.blocks, config.chain_id),
            reshare_mailbox.clone(),
            epoch_length,
        ),
        marshal.clone(),
        FixedEpocher::new(epoch_length),
    );
    let (orchestrator_actor, orchestrator_mailbox) = orchestrator::Actor::new(
        context.child("orchestrator"),
        orchestrator::Config {
            oracle: blocker,
            manager,
            provider: registry,
            marshal: marshal.clone(),
            application,
            strategy: Sequential,
            simplex: orchestrator::SimplexConfig {
                elector: RoundRobin::<Sha256>::default(),
                mailbox_size: MAILBOX,
                replay_buffer: IO_BUFFER,
                write_buffer: IO_BUFFER,
                page_cache,
                leader_timeout: config.leader_timeout,
                certification_timeout: config.certification_timeout,
                timeout_retry: config.leader_timeout / 2,
                fetch_timeout: NZDuration!(Duration::from_secs(2)),
                fetch_retry_delay: Duration::from_millis(500),
                view_retention: ViewDelta::new(epoch_length.get()),
                skip: SkipPolicy::Enabled {
                    timeout: config.leader_timeout * 5,
                    budget: simplex::SkipBudget::Participants,
                },
                forward: ForwardPolicy::Disabled,
                track_historical_votes: false,
            },
            gate,
            state_sync,
            blocks_per_epoch: epoch_length,
            mailbox_size: MAILBOX,
            partition_prefix: format!("{prefix}-orchestrator"),
        },
    );
    let orchestrator_handle =
        orchestrator_actor.start(channels.votes, channels.certificates, channels.resolver);
    let (served, finalized) = Finalized::new();
    let marshal_handle = marshal_actor.start(
        Reporters::from((
            orchestrator_mailbox,
            Reporters::from((reshare_mailbox, served)),
        )),
        buffer,
        resolver,
    );
    Ok(Validator {
        marshal,
        finalized,
        handles: vec![reshare_handle, orchestrator_handle, marshal_handle],
    })
}

/// A prunable archive's settings under `prefix`.
fn archive_config<C>(
    prefix: &str,
    name: &str,
    page_cache: CacheRef,
    codec_config: C,
) -> prunable::Config<TwoCap, C> {
    prunable::Config {
        translator: TwoCap,
        metadata_partition: format!("{prefix}-{name}-metadata"),
        key_partition: format!("{prefix}-{name}-key"),
        key_page_cache: page_cache,
        value_partition: format!("{prefix}-{name}-value"),
        compression: None,
        codec_config,
        items_per_section: NZU64!(4096),
        key_write_buffer: IO_BUFFER,
        value_write_buffer: IO_BUFFER,
        replay_buffer: IO_BUFFER,
    }
}

#[cfg(test)]
mod tests;
