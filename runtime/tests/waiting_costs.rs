//! What waiting costs in storage reads: callers waiting for a persisted reply
//! (`join_reply`) or for a workflow result (`execute` of a workflow that sleeps) are woken
//! when their outcome happens, and the only reads made while they wait are the runner's
//! fallback check — one batched read per round for all callers together — and the storage
//! poll, neither of which grows with the number of callers.
//!
//! The reads are counted by wrappers around the memory message storage and workflow engine,
//! over a fixed number of fallback rounds (`cruster_waiter_fallback_rounds_total`), so the
//! comparison does not depend on how fast the machine is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use counting_message_storage::{CallCounts, CountingMessageStorage};
use cruster::ports::workflow_storage::{
    DurableTimer, ExecutionFilter, ExecutionRecord, WorkflowEngine,
};
use cruster::prelude::*;
use cruster::storage::memory::{MemoryMessageStorage, MemoryWorkflowEngine, MemoryWorkflowStorage};
use cruster::testing::MemoryCluster;
use cruster::types::{wire, EntityId, EntityType, ExitResult};
use cruster::workflow::{WorkflowClient, WorkflowDefinition};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------
// Counting workflow engine
// ---------------------------------------------------------------------------------------

/// A [`WorkflowEngine`] that counts the calls of each method and delegates them.
#[derive(Default)]
struct CountingEngine {
    inner: MemoryWorkflowEngine,
    calls: Mutex<BTreeMap<&'static str, u64>>,
}

impl CountingEngine {
    fn count(&self, method: &'static str) {
        *self.calls.lock().entry(method).or_default() += 1;
    }

    fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().clone()
    }
}

