//! The DKG outcome written on chain (genesis `extraData`, and the last block of every epoch for
//! the next one), byte-compatible with Tempo. Two layouts exist ([`OutcomeLayout`]):
//!
//! - legacy: `varint(epoch) || Output || next_players || is_next_full_dkg: u8`, read the way
//!   Tempo's validators read it at a boundary (bytes after it ignored);
//! - TIP-1123: `varint(epoch) || Output`, read strictly (exactly that length).
//!
//! Which one a block holds is decided by the chain (its TIP-1123 fork time against the block's
//! timestamp), never by trying both decoders.
//!
//! where `Output` is commonware's feldman-desmedt output
//! (`summary[32] || mode u8 || total u32 BE || varint(n) || n x G2 || dealers || players || revealed`)
//! and a set is `varint(len) || len x 32-byte ed25519 key`.

use bytes::{Buf as _, BufMut};
use commonware_codec::{
    Buf, Copying, EncodeSize, Error as CodecError, RangeCfg, Read, ReadExt, Write, varint::UInt,
};
use commonware_cryptography::{
    bls12381::{
        dkg::feldman_desmedt::Output,
        primitives::{
            sharing::{ModeVersion, Sharing},
            variant::{MinSig, Variant},
        },
    },
    ed25519::PublicKey,
};
use commonware_utils::{
    N3f1,
    ordered::{Quorum, Set},
};
use std::num::NonZeroU32;

/// The network identity: the group public key of a threshold sharing (a G2 point, MinSig).
pub type Identity = <MinSig as Variant>::Public;

/// Byte offset of the sharing's `total` field: varint epoch (at most 10 bytes) is read first, so
/// the offset is relative to the start of the `Output`: summary (32) + mode (1).
const TOTAL_OFFSET_IN_OUTPUT: usize = 33;

/// Size of one ed25519 public key in a participant set.
const PARTICIPANT_KEY_BYTES: usize = 32;

/// Bounds applied while decoding an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutcomeLimits {
    /// Most participants accepted in the sharing and in each set.
    pub max_participants: NonZeroU32,
}

impl Default for OutcomeLimits {
    fn default() -> Self {
        Self {
            max_participants: NonZeroU32::new(1024).expect("1024 is non-zero"),
        }
    }
}

/// Why bytes are not a valid DKG outcome.
#[derive(Debug, thiserror::Error)]
pub enum OutcomeError {
    /// The input ended before the outcome did.
    #[error("outcome is truncated")]
    Truncated,
    /// A complete outcome was followed by more bytes.
    #[error("{0} trailing bytes after the outcome")]
    TrailingBytes(usize),
    /// A length prefix or participant count is outside the accepted range.
    #[error("length {0} is outside the accepted range")]
    LengthOutOfRange(usize),
    /// The sharing claims more participants than the input could possibly list.
    #[error("sharing claims {claimed} participants but only {available} bytes follow")]
    ImplausibleParticipantCount {
        /// Participants claimed by the sharing.
        claimed: u64,
        /// Bytes left in the input at that point.
        available: usize,
    },
    /// A field failed to decode (bad point, bad key, unsorted set, bad flag, ...).
    #[error("malformed outcome: {0}")]
    Malformed(CodecError),
    /// The sharing does not cover exactly the listed players.
    #[error("sharing covers {sharing} participants but the outcome lists {players} players")]
    PlayerCountMismatch {
        /// Participants in the sharing.
        sharing: u32,
        /// Players listed.
        players: usize,
    },
    /// The polynomial's threshold is not the BFT quorum of the players.
    #[error("threshold {threshold} is not the quorum {quorum} of the players")]
    ThresholdMismatch {
        /// Threshold of the polynomial.
        threshold: u32,
        /// Quorum of the player set.
        quorum: u32,
    },
}

impl From<CodecError> for OutcomeError {
    fn from(err: CodecError) -> Self {
        match err {
            CodecError::EndOfBuffer => Self::Truncated,
            CodecError::ExtraData(n) => Self::TrailingBytes(n),
            CodecError::InvalidLength(n) => Self::LengthOutOfRange(n),
            other => Self::Malformed(other),
        }
    }
}

/// The byte layout of an outcome on chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutcomeLayout {
    /// `varint(epoch) || Output || next_players || is_next_full_dkg`, the layout before TIP-1123.
    Legacy,
    /// `varint(epoch) || Output`, the layout from the TIP-1123 fork on.
    Tip1123,
}

