//! Every served height's own certificate.
//!
//! A catch-up through the hash chain (at start, on a rejoin, or a backfill under a checkpoint)
//! stores the blocks between its verified anchors authenticated by their parent hashes only,
//! and marshal's gap repair stores the blocks it fetched by hash the same way: such heights are
//! served without a certificate of their own. The fill fetches those certificates from the
//! upstreams in batches, behind live following:
//!
//! - each is decoded, checked to sign the stored block at its height and to belong to that
//!   height's epoch;
//! - the certificates of one epoch are verified in one batch on the worker pool, with the key
//!   the registry holds or the one the stored boundary block announced, and the batch is
//!   bisected when it fails, so that a bad certificate is named with the source that sent it
//!   (quarantined as any liar);
//! - what verified is stored in the anchor store, where the chain serves it.
//!
//! The background fill waits while the follower is far behind the upstreams (after a catch-up
//! through a slow upstream, say), so that their call budgets go to closing that gap first.
//! The sources are asked in turn for what the ones before them lacked, and a source that lacks
//! certificates is asked after the others, never punished for it. A client that asks for a
//! height whose certificate is still missing has it fetched at once ([`CertificateRequests`]),
//! one fetch per height and a bounded number at a time. [`Coverage`] says how far the fill is.

use crate::upstream::{SourceId, Sources, UpstreamRequests};
use cairn_dkg::Identity;
use cairn_epoch::{
    ChainProfile, Finalization, IdentitySource, SchemeProvider, decode_certificate,
    verify_finalizations,
};
use cairn_primitives::Digest;
use cairn_storage::StoreContext;
use cairn_storage::{
    AnchorStore,
    execution::{EmbeddedExecution, ExecutionProvider},
    registry::derive_key,
};
use commonware_consensus::types::Epoch;
use commonware_parallel::{Rayon, Sequential};
use commonware_runtime::{Clock, Spawner, telemetry::metrics::Counter};
use futures::{StreamExt as _, stream::FuturesUnordered};
use rand::{CryptoRng, Rng as _, SeedableRng as _, rngs::StdRng};
use rangemap::RangeInclusiveSet;
use std::{
    collections::{BTreeMap, BTreeSet},
    num::NonZeroUsize,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// Which missing certificates a follower fetches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CertificateMode {
    /// Every served height's, in the background, and any a client asks for at once.
    #[default]
    All,
    /// Only those clients ask for.
    OnDemand,
}

impl std::str::FromStr for CertificateMode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "all" => Ok(Self::All),
            "on-demand" => Ok(Self::OnDemand),
            other => Err(format!(
                "unknown certificate mode `{other}`: use all or on-demand"
            )),
        }
    }
}

impl std::fmt::Display for CertificateMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::All => "all",
            Self::OnDemand => "on-demand",
        })
    }
}

/// Fill settings.
#[derive(Clone, Copy, Debug)]
pub struct FillConfig {
    /// Which certificates are fetched.
    pub mode: CertificateMode,
    /// Heights asked of an upstream in one batch.
    pub batch: NonZeroUsize,
    /// Batches in flight per upstream.
    pub in_flight: NonZeroUsize,
    /// Heights fetched at once for clients.
    pub on_demand: NonZeroUsize,
    /// Worker threads verifying; 0 verifies on the fill's task (deterministic simulations).
    pub workers: usize,
    /// How often newly served heights are looked at.
    pub tick: Duration,
}

impl Default for FillConfig {
    fn default() -> Self {
        Self {
            mode: CertificateMode::All,
            batch: NonZeroUsize::new(128).expect("non-zero"),
            in_flight: NonZeroUsize::new(2).expect("non-zero"),
            on_demand: NonZeroUsize::new(16).expect("non-zero"),
            workers: 0,
            tick: Duration::from_millis(100),
        }
    }
}

/// How far the fill is, shared by the fill, marshal's archive and the status (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    inner: Arc<Mutex<CoverageState>>,
    /// Certificates filled and refused, counted as they are.
    counters: Arc<std::sync::OnceLock<(Counter, Counter)>>,
}

