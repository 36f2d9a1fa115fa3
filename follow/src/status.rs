//! What a follower knows about itself, in one snapshot: heights and lag, the epoch and the
//! identity history (kept by [`cairn_storage::registry`]), the upstreams' health and the events rejected by check. A sampler task
//! refreshes the snapshot on a [`StatusBoard`] and mirrors the states (heights, lag, health) into
//! Prometheus gauges through the runtime's registry (so simulations carry them too); what
//! happens (a rejected event, a rejoin, an identity rotation, a certificate filled or refused,
//! an invalid answer, a call and its "slow down") is counted where it happens, on the
//! [`EventCounters`] handed to the parts that see it. The node serves the same snapshot as
//! `cairn_status`, on its status page and in its progress output.

use crate::{
    driver::UpstreamStatus,
    upstream::{SourceBook, SourceHealth},
};
use cairn_epoch::EpochStrategy;
use cairn_storage::StoreContext;
use cairn_storage::{
    execution::{EmbeddedExecution, ExecutionProvider as _},
    registry::{IdentityChange, IdentityHistory},
};
use commonware_runtime::{
    Clock, Metrics,
    telemetry::metrics::{
        Counter, CounterFamily, EncodeLabelSet, Gauge, GaugeExt as _, MetricsExt as _, Registered,
        raw::{Family, Gauge as RawGauge},
    },
};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};
use tokio::sync::watch;

/// One upstream, as the status reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamReport {
    /// Its URL.
    pub url: String,
    /// Whether its subscription is live.
    pub connected: bool,
    /// Connected, not quarantined and well-behaved.
    pub healthy: bool,
    /// Round-trip time of its answered requests (exponentially weighted).
    pub latency_ms: Option<f64>,
    /// The highest height it announced with a verified event.
    pub announced_height: u64,
    /// Seconds left in quarantine.
    pub quarantined_secs: Option<u64>,
    /// Invalid answers and events it sent.
    pub invalid: u64,
    /// What its last invalid answer or event was.
    pub last_invalid: Option<String>,
    /// Requests it answered with the data asked for.
    pub served: u64,
    /// Requests that failed or timed out.
    pub failed: u64,
    /// Times its connection was lost.
    pub disconnects: u64,
    /// Calls sent to it (a batch counts each call).
    #[serde(default)]
    pub calls: u64,
    /// Of those, the calls it answered with "slow down" (retried after a wait).
    #[serde(default)]
    pub slowed_down: u64,
}

impl From<&SourceHealth> for UpstreamReport {
    fn from(health: &SourceHealth) -> Self {
        Self {
            url: health.url.clone(),
            connected: health.connected,
            healthy: health.healthy(),
            latency_ms: health.latency_ms,
            announced_height: health.announced_height,
            quarantined_secs: health.quarantined_for.map(|left| left.as_secs().max(1)),
            invalid: health.invalid,
            last_invalid: health.last_invalid.clone(),
            served: health.served,
            failed: health.failed + health.timed_out,
            disconnects: health.disconnects,
            calls: health.calls,
            slowed_down: health.slowed_down,
        }
    }
}

