//! A `Sharding` that journals the calls a workflow makes to other entities and workflows,
//! so a replay returns the recorded replies instead of calling again.
//!
//! Owns nothing but a workflow context and the inner sharding. A call is journaled under its
//! kind, target entity type and RPC (`cruster:persisted-call/Counter.increment`), so a
//! replay that calls something else at that position is detected. No transaction is open
//! while the call waits for its answer; an error of the call itself (routing, storage, the
//! runner shutting down) is never journaled. Persisted sends get a de-duplication key
//! derived from the execution and call position, so a call re-sent after a crash (before its
//! reply was journaled) is recognised as a duplicate by storage.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use cruster_sharding::{Entity, ReplyStream, Sharding, SingletonFn};
use cruster_types::{
    AckChunk, ClusterError, EntityId, EntityType, EnvelopeRequest, Interrupt, ReplyWithExit,
    ShardId, Snowflake,
};

use super::client_from_sharding::ClientFromSharding;
use super::context::WorkflowContext;

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

    /// A persisted call's de-duplication key: the execution and the call's position, so a
    /// call re-sent by a replay after a crash is a duplicate in storage.
    fn keyed(&self, mut envelope: EnvelopeRequest, position: u32) -> EnvelopeRequest {
        if envelope.persisted && envelope.dedupe_key.is_none() {
            envelope.dedupe_key = Some(format!(
                "workflow-call/{}/{position}",
                self.ctx.execution_id()
            ));
        }
        envelope
    }
}

/// The journal name of a call: its kind, the target entity type and the RPC, so a replay
/// that calls another entity or RPC at a position is detected.
fn call_name(kind: &str, envelope: &EnvelopeRequest) -> String {
    format!("{kind}/{}.{}", envelope.address.entity_type, envelope.tag)
}

fn send_kind(envelope: &EnvelopeRequest) -> &'static str {
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
        let name = call_name(send_kind(&envelope), &envelope);
        let inner = self.inner().clone();
        self.ctx
            .journaled_call(&name, |position| {
                let envelope = self.keyed(envelope, position);
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
        let name = call_name("cruster:notify", &envelope);
        let inner = self.inner().clone();
        self.ctx
            .journaled_call(&name, |position| {
                let envelope = self.keyed(envelope, position);
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
