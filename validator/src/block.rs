//! A Tempo block as a validator's consensus handles it: the block, the consensus context its
//! header carries, and the reshare payload commonware-glue reads from its `extraData`.
//!
//! Where the payload goes:
//!
//! - **Genesis** carries epoch 0's DKG outcome in Tempo's legacy layout and nothing else, exactly
//!   as the certifying devnet's genesis does, so a chain profile and a follower read it
//!   unchanged. Glue's epoch 0 information follows from it: the outcome's output, and its
//!   `next_players` as the players of both epoch 0 and epoch 1 (the committees start rotating
//!   with epoch 2; see [`crate::committee::Committees`]).
//! - **The epoch's final block** carries the next epoch's information twice, one after the
//!   other: first the DKG outcome in Tempo's legacy layout,
//!   `varint(epoch) || Output || next_players || is_next_full_dkg`, so Tempo's nodes and cairn
//!   followers read the next key exactly as on Tempo's networks (they ignore what follows it);
//!   then glue's [`EpochInfo`] as its codec writes it (`Payload` tag 1), which also holds what the
//!   Tempo outcome has no room for: whether the ceremony succeeded, and the players of the epoch
//!   after. Both halves must agree (epoch, output, and Tempo's `next_players` = glue's
//!   `players`), or the block does not decode.
//! - **Other blocks** carry a dealer's signed log (`Payload` tag 0) from the epoch's midpoint on,
//!   or nothing. Tempo's followers read no outcome there.
//!
//! TIP-1123 reads a boundary outcome strictly (exactly its own length), which leaves no room for
//! glue's half after it, and drops `next_players`. A chain with a TIP-1123 fork time therefore
//! cannot be run by these validators: [`check_outcome_fork`] refuses it.

use bytes::{Buf as _, BufMut};
use cairn_dkg::{DkgOutcome, NextCeremony, OutcomeFork, OutcomeLayout, OutcomeLimits};
use cairn_primitives::{Block, BlockCodecConfig, Digest};
use commonware_codec::{Buf, Copying, Encode as _, EncodeSize, Error as CodecError, Read, Write};
use commonware_consensus::{
    CertifiableBlock, Heightable,
    simplex::types::Context,
    types::{Epoch, Height, Round, View},
};
use commonware_cryptography::bls12381::dkg::feldman_desmedt::Output;
use commonware_cryptography::{
    Digestible,
    bls12381::primitives::{sharing::ModeVersion, variant::MinSig},
    ed25519::PublicKey,
};
use commonware_glue::dkg::{
    ReshareBlock,
    types::{EpochInfo, EpochOutcome, Payload},
};
use commonware_utils::{ordered::Set, sequence::Unit};
use std::num::{NonZeroU32, NonZeroU64};

/// The reshare payload a block carries.
pub type ValidatorPayload = Payload<MinSig, PublicKey, Unit>;

/// An epoch's public information, as the final block of the epoch before announces it.
pub type ValidatorEpochInfo = EpochInfo<MinSig, PublicKey, Unit>;

/// The consensus context a block was proposed in.
pub type ValidatorContext = Context<Digest, PublicKey>;

/// How a validator reads blocks: where epochs end, and the bounds on what a block may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidatorBlockConfig {
    /// Blocks per epoch: the final block of each epoch carries the next epoch's information.
    pub epoch_length: NonZeroU64,
    /// Most participants in any set a payload holds.
    pub max_participants: NonZeroU32,
    /// Bounds on the block's own encoding.
    pub block: BlockCodecConfig,
}

impl ValidatorBlockConfig {
    /// Whether the block at `height` is an epoch's final block.
    pub const fn is_final(&self, height: u64) -> bool {
        (height + 1).is_multiple_of(self.epoch_length.get())
    }

    /// The bounds of a glue payload.
    const fn payload_cfg(&self) -> (NonZeroU32, ModeVersion) {
        (self.max_participants, ModeVersion::v0())
    }
}

