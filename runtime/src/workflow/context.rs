//! [`WorkflowContext`]: the replay engine of one workflow execution.
//!
//! Owns the execution's view of its journal (loaded once per run), the position counter,
//! the patch decisions of the run and the suspension signal. Every journaled step takes the
//! next position: an activity, a call to another entity, a sleep, a patch marker. A step
//! whose position is recorded must be the step recorded there (else `NonDeterminism`); an
//! activity either returns its journaled result or runs in an activity transaction (opened
//! lazily, see [`ActivityTx`]) and commits its result with it; a call runs with no
//! transaction open and is journaled after it answered; `sleep` journals its position,
//! stores a durable timer plus a persisted wake-up and suspends. Errors of the engine itself
//! (storage, pool, routing) are never journaled: they are remembered as engine failures, so
//! the execution is retried instead of failed. It never holds a lock across an await.

use std::collections::HashMap;
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
use super::activity_tx::ToCommit;
use super::cancellation::{CancelWatch, OnCancel};
use super::deferred_step::{DeferredStep, PendingStep};
use super::run_fault::{panic_message, RunFault};
use crate::clock::Clock;
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

/// The journal names of the engine's own steps. Activities are named by their method
/// (`charge`, or `Group.charge` in an activity group), which never contains `:`.
pub(crate) mod step_names {
    /// A durable sleep.
    pub(crate) const SLEEP: &str = "cruster:sleep";
    /// The prefix of a patch marker: `cruster:patch/<patch id>`.
    pub(crate) const PATCH: &str = "cruster:patch/";
    /// Kinds of journaled calls to other entities: `<kind>/<entity type>.<tag>`. Journals
    /// written before calls were keyed by target record the bare kind.
    pub(crate) const CALL_KINDS: [&str; 3] =
        ["cruster:call", "cruster:persisted-call", "cruster:notify"];
}

