//! [`DeferredStep`]: the commit of a run's latest activity, held back until the run goes on.
//!
//! An activity that wrote through `self.tx` has an open transaction holding its writes and
//! journal entry. Committing it at once and then, a moment later, committing the
//! execution's end (its record and its request's reply) costs two commits where one would
//! do. So the activity's result is handed to the body at once, and its commit waits:
//! * the next activity of the run *continues* it (a chain, when the journal storage chains:
//!   PostgreSQL): the entry is written into the open transaction
//!   ([`ActivityTransaction::carry_on`]), a savepoint is set if the next activity writes
//!   through `self.tx`, and the next activity journals (and writes) in the same
//!   transaction, so three activities and the execution's end are one commit. An activity
//!   that writes nothing of its own starts a chain too (a transaction holding just its
//!   entry), so journal-only steps fold the same way. A failed attempt rolls back to the savepoint and hands the chain back
//!   here. A chain older than the hold (`workflow_commit_hold`, 20 ms by default) is
//!   committed instead of continued, so progress is never held back for long by a run of
//!   quick activities (a hold of zero commits every activity at once);
//! * any other step of the run (call, sleep, marker, a failure's record) commits it first,
//!   so the journal keeps its order and progress is durable before anything else happens;
//! * when the body returns, the delivery layer commits it together with the execution's
//!   end, in one commit (when the journal, the engine and the message storage share a
//!   database; otherwise it is committed first, on its own);
//! * if nothing has taken it after the hold (the body awaits something that is not
//!   a step), a timer commits it, so a pooled connection is never held for long.
//!
//! Nothing is lost by the wait: until the commit, the activity's writes are not in the
//! database either, so a crash runs the activity again on replay, as a crash just before
//! the commit always did. An activity continuing a chain holds its predecessors' commit
//! until it ends: a crash while it runs runs them again too. The body may have seen a
//! result that then is never journaled; that is what a crash before an activity's commit
//! always meant, and the body's own code must be deterministic. If the commit finds the position taken by another run with a
//! different result, the run is failed as an engine failure and replays with the journaled
//! one.
//!
//! The state is a `tokio` mutex held across the commit's (or carry's) await, so the run
//! and the timer never commit the same transaction twice; nothing else is awaited under it.

use std::sync::Arc;
use std::time::Duration;

use cruster_types::ClusterError;
use cruster_workflow_storage::{ActivityTransaction, CommitOutcome, JournalEntry};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::metrics::ClusterMetrics;

/// An activity's open transaction and what its commit journals.
pub(crate) struct PendingStep {
    tx: Box<dyn ActivityTransaction>,
    /// The entry the commit adds; `None` when everything is carried already (a chained
    /// attempt failed and handed the chain back).
    entry: Option<JournalEntry>,
    /// Entries the transaction carries from earlier activities of the chain.
    carried: u64,
}

impl PendingStep {
    /// `tx`, to be committed with `entry`, carrying `carried` earlier entries.
    pub(crate) fn new(tx: Box<dyn ActivityTransaction>, entry: JournalEntry, carried: u64) -> Self {
        PendingStep {
            tx,
            entry: Some(entry),
            carried,
        }
    }

    /// How many steps the commit journals.
    fn steps(&self) -> u64 {
        self.carried + u64::from(self.entry.is_some())
    }

    /// Commits the step (and what it carries) on its own; the number of steps journaled.
    ///
    /// # Errors
    /// The commit failed, or found the position taken by another run with another result.
    pub(crate) async fn commit(self) -> Result<u64, ClusterError> {
        let steps = self.steps();
        match &self.entry {
            Some(entry) => settled(entry, self.tx.commit(entry).await)?,
            None => self.tx.commit_carried().await?,
        }
        Ok(steps)
    }

    /// Commits the step (and what it carries) on its own, counting the steps journaled in
    /// `metrics`.
    ///
    /// # Errors
    /// As [`PendingStep::commit`].
    pub(crate) async fn commit_counted(self, metrics: &ClusterMetrics) -> Result<(), ClusterError> {
        let steps = self.commit().await?;
        metrics.workflow_steps.inc_by(steps);
        Ok(())
    }

