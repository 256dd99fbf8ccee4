//! The application the `cruster-node` runner binary hosts, shared with the tests that drive
//! it (they build clients of these types and read the tables below).
//!
//! Every effect is recorded in PostgreSQL with the runner that caused it, so a test can
//! check afterwards, from the database alone, what ran where and how often:
//!
//! * [`Counter`]: a persisted `increment` and a plain `touch`, each recorded under the
//!   caller's request id in a table whose primary key is that id; a second delivery of the
//!   same request bumps `deliveries` instead of adding a row.
//!   Every run of an increment is also a row of `mp_increment_runs` (runner, start, end;
//!   no end when the run was cut), so a test can check that no increment, and no counter,
//!   was ever being handled on two runners at overlapping times.
//! * [`LoadTarget`]: a persisted `echo` that does nothing but answer, for benchmarks of
//!   the delivery path itself.
//! * [`ThreeStepWorkflow`]: three activities, each inserting one row through `self.tx`
//!   (same transaction as its journal entry), with no unique key, so an activity that ran
//!   twice shows as two rows.
//! * [`SINGLETON_NAME`]: a singleton that records its runs (runner, start, heartbeat
//!   every [`SINGLETON_HEARTBEAT`], end).
//! * [`CRON_NAME`]: a cron job, every second, that records each run (scheduled time,
//!   runner, start, end).

use std::time::Duration;

use cruster::cron::{ClusterCron, CronSchedule};
use cruster::prelude::*;
use cruster::singleton::{register_singleton, SingletonContext};
use cruster::sqlx::{self, PgPool};
use serde::{Deserialize, Serialize};

