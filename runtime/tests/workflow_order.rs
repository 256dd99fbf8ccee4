//! The seed README's workflows on a `SingleRunner`: `OrderWorkflow` with three activities,
//! its activity-group version, execution ids and idempotency keys, `start` + `poll`,
//! journaled calls to entities and workflows, inspection, and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cruster::prelude::*;
use cruster::workflow::{list_executions, workflow_journal, ExecutionFilter};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Serialize, Deserialize, Clone)]
struct ProcessOrderRequest {
    order_id: String,
    item_count: u32,
    amount: i64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct OrderResult {
    order_id: String,
    status: String,
}

fn order(id: &str) -> ProcessOrderRequest {
    ProcessOrderRequest {
        order_id: id.into(),
        item_count: 3,
        amount: 9900,
    }
}

mod readme {
    //! The README's `OrderWorkflow`, with `self.tx.put` in place of the SQL writes.
    use super::*;

    #[workflow]
    #[derive(Clone)]
    pub(super) struct OrderWorkflow;

    #[workflow_impl(
        key = |req: &ProcessOrderRequest| req.order_id.clone(),
        hash = false,
    )]
    impl OrderWorkflow {
        async fn execute(&self, request: ProcessOrderRequest) -> Result<OrderResult, ClusterError> {
            // Each activity is journaled. On replay, completed steps return cached results.
            self.reserve_inventory(request.order_id.clone(), request.item_count)
                .await?;
            self.charge_payment(request.order_id.clone(), request.amount)
                .await?;
            self.confirm_order(request.order_id.clone()).await?;

            Ok(OrderResult {
                order_id: request.order_id,
                status: "completed".into(),
            })
        }

        #[activity]
        async fn reserve_inventory(
            &self,
            order_id: String,
            count: u32,
        ) -> Result<(), ClusterError> {
            // self.tx is the activity's transaction, committed atomically with the journal.
            self.tx
                .put(&format!("reservations/{order_id}"), count.to_string())
                .await?;
            Ok(())
        }

        #[activity]
        async fn charge_payment(&self, order_id: String, amount: i64) -> Result<(), ClusterError> {
            self.tx
                .put(&format!("payments/{order_id}"), amount.to_string())
                .await?;
            Ok(())
        }

        #[activity]
        async fn confirm_order(&self, order_id: String) -> Result<(), ClusterError> {
            self.tx
                .put(&format!("orders/{order_id}"), "confirmed")
                .await?;
            Ok(())
        }
    }
}

mod groups {
    //! The README's activity-group version: `Inventory` and `Payments` composed into a
    //! workflow (private structs, groups with their own fields).
    use super::*;

    #[activity_group]
    #[derive(Clone)]
    struct Inventory {
        prefix: String,
    }

    #[activity_group_impl]
    impl Inventory {
        #[activity]
        async fn reserve(&self, order_id: String, count: u32) -> Result<String, ClusterError> {
            let id = format!("{}-{order_id}-{count}", self.prefix);
            self.tx
                .put(&format!("reservations/{id}"), order_id.clone())
                .await?;
            Ok(id)
        }
    }

    #[activity_group]
    #[derive(Clone)]
    struct Payments;

    #[activity_group_impl]
    impl Payments {
        #[activity]
        async fn charge(&self, order_id: String, amount: i64) -> Result<String, ClusterError> {
            let tx_id = format!("tx-{order_id}");
            self.tx
                .put(&format!("payments/{tx_id}"), amount.to_string())
                .await?;
            Ok(tx_id)
        }
    }

    #[workflow(name = "GroupedOrderWorkflow")]
    #[derive(Clone)]
    struct OrderWorkflow;

