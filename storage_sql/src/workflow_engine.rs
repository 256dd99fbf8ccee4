//! [`SqlWorkflowEngine`]: executions (`cruster_executions`), durable timers
//! (`cruster_timers`) and deferred values (`cruster_deferred`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cruster_types::{ClusterError, ExitResult, ReplyWithExit, StoreLocation};
use cruster_workflow_storage::{DurableTimer, ExecutionFilter, ExecutionRecord, WorkflowEngine};

use std::sync::Arc;

use crate::batch_writer::Answer;
use crate::dialect::per_dialect;
use crate::execution_group_commit::{ExecutionGroupCommit, ExecutionItem};
use crate::finish::{ExecutionColumns, Finish};
use crate::pool::SqlPool;
use crate::rows::{self, failed, nanos, sql_limit};

/// Workflow executions, durable timers and deferred values in PostgreSQL or SQLite.
///
/// Every operation is one statement: an execution upsert is `INSERT … ON CONFLICT DO
/// UPDATE` (last write wins), a timer schedule and a deferred resolution are `INSERT … ON
/// CONFLICT DO NOTHING` (first write wins), and `due_timers` reads a partial index of
/// uncompleted timers. Concurrent execution upserts share one commit (group commit, as the
/// message storage's saves do): a lone upsert goes out at once, and upserts arriving while
/// a batch is in the database go out together in the next one.
#[derive(Clone, Debug)]
pub struct SqlWorkflowEngine {
    pool: SqlPool,
    /// The writer concurrent execution upserts share.
    executions: Arc<ExecutionGroupCommit>,
}

crate::backend_constructors!(
    SqlWorkflowEngine,
    "workflow engine storage",
    executions: Arc::new(ExecutionGroupCommit::new()),
);

#[async_trait]
impl WorkflowEngine for SqlWorkflowEngine {
    async fn upsert_execution(&self, record: &ExecutionRecord) -> Result<(), ClusterError> {
        let doing = || format!("saving execution {}", record.execution_id);
        match self
            .executions
            .upsert(&self.pool, ExecutionItem::of(record)?)
            .await
        {
            Answer::Done(written) => return written.map_err(|e| failed(doing(), e)),
            Answer::RunAlone => {}
        }
        let columns = ExecutionColumns::of(record)?;
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            crate::finish::bind_execution!(sqlx::query(d::sql::UPSERT_EXECUTION), record, columns)
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(|e| failed(format_args!("saving execution {}", record.execution_id), e))
    }

    fn location(&self) -> Option<StoreLocation> {
        Some(self.pool.location())
    }

    /// PostgreSQL: one statement (the upsert in a `WITH`); SQLite: one transaction of the
    /// upsert and the reply's insert.
    async fn finish_with_reply(
        &self,
        record: &ExecutionRecord,
        reply: &ReplyWithExit,
    ) -> Result<(), ClusterError> {
        let finish = Finish::of(record, reply)?;
        let doing = || {
            format!(
                "saving finished execution {} with the reply to request {}",
                record.execution_id, reply.request_id
            )
        };
        match &self.pool {
            #[cfg(feature = "postgres")]
            SqlPool::Postgres(pool) => finish.write_postgres(pool).await,
            #[cfg(feature = "sqlite")]
            SqlPool::Sqlite(pool) => {
                async {
                    let mut tx = pool.begin().await?;
                    finish.write_sqlite(&mut tx).await?;
                    tx.commit().await
                }
                .await
            }
        }
        .map_err(|e| failed(doing(), e))
    }

