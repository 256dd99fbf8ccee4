//! Rendezvous (highest-random-weight) shard assignment.
//!
//! Owns nothing but a pure function: every runner computes the same owner for a shard from
//! the same sorted runner list, and a membership change moves only the shards whose
//! highest-weight runner changed (those of the runner that came or went).

use cruster_sharding::ShardAssignment;
use cruster_types::{rendezvous_weight, RunnerAddress, ShardId};

/// The default [`ShardAssignment`]: for each shard, the runner with the highest
/// `rendezvous_weight(shard, runner)` wins.
///
/// ```
/// use cruster::{RendezvousAssignment, ShardAssignment};
/// use cruster::types::{RunnerAddress, ShardId};
/// let runners = vec![RunnerAddress::new("a", 1), RunnerAddress::new("b", 1)];
/// let owner = RendezvousAssignment.owner(&ShardId::new("default", 0), &runners);
/// assert!(owner.is_some());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct RendezvousAssignment;

impl ShardAssignment for RendezvousAssignment {
    fn owner<'a>(
        &self,
        shard: &ShardId,
        runners: &'a [RunnerAddress],
    ) -> Option<&'a RunnerAddress> {
        let shard_key = shard.to_string();
        runners
            .iter()
            .map(|runner| (rendezvous_weight(&shard_key, &runner.to_string()), runner))
            // Ties (astronomically unlikely) go to the smaller address, deterministically.
            .max_by(|(wa, ra), (wb, rb)| wa.cmp(wb).then_with(|| rb.cmp(ra)))
            .map(|(_, runner)| runner)
    }
}

/// The owners of shards `0..shards` of `group` among `runners` (sorted).
pub(crate) fn assign_group(
    strategy: &dyn ShardAssignment,
    group: &str,
    shards: u32,
    runners: &[RunnerAddress],
) -> Vec<Option<RunnerAddress>> {
    (0..shards)
        .map(|id| strategy.owner(&ShardId::new(group, id), runners).cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn runners(n: usize) -> Vec<RunnerAddress> {
        let mut v: Vec<_> = (0..n)
            .map(|i| RunnerAddress::new(format!("10.0.0.{i}"), 9000))
            .collect();
        v.sort();
        v
    }

    fn counts(owners: &[Option<RunnerAddress>]) -> HashMap<RunnerAddress, usize> {
        let mut map = HashMap::new();
        for owner in owners.iter().flatten() {
            *map.entry(owner.clone()).or_default() += 1;
        }
        map
    }

    #[test]
    fn no_runners_means_no_owner() {
        assert!(assign_group(&RendezvousAssignment, "g", 10, &[])
            .iter()
            .all(Option::is_none));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn assignment_is_deterministic(n in 1usize..8, shards in 1u32..400) {
            let r = runners(n);
            let mut shuffled = r.clone();
            shuffled.reverse();
            shuffled.sort();
            prop_assert_eq!(assign_group(&RendezvousAssignment, "g", shards, &r),
                            assign_group(&RendezvousAssignment, "g", shards, &shuffled));
        }

        #[test]
        fn assignment_is_balanced(n in 2usize..6) {
            let r = runners(n);
            let shards = 300u32;
            let owners = assign_group(&RendezvousAssignment, "default", shards, &r);
            let even = shards as f64 / n as f64;
            for (runner, count) in counts(&owners) {
                let c = count as f64;
                prop_assert!(c > even * 0.6 && c < even * 1.4,
                    "runner {runner} owns {count} of {shards} shards with {n} runners (even share {even:.1})");
            }
        }

        #[test]
        fn a_leaving_runner_moves_only_its_shards(n in 2usize..8, leave in 0usize..8) {
            let r = runners(n);
            let gone = r[leave % n].clone();
            let rest: Vec<_> = r.iter().filter(|a| **a != gone).cloned().collect();
            let before = assign_group(&RendezvousAssignment, "g", 300, &r);
            let after = assign_group(&RendezvousAssignment, "g", 300, &rest);
            for (b, a) in before.iter().zip(after.iter()) {
                if b.as_ref() != Some(&gone) {
                    prop_assert_eq!(b, a, "a shard not owned by the leaver moved");
                }
            }
        }

        #[test]
        fn a_joining_runner_takes_shards_only_for_itself(n in 1usize..7) {
            let r = runners(n);
            let newcomer = RunnerAddress::new("10.0.1.99", 9000);
            let mut more = r.clone();
            more.push(newcomer.clone());
            more.sort();
            let before = assign_group(&RendezvousAssignment, "g", 300, &r);
            let after = assign_group(&RendezvousAssignment, "g", 300, &more);
            for (b, a) in before.iter().zip(after.iter()) {
                if a.as_ref() != Some(&newcomer) {
                    prop_assert_eq!(b, a, "a shard moved between two old runners");
                }
            }
        }
    }
}
