//! How to ask one upstream, learnt from its answers, as public nodes differ: the batch size it
//! takes (found by bisection between the largest batch it answered and the smallest it refused)
//! and the call rate it tolerates (halved on "slow down", grown back as answers come through,
//! never above the operator's budget). Calls are counted, refusals too.

use commonware_runtime::telemetry::metrics::raw::Counter;
use std::sync::{
    Mutex, OnceLock,
    atomic::{AtomicU64, Ordering},
};
use tokio::time::{Duration, Instant};

/// Calls sent to one upstream and, of those, refused with "slow down" (each retried): the share
/// of refusals says whether the budget fits the node.
#[derive(Debug, Default)]
pub struct CallCounts {
    calls: AtomicU64,
    refused: AtomicU64,
    /// The metrics that count the same, once attached.
    metrics: OnceLock<(Counter, Counter)>,
}

impl CallCounts {
    /// Calls sent (a batch counts each call).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Calls the upstream answered with "slow down".
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub(super) fn sent(&self, calls: u64) {
        self.calls.fetch_add(calls, Ordering::Relaxed);
        if let Some((counter, _)) = self.metrics.get() {
            counter.inc_by(calls);
        }
    }

    pub(super) fn slowed(&self, calls: u64) {
        self.refused.fetch_add(calls, Ordering::Relaxed);
        if let Some((_, counter)) = self.metrics.get() {
            counter.inc_by(calls);
        }
    }

    /// Counts calls and "slow down"s in these metrics too from now on, starting with those
    /// counted so far; the first metrics given stay.
    pub(crate) fn count_in(&self, calls: Counter, slowed_down: Counter) {
        let (before_calls, before_slowed) = (self.calls(), self.refused());
        if self.metrics.set((calls, slowed_down)).is_ok()
            && let Some((calls, slowed_down)) = self.metrics.get()
        {
            calls.inc_by(before_calls);
            slowed_down.inc_by(before_slowed);
        }
    }
}

/// The batch size to send, between the largest batch the upstream answered and the smallest it
/// refused for its size.
#[derive(Debug)]
pub(super) struct BatchSize(Mutex<BatchBounds>);

#[derive(Debug)]
struct BatchBounds {
    /// The most calls ever put in one batch (the configured size).
    cap: usize,
    /// The size to send now.
    current: usize,
    /// The largest batch answered (0 before any).
    answered: usize,
    /// The smallest batch refused for its size, if any.
    refused: Option<usize>,
}

impl BatchSize {
    pub(super) fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        Self(Mutex::new(BatchBounds {
            cap,
            current: cap,
            answered: 0,
            refused: None,
        }))
    }

    fn bounds<R>(&self, f: impl FnOnce(&mut BatchBounds) -> R) -> R {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The size to send now.
    pub(super) fn current(&self) -> usize {
        self.bounds(|bounds| bounds.current)
    }

    /// A batch of `size` calls was answered: a full-size one lets the size grow halfway to
    /// the smallest refused size.
    pub(super) fn answered(&self, size: usize) {
        self.bounds(|bounds| {
            bounds.answered = bounds.answered.max(size);
            if size < bounds.current {
                return;
            }
            bounds.current = match bounds.refused {
                None => bounds.cap,
                Some(refused) if refused > bounds.answered + 1 => {
                    bounds.answered + (refused - bounds.answered) / 2
                }
                Some(_) => bounds.answered,
            };
        });
    }

    /// A batch of `size` calls was refused for its size; returns the size to send instead.
    pub(super) fn refused(&self, size: usize) -> usize {
        self.bounds(|bounds| {
            let refused = bounds.refused.map_or(size, |known| known.min(size));
            bounds.refused = Some(refused);
            if bounds.answered >= refused {
                // The upstream takes less than it used to: start the search again below.
                bounds.answered = 0;
            }
            bounds.current = if bounds.answered == 0 {
                (refused / 2).max(1)
            } else {
                bounds.answered + (refused - bounds.answered) / 2
            };
            bounds.current
        })
    }
}

