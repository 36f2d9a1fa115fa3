//! A simulation harness for consensus tests with verifying followers inside: real simplex
//! validators that reshare their key every epoch (`cairn_validator::simulated`, over
//! commonware-p2p's simulated network), cairn followers following any mix of validators and
//! other followers through the same upstream actor, sources and engine the binary runs
//! (in-process instead of over sockets), a fault plan ([`Plan`]: crashes, partitions, link
//! changes, failing disks, lying RPCs, power cuts; by time or by height, by hand or drawn
//! from a seed), and the properties ([`Property`]) checked every tick and at the end. One
//! seed gives the same run and the same digest, every time.
//!
//! ```no_run
//! use cairn_sim::{Action, Node, Plan, Simulation};
//! use std::time::Duration;
//!
//! let report = Simulation::new(4)
//!     .follower(&[Node::Validator(0), Node::Validator(1)])
//!     .plan(Plan::new().at(Duration::from_secs(5), Action::Crash(Node::Validator(0))))
//!     .run(7)
//!     .expect("a valid setup");
//! assert!(report.violations.is_empty(), "{report}");
//! ```

mod nodes;
mod observe;
pub mod plan;
mod run;
mod served;

pub use nodes::FollowerKind;
pub use observe::{Property, Violation};
pub use plan::{Action, LinkSpec, Node, Plan, PlanSummary, Rates, StorageFaults, When};

use cairn_validator::simulated::Timeouts;
use std::{fmt, time::Duration};

/// One follower of a simulation: what it follows, and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerSetup {
    /// Its upstreams: validators, and followers listed before it.
    pub upstreams: Vec<Node>,
    /// cairn's follower, or the broken one that shows the properties can fail.
    pub kind: FollowerKind,
}

/// What makes the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainMaker {
    /// Simplex validators, each its own node (the default).
    Validators,
    /// The certifying producer: one node that builds each block and has a quorum of the
    /// committee's shares sign it, running a reshare or a full DKG at each boundary (the
    /// lighter option, and the one that rotates the identity).
    Producer {
        /// Epochs whose key comes from a full DKG (a new identity).
        full_dkg_at_epochs: Vec<u64>,
        /// Time between blocks.
        block_time: Duration,
    },
}

/// A simulated network and the plan it runs.
#[derive(Clone, Debug)]
pub struct Simulation {
    /// What makes the chain.
    pub maker: ChainMaker,
    /// Validators in the pool.
    pub validators: usize,
    /// Validators per committee (a window over the pool, moving one per epoch).
    pub committee: usize,
    /// Blocks per epoch (at least twice the committee plus 4: dealers post their logs in an
    /// epoch's second half).
    pub epoch_length: u64,
    /// The followers.
    pub followers: Vec<FollowerSetup>,
    /// The fault plan.
    pub plan: Plan,
    /// The validators' view timeouts.
    pub timeouts: Timeouts,
}

/// Why a simulation cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetupError {
    /// Fewer than one validator, or a committee larger than the pool.
    #[error("{validators} validators cannot form committees of {committee}")]
    Committee {
        /// Validators.
        validators: usize,
        /// Committee size.
        committee: usize,
    },
    /// Epochs too short for a reshare.
    #[error(
        "epochs of {length} blocks are too short for committees of {committee}: at least {least}"
    )]
    EpochLength {
        /// Blocks per epoch.
        length: u64,
        /// Committee size.
        committee: usize,
        /// The shortest that works.
        least: u64,
    },
    /// A node the setup or the plan names does not exist (or a follower follows itself or
    /// one listed after it).
    #[error("{0}")]
    Node(String),
}

/// The shortest epoch a committee of `committee` reshares in.
pub const fn least_epoch_length(committee: usize) -> u64 {
    2 * committee as u64 + 4
}

impl Simulation {
    /// `validators` validators in one committee, the shortest epochs that work, no followers,
    /// no faults.
    pub fn new(validators: usize) -> Self {
        Self {
            maker: ChainMaker::Validators,
            validators,
            committee: validators,
            epoch_length: least_epoch_length(validators),
            followers: Vec::new(),
            plan: Plan::new(),
            timeouts: Timeouts::default(),
        }
    }

