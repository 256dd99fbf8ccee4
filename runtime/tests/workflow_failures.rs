//! A failure the workflow body caught is its own business: a later transient storage error
//! of the engine must still be retried, not become the workflow's final answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cruster::ports::workflow_storage::{
    ActivityKey, ActivityTransaction, JournalEntry, WorkflowStorage,
};
use cruster::prelude::*;
use cruster::storage::memory::MemoryWorkflowStorage;

/// Journal storage whose first `begin_activity` for `flaky` fails like a lost connection.
struct FlakyJournal {
    inner: MemoryWorkflowStorage,
    failures_left: AtomicUsize,
}

#[async_trait]
impl WorkflowStorage for FlakyJournal {
    async fn journal_entry(
        &self,
        execution_id: &str,
        key: &ActivityKey,
    ) -> Result<Option<JournalEntry>, ClusterError> {
        self.inner.journal_entry(execution_id, key).await
    }
    async fn journal(&self, execution_id: &str) -> Result<Vec<JournalEntry>, ClusterError> {
        self.inner.journal(execution_id).await
    }
    async fn begin_activity(
        &self,
        execution_id: &str,
        key: &ActivityKey,
    ) -> Result<Box<dyn ActivityTransaction>, ClusterError> {
        if key.name == "flaky"
            && self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(ClusterError::PersistenceError {
                reason: "injected: the journal's connection was lost".into(),
                source: None,
            });
        }
        self.inner.begin_activity(execution_id, key).await
    }
    async fn delete_journal(&self, execution_id: &str) -> Result<(), ClusterError> {
        self.inner.delete_journal(execution_id).await
    }
    async fn get_value(&self, key: &str) -> Result<Option<Bytes>, ClusterError> {
        self.inner.get_value(key).await
    }
}

#[workflow]
#[derive(Clone)]
struct CatchingWorkflow;

#[workflow_impl(key = |id: &String| id.clone(), hash = false)]
impl CatchingWorkflow {
    async fn execute(&self, id: String) -> Result<String, ClusterError> {
        let first = match self.doomed(id.clone()).await {
            Ok(_) => "unexpected".to_string(),
            Err(_) => "caught".to_string(),
        };
        let second = self.flaky(id).await?;
        Ok(format!("{first}+{second}"))
    }

    #[activity]
    async fn doomed(&self, _id: String) -> Result<String, ClusterError> {
        Err(ClusterError::PersistenceError {
            reason: "the activity's own failure".into(),
            source: None,
        })
    }

    #[activity]
    async fn flaky(&self, _id: String) -> Result<String, ClusterError> {
        Ok("done".into())
    }
}

#[tokio::test]
async fn a_caught_activity_failure_does_not_make_a_later_storage_error_terminal() {
    let journal = Arc::new(FlakyJournal {
        inner: MemoryWorkflowStorage::new(),
        failures_left: AtomicUsize::new(1),
    });
    let runner = SingleRunner::builder()
        .config(ShardingConfig {
            storage_poll_interval: Duration::from_millis(20),
            ..Default::default()
        })
        .workflow_storage(journal.clone())
        .build()
        .await
        .unwrap();
    CatchingWorkflow
        .register(runner.sharding().clone())
        .await
        .unwrap();
    let client = CatchingWorkflowClient::new(runner.sharding().clone());
    let result = tokio::time::timeout(Duration::from_secs(20), client.execute(&"c-1".to_string()))
        .await
        .expect("the execution is retried and completes");
    assert_eq!(result.unwrap(), "caught+done");
    assert_eq!(
        journal.failures_left.load(Ordering::SeqCst),
        0,
        "the fault was hit"
    );
    runner.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// An engine error of a journaled call is retried, never journaled as the call's result
// ---------------------------------------------------------------------------------------

#[entity]
#[derive(Clone)]
struct Pricer;

#[entity_impl]
impl Pricer {
    #[rpc]
    pub async fn price(&self) -> Result<i64, ClusterError> {
        Ok(99)
    }
}

#[workflow]
#[derive(Clone)]
struct QuoteWorkflow {
    runs: Arc<AtomicUsize>,
}

#[workflow_impl(key = |id: &String| id.clone(), hash = false)]
impl QuoteWorkflow {
    async fn execute(&self, id: String) -> Result<i64, ClusterError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.client::<PricerClient>()
            .price(&cruster::types::EntityId::new(&id))
            .await
    }
}

#[tokio::test]
async fn a_call_that_fails_in_the_engine_is_retried_not_journaled() {
    let runner = SingleRunner::builder()
        .config(ShardingConfig {
            storage_poll_interval: Duration::from_millis(20),
            storage_retry_backoff_base: Duration::from_millis(20),
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let client = QuoteWorkflow { runs: runs.clone() }
        .register(runner.sharding().clone())
        .await
        .unwrap();
    // `Pricer` is not registered yet: the call fails with `EntityNotRegistered`, an error of
    // the engine (routing), not an answer of the entity.
    let exec_id = client.start(&"quote-1".to_string()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while runs.load(Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the execution was not run again after its call failed (runs: {})",
            runs.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        cruster::workflow::workflow_journal(runner.sharding(), &exec_id)
            .await
            .unwrap()
            .is_empty(),
        "the failed call is not journaled"
    );

    Pricer.register(runner.sharding().clone()).await.unwrap();
    let price = tokio::time::timeout(Duration::from_secs(10), client.join(&exec_id))
        .await
        .expect("the retried execution completes")
        .unwrap();
    assert_eq!(price, 99);
    let journal = cruster::workflow::workflow_journal(runner.sharding(), &exec_id)
        .await
        .unwrap();
    let names: Vec<&str> = journal.iter().map(|e| e.key.name.as_str()).collect();
    assert_eq!(names, ["cruster:call/Pricer.price"]);
    runner.shutdown().await.unwrap();
}
