//! [`ApiError`]: an HTTP status with a JSON `{"error": "..."}` body saying what to do.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cruster_types::ClusterError;

use crate::admin::json::json_response;

/// A refused or failed admin request.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub(crate) fn read_only() -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            message: "actions are disabled: this admin API is read-only \
                      (enable them with AdminOptions::allow_actions(true))"
                .into(),
        }
    }

    pub(crate) fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or wrong bearer token: send `Authorization: Bearer <token>`".into(),
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(err: ClusterError) -> Self {
        let status = match &err {
            ClusterError::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
            ClusterError::PersistenceError { .. } | ClusterError::Timeout { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ClusterError::WorkflowNotFound { .. } => StatusCode::NOT_FOUND,
            ClusterError::WorkflowNotParked { .. } => StatusCode::CONFLICT,
            ClusterError::ExecutionIdTaken { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: err.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &serde_json::json!({ "error": self.message }))
    }
}