#[derive(Debug, Default)]
struct CoverageState {
    mode: CertificateMode,
    /// The heights marshal's archive holds a finalization for.
    marshal: RangeInclusiveSet<u64>,
    /// The served heights looked at so far.
    classified: Option<(u64, u64)>,
    /// Of those, the heights with no certificate stored and none being fetched.
    missing: RangeInclusiveSet<u64>,
    /// Heights being fetched.
    in_flight: u64,
    filled: u64,
    on_demand: u64,
    refused: u64,
}

/// A snapshot of [`Coverage`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoverageReport {
    /// Which certificates are fetched.
    pub mode: CertificateMode,
    /// Served heights (genesis, the root of trust, has no certificate and is not counted).
    pub served: u64,
    /// Of those, the heights with their own certificate stored.
    pub certified: u64,
    /// Certificates fetched, verified and stored since the start.
    pub filled: u64,
    /// Of those, the ones a client asked for.
    pub on_demand: u64,
    /// Certificates refused (they did not verify, or signed another block).
    pub refused: u64,
}

impl CoverageReport {
    /// Served heights without their own certificate.
    pub const fn missing(&self) -> u64 {
        self.served.saturating_sub(self.certified)
    }
}

fn count(set: &RangeInclusiveSet<u64>) -> u64 {
    set.iter()
        .map(|range| range.end() - range.start() + 1)
        .sum()
}

impl Coverage {
    fn lock(&self) -> MutexGuard<'_, CoverageState> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes that marshal's archive holds the finalization at `height`.
    pub fn marshal_stored(&self, height: u64) {
        self.lock().marshal.insert(height..=height);
    }

    /// Notes the runs of heights marshal's archive holds finalizations for.
    pub fn marshal_holds(&self, ranges: impl IntoIterator<Item = (u64, u64)>) {
        let mut state = self.lock();
        for (first, last) in ranges {
            state.marshal.insert(first..=last);
        }
    }

    /// A snapshot.
    pub fn report(&self) -> CoverageReport {
        let state = self.lock();
        let served = state
            .classified
            .map_or(0, |(first, last)| last.saturating_sub(first) + 1);
        let missing = count(&state.missing) + state.in_flight;
        CoverageReport {
            mode: state.mode,
            served,
            certified: served.saturating_sub(missing),
            filled: state.filled,
            on_demand: state.on_demand,
            refused: state.refused,
        }
    }

    /// The lowest height from `from` up that marshal's archive holds a finalization for.
    pub fn marshal_from(&self, from: u64) -> Option<u64> {
        self.lock()
            .marshal
            .overlapping(&(from..=u64::MAX))
            .next()
            .map(|range| (*range.start()).max(from))
    }

    /// Whether `height` was looked at and has no certificate stored (or one being fetched).
    pub fn is_missing(&self, height: u64) -> bool {
        self.lock().missing.contains(&height)
    }

    /// The served heights not looked at yet, given the served range `first..=last`.
    fn unclassified(&self, first: u64, last: u64) -> Vec<(u64, u64)> {
        if last < first {
            return Vec::new();
        }
        match self.lock().classified {
            None => vec![(first, last)],
            Some((low, high)) => [
                (first, low.saturating_sub(1).min(last)),
                (high.saturating_add(1).max(first), last),
            ]
            .into_iter()
            .filter(|(from, to)| from <= to)
            .collect(),
        }
    }

    /// Looks at `first..=last`: the heights neither marshal's archive nor `stored` (the anchor
    /// store's runs) holds are missing.
    fn classify(&self, first: u64, last: u64, stored: &[(u64, u64)]) {
        let mut state = self.lock();
        let mut certified = state.marshal.clone();
        for (from, to) in stored {
            certified.insert(*from..=*to);
        }
        let gaps: Vec<_> = certified.gaps(&(first..=last)).collect();
        for gap in gaps {
            state.missing.insert(gap);
        }
        state.classified = Some(match state.classified {
            None => (first, last),
            Some((low, high)) => (low.min(first), high.max(last)),
        });
    }

    /// Takes up to `count` missing heights, the highest first, to fetch them.
    fn take_highest(&self, count: usize) -> Vec<u64> {
        let mut state = self.lock();
        let mut taken = Vec::new();
        while taken.len() < count {
            let Some(range) = state.missing.iter().next_back().cloned() else {
                break;
            };
            let left = (count - taken.len()) as u64;
            let first = range
                .end()
                .saturating_sub(left.saturating_sub(1))
                .max(*range.start());
            state.missing.remove(first..=*range.end());
            taken.extend((first..=*range.end()).rev());
        }
        state.in_flight += taken.len() as u64;
        taken
    }

