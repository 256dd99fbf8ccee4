//! Persisted sends to a cluster of three `cruster-node` runner processes on PostgreSQL
//! (gRPC between the runners and from this driver, `SqlRunnerStorage` for membership and
//! shard locks), beside a raw single-row INSERT + COMMIT measured in the same run on the
//! same database.
//!
//! ```text
//! cargo build --release -p cruster-tests --bin cruster-node
//! cargo run --release -p cruster-benches --bin cluster_load -- [callers] [seconds]
//! ```
//!
//! The runner binary is found beside this bench's executable (same `CARGO_TARGET_DIR`,
//! same profile) or at `CRUSTER_NODE_BIN`. Needs `DATABASE_URL`; works in a schema of its
//! own, dropped at the end. Every pool, the driver's and each runner's, has 10 connections
//! (sqlx's default).
//!
//! This process is the driver: a client-only runner (`runner_weight: 0`: it is in the
//! membership, so replies are pushed to it, but owns no shard) sending `LoadTarget::echo`, a persisted RPC whose
//! handler only answers, so what is measured is the delivery path: the request saved by
//! the driver, sent over gRPC to the shard's owner, handled, its reply stored, answered.
//!
//! Prints, each beside the reference:
//! * the persisted send round trip, one caller (p50, p99; target p50 ≤ 1.5 ms);
//! * acknowledged persisted sends/s with `callers` callers (64 by default) for `seconds`
//!   (20 by default) while two runners are SIGKILLed and restarted (target ≥ 3 000/s),
//!   with the same callers on the undisturbed cluster for comparison.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cruster::ports::runner_storage::RunnerStorage;
use cruster::prelude::*;
use cruster::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use cruster::sqlx::{self, AssertSqlSafe, PgPool};
use cruster::storage::sql_runner::SqlRunnerStorage;
use cruster::types::{EntityId, RunnerAddress, ShardId};
use cruster_benches::node_cluster::{node_binary, NodeCluster};
use cruster_tests::client_driver::ClientDriver;
use cruster_tests::node_app::LoadTargetClient;

const RUNNERS: usize = 3;
const SHARDS: u32 = 300;
const LOCK_TTL: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
const POOL_SIZE: u32 = 10;
const LATENCY_CALLS: usize = 2_000;
const REFERENCE_CALLS: usize = 20_000;
/// Entities the calls are spread over.
const ENTITIES: u64 = 1_024;
/// How long one call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    (at(0.50), at(0.99))
}

async fn schema_pool(url: &str, schema: &str) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)?.options([("search_path", schema)]);
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .connect_with(options)
        .await?;
    let warm = futures::future::try_join_all((0..POOL_SIZE).map(|_| pool.acquire())).await?;
    drop(warm);
    Ok(pool)
}

/// The reference: a raw single-row INSERT + COMMIT, one caller, then `callers` callers.
async fn reference(pool: &PgPool, callers: usize) -> anyhow::Result<(Duration, Duration, f64)> {
    sqlx::query("CREATE TABLE bench_raw (id TEXT PRIMARY KEY, body BYTEA)")
        .execute(pool)
        .await?;
    let insert = |pool: PgPool, id: String| async move {
        sqlx::query("INSERT INTO bench_raw (id, body) VALUES ($1, $2)")
            .bind(id)
            .bind(vec![0u8; 64])
            .execute(&pool)
            .await
    };
    let mut samples = Vec::with_capacity(LATENCY_CALLS);
    for i in 0..LATENCY_CALLS {
        let started = Instant::now();
        insert(pool.clone(), format!("s{i}")).await?;
        samples.push(started.elapsed());
    }
    let (p50, p99) = percentiles(samples);
    let per = REFERENCE_CALLS / callers;
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|t| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    insert(pool.clone(), format!("c{t}-{i}")).await?;
                }
                Ok::<_, sqlx::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let rate = (per * callers) as f64 / started.elapsed().as_secs_f64();
    Ok((p50, p99, rate))
}

