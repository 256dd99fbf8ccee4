//! Dead letters of workflows, on memory storage and on PostgreSQL: an execution whose
//! activity panics on every run is parked after `workflow_max_failed_attempts` runs while
//! the runner keeps serving other workflows, is listed as parked with its last error, and
//! completes once the activity is fixed and the execution resumed. A panic in `execute`
//! itself is caught the same way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster::prelude::*;
use cruster::workflow::{
    list_parked_executions, resume_parked_execution, workflow_journal, ExecutionRecord,
};
use sql_support::PgTestDb;

const MAX_ATTEMPTS: u32 = 3;

/// The card service of the test: broken until the test fixes it.
#[derive(Default)]
struct CardService {
    fixed: AtomicBool,
    reserve_runs: AtomicU32,
    charge_runs: AtomicU32,
}

#[workflow]
#[derive(Clone)]
struct Checkout {
    cards: Arc<CardService>,
}

#[workflow_impl(key = |id: &String| id.clone(), hash = false)]
impl Checkout {
    async fn execute(&self, id: String) -> Result<String, ClusterError> {
        self.reserve(id.clone()).await?;
        // A workflow that catches the activity's error still made no progress.
        match self.charge(id.clone()).await {
            Ok(receipt) => Ok(receipt),
            Err(err) => Err(ClusterError::handler(format!("charging failed: {err}"))),
        }
    }

    #[activity]
    async fn reserve(&self, _id: String) -> Result<(), ClusterError> {
        self.cards.reserve_runs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    #[activity(retries = 2, backoff_base_ms = 1)]
    async fn charge(&self, id: String) -> Result<String, ClusterError> {
        self.cards.charge_runs.fetch_add(1, Ordering::SeqCst);
        if !self.cards.fixed.load(Ordering::SeqCst) {
            panic!("card service down");
        }
        Ok(format!("receipt for {id}"))
    }
}

#[workflow]
#[derive(Clone)]
struct Greeter;

#[workflow_impl(key = |name: &String| name.clone(), hash = false)]
impl Greeter {
    async fn execute(&self, name: String) -> Result<String, ClusterError> {
        self.greet(name).await
    }

    #[activity]
    async fn greet(&self, name: String) -> Result<String, ClusterError> {
        Ok(format!("hello {name}"))
    }
}

#[workflow]
#[derive(Clone)]
struct PanickyBody {
    fixed: Arc<AtomicBool>,
}

#[workflow_impl(key = |id: &String| id.clone(), hash = false)]
impl PanickyBody {
    async fn execute(&self, id: String) -> Result<String, ClusterError> {
        let greeting = self.step(id).await?;
        assert!(
            self.fixed.load(Ordering::SeqCst),
            "execute itself is broken"
        );
        Ok(greeting)
    }