    #[workflow_impl(
        key = |req: &ProcessOrderRequest| req.order_id.clone(),
        hash = false,
        activity_groups(Inventory, Payments)
    )]
    impl OrderWorkflow {
        async fn execute(&self, request: ProcessOrderRequest) -> Result<OrderResult, ClusterError> {
            // Call activities from composed groups
            let reservation_id = self
                .reserve(request.order_id.clone(), request.item_count)
                .await?;
            let tx_id = self
                .charge(request.order_id.clone(), request.amount)
                .await?;

            // Local activities work alongside group activities
            self.finalize(request.order_id.clone(), reservation_id, tx_id)
                .await?;

            Ok(OrderResult {
                order_id: request.order_id,
                status: "done".into(),
            })
        }

        #[activity]
        async fn finalize(
            &self,
            order_id: String,
            res_id: String,
            tx_id: String,
        ) -> Result<(), ClusterError> {
            self.tx
                .put(&format!("orders/{order_id}"), format!("{res_id}/{tx_id}"))
                .await?;
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_activity_group_version_runs_group_and_local_activities() {
        let runner = runner().await;
        let client = OrderWorkflow
            .register(
                runner.sharding().clone(),
                Inventory {
                    prefix: "res".into(),
                },
                Payments,
            )
            .await
            .unwrap();
        let result = client.execute(&order("order-7")).await.unwrap();
        assert_eq!(result.status, "done");
        assert_eq!(
            get_value(&runner, "orders/order-7").await.as_deref(),
            Some("res-order-7-3/tx-order-7")
        );
        let journal = workflow_journal(runner.sharding(), "order-7")
            .await
            .unwrap();
        let names: Vec<&str> = journal.iter().map(|e| e.key.name.as_str()).collect();
        assert_eq!(names, ["Inventory.reserve", "Payments.charge", "finalize"]);
        runner.shutdown().await.unwrap();
    }
}

/// A workflow that counts its runs, with a gate the test opens.
#[workflow]
#[derive(Clone)]
struct CountedWorkflow {
    runs: Arc<AtomicUsize>,
    gate: Arc<Notify>,
    gated: bool,
}

#[workflow_impl]
impl CountedWorkflow {
    async fn execute(&self, request: String) -> Result<String, ClusterError> {
        let n = self.count(request.clone()).await?;
        if self.gated {
            self.gate.notified().await;
        }
        Ok(format!("{request}#{n}"))
    }

    #[activity]
    async fn count(&self, _request: String) -> Result<usize, ClusterError> {
        Ok(self.runs.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

async fn runner() -> SingleRunner {
    SingleRunner::builder().build().await.unwrap()
}

async fn get_value(runner: &SingleRunner, key: &str) -> Option<String> {
    let storage = runner.sharding().workflow_storage().unwrap();
    storage
        .get_value(key)
        .await
        .unwrap()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
}

#[tokio::test]
async fn the_readme_order_workflow_runs_its_three_activities_and_returns() {
    let runner = runner().await;
    let client = readme::OrderWorkflow
        .register(runner.sharding().clone())
        .await
        .unwrap();
    let result = client.execute(&order("order-42")).await.unwrap();
    assert_eq!(
        result,
        OrderResult {
            order_id: "order-42".into(),
            status: "completed".into()
        }
    );
    // hash = false: the key is the execution id.
    assert_eq!(client.execution_id(&order("order-42")).unwrap(), "order-42");
    // The activities' writes were committed with their journal entries.
    assert_eq!(
        get_value(&runner, "reservations/order-42").await.as_deref(),
        Some("3")
    );
    assert_eq!(
        get_value(&runner, "payments/order-42").await.as_deref(),
        Some("9900")
    );
    assert_eq!(
        get_value(&runner, "orders/order-42").await.as_deref(),
        Some("confirmed")
    );
    let journal = workflow_journal(runner.sharding(), "order-42")
        .await
        .unwrap();
    let names: Vec<&str> = journal.iter().map(|e| e.key.name.as_str()).collect();
    assert_eq!(
        names,
        ["reserve_inventory", "charge_payment", "confirm_order"]
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_same_key_twice_is_one_execution_with_one_result() {
    let runner = runner().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let client = CountedWorkflow {
        runs: runs.clone(),
        gate: Arc::new(Notify::new()),
        gated: false,
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();

    // Hashed idempotency key.
    let first = client
        .with_key("my-key")
        .execute(&"a".into())
        .await
        .unwrap();
    let second = client
        .with_key("my-key")
        .execute(&"b".into())
        .await
        .unwrap();
    assert_eq!(first, "a#1");
    assert_eq!(second, first, "the second execute returns the first result");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_ne!(
        client.with_key("my-key").execution_id(&"x".into()).unwrap(),
        "my-key"
    );

    // Raw key, used as it is.
    let raw = client
        .with_key_raw("raw-id")
        .execute(&"c".into())
        .await
        .unwrap();
    assert_eq!(
        client
            .with_key_raw("raw-id")
            .execute(&"d".into())
            .await
            .unwrap(),
        raw
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    // Without a key, the id is derived from the request: the same request is one execution.
    let a = client.execute(&"same".into()).await.unwrap();
    let b = client.execute(&"same".into()).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn start_returns_at_once_and_poll_sees_the_result_only_when_done() {
    let runner = runner().await;
    let gate = Arc::new(Notify::new());
    let client = CountedWorkflow {
        runs: Arc::new(AtomicUsize::new(0)),
        gate: gate.clone(),
        gated: true,
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();

    let exec_id = tokio::time::timeout(Duration::from_secs(2), client.start(&"job".into()))
        .await
        .expect("start does not wait for the workflow")
        .unwrap();
    assert_eq!(exec_id, client.execution_id(&"job".into()).unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(client.poll(&exec_id).await.unwrap(), None, "still running");
    let running = list_executions(
        runner.sharding(),
        &ExecutionFilter {
            status: Some("running"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        running.iter().any(|r| r.execution_id == exec_id),
        "{running:?}"
    );

    gate.notify_one();
    let result = tokio::time::timeout(Duration::from_secs(5), client.join(&exec_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result, "job#1");
    assert_eq!(
        client.poll(&exec_id).await.unwrap(),
        Some("job#1".to_string())
    );
    // An unknown execution id is not an error: there is no result (yet).
    assert_eq!(client.poll("no-such-execution").await.unwrap(), None);
    runner.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Journaled calls to entities and other workflows
// ---------------------------------------------------------------------------------------

#[entity]
#[derive(Clone)]
struct Counter {
    hits: Arc<AtomicUsize>,
}

#[entity_impl]
impl Counter {
    #[rpc(persisted)]
    pub async fn increment(&self, by: i64) -> Result<i64, ClusterError> {
        Ok(self.hits.fetch_add(1, Ordering::SeqCst) as i64 + by)
    }
}

#[workflow]
#[derive(Clone)]
struct Orchestrator;

#[workflow_impl(key = |id: &String| id.clone(), hash = false)]
impl Orchestrator {
    async fn execute(&self, id: String) -> Result<(i64, String), ClusterError> {
        let counted = self
            .client::<CounterClient>()
            .increment(&EntityId::new(&id), &10)
            .await?;
        let child = self
            .client::<CountedWorkflowClient>()
            .with_key_raw(format!("{id}-child"))
            .execute(&"child".to_string())
            .await?;
        // The sleep makes the execution suspend and replay from the start on resume: the
        // two calls above must come from the journal then, not be sent again.
        self.sleep(Duration::from_millis(100)).await?;
        Ok((counted, child))
    }
}

#[tokio::test]
async fn calls_to_entities_and_workflows_from_a_workflow_are_journaled_across_replays() {
    let runner = SingleRunner::builder()
        .config(ShardingConfig {
            storage_poll_interval: Duration::from_millis(50),
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    Counter { hits: hits.clone() }
        .register(runner.sharding().clone())
        .await
        .unwrap();
    CountedWorkflow {
        runs: runs.clone(),
        gate: Arc::new(Notify::new()),
        gated: false,
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();
    let client = Orchestrator
        .register(runner.sharding().clone())
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), client.execute(&"o-1".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result, (10, "child#1".to_string()));
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the entity was called once");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the child workflow ran once"
    );
    let journal = workflow_journal(runner.sharding(), "o-1").await.unwrap();
    let names: Vec<&str> = journal.iter().map(|e| e.key.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "cruster:persisted-call/Counter.increment",
            "cruster:persisted-call/CountedWorkflow.execute",
            "cruster:sleep"
        ],
        "calls are journaled by target and RPC, the sleep takes a position"
    );
    runner.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Bad input and unsupported runners
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_undeserializable_request_is_a_malformed_message_error() {
    let runner = runner().await;
    let client = CountedWorkflow {
        runs: Arc::new(AtomicUsize::new(0)),
        gate: Arc::new(Notify::new()),
        gated: false,
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();
    // The workflow takes a String; send it a map.
    let err = client
        .entity_client()
        .send_persisted::<_, ()>(
            &EntityId::new("bad-request"),
            "execute",
            &std::collections::HashMap::from([(1u8, 2u8)]),
            false,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::MalformedMessage { .. }),
        "{err:?}"
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_journal_entry_that_does_not_decode_parks_the_execution_naming_it_and_the_activity() {
    use cruster::ports::workflow_storage::{ActivityKey, JournalEntry};
    use cruster::types::ExitResult;

    // Runs that hit the entry make no progress: retried quickly here, then parked.
    let runner = SingleRunner::builder()
        .config(ShardingConfig {
            storage_poll_interval: Duration::from_millis(20),
            storage_retry_backoff_base: Duration::from_millis(10),
            storage_retry_backoff_max: Duration::from_millis(20),
            workflow_max_failed_attempts: 2,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let client = CountedWorkflow {
        runs: Arc::new(AtomicUsize::new(0)),
        gate: Arc::new(Notify::new()),
        gated: false,
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();
    // A journal entry for the first `count` call whose bytes are not a usize.
    let storage = runner.sharding().workflow_storage().unwrap().clone();
    let key = ActivityKey {
        name: "count".into(),
        sequence: 0,
    };
    let tx = storage.begin_activity("corrupt", &key).await.unwrap();
    tx.commit(&JournalEntry {
        execution_id: "corrupt".into(),
        key,
        result: ExitResult::Success(bytes::Bytes::from_static(&[0xc1])),
        attempts: 1,
        recorded_at: chrono::Utc::now(),
    })
    .await
    .unwrap();

    let err = client
        .with_key_raw("corrupt")
        .execute(&"x".into())
        .await
        .unwrap_err();
    match &err {
        ClusterError::WorkflowParked {
            execution_id,
            attempts,
            last_error,
        } => {
            assert_eq!(execution_id, "corrupt");
            assert_eq!(*attempts, 2);
            assert!(
                last_error.contains("`corrupt`")
                    && last_error.contains("`count`")
                    && last_error.contains("does not decode"),
                "{last_error}"
            );
        }
        other => panic!("expected WorkflowParked, got {other:?}"),
    }
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_runner_without_workflow_storage_refuses_workflows_at_registration() {
    use cruster::storage::memory::{InProcessNetwork, MemoryMessageStorage};

    let network = InProcessNetwork::new();
    let sharding = ShardingImpl::new_with_engines(
        Arc::new(ShardingConfig::default()),
        Arc::new(network.runners()),
        None,
        None,
        Some(Arc::new(MemoryMessageStorage::new())),
        None,
        None,
        Arc::new(ClusterMetrics::unregistered()),
    )
    .unwrap();
    let err = readme::OrderWorkflow.register(sharding).await.unwrap_err();
    match &err {
        ClusterError::Unsupported { operation, backend } => {
            assert!(operation.contains("OrderWorkflow"), "{operation}");
            assert!(backend.contains("workflow storage"), "{backend}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[tokio::test]
async fn completed_executions_are_listed_with_their_journal() {
    let runner = runner().await;
    let client = readme::OrderWorkflow
        .register(runner.sharding().clone())
        .await
        .unwrap();
    client.execute(&order("listed")).await.unwrap();
    let completed = list_executions(
        runner.sharding(),
        &ExecutionFilter {
            workflow: Some("OrderWorkflow".into()),
            status: Some("completed"),
            limit: 0,
        },
    )
    .await
    .unwrap();
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].execution_id, "listed");
    let journal = workflow_journal(runner.sharding(), "listed").await.unwrap();
    assert_eq!(journal.len(), 3);
    assert!(journal.iter().all(|e| e.attempts == 1));
    runner.shutdown().await.unwrap();
}
