//! `GET /api/cluster`: runners, the shard table per group, recent shard moves.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};

use crate::admin::api_error::ApiError;
use crate::admin::json::{instant, ok};
use crate::admin::router::AdminState;

pub(crate) async fn cluster(State(state): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    let sharding = &state.sharding;
    let runners: Vec<Value> = sharding
        .runners()
        .await?
        .into_iter()
        .map(|runner| {
            json!({
                "address": runner.address.to_string(),
                "is_self": runner.is_self,
                "weight": runner.weight,
                "age_ms": runner.known_for.as_millis() as u64,
                "healthy": runner.healthy,
            })
        })
        .collect();
    let groups: Vec<Value> = sharding
        .shard_groups()
        .into_iter()
        .map(|group| {
            let mut per_runner: BTreeMap<String, usize> = BTreeMap::new();
            let owners: Vec<Value> = group
                .owners
                .iter()
                .map(|owner| match owner {
                    Some(address) => {
                        let address = address.to_string();
                        *per_runner.entry(address.clone()).or_default() += 1;
                        Value::String(address)
                    }
                    None => Value::Null,
                })
                .collect();
            json!({
                "group": group.group,
                "shards": owners.len(),
                "owners": owners,
                "shards_per_runner": per_runner,
                "held_here": group.held_here,
            })
        })
        .collect();
    let moves: Vec<Value> = sharding
        .recent_shard_moves()
        .into_iter()
        .rev()
        .map(|m| {
            json!({
                "shard": m.shard_id.to_string(),
                "direction": m.direction.name(),
                "at": instant(m.at),
            })
        })
        .collect();
    Ok(ok(&json!({
        "runner": sharding.runner_address().to_string(),
        "started": sharding.is_started(),
        "detached": sharding.is_detached(),
        "actions_allowed": state.options.actions,
        "runners": runners,
        "shard_groups": groups,
        "recent_shard_moves": moves,
        "singletons": sharding.running_singletons(),
    })))
}
