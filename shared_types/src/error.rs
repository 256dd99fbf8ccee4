//! [`ClusterError`]: the one error type of every cruster library crate.
//!
//! Each variant carries the fields a caller acts on, and its message says what happened
//! and what to do. Errors cross runner boundaries as a [`WireError`] (plain data) and are
//! rebuilt on the other side with the same variant and fields; a `source` becomes a
//! [`RemoteErrorSource`] holding the original source's text.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{EntityId, EntityType, RunnerAddress, ShardId};
use crate::snowflake::Snowflake;

/// A boxed error usable as a `source`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in cruster.
///
/// Match on the variant, not on the message:
///
/// ```
/// use cruster_types::{ClusterError, EntityType};
/// let err = ClusterError::EntityNotRegistered { entity_type: EntityType::new("Counter") };
/// assert!(matches!(err, ClusterError::EntityNotRegistered { .. }));
/// assert!(err.to_string().contains("register"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// No entity of this type is registered on the runner that received the message.
    #[error(
        "entity type `{entity_type}` is not registered on this runner: register it \
         (`MyEntity {{ .. }}.register(sharding)`) on every runner before sending to it"
    )]
    EntityNotRegistered {
        /// The unknown entity type.
        entity_type: EntityType,
    },

    /// The entity type has no dispatchable RPC with this tag.
    #[error(
        "entity type `{entity_type}` has no dispatchable RPC `{tag}`: check the method name, \
         that it is not #[private], and that client and runner run the same version"
    )]
    UnknownTag {
        /// The entity type.
        entity_type: EntityType,
        /// The tag that matched nothing.
        tag: String,
    },

    /// Bytes that should hold a message, a reply or a payload could not be decoded (or encoded).
    #[error("malformed message: {reason}")]
    MalformedMessage {
        /// What could not be decoded, and where.
        reason: String,
        /// The decoder's error.
        #[source]
        source: Option<BoxError>,
    },

    /// A storage backend failed. The operation may be retried once the storage is healthy.
    #[error("persistence error: {reason}")]
    PersistenceError {
        /// What failed.
        reason: String,
        /// The backend's error.
        #[source]
        source: Option<BoxError>,
    },

    /// The entity's mailbox is full: the message was not queued.
    #[error(
        "mailbox of entity {entity_type}/{entity_id} is full ({capacity} messages waiting): \
         retry later, or raise `mailbox_capacity` for this entity type"
    )]
    MailboxFull {
        /// The entity type.
        entity_type: EntityType,
        /// The entity id.
        entity_id: EntityId,
        /// The configured mailbox capacity.
        capacity: usize,
    },

    /// The runner that received the message does not own its shard (a rebalance is under way).
    #[error(
        "shard {shard_id} is not owned by this runner (it is moving or owned elsewhere): \
         the client retries with the new owner; if this persists, check cluster membership"
    )]
    ShardNotOwned {
        /// The shard.
        shard_id: ShardId,
    },

    /// A runner could not be reached, or no runner owns the shard yet.
    #[error("runner {address} is unavailable: {reason}")]
    RunnerUnavailable {
        /// The runner that could not be reached.
        address: RunnerAddress,
        /// Why.
        reason: String,
    },

    /// A plain (non-persisted) request reached runner `address`, or may have, but its answer
    /// never came back: it ran at most once, perhaps not at all. It is not retried, because
    /// a retry could run it twice.
    #[error(
        "request {request_id} may or may not have been handled by runner {address}: {reason}. \
         It was not retried (plain sends are at most once); use a persisted send for \
         at-least-once delivery"
    )]
    DeliveryUnknown {
        /// The runner the request was sent to.
        address: RunnerAddress,
        /// The request.
        request_id: Snowflake,
        /// What happened after it was sent.
        reason: String,
    },

    /// An operation did not finish in time.
    #[error("timed out after {timeout:?} waiting for {operation}")]
    Timeout {
        /// What was being waited for.
        operation: String,
        /// How long was waited.
        timeout: Duration,
    },

    /// The runner is shutting down and takes no new work: send to another runner or retry.
    #[error("the runner is shutting down and takes no new work: retry against a live runner")]
    ShuttingDown,

    /// The request was interrupted (by the caller, or because its entity moved away).
    #[error("request {request_id} was interrupted before it finished")]
    Interrupted {
        /// The interrupted request.
        request_id: Snowflake,
    },

    /// A workflow replay asked for another step (activity, call, sleep, patch) than its
    /// journal recorded at that position: the workflow's code changed while the execution
    /// was in flight.
    #[error(
        "non-deterministic workflow execution `{execution_id}`: at journal position {position} \
         the journal holds {recorded} but the code asked for {requested}. The workflow's code \
         changed while this execution was in flight; keep the old path for executions that \
         started before the change with a patch: `if self.patched(\"<change-id>\").await? {{ \
         <new code> }} else {{ <old code> }}`"
    )]
    NonDeterminism {
        /// The workflow execution.
        execution_id: String,
        /// The journal position (from 0) where the code and the journal differ.
        position: u32,
        /// What the journal holds there (for example "activity `reserve`").
        recorded: String,
        /// What the code asked for there (for example "activity `charge`").
        requested: String,
    },

    /// A backend does not support an optional operation.
    #[error("{backend} does not support {operation}")]
    Unsupported {
        /// The operation asked for.
        operation: String,
        /// The backend that cannot do it.
        backend: String,
    },

    /// A configuration value is invalid.
    #[error("invalid configuration `{field}`: {reason}")]
    InvalidConfig {
        /// The offending option.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A cron expression could not be parsed.
    #[error(
        "invalid cron expression `{expression}`: {reason} (expected 6 or 7 fields: \
         sec min hour day-of-month month day-of-week [year])"
    )]
    InvalidCronExpression {
        /// The expression as given.
        expression: String,
        /// The parser's complaint.
        reason: String,
    },

    /// A workflow activity failed for good (after its retries).
    #[error("activity `{activity}` of workflow execution `{execution_id}` failed after {attempts} attempt(s): {message}")]
    ActivityFailed {
        /// The workflow execution.
        execution_id: String,
        /// The activity name.
        activity: String,
        /// How many times it ran.
        attempts: u32,
        /// The last error's message.
        message: String,
    },

    /// A handler (entity RPC, workflow, singleton, cron job) failed with its own error.
    #[error("{message}")]
    Handler {
        /// The handler's message.
        message: String,
    },

    /// A workflow execution was cancelled (`client.cancel`): it stopped at a suspension
    /// point and will not run again.
    #[error(
        "workflow execution `{execution_id}` was cancelled: it stopped at its next suspension \
         point and will not run again; start a new execution (another id) to run the work again"
    )]
    WorkflowCancelled {
        /// The cancelled execution.
        execution_id: String,
    },

    /// A workflow execution failed to make progress too many times in a row (a crash, a
    /// panic in its code, a journal entry that does not decode) and was parked: nothing runs
    /// it until it is resumed.
    #[error(
        "workflow execution `{execution_id}` is parked after {attempts} attempt(s) in a row \
         that made no progress; last error: {last_error}. Fix the cause (deploy the fix), then \
         resume it with `cruster::workflow::resume_parked_execution`"
    )]
    WorkflowParked {
        /// The parked execution.
        execution_id: String,
        /// The attempts that made no progress.
        attempts: u32,
        /// The last attempt's error.
        last_error: String,
    },

    /// No workflow execution has this id.
    #[error(
        "workflow `{workflow}` has no execution `{execution_id}`: check the id (as returned by \
         `start` or `execution_id`), and that the execution has started"
    )]
    WorkflowNotFound {
        /// The workflow's name.
        workflow: String,
        /// The id that matched nothing.
        execution_id: String,
    },

    /// Two workflows derived the same execution id: the execution under this id belongs to
    /// another workflow, so this one can neither run nor read it.
    #[error(
        "execution id `{execution_id}` belongs to an execution of workflow `{taken_by}`, so \
         workflow `{workflow}` cannot use it: execution ids are shared by all workflows, so \
         give this workflow's key a prefix of its own (for example `{workflow}-<key>`)"
    )]
    ExecutionIdTaken {
        /// The id both workflows derived.
        execution_id: String,
        /// The workflow that asked for it.
        workflow: String,
        /// The workflow whose execution holds it.
        taken_by: String,
    },

    /// An operation on a parked execution found the execution in another state.
    #[error(
        "workflow execution `{execution_id}` is {status}, not parked: only a parked execution \
         can be resumed (list them with `cruster::workflow::list_parked_executions`)"
    )]
    WorkflowNotParked {
        /// The execution.
        execution_id: String,
        /// Its status (`running`, `completed`, ...).
        status: String,
    },
}

