//! Cluster-wide singletons: a task that runs on exactly one runner (the owner of the
//! singleton's shard) and moves to a survivor when that runner goes away.
//!
//! ```no_run
//! use std::time::Duration;
//! use cruster::prelude::*;
//! use cruster::singleton::{register_singleton, SingletonContext};
//!
//! # async fn demo(runner: &SingleRunner) -> Result<(), ClusterError> {
//! register_singleton(runner.sharding().as_ref(), "leader-duties", |ctx: SingletonContext| async move {
//!     let cancel = ctx.cancellation(); // opt in to graceful shutdown
//!     loop {
//!         tokio::select! {
//!             _ = cancel.cancelled() => break,
//!             _ = tokio::time::sleep(Duration::from_secs(10)) => { /* duties */ }
//!         }
//!     }
//!     Ok(())
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! A singleton that returns `Err` (or panics) is restarted with exponential backoff
//! (`singleton_crash_backoff_base`). One that returns `Ok(())` has finished: it is not
//! restarted while its runner keeps its shard, and runs again only when the shard moves to
//! another runner (or comes back), which starts it afresh there.

use std::future::Future;
use std::sync::Arc;

use cruster_sharding::{Sharding, SingletonFn};
use cruster_types::ClusterError;

pub use cruster_sharding::SingletonContext;

fn boxed<F, Fut>(run: F) -> SingletonFn
where
    F: Fn(SingletonContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ClusterError>> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(run(ctx)))
}

/// Registers a singleton in the default shard group.
///
/// # Errors
/// `InvalidConfig` if a singleton of this name is already registered on this runner.
pub async fn register_singleton<S, F, Fut>(
    sharding: &S,
    name: impl Into<String>,
    run: F,
) -> Result<(), ClusterError>
where
    S: Sharding + ?Sized,
    F: Fn(SingletonContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ClusterError>> + Send + 'static,
{
    let name = name.into();
    sharding.register_singleton(&name, None, boxed(run)).await
}

/// Starts the builder of a singleton.
pub fn singleton<F, Fut>(name: impl Into<String>, run: F) -> SingletonBuilder
where
    F: Fn(SingletonContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ClusterError>> + Send + 'static,
{
    SingletonBuilder {
        name: name.into(),
        shard_group: None,
        run: boxed(run),
    }
}

/// Builder of a singleton (see [`singleton`]).
pub struct SingletonBuilder {
    name: String,
    shard_group: Option<String>,
    run: SingletonFn,
}

impl SingletonBuilder {
    /// Places the singleton in a shard group other than the default.
    pub fn shard_group(mut self, group: impl Into<String>) -> Self {
        self.shard_group = Some(group.into());
        self
    }

    /// Registers the singleton.
    ///
    /// # Errors
    /// `InvalidConfig` if a singleton of this name is already registered on this runner.
    pub async fn register<S: Sharding + ?Sized>(self, sharding: &S) -> Result<(), ClusterError> {
        sharding
            .register_singleton(&self.name, self.shard_group.as_deref(), self.run)
            .await
    }
}

pub(crate) mod supervisor;
