//! Persisted messages: `GET /api/messages` (counts per shard and entity type),
//! `GET /api/dead-letters`, and the actions retry and purge, for one dead letter or all.
//!
//! Request ids are JSON strings (snowflakes do not fit a JavaScript number). Each action is
//! a `MessageStorage` call (`retry_dead_letters`, `purge_dead_letters`), so repeating it
//! changes nothing: retrying a request that is no longer dead answers `"retried": false`
//! with its state; an id that no request has is a 404.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use cruster_message_storage::MessageStorage;
use cruster_types::Snowflake;
use serde_json::{json, Value};

use crate::admin::api_error::ApiError;
use crate::admin::auth::check_actions;
use crate::admin::json::{instant, ok};
use crate::admin::query::QueryParams;
use crate::admin::router::AdminState;

/// The most dead letters one "all" action takes (it reports how many it did).
const ALL_AT_ONCE: usize = 10_000;
/// Dead letters per storage call of an "all" action.
const PAGE: usize = 500;

fn storage(state: &AdminState) -> Result<&Arc<dyn MessageStorage>, ApiError> {
    state.sharding.message_storage().ok_or_else(|| {
        ApiError::from(cruster_types::ClusterError::Unsupported {
            operation: "persisted messages".into(),
            backend: "this runner, which has no message storage".into(),
        })
    })
}

fn parse_id(text: &str) -> Result<Snowflake, ApiError> {
    text.parse::<i64>().map(Snowflake).map_err(|_| {
        ApiError::bad_request(format!(
            "`{text}` is not a request id (a whole number, as listed by /api/dead-letters)"
        ))
    })
}

pub(crate) async fn message_counts(
    State(state): State<Arc<AdminState>>,
) -> Result<Response, ApiError> {
    let counts = storage(&state)?.message_counts().await?;
    let mut by_type: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut total = (0, 0, 0);
    let rows: Vec<Value> = counts
        .iter()
        .map(|c| {
            let entry = by_type.entry(c.entity_type.to_string()).or_default();
            for (sum, n) in [
                (&mut entry.0, c.pending),
                (&mut entry.1, c.retrying),
                (&mut entry.2, c.dead_lettered),
            ] {
                *sum += n;
            }
            total.0 += c.pending;
            total.1 += c.retrying;
            total.2 += c.dead_lettered;
            json!({
                "shard": c.shard_id.to_string(),
                "entity_type": c.entity_type.as_str(),
                "pending": c.pending,
                "retrying": c.retrying,
                "dead_lettered": c.dead_lettered,
            })
        })
        .collect();
    let types: Vec<Value> = by_type
        .into_iter()
        .map(|(entity_type, (pending, retrying, dead))| {
            json!({
                "entity_type": entity_type,
                "pending": pending,
                "retrying": retrying,
                "dead_lettered": dead,
            })
        })
        .collect();
    Ok(ok(&json!({
        "total": { "pending": total.0, "retrying": total.1, "dead_lettered": total.2 },
        "by_entity_type": types,
        "by_shard": rows,
    })))
}

pub(crate) async fn list(
    State(state): State<Arc<AdminState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let limit = params.count("limit", 100, ALL_AT_ONCE)?;
    let letters = storage(&state)?.dead_letters(limit).await?;
    let letters: Vec<Value> = letters
        .iter()
        .map(|d| {
            let e = &d.envelope;
            json!({
                "request_id": e.request_id.to_string(),
                "entity_type": e.address.entity_type.as_str(),
                "entity_id": e.address.entity_id.as_str(),
                "shard": e.address.shard_id.to_string(),
                "tag": e.tag,
                "attempts": d.attempts,
                "last_error": d.reason,
                "dead_lettered_at": instant(d.dead_lettered_at),
            })
        })
        .collect();
    Ok(ok(&json!({ "dead_letters": letters })))
}

/// The state a request that an action did not change is in, or 404 when none is stored.
async fn state_of(storage: &Arc<dyn MessageStorage>, id: Snowflake) -> Result<Value, ApiError> {
    match storage.request(id).await? {
        None => Err(ApiError::not_found(format!(
            "no request {id} is stored (purged, or never persisted); list dead letters with \
             GET /api/dead-letters"
        ))),
        Some(request) if request.dead_lettered => Ok(json!("dead_lettered")),
        Some(request) if request.processed => Ok(json!("processed")),
        Some(_) => Ok(json!("pending")),
    }
}

pub(crate) async fn retry_one(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_actions(&state)?;
    let id = parse_id(&id)?;
    let storage = storage(&state)?;
    let retried = storage.retry_dead_letters(&[id]).await?;
    let now = state_of(storage, id).await?;
    if !retried.is_empty() {
        tracing::info!(request_id = %id, "dead letter taken back by an operator");
        state.sharding.poll_storage_now();
    }
    Ok(ok(&json!({
        "request_id": id.to_string(),
        "retried": !retried.is_empty(),
        "state": now,
    })))
}

pub(crate) async fn purge_one(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_actions(&state)?;
    let id = parse_id(&id)?;
    let storage = storage(&state)?;
    let purged = storage.purge_dead_letters(&[id]).await?;
    if purged.is_empty() {
        // Not deleted: say why (unknown → 404, else its state).
        let now = state_of(storage, id).await?;
        return Ok(ok(&json!({
            "request_id": id.to_string(),
            "purged": false,
            "state": now,
        })));
    }
    tracing::info!(request_id = %id, "dead letter purged by an operator");
    Ok(ok(&json!({ "request_id": id.to_string(), "purged": true })))
}

/// Applies `action` to every dead letter listed now (at most [`ALL_AT_ONCE`]), a page at a
/// time; answers how many it changed.
async fn for_all_dead_letters<'a, F, Fut>(
    storage: &'a Arc<dyn MessageStorage>,
    action: F,
) -> Result<usize, ApiError>
where
    F: Fn(&'a Arc<dyn MessageStorage>, Vec<Snowflake>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Snowflake>, cruster_types::ClusterError>>,
{
    let ids: Vec<Snowflake> = storage
        .dead_letters(ALL_AT_ONCE)
        .await?
        .into_iter()
        .map(|d| d.envelope.request_id)
        .collect();
    let mut changed = 0;
    for page in ids.chunks(PAGE) {
        changed += action(storage, page.to_vec()).await?.len();
    }
    Ok(changed)
}

pub(crate) async fn retry_all(State(state): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    check_actions(&state)?;
    let storage = storage(&state)?;
    let retried =
        for_all_dead_letters(
            storage,
            |s, ids| async move { s.retry_dead_letters(&ids).await },
        )
        .await?;
    if retried > 0 {
        tracing::info!(count = retried, "dead letters taken back by an operator");
        state.sharding.poll_storage_now();
    }
    Ok(ok(&json!({ "retried": retried })))
}

pub(crate) async fn purge_all(State(state): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    check_actions(&state)?;
    let storage = storage(&state)?;
    let purged = for_all_dead_letters(
        storage,
        |s, ids| async move { s.purge_dead_letters(&ids).await },
    )
    .await?;
    if purged > 0 {
        tracing::info!(count = purged, "dead letters purged by an operator");
    }
    Ok(ok(&json!({ "purged": purged })))
}