/// After a "slow down", the rate grows quickly back to this share of the rate that was refused,
/// then slowly, probing for more.
const RECOVERED: f64 = 0.9;
/// Calls per second added per answered call while below [`RECOVERED`] of the refused rate (the
/// rate grows by a fifth each second).
const FAST_GROWTH: f64 = 0.2;
/// ... and above it (by a hundredth each second).
const SLOW_GROWTH: f64 = 0.01;
/// While paced, a batch holds at most this share of a second's calls: a node counting calls per
/// second sees at most the rate plus one batch in any second, so batches stay small against
/// the rate, and the rate is what the node judges.
const BATCH_SHARE: f64 = 1.0 / 30.0;
/// The least rate pacing starts from after a first "slow down" without a budget.
const MIN_START: u64 = 20;
/// The refusals within this long of a cut are one burst, and cut the rate once.
const CUT_SPACING: Duration = Duration::from_secs(1);

/// The call rate: unpaced until the first "slow down" unless the operator set a budget, then
/// spent evenly (each call waits for its slot). A "slow down" halves it; answers grow it back,
/// fast up to nine tenths of the rate that was refused, then slowly. Never above the budget.
#[derive(Debug)]
pub(super) struct Pace(Mutex<PaceState>);

#[derive(Debug)]
struct PaceState {
    /// The operator's budget, in calls per second.
    budget: Option<f64>,
    /// The rate now; `None` while unpaced.
    rate: Option<f64>,
    /// When the next call may go.
    next: Instant,
    /// The rate at the last "slow down".
    refused_at: f64,
    /// When the rate was last cut.
    cut: Option<Instant>,
    /// Calls answered in the current second, from when it started.
    window: (Instant, u64),
    /// Calls answered in the last full second.
    last_second: u64,
}

impl PaceState {
    /// Counts `calls` answered now, in the second they fall in.
    fn count_answered(&mut self, now: Instant, calls: usize) {
        let (start, answered) = self.window;
        if now.duration_since(start) >= Duration::from_secs(1) {
            self.last_second = answered;
            self.window = (now, 0);
        }
        self.window.1 += calls as u64;
    }
}

impl Pace {
    pub(super) fn new(budget: Option<u32>) -> Self {
        let budget = budget.map(|calls| f64::from(calls.max(1)));
        let now = Instant::now();
        Self(Mutex::new(PaceState {
            budget,
            rate: budget,
            next: now,
            refused_at: budget.unwrap_or(f64::MAX),
            cut: None,
            window: (now, 0),
            last_second: 0,
        }))
    }

