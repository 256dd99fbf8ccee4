//! The workflow ports: [`WorkflowStorage`] (the activity journal and activity
//! transactions) and [`WorkflowEngine`] (execution records, durable timers, deferred values).
//!
//! # Contract
//!
//! **Journal.** Every activity call of a workflow execution is recorded as a
//! [`JournalEntry`] under `(execution id, ActivityKey { name, sequence })`, where `sequence`
//! counts journaled steps within the execution from 0 (activity calls, calls to other
//! entities, sleeps and patch markers each take one position). The journal is unique by
//! `(execution id, sequence)`: one position holds at most one entry, whatever its name, so
//! two different activities can never both be recorded at one position. Entries are
//! immutable: once stored, an entry is returned byte for byte by
//! [`WorkflowStorage::journal_entry`] (when both its name and sequence match the key) and
//! [`WorkflowStorage::journal`] (sorted by sequence) until the journal is deleted.
//!
//! **Activity transactions.** [`WorkflowStorage::begin_activity`] opens an
//! [`ActivityTransaction`]. The activity's own writes go through it (for SQL backends, the
//! database transaction behind `self.tx`); [`ActivityTransaction::commit`] stores the journal
//! entry *and* those writes atomically: both become visible, or neither does. If an entry
//! at the same position already exists when committing (another runner finished the same
//! activity first, or recorded another one there), nothing of this transaction is applied
//! and [`CommitOutcome::AlreadyRecorded`] returns the existing entry, which may carry
//! another name than the one committed.
//!
//! Opening a transaction may take a database connection: callers open it as late as
//! possible (the runtime opens it on the activity's first use of `self.tx`, or just to
//! commit) and never keep one open across a wait on other work. Dropping or rolling back a
//! transaction applies nothing.
//!
//! Key-value writes ([`ActivityTransaction::put`]) are an optional capability: a backend
//! without them answers `ClusterError::Unsupported`, never a silent no-op.
//!
//! **Executions** ([`WorkflowEngine::upsert_execution`]) are keyed by execution id; the last
//! write wins, except for the cancellation request: [`WorkflowEngine::request_cancellation`]
//! records it once (the first instant is kept) on an execution that has not finished, and
//! no upsert changes it afterwards, so a runner saving its execution never loses a
//! cancellation requested meanwhile. **Durable timers** are keyed by `(execution id, timer key)`; scheduling the
//! same key twice keeps the first `fire_at`; [`WorkflowEngine::due_timers`] returns timers
//! with `fire_at <= now` that are not completed, earliest first. **Deferred values** are
//! write-once: the first [`WorkflowEngine::resolve_deferred`] wins.
//!
//! **Retention.** A finished execution (completed, failed or cancelled) is deleted, with
//! its journal, timers and deferred values, once it has not changed for the retention
//! period: [`WorkflowEngine::finished_executions_before`] lists them in bounded batches,
//! the caller deletes each journal ([`WorkflowStorage::delete_journal`]), then
//! [`WorkflowEngine::delete_finished_executions`] deletes the records, so a crash between
//! the steps leaves an execution whose journal is gone but whose record is still there to
//! be deleted by the next sweep, never a journal nobody deletes. Fired timers of finished
//! (or deleted) executions go earlier with [`WorkflowEngine::delete_fired_timers_before`].
//! Parked, running and suspended executions are never deleted.
//!
//! Backends run [`conformance`] (feature `conformance`).
#![deny(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;
mod records;

use std::any::Any;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cruster_types::{ClusterError, ExitResult, ReplyWithExit, StoreLocation};

pub use records::{
    ActivityKey, CommitOutcome, DurableTimer, ExecutionFilter, ExecutionRecord, ExecutionStatus,
    JournalEntry,
};

