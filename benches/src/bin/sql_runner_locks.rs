//! Shard locks on PostgreSQL (`SqlRunnerStorage`): acquiring 300 locks, refreshing and
//! releasing them, and a whole cluster's rebalance when a runner joins and leaves, each
//! beside a raw single-row PostgreSQL commit measured in the same run on the same database.
//!
//! `cargo run --release -p cruster-benches --bin sql_runner_locks`
//!
//! Needs `DATABASE_URL` (`source .ci/services.sh` starts PostgreSQL and sets it). Works in
//! a schema of its own, dropped at the end. Each in-process runner has its own storage and
//! pool, as separate processes would, so a runner hears of the others' joins and leaves
//! through `LISTEN`/`NOTIFY` (the membership poll, a quarter of the TTL and at most 1 s,
//! only backs it up).

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster::ports::runner_storage::{RunnerHealth, RunnerStorage};
use cruster::sqlx::{self, postgres::PgConnectOptions, postgres::PgPoolOptions, AssertSqlSafe};
use cruster::storage::sql_runner::SqlRunnerStorage;
use cruster::types::RunnerAddress;
use cruster_benches::lock_bench::{rebalances, report, shards, StorageFactory};

const ROUNDS: usize = 30;
const COMMITS: usize = 500;
/// The cluster's `runner_lock_ttl`.
const CLUSTER_TTL: Duration = Duration::from_secs(4);

/// The database of `DATABASE_URL`, in a schema of this run.
struct BenchSchema {
    url: String,
    name: String,
}

impl BenchSchema {
    async fn pool(&self, max: u32) -> anyhow::Result<sqlx::PgPool> {
        let options =
            PgConnectOptions::from_str(&self.url)?.options([("search_path", self.name.as_str())]);
        Ok(PgPoolOptions::new()
            .max_connections(max)
            .min_connections(1)
            .connect_with(options)
            .await?)
    }
}

/// The reference: a single-row INSERT committed on its own.
async fn raw_commits(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::query("CREATE TABLE bench_raw (id BIGINT PRIMARY KEY, body BYTEA)")
        .execute(pool)
        .await?;
    let mut commits = Vec::with_capacity(COMMITS);
    for i in 0..COMMITS {
        let started = Instant::now();
        sqlx::query("INSERT INTO bench_raw (id, body) VALUES ($1, $2)")
            .bind(i as i64)
            .bind(vec![0u8; 64])
            .execute(pool)
            .await?;
        commits.push(started.elapsed());
    }
    report("raw single-row INSERT + COMMIT (reference)", commits);
    Ok(())
}

/// 300 locks taken in one `acquire_shards`, refreshed, released, by a registered runner.
async fn lock_rounds(storage: &SqlRunnerStorage) -> anyhow::Result<()> {
    let me = RunnerAddress::new("bench-runner", 9000);
    let ttl = Duration::from_secs(30);
    let mut keep_alives = Vec::new();
    storage.register(&me, 1, ttl).await?;
    let all = shards();
    let (mut acquire, mut refresh, mut release) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        storage.keep_alive(&me, ttl).await?;
        keep_alives.push(started.elapsed());
        let started = Instant::now();
        let held = storage.acquire_shards(&me, &all, ttl).await?;
        acquire.push(started.elapsed());
        anyhow::ensure!(held.len() == all.len(), "acquired {} of 300", held.len());
        let started = Instant::now();
        let kept = storage.refresh_shards(&me, &all, ttl).await?;
        refresh.push(started.elapsed());
        anyhow::ensure!(kept.len() == all.len(), "refreshed {} of 300", kept.len());
        let started = Instant::now();
        storage.release_shards(&me, &all).await?;
        release.push(started.elapsed());
    }
    report("runner keep-alive (one UPDATE)", keep_alives);
    report("acquire 300 shard locks (one statement)", acquire);
    report("refresh 300 shard locks (one statement)", refresh);
    report("release 300 shard locks (one statement)", release);
    storage.unregister(&me).await?;
    Ok(())
}

/// In-process runners on PostgreSQL runner storage; times whole-cluster rebalances.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").map_err(|_| {
        anyhow::anyhow!("DATABASE_URL is not set: `source .ci/services.sh` starts PostgreSQL")
    })?;
    let schema = BenchSchema {
        url: url.clone(),
        name: format!("cruster_bench_locks_{}", std::process::id()),
    };
    let admin = sqlx::PgPool::connect(&url).await?;
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {}", schema.name)))
        .execute(&admin)
        .await?;
    println!("PostgreSQL:");
    let result = async {
        let pool = schema.pool(4).await?;
        let storage = SqlRunnerStorage::new(pool.clone());
        storage.migrate().await?;
        raw_commits(&pool).await?;
        lock_rounds(&storage).await?;
        pool.close().await;
        let factory: StorageFactory<'_> = Box::new(|| {
            Box::pin(async {
                let storage = Arc::new(SqlRunnerStorage::new(schema.pool(4).await?));
                let health: Arc<dyn RunnerHealth> = storage.clone();
                let storage: Arc<dyn RunnerStorage> = storage;
                Ok((storage, health))
            })
        });
        rebalances(factory, CLUSTER_TTL).await
    }
    .await;
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA {} CASCADE",
        schema.name
    )))
    .execute(&admin)
    .await?;
    admin.close().await;
    result
}
