//! Validators in the deterministic runtime over commonware-p2p's simulated network: real simplex,
//! real reshare ceremonies every epoch, Tempo blocks.

use super::{Marshal, NAMESPACE, Scheme};
use crate::{
    block::ValidatorBlock,
    committee::Committees,
    simulated::{SimulatedChain, SimulatedValidator as Launched, Timeouts, launch},
};
use cairn_devnet::ChainStore;
use cairn_dkg::{DkgOutcome, OutcomeLayout, OutcomeLimits};
use cairn_feed::{ChainReader as _, FeedState};
use cairn_follow::{
    Engine, EngineConfig, Upstreams,
    upstream::{Sources, in_process},
};
use commonware_consensus::{
    CertifiableBlock as _,
    types::{Epoch, Height},
};
use commonware_cryptography::{Signer as _, ed25519};
use commonware_glue::dkg::{
    ReshareBlock as _,
    types::{EpochOutcome, Payload},
};
use commonware_p2p::{Manager as _, simulated};
use commonware_runtime::{Clock as _, Runner as _, Spawner as _, Supervisor as _, deterministic};
use commonware_utils::{NZUsize, Probability, ordered::Set};
use rand::{SeedableRng as _, rngs::StdRng};
use std::time::Duration;

const EPOCH_LENGTH: u64 = 20;
const POOL: u64 = 5;
const COMMITTEE: usize = 4;

/// A cairn follower of `validator`, through the in-process upstream (the same actor, sources
/// and verification as over a socket).
async fn follow(
    context: &deterministic::Context,
    validator: &Launched,
    genesis: &ValidatorBlock,
) -> Engine<deterministic::Context> {
    let (notifications, receiver) = tokio::sync::mpsc::channel(256);
    let (actor, upstream) = in_process::init(
        "validator",
        0,
        validator.feed.clone(),
        validator.store.clone(),
        notifications,
    );
    context
        .child("upstream")
        .spawn(|context| actor.run(context));
    Engine::init(
        context.child("follower"),
        EngineConfig {
            partition_prefix: "follower".into(),
            ..EngineConfig::new(
                crate::chain_profile("validators", 1337, EPOCH_LENGTH, genesis)
                    .expect("the genesis outcome decodes"),
            )
        },
        Upstreams {
            notifications: receiver,
            sources: Sources::single("validator", upstream),
        },
    )
    .await
    .expect("the follower starts")
}

/// The height `marshal` has processed.
async fn height_of(marshal: &Marshal) -> u64 {
    marshal
        .get_processed()
        .await
        .map_or(0, |processed| processed.height().get())
}

/// Waits until every marshal has processed `height`.
async fn processed(context: &deterministic::Context, marshals: &[Marshal], height: u64) {
    loop {
        let mut lowest = u64::MAX;
        for marshal in marshals {
            lowest = lowest.min(height_of(marshal).await);
        }
        if lowest >= height {
            return;
        }
        context.sleep(Duration::from_millis(500)).await;
    }
}

/// The validators' network in the deterministic runtime: the chain and the simulated network
/// with every pair linked.
struct Simulation {
    context: deterministic::Context,
    oracle: simulated::Oracle<ed25519::PublicKey, deterministic::Context>,
    chain: SimulatedChain,
}

impl Simulation {
    async fn new(context: deterministic::Context) -> Self {
        let chain = SimulatedChain::new(7, POOL as usize, COMMITTEE, EPOCH_LENGTH);
        assert!(chain.genesis.payload() == Some(Payload::EpochInfo(chain.info.clone())));
        let (network, oracle) = simulated::Network::new(
            context.child("network"),
            simulated::Config {
                max_size: 4 * 1024 * 1024,
                max_peers_per_set: NZUsize!(POOL as usize),
                disconnect_on_block: true,
                tracked_peer_sets: NZUsize!(3),
            },
        );
        network.start();
        let everyone: Set<ed25519::PublicKey> = Set::from_iter_dedup(chain.pool());
        oracle.manager().track(0, everyone.clone());
        let link = simulated::Link {
            latency: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            success_rate: Probability::new(1, 1).expect("a probability"),
        };
        for a in &everyone {
            for b in &everyone {
                if a != b {
                    oracle
                        .add_link(a.clone(), b.clone(), link.clone())
                        .await
                        .expect("linked");
                }
            }
        }
        Self {
            context,
            oracle,
            chain,
        }
    }

    /// Starts validator `index` (again, after a crash: its stores are where it left them).
    async fn launch(&self, index: usize, run: usize) -> Launched {
        let context = self
            .context
            .child("validator")
            .with_attribute("index", index)
            .with_attribute("run", run);
        launch(
            context,
            &self.chain,
            &self.oracle,
            index,
            Timeouts::default(),
        )
        .await
        .expect("the validator starts")
    }
}