    /// The shape [`Self::random`] explores: five validators in committees of four (so they
    /// rotate, and one may be down), epochs of 12 blocks, a follower of every validator, and a
    /// follower of that follower and one validator.
    pub fn explored() -> Self {
        Self {
            committee: 4,
            epoch_length: least_epoch_length(4),
            ..Self::new(5)
        }
        .follower(&(0..5).map(Node::Validator).collect::<Vec<_>>())
        .follower(&[Node::Follower(0), Node::Validator(4)])
    }

    /// The certifying producer with a pool of `validators` in committees of `committee`,
    /// resharing at every boundary (see [`Self::full_dkg_at`]), a block every 100 ms.
    pub fn producer(validators: usize, committee: usize) -> Self {
        Self {
            maker: ChainMaker::Producer {
                full_dkg_at_epochs: Vec::new(),
                block_time: Duration::from_millis(100),
            },
            committee,
            epoch_length: 10,
            ..Self::new(validators)
        }
    }

    /// With the producer: a full DKG (a new identity) makes the keys of these epochs.
    pub fn full_dkg_at(mut self, epochs: &[u64]) -> Self {
        if let ChainMaker::Producer {
            full_dkg_at_epochs, ..
        } = &mut self.maker
        {
            *full_dkg_at_epochs = epochs.to_vec();
        }
        self
    }

    /// The nodes that make the chain.
    pub fn makers(&self) -> Vec<Node> {
        match self.maker {
            ChainMaker::Validators => (0..self.validators).map(Node::Validator).collect(),
            ChainMaker::Producer { .. } => vec![Node::Producer],
        }
    }

    /// This setup under a plan drawn from `seed` at `rates`.
    pub fn with_random_plan(self, seed: u64, rates: &Rates) -> Self {
        let tolerated = match self.maker {
            ChainMaker::Validators => (self.committee - 1) / 3,
            ChainMaker::Producer { .. } => 1,
        };
        let plan = Plan::random(seed, &self.makers(), tolerated, self.followers.len(), rates);
        self.plan(plan)
    }

    /// [`Self::explored`] with the certifying producer making the chain instead (a pool of
    /// five in committees of four, epochs of 10 blocks, a full DKG every third epoch).
    pub fn explored_with_producer() -> Self {
        Self {
            followers: Self::explored().followers,
            ..Self::producer(5, 4).full_dkg_at(&(1..=30).map(|n| 3 * n).collect::<Vec<_>>())
        }
        .follower_upstreams_made_by_the_producer()
    }

    /// Every follower's upstreams with validators replaced by the producer.
    fn follower_upstreams_made_by_the_producer(mut self) -> Self {
        for follower in &mut self.followers {
            follower.upstreams = follower
                .upstreams
                .iter()
                .map(|node| {
                    if node.makes_the_chain() {
                        Node::Producer
                    } else {
                        *node
                    }
                })
                .collect();
            follower.upstreams.dedup();
        }
        self
    }

    /// [`Self::explored`] under a plan drawn from `seed` at `rates`.
    pub fn random(seed: u64, rates: &Rates) -> Self {
        Self::explored().with_random_plan(seed, rates)
    }

    /// Committees of `committee` (epochs made long enough for them).
    pub const fn committee(mut self, committee: usize) -> Self {
        self.committee = committee;
        if self.epoch_length < least_epoch_length(committee) {
            self.epoch_length = least_epoch_length(committee);
        }
        self
    }

    /// Epochs of `length` blocks.
    pub const fn epoch_length(mut self, length: u64) -> Self {
        self.epoch_length = length;
        self
    }

    /// Adds a cairn follower of `upstreams`.
    pub fn follower(self, upstreams: &[Node]) -> Self {
        self.follower_of_kind(upstreams, FollowerKind::Cairn)
    }

    /// Adds a follower of `kind` following `upstreams`.
    pub fn follower_of_kind(mut self, upstreams: &[Node], kind: FollowerKind) -> Self {
        self.followers.push(FollowerSetup {
            upstreams: upstreams.to_vec(),
            kind,
        });
        self
    }

    /// Runs `plan`.
    pub fn plan(mut self, plan: Plan) -> Self {
        self.plan = plan;
        self
    }

