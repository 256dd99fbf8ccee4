//! Persisted sends and workflow activities on PostgreSQL and SQLite, each beside a raw
//! single-row commit measured in the same run on the same database.
//!
//! `cargo run --release -p cruster-benches --bin sql_load [-- postgres|sqlite] [--no-group-commit] [--pool N]`
//!
//! `--pool N` sets the PostgreSQL pool size (default 10, the contract's production
//! example); the bench prefers 32. Each figure is printed with its ratio to the raw commit
//! of the same run: p50 as a multiple of the raw p50, throughput as a multiple of the raw
//! commits/s with the same 64 callers.
//!
//! `--no-group-commit` builds the message storage with `with_group_commit(false)`, so each
//! save runs its own statement (PostgreSQL; SQLite never batches).
//!
//! PostgreSQL runs when `DATABASE_URL` is set (in a schema of its own, dropped at the end);
//! SQLite on a temporary file in WAL mode with `synchronous = FULL`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster::prelude::*;
use cruster::sqlx;
use cruster::storage::sql_message::{SqlMessageStorage, SqlPool};
use cruster::types::EntityType;
use cruster::workflow::{WorkflowClient, WorkflowDefinition};
use cruster_benches::bench_database::{exec, PgBenchSchema, SqliteBenchFile};
use cruster_benches::Echo;

const LATENCY_CALLS: usize = 2_000;
const THROUGHPUT_CALLS: usize = 20_000;
const CALLERS: usize = 64;

/// Three activities, each inserting one row through `self.tx`.
#[workflow]
#[derive(Clone)]
struct ThreeSteps {
    sqlite: bool,
}

#[workflow_impl(key = |n: &u64| n.to_string())]
impl ThreeSteps {
    async fn execute(&self, n: u64) -> Result<(), ClusterError> {
        self.step(n, 1).await?;
        self.step(n, 2).await?;
        self.step(n, 3).await?;
        Ok(())
    }

    #[activity]
    async fn step(&self, n: u64, step: i64) -> Result<(), ClusterError> {
        let id = format!("{n}/{step}");
        let insert = sqlx::query("INSERT INTO bench_effects (id) VALUES ($1)").bind(id);
        if self.sqlite {
            // sqlx's SQLite arguments are a different type: build the query for SQLite.
            let id = format!("{n}/{step}");
            sqlx::query("INSERT INTO bench_effects (id) VALUES ($1)")
                .bind(id)
                .execute(self.tx.sqlite())
                .await?;
        } else {
            insert.execute(&self.tx).await?;
        }
        Ok(())
    }
}

/// Three activities that write nothing of their own: each step costs only its journal entry.
#[workflow]
#[derive(Clone)]
struct ThreeJournaledSteps;

// Its own key space: execution ids are shared by all workflows of a database.
#[workflow_impl(key = |n: &u64| format!("journaled-{n}"))]
impl ThreeJournaledSteps {
    async fn execute(&self, n: u64) -> Result<u64, ClusterError> {
        let a = self.step(n).await?;
        let b = self.step(a).await?;
        self.step(b).await
    }

    #[activity]
    async fn step(&self, n: u64) -> Result<u64, ClusterError> {
        Ok(n.wrapping_add(1))
    }
}

/// A measured figure: sequential p50/p99 and the throughput of `CALLERS` callers.
#[derive(Clone, Copy)]
struct Figure {
    p50: Duration,
    p99: Duration,
    rate: f64,
}

impl Figure {
    fn print(&self, label: &str, raw: Option<&Figure>) {
        let Figure { p50, p99, rate } = *self;
        let ratio = raw
            .map(|raw| {
                format!(
                    "  [{:.2}x raw p50, {:.2}x raw/s]",
                    p50.as_secs_f64() / raw.p50.as_secs_f64(),
                    rate / raw.rate
                )
            })
            .unwrap_or_default();
        println!(
            "  {label:<40} p50={p50:>9.2?} p99={p99:>9.2?} {rate:>8.0}/s with {CALLERS} callers{ratio}"
        );
    }
}