/// Why a block cannot be a validator's block.
#[derive(Debug, thiserror::Error)]
pub enum ValidatorBlockError {
    /// A block above genesis without the consensus context its proposal ran in.
    #[error("block {0} carries no consensus context")]
    NoContext(u64),
    /// Genesis without epoch 0's outcome.
    #[error("the genesis block carries no DKG outcome")]
    NoGenesisInfo,
    /// The Tempo half of a final block's `extraData` is not a DKG outcome.
    #[error("block {height}: the DKG outcome in extraData does not decode: {error}")]
    Outcome {
        /// The block's height.
        height: u64,
        /// The decoder's error.
        error: cairn_dkg::OutcomeError,
    },
    /// The glue half, or a non-final block's `extraData`, is not a reshare payload.
    #[error("block {height}: the reshare payload in extraData does not decode: {error}")]
    Payload {
        /// The block's height.
        height: u64,
        /// The decoder's error.
        error: CodecError,
    },
    /// A payload where it does not belong: epoch information off a final block, a dealer log
    /// on one, or a final block whose two halves disagree.
    #[error("block {height}: {reason}")]
    Misplaced {
        /// The block's height.
        height: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The block itself is malformed.
    #[error("the block does not hold together: {0}")]
    Block(#[from] cairn_primitives::BlockError),
    /// The chain switches to TIP-1123's strict outcome layout.
    #[error(
        "a chain with a TIP-1123 fork time cannot be run by simplex validators: TIP-1123 reads a \
         boundary's DKG outcome strictly, which leaves no room for the epoch information \
         commonware-glue carries after it"
    )]
    Tip1123,
}

/// Refuses a chain that switches to TIP-1123's outcome layout (see the module docs).
pub const fn check_outcome_fork(fork: &OutcomeFork) -> Result<(), ValidatorBlockError> {
    match fork.tip1123_time {
        Some(_) => Err(ValidatorBlockError::Tip1123),
        None => Ok(()),
    }
}

/// The `extraData` of a block carrying `payload`: for epoch information, Tempo's legacy
/// outcome followed by glue's encoding; for a dealer log, glue's encoding alone.
pub fn extra_data(payload: &ValidatorPayload) -> Vec<u8> {
    let mut bytes = match payload {
        Payload::EpochInfo(info) => DkgOutcome {
            epoch: info.epoch.get(),
            output: info.output.clone(),
            next: Some(NextCeremony {
                players: info.players.clone(),
                full_dkg: false,
            }),
        }
        .to_bytes(),
        Payload::DealerLog(_) => Vec::new(),
    };
    bytes.extend_from_slice(&payload.encode());
    bytes
}

/// The genesis block of a validators' chain, stamped `millis` (unix milliseconds): epoch 0's
/// outcome, whose output is `output` and whose players (of epochs 0 and 1) are `players`.
pub fn genesis(
    output: Output<MinSig, PublicKey>,
    players: Set<PublicKey>,
    millis: u64,
    config: &ValidatorBlockConfig,
) -> Result<ValidatorBlock, ValidatorBlockError> {
    let outcome = DkgOutcome {
        epoch: 0,
        output,
        next: Some(NextCeremony {
            players,
            full_dkg: false,
        }),
    };
    ValidatorBlock::new(
        cairn_devnet::tempo_genesis(millis, outcome.to_bytes())?,
        config,
    )
}

