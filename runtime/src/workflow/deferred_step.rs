//! [`DeferredStep`]: the commit of a run's latest activity, held back until the run goes on.
//!
//! An activity that wrote through `self.tx` has an open transaction holding its writes and
//! journal entry. Committing it at once and then, a moment later, committing the
//! execution's end (its record and its request's reply) costs two commits where one would
//! do. So the activity's result is handed to the body at once, and its commit waits:
//! * the next step of the run (activity, call, sleep, marker) commits it first, so the
//!   journal keeps its order and progress is durable before anything else happens;
//! * when the body returns, the delivery layer commits it together with the execution's
//!   end, in one commit (when the journal, the engine and the message storage share a
//!   database; otherwise it is committed first, on its own);
//! * if nothing has taken it after [`FLUSH_AFTER`] (the body awaits something that is not
//!   a step), a timer commits it, so a pooled connection is never held for long.
//!
//! Nothing is lost by the wait: until the commit, the activity's writes are not in the
//! database either, so a crash runs the activity again on replay, as a crash just before
//! the commit always did. The body may have seen a result that then is never journaled;
//! that is what a crash before an activity's commit always meant, and the body's own code
//! must be deterministic. If the commit finds the position taken by another run with a
//! different result, the run is failed as an engine failure and replays with the journaled
//! one.
//!
//! The slot is a `tokio` mutex held across the commit's await, so the run and the timer
//! never commit the same transaction twice; nothing else is awaited under it.

use std::sync::Arc;
use std::time::Duration;

use cruster_types::ClusterError;
use cruster_workflow_storage::{ActivityTransaction, CommitOutcome, JournalEntry};
use tokio::sync::Mutex;

use crate::metrics::ClusterMetrics;

/// How long a held-back commit may wait for the run to go on.
pub(crate) const FLUSH_AFTER: Duration = Duration::from_millis(20);

/// An activity's open transaction and the journal entry it commits.
pub(crate) struct PendingStep {
    pub(crate) tx: Box<dyn ActivityTransaction>,
    pub(crate) entry: JournalEntry,
}

/// What a commit of `entry` answered, as the run sees it: `Ok` when `entry` (or an
/// identical one) is journaled.
pub(crate) fn settled(
    entry: &JournalEntry,
    outcome: Result<CommitOutcome, ClusterError>,
) -> Result<(), ClusterError> {
    match outcome? {
        CommitOutcome::Committed => Ok(()),
        CommitOutcome::AlreadyRecorded(existing)
            if existing.key.name == entry.key.name && existing.result == entry.result =>
        {
            Ok(())
        }
        CommitOutcome::AlreadyRecorded(existing) => Err(ClusterError::PersistenceError {
            reason: format!(
                "step {} of workflow execution `{}` was journaled by another run as `{}` \
                 with another result; this run is retried and replays it",
                entry.key.sequence, entry.execution_id, existing.key.name
            ),
            source: None,
        }),
    }
}

enum Slot {
    Empty,
    Pending(PendingStep),
    /// The timer's commit failed: the run must not go on as if it had succeeded.
    Failed(String),
}

pub(crate) struct DeferredStep {
    slot: Mutex<Slot>,
    metrics: Arc<ClusterMetrics>,
}

impl DeferredStep {
    pub(crate) fn new(metrics: Arc<ClusterMetrics>) -> Arc<Self> {
        Arc::new(DeferredStep {
            slot: Mutex::new(Slot::Empty),
            metrics,
        })
    }

    /// Holds `step` back (committing any step held before it first).
    ///
    /// # Errors
    /// The earlier step's commit failed.
    pub(crate) async fn defer(self: &Arc<Self>, step: PendingStep) -> Result<(), ClusterError> {
        self.flush().await?;
        *self.slot.lock().await = Slot::Pending(step);
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(FLUSH_AFTER).await;
            if let Some(this) = this.upgrade() {
                if let Err(err) = this.flush().await {
                    tracing::debug!(%err, "committing a held-back activity failed; its run is retried");
                }
            }
        });
        Ok(())
    }

    /// Commits the held-back step, if any.
    ///
    /// # Errors
    /// Its commit failed (now, or earlier on the timer).
    pub(crate) async fn flush(&self) -> Result<(), ClusterError> {
        let mut slot = self.slot.lock().await;
        match std::mem::replace(&mut *slot, Slot::Empty) {
            Slot::Empty => Ok(()),
            Slot::Failed(reason) => {
                let err = failed(&reason);
                *slot = Slot::Failed(reason);
                Err(err)
            }
            Slot::Pending(step) => {
                let PendingStep { tx, entry } = step;
                let outcome = tx.commit(&entry).await;
                match settled(&entry, outcome) {
                    Ok(()) => {
                        self.metrics.workflow_steps.inc();
                        Ok(())
                    }
                    Err(err) => {
                        *slot = Slot::Failed(err.to_string());
                        Err(err)
                    }
                }
            }
        }
    }

    /// Takes the held-back step for the execution's end to commit.
    ///
    /// # Errors
    /// The timer's commit of it failed.
    pub(crate) async fn take(&self) -> Result<Option<PendingStep>, ClusterError> {
        let mut slot = self.slot.lock().await;
        match std::mem::replace(&mut *slot, Slot::Empty) {
            Slot::Empty => Ok(None),
            Slot::Pending(step) => Ok(Some(step)),
            Slot::Failed(reason) => {
                let err = failed(&reason);
                *slot = Slot::Failed(reason);
                Err(err)
            }
        }
    }
}

fn failed(reason: &str) -> ClusterError {
    ClusterError::PersistenceError {
        reason: format!("committing the run's latest activity failed: {reason}"),
        source: None,
    }
}
