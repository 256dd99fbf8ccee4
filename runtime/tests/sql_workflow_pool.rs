//! Workflows never hold a database connection while they wait: an activity's transaction is
//! opened only when it writes through `self.tx` (and to commit its journal entry), and a
//! call to another entity is journaled after it answered, with no transaction open
//! meanwhile. So many concurrent workflows doing slow activities and entity calls on a
//! small pool all finish, and plain persisted traffic beside them keeps flowing.
//!
//! * PostgreSQL on the contract's 10-connection pool: 100 concurrent workflows, each with
//!   two 1-second activities (writing through `self.tx` after the wait) and one persisted
//!   entity call, beside a stream of plain persisted sends; the durable `SingleRunner`
//!   keeps serving afterwards.
//! * SQLite `sqlite::memory:` (a pool of one connection): the same shape, smaller, does not
//!   deadlock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cruster::prelude::*;
use cruster::storage::sql_message::SqlPool;
use cruster::types::EntityId;
use sql_support::PgTestDb;

#[entity]
#[derive(Clone)]
struct Ledger;

#[entity_impl]
impl Ledger {
    #[rpc(persisted)]
    pub async fn record(&self, amount: i64) -> Result<i64, ClusterError> {
        Ok(amount * 2)
    }
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct SlowOrder {
    id: String,
    step_millis: u64,
}

#[workflow]
#[derive(Clone)]
struct SlowOrderWorkflow;

#[workflow_impl(key = |req: &SlowOrder| req.id.clone(), hash = false)]
impl SlowOrderWorkflow {
    async fn execute(&self, request: SlowOrder) -> Result<i64, ClusterError> {
        self.slow_step(request.id.clone(), request.step_millis, 1)
            .await?;
        let doubled = self
            .client::<LedgerClient>()
            .record(&EntityId::new(format!("ledger-{}", request.id)), &21)
            .await?;
        self.slow_step(request.id, request.step_millis, 2).await?;
        Ok(doubled)
    }

    /// Waits like an HTTP call, then writes through `self.tx` (which opens the activity's
    /// transaction only now).
    #[activity]
    async fn slow_step(&self, id: String, millis: u64, step: u32) -> Result<(), ClusterError> {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        self.tx
            .put(&format!("slow-order/{id}/{step}"), "done")
            .await
    }
}

/// Runs `workflows` concurrent slow workflows beside a stream of plain persisted sends on
/// `runner`; asserts every workflow finished, every send succeeded, and the runner still
/// serves afterwards.
async fn many_slow_workflows_beside_plain_traffic(
    runner: SingleRunner,
    workflows: usize,
    step_millis: u64,
) {
    let ledger = Ledger.register(runner.sharding().clone()).await.unwrap();
    let client = SlowOrderWorkflow
        .register(runner.sharding().clone())
        .await
        .unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let sends = Arc::new(AtomicU64::new(0));
    let side_traffic = tokio::spawn({
        let (ledger, done, sends) = (ledger.clone(), done.clone(), sends.clone());
        async move {
            let mut n = 0u64;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                let answer = ledger
                    .record(&EntityId::new(format!("side-{}", n % 16)), &1)
                    .await
                    .unwrap_or_else(|err| panic!("plain persisted send {n} failed: {err}"));
                assert_eq!(answer, 2);
                sends.fetch_add(1, Ordering::SeqCst);
            }
        }
    });

    let mut executions = tokio::task::JoinSet::new();
    for i in 0..workflows {
        let client = client.clone();
        executions.spawn(async move {
            let request = SlowOrder {
                id: format!("order-{i}"),
                step_millis,
            };
            (i, client.execute(&request).await)
        });
    }
    let finished = tokio::time::timeout(Duration::from_secs(100), executions.join_all())
        .await
        .expect("every workflow finishes (none stalls on the pool)");
    for (i, result) in finished {
        assert_eq!(
            result.unwrap_or_else(|err| panic!("workflow {i}: {err}")),
            42
        );
    }
    let sent_during = sends.load(Ordering::SeqCst);
    done.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), side_traffic)
        .await
        .expect("the side traffic stops")
        .expect("every plain persisted send succeeded");
    assert!(
        sent_during > 0,
        "plain persisted sends completed while the workflows ran"
    );

    // The runner kept its lease and serves as before.
    let after = tokio::time::timeout(
        Duration::from_secs(30),
        ledger.record(&EntityId::new("after"), &5),
    )
    .await
    .expect("a send after the load answers")
    .unwrap();
    assert_eq!(after, 10);
    let journal = cruster::workflow::workflow_journal(runner.sharding(), "order-0")
        .await
        .unwrap();
    let names: Vec<&str> = journal.iter().map(|e| e.key.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "slow_step",
            "cruster:persisted-call/Ledger.record",
            "slow_step"
        ]
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_slow_workflows_with_entity_calls_finish_on_a_ten_connection_postgres_pool() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let pool = db.pool_with_max_connections(10).await;
    let runner = SingleRunner::builder()
        .config(ShardingConfig {
            storage_poll_interval: Duration::from_millis(100),
            ..Default::default()
        })
        .postgres(pool)
        .build()
        .await
        .unwrap();
    many_slow_workflows_beside_plain_traffic(runner, 100, 1000).await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_workflows_with_entity_calls_do_not_deadlock_sqlite_in_memory() {
    let pool = match SqlPool::connect("sqlite::memory:").await.unwrap() {
        SqlPool::Sqlite(pool) => pool,
        other => panic!("expected a SQLite pool, got {other:?}"),
    };
    let runner = SingleRunner::builder()
        .config(ShardingConfig {
            storage_poll_interval: Duration::from_millis(100),
            ..Default::default()
        })
        .sqlite(pool)
        .build()
        .await
        .unwrap();
    many_slow_workflows_beside_plain_traffic(runner, 20, 200).await;
}
