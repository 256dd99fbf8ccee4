//! [`router`]: the admin API's routes and their shared state.

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::admin::options::AdminOptions;
use crate::admin::{
    auth, cluster, console, dead_letters, entities, health, metrics_text, workflows,
};
use crate::sharding_impl::ShardingImpl;

/// What every handler reads.
pub(crate) struct AdminState {
    pub(crate) sharding: Arc<ShardingImpl>,
    pub(crate) options: AdminOptions,
}

/// The admin API of `sharding` as a router to mount (see the [module docs](crate::admin)
/// for the routes). Serve it with `axum::serve`, or use [`crate::admin::serve`].
///
/// ```
/// # async fn run() -> Result<(), cruster::ClusterError> {
/// use cruster::admin::{router, AdminOptions};
/// use cruster::single_runner::SingleRunner;
///
/// let runner = SingleRunner::builder().build().await?;
/// let app = router(runner.sharding().clone(), AdminOptions::default());
/// // axum::serve(listener, app) or merge it into the application's own router.
/// # drop(app);
/// # Ok(()) }
/// ```
pub fn router(sharding: Arc<ShardingImpl>, options: AdminOptions) -> Router {
    let state = Arc::new(AdminState { sharding, options });
    let protected = Router::new()
        .route("/metrics", get(metrics_text::metrics))
        .route("/health/ready", get(health::ready))
        .route("/health/live", get(health::live))
        .route("/api/cluster", get(cluster::cluster))
        .route("/api/entities", get(entities::entities))
        .route("/api/messages", get(dead_letters::message_counts))
        .route("/api/dead-letters", get(dead_letters::list))
        .route("/api/dead-letters/retry", post(dead_letters::retry_all))
        .route("/api/dead-letters/purge", post(dead_letters::purge_all))
        .route(
            "/api/dead-letters/{id}/retry",
            post(dead_letters::retry_one),
        )
        .route(
            "/api/dead-letters/{id}/purge",
            post(dead_letters::purge_one),
        )
        .route("/api/workflows", get(workflows::list))
        .route("/api/workflows/{id}", get(workflows::show))
        .route("/api/workflows/{id}/cancel", post(workflows::cancel))
        .route("/api/workflows/{id}/resume", post(workflows::resume))
        .fallback(console::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/", get(console::index))
        .route("/console.js", get(console::script))
        .route("/console.css", get(console::style))
        .merge(protected)
        .with_state(state)
}
