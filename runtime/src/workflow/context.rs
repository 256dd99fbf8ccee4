//! [`WorkflowContext`]: the replay engine of one workflow execution.
//!
//! Owns the execution's view of its journal (loaded once per run), the activity call
//! counter, and the suspension signal. An activity call either returns its journaled
//! result or runs the activity in an activity transaction and commits the result with it;
//! `sleep` stores a durable timer plus a persisted wake-up and suspends. It never holds a
//! lock across an await.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cruster_sharding::Sharding;
use cruster_types::{wire, ClusterError, EntityAddress, EnvelopeRequest, ExitResult, WireError};
use cruster_workflow_storage::{
    ActivityKey, CommitOutcome, DurableTimer, JournalEntry, WorkflowEngine, WorkflowStorage,
};
use futures::FutureExt;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use super::activity_tx::ActivityTx;
use super::cancellation::{CancelWatch, OnCancel};
use super::run_fault::{panic_message, RunFault};
use crate::metrics::ClusterMetrics;

/// How a failed activity is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// `base * 2^(attempt-1)`, capped at 60 s.
    Exponential,
    /// `base` between every attempt.
    Constant,
}

/// Retry policy of an activity (`#[activity(retries = N, backoff = "...")]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivityOptions {
    /// Retries after the first attempt (so `retries = 3` runs at most 4 times).
    pub retries: u32,
    /// The backoff between attempts.
    pub backoff: Backoff,
    /// The base delay of the backoff (default 100 ms).
    pub base_delay: Duration,
    /// What the activity does when its execution is cancelled while it runs (default
    /// [`OnCancel::Finish`]).
    pub on_cancel: OnCancel,
}

impl Default for ActivityOptions {
    fn default() -> Self {
        ActivityOptions {
            retries: 0,
            backoff: Backoff::Exponential,
            base_delay: Duration::from_millis(100),
            on_cancel: OnCancel::Finish,
        }
    }
}

impl ActivityOptions {
    /// The options of `#[activity(retries = .., backoff = "..", backoff_base_ms = ..)]`.
    pub const fn new(retries: u32, backoff: Backoff, base_delay: Duration) -> Self {
        ActivityOptions {
            retries,
            backoff,
            base_delay,
            on_cancel: OnCancel::Finish,
        }
    }

    /// The same options with `on_cancel` (`#[activity(on_cancel = "interrupt")]`).
    pub const fn with_on_cancel(mut self, on_cancel: OnCancel) -> Self {
        self.on_cancel = on_cancel;
        self
    }

    /// The pause before attempt `attempt + 1` (after `attempt` failures, from 1).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        match self.backoff {
            Backoff::Constant => self.base_delay,
            Backoff::Exponential => self
                .base_delay
                .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
                .min(Duration::from_secs(60)),
        }
    }
}

pub(crate) struct ContextInner {
    pub(crate) execution_id: String,
    pub(crate) workflow: &'static str,
    pub(crate) address: EntityAddress,
    pub(crate) storage: Arc<dyn WorkflowStorage>,
    pub(crate) engine: Arc<dyn WorkflowEngine>,
    pub(crate) sharding: Arc<dyn Sharding>,
    pub(crate) metrics: Arc<ClusterMetrics>,
    journal: Vec<JournalEntry>,
    next_sequence: AtomicU32,
    next_sleep: AtomicU32,
    suspended_until: Mutex<Option<DateTime<Utc>>>,
    suspended: Notify,
    /// The failures activities of this run recorded (or replayed): an error the workflow
    /// returns that is one of them is its answer; any other storage error is transient,
    /// even after the body caught an activity failure.
    recorded_failures: Mutex<Vec<WireError>>,
    /// Whether the execution was cancelled (asked at every suspension point).
    cancel: CancelWatch,
    /// The first defect of this run (a panic, an undecodable entry): not an answer.
    fault: RunFault,
}

/// The context of one workflow execution run (see the module docs).
#[derive(Clone)]
pub struct WorkflowContext {
    inner: Arc<ContextInner>,
}