#[async_trait]
impl WorkflowEngine for CountingEngine {
    async fn upsert_execution(&self, record: &ExecutionRecord) -> Result<(), ClusterError> {
        self.count("upsert_execution");
        self.inner.upsert_execution(record).await
    }
    async fn execution(&self, execution_id: &str) -> Result<Option<ExecutionRecord>, ClusterError> {
        self.count("execution");
        self.inner.execution(execution_id).await
    }
    async fn stopped_executions(
        &self,
        execution_ids: &[String],
    ) -> Result<Vec<ExecutionRecord>, ClusterError> {
        self.count("stopped_executions");
        self.inner.stopped_executions(execution_ids).await
    }
    async fn request_cancellation(
        &self,
        execution_id: &str,
        requested_at: DateTime<Utc>,
    ) -> Result<Option<ExecutionRecord>, ClusterError> {
        self.count("request_cancellation");
        self.inner
            .request_cancellation(execution_id, requested_at)
            .await
    }
    async fn cancellation_requested(
        &self,
        execution_id: &str,
    ) -> Result<Option<DateTime<Utc>>, ClusterError> {
        self.count("cancellation_requested");
        self.inner.cancellation_requested(execution_id).await
    }
    async fn list_executions(
        &self,
        filter: &ExecutionFilter,
    ) -> Result<Vec<ExecutionRecord>, ClusterError> {
        self.count("list_executions");
        self.inner.list_executions(filter).await
    }
    async fn finished_executions_before(
        &self,
        finished_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<String>, ClusterError> {
        self.count("finished_executions_before");
        self.inner
            .finished_executions_before(finished_before, limit)
            .await
    }
    async fn delete_finished_executions(
        &self,
        execution_ids: &[String],
        finished_before: DateTime<Utc>,
    ) -> Result<u64, ClusterError> {
        self.count("delete_finished_executions");
        self.inner
            .delete_finished_executions(execution_ids, finished_before)
            .await
    }
    async fn delete_fired_timers_before(
        &self,
        fired_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, ClusterError> {
        self.count("delete_fired_timers_before");
        self.inner
            .delete_fired_timers_before(fired_before, limit)
            .await
    }
    async fn schedule_timer(&self, timer: &DurableTimer) -> Result<(), ClusterError> {
        self.count("schedule_timer");
        self.inner.schedule_timer(timer).await
    }
    async fn timer(
        &self,
        execution_id: &str,
        timer_key: &str,
    ) -> Result<Option<DurableTimer>, ClusterError> {
        self.count("timer");
        self.inner.timer(execution_id, timer_key).await
    }
    async fn due_timers(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DurableTimer>, ClusterError> {
        self.count("due_timers");
        self.inner.due_timers(now, limit).await
    }
    async fn complete_timer(
        &self,
        execution_id: &str,
        timer_key: &str,
    ) -> Result<(), ClusterError> {
        self.count("complete_timer");
        self.inner.complete_timer(execution_id, timer_key).await
    }
    async fn resolve_deferred(
        &self,
        execution_id: &str,
        name: &str,
        value: &ExitResult,
    ) -> Result<bool, ClusterError> {
        self.count("resolve_deferred");
        self.inner.resolve_deferred(execution_id, name, value).await
    }
    async fn deferred(
        &self,
        execution_id: &str,
        name: &str,
    ) -> Result<Option<ExitResult>, ClusterError> {
        self.count("deferred");
        self.inner.deferred(execution_id, name).await
    }
}

// ---------------------------------------------------------------------------------------
// What the callers wait for
// ---------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Nap {
    id: String,
    millis: u64,
}

/// Sleeps durably, then answers with its own id.
#[workflow]
#[derive(Clone)]
struct Napper;

#[workflow_impl(key = |nap: &Nap| nap.id.clone(), hash = false)]
impl Napper {
    async fn execute(&self, nap: Nap) -> Result<String, ClusterError> {
        self.sleep(Duration::from_millis(nap.millis)).await?;
        Ok(format!("{} woke up", nap.id))
    }
}

/// An entity whose handler blocks until the gate opens, then answers twice its number.
struct Gate {
    open: watch::Receiver<bool>,
}

struct GateHandler {
    open: watch::Receiver<bool>,
}

#[async_trait]
impl Entity for Gate {
    fn entity_type(&self) -> EntityType {
        EntityType::new("Gate")
    }

    async fn spawn(&self, _ctx: EntityContext) -> Result<Arc<dyn EntityHandler>, ClusterError> {
        Ok(Arc::new(GateHandler {
            open: self.open.clone(),
        }))
    }
}

#[async_trait]
impl EntityHandler for GateHandler {
    async fn handle(&self, request: IncomingRequest) -> Result<Bytes, ClusterError> {
        let n: u64 = request.decode()?;
        let mut open = self.open.clone();
        open.wait_for(|open| *open)
            .await
            .map_err(|_| ClusterError::handler("the gate was dropped"))?;
        wire::encode(&(n * 2))
    }
}

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// Fallback rounds every reads window spans.
const ROUNDS: u64 = 10;

/// How many more reads a window of [`ROUNDS`] rounds may cost with 1,000 waiting callers
/// than with 10: 3 per round, for the jitter between the fallback rounds and the storage
/// poll (both run every 20 ms, on separate timers). Reading storage per caller would cost
/// at least 1,000 reads per round.
const SLACK_PER_ROUND: u64 = 3;

fn config() -> ShardingConfig {
    ShardingConfig {
        storage_poll_interval: Duration::from_millis(20),
        waiter_fallback_interval: Duration::from_millis(20),
        entity_max_idle_time: Duration::from_secs(600),
        ..Default::default()
    }
}

struct CountedRunner {
    runner: SingleRunner,
    messages: Arc<CountingMessageStorage<MemoryMessageStorage>>,
    engine: Arc<CountingEngine>,
}

/// Reads made in one window, per port method.
#[derive(Debug)]
struct Reads {
    messages: CallCounts,
    engine: BTreeMap<&'static str, u64>,
}

impl Reads {
    fn total(&self) -> u64 {
        self.messages.total() + self.engine.values().sum::<u64>()
    }

    fn engine(&self, method: &str) -> u64 {
        self.engine.get(method).copied().unwrap_or(0)
    }
}

fn minus(
    after: &BTreeMap<&'static str, u64>,
    before: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    after
        .iter()
        .map(|(method, n)| (*method, n - before.get(method).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn minus_counts(after: CallCounts, before: CallCounts) -> CallCounts {
    CallCounts {
        save_request: after.save_request - before.save_request,
        save_reply: after.save_reply - before.save_reply,
        replies_for: after.replies_for - before.replies_for,
        request: after.request - before.request,
        finished_requests: after.finished_requests - before.finished_requests,
        poll_unprocessed: after.poll_unprocessed - before.poll_unprocessed,
        unprocessed: after.unprocessed - before.unprocessed,
        mark_processed: after.mark_processed - before.mark_processed,
        start_attempts: after.start_attempts - before.start_attempts,
        release_attempts: after.release_attempts - before.release_attempts,
        record_failed_attempt: after.record_failed_attempt - before.record_failed_attempt,
        dead_letters: after.dead_letters - before.dead_letters,
        clear_address: after.clear_address - before.clear_address,
        retry_dead_letters: after.retry_dead_letters - before.retry_dead_letters,
        purge_dead_letters: after.purge_dead_letters - before.purge_dead_letters,
        message_counts: after.message_counts - before.message_counts,
        delete_processed_before: after.delete_processed_before - before.delete_processed_before,
    }
}

impl CountedRunner {
    async fn start() -> Self {
        let messages = Arc::new(CountingMessageStorage::new(MemoryMessageStorage::new()));
        let engine = Arc::new(CountingEngine::default());
        let runner = SingleRunner::builder()
            .config(config())
            .message_storage(messages.clone())
            .workflow_storage(Arc::new(MemoryWorkflowStorage::new()))
            .workflow_engine(engine.clone())
            .build()
            .await
            .unwrap();
        CountedRunner {
            runner,
            messages,
            engine,
        }
    }

    fn metrics(&self) -> &ClusterMetrics {
        self.runner.sharding().metrics()
    }

    fn waiting(&self, what: &str) -> i64 {
        self.metrics()
            .callers_waiting
            .with_label_values(&[what])
            .get()
    }

    fn rounds(&self) -> u64 {
        self.metrics().waiter_fallback_rounds.get()
    }

    /// Waits (at most 60 s) until `n` callers wait for `what`.
    async fn until_waiting(&self, what: &str, n: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.waiting(what) != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} callers should wait for a {what} within 60 s; {} do",
                self.waiting(what)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The reads made during the next [`ROUNDS`] fallback rounds.
    async fn reads_over_rounds(&self) -> Reads {
        let start_round = self.rounds() + 1;
        while self.rounds() < start_round {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (messages, engine) = (self.messages.counts(), self.engine.calls());
        let end_round = start_round + ROUNDS;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.rounds() < end_round {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{ROUNDS} fallback rounds should run within 60 s; {} did",
                self.rounds() - start_round
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Reads {
            messages: minus_counts(self.messages.counts(), messages),
            engine: minus(&self.engine.calls(), &engine),
        }
    }
}

fn assert_not_more_than_with_few(many: &Reads, few: &Reads, what: &str) {
    eprintln!(
        "reads over {ROUNDS} fallback rounds while callers wait for {what}: {} with 10 \
         callers, {} with 1,000",
        few.total(),
        many.total()
    );
    assert!(
        many.total() <= few.total() + SLACK_PER_ROUND * ROUNDS,
        "over {ROUNDS} fallback rounds, 1,000 callers waiting for {what} may cost at most \
         {} reads more than 10 callers; they cost {} vs {}\n1,000: {many:?}\n10: {few:?}",
        SLACK_PER_ROUND * ROUNDS,
        many.total(),
        few.total()
    );
}

// ---------------------------------------------------------------------------------------
// Workflow executions that sleep
// ---------------------------------------------------------------------------------------

/// `n` callers `execute` a workflow that sleeps a minute; measures the reads while they
/// wait, then cancels every execution and checks each caller hears about its own.
async fn sleeping_workflow_reads(n: usize) -> Reads {
    let counted = CountedRunner::start().await;
    let client = Napper
        .register(counted.runner.sharding().clone())
        .await
        .unwrap();
    let callers: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            let id = format!("nap-{i}");
            let nap = Nap {
                id: id.clone(),
                millis: 60_000,
            };
            (id, tokio::spawn(async move { client.execute(&nap).await }))
        })
        .collect();
    counted.until_waiting("workflow", n as i64).await;
    let reads = counted.reads_over_rounds().await;
    assert_eq!(
        reads.engine("execution"),
        0,
        "no execution is read for its waiting callers while it sleeps: {reads:?}"
    );
    assert!(
        reads.engine("stopped_executions") <= ROUNDS + 1,
        "one batched read per fallback round for all {n} callers: {reads:?}"
    );

    for (id, _) in &callers {
        client.cancel(id).await.unwrap();
    }
    for (id, caller) in callers {
        let answer = tokio::time::timeout(Duration::from_secs(60), caller)
            .await
            .expect("every caller is answered within 60 s of the cancel")
            .unwrap();
        match answer {
            Err(ClusterError::WorkflowCancelled { execution_id }) => assert_eq!(execution_id, id),
            other => panic!("caller of {id} expected WorkflowCancelled, got {other:?}"),
        }
    }
    assert_eq!(
        counted.waiting("workflow"),
        0,
        "no caller is left registered"
    );
    counted.runner.shutdown().await.unwrap();
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_workflows_cost_no_reads_per_waiting_caller() {
    let few = sleeping_workflow_reads(10).await;
    let many = sleeping_workflow_reads(1_000).await;
    assert_not_more_than_with_few(&many, &few, "sleeping workflow executions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_of_short_sleeps_get_their_own_results() {
    let counted = CountedRunner::start().await;
    let client = Napper
        .register(counted.runner.sharding().clone())
        .await
        .unwrap();
    let callers: Vec<_> = (0..200)
        .map(|i| {
            let client = client.clone();
            let nap = Nap {
                id: format!("short-{i}"),
                millis: 200 + (i % 7) * 30,
            };
            tokio::spawn(async move { (nap.id.clone(), client.execute(&nap).await) })
        })
        .collect();
    for caller in callers {
        let (id, answer) = tokio::time::timeout(Duration::from_secs(60), caller)
            .await
            .expect("every caller is answered within 60 s")
            .unwrap();
        assert_eq!(answer.unwrap(), format!("{id} woke up"));
    }
    counted.runner.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Callers of join_reply
// ---------------------------------------------------------------------------------------

/// `n` callers send a persisted request each to a gate entity that blocks, and wait on
/// `join_reply`; measures the reads while they wait, then opens the gate and checks each
/// caller gets its own answer.
async fn join_reply_reads(n: u64) -> Reads {
    let counted = CountedRunner::start().await;
    let (open_gate, open) = watch::channel(false);
    let sharding = counted.runner.sharding().clone();
    sharding
        .register_entity(Arc::new(Gate { open }))
        .await
        .unwrap();
    let client = EntityClient::new(sharding, EntityType::new("Gate"));
    let mut callers = Vec::new();
    for i in 0..n {
        let id = client
            .notify_persisted(&EntityId::new(format!("gate-{i}")), "pass", &i)
            .await
            .unwrap();
        let client = client.clone();
        callers.push((
            i,
            tokio::spawn(async move { client.join_reply::<u64>(id).await }),
        ));
    }
    counted.until_waiting("reply", n as i64).await;
    let reads = counted.reads_over_rounds().await;
    assert!(
        reads.messages.finished_requests <= ROUNDS + 1,
        "one batched read per fallback round for all {n} callers: {reads:?}"
    );
    assert_eq!(
        reads.messages.replies_for + reads.messages.request,
        0,
        "no caller reads its own reply while it waits: {reads:?}"
    );

    open_gate.send(true).unwrap();
    for (i, caller) in callers {
        let answer = tokio::time::timeout(Duration::from_secs(60), caller)
            .await
            .expect("every caller is answered within 60 s of the gate opening")
            .unwrap();
        assert_eq!(answer.unwrap(), i * 2, "caller {i} gets its own answer");
    }
    assert_eq!(counted.waiting("reply"), 0, "no caller is left registered");
    counted.runner.shutdown().await.unwrap();
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_on_join_reply_cost_no_reads_each() {
    let few = join_reply_reads(10).await;
    let many = join_reply_reads(1_000).await;
    assert_not_more_than_with_few(&many, &few, "persisted replies");
}
// ---------------------------------------------------------------------------------------
// Two runners
// ---------------------------------------------------------------------------------------

/// The caller waits on one runner while the execution sleeps and finishes on the other;
/// the fallback check is made too slow to matter (an hour), so the caller can only be
/// woken by the runner that finishes the execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_on_another_runner_is_woken_when_the_execution_finishes() {
    let cluster = two_napper_runners(Duration::from_secs(3600)).await;
    let caller = cluster.runner(0);
    let client = WorkflowClient::<Napper>::new(caller.clone());
    // Executions owned by runner 1, so they run (and finish) there.
    let remote: Vec<String> = (0..200)
        .map(|i| format!("remote-{i}"))
        .filter(|id| {
            let shard = caller.shard_id(&EntityType::new(Napper::NAME), &EntityId::new(id));
            cluster.runner(1).owned_shards().contains(&shard)
        })
        .take(5)
        .collect();
    assert_eq!(remote.len(), 5, "runner 1 owns some of 200 execution ids");
    let callers: Vec<_> = remote
        .iter()
        .map(|id| {
            let client = client.clone();
            let nap = Nap {
                id: id.clone(),
                millis: 300,
            };
            tokio::spawn(async move { (nap.id.clone(), client.execute(&nap).await) })
        })
        .collect();
    for caller in callers {
        let (id, answer) = tokio::time::timeout(Duration::from_secs(30), caller)
            .await
            .expect("the caller on runner 0 is woken within 30 s (no fallback round runs)")
            .unwrap();
        assert_eq!(answer.unwrap(), format!("{id} woke up"));
    }
    assert_eq!(
        cluster.runner(0).metrics().waiter_fallback_rounds.get(),
        0,
        "no fallback round ran: the caller was woken by the finishing runner"
    );
    cluster.shutdown().await.unwrap();
}

/// Two balanced runners serving `Napper`, with the given waiter fallback interval.
async fn two_napper_runners(waiter_fallback_interval: Duration) -> MemoryCluster {
    let cluster = MemoryCluster::builder()
        .runners(2)
        .config(ShardingConfig {
            shards_per_group: 16,
            runner_lock_ttl: Duration::from_secs(1),
            storage_poll_interval: Duration::from_millis(50),
            shutdown_timeout: Duration::from_secs(2),
            waiter_fallback_interval,
            ..Default::default()
        })
        .setup(|sharding| async move {
            Napper.register(sharding).await?;
            Ok(())
        })
        .build()
        .await
        .unwrap();
    cluster
        .wait_until_balanced(Duration::from_secs(20))
        .await
        .unwrap();
    cluster
}

/// `join` from a runner that made no `execute` request has no push to wait for: the
/// runner's fallback check answers it, in one batched read for all its callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_on_another_runner_is_answered_by_the_fallback_check() {
    let cluster = two_napper_runners(Duration::from_millis(50)).await;
    let joiner = cluster.runner(0);
    let owner = cluster.runner(1);
    let id = (0..200)
        .map(|i| format!("joined-{i}"))
        .find(|id| {
            let shard = joiner.shard_id(&EntityType::new(Napper::NAME), &EntityId::new(id));
            owner.owned_shards().contains(&shard)
        })
        .expect("runner 1 owns one of 200 execution ids");
    // Started from the owner, so no push goes to the joiner's runner.
    WorkflowClient::<Napper>::new(owner.clone())
        .start(&Nap {
            id: id.clone(),
            millis: 200,
        })
        .await
        .unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        WorkflowClient::<Napper>::new(joiner.clone()).join(&id),
    )
    .await
    .expect("the join on runner 0 is answered within 30 s");
    assert_eq!(answer.unwrap(), format!("{id} woke up"));
    cluster.shutdown().await.unwrap();
}
