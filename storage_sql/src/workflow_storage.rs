//! [`SqlWorkflowStorage`]: the activity journal (`cruster_journal`), activity transactions
//! as real database transactions, and their key-value writes (`cruster_activity_values`).

use std::any::Any;
use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cruster_types::{ClusterError, ReplyWithExit, StoreLocation};
use cruster_workflow_storage::{
    ActivityKey, ActivityTransaction, CommitOutcome, ExecutionRecord, JournalEntry, WorkflowStorage,
};

use crate::dialect::per_dialect;
use crate::finish::Finish;
use crate::pool::SqlPool;
use crate::rows::{self, failed, nanos};

/// The workflow journal in PostgreSQL or SQLite, with activity transactions that are
/// database transactions.
///
/// [`WorkflowStorage::begin_activity`] opens a transaction on a pooled connection and keeps
/// it until commit or rollback; [`ActivityTransaction::commit`] inserts the journal entry in
/// that same transaction and commits, so the activity's own SQL writes and its entry become
/// visible together or not at all. When the entry already exists (another runner finished the
/// activity first) the whole transaction is rolled back and the existing entry returned.
/// The open transaction is reachable through [`ActivityTransaction::backend_mut`]; see
/// [`postgres_transaction`] and [`sqlite_transaction`].
///
/// Key-value writes (`put`/`get`/`get_value`) are supported, in table
/// `cruster_activity_values`: `put` stages a write in the transaction object and `commit`
/// applies the staged writes in the database transaction, after the journal entry; `get`
/// answers from the staged writes, else from committed values. Staging keeps a SQLite
/// activity that only uses key-value writes from holding the write lock while it runs.
///
/// An open activity transaction holds one pooled connection. The runtime opens it only when
/// an activity first writes through `self.tx` (or just to commit the journal entry), never
/// while a call to another entity waits, so the pool needs room for the activities that are
/// *writing* at once, plus the runtime's own queries. The journal is unique by
/// `(execution_id, sequence)` (migration 5). On SQLite the
/// transaction is deferred (`BEGIN`): it takes the database's single write lock at its first
/// write and holds it to commit, and a transaction that read before another connection
/// committed a write fails its own first write with "database is locked" (retryable).
/// While an activity holds the SQLite write lock, every other write to the database waits
/// (up to the pool's busy timeout): keep SQL activities short, and do not wait inside one for
/// work that writes to the same database. `sqlite::memory:` pools have a single
/// connection, which an open activity transaction occupies.
#[derive(Clone, Debug)]
pub struct SqlWorkflowStorage {
    pool: SqlPool,
}

crate::backend_constructors!(SqlWorkflowStorage, "workflow journal");