/// Whether the step `requested` by the code is the one `recorded` in the journal.
fn same_step(recorded: &str, requested: &str) -> bool {
    if recorded == requested {
        return true;
    }
    // A call journaled before calls were keyed by their target matches any call of its kind.
    step_names::CALL_KINDS.iter().any(|kind| {
        recorded == *kind
            && requested
                .strip_prefix(kind)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

fn is_patch_marker(name: &str) -> bool {
    name.starts_with(step_names::PATCH)
}

/// A journal name as a reader would say it: "activity `charge`", "call to `Counter.get`".
pub(crate) fn describe_step(name: &str) -> String {
    if name == step_names::SLEEP {
        return "a sleep".into();
    }
    if let Some(patch) = name.strip_prefix(step_names::PATCH) {
        return format!("the marker of patch `{patch}`");
    }
    for (kind, what) in [
        ("cruster:persisted-call", "persisted call"),
        ("cruster:call", "call"),
        ("cruster:notify", "notification"),
    ] {
        if name == kind {
            return format!("a {what} to another entity");
        }
        if let Some(target) = name
            .strip_prefix(kind)
            .and_then(|rest| rest.strip_prefix('/'))
        {
            return format!("a {what} to `{target}`");
        }
    }
    format!("activity `{name}`")
}

fn check_patch_id(patch: &str) -> Result<(), ClusterError> {
    if patch.is_empty() || patch.chars().any(char::is_control) {
        return Err(ClusterError::InvalidConfig {
            field: "patch id".into(),
            reason: format!(
                "{patch:?} is not a patch id: give a short non-empty name such as \"new-pricing\""
            ),
        });
    }
    Ok(())
}

pub(crate) struct ContextInner {
    pub(crate) execution_id: String,
    pub(crate) workflow: &'static str,
    pub(crate) address: EntityAddress,
    pub(crate) storage: Arc<dyn WorkflowStorage>,
    pub(crate) engine: Arc<dyn WorkflowEngine>,
    pub(crate) sharding: Arc<dyn Sharding>,
    pub(crate) metrics: Arc<ClusterMetrics>,
    /// Where the run reads time (journal instants, sleeps, retry backoff).
    clock: Clock,
    journal: Vec<JournalEntry>,
    next_sequence: AtomicU32,
    next_sleep: AtomicU32,
    /// The decisions of `patched` in this run, by patch id.
    patches: Mutex<HashMap<String, bool>>,
    suspended_until: Mutex<Option<DateTime<Utc>>>,
    suspended: Notify,
    /// The failures activities of this run recorded (or replayed): an error the workflow
    /// returns that is one of them is its answer; any other storage error is transient,
    /// even after the body caught an activity failure.
    recorded_failures: Mutex<Vec<WireError>>,
    /// Errors of the engine itself met in this run (storage, pool, routing): never
    /// journaled; a workflow that returns one is retried, not failed.
    engine_failures: Mutex<Vec<WireError>>,
    /// Whether the execution was cancelled (asked at every suspension point).
    cancel: CancelWatch,
    /// The first defect of this run (a panic, an undecodable entry): not an answer.
    fault: RunFault,
    /// The latest activity's commit, held back until the run goes on.
    deferred: Arc<DeferredStep>,
    /// Whether activities continue the held-back transaction instead of committing it
    /// first (the journal storage reports a location: see `deferred_step.rs`).
    chains: bool,
    /// Whether a suspension point reads the cancellation through the held-back
    /// transaction (chains, and the engine shares the journal's database).
    cancel_through_chain: bool,
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
        clock: Clock,
        commit_hold: Duration,
    ) -> Self {
        journal.sort_by_key(|e| e.key.sequence);
        let deferred = DeferredStep::new(commit_hold, metrics.clone(), storage.clone());
        let chains = storage.chains_activities() && deferred.holds();
        let cancel_through_chain = chains && engine.location() == storage.location();
        WorkflowContext {
            inner: Arc::new(ContextInner {
                execution_id,
                workflow,
                address,
                storage,
                engine,
                sharding,
                metrics,
                clock,
                journal,
                next_sequence: AtomicU32::new(0),
                next_sleep: AtomicU32::new(0),
                patches: Mutex::new(HashMap::new()),
                suspended_until: Mutex::new(None),
                suspended: Notify::new(),
                recorded_failures: Mutex::new(Vec::new()),
                engine_failures: Mutex::new(Vec::new()),
                deferred,
                chains,
                cancel_through_chain,
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
                        "journal entry of {} (position {}) of workflow execution `{}` does not decode",
                        describe_step(&entry.key.name),
                        entry.key.sequence,
                        self.inner.execution_id
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

    /// Whether `err` is the recorded failure of an activity of this run (the workflow's
    /// own answer) rather than a transient problem of the engine.
    pub(crate) fn is_recorded_failure(&self, err: &ClusterError) -> bool {
        let wire = err.to_wire();
        self.inner.recorded_failures.lock().contains(&wire)
    }

    /// Whether `err` is an error of the engine met in this run (never journaled): the run is
    /// retried, the execution stays running.
    pub(crate) fn is_engine_failure(&self, err: &ClusterError) -> bool {
        let wire = err.to_wire();
        self.inner.engine_failures.lock().contains(&wire)
    }

    /// Remembers `err` as an engine failure of this run and returns it.
    fn engine_failure(&self, err: ClusterError) -> ClusterError {
        self.inner.engine_failures.lock().push(err.to_wire());
        err
    }

    fn non_determinism(&self, position: u32, recorded: &str, requested: &str) -> ClusterError {
        ClusterError::NonDeterminism {
            execution_id: self.inner.execution_id.clone(),
            position,
            recorded: describe_step(recorded),
            requested: describe_step(requested),
        }
    }

    /// Takes the next position for step `name`. Patch markers the code does not ask about
    /// there (patches since deprecated and removed) are stepped over. Returns the position
    /// and the entry recorded there, if any.
    ///
    /// # Errors
    /// `NonDeterminism` when another step is recorded at the position.
    fn next_step(&self, name: &str) -> Result<(u32, Option<&JournalEntry>), ClusterError> {
        loop {
            let sequence = self.inner.next_sequence.fetch_add(1, Ordering::SeqCst);
            match self.entry_at(sequence) {
                None => return Ok((sequence, None)),
                Some(entry) if same_step(&entry.key.name, name) => {
                    return Ok((sequence, Some(entry)))
                }
                Some(entry) if is_patch_marker(&entry.key.name) && !is_patch_marker(name) => {
                    continue
                }
                Some(entry) => return Err(self.non_determinism(sequence, &entry.key.name, name)),
            }
        }
    }

    /// The result of a step whose commit found `existing` at its position (another run
    /// recorded it first).
    fn resolve_existing<T: DeserializeOwned>(
        &self,
        name: &str,
        existing: &JournalEntry,
    ) -> Result<T, ClusterError> {
        if same_step(&existing.key.name, name) {
            self.decode_entry(existing)
        } else {
            Err(self.non_determinism(existing.key.sequence, &existing.key.name, name))
        }
    }

    /// Commits the latest activity if its commit was held back (an engine failure if that
    /// fails: the run is retried).
    pub(crate) async fn flush_deferred(&self) -> Result<(), ClusterError> {
        self.inner
            .deferred
            .flush()
            .await
            .map_err(|err| self.engine_failure(err))
    }

    /// Takes the latest activity's held-back commit, for the execution's end to carry.
    pub(crate) async fn take_deferred(&self) -> Result<Option<PendingStep>, ClusterError> {
        self.inner
            .deferred
            .take()
            .await
            .map_err(|err| self.engine_failure(err))
    }

    /// Journals `result` for step `name` at `sequence` in a transaction opened just for it.
    async fn record_step(
        &self,
        sequence: u32,
        name: &str,
        result: ExitResult,
        attempts: u32,
    ) -> Result<CommitOutcome, ClusterError> {
        self.flush_deferred().await?;
        let key = ActivityKey {
            name: name.to_string(),
            sequence,
        };
        let entry = JournalEntry {
            execution_id: self.inner.execution_id.clone(),
            key,
            result,
            attempts,
            recorded_at: self.inner.clock.now(),
        };
        let outcome = self
            .inner
            .storage
            .append_entry(&entry)
            .await
            .map_err(|err| self.engine_failure(err))?;
        if outcome == CommitOutcome::Committed {
            self.inner.metrics.workflow_steps.inc();
        }
        Ok(outcome)
    }

    /// Runs (or replays) one activity call. `run` makes one attempt's future from the
    /// attempt's transaction; it is called again for each retry. The transaction is opened
    /// by the attempt's first use of it, or just to commit the result.
    ///
    /// A new call is a suspension point: once the execution is cancelled it fails with
    /// `WorkflowCancelled` instead of running. A panic in the activity is caught and
    /// returned as an error, never journaled: the run counts as a failed attempt.
    ///
    /// # Errors
    /// The activity's final error (after retries); `NonDeterminism` when the journal
    /// recorded another step at this position; `WorkflowCancelled`; storage errors (not
    /// journaled: the run is retried).
    pub async fn activity<T, F, Fut>(
        &self,
        name: &str,
        options: ActivityOptions,
        run: F,
    ) -> Result<T, ClusterError>
    where
        T: Serialize + DeserializeOwned + Send,
        F: Fn(ActivityTx) -> Fut + Send,
        Fut: Future<Output = Result<T, ClusterError>> + Send,
    {
        if !self.inner.chains {
            // Nothing continues the held-back step: it is committed before this one runs.
            self.flush_deferred().await?;
        }
        let (sequence, recorded) = self.next_step(name)?;
        if let Some(entry) = recorded {
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
            let held = self
                .inner
                .cancel_through_chain
                .then_some(self.inner.deferred.as_ref());
            self.inner.cancel.check_through(held).await?;
            let tx = ActivityTx::lazy(
                self.inner.storage.clone(),
                self.inner.execution_id.clone(),
                key.clone(),
                self.inner.chains.then(|| self.inner.deferred.clone()),
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
                        recorded_at: self.inner.clock.now(),
                    };
                    let transaction = tx
                        .take_for_commit()
                        .await
                        .map_err(|err| self.engine_failure(err))?;
                    // An activity that never used its transaction is held back with the
                    // run's held-back step (see `DeferredStep::defer_entry`).
                    if transaction.is_none() && self.inner.chains {
                        self.inner
                            .deferred
                            .defer_entry(entry)
                            .await
                            .map_err(|err| self.engine_failure(err))?;
                        return Ok(value);
                    }
                    let committed = match transaction {
                        Some(ToCommit { tx, carried }) => {
                            // Committed when the run goes on (with its end, if this was
                            // the last step): see `deferred_step.rs`.
                            self.inner
                                .deferred
                                .defer(PendingStep::new(tx, entry, carried))
                                .await
                                .map_err(|err| self.engine_failure(err))?;
                            return Ok(value);
                        }
                        None => self.inner.storage.append_entry(&entry).await,
                    }
                    .map_err(|err| self.engine_failure(err))?;
                    return match committed {
                        CommitOutcome::Committed => {
                            self.inner.metrics.workflow_steps.inc();
                            Ok(value)
                        }
                        CommitOutcome::AlreadyRecorded(existing) => {
                            self.resolve_existing(name, &existing)
                        }
                    };
                }
                Err(err) => {
                    discard(&tx).await;
                    if tx.open_failed().await {
                        // The transaction could not be opened: the engine's failure, not the
                        // activity's. Never journaled; the run is retried.
                        tracing::debug!(activity = name, %err, "activity transaction could not be opened");
                        return Err(self.engine_failure(err));
                    }
                    if attempt <= options.retries {
                        tracing::debug!(activity = name, attempt, %err, "activity failed; retrying");
                        self.inner.clock.sleep(options.delay_after(attempt)).await;
                        continue;
                    }
                    return match self
                        .record_step(sequence, name, ExitResult::failure(&err), attempt)
                        .await?
                    {
                        CommitOutcome::Committed => {
                            self.inner.recorded_failures.lock().push(err.to_wire());
                            Err(err)
                        }
                        CommitOutcome::AlreadyRecorded(existing) => {
                            self.resolve_existing(name, &existing)
                        }
                    };
                }
            }
        }
    }

    /// Runs (or replays) one call to another entity or workflow, journaled as step `name`
    /// (`<kind>/<entity type>.<tag>`). `call` gets the call's position and makes the call;
    /// no transaction is open while it runs, and its answer is journaled afterwards. An
    /// error of `call` (routing, storage, the runner shutting down) is the engine's: never
    /// journaled, the run is retried.
    pub(crate) async fn journaled_call<T, Fut>(
        &self,
        name: &str,
        call: impl FnOnce(u32) -> Fut,
    ) -> Result<T, ClusterError>
    where
        T: Serialize + DeserializeOwned,
        Fut: Future<Output = Result<T, ClusterError>>,
    {
        self.flush_deferred().await?;
        let (sequence, recorded) = self.next_step(name)?;
        if let Some(entry) = recorded {
            return self.decode_entry(entry);
        }
        // A new call is a suspension point, as a new activity is.
        self.inner.cancel.check().await?;
        let value = call(sequence)
            .await
            .map_err(|err| self.engine_failure(err))?;
        let result = ExitResult::Success(wire::encode(&value)?);
        match self.record_step(sequence, name, result, 1).await? {
            CommitOutcome::Committed => Ok(value),
            CommitOutcome::AlreadyRecorded(existing) => self.resolve_existing(name, &existing),
        }
    }

    /// Whether this execution takes the new code path of patch `patch`: `true` for an
    /// execution that reaches this point under code that has the patch (the decision is
    /// journaled as a marker), `false` for one whose journal already recorded steps past this
    /// point without the marker (it started before the patch existed, and replays the old
    /// path). The first answer for a patch id holds for the rest of the run.
    ///
    /// Inside `execute` the macros offer it as `self.patched(..)`:
    ///
    /// ```
    /// use cruster::prelude::*;
    ///
    /// #[workflow]
    /// #[derive(Clone)]
    /// struct Checkout;
    ///
    /// #[workflow_impl(key = |order: &String| order.clone(), hash = false)]
    /// impl Checkout {
    ///     async fn execute(&self, order: String) -> Result<i64, ClusterError> {
    ///         self.reserve(order.clone()).await?;
    ///         // Executions that charged the old way before this deploy keep doing so.
    ///         let price = if self.patched("new-pricing").await? {
    ///             self.price_with_discounts(order).await?
    ///         } else {
    ///             self.price_flat(order).await?
    ///         };
    ///         Ok(price)
    ///     }
    ///
    ///     #[activity]
    ///     async fn reserve(&self, _order: String) -> Result<(), ClusterError> {
    ///         Ok(())
    ///     }
    ///
    ///     #[activity]
    ///     async fn price_flat(&self, _order: String) -> Result<i64, ClusterError> {
    ///         Ok(100)
    ///     }
    ///
    ///     #[activity]
    ///     async fn price_with_discounts(&self, _order: String) -> Result<i64, ClusterError> {
    ///         Ok(90)
    ///     }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let runner = SingleRunner::builder().build().await?;
    /// let checkout = Checkout.register(runner.sharding().clone()).await?;
    /// assert_eq!(checkout.execute(&"order-1".to_string()).await?, 90);
    /// runner.shutdown().await?;
    /// # Ok::<(), ClusterError>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// `InvalidConfig` for an empty patch id; storage errors while journaling the marker.
    pub async fn patched(&self, patch: &str) -> Result<bool, ClusterError> {
        check_patch_id(patch)?;
        self.flush_deferred().await?;
        if let Some(decided) = self.inner.patches.lock().get(patch) {
            return Ok(*decided);
        }
        let marker = format!("{}{patch}", step_names::PATCH);
        let decided = loop {
            let sequence = self.inner.next_sequence.load(Ordering::SeqCst);
            match self.entry_at(sequence) {
                Some(entry) if entry.key.name == marker => {
                    self.inner
                        .next_sequence
                        .store(sequence + 1, Ordering::SeqCst);
                    break true;
                }
                Some(entry) if is_patch_marker(&entry.key.name) => {
                    // Another patch's marker, which the code no longer asks about.
                    self.inner
                        .next_sequence
                        .store(sequence + 1, Ordering::SeqCst);
                }
                // Recorded past this point without the marker: started before the patch.
                Some(_) => break false,
                None => {
                    self.inner
                        .next_sequence
                        .store(sequence + 1, Ordering::SeqCst);
                    let result = ExitResult::Success(wire::encode(&patch)?);
                    match self.record_step(sequence, &marker, result, 1).await? {
                        CommitOutcome::Committed => break true,
                        CommitOutcome::AlreadyRecorded(existing) if existing.key.name == marker => {
                            break true
                        }
                        CommitOutcome::AlreadyRecorded(_) => {
                            // Another run recorded a step here first: it is the old path.
                            self.inner.next_sequence.store(sequence, Ordering::SeqCst);
                            break false;
                        }
                    }
                }
            }
        };
        tracing::debug!(execution_id = %self.inner.execution_id, patch, decided, "patch decided");
        self.inner.patches.lock().insert(patch.to_string(), decided);
        Ok(decided)
    }

    /// Marks patch `patch` as deprecated: the old path it guarded has been deleted, because
    /// no execution that started before the patch remains. Executions that recorded the
    /// patch's marker still replay (the marker is stepped over here); new executions record
    /// nothing. Once no execution that recorded the marker remains either, the call can be
    /// deleted too.
    ///
    /// # Errors
    /// `InvalidConfig` for an empty patch id.
    pub async fn deprecate_patch(&self, patch: &str) -> Result<(), ClusterError> {
        check_patch_id(patch)?;
        self.flush_deferred().await?;
        if self.inner.patches.lock().contains_key(patch) {
            return Ok(());
        }
        let marker = format!("{}{patch}", step_names::PATCH);
        let sequence = self.inner.next_sequence.load(Ordering::SeqCst);
        if self
            .entry_at(sequence)
            .is_some_and(|entry| entry.key.name == marker)
        {
            self.inner
                .next_sequence
                .store(sequence + 1, Ordering::SeqCst);
        }
        self.inner.patches.lock().insert(patch.to_string(), true);
        Ok(())
    }

    /// Durable sleep: resumes no earlier than `duration` after the first time this call
    /// was reached, even across restarts. The execution is suspended meanwhile. The sleep
    /// takes a journal position, so adding or removing a sleep in a running workflow's code
    /// is detected as non-determinism.
    ///
    /// A suspension point: once the execution is cancelled it fails with
    /// `WorkflowCancelled`, and a cancellation requested during the sleep ends it early.
    ///
    /// # Errors
    /// `NonDeterminism` when the journal recorded another step at this position;
    /// `WorkflowCancelled`; storage errors while scheduling the timer.
    pub async fn sleep(&self, duration: Duration) -> Result<(), ClusterError> {
        self.flush_deferred().await?;
        self.inner.cancel.check().await?;
        let n = self.inner.next_sleep.fetch_add(1, Ordering::SeqCst);
        let timer_key = sleep_timer_key(n);
        let exec = &self.inner.execution_id;
        let stored = self
            .inner
            .engine
            .timer(exec, &timer_key)
            .await
            .map_err(|err| self.engine_failure(err))?;
        // Executions started before sleeps were journaled have a timer but no sleep entry at
        // this position (a sleep's entry is always recorded before its timer): their sleeps
        // take no position.
        let legacy = stored.is_some()
            && self
                .entry_at(self.inner.next_sequence.load(Ordering::SeqCst))
                .is_none_or(|entry| entry.key.name != step_names::SLEEP);
        if !legacy {
            let (sequence, recorded) = self.next_step(step_names::SLEEP)?;
            if recorded.is_none() {
                let result = ExitResult::Success(wire::encode(&timer_key)?);
                if let CommitOutcome::AlreadyRecorded(existing) = self
                    .record_step(sequence, step_names::SLEEP, result, 1)
                    .await?
                {
                    self.resolve_existing::<String>(step_names::SLEEP, &existing)?;
                }
            }
        }
        let now = self.inner.clock.now();
        let timer = match stored {
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
                self.inner
                    .engine
                    .schedule_timer(&timer)
                    .await
                    .map_err(|err| self.engine_failure(err))?;
                // The first schedule wins; read back what is stored.
                self.inner
                    .engine
                    .timer(exec, &timer_key)
                    .await
                    .map_err(|err| self.engine_failure(err))?
                    .unwrap_or(timer)
            }
        };
        if timer.completed {
            return Ok(());
        }
        if timer.fire_at <= self.inner.clock.now() {
            self.inner
                .engine
                .complete_timer(exec, &timer_key)
                .await
                .map_err(|err| self.engine_failure(err))?;
            return Ok(());
        }
        // Every suspension (re)sends the wake-up: its de-duplication key makes this a no-op
        // when it is already stored, and repairs a crash between storing the timer and
        // storing its wake-up.
        self.schedule_wake_up(&timer)
            .await
            .map_err(|err| self.engine_failure(err))?;
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
}

/// The durable timer key of the `n`-th `self.sleep` of an execution (from 0).
pub(crate) fn sleep_timer_key(n: u32) -> String {
    format!("sleep/{n}")
}

/// Rolls back an attempt's transaction, if the attempt opened one and did not take it.
async fn discard(tx: &ActivityTx) {
    if let Some(open) = tx.take_open().await {
        open.discard().await;
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

    #[test]
    fn calls_journaled_before_keying_match_any_call_of_their_kind() {
        assert!(same_step("cruster:call", "cruster:call/Counter.get"));
        assert!(same_step(
            "cruster:call/Counter.get",
            "cruster:call/Counter.get"
        ));
        assert!(!same_step(
            "cruster:call/Counter.get",
            "cruster:call/Counter.set"
        ));
        assert!(!same_step(
            "cruster:call",
            "cruster:persisted-call/Counter.get"
        ));
        assert!(!same_step("cruster:call", "cruster:callback"));
        assert!(!same_step("charge", "reserve"));
    }

    #[test]
    fn steps_are_described_for_people() {
        assert_eq!(describe_step("charge"), "activity `charge`");
        assert_eq!(describe_step("cruster:sleep"), "a sleep");
        assert_eq!(
            describe_step("cruster:patch/new-pricing"),
            "the marker of patch `new-pricing`"
        );
        assert_eq!(
            describe_step("cruster:persisted-call/Counter.increment"),
            "a persisted call to `Counter.increment`"
        );
        assert_eq!(describe_step("cruster:call"), "a call to another entity");
    }
}
