//! One run: the plan applied to the network in the deterministic runtime, phase by phase (a
//! power cut ends a phase: the runtime stops, keeps part of what was not synced, and the next
//! phase starts every node on what was kept), with the properties checked every tick.

use crate::{
    ChainMaker, Report, Simulation,
    nodes::{
        Running, Stop, Upstream, producer_profile, start_follower, start_producer, start_validator,
    },
    observe::{Observer, Property},
    plan::{Action, LinkSpec, Node, StorageFaults, When},
};
use cairn_feed::ChainReader;
use cairn_validator::simulated::SimulatedChain;
use commonware_cryptography::ed25519;
use commonware_p2p::{
    Manager as _,
    simulated::{self, Link, Oracle},
};
use commonware_runtime::{
    Clock as _, Supervisor as _,
    deterministic::{self, FaultConfig, PartialWriteMode, WriteConfig},
};
use commonware_utils::{NZUsize, Probability, ordered::Set};
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};
use tracing::{debug, info};

/// How often the harness applies due actions and checks the properties.
const TICK: Duration = Duration::from_millis(250);
/// How long a node that stopped on its own waits before it is started again (as a supervisor
/// would).
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// Blocks a follower may trail the validators' tip and still be at it (blocks keep coming).
const AT_THE_TIP: u64 = 2;

/// What a run carries from one phase to the next.
#[derive(Clone, Debug)]
struct Carry {
    observer: Observer,
    /// When the run started, on the runtime's clock.
    start: Option<SystemTime>,
    /// Which actions have happened.
    done: Vec<bool>,
    /// Nodes the plan has down.
    down: BTreeSet<Node>,
    /// The validators' groups while partitioned.
    partition: Option<Vec<Vec<usize>>>,
    /// Links the plan changed.
    links: BTreeMap<(usize, usize), LinkSpec>,
    /// The disks' faults while on.
    storage: Option<StorageFaults>,
    /// RPCs lying, and how.
    lies: BTreeMap<Node, cairn_devnet::faults::Fault>,
    /// The tip when the faults healed.
    tip_at_heal: Option<u64>,
    /// How long after the heal every follower was at the tip.
    caught_up_after: Option<Duration>,
    /// Nodes that stopped on their own, and why.
    stops: Vec<(Duration, Node, Stop)>,
    /// The runtime's audit digest at the end.
    digest: Option<String>,
    /// Simulated time at the end.
    ended_at: Duration,
}

/// Runs `simulation` from `seed`.
pub(crate) fn run(simulation: &Simulation, seed: u64) -> Report {
    let chain = SimulatedChain::new(
        seed,
        simulation.validators,
        simulation.committee,
        simulation.epoch_length,
    );
    let mut carry = Carry {
        observer: Observer::new(seed),
        start: None,
        done: vec![false; simulation.plan.actions.len()],
        down: BTreeSet::new(),
        partition: None,
        links: BTreeMap::new(),
        storage: None,
        lies: BTreeMap::new(),
        tip_at_heal: None,
        caught_up_after: None,
        stops: Vec::new(),
        digest: None,
        ended_at: Duration::ZERO,
    };
    let config = deterministic::Config::new()
        .with_seed(seed)
        .with_timeout(Some(simulation.time_limit()))
        .with_catch_panics(true);
    let mut runner = deterministic::Runner::new(config);
    loop {
        let phase = carry.clone();
        let (after, checkpoint) = runner.start_and_recover(|context| {
            let chain = chain.clone();
            async move {
                Phase::new(context, simulation, chain, seed, phase)
                    .await
                    .run()
                    .await
            }
        });
        carry = after;
        if carry.digest.is_some() {
            break;
        }
        info!(seed, at = ?carry.ended_at, "power cut: every node starts again on what its disk kept");
        runner = deterministic::Runner::from(checkpoint);
    }
    let summary = simulation.plan.summary();
    Report {
        seed,
        digest: carry.digest.unwrap_or_default(),
        summary,
        tip: carry.observer.tip(),
        followers: (0..simulation.followers.len())
            .map(|index| carry.observer.served_height(index))
            .collect(),
        caught_up_after: carry.caught_up_after,
        stops: carry.stops,
        simulated: carry.ended_at,
        violations: carry.observer.violations,
    }
}

