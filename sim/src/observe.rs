//! The properties, checked while the simulation runs and at its end, against what the
//! validators finalized (read from their own stores): the reference chain.

use crate::plan::Node;
use alloy_primitives::B256;
use cairn_feed::{
    ChainReader, Explained,
    explain::{Authentication, KeyOrigin},
};
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    time::Duration,
};

/// A property every run must keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Property {
    /// Every block a follower serves is the block the validators finalized at its height, and
    /// every certificate it serves is one of theirs for that block, byte for byte.
    ServesTheFinalizedChain,
    /// A follower never serves two different blocks at one height.
    ServesEachHeightOnce,
    /// A follower never loses a height it served, crashes and power cuts included.
    KeepsWhatItServed,
    /// Every epoch's key is registered from the boundary block closing the epoch before (epoch
    /// 0's from genesis), once: every certified height of the epoch names that boundary.
    KeysFromBoundaries,
    /// A follower halts with evidence only when two valid certificates really conflict.
    HaltsOnlyOnConflict,
    /// Once the faults are over, every follower reaches the validators' tip within the plan's
    /// bound.
    ReachesTheTip,
    /// The validators agree on every height (consensus safety, the premise of the rest).
    ValidatorsAgree,
    /// The validators finalize blocks again once the faults are over.
    ValidatorsGoOn,
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ServesTheFinalizedChain => "serves the finalized chain",
            Self::ServesEachHeightOnce => "serves each height once",
            Self::KeepsWhatItServed => "keeps what it served",
            Self::KeysFromBoundaries => "keys from boundaries",
            Self::HaltsOnlyOnConflict => "halts only on conflict",
            Self::ReachesTheTip => "reaches the tip",
            Self::ValidatorsAgree => "validators agree",
            Self::ValidatorsGoOn => "validators go on",
        })
    }
}

/// A property broken: by which node, when, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The run's seed.
    pub seed: u64,
    /// Simulated time since the start of the run.
    pub at: Duration,
    /// The node that broke it (`None`: the validators together).
    pub node: Option<Node>,
    /// The property.
    pub property: Property,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} at {:.3} s: {} broke \"{}\": {}",
            self.seed,
            self.at.as_secs_f64(),
            self.node
                .map_or_else(|| "the validators".to_string(), |node| node.to_string()),
            self.property,
            self.detail
        )
    }
}

/// What the validators finalized at one height: one block, and every certificate of it they
/// hold. A block can have several: the last block of an epoch is proposed again in the views
/// after it until the epoch ends (marshal's inline wrapper), and each of those views finalizes
/// it anew, in its own round.
#[derive(Clone, Debug, Default)]
struct Finalized {
    hash: B256,
    certificates: BTreeSet<String>,
}

/// What one follower was seen serving.
#[derive(Clone, Debug, Default)]
struct Served {
    /// Every height seen, with its block's hash.
    blocks: BTreeMap<u64, B256>,
    /// Certificates seen, by height, not yet compared (the validators' is not known yet).
    certificates: BTreeMap<u64, String>,
    /// Heights read up to.
    scanned: u64,
    /// The highest height seen served.
    highest: u64,
    /// Blocks seen that no validator holds yet, by height.
    unknown: BTreeSet<u64>,
    /// The first scan after a start must find everything served before.
    restarted: bool,
}

/// The observations of a run, kept across power cuts.
#[derive(Clone, Debug)]
pub struct Observer {
    seed: u64,
    reference: BTreeMap<u64, Finalized>,
    makers_scanned: BTreeMap<Node, u64>,
    followers: BTreeMap<usize, Served>,
    /// Violations found so far.
    pub violations: Vec<Violation>,
}

