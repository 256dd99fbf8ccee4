//! Changing a workflow's code while executions are in flight, on memory and on PostgreSQL.
//!
//! Each scenario runs two runner lifetimes against the same storage, with two versions of
//! the `Pricing` workflow registered under the same name: an execution started by the first
//! version suspends in a durable sleep, the runner stops, and the second version resumes it
//! by replaying its journal.
//!
//! * v1 charges the old way; v2 guards the new way with `self.patched("new-pricing")`: the
//!   v1 execution completes on the old path, a new execution takes the new path.
//! * v3 deletes the old path with `self.deprecate_patch("new-pricing")`: an execution that
//!   recorded the patch under v2 still replays, and new executions record no marker.
//! * `Unpatched` changes the charge without a patch: the v1 execution fails with a
//!   non-determinism error naming the position, both steps and the patch fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster::prelude::*;
use cruster::storage::memory::{MemoryMessageStorage, MemoryWorkflowEngine, MemoryWorkflowStorage};
use cruster::workflow::{list_executions, workflow_journal, ExecutionFilter};
use sql_support::PgTestDb;

const SLEEP: Duration = Duration::from_millis(600);

mod v1 {
    use super::*;

    /// The first version: reserve, charge the old way, sleep, ship.
    #[workflow(name = "Pricing")]
    #[derive(Clone)]
    pub(super) struct Pricing;

    #[workflow_impl(key = |id: &String| id.clone(), hash = false)]
    impl Pricing {
        async fn execute(&self, id: String) -> Result<String, ClusterError> {
            self.reserve(id.clone()).await?;
            let charged = self.charge_old(id.clone()).await?;
            self.sleep(SLEEP).await?;
            self.ship(id).await?;
            Ok(charged)
        }

        #[activity]
        async fn reserve(&self, _id: String) -> Result<(), ClusterError> {
            Ok(())
        }

        #[activity]
        async fn charge_old(&self, _id: String) -> Result<String, ClusterError> {
            Ok("old price".into())
        }

        #[activity]
        async fn ship(&self, _id: String) -> Result<(), ClusterError> {
            Ok(())
        }
    }
}

mod v2 {
    use super::*;

    /// The new pricing, guarded by a patch.
    #[workflow(name = "Pricing")]
    #[derive(Clone)]
    pub(super) struct Pricing;

    #[workflow_impl(key = |id: &String| id.clone(), hash = false)]
    impl Pricing {
        async fn execute(&self, id: String) -> Result<String, ClusterError> {
            self.reserve(id.clone()).await?;
            let charged = if self.patched("new-pricing").await? {
                self.charge_new(id.clone()).await?
            } else {
                self.charge_old(id.clone()).await?
            };
            self.sleep(SLEEP).await?;
            self.ship(id).await?;
            Ok(charged)
        }

        #[activity]
        async fn reserve(&self, _id: String) -> Result<(), ClusterError> {
            Ok(())
        }

        #[activity]
        async fn charge_old(&self, _id: String) -> Result<String, ClusterError> {
            Ok("old price".into())
        }

        #[activity]
        async fn charge_new(&self, _id: String) -> Result<String, ClusterError> {
            Ok("new price".into())
        }

        #[activity]
        async fn ship(&self, _id: String) -> Result<(), ClusterError> {
            Ok(())
        }
    }
}

mod v3 {
    use super::*;

    /// No execution of v1 remains: the old path is deleted, the patch deprecated.
    #[workflow(name = "Pricing")]
    #[derive(Clone)]
    pub(super) struct Pricing;

    #[workflow_impl(key = |id: &String| id.clone(), hash = false)]
    impl Pricing {
        async fn execute(&self, id: String) -> Result<String, ClusterError> {
            self.reserve(id.clone()).await?;
            self.deprecate_patch("new-pricing").await?;
            let charged = self.charge_new(id.clone()).await?;
            self.sleep(SLEEP).await?;
            self.ship(id).await?;
            Ok(charged)
        }

