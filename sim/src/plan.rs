//! The fault plan: what happens to which node, by simulated time or by chain height, written by
//! hand or drawn from a seed.
//!
//! Times count from the start of the run. A height triggers once the highest height any
//! validator has finalized reaches it. Every fault is over at [`Plan::healed_at`]: from then on
//! the links are whole, the disks are healthy, every node runs, and each follower must reach the
//! validators' tip within [`Plan::liveness_bound`].

use cairn_devnet::faults::Fault;
use rand::{Rng, RngExt as _, SeedableRng as _, rngs::StdRng};
use std::{fmt, time::Duration};

/// A node of the simulation: validator `I`, the certifying producer, or follower `I` (each
/// counted from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    /// A simplex validator.
    Validator(usize),
    /// The certifying producer (a chain made by one process, see
    /// [`crate::Simulation::producer`]).
    Producer,
    /// A cairn follower.
    Follower(usize),
}

impl Node {
    /// Whether the node makes the chain (a validator or the producer).
    pub const fn makes_the_chain(&self) -> bool {
        !matches!(self, Self::Follower(_))
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Validator(index) => write!(f, "validator {index}"),
            Self::Producer => f.write_str("the producer"),
            Self::Follower(index) => write!(f, "follower {index}"),
        }
    }
}

/// When an action happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// At this simulated time since the start of the run.
    At(Duration),
    /// Once a validator has finalized this height.
    Height(u64),
}

/// A link between two validators.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkSpec {
    /// Mean one-way latency.
    pub latency: Duration,
    /// Its standard deviation.
    pub jitter: Duration,
    /// Share of messages delivered, in [0, 1].
    pub delivered: f64,
}

impl Default for LinkSpec {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            delivered: 1.0,
        }
    }
}

/// Faults the simulated disks inject into every node's storage operations while they are on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StorageFaults {
    /// Share of writes that fail.
    pub failed_writes: f64,
    /// Share of syncs that fail.
    pub failed_syncs: f64,
    /// Share of opens that fail.
    pub failed_opens: f64,
    /// Share of reads that fail.
    pub failed_reads: f64,
}

impl StorageFaults {
    /// Writes, syncs and opens failing at `rate` each.
    pub const fn failing(rate: f64) -> Self {
        Self {
            failed_writes: rate,
            failed_syncs: rate,
            failed_opens: rate,
            failed_reads: 0.0,
        }
    }
}

/// Something that happens to the simulated network.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The node's process is killed: its tasks stop at once; what it wrote stays, as an
    /// operating system keeps a killed process's writes.
    Crash(Node),
    /// The node starts again on its stores (nothing if it runs).
    Restart(Node),
    /// The validators are split into these groups: no message crosses between two groups.
    /// Followers still reach every validator.
    Partition(Vec<Vec<usize>>),
    /// Every link between validators is whole again, with the plan's link.
    Heal,
    /// The link from one validator to another changes.
    Link {
        /// The sending validator.
        from: usize,
        /// The receiving validator.
        to: usize,
        /// The new link.
        link: LinkSpec,
    },
    /// The disks start failing.
    StorageFaults(StorageFaults),
    /// The disks are healthy again.
    StorageHealed,
    /// The RPC of a validator or the producer starts lying to the followers in one of the
    /// devnet's byzantine modes (the chain it makes stays honest).
    Lie {
        /// The validator or the producer.
        node: Node,
        /// How it lies.
        mode: Fault,
    },
    /// Its RPC is honest again.
    Honest(Node),
    /// The power fails: every node stops at once, and of what was written but not synced,
    /// each write keeps only a random prefix (`kept` of its bytes on average). Every node
    /// starts again on what its disk kept.
    PowerCut {
        /// Share of each unsynced write's bytes kept, in [0, 1].
        kept: f64,
    },
}

/// A fault plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The actions, each with when it happens.
    pub actions: Vec<(When, Action)>,
    /// When every fault is over (the plan heals what is still broken then).
    pub healed_at: Duration,
    /// How long after [`Self::healed_at`] every follower must have reached the tip.
    pub liveness_bound: Duration,
    /// The link between every two validators.
    pub link: LinkSpec,
}

impl Default for Plan {
    fn default() -> Self {
        Self::new()
    }
}

