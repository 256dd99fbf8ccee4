//! [`SingletonContext`]: what a singleton is handed when it starts.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cruster_types::ClusterError;
use tokio_util::sync::CancellationToken;

use crate::Sharding;

/// A singleton's body: called each time the singleton (re)starts on a runner.
pub type SingletonFn = Arc<
    dyn Fn(SingletonContext) -> Pin<Box<dyn Future<Output = Result<(), ClusterError>> + Send>>
        + Send
        + Sync,
>;

/// The context of a running singleton.
///
/// A singleton that calls [`SingletonContext::cancellation`] is trusted to stop by itself
/// when the token is cancelled (shutdown, or its shard moving away), within the runner's
/// shutdown deadline; one that never calls it is cancelled forcibly (its future dropped).
#[derive(Clone)]
pub struct SingletonContext {
    name: Arc<str>,
    token: CancellationToken,
    graceful: Arc<AtomicBool>,
    sharding: Arc<dyn Sharding>,
}

impl SingletonContext {
    /// A context (made by the runtime).
    pub fn new(
        name: Arc<str>,
        token: CancellationToken,
        graceful: Arc<AtomicBool>,
        sharding: Arc<dyn Sharding>,
    ) -> Self {
        SingletonContext {
            name,
            token,
            graceful,
            sharding,
        }
    }

    /// The singleton's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opts in to graceful shutdown: the returned token is cancelled when the singleton must
    /// stop, and the singleton is then given time to return.
    pub fn cancellation(&self) -> CancellationToken {
        self.graceful.store(true, Ordering::Release);
        self.token.clone()
    }

    /// The cluster, to call entities.
    pub fn sharding(&self) -> &Arc<dyn Sharding> {
        &self.sharding
    }
}

impl std::fmt::Debug for SingletonContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingletonContext")
            .field("name", &self.name)
            .finish()
    }
}
