//! [`FinishedExecutions`]: a finished workflow execution's record, staged by its workflow
//! entity so that the delivery layer stores it together with the reply of the request that
//! ran it.
//!
//! A workflow that completes (or fails) owes two writes: its execution record and the final
//! reply of its `execute` (or `resume`) request, which marks that request processed. When
//! the workflow engine and the message storage report the same
//! [`StoreLocation`](cruster_types::StoreLocation) (SQL backends built on clones of one
//! pool), both go out in one commit ([`WorkflowEngine::finish_with_reply`]); otherwise the
//! record is stored first and the reply after it, so a crash between the two leaves a
//! finished record whose request is redelivered and answered from that record.
//!
//! The entity stages the record just before its handler returns; the delivery layer takes
//! it right after the handler ends, whatever the ending, so nothing stays staged. Holds a
//! lock only to insert or remove one entry, never across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cruster_message_storage::MessageStorage;
use cruster_types::{ClusterError, Reply, ReplyWithExit, Snowflake};
use cruster_workflow_storage::{ExecutionRecord, WorkflowEngine, WorkflowStorage};
use parking_lot::Mutex;

use super::deferred_step::PendingStep;
use super::result_push::ResultPush;
use crate::metrics::ClusterMetrics;

/// A finished execution waiting to be stored with its reply.
pub(crate) struct FinishedExecution {
    record: ExecutionRecord,
    /// The run's last activity, whose commit was held back to go out with the end.
    step: Mutex<Option<PendingStep>>,
    engine: Arc<dyn WorkflowEngine>,
    journal: Arc<dyn WorkflowStorage>,
    results: Arc<ResultPush>,
    metrics: Arc<ClusterMetrics>,
}

/// The ports a finished execution is stored through.
pub(crate) struct FinishPorts {
    pub(crate) engine: Arc<dyn WorkflowEngine>,
    pub(crate) journal: Arc<dyn WorkflowStorage>,
    pub(crate) results: Arc<ResultPush>,
    pub(crate) metrics: Arc<ClusterMetrics>,
}

impl FinishedExecution {
    pub(crate) fn new(
        record: ExecutionRecord,
        step: Option<PendingStep>,
        ports: FinishPorts,
    ) -> Self {
        FinishedExecution {
            record,
            step: Mutex::new(step),
            engine: ports.engine,
            journal: ports.journal,
            results: ports.results,
            metrics: ports.metrics,
        }
    }

    /// Stores the held-back last step (if any), the record and `reply`: all in one commit
    /// when the journal, the engine and the message storage share a database; else the
    /// step first, then the record and reply (in one commit when the engine and the message
    /// storage share one), the record before the reply.
    pub(crate) async fn store_with_reply(
        &self,
        messages: &dyn MessageStorage,
        reply: &ReplyWithExit,
    ) -> Result<(), ClusterError> {
        let location = self.engine.location();
        let shared = location.is_some_and(|at| messages.location() == Some(at));
        let step = self.step.lock().take();
        if let Some(step) = step {
            if shared && self.journal.location() == location {
                if let Some(steps) = step.commit_finishing(&self.record, reply).await? {
                    self.metrics.workflow_steps.inc_by(steps);
                    return Ok(());
                }
                // Only the journal was stored (see `PendingStep::commit_finishing`): the
                // end is stored below.
            } else {
                step.commit_counted(&self.metrics).await?;
            }
        }
        if shared {
            return self.engine.finish_with_reply(&self.record, reply).await;
        }
        self.engine.upsert_execution(&self.record).await?;
        messages.save_reply(&Reply::WithExit(reply.clone())).await
    }

    /// Stores the held-back last step (if any), then the record alone (its request keeps
    /// no reply).
    pub(crate) async fn store_record(&self) -> Result<(), ClusterError> {
        let step = self.step.lock().take();
        if let Some(step) = step {
            step.commit_counted(&self.metrics).await?;
        }
        self.engine.upsert_execution(&self.record).await
    }

    /// The record is stored: wakes the execution's callers.
    pub(crate) fn stored(self) {
        self.results.stopped(&self.record);
    }
}

/// Finished executions staged under the id of the request that ran them.
#[derive(Default)]
pub(crate) struct FinishedExecutions {
    staged: Mutex<HashMap<Snowflake, FinishedExecution>>,
    /// How many are staged, read without the lock by every reply of the runner.
    count: AtomicUsize,
}

impl FinishedExecutions {
    /// Stages `finished`, the outcome of request `request_id`.
    pub(crate) fn stage(&self, request_id: Snowflake, finished: FinishedExecution) {
        if self.staged.lock().insert(request_id, finished).is_none() {
            self.count.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Takes what request `request_id` staged, if anything.
    pub(crate) fn take(&self, request_id: Snowflake) -> Option<FinishedExecution> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let taken = self.staged.lock().remove(&request_id);
        if taken.is_some() {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        taken
    }
}
