//! Three in-process runners whose membership and shard locks live in PostgreSQL
//! (`SqlRunnerStorage`), with shared memory message storage and the in-process transport:
//! shards spread over the three; a killed runner's shards move to the survivors within
//! about `runner_lock_ttl` plus a poll interval; and at no sampled instant is a shard held
//! by two runners.
//!
//! Needs `DATABASE_URL` (CI sets it with `.ci/services.sh`); without it the test prints
//! `SKIPPED` and passes. It works in a schema of its own, dropped when it passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster::prelude::*;
use cruster::sqlx::{self, postgres::PgConnectOptions, postgres::PgPoolOptions, AssertSqlSafe};
use cruster::storage::memory::{InProcessNetwork, MemoryMessageStorage};
use cruster::storage::sql_runner::SqlRunnerStorage;
use cruster::types::{RunnerAddress, ShardId};

const RUNNERS: usize = 3;
const SHARDS: u32 = 60;
const TTL: Duration = Duration::from_secs(2);
/// How often the watchdog samples the lock table and the runners.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// A schema of its own in the database of `DATABASE_URL`.
struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    async fn create(url: String) -> TestSchema {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("cruster_runner_cluster_{}_{nanos}", std::process::id());
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        TestSchema { url, name }
    }

    /// A pool of `max` connections working in the schema.
    async fn pool(&self, max: u32) -> sqlx::PgPool {
        let options = PgConnectOptions::from_str(&self.url)
            .unwrap()
            .options([("search_path", self.name.as_str())]);
        PgPoolOptions::new()
            .max_connections(max)
            .min_connections(1)
            .connect_with(options)
            .await
            .unwrap()
    }

    async fn drop_schema(self) {
        let admin = sqlx::PgPool::connect(&self.url).await.unwrap();
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.name)))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
    }
}

fn address(i: usize) -> RunnerAddress {
    RunnerAddress::new("127.0.0.1", 9100 + i as u16)
}

/// The in-process cluster: the shared memory backends, and one `ShardingImpl` per slot,
/// each with a `SqlRunnerStorage` on a pool of its own (as separate processes would have).
struct Cluster {
    network: InProcessNetwork,
    messages: Arc<MemoryMessageStorage>,
    runners: Vec<Arc<ShardingImpl>>,
    alive: Vec<Arc<AtomicBool>>,
}

impl Cluster {
    async fn start(schema: &TestSchema) -> Cluster {
        let mut cluster = Cluster {
            network: InProcessNetwork::new(),
            messages: Arc::new(MemoryMessageStorage::new()),
            runners: Vec::new(),
            alive: Vec::new(),
        };
        for i in 0..RUNNERS {
            let storage = Arc::new(
                SqlRunnerStorage::new(schema.pool(4).await)
                    .with_statement_timeout(Duration::from_millis(500)),
            );
            let config = ShardingConfig {
                runner_address: address(i),
                shards_per_group: SHARDS,
                runner_lock_ttl: TTL,
                shutdown_timeout: Duration::from_secs(2),
                ..Default::default()
            };
            let sharding = ShardingImpl::builder()
                .config(config)
                .runners(Arc::new(cluster.network.runners()))
                .message_storage(cluster.messages.clone())
                .memory()
                .runner_storage(storage.clone())
                .runner_health(storage)
                .build()
                .unwrap();
            cluster.network.register(address(i), sharding.clone());
            sharding.start().await.unwrap();
            cluster.runners.push(sharding);
            cluster.alive.push(Arc::new(AtomicBool::new(true)));
        }
        cluster
    }

    /// Abrupt stop, as a crash: nothing released, nothing unregistered.
    fn kill(&self, i: usize) {
        self.alive[i].store(false, Ordering::SeqCst);
        self.network.unregister(&address(i));
        self.runners[i].kill();
    }

    /// What each running runner believes it holds.
    fn claims(&self) -> BTreeMap<RunnerAddress, BTreeSet<ShardId>> {
        self.runners
            .iter()
            .zip(&self.alive)
            .filter(|(_, alive)| alive.load(Ordering::SeqCst))
            .map(|(r, _)| {
                (
                    r.runner_address().clone(),
                    r.owned_shards().into_iter().collect(),
                )
            })
            .collect()
    }
}

