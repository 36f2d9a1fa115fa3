//! Several upstreams as one: a health record per source, requests spread over the healthy
//! ones and retried on the next when one fails, and quarantine with exponential backoff for a
//! source that serves invalid data. A source that lacks what was asked, or is behind, is not
//! punished: it is asked after the others.
//!
//! Conduct that is not invalid data (a source that stalls, drops its connection again and
//! again, or skips heights in its event stream) cannot be told apart from an honest node that
//! is restarting, overloaded or syncing, so it is never quarantined. It is observed instead:
//! shown in the health record, logged once at `warn` when it starts, and the source is asked
//! after the well-behaved ones.

use super::{CallCounts, UpstreamError, UpstreamRequests};
use crate::backoff::Backoff;
use cairn_epoch::{
    BoundarySource, FinalizationVerifier, SourceError, VerifyError, decode_certificate,
};
use cairn_primitives::{Block, CertifiedBlock, Digest};
use commonware_runtime::Clock;
use commonware_runtime::telemetry::metrics::Histogram;
use rand::{CryptoRng, SeedableRng as _, rngs::StdRng};
use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};
use tracing::{debug, warn};

/// Index of an upstream in the order it was configured.
pub type SourceId = usize;

/// Quarantine settings.
#[derive(Clone, Copy, Debug)]
pub struct QuarantineConfig {
    /// Length of a first quarantine; it doubles with each further offence.
    pub base: Duration,
    /// Longest quarantine.
    pub max: Duration,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(5),
            max: Duration::from_secs(600),
        }
    }
}

/// What the follower knows of one upstream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceHealth {
    /// The upstream's URL (or name).
    pub url: String,
    /// Whether its subscription is live.
    pub connected: bool,
    /// Round-trip time of its answered requests (exponentially weighted), in milliseconds.
    pub latency_ms: Option<f64>,
    /// The highest height it announced with an event that verified or awaits its key.
    pub announced_height: u64,
    /// Requests it answered with the data asked for.
    pub served: u64,
    /// Requests it answered with "not found" (never punished).
    pub missing: u64,
    /// Requests that failed (connection or RPC errors).
    pub failed: u64,
    /// Requests that timed out.
    pub timed_out: u64,
    /// Answers and events that were invalid.
    pub invalid: u64,
    /// Time left in quarantine, if quarantined.
    pub quarantined_for: Option<Duration>,
    /// What its last invalid answer or event was.
    pub last_invalid: Option<String>,
    /// Times its connection was lost.
    pub disconnects: u64,
    /// Connections lost within the last [`CONDUCT_WINDOW`].
    pub recent_disconnects: usize,
    /// Heights its event stream skipped within one connection, within the last
    /// [`CONDUCT_WINDOW`].
    pub recent_skipped: u64,
    /// How long it has been connected without announcing anything new while other sources
    /// announced at least 3 heights more.
    pub stalled_for: Option<Duration>,
    /// Calls sent to it (a batch counts each call), when counted ([`SourceBook::count_calls`]).
    pub calls: u64,
    /// Of those, the calls it answered with "slow down" (each retried; never held against it).
    pub slowed_down: u64,
}

/// The window that recent disconnects and skipped heights are counted in.
pub const CONDUCT_WINDOW: Duration = Duration::from_secs(60);
/// Disconnects within [`CONDUCT_WINDOW`] from which a source is flapping.
pub(crate) const FLAPPING_DISCONNECTS: usize = 3;
/// How far behind the best announced height a silent source must be to be stalled.
pub(crate) const STALL_GAP: u64 = 3;
/// How long a source must announce nothing new, while 3 heights or more behind, to be stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(3);
/// How long a source that answered without a certificate asked of it (it caught up through
/// the hash chain itself, say) is asked for certificates after the others.
pub const LACKING_CERTIFICATES_FOR: Duration = Duration::from_secs(30);

impl SourceHealth {
    /// Whether the source is connected and not quarantined.
    pub fn healthy(&self) -> bool {
        self.connected && self.quarantined_for.is_none()
    }

    /// Whether it lost its connection 3 times or more within the last
    /// [`CONDUCT_WINDOW`].
    pub fn flapping(&self) -> bool {
        self.recent_disconnects >= FLAPPING_DISCONNECTS
    }