impl std::fmt::Debug for WorkflowContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowContext")
            .field("execution_id", &self.inner.execution_id)
            .finish()
    }
}

impl WorkflowContext {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        execution_id: String,
        workflow: &'static str,
        address: EntityAddress,
        storage: Arc<dyn WorkflowStorage>,
        engine: Arc<dyn WorkflowEngine>,
        sharding: Arc<dyn Sharding>,
        metrics: Arc<ClusterMetrics>,
        mut journal: Vec<JournalEntry>,
        cancel: CancelWatch,
    ) -> Self {
        journal.sort_by_key(|e| e.key.sequence);
        WorkflowContext {
            inner: Arc::new(ContextInner {
                execution_id,
                workflow,
                address,
                storage,
                engine,
                sharding,
                metrics,
                journal,
                next_sequence: AtomicU32::new(0),
                next_sleep: AtomicU32::new(0),
                suspended_until: Mutex::new(None),
                suspended: Notify::new(),
                recorded_failures: Mutex::new(Vec::new()),
                cancel,
                fault: RunFault::default(),
            }),
        }
    }

    /// The execution id.
    pub fn execution_id(&self) -> &str {
        &self.inner.execution_id
    }

    /// The workflow's name.
    pub fn workflow_name(&self) -> &'static str {
        self.inner.workflow
    }

    /// The cluster (calls through it are *not* journaled; prefer [`WorkflowContext::client`]).
    pub fn sharding(&self) -> &Arc<dyn Sharding> {
        &self.inner.sharding
    }

    fn entry_at(&self, sequence: u32) -> Option<&JournalEntry> {
        self.inner
            .journal
            .binary_search_by_key(&sequence, |e| e.key.sequence)
            .ok()
            .and_then(|i| self.inner.journal.get(i))
    }

    fn decode_entry<T: DeserializeOwned>(&self, entry: &JournalEntry) -> Result<T, ClusterError> {
        match &entry.result {
            ExitResult::Success(bytes) => wire::decode(bytes).map_err(|err| {
                self.inner.fault.record(ClusterError::MalformedMessage {
                    reason: format!(
                        "journal entry of activity `{}` (call {}) of workflow execution `{}` does not decode",
                        entry.key.name, entry.key.sequence, self.inner.execution_id
                    ),
                    source: Some(Box::new(err)),
                })
            }),
            ExitResult::Failure(err) => {
                self.inner.recorded_failures.lock().push(err.clone());
                Err(err.clone().into())
            }
        }
    }

    /// Whether `err` is the recorded failure of an activity of this run (the workflow's
    /// own answer) rather than a transient problem of the engine.
    pub(crate) fn is_recorded_failure(&self, err: &ClusterError) -> bool {
        let wire = err.to_wire();
        self.inner.recorded_failures.lock().contains(&wire)
    }

    /// Whether this run saw its execution's cancellation.
    pub(crate) fn cancel_observed(&self) -> bool {
        self.inner.cancel.observed()
    }

    /// The first defect (panic, undecodable entry) of this run, if any.
    pub(crate) fn take_fault(&self) -> Option<ClusterError> {
        self.inner.fault.take()
    }

    /// Records a defect of this run (see [`RunFault`]) and returns it.
    pub(crate) fn record_fault(&self, err: ClusterError) -> ClusterError {
        self.inner.fault.record(err)
    }

    /// Runs (or replays) one activity call. `run` makes one attempt's future from the
    /// attempt's transaction; it is called again for each retry.
    ///
    /// A new call is a suspension point: once the execution is cancelled it fails with
    /// `WorkflowCancelled` instead of running. A panic in the activity is caught and
    /// returned as an error, never journaled: the run counts as a failed attempt.
    ///
    /// # Errors
    /// The activity's final error (after retries); `NonDeterminism` when the journal
    /// recorded another activity at this position; `WorkflowCancelled`; storage errors.
    pub async fn activity<T, F, Fut>(
        &self,
        name: &'static str,
        options: ActivityOptions,
        run: F,
    ) -> Result<T, ClusterError>
    where
        T: Serialize + DeserializeOwned + Send,
        F: Fn(ActivityTx) -> Fut + Send,
        Fut: Future<Output = Result<T, ClusterError>> + Send,
    {
        let sequence = self.inner.next_sequence.fetch_add(1, Ordering::SeqCst);
        if let Some(entry) = self.entry_at(sequence) {
            if entry.key.name != name {
                return Err(ClusterError::NonDeterminism {
                    execution_id: self.inner.execution_id.clone(),
                    detail: format!(
                        "activity call {sequence} is `{name}` but the journal recorded `{}` there",
                        entry.key.name
                    ),
                });
            }
            return self.decode_entry(entry);
        }
        let key = ActivityKey {
            name: name.to_string(),
            sequence,
        };
        tracing::debug!(execution_id = %self.inner.execution_id, activity = name, sequence, "running activity");
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            self.inner.cancel.check().await?;
            let tx = ActivityTx::new(
                self.inner
                    .storage
                    .begin_activity(&self.inner.execution_id, &key)
                    .await?,
            );
            let attempt_run = AssertUnwindSafe(run(tx.clone())).catch_unwind();
            let outcome = match options.on_cancel {
                OnCancel::Finish => attempt_run.await,
                OnCancel::Interrupt => tokio::select! {
                    outcome = attempt_run => outcome,
                    cancelled = self.inner.cancel.requested() => Ok(Err(cancelled)),
                },
            };
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(panic) => {
                    discard(&tx).await;
                    let err = ClusterError::handler(format!(
                        "activity `{name}` (call {sequence}) of workflow execution `{}` panicked: {}",
                        self.inner.execution_id,
                        panic_message(panic.as_ref())
                    ));
                    tracing::error!(%err, "activity panicked; the run counts as a failed attempt");
                    return Err(self.inner.fault.record(err));
                }
            };
            if self.inner.cancel.observed() {
                // Interrupted by the cancellation: nothing of the attempt is kept.
                discard(&tx).await;
                return Err(self.inner.cancel.cancelled());
            }
            match outcome {
                Ok(value) => {
                    let entry = JournalEntry {
                        execution_id: self.inner.execution_id.clone(),
                        key: key.clone(),
                        result: ExitResult::Success(wire::encode(&value)?),
                        attempts: attempt,
                        recorded_at: Utc::now(),
                    };
                    let transaction =
                        tx.take().await.ok_or_else(|| ClusterError::InvalidConfig {
                            field: "self.tx".into(),
                            reason: "the activity's transaction was taken before commit".into(),
                        })?;
                    return match transaction.commit(&entry).await? {
                        CommitOutcome::Committed => {
                            self.inner.metrics.workflow_steps.inc();
                            Ok(value)
                        }
                        CommitOutcome::AlreadyRecorded(existing) => self.decode_entry(&existing),
                    };
                }
                Err(err) => {
                    if let Some(transaction) = tx.take().await {
                        if let Err(rollback) = transaction.rollback().await {
                            tracing::warn!(%rollback, "activity rollback failed");
                        }
                    }
                    if attempt <= options.retries {
                        tracing::debug!(activity = name, attempt, %err, "activity failed; retrying");
                        tokio::time::sleep(options.delay_after(attempt)).await;
                        continue;
                    }
                    let entry = JournalEntry {
                        execution_id: self.inner.execution_id.clone(),
                        key: key.clone(),
                        result: ExitResult::failure(&err),
                        attempts: attempt,
                        recorded_at: Utc::now(),
                    };
                    let transaction = self
                        .inner
                        .storage
                        .begin_activity(&self.inner.execution_id, &key)
                        .await?;
                    return match transaction.commit(&entry).await? {
                        CommitOutcome::Committed => {
                            self.inner.metrics.workflow_steps.inc();
                            self.inner.recorded_failures.lock().push(err.to_wire());
                            Err(err)
                        }
                        CommitOutcome::AlreadyRecorded(existing) => self.decode_entry(&existing),
                    };
                }
            }
        }
    }

    /// Durable sleep: resumes no earlier than `duration` after the first time this call
    /// was reached, even across restarts. The execution is suspended meanwhile.
    ///
    /// A suspension point: once the execution is cancelled it fails with
    /// `WorkflowCancelled`, and a cancellation requested during the sleep ends it early.
    ///
    /// # Errors
    /// `WorkflowCancelled`; storage errors while scheduling the timer.
    pub async fn sleep(&self, duration: Duration) -> Result<(), ClusterError> {
        self.inner.cancel.check().await?;
        let n = self.inner.next_sleep.fetch_add(1, Ordering::SeqCst);
        let timer_key = format!("sleep/{n}");
        let exec = &self.inner.execution_id;
        let now = Utc::now();
        let timer = match self.inner.engine.timer(exec, &timer_key).await? {
            Some(timer) => timer,
            None => {
                let fire_at = now
                    + chrono::Duration::from_std(duration).map_err(|_| {
                        ClusterError::InvalidConfig {
                            field: "sleep duration".into(),
                            reason: format!("{duration:?} is too long"),
                        }
                    })?;
                let timer = DurableTimer {
                    execution_id: exec.clone(),
                    timer_key: timer_key.clone(),
                    address: self.inner.address.clone(),
                    fire_at,
                    completed: false,
                };
                self.inner.engine.schedule_timer(&timer).await?;
                // The first schedule wins; read back what is stored.
                self.inner
                    .engine
                    .timer(exec, &timer_key)
                    .await?
                    .unwrap_or(timer)
            }
        };
        if timer.completed {
            return Ok(());
        }
        if timer.fire_at <= Utc::now() {
            self.inner.engine.complete_timer(exec, &timer_key).await?;
            return Ok(());
        }
        // Every suspension (re)sends the wake-up: its de-duplication key makes this a no-op
        // when it is already stored, and repairs a crash between storing the timer and
        // storing its wake-up.
        self.schedule_wake_up(&timer).await?;
        *self.inner.suspended_until.lock() = Some(timer.fire_at);
        self.inner.suspended.notify_one();
        std::future::pending::<()>().await;
        Ok(())
    }

    async fn schedule_wake_up(&self, timer: &DurableTimer) -> Result<(), ClusterError> {
        let mut envelope = EnvelopeRequest::new(
            self.inner.sharding.next_request_id(),
            self.inner.address.clone(),
            "resume",
            wire::encode(&())?,
        );
        envelope.persisted = true;
        envelope.expects_reply = false;
        envelope.deliver_at = Some(timer.fire_at);
        envelope.dedupe_key = Some(format!("resume/{}", timer.timer_key));
        self.inner.sharding.notify(envelope).await
    }

    /// Resolves when the execution suspended; gives the instant it resumes.
    pub(crate) async fn suspended(&self) -> DateTime<Utc> {
        loop {
            if let Some(until) = *self.inner.suspended_until.lock() {
                return until;
            }
            self.inner.suspended.notified().await;
        }
    }

    /// The next journal position (for journaled client calls).
    pub(crate) fn next_call_sequence(&self) -> u32 {
        self.inner.next_sequence.load(Ordering::SeqCst)
    }
}

/// Rolls back an attempt's transaction, if the attempt did not take it.
async fn discard(tx: &ActivityTx) {
    if let Some(transaction) = tx.take().await {
        if let Err(rollback) = transaction.rollback().await {
            tracing::warn!(%rollback, "activity rollback failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_spacing() {
        let constant = ActivityOptions::new(3, Backoff::Constant, Duration::from_millis(10));
        assert_eq!(constant.delay_after(1), constant.delay_after(3));
        let exponential = ActivityOptions {
            backoff: Backoff::Exponential,
            ..constant
        };
        assert_eq!(exponential.delay_after(1), Duration::from_millis(10));
        assert_eq!(exponential.delay_after(3), Duration::from_millis(40));
    }
}
