//! Re-exports used by code that the cruster macros generate. Not a public API.
pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use cruster_sharding as sharding;
pub use cruster_types as types;
pub use serde;