    /// Whether the setup and the plan can run.
    pub fn check(&self) -> Result<(), SetupError> {
        if self.validators == 0 || self.committee == 0 || self.committee > self.validators {
            return Err(SetupError::Committee {
                validators: self.validators,
                committee: self.committee,
            });
        }
        let least = match self.maker {
            ChainMaker::Validators => least_epoch_length(self.committee),
            ChainMaker::Producer { .. } => 2,
        };
        if self.epoch_length < least {
            return Err(SetupError::EpochLength {
                length: self.epoch_length,
                committee: self.committee,
                least,
            });
        }
        let producer = matches!(self.maker, ChainMaker::Producer { .. });
        let exists = |node: &Node| match *node {
            Node::Validator(index) => !producer && index < self.validators,
            Node::Producer => producer,
            Node::Follower(index) => index < self.followers.len(),
        };
        for (index, follower) in self.followers.iter().enumerate() {
            if follower.upstreams.is_empty() {
                return Err(SetupError::Node(format!(
                    "follower {index} follows nothing"
                )));
            }
            for upstream in &follower.upstreams {
                let before = match *upstream {
                    Node::Follower(other) => other < index,
                    Node::Validator(_) | Node::Producer => true,
                };
                if !exists(upstream) || !before {
                    return Err(SetupError::Node(format!(
                        "follower {index} follows {upstream}, which is not a node making the \
                         chain or a follower listed before it"
                    )));
                }
            }
        }
        for (_, action) in &self.plan.actions {
            let named: Vec<Node> = match action {
                Action::Crash(node) | Action::Restart(node) => vec![*node],
                Action::Partition(groups) => groups
                    .iter()
                    .flatten()
                    .map(|index| Node::Validator(*index))
                    .collect(),
                Action::Link { from, to, .. } => vec![Node::Validator(*from), Node::Validator(*to)],
                Action::Lie { node, .. } | Action::Honest(node) => {
                    if node.makes_the_chain() {
                        vec![*node]
                    } else {
                        return Err(SetupError::Node(format!(
                            "{node} has no RPC of its own to lie with"
                        )));
                    }
                }
                Action::Heal
                | Action::StorageFaults(_)
                | Action::StorageHealed
                | Action::PowerCut { .. } => Vec::new(),
            };
            if let Some(missing) = named.iter().find(|node| !exists(node)) {
                return Err(SetupError::Node(format!(
                    "the plan names {missing}, which does not exist"
                )));
            }
        }
        Ok(())
    }

    /// The runtime's deadline: the plan, with room to spare.
    fn time_limit(&self) -> Duration {
        (self.plan.healed_at + self.plan.liveness_bound) * 2 + Duration::from_secs(60)
    }

    /// Runs the simulation from `seed`.
    pub fn run(&self, seed: u64) -> Result<Report, SetupError> {
        self.check()?;
        Ok(run::run(self, seed))
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The deterministic runtime's audit digest at the end (every task polled, every storage
    /// operation): the same seed gives the same digest.
    pub digest: String,
    /// What the plan did.
    pub summary: PlanSummary,
    /// The highest height a validator finalized.
    pub tip: u64,
    /// The highest height each follower served.
    pub followers: Vec<u64>,
    /// How long after the faults healed every follower was at the tip.
    pub caught_up_after: Option<Duration>,
    /// Nodes that stopped on their own (and were started again), and why.
    pub stops: Vec<(Duration, Node, nodes::Stop)>,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// Every property broken.
    pub violations: Vec<Violation>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let followers: Vec<String> = self.followers.iter().map(u64::to_string).collect();
        write!(
            f,
            "seed {} digest {}… | {} | tip {}, followers at {} | {} stops | {}",
            self.seed,
            &self.digest[..self.digest.len().min(8)],
            self.summary,
            self.tip,
            followers.join("/"),
            self.stops.len(),
            match self.violations.len() {
                0 => "no violations".to_string(),
                1 => "1 violation".to_string(),
                count => format!("{count} violations"),
            },
        )?;
        for violation in &self.violations {
            write!(f, "\n  {violation}")?;
        }
        Ok(())
    }
}

pub use nodes::Stop;

#[cfg(test)]
mod tests;
