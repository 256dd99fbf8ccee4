//! The services every part of one runner shares: configuration, metrics, storage ports,
//! the shard table, the waiting callers, the in-flight set and the lifecycle tokens.
//!
//! Owns no task. It is a bag of `Arc`s handed to the entity managers, the poller, the
//! membership loop and the singleton supervisor, so none of them needs the others.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use cruster_message_storage::{AttemptFailure, FailedAttempt, MessageStorage};
use cruster_sharding::Sharding;
use cruster_types::{ClusterError, Reply, ReplyWithExit, Snowflake, SnowflakeGenerator};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ShardingConfig;
use crate::delivery::in_flight::InFlight;
use crate::delivery::reply_push::ReplyPush;
use crate::delivery::waiter_registry::{ExecutionWaiters, PushedResultWaiters, ReplyWaiters};
use crate::metrics::ClusterMetrics;
use crate::sharding::shard_fences::ShardFences;
use crate::sharding::shard_moves::ShardMoves;
use crate::sharding::shard_table::ShardTable;
use crate::workflow::finished_execution::{FinishedExecution, FinishedExecutions};

pub(crate) struct RuntimeCore {
    pub(crate) config: Arc<ShardingConfig>,
    pub(crate) metrics: Arc<ClusterMetrics>,
    pub(crate) message_storage: Option<Arc<dyn MessageStorage>>,
    pub(crate) shard_table: ShardTable,
    /// The recent shard moves of this runner (for operators).
    pub(crate) shard_moves: ShardMoves,
    /// One token per shard, fired when the shard is lost (see `ShardFences`).
    pub(crate) fences: ShardFences,
    /// Callers waiting here for the final replies of persisted requests.
    pub(crate) waiters: Arc<ReplyWaiters>,
    /// Callers waiting here for workflow executions to stop (finish or park).
    pub(crate) execution_waiters: Arc<ExecutionWaiters>,
    /// Callers of a workflow's `execute` waiting here for an answer pushed by the runner
    /// where the execution stops, by `execute` request id.
    pub(crate) pushed_results: Arc<PushedResultWaiters>,
    /// Pushes stored replies to the runner of their caller (and knows the runners by
    /// machine id).
    pub(crate) reply_push: ReplyPush,
    pub(crate) in_flight: InFlight,
    /// Finished workflow executions waiting to be stored with their request's reply.
    pub(crate) finished_executions: FinishedExecutions,
    pub(crate) snowflakes: SnowflakeGenerator,
    /// Cancelled when the runner stops taking work (graceful shutdown begins).
    pub(crate) stopping: CancellationToken,
    /// Cancelled when the runner is killed or fully shut down: every task ends at once.
    pub(crate) killed: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) storage_failures: AtomicU32,
    pub(crate) detached: AtomicBool,
    pub(crate) sharding: Weak<dyn Sharding>,
}

