//! Who runs what: the runner facade ([`sharding_impl::ShardingImpl`]) and its builder, the
//! shard table, the assignment strategy, and membership with its shard locks.

pub mod builder;
pub mod sharding_impl;

pub(crate) mod assignment;
pub(crate) mod membership;
pub(crate) mod runner_directory;
pub(crate) mod shard_fences;
pub(crate) mod shard_leases;
pub(crate) mod shard_moves;
pub(crate) mod shard_table;
