//! [`ClientFromSharding`]: how a typed client is built over any `Sharding`, so the same
//! generated client works from application code and, journaled, from inside a workflow.

use std::sync::Arc;

use cruster_sharding::{EntityClient, Sharding};
use cruster_types::EntityType;

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