/// A follower's status at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowerStatus {
    /// The chain profile's name.
    pub chain: String,
    /// Blocks per epoch.
    pub epoch_length: u64,
    /// The highest height whose certificate this follower verified (an event, or the tip of a
    /// catch-up), at least the executed height.
    pub verified_height: u64,
    /// The verified height that is durable in the execution store and served.
    pub executed_height: u64,
    /// The lowest height served (above 0 after a checkpoint start, until backfilled).
    pub history_from: u64,
    /// The highest verified height any upstream announced (at least the verified height).
    pub target_height: u64,
    /// `target_height - executed_height`.
    pub lag: u64,
    /// The epoch of the executed height.
    pub epoch: u64,
    /// The newest epoch with a registered key.
    pub key_epoch: Option<u64>,
    /// Every identity change the follower verified, oldest first.
    pub identities: Vec<IdentityChange>,
    /// The upstreams.
    pub upstreams: Vec<UpstreamReport>,
    /// Finalized events rejected, in all.
    pub rejected: u64,
    /// Finalized events rejected, by the check they failed.
    pub rejected_by_check: BTreeMap<String, u64>,
    /// Times the follower, far behind while running, rejoined through the hash chain.
    #[serde(default)]
    pub rejoins: u64,
    /// Stored blocks found damaged on disk (a checksum that fails) since the start.
    #[serde(default)]
    pub damaged_blocks: u64,
    /// Of those, the ones fetched again from the upstreams, checked against the hash chain
    /// and stored again.
    #[serde(default)]
    pub repaired_blocks: u64,
    /// Stored finalizations found damaged on disk since the start.
    #[serde(default)]
    pub damaged_certificates: u64,
    /// Of those, the ones fetched again, verified against the stored block with the key of
    /// their epoch and stored again.
    #[serde(default)]
    pub repaired_certificates: u64,
    /// Blocks verified per second over the last sample.
    pub blocks_per_second: f64,
    /// How many served heights have their own certificate.
    #[serde(default)]
    pub certificates: CertificateStatus,
    /// Milliseconds since the Unix epoch when this was sampled.
    pub sampled_at_ms: u64,
    /// The last ten minutes, a point every [`HISTORY_EVERY`], oldest first (the status page's
    /// charts).
    #[serde(default)]
    pub history: Vec<HistoryPoint>,
}

/// One point of [`FollowerStatus::history`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPoint {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The executed height.
    pub height: u64,
    /// The target height.
    pub target: u64,
    /// `target - height`.
    pub lag: u64,
    /// Blocks verified per second.
    pub blocks_per_second: f64,
    /// Served heights with their own certificate, as a share of all (0 to 1).
    pub coverage: f64,
}

/// How often a point is added to [`FollowerStatus::history`].
pub const HISTORY_EVERY: Duration = Duration::from_secs(2);
/// How far back [`FollowerStatus::history`] reaches.
pub const HISTORY_SPAN: Duration = Duration::from_secs(600);

/// How many served heights have their own certificate (see [`crate::certificates`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// `all` or `on-demand`.
    pub mode: String,
    /// Served heights (genesis excluded: it is the root of trust).
    pub served: u64,
    /// Of those, the heights with their own certificate stored.
    pub certified: u64,
    /// Served heights without one yet.
    pub missing: u64,
    /// Certificates fetched, verified and stored since the start.
    pub filled: u64,
    /// Of those, the ones clients asked for.
    pub on_demand: u64,
    /// Certificates refused (they did not verify, or signed another block).
    pub refused: u64,
    /// Certificates filled per second over the last sample.
    pub filled_per_second: f64,
}

impl CertificateStatus {
    /// `certified / served`, 1 when nothing is served.
    pub fn coverage(&self) -> f64 {
        if self.served == 0 {
            1.0
        } else {
            self.certified as f64 / self.served as f64
        }
    }
}

/// The newest [`FollowerStatus`], shared by the sampler and its readers (cheap to clone).
#[derive(Clone, Debug)]
pub struct StatusBoard {
    latest: watch::Sender<FollowerStatus>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self {
            latest: watch::Sender::new(FollowerStatus::default()),
        }
    }
}

impl StatusBoard {
    /// The newest snapshot.
    pub fn latest(&self) -> FollowerStatus {
        self.latest.borrow().clone()
    }

    /// A receiver told of every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<FollowerStatus> {
        self.latest.subscribe()
    }
}

/// Per-upstream metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    /// The upstream's URL.
    pub url: String,
}

/// Rejected-event metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabel {
    /// The check that failed.
    pub check: String,
}

fn upstream_label(url: &str) -> UpstreamLabel {
    UpstreamLabel {
        url: url.to_string(),
    }
}

/// The follower's counters, each moved by the part that sees its event (cheap to clone; clones
/// count together). Registered once, on the status context, beside the sampled gauges.
#[derive(Clone, Debug)]
pub struct EventCounters {
    /// Finalized events rejected, by the check they failed (the driver).
    pub rejected: CounterFamily<CheckLabel>,
    /// Rejoins through the hash chain while running (the driver).
    pub rejoins: Counter,
    /// Identity changes verified (the identity history, whoever registers the key).
    pub identity_rotations: Counter,
    /// Missing certificates fetched, verified and stored (the certificate fill).
    pub certificates_filled: Counter,
    /// Certificates the fill refused (the certificate fill).
    pub certificates_refused: Counter,
    /// Invalid answers and events, by upstream (the source book).
    pub upstream_invalid: CounterFamily<UpstreamLabel>,
    /// Calls sent, by upstream (each upstream's client).
    pub upstream_calls: CounterFamily<UpstreamLabel>,
    /// Calls answered with "slow down", by upstream (each upstream's client).
    pub upstream_slowed_down: CounterFamily<UpstreamLabel>,
}

