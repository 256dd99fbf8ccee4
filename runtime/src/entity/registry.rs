//! [`EntityRegistry`]: the entity types registered on one runner, by type name.
//!
//! Read on every delivery (a lock-free snapshot), written only when an entity type is
//! registered (copy-on-write under a small mutex). Sits below everything that routes or
//! delivers, so the delivery, poll and membership services share it without importing
//! each other. Never holds a lock across an await.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cruster_types::{ClusterError, EntityType};
use parking_lot::Mutex;

use crate::entity::entity_manager::EntityManager;

/// The registered entity types of a runner.
#[derive(Default)]
pub(crate) struct EntityRegistry {
    managers: ArcSwap<HashMap<EntityType, Arc<EntityManager>>>,
    write: Mutex<()>,
}

impl EntityRegistry {
    /// The manager of an entity type, if registered.
    pub(crate) fn get(&self, entity_type: &EntityType) -> Option<Arc<EntityManager>> {
        self.managers.load().get(entity_type).cloned()
    }

    /// The manager of an entity type, or `EntityNotRegistered` naming it.
    pub(crate) fn require(
        &self,
        entity_type: &EntityType,
    ) -> Result<Arc<EntityManager>, ClusterError> {
        self.get(entity_type)
            .ok_or_else(|| ClusterError::EntityNotRegistered {
                entity_type: entity_type.clone(),
            })
    }

    /// Every registered manager.
    pub(crate) fn all(&self) -> Vec<Arc<EntityManager>> {
        self.managers.load().values().cloned().collect()
    }

    /// Adds an entity type; `InvalidConfig` if the name is taken.
    pub(crate) fn insert(&self, manager: Arc<EntityManager>) -> Result<(), ClusterError> {
        let _guard = self.write.lock();
        let current = self.managers.load();
        if current.contains_key(manager.entity_type()) {
            return Err(ClusterError::InvalidConfig {
                field: "entity type".into(),
                reason: format!(
                    "entity type `{}` is already registered on this runner",
                    manager.entity_type()
                ),
            });
        }
        let mut next = (**current).clone();
        next.insert(manager.entity_type().clone(), manager);
        self.managers.store(Arc::new(next));
        Ok(())
    }
}
