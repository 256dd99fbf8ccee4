//! Workflows surviving runners: crash replay on another runner, durable sleep across a
//! restart, a changed activity order detected on replay, and retries with backoff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use cruster::prelude::*;
use cruster::storage::memory::{MemoryMessageStorage, MemoryWorkflowEngine, MemoryWorkflowStorage};
use cruster::testing::MemoryCluster;
use cruster::types::ExitResult;
use cruster::workflow::{list_executions, workflow_journal, ExecutionFilter, ExecutionStatus};
use parking_lot::Mutex;
use tokio::sync::Notify;

fn cluster_config() -> ShardingConfig {
    ShardingConfig {
        runner_lock_ttl: Duration::from_millis(600),
        storage_poll_interval: Duration::from_millis(50),
        shutdown_timeout: Duration::from_secs(2),
        send_retry_count: 6,
        send_retry_backoff: Duration::from_millis(20),
        ..Default::default()
    }
}

async fn wait_for_status(sharding: &ShardingImpl, execution_id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
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

// ---------------------------------------------------------------------------------------
// Crash replay
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct CrashHooks {
    step1: AtomicUsize,
    step2: AtomicUsize,
    step3: AtomicUsize,
    /// Set: the first execution to get past step 2 stops there forever (its runner dies).
    armed: AtomicBool,
    stopped_after_step2: Notify,
    stopped_on: Mutex<Option<String>>,
}

#[workflow]
#[derive(Clone)]
struct ThreeStepWorkflow {
    hooks: Arc<CrashHooks>,
    runner: String,
}

#[workflow_impl(key = |id: &String| id.clone(), hash = false)]
impl ThreeStepWorkflow {
    async fn execute(&self, id: String) -> Result<String, ClusterError> {
        let a = self.step1(id.clone()).await?;
        let b = self.step2(id.clone()).await?;
        if self.hooks.armed.swap(false, Ordering::SeqCst) {
            // Activity 2 is journaled; this runner now "crashes" before activity 3.
            *self.hooks.stopped_on.lock() = Some(self.runner.clone());
            self.hooks.stopped_after_step2.notify_one();
            std::future::pending::<()>().await;
        }
        let c = self.step3(id).await?;
        Ok(format!("{a}{b}{c}"))
    }

    #[activity]
    async fn step1(&self, _id: String) -> Result<String, ClusterError> {
        self.hooks.step1.fetch_add(1, Ordering::SeqCst);
        Ok("1".into())
    }

    #[activity]
    async fn step2(&self, _id: String) -> Result<String, ClusterError> {
        self.hooks.step2.fetch_add(1, Ordering::SeqCst);
        Ok("2".into())
    }

    #[activity]
    async fn step3(&self, _id: String) -> Result<String, ClusterError> {
        self.hooks.step3.fetch_add(1, Ordering::SeqCst);
        Ok("3".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_whose_runner_dies_after_activity_two_finishes_on_another_runner() {
    let hooks = Arc::new(CrashHooks::default());
    hooks.armed.store(true, Ordering::SeqCst);
    let setup_hooks = hooks.clone();
    let cluster = MemoryCluster::builder()
        .runners(2)
        .config(cluster_config())
        .setup(move |sharding: Arc<ShardingImpl>| {
            let hooks = setup_hooks.clone();
            async move {
                ThreeStepWorkflow {
                    hooks,
                    runner: sharding.runner_address().to_string(),
                }
                .register(sharding)
                .await?;
                Ok(())
            }
        })
        .build()
        .await
        .unwrap();
    cluster
        .wait_until_balanced(Duration::from_secs(10))
        .await
        .unwrap();

    let client = ThreeStepWorkflowClient::new(cluster.runner(0));
    let exec_id = client.start(&"crash-1".to_string()).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        hooks.stopped_after_step2.notified(),
    )
    .await
    .expect("the workflow reached the end of activity 2");
    let stopped_on = hooks.stopped_on.lock().clone().unwrap();
    let victim = (0..2)
        .find(|&i| cluster.runner(i).runner_address().to_string() == stopped_on)
        .unwrap();
    cluster.kill_runner(victim);
    let survivor = 1 - victim;

    let client = ThreeStepWorkflowClient::new(cluster.runner(survivor));
    let result = tokio::time::timeout(Duration::from_secs(30), client.join(&exec_id))
        .await
        .expect("the survivor finished the workflow")
        .unwrap();
    assert_eq!(result, "123");
    assert_eq!(hooks.step1.load(Ordering::SeqCst), 1, "activity 1 ran once");
    assert_eq!(hooks.step2.load(Ordering::SeqCst), 1, "activity 2 ran once");
    assert_eq!(hooks.step3.load(Ordering::SeqCst), 1, "activity 3 ran once");
    let journal = workflow_journal(&cluster.runner(survivor), &exec_id)
        .await
        .unwrap();
    assert_eq!(journal.len(), 3);
    cluster.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Durable sleep across a restart
// ---------------------------------------------------------------------------------------

#[workflow]
#[derive(Clone)]
struct ReminderWorkflow;

#[workflow_impl(key = |req: &(String, u64)| req.0.clone(), hash = false)]
impl ReminderWorkflow {
    async fn execute(&self, request: (String, u64)) -> Result<i64, ClusterError> {
        // Durable sleep -- survives crashes, resumes where it left off
        self.sleep(Duration::from_millis(request.1)).await?;
        self.send_reminder(request.0).await
    }

    #[activity]
    async fn send_reminder(&self, _user: String) -> Result<i64, ClusterError> {
        Ok(Utc::now().timestamp_millis())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_sleep_survives_a_runner_restart_and_ends_no_earlier_than_due() {
    let cluster = MemoryCluster::builder()
        .runners(1)
        .config(cluster_config())
        .setup(|sharding: Arc<ShardingImpl>| async move {
            ReminderWorkflow.register(sharding).await?;
            Ok(())
        })
        .build()
        .await
        .unwrap();
    let started = Utc::now().timestamp_millis();
    let sleep_ms = 1500;
    let client = ReminderWorkflowClient::new(cluster.runner(0));
    let exec_id = client
        .start(&("user-1".to_string(), sleep_ms))
        .await
        .unwrap();
    wait_for_status(&cluster.runner(0), &exec_id, "suspended").await;
    let suspended = list_executions(&cluster.runner(0), &ExecutionFilter::default())
        .await
        .unwrap();
    assert!(
        matches!(
            suspended[0].status,
            ExecutionStatus::Suspended { until: Some(_) }
        ),
        "{suspended:?}"
    );

    cluster.stop_runner(0).await.unwrap();
    cluster.start_runner(0).await.unwrap();

    let client = ReminderWorkflowClient::new(cluster.runner(0));
    let woke_at = tokio::time::timeout(Duration::from_secs(20), client.join(&exec_id))
        .await
        .expect("the restarted runner resumed the workflow")
        .unwrap();
    assert!(
        woke_at - started >= sleep_ms as i64,
        "woke {} ms after the start, before the {sleep_ms} ms sleep was due",
        woke_at - started
    );
    cluster.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Non-determinism
// ---------------------------------------------------------------------------------------

mod v1 {
    use super::*;

    /// First version: `reserve`, then a short durable sleep, then `charge`.
    #[workflow(name = "Evolving")]
    #[derive(Clone)]
    pub(super) struct Evolving;

    #[workflow_impl(key = |id: &String| id.clone(), hash = false)]
    impl Evolving {
        async fn execute(&self, id: String) -> Result<(), ClusterError> {
            self.reserve(id.clone()).await?;
            self.sleep(Duration::from_millis(400)).await?;
            self.charge(id).await
        }

        #[activity]
        async fn reserve(&self, _id: String) -> Result<(), ClusterError> {
            Ok(())
        }

        #[activity]
        async fn charge(&self, _id: String) -> Result<(), ClusterError> {
            Ok(())
        }
    }
}

mod v2 {
    use super::*;

    /// A redeployed version that swapped the order of the two activities.
    #[workflow(name = "Evolving")]
    #[derive(Clone)]
    pub(super) struct Evolving;

    #[workflow_impl(key = |id: &String| id.clone(), hash = false)]
    impl Evolving {
        async fn execute(&self, id: String) -> Result<(), ClusterError> {
            self.charge(id.clone()).await?;
            self.sleep(Duration::from_millis(400)).await?;
            self.reserve(id).await
        }

        #[activity]
        async fn reserve(&self, _id: String) -> Result<(), ClusterError> {
            Ok(())
        }

        #[activity]
        async fn charge(&self, _id: String) -> Result<(), ClusterError> {
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_journal_with_a_changed_activity_order_is_a_non_determinism_error() {
    let messages = Arc::new(MemoryMessageStorage::new());
    let journal = Arc::new(MemoryWorkflowStorage::new());
    let engine = Arc::new(MemoryWorkflowEngine::new());
    let config = ShardingConfig {
        storage_poll_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let build = || {
        SingleRunner::builder()
            .config(config.clone())
            .message_storage(messages.clone())
            .workflow_storage(journal.clone())
            .workflow_engine(engine.clone())
            .build()
    };

    let first = build().await.unwrap();
    let client = v1::Evolving
        .register(first.sharding().clone())
        .await
        .unwrap();
    let exec_id = client.start(&"order-1".to_string()).await.unwrap();
    wait_for_status(first.sharding(), &exec_id, "suspended").await;
    first.shutdown().await.unwrap();

    // The new version resumes the execution when its timer is due, replaying the journal.
    let second = build().await.unwrap();
    let client = v2::Evolving
        .register(second.sharding().clone())
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), client.join(&exec_id))
        .await
        .expect("the replay ended")
        .unwrap_err();
    match &err {
        ClusterError::NonDeterminism {
            execution_id,
            position,
            recorded,
            requested,
        } => {
            assert_eq!(execution_id, "order-1");
            assert_eq!(*position, 0);
            assert_eq!(recorded, "activity `reserve`");
            assert_eq!(requested, "activity `charge`");
            let message = err.to_string();
            for part in [
                "`order-1`",
                "position 0",
                "activity `reserve`",
                "activity `charge`",
                "self.patched(",
            ] {
                assert!(message.contains(part), "{part:?} missing from: {message}");
            }
        }
        other => panic!("expected NonDeterminism, got {other:?}"),
    }
    wait_for_status(second.sharding(), &exec_id, "failed").await;
    second.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------

#[workflow]
#[derive(Clone)]
struct FlakyWorkflow {
    attempts: Arc<Mutex<Vec<Instant>>>,
    /// How many attempts fail before one succeeds (`usize::MAX`: all of them).
    failures: usize,
}

#[workflow_impl(key = |mode: &String| mode.clone(), hash = false)]
impl FlakyWorkflow {
    async fn execute(&self, mode: String) -> Result<String, ClusterError> {
        if mode.starts_with("constant") {
            self.constant_step(mode).await
        } else {
            self.exponential_step(mode).await
        }
    }

    #[activity(retries = 3, backoff = "constant", backoff_base_ms = 40)]
    async fn constant_step(&self, mode: String) -> Result<String, ClusterError> {
        self.attempt(mode).await
    }

    #[activity(retries = 3, backoff = "exponential", backoff_base_ms = 40)]
    async fn exponential_step(&self, mode: String) -> Result<String, ClusterError> {
        self.attempt(mode).await
    }
}

impl FlakyWorkflow {
    /// A helper shared by both activities (reached through the activity scope's `Deref`).
    async fn attempt(&self, mode: String) -> Result<String, ClusterError> {
        let n = {
            let mut attempts = self.attempts.lock();
            attempts.push(Instant::now());
            attempts.len()
        };
        if n <= self.failures {
            Err(ClusterError::handler(format!("boom {n}")))
        } else {
            Ok(format!("{mode} ok after {n}"))
        }
    }
}

fn gaps(attempts: &[Instant]) -> Vec<Duration> {
    attempts.windows(2).map(|w| w[1] - w[0]).collect()
}

async fn run_flaky(
    mode: &str,
    failures: usize,
) -> (Result<String, ClusterError>, Vec<Instant>, SingleRunner) {
    let runner = SingleRunner::builder().build().await.unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let client = FlakyWorkflow {
        attempts: attempts.clone(),
        failures,
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();
    let result = client.execute(&mode.to_string()).await;
    let attempts = attempts.lock().clone();
    (result, attempts, runner)
}

#[tokio::test]
async fn a_failing_activity_with_three_retries_runs_four_times_then_fails_the_workflow() {
    let (result, attempts, runner) = run_flaky("constant-fail", usize::MAX).await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, ClusterError::Handler { message } if message == "boom 4"),
        "the workflow fails with the last attempt's error: {err:?}"
    );
    assert_eq!(attempts.len(), 4);
    // Constant backoff: every pause is the base delay (loosely: the machine is shared).
    let gaps = gaps(&attempts);
    for gap in &gaps {
        assert!(*gap >= Duration::from_millis(40), "{gaps:?}");
        assert!(*gap < Duration::from_millis(150), "{gaps:?}");
    }
    // The attempt count and final error are journaled and visible.
    let journal = workflow_journal(runner.sharding(), "constant-fail")
        .await
        .unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].attempts, 4);
    assert!(matches!(&journal[0].result, ExitResult::Failure(_)));
    let failed = list_executions(
        runner.sharding(),
        &ExecutionFilter {
            status: Some("failed"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(failed.len(), 1);
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn exponential_backoff_spacing_grows() {
    let (result, attempts, runner) = run_flaky("exponential-fail", usize::MAX).await;
    assert!(result.is_err());
    assert_eq!(attempts.len(), 4);
    let gaps = gaps(&attempts);
    for (i, gap) in gaps.iter().enumerate() {
        assert!(*gap >= Duration::from_millis(40 << i), "{gaps:?}");
    }
    assert!(gaps[2] > gaps[0] * 2, "{gaps:?}");
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_activity_that_recovers_within_its_retries_succeeds_and_journals_once() {
    let (result, attempts, runner) = run_flaky("constant-recover", 2).await;
    assert_eq!(result.unwrap(), "constant-recover ok after 3");
    assert_eq!(attempts.len(), 3);
    let journal = workflow_journal(runner.sharding(), "constant-recover")
        .await
        .unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].attempts, 3);
    runner.shutdown().await.unwrap();
}
