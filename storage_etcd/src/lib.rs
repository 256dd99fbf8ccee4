//! etcd implementation of cruster's [`RunnerStorage`] and a storage-based [`RunnerHealth`]:
//! runners registered under leases, shard locks as leased keys, membership watches.
//!
//! ```no_run
//! # async fn start() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use cruster_storage_etcd::EtcdRunnerStorage;
//!
//! let client = etcd_client::Client::connect(["http://127.0.0.1:2379"], None).await?;
//! let runner_storage = Arc::new(EtcdRunnerStorage::new(client, "/my-cluster/", 30));
//! # let _ = runner_storage;
//! # Ok(())
//! # }
//! ```
//!
//! # Keys
//!
//! Everything lives under the key prefix given at construction (`/my-cluster/` above):
//!
//! | key | value | bound to |
//! |---|---|---|
//! | `runners/{host}:{port}` | `machine_id={id};weight={w}` | the runner's lease |
//! | `machine-ids/{id:04}` | the runner's address | the runner's lease |
//! | `shards/{group}:{number}` | the holder's address | the holder's lease |
//!
//! # Leases and TTLs
//!
//! * [`RunnerStorage::register`] grants a lease and claims, in one transaction, a free
//!   machine id key and the runner key, both bound to it. [`RunnerStorage::keep_alive`]
//!   renews that lease (one keep-alive round trip) and answers `false` once etcd no longer
//!   knows it, so the runtime registers again. [`RunnerStorage::unregister`] revokes it,
//!   which deletes every key bound to it at once.
//! * The lease TTL is the one given at construction, unless the port asks for a longer one.
//!   etcd may raise it further (its minimum is about two seconds);
//!   [`RunnerStorage::granted_lock_ttl`] answers with what etcd granted.
//! * A shard lock asked for with the registration's TTL (what the runtime does) is bound
//!   to the runner's lease: one keep-alive renews the runner and all its locks, and a
//!   runner whose lease lapses loses its locks together with its registration.
//!   [`RunnerStorage::refresh_shards`] renews that lease (proving it is still alive) and
//!   answers with the shards whose key still names the runner.
//! * A lock asked for with another TTL (the conformance suite mixes short and long ones)
//!   gets a lease of its own for that call; a refresh moves the refreshed keys to a fresh
//!   lease, so a lock nobody refreshes expires on its own.
//! * Locks are taken and refreshed with compare-and-swap transactions (the key is absent,
//!   or its value is already the caller's address), and released by deleting only keys
//!   whose value is the caller's address. Concurrent acquisitions have one winner: etcd
//!   serialises transactions.
//!
//! # Membership watch
//!
//! [`RunnerStorage::watch_runners`] lists the runners, then follows the `runners/` keys
//! from the listed revision, yielding a new list after each event that changes it. When
//! the watch stream drops it resumes from the last revision it applied; when that
//! revision was compacted meanwhile it lists again. A key that does not decode is logged
//! (`tracing::warn!`) and skipped.
//!
//! # Faults
//!
//! Every etcd call is bounded by [`EtcdRunnerStorage::with_operation_timeout`] (5 s by
//! default): a hanging etcd gives `ClusterError::Timeout`, an etcd that answers with an
//! error gives `ClusterError::PersistenceError`. [`EtcdRunnerStorage::connect`] checks
//! that the endpoints answer and names them when they do not.
//!
//! [`RunnerStorage`]: cruster_runner_storage::RunnerStorage
//! [`RunnerHealth`]: cruster_runner_storage::RunnerHealth
//! [`RunnerStorage::register`]: cruster_runner_storage::RunnerStorage::register
//! [`RunnerStorage::keep_alive`]: cruster_runner_storage::RunnerStorage::keep_alive
//! [`RunnerStorage::unregister`]: cruster_runner_storage::RunnerStorage::unregister
//! [`RunnerStorage::refresh_shards`]: cruster_runner_storage::RunnerStorage::refresh_shards
//! [`RunnerStorage::watch_runners`]: cruster_runner_storage::RunnerStorage::watch_runners
//! [`RunnerStorage::granted_lock_ttl`]: cruster_runner_storage::RunnerStorage::granted_lock_ttl
#![deny(missing_docs)]

mod calls;
mod config;
mod keys;
mod membership_watch;
mod registration;
mod runner_storage;
mod shard_locks;

pub use config::{EtcdRunnerStorage, DEFAULT_OPERATION_TIMEOUT};