    /// Whether it observably misbehaves without serving invalid data: flapping, stalled or
    /// skipping heights. Such a source is asked after the others, never quarantined.
    pub fn misbehaving(&self) -> bool {
        self.flapping() || self.stalled_for.is_some() || self.recent_skipped > 0
    }
}

#[derive(Debug)]
struct State {
    health: SourceHealth,
    quarantined_until: Option<SystemTime>,
    /// Its quarantines so far: each offence doubles the next one.
    offences: Option<Backoff>,
    /// The highest height seen on the current connection.
    session_height: Option<u64>,
    /// When the announced height last moved, or the connection came up.
    advanced_at: Option<SystemTime>,
    drops: VecDeque<SystemTime>,
    skips: VecDeque<(SystemTime, u64)>,
    /// Whether the current stall was logged.
    stall_logged: bool,
    /// Where its client counts the calls it sends.
    counts: Option<Arc<CallCounts>>,
    /// When it last answered without a certificate that was asked of it.
    lacked_certificates_at: Option<SystemTime>,
}

impl State {
    fn new(url: String) -> Self {
        Self {
            health: SourceHealth {
                url,
                ..SourceHealth::default()
            },
            quarantined_until: None,
            offences: None,
            session_height: None,
            advanced_at: None,
            drops: VecDeque::new(),
            skips: VecDeque::new(),
            stall_logged: false,
            counts: None,
            lacked_certificates_at: None,
        }
    }

    /// Forgets disconnects and skips older than the window.
    fn expire(&mut self, now: SystemTime) {
        let recent = |at: &SystemTime| {
            now.duration_since(*at)
                .is_ok_and(|age| age >= CONDUCT_WINDOW)
        };
        while self.drops.front().is_some_and(recent) {
            self.drops.pop_front();
        }
        while self.skips.front().is_some_and(|(at, _)| recent(at)) {
            self.skips.pop_front();
        }
        self.health.recent_disconnects = self.drops.len();
        self.health.recent_skipped = self.skips.iter().map(|(_, skipped)| skipped).sum();
    }

    /// How long it has been stalled, given the best height any source announced.
    fn stalled_for(&self, now: SystemTime, best: u64) -> Option<Duration> {
        if !self.health.connected || self.health.announced_height.saturating_add(STALL_GAP) > best {
            return None;
        }
        let silent = now.duration_since(self.advanced_at?).ok()?;
        (silent >= STALL_AFTER).then_some(silent)
    }
    fn quarantined(&mut self, now: SystemTime) -> bool {
        match self.quarantined_until {
            Some(until) if until > now => true,
            Some(_) => {
                self.quarantined_until = None;
                false
            }
            None => false,
        }
    }
}

/// Reads the current time (the runtime's clock, so that simulations replay exactly).
pub type ClockFn = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The health records of the upstreams, shared by the fetcher and the driver (cheap to
/// clone).
#[derive(Clone)]
pub struct SourceBook {
    states: Arc<Mutex<Vec<State>>>,
    next: Arc<AtomicUsize>,
    quarantine: QuarantineConfig,
    clock: ClockFn,
    fetch_latency: Arc<OnceLock<Histogram>>,
    counters: Arc<OnceLock<crate::status::EventCounters>>,
}

impl std::fmt::Debug for SourceBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceBook")
            .field("states", &self.states)
            .field("quarantine", &self.quarantine)
            .finish_non_exhaustive()
    }
}

/// Weight of a new sample in the latency average.
const LATENCY_WEIGHT: f64 = 0.2;

/// How a source answered one request.
enum Answer {
    Served(Duration),
    Missing,
    Failed(UpstreamError),
    Invalid(String),
}

impl SourceBook {
    /// Records for the upstreams named `urls`, in order of [`SourceId`].
    pub fn new(urls: impl IntoIterator<Item = String>, quarantine: QuarantineConfig) -> Self {
        let states = urls.into_iter().map(State::new).collect();
        Self {
            states: Arc::new(Mutex::new(states)),
            next: Arc::new(AtomicUsize::new(0)),
            quarantine,
            clock: Arc::new(SystemTime::now),
            fetch_latency: Arc::default(),
            counters: Arc::default(),
        }
    }

