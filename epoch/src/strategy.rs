//! Fixed-length epochs: epoch `e` covers heights `[e*L, (e+1)*L - 1]`, and its last height is the
//! boundary block that carries the DKG outcome for `e + 1`, in the layout the block's timestamp
//! selects (the chain's TIP-1123 fork).

use cairn_dkg::{OutcomeFork, OutcomeLayout};
use commonware_consensus::types::{Epoch, Epocher, FixedEpocher, Height};
use std::num::NonZeroU64;

/// Why an epoch length is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("epoch length must be at least 2 blocks, got {0}")]
pub struct InvalidEpochLength(pub u64);

/// The epoch strategy of a chain (a thin layer over commonware's [`FixedEpocher`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochStrategy {
    length: u64,
    epocher: FixedEpocher,
    outcome_fork: OutcomeFork,
}

impl EpochStrategy {
    /// Creates a strategy with `length` blocks per epoch.
    pub fn new(length: u64) -> Result<Self, InvalidEpochLength> {
        let nonzero = NonZeroU64::new(length)
            .filter(|len| len.get() >= 2)
            .ok_or(InvalidEpochLength(length))?;
        Ok(Self {
            length,
            epocher: FixedEpocher::new(nonzero),
            outcome_fork: OutcomeFork::NEVER,
        })
    }

    /// The same strategy with boundary outcomes in the TIP-1123 layout from `tip1123_time`
    /// (unix seconds) on; `None` keeps the legacy layout for ever.
    pub const fn with_tip1123_time(mut self, tip1123_time: Option<u64>) -> Self {
        self.outcome_fork = OutcomeFork { tip1123_time };
        self
    }

    /// The TIP-1123 fork time, if the chain has one.
    pub const fn tip1123_time(&self) -> Option<u64> {
        self.outcome_fork.tip1123_time
    }

    /// The layout of the outcome in a boundary block stamped `timestamp` (unix seconds).
    pub fn outcome_layout(&self, timestamp: u64) -> OutcomeLayout {
        self.outcome_fork.layout_at(timestamp)
    }

    /// Blocks per epoch.
    pub const fn length(&self) -> u64 {
        self.length
    }

    /// The commonware epocher (for marshal and other commonware components).
    pub fn epocher(&self) -> &FixedEpocher {
        &self.epocher
    }

    /// The epoch containing `height`.
    pub const fn epoch_of(&self, height: u64) -> Epoch {
        Epoch::new(height / self.length)
    }

    /// First height of `epoch`, or `None` on overflow.
    pub fn first_height(&self, epoch: Epoch) -> Option<u64> {
        self.epocher.first(epoch).map(Height::get)
    }

    /// Last height of `epoch` (its boundary block), or `None` on overflow.
    pub fn boundary_height(&self, epoch: Epoch) -> Option<u64> {
        self.epocher.last(epoch).map(Height::get)
    }

    /// Whether `height` is the last block of its epoch.
    pub const fn is_boundary(&self, height: u64) -> bool {
        height % self.length == self.length - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tempo_mainnet_boundary() {
        let strategy = EpochStrategy::new(21_600).expect("valid length");
        assert_eq!(strategy.epoch_of(32_723_999), Epoch::new(1514));
        assert!(strategy.is_boundary(32_723_999));
        assert_eq!(strategy.boundary_height(Epoch::new(1514)), Some(32_723_999));
        assert_eq!(strategy.first_height(Epoch::new(1515)), Some(32_724_000));
        assert_eq!(strategy.epoch_of(32_724_390), Epoch::new(1515));
        assert!(!strategy.is_boundary(32_724_390));
    }

    #[test]
    fn the_outcome_layout_switches_at_the_fork_time_and_not_before() {
        let never = EpochStrategy::new(10).expect("valid length");
        assert_eq!(never.outcome_layout(u64::MAX), OutcomeLayout::Legacy);
        let forked = never.with_tip1123_time(Some(1_800_000_000));
        assert_eq!(forked.outcome_layout(1_799_999_999), OutcomeLayout::Legacy);
        assert_eq!(forked.outcome_layout(1_800_000_000), OutcomeLayout::Tip1123);
        assert_eq!(forked.outcome_layout(1_800_000_001), OutcomeLayout::Tip1123);
        assert_eq!(forked.tip1123_time(), Some(1_800_000_000));
    }

    #[test]
    fn rejects_degenerate_lengths() {
        assert_eq!(EpochStrategy::new(0), Err(InvalidEpochLength(0)));
        assert_eq!(EpochStrategy::new(1), Err(InvalidEpochLength(1)));
        assert!(EpochStrategy::new(2).is_ok());
    }

    #[test]
    fn overflowing_epochs_have_no_heights() {
        let strategy = EpochStrategy::new(1 << 40).expect("valid length");
        assert_eq!(strategy.boundary_height(Epoch::new(u64::MAX)), None);
    }
}