    /// Takes `height` to fetch it; false when it is not missing.
    fn take(&self, height: u64) -> bool {
        let mut state = self.lock();
        if !state.missing.contains(&height) {
            return false;
        }
        state.missing.remove(height..=height);
        state.in_flight += 1;
        true
    }

    /// Ends the fetch of `heights`: those not stored are missing again.
    fn fetched(&self, heights: &[u64], stored: &BTreeSet<u64>, on_demand: bool, refused: u64) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(heights.len() as u64);
        for height in heights {
            if !stored.contains(height) {
                state.missing.insert(*height..=*height);
            }
        }
        state.filled += stored.len() as u64;
        if on_demand {
            state.on_demand += stored.len() as u64;
        }
        state.refused += refused;
        if let Some((filled, refused_counter)) = self.counters.get() {
            filled.inc_by(stored.len() as u64);
            refused_counter.inc_by(refused);
        }
    }

    /// Counts the certificates filled and refused in these counters from now on; the first
    /// counters given stay.
    pub(crate) fn count_in(&self, filled: Counter, refused: Counter) {
        let _ = self.counters.set((filled, refused));
    }
}

/// A client's request for the certificate at a height, and where its answer goes.
type Request = (u64, oneshot::Sender<Option<Finalization>>);

/// Requests on-demand fetches from the fill (cheap to clone).
#[derive(Clone, Debug)]
pub struct CertificateRequests {
    sender: mpsc::Sender<Request>,
}

impl CertificateRequests {
    /// The certificate at `height`, fetched, verified and stored now; `None` when no upstream
    /// has it, it does not verify, the height is not missing, or too many fetches wait.
    pub async fn fetch(&self, height: u64) -> Option<Finalization> {
        let (answer, answered) = oneshot::channel();
        self.sender.try_send((height, answer)).ok()?;
        answered.await.ok().flatten()
    }
}

/// Requests waiting for the fill, beyond which a client is answered at once without one.
const QUEUED_REQUESTS: usize = 256;

/// A pair for [`Fill::run`]: the handle clients ask with and what the fill reads them from.
pub fn requests() -> (CertificateRequests, mpsc::Receiver<Request>) {
    let (sender, receiver) = mpsc::channel(QUEUED_REQUESTS);
    (CertificateRequests { sender }, receiver)
}

/// What one fetch did.
#[derive(Default)]
struct Fetched {
    stored: Vec<(u64, Finalization)>,
    refused: u64,
}

/// A certificate that was sent for a height, checked without its key.
struct Candidate {
    height: u64,
    source: SourceId,
    finalization: Finalization,
}

/// How far behind the upstreams' highest announced height the follower may be while the
/// background fill runs (on-demand fetches are answered regardless).
pub const FILL_WHEN_WITHIN: u64 = 32;

/// The longest pause after a round of fetches that stored nothing.
const MAX_QUIET: Duration = Duration::from_secs(30);
/// The first such pause.
const FIRST_QUIET: Duration = Duration::from_millis(500);
/// Keys looked up for past epochs, kept for the next batches.
const KEY_CACHE: usize = 1024;

/// The fill: what it reads, verifies with and writes to.
pub struct Fill<E: StoreContext, U> {
    /// The chain.
    pub profile: ChainProfile,
    /// The registered keys.
    pub provider: SchemeProvider,
    /// The served blocks.
    pub execution: EmbeddedExecution<E>,
    /// Where verified certificates are stored.
    pub anchors: AnchorStore<E>,
    /// The upstreams.
    pub sources: Sources<U>,
    /// How far it is.
    pub coverage: Coverage,
    /// Settings.
    pub config: FillConfig,
}

/// What each fetch task reads, verifies with and writes to.
struct Fetcher<E: StoreContext, U> {
    profile: ChainProfile,
    provider: SchemeProvider,
    execution: EmbeddedExecution<E>,
    anchors: AnchorStore<E>,
    sources: Sources<U>,
    pool: Option<Workers>,
    /// Keys of past epochs read from their boundary blocks.
    keys: Mutex<BTreeMap<u64, Identity>>,
}

