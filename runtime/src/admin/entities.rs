//! `GET /api/entities`: live instances and mailbox depth per entity type on this runner,
//! and the busiest entities.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};

use crate::admin::json::ok;
use crate::admin::router::AdminState;

pub(crate) async fn entities(State(state): State<Arc<AdminState>>) -> Response {
    let load = state.sharding.entity_load(state.options.busiest);
    let types: Vec<Value> = load
        .types
        .iter()
        .map(|t| {
            json!({
                "entity_type": t.entity_type.as_str(),
                "active": t.active,
                "mailbox_depth": t.mailbox_depth,
            })
        })
        .collect();
    let busiest: Vec<Value> = load
        .busiest
        .iter()
        .map(|b| {
            json!({
                "entity_type": b.address.entity_type.as_str(),
                "entity_id": b.address.entity_id.as_str(),
                "shard": b.address.shard_id.to_string(),
                "pending": b.pending,
            })
        })
        .collect();
    ok(&json!({
        "runner": state.sharding.runner_address().to_string(),
        "entity_types": types,
        "busiest": busiest,
    }))
}
