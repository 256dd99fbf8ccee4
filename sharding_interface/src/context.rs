//! [`EntityContext`]: what an entity instance is given when it is spawned.

use std::sync::Arc;

use cruster_types::{EntityAddress, EntityType, RunnerAddress};

use crate::client::EntityClient;
use crate::Sharding;

/// The context of one entity instance.
#[derive(Clone)]
pub struct EntityContext {
    /// The instance's address.
    pub address: EntityAddress,
    /// The runner it lives on.
    pub runner_address: RunnerAddress,
    /// The cluster, to call other entities.
    pub sharding: Arc<dyn Sharding>,
}

impl EntityContext {
    /// A client for another entity type (entity-to-entity calls reach `#[protected]` RPCs).
    pub fn client(&self, entity_type: impl Into<EntityType>) -> EntityClient {
        EntityClient::new(self.sharding.clone(), entity_type.into())
    }
}

impl std::fmt::Debug for EntityContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityContext")
            .field("address", &self.address)
            .field("runner_address", &self.runner_address)
            .finish()
    }
}