        #[activity]
        async fn reserve(&self, _id: String) -> Result<(), ClusterError> {
            Ok(())
        }

        #[activity]
        async fn charge_new(&self, _id: String) -> Result<String, ClusterError> {
            Ok("new price".into())
        }

        #[activity]
        async fn ship(&self, _id: String) -> Result<(), ClusterError> {
            Ok(())
        }
    }
}

mod unpatched {
    use super::*;

    /// The new pricing without a patch: wrong for executions in flight.
    #[workflow(name = "Pricing")]
    #[derive(Clone)]
    pub(super) struct Pricing;

    #[workflow_impl(key = |id: &String| id.clone(), hash = false)]
    impl Pricing {
        async fn execute(&self, id: String) -> Result<String, ClusterError> {
            self.reserve(id.clone()).await?;
            let charged = self.charge_new(id.clone()).await?;
            self.sleep(SLEEP).await?;
            self.ship(id).await?;
            Ok(charged)
        }

        #[activity]
        async fn reserve(&self, _id: String) -> Result<(), ClusterError> {
            Ok(())
        }

        #[activity]
        async fn charge_new(&self, _id: String) -> Result<String, ClusterError> {
            Ok("new price".into())
        }

        #[activity]
        async fn ship(&self, _id: String) -> Result<(), ClusterError> {
            Ok(())
        }
    }
}

type Build = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = SingleRunner> + Send>> + Send + Sync>;

fn config() -> ShardingConfig {
    ShardingConfig {
        storage_poll_interval: Duration::from_millis(50),
        storage_retry_backoff_base: Duration::from_millis(50),
        ..Default::default()
    }
}

fn memory_build() -> Build {
    let messages = Arc::new(MemoryMessageStorage::new());
    let journal = Arc::new(MemoryWorkflowStorage::new());
    let engine = Arc::new(MemoryWorkflowEngine::new());
    Arc::new(move || {
        let (messages, journal, engine) = (messages.clone(), journal.clone(), engine.clone());
        Box::pin(async move {
            SingleRunner::builder()
                .config(config())
                .message_storage(messages)
                .workflow_storage(journal)
                .workflow_engine(engine)
                .build()
                .await
                .unwrap()
        })
    })
}

fn postgres_build(db: &Arc<PgTestDb>) -> Build {
    let db = db.clone();
    Arc::new(move || {
        let db = db.clone();
        Box::pin(async move {
            SingleRunner::builder()
                .config(config())
                .postgres(db.pool().await)
                .build()
                .await
                .unwrap()
        })
    })
}

async fn wait_for_status(sharding: &ShardingImpl, execution_id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = list_executions(sharding, &ExecutionFilter::default())
            .await
            .unwrap();
        if all
            .iter()
            .any(|r| r.execution_id == execution_id && r.status.name() == status)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "execution {execution_id} never became {status}: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn journal_names(sharding: &ShardingImpl, execution_id: &str) -> Vec<String> {
    workflow_journal(sharding, execution_id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key.name)
        .collect()
}

async fn join_within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 20 s"))
}

/// Starts `id` on v1 and stops the runner while it sleeps after charging the old way.
async fn start_on_v1(build: &Build, id: &str) {
    let runner = build().await;
    let client = v1::Pricing
        .register(runner.sharding().clone())
        .await
        .unwrap();
    client.start(&id.to_string()).await.unwrap();
    wait_for_status(runner.sharding(), id, "suspended").await;
    runner.shutdown().await.unwrap();
}