/// Sequential latency of `execute` over 500 executions, then 64 callers running 40 each.
async fn measure_workflow<W>(client: WorkflowClient<W>) -> anyhow::Result<Figure>
where
    W: WorkflowDefinition<Request = u64> + 'static,
{
    let call = move |n: u64| {
        let client = client.clone();
        async move {
            client.execute(&n).await?;
            Ok::<_, anyhow::Error>(())
        }
    };
    let seq = call.clone();
    let samples = tokio::spawn(async move {
        let mut samples = Vec::new();
        for n in 0..500u64 {
            let started = Instant::now();
            seq(n).await?;
            samples.push(started.elapsed());
        }
        Ok::<_, anyhow::Error>(samples)
    })
    .await??;
    let (p50, p99) = stats(samples);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..CALLERS as u64 {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40u64 {
                call(1_000_000 + t * 1000 + i).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rate = (CALLERS * 40) as f64 / started.elapsed().as_secs_f64();
    Ok(Figure { p50, p99, rate })
}

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    (at(0.50), at(0.99))
}

async fn raw_insert(pool: &SqlPool, id: String) -> anyhow::Result<()> {
    match pool {
        SqlPool::Postgres(p) => {
            sqlx::query("INSERT INTO bench_raw (id, body) VALUES ($1, $2)")
                .bind(id)
                .bind(vec![0u8; 64])
                .execute(p)
                .await?;
        }
        SqlPool::Sqlite(p) => {
            sqlx::query("INSERT INTO bench_raw (id, body) VALUES ($1, $2)")
                .bind(id)
                .bind(vec![0u8; 64])
                .execute(p)
                .await?;
        }
        _ => anyhow::bail!("unknown pool"),
    }
    Ok(())
}

/// Sequential latency of `call`, then throughput of `CALLERS` concurrent callers.
async fn measure<F, Fut>(call: F) -> anyhow::Result<Figure>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let seq = call.clone();
    let samples = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(LATENCY_CALLS);
        for i in 0..LATENCY_CALLS {
            let started = Instant::now();
            seq(i).await?;
            samples.push(started.elapsed());
        }
        Ok::<_, anyhow::Error>(samples)
    })
    .await??;
    let (p50, p99) = stats(samples);
    let started = Instant::now();
    let per = THROUGHPUT_CALLS / CALLERS;
    let mut tasks = Vec::new();
    for t in 0..CALLERS {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per);
            for i in 0..per {
                let started = Instant::now();
                call(LATENCY_CALLS + t * per + i).await?;
                samples.push(started.elapsed());
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut concurrent = Vec::with_capacity(THROUGHPUT_CALLS);
    for task in tasks {
        concurrent.extend(task.await??);
    }
    let rate = (per * CALLERS) as f64 / started.elapsed().as_secs_f64();
    Ok(Figure { p50, p99, rate })
}

async fn run(name: &str, pool: SqlPool, group_commit: bool) -> anyhow::Result<()> {
    println!("{name}:");
    exec(
        &pool,
        "CREATE TABLE bench_raw (id TEXT PRIMARY KEY, body BYTEA); \
         CREATE TABLE bench_effects (id TEXT PRIMARY KEY)",
    )
    .await?;
    let p = pool.clone();
    let raw = measure(move |i| {
        let p = p.clone();
        async move { raw_insert(&p, format!("r{i}")).await }
    })
    .await?;
    raw.print("raw single-row INSERT + COMMIT", None);

    let messages = SqlMessageStorage::from_pool(pool.clone()).with_group_commit(group_commit);
    let runner = SingleRunner::builder()
        .sql(pool.clone())
        .message_storage(Arc::new(messages))
        .build()
        .await?;
    runner.sharding().register_entity(Arc::new(Echo)).await?;
    let client = EntityClient::new(runner.sharding().clone(), EntityType::new("Echo"));
    let c = client.clone();
    measure(move |i| {
        let c = c.clone();
        async move {
            let _: u64 = c
                .send_persisted(
                    &EntityId::new(format!("e{}", i % 256)),
                    "echo",
                    &(i as u64),
                    false,
                )
                .await?;
            Ok(())
        }
    })
    .await?
    .print("send_persisted round trip", Some(&raw));

    let workflows = ThreeSteps {
        sqlite: matches!(pool, SqlPool::Sqlite(_)),
    }
    .register(runner.sharding().clone())
    .await?;
    measure_workflow(workflows)
        .await?
        .print("workflow execute, 3 SQL activities", Some(&raw));

    let journaled = ThreeJournaledSteps
        .register(runner.sharding().clone())
        .await?;
    measure_workflow(journaled)
        .await?
        .print("workflow execute, 3 journal-only steps", Some(&raw));
    runner.shutdown().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Warnings and errors of the runtime (a lost lease, failed commits) go to stderr;
    // `RUST_LOG` chooses more.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let group_commit = !args.iter().any(|a| a == "--no-group-commit");
    let pool_size: u32 = match args.iter().position(|a| a == "--pool") {
        Some(at) => args
            .get(at + 1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("--pool needs a number of connections"))?,
        None => 10,
    };
    let only = args
        .iter()
        .enumerate()
        .find(|(at, a)| !a.starts_with("--") && (*at == 0 || args[at - 1] != "--pool"))
        .map(|(_, a)| a.clone());
    let want = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if want("postgres") {
        match std::env::var("DATABASE_URL") {
            Err(_) => println!("postgres: skipped (DATABASE_URL is not set)"),
            Ok(url) => {
                println!("postgres pool: {pool_size} connections");
                let db = PgBenchSchema::create(&url, "cruster_bench", pool_size).await?;
                let result = run("postgres", db.pool.clone(), group_commit).await;
                db.drop_schema().await?;
                result?;
            }
        }
    }
    if want("sqlite") {
        let db = SqliteBenchFile::create("cruster-bench").await?;
        let result = run(
            "sqlite (WAL, synchronous=FULL)",
            db.pool.clone(),
            group_commit,
        )
        .await;
        db.remove().await;
        result?;
    }
    Ok(())
}