    /// Counts every source's invalid answers, calls and "slow down"s in `counters` from now on
    /// (the calls counted before are added at once); the first counters given stay.
    pub(crate) fn count_events(&self, counters: &crate::status::EventCounters) {
        if self.counters.set(counters.clone()).is_err() {
            return;
        }
        self.with_states(|states| {
            for state in states.iter() {
                counters.invalid_from(&state.health.url, state.health.invalid);
                if let Some(counts) = &state.counts {
                    counters.count_calls_of(&state.health.url, counts);
                }
            }
        });
    }

    /// Observes the latency of every served request in `histogram` (in seconds), from now on;
    /// the first histogram given stays.
    pub fn observe_fetch_latency(&self, histogram: Histogram) {
        let _ = self.fetch_latency.set(histogram);
    }

    fn now(&self) -> SystemTime {
        (self.clock)()
    }

    /// Whether a source is the only one: a lone upstream is never quarantined, as there is
    /// nothing to fall back on; its events are still checked one by one.
    fn lone(&self) -> bool {
        self.with_states(|states| states.len() <= 1)
    }

    fn with_states<T>(&self, f: impl FnOnce(&mut [State]) -> T) -> T {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        f(&mut states)
    }

    /// A snapshot of every source's health. A source found stalled for the first time since
    /// it last announced something new is logged at `warn`.
    pub fn health(&self) -> Vec<SourceHealth> {
        let now = self.now();
        self.with_states(|states| {
            let best = best_announced(states);
            states
                .iter_mut()
                .map(|state| {
                    let quarantined = state.quarantined(now);
                    state.expire(now);
                    let mut health = state.health.clone();
                    health.quarantined_for = quarantined
                        .then(|| {
                            state
                                .quarantined_until
                                .and_then(|until| until.duration_since(now).ok())
                        })
                        .flatten();
                    health.stalled_for = state.stalled_for(now, best);
                    if let Some(counts) = &state.counts {
                        health.calls = counts.calls();
                        health.slowed_down = counts.refused();
                    }
                    if health.stalled_for.is_some() && !state.stall_logged {
                        state.stall_logged = true;
                        warn!(
                            source = %health.url,
                            announced = health.announced_height,
                            best,
                            "upstream stalled: connected but announcing nothing new while others are ahead; asked last, not quarantined"
                        );
                    }
                    health
                })
                .collect()
        })
    }

    /// Shows the calls counted in `counts` (the client's of `source`) in its health.
    pub fn count_calls(&self, source: SourceId, counts: Arc<CallCounts>) {
        self.with_states(|states| {
            if let Some(state) = states.get_mut(source) {
                if let Some(counters) = self.counters.get() {
                    counters.count_calls_of(&state.health.url, &counts);
                }
                state.counts = Some(counts);
            }
        });
    }

    /// The URL of `source`.
    pub fn url(&self, source: SourceId) -> String {
        self.with_states(|states| {
            states
                .get(source)
                .map(|state| state.health.url.clone())
                .unwrap_or_default()
        })
    }

    /// Records whether `source`'s subscription is live. Losing it 3 times within
    /// [`CONDUCT_WINDOW`] is logged at `warn` as flapping.
    pub fn set_connected(&self, source: SourceId, connected: bool) {
        let now = self.now();
        let flapping = self.with_states(|states| {
            let state = states.get_mut(source)?;
            let was = std::mem::replace(&mut state.health.connected, connected);
            state.session_height = None;
            if connected {
                state.advanced_at = Some(now);
                state.stall_logged = false;
                return None;
            }
            if !was {
                return None;
            }
            state.health.disconnects += 1;
            state.drops.push_back(now);
            state.expire(now);
            (state.drops.len() == FLAPPING_DISCONNECTS).then(|| state.health.url.clone())
        });
        if let Some(url) = flapping {
            warn!(source = %url, disconnects = FLAPPING_DISCONNECTS, window = ?CONDUCT_WINDOW, "upstream flapping: its connection keeps dropping; asked last, not quarantined");
        }
    }

    /// Records a height `source` announced with an event that verified (or awaits its key).
    pub fn announced(&self, source: SourceId, height: u64) {
        let now = self.now();
        self.with_states(|states| {
            if let Some(state) = states.get_mut(source)
                && height > state.health.announced_height
            {
                state.health.announced_height = height;
                state.advanced_at = Some(now);
                state.stall_logged = false;
            }
        });
    }