    /// Commits the step together with the execution's end (`record` and its request's
    /// `reply`): `Ok(Some(steps))` when all of it is stored, `Ok(None)` when only the
    /// journal is (an identical entry was journaled already, or the transaction carried
    /// everything) and the end must still be stored.
    ///
    /// # Errors
    /// The commit failed, or found the position taken by another run with another result.
    pub(crate) async fn commit_finishing(
        self,
        record: &cruster_workflow_storage::ExecutionRecord,
        reply: &cruster_types::ReplyWithExit,
    ) -> Result<Option<u64>, ClusterError> {
        let steps = self.steps();
        let Some(entry) = &self.entry else {
            self.tx.commit_carried().await?;
            return Ok(None);
        };
        let outcome = self.tx.commit_finishing(entry, record, reply).await;
        if let Ok(CommitOutcome::Committed) = outcome {
            return Ok(Some(steps));
        }
        // An identical entry was already journaled (nothing was applied): the end is
        // stored on its own. Anything else fails the delivery.
        settled(entry, outcome)?;
        Ok(None)
    }
}

/// What a commit of `entry` answered, as the run sees it: `Ok` when `entry` (or an
/// identical one) is journaled.
fn settled(
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
    /// A commit (or a chained attempt's rollback) failed: the run must not go on as if it
    /// had succeeded.
    Failed(String),
}

struct State {
    slot: Slot,
    /// When the current chain's transaction was first held back; `None` when there is no
    /// chain (nothing held back, or held back but never continued).
    chain_started: Option<Instant>,
}

/// A transaction continued from the held-back step, for the next activity to write in.
pub(crate) struct Continued {
    pub(crate) tx: Box<dyn ActivityTransaction>,
    /// Entries it carries.
    pub(crate) carried: u64,
}

pub(crate) struct DeferredStep {
    state: Mutex<State>,
    /// How long a held-back commit may wait for the run to go on, and how old a chain may
    /// be and still be continued; zero commits every step at once.
    hold: Duration,
    metrics: Arc<ClusterMetrics>,
}

impl DeferredStep {
    pub(crate) fn new(hold: Duration, metrics: Arc<ClusterMetrics>) -> Arc<Self> {
        Arc::new(DeferredStep {
            state: Mutex::new(State {
                slot: Slot::Empty,
                chain_started: None,
            }),
            hold,
            metrics,
        })
    }

    /// Whether steps are held back at all (a hold of zero commits each at once).
    pub(crate) fn holds(&self) -> bool {
        !self.hold.is_zero()
    }

    /// Holds `step` back (committing any step held before it first). A `step` whose
    /// transaction was continued from the held-back one ([`DeferredStep::continue_chain`])
    /// keeps the chain's age.
    ///
    /// # Errors
    /// The earlier step's commit failed.
    pub(crate) async fn defer(self: &Arc<Self>, step: PendingStep) -> Result<(), ClusterError> {
        let chained = step.carried > 0 || step.entry.is_none();
        let mut state = self.state.lock().await;
        let started = state.chain_started;
        self.commit_held(&mut state).await?;
        state.chain_started = match started {
            Some(started) if chained => Some(started),
            _ => Some(Instant::now()),
        };
        state.slot = Slot::Pending(step);
        if !self.holds() {
            return self.commit_held(&mut state).await;
        }
        drop(state);
        self.flush_later();
        Ok(())
    }

