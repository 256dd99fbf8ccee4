//! Cancelling a workflow execution by id: what `WorkflowClient::cancel` does for its own
//! workflow, and what the operator surface does for any execution.
//!
//! Stores the cancellation request in the engine storage (kept by later upserts), then
//! sends the execution one wake-up message so a suspended execution (a long sleep, a retry
//! backoff, a parked one) sees it at once; a running one finds it at its next suspension
//! point.

use cruster_sharding::Sharding;
use cruster_types::ClusterError;
use cruster_workflow_storage::WorkflowEngine;

use super::cancellation::CancelOutcome;
use super::inspect::missing_part;
use super::workflow_entity::{execution_address, send_resume};
use crate::sharding_impl::ShardingImpl;

/// Cancels execution `execution_id`; when `workflow` is given the execution must be one of
/// that workflow.
pub(crate) async fn cancel_by_id(
    sharding: &dyn Sharding,
    engine: &dyn WorkflowEngine,
    workflow: Option<&str>,
    execution_id: &str,
) -> Result<CancelOutcome, ClusterError> {
    let not_found = || ClusterError::WorkflowNotFound {
        workflow: workflow.unwrap_or("any workflow").to_string(),
        execution_id: execution_id.to_string(),
    };
    let record = engine
        .execution(execution_id)
        .await?
        .ok_or_else(not_found)?;
    if workflow.is_some_and(|name| record.workflow != name) {
        return Err(not_found());
    }
    let record = engine
        .request_cancellation(execution_id, crate::sharding_impl::clock_of(sharding).now())
        .await?
        .ok_or_else(not_found)?;
    match record.cancel_requested_at {
        Some(requested_at) if !record.status.is_finished() => {
            // One wake-up per execution, however often cancel is called (its dedupe key).
            let address = execution_address(sharding, &record.workflow, execution_id);
            send_resume(sharding, address, None, Some("cancel".to_string())).await?;
            tracing::info!(
                execution_id,
                workflow = %record.workflow,
                "workflow cancellation requested"
            );
            Ok(CancelOutcome::Requested { requested_at })
        }
        _ => Ok(CancelOutcome::AlreadyFinished {
            status: record.status,
        }),
    }
}

/// Cancels any workflow execution by id (the operator surface's action; an application
/// holding a typed client calls `WorkflowClient::cancel`). The execution stops at its next
/// suspension point and records `Cancelled`; see `WorkflowClient::cancel` for the outcome.
///
/// # Errors
/// `WorkflowNotFound` for an unknown id; `Unsupported` without a workflow engine; storage
/// errors.
pub async fn cancel_execution(
    sharding: &ShardingImpl,
    execution_id: &str,
) -> Result<CancelOutcome, ClusterError> {
    let engine = sharding
        .workflow_engine()
        .ok_or_else(|| missing_part("cancelling workflow executions", "workflow engine storage"))?;
    cancel_by_id(sharding, engine.as_ref(), None, execution_id).await
}
