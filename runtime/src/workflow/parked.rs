//! Parked workflow executions — the dead letters of workflows: listing them, and resuming
//! one once its cause is fixed. The operator surface calls these.
//!
//! An execution is parked by its hidden entity after
//! `ShardingConfig::workflow_max_failed_attempts` runs in a row that made no progress; its
//! record keeps the attempts and the last error. Resuming clears the count and wakes the
//! execution, which replays its journal and goes on where it stopped.

use cruster_types::ClusterError;
use cruster_workflow_storage::{ExecutionFilter, ExecutionRecord, ExecutionStatus};

use super::inspect::missing_part;
use super::workflow_entity::{execution_address, send_resume};
use crate::sharding_impl::ShardingImpl;

fn no_engine() -> ClusterError {
    missing_part("parked workflow executions", "workflow engine storage")
}

/// Parked executions, oldest first: of `workflow` only when given, at most `limit` (0 = no
/// limit). Each record's `last_error` (and `result`) holds the error of its last attempt,
/// `attempts` how many runs in a row made no progress.
///
/// ```ignore
/// for parked in list_parked_executions(&sharding, Some("OrderWorkflow"), 100).await? {
///     println!("{}: {:?}", parked.execution_id, parked.last_error);
/// }
/// ```
///
/// # Errors
/// `Unsupported` without a workflow engine; storage errors.
pub async fn list_parked_executions(
    sharding: &ShardingImpl,
    workflow: Option<&str>,
    limit: usize,
) -> Result<Vec<ExecutionRecord>, ClusterError> {
    let engine = sharding.workflow_engine().ok_or_else(no_engine)?;
    engine
        .list_executions(&ExecutionFilter {
            workflow: workflow.map(str::to_owned),
            status: Some(ExecutionStatus::Parked.name()),
            limit,
        })
        .await
}

/// Resumes a parked execution (after deploying the fix of what parked it): its count of
/// attempts starts again from zero and it runs at once on the runner owning it, replaying
/// its journal. `join`/`poll` then give its outcome as usual.
///
/// # Errors
/// `WorkflowNotFound` for an unknown id; `WorkflowNotParked` when the execution is not
/// parked (nothing is changed); `Unsupported` without a workflow engine; storage errors.
pub async fn resume_parked_execution(
    sharding: &ShardingImpl,
    execution_id: &str,
) -> Result<(), ClusterError> {
    let engine = sharding.workflow_engine().ok_or_else(no_engine)?;
    let mut record =
        engine
            .execution(execution_id)
            .await?
            .ok_or_else(|| ClusterError::WorkflowNotFound {
                workflow: "any workflow".into(),
                execution_id: execution_id.to_string(),
            })?;
    if record.status != ExecutionStatus::Parked {
        return Err(ClusterError::WorkflowNotParked {
            execution_id: execution_id.to_string(),
            status: record.status.name().to_string(),
        });
    }
    record.status = ExecutionStatus::Running;
    record.result = None;
    record.attempts = 0;
    record.last_error = None;
    record.updated_at = sharding.clock().now();
    engine.upsert_execution(&record).await?;
    let address = execution_address(sharding, &record.workflow, execution_id);
    send_resume(sharding, address, None, None).await?;
    tracing::info!(execution_id, workflow = %record.workflow, "parked workflow execution resumed");
    Ok(())
}