    /// Records the height of an event `source` sent on its current connection, before it is
    /// checked. Heights the stream jumps over are counted as skipped (an honest upstream sends
    /// every finalization in order), and logged at `warn`.
    pub fn sequenced(&self, source: SourceId, height: u64) {
        let now = self.now();
        let skipped = self.with_states(|states| {
            let state = states.get_mut(source)?;
            let Some(last) = state.session_height else {
                state.session_height = Some(height);
                return None;
            };
            state.session_height = Some(last.max(height));
            let gap = height
                .checked_sub(last)?
                .checked_sub(1)
                .filter(|gap| *gap > 0)?;
            state.skips.push_back((now, gap));
            state.expire(now);
            Some((state.health.url.clone(), last))
        });
        if let Some((url, last)) = skipped {
            warn!(source = %url, after = last, next = height, "upstream skipped heights in its event stream; asked last, not quarantined");
        }
    }

    /// Whether `source` is quarantined now (its events are ignored).
    pub fn is_quarantined(&self, source: SourceId) -> bool {
        let now = self.now();
        self.with_states(|states| {
            states
                .get_mut(source)
                .is_some_and(|state| state.quarantined(now))
        })
    }

    /// Records invalid data from `source` and quarantines it: the first offence for
    /// `base`, each further one for twice as long, up to `max`.
    pub fn invalid(&self, source: SourceId, what: &str) {
        let now = self.now();
        let quarantine = self.quarantine;
        let lone = self.lone();
        let Some((url, length)) = self.with_states(|states| {
            let state = states.get_mut(source)?;
            state.health.invalid += 1;
            if let Some(counters) = self.counters.get() {
                counters.invalid_from(&state.health.url, 1);
            }
            state.health.last_invalid = Some(what.to_string());
            if lone {
                return Some((state.health.url.clone(), None));
            }
            let length = state
                .offences
                .get_or_insert_with(|| Backoff::new(quarantine.base, quarantine.max))
                .next_delay();
            state.quarantined_until = Some(now + length);
            Some((state.health.url.clone(), Some(length)))
        }) else {
            return;
        };
        match length {
            Some(length) => {
                warn!(source = %url, sent = what, quarantined_for = ?length, "upstream served invalid data; quarantined");
            }
            None => {
                warn!(source = %url, sent = what, "upstream served invalid data; not quarantined, as it is the only upstream");
            }
        }
    }

    fn record(&self, source: SourceId, answer: &Answer) {
        self.with_states(|states| {
            let Some(state) = states.get_mut(source) else {
                return;
            };
            let health = &mut state.health;
            match answer {
                Answer::Served(elapsed) => {
                    if let Some(histogram) = self.fetch_latency.get() {
                        histogram.observe(elapsed.as_secs_f64());
                    }
                    health.served += 1;
                    let sample = elapsed.as_secs_f64() * 1000.0;
                    health.latency_ms = Some(health.latency_ms.map_or(sample, |average| {
                        average + LATENCY_WEIGHT * (sample - average)
                    }));
                }
                Answer::Missing => health.missing += 1,
                Answer::Failed(UpstreamError::Timeout) => health.timed_out += 1,
                Answer::Failed(_) => health.failed += 1,
                Answer::Invalid(_) => {}
            }
        });
        if let Answer::Invalid(what) = answer {
            self.invalid(source, what);
        }
    }

    /// [`Self::order`] for certificates up to `height`: the sources that lacked a certificate
    /// within [`LACKING_CERTIFICATES_FOR`] come after the others (never left out: lacking one
    /// is not held against a source).
    fn certificate_order(&self, height: u64) -> Vec<SourceId> {
        let now = self.now();
        let mut order = self.order(Some(height));
        let lacking: Vec<bool> = self.with_states(|states| {
            states
                .iter()
                .map(|state| {
                    state.lacked_certificates_at.is_some_and(|at| {
                        now.duration_since(at)
                            .is_ok_and(|age| age < LACKING_CERTIFICATES_FOR)
                    })
                })
                .collect()
        });
        order.sort_by_key(|source| lacking.get(*source).copied().unwrap_or(false));
        order
    }

    /// Notes that `source` answered without a certificate asked of it.
    fn lacked_certificates(&self, source: SourceId) {
        let now = self.now();
        self.with_states(|states| {
            if let Some(state) = states.get_mut(source) {
                state.lacked_certificates_at = Some(now);
            }
        });
    }