/// A fetch running as its own task: the heights it took, whether a client asked, and its end.
type Job = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    Vec<u64>,
                    bool,
                    Result<Result<Fetched, cairn_storage::StoreError>, commonware_runtime::Error>,
                ),
            > + Send,
    >,
>;

impl<E: StoreContext, U: UpstreamRequests> Fill<E, U> {
    /// Fills until the runtime stops, answering `requests` first; returns the error of a
    /// store that failed (the follower stops on it, as on any storage failure). Each fetch runs
    /// as its own task, so that the loop never waits on a store a fetch holds.
    pub async fn run<C: Clock + Spawner>(
        self,
        context: C,
        rng: &mut impl CryptoRng,
        mut requests: mpsc::Receiver<Request>,
    ) -> Result<(), cairn_storage::StoreError> {
        let Self {
            profile,
            provider,
            execution,
            anchors,
            sources,
            coverage,
            config,
        } = self;
        coverage.lock().mode = config.mode;
        let pool = NonZeroUsize::new(config.workers).and_then(|workers| {
            Workers::new(workers)
                .inspect_err(|err| {
                    warn!(%err, "no worker pool for the certificate fill; it verifies on its own task");
                })
                .ok()
        });
        let fetcher = Arc::new(Fetcher {
            profile,
            provider,
            execution,
            anchors,
            sources,
            pool,
            keys: Mutex::new(BTreeMap::new()),
        });
        let spawn = |heights: Vec<u64>, on_demand: bool, seed: u64| -> Job {
            let fetcher = fetcher.clone();
            let taken = heights.clone();
            let handle = context
                .child("fetch")
                .spawn(move |_| async move { fetcher.fetch(&heights, seed).await });
            Box::pin(async move { (taken, on_demand, handle.await) })
        };
        let mut jobs = FuturesUnordered::new();
        let mut waiters: BTreeMap<u64, Vec<oneshot::Sender<Option<Finalization>>>> =
            BTreeMap::new();
        let mut in_flight: BTreeSet<u64> = BTreeSet::new();
        let (mut background, mut on_demand) = (0usize, 0usize);
        let mut requests_open = true;
        let mut quiet = FIRST_QUIET;
        let mut quiet_until: Option<SystemTime> = None;
        loop {
            fetcher.classify(&coverage, config.mode).await;
            let idle = quiet_until.is_some_and(|until| context.current() < until);
            if config.mode == CertificateMode::All && !idle && !fetcher.behind() {
                let limit = config
                    .in_flight
                    .get()
                    .saturating_mul(fetcher.sources.count().max(1));
                while background < limit {
                    let heights = coverage.take_highest(config.batch.get());
                    if heights.is_empty() {
                        break;
                    }
                    in_flight.extend(heights.iter().copied());
                    background += 1;
                    jobs.push(spawn(heights, false, rng.next_u64()));
                }
            }
            tokio::select! {
                biased;
                request = requests.recv(), if requests_open => {
                    let Some((height, answer)) = request else {
                        requests_open = false;
                        continue;
                    };
                    if in_flight.contains(&height) {
                        waiters.entry(height).or_default().push(answer);
                    } else if on_demand < config.on_demand.get() && coverage.take(height) {
                        in_flight.insert(height);
                        waiters.entry(height).or_default().push(answer);
                        on_demand += 1;
                        jobs.push(spawn(vec![height], true, rng.next_u64()));
                    } else {
                        let _ = answer.send(None);
                    }
                }
                done = jobs.next(), if !jobs.is_empty() => {
                    let Some((heights, asked, result)) = done else { continue };
                    if asked {
                        on_demand -= 1;
                    } else {
                        background -= 1;
                    }
                    let fetched = match result {
                        Ok(Ok(fetched)) => fetched,
                        Ok(Err(err)) => {
                            warn!(%err, "storing verified certificates failed; the certificate fill stops");
                            for (_, answers) in std::mem::take(&mut waiters) {
                                for answer in answers {
                                    let _ = answer.send(None);
                                }
                            }
                            return Err(err);
                        }
                        Err(err) => {
                            warn!(%err, "a certificate fetch ended early; its heights are fetched again");
                            Fetched::default()
                        }
                    };
                    if !asked {
                        if fetched.stored.is_empty() {
                            quiet_until = Some(context.current() + quiet);
                            quiet = (quiet * 2).min(MAX_QUIET);
                        } else {
                            quiet = FIRST_QUIET;
                        }
                    }
                    let stored: BTreeSet<u64> =
                        fetched.stored.iter().map(|(height, _)| *height).collect();
                    coverage.fetched(&heights, &stored, asked, fetched.refused);
                    for height in &heights {
                        in_flight.remove(height);
                    }
                    for (height, finalization) in fetched.stored {
                        for answer in waiters.remove(&height).unwrap_or_default() {
                            let _ = answer.send(Some(finalization.clone()));
                        }
                    }
                    for height in &heights {
                        for answer in waiters.remove(height).unwrap_or_default() {
                            let _ = answer.send(None);
                        }
                    }
                }
                () = context.sleep(config.tick) => {}
            }
        }
    }
}

