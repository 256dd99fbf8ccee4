//! Thirty runners: a join or a leave moves only the shards rendezvous hashing gives to, or
//! takes from, that runner (about 1/N of them), and the cluster is balanced again within a
//! few lock-refresh rounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cruster::prelude::*;
use cruster::testing::MemoryCluster;
use cruster::types::{RunnerAddress, ShardId};

const RUNNERS: usize = 30;

fn owners(cluster: &MemoryCluster) -> HashMap<ShardId, RunnerAddress> {
    let mut owners = HashMap::new();
    for runner in cluster.running() {
        for shard in runner.owned_shards() {
            let previous = owners.insert(shard.clone(), runner.runner_address().clone());
            assert!(previous.is_none(), "shard {shard} held twice");
        }
    }
    owners
}

fn moved(
    before: &HashMap<ShardId, RunnerAddress>,
    after: &HashMap<ShardId, RunnerAddress>,
) -> Vec<(ShardId, Option<RunnerAddress>, RunnerAddress)> {
    after
        .iter()
        .filter(|(shard, owner)| before.get(*shard) != Some(*owner))
        .map(|(shard, owner)| (shard.clone(), before.get(shard).cloned(), owner.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_or_leave_of_one_in_thirty_moves_only_its_own_shards() {
    let ttl = Duration::from_millis(600);
    let cluster = MemoryCluster::builder()
        .runners(RUNNERS)
        .config(ShardingConfig {
            runner_lock_ttl: ttl,
            storage_poll_interval: Duration::from_millis(200),
            shutdown_timeout: Duration::from_millis(200),
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    cluster
        .wait_until_balanced(Duration::from_secs(30))
        .await
        .unwrap();
    let before = owners(&cluster);
    assert_eq!(before.len(), 300);

    // A 31st runner joins.
    let joined_at = Instant::now();
    cluster.start_runner(RUNNERS).await.unwrap();
    cluster
        .wait_until_balanced(Duration::from_secs(30))
        .await
        .unwrap();
    let join_took = joined_at.elapsed();
    let after_join = owners(&cluster);
    let newcomer = MemoryCluster::address(RUNNERS);
    let moves = moved(&before, &after_join);
    assert!(
        moves.iter().all(|(_, _, to)| *to == newcomer),
        "a join moved shards between old runners: {:?}",
        moves
            .iter()
            .filter(|(_, _, to)| *to != newcomer)
            .collect::<Vec<_>>()
    );
    let expected = 300 / (RUNNERS + 1);
    assert!(
        moves.len() >= expected / 3 && moves.len() <= expected * 3,
        "a join moved {} shards; about {expected} expected",
        moves.len()
    );

    // Runner 5 leaves gracefully.
    let leaver = MemoryCluster::address(5);
    let its_shards = after_join.values().filter(|o| **o == leaver).count();
    let left_at = Instant::now();
    cluster.stop_runner(5).await.unwrap();
    cluster
        .wait_until_balanced(Duration::from_secs(30))
        .await
        .unwrap();
    let leave_took = left_at.elapsed();
    let after_leave = owners(&cluster);
    let moves = moved(&after_join, &after_leave);
    assert!(
        moves
            .iter()
            .all(|(_, from, _)| from.as_ref() == Some(&leaver)),
        "a leave moved shards that were not the leaver's"
    );
    assert_eq!(
        moves.len(),
        its_shards,
        "every shard of the leaver moved, and only those"
    );
    eprintln!(
        "30 runners: join moved {} shards in {join_took:?}; leave moved {its_shards} in {leave_took:?} (lock TTL {ttl:?})",
        moved(&before, &after_join).len()
    );
    // How long each took is printed, not asserted (a loaded 2-core machine stretches it);
    // `wait_until_balanced` bounds both.
    cluster.shutdown().await.unwrap();
}