    /// The order to ask sources in for something at `height` (if known): connected,
    /// well-behaved sources that announced it first, taken in turn so that fetches spread over
    /// them, then the connected ones that are behind or misbehaving (flapping, stalled,
    /// skipping), then the disconnected ones. Quarantined sources are not asked.
    fn order(&self, height: Option<u64>) -> Vec<SourceId> {
        let now = self.now();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut ranked: Vec<(u8, usize, SourceId)> = self.with_states(|states| {
            let count = states.len().max(1);
            let best = best_announced(states);
            states
                .iter_mut()
                .enumerate()
                .filter_map(|(source, state)| {
                    if state.quarantined(now) {
                        return None;
                    }
                    state.expire(now);
                    let behind = height.is_some_and(|h| state.health.announced_height < h);
                    state.health.stalled_for = state.stalled_for(now, best);
                    let rank = match (state.health.connected, behind || state.health.misbehaving())
                    {
                        (true, false) => 0,
                        (true, true) => 1,
                        (false, _) => 2,
                    };
                    Some((rank, (source + count - start % count) % count, source))
                })
                .collect()
        });
        ranked.sort_unstable();
        ranked.into_iter().map(|(_, _, source)| source).collect()
    }
}

/// The highest height any source announced.
fn best_announced(states: &[State]) -> u64 {
    states
        .iter()
        .map(|state| state.health.announced_height)
        .max()
        .unwrap_or_default()
}

/// A source and the finalization it answered.
pub type Answered = (SourceId, CertifiedBlock);

/// Splits `answers` (in the order the sources were asked) into the highest finalization (of
/// equal ones, the first asked) and the others.
pub(crate) fn split_highest(mut answers: Vec<Answered>) -> Option<(Answered, Vec<Answered>)> {
    let highest = answers
        .iter()
        .enumerate()
        // `max_by_key` keeps the last of equal ones.
        .rev()
        .max_by_key(|(_, (_, certified))| certified.block.as_ref().map_or(0, Block::height))
        .map(|(index, _)| index)?;
    let highest = answers.remove(highest);
    Some((highest, answers))
}

/// The upstreams a follower fetches from, as one [`UpstreamRequests`] (cheap to clone).
pub struct Sources<R> {
    requests: Arc<[R]>,
    book: SourceBook,
    verifier: Option<FinalizationVerifier>,
    served: Option<ServedHook>,
    /// Randomness for verifying fetched finalizations: the runtime's once
    /// [`Sources::with_runtime`] is given it, else the operating system's.
    rng: Option<Arc<Mutex<StdRng>>>,
}

/// Told the heights `first..=last` and the source whose blocks for them passed the checks
/// here (see [`Sources::recording`]).
pub type ServedHook = Arc<dyn Fn(u64, u64, &str) + Send + Sync>;

impl<R> std::fmt::Debug for Sources<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("count", &self.requests.len())
            .field("book", &self.book)
            .field("recording", &self.served.is_some())
            .finish_non_exhaustive()
    }
}

impl<R> Clone for Sources<R> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
            book: self.book.clone(),
            verifier: self.verifier.clone(),
            served: self.served.clone(),
            rng: self.rng.clone(),
        }
    }
}

impl<R: UpstreamRequests> Sources<R> {
    /// The sources, each with its URL (or name) and request handle, in order of [`SourceId`].
    pub fn new(sources: Vec<(String, R)>, quarantine: QuarantineConfig) -> Self {
        let (urls, requests): (Vec<_>, Vec<_>) = sources.into_iter().unzip();
        Self {
            requests: requests.into(),
            book: SourceBook::new(urls, quarantine),
            verifier: None,
            served: None,
            rng: None,
        }
    }

    /// One source.
    pub fn single(url: impl Into<String>, requests: R) -> Self {
        Self::new(vec![(url.into(), requests)], QuarantineConfig::default())
    }

    /// Verifies fetched finalizations whose epoch has a key before handing them on, so that a
    /// source answering with a bad signature is found out and quarantined.
    pub fn with_verifier(mut self, verifier: FinalizationVerifier) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// Tells `served` which source answered each block fetched through this handle (by
    /// height, range or hash), once it passed the checks here: the provenance of what is
    /// stored. Blocks refused later (a broken hash chain) are fetched again, and recorded again.
    pub fn recording(mut self, served: ServedHook) -> Self {
        self.served = Some(served);
        self
    }