impl<E: StoreContext, U: UpstreamRequests> Fetcher<E, U> {
    /// Whether the follower is more than [`FILL_WHEN_WITHIN`] heights behind the highest
    /// height an upstream announced: the background fill waits then, leaving the upstreams'
    /// call budgets to what closes the gap (marshal's repairs, a rejoin).
    fn behind(&self) -> bool {
        let target = self
            .sources
            .book()
            .health()
            .iter()
            .map(|source| source.announced_height)
            .max()
            .unwrap_or_default();
        target.saturating_sub(self.execution.finalized_height()) > FILL_WHEN_WITHIN
    }

    /// Looks at the heights served since the last look.
    async fn classify(&self, coverage: &Coverage, mode: CertificateMode) {
        let first = self.execution.first_height().max(1);
        let last = self.execution.finalized_height();
        for (from, to) in coverage.unclassified(first, last) {
            let stored: Vec<_> = self
                .anchors
                .ranges_from(from)
                .await
                .into_iter()
                .take_while(|(start, _)| *start <= to)
                .collect();
            coverage.classify(from, to, &stored);
            let report = coverage.report();
            if report.missing() > 0 && from == first && to == last {
                info!(
                    served = report.served,
                    missing = report.missing(),
                    %mode,
                    "served heights without their own certificate found; they are fetched behind live following"
                );
            }
        }
    }

