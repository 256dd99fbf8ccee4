//! Inspecting workflow state: executions with their status, their journals and their
//! durable timers.

use cruster_types::ClusterError;
use cruster_workflow_storage::{DurableTimer, ExecutionFilter, ExecutionRecord, JournalEntry};

use super::context::sleep_timer_key;

use crate::sharding_impl::ShardingImpl;

/// `Unsupported` for `operation` on a runner built without `part` (its workflow engine,
/// its workflow storage).
pub(crate) fn missing_part(operation: &str, part: &str) -> ClusterError {
    ClusterError::Unsupported {
        operation: operation.into(),
        backend: format!("this runner, which has no {part}"),
    }
}

fn unsupported(part: &str) -> ClusterError {
    missing_part("inspecting workflows", part)
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

/// The most sleeps of one execution [`workflow_timers`] reads.
const TIMERS_AT_MOST: u32 = 10_000;

/// The durable timers of an execution's sleeps, in the order its code reached them (fired
/// ones with `completed` set).
///
/// # Errors
/// `Unsupported` without a workflow engine; storage errors.
pub async fn workflow_timers(
    sharding: &ShardingImpl,
    execution_id: &str,
) -> Result<Vec<DurableTimer>, ClusterError> {
    let engine = sharding
        .workflow_engine()
        .ok_or_else(|| unsupported("workflow engine"))?;
    let mut timers = Vec::new();
    for n in 0..TIMERS_AT_MOST {
        // Sleeps are numbered from 0 in the order the code reaches them: the first missing
        // number is past the last sleep reached so far.
        match engine.timer(execution_id, &sleep_timer_key(n)).await? {
            Some(timer) => timers.push(timer),
            None => break,
        }
    }
    Ok(timers)
}
