//! Delivery that stays correct when shards move and runners stop: interruptions are not
//! answers, plain sends run at most once, persisted streams are refused, unknown entity
//! types wait, streams never wedge, a failed reply store keeps the caller waiting, finished
//! singletons stay finished, and moving shards costs what those shards hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cruster::ports::message_storage::{
    AttemptFailure, AttemptStart, DeadLetter, FailedAttempt, MessageStorage, PollQuery, SaveResult,
    StoredRequest,
};
use cruster::prelude::*;
use cruster::storage::memory::MemoryMessageStorage;
use cruster::testing::MemoryCluster;
use cruster::types::{EntityAddress, EntityType, EnvelopeRequest, Reply, ShardId, Snowflake};
use futures::StreamExt;
use support::slow::{Runs, Slow};
use support::{eventually, Journal, TestEntity};

fn cluster_config() -> ShardingConfig {
    ShardingConfig {
        runner_lock_ttl: Duration::from_millis(600),
        storage_poll_interval: Duration::from_millis(50),
        shutdown_timeout: Duration::from_millis(300),
        send_retry_count: 6,
        send_retry_backoff: Duration::from_millis(20),
        ..Default::default()
    }
}

async fn slow_cluster(runs: Runs, first_attempt: Duration) -> MemoryCluster {
    let cluster = MemoryCluster::builder()
        .runners(2)
        .config(cluster_config())
        .setup(move |sharding: Arc<ShardingImpl>| {
            let entity = Slow {
                runs: runs.clone(),
                first_attempt,
            };
            async move { sharding.register_entity(Arc::new(entity)).await }
        })
        .build()
        .await
        .unwrap();
    cluster
        .wait_until_balanced(Duration::from_secs(10))
        .await
        .unwrap();
    cluster
}