/// The activity journal. Held as `Arc<dyn WorkflowStorage>`.
#[async_trait]
pub trait WorkflowStorage: Send + Sync + 'static {
    /// The entry recorded for one activity call, if any: `None` when the position is empty
    /// or holds an entry of another name.
    async fn journal_entry(
        &self,
        execution_id: &str,
        key: &ActivityKey,
    ) -> Result<Option<JournalEntry>, ClusterError>;

    /// Every entry of an execution, by sequence.
    async fn journal(&self, execution_id: &str) -> Result<Vec<JournalEntry>, ClusterError>;

    /// Opens the transaction an activity writes through and commits its entry with.
    async fn begin_activity(
        &self,
        execution_id: &str,
        key: &ActivityKey,
    ) -> Result<Box<dyn ActivityTransaction>, ClusterError>;

    /// Deletes an execution's journal.
    async fn delete_journal(&self, execution_id: &str) -> Result<(), ClusterError>;

    /// The database this journal writes to, when other ports can share its commits (see
    /// [`StoreLocation`] and [`ActivityTransaction::commit_finishing`]). `None` (the
    /// default): nothing is folded with its writes.
    fn location(&self) -> Option<StoreLocation> {
        None
    }

    /// Stores `entry` alone (a step that staged no writes: an activity that never used its
    /// transaction, a call's answer, a marker), with the semantics of
    /// [`ActivityTransaction::commit`] on an empty transaction: unless an entry already
    /// exists at `(entry.execution_id, entry.key.sequence)`, which is then returned in
    /// [`CommitOutcome::AlreadyRecorded`].
    ///
    /// The default opens an activity transaction and commits it; a backend can store the
    /// entry in one statement instead.
    ///
    /// # Errors
    /// `PersistenceError` when storage cannot be written.
    async fn append_entry(&self, entry: &JournalEntry) -> Result<CommitOutcome, ClusterError> {
        self.begin_activity(&entry.execution_id, &entry.key)
            .await?
            .commit(entry)
            .await
    }

    /// Stores the entries of journal-only steps of one execution held back together: the
    /// `carried` ones (in sequence order) and `last`, atomically, as one chain of
    /// transactions would ([`ActivityTransaction::carry_on`] for each carried entry, then
    /// [`ActivityTransaction::commit`] of `last`). With no carried entry this is
    /// [`WorkflowStorage::append_entry`]. With carried entries, a taken position (any of
    /// them) applies nothing and answers `PersistenceError`, never
    /// [`CommitOutcome::AlreadyRecorded`], so no entry is dropped silently: the run is
    /// retried and replays.
    ///
    /// The runtime holds journal-only steps back together (without a transaction, so
    /// without a connection) only on a storage that
    /// [chains activities](WorkflowStorage::chains_activities). The default does what the
    /// chain would; a backend can store them in one statement instead.
    ///
    /// # Errors
    /// `PersistenceError` when storage cannot be written or a position is taken (see
    /// above); `Unsupported` with carried entries on a backend without chains.
    async fn append_entries(
        &self,
        carried: &[JournalEntry],
        last: &JournalEntry,
    ) -> Result<CommitOutcome, ClusterError> {
        if carried.is_empty() {
            return self.append_entry(last).await;
        }
        let mut tx = self.begin_activity(&last.execution_id, &last.key).await?;
        for entry in carried {
            tx.carry_on(Some(entry)).await?;
        }
        tx.commit(last).await
    }

    /// [`WorkflowStorage::append_entries`] and, in the same commit, the execution's end, as
    /// [`ActivityTransaction::commit_finishing`] stores it: with
    /// [`CommitOutcome::AlreadyRecorded`] (no carried entry, `last`'s position taken)
    /// nothing at all is applied. The runtime calls it only where it would call
    /// `commit_finishing` (the journal, the engine and the message storage report one
    /// location).
    ///
    /// # Errors
    /// As [`WorkflowStorage::append_entries`] and
    /// [`ActivityTransaction::commit_finishing`].
    async fn append_entries_finishing(
        &self,
        carried: &[JournalEntry],
        last: &JournalEntry,
        record: &ExecutionRecord,
        reply: &ReplyWithExit,
    ) -> Result<CommitOutcome, ClusterError> {
        let mut tx = self.begin_activity(&last.execution_id, &last.key).await?;
        for entry in carried {
            tx.carry_on(Some(entry)).await?;
        }
        tx.commit_finishing(last, record, reply).await
    }

    /// Whether the runtime may chain activities of one run through one transaction
    /// ([`ActivityTransaction::carry_on`] and the methods after it): a storage whose
    /// database takes concurrent writers says yes, and implements them. `false` (the
    /// default): every activity commits its own transaction.
    fn chains_activities(&self) -> bool {
        false
    }

    /// Reads a value committed through [`ActivityTransaction::put`].
    ///
    /// # Errors
    /// `Unsupported` when the backend has no key-value capability.
    async fn get_value(&self, key: &str) -> Result<Option<Bytes>, ClusterError>;
}

