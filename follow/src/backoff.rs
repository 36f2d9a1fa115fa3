//! Exponential backoff, one type for every retry in the follower: reconnecting to an upstream,
//! the resolver's attempts at a key, the backfill's retries, and a liar's quarantines. The
//! delay doubles after each failure up to a cap and starts over after a success. It only
//! computes delays: the caller waits on its runtime's clock (or, for quarantines, adds the
//! delay to it), so simulations replay exactly.

use rand::RngExt as _;
use std::time::Duration;

/// A delay that doubles after each failure, from `first` up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `first`, doubling up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            failures: 0,
        }
    }

    /// The delay after the failures so far: `first` times two to their number, at most `max`.
    pub fn delay(&self) -> Duration {
        self.first
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max)
    }

    /// Counts a failure and returns the delay to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay();
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// [`Self::next_delay`] scaled by a random factor in [0.5, 1.5), so that many clients of
    /// one server do not retry in step.
    pub fn next_jittered(&mut self, rng: &mut impl rand::Rng) -> Duration {
        self.next_delay().mul_f64(rng.random_range(0.5..1.5))
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use rand::{SeedableRng as _, rngs::StdRng};
    use std::time::Duration;

    #[test]
    fn delays_double_up_to_the_cap_and_start_over_after_a_success() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let delays: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 700, 700]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
        // Many failures never overflow.
        let mut long = Backoff::new(Duration::from_secs(5), Duration::from_secs(600));
        for _ in 0..100 {
            long.next_delay();
        }
        assert_eq!(long.delay(), Duration::from_secs(600));
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half_times_the_delay() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            let delay = backoff.next_jittered(&mut rng);
            assert!(
                delay >= Duration::from_millis(500) && delay < Duration::from_millis(1500),
                "{delay:?}"
            );
        }
    }
}