#[async_trait]
impl WorkflowStorage for SqlWorkflowStorage {
    async fn journal_entry(
        &self,
        execution_id: &str,
        key: &ActivityKey,
    ) -> Result<Option<JournalEntry>, ClusterError> {
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            let row = sqlx::query(d::sql::JOURNAL_ENTRY)
                .bind(execution_id)
                .bind(i64::from(key.sequence))
                .bind(key.name.as_str())
                .fetch_optional(pool)
                .await
                .map_err(|e| {
                    failed(
                        format_args!("reading journal entry {execution_id}/{}", key.name),
                        e,
                    )
                })?;
            row.map(|row| rows::journal_entry(&row)).transpose()
        })
    }

    async fn journal(&self, execution_id: &str) -> Result<Vec<JournalEntry>, ClusterError> {
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            let found = sqlx::query(d::sql::JOURNAL)
                .bind(execution_id)
                .fetch_all(pool)
                .await
                .map_err(|e| failed(format_args!("reading the journal of {execution_id}"), e))?;
            found.iter().map(rows::journal_entry).collect()
        })
    }

    async fn begin_activity(
        &self,
        execution_id: &str,
        key: &ActivityKey,
    ) -> Result<Box<dyn ActivityTransaction>, ClusterError> {
        let tx = per_dialect!(&self.pool, SqlPool, |pool, _d| {
            pool.begin().await.map(OpenTransaction::from)
        })
        .map_err(|e| {
            failed(
                format_args!(
                    "opening the transaction of activity {}#{} of {execution_id}",
                    key.name, key.sequence
                ),
                e,
            )
        })?;
        Ok(Box::new(SqlActivityTransaction {
            tx,
            staged: BTreeMap::new(),
            storage: self.clone(),
            carried: false,
        }))
    }

    /// One `INSERT … ON CONFLICT DO NOTHING` on its own (no `BEGIN`/`COMMIT` round trips);
    /// a conflict reads the entry that won.
    async fn append_entry(&self, entry: &JournalEntry) -> Result<CommitOutcome, ClusterError> {
        let columns = JournalColumns::of(entry)?;
        let (execution_id, sequence, activity) =
            (columns.execution_id, columns.sequence, columns.activity);
        let doing = || format!("journaling step {activity}#{sequence} of {execution_id}");
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            let inserted = columns
                .bind(sqlx::query(d::sql::INSERT_JOURNAL_ENTRY))
                .execute(pool)
                .await
                .map_err(|e| failed(doing(), e))?
                .rows_affected()
                == 1;
            if inserted {
                return Ok(CommitOutcome::Committed);
            }
            let existing = sqlx::query(d::sql::JOURNAL_ENTRY_AT)
                .bind(execution_id)
                .bind(sequence)
                .fetch_optional(pool)
                .await
                .map_err(|e| failed(doing(), e))?;
            existing_entry(existing.as_ref(), doing)
        })
    }

    /// PostgreSQL: one statement (`APPEND_JOURNAL_ENTRIES`), no `BEGIN`/`COMMIT` round
    /// trips. SQLite never holds steps back together: carried entries are `Unsupported`.
    async fn append_entries(
        &self,
        carried: &[JournalEntry],
        last: &JournalEntry,
    ) -> Result<CommitOutcome, ClusterError> {
        if carried.is_empty() {
            return self.append_entry(last).await;
        }
        match &self.pool {
            #[cfg(feature = "postgres")]
            SqlPool::Postgres(pool) => {
                let doing = || held_back_steps(carried, last);
                let arrays = JournalArrays::of(carried, last)?;
                arrays
                    .bind(sqlx::query(
                        crate::queries::postgres::APPEND_JOURNAL_ENTRIES,
                    ))
                    .execute(pool)
                    .await
                    .map_err(|e| match journal_position_taken(&e) {
                        true => taken_while_carrying(doing()),
                        false => failed(doing(), e),
                    })?;
                Ok(CommitOutcome::Committed)
            }
            #[cfg(feature = "sqlite")]
            SqlPool::Sqlite(_) => Err(sqlite_holds_nothing_back()),
        }
    }

    /// PostgreSQL: one statement (`FINISH_WITH_REPLY_AND_ENTRIES`). SQLite: the last
    /// entry's own transaction (carried entries are `Unsupported`).
    async fn append_entries_finishing(
        &self,
        carried: &[JournalEntry],
        last: &JournalEntry,
        record: &ExecutionRecord,
        reply: &ReplyWithExit,
    ) -> Result<CommitOutcome, ClusterError> {
        match &self.pool {
            #[cfg(feature = "postgres")]
            SqlPool::Postgres(pool) => {
                let doing =
                    || format!("{} with the end of its run", held_back_steps(carried, last));
                let finish = Finish::of(record, reply)?;
                let arrays = JournalArrays::of(carried, last)?;
                let written = finish.write_postgres_with_entries(pool, &arrays).await;
                match written {
                    Ok(()) => Ok(CommitOutcome::Committed),
                    Err(e) if journal_position_taken(&e) && carried.is_empty() => {
                        // Nothing was applied: answer with the entry holding the position.
                        holder_of_position(pool, last, doing).await
                    }
                    Err(e) if journal_position_taken(&e) => Err(taken_while_carrying(doing())),
                    Err(e) => Err(failed(doing(), e)),
                }
            }
            #[cfg(feature = "sqlite")]
            SqlPool::Sqlite(_) => {
                if !carried.is_empty() {
                    return Err(sqlite_holds_nothing_back());
                }
                self.begin_activity(&last.execution_id, &last.key)
                    .await?
                    .commit_finishing(last, record, reply)
                    .await
            }
        }
    }

    fn location(&self) -> Option<StoreLocation> {
        Some(self.pool.location())
    }

    /// PostgreSQL chains (row locks); SQLite does not (one writer at a time: a chain would
    /// hold the write lock between activities).
    fn chains_activities(&self) -> bool {
        match &self.pool {
            #[cfg(feature = "postgres")]
            SqlPool::Postgres(_) => true,
            #[cfg(feature = "sqlite")]
            SqlPool::Sqlite(_) => false,
        }
    }

    async fn delete_journal(&self, execution_id: &str) -> Result<(), ClusterError> {
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query(d::sql::DELETE_JOURNAL)
                .bind(execution_id)
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(|e| failed(format_args!("deleting the journal of {execution_id}"), e))
    }

    async fn get_value(&self, key: &str) -> Result<Option<Bytes>, ClusterError> {
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query_scalar::<_, Vec<u8>>(d::sql::GET_VALUE)
                .bind(key)
                .fetch_optional(pool)
                .await
                .map(|value| value.map(Bytes::from))
        })
        .map_err(|e| failed(format_args!("reading activity value `{key}`"), e))
    }
}

