//! Durable workflows: orchestrations whose activities are journaled, so that a crash
//! anywhere resumes the execution where it stopped.
//!
//! A workflow is a hidden entity whose id is the execution id. Its `execute` request is a
//! persisted message (so a crashed runner's executions are redelivered to the new owner);
//! each activity call is recorded in the journal under `(execution id, activity name, call
//! sequence)` and a replay returns the recorded result without running the activity again.
//! `sleep` stores a durable timer and a persisted wake-up message due at the timer, then
//! suspends the execution (freeing its entity), which resumes by replay when the wake-up
//! is delivered, also after a restart.
//!
//! `WorkflowClient::cancel` records a cancellation request in the engine storage; the
//! execution stops at its next suspension point (an activity call, a sleep, the start of a
//! run) and records `Cancelled`. A run that makes no progress (a crash, a panic, a journal
//! entry that does not decode) is retried after a backoff; after
//! `ShardingConfig::workflow_max_failed_attempts` such runs in a row the execution is
//! parked with its last error until [`resume_parked_execution`].
//!
//! Usually written with `#[workflow]` / `#[workflow_impl]` / `#[activity]`; the generated
//! code implements [`WorkflowDefinition`] (on the workflow struct) and [`WorkflowBody`] (on
//! a hidden type holding the struct and its activity groups), and calls
//! [`WorkflowContext::activity`] for every activity.

mod activity_tx;
mod cancel_execution;
mod cancellation;
mod client;
mod client_from_sharding;
mod context;
pub(crate) mod deferred_step;
mod definition;
mod execution_id;
pub(crate) mod finished_execution;
mod inspect;
mod journaling_sharding;
mod parked;
mod result_push;
mod run_fault;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) mod sql_activity_tx;
mod workflow_entity;

pub use activity_tx::ActivityTx;
pub use cancel_execution::cancel_execution;
pub use cancellation::{CancelOutcome, OnCancel};
pub use client::{register_workflow, WorkflowClient};
pub use client_from_sharding::ClientFromSharding;
pub use context::{ActivityOptions, Backoff, WorkflowContext};
pub use cruster_workflow_storage::{
    ExecutionFilter, ExecutionRecord, ExecutionStatus, JournalEntry,
};
pub use definition::{WorkflowBody, WorkflowDefinition, WorkflowFuture};
pub use execution_id::{execution_id_from_key, execution_id_from_request};
#[cfg(feature = "admin")]
pub(crate) use inspect::missing_part;
pub use inspect::{list_executions, workflow_journal, workflow_timers};
pub use parked::{list_parked_executions, resume_parked_execution};