    fn note_served(&self, source: SourceId, first: u64, last: u64) {
        if let Some(served) = &self.served {
            served(first, last, &self.book.url(source));
        }
    }

    /// Takes time from `clock` (the runtime's), for quarantines and latencies. Clones made
    /// before keep the clock they had.
    pub fn with_clock(mut self, clock: ClockFn) -> Self {
        self.book.clock = clock;
        self
    }

    /// Takes time and randomness from `context`, a runtime's: quarantines, latencies and the
    /// verification of fetched finalizations then replay exactly under a deterministic runtime.
    pub fn with_runtime<C>(self, mut context: C) -> Self
    where
        C: Clock + CryptoRng + Send + Sync + 'static,
    {
        let rng = StdRng::seed_from_u64(context.next_u64());
        let mut sources = self.with_clock(Arc::new(move || context.current()));
        sources.rng = Some(Arc::new(Mutex::new(rng)));
        sources
    }

    /// The health records.
    pub fn book(&self) -> &SourceBook {
        &self.book
    }

    /// How many sources there are (quarantined or not).
    pub fn count(&self) -> usize {
        self.requests.len()
    }

    /// The sources to ask, in order (see [`SourceBook::order`]); an error when there are none.
    fn asked(&self, height: Option<u64>) -> Result<Vec<SourceId>, UpstreamError> {
        let order = self.book.order(height);
        if order.is_empty() {
            return Err(UpstreamError::NotConnected);
        }
        Ok(order)
    }

    /// Checks a fetched finalization: it carries the block at `height`, its certificate signs
    /// that block and, when the epoch's key is known, verifies.
    fn check_finalization(&self, height: u64, certified: &CertifiedBlock) -> Result<(), String> {
        let block = certified
            .block
            .as_ref()
            .ok_or_else(|| format!("a finalization for height {height} without its block"))?;
        if block.height() != height {
            return Err(format!(
                "block {} for requested height {height}",
                block.height()
            ));
        }
        let finalization = decode_certificate(&certified.certificate)
            .map_err(|err| format!("a certificate that does not decode at {height}: {err}"))?;
        if finalization.proposal.payload != block.hash() {
            return Err(format!(
                "a certificate at {height} signing {} for a block hashing to {}",
                finalization.proposal.payload,
                block.hash()
            ));
        }
        let Some(verifier) = &self.verifier else {
            return Ok(());
        };
        let verified = match &self.rng {
            Some(rng) => verifier.verify(
                &mut *rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
                certified,
            ),
            None => verifier.verify(&mut rand::rng(), certified),
        };
        match verified {
            Ok(_) | Err(VerifyError::IdentityUnavailable { .. }) => Ok(()),
            Err(err) => Err(format!("a finalization at {height} that fails: {err}")),
        }
    }

    /// Asks every source that is not quarantined at once and answers with the highest latest
    /// finalization that carries its block and signs it (verified too when the key is known),
    /// with the source that sent it. Its height is not taken as announced: it may not verify.
    pub async fn latest(&self) -> Result<Option<(SourceId, CertifiedBlock)>, UpstreamError> {
        Ok(split_highest(self.latest_of_each().await?).map(|(highest, _)| highest))
    }

    /// [`Self::latest`], with every source's answer that passed the checks (an empty list when
    /// none had a finalization yet).
    pub async fn latest_of_each(&self) -> Result<Vec<Answered>, UpstreamError> {
        self.ask_each(None, |requests| async move { requests.get_latest().await })
            .await
    }

    /// Every source's certified block at `height` that carries its block and signs it
    /// (verified too when the key is known). Where two chains part, each side's upstreams
    /// answer with their own.
    pub async fn finalization_of_each(&self, height: u64) -> Result<Vec<Answered>, UpstreamError> {
        self.ask_each(Some(height), move |requests| async move {
            requests.get_finalization(height).await
        })
        .await
    }