    /// Fetches, checks, verifies and stores the certificates at `heights`. Fails only when
    /// the store fails.
    async fn fetch(
        &self,
        heights: &[u64],
        seed: u64,
    ) -> Result<Fetched, cairn_storage::StoreError> {
        let pool = &self.pool;
        let mut fetched = Fetched::default();
        let answers = match self.sources.certificates(heights).await {
            Ok(answers) => answers,
            Err(err) => {
                debug!(%err, count = heights.len(), "no upstream answered for certificates");
                return Ok(fetched);
            }
        };
        let mut sent = Vec::new();
        for (height, answer) in heights.iter().zip(answers) {
            let Some((source, certificate)) = answer else {
                continue;
            };
            match self.execution.hash_by_number(*height).await {
                Ok(Some(hash)) => sent.push((*height, source, certificate, hash)),
                Ok(None) => {}
                Err(err) => {
                    debug!(height, %err, "the stored block's hash cannot be read; its certificate waits")
                }
            }
        }
        let epochs = self.profile.epochs.clone();
        let Some(checked) = offload(pool.as_ref(), move || {
            sent.into_iter()
                .map(|(height, source, certificate, hash)| {
                    check(&epochs, height, &certificate, hash)
                        .map(|finalization| Candidate {
                            height,
                            source,
                            finalization,
                        })
                        .map_err(|reason| (source, reason))
                })
                .collect::<Vec<_>>()
        })
        .await
        else {
            return Ok(fetched);
        };
        let mut by_epoch: BTreeMap<u64, Vec<Candidate>> = BTreeMap::new();
        for result in checked {
            match result {
                Ok(candidate) => by_epoch
                    .entry(candidate.finalization.proposal.round.epoch().get())
                    .or_default()
                    .push(candidate),
                Err((source, reason)) => {
                    fetched.refused += 1;
                    self.sources.book().invalid(source, &reason);
                }
            }
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut verified = Vec::new();
        for (epoch, candidates) in by_epoch {
            let Some(identity) = self.key(epoch).await else {
                debug!(
                    epoch,
                    count = candidates.len(),
                    "no key known for the epoch yet; its certificates wait"
                );
                continue;
            };
            let namespace = self.profile.namespace.clone();
            let mut job_rng = StdRng::seed_from_u64(rng.next_u64());
            let strategy = pool.as_ref().map(|pool| pool.strategy.clone());
            let Some((candidates, results)) = offload(pool.as_ref(), move || {
                let finalizations: Vec<_> = candidates
                    .iter()
                    .map(|candidate| &candidate.finalization)
                    .collect();
                let results = match &strategy {
                    Some(pool) => verify_finalizations(
                        &namespace,
                        identity,
                        &mut job_rng,
                        &finalizations,
                        pool,
                    ),
                    None => verify_finalizations(
                        &namespace,
                        identity,
                        &mut job_rng,
                        &finalizations,
                        &Sequential,
                    ),
                };
                (candidates, results)
            })
            .await
            else {
                continue;
            };
            for (candidate, ok) in candidates.into_iter().zip(results) {
                if ok {
                    verified.push(candidate);
                } else {
                    fetched.refused += 1;
                    self.sources.book().invalid(
                        candidate.source,
                        &format!(
                            "a certificate at {} that does not verify with epoch {epoch}'s key",
                            candidate.height
                        ),
                    );
                }
            }
        }
        if verified.is_empty() {
            return Ok(fetched);
        }
        for candidate in &verified {
            self.anchors
                .put(
                    candidate.height,
                    candidate.finalization.proposal.payload,
                    &candidate.finalization,
                    "storing a filled certificate",
                )
                .await?;
        }
        self.anchors.sync("syncing filled certificates").await?;
        fetched.stored = verified
            .into_iter()
            .map(|candidate| (candidate.height, candidate.finalization))
            .collect();
        Ok(fetched)
    }

    /// The key of `epoch`: the registered one, else the one its boundary block (stored and
    /// authenticated) announced. A configured identity is not used: it may belong to a later
    /// epoch, and an honest certificate failing under it would be held against its source.
    async fn key(&self, epoch: u64) -> Option<Identity> {
        let keys = &self.keys;
        if let Some(verifier) = self.provider.verifier(Epoch::new(epoch))
            && verifier.source == IdentitySource::Registered
        {
            return Some(verifier.identity);
        }
        let lock = || keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(identity) = lock().get(&epoch) {
            return Some(*identity);
        }
        let identity = match derive_key(&self.profile, &self.execution, epoch).await {
            Ok(identity) => identity?,
            Err(err) => {
                debug!(epoch, %err, "the key of a past epoch cannot be read from its boundary");
                return None;
            }
        };
        let mut cached = lock();
        if cached.len() >= KEY_CACHE {
            cached.pop_first();
        }
        cached.insert(epoch, identity);
        Some(identity)
    }
}

/// Checks a certificate sent for `height` without its key: it decodes, signs the stored block
/// there (hashing to `hash`), and belongs to that height's epoch.
fn check(
    epochs: &cairn_epoch::EpochStrategy,
    height: u64,
    certificate: &str,
    hash: Digest,
) -> Result<Finalization, String> {
    let finalization = decode_certificate(certificate)
        .map_err(|err| format!("a certificate at {height} that does not decode: {err}"))?;
    if finalization.proposal.payload != hash {
        return Err(format!(
            "a certificate at {height} signing {}, but the block stored there hashes to {hash}",
            finalization.proposal.payload
        ));
    }
    let epoch = finalization.proposal.round.epoch();
    let expected = epochs.epoch_of(height);
    if epoch != expected {
        return Err(format!(
            "a certificate at {height} of epoch {epoch}, where the height is in epoch {expected}"
        ));
    }
    Ok(finalization)
}

/// The fill's worker threads (`cert-fill-N`), scheduled as idle work (`SCHED_IDLE` on Linux):
/// they run only on CPU time nothing else wants, so live following never waits behind a batch
/// being verified. Where the policy cannot be set, they run at normal priority.
#[derive(Clone)]
struct Workers {
    threads: commonware_parallel::ThreadPool,
    /// The same threads, for the parallel parts of a batch verification.
    strategy: Rayon,
}

impl Workers {
    fn new(count: NonZeroUsize) -> Result<Self, commonware_parallel::rayon::ThreadPoolBuildError> {
        let threads = commonware_parallel::rayon::ThreadPoolBuilder::new()
            .num_threads(count.get())
            .thread_name(|index| format!("cert-fill-{index}"))
            .start_handler(|_| {
                use thread_priority::{
                    NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
                    set_thread_priority_and_policy, thread_native_id,
                };
                if let Err(err) = set_thread_priority_and_policy(
                    thread_native_id(),
                    ThreadPriority::Min,
                    ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
                ) {
                    debug!(?err, "a certificate fill thread keeps its normal priority");
                }
            })
            .build()?;
        let threads = Arc::new(threads);
        Ok(Self {
            strategy: Rayon::with_pool(threads.clone()),
            threads,
        })
    }
}

/// Runs `job` on a thread of `pool` (never on the calling task, which may be one of the
/// runtime's threads), or on the calling task without one. `None` when the job did not finish.
async fn offload<T: Send + 'static>(
    pool: Option<&Workers>,
    job: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let Some(pool) = pool else {
        return Some(job());
    };
    let (sender, receiver) = futures::channel::oneshot::channel();
    pool.threads.spawn(move || {
        let _ = sender.send(job());
    });
    receiver.await.ok()
}