/// The chain profile followers and `cairn inspect` read for a validators' chain named `name`
/// with `genesis`: namespace `TEMPO`, epochs of `epoch_length`, and the genesis key recorded as
/// the network identity from epoch 0 on, as Tempo's chainspecs compile theirs (resharing never
/// changes it, so any epoch's certificate verifies with the profile alone).
pub fn chain_profile(
    name: &str,
    chain_id: u64,
    epoch_length: u64,
    genesis: &ValidatorBlock,
) -> Result<cairn_epoch::ChainProfile, String> {
    let header = genesis.block().header().clone();
    let outcome = DkgOutcome::decode_strict(
        &header.inner.extra_data,
        OutcomeLayout::Legacy,
        &OutcomeLimits::default(),
    )
    .map_err(|err| format!("the genesis outcome: {err}"))?;
    let identity = cairn_epoch::ConfiguredIdentity {
        identity: *outcome.identity(),
        from_epoch: Epoch::zero(),
    };
    Ok(cairn_epoch::ChainProfile {
        name: name.to_string(),
        chain_id: Some(chain_id),
        namespace: crate::engine::NAMESPACE.to_vec(),
        epochs: cairn_epoch::EpochStrategy::new(epoch_length).map_err(|err| err.to_string())?,
        genesis: outcome,
        genesis_header: Some(header),
        network_identities: vec![identity],
        follow_url: None,
        trusted_blocks: Vec::new(),
        upstream_rate_limit: None,
    })
}

/// A Tempo block with the consensus context it was proposed in and the reshare payload it
/// carries, both read once when the block is built or decoded.
#[derive(Clone, PartialEq)]
pub struct ValidatorBlock {
    block: Block,
    context: ValidatorContext,
    payload: Option<ValidatorPayload>,
}

impl ValidatorBlock {
    /// Reads `block`'s context and payload; an error when either is missing where it must be or
    /// malformed.
    pub fn new(block: Block, config: &ValidatorBlockConfig) -> Result<Self, ValidatorBlockError> {
        let payload = read_payload(&block, config)?;
        let context = read_context(&block, payload.as_ref())?;
        Ok(Self {
            block,
            context,
            payload,
        })
    }

    /// The Tempo block.
    pub const fn block(&self) -> &Block {
        &self.block
    }

    /// The Tempo block, owned.
    pub fn into_block(self) -> Block {
        self.block
    }

    /// The reshare payload it carries, borrowed.
    pub const fn payload_ref(&self) -> Option<&ValidatorPayload> {
        self.payload.as_ref()
    }
}

/// The block by height and hash, its context, and which payload it carries (glue's payload
/// types print no `Debug`).
impl std::fmt::Debug for ValidatorBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let payload = match &self.payload {
            None => "none".to_string(),
            Some(Payload::DealerLog(_)) => "a dealer log".to_string(),
            Some(Payload::EpochInfo(info)) => format!("epoch {} information", info.epoch.get()),
        };
        f.debug_struct("ValidatorBlock")
            .field("height", &self.block.height())
            .field("hash", &self.block.hash())
            .field("context", &self.context)
            .field("payload", &payload)
            .finish()
    }
}

/// The reshare payload in `block`'s `extraData` (see the module docs for where it may be).
fn read_payload(
    block: &Block,
    config: &ValidatorBlockConfig,
) -> Result<Option<ValidatorPayload>, ValidatorBlockError> {
    let height = block.height();
    let extra = block.header().inner.extra_data.as_ref();
    if height == 0 && extra.is_empty() {
        return Err(ValidatorBlockError::NoGenesisInfo);
    }
    if extra.is_empty() {
        return Ok(None);
    }
    let decode = |bytes: &[u8]| {
        let mut buf = Copying(bytes);
        let payload = ValidatorPayload::read_cfg(&mut buf, &config.payload_cfg())
            .map_err(|error| ValidatorBlockError::Payload { height, error })?;
        if buf.remaining() > 0 {
            let error = CodecError::ExtraData(buf.remaining());
            return Err(ValidatorBlockError::Payload { height, error });
        }
        Ok(payload)
    };
    let misplaced = |reason| ValidatorBlockError::Misplaced { height, reason };
    let limits = OutcomeLimits {
        max_participants: config.max_participants,
    };
    if height == 0 {
        let outcome = DkgOutcome::decode_strict(extra, OutcomeLayout::Legacy, &limits)
            .map_err(|error| ValidatorBlockError::Outcome { height, error })?;
        let Some(next) = outcome.next.filter(|next| !next.full_dkg) else {
            return Err(misplaced("a genesis outcome announcing no reshare"));
        };
        return Ok(Some(Payload::EpochInfo(ValidatorEpochInfo {
            outcome: EpochOutcome::Success,
            epoch: Epoch::zero(),
            output: outcome.output,
            players: next.players.clone(),
            next_players: next.players,
            directory: Unit,
        })));
    }
    if !config.is_final(height) {
        return match decode(extra)? {
            payload @ Payload::DealerLog(_) => Ok(Some(payload)),
            Payload::EpochInfo(_) => Err(misplaced("epoch information off an epoch's final block")),
        };
    }
    let (outcome, trailing) = DkgOutcome::decode_boundary(extra, OutcomeLayout::Legacy, &limits)
        .map_err(|error| ValidatorBlockError::Outcome { height, error })?;
    let Payload::EpochInfo(info) = decode(&extra[extra.len() - trailing..])? else {
        return Err(misplaced("a dealer log on an epoch's final block"));
    };
    let announced = outcome
        .next
        .as_ref()
        .map(|next| (&next.players, next.full_dkg));
    if outcome.epoch != info.epoch.get()
        || outcome.output != info.output
        || announced != Some((&info.players, false))
    {
        return Err(misplaced(
            "the Tempo outcome and the epoch information disagree",
        ));
    }
    Ok(Some(Payload::EpochInfo(info)))
}

