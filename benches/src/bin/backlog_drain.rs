//! A persisted backlog drained by one runner: 1,000,000 persisted requests for one entity
//! type (1,000 entities) are written straight into message storage while no runner is up;
//! then one `SingleRunner` starts on the same database and the storage poll drains them.
//!
//! `cargo run --release -p cruster-benches --bin backlog_drain [-- postgres|sqlite] [MESSAGES | --quick]`
//!
//! Prints the write rate, the drain rate beside a raw reference measured in the same run on
//! the same database (read a page of 1,000 rows, then mark each row done with its own
//! single-row UPDATE + COMMIT from 64 callers: the floor of "one commit per message"), and
//! the peak resident memory (VmHWM) during the drain relative to the RSS before the runner
//! started, beside the bound the poll promises (`storage_poll_batch_size` requests of its
//! own in flight, each entity's mailbox at most `entity_mailbox_capacity`) and the most the
//! `cruster_poll_in_flight` gauge showed.
//!
//! PostgreSQL runs when `DATABASE_URL` is set (in a schema of its own, dropped at the end);
//! SQLite on a temporary file in WAL mode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cruster::ports::message_storage::MessageStorage;
use cruster::prelude::*;
use cruster::sqlx;
use cruster::storage::sql_message::{SqlMessageStorage, SqlPool};
use cruster::types::{
    shard_for_entity, EntityAddress, EntityId, EntityType, EnvelopeRequest, MachineId, ShardId,
    SnowflakeGenerator,
};
use cruster_benches::bench_database::{exec, PgBenchSchema, SqliteBenchFile};
use cruster_benches::process_memory::{mib, peak_rss_bytes, reset_peak_rss, rss_bytes};

const ENTITIES: u64 = 1_000;
const WRITERS: usize = 64;
const RAW_ROWS: usize = 20_000;
const RAW_PAGE: usize = 1_000;

/// Counts what it handles.
struct Drained {
    handled: Arc<AtomicU64>,
}

struct DrainedHandler {
    handled: Arc<AtomicU64>,
}

#[async_trait]
impl Entity for Drained {
    fn entity_type(&self) -> EntityType {
        EntityType::new("Drained")
    }

    async fn spawn(&self, _ctx: EntityContext) -> Result<Arc<dyn EntityHandler>, ClusterError> {
        Ok(Arc::new(DrainedHandler {
            handled: self.handled.clone(),
        }))
    }
}

#[async_trait]
impl EntityHandler for DrainedHandler {
    async fn handle(&self, request: IncomingRequest) -> Result<Bytes, ClusterError> {
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(request.envelope.payload)
    }
}

