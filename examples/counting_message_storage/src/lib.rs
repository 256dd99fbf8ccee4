//! A `MessageStorage` backend written outside cruster's core, as a backend author would.
//!
//! [`CountingMessageStorage`] wraps any inner [`MessageStorage`], counts the calls made to
//! each method, and delegates every call unchanged. It is the smallest complete backend:
//! one trait implemented in an outside crate, checked by the interface crate's conformance
//! suite (see `tests/conformance.rs` and `docs/custom-backend.md`).
//!
//! Like every cross-cutting wrapper (metrics, limits, fault injection), it implements the
//! same port around an inner one and adds no policy of its own. It holds no lock: the
//! counters are atomics.
//!
//! ```
//! use std::sync::Arc;
//! use counting_message_storage::CountingMessageStorage;
//! use cruster_message_storage::MessageStorage;
//! use cruster_storage_memory::MemoryMessageStorage;
//! use cruster_types::Snowflake;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let counting = Arc::new(CountingMessageStorage::new(MemoryMessageStorage::new()));
//! // The runtime holds storage as `Arc<dyn MessageStorage>`; keep a typed handle to read
//! // the counters.
//! let storage: Arc<dyn MessageStorage> = counting.clone();
//! assert_eq!(storage.request(Snowflake(1)).await.unwrap(), None);
//! assert_eq!(counting.counts().request, 1);
//! assert_eq!(counting.counts().total(), 1);
//! # });
//! ```
#![deny(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cruster_message_storage::{
    AttemptFailure, AttemptStart, DeadLetter, FailedAttempt, FinishedRequest, MessageCounts,
    MessageStorage, PollQuery, SaveResult, StoredRequest,
};
use cruster_types::{ClusterError, EntityAddress, EnvelopeRequest, Reply, ShardId, Snowflake};

/// A [`MessageStorage`] that counts the calls made to each method and delegates them to
/// `S`.
///
/// A call is counted when it is made, whether the inner storage then succeeds or fails.
/// Several storages may count into one [`CallCounters`] (see
/// [`CountingMessageStorage::with_counters`]).
#[derive(Debug, Default)]
pub struct CountingMessageStorage<S> {
    inner: S,
    counters: Arc<CallCounters>,
}

impl<S> CountingMessageStorage<S> {
    /// Wraps `inner`, counting into new counters (all at zero).
    pub fn new(inner: S) -> Self {
        Self::with_counters(inner, Arc::default())
    }

