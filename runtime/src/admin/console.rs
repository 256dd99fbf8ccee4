//! The web console: one HTML page, a script and a style sheet, embedded in the binary
//! (no build step), which read the JSON API and draw the cluster. Also the JSON 404 for
//! unknown paths.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::admin::api_error::ApiError;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

pub(crate) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no admin route `{}`; see the cruster::admin docs for the routes",
        uri.path()
    ))
}
