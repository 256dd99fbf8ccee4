//! Activities writing through `self.tx` continue one transaction (a chain, see the
//! runtime's `deferred_step.rs`). These tests pin what a chain must keep on PostgreSQL: a
//! failed attempt in the middle loses only its own writes, a final failure keeps what came
//! before it, and an activity that runs after a slow one still journals in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cruster::prelude::*;
use cruster::sqlx::{self, PgPool};
use cruster::workflow::ActivityTx;
use sql_support::{pg_exec, pg_i64, PgTestDb};

/// Attempts of `Chain::second` so far, across runs.
static SECOND_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

/// Three activities writing through `self.tx`; the second writes and then fails on its
/// first attempt (and on every attempt for jobs named `fail…`).
#[workflow]
#[derive(Clone)]
struct Chain;

#[workflow_impl(key = |job: &String| format!("chain-{job}"), hash = false)]
impl Chain {
    async fn execute(&self, job: String) -> Result<u32, ClusterError> {
        self.first(job.clone()).await?;
        self.second(job.clone()).await?;
        if job.starts_with("slow") {
            // Longer than a chain may wait: the third activity begins a new transaction.
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        self.third(job).await?;
        Ok(3)
    }

    #[activity]
    async fn first(&self, job: String) -> Result<(), ClusterError> {
        record(&self.tx, format!("{job}/1")).await
    }

    #[activity(retries = 2, backoff = "constant")]
    async fn second(&self, job: String) -> Result<(), ClusterError> {
        let attempt = SECOND_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
        record(&self.tx, format!("{job}/2 attempt {attempt}")).await?;
        if job.starts_with("fail") || attempt.is_multiple_of(2) {
            return Err(ClusterError::handler(format!(
                "attempt {attempt} of {job} fails"
            )));
        }
        Ok(())
    }

    #[activity]
    async fn third(&self, job: String) -> Result<(), ClusterError> {
        record(&self.tx, format!("{job}/3")).await
    }
}

async fn record(tx: &ActivityTx, effect: String) -> Result<(), ClusterError> {
    sqlx::query("INSERT INTO effects (id) VALUES ($1)")
        .bind(effect)
        .execute(tx)
        .await?;
    Ok(())
}

async fn effects(pool: &PgPool, job: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM effects WHERE id LIKE $1 ORDER BY id")
        .bind(format!("{job}/%"))
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn journaled(pool: &PgPool, job: &str) -> i64 {
    pg_i64(
        pool,
        &format!("SELECT count(*) FROM cruster_journal WHERE execution_id = 'chain-{job}'"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_keeps_what_came_before_a_failed_attempt_and_only_that() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let pool = db.pool_with_max_connections(10).await;
    let runner = SingleRunner::builder()
        .postgres(pool.clone())
        .build()
        .await
        .unwrap();
    pg_exec(&pool, "CREATE TABLE effects (id TEXT PRIMARY KEY)").await;
    let chain = Chain.register(runner.sharding().clone()).await.unwrap();

    // The second activity's first attempt writes and fails: its write is rolled back to
    // the chain's mark, the first activity's write stays, the retry's write commits.
    SECOND_ATTEMPTS.store(0, Ordering::SeqCst);
    assert_eq!(chain.execute(&"retry".to_string()).await.unwrap(), 3);
    assert_eq!(
        effects(&pool, "retry").await,
        vec!["retry/1", "retry/2 attempt 1", "retry/3"]
    );
    assert_eq!(journaled(&pool, "retry").await, 3);

    // Every attempt fails: the failure is journaled after the first activity, whose write
    // is committed; no attempt's write is.
    SECOND_ATTEMPTS.store(0, Ordering::SeqCst);
    let failed = chain.execute(&"fail".to_string()).await;
    assert!(
        failed.is_err(),
        "the workflow fails with its activity: {failed:?}"
    );
    assert_eq!(effects(&pool, "fail").await, vec!["fail/1"]);
    assert_eq!(journaled(&pool, "fail").await, 2);

    // A pause longer than a chain may wait: the held-back activity is committed on its
    // own, and the third begins a new transaction.
    SECOND_ATTEMPTS.store(1, Ordering::SeqCst);
    assert_eq!(chain.execute(&"slow".to_string()).await.unwrap(), 3);
    assert_eq!(
        effects(&pool, "slow").await,
        vec!["slow/1", "slow/2 attempt 1", "slow/3"]
    );
    assert_eq!(journaled(&pool, "slow").await, 3);

    runner.shutdown().await.unwrap();
    pool.close().await;
    db.drop_schema().await;
}
