//! [`serve`]: the admin API on an address of its own, on a task that stops with the handle.

use std::net::SocketAddr;
use std::sync::Arc;

use cruster_types::ClusterError;
use tokio_util::sync::CancellationToken;

use crate::admin::options::AdminOptions;
use crate::admin::router::router;
use crate::sharding_impl::ShardingImpl;

/// A running admin server. Dropping it (or [`AdminServer::shutdown`]) stops it.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Binds `addr` (port 0 picks a free port) and serves the admin API of `sharding` on it.
///
/// # Errors
/// `InvalidConfig` when the address cannot be bound (in use, not local).
pub async fn serve(
    addr: SocketAddr,
    sharding: Arc<ShardingImpl>,
    options: AdminOptions,
) -> Result<AdminServer, ClusterError> {
    let listener =
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ClusterError::InvalidConfig {
                field: "admin address".into(),
                reason: format!("cannot listen on {addr}: {e} (pick a free port, or 0)"),
            })?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| ClusterError::InvalidConfig {
            field: "admin address".into(),
            reason: format!("cannot read the address bound for {addr}: {e}"),
        })?;
    let stop = CancellationToken::new();
    let app = router(sharding, options);
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::error!(%err, "the admin server stopped with an error");
        }
    });
    tracing::info!(%local_addr, "admin API serving");
    Ok(AdminServer {
        local_addr,
        stop,
        task: Some(task),
    })
}

impl AdminServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops taking connections and waits for the server task to end.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if let Err(err) = task.await {
                tracing::warn!(%err, "the admin server task ended abnormally");
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