/// The database transaction of one activity.
enum OpenTransaction {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

#[cfg(feature = "postgres")]
impl From<sqlx::Transaction<'static, sqlx::Postgres>> for OpenTransaction {
    fn from(tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Self {
        OpenTransaction::Postgres(tx)
    }
}

#[cfg(feature = "sqlite")]
impl From<sqlx::Transaction<'static, sqlx::Sqlite>> for OpenTransaction {
    fn from(tx: sqlx::Transaction<'static, sqlx::Sqlite>) -> Self {
        OpenTransaction::Sqlite(tx)
    }
}

/// An activity's open database transaction (see [`SqlWorkflowStorage`]).
///
/// Dropping it without `commit` rolls the transaction back.
struct SqlActivityTransaction {
    tx: OpenTransaction,
    /// Key-value writes, applied by `commit`.
    staged: BTreeMap<String, Bytes>,
    /// For reading committed values outside the transaction.
    storage: SqlWorkflowStorage,
    /// An entry was carried ([`ActivityTransaction::carry_on`]): a conflict at the final
    /// entry's position must fail the commit instead of discarding them.
    carried: bool,
}

impl SqlActivityTransaction {
    /// Inserts `entry` unless its position is taken; if it went in, applies the staged
    /// writes and `finish` (if any) and commits; otherwise rolls back and returns the entry
    /// that holds the position.
    async fn commit_with(
        self: Box<Self>,
        entry: &JournalEntry,
        finish: Option<&Finish<'_>>,
    ) -> Result<CommitOutcome, ClusterError> {
        let columns = JournalColumns::of(entry)?;
        let (execution_id, sequence, activity) =
            (columns.execution_id, columns.sequence, columns.activity);
        let doing = || format!("committing activity {activity}#{sequence} of {execution_id}");
        #[cfg(feature = "postgres")]
        if let (Some(finish), OpenTransaction::Postgres(_)) = (finish, &self.tx) {
            return self.commit_finishing_postgres(entry, finish).await;
        }
        let this = *self;
        per_dialect!(this.tx, OpenTransaction, |tx, d| {
            let mut tx = tx;
            let inserted = columns
                .bind(sqlx::query(d::sql::INSERT_JOURNAL_ENTRY))
                .execute(&mut *tx)
                .await
                .map_err(|e| failed(doing(), e))?
                .rows_affected()
                == 1;
            if inserted {
                for (key, value) in &this.staged {
                    sqlx::query(d::sql::PUT_VALUE)
                        .bind(key.as_str())
                        .bind(value.as_ref())
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| failed(doing(), e))?;
                }
                if let Some(finish) = finish {
                    d::write_finish(finish, &mut tx)
                        .await
                        .map_err(|e| failed(doing(), e))?;
                }
                tx.commit().await.map_err(|e| failed(doing(), e))?;
                return Ok(CommitOutcome::Committed);
            }
            // Another runner recorded this position first (this activity, or another one):
            // apply nothing, return its entry.
            if this.carried {
                tx.rollback().await.map_err(|e| failed(doing(), e))?;
                return Err(taken_while_carrying(doing()));
            }
            let existing = sqlx::query(d::sql::JOURNAL_ENTRY_AT)
                .bind(execution_id)
                .bind(sequence)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| failed(doing(), e))?;
            tx.rollback().await.map_err(|e| failed(doing(), e))?;
            existing_entry(existing.as_ref(), doing)
        })
    }

    /// PostgreSQL's `commit_finishing`: the staged writes, then the entry, the record and
    /// the reply in one statement (`FINISH_WITH_REPLY_AND_ENTRIES`, which applies nothing
    /// when the entry's position is taken), then the commit.
    #[cfg(feature = "postgres")]
    async fn commit_finishing_postgres(
        mut self: Box<Self>,
        entry: &JournalEntry,
        finish: &Finish<'_>,
    ) -> Result<CommitOutcome, ClusterError> {
        let doing = || {
            format!(
                "committing activity {}#{} of {} with the end of its run",
                entry.key.name, entry.key.sequence, entry.execution_id
            )
        };
        self.write_staged(&doing).await?;
        let this = *self;
        let mut tx = match this.tx {
            OpenTransaction::Postgres(tx) => tx,
            #[cfg(feature = "sqlite")]
            OpenTransaction::Sqlite(_) => return Err(not_postgres(doing())),
        };
        let arrays = JournalArrays::of(&[], entry)?;
        match finish.write_postgres_with_entries(&mut *tx, &arrays).await {
            Ok(()) => {
                tx.commit().await.map_err(|e| failed(doing(), e))?;
                Ok(CommitOutcome::Committed)
            }
            Err(e) if journal_position_taken(&e) => {
                // Another run journaled this position first: nothing of this transaction
                // is applied.
                tx.rollback().await.map_err(|e| failed(doing(), e))?;
                if this.carried {
                    return Err(taken_while_carrying(doing()));
                }
                let pool = match &this.storage.pool {
                    SqlPool::Postgres(pool) => pool,
                    #[cfg(feature = "sqlite")]
                    SqlPool::Sqlite(_) => return Err(not_postgres(doing())),
                };
                holder_of_position(pool, entry, doing).await
            }
            Err(e) => Err(failed(doing(), e)),
        }
    }

    /// SQLite has one writer at a time: a chain would hold the database's write lock
    /// between activities and stall every other writer (the lease's renewal too), so
    /// SQLite transactions are committed, never carried on.
    fn refuse_chain_on_sqlite(&self) -> Result<(), ClusterError> {
        match &self.tx {
            #[cfg(feature = "sqlite")]
            OpenTransaction::Sqlite(_) => Err(ClusterError::Unsupported {
                operation: "carrying an activity's transaction on to the next activity \
                            (one writer at a time: a chain would hold the write lock \
                            between activities)"
                    .to_string(),
                backend: "SQLite".to_string(),
            }),
            #[cfg(feature = "postgres")]
            OpenTransaction::Postgres(_) => Ok(()),
        }
    }

    /// Writes the staged key-value writes into the open transaction and forgets them.
    async fn write_staged(
        &mut self,
        doing: &(dyn Fn() -> String + Sync),
    ) -> Result<(), ClusterError> {
        let staged = std::mem::take(&mut self.staged);
        per_dialect!(&mut self.tx, OpenTransaction, |tx, d| {
            for (key, value) in &staged {
                sqlx::query(d::sql::PUT_VALUE)
                    .bind(key.as_str())
                    .bind(value.as_ref())
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| failed(doing(), e))?;
            }
            Ok(())
        })
    }
}

