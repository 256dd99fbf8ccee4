//! [`IntoSharding`]: lets `register(sharding.clone())` take an `Arc` of any sharding.

use std::sync::Arc;

use crate::Sharding;

/// Anything that can become an `Arc<dyn Sharding>`: `Arc<ShardingImpl>`, `Arc<dyn Sharding>`.
pub trait IntoSharding {
    /// Converts.
    fn into_sharding(self) -> Arc<dyn Sharding>;
}

impl<T: Sharding> IntoSharding for Arc<T> {
    fn into_sharding(self) -> Arc<dyn Sharding> {
        self
    }
}

impl IntoSharding for Arc<dyn Sharding> {
    fn into_sharding(self) -> Arc<dyn Sharding> {
        self
    }
}

impl<T: Sharding> IntoSharding for &Arc<T> {
    fn into_sharding(self) -> Arc<dyn Sharding> {
        self.clone()
    }
}

impl IntoSharding for &Arc<dyn Sharding> {
    fn into_sharding(self) -> Arc<dyn Sharding> {
        self.clone()
    }
}
