//! [`WorkflowDefinition`] and [`WorkflowBody`]: what the workflow macros generate for a
//! workflow type.
//!
//! The two are separate so the typed client (`WorkflowClient<OrderWorkflow>`) only needs what
//! identifies the workflow (its name, request and response types, execution ids), while the
//! body registered on a runner may carry more than the workflow struct (for example the
//! activity groups it composes).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cruster_types::ClusterError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::context::WorkflowContext;

/// A workflow type: its name, request and response types, and how an execution id is
/// derived from a request. `#[workflow_impl]` implements it on the workflow struct.
///
/// ```
/// use cruster::workflow::{execution_id_from_key, WorkflowDefinition};
/// use cruster::ClusterError;
///
/// struct Greet;
///
/// impl WorkflowDefinition for Greet {
///     type Request = String;
///     type Response = String;
///     const NAME: &'static str = "Greet";
///
///     fn execution_id(request: &String) -> Result<String, ClusterError> {
///         Ok(execution_id_from_key(request, true))
///     }
/// }
/// assert_eq!(Greet::execution_id(&"a".into()).unwrap(), Greet::execution_id(&"a".into()).unwrap());
/// ```
pub trait WorkflowDefinition: Send + Sync + 'static {
    /// The request `execute` takes.
    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What `execute` returns.
    type Response: Serialize + DeserializeOwned + Send + 'static;

    /// The workflow's name (its hidden entity type).
    const NAME: &'static str;

    /// The execution id of a request (the `key` of `#[workflow_impl]`, hashed unless
    /// `hash = false`; without a key, derived from the serialized request).
    ///
    /// # Errors
    /// `MalformedMessage` if the request cannot be serialized.
    fn execution_id(request: &Self::Request) -> Result<String, ClusterError>;
}

/// The boxed future of a workflow body.
pub type WorkflowFuture<T> = Pin<Box<dyn Future<Output = Result<T, ClusterError>> + Send>>;

/// The code of a workflow, as registered on a runner with
/// [`register_workflow`](super::register_workflow): runs one execution in a
/// [`WorkflowContext`]. `#[workflow_impl]` implements it on a hidden type holding the
/// workflow struct and its activity groups; by hand, implement both traits on one type.
///
/// The body must be deterministic in the order of its activity calls: it is run again from
/// the start after a crash or a durable sleep, and journaled calls are matched by position.
pub trait WorkflowBody: Send + Sync + 'static {
    /// The workflow this body runs.
    type Workflow: WorkflowDefinition;

    /// Runs the body for one execution.
    fn execute(
        self: Arc<Self>,
        ctx: WorkflowContext,
        request: <Self::Workflow as WorkflowDefinition>::Request,
    ) -> WorkflowFuture<<Self::Workflow as WorkflowDefinition>::Response>;
}

/// `ExecutionIdTaken` when `record` belongs to a workflow other than `workflow` (two
/// workflows derived the same execution id).
pub(crate) fn id_taken(
    record: &cruster_workflow_storage::ExecutionRecord,
    workflow: &str,
) -> Option<cruster_types::ClusterError> {
    (record.workflow != workflow).then(|| cruster_types::ClusterError::ExecutionIdTaken {
        execution_id: record.execution_id.clone(),
        workflow: workflow.to_string(),
        taken_by: record.workflow.clone(),
    })
}

/// What the hidden workflow entity answers to `execute` and `resume`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkflowReply {
    /// Finished; the encoded response.
    Completed(bytes::Bytes),
    /// Suspended on a durable timer; the client waits on the execution record.
    Suspended,
    /// Failed with the workflow's own error. Answered as a reply, not as the handler's
    /// error: a recorded failure that happens to be a storage error (a constraint an
    /// activity's `self.tx` violated) is the workflow's answer, and must not be taken for a
    /// transient storage failure of the delivery and redelivered until dead-lettered.
    Failed(cruster_types::WireError),
    /// Cancelled (`WorkflowClient::cancel`): it stopped at a suspension point.
    Cancelled,
    /// Parked after too many runs without progress; the `WorkflowParked` error.
    Parked(cruster_types::WireError),
}