/// A node's place in a phase: what followers reach of it, and its task while it runs.
#[derive(Default)]
struct Slot {
    reached: Upstream,
    running: Option<Running>,
    /// When a node that stopped on its own starts again.
    restart_at: Option<Duration>,
}

/// One phase of a run (from its start or a power cut to the next cut or its end).
struct Phase<'a> {
    context: deterministic::Context,
    simulation: &'a Simulation,
    chain: SimulatedChain,
    seed: u64,
    carry: Carry,
    oracle: Oracle<ed25519::PublicKey, deterministic::Context>,
    validators: Vec<Slot>,
    producer: Slot,
    followers: Vec<Slot>,
    /// What followers follow (`None` if the producer's genesis could not be made).
    profile: Option<cairn_epoch::ChainProfile>,
    start: SystemTime,
}

/// The producer's settings in a run of `seed`.
fn devnet_config(simulation: &Simulation, seed: u64) -> cairn_devnet::DevnetConfig {
    let (full_dkg_at_epochs, block_time) = match &simulation.maker {
        ChainMaker::Producer {
            full_dkg_at_epochs,
            block_time,
        } => (full_dkg_at_epochs.iter().copied().collect(), *block_time),
        ChainMaker::Validators => (BTreeSet::new(), Duration::from_millis(100)),
    };
    cairn_devnet::DevnetConfig {
        validators: simulation.validators,
        committee: simulation.committee,
        epoch_length: simulation.epoch_length,
        full_dkg_at_epochs,
        seed: Some(seed),
        block_time,
        ..cairn_devnet::DevnetConfig::default()
    }
}

/// `value` (clamped to [0, 1]) as a probability, to a millionth.
fn probability(value: f64) -> Probability {
    let millionths = (value.clamp(0.0, 1.0) * 1e6).round() as u64;
    Probability::new(millionths, 1_000_000).unwrap_or(commonware_utils::probability!(0.0))
}

fn link(spec: &LinkSpec) -> Link {
    Link {
        latency: spec.latency,
        jitter: spec.jitter,
        success_rate: probability(spec.delivered),
    }
}

/// The runtime's storage faults for `faults` (none when `None`); a failed write keeps a
/// random prefix of its bytes.
fn fault_config(faults: Option<StorageFaults>) -> FaultConfig {
    let Some(faults) = faults else {
        return FaultConfig::default();
    };
    FaultConfig::default()
        .write(WriteConfig {
            failure_rate: probability(faults.failed_writes),
            retention_rate: probability(0.5),
            mode: PartialWriteMode::Prefix,
        })
        .sync(probability(faults.failed_syncs))
        .open(probability(faults.failed_opens))
        .read(probability(faults.failed_reads))
}

impl<'a> Phase<'a> {
    async fn new(
        context: deterministic::Context,
        simulation: &'a Simulation,
        chain: SimulatedChain,
        seed: u64,
        mut carry: Carry,
    ) -> Self {
        let start = *carry.start.get_or_insert(context.current());
        *context.storage_fault_config().write() = fault_config(carry.storage);
        let (network, oracle) = simulated::Network::new(
            context.child("network"),
            simulated::Config {
                max_size: 4 * 1024 * 1024,
                max_peers_per_set: NZUsize!(simulation.validators.max(1)),
                disconnect_on_block: true,
                tracked_peer_sets: NZUsize!(3),
            },
        );
        network.start();
        oracle
            .manager()
            .track(0, Set::from_iter_dedup(chain.pool()));
        let followers = simulation
            .followers
            .iter()
            .map(|_| Slot::default())
            .collect();
        let profile = match simulation.maker {
            ChainMaker::Validators => Some(chain.profile()),
            ChainMaker::Producer { .. } => {
                let config = devnet_config(simulation, seed);
                match producer_profile(context.child("profile"), config).await {
                    Ok(profile) => Some(profile),
                    Err(err) => {
                        let stop = Stop::Ended(format!("its genesis could not be made: {err}"));
                        carry.stops.push((Duration::ZERO, Node::Producer, stop));
                        None
                    }
                }
            }
        };
        let mut phase = Self {
            context,
            simulation,
            chain,
            seed,
            carry,
            oracle,
            validators: (0..simulation.validators)
                .map(|_| Slot::default())
                .collect(),
            producer: Slot::default(),
            followers,
            profile,
            start,
        };
        phase.relink().await;
        for (node, lie) in phase.carry.lies.clone() {
            phase.lie(node, Some(lie));
        }
        for maker in simulation.makers() {
            if !phase.carry.down.contains(&maker) {
                phase.start(maker);
            }
        }
        for index in 0..simulation.followers.len() {
            if !phase.carry.down.contains(&Node::Follower(index)) {
                phase.start(Node::Follower(index));
            }
        }
        phase
    }

