//! [`ResultPush`]: tells the callers of a workflow execution that it stopped — at once on
//! this runner, and on the runner that made the `execute` request when that is another one.
//!
//! A caller of `execute` whose execution suspended waits on its own runner. When the
//! execution later stops (completed, failed, cancelled, parked) on the runner that runs
//! it, that runner wakes its local callers, and pushes the final answer over the transport
//! ([`Runners::push_reply`](cruster_transport::Runners::push_reply)) as a later reply to
//! the `execute` request, to the runner that made it (the request id's machine id). That
//! runner wakes the caller waiting under the request id, without reading storage.
//!
//! Which requests to answer is remembered in memory, for at most [`MAX_REMEMBERED`]
//! executions, from the moment an `execute` made elsewhere suspends until the execution
//! stops here. What is lost (this runner crashed or lost the shard, the bound was reached,
//! a duplicate `execute` whose caller waits under its own request id) is left to the
//! callers' fallback check. Never holds a lock across an await.

use std::sync::Arc;

use cruster_types::{wire, ExitResult, ReplyWithExit, Snowflake};
use cruster_workflow_storage::{ExecutionRecord, ExecutionStatus};
use dashmap::DashMap;

use super::definition::WorkflowReply;
use super::workflow_entity::parked_error;
use crate::runtime_core::RuntimeCore;

/// The most executions whose remote callers one runner remembers.
pub(crate) const MAX_REMEMBERED: usize = 100_000;

pub(crate) struct ResultPush {
    core: Arc<RuntimeCore>,
    /// Execution id → the `execute` requests made on other runners whose callers wait.
    remote_callers: DashMap<String, Vec<Snowflake>>,
}

impl ResultPush {
    pub(crate) fn new(core: Arc<RuntimeCore>) -> Self {
        ResultPush {
            core,
            remote_callers: DashMap::new(),
        }
    }

    /// Remembers that the caller of `execute` request `request_id` waits for execution
    /// `execution_id`, which just suspended, unless the request was made here (its caller
    /// is woken locally).
    pub(crate) fn suspended(&self, execution_id: &str, request_id: Snowflake) {
        if self.core.made_here(request_id) {
            return;
        }
        if let Some(mut callers) = self.remote_callers.get_mut(execution_id) {
            if !callers.contains(&request_id) {
                callers.push(request_id);
            }
            return;
        }
        if self.remote_callers.len() >= MAX_REMEMBERED {
            tracing::debug!(%execution_id, "too many suspended executions with remote callers; this one's caller is answered by its fallback check");
            return;
        }
        self.remote_callers
            .insert(execution_id.to_string(), vec![request_id]);
    }

    /// The execution stopped (it is finished or parked, as `record` says): wakes its
    /// callers here and pushes its answer to the runners of the remembered remote callers.
    pub(crate) fn stopped(&self, record: &ExecutionRecord) {
        self.core
            .execution_waiters
            .complete(&record.execution_id, record);
        let Some((_, callers)) = self.remote_callers.remove(&record.execution_id) else {
            return;
        };
        let answer = match final_reply(record).and_then(|reply| wire::encode(&reply)) {
            Ok(answer) => answer,
            Err(err) => {
                tracing::debug!(%err, execution_id = %record.execution_id, "cannot encode the answer to push; the callers are answered by their fallback check");
                return;
            }
        };
        let me = self.core.snowflakes.machine_id();
        for request_id in callers {
            let reply = ReplyWithExit {
                request_id,
                exit: ExitResult::Success(answer.clone()),
            };
            if let Some(push) = self.core.reply_push.push(&reply, me) {
                self.core.spawn(push);
            }
        }
    }
}

/// The answer to `execute` of an execution that stopped.
fn final_reply(record: &ExecutionRecord) -> Result<WorkflowReply, cruster_types::ClusterError> {
    Ok(match (&record.status, &record.result) {
        (ExecutionStatus::Completed, Some(ExitResult::Success(bytes))) => {
            WorkflowReply::Completed(bytes.clone())
        }
        (ExecutionStatus::Failed, Some(ExitResult::Failure(err))) => {
            WorkflowReply::Failed(err.clone())
        }
        (ExecutionStatus::Cancelled, _) => WorkflowReply::Cancelled,
        (ExecutionStatus::Parked, _) => WorkflowReply::Parked(parked_error(record).to_wire()),
        (status, _) => {
            return Err(cruster_types::ClusterError::handler(format!(
                "execution `{}` is {}, not stopped with an outcome",
                record.execution_id,
                status.name()
            )))
        }
    })
}