impl Plan {
    /// No faults; healed at 20 s, followers at the tip within 60 s after.
    pub fn new() -> Self {
        Self {
            actions: Vec::new(),
            healed_at: Duration::from_secs(20),
            liveness_bound: Duration::from_secs(60),
            link: LinkSpec::default(),
        }
    }

    /// Adds `action` at simulated time `time`.
    pub fn at(mut self, time: Duration, action: Action) -> Self {
        self.actions.push((When::At(time), action));
        self
    }

    /// Adds `action` once a validator has finalized `height`.
    pub fn at_height(mut self, height: u64, action: Action) -> Self {
        self.actions.push((When::Height(height), action));
        self
    }

    /// Every fault is over at `healed_at`, and followers reach the tip within `bound` after.
    pub const fn healed_by(mut self, healed_at: Duration, bound: Duration) -> Self {
        self.healed_at = healed_at;
        self.liveness_bound = bound;
        self
    }

    /// What the plan does, counted: crashes, partitions, storage fault windows, lies, power
    /// cuts.
    pub fn summary(&self) -> PlanSummary {
        let mut summary = PlanSummary::default();
        for (_, action) in &self.actions {
            match action {
                Action::Crash(_) => summary.crashes += 1,
                Action::Partition(_) => summary.partitions += 1,
                Action::Link { .. } => summary.link_changes += 1,
                Action::StorageFaults(_) => summary.storage_windows += 1,
                Action::Lie { .. } => summary.lies += 1,
                Action::PowerCut { .. } => summary.power_cuts += 1,
                Action::Restart(_) | Action::Heal | Action::StorageHealed | Action::Honest(_) => {}
            }
        }
        summary
    }

    /// A plan drawn from `seed` at `rates` for a chain made by `makers` (validators that
    /// tolerate `tolerated` of them down, or the producer) and `followers` followers.
    pub fn random(
        seed: u64,
        makers: &[Node],
        tolerated: usize,
        followers: usize,
        rates: &Rates,
    ) -> Self {
        let validators = makers
            .iter()
            .filter(|node| matches!(node, Node::Validator(_)))
            .count();
        // Links join validators only.
        let linked = validators > 1;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_9a7e);
        let span = rates.span.as_millis().max(10_000) as u64;
        let mut plan = Self::new().healed_by(rates.span, rates.liveness_bound);
        // A window inside the span: its start, and its end (before the span ends).
        let window = |rng: &mut StdRng, longest: u64| {
            let start = rng.random_range(2_000..span - 3_000);
            let end = (start + rng.random_range(1_000..longest.max(1_001))).min(span - 1_000);
            (Duration::from_millis(start), Duration::from_millis(end))
        };
        let nodes: Vec<Node> = makers
            .iter()
            .copied()
            .chain((0..followers).map(Node::Follower))
            .collect();
        let mut validator_downtimes: Vec<(Duration, Duration)> = Vec::new();
        for _ in 0..draw(&mut rng, rates.crashes) {
            let node = nodes[rng.random_range(0..nodes.len())];
            let (start, end) = window(&mut rng, 10_000);
            // Keep at most `tolerated` validators down at once, so the chain can go on.
            if node.makes_the_chain() {
                let overlapping = validator_downtimes
                    .iter()
                    .filter(|(s, e)| *s < end && start < *e)
                    .count();
                if overlapping >= tolerated {
                    continue;
                }
                validator_downtimes.push((start, end));
            }
            plan.actions.push((When::At(start), Action::Crash(node)));
            plan.actions.push((When::At(end), Action::Restart(node)));
        }
        for _ in 0..if linked {
            draw(&mut rng, rates.partitions)
        } else {
            0
        } {
            let (start, end) = window(&mut rng, 8_000);
            let mut order: Vec<usize> = (0..validators).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            let cut = rng.random_range(1..validators.max(2));
            let groups = vec![order[..cut].to_vec(), order[cut..].to_vec()];
            plan.actions
                .push((When::At(start), Action::Partition(groups)));
            plan.actions.push((When::At(end), Action::Heal));
        }
        for _ in 0..if linked {
            draw(&mut rng, rates.link_changes)
        } else {
            0
        } {
            let (start, _) = window(&mut rng, 1_000);
            let from = rng.random_range(0..validators);
            let to = (from + rng.random_range(1..validators.max(2))) % validators;
            let link = LinkSpec {
                latency: Duration::from_millis(rng.random_range(5..400)),
                jitter: Duration::from_millis(rng.random_range(0..50)),
                delivered: rng.random_range(0.6..1.0),
            };
            plan.actions
                .push((When::At(start), Action::Link { from, to, link }));
        }
        for _ in 0..draw(&mut rng, rates.storage_windows) {
            let (start, end) = window(&mut rng, 4_000);
            let rate = |rng: &mut StdRng| rng.random_range(0.0..rates.storage_fault_rate);
            let faults = StorageFaults {
                failed_writes: rate(&mut rng),
                failed_syncs: rate(&mut rng),
                failed_opens: rate(&mut rng),
                failed_reads: rate(&mut rng) / 4.0,
            };
            plan.actions
                .push((When::At(start), Action::StorageFaults(faults)));
            plan.actions.push((When::At(end), Action::StorageHealed));
        }
        for _ in 0..draw(&mut rng, rates.lies) {
            let (start, end) = window(&mut rng, 8_000);
            let node = makers[rng.random_range(0..makers.len())];
            let mode = match rng.random_range(0..5) {
                0 => Fault::BadSignature(0.5),
                1 => Fault::WrongDigest(0.5),
                2 => Fault::Malformed(0.5),
                3 => Fault::WithholdBoundaries,
                _ => Fault::LieOnFetch(0.5),
            };
            plan.actions
                .push((When::At(start), Action::Lie { node, mode }));
            plan.actions.push((When::At(end), Action::Honest(node)));
        }
        for _ in 0..draw(&mut rng, rates.power_cuts) {
            let (start, _) = window(&mut rng, 1_000);
            let kept = rng.random_range(0.0..1.0);
            plan.actions
                .push((When::At(start), Action::PowerCut { kept }));
        }
        plan.actions.sort_by_key(|(when, _)| match when {
            When::At(time) => *time,
            When::Height(_) => Duration::ZERO,
        });
        plan
    }
}