/// One activity's transaction: its writes and its journal entry commit together.
#[async_trait]
pub trait ActivityTransaction: Send + 'static {
    /// The backend's own transaction object (for example an `sqlx` transaction), for the
    /// backend's typed accessors to downcast.
    fn backend_mut(&mut self) -> &mut (dyn Any + Send);

    /// Stages a key-value write, applied only on commit.
    ///
    /// # Errors
    /// `Unsupported` when the backend has no key-value capability.
    async fn put(&mut self, key: &str, value: Bytes) -> Result<(), ClusterError>;

    /// Reads a key, seeing this transaction's own staged writes.
    async fn get(&mut self, key: &str) -> Result<Option<Bytes>, ClusterError>;

    /// Stores `entry` and every staged write atomically, unless an entry already exists at
    /// `(entry.execution_id, entry.key.sequence)`: then nothing is applied and that entry is
    /// returned in [`CommitOutcome::AlreadyRecorded`].
    async fn commit(self: Box<Self>, entry: &JournalEntry) -> Result<CommitOutcome, ClusterError>;

    /// Discards every staged write.
    async fn rollback(self: Box<Self>) -> Result<(), ClusterError>;

    /// Keeps this transaction open for the next activity of the same execution (a chain):
    /// stores `entry` (when given) and every staged write in it *without committing*. What
    /// is carried this way commits with the transaction's final commit
    /// ([`ActivityTransaction::commit`], [`ActivityTransaction::commit_finishing`] or
    /// [`ActivityTransaction::commit_carried`]), or is discarded with it. Once an entry is
    /// carried, a final commit that finds its own entry's position taken fails with
    /// `PersistenceError` instead of answering [`CommitOutcome::AlreadyRecorded`], so
    /// carried entries are never dropped silently.
    ///
    /// The runtime chains only on a storage whose [`WorkflowStorage::chains_activities`] is
    /// true. A backend that refuses with `Unsupported` (before writing anything) has its
    /// transaction committed instead.
    ///
    /// # Errors
    /// `Unsupported` (the default); `PersistenceError` when storage cannot be written or
    /// an entry already exists at `entry`'s position (another run journaled it): the
    /// transaction must then be dropped, and its run retried.
    async fn carry_on(&mut self, entry: Option<&JournalEntry>) -> Result<(), ClusterError> {
        let _ = entry;
        Err(chaining_unsupported())
    }

    /// Sets the point [`ActivityTransaction::rollback_to_mark`] returns to: what the next
    /// activity of a chain writes after it can be discarded alone.
    ///
    /// # Errors
    /// `Unsupported` (the default); `PersistenceError` when storage fails (the transaction
    /// must then be dropped).
    async fn mark(&mut self) -> Result<(), ClusterError> {
        Err(chaining_unsupported())
    }

    /// Discards what was written and staged since the last [`ActivityTransaction::mark`],
    /// keeping what was carried before it (an activity of a chain failed; the chain goes on
    /// without its writes).
    ///
    /// # Errors
    /// `Unsupported` (the default); `PersistenceError` when storage fails (the transaction
    /// must then be dropped) or `mark` was never called.
    async fn rollback_to_mark(&mut self) -> Result<(), ClusterError> {
        Err(chaining_unsupported())
    }

    /// When cancellation of `execution_id` was requested, if it was, read inside this
    /// transaction (as [`WorkflowEngine::cancellation_requested`] reads it on its own), so a
    /// run holding a chain asks at its next suspension point without a second connection.
    /// The runtime asks only when the engine reports this storage's location.
    ///
    /// # Errors
    /// `Unsupported` (the default: the runtime then asks the engine); `PersistenceError`
    /// when storage cannot be read.
    async fn cancellation_requested(
        &mut self,
        execution_id: &str,
    ) -> Result<Option<DateTime<Utc>>, ClusterError> {
        let _ = execution_id;
        Err(chaining_unsupported())
    }

    /// [`ActivityTransaction::carry_on`] with `entry`, then
    /// [`ActivityTransaction::cancellation_requested`] of `execution_id`: what a run holding
    /// a chain does at its next activity's suspension point, before the activity runs. A
    /// backend may do both in one round trip (PostgreSQL does); the default reads, then
    /// carries on. The read need not see the carried entry.
    ///
    /// # Errors
    /// As [`ActivityTransaction::carry_on`] and
    /// [`ActivityTransaction::cancellation_requested`]. `Unsupported` only before anything
    /// was written (the runtime then holds the entry back as it was); after any other
    /// error the transaction must be dropped and its run retried.
    async fn carry_on_reading_cancellation(
        &mut self,
        entry: Option<&JournalEntry>,
        execution_id: &str,
    ) -> Result<Option<DateTime<Utc>>, ClusterError> {
        let requested = self.cancellation_requested(execution_id).await?;
        self.carry_on(entry).await?;
        Ok(requested)
    }

    /// Commits what [`ActivityTransaction::carry_on`] carried, adding no entry.
    ///
    /// # Errors
    /// `Unsupported` (the default); `PersistenceError` when storage cannot be written (then
    /// nothing is applied).
    async fn commit_carried(self: Box<Self>) -> Result<(), ClusterError> {
        Err(chaining_unsupported())
    }

    /// Commits as [`ActivityTransaction::commit`] does, and in the same commit ends the
    /// execution: stores `record` as [`WorkflowEngine::upsert_execution`] would and `reply`
    /// (the final reply of the request that ran the execution) as the message storage at
    /// the same [`StoreLocation`] would with `save_reply`. With
    /// [`CommitOutcome::AlreadyRecorded`] nothing at all is applied. The runtime calls it
    /// only when the journal storage, the engine and the message storage report one
    /// location, so a backend reporting a location must implement it.
    ///
    /// # Errors
    /// `Unsupported` (the default) for a backend that reports no location;
    /// `PersistenceError` when storage cannot be written (then nothing is applied).
    async fn commit_finishing(
        self: Box<Self>,
        entry: &JournalEntry,
        record: &ExecutionRecord,
        reply: &ReplyWithExit,
    ) -> Result<CommitOutcome, ClusterError> {
        let _ = (entry, record, reply);
        Err(ClusterError::Unsupported {
            operation: "ending a workflow execution in its last activity's commit".to_string(),
            backend: "a workflow storage that reports no store location".to_string(),
        })
    }
}

