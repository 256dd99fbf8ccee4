//! Records of the workflow ports.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use cruster_types::{EntityAddress, ExitResult, WireError};
use serde::{Deserialize, Serialize};

/// Identifies one activity call within an execution.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActivityKey {
    /// The activity's name.
    pub name: String,
    /// The call's position among the execution's activity calls, from 0.
    pub sequence: u32,
}

/// The recorded outcome of one activity call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The workflow execution.
    pub execution_id: String,
    /// Which call.
    pub key: ActivityKey,
    /// Its result (MessagePack bytes) or final error.
    pub result: ExitResult,
    /// How many times the activity ran.
    pub attempts: u32,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// What [`crate::ActivityTransaction::commit`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The entry and the staged writes were stored.
    Committed,
    /// An entry at the key's position existed (of this name or another); nothing was
    /// applied. Here it is.
    AlreadyRecorded(JournalEntry),
}

/// Where an execution stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecutionStatus {
    /// Running (or waiting to run) on some runner.
    Running,
    /// Waiting for a durable timer (or a deferred value, when `until` is `None`).
    Suspended {
        /// When it resumes.
        until: Option<DateTime<Utc>>,
    },
    /// Finished successfully.
    Completed,
    /// Finished with an error.
    Failed,
    /// Stopped at a suspension point after `cancel` was requested; finished, never runs again.
    Cancelled,
    /// Failed to make progress too many times in a row (crash, panic, undecodable journal
    /// entry): nothing runs it until it is resumed. `result` holds the last error.
    Parked,
}

impl ExecutionStatus {
    /// A short name (`running`, `suspended`, `completed`, `failed`, `cancelled`, `parked`).
    pub fn name(&self) -> &'static str {
        match self {
            ExecutionStatus::Running => "running",
            ExecutionStatus::Suspended { .. } => "suspended",
            ExecutionStatus::Completed => "completed",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Cancelled => "cancelled",
            ExecutionStatus::Parked => "parked",
        }
    }

    /// Whether the execution has finished for good (completed, failed or cancelled). A
    /// parked execution has not: it can be resumed.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            ExecutionStatus::Completed | ExecutionStatus::Failed | ExecutionStatus::Cancelled
        )
    }
}

/// One workflow execution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    /// The execution id (the workflow key).
    pub execution_id: String,
    /// The workflow's name (its hidden entity type).
    pub workflow: String,
    /// Where it stands.
    pub status: ExecutionStatus,
    /// The MessagePack-encoded request it was started with.
    pub request: Bytes,
    /// Its outcome, once finished.
    pub result: Option<ExitResult>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Runs started since the execution last made progress (a new journal entry, a
    /// suspension or an outcome); counted *before* each run, so a run that crashes its
    /// runner counts too. Reaching the configured limit parks the execution.
    pub attempts: u32,
    /// How many journal entries the execution had when its last run started: a later run
    /// that finds more has seen progress and starts counting `attempts` again.
    pub progress_mark: u32,
    /// The error of the last run that made no progress, if it reported one.
    pub last_error: Option<WireError>,
    /// When `cancel` was first requested. Set only by
    /// [`WorkflowEngine::request_cancellation`](crate::WorkflowEngine::request_cancellation);
    /// [`WorkflowEngine::upsert_execution`](crate::WorkflowEngine::upsert_execution) keeps the
    /// stored value whatever the record it is given holds.
    pub cancel_requested_at: Option<DateTime<Utc>>,
}

impl ExecutionRecord {
    /// A new running execution of `workflow`, with no attempts counted yet.
    pub fn new(
        execution_id: impl Into<String>,
        workflow: impl Into<String>,
        request: Bytes,
        now: DateTime<Utc>,
    ) -> Self {
        ExecutionRecord {
            execution_id: execution_id.into(),
            workflow: workflow.into(),
            status: ExecutionStatus::Running,
            request,
            result: None,
            created_at: now,
            updated_at: now,
            attempts: 0,
            progress_mark: 0,
            last_error: None,
            cancel_requested_at: None,
        }
    }
}

/// Which executions to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecutionFilter {
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only this status (compared by [`ExecutionStatus::name`]).
    pub status: Option<&'static str>,
    /// At most this many (0 = no limit).
    pub limit: usize,
}

/// A durable timer: resumes an execution at `fire_at`, even after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableTimer {
    /// The execution it belongs to.
    pub execution_id: String,
    /// Unique within the execution (for example `sleep/3`).
    pub timer_key: String,
    /// The workflow's hidden entity, to which the wake-up is sent.
    pub address: EntityAddress,
    /// When it fires.
    pub fire_at: DateTime<Utc>,
    /// Whether it has fired.
    pub completed: bool,
}