#[test]
fn five_validators_in_committees_of_four_finalize_three_epochs_resharing_the_same_key() {
    let config = deterministic::Config::new()
        .with_seed(11)
        .with_timeout(Some(Duration::from_secs(3_600)));
    deterministic::Runner::new(config).start(|context| async move {
        let simulation = Simulation::new(context.child("simulation")).await;
        let (committees, info, genesis) = (
            simulation.chain.committees.clone(),
            simulation.chain.info.clone(),
            simulation.chain.genesis.clone(),
        );
        let mut validators = Vec::new();
        for index in 0..POOL as usize {
            validators.push(simulation.launch(index, 0).await);
        }
        let marshals: Vec<Marshal> = validators.iter().map(|v| v.marshal.clone()).collect();
        let served: Vec<(ChainStore<_>, FeedState)> = validators
            .iter()
            .map(|v| (v.store.clone(), v.feed.clone()))
            .collect();

        let follower = follow(&context, &validators[0], &genesis).await;

        let tip = 3 * EPOCH_LENGTH;
        processed(&context, &marshals, tip).await;
        while *follower.executed.borrow() < tip {
            context.sleep(Duration::from_millis(500)).await;
        }

        // What each validator serves, and what the follower serves, is the same chain, byte
        // for byte, certificates included.
        for height in 1..=tip {
            let mut answers = Vec::new();
            for (store, _) in &served {
                answers.push(store.certified_at(height).await.expect("reads"));
            }
            answers.push(follower.chain.certified_at(height).await.expect("reads"));
            let first = answers[0].clone().expect("validator 0 serves the height");
            assert!(
                answers.iter().all(|answer| answer.as_ref() == Some(&first)),
                "height {height} is served alike"
            );
        }
        // The follower registered each epoch's key from the boundaries: one identity throughout.
        for epoch in 0..=3 {
            assert!(
                follower.provider.registered_identity(Epoch::new(epoch))
                    == Some(*info.output.public().public()),
                "epoch {epoch}'s key"
            );
        }

        // Every validator holds the same blocks; each epoch's final block announces the next
        // epoch's players under the same key, readable by Tempo's outcome reader.
        let identity = *info.output.public().public();
        let mut proposers = std::collections::HashSet::new();
        for height in 1..=tip {
            let mut seen: Option<ValidatorBlock> = None;
            for marshal in &marshals {
                let block = marshal
                    .get_block(Height::new(height))
                    .await
                    .expect("every validator has the block")
                    .inner()
                    .clone();
                if let Some(first) = &seen {
                    assert!(*first == block, "validators differ at height {height}");
                } else {
                    seen = Some(block);
                }
            }
            let block = seen.expect("a block");
            assert!(
                !block.block().transactions().is_empty(),
                "block {height} carries signed transactions"
            );
            proposers.insert(
                block
                    .block()
                    .header()
                    .consensus_context
                    .expect("context")
                    .proposer,
            );
            if (height + 1) % EPOCH_LENGTH == 0 {
                let Some(Payload::EpochInfo(next)) = block.payload() else {
                    panic!("block {height} closes an epoch without the next one's information");
                };
                let epoch = (height + 1) / EPOCH_LENGTH;
                assert_eq!(next.epoch.get(), epoch);
                assert!(
                    matches!(next.outcome, EpochOutcome::Success),
                    "the ceremony of epoch {} succeeded",
                    epoch - 1
                );
                assert_eq!(
                    *next.output.public().public(),
                    identity,
                    "reshared, same key"
                );
                // The committees rotate: the ceremony's players (this epoch's dealers) are
                // the previous epoch's players, and the epoch's own players the next window.
                assert_eq!(next.output.players(), &committees.players(epoch - 1));
                assert_eq!(next.players, committees.players(epoch));
                assert_eq!(next.next_players, committees.players(epoch + 1));
                let extra = block.block().header().inner.extra_data.clone();
                let (outcome, _) = DkgOutcome::decode_boundary(
                    &extra,
                    OutcomeLayout::Legacy,
                    &OutcomeLimits::default(),
                )
                .expect("Tempo's reader reads it");
                assert_eq!(outcome.identity(), &identity);
            }
        }
        assert!(proposers.len() > 1, "leaders rotate: {proposers:?}");
        let finalization = marshals[0]
            .get_finalization(Height::new(tip))
            .await
            .expect("finalized");
        let verifier = Scheme::certificate_verifier(NAMESPACE, identity);
        assert!(
            finalization.verify(
                &mut StdRng::seed_from_u64(1),
                &verifier,
                &commonware_parallel::Sequential
            ),
            "the certificate verifies with the network identity"
        );
    });
}

