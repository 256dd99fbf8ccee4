//! The `MessageStorage` port: where persisted requests and their replies live.
//!
//! # Contract
//!
//! A persisted request (`send_persisted`, `notify_persisted`, `send_at`, workflow calls) is
//! saved here *before* it is delivered, and its final reply is saved here *before* it is
//! acknowledged to the caller. A backend must guarantee:
//!
//! 1. **Idempotent saves.** [`MessageStorage::save_request`] with a request id that is already
//!    stored, or with a `dedupe_key` that an earlier request of the same entity address
//!    used, stores nothing and answers [`SaveResult::Duplicate`] naming the *first* request
//!    id and, if there is one, its final reply.
//! 2. **Durability.** Once a call returns `Ok`, its effect survives a restart of the process
//!    (for durable backends) and is visible to every runner sharing the storage.
//! 3. **Unprocessed messages.** [`MessageStorage::unprocessed`] returns requests of the given
//!    shards that have no final reply, are not dead-lettered, and whose `deliver_at` is
//!    absent or not after `now`, ordered by request id (creation order), at most `limit`.
//! 4. **Replies.** [`MessageStorage::save_reply`] stores chunk replies in sequence order; a
//!    final reply (`Reply::WithExit`) marks the request processed. Saving the same final
//!    reply twice is harmless; the first one wins.
//! 5. **Retries and dead letters.** [`MessageStorage::record_failed_attempt`] counts a
//!    failed delivery; when the count reaches `max_attempts` the request is moved to the
//!    dead letters (no longer unprocessed, still inspectable with
//!    [`MessageStorage::dead_letters`]).
//! 6. **Concurrency.** Every method may be called concurrently from many tasks and runners
//!    without corrupting state.
//!
//! # Implementing a backend
//!
//! Implement [`MessageStorage`] in your crate, then add a test file that calls every
//! function of [`conformance`] (enable this crate's `conformance` feature in your
//! `[dev-dependencies]`). `conformance::run_all` runs the whole list:
//!
//! ```ignore
//! #[tokio::test]
//! async fn my_backend_passes_the_message_storage_conformance_suite() {
//!     cruster_message_storage::conformance::run_all(|| async { MyStorage::connect().await }).await;
//! }
//! ```
//!
//! See `examples/counting_message_storage` in the workspace and `docs/custom-backend.md`.
#![deny(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;
mod stored;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cruster_types::{ClusterError, EntityAddress, EnvelopeRequest, Reply, ShardId, Snowflake};

pub use stored::{DeadLetter, FailedAttempt, SaveResult, StoredRequest};

/// Persisted requests and replies. See the crate docs for the contract.
///
/// Held by the runtime as `Arc<dyn MessageStorage>`.
#[async_trait]
pub trait MessageStorage: Send + Sync + 'static {
    /// Stores a persisted request, or recognises it as a duplicate.
    ///
    /// # Errors
    /// `PersistenceError` when the storage cannot be written.
    async fn save_request(&self, envelope: &EnvelopeRequest) -> Result<SaveResult, ClusterError>;

    /// Stores a reply. A `Reply::WithExit` marks its request processed.
    ///
    /// A reply for an unknown request is stored anyway (the request may have been saved by
    /// another runner an instant earlier); replies are keyed by request id.
    ///
    /// # Errors
    /// `PersistenceError` when the storage cannot be written.
    async fn save_reply(&self, reply: &Reply) -> Result<(), ClusterError>;

    /// All replies stored for a request: chunks in sequence order, then the final reply.
    async fn replies_for(&self, request_id: Snowflake) -> Result<Vec<Reply>, ClusterError>;

    /// The stored request with this id, whatever its state.
    async fn request(&self, request_id: Snowflake) -> Result<Option<StoredRequest>, ClusterError>;

    /// Unprocessed, due, not dead-lettered requests of `shards`, oldest first, at most `limit`.
    async fn unprocessed(
        &self,
        shards: &[ShardId],
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<StoredRequest>, ClusterError>;

    /// Marks a request processed without a reply (a `notify` whose handler finished).
    async fn mark_processed(&self, request_id: Snowflake) -> Result<(), ClusterError>;

    /// Counts a failed delivery; at `max_attempts` the request becomes a dead letter.
    async fn record_failed_attempt(
        &self,
        request_id: Snowflake,
        reason: &str,
        max_attempts: u32,
    ) -> Result<FailedAttempt, ClusterError>;

    /// Dead-lettered requests, oldest first, at most `limit`.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, ClusterError>;

    /// Deletes every request and reply addressed to `address` (an entity's history).
    async fn clear_address(&self, address: &EntityAddress) -> Result<(), ClusterError>;

    /// Resets the delivery bookkeeping (attempt counts) of the unprocessed requests of
    /// `shards`, so a new owner starts their retries afresh. Processed requests and dead
    /// letters are not touched.
    async fn reset_shards(&self, shards: &[ShardId]) -> Result<(), ClusterError>;
}
