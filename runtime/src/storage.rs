//! Storage backends, by module path of the user contract.
//!
//! * [`memory`] (feature `memory`, default): every port in memory.
//! * [`sql_message`], [`sql_workflow`], [`sql_workflow_engine`] (features `postgres` and/or
//!   `sqlite`): message storage, workflow journal and workflow engine in PostgreSQL or
//!   SQLite, from the `cruster-storage-sql` crate. All three may share one pool; run
//!   `migrate()` on one of them before first use (`SingleRunner::builder().postgres(pool)`
//!   does all of it for a single node).
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn run(pool: cruster::sqlx::PgPool) -> Result<(), cruster::ClusterError> {
//! use std::sync::Arc;
//! use cruster::storage::sql_message::SqlMessageStorage;
//! use cruster::storage::sql_workflow::SqlWorkflowStorage;
//! use cruster::storage::sql_workflow_engine::SqlWorkflowEngine;
//!
//! let messages = Arc::new(SqlMessageStorage::new(pool.clone()));
//! messages.migrate().await?;
//! let journal = Arc::new(SqlWorkflowStorage::new(pool.clone()));
//! let engine = Arc::new(SqlWorkflowEngine::new(pool));
//! # Ok(()) }
//! ```
//!
//! * [`sql_runner`] (features `postgres` / `sqlite`): the runner storage (registrations and
//!   shard locks as rows whose expiries the database clock keeps) on the same database, for
//!   a cluster on PostgreSQL alone. Give it a small pool of its own, so keep-alives and lock
//!   refreshes never wait behind application work for a connection:
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn run() -> Result<(), cruster::ClusterError> {
//! use std::sync::Arc;
//! use cruster::storage::sql_runner::SqlRunnerStorage;
//!
//! let url = "postgres://cruster:cruster@127.0.0.1:5432/cruster";
//! let runner_storage = SqlRunnerStorage::connect_dedicated(url).await?; // 4 connections
//! runner_storage.migrate().await?;
//! let runner_storage = Arc::new(runner_storage); // for `.runner_storage(…)` of the builder
//! # Ok(()) }
//! ```
//!
//! * [`etcd_runner`] (feature `etcd`): the runner storage on etcd (runners under leases,
//!   shard locks, membership watches), from the `cruster-storage-etcd` crate.
//!
//! ```no_run
//! # #[cfg(feature = "etcd")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use cruster::storage::etcd_runner::EtcdRunnerStorage;
//!
//! let etcd_client = cruster::etcd_client::Client::connect(["http://127.0.0.1:2379"], None).await?;
//! let runner_storage = Arc::new(EtcdRunnerStorage::new(etcd_client, "/my-cluster/", 30));
//! # Ok(()) }
//! ```

/// In-memory backends (feature `memory`).
#[cfg(feature = "memory")]
pub mod memory {
    pub use cruster_storage_memory::*;
}

/// SQL message storage (features `postgres` / `sqlite`).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod sql_message {
    pub use cruster_storage_sql::{SqlMessageStorage, SqlPool};
}

/// SQL workflow journal with database activity transactions (features `postgres` /
/// `sqlite`).
///
/// # `self.tx` on SQL
///
/// Inside an `#[activity]`, SQL written through `self.tx` runs in the database transaction
/// that also inserts the activity's journal entry: both commit, or neither does. sqlx ties
/// an executor to one database, so:
///
/// * **PostgreSQL** (feature `postgres`): `&self.tx` is an `sqlx::Executor` of
///   `sqlx::Postgres`: `query(..).execute(&self.tx).await?` (or `self.tx.postgres()`).
/// * **SQLite** (feature `sqlite`): `self.tx.sqlite()` is an `sqlx::Executor` of
///   `sqlx::Sqlite`: `query(..).execute(self.tx.sqlite()).await?`.
///
/// Each call locks the transaction for its duration; `fetch`/`fetch_many` read their rows
/// to the end before returning the first one.
///
/// When the workflow storage is not a [`SqlWorkflowStorage`] of that database (memory, a
/// custom backend, the other SQL dialect) every call fails with
/// `sqlx::Error::Configuration` wrapping a `ClusterError::Unsupported` that says so, and
/// nothing is written; through `?` in an activity returning `Result<_, ClusterError>` that
/// becomes the `ClusterError::Unsupported` itself (not a retryable `PersistenceError`). A
/// `self.tx` kept past the end of its activity fails the same way (wrapping
/// `InvalidConfig`).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod sql_workflow {
    #[cfg(feature = "postgres")]
    pub use crate::workflow::sql_activity_tx::PostgresActivityTx;
    #[cfg(feature = "sqlite")]
    pub use crate::workflow::sql_activity_tx::SqliteActivityTx;
    #[cfg(feature = "postgres")]
    pub use cruster_storage_sql::postgres_transaction;
    #[cfg(feature = "sqlite")]
    pub use cruster_storage_sql::sqlite_transaction;
    pub use cruster_storage_sql::{SqlPool, SqlWorkflowStorage};
}

/// SQL workflow engine storage: executions, durable timers, deferred values (features
/// `postgres` / `sqlite`).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod sql_workflow_engine {
    pub use cruster_storage_sql::{SqlPool, SqlWorkflowEngine};
}

/// SQL runner storage: runner registrations and shard locks in PostgreSQL (a cluster with
/// no etcd) or SQLite (one host), with expiries kept by the database clock (features
/// `postgres` / `sqlite`).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod sql_runner {
    pub use cruster_storage_sql::{SqlPool, SqlRunnerStorage};
}

/// etcd runner storage (feature `etcd`): see the `cruster-storage-etcd` crate docs for the
/// key layout and how TTLs map onto leases.
#[cfg(feature = "etcd")]
pub mod etcd_runner {
    pub use cruster_storage_etcd::{EtcdRunnerStorage, DEFAULT_OPERATION_TIMEOUT};
}
