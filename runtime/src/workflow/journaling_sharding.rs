//! A `Sharding` that journals the calls a workflow makes to other entities and workflows,
//! so a replay returns the recorded replies instead of calling again.
//!
//! Owns nothing but a workflow context and the inner sharding. Persisted sends get a
//! de-duplication key derived from the execution and call position, so a call re-sent after
//! a crash (before its reply was journaled) is recognised as a duplicate by storage.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use cruster_sharding::{Entity, ReplyStream, Sharding, SingletonFn};
use cruster_types::{
    AckChunk, ClusterError, EntityId, EntityType, EnvelopeRequest, Interrupt, ReplyWithExit,
    ShardId, Snowflake,
};

use super::client_from_sharding::ClientFromSharding;
use super::context::{ActivityOptions, WorkflowContext};

impl WorkflowContext {
    /// A typed client of another entity or workflow whose calls are journaled: on replay a
    /// call that already answered returns its recorded reply without being sent again.
    pub fn client<C: ClientFromSharding>(&self) -> C {
        C::from_sharding(Arc::new(JournalingSharding::new(self.clone())))
    }
}

pub(crate) struct JournalingSharding {
    ctx: WorkflowContext,
}

impl JournalingSharding {
    pub(crate) fn new(ctx: WorkflowContext) -> Self {
        JournalingSharding { ctx }
    }

    fn inner(&self) -> &Arc<dyn Sharding> {
        self.ctx.sharding()
    }

    fn keyed(&self, mut envelope: EnvelopeRequest) -> EnvelopeRequest {
        if envelope.persisted && envelope.dedupe_key.is_none() {
            envelope.dedupe_key = Some(format!(
                "workflow-call/{}/{}",
                self.ctx.execution_id(),
                self.ctx.next_call_sequence()
            ));
        }
        envelope
    }
}

fn call_name(envelope: &EnvelopeRequest) -> &'static str {
    // Journal names must be 'static; the entity type and tag are checked through the
    // recorded reply's position instead, so one name per kind of call is enough.
    if envelope.persisted {
        "cruster:persisted-call"
    } else {
        "cruster:call"
    }
}

#[async_trait]
impl Sharding for JournalingSharding {
    fn shard_id(&self, entity_type: &EntityType, entity_id: &EntityId) -> ShardId {
        self.inner().shard_id(entity_type, entity_id)
    }

    fn next_request_id(&self) -> Snowflake {
        self.inner().next_request_id()
    }

    async fn send(&self, envelope: EnvelopeRequest) -> Result<ReplyWithExit, ClusterError> {
        let envelope = self.keyed(envelope);
        let name = call_name(&envelope);
        let inner = self.inner().clone();
        self.ctx
            .activity(name, ActivityOptions::default(), move |_tx| {
                let inner = inner.clone();
                let envelope = envelope.clone();
                async move { inner.send(envelope).await }
            })
            .await
    }

    async fn send_stream(&self, _envelope: EnvelopeRequest) -> Result<ReplyStream, ClusterError> {
        Err(ClusterError::Unsupported {
            operation: "streaming calls from inside a workflow (they cannot be journaled)".into(),
            backend: "workflow client".into(),
        })
    }

    async fn notify(&self, envelope: EnvelopeRequest) -> Result<(), ClusterError> {
        let envelope = self.keyed(envelope);
        let inner = self.inner().clone();
        self.ctx
            .activity("cruster:notify", ActivityOptions::default(), move |_tx| {
                let inner = inner.clone();
                let envelope = envelope.clone();
                async move { inner.notify(envelope).await }
            })
            .await
    }

    async fn poll_reply(
        &self,
        request_id: Snowflake,
    ) -> Result<Option<ReplyWithExit>, ClusterError> {
        self.inner().poll_reply(request_id).await
    }

    async fn join_reply(&self, request_id: Snowflake) -> Result<ReplyWithExit, ClusterError> {
        self.inner().join_reply(request_id).await
    }

    async fn ack_chunk(&self, ack: AckChunk) -> Result<(), ClusterError> {
        self.inner().ack_chunk(ack).await
    }

    async fn interrupt(&self, interrupt: Interrupt) -> Result<(), ClusterError> {
        self.inner().interrupt(interrupt).await
    }

    async fn register_entity(&self, entity: Arc<dyn Entity>) -> Result<(), ClusterError> {
        self.inner().register_entity(entity).await
    }

    async fn register_singleton(
        &self,
        name: &str,
        shard_group: Option<&str>,
        run: SingletonFn,
    ) -> Result<(), ClusterError> {
        self.inner()
            .register_singleton(name, shard_group, run)
            .await
    }

    fn as_any(&self) -> &dyn Any {
        self.inner().as_any()
    }
}