    #[activity]
    async fn step(&self, id: String) -> Result<String, ClusterError> {
        Ok(format!("stepped {id}"))
    }
}

fn config() -> ShardingConfig {
    ShardingConfig {
        storage_poll_interval: Duration::from_millis(20),
        storage_retry_backoff_base: Duration::from_millis(10),
        storage_retry_backoff_max: Duration::from_millis(50),
        workflow_max_failed_attempts: MAX_ATTEMPTS,
        shutdown_timeout: Duration::from_millis(300),
        ..Default::default()
    }
}

async fn wait_until_parked(runner: &SingleRunner, execution_id: &str) -> ExecutionRecord {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let parked = list_parked_executions(runner.sharding(), None, 0)
            .await
            .unwrap();
        if let Some(record) = parked.into_iter().find(|r| r.execution_id == execution_id) {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "execution {execution_id} was not parked within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn panicking_activity_is_parked_then_resumed(runner: SingleRunner) {
    let cards = Arc::new(CardService::default());
    let checkout = Checkout {
        cards: cards.clone(),
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();
    let greeter = Greeter.register(runner.sharding().clone()).await.unwrap();

    let exec = checkout.start(&"cart-1".to_string()).await.unwrap();
    let parked = wait_until_parked(&runner, &exec).await;
    assert_eq!(parked.attempts, MAX_ATTEMPTS);
    assert_eq!(parked.workflow, "Checkout");
    let last_error = parked.last_error.as_ref().map(ToString::to_string);
    assert!(
        last_error
            .as_deref()
            .is_some_and(|e| e.contains("card service down") && e.contains("charge")),
        "last error: {last_error:?}"
    );
    // A panic is a defect, not a result: it is neither retried in place nor journaled. The
    // first run made progress (it journaled `reserve`), so the count starts after it.
    assert_eq!(cards.charge_runs.load(Ordering::SeqCst), MAX_ATTEMPTS + 1);
    assert_eq!(
        cards.reserve_runs.load(Ordering::SeqCst),
        1,
        "the journaled activity ran again"
    );
    match checkout.poll(&exec).await {
        Err(ClusterError::WorkflowParked {
            execution_id,
            attempts,
            last_error,
        }) => {
            assert_eq!(execution_id, exec);
            assert_eq!(attempts, MAX_ATTEMPTS);
            assert!(last_error.contains("card service down"), "{last_error}");
        }
        other => panic!("expected WorkflowParked, got {other:?}"),
    }
    // Parked stays parked: nothing runs it by itself.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cards.charge_runs.load(Ordering::SeqCst), MAX_ATTEMPTS + 1);

    // The runner serves other workflows meanwhile.
    assert_eq!(
        greeter.execute(&"ada".to_string()).await.unwrap(),
        "hello ada"
    );

    // Fix, resume, complete.
    cards.fixed.store(true, Ordering::SeqCst);
    resume_parked_execution(runner.sharding(), &exec)
        .await
        .unwrap();
    let receipt = tokio::time::timeout(Duration::from_secs(10), checkout.join(&exec))
        .await
        .expect("the resumed execution finished within 10 s")
        .unwrap();
    assert_eq!(receipt, "receipt for cart-1");
    assert_eq!(cards.charge_runs.load(Ordering::SeqCst), MAX_ATTEMPTS + 2);
    assert_eq!(cards.reserve_runs.load(Ordering::SeqCst), 1);
    let journal = workflow_journal(runner.sharding(), &exec).await.unwrap();
    assert_eq!(journal.len(), 2, "{journal:?}");
    assert!(
        list_parked_executions(runner.sharding(), Some("Checkout"), 0)
            .await
            .unwrap()
            .is_empty()
    );

    // Only a parked execution can be resumed.
    assert!(matches!(
        resume_parked_execution(runner.sharding(), &exec).await,
        Err(ClusterError::WorkflowNotParked { ref status, .. }) if status == "completed"
    ));
    assert!(matches!(
        resume_parked_execution(runner.sharding(), "no-such-execution").await,
        Err(ClusterError::WorkflowNotFound { .. })
    ));
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_whose_activity_always_panics_is_parked_and_resumes_after_the_fix_on_memory() {
    let runner = SingleRunner::builder()
        .config(config())
        .build()
        .await
        .unwrap();
    panicking_activity_is_parked_then_resumed(runner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_whose_activity_always_panics_is_parked_and_resumes_after_the_fix_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let runner = SingleRunner::builder()
        .postgres(db.pool().await)
        .config(config())
        .build()
        .await
        .unwrap();
    panicking_activity_is_parked_then_resumed(runner).await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_execute_is_caught_counted_and_parks_the_execution() {
    let runner = SingleRunner::builder()
        .config(config())
        .build()
        .await
        .unwrap();
    let fixed = Arc::new(AtomicBool::new(false));
    let client = PanickyBody {
        fixed: fixed.clone(),
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();
    // `execute` waits: it answers with the parking error instead of hanging.
    let err = tokio::time::timeout(
        Duration::from_secs(15),
        client.execute(&"body-1".to_string()),
    )
    .await
    .expect("execute answered within 15 s")
    .unwrap_err();
    match &err {
        ClusterError::WorkflowParked {
            attempts,
            last_error,
            ..
        } => {
            assert_eq!(*attempts, MAX_ATTEMPTS);
            assert!(
                last_error.contains("execute itself is broken"),
                "{last_error}"
            );
        }
        other => panic!("expected WorkflowParked, got {other:?}"),
    }
    fixed.store(true, Ordering::SeqCst);
    resume_parked_execution(runner.sharding(), "body-1")
        .await
        .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), client.join("body-1"))
        .await
        .expect("the resumed execution finished within 10 s")
        .unwrap();
    assert_eq!(done, "stepped body-1");
    runner.shutdown().await.unwrap();
}

/// Counts and announces the runs of an activity that never ends.
#[derive(Default)]
struct Hang {
    runs: AtomicU32,
    entered: tokio::sync::Notify,
}

#[workflow]
#[derive(Clone)]
struct Hanger {
    hang: Arc<Hang>,
}

#[workflow_impl(key = |id: &String| id.clone(), hash = false)]
impl Hanger {
    async fn execute(&self, id: String) -> Result<String, ClusterError> {
        self.hang_forever(id.clone()).await?;
        Ok(id)
    }

    #[activity]
    async fn hang_forever(&self, _id: String) -> Result<(), ClusterError> {
        self.hang.runs.fetch_add(1, Ordering::SeqCst);
        self.hang.entered.notify_one();
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_whose_runner_dies_each_time_park_the_execution_on_the_next_start() {
    use cruster::storage::memory::{
        MemoryMessageStorage, MemoryWorkflowEngine, MemoryWorkflowStorage,
    };
    let messages = Arc::new(MemoryMessageStorage::new());
    let journal = Arc::new(MemoryWorkflowStorage::new());
    let engine = Arc::new(MemoryWorkflowEngine::new());
    let runner = || {
        SingleRunner::builder()
            .config(config())
            .message_storage(messages.clone())
            .workflow_storage(journal.clone())
            .workflow_engine(engine.clone())
            .build()
    };
    let hang = Arc::new(Hang::default());
    let mut exec = None;
    // Every run is cut off by its runner stopping mid-activity: no outcome, no progress.
    for _ in 0..MAX_ATTEMPTS {
        let current = runner().await.unwrap();
        let client = Hanger { hang: hang.clone() }
            .register(current.sharding().clone())
            .await
            .unwrap();
        if exec.is_none() {
            exec = Some(client.start(&"stuck-1".to_string()).await.unwrap());
        }
        tokio::time::timeout(Duration::from_secs(10), hang.entered.notified())
            .await
            .expect("the execution ran again on the new runner within 10 s");
        current.shutdown().await.unwrap();
    }
    let exec = exec.unwrap();

    // The next runner finds the attempts used up and parks instead of running again.
    let last = runner().await.unwrap();
    Hanger { hang: hang.clone() }
        .register(last.sharding().clone())
        .await
        .unwrap();
    let parked = wait_until_parked(&last, &exec).await;
    assert_eq!(parked.attempts, MAX_ATTEMPTS);
    let last_error = parked.last_error.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        last_error.contains("ended without an outcome"),
        "{last_error}"
    );
    assert_eq!(hang.runs.load(Ordering::SeqCst), MAX_ATTEMPTS);
    last.shutdown().await.unwrap();
}