    fn state<R>(&self, f: impl FnOnce(&mut PaceState) -> R) -> R {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The rate now (calls per second), if paced.
    #[cfg(test)]
    fn rate(&self) -> Option<f64> {
        self.state(|state| state.rate)
    }

    /// The most calls one batch may hold at the current rate (no limit while unpaced).
    pub(super) fn batch_limit(&self) -> usize {
        self.state(|state| {
            state
                .rate
                .map_or(usize::MAX, |rate| (rate * BATCH_SHARE).max(1.0) as usize)
        })
    }

    /// Takes the slots of `calls` calls; returns when they may be sent.
    pub(super) fn take(&self, calls: usize) -> Instant {
        self.state(|state| {
            let now = Instant::now();
            let Some(rate) = state.rate else {
                return now;
            };
            let at = state.next.max(now);
            state.next = at + Duration::from_secs_f64(calls as f64 / rate);
            at
        })
    }

    /// Waits for the slots of `calls` calls.
    pub(super) async fn wait(&self, calls: usize) {
        tokio::time::sleep_until(self.take(calls)).await;
    }

    /// The upstream said "slow down": halves the rate, once per burst of refusals.
    pub(super) fn slowed_down(&self) {
        self.state(|state| {
            let now = Instant::now();
            if state
                .cut
                .is_some_and(|cut| now.duration_since(cut) < CUT_SPACING)
            {
                return;
            }
            state.cut = Some(now);
            let Some(sending) = state.rate else {
                // Unpaced, the rate sent is unknown, and what the upstream answered in the last
                // second (or this one so far) is at most what it allows: pacing starts there
                // and grows fast until the next "slow down", which halves it.
                state.count_answered(now, 0);
                let taken = state.last_second.max(state.window.1).max(MIN_START) as f64;
                state.rate = Some(taken);
                state.refused_at = f64::MAX;
                tracing::debug!(
                    rate = taken,
                    "the upstream said slow down; pacing calls from the rate it answered"
                );
                return;
            };
            state.refused_at = sending;
            state.rate = Some((sending / 2.0).max(1.0));
            tracing::debug!(
                rate = sending / 2.0,
                "the upstream said slow down; halved the call rate"
            );
        });
    }

    /// `calls` calls were answered: the rate grows back, from a second after the last cut on
    /// (answers to calls sent before the cut say nothing about the new rate).
    pub(super) fn answered(&self, calls: usize) {
        self.state(|state| {
            let now = Instant::now();
            state.count_answered(now, calls);
            let Some(rate) = state.rate else {
                return;
            };
            if state
                .cut
                .is_some_and(|cut| now.duration_since(cut) < CUT_SPACING)
            {
                return;
            }
            let growth = if rate < RECOVERED * state.refused_at {
                FAST_GROWTH
            } else {
                SLOW_GROWTH
            };
            let grown = rate + growth * calls as f64;
            state.rate = Some(state.budget.map_or(grown, |budget| grown.min(budget)));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that takes batches of at most 100 calls: from 1,024 the size comes down to
    /// exactly 100 in a few refusals, and stays there.
    #[test]
    fn the_batch_size_settles_on_the_largest_the_upstream_takes() {
        let size = BatchSize::new(1024);
        let mut refusals = 0;
        for _ in 0..40 {
            let current = size.current();
            if current > 100 {
                refusals += 1;
                size.refused(current);
            } else {
                size.answered(current);
            }
        }
        assert_eq!(size.current(), 100);
        assert!(refusals <= 10, "{refusals} refusals");
        // A tail batch smaller than the size teaches nothing about larger ones.
        size.answered(7);
        assert_eq!(size.current(), 100);
        // An upstream that takes everything keeps the configured size.
        let open = BatchSize::new(256);
        open.answered(256);
        assert_eq!(open.current(), 256);
        // One that later takes less is searched again from below.
        size.refused(100);
        assert_eq!(size.current(), 50);
        size.answered(50);
        assert_eq!(size.current(), 75);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_halves_on_slow_down_and_grows_back_within_the_budget() {
        let pace = Pace::new(Some(300));
        assert_eq!(pace.rate(), Some(300.0));
        // Slots are spread evenly at the budget: 300 calls take a second.
        let start = Instant::now();
        let last = (0..300).map(|_| pace.take(1)).last().expect("slots");
        let spent = last.duration_since(start).as_secs_f64();
        assert!((spent - 299.0 / 300.0).abs() < 1e-6, "{spent}");

        pace.slowed_down();
        assert_eq!(pace.rate(), Some(150.0));
        // The rest of the same burst does not cut again, and answers within the second after
        // the cut do not grow it.
        pace.slowed_down();
        pace.answered(100);
        assert_eq!(pace.rate(), Some(150.0));
        // Then answers grow it back, fast to 270 (nine tenths of 300), then slowly, never
        // above the budget.
        tokio::time::advance(CUT_SPACING).await;
        pace.answered(100);
        assert_eq!(pace.rate(), Some(170.0));
        pace.answered(500);
        assert_eq!(pace.rate(), Some(270.0));
        pace.answered(100);
        assert_eq!(pace.rate(), Some(271.0));
        pace.answered(100_000);
        assert_eq!(pace.rate(), Some(300.0));
        // Batches hold a thirtieth of a second's calls at most.
        assert_eq!(pace.batch_limit(), 10);
        // A new refusal cuts again.
        pace.slowed_down();
        assert_eq!(pace.rate(), Some(150.0));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_budget_calls_go_at_once_until_the_upstream_says_slow_down() {
        let pace = Pace::new(None);
        let now = Instant::now();
        for _ in 0..1_000 {
            assert_eq!(pace.take(1), now);
        }
        assert_eq!(pace.rate(), None);
        assert_eq!(pace.batch_limit(), usize::MAX);
        // Of 1,000 calls sent at once, the upstream answered 200 this second before it said
        // slow down: pacing starts from that.
        pace.answered(200);
        pace.slowed_down();
        assert_eq!(pace.rate(), Some(200.0));
        assert!(pace.take(1) >= now);
        assert_eq!(pace.take(1), now + Duration::from_secs_f64(1.0 / 200.0));
        // It grows fast (no rate was refused yet) until the next "slow down" halves it.
        tokio::time::advance(CUT_SPACING).await;
        pace.answered(1_000);
        assert_eq!(pace.rate(), Some(400.0));
        tokio::time::advance(CUT_SPACING).await;
        pace.slowed_down();
        assert_eq!(pace.rate(), Some(200.0));
    }
}