/// Waits until every shard is locked by one of the `RUNNERS` runners and each holds some.
async fn wait_for_spread(
    storage: &dyn RunnerStorage,
    cluster: &NodeCluster,
    within: Duration,
) -> anyhow::Result<()> {
    let live: Vec<RunnerAddress> = (0..RUNNERS).map(|i| cluster.address(i)).collect();
    let deadline = Instant::now() + within;
    loop {
        let mut held = vec![0usize; RUNNERS];
        let mut unowned = 0;
        for shard in 0..SHARDS {
            match storage.shard_owner(&ShardId::new("default", shard)).await? {
                Some(owner) => match live.iter().position(|r| *r == owner) {
                    Some(i) => held[i] += 1,
                    None => unowned += 1,
                },
                None => unowned += 1,
            }
        }
        if unowned == 0 && held.iter().all(|&n| n > 0) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "shards not spread over the runners within {within:?}: {held:?}, {unowned} unowned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The driver: a client-only runner with a gRPC server for pushed replies.
async fn driver(pool: &PgPool, membership: Arc<dyn RunnerStorage>) -> anyhow::Result<ClientDriver> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let config = ShardingConfig {
        shards_per_group: SHARDS,
        runner_lock_ttl: LOCK_TTL,
        storage_poll_interval: POLL_INTERVAL,
        ..Default::default()
    };
    Ok(ClientDriver::start(listener, config, membership, pool, false).await?)
}

/// What a throughput run counted.
#[derive(Default)]
struct Counts {
    acked: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
}

/// `callers` callers sending persisted echoes until `stop`; returns the latencies of the
/// acknowledged ones.
async fn callers_until(
    client: LoadTargetClient,
    callers: usize,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    first: u64,
) -> anyhow::Result<Vec<Duration>> {
    let tasks: Vec<_> = (0..callers as u64)
        .map(|t| {
            let (client, stop, counts) = (client.clone(), stop.clone(), counts.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let n = first + t * 1_000_000 + i;
                    i += 1;
                    let id = EntityId::new(format!("e{}", (n * 7_919) % ENTITIES));
                    let started = Instant::now();
                    match tokio::time::timeout(CALL_TIMEOUT, client.echo(&id, &n)).await {
                        Ok(Ok(answer)) if answer == n => {
                            samples.push(started.elapsed());
                            counts.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            counts.timed_out.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await?);
    }
    Ok(samples)
}

async fn bench(url: &str, schema: &str, callers: usize, seconds: u64) -> anyhow::Result<()> {
    let pool = schema_pool(url, schema).await?;
    let (ref_p50, ref_p99, ref_rate) = reference(&pool, callers).await?;

    let node = node_binary()?;
    let log_dir = std::env::temp_dir().join(format!("cruster-cluster-load-{schema}"));
    let args = vec![
        "--database-url".to_string(),
        url.to_string(),
        "--schema".into(),
        schema.into(),
        "--runner-storage".into(),
        "sql".into(),
        "--shards-per-group".into(),
        SHARDS.to_string(),
        "--lock-ttl-ms".into(),
        LOCK_TTL.as_millis().to_string(),
        "--poll-interval-ms".into(),
        POLL_INTERVAL.as_millis().to_string(),
        "--shutdown-timeout-ms".into(),
        "3000".into(),
        "--pool-size".into(),
        POOL_SIZE.to_string(),
    ];
    let mut cluster = NodeCluster::new(node.clone(), args, &log_dir, RUNNERS)?;
    for i in 0..RUNNERS {
        cluster.start(i).await?;
    }
    let membership: Arc<dyn RunnerStorage> = Arc::new(SqlRunnerStorage::new(pool.clone()));
    wait_for_spread(&*membership, &cluster, Duration::from_secs(60)).await?;
    let driver = driver(&pool, membership.clone()).await?;
    let client = LoadTargetClient::new(driver.sharding.clone());

    // Warm-up: every runner's sessions and pools, and the entities.
    let stop = Arc::new(AtomicBool::new(false));
    let warm = tokio::spawn(callers_until(
        client.clone(),
        callers,
        stop.clone(),
        Arc::new(Counts::default()),
        0,
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    warm.await??;

    // One caller: the round trip.
    let mut samples = Vec::with_capacity(LATENCY_CALLS);
    for i in 0..LATENCY_CALLS as u64 {
        let n = 10_000_000_000 + i;
        let id = EntityId::new(format!("e{}", (n * 7_919) % ENTITIES));
        let started = Instant::now();
        let answer = tokio::time::timeout(CALL_TIMEOUT, client.echo(&id, &n))
            .await
            .context("a persisted send got no answer within 30 s")??;
        anyhow::ensure!(answer == n, "echo answered {answer} for {n}");
        samples.push(started.elapsed());
    }
    let (p50, p99) = percentiles(samples);

    // Many callers, undisturbed, then while two runners are killed and restarted.
    let mut rates = Vec::new();
    for (round, faults) in [(1u64, false), (2, true)] {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let started = Instant::now();
        let load = tokio::spawn(callers_until(
            client.clone(),
            callers,
            stop.clone(),
            counts.clone(),
            round * 20_000_000_000,
        ));
        let mut restarts = Vec::new();
        if faults {
            for (victim, at) in [(0, seconds / 5), (1, seconds * 3 / 5)] {
                tokio::time::sleep_until((started + Duration::from_secs(at)).into()).await;
                cluster.kill(victim).await?;
                let killed = Instant::now();
                cluster.start(victim).await?;
                restarts.push(format!(
                    "runner {victim} SIGKILLed at {at} s, ready again {:.1?} later",
                    killed.elapsed()
                ));
            }
        }
        tokio::time::sleep_until((started + Duration::from_secs(seconds)).into()).await;
        stop.store(true, Ordering::Relaxed);
        let samples = load.await??;
        let elapsed = started.elapsed();
        let acked = counts.acked.load(Ordering::Relaxed);
        let rate = acked as f64 / elapsed.as_secs_f64();
        let (c50, c99) = percentiles(samples);
        rates.push((
            faults,
            rate,
            c50,
            c99,
            acked,
            counts.failed.load(Ordering::Relaxed),
            counts.timed_out.load(Ordering::Relaxed),
            elapsed,
            restarts,
        ));
    }

    println!(
        "cluster_load: {RUNNERS} cruster-node processes ({}), PostgreSQL, {callers} callers, \
         pools of {POOL_SIZE} connections",
        node.display()
    );
    println!(
        "  reference: raw single-row INSERT + COMMIT  p50={ref_p50:.2?} p99={ref_p99:.2?}  \
         {ref_rate:.0}/s with {callers} callers"
    );
    println!(
        "  persisted send round trip, 1 caller      p50={p50:.2?} p99={p99:.2?}  \
         (target p50 <= 1.5 ms: {})",
        if p50 <= Duration::from_micros(1_500) {
            "met"
        } else {
            "MISSED"
        }
    );
    for (faults, rate, c50, c99, acked, failed, timed_out, elapsed, restarts) in rates {
        let label = if faults {
            "while 2 runners are killed + restarted"
        } else {
            "undisturbed"
        };
        println!(
            "  persisted sends, {label}: {rate:.0} acknowledged/s ({acked} in {elapsed:.1?}; \
             {failed} failed, {timed_out} timed out; p50={c50:.2?} p99={c99:.2?}){}",
            if faults {
                format!(
                    " (target >= 3000/s: {})",
                    if rate >= 3_000.0 { "met" } else { "MISSED" }
                )
            } else {
                String::new()
            }
        );
        for restart in restarts {
            println!("    {restart}");
        }
    }

    driver.stop().await?;
    cluster.stop().await;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&log_dir);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let callers: usize = match args.first() {
        Some(v) => v.parse().context("callers: a number")?,
        None => 64,
    };
    let seconds: u64 = match args.get(1) {
        Some(v) => v.parse().context("seconds: a number")?,
        None => 20,
    };
    anyhow::ensure!(callers > 0 && seconds >= 5, "callers > 0 and seconds >= 5");
    let Ok(url) = std::env::var("DATABASE_URL") else {
        println!("cluster_load: skipped (DATABASE_URL is not set)");
        return Ok(());
    };
    let schema = format!("cruster_cluster_bench_{}", std::process::id());
    let admin = PgPool::connect(&url).await?;
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await?;
    let result = bench(&url, &schema, callers, seconds).await;
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await?;
    result
}
