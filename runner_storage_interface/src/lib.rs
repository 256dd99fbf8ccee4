//! The `RunnerStorage` and `RunnerHealth` ports: who is in the cluster, and who holds
//! which shard.
//!
//! # Contract
//!
//! * **Registration.** [`RunnerStorage::register`] adds a runner under a time-to-live and
//!   gives it a [`MachineId`] unique among the registered runners. The registration lasts
//!   while [`RunnerStorage::keep_alive`] is called within the TTL; after that it expires and
//!   the runner disappears from [`RunnerStorage::runners`] and the watch.
//!   [`RunnerStorage::unregister`] removes it at once and releases its shard locks.
//! * **Membership watch.** [`RunnerStorage::watch_runners`] yields the full list of live
//!   runners first, then again after every join, leave or expiry (consecutive identical
//!   lists may be merged; a change is never missed for longer than the TTL).
//! * **Shard locks.** A shard lock has at most one holder. [`RunnerStorage::acquire_shards`]
//!   takes each free (or expired, or already own) lock for `ttl`, and returns the ones now
//!   held. Concurrent acquisitions of one shard have exactly one winner. A lock not
//!   refreshed within its TTL expires and may be taken by another runner.
//!   [`RunnerStorage::refresh_shards`] extends the locks still held and returns them (a lost
//!   lock is simply missing from the answer). [`RunnerStorage::release_shards`] frees locks
//!   held by the caller and ignores others.
//! * Everything may be called concurrently from many runners.
//!
//! [`RunnerHealth`] answers whether a runner is alive (a ping for a network transport,
//! or the storage registration for in-process clusters).
//!
//! Backends run [`conformance`] (feature `conformance`).
#![deny(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;

use std::time::Duration;

use async_trait::async_trait;
use cruster_types::{ClusterError, MachineId, RunnerAddress, ShardId};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

/// A registered runner.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Runner {
    /// Where the runner listens.
    pub address: RunnerAddress,
    /// Its machine id (assigned at registration).
    pub machine_id: MachineId,
    /// Relative capacity (1 = normal). Reserved for weighted assignment.
    pub weight: u32,
}

/// Membership and shard locks. See the crate docs for the contract.
#[async_trait]
pub trait RunnerStorage: Send + Sync + 'static {
    /// Registers (or re-registers) a runner for `ttl`; returns its machine id.
    ///
    /// # Errors
    /// `PersistenceError` when the storage is unreachable; `InvalidConfig` when no machine
    /// id is free (more than 1024 runners).
    async fn register(
        &self,
        address: &RunnerAddress,
        weight: u32,
        ttl: Duration,
    ) -> Result<MachineId, ClusterError>;

    /// Extends a registration. Returns `false` if it had expired (the caller re-registers).
    async fn keep_alive(
        &self,
        address: &RunnerAddress,
        ttl: Duration,
    ) -> Result<bool, ClusterError>;

    /// Removes a runner and releases its shard locks.
    async fn unregister(&self, address: &RunnerAddress) -> Result<(), ClusterError>;

    /// The live runners, sorted by address.
    async fn runners(&self) -> Result<Vec<Runner>, ClusterError>;

    /// A stream of live-runner lists: the current one first, then one after each change.
    async fn watch_runners(
        &self,
    ) -> Result<BoxStream<'static, Result<Vec<Runner>, ClusterError>>, ClusterError>;

    /// Takes the locks of `shards` that are free, expired or already ours, for `ttl`.
    /// Returns the shards whose lock `owner` now holds.
    async fn acquire_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError>;

    /// Extends the locks `owner` still holds among `shards`; returns those.
    async fn refresh_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError>;

    /// Releases the locks `owner` holds among `shards`.
    async fn release_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
    ) -> Result<(), ClusterError>;

    /// The current holder of a shard lock, if any (expired locks have none).
    async fn shard_owner(&self, shard: &ShardId) -> Result<Option<RunnerAddress>, ClusterError>;

    /// The time-to-live the backend really gives a shard lock when `requested` is asked for.
    /// A backend whose locks live as long as something else (etcd binds them to the runner's
    /// lease, whose TTL was fixed at construction) answers with that; the runtime fences
    /// its shards from the smaller of the two.
    fn granted_lock_ttl(&self, requested: Duration) -> Duration {
        requested
    }
}

/// Whether a runner is alive.
#[async_trait]
pub trait RunnerHealth: Send + Sync + 'static {
    /// `true` if the runner answers (or is registered, for storage-based health).
    async fn is_alive(&self, address: &RunnerAddress) -> bool;
}
