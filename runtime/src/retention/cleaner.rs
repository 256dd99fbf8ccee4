//! The retention cleaner: every `retention_sweep_interval`, deletes what is past retention
//! in bounded batches.
//!
//! Owns one loop per runner. A sweep deletes
//! 1. processed messages (with their replies) of the shards this runner holds, processed
//!    more than `retention_processed_messages` ago;
//! 2. on the runner holding the *workflow sweep shard* (shard 0 of the first configured
//!    shard group; execution records carry no shard, so one runner sweeps them for the
//!    cluster): finished executions unchanged for `retention_finished_workflows` — journal
//!    first, then the record with its timers and deferred values, so a crash in between
//!    leaves the record for the next sweep — and fired timers of finished executions older
//!    than `retention_fired_timers`.
//!
//! Each storage call deletes at most `retention_batch_size` rows in one short transaction;
//! a kind is swept until a batch comes back short or `retention_max_batches_per_sweep`
//! batches ran, yielding between batches. It never deletes pending messages, dead letters
//! or unfinished executions (the storage calls guarantee it), never holds a lock across an
//! await, and reads the clock only through [`now`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cruster_types::{ClusterError, ShardId};
use cruster_workflow_storage::{WorkflowEngine, WorkflowStorage};
use parking_lot::Mutex;
use tracing::Instrument;

use crate::retention::RetentionSweep;
use crate::runtime_core::RuntimeCore;

/// The instant retention cutoffs are measured from: the one place the cleaner reads the
/// clock. Real time, not `ShardingConfig::clock`: storage stamps processed rows with its own
/// (real) clock, so a virtual clock moved ahead would make fresh rows look expired.
fn now() -> DateTime<Utc> {
    Utc::now()
}

/// What one bounded delete did.
struct Batch {
    /// Rows deleted.
    deleted: u64,
    /// Whether the batch was full (more may be left past retention).
    full: bool,
}

impl Batch {
    /// A batch that deleted `deleted` rows out of at most `limit`.
    fn of(deleted: u64, limit: usize) -> Self {
        Batch {
            deleted,
            full: deleted >= limit as u64,
        }
    }
}

/// `at - retention`, clamped to the unix epoch (so an absurd retention deletes nothing
/// instead of overflowing).
fn cutoff(at: DateTime<Utc>, retention: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(retention)
        .ok()
        .and_then(|retention| at.checked_sub_signed(retention))
        .map_or(DateTime::UNIX_EPOCH, |before| {
            before.max(DateTime::UNIX_EPOCH)
        })
}

pub(crate) struct RetentionCleaner {
    core: Arc<RuntimeCore>,
    workflow_storage: Option<Arc<dyn WorkflowStorage>>,
    workflow_engine: Option<Arc<dyn WorkflowEngine>>,
    /// When the last sweep that left nothing behind started (the lag metric's origin).
    last_complete: Mutex<DateTime<Utc>>,
    /// One sweep at a time (the loop's and an operator's `sweep_retention`).
    sweeping: tokio::sync::Mutex<()>,
}

/// One kind's batches: how many rows, and whether the last batch came back short.
struct Swept {
    rows: u64,
    complete: bool,
}

impl RetentionCleaner {
    pub(crate) fn new(
        core: Arc<RuntimeCore>,
        workflow_storage: Option<Arc<dyn WorkflowStorage>>,
        workflow_engine: Option<Arc<dyn WorkflowEngine>>,
    ) -> Self {
        RetentionCleaner {
            core,
            workflow_storage,
            workflow_engine,
            last_complete: Mutex::new(now()),
            sweeping: tokio::sync::Mutex::new(()),
        }
    }

