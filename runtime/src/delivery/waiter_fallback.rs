//! [`WaiterFallback`]: the one task per runner that reads storage for the callers whose
//! wake-up was missed.
//!
//! Callers are woken when their outcome happens (a reply stored or an execution stopped on
//! this runner; a push from the runner where it happened). A wake-up can still be lost — the
//! pushing runner crashed, the push timed out, a duplicate request was made on another
//! runner, the execution moved to another runner — so every `waiter_fallback_interval`
//! this task checks *all* of this runner's waiting callers at once: one
//! [`MessageStorage::finished_requests`](cruster_message_storage::MessageStorage::finished_requests)
//! read for the callers of persisted replies and one
//! [`WorkflowEngine::stopped_executions`] read for the callers of workflow results (each
//! per [`BATCH`] callers, and only when there are some). Storage reads therefore follow the
//! number of runners, not of callers. A failed read is logged and tried again next round.
//!
//! Owns its task (stopped when the runner is killed or shut down); holds no lock across an
//! await.

use std::sync::Arc;

use cruster_message_storage::FinishedRequest;
use cruster_workflow_storage::WorkflowEngine;

use crate::delivery::waiter_registry::ReplyOutcome;
use crate::runtime_core::RuntimeCore;

/// The most callers checked by one storage read.
pub(crate) const BATCH: usize = 5_000;

pub(crate) struct WaiterFallback {
    core: Arc<RuntimeCore>,
    engine: Option<Arc<dyn WorkflowEngine>>,
}

impl WaiterFallback {
    pub(crate) fn new(core: Arc<RuntimeCore>, engine: Option<Arc<dyn WorkflowEngine>>) -> Self {
        WaiterFallback { core, engine }
    }

    /// Checks the waiting callers every `waiter_fallback_interval` until the runner stops.
    pub(crate) async fn run(self) {
        let interval = self.core.config.waiter_fallback_interval;
        loop {
            tokio::select! {
                _ = self.core.killed.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            self.check_replies().await;
            self.check_executions().await;
            self.core.metrics.waiter_fallback_rounds.inc();
        }
    }

    /// Wakes the callers of persisted requests that finished without waking them.
    async fn check_replies(&self) {
        let request_ids = self.core.waiters.keys();
        if request_ids.is_empty() {
            return;
        }
        let Ok(storage) = self.core.storage() else {
            return;
        };
        for batch in request_ids.chunks(BATCH) {
            let finished = storage.finished_requests(batch).await;
            self.core.storage_result(&finished);
            match finished {
                Ok(finished) => {
                    for request in finished {
                        let request_id = request.request_id();
                        let outcome = match request {
                            FinishedRequest::Answered(reply) => ReplyOutcome::Reply(reply),
                            FinishedRequest::DeadLettered { attempts, .. } => {
                                ReplyOutcome::DeadLettered { attempts }
                            }
                        };
                        tracing::debug!(%request_id, "a waiting caller was answered by the fallback check");
                        self.core.waiters.complete(&request_id, &outcome);
                    }
                }
                Err(err) => {
                    tracing::debug!(%err, callers = batch.len(), "the fallback check of waiting callers failed; it runs again next round");
                    return;
                }
            }
        }
    }

    /// Wakes the callers of workflow executions that stopped without waking them.
    async fn check_executions(&self) {
        let Some(engine) = &self.engine else {
            return;
        };
        let execution_ids = self.core.execution_waiters.keys();
        for batch in execution_ids.chunks(BATCH) {
            match engine.stopped_executions(batch).await {
                Ok(stopped) => {
                    for record in stopped {
                        tracing::debug!(execution_id = %record.execution_id, "a workflow caller was answered by the fallback check");
                        self.core
                            .execution_waiters
                            .complete(&record.execution_id.clone(), &record);
                    }
                }
                Err(err) => {
                    tracing::debug!(%err, callers = batch.len(), "the fallback check of workflow callers failed; it runs again next round");
                    return;
                }
            }
        }
    }
}
