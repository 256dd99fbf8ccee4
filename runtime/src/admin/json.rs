//! JSON responses, written with `serde_json` (the API needs no JSON extractor).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// `value` as a JSON response with `status`.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// `value` as a 200 JSON response.
pub(crate) fn ok(value: &Value) -> Response {
    json_response(StatusCode::OK, value)
}

/// An instant as RFC 3339 text with milliseconds.
pub(crate) fn instant(at: DateTime<Utc>) -> Value {
    Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// MessagePack bytes as JSON when they decode, else a note with their size, so a payload
/// of any type can be shown.
pub(crate) fn msgpack(bytes: &[u8]) -> Value {
    rmp_serde::from_slice::<Value>(bytes)
        .unwrap_or_else(|_| Value::String(format!("<{} bytes, not MessagePack>", bytes.len())))
}
