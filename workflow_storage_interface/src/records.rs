//! Records of the workflow ports.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use cruster_types::{EntityAddress, ExitResult};
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
}

impl ExecutionStatus {
    /// A short name (`running`, `suspended`, `completed`, `failed`).
    pub fn name(&self) -> &'static str {
        match self {
            ExecutionStatus::Running => "running",
            ExecutionStatus::Suspended { .. } => "suspended",
            ExecutionStatus::Completed => "completed",
            ExecutionStatus::Failed => "failed",
        }
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
