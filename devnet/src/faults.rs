//! Byzantine behaviour for a devnet's RPC, so followers can be tested against upstreams that
//! lie or fail: events with invalid signatures, wrong digests or malformed certificates at a
//! given rate, withheld boundary events, a stall after a height, periodic disconnections, and
//! tampered answers to fetches. The chain itself is produced and stored honestly; only what is
//! served is changed.

use alloy_primitives::B256;
use cairn_epoch::{Finalization, decode_certificate, encode_certificate};
use cairn_feed::{ChainReader, ReadError};
use cairn_primitives::{Block, CertifiedBlock, Digest};
use rand::{RngExt as _, SeedableRng as _, rngs::StdRng};
use std::{
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

/// One fault mode (`cairn devnet --fault MODE`).
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// A share of events carries a certificate whose signatures belong to another block.
    BadSignature(f64),
    /// A share of events carries a block other than the one the certificate signs.
    WrongDigest(f64),
    /// A share of events carries a certificate that does not decode.
    Malformed(f64),
    /// Boundary blocks are never announced as events (they are still served on request).
    WithholdBoundaries,
    /// Nothing above this height is announced or served.
    StallAfter(u64),
    /// Every subscriber is disconnected at this interval.
    DisconnectEvery(Duration),
    /// A share of answers to block and finalization requests is tampered with.
    LieOnFetch(f64),
}

/// Share of events or answers a rate-based fault changes when no rate is given.
const DEFAULT_RATE: f64 = 0.5;

fn rate(mode: &str, arg: Option<&str>) -> Result<f64, String> {
    let Some(arg) = arg else {
        return Ok(DEFAULT_RATE);
    };
    let rate: f64 = arg
        .parse()
        .map_err(|_| format!("{mode}: the rate `{arg}` is not a number"))?;
    if !(rate > 0.0 && rate <= 1.0) {
        return Err(format!("{mode}: the rate must be in (0, 1], got {arg}"));
    }
    Ok(rate)
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (mode, arg) = match text.split_once(':') {
            Some((mode, arg)) => (mode, Some(arg)),
            None => (text, None),
        };
        let needs = |what: &str| format!("{mode} needs {what}, as in {mode}:{what}");
        match mode {
            "bad-signature" => Ok(Self::BadSignature(rate(mode, arg)?)),
            "wrong-digest" => Ok(Self::WrongDigest(rate(mode, arg)?)),
            "malformed" => Ok(Self::Malformed(rate(mode, arg)?)),
            "lie-on-fetch" => Ok(Self::LieOnFetch(rate(mode, arg)?)),
            "withhold-boundaries" if arg.is_none() => Ok(Self::WithholdBoundaries),
            "stall-after" => {
                let arg = arg.ok_or_else(|| needs("HEIGHT"))?;
                arg.parse()
                    .map(Self::StallAfter)
                    .map_err(|_| format!("stall-after: `{arg}` is not a height"))
            }
            "disconnect-every" => {
                let arg = arg.ok_or_else(|| needs("DURATION"))?;
                let interval = humantime::parse_duration(arg)
                    .map_err(|err| format!("disconnect-every: `{arg}`: {err}"))?;
                if interval.is_zero() {
                    return Err("disconnect-every: the interval must be above zero".into());
                }
                Ok(Self::DisconnectEvery(interval))
            }
            _ => Err(format!(
                "unknown fault `{text}`: use bad-signature[:RATE], wrong-digest[:RATE], malformed[:RATE], withhold-boundaries, stall-after:HEIGHT, disconnect-every:DURATION or lie-on-fetch[:RATE]"
            )),
        }
    }
}

/// The faults of one devnet, with the RNG that decides which events and answers they hit.
#[derive(Debug)]
pub struct Faults {
    faults: Vec<Fault>,
    rng: Mutex<StdRng>,
    previous: Mutex<Option<Finalization>>,
}

impl Faults {
    /// `faults`, deciding with an RNG seeded by `seed`.
    pub fn new(faults: Vec<Fault>, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            faults,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            previous: Mutex::new(None),
        })
    }

    /// The height nothing above is announced or served, if stalled.
    pub fn stall_height(&self) -> Option<u64> {
        self.faults.iter().find_map(|fault| match fault {
            Fault::StallAfter(height) => Some(*height),
            _ => None,
        })
    }

    /// How often subscribers are disconnected, if at all.
    pub fn disconnect_interval(&self) -> Option<Duration> {
        self.faults.iter().find_map(|fault| match fault {
            Fault::DisconnectEvery(interval) => Some(*interval),
            _ => None,
        })
    }

    fn hits(&self, rate: f64) -> bool {
        let mut rng = self.rng.lock().unwrap_or_else(|poison| poison.into_inner());
        rng.random_bool(rate)
    }

    fn stalled(&self, height: u64) -> bool {
        self.stall_height().is_some_and(|stall| height > stall)
    }

    /// What to announce for a produced block: `None` to withhold it, else the event, changed
    /// by the rate-based faults that hit it.
    pub fn event(&self, certified: CertifiedBlock, is_boundary: bool) -> Option<CertifiedBlock> {
        let height = certified.height.unwrap_or_default();
        let finalization = decode_certificate(&certified.certificate).ok();
        let previous = {
            let mut previous = self
                .previous
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            std::mem::replace(&mut *previous, finalization)
        };
        if self.stalled(height) {
            return None;
        }
        if is_boundary && self.faults.contains(&Fault::WithholdBoundaries) {
            return None;
        }
        let mut event = certified;
        for fault in &self.faults {
            match *fault {
                Fault::BadSignature(rate) if self.hits(rate) => {
                    if let Some(other) = &previous {
                        event = with_signatures_of(event, other);
                    }
                }
                Fault::WrongDigest(rate) if self.hits(rate) => event = with_other_block(event),
                Fault::Malformed(rate) if self.hits(rate) => {
                    event.certificate = "not a certificate".into();
                }
                _ => {}
            }
        }
        Some(event)
    }

    fn lies(&self) -> bool {
        self.faults.iter().any(|fault| match fault {
            Fault::LieOnFetch(rate) => self.hits(*rate),
            _ => false,
        })
    }
}

