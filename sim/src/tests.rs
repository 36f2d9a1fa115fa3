//! The harness itself: a seed replays exactly, seeds differ, and a broken follower is caught.

use crate::{Action, FollowerKind, Node, Plan, Property, Rates, Simulation};
use cairn_devnet::faults::Fault;
use std::time::Duration;

const fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// Three validators, a cairn follower of all of them and a second follower of `kind` of
/// validator 0 and the first follower, under `plan`.
fn network(kind: FollowerKind, plan: Plan) -> Simulation {
    Simulation::new(3)
        .follower(&[Node::Validator(0), Node::Validator(1), Node::Validator(2)])
        .follower_of_kind(&[Node::Validator(0), Node::Follower(0)], kind)
        .plan(plan)
}

#[test]
fn a_seed_replays_exactly_and_another_seed_runs_differently() {
    let simulation = network(
        FollowerKind::Cairn,
        Plan::new()
            .at(secs(3), Action::Crash(Node::Follower(0)))
            .at(secs(5), Action::Restart(Node::Follower(0)))
            .healed_by(secs(8), secs(30)),
    );
    let first = simulation.run(3).expect("runs");
    let again = simulation.run(3).expect("runs");
    let other = simulation.run(4).expect("runs");
    assert!(first.violations.is_empty(), "{first}");
    assert_eq!(first.digest, again.digest);
    assert_eq!((first.tip, &first.followers), (again.tip, &again.followers));
    assert_ne!(first.digest, other.digest);
}

#[test]
fn a_follower_that_serves_what_it_did_not_verify_is_caught() {
    // Validator 0's RPC serves blocks other than the ones their certificates sign: the
    // trusting relay serves them, cairn's follower refuses them.
    let plan = Plan::new()
        .at(
            secs(2),
            Action::Lie {
                node: Node::Validator(0),
                mode: Fault::WrongDigest(1.0),
            },
        )
        .healed_by(secs(8), secs(30));
    let report = network(FollowerKind::TrustingRelay, plan)
        .run(5)
        .expect("runs");
    let caught: Vec<_> = report
        .violations
        .iter()
        .filter(|violation| violation.node == Some(Node::Follower(1)))
        .map(|violation| violation.property)
        .collect();
    assert!(
        caught.contains(&Property::ServesTheFinalizedChain),
        "{report}"
    );
    assert!(
        report
            .violations
            .iter()
            .all(|v| v.node == Some(Node::Follower(1))),
        "only the broken follower breaks a property: {report}"
    );
}

#[test]
fn a_follower_that_acknowledges_blocks_before_they_are_durable_is_caught_by_a_power_cut() {
    // The trusting relay keeps what it serves in memory: after the power cut it has lost it.
    let plan = Plan::new()
        .at(secs(5), Action::PowerCut { kept: 0.5 })
        .healed_by(secs(8), secs(30));
    let report = network(FollowerKind::TrustingRelay, plan)
        .run(6)
        .expect("runs");
    let lost = report.violations.iter().any(|violation| {
        violation.node == Some(Node::Follower(1))
            && violation.property == Property::KeepsWhatItServed
    });
    assert!(lost, "{report}");
    assert!(
        report
            .violations
            .iter()
            .all(|v| v.node == Some(Node::Follower(1))),
        "cairn's follower kept everything across the power cut: {report}"
    );
}

#[test]
fn followers_of_the_producer_follow_its_identity_rotations_through_a_crash_a_lie_and_a_power_cut() {
    let plan = Plan::new()
        .at(
            secs(2),
            Action::Lie {
                node: Node::Producer,
                mode: Fault::BadSignature(0.5),
            },
        )
        .at(secs(3), Action::Crash(Node::Follower(0)))
        .at(secs(5), Action::Restart(Node::Follower(0)))
        .at(secs(6), Action::Honest(Node::Producer))
        .at(secs(7), Action::PowerCut { kept: 0.5 })
        .healed_by(secs(10), secs(30));
    let report = Simulation::producer(5, 4)
        .full_dkg_at(&[2, 4, 6])
        .follower(&[Node::Producer])
        .follower(&[Node::Follower(0), Node::Producer])
        .plan(plan)
        .run(8)
        .expect("runs");
    assert!(report.violations.is_empty(), "{report}");
    // Past the third full DKG (epochs of 10 blocks).
    assert!(report.tip > 60, "{report}");
    assert!(report.caught_up_after.is_some(), "{report}");
}

#[test]
fn setups_that_cannot_run_are_refused_naming_why() {
    let err = Simulation::new(3).committee(4).run(0).expect_err("refused");
    assert_eq!(err.to_string(), "3 validators cannot form committees of 4");
    let err = Simulation::new(3)
        .epoch_length(5)
        .run(0)
        .expect_err("refused");
    assert!(err.to_string().contains("at least 10"), "{err}");
    let err = Simulation::new(3)
        .follower(&[Node::Follower(0)])
        .run(0)
        .expect_err("refused");
    assert!(
        err.to_string().contains("follower 0 follows follower 0"),
        "{err}"
    );
    let err = Simulation::new(3)
        .plan(Plan::new().at(secs(1), Action::Crash(Node::Validator(3))))
        .run(0)
        .expect_err("refused");
    assert!(err.to_string().contains("validator 3"), "{err}");
    let err = Simulation::producer(4, 4)
        .plan(Plan::new().at(secs(1), Action::Partition(vec![vec![0], vec![1]])))
        .run(0)
        .expect_err("refused");
    assert!(err.to_string().contains("validator 0"), "{err}");
    let err = Simulation::new(3)
        .follower(&[Node::Producer])
        .run(0)
        .expect_err("refused");
    assert!(err.to_string().contains("follows the producer"), "{err}");
}

/// Random plans, as `cairn-sim --seeds 0..50` draws them, two at a time.
#[test]
fn fifty_random_seeds_keep_every_property() {
    let rates = Rates::default();
    let seeds: Vec<u64> = (0..50).collect();
    let reports: Vec<_> = std::thread::scope(|scope| {
        let halves: Vec<_> = seeds
            .chunks(25)
            .map(|seeds| {
                let rates = &rates;
                scope.spawn(move || {
                    seeds
                        .iter()
                        .map(|seed| Simulation::random(*seed, rates).run(*seed).expect("runs"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves
            .into_iter()
            .flat_map(|half| half.join().expect("the seeds ran"))
            .collect()
    });
    let broken: Vec<String> = reports
        .iter()
        .filter(|report| !report.violations.is_empty())
        .map(ToString::to_string)
        .collect();
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    assert!(
        reports
            .iter()
            .all(|report| report.caught_up_after.is_some())
    );
}