/// The raw reference: pages of `RAW_PAGE` pending rows read with one SELECT, each row then
/// marked done by its own UPDATE + COMMIT from `WRITERS` callers. Returns rows per second.
async fn raw_select_update(pool: &SqlPool) -> anyhow::Result<f64> {
    exec(
        pool,
        "CREATE TABLE bench_backlog_raw (id BIGINT PRIMARY KEY, body BYTEA, done BOOLEAN NOT NULL)",
    )
    .await?;
    let values: Vec<String> = (0..RAW_ROWS)
        .map(|i| format!("({i}, NULL, FALSE)"))
        .collect();
    for chunk in values.chunks(1_000) {
        exec(
            pool,
            &format!(
                "INSERT INTO bench_backlog_raw (id, body, done) VALUES {}",
                chunk.join(",")
            ),
        )
        .await?;
    }
    let started = Instant::now();
    loop {
        let page: Vec<i64> = match pool {
            SqlPool::Postgres(p) => {
                sqlx::query_scalar(
                    "SELECT id FROM bench_backlog_raw WHERE NOT done ORDER BY id LIMIT $1",
                )
                .bind(RAW_PAGE as i64)
                .fetch_all(p)
                .await?
            }
            SqlPool::Sqlite(p) => {
                sqlx::query_scalar(
                    "SELECT id FROM bench_backlog_raw WHERE NOT done ORDER BY id LIMIT $1",
                )
                .bind(RAW_PAGE as i64)
                .fetch_all(p)
                .await?
            }
            _ => anyhow::bail!("unknown pool"),
        };
        if page.is_empty() {
            break;
        }
        let page = Arc::new(page);
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let pool = pool.clone();
            let page = page.clone();
            tasks.push(tokio::spawn(async move {
                for id in page.iter().skip(writer).step_by(WRITERS) {
                    match &pool {
                        SqlPool::Postgres(p) => {
                            sqlx::query("UPDATE bench_backlog_raw SET done = TRUE WHERE id = $1")
                                .bind(id)
                                .execute(p)
                                .await?;
                        }
                        SqlPool::Sqlite(p) => {
                            sqlx::query("UPDATE bench_backlog_raw SET done = TRUE WHERE id = $1")
                                .bind(id)
                                .execute(p)
                                .await?;
                        }
                        _ => anyhow::bail!("unknown pool"),
                    }
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
    }
    Ok(RAW_ROWS as f64 / started.elapsed().as_secs_f64())
}

/// Writes `messages` persisted requests for `ENTITIES` entities straight into message
/// storage (no runner), from `WRITERS` concurrent writers (the storage batches concurrent
/// saves into shared commits).
async fn write_backlog(storage: Arc<SqlMessageStorage>, messages: u64) -> anyhow::Result<()> {
    let ids = Arc::new(SnowflakeGenerator::new(MachineId::wrapping(1_000)));
    let shards_per_group = ShardingConfig::default().shards_per_group;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS as u64 {
        let storage = storage.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = writer;
            while n < messages {
                let entity_id = format!("backlog-{}", n % ENTITIES);
                let shard = shard_for_entity(&entity_id, shards_per_group);
                let address = EntityAddress {
                    shard_id: ShardId::new(cruster::types::DEFAULT_SHARD_GROUP, shard),
                    entity_type: EntityType::new("Drained"),
                    entity_id: EntityId::new(entity_id),
                };
                let payload = Bytes::from(rmp_serde_u64(n));
                let mut envelope = EnvelopeRequest::new(ids.next(), address, "drain", payload);
                envelope.persisted = true;
                envelope.expects_reply = false;
                storage.save_request(&envelope).await?;
                n += WRITERS as u64;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// A MessagePack u64 (what a typed client would send).
fn rmp_serde_u64(n: u64) -> Vec<u8> {
    let mut out = vec![0xcf];
    out.extend_from_slice(&n.to_be_bytes());
    out
}

async fn run(name: &str, pool: SqlPool, messages: u64) -> anyhow::Result<()> {
    println!("{name}:");
    let raw_rate = raw_select_update(&pool).await?;

    let storage = Arc::new(SqlMessageStorage::from_pool(pool.clone()));
    storage.migrate().await?;
    let started = Instant::now();
    write_backlog(storage.clone(), messages).await?;
    let write_time = started.elapsed();
    println!(
        "  wrote {messages} persisted requests for {ENTITIES} entities in {write_time:.2?} \
         ({:.0}/s, {WRITERS} writers, no runner up)",
        messages as f64 / write_time.as_secs_f64()
    );

    let config = ShardingConfig::default();
    let bound = config.storage_poll_batch_size;
    let mailbox = config.entity_mailbox_capacity;
    let rss_before = rss_bytes();
    let peak_reset = reset_peak_rss();
    let handled = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let runner = SingleRunner::builder()
        .sql(pool.clone())
        .message_storage(storage.clone())
        .config(config)
        .build()
        .await?;
    runner
        .sharding()
        .register_entity(Arc::new(Drained {
            handled: handled.clone(),
        }))
        .await?;
    let gauge = runner.sharding().metrics().poll_in_flight.clone();
    let mut most_in_flight = 0i64;
    let mut last_progress = (0u64, Instant::now());
    while handled.load(Ordering::Relaxed) < messages {
        most_in_flight = most_in_flight.max(gauge.get());
        let now_handled = handled.load(Ordering::Relaxed);
        if now_handled != last_progress.0 {
            last_progress = (now_handled, Instant::now());
        }
        anyhow::ensure!(
            last_progress.1.elapsed() < Duration::from_secs(60),
            "the drain made no progress for 60 s at {now_handled} of {messages}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain_time = started.elapsed();
    let peak = peak_rss_bytes().saturating_sub(rss_before);
    let pending: u64 = storage
        .message_counts()
        .await?
        .iter()
        .map(|counts| counts.pending)
        .sum();
    runner.shutdown().await?;
    println!(
        "  drained in {drain_time:.2?}: {:.0}/s ({pending} left pending)   reference: raw page \
         SELECT + single-row UPDATE/COMMIT, {WRITERS} callers: {raw_rate:.0}/s ({:.2}x)",
        messages as f64 / drain_time.as_secs_f64(),
        (messages as f64 / drain_time.as_secs_f64()) / raw_rate
    );
    println!(
        "  peak RSS during the drain: {:.1} MiB over the {:.1} MiB before the runner{}",
        mib(peak),
        mib(rss_before),
        if peak_reset {
            ""
        } else {
            " (VmHWM could not be reset: the peak includes the writing phase)"
        }
    );
    println!(
        "  bound: the poll keeps at most storage_poll_batch_size = {bound} of its deliveries \
         unfinished (at most {mailbox} queued per entity); most seen by cruster_poll_in_flight: \
         {most_in_flight}; the backlog is {messages} requests"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let messages: u64 = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 1_000_000 });
    let only = args
        .iter()
        .find(|a| !a.starts_with("--") && a.parse::<u64>().is_err())
        .cloned();
    let want = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if want("postgres") {
        match std::env::var("DATABASE_URL") {
            Err(_) => println!("postgres: skipped (DATABASE_URL is not set)"),
            Ok(url) => {
                let db = PgBenchSchema::create(&url, "cruster_backlog", 10).await?;
                let result = run("postgres (pool of 10)", db.pool.clone(), messages).await;
                db.drop_schema().await?;
                result?;
            }
        }
    }
    if want("sqlite") {
        let db = SqliteBenchFile::create("cruster-backlog").await?;
        let result = run("sqlite (WAL)", db.pool.clone(), messages).await;
        db.remove().await;
        result?;
    }
    Ok(())
}
