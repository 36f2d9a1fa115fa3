//! The example to copy: three validators and two followers (one following the other), a
//! partition, a crash and a failing disk, and every property checked.

use cairn_sim::{Action, Node, Plan, Simulation, StorageFaults};
use std::time::Duration;

const fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

#[test]
fn followers_keep_every_property_through_a_partition_a_crash_and_a_failing_disk() {
    let plan = Plan::new()
        // Validator 0 cut off: committees of three need all three, so the chain waits.
        .at(secs(4), Action::Partition(vec![vec![0], vec![1, 2]]))
        .at(secs(8), Action::Heal)
        .at(secs(10), Action::Crash(Node::Follower(0)))
        .at(secs(14), Action::Restart(Node::Follower(0)))
        .at(
            secs(16),
            Action::StorageFaults(StorageFaults::failing(0.05)),
        )
        .at(secs(19), Action::StorageHealed)
        .healed_by(secs(20), secs(60));
    let report = Simulation::new(3)
        .follower(&[Node::Validator(0), Node::Validator(1), Node::Validator(2)])
        .follower(&[Node::Follower(0), Node::Validator(2)])
        .plan(plan)
        .run(7)
        .expect("a valid setup");
    assert!(report.violations.is_empty(), "{report}");
    assert!(report.caught_up_after.is_some(), "{report}");
    assert!(
        report
            .followers
            .iter()
            .all(|height| height + 2 >= report.tip),
        "{report}"
    );
    assert!(report.tip > 30, "{report}");
}
