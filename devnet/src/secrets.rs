//! The devnet's persisted secrets and parameters: the validator pool's ed25519 keys, each
//! epoch's committee shares, and the chain parameters a restart must match.

use bytes::BufMut;
use cairn_dkg::{DkgOutcome, OutcomeLimits};
use commonware_codec::{
    Buf, Decode, Encode, EncodeSize, Error as CodecError, RangeCfg, Read, ReadExt, Write,
    varint::UInt,
};
use commonware_cryptography::{
    bls12381::primitives::group::Share,
    ed25519::{PrivateKey, PublicKey},
};
use std::collections::{BTreeMap, BTreeSet};

/// Metadata key of the validator pool record.
pub const POOL_KEY: u64 = u64::MAX;
/// Metadata key of the chain parameters record.
pub const PARAMS_KEY: u64 = u64::MAX - 1;

/// Most validators or full-DKG epochs in one record.
const MAX_ENTRIES: usize = 4096;

/// The chain parameters that a restart on the same datadir must not change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainParams {
    /// EVM chain id.
    pub chain_id: u64,
    /// Signature namespace.
    pub namespace: Vec<u8>,
    /// Blocks per epoch.
    pub epoch_length: u64,
    /// Validators in the pool.
    pub validators: u64,
    /// Committee size.
    pub committee: u64,
    /// Epochs whose key comes from a full DKG.
    pub full_dkg_at_epochs: BTreeSet<u64>,
    /// The TIP-1123 fork time (unix seconds), if any.
    pub tip1123_time: Option<u64>,
}

impl Write for ChainParams {
    fn write(&self, buf: &mut impl BufMut) {
        UInt(self.chain_id).write(buf);
        self.namespace.write(buf);
        UInt(self.epoch_length).write(buf);
        UInt(self.validators).write(buf);
        UInt(self.committee).write(buf);
        self.full_dkg_at_epochs.len().write(buf);
        for epoch in &self.full_dkg_at_epochs {
            UInt(*epoch).write(buf);
        }
        // Written only when set, so that parameters stored before the field existed read the same.
        if let Some(time) = self.tip1123_time {
            UInt(time).write(buf);
        }
    }
}

impl EncodeSize for ChainParams {
    fn encode_size(&self) -> usize {
        UInt(self.chain_id).encode_size()
            + self.namespace.encode_size()
            + UInt(self.epoch_length).encode_size()
            + UInt(self.validators).encode_size()
            + UInt(self.committee).encode_size()
            + self.full_dkg_at_epochs.len().encode_size()
            + self
                .full_dkg_at_epochs
                .iter()
                .map(|epoch| UInt(*epoch).encode_size())
                .sum::<usize>()
            + self.tip1123_time.map_or(0, |time| UInt(time).encode_size())
    }
}

impl Read for ChainParams {
    type Cfg = ();

    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let chain_id = UInt::<u64>::read(buf)?.into();
        let namespace = Vec::<u8>::read_cfg(buf, &(RangeCfg::new(..=256), ()))?;
        let epoch_length = UInt::<u64>::read(buf)?.into();
        let validators = UInt::<u64>::read(buf)?.into();
        let committee = UInt::<u64>::read(buf)?.into();
        let count = usize::read_cfg(buf, &RangeCfg::new(..=MAX_ENTRIES))?;
        let mut full_dkg_at_epochs = BTreeSet::new();
        for _ in 0..count {
            full_dkg_at_epochs.insert(UInt::<u64>::read(buf)?.into());
        }
        let tip1123_time = if buf.has_remaining() {
            Some(UInt::<u64>::read(buf)?.into())
        } else {
            None
        };
        Ok(Self {
            chain_id,
            namespace,
            epoch_length,
            validators,
            committee,
            full_dkg_at_epochs,
            tip1123_time,
        })
    }
}

/// The validator pool's ed25519 keys, in pool order.
#[derive(Clone, Debug)]
pub struct Pool(pub Vec<PrivateKey>);

impl Write for Pool {
    fn write(&self, buf: &mut impl BufMut) {
        self.0.write(buf);
    }
}

impl EncodeSize for Pool {
    fn encode_size(&self) -> usize {
        self.0.encode_size()
    }
}

impl Read for Pool {
    type Cfg = ();

    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(Self(Vec::read_cfg(
            buf,
            &(RangeCfg::new(1..=MAX_ENTRIES), ()),
        )?))
    }
}

/// One epoch's public outcome and its committee's shares.
#[derive(Clone, Debug)]
pub struct EpochSecrets {
    /// The outcome for the epoch (as written into the previous boundary block or genesis).
    pub outcome: DkgOutcome,
    /// Each committee member's share.
    pub shares: BTreeMap<PublicKey, Share>,
}

impl Write for EpochSecrets {
    fn write(&self, buf: &mut impl BufMut) {
        self.outcome.write(buf);
        self.shares.len().write(buf);
        for (key, share) in &self.shares {
            key.write(buf);
            share.write(buf);
        }
    }
}

impl EncodeSize for EpochSecrets {
    fn encode_size(&self) -> usize {
        self.outcome.encode_size()
            + self.shares.len().encode_size()
            + self
                .shares
                .iter()
                .map(|(key, share)| key.encode_size() + share.encode_size())
                .sum::<usize>()
    }
}

impl Read for EpochSecrets {
    type Cfg = ();

    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let outcome = DkgOutcome::read_cfg(buf, &OutcomeLimits::default())?;
        let count = usize::read_cfg(buf, &RangeCfg::new(..=MAX_ENTRIES))?;
        let mut shares = BTreeMap::new();
        for _ in 0..count {
            let key = PublicKey::read(buf)?;
            let share = Share::read(buf)?;
            shares.insert(key, share);
        }
        Ok(Self { outcome, shares })
    }
}

/// Encodes a record for the secrets store.
pub fn encode_record(record: &impl Encode) -> Vec<u8> {
    record.encode().to_vec()
}

/// Decodes a record from the secrets store.
pub fn decode_record<T: Decode<Cfg = ()>>(bytes: &[u8]) -> Result<T, CodecError> {
    T::decode_cfg(commonware_codec::Copying(bytes), &())
}