impl EventCounters {
    /// Registers the counters on `context` (the follower's status context).
    pub fn register(context: &impl Metrics) -> Self {
        Self {
            rejected: context.family(
                "rejected_events",
                "Finalized events rejected, by the check they failed",
            ),
            rejoins: context.counter(
                "rejoins",
                "Times the follower, far behind while running, rejoined through the hash chain",
            ),
            identity_rotations: context.counter(
                "identity_rotations",
                "Network identity changes verified since the start (full DKG ceremonies)",
            ),
            certificates_filled: context.counter(
                "certificates_filled",
                "Missing certificates fetched, verified and stored since the start",
            ),
            certificates_refused: context.counter(
                "certificates_refused",
                "Certificates the fill refused (not verifying, or signing another block)",
            ),
            upstream_invalid: context.family(
                "upstream_invalid",
                "Invalid answers and events the upstream sent",
            ),
            upstream_calls: context.family(
                "upstream_calls",
                "Calls sent to the upstream (a batch counts each call)",
            ),
            upstream_slowed_down: context.family(
                "upstream_slowed_down",
                "Calls the upstream answered with \"slow down\" (rate limit), each retried",
            ),
        }
    }

    /// Counts `count` invalid answers or events from the upstream at `url`.
    pub(crate) fn invalid_from(&self, url: &str, count: u64) {
        self.upstream_invalid
            .get_or_create(&upstream_label(url))
            .inc_by(count);
    }

    /// Counts the calls and slow-downs `counts` sees for the upstream at `url` from now on,
    /// starting with those it counted so far.
    pub(crate) fn count_calls_of(&self, url: &str, counts: &crate::upstream::CallCounts) {
        let label = upstream_label(url);
        counts.count_in(
            self.upstream_calls.get_or_create(&label).clone(),
            self.upstream_slowed_down.get_or_create(&label).clone(),
        );
    }

    /// Counts a rejected event.
    pub fn rejected(&self, check: &str) {
        self.rejected
            .get_or_create(&CheckLabel {
                check: check.to_string(),
            })
            .inc();
    }
}

/// The follower's own metrics (marshal, the archives and the runtime register theirs).
struct StatusMetrics {
    verified_height: Gauge,
    executed_height: Gauge,
    history_from: Gauge,
    target_height: Gauge,
    lag: Gauge,
    epoch: Gauge,
    blocks_per_second: Gauge,
    damaged_blocks: Gauge,
    repaired_blocks: Gauge,
    damaged_certificates: Gauge,
    repaired_certificates: Gauge,
    certificates_served: Gauge,
    certificates_missing: Gauge,
    certificates_filled_per_second: Gauge,
    upstream_connected: Registered<Family<UpstreamLabel, RawGauge>>,
    upstream_healthy: Registered<Family<UpstreamLabel, RawGauge>>,
    upstream_quarantined: Registered<Family<UpstreamLabel, RawGauge>>,
    upstream_latency_us: Registered<Family<UpstreamLabel, RawGauge>>,
    upstream_announced: Registered<Family<UpstreamLabel, RawGauge>>,
}