    /// Asks every source that is not quarantined at once, with `ask`, for a finalization at
    /// `height` (any height when `None`), and keeps the answers that pass the checks.
    async fn ask_each<F, Fut>(
        &self,
        height: Option<u64>,
        ask: F,
    ) -> Result<Vec<Answered>, UpstreamError>
    where
        F: Fn(R) -> Fut,
        Fut: Future<Output = Result<Option<CertifiedBlock>, UpstreamError>>,
    {
        let order = self.asked(None)?;
        let answers = futures::future::join_all(order.iter().map(|source| {
            let answer = ask(self.requests[*source].clone());
            let started = self.book.now();
            async move { (answer.await, started) }
        }))
        .await;
        let mut answered = Vec::new();
        let mut failures = Vec::new();
        for (source, (answer, started)) in order.into_iter().zip(answers) {
            let recorded = match answer {
                Ok(Some(certified)) => {
                    let height = height.unwrap_or_else(|| {
                        certified.block.as_ref().map_or(0, |block| block.height())
                    });
                    match self.check_finalization(height, &certified) {
                        Ok(()) => {
                            let elapsed =
                                self.book.now().duration_since(started).unwrap_or_default();
                            answered.push((source, certified));
                            Answer::Served(elapsed)
                        }
                        Err(reason) => Answer::Invalid(reason),
                    }
                }
                Ok(None) => Answer::Missing,
                Err(err) => {
                    failures.push((source, err.clone()));
                    Answer::Failed(err)
                }
            };
            self.book.record(source, &recorded);
        }
        if answered.is_empty() && !failures.is_empty() {
            return Err(self.none_answered(&failures));
        }
        Ok(answered)
    }

    /// The certificates of the blocks at `heights`, each with the source that sent it: every
    /// source is asked in turn for what the ones before it did not have, those that lacked
    /// certificates lately last. Nothing is checked here (the caller verifies each against its
    /// stored block and reports a bad one with [`SourceBook::invalid`]); `None` where no source
    /// had one. An error only when no source answered at all.
    pub async fn certificates(
        &self,
        heights: &[u64],
    ) -> Result<Vec<Option<(SourceId, String)>>, UpstreamError> {
        let top = heights.iter().copied().max().unwrap_or_default();
        let order = self.book.certificate_order(top);
        if order.is_empty() {
            return Err(UpstreamError::NotConnected);
        }
        let mut answers: Vec<Option<(SourceId, String)>> = vec![None; heights.len()];
        let mut failures = Vec::new();
        let mut answered = false;
        for source in order {
            let pending: Vec<usize> = (0..heights.len())
                .filter(|index| answers[*index].is_none())
                .collect();
            if pending.is_empty() {
                break;
            }
            let asked = pending.iter().map(|index| heights[*index]).collect();
            let started = self.book.now();
            match self.requests[source].get_certificates(asked).await {
                Ok(certificates) => {
                    answered = true;
                    let mut served = 0;
                    for (index, certificate) in pending.iter().zip(certificates) {
                        if let Some(certificate) = certificate {
                            answers[*index] = Some((source, certificate));
                            served += 1;
                        }
                    }
                    if served < pending.len() {
                        self.book.lacked_certificates(source);
                    }
                    let recorded = if served > 0 {
                        Answer::Served(self.book.now().duration_since(started).unwrap_or_default())
                    } else {
                        Answer::Missing
                    };
                    self.book.record(source, &recorded);
                }
                Err(err) => {
                    debug!(source, %err, "asking for certificates failed; asking the next source");
                    self.book.record(source, &Answer::Failed(err.clone()));
                    failures.push((source, err));
                }
            }
        }
        if !answered && !failures.is_empty() {
            return Err(self.none_answered(&failures));
        }
        Ok(answers)
    }