/// The final entry's position was taken by another run after this transaction carried
/// entries of its own: nothing is applied, the run is retried and replays the journal.
fn taken_while_carrying(doing: String) -> ClusterError {
    ClusterError::PersistenceError {
        reason: format!(
            "{doing}: another run journaled this step while this transaction carried earlier \
             steps; nothing was applied and the run is retried"
        ),
        source: None,
    }
}

#[async_trait]
impl ActivityTransaction for SqlActivityTransaction {
    /// The open `sqlx::Transaction<'static, sqlx::Postgres>` or
    /// `sqlx::Transaction<'static, sqlx::Sqlite>`.
    fn backend_mut(&mut self) -> &mut (dyn Any + Send) {
        per_dialect!(&mut self.tx, OpenTransaction, |tx, _d| tx
            as &mut (dyn Any + Send))
    }

    async fn put(&mut self, key: &str, value: Bytes) -> Result<(), ClusterError> {
        self.staged.insert(key.to_owned(), value);
        Ok(())
    }

    async fn get(&mut self, key: &str) -> Result<Option<Bytes>, ClusterError> {
        match self.staged.get(key) {
            Some(value) => Ok(Some(value.clone())),
            // Read outside the transaction: under read-committed isolation that is the same
            // answer, and it keeps a SQLite transaction from pinning a read snapshot that
            // would make its later writes fail.
            None => self.storage.get_value(key).await,
        }
    }

