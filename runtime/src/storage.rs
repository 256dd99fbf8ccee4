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
//! The etcd runner storage (`etcd_runner`) arrives with its issue behind the `etcd` feature.

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
    pub use crate::sql_activity_tx::PostgresActivityTx;
    #[cfg(feature = "sqlite")]
    pub use crate::sql_activity_tx::SqliteActivityTx;
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