    /// Sweeps every `retention_sweep_interval` until the runner stops.
    pub(crate) async fn run(self: Arc<Self>) {
        let interval = self.core.config.retention_sweep_interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.core.stopping.cancelled() => return,
            }
            if let Err(err) = self.sweep().await {
                tracing::warn!(%err, "retention sweep failed; retrying next interval");
            }
        }
    }

    /// One sweep of everything this runner is responsible for.
    pub(crate) async fn sweep(&self) -> Result<RetentionSweep, ClusterError> {
        let _one_at_a_time = self.sweeping.lock().await;
        let started = now();
        let held = self.core.shard_table.held();
        let span = tracing::info_span!("retention_sweep", shards = held.len());
        let result = self
            .sweep_from(started, &held)
            .instrument(span.clone())
            .await;
        let lag = {
            let mut last_complete = self.last_complete.lock();
            if matches!(&result, Ok(sweep) if sweep.complete) {
                *last_complete = started;
            }
            (now() - *last_complete).num_seconds().max(0)
        };
        self.core.metrics.retention_lag_seconds.set(lag);
        let _entered = span.enter();
        match &result {
            Ok(sweep) => tracing::debug!(
                messages = sweep.messages,
                executions = sweep.executions,
                timers = sweep.timers,
                complete = sweep.complete,
                lag_seconds = lag,
                "retention sweep done"
            ),
            Err(err) => tracing::debug!(%err, lag_seconds = lag, "retention sweep failed"),
        }
        result
    }

    async fn sweep_from(
        &self,
        started: DateTime<Utc>,
        held: &[ShardId],
    ) -> Result<RetentionSweep, ClusterError> {
        let config = &self.core.config;
        let mut sweep = RetentionSweep {
            complete: true,
            ..RetentionSweep::default()
        };
        if let (Some(storage), false) = (self.core.message_storage.as_ref(), held.is_empty()) {
            let before = cutoff(started, config.retention_processed_messages);
            let swept = self
                .batches("messages", || async move {
                    let deleted = storage
                        .delete_processed_before(held, before, config.retention_batch_size)
                        .await?;
                    Ok(Batch::of(deleted, config.retention_batch_size))
                })
                .await;
            self.core.storage_result(&swept);
            let swept = swept?;
            sweep.messages = swept.rows;
            sweep.complete &= swept.complete;
        }
        if let Some(engine) = self.workflow_engine.as_ref() {
            if held.contains(&self.workflow_sweep_shard()) {
                let before = cutoff(started, config.retention_finished_workflows);
                let journal = self.workflow_storage.as_ref();
                // Journals first, then the records: a crash in between leaves a record for
                // the next sweep, never an orphaned journal.
                let swept = self
                    .batches("executions", || async move {
                        let ids = engine
                            .finished_executions_before(before, config.retention_batch_size)
                            .await?;
                        if let Some(journal) = journal {
                            for id in &ids {
                                journal.delete_journal(id).await?;
                            }
                        }
                        let deleted = engine.delete_finished_executions(&ids, before).await?;
                        Ok(Batch {
                            deleted,
                            full: ids.len() >= config.retention_batch_size,
                        })
                    })
                    .await?;
                sweep.executions = swept.rows;
                sweep.complete &= swept.complete;
                let before = cutoff(started, config.retention_fired_timers);
                let swept = self
                    .batches("timers", || async move {
                        let deleted = engine
                            .delete_fired_timers_before(before, config.retention_batch_size)
                            .await?;
                        Ok(Batch::of(deleted, config.retention_batch_size))
                    })
                    .await?;
                sweep.timers = swept.rows;
                sweep.complete &= swept.complete;
            }
        }
        Ok(sweep)
    }

    /// The shard whose holder sweeps workflow executions and timers for the cluster.
    fn workflow_sweep_shard(&self) -> ShardId {
        let group = self
            .core
            .config
            .shard_groups
            .first()
            .map_or(cruster_types::DEFAULT_SHARD_GROUP, String::as_str);
        ShardId::new(group, 0)
    }

    /// Calls `delete` (one bounded batch) until a batch comes back short or the budget is
    /// spent, yielding between batches; counts the deleted rows in the metric of `kind`.
    async fn batches<F, Fut>(&self, kind: &str, mut delete: F) -> Result<Swept, ClusterError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Batch, ClusterError>>,
    {
        let config = &self.core.config;
        let counter = self
            .core
            .metrics
            .retention_rows_deleted
            .with_label_values(&[kind]);
        let mut rows = 0;
        for _ in 0..config.retention_max_batches_per_sweep {
            if self.core.is_stopping() {
                return Ok(Swept {
                    rows,
                    complete: false,
                });
            }
            let batch = delete().await?;
            rows += batch.deleted;
            counter.inc_by(batch.deleted);
            if !batch.full {
                return Ok(Swept {
                    rows,
                    complete: true,
                });
            }
            tokio::task::yield_now().await;
        }
        Ok(Swept {
            rows,
            complete: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_is_retention_before_the_instant_and_never_overflows() {
        let at = DateTime::from_timestamp(1_000_000, 0).unwrap_or_default();
        assert_eq!(
            cutoff(at, Duration::from_secs(10)),
            DateTime::from_timestamp(999_990, 0).unwrap_or_default()
        );
        assert_eq!(
            cutoff(at, Duration::from_secs(u64::MAX)),
            DateTime::UNIX_EPOCH
        );
    }
}