/// The application's tables (idempotent; run before the runners start).
pub const APP_TABLES: &str = "
CREATE TABLE IF NOT EXISTS mp_increments (
    request_id   TEXT PRIMARY KEY,
    counter      TEXT NOT NULL,
    amount       BIGINT NOT NULL,
    first_runner TEXT NOT NULL,
    last_runner  TEXT NOT NULL,
    deliveries   INT NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS mp_increment_runs (
    run_id     BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL,
    counter    TEXT NOT NULL,
    runner     TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    ended_at   TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS mp_plain (
    request_id TEXT PRIMARY KEY,
    counter    TEXT NOT NULL,
    runner     TEXT NOT NULL,
    deliveries INT NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS mp_workflow_steps (
    job    TEXT NOT NULL,
    step   INT NOT NULL,
    runner TEXT NOT NULL,
    at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS mp_singleton_runs (
    run_id     BIGSERIAL PRIMARY KEY,
    runner     TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    last_seen  TIMESTAMPTZ NOT NULL,
    ended_at   TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS mp_cron_runs (
    run_id       BIGSERIAL PRIMARY KEY,
    scheduled_at TIMESTAMPTZ NOT NULL,
    runner       TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    ended_at     TIMESTAMPTZ
);
";

/// The singleton's name.
pub const SINGLETON_NAME: &str = "mp-singleton";
/// The cron job's name.
pub const CRON_NAME: &str = "mp-cron";
/// How often a running singleton writes its `last_seen`: the end of a run cut by a kill is
/// known to within this.
pub const SINGLETON_HEARTBEAT: Duration = Duration::from_millis(100);
/// How long one cron run takes.
pub const CRON_RUN_TIME: Duration = Duration::from_millis(100);
/// How long each workflow activity holds its transaction open before committing, so kills
/// land inside activities too.
pub const ACTIVITY_TIME: Duration = Duration::from_millis(30);

/// How long an increment keeps working after its write, before it answers: a kill in that
/// window makes the message run again, so the test sees duplicate deliveries.
pub const INCREMENT_WORK: Duration = Duration::from_millis(20);

/// A persisted increment: `request_id` is the caller's, unique per increment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Increment {
    /// The counter (the entity id, repeated so the row can name it).
    pub counter: String,
    /// The caller's id of this increment.
    pub request_id: String,
    /// How much to add.
    pub amount: i64,
}

/// A plain (at-most-once) request, recorded under the caller's id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Touch {
    /// The counter (the entity id, repeated so the row can name it).
    pub counter: String,
    /// The caller's id of this request.
    pub request_id: String,
    /// Another counter the handler touches in turn (a plain call from this runner to the
    /// one owning it, recorded under `<request_id>/relayed`) before answering.
    pub relay_to: Option<String>,
}

/// A counter whose every applied increment is a row of `mp_increments`.
#[entity(concurrency = 4)]
#[derive(Clone)]
pub struct Counter {
    /// The application's pool.
    pub pool: PgPool,
    /// The runner this instance lives on, recorded with every effect.
    pub runner: String,
    /// Other counters, for relayed touches.
    pub peers: CounterClient,
}

#[entity_impl]
impl Counter {
    /// Applies an increment (at least once; a redelivery bumps `deliveries`). Answers the
    /// runner that applied it.
    #[rpc(persisted)]
    pub async fn increment(&self, request: Increment) -> Result<String, ClusterError> {
        let run_id: i64 = sqlx::query_scalar(
            "INSERT INTO mp_increment_runs (request_id, counter, runner) VALUES ($1, $2, $3) \
             RETURNING run_id",
        )
        .bind(&request.request_id)
        .bind(&request.counter)
        .bind(&self.runner)
        .fetch_one(&self.pool)
        .await?;
        sqlx::query(
            "INSERT INTO mp_increments (request_id, counter, amount, first_runner, last_runner) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (request_id) DO UPDATE \
             SET deliveries = mp_increments.deliveries + 1, last_runner = EXCLUDED.last_runner",
        )
        .bind(&request.request_id)
        .bind(&request.counter)
        .bind(request.amount)
        .bind(&self.runner)
        .execute(&self.pool)
        .await?;
        tokio::time::sleep(INCREMENT_WORK).await;
        sqlx::query("UPDATE mp_increment_runs SET ended_at = clock_timestamp() WHERE run_id = $1")
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(self.runner.clone())
    }

    /// Records a plain request (at most once). Answers the runner that handled it.
    #[rpc]
    pub async fn touch(&self, request: Touch) -> Result<String, ClusterError> {
        sqlx::query(
            "INSERT INTO mp_plain (request_id, counter, runner) VALUES ($1, $2, $3) \
             ON CONFLICT (request_id) DO UPDATE SET deliveries = mp_plain.deliveries + 1",
        )
        .bind(&request.request_id)
        .bind(&request.counter)
        .bind(&self.runner)
        .execute(&self.pool)
        .await?;
        if let Some(next) = &request.relay_to {
            let relayed = Touch {
                counter: next.clone(),
                request_id: format!("{}/relayed", request.request_id),
                relay_to: None,
            };
            self.peers.touch(&EntityId::new(next), &relayed).await?;
        }
        Ok(self.runner.clone())
    }
}

/// An entity for benchmarks: its persisted `echo` answers at once, touching nothing but
/// the runtime's own message storage.
#[entity(concurrency = 16, mailbox_capacity = 1024)]
#[derive(Clone)]
pub struct LoadTarget;

#[entity_impl]
impl LoadTarget {
    /// Answers `n` (at least once, like every persisted request).
    #[rpc(persisted)]
    pub async fn echo(&self, n: u64) -> Result<u64, ClusterError> {
        Ok(n)
    }
}

/// A workflow of three activities, each recording one row of `mp_workflow_steps` through
/// `self.tx`. Keyed by the job name.
#[workflow]
#[derive(Clone)]
pub struct ThreeStepWorkflow {
    /// The runner this workflow runs on, recorded with every step.
    pub runner: String,
}

#[workflow_impl(key = |job: &String| job.clone(), hash = false)]
impl ThreeStepWorkflow {
    async fn execute(&self, job: String) -> Result<String, ClusterError> {
        for step in 1..=3 {
            self.step(job.clone(), step).await?;
        }
        Ok(format!("{job} done"))
    }

    #[activity]
    async fn step(&self, job: String, step: i32) -> Result<(), ClusterError> {
        sqlx::query("INSERT INTO mp_workflow_steps (job, step, runner) VALUES ($1, $2, $3)")
            .bind(&job)
            .bind(step)
            .bind(&self.runner)
            .execute(&self.tx)
            .await?;
        tokio::time::sleep(ACTIVITY_TIME).await;
        Ok(())
    }
}

/// Registers the singleton and the cron job on `sharding`, recording under `runner`.
///
/// # Errors
/// As `register_singleton` and `ClusterCron::register`.
pub async fn register_singleton_and_cron(
    sharding: &ShardingImpl,
    pool: PgPool,
    runner: String,
) -> Result<(), ClusterError> {
    let (singleton_pool, singleton_runner) = (pool.clone(), runner.clone());
    register_singleton(sharding, SINGLETON_NAME, move |ctx: SingletonContext| {
        run_singleton(ctx, singleton_pool.clone(), singleton_runner.clone())
    })
    .await?;
    ClusterCron::new(
        CRON_NAME,
        CronSchedule::parse("* * * * * *")?,
        move |scheduled| Box::pin(run_cron(scheduled, pool.clone(), runner.clone())),
    )
    .register(sharding)
    .await
}

async fn run_singleton(
    ctx: SingletonContext,
    pool: PgPool,
    runner: String,
) -> Result<(), ClusterError> {
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO mp_singleton_runs (runner, started_at, last_seen) \
         VALUES ($1, clock_timestamp(), clock_timestamp()) RETURNING run_id",
    )
    .bind(&runner)
    .fetch_one(&pool)
    .await?;
    let cancel = ctx.cancellation();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(SINGLETON_HEARTBEAT) => {}
        }
        sqlx::query("UPDATE mp_singleton_runs SET last_seen = clock_timestamp() WHERE run_id = $1")
            .bind(run_id)
            .execute(&pool)
            .await?;
    }
    sqlx::query(
        "UPDATE mp_singleton_runs SET last_seen = clock_timestamp(), ended_at = clock_timestamp() \
         WHERE run_id = $1",
    )
    .bind(run_id)
    .execute(&pool)
    .await?;
    Ok(())
}

async fn run_cron(
    scheduled: chrono::DateTime<chrono::Utc>,
    pool: PgPool,
    runner: String,
) -> Result<(), ClusterError> {
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO mp_cron_runs (scheduled_at, runner, started_at) \
         VALUES (to_timestamp($1::float8 / 1000), $2, clock_timestamp()) RETURNING run_id",
    )
    .bind(scheduled.timestamp_millis())
    .bind(&runner)
    .fetch_one(&pool)
    .await?;
    tokio::time::sleep(CRON_RUN_TIME).await;
    sqlx::query("UPDATE mp_cron_runs SET ended_at = clock_timestamp() WHERE run_id = $1")
        .bind(run_id)
        .execute(&pool)
        .await?;
    Ok(())
}
