//! Group commit of execution upserts: concurrent `upsert_execution` calls (every workflow
//! run's `Running` record, parked and suspended records) share one commit, as requests and
//! replies do in [`group_commit`](crate::group_commit), whose writer, queue and answers
//! this module reuses.
//!
//! On PostgreSQL a batch is one multi-row `INSERT … ON CONFLICT DO UPDATE` (`UNNEST`
//! arrays); on SQLite one transaction of single-row upserts. A batch carries each execution
//! id once: a later upsert of an id already in the batch is not sent with it, and its
//! caller runs it alone after the batch committed, so the later write still wins, as it
//! would one statement at a time. A failed batch stored nothing, and each of its callers
//! runs its upsert alone.

use std::collections::HashSet;

use bytes::Bytes;
use cruster_types::ClusterError;
use cruster_workflow_storage::ExecutionRecord;

use crate::batch_writer::{answer_all, Answer, BatchWriter, Queued};
use crate::dialect::per_dialect;
use crate::finish::ExecutionColumns;
use crate::pool::SqlPool;

/// An execution record's bind values, owned so it can wait in a queue.
pub(crate) struct ExecutionItem {
    execution_id: String,
    workflow: String,
    columns: ExecutionColumns,
    request: Bytes,
    attempts: i64,
    progress_mark: i64,
}

impl ExecutionItem {
    /// The queued form of `record`.
    ///
    /// # Errors
    /// A field cannot be stored (see [`ExecutionColumns::of`]).
    pub(crate) fn of(record: &ExecutionRecord) -> Result<Self, ClusterError> {
        Ok(ExecutionItem {
            execution_id: record.execution_id.clone(),
            workflow: record.workflow.clone(),
            columns: ExecutionColumns::of(record)?,
            request: record.request.clone(),
            attempts: i64::from(record.attempts),
            progress_mark: i64::from(record.progress_mark),
        })
    }
}

/// The writer an engine (and its clones) shares.
#[derive(Debug)]
pub(crate) struct ExecutionGroupCommit {
    upserts: BatchWriter<ExecutionItem, ()>,
}

impl ExecutionGroupCommit {
    /// An idle writer.
    pub(crate) fn new() -> Self {
        ExecutionGroupCommit {
            upserts: BatchWriter::new(),
        }
    }

    /// Upserts an execution with whatever other upserts are waiting.
    pub(crate) async fn upsert(&self, pool: &SqlPool, item: ExecutionItem) -> Answer<()> {
        self.upserts
            .submit(pool, item, |pool, batch| {
                Box::pin(write_executions(pool, batch))
            })
            .await
    }
}

/// Binds an item's values to `UPSERT_EXECUTION`.
macro_rules! bind_item {
    ($query:expr, $item:expr) => {
        $query
            .bind($item.execution_id.as_str())
            .bind($item.workflow.as_str())
            .bind($item.columns.status)
            .bind($item.columns.suspended_until_ns)
            .bind($item.request.as_ref())
            .bind($item.columns.result.as_deref())
            .bind($item.columns.created_at_ns)
            .bind($item.columns.updated_at_ns)
            .bind($item.attempts)
            .bind($item.progress_mark)
            .bind($item.columns.last_error.as_deref())
    };
}

/// Writes a batch of upserts: one alone, several in one statement (PostgreSQL) or
/// transaction (SQLite). Upserts repeating an id of the batch are answered `RunAlone`.
async fn write_executions(pool: &SqlPool, batch: &mut Vec<Queued<ExecutionItem, ()>>) {
    if batch.len() == 1 {
        if let Some(queued) = batch.pop() {
            let written = upsert_one(pool, &queued.item).await;
            let _ = queued.answer.send(Answer::Done(written));
        }
        return;
    }
    let mut ids = HashSet::with_capacity(batch.len());
    let sent: Vec<bool> = batch
        .iter()
        .map(|queued| ids.insert(queued.item.execution_id.as_str()))
        .collect();
    let rows: Vec<&ExecutionItem> = batch
        .iter()
        .zip(&sent)
        .filter(|(_, sent)| **sent)
        .map(|(queued, _)| &queued.item)
        .collect();
    match upsert_many(pool, &rows).await {
        Ok(()) => answer_all(batch, |position, _| {
            if sent.get(position).copied().unwrap_or(false) {
                Answer::Done(Ok(()))
            } else {
                Answer::RunAlone
            }
        }),
        Err(err) => {
            tracing::debug!(
                %err,
                rows = batch.len(),
                "a group-committed batch of execution upserts failed; each is retried alone"
            );
            answer_all(batch, |_, _| Answer::RunAlone);
        }
    }
}

/// One upsert, as the direct path writes it.
async fn upsert_one(pool: &SqlPool, item: &ExecutionItem) -> Result<(), sqlx::Error> {
    per_dialect!(pool, SqlPool, |pool, d| {
        bind_item!(sqlx::query(d::sql::UPSERT_EXECUTION), item)
            .execute(pool)
            .await
            .map(drop)
    })
}

/// Several upserts (distinct ids) committed together.
async fn upsert_many(pool: &SqlPool, rows: &[&ExecutionItem]) -> Result<(), sqlx::Error> {
    match pool {
        #[cfg(feature = "postgres")]
        SqlPool::Postgres(pool) => {
            use crate::group_commit::column;
            sqlx::query(crate::queries::postgres::UPSERT_EXECUTIONS)
                .bind(column(rows, |r| r.execution_id.as_str()))
                .bind(column(rows, |r| r.workflow.as_str()))
                .bind(column(rows, |r| r.columns.status))
                .bind(column(rows, |r| r.columns.suspended_until_ns))
                .bind(column(rows, |r| r.request.as_ref()))
                .bind(column(rows, |r| r.columns.result.as_deref()))
                .bind(column(rows, |r| r.columns.created_at_ns))
                .bind(column(rows, |r| r.columns.updated_at_ns))
                .bind(column(rows, |r| r.attempts))
                .bind(column(rows, |r| r.progress_mark))
                .bind(column(rows, |r| r.columns.last_error.as_deref()))
                .execute(pool)
                .await
                .map(drop)
        }
        #[cfg(feature = "sqlite")]
        SqlPool::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            for row in rows {
                bind_item!(sqlx::query(crate::queries::sqlite::UPSERT_EXECUTION), row)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
    }
}