impl ClusterError {
    /// A handler failure with a message.
    pub fn handler(message: impl Into<String>) -> Self {
        ClusterError::Handler {
            message: message.into(),
        }
    }

    /// A persistence failure wrapping a backend error.
    pub fn persistence(
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ClusterError::PersistenceError {
            reason: reason.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A malformed-message failure wrapping a decoder error.
    pub fn malformed(
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ClusterError::MalformedMessage {
            reason: reason.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Whether retrying the same operation later may succeed (routing or storage trouble).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::ShardNotOwned { .. }
                | ClusterError::RunnerUnavailable { .. }
                | ClusterError::PersistenceError { .. }
                | ClusterError::Timeout { .. }
                | ClusterError::MailboxFull { .. }
        )
    }

    /// Whether this is a routing failure that a send retries against the new shard owner.
    pub fn is_routing(&self) -> bool {
        matches!(
            self,
            ClusterError::ShardNotOwned { .. } | ClusterError::RunnerUnavailable { .. }
        )
    }

    /// The plain-data form of this error, for sending to another runner or storing.
    pub fn to_wire(&self) -> WireError {
        WireError::from(self)
    }
}

fn source_text(source: &Option<BoxError>) -> Option<String> {
    source.as_ref().map(|s| s.to_string())
}

fn rebuilt_source(text: Option<String>) -> Option<BoxError> {
    text.map(|t| Box::new(RemoteErrorSource(t)) as BoxError)
}

/// The text of an error source that was raised on another runner or read from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteErrorSource(pub String);

impl fmt::Display for RemoteErrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RemoteErrorSource {}

/// [`ClusterError`] as plain data: what travels in a failed reply or a journal entry.
///
/// ```
/// use cruster_types::{ClusterError, WireError};
/// let err = ClusterError::handler("out of stock");
/// let back: ClusterError = err.to_wire().into();
/// assert!(matches!(back, ClusterError::Handler { ref message } if message == "out of stock"));
/// ```
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum WireError {
    EntityNotRegistered {
        entity_type: EntityType,
    },
    UnknownTag {
        entity_type: EntityType,
        tag: String,
    },
    MalformedMessage {
        reason: String,
        source: Option<String>,
    },
    PersistenceError {
        reason: String,
        source: Option<String>,
    },
    MailboxFull {
        entity_type: EntityType,
        entity_id: EntityId,
        capacity: u64,
    },
    ShardNotOwned {
        shard_id: ShardId,
    },
    RunnerUnavailable {
        address: RunnerAddress,
        reason: String,
    },
    DeliveryUnknown {
        address: RunnerAddress,
        request_id: Snowflake,
        reason: String,
    },
    Timeout {
        operation: String,
        timeout_ms: u64,
    },
    ShuttingDown,
    Interrupted {
        request_id: Snowflake,
    },
    NonDeterminism {
        execution_id: String,
        position: u32,
        recorded: String,
        requested: String,
    },
    Unsupported {
        operation: String,
        backend: String,
    },
    InvalidConfig {
        field: String,
        reason: String,
    },
    InvalidCronExpression {
        expression: String,
        reason: String,
    },
    ActivityFailed {
        execution_id: String,
        activity: String,
        attempts: u32,
        message: String,
    },
    Handler {
        message: String,
    },
    WorkflowCancelled {
        execution_id: String,
    },
    WorkflowParked {
        execution_id: String,
        attempts: u32,
        last_error: String,
    },
    WorkflowNotFound {
        workflow: String,
        execution_id: String,
    },
    WorkflowNotParked {
        execution_id: String,
        status: String,
    },
    ExecutionIdTaken {
        execution_id: String,
        workflow: String,
        taken_by: String,
    },
}

impl From<&ClusterError> for WireError {
    fn from(err: &ClusterError) -> Self {
        use ClusterError as E;
        match err {
            E::EntityNotRegistered { entity_type } => WireError::EntityNotRegistered {
                entity_type: entity_type.clone(),
            },
            E::UnknownTag { entity_type, tag } => WireError::UnknownTag {
                entity_type: entity_type.clone(),
                tag: tag.clone(),
            },
            E::MalformedMessage { reason, source } => WireError::MalformedMessage {
                reason: reason.clone(),
                source: source_text(source),
            },
            E::PersistenceError { reason, source } => WireError::PersistenceError {
                reason: reason.clone(),
                source: source_text(source),
            },
            E::MailboxFull {
                entity_type,
                entity_id,
                capacity,
            } => WireError::MailboxFull {
                entity_type: entity_type.clone(),
                entity_id: entity_id.clone(),
                capacity: *capacity as u64,
            },
            E::ShardNotOwned { shard_id } => WireError::ShardNotOwned {
                shard_id: shard_id.clone(),
            },
            E::RunnerUnavailable { address, reason } => WireError::RunnerUnavailable {
                address: address.clone(),
                reason: reason.clone(),
            },
            E::DeliveryUnknown {
                address,
                request_id,
                reason,
            } => WireError::DeliveryUnknown {
                address: address.clone(),
                request_id: *request_id,
                reason: reason.clone(),
            },
            E::Timeout { operation, timeout } => WireError::Timeout {
                operation: operation.clone(),
                timeout_ms: timeout.as_millis() as u64,
            },
            E::ShuttingDown => WireError::ShuttingDown,
            E::Interrupted { request_id } => WireError::Interrupted {
                request_id: *request_id,
            },
            E::NonDeterminism {
                execution_id,
                position,
                recorded,
                requested,
            } => WireError::NonDeterminism {
                execution_id: execution_id.clone(),
                position: *position,
                recorded: recorded.clone(),
                requested: requested.clone(),
            },
            E::Unsupported { operation, backend } => WireError::Unsupported {
                operation: operation.clone(),
                backend: backend.clone(),
            },
            E::InvalidConfig { field, reason } => WireError::InvalidConfig {
                field: field.clone(),
                reason: reason.clone(),
            },
            E::InvalidCronExpression { expression, reason } => WireError::InvalidCronExpression {
                expression: expression.clone(),
                reason: reason.clone(),
            },
            E::ActivityFailed {
                execution_id,
                activity,
                attempts,
                message,
            } => WireError::ActivityFailed {
                execution_id: execution_id.clone(),
                activity: activity.clone(),
                attempts: *attempts,
                message: message.clone(),
            },
            E::Handler { message } => WireError::Handler {
                message: message.clone(),
            },
            E::WorkflowCancelled { execution_id } => WireError::WorkflowCancelled {
                execution_id: execution_id.clone(),
            },
            E::WorkflowParked {
                execution_id,
                attempts,
                last_error,
            } => WireError::WorkflowParked {
                execution_id: execution_id.clone(),
                attempts: *attempts,
                last_error: last_error.clone(),
            },
            E::WorkflowNotFound {
                workflow,
                execution_id,
            } => WireError::WorkflowNotFound {
                workflow: workflow.clone(),
                execution_id: execution_id.clone(),
            },
            E::ExecutionIdTaken {
                execution_id,
                workflow,
                taken_by,
            } => WireError::ExecutionIdTaken {
                execution_id: execution_id.clone(),
                workflow: workflow.clone(),
                taken_by: taken_by.clone(),
            },
            E::WorkflowNotParked {
                execution_id,
                status,
            } => WireError::WorkflowNotParked {
                execution_id: execution_id.clone(),
                status: status.clone(),
            },
        }
    }
}

impl From<ClusterError> for WireError {
    fn from(err: ClusterError) -> Self {
        WireError::from(&err)
    }
}

impl From<WireError> for ClusterError {
    fn from(err: WireError) -> Self {
        use ClusterError as E;
        match err {
            WireError::EntityNotRegistered { entity_type } => {
                E::EntityNotRegistered { entity_type }
            }
            WireError::UnknownTag { entity_type, tag } => E::UnknownTag { entity_type, tag },
            WireError::MalformedMessage { reason, source } => E::MalformedMessage {
                reason,
                source: rebuilt_source(source),
            },
            WireError::PersistenceError { reason, source } => E::PersistenceError {
                reason,
                source: rebuilt_source(source),
            },
            WireError::MailboxFull {
                entity_type,
                entity_id,
                capacity,
            } => E::MailboxFull {
                entity_type,
                entity_id,
                capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
            },
            WireError::ShardNotOwned { shard_id } => E::ShardNotOwned { shard_id },
            WireError::RunnerUnavailable { address, reason } => {
                E::RunnerUnavailable { address, reason }
            }
            WireError::DeliveryUnknown {
                address,
                request_id,
                reason,
            } => E::DeliveryUnknown {
                address,
                request_id,
                reason,
            },
            WireError::Timeout {
                operation,
                timeout_ms,
            } => E::Timeout {
                operation,
                timeout: Duration::from_millis(timeout_ms),
            },
            WireError::ShuttingDown => E::ShuttingDown,
            WireError::Interrupted { request_id } => E::Interrupted { request_id },
            WireError::NonDeterminism {
                execution_id,
                position,
                recorded,
                requested,
            } => E::NonDeterminism {
                execution_id,
                position,
                recorded,
                requested,
            },
            WireError::Unsupported { operation, backend } => E::Unsupported { operation, backend },
            WireError::InvalidConfig { field, reason } => E::InvalidConfig { field, reason },
            WireError::InvalidCronExpression { expression, reason } => {
                E::InvalidCronExpression { expression, reason }
            }
            WireError::ActivityFailed {
                execution_id,
                activity,
                attempts,
                message,
            } => E::ActivityFailed {
                execution_id,
                activity,
                attempts,
                message,
            },
            WireError::Handler { message } => E::Handler { message },
            WireError::WorkflowCancelled { execution_id } => E::WorkflowCancelled { execution_id },
            WireError::WorkflowParked {
                execution_id,
                attempts,
                last_error,
            } => E::WorkflowParked {
                execution_id,
                attempts,
                last_error,
            },
            WireError::WorkflowNotFound {
                workflow,
                execution_id,
            } => E::WorkflowNotFound {
                workflow,
                execution_id,
            },
            WireError::ExecutionIdTaken {
                execution_id,
                workflow,
                taken_by,
            } => E::ExecutionIdTaken {
                execution_id,
                workflow,
                taken_by,
            },
            WireError::WorkflowNotParked {
                execution_id,
                status,
            } => E::WorkflowNotParked {
                execution_id,
                status,
            },
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", ClusterError::from(self.clone()))
    }
}

impl From<std::io::Error> for ClusterError {
    fn from(err: std::io::Error) -> Self {
        ClusterError::PersistenceError {
            reason: format!("I/O failed: {err}"),
            source: Some(Box::new(err)),
        }
    }
}

/// Lets SQL code written against `sqlx` (for example an activity writing through `self.tx`)
/// use `?` in a function returning `Result<_, ClusterError>`.
///
/// Every database error becomes a retryable [`ClusterError::PersistenceError`] whose
/// `source` is the `sqlx::Error`, so its details (SQLSTATE, constraint name) stay reachable
/// through `std::error::Error::source`.
///
/// A `sqlx::Error::Configuration` that wraps a `ClusterError` (how `self.tx` reports that
/// the workflow storage is not SQL-backed: `Unsupported`) gives back that error itself, so
/// it is not retried as a storage failure.
#[cfg(feature = "sqlx")]
impl From<sqlx::Error> for ClusterError {
    fn from(err: sqlx::Error) -> Self {
        let err = match err {
            sqlx::Error::Configuration(inner) => match inner.downcast::<ClusterError>() {
                Ok(cluster) => return *cluster,
                Err(other) => sqlx::Error::Configuration(other),
            },
            other => other,
        };
        ClusterError::PersistenceError {
            reason: format!("database operation failed: {err}"),
            source: Some(Box::new(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "sqlx")]
    #[test]
    fn sqlx_errors_become_persistence_errors_with_their_source() {
        let err = ClusterError::from(sqlx::Error::RowNotFound);
        assert!(matches!(
            err,
            ClusterError::PersistenceError {
                source: Some(_),
                ..
            }
        ));
        assert!(err.is_retryable());
        let source = std::error::Error::source(&err).map(|s| s.to_string());
        assert_eq!(source, Some(sqlx::Error::RowNotFound.to_string()));
    }

    #[test]
    fn every_variant_survives_the_wire() {
        let samples = vec![
            ClusterError::EntityNotRegistered {
                entity_type: EntityType::new("A"),
            },
            ClusterError::UnknownTag {
                entity_type: EntityType::new("A"),
                tag: "t".into(),
            },
            ClusterError::MalformedMessage {
                reason: "r".into(),
                source: Some(Box::new(RemoteErrorSource("s".into()))),
            },
            ClusterError::PersistenceError {
                reason: "r".into(),
                source: None,
            },
            ClusterError::MailboxFull {
                entity_type: EntityType::new("A"),
                entity_id: EntityId::new("1"),
                capacity: 3,
            },
            ClusterError::ShardNotOwned {
                shard_id: ShardId::new("g", 1),
            },
            ClusterError::RunnerUnavailable {
                address: RunnerAddress::new("h", 1),
                reason: "down".into(),
            },
            ClusterError::Timeout {
                operation: "op".into(),
                timeout: Duration::from_millis(5),
            },
            ClusterError::ShuttingDown,
            ClusterError::Interrupted {
                request_id: Snowflake(9),
            },
            ClusterError::NonDeterminism {
                execution_id: "e".into(),
                position: 3,
                recorded: "activity `a`".into(),
                requested: "activity `b`".into(),
            },
            ClusterError::Unsupported {
                operation: "o".into(),
                backend: "b".into(),
            },
            ClusterError::InvalidConfig {
                field: "f".into(),
                reason: "r".into(),
            },
            ClusterError::InvalidCronExpression {
                expression: "x".into(),
                reason: "r".into(),
            },
            ClusterError::ActivityFailed {
                execution_id: "e".into(),
                activity: "a".into(),
                attempts: 4,
                message: "m".into(),
            },
            ClusterError::handler("boom"),
            ClusterError::WorkflowCancelled {
                execution_id: "e".into(),
            },
            ClusterError::WorkflowParked {
                execution_id: "e".into(),
                attempts: 3,
                last_error: "panicked".into(),
            },
            ClusterError::WorkflowNotFound {
                workflow: "W".into(),
                execution_id: "e".into(),
            },
            ClusterError::WorkflowNotParked {
                execution_id: "e".into(),
                status: "running".into(),
            },
            ClusterError::ExecutionIdTaken {
                execution_id: "order-1".into(),
                workflow: "Refund".into(),
                taken_by: "Order".into(),
            },
        ];
        for err in samples {
            let wire = err.to_wire();
            let bytes = rmp_serde::to_vec_named(&wire).unwrap();
            let decoded: WireError = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(decoded, wire);
            let rebuilt = ClusterError::from(decoded);
            assert_eq!(rebuilt.to_string(), err.to_string());
        }
    }
}