#[test]
fn a_validator_killed_for_ten_seconds_leaves_skipped_views_and_catches_up_on_restart() {
    let config = deterministic::Config::new()
        .with_seed(12)
        .with_timeout(Some(Duration::from_secs(3_600)));
    deterministic::Runner::new(config).start(|context| async move {
        let simulation = Simulation::new(context.child("simulation")).await;
        let genesis = simulation.chain.genesis.clone();
        let mut validators = Vec::new();
        for index in 0..POOL as usize {
            validators.push(simulation.launch(index, 0).await);
        }
        let follower = follow(&context, &validators[0], &genesis).await;
        processed(&context, &[validators[0].marshal.clone()], EPOCH_LENGTH + 5).await;

        // Validator 3, in the committees of epochs 1 and 2, is killed for ten seconds.
        const VICTIM: usize = 3;
        let killed = validators.remove(VICTIM);
        killed.handle.abort();
        drop(killed);
        let at_kill = height_of(&validators[0].marshal).await;
        context.sleep(Duration::from_secs(10)).await;
        let after = height_of(&validators[0].marshal).await;
        assert!(
            after > at_kill + 3,
            "the chain goes on: {at_kill} -> {after}"
        );
        let followed = *follower.executed.borrow();
        assert!(
            followed + 3 >= after,
            "the follower keeps up: {followed} of {after}"
        );

        validators.insert(VICTIM, simulation.launch(VICTIM, 1).await);
        let tip = 4 * EPOCH_LENGTH;
        let marshals: Vec<Marshal> = validators.iter().map(|v| v.marshal.clone()).collect();
        processed(&context, &marshals, tip).await;

        // Views were skipped while it was down (its turns as leader timed out), and every
        // validator, the restarted one included, holds and serves the same blocks.
        let (mut skipped, mut views_skipped) = (0, 0);
        for height in 1..=tip {
            let block = marshals[0]
                .get_block(Height::new(height))
                .await
                .expect("validator 0 has the block")
                .inner()
                .clone();
            for marshal in &marshals[1..] {
                let other = marshal.get_block(Height::new(height)).await.expect("held");
                assert!(
                    *other.inner() == block,
                    "validators differ at height {height}"
                );
            }
            let served = validators[VICTIM].store.block(height).await.expect("reads");
            assert_eq!(served.as_ref(), Some(block.block()), "served at {height}");
            let context = block.context();
            let gap = context.round.view().get() - context.parent.0.get() - 1;
            views_skipped += gap;
            if height > at_kill && gap > 0 {
                skipped += 1;
            }
        }
        assert!(skipped > 0, "views were skipped after the kill");

        // The status pages tell the same: validator 0 counted every skipped view and holds a
        // certificate for most blocks; the restarted one rebuilt its committees and identity
        // from the boundaries it had stored, and knows whether it signs.
        let first = validators[0].board.snapshot();
        assert!(first.verified_height >= tip, "{first:?}");
        assert!(first.skipped_views >= views_skipped, "{first:?}");
        assert_eq!(first.served, first.verified_height, "{first:?}");
        assert!(
            first.certified <= first.served && first.certified > 0,
            "{first:?}"
        );
        let epochs: Vec<u64> = first.committees.iter().map(|c| c.epoch).collect();
        assert_eq!(
            epochs,
            (0..epochs.len() as u64).collect::<Vec<_>>(),
            "one per epoch"
        );
        let restarted = validators[VICTIM].board.snapshot();
        assert!(restarted.verified_height >= tip, "{restarted:?}");
        assert_eq!(restarted.identities.len(), 1, "{restarted:?}");
        assert_eq!(restarted.identities[0].boundary, None);
        let epochs: Vec<u64> = restarted.committees.iter().map(|c| c.epoch).collect();
        let expected: Vec<u64> = (0..=restarted.epoch + 1).collect();
        assert!(
            epochs == expected || epochs == expected[..expected.len() - 1],
            "{epochs:?} for epoch {}",
            restarted.epoch
        );
        let pool = simulation.chain.pool();
        let signs = Committees::new(pool, COMMITTEE)
            .players(restarted.epoch)
            .position(&simulation.chain.keys[VICTIM].public_key())
            .is_some();
        assert_eq!(restarted.in_committee, signs, "{restarted:?}");
        while *follower.executed.borrow() < tip {
            context.sleep(Duration::from_millis(500)).await;
        }
    });
}
