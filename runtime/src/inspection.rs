//! What a runner reports about itself to an operator: the runners it knows, who owns each
//! shard, the shards that moved lately, the load of its entities and whether its delivery
//! makes progress.
//!
//! Types only: [`crate::sharding_impl::ShardingImpl`] fills them (`runners`,
//! `shard_groups`, `recent_shard_moves`, `entity_load`, `delivery_progress`). Each is a
//! snapshot taken without holding a lock across an await; the admin API (feature `admin`)
//! serves them as JSON.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cruster_types::{EntityAddress, EntityType, RunnerAddress, ShardId};

/// A runner of the cluster, as this runner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerView {
    /// Where it is reached.
    pub address: RunnerAddress,
    /// Whether it is the runner answering.
    pub is_self: bool,
    /// Its relative capacity, as registered (this runner's configured weight when there is
    /// no runner storage).
    pub weight: u32,
    /// How long this runner has known it to be a member (for itself: since it started
    /// serving).
    pub known_for: Duration,
    /// The health check's answer; `None` when no health check is configured.
    pub healthy: Option<bool>,
}

/// Who owns each shard of one shard group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardGroupView {
    /// The shard group.
    pub group: String,
    /// The owner of shard `i` at index `i` by the current assignment (`None`: no runner).
    pub owners: Vec<Option<RunnerAddress>>,
    /// The shard numbers whose lock this runner holds now.
    pub held_here: Vec<u32>,
}

/// Which way a shard moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardMoveDirection {
    /// This runner took the shard's lock.
    Acquired,
    /// This runner drained the shard and gave its lock back.
    Released,
    /// This runner stopped serving the shard at once (its lock could not be renewed).
    Fenced,
}

impl ShardMoveDirection {
    /// `acquired`, `released` or `fenced` (the label of `cruster_shard_moves_total`).
    pub fn name(self) -> &'static str {
        match self {
            ShardMoveDirection::Acquired => "acquired",
            ShardMoveDirection::Released => "released",
            ShardMoveDirection::Fenced => "fenced",
        }
    }
}

/// One shard that moved to or from this runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMove {
    /// The shard.
    pub shard_id: ShardId,
    /// To or from this runner.
    pub direction: ShardMoveDirection,
    /// When.
    pub at: DateTime<Utc>,
}

/// The live instances of one entity type on this runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntityTypeLoad {
    /// The entity type.
    pub entity_type: EntityType,
    /// Live instances.
    pub active: usize,
    /// Requests queued or running in their mailboxes, together.
    pub mailbox_depth: usize,
}

/// One entity instance with work queued or running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusyEntity {
    /// The entity.
    pub address: EntityAddress,
    /// Requests queued or running.
    pub pending: usize,
}

/// The entities of this runner: per type, and the busiest instances.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntityLoad {
    /// One entry per registered entity type, by name.
    pub types: Vec<EntityTypeLoad>,
    /// The instances with the most requests queued or running, most first.
    pub busiest: Vec<BusyEntity>,
}

/// Whether this runner's delivery moves: how much work waits in its mailboxes and how long
/// no request finished while it waited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryProgress {
    /// Requests queued or running in this runner's mailboxes.
    pub pending_requests: usize,
    /// Zero when nothing is pending; otherwise the time since a request last finished on
    /// this runner, or since the oldest pending work arrived if that is later.
    pub waiting_without_progress: Duration,
}
