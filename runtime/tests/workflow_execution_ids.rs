//! Execution ids are shared by all workflows: two workflows whose keys derive the same id
//! must not run (or read) each other's execution. The second one is refused with
//! `ExecutionIdTaken`, naming both workflows, and the first one's execution is untouched;
//! on memory storage and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use cruster::prelude::*;
use sql_support::PgTestDb;

/// Ships an order; keyed by the order id as it is.
#[workflow]
#[derive(Clone)]
struct ShipOrder {
    runs: Arc<AtomicU32>,
}

#[workflow_impl(key = |order: &String| order.clone(), hash = false)]
impl ShipOrder {
    async fn execute(&self, order: String) -> Result<String, ClusterError> {
        self.pack(order.clone()).await?;
        Ok(format!("shipped {order}"))
    }

    #[activity]
    async fn pack(&self, _order: String) -> Result<(), ClusterError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Refunds an order; keyed by the same order id, so its ids collide with `ShipOrder`'s.
#[workflow]
#[derive(Clone)]
struct RefundOrder {
    runs: Arc<AtomicU32>,
}

#[workflow_impl(key = |order: &String| order.clone(), hash = false)]
impl RefundOrder {
    async fn execute(&self, order: String) -> Result<u64, ClusterError> {
        self.pay_back(order).await?;
        Ok(42)
    }

    #[activity]
    async fn pay_back(&self, _order: String) -> Result<(), ClusterError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn is_taken(err: &ClusterError) -> bool {
    matches!(
        err,
        ClusterError::ExecutionIdTaken { execution_id, workflow, taken_by }
            if execution_id == "order-7" && workflow == "RefundOrder" && taken_by == "ShipOrder"
    )
}

async fn a_colliding_workflow_is_refused(runner: SingleRunner) {
    let shipped = Arc::new(AtomicU32::new(0));
    let refunded = Arc::new(AtomicU32::new(0));
    let ship = ShipOrder {
        runs: shipped.clone(),
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();
    let refund = RefundOrder {
        runs: refunded.clone(),
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();

    let order = "order-7".to_string();
    assert_eq!(ship.execute(&order).await.unwrap(), "shipped order-7");

    let err = refund.execute(&order).await.unwrap_err();
    assert!(is_taken(&err), "expected ExecutionIdTaken, got {err:?}");
    assert!(
        err.to_string().contains("prefix"),
        "the message says what to do: {err}"
    );
    assert_eq!(refunded.load(Ordering::SeqCst), 0, "the refund never ran");
    let err = refund.poll("order-7").await.unwrap_err();
    assert!(is_taken(&err), "poll is refused too, got {err:?}");
    let err = refund.join("order-7").await.unwrap_err();
    assert!(is_taken(&err), "join is refused too, got {err:?}");

    // The shipment is untouched: its result, and executing again runs nothing.
    assert_eq!(
        ship.poll("order-7").await.unwrap().as_deref(),
        Some("shipped order-7")
    );
    assert_eq!(ship.execute(&order).await.unwrap(), "shipped order-7");
    assert_eq!(shipped.load(Ordering::SeqCst), 1);

    // A prefixed key is an execution of its own.
    assert_eq!(
        refund.execute(&"refund-order-7".to_string()).await.unwrap(),
        42
    );
    assert_eq!(refunded.load(Ordering::SeqCst), 1);
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_colliding_with_another_ones_execution_id_is_refused_on_memory() {
    let runner = SingleRunner::builder().build().await.unwrap();
    a_colliding_workflow_is_refused(runner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_colliding_with_another_ones_execution_id_is_refused_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let runner = SingleRunner::builder()
        .postgres(db.pool().await)
        .build()
        .await
        .unwrap();
    a_colliding_workflow_is_refused(runner).await;
    db.drop_schema().await;
}