    /// The slot of `node`.
    fn slot(&mut self, node: Node) -> &mut Slot {
        match node {
            Node::Validator(index) => &mut self.validators[index],
            Node::Producer => &mut self.producer,
            Node::Follower(index) => &mut self.followers[index],
        }
    }

    /// Every node of the simulation.
    fn nodes(&self) -> Vec<Node> {
        let followers = (0..self.simulation.followers.len()).map(Node::Follower);
        self.simulation
            .makers()
            .into_iter()
            .chain(followers)
            .collect()
    }

    /// What the RPC of `node` (a validator or the producer) serves: `lie` in its mode, or the
    /// truth.
    fn lie(&mut self, node: Node, lie: Option<cairn_devnet::faults::Fault>) {
        let seed = self.seed.wrapping_add(match node {
            Node::Validator(index) => index as u64,
            _ => 1 << 32,
        });
        self.slot(node).reached.served.lie(lie, seed);
    }

    fn now(&self) -> Duration {
        self.context
            .current()
            .duration_since(self.start)
            .unwrap_or_default()
    }

    /// Links every two validators as the plan has them now.
    async fn relink(&mut self) {
        let pool = self.chain.pool();
        let group = |index: usize| {
            self.carry
                .partition
                .as_ref()
                .and_then(|groups| groups.iter().position(|group| group.contains(&index)))
        };
        for (from, sender) in pool.iter().enumerate() {
            for (to, receiver) in pool.iter().enumerate() {
                if from == to {
                    continue;
                }
                let _ = self
                    .oracle
                    .remove_link(sender.clone(), receiver.clone())
                    .await;
                if group(from) != group(to) {
                    continue;
                }
                let spec = self
                    .carry
                    .links
                    .get(&(from, to))
                    .copied()
                    .unwrap_or(self.simulation.plan.link);
                let _ = self
                    .oracle
                    .add_link(sender.clone(), receiver.clone(), link(&spec))
                    .await;
            }
        }
    }

    /// Starts `node` (it is not running).
    fn start(&mut self, node: Node) {
        let context = self.context.child("node");
        match node {
            Node::Validator(index) => {
                let running = start_validator(
                    context.with_attribute("validator", index),
                    self.chain.clone(),
                    self.oracle.clone(),
                    index,
                    self.simulation.timeouts,
                    self.validators[index].reached.clone(),
                );
                self.validators[index].running = Some(running);
                self.carry.observer.maker_started(node);
            }
            Node::Producer => {
                let running = start_producer(
                    context.with_attribute("producer", 0),
                    devnet_config(self.simulation, self.seed),
                    self.producer.reached.clone(),
                );
                self.producer.running = Some(running);
                self.carry.observer.maker_started(node);
            }
            Node::Follower(index) => {
                let setup = &self.simulation.followers[index];
                let upstreams = setup
                    .upstreams
                    .iter()
                    .map(|upstream| (upstream.to_string(), self.slot(*upstream).reached.clone()))
                    .collect();
                let Some(profile) = self.profile.clone() else {
                    return;
                };
                let served = self.followers[index].reached.clone();
                let running = start_follower(
                    context.with_attribute("follower", index),
                    cairn_follow::EngineConfig::new(profile),
                    index,
                    setup.kind,
                    upstreams,
                    served,
                );
                self.followers[index].running = Some(running);
                self.carry.observer.follower_started(index);
            }
        }
    }