/// `certified` with the signatures of `other` (a certificate of another block): it decodes,
/// but does not verify.
fn with_signatures_of(mut certified: CertifiedBlock, other: &Finalization) -> CertifiedBlock {
    if let Ok(mut finalization) = decode_certificate(&certified.certificate) {
        finalization.certificate = other.certificate.clone();
        certified.certificate = encode_certificate(&finalization);
    }
    certified
}

/// A copy of `block` with one header field changed: another hash, same body.
fn tampered(block: &Block) -> Block {
    let (mut header, body) = block.clone().into_parts();
    header.inner.gas_limit = header.inner.gas_limit.wrapping_add(1);
    Block::new(header, body).unwrap_or_else(|_| block.clone())
}

/// `certified` with a block other than the one its certificate signs.
fn with_other_block(mut certified: CertifiedBlock) -> CertifiedBlock {
    if let Some(block) = &certified.block {
        let other = tampered(block);
        certified.digest = B256::from(other.hash().0);
        certified.block = Some(other);
    }
    certified
}

/// A chain served through the faults: stalled heights are not served, and a share of answers
/// is tampered with when the devnet lies on fetch.
#[derive(Clone, Debug)]
pub struct FaultyChain<C> {
    inner: C,
    faults: Arc<Faults>,
}

impl<C> FaultyChain<C> {
    /// `inner` served through `faults`.
    pub const fn new(inner: C, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }
}

impl<C: ChainReader> ChainReader for FaultyChain<C> {
    fn finalized_height(&self) -> Option<u64> {
        let height = self.inner.finalized_height()?;
        Some(
            self.faults
                .stall_height()
                .map_or(height, |stall| height.min(stall)),
        )
    }

    fn first_height(&self) -> u64 {
        self.inner.first_height()
    }

    async fn certified_at(&self, height: u64) -> Result<Option<CertifiedBlock>, ReadError> {
        if self.faults.stalled(height) {
            return Ok(None);
        }
        let Some(certified) = self.inner.certified_at(height).await? else {
            return Ok(None);
        };
        if !self.faults.lies() {
            return Ok(Some(certified));
        }
        // The signatures of a neighbour's certificate: well-formed, and wrong.
        let neighbour = if height > 1 { height - 1 } else { height + 1 };
        let other = self
            .inner
            .certified_at(neighbour)
            .await?
            .and_then(|other| decode_certificate(&other.certificate).ok());
        Ok(Some(match other {
            Some(other) => with_signatures_of(certified, &other),
            None => with_other_block(certified),
        }))
    }

    async fn block_at(&self, height: u64) -> Result<Option<Block>, ReadError> {
        if self.faults.stalled(height) {
            return Ok(None);
        }
        let block = self.inner.block_at(height).await?;
        Ok(block.map(|block| {
            if self.faults.lies() {
                tampered(&block)
            } else {
                block
            }
        }))
    }

    async fn raw_block_at(&self, height: u64) -> Result<Option<Vec<u8>>, ReadError> {
        if self.faults.stalled(height) {
            return Ok(None);
        }
        if self.faults.lies() {
            let block = self.inner.block_at(height).await?;
            return Ok(block.and_then(|block| tampered(&block).raw_rlp()));
        }
        self.inner.raw_block_at(height).await
    }

    async fn block_by_hash(&self, hash: Digest) -> Result<Option<Block>, ReadError> {
        let Some(block) = self.inner.block_by_hash(hash).await? else {
            return Ok(None);
        };
        if self.faults.stalled(block.height()) {
            return Ok(None);
        }
        Ok(Some(if self.faults.lies() {
            tampered(&block)
        } else {
            block
        }))
    }

    async fn transaction_by_hash(&self, hash: B256) -> Result<Option<(Block, usize)>, ReadError> {
        self.inner.transaction_by_hash(hash).await
    }
}

#[cfg(test)]
mod tests {
    use super::Fault;
    use std::time::Duration;

    #[test]
    fn modes_parse() {
        assert_eq!("bad-signature".parse(), Ok(Fault::BadSignature(0.5)));
        assert_eq!("wrong-digest:0.25".parse(), Ok(Fault::WrongDigest(0.25)));
        assert_eq!("malformed:1".parse(), Ok(Fault::Malformed(1.0)));
        assert_eq!("lie-on-fetch".parse(), Ok(Fault::LieOnFetch(0.5)));
        assert_eq!("withhold-boundaries".parse(), Ok(Fault::WithholdBoundaries));
        assert_eq!("stall-after:40".parse(), Ok(Fault::StallAfter(40)));
        assert_eq!(
            "disconnect-every:2s".parse(),
            Ok(Fault::DisconnectEvery(Duration::from_secs(2)))
        );
        for bad in [
            "bad-signature:2",
            "bad-signature:0",
            "bad-signature:x",
            "stall-after",
            "stall-after:x",
            "disconnect-every:0s",
            "disconnect-every",
            "withhold-boundaries:3",
            "lie",
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad}");
        }
    }
}
