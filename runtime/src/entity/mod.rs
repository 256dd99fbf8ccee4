//! Entities on one runner: the registry of entity types, one manager per type (activation,
//! mailboxes, concurrency, eviction, draining) and what sits in a mailbox.

pub(crate) mod entity_manager;
pub(crate) mod idle_queue;
pub(crate) mod instance;
pub(crate) mod mailbox;
pub(crate) mod pending_count;
pub(crate) mod registry;
