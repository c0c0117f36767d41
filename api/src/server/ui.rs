//! The dashboard at `/ui/`: a static page (HTML, CSS and plain JavaScript,
//! compiled into the binary; no CDN, no framework) that reads the API v1,
//! follows `/fleet/v1/events` and starts, stops and destroys units through
//! the same API. See `Documentation/observability.md`.

use axum::body::Body;
use axum::response::Response;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{HeaderValue, StatusCode};

use super::ApiError;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// Serves `/ui` (a redirect to `/ui/`) and the files under it.
pub(super) fn serve(path: &str) -> Result<Response, ApiError> {
    let (body, content_type) = match path {
        "/ui" => return Ok(redirect("/ui/")),
        "/ui/" | "/ui/index.html" => (INDEX_HTML, "text/html; charset=utf-8"),
        "/ui/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/ui/app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return Err(ApiError::empty(StatusCode::NOT_FOUND)),
    };
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The files change with the binary; a short cache keeps upgrades visible.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
    Ok(response)
}

fn redirect(to: &'static str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    response
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    response
}
