//! Shared vocabulary of every cruster crate.
//!
//! This crate holds plain data: identifiers ([`EntityType`], [`EntityId`], [`ShardId`],
//! [`EntityAddress`], [`RunnerAddress`], [`MachineId`], [`SingletonAddress`]), the
//! [`Snowflake`] id and its [`SnowflakeGenerator`], the messages exchanged between
//! runners ([`EnvelopeRequest`], [`AckChunk`], [`Interrupt`], [`Reply`]), the one error
//! type every library crate returns ([`ClusterError`]), the stable shard hash
//! ([`shard_for_entity`]) and the MessagePack helpers of [`wire`].
//!
//! It depends on no runtime and no backend, so every other crate can share it.
#![deny(missing_docs)]

mod envelope;
mod error;
mod ids;
mod reply;
mod shard_hash;
mod snowflake;
mod store_location;
pub mod wire;

pub use envelope::{AckChunk, EnvelopeRequest, Interrupt, TraceContext};
pub use error::{BoxError, ClusterError, RemoteErrorSource, WireError};
pub use ids::{
    EntityAddress, EntityId, EntityType, MachineId, RunnerAddress, ShardId, SingletonAddress,
    DEFAULT_SHARD_GROUP,
};
pub use reply::{ExitResult, Reply, ReplyChunk, ReplyWithExit};
pub use shard_hash::{rendezvous_weight, shard_for_entity, stable_hash64};
pub use snowflake::{Snowflake, SnowflakeGenerator, SNOWFLAKE_EPOCH_MS};
pub use store_location::StoreLocation;

/// Convenience alias used across cruster.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;
