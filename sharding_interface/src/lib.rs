//! What clients and entities see of a cluster.
//!
//! * [`Sharding`]: the port the runtime implements: route and deliver envelopes, store and
//!   read replies, register entities and singletons.
//! * [`Entity`] / [`EntityHandler`] / [`EntityContext`]: how an entity type is described,
//!   instantiated per entity id, and handed its requests.
//! * [`EntityClient`]: a cheap-to-clone typed client over `Arc<dyn Sharding>` with every
//!   delivery mode (`send`, `send_persisted`, `notify`, `notify_persisted`, `send_at`,
//!   `notify_at`, `send_stream`, `poll_reply`, `join_reply` and the `*_with_key` variants).
//! * [`SingletonContext`]: what a singleton is handed (its cancellation).
//! * [`ShardAssignment`]: the strategy that maps shards to runners.
//!
//! # Contract of [`Sharding`]
//!
//! * `send`/`notify`/`send_stream` route the envelope to the owner of
//!   `envelope.address.shard_id`, retrying routing failures (a shard moving between runners)
//!   a bounded number of times. A non-persisted request is delivered at most once.
//! * A persisted envelope (`persisted = true`) is saved in message storage before it is
//!   delivered, and its reply is saved before `send` returns; saving an envelope with the
//!   `dedupe_key` of an earlier one returns the earlier one's reply instead of running again.
//! * `poll_reply` answers the stored final reply of a persisted request, or `None`.
#![deny(missing_docs)]

mod assignment;
mod client;
mod context;
mod entity;
mod into_sharding;
mod singleton;

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use cruster_types::{
    AckChunk, ClusterError, EntityId, EntityType, EnvelopeRequest, Interrupt, Reply, ReplyWithExit,
    ShardId, Snowflake,
};
use futures::stream::BoxStream;

pub use assignment::ShardAssignment;
pub use client::{EntityClient, STREAM_ACK_INTERVAL, STREAM_WINDOW};
pub use context::EntityContext;
pub use entity::{Entity, EntityHandler, EntityOptions, IncomingRequest};
pub use into_sharding::IntoSharding;
pub use singleton::{SingletonContext, SingletonFn};

/// The replies to one request: chunks in order, then one `Reply::WithExit`.
pub type ReplyStream = BoxStream<'static, Result<Reply, ClusterError>>;

/// The cluster as seen by clients and entities. Implemented by the runtime's `ShardingImpl`.
#[async_trait]
pub trait Sharding: Send + Sync + 'static {
    /// The shard of an entity (using the shard group its type was registered with).
    fn shard_id(&self, entity_type: &EntityType, entity_id: &EntityId) -> ShardId;

    /// A fresh request id.
    fn next_request_id(&self) -> Snowflake;

    /// Delivers a request and waits for its final reply.
    ///
    /// # Errors
    /// Routing errors after the retries are used up; storage errors for persisted requests.
    /// A handler failure is *not* an `Err` here: it is the reply's `ExitResult::Failure`.
    ///
    /// # Cancel safety
    /// Dropping the future of a non-persisted, interruptible request interrupts it.
    async fn send(&self, envelope: EnvelopeRequest) -> Result<ReplyWithExit, ClusterError>;

    /// Delivers a streaming request and returns its replies.
    async fn send_stream(&self, envelope: EnvelopeRequest) -> Result<ReplyStream, ClusterError>;

    /// Delivers a request without waiting for its handler (persisted: once it is stored).
    async fn notify(&self, envelope: EnvelopeRequest) -> Result<(), ClusterError>;

    /// The final reply of a persisted request, if it has one.
    async fn poll_reply(
        &self,
        request_id: Snowflake,
    ) -> Result<Option<ReplyWithExit>, ClusterError>;

    /// Waits for the final reply of a persisted request.
    async fn join_reply(&self, request_id: Snowflake) -> Result<ReplyWithExit, ClusterError>;

    /// Acknowledges a streamed chunk.
    async fn ack_chunk(&self, ack: AckChunk) -> Result<(), ClusterError>;

    /// Interrupts a request in flight.
    async fn interrupt(&self, interrupt: Interrupt) -> Result<(), ClusterError>;

    /// Registers an entity type on this runner.
    ///
    /// # Errors
    /// `InvalidConfig` if the type is already registered or its options are invalid.
    async fn register_entity(&self, entity: Arc<dyn Entity>) -> Result<(), ClusterError>;

    /// Registers a singleton: `run` is started on exactly one runner of the cluster.
    async fn register_singleton(
        &self,
        name: &str,
        shard_group: Option<&str>,
        run: SingletonFn,
    ) -> Result<(), ClusterError>;

    /// The implementation, for runtime code that needs more than this trait.
    fn as_any(&self) -> &dyn Any;
}