    /// Commits the held-back step if nothing takes it within the hold.
    fn flush_later(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        let hold = self.hold;
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            if let Some(this) = this.upgrade() {
                if let Err(err) = this.flush().await {
                    tracing::debug!(%err, "committing a held-back activity failed; its run is retried");
                }
            }
        });
    }

    /// Commits the held-back step, if any.
    ///
    /// # Errors
    /// Its commit failed (now, or earlier on the timer).
    pub(crate) async fn flush(&self) -> Result<(), ClusterError> {
        let mut state = self.state.lock().await;
        self.commit_held(&mut state).await
    }

    /// Commits what the slot holds. An empty slot leaves the chain's age alone: the chain
    /// may be out with a running activity, and the timer of an earlier step must not make
    /// it young again.
    async fn commit_held(&self, state: &mut State) -> Result<(), ClusterError> {
        match std::mem::replace(&mut state.slot, Slot::Empty) {
            Slot::Empty => Ok(()),
            Slot::Failed(reason) => {
                let err = failed(&reason);
                state.slot = Slot::Failed(reason);
                Err(err)
            }
            Slot::Pending(step) => {
                state.chain_started = None;
                match step.commit_counted(&self.metrics).await {
                    Ok(()) => Ok(()),
                    Err(err) => {
                        state.slot = Slot::Failed(err.to_string());
                        Err(err)
                    }
                }
            }
        }
    }

    /// The held-back step's transaction, continued for the next activity (its entry
    /// carried; a mark set when `mark`, for an activity writing through it): `None` when
    /// nothing is held back, or the chain is older than the hold (it is committed now
    /// instead).
    ///
    /// # Errors
    /// Carrying (or committing) the held-back step failed; the run must be retried.
    pub(crate) async fn continue_chain(
        &self,
        mark: bool,
    ) -> Result<Option<Continued>, ClusterError> {
        let mut state = self.state.lock().await;
        let young = state
            .chain_started
            .is_some_and(|started| started.elapsed() < self.hold);
        if !young || !matches!(state.slot, Slot::Pending(_)) {
            self.commit_held(&mut state).await?;
            return Ok(None);
        }
        let Slot::Pending(mut step) = std::mem::replace(&mut state.slot, Slot::Empty) else {
            return Ok(None);
        };
        match step.tx.carry_on(step.entry.as_ref()).await {
            Ok(()) => {}
            Err(ClusterError::Unsupported { .. }) => {
                // This backend does not chain (it refused before writing anything): the
                // step is committed, and the next activity begins its own transaction.
                state.slot = Slot::Pending(step);
                self.commit_held(&mut state).await?;
                return Ok(None);
            }
            Err(err) => return Err(Self::lose_chain(&mut state, err)),
        }
        if mark {
            if let Err(err) = step.tx.mark().await {
                return Err(Self::lose_chain(&mut state, err));
            }
        }
        Ok(Some(Continued {
            carried: step.steps(),
            tx: step.tx,
        }))
    }

    /// The chain's transaction is unusable (it is dropped, so rolled back): the run fails
    /// at its next step and is retried.
    fn lose_chain(state: &mut State, err: ClusterError) -> ClusterError {
        state.chain_started = None;
        state.slot = Slot::Failed(err.to_string());
        err
    }

    /// Reads when cancellation of `execution_id` was requested through the held-back
    /// transaction: `None` when nothing is held back (or the backend cannot), so the caller
    /// asks the engine. A failed read fails the held-back step too (its transaction may be
    /// unusable): the run is retried.
    pub(crate) async fn cancellation_requested(
        &self,
        execution_id: &str,
    ) -> Option<Result<Option<chrono::DateTime<chrono::Utc>>, ClusterError>> {
        let mut state = self.state.lock().await;
        let Slot::Pending(step) = &mut state.slot else {
            return None;
        };
        match step.tx.cancellation_requested(execution_id).await {
            Ok(requested) => Some(Ok(requested)),
            Err(ClusterError::Unsupported { .. }) => None,
            Err(err) => Some(Err(Self::lose_chain(&mut state, err))),
        }
    }

    /// Takes back a continued transaction whose activity attempt failed: its own writes
    /// are rolled back to the mark, what it carried is held back again (to be continued by
    /// the next attempt, or committed). If the rollback fails, the chain is lost and the
    /// run fails.
    pub(crate) async fn give_back(self: &Arc<Self>, continued: Continued) {
        let Continued { mut tx, carried } = continued;
        let mut state = self.state.lock().await;
        match tx.rollback_to_mark().await {
            Ok(()) => {
                state.slot = Slot::Pending(PendingStep {
                    tx,
                    entry: None,
                    carried,
                });
                drop(state);
                self.flush_later();
            }
            Err(err) => {
                tracing::debug!(%err, "rolling a chained activity back failed; its run is retried");
                Self::lose_chain(&mut state, err);
            }
        }
    }

    /// Takes the held-back step for the execution's end to commit.
    ///
    /// # Errors
    /// The timer's commit of it failed.
    pub(crate) async fn take(&self) -> Result<Option<PendingStep>, ClusterError> {
        let mut state = self.state.lock().await;
        state.chain_started = None;
        match std::mem::replace(&mut state.slot, Slot::Empty) {
            Slot::Empty => Ok(None),
            Slot::Pending(step) => Ok(Some(step)),
            Slot::Failed(reason) => {
                let err = failed(&reason);
                state.slot = Slot::Failed(reason);
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

#[cfg(test)]
mod tests {
    use std::any::Any;

    use async_trait::async_trait;
    use bytes::Bytes;
    use cruster_types::ExitResult;
    use cruster_workflow_storage::ActivityKey;
    use parking_lot::Mutex as Log;

    use super::*;

    /// A transaction that only writes down what was asked of it.
    struct Recorder(Arc<Log<Vec<String>>>);

    impl Recorder {
        fn note(&self, what: String) {
            self.0.lock().push(what);
        }
    }

    #[async_trait]
    impl ActivityTransaction for Recorder {
        fn backend_mut(&mut self) -> &mut (dyn Any + Send) {
            self
        }
        async fn put(&mut self, _key: &str, _value: Bytes) -> Result<(), ClusterError> {
            Ok(())
        }
        async fn get(&mut self, _key: &str) -> Result<Option<Bytes>, ClusterError> {
            Ok(None)
        }
        async fn commit(
            self: Box<Self>,
            entry: &JournalEntry,
        ) -> Result<CommitOutcome, ClusterError> {
            self.note(format!("commit {}", entry.key.sequence));
            Ok(CommitOutcome::Committed)
        }
        async fn rollback(self: Box<Self>) -> Result<(), ClusterError> {
            self.note("rollback".into());
            Ok(())
        }
        async fn carry_on(&mut self, entry: Option<&JournalEntry>) -> Result<(), ClusterError> {
            self.note(format!("carry {:?}", entry.map(|e| e.key.sequence)));
            Ok(())
        }
        async fn mark(&mut self) -> Result<(), ClusterError> {
            self.note("mark".into());
            Ok(())
        }
        async fn rollback_to_mark(&mut self) -> Result<(), ClusterError> {
            self.note("rollback to mark".into());
            Ok(())
        }
        async fn commit_carried(self: Box<Self>) -> Result<(), ClusterError> {
            self.note("commit carried".into());
            Ok(())
        }
    }

    fn entry(sequence: u32) -> JournalEntry {
        JournalEntry {
            execution_id: "exec".into(),
            key: ActivityKey {
                name: "step".into(),
                sequence,
            },
            result: ExitResult::Success(Bytes::new()),
            attempts: 1,
            recorded_at: chrono::Utc::now(),
        }
    }

    const HOLD: Duration = Duration::from_millis(50);

    #[tokio::test(start_paused = true)]
    async fn an_earlier_steps_timer_does_not_make_a_chain_young_again() {
        let log = Arc::new(Log::new(Vec::new()));
        let deferred = DeferredStep::new(HOLD, Arc::new(ClusterMetrics::unregistered()));
        let step = PendingStep::new(Box::new(Recorder(log.clone())), entry(0), 0);
        deferred.defer(step).await.unwrap();

        tokio::time::sleep(Duration::from_millis(10)).await;
        let continued = deferred.continue_chain(true).await.unwrap().expect("young");
        assert_eq!(continued.carried, 1);
        // The first step's timer fires while the chain is out with the second activity.
        tokio::time::sleep(Duration::from_millis(45)).await;
        let step = PendingStep::new(continued.tx, entry(1), continued.carried);
        deferred.defer(step).await.unwrap();

        // 56 ms after the chain began: too old to continue, so it is committed.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(deferred.continue_chain(true).await.unwrap().is_none());
        assert_eq!(*log.lock(), ["carry Some(0)", "mark", "commit 1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_attempt_hands_the_chain_back_for_the_retry() {
        let log = Arc::new(Log::new(Vec::new()));
        let deferred = DeferredStep::new(HOLD, Arc::new(ClusterMetrics::unregistered()));
        let step = PendingStep::new(Box::new(Recorder(log.clone())), entry(0), 0);
        deferred.defer(step).await.unwrap();

        let continued = deferred.continue_chain(true).await.unwrap().expect("young");
        deferred.give_back(continued).await;
        // The retry continues the chain: nothing more to carry, a new mark.
        let retried = deferred
            .continue_chain(true)
            .await
            .unwrap()
            .expect("still young");
        assert_eq!(retried.carried, 1, "the first step is still carried");
        let step = PendingStep::new(retried.tx, entry(1), retried.carried);
        deferred.defer(step).await.unwrap();
        let end = deferred.take().await.unwrap().expect("held back");
        assert_eq!(end.commit().await.unwrap(), 2, "both steps are journaled");
        assert_eq!(
            *log.lock(),
            [
                "carry Some(0)",
                "mark",
                "rollback to mark",
                "carry None",
                "mark",
                "commit 1"
            ]
        );
    }
}
