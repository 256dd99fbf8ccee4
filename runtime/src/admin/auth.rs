//! The optional bearer token and the read-only switch.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::admin::api_error::ApiError;
use crate::admin::router::AdminState;

/// Lets a request through when no token is configured or it carries the token.
pub(crate) async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.options.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if !given.is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// Refuses an action when actions are off.
pub(crate) fn check_actions(state: &AdminState) -> Result<(), ApiError> {
    if state.options.actions {
        Ok(())
    } else {
        Err(ApiError::read_only())
    }
}

/// Compares without stopping at the first difference, so timing tells nothing about the
/// token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