async fn a_patch_keeps_old_executions_on_the_old_path(build: Build) {
    start_on_v1(&build, "old-order").await;

    let runner = build().await;
    let client = v2::Pricing
        .register(runner.sharding().clone())
        .await
        .unwrap();
    let new_exec = client.start(&"new-order".to_string()).await.unwrap();
    let old = join_within("the v1 execution", client.join("old-order")).await;
    assert_eq!(
        old.unwrap(),
        "old price",
        "started before the patch: the old path"
    );
    let new = join_within("the v2 execution", client.join(&new_exec)).await;
    assert_eq!(
        new.unwrap(),
        "new price",
        "started with the patch: the new path"
    );

    assert_eq!(
        journal_names(runner.sharding(), "old-order").await,
        ["reserve", "charge_old", "cruster:sleep", "ship"],
        "the old execution records no marker"
    );
    assert_eq!(
        journal_names(runner.sharding(), &new_exec).await,
        [
            "reserve",
            "cruster:patch/new-pricing",
            "charge_new",
            "cruster:sleep",
            "ship"
        ],
        "the new execution records the marker before the new path"
    );
    runner.shutdown().await.unwrap();
}

async fn a_deprecated_patch_replays_executions_that_recorded_it(build: Build) {
    // An execution of v2 records the marker and sleeps; the runner stops.
    let runner = build().await;
    let client = v2::Pricing
        .register(runner.sharding().clone())
        .await
        .unwrap();
    client.start(&"patched-order".to_string()).await.unwrap();
    wait_for_status(runner.sharding(), "patched-order", "suspended").await;
    runner.shutdown().await.unwrap();

    // v3 deleted the old path: the v2 execution replays over its marker and completes.
    let runner = build().await;
    let client = v3::Pricing
        .register(runner.sharding().clone())
        .await
        .unwrap();
    let resumed = join_within("the v2 execution", client.join("patched-order")).await;
    assert_eq!(resumed.unwrap(), "new price");
    let fresh = join_within("a v3 execution", client.execute(&"fresh-order".to_string())).await;
    assert_eq!(fresh.unwrap(), "new price");
    assert_eq!(
        journal_names(runner.sharding(), "fresh-order").await,
        ["reserve", "charge_new", "cruster:sleep", "ship"],
        "a deprecated patch records no marker"
    );
    runner.shutdown().await.unwrap();
}

async fn a_change_without_a_patch_is_a_described_non_determinism_error(build: Build) {
    start_on_v1(&build, "changed-order").await;

    let runner = build().await;
    let client = unpatched::Pricing
        .register(runner.sharding().clone())
        .await
        .unwrap();
    let err = join_within("the v1 execution", client.join("changed-order"))
        .await
        .unwrap_err();
    match &err {
        ClusterError::NonDeterminism {
            execution_id,
            position,
            recorded,
            requested,
        } => {
            assert_eq!(execution_id, "changed-order");
            assert_eq!(*position, 1);
            assert_eq!(recorded, "activity `charge_old`");
            assert_eq!(requested, "activity `charge_new`");
        }
        other => panic!("expected NonDeterminism, got {other:?}"),
    }
    let message = err.to_string();
    for part in [
        "`changed-order`",
        "position 1",
        "holds activity `charge_old`",
        "asked for activity `charge_new`",
        "self.patched(",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    wait_for_status(runner.sharding(), "changed-order", "failed").await;
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_keeps_old_executions_on_the_old_path_on_memory() {
    a_patch_keeps_old_executions_on_the_old_path(memory_build()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_keeps_old_executions_on_the_old_path_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let db = Arc::new(db);
    a_patch_keeps_old_executions_on_the_old_path(postgres_build(&db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprecated_patch_replays_executions_that_recorded_it_on_memory() {
    a_deprecated_patch_replays_executions_that_recorded_it(memory_build()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprecated_patch_replays_executions_that_recorded_it_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let db = Arc::new(db);
    a_deprecated_patch_replays_executions_that_recorded_it(postgres_build(&db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_without_a_patch_is_a_described_non_determinism_error_on_memory() {
    a_change_without_a_patch_is_a_described_non_determinism_error(memory_build()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_without_a_patch_is_a_described_non_determinism_error_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let db = Arc::new(db);
    a_change_without_a_patch_is_a_described_non_determinism_error(postgres_build(&db)).await;
}