    /// Wraps `inner`, counting into `counters`, which other storages may share.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use counting_message_storage::{CallCounters, CountingMessageStorage};
    /// use cruster_storage_memory::MemoryMessageStorage;
    ///
    /// let counters = Arc::new(CallCounters::default());
    /// let a = CountingMessageStorage::with_counters(MemoryMessageStorage::new(), counters.clone());
    /// let b = CountingMessageStorage::with_counters(MemoryMessageStorage::new(), counters.clone());
    /// assert!(Arc::ptr_eq(a.counters(), b.counters()));
    /// ```
    pub fn with_counters(inner: S, counters: Arc<CallCounters>) -> Self {
        CountingMessageStorage { inner, counters }
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner storage, dropping this storage's handle on the counters.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The counters this storage counts into.
    pub fn counters(&self) -> &Arc<CallCounters> {
        &self.counters
    }

    /// A snapshot of the counters.
    pub fn counts(&self) -> CallCounts {
        self.counters.snapshot()
    }
}

/// Live call counters, one atomic per [`MessageStorage`] method.
#[derive(Debug, Default)]
pub struct CallCounters {
    save_request: AtomicU64,
    save_reply: AtomicU64,
    replies_for: AtomicU64,
    request: AtomicU64,
    finished_requests: AtomicU64,
    poll_unprocessed: AtomicU64,
    unprocessed: AtomicU64,
    mark_processed: AtomicU64,
    start_attempts: AtomicU64,
    release_attempts: AtomicU64,
    record_failed_attempt: AtomicU64,
    dead_letters: AtomicU64,
    clear_address: AtomicU64,
    retry_dead_letters: AtomicU64,
    purge_dead_letters: AtomicU64,
    delete_processed_before: AtomicU64,
    message_counts: AtomicU64,
}

impl CallCounters {
    /// A snapshot of every counter. Counters are read one by one, so a snapshot taken
    /// while calls are under way may mix instants.
    pub fn snapshot(&self) -> CallCounts {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CallCounts {
            save_request: read(&self.save_request),
            save_reply: read(&self.save_reply),
            replies_for: read(&self.replies_for),
            request: read(&self.request),
            finished_requests: read(&self.finished_requests),
            poll_unprocessed: read(&self.poll_unprocessed),
            unprocessed: read(&self.unprocessed),
            mark_processed: read(&self.mark_processed),
            start_attempts: read(&self.start_attempts),
            release_attempts: read(&self.release_attempts),
            record_failed_attempt: read(&self.record_failed_attempt),
            dead_letters: read(&self.dead_letters),
            clear_address: read(&self.clear_address),
            retry_dead_letters: read(&self.retry_dead_letters),
            purge_dead_letters: read(&self.purge_dead_letters),
            delete_processed_before: read(&self.delete_processed_before),
            message_counts: read(&self.message_counts),
        }
    }
}

/// How many times each [`MessageStorage`] method was called: a snapshot of
/// [`CallCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Calls to [`MessageStorage::save_request`].
    pub save_request: u64,
    /// Calls to [`MessageStorage::save_reply`].
    pub save_reply: u64,
    /// Calls to [`MessageStorage::replies_for`].
    pub replies_for: u64,
    /// Calls to [`MessageStorage::request`].
    pub request: u64,
    /// Calls to [`MessageStorage::finished_requests`].
    pub finished_requests: u64,
    /// Calls to [`MessageStorage::poll_unprocessed`].
    pub poll_unprocessed: u64,
    /// Calls to [`MessageStorage::unprocessed`].
    pub unprocessed: u64,
    /// Calls to [`MessageStorage::mark_processed`].
    pub mark_processed: u64,
    /// Calls to [`MessageStorage::start_attempts`].
    pub start_attempts: u64,
    /// Calls to [`MessageStorage::release_attempts`].
    pub release_attempts: u64,
    /// Calls to [`MessageStorage::record_failed_attempt`].
    pub record_failed_attempt: u64,
    /// Calls to [`MessageStorage::dead_letters`].
    pub dead_letters: u64,
    /// Calls to [`MessageStorage::clear_address`].
    pub clear_address: u64,
    /// Calls to [`MessageStorage::retry_dead_letters`].
    pub retry_dead_letters: u64,
    /// Calls to [`MessageStorage::purge_dead_letters`].
    pub purge_dead_letters: u64,
    /// Calls to [`MessageStorage::delete_processed_before`].
    pub delete_processed_before: u64,
    /// Calls to [`MessageStorage::message_counts`].
    pub message_counts: u64,
}

impl CallCounts {
    /// Calls to every method together.
    pub fn total(&self) -> u64 {
        self.save_request
            + self.save_reply
            + self.replies_for
            + self.request
            + self.finished_requests
            + self.poll_unprocessed
            + self.unprocessed
            + self.mark_processed
            + self.start_attempts
            + self.release_attempts
            + self.record_failed_attempt
            + self.dead_letters
            + self.clear_address
            + self.retry_dead_letters
            + self.purge_dead_letters
            + self.delete_processed_before
            + self.message_counts
    }

