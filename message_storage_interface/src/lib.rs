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
//! 3. **Unprocessed messages.** [`MessageStorage::poll_unprocessed`] returns requests of the
//!    asked shards that have no final reply, are not dead-lettered and are *due*: their
//!    `deliver_at` and their retry instant (set by a failed attempt, see 5) are absent or
//!    not after `now`. They come ordered by request id (creation order), at most `limit`,
//!    only those with an id greater than the query's `after` cursor, and none addressed to
//!    an entity listed in the query's `skip_entities`. [`MessageStorage::unprocessed`] is
//!    the same query without cursor or skips.
//! 4. **Replies.** [`MessageStorage::save_reply`] stores chunk replies in sequence order; a
//!    final reply (`Reply::WithExit`) marks the request processed. Saving the same final
//!    reply twice is harmless; the first one wins.
//! 5. **Attempts, retries and dead letters.** A request's attempt count is never reset: it
//!    follows the request from runner to runner when its shard moves.
//!    [`MessageStorage::start_attempts`] counts, *before* a redelivery is made, the attempt
//!    it is about to make; a request that already used `max_attempts` attempts is
//!    dead-lettered instead. [`MessageStorage::record_failed_attempt`] records a failed
//!    delivery: it counts the attempt unless [`AttemptFailure::counted`] says it was counted
//!    when it started, dead-letters the request once the count reaches `max_attempts`, and
//!    otherwise makes it not due before [`AttemptFailure::retry_at`]. A dead letter is no
//!    longer unprocessed and stays inspectable with [`MessageStorage::dead_letters`].
//!    [`MessageStorage::release_attempts`] gives back a counted attempt that was never made
//!    (never below zero).
//!    An operator can take a dead letter back: [`MessageStorage::retry_dead_letters`] makes
//!    it pending again with its attempt count reset to zero and no retry instant (one whose
//!    final reply was stored while it was dead becomes processed instead), and
//!    [`MessageStorage::purge_dead_letters`] deletes it with its replies and frees its
//!    dedupe key. Both touch dead letters only and answer the ids they changed, so calling
//!    them again changes nothing.
//! 6. **Retention.** A backend records when each request became processed (its final reply
//!    stored, or marked processed). [`MessageStorage::delete_processed_before`] deletes
//!    processed requests of the asked shards processed at or before a cutoff, with their
//!    replies, in bounded batches; their dedupe keys are freed, so a later save with the
//!    same key is a new request. Pending requests and dead letters stay until they are
//!    processed, retried or purged.
//! 7. **Concurrency.** Every method may be called concurrently from many tasks and runners
//!    without corrupting state.
//!
//! # Polling fairly and cheaply
//!
//! The runtime polls with a keyset cursor (`after`: the last id of its previous page;
//! a page shorter than `limit` means it reached the end, and the next poll starts again
//! from the oldest) and with the entities whose mailboxes are full left out. So requests
//! already in flight, or waiting behind a saturated entity, do not occupy the head of every
//! poll, and one page costs about `limit` rows read plus the rows of the skipped entities
//! between the cursor and the page's end, not the whole backlog. Backends should serve the
//! query from an index ordered by request id over the pending requests only.
//!
//! # Waiting for replies
//!
//! A caller waiting for a persisted request's final reply is woken by the runner that
//! stores it (in-process, or by a push over the transport). Only what those wake-ups
//! missed is read from storage: each runner asks [`MessageStorage::finished_requests`]
//! once per fallback interval for *all* of its waiting callers, so the reads follow the
//! number of runners, not of callers.
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
use cruster_types::{
    ClusterError, EntityAddress, EnvelopeRequest, Reply, ShardId, Snowflake, StoreLocation,
};