/// What the chaining methods of [`ActivityTransaction`] answer on a backend without them.
fn chaining_unsupported() -> ClusterError {
    ClusterError::Unsupported {
        operation: "carrying an activity's transaction on to the next activity".to_string(),
        backend: "a workflow storage that reports no store location".to_string(),
    }
}

/// Executions, durable timers and deferred values. Held as `Arc<dyn WorkflowEngine>`.
#[async_trait]
pub trait WorkflowEngine: Send + Sync + 'static {
    /// Creates or replaces an execution record (keeping the stored `cancel_requested_at`;
    /// a new record starts with none, whatever `record` holds).
    async fn upsert_execution(&self, record: &ExecutionRecord) -> Result<(), ClusterError>;

    /// The database this engine writes to, when a message storage can share its commits
    /// (see [`StoreLocation`]). `None` (the default): the runtime never calls
    /// [`WorkflowEngine::finish_with_reply`].
    fn location(&self) -> Option<StoreLocation> {
        None
    }

    /// Stores a finished execution's `record` and the final `reply` of the request that
    /// ran it in one commit: the record as [`WorkflowEngine::upsert_execution`] would, the
    /// reply as the message storage at the same [`StoreLocation`] would store it with
    /// `save_reply` (marking its request processed). The runtime calls it only when this
    /// engine's `location()` equals its message storage's, so a backend reporting a
    /// location must implement it.
    ///
    /// # Errors
    /// `Unsupported` (the default) for a backend that reports no location;
    /// `PersistenceError` when storage cannot be written (then neither is stored).
    async fn finish_with_reply(
        &self,
        record: &ExecutionRecord,
        reply: &ReplyWithExit,
    ) -> Result<(), ClusterError> {
        let _ = (record, reply);
        Err(ClusterError::Unsupported {
            operation: "storing a reply with an execution record in one commit".to_string(),
            backend: "a workflow engine that reports no store location".to_string(),
        })
    }

    /// One execution.
    async fn execution(&self, execution_id: &str) -> Result<Option<ExecutionRecord>, ClusterError>;

    /// The executions among `execution_ids` that stopped running — finished (completed,
    /// failed, cancelled) or parked —, in the order of `execution_ids`, in one read.
    /// Running, suspended and unknown ids are left out.
    ///
    /// The runtime asks it for every caller waiting on one runner for a workflow result at
    /// once (its slow fallback when the execution stopped on another runner), so backends
    /// should answer it with one query however many ids it gets.
    ///
    /// # Errors
    /// Storage errors.
    async fn stopped_executions(
        &self,
        execution_ids: &[String],
    ) -> Result<Vec<ExecutionRecord>, ClusterError>;

    /// Records that cancellation of an execution was requested at `requested_at`, unless
    /// the execution has finished (completed, failed or cancelled) or a request is already
    /// recorded (the first instant is kept: repeating it is harmless). Returns the record as
    /// stored afterwards, `None` when there is no such execution.
    ///
    /// # Errors
    /// Storage errors.
    async fn request_cancellation(
        &self,
        execution_id: &str,
        requested_at: DateTime<Utc>,
    ) -> Result<Option<ExecutionRecord>, ClusterError>;

    /// When cancellation of an execution was requested, if it was (`None` also for an
    /// unknown execution). Cheaper than [`WorkflowEngine::execution`]: the runtime asks it
    /// at every suspension point.
    ///
    /// # Errors
    /// Storage errors.
    async fn cancellation_requested(
        &self,
        execution_id: &str,
    ) -> Result<Option<DateTime<Utc>>, ClusterError>;

    /// Executions matching `filter`, oldest first.
    async fn list_executions(
        &self,
        filter: &ExecutionFilter,
    ) -> Result<Vec<ExecutionRecord>, ClusterError>;

    /// Schedules a timer; a second schedule of the same key keeps the first.
    async fn schedule_timer(&self, timer: &DurableTimer) -> Result<(), ClusterError>;

    /// One timer, completed or not.
    async fn timer(
        &self,
        execution_id: &str,
        timer_key: &str,
    ) -> Result<Option<DurableTimer>, ClusterError>;

    /// Uncompleted timers due at `now`, earliest first, at most `limit`.
    async fn due_timers(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DurableTimer>, ClusterError>;

    /// Marks a timer fired.
    async fn complete_timer(&self, execution_id: &str, timer_key: &str)
        -> Result<(), ClusterError>;

    /// The ids of at most `limit` finished executions (completed, failed or cancelled; see
    /// [`ExecutionStatus::is_finished`]) last updated at or before `finished_before`, oldest
    /// first. Parked, running and suspended executions are never listed. The first step of
    /// retention: the caller deletes their journals, then calls
    /// [`WorkflowEngine::delete_finished_executions`].
    ///
    /// # Errors
    /// Storage errors.
    async fn finished_executions_before(
        &self,
        finished_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<String>, ClusterError>;

    /// Deletes the executions among `execution_ids` that are still finished and last updated
    /// at or before `finished_before`, with their timers and deferred values, and answers
    /// how many executions it deleted. Any other id is left alone, so a list read a moment
    /// earlier is safe to pass.
    ///
    /// # Errors
    /// Storage errors; then nothing was deleted by this call.
    async fn delete_finished_executions(
        &self,
        execution_ids: &[String],
        finished_before: DateTime<Utc>,
    ) -> Result<u64, ClusterError>;

    /// Deletes at most `limit` fired (completed) timers with `fire_at` at or before
    /// `fired_before` whose execution has finished or no longer exists, and answers how many
    /// it deleted. Timers of executions that have not finished are kept whatever their age:
    /// a replay of the execution reads them to know its sleeps are over.
    ///
    /// # Errors
    /// Storage errors; then nothing was deleted by this call.
    async fn delete_fired_timers_before(
        &self,
        fired_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, ClusterError>;

    /// Resolves a deferred value. Returns `false` if it was already resolved (nothing changed).
    async fn resolve_deferred(
        &self,
        execution_id: &str,
        name: &str,
        value: &ExitResult,
    ) -> Result<bool, ClusterError>;

    /// A deferred value, if resolved.
    async fn deferred(
        &self,
        execution_id: &str,
        name: &str,
    ) -> Result<Option<ExitResult>, ClusterError>;
}