/// The consensus context of `block`: from its header's, or for genesis (which has none) round
/// (0, 0) under the first dealer of epoch 0.
fn read_context(
    block: &Block,
    payload: Option<&ValidatorPayload>,
) -> Result<ValidatorContext, ValidatorBlockError> {
    let height = block.height();
    let parent = block.parent();
    if let Some(context) = &block.header().consensus_context {
        return Ok(Context {
            round: Round::new(Epoch::new(context.epoch), View::new(context.view)),
            leader: context.proposer.to_inner(),
            parent: (View::new(context.parent_view), parent),
        });
    }
    if height != 0 {
        return Err(ValidatorBlockError::NoContext(height));
    }
    let Some(Payload::EpochInfo(info)) = payload else {
        return Err(ValidatorBlockError::NoGenesisInfo);
    };
    let leader = info
        .output
        .players()
        .iter()
        .next()
        .cloned()
        .ok_or(ValidatorBlockError::NoGenesisInfo)?;
    Ok(Context {
        round: Round::new(Epoch::zero(), View::zero()),
        leader,
        parent: (View::zero(), parent),
    })
}

impl Digestible for ValidatorBlock {
    type Digest = Digest;

    fn digest(&self) -> Digest {
        self.block.hash()
    }
}

impl Heightable for ValidatorBlock {
    fn height(&self) -> Height {
        Height::new(self.block.height())
    }
}

impl commonware_consensus::Block for ValidatorBlock {
    fn parent(&self) -> Digest {
        self.block.parent()
    }
}

impl CertifiableBlock for ValidatorBlock {
    type Context = ValidatorContext;

    fn context(&self) -> ValidatorContext {
        self.context.clone()
    }
}

impl ReshareBlock for ValidatorBlock {
    type Variant = MinSig;
    type PublicKey = PublicKey;
    type Directory = Unit;

    fn payload(&self) -> Option<ValidatorPayload> {
        self.payload.clone()
    }
}

/// The block's own encoding (what marshal stores); context and payload are read again from it.
impl Write for ValidatorBlock {
    fn write(&self, buf: &mut impl BufMut) {
        self.block.write(buf);
    }
}

impl EncodeSize for ValidatorBlock {
    fn encode_size(&self) -> usize {
        self.block.encode_size()
    }
}

impl Read for ValidatorBlock {
    type Cfg = ValidatorBlockConfig;

    fn read_cfg(buf: &mut impl Buf, config: &Self::Cfg) -> Result<Self, CodecError> {
        let block = Block::read_cfg(buf, &config.block)?;
        Self::new(block, config).map_err(|err| CodecError::Wrapped("validator block", err.into()))
    }
}

#[cfg(test)]
mod tests;