#[cfg(test)]
mod tests {
    use super::{CertificateMode, Coverage};
    use std::collections::BTreeSet;

    #[test]
    fn coverage_counts_what_neither_store_holds_and_takes_the_highest_first() {
        let coverage = Coverage::default();
        // Marshal holds 18..=20; the anchor store holds 5 and 10.
        coverage.marshal_holds([(18, 20)]);
        coverage.classify(1, 20, &[(5, 5), (10, 10)]);
        let report = coverage.report();
        assert_eq!(
            (report.served, report.certified, report.missing()),
            (20, 5, 15)
        );
        assert!(coverage.is_missing(17) && !coverage.is_missing(18) && !coverage.is_missing(10));

        // Newly served heights are looked at once; marshal stored 21 itself.
        coverage.marshal_stored(21);
        assert_eq!(coverage.unclassified(1, 22), vec![(21, 22)]);
        coverage.classify(21, 22, &[]);
        assert_eq!(coverage.unclassified(1, 22), Vec::new());
        assert_eq!(coverage.report().missing(), 16);

        // A batch spans runs, highest first; what is being fetched still counts as missing.
        let taken = coverage.take_highest(4);
        assert_eq!(taken, vec![22, 17, 16, 15]);
        assert_eq!(coverage.report().missing(), 16);
        assert!(!coverage.take(17), "being fetched");
        // Two were stored, two were not: those are missing again.
        coverage.fetched(&taken, &BTreeSet::from([22, 16]), false, 1);
        let report = coverage.report();
        assert_eq!(
            (report.missing(), report.filled, report.refused),
            (14, 2, 1)
        );
        assert!(coverage.is_missing(17) && coverage.is_missing(15));
        assert!(!coverage.is_missing(16));

        assert_eq!(coverage.report().mode, CertificateMode::All);
    }

    #[test]
    fn history_backfilled_under_a_checkpoint_is_looked_at_too() {
        let coverage = Coverage::default();
        // A checkpoint start at 100: its certificate is in the anchor store.
        coverage.classify(100, 120, &[(100, 100), (120, 120)]);
        assert_eq!(coverage.report().missing(), 19);
        // The backfill has stored 60..=99 since.
        assert_eq!(coverage.unclassified(60, 125), vec![(60, 99), (121, 125)]);
        coverage.classify(60, 99, &[]);
        let report = coverage.report();
        assert_eq!((report.served, report.missing()), (61, 59));
        assert!(coverage.is_missing(60));
    }

    #[test]
    fn modes_parse_and_print() {
        for mode in [CertificateMode::All, CertificateMode::OnDemand] {
            assert_eq!(mode.to_string().parse::<CertificateMode>(), Ok(mode));
        }
        assert!("some".parse::<CertificateMode>().is_err());
    }
}
