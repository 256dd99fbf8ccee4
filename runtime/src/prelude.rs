//! What entity, workflow and cluster code needs: `use cruster::prelude::*;`.

pub use crate::config::ShardingConfig;
pub use crate::metrics::ClusterMetrics;
pub use crate::sharding_impl::ShardingImpl;
#[cfg(feature = "memory")]
pub use crate::single_runner::SingleRunner;
pub use crate::singleton::{register_singleton, singleton, SingletonContext};
pub use cruster_macros::{
    activity, activity_group, activity_group_impl, entity, entity_impl, private, protected, rpc,
    rpc_group, rpc_group_impl, workflow, workflow_impl,
};
pub use cruster_sharding::{
    Entity, EntityClient, EntityContext, EntityHandler, EntityOptions, IncomingRequest,
    IntoSharding, Sharding,
};
pub use cruster_types::{ClusterError, EntityId, EntityType};