    /// Kills `node` (if it runs).
    fn kill(&mut self, node: Node) {
        let slot = self.slot(node);
        slot.reached.served.down();
        if let Some(running) = slot.running.take() {
            running.kill();
        }
    }

    /// Notes the nodes that stopped on their own, and starts again those whose delay is over.
    fn supervise(&mut self, now: Duration) {
        let mut stopped = Vec::new();
        for node in self.nodes() {
            let slot = self.slot(node);
            if let Some(stop) = slot.running.as_mut().and_then(Running::stopped) {
                slot.running = None;
                slot.reached.served.down();
                stopped.push((node, stop));
            }
        }
        for (node, stop) in stopped {
            debug!(%node, ?stop, "stopped");
            if let Stop::Halted(detail) = &stop {
                let conflict = self
                    .carry
                    .observer
                    .violations
                    .iter()
                    .any(|violation| violation.property == Property::ValidatorsAgree);
                if !conflict {
                    let detail = format!("halted although no two certificates conflict: {detail}");
                    self.carry.observer.violated(
                        now,
                        Some(node),
                        Property::HaltsOnlyOnConflict,
                        detail,
                    );
                }
            } else {
                self.slot(node).restart_at = Some(now + RESTART_DELAY);
            }
            self.carry.stops.push((now, node, stop));
        }
        let mut due = Vec::new();
        for node in self.nodes() {
            let slot = self.slot(node);
            if slot.restart_at.is_some_and(|at| at <= now) {
                slot.restart_at = None;
                due.push(node);
            }
        }
        for node in due {
            if !self.carry.down.contains(&node) {
                self.start(node);
            }
        }
    }

    fn is_running(&mut self, node: Node) -> bool {
        self.slot(node).running.is_some()
    }

    /// Applies `action`; `true` when it is a power cut (the phase ends).
    async fn apply(&mut self, action: &Action) -> bool {
        info!(seed = self.seed, at = ?self.now(), ?action, "plan");
        match action {
            Action::Crash(node) => {
                self.carry.down.insert(*node);
                self.kill(*node);
            }
            Action::Restart(node) => {
                self.carry.down.remove(node);
                if !self.is_running(*node) {
                    self.start(*node);
                }
            }
            Action::Partition(groups) => {
                self.carry.partition = Some(groups.clone());
                self.relink().await;
            }
            Action::Heal => {
                self.carry.partition = None;
                self.carry.links.clear();
                self.relink().await;
            }
            Action::Link { from, to, link } => {
                self.carry.links.insert((*from, *to), *link);
                self.relink().await;
            }
            Action::StorageFaults(faults) => {
                self.carry.storage = Some(*faults);
                *self.context.storage_fault_config().write() = fault_config(Some(*faults));
            }
            Action::StorageHealed => {
                self.carry.storage = None;
                *self.context.storage_fault_config().write() = fault_config(None);
            }
            Action::Lie { node, mode } => {
                self.carry.lies.insert(*node, mode.clone());
                self.lie(*node, Some(mode.clone()));
            }
            Action::Honest(node) => {
                self.carry.lies.remove(node);
                self.lie(*node, None);
            }
            Action::PowerCut { kept } => {
                let mut config = fault_config(self.carry.storage);
                config.write_rate = Some(WriteConfig {
                    failure_rate: config
                        .write_rate
                        .map_or(probability(0.0), |write| write.failure_rate),
                    retention_rate: probability(*kept),
                    mode: PartialWriteMode::Prefix,
                });
                *self.context.storage_fault_config().write() = config;
                return true;
            }
        }
        false
    }

    /// Reads every running node's chain and checks the properties.
    async fn observe(&mut self, now: Duration) {
        for node in self.nodes() {
            let Some(chain) = self.slot(node).reached.served.chain() else {
                continue;
            };
            match node {
                Node::Follower(index) => {
                    self.carry.observer.scan_follower(now, index, &chain).await;
                }
                maker => self.carry.observer.scan_maker(now, maker, &chain).await,
            }
        }
    }

