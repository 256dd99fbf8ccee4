//! `GET /api/workflows` (executions counted by workflow and status, and listed),
//! `GET /api/workflows/{id}` (one execution with its journal and timers), and the actions
//! `POST /api/workflows/{id}/cancel` and `POST /api/workflows/{id}/resume` (a parked one).
//!
//! Statuses are compared by `ExecutionStatus::name`, so statuses added to the workflow
//! engine later are listed and filtered without a change here.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use cruster_types::{ClusterError, ExitResult};
use cruster_workflow_storage::{ExecutionFilter, ExecutionRecord, ExecutionStatus};
use serde_json::{json, Value};

use crate::admin::api_error::ApiError;
use crate::admin::auth::check_actions;
use crate::admin::json::{instant, msgpack, ok};
use crate::admin::query::QueryParams;
use crate::admin::router::AdminState;

/// The most executions one listing reads to count them.
const COUNTED_AT_MOST: usize = 100_000;

fn exit(result: &ExitResult) -> Value {
    match result {
        ExitResult::Success(bytes) => json!({ "ok": msgpack(bytes) }),
        ExitResult::Failure(err) => {
            json!({ "error": ClusterError::from(err.clone()).to_string() })
        }
    }
}

fn status(status: &ExecutionStatus) -> Value {
    match status {
        ExecutionStatus::Suspended { until: Some(until) } => {
            json!({ "name": status.name(), "until": instant(*until) })
        }
        _ => json!({ "name": status.name() }),
    }
}

fn execution(record: &ExecutionRecord) -> Value {
    json!({
        "execution_id": record.execution_id,
        "workflow": record.workflow,
        "status": status(&record.status),
        "request": msgpack(&record.request),
        "result": record.result.as_ref().map(exit),
        "created_at": instant(record.created_at),
        "updated_at": instant(record.updated_at),
    })
}

pub(crate) async fn list(
    State(state): State<Arc<AdminState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let limit = params.count("limit", 100, 10_000)?;
    let wanted_status = params.get("status");
    let filter = ExecutionFilter {
        workflow: params.get("workflow").map(str::to_owned),
        status: None,
        limit: COUNTED_AT_MOST,
    };
    let mut records = crate::workflow::list_executions(&state.sharding, &filter).await?;
    let mut counts: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    for record in &records {
        *counts
            .entry((record.workflow.clone(), record.status.name()))
            .or_default() += 1;
    }
    records.retain(|r| wanted_status.is_none_or(|wanted| r.status.name() == wanted));
    records.sort_by(|a, b| {
        b.updated_at
            .cmp(&a.updated_at)
            .then_with(|| a.execution_id.cmp(&b.execution_id))
    });
    records.truncate(limit);
    let counts: Vec<Value> = counts
        .into_iter()
        .map(|((workflow, status), count)| {
            json!({ "workflow": workflow, "status": status, "count": count })
        })
        .collect();
    let executions: Vec<Value> = records.iter().map(execution).collect();
    Ok(ok(&json!({ "counts": counts, "executions": executions })))
}

pub(crate) async fn show(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let engine = state.sharding.workflow_engine().ok_or_else(|| {
        ApiError::from(crate::workflow::missing_part(
            "inspecting workflows",
            "workflow engine",
        ))
    })?;
    let Some(record) = engine.execution(&id).await? else {
        return Err(ApiError::not_found(format!(
            "no workflow execution `{id}`; list them with GET /api/workflows"
        )));
    };
    let journal: Vec<Value> = crate::workflow::workflow_journal(&state.sharding, &id)
        .await?
        .iter()
        .map(|entry| {
            json!({
                "activity": entry.key.name,
                "sequence": entry.key.sequence,
                "attempts": entry.attempts,
                "result": exit(&entry.result),
                "recorded_at": instant(entry.recorded_at),
            })
        })
        .collect();
    let timers: Vec<Value> = crate::workflow::workflow_timers(&state.sharding, &id)
        .await?
        .iter()
        .map(|timer| {
            json!({
                "timer": timer.timer_key,
                "fire_at": instant(timer.fire_at),
                "fired": timer.completed,
            })
        })
        .collect();
    let mut body = execution(&record);
    if let Value::Object(map) = &mut body {
        map.insert("journal".into(), Value::Array(journal));
        map.insert("timers".into(), Value::Array(timers));
    }
    Ok(ok(&body))
}

/// `POST /api/workflows/{id}/cancel`: the execution stops at its next suspension point.
/// Idempotent: a second cancel answers the first request's instant; a finished execution
/// is left as it is and says so.
pub(crate) async fn cancel(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_actions(&state)?;
    let outcome = crate::workflow::cancel_execution(&state.sharding, &id).await?;
    let body = match outcome {
        crate::workflow::CancelOutcome::Requested { requested_at } => json!({
            "execution_id": id,
            "cancelled": true,
            "requested_at": instant(requested_at),
        }),
        crate::workflow::CancelOutcome::AlreadyFinished { status: finished } => json!({
            "execution_id": id,
            "cancelled": false,
            "status": status(&finished),
        }),
    };
    Ok(ok(&body))
}

/// `POST /api/workflows/{id}/resume`: a parked execution runs again from its journal.
/// Resuming one that is not parked changes nothing and answers 409 with its status.
pub(crate) async fn resume(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_actions(&state)?;
    crate::workflow::resume_parked_execution(&state.sharding, &id).await?;
    Ok(ok(&json!({ "execution_id": id, "resumed": true })))
}