impl OutcomeLayout {
    /// The name used on the command line and in logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Tip1123 => "tip1123",
        }
    }
}

impl std::fmt::Display for OutcomeLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// When a chain switches to the TIP-1123 outcome layout: blocks stamped at or after `time`
/// (unix seconds) carry compact outcomes. `None` means the chain never switches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeFork {
    /// The TIP-1123 fork time in unix seconds, if the chain has one.
    pub tip1123_time: Option<u64>,
}

impl OutcomeFork {
    /// A chain that never switches layouts.
    pub const NEVER: Self = Self { tip1123_time: None };

    /// The layout of an outcome in a block stamped `timestamp` (unix seconds).
    pub fn layout_at(&self, timestamp: u64) -> OutcomeLayout {
        match self.tip1123_time {
            Some(fork) if timestamp >= fork => OutcomeLayout::Tip1123,
            _ => OutcomeLayout::Legacy,
        }
    }
}

/// What the legacy layout says about the ceremony run during the outcome's epoch. TIP-1123
/// drops it from the chain; nothing in verification relies on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextCeremony {
    /// The players of the ceremony run during the epoch (the next epoch's committee).
    pub players: Set<PublicKey>,
    /// Whether that ceremony is a full DKG (new identity) instead of a reshare.
    pub full_dkg: bool,
}

/// The outcome of a DKG ceremony as it is written to the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkgOutcome {
    /// The epoch this outcome is used for.
    pub epoch: u64,
    /// The ceremony output: public polynomial (constant term = identity), dealers, players.
    pub output: Output<MinSig, PublicKey>,
    /// The next ceremony as the legacy layout announces it; `None` in a TIP-1123 outcome.
    pub next: Option<NextCeremony>,
}

impl DkgOutcome {
    /// Decodes a legacy outcome with the default limits, rejecting trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, OutcomeError> {
        Self::decode_with(bytes, &OutcomeLimits::default())
    }

    /// Decodes a legacy outcome with explicit limits, rejecting trailing bytes.
    pub fn decode_with(bytes: &[u8], limits: &OutcomeLimits) -> Result<Self, OutcomeError> {
        Self::decode_strict(bytes, OutcomeLayout::Legacy, limits)
    }

    /// Decodes an outcome in `layout`, rejecting trailing bytes.
    ///
    /// Before commonware sizes any buffer from the sharing's participant count, the count is
    /// checked against what the remaining input can hold (every participant needs a 32-byte
    /// key in the player set), so no allocation outgrows the input.
    pub fn decode_strict(
        bytes: &[u8],
        layout: OutcomeLayout,
        limits: &OutcomeLimits,
    ) -> Result<Self, OutcomeError> {
        let (outcome, trailing) = Self::decode_prefix_in(bytes, layout, limits)?;
        if trailing > 0 {
            return Err(OutcomeError::TrailingBytes(trailing));
        }
        Ok(outcome)
    }

    /// Decodes the outcome of a boundary header as Tempo's validators read it: a legacy outcome
    /// may be followed by bytes (ignored, and their number returned), a TIP-1123 outcome must
    /// fill the bytes exactly.
    pub fn decode_boundary(
        bytes: &[u8],
        layout: OutcomeLayout,
        limits: &OutcomeLimits,
    ) -> Result<(Self, usize), OutcomeError> {
        match layout {
            OutcomeLayout::Legacy => Self::decode_prefix_in(bytes, layout, limits),
            OutcomeLayout::Tip1123 => Ok((Self::decode_strict(bytes, layout, limits)?, 0)),
        }
    }

    fn decode_prefix_in(
        bytes: &[u8],
        layout: OutcomeLayout,
        limits: &OutcomeLimits,
    ) -> Result<(Self, usize), OutcomeError> {
        check_participant_count(bytes, limits)?;
        let mut buf = Copying(bytes);
        let outcome = read_outcome(&mut buf, layout, limits)?;
        outcome.check_consistency()?;
        Ok((outcome, buf.remaining()))
    }

    /// The layout this outcome is written in.
    pub const fn layout(&self) -> OutcomeLayout {
        match self.next {
            Some(_) => OutcomeLayout::Legacy,
            None => OutcomeLayout::Tip1123,
        }
    }

    /// The same outcome in the TIP-1123 layout (without the next ceremony).
    pub fn compact(&self) -> Self {
        Self {
            epoch: self.epoch,
            output: self.output.clone(),
            next: None,
        }
    }

    /// The encoded bytes, as written into a header's `extraData`, in [`Self::layout`].
    pub fn to_bytes(&self) -> Vec<u8> {
        commonware_codec::Encode::encode(self).to_vec()
    }

    /// The network identity (constant term of the public polynomial).
    pub fn identity(&self) -> &Identity {
        self.output.public().public()
    }

    /// The public sharing of this epoch's key.
    pub fn sharing(&self) -> &Sharing<MinSig> {
        self.output.public()
    }

    /// Number of partial signatures needed to recover a threshold signature.
    pub fn threshold(&self) -> u32 {
        self.output.public().required()
    }

    /// The committee holding shares during `epoch`.
    pub fn players(&self) -> &Set<PublicKey> {
        self.output.players()
    }

    /// The dealers of the ceremony that produced this outcome.
    pub fn dealers(&self) -> &Set<PublicKey> {
        self.output.dealers()
    }

    fn check_consistency(&self) -> Result<(), OutcomeError> {
        let sharing = self.output.public().total().get();
        let players = self.players().len();
        if u32::try_from(players).ok() != Some(sharing) {
            return Err(OutcomeError::PlayerCountMismatch { sharing, players });
        }
        let quorum = self.players().quorum::<N3f1>();
        let threshold = self.threshold();
        if threshold != quorum {
            return Err(OutcomeError::ThresholdMismatch { threshold, quorum });
        }
        Ok(())
    }
}

