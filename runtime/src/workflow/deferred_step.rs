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
use cruster_workflow_storage::{ActivityTransaction, CommitOutcome, JournalEntry, WorkflowStorage};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::metrics::ClusterMetrics;

/// What a run holds back: an activity's open transaction, or the entries of journal-only
/// activities that no transaction holds yet.
pub(crate) enum PendingStep {
    /// An open transaction (an activity wrote through it, or it carries a chain).
    Open(OpenStep),
    /// Entries of activities that wrote nothing of their own, in sequence order (never
    /// empty), held back without a transaction, so without a connection: they are stored
    /// together in one statement ([`WorkflowStorage::append_entries`], or with the run's
    /// end [`WorkflowStorage::append_entries_finishing`]), or carried into a transaction
    /// begun for the next activity that writes through `self.tx`.
    Entries {
        storage: Arc<dyn WorkflowStorage>,
        entries: Vec<JournalEntry>,
    },
}

/// An activity's open transaction and what its commit journals.
pub(crate) struct OpenStep {
    tx: Box<dyn ActivityTransaction>,
    /// The entry the commit adds; `None` when everything is carried already (a chained
    /// attempt failed and handed the chain back, or the entry went with a cancellation
    /// read).
    entry: Option<JournalEntry>,
    /// Entries the transaction carries from earlier activities of the chain.
    carried: u64,
}

impl OpenStep {
    /// How many steps the commit journals.
    fn steps(&self) -> u64 {
        self.carried + u64::from(self.entry.is_some())
    }
}

impl PendingStep {
    /// `tx`, to be committed with `entry`, carrying `carried` earlier entries.
    pub(crate) fn new(tx: Box<dyn ActivityTransaction>, entry: JournalEntry, carried: u64) -> Self {
        PendingStep::Open(OpenStep {
            tx,
            entry: Some(entry),
            carried,
        })
    }

    /// How many steps the commit journals.
    fn steps(&self) -> u64 {
        match self {
            PendingStep::Open(step) => step.steps(),
            PendingStep::Entries { entries, .. } => entries.len() as u64,
        }
    }