    /// The methods never called, by name.
    pub fn uncalled(&self) -> Vec<&'static str> {
        [
            ("save_request", self.save_request),
            ("save_reply", self.save_reply),
            ("replies_for", self.replies_for),
            ("request", self.request),
            ("finished_requests", self.finished_requests),
            ("poll_unprocessed", self.poll_unprocessed),
            ("unprocessed", self.unprocessed),
            ("mark_processed", self.mark_processed),
            ("start_attempts", self.start_attempts),
            ("release_attempts", self.release_attempts),
            ("record_failed_attempt", self.record_failed_attempt),
            ("dead_letters", self.dead_letters),
            ("clear_address", self.clear_address),
            ("retry_dead_letters", self.retry_dead_letters),
            ("purge_dead_letters", self.purge_dead_letters),
            ("delete_processed_before", self.delete_processed_before),
            ("message_counts", self.message_counts),
        ]
        .into_iter()
        .filter(|(_, calls)| *calls == 0)
        .map(|(name, _)| name)
        .collect()
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[async_trait]
impl<S: MessageStorage> MessageStorage for CountingMessageStorage<S> {
    async fn save_request(&self, envelope: &EnvelopeRequest) -> Result<SaveResult, ClusterError> {
        count(&self.counters.save_request);
        self.inner.save_request(envelope).await
    }

    async fn save_reply(&self, reply: &Reply) -> Result<(), ClusterError> {
        count(&self.counters.save_reply);
        self.inner.save_reply(reply).await
    }

    async fn replies_for(&self, request_id: Snowflake) -> Result<Vec<Reply>, ClusterError> {
        count(&self.counters.replies_for);
        self.inner.replies_for(request_id).await
    }

    async fn request(&self, request_id: Snowflake) -> Result<Option<StoredRequest>, ClusterError> {
        count(&self.counters.request);
        self.inner.request(request_id).await
    }

    async fn finished_requests(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<FinishedRequest>, ClusterError> {
        count(&self.counters.finished_requests);
        self.inner.finished_requests(request_ids).await
    }

    async fn poll_unprocessed(
        &self,
        query: &PollQuery<'_>,
    ) -> Result<Vec<StoredRequest>, ClusterError> {
        count(&self.counters.poll_unprocessed);
        self.inner.poll_unprocessed(query).await
    }

    async fn unprocessed(
        &self,
        shards: &[ShardId],
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<StoredRequest>, ClusterError> {
        count(&self.counters.unprocessed);
        self.inner.unprocessed(shards, now, limit).await
    }

    async fn mark_processed(&self, request_id: Snowflake) -> Result<(), ClusterError> {
        count(&self.counters.mark_processed);
        self.inner.mark_processed(request_id).await
    }

    async fn start_attempts(
        &self,
        request_ids: &[Snowflake],
        max_attempts: u32,
        reason: &str,
    ) -> Result<Vec<AttemptStart>, ClusterError> {
        count(&self.counters.start_attempts);
        self.inner
            .start_attempts(request_ids, max_attempts, reason)
            .await
    }

    async fn release_attempts(&self, request_ids: &[Snowflake]) -> Result<(), ClusterError> {
        count(&self.counters.release_attempts);
        self.inner.release_attempts(request_ids).await
    }

    async fn record_failed_attempt(
        &self,
        request_id: Snowflake,
        failure: &AttemptFailure<'_>,
    ) -> Result<FailedAttempt, ClusterError> {
        count(&self.counters.record_failed_attempt);
        self.inner.record_failed_attempt(request_id, failure).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, ClusterError> {
        count(&self.counters.dead_letters);
        self.inner.dead_letters(limit).await
    }

    async fn clear_address(&self, address: &EntityAddress) -> Result<(), ClusterError> {
        count(&self.counters.clear_address);
        self.inner.clear_address(address).await
    }

    async fn retry_dead_letters(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<Snowflake>, ClusterError> {
        count(&self.counters.retry_dead_letters);
        self.inner.retry_dead_letters(request_ids).await
    }

    async fn purge_dead_letters(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<Snowflake>, ClusterError> {
        count(&self.counters.purge_dead_letters);
        self.inner.purge_dead_letters(request_ids).await
    }

    async fn delete_processed_before(
        &self,
        shards: &[ShardId],
        processed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, ClusterError> {
        count(&self.counters.delete_processed_before);
        self.inner
            .delete_processed_before(shards, processed_before, limit)
            .await
    }

    async fn message_counts(&self) -> Result<Vec<MessageCounts>, ClusterError> {
        count(&self.counters.message_counts);
        self.inner.message_counts().await
    }
}