/// The live locks in the table, by the database's clock: shard → owner.
async fn live_locks(pool: &sqlx::PgPool) -> BTreeMap<String, String> {
    sqlx::query_as::<_, (String, String)>(
        "SELECT shard, owner FROM cruster_shard_locks \
         WHERE expires_at_ms > (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// What the watchdog saw.
#[derive(Default, Debug)]
struct Observations {
    samples: usize,
    /// A shard claimed by two running runners at once.
    double_claims: Vec<String>,
    /// A shard a runner claimed (before and after the read) while the table said another
    /// runner held its live lock.
    claimed_against_the_table: Vec<String>,
    /// A shard a runner claimed (before and after the read) with no live lock at all.
    claimed_without_a_lock: Vec<String>,
}

/// Samples the runners and the lock table every `SAMPLE_EVERY` until `stop` is set.
async fn watchdog(
    cluster: Arc<Cluster>,
    pool: sqlx::PgPool,
    stop: Arc<AtomicBool>,
) -> Observations {
    let mut seen = Observations::default();
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let before = cluster.claims();
        let table = live_locks(&pool).await;
        let after = cluster.claims();
        let at = started.elapsed();
        seen.samples += 1;

        let mut holders: BTreeMap<&ShardId, Vec<&RunnerAddress>> = BTreeMap::new();
        for (runner, shards) in &after {
            for shard in shards {
                holders.entry(shard).or_default().push(runner);
            }
        }
        for (shard, runners) in holders.iter().filter(|(_, r)| r.len() > 1) {
            seen.double_claims
                .push(format!("{at:?}: {shard} claimed by {runners:?}"));
        }
        for (runner, shards) in &after {
            let Some(earlier) = before.get(runner) else {
                continue;
            };
            for shard in shards.intersection(earlier) {
                match table.get(&shard.to_string()) {
                    Some(owner) if *owner == runner.to_string() => {}
                    Some(owner) => seen.claimed_against_the_table.push(format!(
                        "{at:?}: {runner} serves {shard}, whose live lock {owner} holds"
                    )),
                    None => seen.claimed_without_a_lock.push(format!(
                        "{at:?}: {runner} serves {shard} without a live lock"
                    )),
                }
            }
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    seen
}

/// How long the spread must stay unchanged to count as settled (more than a rebalance
/// round, so a runner still handing shards over is not mistaken for balance).
const SETTLED_FOR: Duration = Duration::from_secs(1);

/// Waits until the lock table holds every shard, by exactly the `expected` runners, every
/// running runner knows exactly those runners and claims exactly the shards it holds in
/// the table, and this stays so for `SETTLED_FOR`. Returns when it was first reached.
async fn wait_for_spread(
    cluster: &Cluster,
    pool: &sqlx::PgPool,
    expected: &BTreeSet<RunnerAddress>,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let expected_names: BTreeSet<String> = expected.iter().map(ToString::to_string).collect();
    let mut settled_since: Option<(Instant, BTreeMap<String, String>)> = None;
    loop {
        let table = live_locks(pool).await;
        let claims = cluster.claims();
        let owners: BTreeSet<String> = table.values().cloned().collect();
        let claims_match = claims.iter().all(|(runner, shards)| {
            let in_table: BTreeSet<String> = table
                .iter()
                .filter(|(_, owner)| **owner == runner.to_string())
                .map(|(shard, _)| shard.clone())
                .collect();
            let claimed: BTreeSet<String> = shards.iter().map(ToString::to_string).collect();
            in_table == claimed
        });
        let membership_agrees = cluster
            .runners
            .iter()
            .zip(&cluster.alive)
            .filter(|(_, alive)| alive.load(Ordering::SeqCst))
            .all(|(r, _)| r.known_runners().into_iter().collect::<BTreeSet<_>>() == *expected);
        let spread = table.len() == SHARDS as usize
            && owners == expected_names
            && claims_match
            && membership_agrees;
        settled_since = match (spread, settled_since) {
            (false, _) => None,
            (true, Some((since, before))) if before == table => {
                if since.elapsed() >= SETTLED_FOR {
                    return since - started;
                }
                Some((since, before))
            }
            (true, _) => Some((Instant::now(), table.clone())),
        };
        assert!(
            started.elapsed() < within + SETTLED_FOR,
            "shards not spread over {expected:?} within {within:?}: {} live locks held by \
             {owners:?}; claims: {:?}",
            table.len(),
            claims
                .iter()
                .map(|(r, s)| (r.to_string(), s.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runner_shards_move_to_survivors_and_no_shard_is_ever_held_twice() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!(
            "\n==============================================================\n\
             SKIPPED: DATABASE_URL is not set, so this PostgreSQL test did not run.\n\
             Run `source .ci/services.sh` (CI always does) to start PostgreSQL.\n\
             ==============================================================\n"
        );
        return;
    };
    let schema = TestSchema::create(url).await;
    let observer = schema.pool(2).await;
    SqlRunnerStorage::new(observer.clone())
        .migrate()
        .await
        .unwrap();

    let cluster = Arc::new(Cluster::start(&schema).await);
    let stop = Arc::new(AtomicBool::new(false));
    let watch = tokio::spawn(watchdog(
        Arc::clone(&cluster),
        observer.clone(),
        Arc::clone(&stop),
    ));

    let everyone: BTreeSet<RunnerAddress> = (0..RUNNERS).map(address).collect();
    let spread = wait_for_spread(&cluster, &observer, &everyone, TTL * 5).await;
    let per_runner: Vec<usize> = cluster
        .runners
        .iter()
        .map(|r| r.owned_shards().len())
        .collect();
    eprintln!("spread over {RUNNERS} runners after {spread:?}: {per_runner:?} shards");
    for (i, held) in per_runner.iter().enumerate() {
        assert!(
            *held >= SHARDS as usize / RUNNERS / 2,
            "runner {i} holds only {held} of {SHARDS} shards: {per_runner:?}"
        );
    }

    let victim = 1;
    let victims_shards = cluster.runners[victim].owned_shards().len();
    cluster.kill(victim);
    let survivors: BTreeSet<RunnerAddress> =
        (0..RUNNERS).filter(|i| *i != victim).map(address).collect();
    // Registration expiry (TTL), the survivors' next membership poll (TTL / 4), the
    // victim's locks expiring (at most a TTL after its last refresh), a rebalance retry.
    let allowed = TTL * 2 + Duration::from_secs(2);
    let moved = wait_for_spread(&cluster, &observer, &survivors, allowed).await;
    assert!(
        moved <= allowed,
        "the killed runner's shards took {moved:?} to move (allowed {allowed:?})"
    );
    eprintln!(
        "the {victims_shards} shards of the killed runner moved to the survivors in {moved:?} \
         (runner_lock_ttl {TTL:?})"
    );

    // Keep watching a little after the move, then stop.
    tokio::time::sleep(TTL).await;
    stop.store(true, Ordering::SeqCst);
    let seen = watch.await.unwrap();
    eprintln!(
        "watchdog: {} samples; {} served without a live lock",
        seen.samples,
        seen.claimed_without_a_lock.len()
    );
    assert!(seen.samples > 20, "the watchdog barely ran: {seen:?}");
    assert!(
        seen.double_claims.is_empty(),
        "a shard was held by two runners at once: {:#?}",
        seen.double_claims
    );
    assert!(
        seen.claimed_against_the_table.is_empty(),
        "a runner served a shard whose lock another runner held: {:#?}",
        seen.claimed_against_the_table
    );
    assert!(
        seen.claimed_without_a_lock.is_empty(),
        "a runner served a shard whose lock had expired: {:#?}",
        seen.claimed_without_a_lock
    );

    for (i, runner) in cluster.runners.iter().enumerate() {
        if i != victim {
            runner.shutdown().await.unwrap();
        }
    }
    observer.close().await;
    schema.drop_schema().await;
}
