//! Cancellation of workflow executions: what `WorkflowClient::cancel` answers
//! ([`CancelOutcome`]), what an activity does when its execution is cancelled while it runs
//! ([`OnCancel`]), and the per-run watch ([`CancelWatch`]) the replay engine asks at every
//! suspension point.
//!
//! The request itself lives in the workflow engine storage
//! (`WorkflowEngine::request_cancellation`), so it survives restarts and is seen by
//! whichever runner runs the execution next. The watch only reads it; it never writes, and
//! holds no lock across an await.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cruster_types::ClusterError;
use cruster_workflow_storage::{ExecutionStatus, WorkflowEngine};

use super::deferred_step::DeferredStep;

/// What `WorkflowClient::cancel` did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// Cancellation is recorded (now, or by an earlier call at `requested_at`): the
    /// execution stops at its next suspension point and records `Cancelled`.
    Requested {
        /// When cancellation was first requested.
        requested_at: DateTime<Utc>,
    },
    /// The execution had already finished (completed, failed or cancelled): nothing changed.
    AlreadyFinished {
        /// How it finished.
        status: ExecutionStatus,
    },
}

/// What a running activity does when its execution is cancelled
/// (`#[activity(on_cancel = "finish" | "interrupt")]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnCancel {
    /// Run to its end and journal its result; the execution stops at the next suspension
    /// point (the default: right for activities with side effects outside `self.tx`).
    #[default]
    Finish,
    /// Stop at once (its future is dropped and its `self.tx` writes rolled back); the
    /// execution records `Cancelled` without journaling the activity.
    Interrupt,
}

/// Whether the execution of one run was cancelled, read from the engine storage.
pub(crate) struct CancelWatch {
    engine: Arc<dyn WorkflowEngine>,
    execution_id: String,
    poll_interval: Duration,
    observed: AtomicBool,
    /// Whether the next `check` may answer from the record read at the start of the run.
    fresh: AtomicBool,
}

impl CancelWatch {
    pub(crate) fn new(
        engine: Arc<dyn WorkflowEngine>,
        execution_id: String,
        poll_interval: Duration,
    ) -> Self {
        CancelWatch {
            engine,
            execution_id,
            poll_interval,
            observed: AtomicBool::new(false),
            fresh: AtomicBool::new(false),
        }
    }

    /// The execution record was read (not cancelled) just before the run: the first
    /// `check` answers from that read instead of asking storage again.
    pub(crate) fn checked_at_start(self) -> Self {
        self.fresh.store(true, Ordering::SeqCst);
        self
    }

    /// The error a cancelled execution's suspension points return.
    pub(crate) fn cancelled(&self) -> ClusterError {
        ClusterError::WorkflowCancelled {
            execution_id: self.execution_id.clone(),
        }
    }

    /// Whether this run saw the cancellation (then every later suspension point fails too,
    /// and the run records `Cancelled` whatever the body returns).
    pub(crate) fn observed(&self) -> bool {
        self.observed.load(Ordering::SeqCst)
    }

    /// A suspension point: `Err(WorkflowCancelled)` once cancellation was requested.
    ///
    /// # Errors
    /// `WorkflowCancelled`; storage errors reading the request.
    pub(crate) async fn check(&self) -> Result<(), ClusterError> {
        self.check_through(None).await
    }

    /// As [`CancelWatch::check`], reading through the run's held-back transaction when
    /// `held` is given and holds one (no second pooled connection while a chain waits).
    ///
    /// # Errors
    /// `WorkflowCancelled`; storage errors reading the request.
    pub(crate) async fn check_through(
        &self,
        held: Option<&DeferredStep>,
    ) -> Result<(), ClusterError> {
        if self.observed() {
            return Err(self.cancelled());
        }
        if self.fresh.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let through_held = match held {
            Some(held) => held.cancellation_requested(&self.execution_id).await,
            None => None,
        };
        let requested = match through_held {
            Some(requested) => requested?,
            None => {
                self.engine
                    .cancellation_requested(&self.execution_id)
                    .await?
            }
        };
        if requested.is_some() {
            self.observed.store(true, Ordering::SeqCst);
            tracing::info!(execution_id = %self.execution_id, "workflow execution cancelled at a suspension point");
            return Err(self.cancelled());
        }
        Ok(())
    }

    /// Resolves once cancellation is requested, asking every poll interval (for
    /// interruptible activities). A storage error is logged and asked again next time: it
    /// never interrupts the activity by itself.
    pub(crate) async fn requested(&self) -> ClusterError {
        loop {
            match self.check().await {
                Err(err @ ClusterError::WorkflowCancelled { .. }) => return err,
                Err(err) => {
                    tracing::debug!(execution_id = %self.execution_id, %err, "could not read the cancellation request; asking again");
                }
                Ok(()) => {}
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }
}
