//! Inspecting workflow state: executions with their status, and their journals.

use cruster_types::ClusterError;
use cruster_workflow_storage::{ExecutionFilter, ExecutionRecord, JournalEntry};

use crate::sharding_impl::ShardingImpl;

fn unsupported(what: &str) -> ClusterError {
    ClusterError::Unsupported {
        operation: "inspecting workflows".into(),
        backend: format!("this runner, which has no {what}"),
    }
}

/// Executions matching `filter` (status: running, suspended until T, completed, failed).
///
/// # Errors
/// `Unsupported` without a workflow engine; storage errors.
pub async fn list_executions(
    sharding: &ShardingImpl,
    filter: &ExecutionFilter,
) -> Result<Vec<ExecutionRecord>, ClusterError> {
    let engine = sharding
        .workflow_engine()
        .ok_or_else(|| unsupported("workflow engine"))?;
    engine.list_executions(filter).await
}

/// The journal of an execution, by call sequence.
///
/// # Errors
/// `Unsupported` without workflow storage; storage errors.
pub async fn workflow_journal(
    sharding: &ShardingImpl,
    execution_id: &str,
) -> Result<Vec<JournalEntry>, ClusterError> {
    let storage = sharding
        .workflow_storage()
        .ok_or_else(|| unsupported("workflow storage"))?;
    storage.journal(execution_id).await
}