impl StatusMetrics {
    fn register(context: &impl Metrics) -> Self {
        Self {
            verified_height: context.gauge(
                "verified_height",
                "The highest height whose certificate this follower verified",
            ),
            executed_height: context.gauge(
                "executed_height",
                "The verified height durable in the execution store and served",
            ),
            history_from: context.gauge(
                "history_from",
                "The lowest height served (above 0 after a checkpoint start until backfilled)",
            ),
            target_height: context.gauge(
                "target_height",
                "The highest verified height any upstream announced",
            ),
            lag: context.gauge("lag", "Blocks between the target and the executed height"),
            epoch: context.gauge("epoch", "The epoch of the executed height"),
            blocks_per_second: context.gauge(
                "blocks_per_second",
                "Blocks verified per second over the last sample (catch-up and live)",
            ),
            damaged_blocks: context.gauge(
                "damaged_blocks",
                "Stored blocks found damaged on disk (a failing checksum) since the start",
            ),
            repaired_blocks: context.gauge(
                "repaired_blocks",
                "Damaged blocks fetched again, checked against the hash chain and stored again",
            ),
            damaged_certificates: context.gauge(
                "damaged_certificates",
                "Stored finalizations found damaged on disk (a failing checksum) since the start",
            ),
            repaired_certificates: context.gauge(
                "repaired_certificates",
                "Damaged finalizations fetched again, verified with their epoch's key and stored again",
            ),
            certificates_served: context.gauge(
                "certificates_served",
                "Served heights, genesis excluded (what certificate coverage is counted over)",
            ),
            certificates_missing: context.gauge(
                "certificates_missing",
                "Served heights without their own certificate yet (authenticated by the hash chain)",
            ),
            certificates_filled_per_second: context.gauge(
                "certificates_filled_per_second",
                "Certificates filled per second over the last sample",
            ),
            upstream_connected: context.family(
                "upstream_connected",
                "Whether the upstream's subscription is live",
            ),
            upstream_healthy: context.family(
                "upstream_healthy",
                "Whether the upstream is connected, not quarantined and well-behaved",
            ),
            upstream_quarantined: context.family(
                "upstream_quarantined",
                "Whether the upstream is quarantined for serving invalid data",
            ),
            upstream_latency_us: context.family(
                "upstream_latency_microseconds",
                "Round-trip time of the upstream's answered requests (exponentially weighted)",
            ),
            upstream_announced: context.family(
                "upstream_announced_height",
                "The highest height the upstream announced with a verified event",
            ),
        }
    }

    /// Mirrors `status`'s states.
    fn update(&self, status: &FollowerStatus) {
        let set = |gauge: &Gauge, value: u64| {
            let _ = gauge.try_set(value);
        };
        set(&self.verified_height, status.verified_height);
        set(&self.executed_height, status.executed_height);
        set(&self.history_from, status.history_from);
        set(&self.target_height, status.target_height);
        set(&self.lag, status.lag);
        set(&self.epoch, status.epoch);
        set(
            &self.blocks_per_second,
            status.blocks_per_second.round() as u64,
        );
        set(&self.damaged_blocks, status.damaged_blocks);
        set(&self.repaired_blocks, status.repaired_blocks);
        set(&self.damaged_certificates, status.damaged_certificates);
        set(&self.repaired_certificates, status.repaired_certificates);
        let certificates = &status.certificates;
        set(&self.certificates_served, certificates.served);
        set(&self.certificates_missing, certificates.missing);
        set(
            &self.certificates_filled_per_second,
            certificates.filled_per_second.round() as u64,
        );
        for upstream in &status.upstreams {
            let label = UpstreamLabel {
                url: upstream.url.clone(),
            };
            let flag = |family: &Family<UpstreamLabel, RawGauge>, on: bool| {
                family.get_or_create(&label).set(i64::from(on));
            };
            flag(&self.upstream_connected, upstream.connected);
            flag(&self.upstream_healthy, upstream.healthy);
            flag(
                &self.upstream_quarantined,
                upstream.quarantined_secs.is_some(),
            );
            if let Some(latency) = upstream.latency_ms {
                self.upstream_latency_us
                    .get_or_create(&label)
                    .set((latency * 1000.0).round() as i64);
            }
            let _ = self
                .upstream_announced
                .get_or_create(&label)
                .try_set(upstream.announced_height);
        }
    }
}

/// What the sampler reads.
pub(crate) struct Sampled<E: StoreContext> {
    pub chain: String,
    pub epochs: EpochStrategy,
    pub execution: EmbeddedExecution<E>,
    pub provider: cairn_epoch::SchemeProvider,
    pub identities: IdentityHistory,
    pub sources: SourceBook,
    pub upstream: watch::Receiver<UpstreamStatus>,
    pub certificate_damage: crate::damage::DamageLog,
    pub coverage: crate::certificates::Coverage,
}