impl Observer {
    /// An observer of the run of `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            reference: BTreeMap::new(),
            makers_scanned: BTreeMap::new(),
            followers: BTreeMap::new(),
            violations: Vec::new(),
        }
    }

    /// Records a violation (once per node and property).
    pub fn violated(
        &mut self,
        at: Duration,
        node: Option<Node>,
        property: Property,
        detail: String,
    ) {
        if self
            .violations
            .iter()
            .any(|seen| seen.node == node && seen.property == property)
        {
            return;
        }
        self.violations.push(Violation {
            seed: self.seed,
            at,
            node,
            property,
            detail,
        });
    }

    /// The highest height a validator was seen finalizing.
    pub fn tip(&self) -> u64 {
        self.reference.keys().next_back().copied().unwrap_or(0)
    }

    /// The highest height follower `index` was seen serving.
    pub fn served_height(&self, index: usize) -> u64 {
        self.followers
            .get(&index)
            .map_or(0, |served| served.highest)
    }

    /// A validator or the producer started again: its store is read again from the start.
    pub fn maker_started(&mut self, node: Node) {
        self.makers_scanned.insert(node, 0);
    }

    /// Follower `index` started again: its next scan reads everything again and must find
    /// what it served before.
    pub fn follower_started(&mut self, index: usize) {
        let served = self.followers.entry(index).or_default();
        served.scanned = 0;
        served.restarted = true;
    }

    /// Reads what a validator or the producer finalized since the last look.
    pub async fn scan_maker(&mut self, at: Duration, maker: Node, chain: &impl ChainReader) {
        let node = Some(maker);
        let from = self.makers_scanned.get(&maker).copied().unwrap_or(0) + 1;
        let Some(to) = chain.finalized_height() else {
            return;
        };
        for height in from..=to {
            let Ok(Some(block)) = chain.block_at(height).await else {
                // Stored blocks come in order; a gap is read again next time.
                break;
            };
            let certificate = match chain.certified_at(height).await {
                Ok(certified) => certified.map(|certified| certified.certificate),
                Err(_) => break,
            };
            let hash = B256::from(block.hash().0);
            let known = self.reference.entry(height).or_insert_with(|| Finalized {
                hash,
                certificates: BTreeSet::new(),
            });
            let mut disagreement = None;
            if known.hash == hash {
                known.certificates.extend(certificate);
            } else {
                disagreement = Some(format!(
                    "height {height}: {hash} where another validator has {}",
                    known.hash
                ));
            }
            if let Some(detail) = disagreement {
                self.violated(at, node, Property::ValidatorsAgree, detail);
            }
            self.makers_scanned.insert(maker, height);
        }
    }

    /// Reads what follower `index` serves since the last look, and checks it against the
    /// validators' chain.
    pub async fn scan_follower(&mut self, at: Duration, index: usize, chain: &impl ChainReader) {
        let node = Some(Node::Follower(index));
        let mut served = self.followers.remove(&index).unwrap_or_default();
        let to = chain.finalized_height().unwrap_or(0);
        if served.restarted {
            served.restarted = false;
            if to < served.highest {
                let detail = format!(
                    "served height {} before it stopped, serves only {to} after",
                    served.highest
                );
                self.violated(at, node, Property::KeepsWhatItServed, detail);
            }
        }
        for height in served.scanned + 1..=to {
            let block = match chain.block_at(height).await {
                Ok(Some(block)) => block,
                Ok(None) => {
                    let detail = format!("serves height {to} but holds no block at {height}");
                    self.violated(at, node, Property::KeepsWhatItServed, detail);
                    break;
                }
                Err(_) => break,
            };
            let hash = B256::from(block.hash().0);
            match served.blocks.insert(height, hash) {
                Some(before) if before != hash => {
                    let detail = format!("height {height}: {before}, then {hash}");
                    self.violated(at, node, Property::ServesEachHeightOnce, detail);
                }
                _ => {}
            }
            if let Ok(Some(certified)) = chain.certified_at(height).await {
                if certified.digest != hash {
                    let detail = format!(
                        "height {height}: a certificate for {} served with block {hash}",
                        certified.digest
                    );
                    self.violated(at, node, Property::ServesTheFinalizedChain, detail);
                }
                served.certificates.insert(height, certified.certificate);
            }
            served.unknown.insert(height);
            served.scanned = height;
            served.highest = served.highest.max(height);
        }
        self.compare(at, index, &mut served, false);
        self.followers.insert(index, served);
    }

    /// Compares what follower `index` served with the validators' chain where it is known;
    /// `last` when nothing more will be learnt (what is still unknown is a violation).
    fn compare(&mut self, at: Duration, index: usize, served: &mut Served, last: bool) {
        let node = Some(Node::Follower(index));
        let mut found = Vec::new();
        for height in std::mem::take(&mut served.unknown) {
            match self.reference.get(&height) {
                Some(finalized) if served.blocks.get(&height) == Some(&finalized.hash) => {}
                Some(finalized) => found.push(format!(
                    "height {height}: serves {:?}, the validators finalized {}",
                    served.blocks.get(&height),
                    finalized.hash
                )),
                None if last => found.push(format!(
                    "height {height}: serves a block no validator finalized"
                )),
                None => {
                    served.unknown.insert(height);
                }
            }
        }
        let certificates = std::mem::take(&mut served.certificates);
        for (height, certificate) in certificates {
            let held = self
                .reference
                .get(&height)
                .is_some_and(|finalized| finalized.certificates.contains(&certificate));
            if held {
                continue;
            }
            if last {
                found.push(format!(
                    "height {height}: serves a certificate no validator holds"
                ));
            } else {
                served.certificates.insert(height, certificate);
            }
        }
        if let Some(first) = found.first() {
            let detail = if found.len() > 1 {
                format!("{first} (and {} more)", found.len() - 1)
            } else {
                first.clone()
            };
            self.violated(at, node, Property::ServesTheFinalizedChain, detail);
        }
    }

    /// The last checks of follower `index`: nothing it served is left unmatched, and every
    /// certified height's key came from its epoch's boundary (epoch 0's from genesis).
    pub async fn finish_follower(
        &mut self,
        at: Duration,
        index: usize,
        chain: Option<&impl ChainReader>,
        epoch_length: u64,
    ) {
        let mut served = self.followers.remove(&index).unwrap_or_default();
        self.compare(at, index, &mut served, true);
        self.followers.insert(index, served);
        let Some(chain) = chain else {
            return;
        };
        let node = Some(Node::Follower(index));
        let to = chain.finalized_height().unwrap_or(0);
        for height in 1..=to {
            let Ok(Explained::Block(explanation)) = chain.explain(height).await else {
                continue;
            };
            let (Authentication::Certificate { certificate }
            | Authentication::ParentHash { certificate, .. }) = explanation.authentication
            else {
                continue;
            };
            let epoch = certificate.epoch;
            let wrong = match certificate.key_from {
                KeyOrigin::GenesisOutcome if epoch == 0 => None,
                KeyOrigin::Boundary {
                    height: boundary,
                    hash,
                } if epoch > 0 && boundary + 1 == epoch * epoch_length => {
                    let finalized = self.reference.get(&boundary).map(|f| f.hash);
                    match (hash, finalized) {
                        (Some(hash), Some(finalized)) if B256::from(hash.0) != finalized => {
                            Some(format!(
                                "epoch {epoch}'s key came from boundary {boundary} with hash {hash}, the validators finalized {finalized}"
                            ))
                        }
                        _ => None,
                    }
                }
                other => Some(format!("epoch {epoch}'s key came from {other:?}")),
            };
            if let Some(detail) = wrong {
                self.violated(
                    at,
                    node,
                    Property::KeysFromBoundaries,
                    format!("height {height}: {detail}"),
                );
            }
        }
    }
}
