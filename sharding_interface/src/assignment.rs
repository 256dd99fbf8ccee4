//! The shard-assignment strategy: which live runner owns a shard.

use cruster_types::{RunnerAddress, ShardId};

/// Maps a shard to its owner among the live runners.
///
/// Every runner must compute the same owner from the same (sorted) runner list, so an
/// implementation must be a pure function of its arguments.
pub trait ShardAssignment: Send + Sync + 'static {
    /// The owner of `shard` among `runners` (sorted, non-empty), or `None` if there are none.
    fn owner<'a>(&self, shard: &ShardId, runners: &'a [RunnerAddress])
        -> Option<&'a RunnerAddress>;
}
