//! A runner whose message storage keeps failing detaches (gives up its shards) and
//! re-attaches once storage answers again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cruster::ports::message_storage::{
    AttemptFailure, AttemptStart, DeadLetter, FailedAttempt, MessageStorage, PollQuery, SaveResult,
    StoredRequest,
};
use cruster::prelude::*;
use cruster::storage::memory::MemoryMessageStorage;
use cruster::types::{EntityAddress, EntityType, EnvelopeRequest, Reply, ShardId, Snowflake};
use support::{eventually, Journal, TestEntity};

/// Message storage that fails every call while `broken` is set (fault injection).
struct FlakyStorage {
    inner: MemoryMessageStorage,
    broken: AtomicBool,
}

impl FlakyStorage {
    fn check(&self) -> Result<(), ClusterError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(ClusterError::PersistenceError {
                reason: "injected storage outage".into(),
                source: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl MessageStorage for FlakyStorage {
    async fn save_request(&self, envelope: &EnvelopeRequest) -> Result<SaveResult, ClusterError> {
        self.check()?;
        self.inner.save_request(envelope).await
    }
    async fn save_reply(&self, reply: &Reply) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.save_reply(reply).await
    }
    async fn replies_for(&self, request_id: Snowflake) -> Result<Vec<Reply>, ClusterError> {
        self.check()?;
        self.inner.replies_for(request_id).await
    }
    async fn request(&self, request_id: Snowflake) -> Result<Option<StoredRequest>, ClusterError> {
        self.check()?;
        self.inner.request(request_id).await
    }
    async fn finished_requests(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<cruster::ports::message_storage::FinishedRequest>, ClusterError> {
        self.check()?;
        self.inner.finished_requests(request_ids).await
    }
    async fn poll_unprocessed(
        &self,
        query: &PollQuery<'_>,
    ) -> Result<Vec<StoredRequest>, ClusterError> {
        self.check()?;
        self.inner.poll_unprocessed(query).await
    }
    async fn unprocessed(
        &self,
        shards: &[ShardId],
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<StoredRequest>, ClusterError> {
        self.check()?;
        self.inner.unprocessed(shards, now, limit).await
    }
    async fn mark_processed(&self, request_id: Snowflake) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.mark_processed(request_id).await
    }
    async fn start_attempts(
        &self,
        request_ids: &[Snowflake],
        max_attempts: u32,
        reason: &str,
    ) -> Result<Vec<AttemptStart>, ClusterError> {
        self.check()?;
        self.inner
            .start_attempts(request_ids, max_attempts, reason)
            .await
    }
    async fn release_attempts(&self, request_ids: &[Snowflake]) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.release_attempts(request_ids).await
    }
    async fn record_failed_attempt(
        &self,
        request_id: Snowflake,
        failure: &AttemptFailure<'_>,
    ) -> Result<FailedAttempt, ClusterError> {
        self.check()?;
        self.inner.record_failed_attempt(request_id, failure).await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, ClusterError> {
        self.check()?;
        self.inner.dead_letters(limit).await
    }
    async fn clear_address(&self, address: &EntityAddress) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.clear_address(address).await
    }
    async fn retry_dead_letters(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<Snowflake>, ClusterError> {
        self.check()?;
        self.inner.retry_dead_letters(request_ids).await
    }
    async fn purge_dead_letters(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<Snowflake>, ClusterError> {
        self.check()?;
        self.inner.purge_dead_letters(request_ids).await
    }
    async fn delete_processed_before(
        &self,
        shards: &[ShardId],
        processed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, ClusterError> {
        self.check()?;
        self.inner
            .delete_processed_before(shards, processed_before, limit)
            .await
    }
    async fn message_counts(
        &self,
    ) -> Result<Vec<cruster::ports::message_storage::MessageCounts>, ClusterError> {
        self.check()?;
        self.inner.message_counts().await
    }
}

#[tokio::test]
async fn failing_storage_detaches_the_runner_until_it_recovers() {
    let storage = Arc::new(FlakyStorage {
        inner: MemoryMessageStorage::new(),
        broken: AtomicBool::new(false),
    });
    let runner = SingleRunner::builder()
        .config(ShardingConfig {
            detachment_enabled: true,
            detachment_error_threshold: 3,
            storage_poll_interval: Duration::from_millis(20),
            runner_lock_ttl: Duration::from_millis(300),
            ..Default::default()
        })
        .message_storage(storage.clone())
        .build()
        .await
        .unwrap();
    let sharding = runner.sharding().clone();
    sharding
        .register_entity(Arc::new(TestEntity::new("T", Journal::default())))
        .await
        .unwrap();
    let client = EntityClient::new(sharding.clone(), EntityType::new("T"));
    assert!(!sharding.owned_shards().is_empty());

    storage.broken.store(true, Ordering::SeqCst);
    for i in 0..3 {
        let err = client
            .send_persisted::<_, String>(&EntityId::new(format!("d-{i}")), "echo", &"x", false)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClusterError::PersistenceError { .. }),
            "{err}"
        );
    }
    assert!(
        eventually(Duration::from_secs(3), || sharding.is_detached()
            && sharding.owned_shards().is_empty())
        .await,
        "detached: {}, shards: {}",
        sharding.is_detached(),
        sharding.owned_shards().len()
    );

    storage.broken.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(3), || !sharding.is_detached()
            && !sharding.owned_shards().is_empty())
        .await,
        "re-attached"
    );
    let ok: String = client
        .send_persisted(&EntityId::new("after"), "echo", &"back", false)
        .await
        .unwrap();
    assert_eq!(ok, "back");
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_detachment_a_failing_storage_keeps_the_shards() {
    let storage = Arc::new(FlakyStorage {
        inner: MemoryMessageStorage::new(),
        broken: AtomicBool::new(true),
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
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!runner.sharding().is_detached());
    assert!(!runner.sharding().owned_shards().is_empty());
    runner.shutdown().await.unwrap();
}