    /// Asks the sources in turn until one answers with valid data. `None` when a source lacks
    /// it; else every failure when one failed, else what was invalid.
    async fn first_valid<T, F, Fut>(
        &self,
        height: Option<u64>,
        what: &str,
        mut ask: F,
        check: impl Fn(&T) -> Result<(), String>,
    ) -> Result<Option<(SourceId, T)>, UpstreamError>
    where
        F: FnMut(R) -> Fut,
        Fut: Future<Output = Result<Option<T>, UpstreamError>>,
    {
        let order = self.asked(height)?;
        let mut failures = Vec::new();
        let mut invalid = None;
        let mut missing = false;
        for source in order {
            let started = self.book.now();
            let answer = ask(self.requests[source].clone()).await;
            let (recorded, result) = match answer {
                Ok(Some(value)) => match check(&value) {
                    Ok(()) => {
                        let elapsed = self.book.now().duration_since(started).unwrap_or_default();
                        (Answer::Served(elapsed), Some(value))
                    }
                    Err(reason) => (Answer::Invalid(reason), None),
                },
                Ok(None) => {
                    missing = true;
                    (Answer::Missing, None)
                }
                Err(
                    err @ (UpstreamError::HashMismatch { .. }
                    | UpstreamError::MalformedBlock(_)
                    | UpstreamError::Oversized(_)),
                ) => (Answer::Invalid(err.to_string()), None),
                Err(err) => {
                    debug!(source, %err, what, "upstream request failed; asking the next source");
                    failures.push((source, err.clone()));
                    (Answer::Failed(err), None)
                }
            };
            if let Answer::Invalid(reason) = &recorded {
                invalid = Some(reason.clone());
            }
            self.book.record(source, &recorded);
            if let Some(value) = result {
                return Ok(Some((source, value)));
            }
        }
        match invalid {
            _ if missing => Ok(None),
            _ if !failures.is_empty() => Err(self.none_answered(&failures)),
            Some(reason) => Err(UpstreamError::Invalid(reason)),
            None => Ok(None),
        }
    }

    /// The error when every source asked failed: each by its URL, with its failure.
    fn none_answered(&self, failures: &[(SourceId, UpstreamError)]) -> UpstreamError {
        let each: Vec<String> = failures
            .iter()
            .map(|(source, err)| format!("{}: {err}", self.book.url(*source)))
            .collect();
        UpstreamError::NoneAnswered(each.join("; "))
    }
}

impl<R: UpstreamRequests> UpstreamRequests for Sources<R> {
    async fn get_finalization(&self, height: u64) -> Result<Option<CertifiedBlock>, UpstreamError> {
        let answer = self
            .first_valid(
                Some(height),
                "finalization",
                |requests| async move { requests.get_finalization(height).await },
                |certified| self.check_finalization(height, certified),
            )
            .await?;
        Ok(answer.map(|(source, certified)| {
            self.note_served(source, height, height);
            certified
        }))
    }

    async fn get_block(&self, digest: Digest) -> Result<Option<Block>, UpstreamError> {
        let answer = self
            .first_valid(
                None,
                "block",
                |requests| async move { requests.get_block(digest).await },
                |block: &Block| {
                    if block.hash() == digest {
                        Ok(())
                    } else {
                        Err(format!(
                            "block {} for requested hash {digest}",
                            block.hash()
                        ))
                    }
                },
            )
            .await?;
        Ok(answer.map(|(source, block)| {
            self.note_served(source, block.height(), block.height());
            block
        }))
    }

    async fn get_latest(&self) -> Result<Option<CertifiedBlock>, UpstreamError> {
        Ok(self.latest().await?.map(|(_, certified)| certified))
    }

    async fn get_blocks(&self, first: u64, last: u64) -> Result<Vec<Block>, UpstreamError> {
        let blocks = self
            .first_valid(
                Some(last),
                "blocks",
                |requests| async move {
                    let blocks = requests.get_blocks(first, last).await?;
                    Ok((!blocks.is_empty()).then_some(blocks))
                },
                |blocks: &Vec<Block>| {
                    let wrong = blocks
                        .iter()
                        .zip(first..)
                        .find(|(block, height)| block.height() != *height);
                    match wrong {
                        None if blocks.len() as u64 <= last - first + 1 => Ok(()),
                        None => Err(format!("more blocks than heights {first}..={last}")),
                        Some((block, height)) => Err(format!(
                            "block {} where height {height} was asked",
                            block.height()
                        )),
                    }
                },
            )
            .await?;
        Ok(match blocks {
            Some((source, blocks)) => {
                self.note_served(source, first, first + blocks.len() as u64 - 1);
                blocks
            }
            None => Vec::new(),
        })
    }
}

impl<R: UpstreamRequests> BoundarySource for Sources<R> {
    async fn certified_at(&self, height: u64) -> Result<CertifiedBlock, SourceError> {
        self.get_finalization(height)
            .await
            .map_err(|err| SourceError(err.to_string()))?
            .ok_or_else(|| SourceError(format!("no upstream has the finalization at {height}")))
    }
}
