//! `GET /health/ready` and `GET /health/live`.
//!
//! Ready: the runner started, holds every shard the assignment gives it, and message
//! storage answers a read. Live: requests waiting in this runner's mailboxes saw a request
//! finish within `stall_timeout` (see `ShardingImpl::delivery_progress`), so a runner whose
//! handlers all hang, or whose delivery is wedged, is restarted instead of stalling silently.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use cruster_types::Snowflake;
use serde_json::json;

use crate::admin::json::json_response;
use crate::admin::router::AdminState;

fn status(healthy: bool) -> StatusCode {
    if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

pub(crate) async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    let sharding = &state.sharding;
    let (assigned, held) = sharding.assigned_and_held_shards();
    let (storage_ok, storage) = match sharding.message_storage() {
        Some(storage) => match storage.request(Snowflake(0)).await {
            Ok(_) => (true, "ok".to_owned()),
            Err(err) => (false, format!("failing: {err}")),
        },
        None => (true, "none".to_owned()),
    };
    let started = sharding.is_started();
    let ready = started && assigned > 0 && held == assigned && storage_ok;
    json_response(
        status(ready),
        &json!({
            "ready": ready,
            "started": started,
            "shards_assigned": assigned,
            "shards_held": held,
            "storage": storage,
        }),
    )
}

pub(crate) async fn live(State(state): State<Arc<AdminState>>) -> Response {
    let progress = state.sharding.delivery_progress();
    let limit = state.options.stall_timeout;
    let live = progress.waiting_without_progress <= limit;
    json_response(
        status(live),
        &json!({
            "live": live,
            "pending_requests": progress.pending_requests,
            "waiting_without_progress_ms": progress.waiting_without_progress.as_millis() as u64,
            "stall_timeout_ms": limit.as_millis() as u64,
        }),
    )
}