    async fn commit(self: Box<Self>, entry: &JournalEntry) -> Result<CommitOutcome, ClusterError> {
        self.commit_with(entry, None).await
    }

    /// The journal entry, the staged writes, then the record and reply (one statement on
    /// PostgreSQL, two on SQLite), in the activity's transaction.
    async fn commit_finishing(
        self: Box<Self>,
        entry: &JournalEntry,
        record: &ExecutionRecord,
        reply: &ReplyWithExit,
    ) -> Result<CommitOutcome, ClusterError> {
        let finish = Finish::of(record, reply)?;
        self.commit_with(entry, Some(&finish)).await
    }

    async fn rollback(self: Box<Self>) -> Result<(), ClusterError> {
        let this = *self;
        per_dialect!(this.tx, OpenTransaction, |tx, _d| tx.rollback().await)
            .map_err(|e| failed("rolling back an activity transaction", e))
    }

    async fn carry_on(&mut self, entry: Option<&JournalEntry>) -> Result<(), ClusterError> {
        self.refuse_chain_on_sqlite()?;
        let doing = || match entry {
            Some(entry) => format!(
                "carrying step {}#{} of {} on to the next activity",
                entry.key.name, entry.key.sequence, entry.execution_id
            ),
            None => "carrying an activity transaction's writes on".to_string(),
        };
        if let Some(entry) = entry {
            let columns = JournalColumns::of(entry)?;
            let inserted = per_dialect!(&mut self.tx, OpenTransaction, |tx, d| {
                columns
                    .bind(sqlx::query(d::sql::INSERT_JOURNAL_ENTRY))
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| failed(doing(), e))?
                    .rows_affected()
                    == 1
            });
            if !inserted {
                return Err(taken_while_carrying(doing()));
            }
            self.carried = true;
        }
        self.write_staged(&doing).await
    }

    async fn mark(&mut self) -> Result<(), ClusterError> {
        self.refuse_chain_on_sqlite()?;
        per_dialect!(&mut self.tx, OpenTransaction, |tx, d| {
            sqlx::query(d::sql::MARK_ACTIVITY)
                .execute(&mut **tx)
                .await
                .map(drop)
        })
        .map_err(|e| failed("marking a chained activity's transaction", e))
    }

    async fn rollback_to_mark(&mut self) -> Result<(), ClusterError> {
        self.refuse_chain_on_sqlite()?;
        self.staged.clear();
        per_dialect!(&mut self.tx, OpenTransaction, |tx, d| {
            sqlx::query(d::sql::ROLLBACK_TO_ACTIVITY_MARK)
                .execute(&mut **tx)
                .await
                .map(drop)
        })
        .map_err(|e| failed("rolling a chained activity back to its mark", e))
    }

    async fn cancellation_requested(
        &mut self,
        execution_id: &str,
    ) -> Result<Option<DateTime<Utc>>, ClusterError> {
        let stored: Option<Option<i64>> = per_dialect!(&mut self.tx, OpenTransaction, |tx, d| {
            sqlx::query_scalar(d::sql::CANCELLATION_REQUESTED)
                .bind(execution_id)
                .fetch_optional(&mut **tx)
                .await
        })
        .map_err(|e| {
            failed(
                format_args!("reading the cancellation of execution {execution_id} in a chain"),
                e,
            )
        })?;
        Ok(stored.flatten().map(rows::instant))
    }

    /// On PostgreSQL the entry's insert and the read are one statement.
    async fn carry_on_reading_cancellation(
        &mut self,
        entry: Option<&JournalEntry>,
        execution_id: &str,
    ) -> Result<Option<DateTime<Utc>>, ClusterError> {
        self.refuse_chain_on_sqlite()?;
        #[cfg(feature = "postgres")]
        if let (Some(entry), OpenTransaction::Postgres(tx)) = (entry, &mut self.tx) {
            if entry.execution_id == execution_id {
                let doing = || {
                    format!(
                        "carrying step {}#{} of {} on to the next activity and reading its \
                         cancellation",
                        entry.key.name, entry.key.sequence, entry.execution_id
                    )
                };
                let columns = JournalColumns::of(entry)?;
                let row = columns
                    .bind(sqlx::query(
                        crate::queries::postgres::CARRY_JOURNAL_ENTRY_READING_CANCELLATION,
                    ))
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(|e| failed(doing(), e))?;
                let read = || -> Result<(i64, Option<i64>), sqlx::Error> {
                    use sqlx::Row as _;
                    Ok((row.try_get(0)?, row.try_get(1)?))
                };
                let (inserted, requested) = read().map_err(|e| failed(doing(), e))?;
                if inserted != 1 {
                    return Err(taken_while_carrying(doing()));
                }
                self.carried = true;
                self.write_staged(&doing).await?;
                return Ok(requested.map(rows::instant));
            }
        }
        let requested = self.cancellation_requested(execution_id).await?;
        self.carry_on(entry).await?;
        Ok(requested)
    }

    async fn commit_carried(self: Box<Self>) -> Result<(), ClusterError> {
        self.refuse_chain_on_sqlite()?;
        let mut this = *self;
        let doing = || "committing the steps an activity transaction carried".to_string();
        this.write_staged(&doing).await?;
        per_dialect!(this.tx, OpenTransaction, |tx, _d| tx.commit().await)
            .map_err(|e| failed(doing(), e))
    }
}