impl<E: StoreContext> Sampled<E> {
    fn snapshot(
        &self,
        now: SystemTime,
        executed_height: u64,
        rate: f64,
        coverage: crate::certificates::CoverageReport,
        fill_rate: f64,
    ) -> FollowerStatus {
        let health = self.sources.health();
        let upstream = self.upstream.borrow().clone();
        let verified_height = upstream.announced_height.max(executed_height);
        let (damaged_blocks, repaired_blocks) = self.execution.damage_counts();
        let (damaged_certificates, repaired_certificates) = self.certificate_damage.counts();
        let target_height = health
            .iter()
            .map(|source| source.announced_height)
            .chain([verified_height])
            .max()
            .unwrap_or(verified_height);
        FollowerStatus {
            chain: self.chain.clone(),
            epoch_length: self.epochs.length(),
            verified_height,
            executed_height,
            history_from: self.execution.first_height(),
            target_height,
            lag: target_height - executed_height,
            epoch: self.epochs.epoch_of(executed_height).get(),
            key_epoch: self.provider.latest_epoch().map(|epoch| epoch.get()),
            identities: self.identities.changes(&self.epochs),
            upstreams: health.iter().map(UpstreamReport::from).collect(),
            rejected: upstream.rejected,
            rejected_by_check: upstream
                .rejected_by_check
                .iter()
                .map(|(check, count)| ((*check).to_string(), *count))
                .collect(),
            rejoins: upstream.rejoins,
            damaged_blocks,
            repaired_blocks,
            damaged_certificates,
            repaired_certificates,
            blocks_per_second: rate,
            certificates: CertificateStatus {
                mode: coverage.mode.to_string(),
                served: coverage.served,
                certified: coverage.certified,
                missing: coverage.missing(),
                filled: coverage.filled,
                on_demand: coverage.on_demand,
                refused: coverage.refused,
                filled_per_second: fill_rate,
            },
            sampled_at_ms: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
            history: Vec::new(),
        }
    }
}

/// How often the sampler refreshes the board and the metrics.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// How far back the blocks-per-second rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// Refreshes `board` and the metrics registered on `context` every [`SAMPLE_INTERVAL`], until
/// the runtime stops.
pub(crate) async fn sample<E: StoreContext + Clock + Metrics>(
    context: E,
    sampled: Sampled<E>,
    board: StatusBoard,
) {
    let metrics = StatusMetrics::register(&context);
    let mut window: std::collections::VecDeque<(SystemTime, u64, u64)> = Default::default();
    let mut history: std::collections::VecDeque<HistoryPoint> = Default::default();
    let points = (HISTORY_SPAN.as_millis() / HISTORY_EVERY.as_millis()) as usize;
    loop {
        let now = context.current();
        let height = sampled.execution.finalized_height();
        let coverage = sampled.coverage.report();
        window.push_back((now, height, coverage.filled));
        while window.len() > 2
            && window
                .front()
                .and_then(|(at, _, _)| now.duration_since(*at).ok())
                .is_some_and(|age| age > RATE_WINDOW)
        {
            window.pop_front();
        }
        let (rate, fill_rate) = match window.front() {
            Some((at, from, filled)) => {
                let seconds = now.duration_since(*at).unwrap_or_default().as_secs_f64();
                if seconds > 0.0 {
                    (
                        height.saturating_sub(*from) as f64 / seconds,
                        coverage.filled.saturating_sub(*filled) as f64 / seconds,
                    )
                } else {
                    (0.0, 0.0)
                }
            }
            None => (0.0, 0.0),
        };
        let mut status = sampled.snapshot(now, height, rate, coverage, fill_rate);
        let due = history.back().is_none_or(|last: &HistoryPoint| {
            status.sampled_at_ms.saturating_sub(last.at_ms) >= HISTORY_EVERY.as_millis() as u64
        });
        if due {
            history.push_back(HistoryPoint {
                at_ms: status.sampled_at_ms,
                height: status.executed_height,
                target: status.target_height,
                lag: status.lag,
                blocks_per_second: status.blocks_per_second,
                coverage: status.certificates.coverage(),
            });
            while history.len() > points {
                history.pop_front();
            }
        }
        status.history = history.iter().copied().collect();
        metrics.update(&status);
        board.latest.send_replace(status);
        context.sleep(SAMPLE_INTERVAL).await;
    }
}