/// How many of a fault with mean `rate` a plan gets: the whole part, and one more with the
/// fractional part's probability.
fn draw(rng: &mut impl Rng, rate: f64) -> usize {
    let whole = rate.max(0.0).floor();
    let extra = usize::from(rng.random_bool((rate.max(0.0) - whole).clamp(0.0, 1.0)));
    whole as usize + extra
}

/// How many of each fault a random plan gets on average, and over how long.
#[derive(Clone, Debug, PartialEq)]
pub struct Rates {
    /// Node crashes (each with its restart).
    pub crashes: f64,
    /// Partitions of the validators (each healed).
    pub partitions: f64,
    /// Changed links between two validators.
    pub link_changes: f64,
    /// Windows of failing disks.
    pub storage_windows: f64,
    /// Highest failure rate of a storage operation in such a window.
    pub storage_fault_rate: f64,
    /// Windows of a lying validator RPC.
    pub lies: f64,
    /// Power cuts.
    pub power_cuts: f64,
    /// How long the faults go on.
    pub span: Duration,
    /// How long after that every follower must reach the tip.
    pub liveness_bound: Duration,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            crashes: 2.0,
            partitions: 0.7,
            link_changes: 1.0,
            storage_windows: 1.0,
            storage_fault_rate: 0.05,
            lies: 0.7,
            power_cuts: 0.5,
            span: Duration::from_secs(15),
            liveness_bound: Duration::from_secs(60),
        }
    }
}

/// What a plan does, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanSummary {
    /// Node crashes.
    pub crashes: usize,
    /// Partitions.
    pub partitions: usize,
    /// Changed links.
    pub link_changes: usize,
    /// Windows of failing disks.
    pub storage_windows: usize,
    /// Windows of a lying RPC.
    pub lies: usize,
    /// Power cuts.
    pub power_cuts: usize,
}

impl fmt::Display for PlanSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |count: usize, one: &str, many: &str| {
            format!("{count} {}", if count == 1 { one } else { many })
        };
        write!(
            f,
            "{}, {}, {}, {}, {}, {}",
            plural(self.crashes, "crash", "crashes"),
            plural(self.partitions, "partition", "partitions"),
            plural(self.link_changes, "link change", "link changes"),
            plural(
                self.storage_windows,
                "storage fault window",
                "storage fault windows"
            ),
            plural(self.lies, "lying rpc", "lying rpcs"),
            plural(self.power_cuts, "power cut", "power cuts"),
        )
    }
}