/// The PostgreSQL transaction behind an activity transaction of [`SqlWorkflowStorage`], for
/// running the activity's own SQL in it (what `self.tx` does).
///
/// `None` when `tx` is not a PostgreSQL activity transaction of this crate (another
/// backend, or SQLite). The same value is reachable as
/// `tx.backend_mut().downcast_mut::<sqlx::Transaction<'static, sqlx::Postgres>>()`.
///
/// ```no_run
/// # async fn run(tx: &mut dyn cruster_workflow_storage::ActivityTransaction) -> Result<(), cruster_types::ClusterError> {
/// if let Some(pg) = cruster_storage_sql::postgres_transaction(tx) {
///     sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
///         .execute(&mut **pg)
///         .await?;
/// }
/// # Ok(()) }
/// ```
#[cfg(feature = "postgres")]
pub fn postgres_transaction(
    tx: &mut dyn ActivityTransaction,
) -> Option<&mut sqlx::Transaction<'static, sqlx::Postgres>> {
    tx.backend_mut().downcast_mut()
}

/// The SQLite transaction behind an activity transaction of [`SqlWorkflowStorage`]; see
/// [`postgres_transaction`]. The same value is reachable as
/// `tx.backend_mut().downcast_mut::<sqlx::Transaction<'static, sqlx::Sqlite>>()`.
#[cfg(feature = "sqlite")]
pub fn sqlite_transaction(
    tx: &mut dyn ActivityTransaction,
) -> Option<&mut sqlx::Transaction<'static, sqlx::Sqlite>> {
    tx.backend_mut().downcast_mut()
}

/// The answer to a journal write that lost its position to `existing`, the entry read back.
fn existing_entry<R: rows::Columns>(
    existing: Option<&R>,
    doing: impl FnOnce() -> String,
) -> Result<CommitOutcome, ClusterError> {
    match existing {
        Some(row) => Ok(CommitOutcome::AlreadyRecorded(rows::journal_entry(row)?)),
        None => Err(ClusterError::PersistenceError {
            reason: format!(
                "{}: the journal entry conflicted with one that could not be read back; \
                 retry the step",
                doing()
            ),
            source: None,
        }),
    }
}

/// A PostgreSQL-only path reached with SQLite parts (a bug: the callers check first).
#[cfg(all(feature = "postgres", feature = "sqlite"))]
fn not_postgres(doing: String) -> ClusterError {
    ClusterError::PersistenceError {
        reason: format!("{doing}: a PostgreSQL path was given a SQLite transaction or pool"),
        source: None,
    }
}