    /// Every follower runs and serves within [`AT_THE_TIP`] of the tip of the chain's makers.
    fn at_the_tip(&self) -> bool {
        let height = |slot: &Slot| slot.reached.served.chain()?.finalized_height();
        let tip = self
            .validators
            .iter()
            .chain(std::iter::once(&self.producer))
            .filter_map(height)
            .max()
            .unwrap_or(0);
        self.followers
            .iter()
            .all(|slot| height(slot).is_some_and(|height| height + AT_THE_TIP >= tip))
    }

    /// Ends every fault the plan left on.
    async fn heal(&mut self) {
        for action in [Action::Heal, Action::StorageHealed] {
            self.apply(&action).await;
        }
        for node in self.carry.lies.keys().copied().collect::<Vec<_>>() {
            self.apply(&Action::Honest(node)).await;
        }
        for node in std::mem::take(&mut self.carry.down) {
            self.apply(&Action::Restart(node)).await;
        }
        self.carry.tip_at_heal = Some(self.carry.observer.tip());
    }

    /// Runs until the next power cut or the end; what the next phase needs.
    async fn run(mut self) -> Carry {
        let plan = &self.simulation.plan;
        loop {
            self.context.sleep(TICK).await;
            let now = self.now();
            self.supervise(now);
            let tip = self.carry.observer.tip();
            for index in 0..plan.actions.len() {
                if self.carry.done[index] {
                    continue;
                }
                let (when, action) = &plan.actions[index];
                let due = match when {
                    When::At(at) => *at <= now,
                    When::Height(height) => *height <= tip,
                };
                // Once the faults are over, nothing more happens.
                if !due || now >= plan.healed_at {
                    continue;
                }
                self.carry.done[index] = true;
                if self.apply(action).await {
                    self.carry.ended_at = now;
                    return self.carry;
                }
            }
            self.observe(now).await;
            if now < plan.healed_at {
                continue;
            }
            if self.carry.tip_at_heal.is_none() {
                self.heal().await;
            }
            // Done once the validators finalized past where they were at the heal, and every
            // follower is at their tip.
            let over = now >= plan.healed_at + plan.liveness_bound;
            let went_on = self.carry.observer.tip() > self.carry.tip_at_heal.unwrap_or(0);
            if went_on && self.at_the_tip() {
                self.carry.caught_up_after = Some(now - plan.healed_at);
            } else if !over {
                continue;
            }
            return self.finish(now, over).await;
        }
    }

    /// The last checks, and the run's digest.
    async fn finish(mut self, now: Duration, over: bool) -> Carry {
        // The makers' stores are read whole once more: a certificate stored just after its
        // block was read is then known too.
        for maker in self.simulation.makers() {
            self.carry.observer.maker_started(maker);
        }
        self.observe(now).await;
        let tip = self.carry.observer.tip();
        if over && self.carry.caught_up_after.is_none() {
            for index in 0..self.followers.len() {
                let served = self.carry.observer.served_height(index);
                if served + AT_THE_TIP < tip {
                    let detail = format!(
                        "at {served} of {tip}, {} s after the faults healed",
                        self.simulation.plan.liveness_bound.as_secs()
                    );
                    self.carry.observer.violated(
                        now,
                        Some(Node::Follower(index)),
                        Property::ReachesTheTip,
                        detail,
                    );
                }
            }
        }
        if tip <= self.carry.tip_at_heal.unwrap_or(0) {
            let detail = format!("the tip stayed at {tip} after the faults healed");
            self.carry
                .observer
                .violated(now, None, Property::ValidatorsGoOn, detail);
        }
        let epoch_length = self.simulation.epoch_length;
        for index in 0..self.followers.len() {
            let chain = self.followers[index].reached.served.chain();
            self.carry
                .observer
                .finish_follower(now, index, chain.as_ref(), epoch_length)
                .await;
        }
        self.carry.ended_at = now;
        self.carry.digest = Some(self.context.auditor().state());
        self.carry
    }
}