/// Peeks at the sharing's `total` and rejects counts that the input cannot back: every
/// participant needs a 32-byte key in the output's player set, in both layouts.
fn check_participant_count(bytes: &[u8], limits: &OutcomeLimits) -> Result<(), OutcomeError> {
    let mut buf = Copying(bytes);
    UInt::<u64>::read(&mut buf)?;
    if buf.remaining() < TOTAL_OFFSET_IN_OUTPUT + 4 {
        return Err(OutcomeError::Truncated);
    }
    buf.advance(TOTAL_OFFSET_IN_OUTPUT);
    let total = u64::from(buf.get_u32());
    if total > u64::from(limits.max_participants.get()) {
        return Err(OutcomeError::LengthOutOfRange(total as usize));
    }
    let needed = total.saturating_mul(PARTICIPANT_KEY_BYTES as u64);
    if needed > buf.remaining() as u64 {
        return Err(OutcomeError::ImplausibleParticipantCount {
            claimed: total,
            available: buf.remaining(),
        });
    }
    Ok(())
}

impl Write for DkgOutcome {
    fn write(&self, buf: &mut impl BufMut) {
        UInt(self.epoch).write(buf);
        self.output.write(buf);
        if let Some(next) = &self.next {
            next.players.write(buf);
            next.full_dkg.write(buf);
        }
    }
}

impl EncodeSize for DkgOutcome {
    fn encode_size(&self) -> usize {
        UInt(self.epoch).encode_size()
            + self.output.encode_size()
            + self.next.as_ref().map_or(0, |next| {
                next.players.encode_size() + next.full_dkg.encode_size()
            })
    }
}

fn read_outcome(
    buf: &mut impl Buf,
    layout: OutcomeLayout,
    limits: &OutcomeLimits,
) -> Result<DkgOutcome, CodecError> {
    let max = limits.max_participants;
    let epoch = UInt::<u64>::read(buf)?.into();
    let output = Output::read_cfg(buf, &(max, ModeVersion::v0()))?;
    let next = match layout {
        OutcomeLayout::Legacy => Some(NextCeremony {
            players: Set::read_cfg(buf, &(RangeCfg::new(1..=max.get() as usize), ()))?,
            full_dkg: bool::read(buf)?,
        }),
        OutcomeLayout::Tip1123 => None,
    };
    Ok(DkgOutcome {
        epoch,
        output,
        next,
    })
}

/// Reads a legacy outcome (records that always hold the next ceremony, such as a devnet's
/// secrets).
impl Read for DkgOutcome {
    type Cfg = OutcomeLimits;

    fn read_cfg(buf: &mut impl Buf, limits: &OutcomeLimits) -> Result<Self, CodecError> {
        read_outcome(buf, OutcomeLayout::Legacy, limits)
    }
}