/// [`CommitOutcome::AlreadyRecorded`] with the entry holding `entry`'s position, read
/// after a write of `entry` found the position taken and applied nothing.
#[cfg(feature = "postgres")]
async fn holder_of_position(
    pool: &sqlx::PgPool,
    entry: &JournalEntry,
    doing: impl Fn() -> String,
) -> Result<CommitOutcome, ClusterError> {
    let existing = sqlx::query(crate::queries::postgres::JOURNAL_ENTRY_AT)
        .bind(entry.execution_id.as_str())
        .bind(i64::from(entry.key.sequence))
        .fetch_optional(pool)
        .await
        .map_err(|e| failed(doing(), e))?;
    existing_entry(existing.as_ref(), doing)
}

/// What storing journal-only steps held back together is doing, for errors.
#[cfg(feature = "postgres")]
fn held_back_steps(carried: &[JournalEntry], last: &JournalEntry) -> String {
    format!(
        "journaling {} held-back steps (up to {}#{}) of {}",
        carried.len() + 1,
        last.key.name,
        last.key.sequence,
        last.execution_id
    )
}

/// Whether a statement writing journal entries without `ON CONFLICT` failed on a position
/// that is taken (nothing of the statement is applied).
#[cfg(feature = "postgres")]
fn journal_position_taken(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}

/// SQLite never holds journal-only steps back together (it does not chain).
#[cfg(feature = "sqlite")]
fn sqlite_holds_nothing_back() -> ClusterError {
    ClusterError::Unsupported {
        operation: "journaling several held-back steps in one commit (SQLite does not chain \
                    activities)"
            .to_string(),
        backend: "SQLite".to_string(),
    }
}

/// The bind values of `APPEND_JOURNAL_ENTRIES`: one array per column.
#[cfg(feature = "postgres")]
pub(crate) struct JournalArrays<'a> {
    execution_ids: Vec<&'a str>,
    sequences: Vec<i64>,
    activities: Vec<&'a str>,
    results: Vec<Bytes>,
    attempts: Vec<i64>,
    recorded_at_ns: Vec<i64>,
}

#[cfg(feature = "postgres")]
impl<'a> JournalArrays<'a> {
    fn of(carried: &'a [JournalEntry], last: &'a JournalEntry) -> Result<Self, ClusterError> {
        let count = carried.len() + 1;
        let mut arrays = JournalArrays {
            execution_ids: Vec::with_capacity(count),
            sequences: Vec::with_capacity(count),
            activities: Vec::with_capacity(count),
            results: Vec::with_capacity(count),
            attempts: Vec::with_capacity(count),
            recorded_at_ns: Vec::with_capacity(count),
        };
        for entry in carried.iter().chain(std::iter::once(last)) {
            let columns = JournalColumns::of(entry)?;
            arrays.execution_ids.push(columns.execution_id);
            arrays.sequences.push(columns.sequence);
            arrays.activities.push(columns.activity);
            arrays.results.push(columns.result);
            arrays.attempts.push(columns.attempts);
            arrays.recorded_at_ns.push(columns.recorded_at_ns);
        }
        Ok(arrays)
    }

    /// `query` with the six arrays bound next.
    pub(crate) fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let results: Vec<&[u8]> = self.results.iter().map(Bytes::as_ref).collect();
        query
            .bind(&self.execution_ids)
            .bind(&self.sequences)
            .bind(&self.activities)
            .bind(results)
            .bind(&self.attempts)
            .bind(&self.recorded_at_ns)
    }
}

/// The bind values of `INSERT_JOURNAL_ENTRY` for one entry.
struct JournalColumns<'a> {
    execution_id: &'a str,
    sequence: i64,
    activity: &'a str,
    result: Bytes,
    attempts: i64,
    recorded_at_ns: i64,
}

impl<'a> JournalColumns<'a> {
    fn of(entry: &'a JournalEntry) -> Result<Self, ClusterError> {
        Ok(JournalColumns {
            execution_id: entry.execution_id.as_str(),
            sequence: i64::from(entry.key.sequence),
            activity: entry.key.name.as_str(),
            result: rows::exit_bytes(&entry.result)?,
            attempts: i64::from(entry.attempts),
            recorded_at_ns: nanos(entry.recorded_at, "recorded_at")?,
        })
    }

    /// `query` with `$1`…`$6` bound.
    fn bind<'q, DB: sqlx::Database>(
        &'q self,
        query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    ) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
    where
        &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        query
            .bind(self.execution_id)
            .bind(self.sequence)
            .bind(self.activity)
            .bind(self.result.as_ref())
            .bind(self.attempts)
            .bind(self.recorded_at_ns)
    }
}
