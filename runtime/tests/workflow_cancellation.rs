//! Cancelling workflow executions (`client.cancel`), on memory storage and on PostgreSQL:
//! a running execution stops at its next activity (the running one finishes), a long
//! durable sleep is cut short, an interruptible activity is stopped at once, the request
//! survives a restart of the runner, and cancel answers clearly for finished and unknown
//! executions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster::prelude::*;
use cruster::storage::memory::{MemoryMessageStorage, MemoryWorkflowEngine, MemoryWorkflowStorage};
use cruster::workflow::{
    list_executions, workflow_journal, CancelOutcome, ExecutionFilter, ExecutionStatus,
};
use sql_support::PgTestDb;
use tokio::sync::Notify;

/// What the test workflows report, shared by every runner of one test.
#[derive(Default)]
struct Probe {
    blocking_entered: AtomicU32,
    release: Notify,
    entered: Notify,
    after_ran: AtomicBool,
}

#[workflow]
#[derive(Clone)]
struct Blocking {
    probe: Arc<Probe>,
}

#[workflow_impl(key = |id: &String| id.clone(), hash = false)]
impl Blocking {
    async fn execute(&self, id: String) -> Result<String, ClusterError> {
        self.blocking_step(id.clone()).await?;
        self.after_step(id.clone()).await?;
        Ok(id)
    }

    /// Runs until the test releases it (finishes when cancelled: the default).
    #[activity]
    async fn blocking_step(&self, _id: String) -> Result<(), ClusterError> {
        self.probe.blocking_entered.fetch_add(1, Ordering::SeqCst);
        self.probe.entered.notify_one();
        self.probe.release.notified().await;
        Ok(())
    }

