//! The end of a workflow execution in SQL: its record (the bind values of
//! `UPSERT_EXECUTION`) and the final reply of the request that ran it, written together by
//! [`SqlWorkflowEngine::finish_with_reply`](crate::SqlWorkflowEngine) and by an activity
//! transaction's `commit_finishing`.

use cruster_types::{ClusterError, Reply, ReplyWithExit};
use cruster_workflow_storage::ExecutionRecord;

use crate::rows::{self, nanos};

/// The computed bind values of an execution record (`$3`, `$4`, `$6`, `$7`, `$8`, `$11` of
/// `UPSERT_EXECUTION`; the others bind straight from the record).
pub(crate) struct ExecutionColumns {
    pub(crate) status: &'static str,
    pub(crate) suspended_until_ns: Option<i64>,
    pub(crate) result: Option<bytes::Bytes>,
    pub(crate) created_at_ns: i64,
    pub(crate) updated_at_ns: i64,
    pub(crate) last_error: Option<bytes::Bytes>,
}

impl ExecutionColumns {
    pub(crate) fn of(record: &ExecutionRecord) -> Result<Self, ClusterError> {
        let (status, suspended_until_ns) = rows::status_columns(&record.status)?;
        Ok(ExecutionColumns {
            status,
            suspended_until_ns,
            result: record.result.as_ref().map(rows::exit_bytes).transpose()?,
            created_at_ns: nanos(record.created_at, "created_at")?,
            updated_at_ns: nanos(record.updated_at, "updated_at")?,
            last_error: record
                .last_error
                .as_ref()
                .map(rows::last_error_bytes)
                .transpose()?,
        })
    }
}

/// Binds `$1`…`$11` of `UPSERT_EXECUTION` (also the first eleven of `FINISH_WITH_REPLY`).
macro_rules! bind_execution {
    ($query:expr, $record:expr, $columns:expr) => {
        $query
            .bind($record.execution_id.as_str())
            .bind($record.workflow.as_str())
            .bind($columns.status)
            .bind($columns.suspended_until_ns)
            .bind($record.request.as_ref())
            .bind($columns.result.as_deref())
            .bind($columns.created_at_ns)
            .bind($columns.updated_at_ns)
            .bind(i64::from($record.attempts))
            .bind(i64::from($record.progress_mark))
            .bind($columns.last_error.as_deref())
    };
}

pub(crate) use bind_execution;

/// A finished execution's record and its request's final reply, ready to bind.
pub(crate) struct Finish<'a> {
    record: &'a ExecutionRecord,
    columns: ExecutionColumns,
    reply: (i64, bool, i64, bytes::Bytes),
}

impl<'a> Finish<'a> {
    pub(crate) fn of(
        record: &'a ExecutionRecord,
        reply: &ReplyWithExit,
    ) -> Result<Self, ClusterError> {
        Ok(Finish {
            record,
            columns: ExecutionColumns::of(record)?,
            reply: rows::reply_row(&Reply::WithExit(reply.clone()))?,
        })
    }

    /// `query` with the record (`$1`…`$11`) and the reply (`$12`…`$15`) bound.
    #[cfg(feature = "postgres")]
    fn bind_postgres<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let (request_id, is_final, sequence, body) = &self.reply;
        bind_execution!(query, self.record, self.columns)
            .bind(*request_id)
            .bind(*is_final)
            .bind(*sequence)
            .bind(body.as_ref())
    }

    /// One statement: the upsert in a `WITH`, then the reply's insert (whose trigger marks
    /// the request processed).
    #[cfg(feature = "postgres")]
    pub(crate) async fn write_postgres<'c>(
        &self,
        executor: impl sqlx::PgExecutor<'c>,
    ) -> Result<(), sqlx::Error> {
        self.bind_postgres(sqlx::query(crate::queries::postgres::FINISH_WITH_REPLY))
            .execute(executor)
            .await
            .map(drop)
    }

    /// One statement: `entries` journaled, the upsert and the reply's insert; a taken
    /// journal position fails it whole.
    #[cfg(feature = "postgres")]
    pub(crate) async fn write_postgres_with_entries<'c>(
        &self,
        executor: impl sqlx::PgExecutor<'c>,
        entries: &crate::workflow_storage::JournalArrays<'_>,
    ) -> Result<(), sqlx::Error> {
        let query = sqlx::query(crate::queries::postgres::FINISH_WITH_REPLY_AND_ENTRIES);
        entries
            .bind(self.bind_postgres(query))
            .execute(executor)
            .await
            .map(drop)
    }

    /// Two statements on `conn`, inside the caller's transaction.
    #[cfg(feature = "sqlite")]
    pub(crate) async fn write_sqlite(
        &self,
        conn: &mut sqlx::SqliteConnection,
    ) -> Result<(), sqlx::Error> {
        use crate::queries::sqlite as sql;
        let (request_id, is_final, sequence, body) = &self.reply;
        bind_execution!(
            sqlx::query(sql::UPSERT_EXECUTION),
            self.record,
            self.columns
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query(sql::INSERT_REPLY)
            .bind(*request_id)
            .bind(*is_final)
            .bind(*sequence)
            .bind(body.as_ref())
            .execute(&mut *conn)
            .await
            .map(drop)
    }
}
