//! A workflow's durable timer written by one node is picked up by the next node against the
//! same database (PostgreSQL and SQLite): the execution resumes no earlier than due and
//! finishes, and activities journaled before the restart do not run again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cruster::prelude::*;
use serde::{Deserialize, Serialize};
use sql_support::{PgTestDb, SqliteTestDb};

#[derive(Serialize, Deserialize, Clone)]
struct Nap {
    id: String,
    millis: u64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Woke {
    slept_from: DateTime<Utc>,
    woke_at: DateTime<Utc>,
}

#[workflow]
#[derive(Clone, Default)]
struct NapWorkflow {
    before_runs: Arc<AtomicU32>,
    after_runs: Arc<AtomicU32>,
}

#[workflow_impl(key = |req: &Nap| req.id.clone(), hash = false)]
impl NapWorkflow {
    async fn execute(&self, request: Nap) -> Result<Woke, ClusterError> {
        let slept_from = self.before().await?;
        self.sleep(Duration::from_millis(request.millis)).await?;
        let woke_at = self.after().await?;
        Ok(Woke {
            slept_from,
            woke_at,
        })
    }

    #[activity]
    async fn before(&self) -> Result<DateTime<Utc>, ClusterError> {
        self.before_runs.fetch_add(1, Ordering::SeqCst);
        Ok(Utc::now())
    }

    #[activity]
    async fn after(&self) -> Result<DateTime<Utc>, ClusterError> {
        self.after_runs.fetch_add(1, Ordering::SeqCst);
        Ok(Utc::now())
    }
}

fn config() -> ShardingConfig {
    ShardingConfig {
        storage_poll_interval: Duration::from_millis(50),
        ..Default::default()
    }
}

type Build = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = SingleRunner> + Send>>
        + Send
        + Sync,
>;

async fn timer_survives_a_restart(build: Build, id: &str) {
    let nap = Nap {
        id: id.to_string(),
        millis: 800,
    };
    let workflow = NapWorkflow::default();

    let runner = build().await;
    let client = workflow
        .clone()
        .register(runner.sharding().clone())
        .await
        .unwrap();
    let started_at = Utc::now();
    let execution = client.start(&nap).await.unwrap();
    // Wait until the execution is suspended on its timer, then stop the node.
    let suspended = sql_support::eventually(Duration::from_secs(5), || {
        let sharding = runner.sharding().clone();
        let execution = execution.clone();
        async move {
            cruster::workflow::list_executions(&sharding, &Default::default())
                .await
                .unwrap()
                .iter()
                .any(|e| e.execution_id == execution && e.status.name() == "suspended")
        }
    })
    .await;
    assert!(suspended, "the execution suspended on its durable timer");
    runner.shutdown().await.unwrap();
    drop(client);

    let runner = build().await;
    let client = workflow
        .clone()
        .register(runner.sharding().clone())
        .await
        .unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(15), client.join(&execution))
        .await
        .expect("the timer fired on the restarted node")
        .unwrap();
    assert!(
        woke.woke_at >= woke.slept_from + chrono::Duration::milliseconds(800),
        "resumed early: {woke:?}"
    );
    assert!(woke.slept_from >= started_at - chrono::Duration::seconds(1));
    assert_eq!(
        workflow.before_runs.load(Ordering::SeqCst),
        1,
        "journaled before the restart, not run again"
    );
    assert_eq!(workflow.after_runs.load(Ordering::SeqCst), 1);
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_timer_survives_a_restart_on_sqlite() {
    let db = Arc::new(SqliteTestDb::new());
    let build: Build = Arc::new(move || {
        let db = db.clone();
        Box::pin(async move {
            SingleRunner::builder()
                .config(config())
                .sqlite(db.pool().await)
                .build()
                .await
                .unwrap()
        })
    });
    timer_survives_a_restart(build, "nap-sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_timer_survives_a_restart_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let pool = db.pool().await;
    let build: Build = Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            SingleRunner::builder()
                .config(config())
                .postgres(pool)
                .build()
                .await
                .unwrap()
        })
    });
    timer_survives_a_restart(build, "nap-postgres").await;
}