    async fn execution(&self, execution_id: &str) -> Result<Option<ExecutionRecord>, ClusterError> {
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            let row = sqlx::query(d::sql::EXECUTION)
                .bind(execution_id)
                .fetch_optional(pool)
                .await
                .map_err(|e| failed(format_args!("reading execution {execution_id}"), e))?;
            row.map(|row| rows::execution(&row)).transpose()
        })
    }

    async fn stopped_executions(
        &self,
        execution_ids: &[String],
    ) -> Result<Vec<ExecutionRecord>, ClusterError> {
        if execution_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut stopped = per_dialect!(&self.pool, SqlPool, |pool, d| {
            let rows = sqlx::query(d::sql::STOPPED_EXECUTIONS)
                .bind(d::text_list(execution_ids)?)
                .fetch_all(pool)
                .await
                .map_err(|e| failed("reading the stopped executions of waiting callers", e))?;
            rows.iter()
                .map(|row| rows::execution(row).map(|record| (record.execution_id.clone(), record)))
                .collect::<Result<std::collections::HashMap<_, _>, ClusterError>>()
        })?;
        Ok(execution_ids
            .iter()
            .filter_map(|id| stopped.remove(id))
            .collect())
    }

    async fn request_cancellation(
        &self,
        execution_id: &str,
        requested_at: DateTime<Utc>,
    ) -> Result<Option<ExecutionRecord>, ClusterError> {
        let requested_at_ns = nanos(requested_at, "cancellation instant")?;
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query(d::sql::REQUEST_CANCELLATION)
                .bind(execution_id)
                .bind(requested_at_ns)
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(|e| {
            failed(
                format_args!("requesting cancellation of execution {execution_id}"),
                e,
            )
        })?;
        self.execution(execution_id).await
    }

    async fn cancellation_requested(
        &self,
        execution_id: &str,
    ) -> Result<Option<DateTime<Utc>>, ClusterError> {
        let stored: Option<Option<i64>> = per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query_scalar(d::sql::CANCELLATION_REQUESTED)
                .bind(execution_id)
                .fetch_optional(pool)
                .await
        })
        .map_err(|e| {
            failed(
                format_args!("reading the cancellation of execution {execution_id}"),
                e,
            )
        })?;
        Ok(stored.flatten().map(rows::instant))
    }

    async fn list_executions(
        &self,
        filter: &ExecutionFilter,
    ) -> Result<Vec<ExecutionRecord>, ClusterError> {
        let limit = if filter.limit == 0 {
            i64::MAX
        } else {
            sql_limit(filter.limit)
        };
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            let found = sqlx::query(d::sql::LIST_EXECUTIONS)
                .bind(filter.workflow.as_deref())
                .bind(filter.status)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(|e| failed("listing executions", e))?;
            found.iter().map(rows::execution).collect()
        })
    }

    async fn schedule_timer(&self, timer: &DurableTimer) -> Result<(), ClusterError> {
        let fire_at_ns = nanos(timer.fire_at, "fire_at")?;
        let shard = timer.address.shard_id.to_string();
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query(d::sql::SCHEDULE_TIMER)
                .bind(timer.execution_id.as_str())
                .bind(timer.timer_key.as_str())
                .bind(shard.as_str())
                .bind(timer.address.entity_type.as_str())
                .bind(timer.address.entity_id.as_str())
                .bind(fire_at_ns)
                .bind(timer.completed)
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(|e| {
            failed(
                format_args!(
                    "scheduling timer {}/{}",
                    timer.execution_id, timer.timer_key
                ),
                e,
            )
        })
    }

    async fn timer(
        &self,
        execution_id: &str,
        timer_key: &str,
    ) -> Result<Option<DurableTimer>, ClusterError> {
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            let row = sqlx::query(d::sql::TIMER)
                .bind(execution_id)
                .bind(timer_key)
                .fetch_optional(pool)
                .await
                .map_err(|e| failed(format_args!("reading timer {execution_id}/{timer_key}"), e))?;
            row.map(|row| rows::timer(&row)).transpose()
        })
    }

    async fn due_timers(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DurableTimer>, ClusterError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now_ns = nanos(now, "now")?;
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            let found = sqlx::query(d::sql::DUE_TIMERS)
                .bind(now_ns)
                .bind(sql_limit(limit))
                .fetch_all(pool)
                .await
                .map_err(|e| failed("reading due timers", e))?;
            found.iter().map(rows::timer).collect()
        })
    }

    async fn complete_timer(
        &self,
        execution_id: &str,
        timer_key: &str,
    ) -> Result<(), ClusterError> {
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query(d::sql::COMPLETE_TIMER)
                .bind(execution_id)
                .bind(timer_key)
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(|e| {
            failed(
                format_args!("completing timer {execution_id}/{timer_key}"),
                e,
            )
        })
    }

    async fn finished_executions_before(
        &self,
        finished_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<String>, ClusterError> {
        let cutoff_ns = nanos(finished_before, "finished_before")?;
        let ids: Vec<(String,)> = per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query_as(d::sql::FINISHED_EXECUTIONS_BEFORE)
                .bind(cutoff_ns)
                .bind(sql_limit(limit))
                .fetch_all(pool)
                .await
        })
        .map_err(|e| failed("listing finished executions past their retention", e))?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    async fn delete_finished_executions(
        &self,
        execution_ids: &[String],
        finished_before: DateTime<Utc>,
    ) -> Result<u64, ClusterError> {
        if execution_ids.is_empty() {
            return Ok(0);
        }
        let cutoff_ns = nanos(finished_before, "finished_before")?;
        // One transaction: the executions that are still finished and old enough, then the
        // timers and deferred values of exactly those.
        let deleted: u64 = per_dialect!(&self.pool, SqlPool, |pool, d| {
            let asked = d::text_list(execution_ids)?;
            async {
                let mut tx = pool.begin().await?;
                let gone: Vec<(String,)> = sqlx::query_as(d::sql::DELETE_FINISHED_EXECUTIONS)
                    .bind(asked)
                    .bind(cutoff_ns)
                    .fetch_all(&mut *tx)
                    .await?;
                if gone.is_empty() {
                    return Ok(0);
                }
                let gone: Vec<String> = gone.into_iter().map(|(id,)| id).collect();
                let gone_list =
                    d::text_list(&gone).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                sqlx::query(d::sql::DELETE_TIMERS_OF)
                    .bind(gone_list.clone())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(d::sql::DELETE_DEFERREDS_OF)
                    .bind(gone_list)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(gone.len() as u64)
            }
            .await
        })
        .map_err(|e| failed("deleting finished executions past their retention", e))?;
        Ok(deleted)
    }

    async fn delete_fired_timers_before(
        &self,
        fired_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, ClusterError> {
        let cutoff_ns = nanos(fired_before, "fired_before")?;
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query(d::sql::DELETE_FIRED_TIMERS_BEFORE)
                .bind(cutoff_ns)
                .bind(sql_limit(limit))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(|e| failed("deleting fired timers past their retention", e))
    }

    async fn resolve_deferred(
        &self,
        execution_id: &str,
        name: &str,
        value: &ExitResult,
    ) -> Result<bool, ClusterError> {
        let bytes = rows::exit_bytes(value)?;
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query(d::sql::RESOLVE_DEFERRED)
                .bind(execution_id)
                .bind(name)
                .bind(bytes.as_ref())
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
        })
        .map_err(|e| {
            failed(
                format_args!("resolving deferred value {execution_id}/{name}"),
                e,
            )
        })
    }

    async fn deferred(
        &self,
        execution_id: &str,
        name: &str,
    ) -> Result<Option<ExitResult>, ClusterError> {
        let stored: Option<Vec<u8>> = per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query_scalar(d::sql::DEFERRED)
                .bind(execution_id)
                .bind(name)
                .fetch_optional(pool)
                .await
        })
        .map_err(|e| {
            failed(
                format_args!("reading deferred value {execution_id}/{name}"),
                e,
            )
        })?;
        stored
            .map(|bytes| rows::deferred(execution_id, name, &bytes))
            .transpose()
    }
}