    #[activity]
    async fn after_step(&self, _id: String) -> Result<(), ClusterError> {
        self.probe.after_ran.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[workflow]
#[derive(Clone)]
struct Sleeper {
    probe: Arc<Probe>,
}

#[workflow_impl(key = |id: &String| id.clone(), hash = false)]
impl Sleeper {
    async fn execute(&self, id: String) -> Result<String, ClusterError> {
        self.sleep(Duration::from_secs(24 * 3600)).await?;
        self.after_sleep(id.clone()).await?;
        Ok(id)
    }

    #[activity]
    async fn after_sleep(&self, _id: String) -> Result<(), ClusterError> {
        self.probe.after_ran.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[workflow]
#[derive(Clone)]
struct Interruptible {
    probe: Arc<Probe>,
}

#[workflow_impl(key = |id: &String| id.clone(), hash = false)]
impl Interruptible {
    async fn execute(&self, id: String) -> Result<String, ClusterError> {
        self.endless(id.clone()).await?;
        Ok(id)
    }

    /// Never ends by itself: only an interruption stops it.
    #[activity(on_cancel = "interrupt")]
    async fn endless(&self, _id: String) -> Result<(), ClusterError> {
        self.probe.blocking_entered.fetch_add(1, Ordering::SeqCst);
        self.probe.entered.notify_one();
        std::future::pending::<()>().await;
        Ok(())
    }
}

fn config() -> ShardingConfig {
    ShardingConfig {
        storage_poll_interval: Duration::from_millis(20),
        shutdown_timeout: Duration::from_millis(300),
        workflow_cancel_poll_interval: Duration::from_millis(20),
        ..Default::default()
    }
}

/// Memory storages that outlive a runner, so a test can restart it.
#[derive(Clone, Default)]
struct MemoryStores {
    messages: Arc<MemoryMessageStorage>,
    journal: Arc<MemoryWorkflowStorage>,
    engine: Arc<MemoryWorkflowEngine>,
}

impl MemoryStores {
    async fn runner(&self) -> SingleRunner {
        SingleRunner::builder()
            .config(config())
            .message_storage(self.messages.clone())
            .workflow_storage(self.journal.clone())
            .workflow_engine(self.engine.clone())
            .build()
            .await
            .unwrap()
    }
}

async fn pg_runner(db: &PgTestDb) -> SingleRunner {
    SingleRunner::builder()
        .postgres(db.pool().await)
        .config(config())
        .build()
        .await
        .unwrap()
}

async fn entered(probe: &Probe) {
    tokio::time::timeout(Duration::from_secs(10), probe.entered.notified())
        .await
        .expect("the activity started within 10 s");
}

async fn status_of(runner: &SingleRunner, execution_id: &str) -> Option<ExecutionStatus> {
    list_executions(runner.sharding(), &ExecutionFilter::default())
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.execution_id == execution_id)
        .map(|r| r.status)
}

async fn wait_for_status(runner: &SingleRunner, execution_id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = status_of(runner, execution_id).await;
        if now.as_ref().map(ExecutionStatus::name) == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "execution {execution_id} did not become {status} within 10 s: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn join_cancelled<W: cruster::workflow::WorkflowDefinition<Response = String>>(
    client: &cruster::workflow::WorkflowClient<W>,
    execution_id: &str,
) {
    let err = tokio::time::timeout(Duration::from_secs(10), client.join(execution_id))
        .await
        .expect("the cancelled execution ended within 10 s");
    match err {
        Err(ClusterError::WorkflowCancelled { execution_id: id }) => assert_eq!(id, execution_id),
        other => panic!("expected WorkflowCancelled, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios, run on both storages
// ---------------------------------------------------------------------------------------

async fn running_execution_stops_at_its_next_activity(runner: SingleRunner) {
    let probe = Arc::new(Probe::default());
    let client = Blocking {
        probe: probe.clone(),
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();
    let exec = client.start(&"order-1".to_string()).await.unwrap();
    entered(&probe).await;

    let outcome = client.cancel(&exec).await.unwrap();
    let CancelOutcome::Requested { requested_at } = outcome else {
        panic!("expected Requested, got {outcome:?}");
    };
    // Idempotent: the first request's instant.
    assert_eq!(
        client.cancel(&exec).await.unwrap(),
        CancelOutcome::Requested { requested_at }
    );
    // The running activity finishes (its default); the next one never starts.
    probe.release.notify_one();
    join_cancelled(&client, &exec).await;
    assert!(
        !probe.after_ran.load(Ordering::SeqCst),
        "the activity after the cancellation ran"
    );
    let journal = workflow_journal(runner.sharding(), &exec).await.unwrap();
    let names: Vec<&str> = journal.iter().map(|e| e.key.name.as_str()).collect();
    assert_eq!(names, vec!["blocking_step"], "journal: {journal:?}");
    assert_eq!(
        status_of(&runner, &exec).await,
        Some(ExecutionStatus::Cancelled)
    );
    assert!(matches!(
        client.poll(&exec).await,
        Err(ClusterError::WorkflowCancelled { .. })
    ));
    // Cancelling again is a no-op that says it finished.
    assert_eq!(
        client.cancel(&exec).await.unwrap(),
        CancelOutcome::AlreadyFinished {
            status: ExecutionStatus::Cancelled
        }
    );
    runner.shutdown().await.unwrap();
}

async fn long_sleep_is_cut_short(runner: SingleRunner) {
    let probe = Arc::new(Probe::default());
    let client = Sleeper {
        probe: probe.clone(),
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();
    let exec = client.start(&"nap-1".to_string()).await.unwrap();
    wait_for_status(&runner, &exec, "suspended").await;
    assert!(matches!(
        client.cancel(&exec).await.unwrap(),
        CancelOutcome::Requested { .. }
    ));
    join_cancelled(&client, &exec).await;
    assert!(!probe.after_ran.load(Ordering::SeqCst));
    runner.shutdown().await.unwrap();
}

async fn cancellation_survives_a_restart(
    first: SingleRunner,
    second: impl std::future::Future<Output = SingleRunner>,
) {
    let probe = Arc::new(Probe::default());
    let client = Blocking {
        probe: probe.clone(),
    }
    .register(first.sharding().clone())
    .await
    .unwrap();
    let exec = client.start(&"order-restart".to_string()).await.unwrap();
    entered(&probe).await;
    assert!(matches!(
        client.cancel(&exec).await.unwrap(),
        CancelOutcome::Requested { .. }
    ));
    // The runner stops while the activity still runs: the activity is aborted with its
    // run, nothing is journaled, and only the stored request remains.
    first.shutdown().await.unwrap();

    let second = second.await;
    let client = Blocking {
        probe: probe.clone(),
    }
    .register(second.sharding().clone())
    .await
    .unwrap();
    join_cancelled(&client, &exec).await;
    assert_eq!(
        probe.blocking_entered.load(Ordering::SeqCst),
        1,
        "the restarted runner ran the blocking activity again instead of stopping"
    );
    assert!(!probe.after_ran.load(Ordering::SeqCst));
    assert!(workflow_journal(second.sharding(), &exec)
        .await
        .unwrap()
        .is_empty());
    second.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_workflow_stops_at_its_next_activity_on_memory() {
    running_execution_stops_at_its_next_activity(MemoryStores::default().runner().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_sleeping_workflow_cuts_a_day_long_sleep_short_on_memory() {
    long_sleep_is_cut_short(MemoryStores::default().runner().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_survives_a_runner_restart_on_memory() {
    let stores = MemoryStores::default();
    let first = stores.runner().await;
    cancellation_survives_a_restart(first, stores.runner()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interruptible_activity_is_stopped_at_once_and_not_journaled() {
    let runner = MemoryStores::default().runner().await;
    let probe = Arc::new(Probe::default());
    let client = Interruptible {
        probe: probe.clone(),
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();
    let exec = client.start(&"endless-1".to_string()).await.unwrap();
    entered(&probe).await;
    client.cancel(&exec).await.unwrap();
    join_cancelled(&client, &exec).await;
    assert!(workflow_journal(runner.sharding(), &exec)
        .await
        .unwrap()
        .is_empty());
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_finished_or_unknown_execution_says_so() {
    let runner = MemoryStores::default().runner().await;
    let probe = Arc::new(Probe::default());
    let client = Blocking {
        probe: probe.clone(),
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();
    probe.release.notify_one();
    let id = "done-1".to_string();
    assert_eq!(client.execute(&id).await.unwrap(), id);
    assert_eq!(
        client.cancel(&id).await.unwrap(),
        CancelOutcome::AlreadyFinished {
            status: ExecutionStatus::Completed
        }
    );
    assert_eq!(client.poll(&id).await.unwrap(), Some(id.clone()));

    match client.cancel("no-such-execution").await {
        Err(ClusterError::WorkflowNotFound {
            workflow,
            execution_id,
        }) => {
            assert_eq!(workflow, "Blocking");
            assert_eq!(execution_id, "no-such-execution");
        }
        other => panic!("expected WorkflowNotFound, got {other:?}"),
    }
    // Another workflow's execution is not this workflow's.
    let sleeper = Sleeper { probe }
        .register(runner.sharding().clone())
        .await
        .unwrap();
    assert!(matches!(
        sleeper.cancel(&id).await,
        Err(ClusterError::WorkflowNotFound { .. })
    ));
    runner.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_workflow_stops_at_its_next_activity_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    running_execution_stops_at_its_next_activity(pg_runner(&db).await).await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_sleeping_workflow_cuts_a_day_long_sleep_short_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    long_sleep_is_cut_short(pg_runner(&db).await).await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_survives_a_single_runner_restart_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let first = pg_runner(&db).await;
    cancellation_survives_a_restart(first, pg_runner(&db)).await;
    db.drop_schema().await;
}
