//! [`WorkflowDefinition`]: what the workflow macros generate for a workflow type.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cruster_sharding::{EntityClient, Sharding};
use cruster_types::{ClusterError, EntityType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::context::WorkflowContext;

/// A workflow type: its name, request and response types, how an execution id is derived
/// from a request, and its body.
pub trait WorkflowDefinition: Clone + Send + Sync + 'static {
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

    /// Runs the body for one execution.
    fn execute(
        &self,
        ctx: WorkflowContext,
        request: Self::Request,
    ) -> Pin<Box<dyn Future<Output = Result<Self::Response, ClusterError>> + Send>>;
}

/// A typed client that can be built over any `Sharding` (generated entity and workflow
/// clients implement it), so a workflow can call other entities and workflows through
/// `WorkflowContext::client`, with every call journaled.
pub trait ClientFromSharding: Sized {
    /// The entity type the client talks to.
    fn client_entity_type() -> EntityType;

    /// Builds the client.
    fn from_entity_client(client: EntityClient) -> Self;

    /// Builds the client over `sharding`.
    fn from_sharding(sharding: Arc<dyn Sharding>) -> Self {
        Self::from_entity_client(EntityClient::new(sharding, Self::client_entity_type()))
    }
}

/// What the hidden workflow entity answers to `execute` and `resume`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkflowReply {
    /// Finished; the encoded response.
    Completed(bytes::Bytes),
    /// Suspended on a durable timer; the client waits on the execution record.
    Suspended,
}