pub use stored::{
    AttemptFailure, AttemptStart, DeadLetter, FailedAttempt, FinishedRequest, MessageCounts,
    PollQuery, SaveResult, StoredRequest,
};

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

    /// The database this storage writes to, when another port can share its commits
    /// (see [`StoreLocation`]). `None` (the default): nothing is folded with its writes.
    fn location(&self) -> Option<StoreLocation> {
        None
    }

    /// All replies stored for a request: chunks in sequence order, then the final reply.
    async fn replies_for(&self, request_id: Snowflake) -> Result<Vec<Reply>, ClusterError>;

    /// The stored request with this id, whatever its state.
    async fn request(&self, request_id: Snowflake) -> Result<Option<StoredRequest>, ClusterError>;

    /// Which of `request_ids` have finished, in one read: those with a stored final reply
    /// ([`FinishedRequest::Answered`]) and those dead-lettered without one
    /// ([`FinishedRequest::DeadLettered`]), in the order of `request_ids`. Ids that are
    /// pending, processed without a reply (a notify) or unknown are left out.
    ///
    /// The runtime asks it for every caller waiting on one runner at once (its slow
    /// fallback when a reply was stored elsewhere and the push was lost), so backends
    /// should answer it with one query however many ids it gets (contract, "Waiting for
    /// replies").
    ///
    /// # Errors
    /// `PersistenceError` when the storage cannot be read.
    async fn finished_requests(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<FinishedRequest>, ClusterError>;

    /// One page of the unprocessed, due, not dead-lettered requests of `query.shards`,
    /// oldest first: at most `query.limit`, with an id after `query.after`, none addressed
    /// to an entity of `query.skip_entities` (contract, point 3).
    ///
    /// # Errors
    /// `PersistenceError` when the storage cannot be read.
    async fn poll_unprocessed(
        &self,
        query: &PollQuery<'_>,
    ) -> Result<Vec<StoredRequest>, ClusterError>;

    /// Unprocessed, due, not dead-lettered requests of `shards`, oldest first, at most `limit`
    /// ([`MessageStorage::poll_unprocessed`] without cursor or skipped entities).
    ///
    /// # Errors
    /// `PersistenceError` when the storage cannot be read.
    async fn unprocessed(
        &self,
        shards: &[ShardId],
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<StoredRequest>, ClusterError> {
        self.poll_unprocessed(&PollQuery::new(shards, now, limit))
            .await
    }

    /// Marks a request processed without a reply (a `notify` whose handler finished).
    async fn mark_processed(&self, request_id: Snowflake) -> Result<(), ClusterError>;

    /// Counts, before they are made, the attempts about to redeliver `request_ids` (distinct
    /// ids). A pending request whose count is below `max_attempts` gets one more and is
    /// answered [`AttemptStart::Deliver`]; one that already used `max_attempts` becomes a
    /// dead letter with `reason` and is answered [`AttemptStart::DeadLettered`] (it must not
    /// be delivered). Unknown, processed or dead requests are [`AttemptStart::NotPending`].
    /// Answers come in the order of `request_ids`.
    ///
    /// # Errors
    /// `PersistenceError` when the storage cannot be written; then nothing was counted for
    /// the requests whose answer the caller did not get, and it must not deliver them.
    async fn start_attempts(
        &self,
        request_ids: &[Snowflake],
        max_attempts: u32,
        reason: &str,
    ) -> Result<Vec<AttemptStart>, ClusterError>;

    /// Gives back attempts that [`MessageStorage::start_attempts`] counted but that were
    /// never made, or ended without an outcome for a reason that is not the message's
    /// fault (refused by a full mailbox; stopped because its shard left this runner):
    /// decrements the count of each pending request, never below zero. Requests that are
    /// unknown, processed or dead are left alone.
    ///
    /// # Errors
    /// `PersistenceError` when the storage cannot be written.
    async fn release_attempts(&self, request_ids: &[Snowflake]) -> Result<(), ClusterError>;

    /// Records a failed delivery: counts it (unless `failure.counted`), dead-letters at
    /// `failure.max_attempts`, else leaves the request not due before `failure.retry_at`.
    ///
    /// # Errors
    /// `PersistenceError` when the storage cannot be written.
    async fn record_failed_attempt(
        &self,
        request_id: Snowflake,
        failure: &AttemptFailure<'_>,
    ) -> Result<FailedAttempt, ClusterError>;

    /// Dead-lettered requests, oldest first, at most `limit`.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, ClusterError>;

    /// Deletes every request and reply addressed to `address` (an entity's history).
    async fn clear_address(&self, address: &EntityAddress) -> Result<(), ClusterError>;

    /// Takes the dead letters among `request_ids` back (contract, point 5): each becomes
    /// pending again with zero attempts and no retry instant, so the next poll of its
    /// shard delivers it; one whose final reply was stored while it was dead becomes
    /// processed. Ids that are unknown, pending or processed are left alone. Answers the
    /// ids taken back, in the order of `request_ids`.
    ///
    /// # Errors
    /// `PersistenceError` when the storage cannot be written; then nothing was changed.
    async fn retry_dead_letters(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<Snowflake>, ClusterError>;

    /// Deletes the dead letters among `request_ids` with their replies, and frees their
    /// dedupe keys. Ids that are unknown, pending or processed are left alone. Answers the
    /// ids deleted, in the order of `request_ids`.
    ///
    /// # Errors
    /// `PersistenceError` when the storage cannot be written; then nothing was deleted.
    async fn purge_dead_letters(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<Snowflake>, ClusterError>;

    /// Deletes, with their replies, at most `limit` processed requests of `shards` that were
    /// processed at or before `processed_before` (contract, point 6), and answers how many
    /// requests it deleted. Pending requests and dead letters are never deleted, whatever
    /// their age. A caller empties the backlog past the cutoff by calling again until the
    /// answer is below `limit`; each call is one short write, never an unbounded delete.
    ///
    /// # Errors
    /// `PersistenceError` when the storage cannot be written; then nothing was deleted by
    /// this call.
    async fn delete_processed_before(
        &self,
        shards: &[ShardId],
        processed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, ClusterError>;

    /// Pending, retrying and dead-lettered requests per shard and entity type: one entry
    /// for each pair with at least one such request, ordered by shard then entity type.
    /// Processed requests are not counted.
    ///
    /// # Errors
    /// `PersistenceError` when the storage cannot be read.
    async fn message_counts(&self) -> Result<Vec<MessageCounts>, ClusterError>;
}