/// An entity id of `entity_type` whose shard runner `owner` holds.
fn id_owned_by(cluster: &MemoryCluster, owner: usize, entity_type: &str) -> EntityId {
    let runner = cluster.runner(owner);
    let held: HashSet<ShardId> = runner.owned_shards().into_iter().collect();
    (0..10_000)
        .map(|i| EntityId::new(format!("e-{i}")))
        .find(|id| held.contains(&runner.shard_id(&EntityType::new(entity_type), id)))
        .expect("some entity id maps to a shard of this runner")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_rpc_interrupted_by_a_drain_is_answered_by_its_next_attempt() {
    let runs = Runs::default();
    let cluster = slow_cluster(runs.clone(), Duration::from_secs(30)).await;
    let id = id_owned_by(&cluster, 0, "Slow");
    let client = EntityClient::new(cluster.runner(1), EntityType::new("Slow"));
    let call = tokio::spawn({
        let id = id.clone();
        async move {
            client
                .send_persisted::<_, String>(&id, "work", &"k".to_string(), false)
                .await
        }
    });
    assert!(eventually(Duration::from_secs(5), || runs.started("k") == 1).await);
    // Graceful stop while the handler runs; the drain deadline (300 ms) passes.
    cluster.stop_runner(0).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the caller is answered")
        .unwrap();
    assert_eq!(
        answer.unwrap(),
        "done-2",
        "the caller gets the real answer of the second attempt, not Interrupted"
    );
    assert_eq!(runs.overlaps.load(Ordering::SeqCst), 0);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uninterruptible_handler_keeps_its_shard_until_it_finishes() {
    let runs = Runs::default();
    let cluster = slow_cluster(runs.clone(), Duration::from_millis(1500)).await;
    let id = id_owned_by(&cluster, 0, "Slow");
    let client = EntityClient::new(cluster.runner(1), EntityType::new("Slow"));
    let call = tokio::spawn({
        let id = id.clone();
        async move {
            client
                .send_persisted::<_, String>(&id, "work", &"u".to_string(), true)
                .await
        }
    });
    assert!(eventually(Duration::from_secs(5), || runs.started("u") == 1).await);
    let stopped_at = Instant::now();
    cluster.stop_runner(0).await.unwrap();
    assert!(
        stopped_at.elapsed() >= Duration::from_millis(1000),
        "the graceful stop waited for the uninterruptible handler (took {:?})",
        stopped_at.elapsed()
    );
    let answer = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.unwrap(), "done-1", "it finished on the old owner");
    assert_eq!(runs.started("u"), 1, "never run a second time");
    assert_eq!(runs.overlaps.load(Ordering::SeqCst), 0);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_send_whose_runner_dies_mid_handler_reports_an_unknown_outcome() {
    let runs = Runs::default();
    let cluster = slow_cluster(runs.clone(), Duration::from_secs(30)).await;
    let id = id_owned_by(&cluster, 0, "Slow");
    let client = EntityClient::new(cluster.runner(1), EntityType::new("Slow"));
    let call = tokio::spawn({
        let id = id.clone();
        async move {
            client
                .send::<_, String>(&id, "work", &"p".to_string())
                .await
        }
    });
    assert!(eventually(Duration::from_secs(5), || runs.started("p") == 1).await);
    cluster.kill_runner(0);
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("never a hang")
        .unwrap();
    assert!(
        matches!(result, Err(ClusterError::DeliveryUnknown { .. })),
        "got {result:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        runs.started("p"),
        1,
        "a plain send is never retried once it may have run"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn persisted_streaming_is_refused_with_a_clear_error() {
    let journal = Journal::default();
    let runner = SingleRunner::builder().build().await.unwrap();
    runner
        .sharding()
        .register_entity(Arc::new(TestEntity::new("T", journal)))
        .await
        .unwrap();
    let client = EntityClient::new(runner.sharding().clone(), EntityType::new("T"));
    let mut envelope = client
        .envelope(&EntityId::new("a"), "count", &3u32)
        .unwrap();
    envelope.streaming = true;
    envelope.persisted = true;
    let err = runner.sharding().send_stream(envelope).await.err();
    match err {
        Some(ClusterError::Unsupported { operation, backend }) => {
            assert!(operation.contains("count"), "{operation}");
            assert!(
                backend.contains("workflow"),
                "says what to do instead: {backend}"
            );
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_persisted_message_for_a_type_registered_late_waits_without_counting_attempts() {
    let runner = SingleRunner::builder()
        .config(ShardingConfig {
            storage_poll_interval: Duration::from_millis(20),
            storage_message_max_retries: 2,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let sharding = runner.sharding().clone();
    let client = EntityClient::new(sharding.clone(), EntityType::new("Late"));
    client
        .notify_persisted(&EntityId::new("x"), "record", &"k1".to_string())
        .await
        .unwrap();
    // Many poll rounds pass with no handler for `Late`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let storage = sharding.message_storage().unwrap().clone();
    assert!(storage.dead_letters(10).await.unwrap().is_empty());
    let journal = Journal::default();
    let mut late = TestEntity::new("Late", journal.clone());
    late.options = EntityOptions::default();
    sharding.register_entity(Arc::new(late)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || journal.keys("x") == vec!["k1"]).await,
        "delivered once the type is registered"
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stream_whose_consumer_left_stops_instead_of_waiting_for_acks() {
    let journal = Journal::default();
    let runner = SingleRunner::builder().build().await.unwrap();
    runner
        .sharding()
        .register_entity(Arc::new(TestEntity::new("T", journal.clone())))
        .await
        .unwrap();
    let client = EntityClient::new(runner.sharding().clone(), EntityType::new("T"));
    let id = EntityId::new("s");
    // Far more chunks than the ack window; read one, then go away without acking.
    let mut stream = client
        .send_stream::<_, u32>(&id, "count", &1_000_000u32)
        .await
        .unwrap();
    let first = stream.next().await;
    assert!(matches!(first, Some(Ok(0))), "{first:?}");
    drop(stream);
    // The entity is free again: a stream handler that wedged on its window would hold the
    // entity (concurrency 1) forever.
    let echoed: String = tokio::time::timeout(
        Duration::from_secs(5),
        client.send(&id, "echo", &"after".to_string()),
    )
    .await
    .expect("the abandoned stream released its entity")
    .unwrap();
    assert_eq!(echoed, "after");
    runner.shutdown().await.unwrap();
}

/// Memory message storage whose `save_reply` of final replies fails while `broken` is set.
struct ReplyStoreFails {
    inner: MemoryMessageStorage,
    broken: AtomicBool,
    failed: AtomicUsize,
}

#[async_trait]
impl MessageStorage for ReplyStoreFails {
    async fn save_request(&self, envelope: &EnvelopeRequest) -> Result<SaveResult, ClusterError> {
        self.inner.save_request(envelope).await
    }
    async fn save_reply(&self, reply: &Reply) -> Result<(), ClusterError> {
        if matches!(reply, Reply::WithExit(_)) && self.broken.load(Ordering::SeqCst) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(ClusterError::PersistenceError {
                reason: "injected failure storing a reply".into(),
                source: None,
            });
        }
        self.inner.save_reply(reply).await
    }
    async fn replies_for(&self, request_id: Snowflake) -> Result<Vec<Reply>, ClusterError> {
        self.inner.replies_for(request_id).await
    }
    async fn request(&self, request_id: Snowflake) -> Result<Option<StoredRequest>, ClusterError> {
        self.inner.request(request_id).await
    }
    async fn finished_requests(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<cruster::ports::message_storage::FinishedRequest>, ClusterError> {
        self.inner.finished_requests(request_ids).await
    }
    async fn poll_unprocessed(
        &self,
        query: &PollQuery<'_>,
    ) -> Result<Vec<StoredRequest>, ClusterError> {
        self.inner.poll_unprocessed(query).await
    }
    async fn mark_processed(&self, request_id: Snowflake) -> Result<(), ClusterError> {
        self.inner.mark_processed(request_id).await
    }
    async fn start_attempts(
        &self,
        request_ids: &[Snowflake],
        max_attempts: u32,
        reason: &str,
    ) -> Result<Vec<AttemptStart>, ClusterError> {
        self.inner
            .start_attempts(request_ids, max_attempts, reason)
            .await
    }
    async fn release_attempts(&self, request_ids: &[Snowflake]) -> Result<(), ClusterError> {
        self.inner.release_attempts(request_ids).await
    }
    async fn record_failed_attempt(
        &self,
        request_id: Snowflake,
        failure: &AttemptFailure<'_>,
    ) -> Result<FailedAttempt, ClusterError> {
        self.inner.record_failed_attempt(request_id, failure).await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, ClusterError> {
        self.inner.dead_letters(limit).await
    }
    async fn clear_address(&self, address: &EntityAddress) -> Result<(), ClusterError> {
        self.inner.clear_address(address).await
    }
    async fn retry_dead_letters(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<Snowflake>, ClusterError> {
        self.inner.retry_dead_letters(request_ids).await
    }
    async fn purge_dead_letters(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<Snowflake>, ClusterError> {
        self.inner.purge_dead_letters(request_ids).await
    }
    async fn delete_processed_before(
        &self,
        shards: &[ShardId],
        processed_before: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<u64, ClusterError> {
        self.inner
            .delete_processed_before(shards, processed_before, limit)
            .await
    }
    async fn message_counts(
        &self,
    ) -> Result<Vec<cruster::ports::message_storage::MessageCounts>, ClusterError> {
        self.inner.message_counts().await
    }
}

#[tokio::test]
async fn a_reply_that_cannot_be_stored_keeps_the_caller_waiting_for_the_redelivery() {
    let storage = Arc::new(ReplyStoreFails {
        inner: MemoryMessageStorage::new(),
        broken: AtomicBool::new(true),
        failed: AtomicUsize::new(0),
    });
    let runner = SingleRunner::builder()
        .config(ShardingConfig {
            storage_poll_interval: Duration::from_millis(20),
            ..Default::default()
        })
        .message_storage(storage.clone())
        .build()
        .await
        .unwrap();
    let journal = Journal::default();
    runner
        .sharding()
        .register_entity(Arc::new(TestEntity::new("T", journal.clone())))
        .await
        .unwrap();
    let client = EntityClient::new(runner.sharding().clone(), EntityType::new("T"));
    let call = tokio::spawn(async move {
        client
            .send_persisted::<_, u64>(&EntityId::new("r"), "record", &"k".to_string(), false)
            .await
    });
    assert!(
        eventually(Duration::from_secs(5), || storage
            .failed
            .load(Ordering::SeqCst)
            >= 1)
        .await
    );
    assert!(
        !call.is_finished(),
        "no error for a message that will still run"
    );
    storage.broken.store(false, Ordering::SeqCst);
    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("answered after the redelivery")
        .unwrap()
        .unwrap();
    assert!(
        answer >= 2,
        "answered by a redelivered attempt (saw {answer} runs)"
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_singleton_that_finishes_is_not_restarted() {
    let runs = Arc::new(AtomicUsize::new(0));
    let runner = SingleRunner::builder()
        .config(ShardingConfig {
            singleton_crash_backoff_base: Duration::from_millis(10),
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let counter = runs.clone();
    register_singleton(
        runner.sharding().as_ref(),
        "once",
        move |_ctx: SingletonContext| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        },
    )
    .await
    .unwrap();
    assert!(eventually(Duration::from_secs(5), || runs.load(Ordering::SeqCst) == 1).await);
    // Rebalance rounds run every second at most; give several a chance to restart it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a finished singleton stays finished"
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_shards_stops_only_their_entities_with_two_hundred_thousand_live() {
    let journal = Journal::default();
    let config = ShardingConfig {
        entity_max_idle_time: Duration::from_secs(600),
        ..cluster_config()
    };
    let cluster = MemoryCluster::builder()
        .runners(1)
        .config(config)
        .setup({
            let journal = journal.clone();
            move |sharding: Arc<ShardingImpl>| {
                let journal = journal.clone();
                async move {
                    sharding
                        .register_entity(Arc::new(TestEntity::new("T", journal)))
                        .await
                }
            }
        })
        .build()
        .await
        .unwrap();
    let first = cluster.runner(0);
    let client = EntityClient::new(first.clone(), EntityType::new("T"));
    let total = 200_000;
    for chunk in (0..total).collect::<Vec<_>>().chunks(5_000) {
        futures::future::join_all(chunk.iter().map(|i| {
            let client = client.clone();
            async move {
                client
                    .notify(&EntityId::new(format!("e-{i}")), "echo", &String::new())
                    .await
            }
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    }
    let live = |r: &Arc<ShardingImpl>| r.active_entities().values().sum::<usize>();
    assert!(eventually(Duration::from_secs(30), || live(&first) == total).await);
    // A second runner joins: about half of the shards move, and only their entities stop.
    let moved_at = Instant::now();
    cluster.start_runner(1).await.unwrap();
    cluster
        .wait_until_balanced(Duration::from_secs(30))
        .await
        .unwrap();
    let held: HashSet<ShardId> = first.owned_shards().into_iter().collect();
    let expected = (0..total)
        .filter(|i| {
            held.contains(&first.shard_id(&EntityType::new("T"), &EntityId::new(format!("e-{i}"))))
        })
        .count();
    assert!(
        eventually(Duration::from_secs(30), || live(&first) == expected).await,
        "the first runner keeps exactly the entities of the shards it kept ({} live, {expected} expected)",
        live(&first)
    );
    eprintln!(
        "moved {} of 200000 live entities' shards in {:?}",
        total - expected,
        moved_at.elapsed()
    );
    assert!(expected > total / 4 && expected < total * 3 / 4);
    cluster.shutdown().await.unwrap();
}

/// How often `SlowStep` ran its activity, and whether the first run should hang.
#[derive(Default)]
struct StepRuns {
    started: AtomicUsize,
}

#[workflow]
#[derive(Clone)]
struct SlowStepWorkflow {
    runs: Arc<StepRuns>,
}

#[workflow_impl(key = |id: &String| id.clone(), hash = false)]
impl SlowStepWorkflow {
    async fn execute(&self, id: String) -> Result<String, ClusterError> {
        let n = self.step(id).await?;
        Ok(format!("finished after {n} activity runs"))
    }

    #[activity]
    async fn step(&self, _id: String) -> Result<usize, ClusterError> {
        let n = self.runs.started.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 1 {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok(n)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_interrupted_by_a_drain_completes_on_the_new_owner() {
    let runs = Arc::new(StepRuns::default());
    let setup_runs = runs.clone();
    let cluster = MemoryCluster::builder()
        .runners(2)
        .config(cluster_config())
        .setup(move |sharding: Arc<ShardingImpl>| {
            let runs = setup_runs.clone();
            async move {
                SlowStepWorkflow { runs }.register(sharding).await?;
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
    // An execution key whose hidden entity lives on runner 0; the caller is on runner 1.
    let key = (0..10_000)
        .map(|i| format!("wf-{i}"))
        .find(|key| {
            let client = SlowStepWorkflowClient::new(cluster.runner(1));
            let entity = client.entity_client();
            let shard = cluster
                .runner(0)
                .shard_id(entity.entity_type(), &EntityId::new(key));
            cluster.runner(0).owned_shards().contains(&shard)
        })
        .unwrap();
    let client = SlowStepWorkflowClient::new(cluster.runner(1));
    let call = tokio::spawn({
        let key = key.clone();
        async move { client.execute(&key).await }
    });
    assert!(
        eventually(Duration::from_secs(5), || runs
            .started
            .load(Ordering::SeqCst)
            == 1)
        .await
    );
    cluster.stop_runner(0).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the workflow completed")
        .unwrap();
    assert_eq!(result.unwrap(), "finished after 2 activity runs");
    // Executing again with its key returns the stored result, not an interruption.
    let again = SlowStepWorkflowClient::new(cluster.runner(1))
        .execute(&key)
        .await
        .unwrap();
    assert_eq!(again, "finished after 2 activity runs");
    cluster.shutdown().await.unwrap();
}
