//! # cruster
//!
//! Distributed, stateful entity systems with durable workflows. See the README for the
//! user guide; the main entry points are:
//!
//! * [`single_runner::SingleRunner`]: a one-node cluster (memory backends by default).
//! * [`sharding_impl::ShardingImpl`]: a runner of a multi-runner cluster.
//! * [`testing::MemoryCluster`]: several runners in one process, for tests.
//! * [`singleton`], [`cron`]: cluster-wide unique tasks and distributed cron.
//! * [`clock`]: where business time is read; [`clock::VirtualClock`] moves it in tests.
//! * [`prelude`]: what entity and workflow code needs, including the macros.
//! * `admin` (feature `admin`): the operator HTTP API, Prometheus metrics, health checks
//!   and web console; [`inspection`]: what a runner reports about itself.
#![deny(missing_docs)]

#[cfg(feature = "admin")]
pub mod admin;
pub mod clock;
pub mod config;
pub mod cron;
pub mod inspection;
pub mod metrics;
pub mod prelude;
pub mod retention;
pub mod singleton;
pub mod storage;
#[cfg(feature = "memory")]
pub mod testing;
pub mod transport;
pub mod workflow;

mod delivery;
mod entity;
mod runtime_core;
mod sharding;
#[cfg(feature = "memory")]
mod single_node;
mod trace_context;

pub use sharding::builder as sharding_builder;
pub use sharding::sharding_impl;
#[cfg(feature = "memory")]
pub use single_node::single_runner;

/// The `sqlx` crate (features `postgres` / `sqlite`), so SQL entities and activities need
/// no second dependency: `cruster::sqlx::query(..)`, `cruster::sqlx::PgPool`.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use sqlx;

/// The `etcd_client` crate (feature `etcd`), to build the client `EtcdRunnerStorage` takes.
#[cfg(feature = "etcd")]
pub use etcd_client;

/// The `tonic` crate (feature `grpc`), to serve `GrpcRunnerServer`: `cruster::tonic::transport::Server`.
#[cfg(feature = "grpc")]
pub use tonic;

#[doc(hidden)]
pub mod __private;

/// Identifiers, envelopes, replies and errors (the `cruster-types` crate).
pub mod types {
    pub use cruster_types::*;
}

pub use cruster_sharding::{
    Entity, EntityClient, EntityContext, EntityHandler, EntityOptions, IncomingRequest,
    IntoSharding, ShardAssignment, Sharding, SingletonContext,
};
pub use cruster_types::ClusterError;
pub use sharding::assignment::RendezvousAssignment;

/// The ports, for implementing a backend outside this workspace.
pub mod ports {
    pub use cruster_message_storage as message_storage;
    pub use cruster_runner_storage as runner_storage;
    pub use cruster_sharding as sharding;
    pub use cruster_transport as transport;
    pub use cruster_workflow_storage as workflow_storage;
}