impl RuntimeCore {
    /// Spawns a task owned by this runner: it ends when the runner is killed or shut down.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let killed = self.killed.clone();
        // The future lives in a box of its own, not in the task: tokio allocates a task
        // with a 128-byte alignment, and a large aligned allocation per task (an entity's
        // task is ~2.4 KB) left glibc's heap fragmented by the small long-lived
        // allocations made meanwhile (~3.5 KB of RSS per activated entity, ~600 B boxed).
        let fut = Box::pin(fut);
        self.tasks.spawn(async move {
            tokio::select! {
                biased;
                _ = killed.cancelled() => {}
                _ = fut => {}
            }
        });
    }

    pub(crate) fn sharding(&self) -> Result<Arc<dyn Sharding>, ClusterError> {
        self.sharding.upgrade().ok_or(ClusterError::ShuttingDown)
    }

    pub(crate) fn storage(&self) -> Result<&Arc<dyn MessageStorage>, ClusterError> {
        self.message_storage
            .as_ref()
            .ok_or_else(|| ClusterError::Unsupported {
                operation:
                    "persisted messaging (send_persisted, notify_persisted, send_at, workflows)"
                        .into(),
                backend: "this runner, which was built without message storage; pass one to \
                          ShardingImpl::new_with_engines"
                    .into(),
            })
    }

    /// Records the outcome of a storage call for detachment.
    pub(crate) fn storage_result<T>(&self, result: &Result<T, ClusterError>) {
        match result {
            Ok(_) => {
                self.storage_failures.store(0, Ordering::Relaxed);
                if self.detached.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        "message storage recovered: runner re-attaches and takes shards again"
                    );
                }
            }
            Err(err) => {
                self.metrics.storage_errors.inc();
                let failures = self.storage_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if self.config.detachment_enabled
                    && failures >= self.config.detachment_error_threshold
                    && !self.detached.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(%err, failures, "message storage keeps failing: runner detaches and gives up its shards");
                }
            }
        }
    }

    /// Whether the runner stopped taking work (an atomic load; cheaper than asking the
    /// `stopping` token, which takes a lock).
    pub(crate) fn is_stopping(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Relaxed)
    }

    /// Stores the final reply of a persisted request, then wakes local waiters and, when
    /// `push` says no caller holds a direct answer channel, pushes the reply to the runner
    /// that made the request (its caller may wait there).
    ///
    /// `finished` is the workflow execution the request ran to its end, if any: its record
    /// is stored with the reply (see `FinishedExecution`), and its callers woken after.
    pub(crate) async fn store_reply(
        &self,
        reply: &ReplyWithExit,
        push: bool,
        finished: Option<FinishedExecution>,
    ) -> Result<(), ClusterError> {
        let storage = self.storage()?;
        let result = match &finished {
            Some(finished) => finished.store_with_reply(storage.as_ref(), reply).await,
            None => storage.save_reply(&Reply::WithExit(reply.clone())).await,
        };
        self.storage_result(&result);
        result?;
        self.in_flight.complete(reply.request_id);
        self.waiters.reply_stored(reply);
        if let Some(finished) = finished {
            finished.stored();
        }
        if push {
            if let Some(push) = self.reply_push.push(reply, self.snowflakes.machine_id()) {
                self.spawn(push);
            }
        }
        Ok(())
    }

    /// Whether a request id was made by this runner (its caller waits here, if anywhere).
    pub(crate) fn made_here(&self, request_id: Snowflake) -> bool {
        request_id.machine_id() == self.snowflakes.machine_id()
    }

    /// Records a failed delivery of a persisted request: counts the attempt (unless the
    /// poll counted it when it picked the request up), dead-letters it at
    /// `storage_message_max_retries`, and otherwise leaves it for the poll to redeliver after
    /// the backoff (`storage_retry_backoff_*`), on whichever runner owns its shard then.
    pub(crate) async fn record_failure(&self, request_id: Snowflake, reason: &str) {
        // The entry stays in flight until the failure (and its retry instant) is stored, so
        // the poll cannot redeliver it early.
        let counted_attempt = self.in_flight.counted_attempt(request_id);
        let Ok(storage) = self.storage() else {
            self.in_flight.fail(request_id);
            return;
        };
        // A delivery the poll did not count is a first delivery (save → deliver), so the
        // failure is, all but always, attempt 1.
        let attempt = counted_attempt.unwrap_or(1);
        // At most a year, so an absurd configured cap stays a storable instant.
        let year = chrono::Duration::days(365);
        let wait = self.config.storage_retry_backoff(attempt);
        let retry_at =
            self.config.clock.now() + chrono::Duration::from_std(wait).unwrap_or(year).min(year);
        self.config.clock.due_at(retry_at);
        let failure = AttemptFailure {
            reason,
            max_attempts: self.config.storage_message_max_retries,
            retry_at,
            counted: counted_attempt.is_some(),
        };
        let result = storage.record_failed_attempt(request_id, &failure).await;
        self.in_flight.failure_recorded(request_id);
        self.storage_result(&result);
        match result {
            Ok(FailedAttempt::DeadLettered { attempts }) => {
                self.metrics.messages_dead_lettered.inc();
                tracing::warn!(%request_id, attempts, reason, "persisted message dead-lettered");
            }
            Ok(FailedAttempt::WillRetry { attempts }) => {
                tracing::debug!(%request_id, attempts, reason, retry_in = ?wait, "persisted message will be retried");
            }
            Ok(FailedAttempt::NotPending) => {}
            Err(err) => {
                tracing::warn!(%request_id, %err, "could not record a failed delivery; the poll retries it")
            }
        }
    }
}
