//! `GET /metrics`: the runner's `ClusterMetrics` in the Prometheus text format.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::admin::api_error::ApiError;
use crate::admin::router::AdminState;

pub(crate) async fn metrics(State(state): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    let text = state.sharding.metrics().encode_text()?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response())
}
