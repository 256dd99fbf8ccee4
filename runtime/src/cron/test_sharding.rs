//! A `Sharding` for the cron unit tests that records the envelopes it is asked to notify
//! and delivers nothing, so the entity and the arming singleton are tested on their own.

use std::any::Any;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use cruster_sharding::{Entity, ReplyStream, Sharding, SingletonFn};
use cruster_types::{
    AckChunk, ClusterError, EntityId, EntityType, EnvelopeRequest, Interrupt, ReplyWithExit,
    ShardId, Snowflake,
};
use parking_lot::Mutex;

#[derive(Default)]
pub(crate) struct RecordingSharding {
    pub(crate) notified: Mutex<Vec<EnvelopeRequest>>,
    /// How many of the next notifies fail with a routing error.
    pub(crate) failures_left: Mutex<u32>,
    next_id: AtomicI64,
}

impl RecordingSharding {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn unsupported(operation: &str) -> ClusterError {
        ClusterError::Unsupported {
            backend: "RecordingSharding".into(),
            operation: operation.into(),
        }
    }
}

#[async_trait]
impl Sharding for RecordingSharding {
    fn shard_id(&self, _entity_type: &EntityType, _entity_id: &EntityId) -> ShardId {
        ShardId::new("default", 0)
    }

    fn next_request_id(&self) -> Snowflake {
        Snowflake(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    async fn send(&self, _envelope: EnvelopeRequest) -> Result<ReplyWithExit, ClusterError> {
        Err(Self::unsupported("send"))
    }

    async fn send_stream(&self, _envelope: EnvelopeRequest) -> Result<ReplyStream, ClusterError> {
        Err(Self::unsupported("send_stream"))
    }

    async fn notify(&self, envelope: EnvelopeRequest) -> Result<(), ClusterError> {
        {
            let mut failures = self.failures_left.lock();
            if *failures > 0 {
                *failures -= 1;
                return Err(ClusterError::ShardNotOwned {
                    shard_id: envelope.address.shard_id.clone(),
                });
            }
        }
        self.notified.lock().push(envelope);
        Ok(())
    }

    async fn poll_reply(
        &self,
        _request_id: Snowflake,
    ) -> Result<Option<ReplyWithExit>, ClusterError> {
        Ok(None)
    }

    async fn join_reply(&self, _request_id: Snowflake) -> Result<ReplyWithExit, ClusterError> {
        Err(Self::unsupported("join_reply"))
    }

    async fn ack_chunk(&self, _ack: AckChunk) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn interrupt(&self, _interrupt: Interrupt) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn register_entity(&self, _entity: Arc<dyn Entity>) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn register_singleton(
        &self,
        _name: &str,
        _shard_group: Option<&str>,
        _run: SingletonFn,
    ) -> Result<(), ClusterError> {
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