    /// Commits the step (and what it carries) on its own; the number of steps journaled.
    ///
    /// # Errors
    /// The commit failed, or found the position taken by another run with another result.
    pub(crate) async fn commit(self) -> Result<u64, ClusterError> {
        let steps = self.steps();
        match self {
            PendingStep::Open(step) => match &step.entry {
                Some(entry) => settled(entry, step.tx.commit(entry).await)?,
                None => step.tx.commit_carried().await?,
            },
            PendingStep::Entries { storage, entries } => {
                if let Some((last, carried)) = entries.split_last() {
                    settled(last, storage.append_entries(carried, last).await)?;
                }
            }
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
        let (outcome, entry) = match self {
            PendingStep::Open(step) => {
                let Some(entry) = step.entry else {
                    step.tx.commit_carried().await?;
                    return Ok(None);
                };
                (step.tx.commit_finishing(&entry, record, reply).await, entry)
            }
            PendingStep::Entries {
                storage,
                mut entries,
            } => {
                let Some(last) = entries.pop() else {
                    return Ok(None);
                };
                let outcome = storage
                    .append_entries_finishing(&entries, &last, record, reply)
                    .await;
                (outcome, last)
            }
        };
        if let Ok(CommitOutcome::Committed) = outcome {
            return Ok(Some(steps));
        }
        // An identical entry was already journaled (nothing was applied): the end is
        // stored on its own. Anything else fails the delivery.
        settled(&entry, outcome)?;
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

/// Why no transaction came of held-back entries.
enum Begun {
    /// None could be begun: the entries (carried, last) are given back untouched.
    Nothing(Vec<JournalEntry>, JournalEntry, ClusterError),
    /// Begun, but carrying failed: the transaction is dropped with what it carried.
    Lost(ClusterError),
}

/// A transaction continued from the held-back step, for the next activity to write in.
pub(crate) struct Continued {
    pub(crate) tx: Box<dyn ActivityTransaction>,
    /// Entries it carries.
    pub(crate) carried: u64,
}

pub(crate) struct DeferredStep {
    state: Mutex<State>,
    /// The run's journal, for the entries held back without a transaction.
    storage: Arc<dyn WorkflowStorage>,
    /// How long a held-back commit may wait for the run to go on, and how old a chain may
    /// be and still be continued; zero commits every step at once.
    hold: Duration,
    metrics: Arc<ClusterMetrics>,
}

impl DeferredStep {
    pub(crate) fn new(
        hold: Duration,
        metrics: Arc<ClusterMetrics>,
        storage: Arc<dyn WorkflowStorage>,
    ) -> Arc<Self> {
        Arc::new(DeferredStep {
            state: Mutex::new(State {
                slot: Slot::Empty,
                chain_started: None,
            }),
            storage,
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
        let chained =
            matches!(&step, PendingStep::Open(open) if open.carried > 0 || open.entry.is_none());
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
        let young = self.young(&state);
        if !young || !matches!(state.slot, Slot::Pending(_)) {
            self.commit_held(&mut state).await?;
            return Ok(None);
        }
        let Slot::Pending(step) = std::mem::replace(&mut state.slot, Slot::Empty) else {
            return Ok(None);
        };
        let mut step = match step {
            PendingStep::Open(step) => step,
            PendingStep::Entries {
                storage,
                mut entries,
            } => {
                let Some(last) = entries.pop() else {
                    return Ok(None);
                };
                match Self::begin_with(&storage, entries, last).await {
                    Ok(step) => step,
                    Err(Begun::Nothing(mut entries, last, err)) => {
                        // The entries stay held back as they were.
                        entries.push(last);
                        state.slot = Slot::Pending(PendingStep::Entries { storage, entries });
                        return Err(err);
                    }
                    Err(Begun::Lost(err)) => return Err(Self::lose_chain(&mut state, err)),
                }
            }
        };
        match step.tx.carry_on(step.entry.as_ref()).await {
            Ok(()) => {}
            Err(ClusterError::Unsupported { .. }) => {
                // This backend does not chain (it refused before writing anything): the
                // step is committed, and the next activity begins its own transaction.
                state.slot = Slot::Pending(PendingStep::Open(step));
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

    /// A transaction begun for journal-only entries held back without one: it carries
    /// `carried`, and is to commit (or carry on) `last` next.
    async fn begin_with(
        storage: &Arc<dyn WorkflowStorage>,
        carried: Vec<JournalEntry>,
        last: JournalEntry,
    ) -> Result<OpenStep, Begun> {
        let mut tx = match storage.begin_activity(&last.execution_id, &last.key).await {
            Ok(tx) => tx,
            Err(err) => return Err(Begun::Nothing(carried, last, err)),
        };
        for entry in &carried {
            if let Err(err) = tx.carry_on(Some(entry)).await {
                // Dropped, so rolled back: nothing of it is applied.
                return Err(Begun::Lost(err));
            }
        }
        Ok(OpenStep {
            tx,
            entry: Some(last),
            carried: carried.len() as u64,
        })
    }

    /// Holds back the entry of an activity that wrote nothing of its own: carried into the
    /// held-back transaction when a young chain is open, else with the journal-only entries
    /// held back before it (no transaction, no connection), committing anything older
    /// first.
    ///
    /// # Errors
    /// Carrying it, or committing what was held back before it, failed.
    pub(crate) async fn defer_entry(
        self: &Arc<Self>,
        entry: JournalEntry,
    ) -> Result<(), ClusterError> {
        let open_chain = {
            let mut state = self.state.lock().await;
            let young = self.young(&state);
            match &mut state.slot {
                Slot::Pending(PendingStep::Entries { entries, .. }) if young => {
                    entries.push(entry);
                    return Ok(());
                }
                Slot::Pending(PendingStep::Open(_)) => young,
                _ => false,
            }
        };
        if open_chain {
            if let Some(Continued { tx, carried }) = self.continue_chain(false).await? {
                return self.defer(PendingStep::new(tx, entry, carried)).await;
            }
        }
        self.defer(PendingStep::Entries {
            storage: self.storage.clone(),
            entries: vec![entry],
        })
        .await
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
    /// asks the engine. A young chain carries its held entry on in the same round trip
    /// (the next activity is about to continue it): what is held back then journals
    /// nothing more of its own, and continuing it writes nothing. A failed read fails the
    /// held-back step too (its transaction may be unusable): the run is retried.
    pub(crate) async fn cancellation_requested(
        &self,
        execution_id: &str,
    ) -> Option<Result<Option<chrono::DateTime<chrono::Utc>>, ClusterError>> {
        let mut state = self.state.lock().await;
        let young = self.young(&state);
        let Slot::Pending(PendingStep::Open(step)) = &mut state.slot else {
            return None;
        };
        let read = match step.entry.take() {
            Some(entry) if young => {
                let read = step
                    .tx
                    .carry_on_reading_cancellation(Some(&entry), execution_id)
                    .await;
                match &read {
                    Ok(_) => step.carried += 1,
                    // Refused before anything was written: still held back as it was.
                    Err(ClusterError::Unsupported { .. }) => step.entry = Some(entry),
                    Err(_) => {}
                }
                read
            }
            entry => {
                step.entry = entry;
                step.tx.cancellation_requested(execution_id).await
            }
        };
        match read {
            Ok(requested) => Some(Ok(requested)),
            Err(ClusterError::Unsupported { .. }) => None,
            Err(err) => Some(Err(Self::lose_chain(&mut state, err))),
        }
    }

    /// Whether the chain held back may still be continued (it is younger than the hold).
    fn young(&self, state: &State) -> bool {
        state
            .chain_started
            .is_some_and(|started| started.elapsed() < self.hold)
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
                state.slot = Slot::Pending(PendingStep::Open(OpenStep {
                    tx,
                    entry: None,
                    carried,
                }));
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
    use cruster_workflow_storage::{ActivityKey, ExecutionRecord};
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
        async fn cancellation_requested(
            &mut self,
            execution_id: &str,
        ) -> Result<Option<chrono::DateTime<chrono::Utc>>, ClusterError> {
            self.note(format!("cancelled {execution_id}?"));
            Ok(None)
        }
    }

    /// A journal that only writes down what was asked of it, in the same log.
    struct FakeJournal(Arc<Log<Vec<String>>>);

    #[async_trait]
    impl WorkflowStorage for FakeJournal {
        async fn journal_entry(
            &self,
            _execution_id: &str,
            _key: &ActivityKey,
        ) -> Result<Option<JournalEntry>, ClusterError> {
            Ok(None)
        }
        async fn journal(&self, _execution_id: &str) -> Result<Vec<JournalEntry>, ClusterError> {
            Ok(Vec::new())
        }
        async fn begin_activity(
            &self,
            _execution_id: &str,
            key: &ActivityKey,
        ) -> Result<Box<dyn ActivityTransaction>, ClusterError> {
            self.0.lock().push(format!("begin {}", key.sequence));
            Ok(Box::new(Recorder(self.0.clone())))
        }
        async fn delete_journal(&self, _execution_id: &str) -> Result<(), ClusterError> {
            Ok(())
        }
        async fn get_value(&self, _key: &str) -> Result<Option<Bytes>, ClusterError> {
            Ok(None)
        }
        async fn append_entries(
            &self,
            carried: &[JournalEntry],
            last: &JournalEntry,
        ) -> Result<CommitOutcome, ClusterError> {
            let sequences: Vec<u32> = carried
                .iter()
                .chain([last])
                .map(|e| e.key.sequence)
                .collect();
            self.0.lock().push(format!("append {sequences:?}"));
            Ok(CommitOutcome::Committed)
        }
        async fn append_entries_finishing(
            &self,
            carried: &[JournalEntry],
            last: &JournalEntry,
            _record: &ExecutionRecord,
            _reply: &cruster_types::ReplyWithExit,
        ) -> Result<CommitOutcome, ClusterError> {
            let sequences: Vec<u32> = carried
                .iter()
                .chain([last])
                .map(|e| e.key.sequence)
                .collect();
            self.0
                .lock()
                .push(format!("append {sequences:?} with the end"));
            Ok(CommitOutcome::Committed)
        }
    }

    fn deferred(log: &Arc<Log<Vec<String>>>) -> Arc<DeferredStep> {
        DeferredStep::new(
            HOLD,
            Arc::new(ClusterMetrics::unregistered()),
            Arc::new(FakeJournal(log.clone())),
        )
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
        let deferred = deferred(&log);
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
        let deferred = deferred(&log);
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

    #[tokio::test(start_paused = true)]
    async fn a_young_chain_carries_its_entry_on_while_reading_the_cancellation() {
        let log = Arc::new(Log::new(Vec::new()));
        let deferred = deferred(&log);
        let step = PendingStep::new(Box::new(Recorder(log.clone())), entry(0), 0);
        deferred.defer(step).await.unwrap();

        let read = deferred.cancellation_requested("exec").await;
        assert!(matches!(read, Some(Ok(None))), "{read:?}");
        // Continuing writes nothing more: the entry went with the read.
        let continued = deferred
            .continue_chain(false)
            .await
            .unwrap()
            .expect("young");
        assert_eq!(continued.carried, 1);
        let step = PendingStep::new(continued.tx, entry(1), continued.carried);
        deferred.defer(step).await.unwrap();

        let end = deferred.take().await.unwrap().expect("held back");
        assert_eq!(end.commit().await.unwrap(), 2, "both steps are journaled");
        assert_eq!(
            *log.lock(),
            ["cancelled exec?", "carry Some(0)", "carry None", "commit 1"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn journal_only_entries_are_held_back_without_a_transaction() {
        let log = Arc::new(Log::new(Vec::new()));
        let deferred = deferred(&log);
        for sequence in 0..3 {
            deferred.defer_entry(entry(sequence)).await.unwrap();
        }
        assert!(log.lock().is_empty(), "nothing is written while held back");
        let read = deferred.cancellation_requested("exec").await;
        assert!(
            read.is_none(),
            "no transaction to read through: the engine is asked"
        );
        let end = deferred.take().await.unwrap().expect("held back");
        let record = ExecutionRecord::new("exec", "W", Bytes::new(), chrono::Utc::now());
        let reply = cruster_types::ReplyWithExit {
            request_id: cruster_types::Snowflake(1),
            exit: ExitResult::Success(Bytes::new()),
        };
        assert_eq!(
            end.commit_finishing(&record, &reply).await.unwrap(),
            Some(3)
        );
        assert_eq!(*log.lock(), ["append [0, 1, 2] with the end"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_activity_writing_through_its_transaction_carries_the_held_entries() {
        let log = Arc::new(Log::new(Vec::new()));
        let deferred = deferred(&log);
        deferred.defer_entry(entry(0)).await.unwrap();
        deferred.defer_entry(entry(1)).await.unwrap();
        let continued = deferred.continue_chain(true).await.unwrap().expect("young");
        assert_eq!(continued.carried, 2);
        let step = PendingStep::new(continued.tx, entry(2), continued.carried);
        deferred.defer(step).await.unwrap();
        // A journal-only step after it joins the open transaction.
        deferred.defer_entry(entry(3)).await.unwrap();
        let end = deferred.take().await.unwrap().expect("held back");
        assert_eq!(end.commit().await.unwrap(), 4);
        assert_eq!(
            *log.lock(),
            [
                "begin 1",
                "carry Some(0)",
                "carry Some(1)",
                "mark",
                "carry Some(2)",
                "commit 3"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn held_entries_are_committed_together_when_nothing_takes_them() {
        let log = Arc::new(Log::new(Vec::new()));
        let deferred = deferred(&log);
        deferred.defer_entry(entry(0)).await.unwrap();
        deferred.defer_entry(entry(1)).await.unwrap();
        tokio::time::sleep(HOLD * 2).await;
        assert_eq!(*log.lock(), ["append [0, 1]"]);
        assert!(deferred.take().await.unwrap().is_none());
    }
}
