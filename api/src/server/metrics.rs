//! `GET /metrics` and the API's own request metrics.
//!
//! Requests are counted by route *template* (`/fleet/v1/units/{name}`), never
//! by raw path: a label per unit name would grow without bound.

use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, StatusCode};

/// Every metric of this process in the Prometheus text format.
pub(super) fn response() -> Response {
    let mut response = Response::new(Body::from(fleet_metrics::render()));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(fleet_metrics::CONTENT_TYPE),
    );
    response
}

/// Records one served request.
pub(super) fn record(method: &Method, path: &str, status: StatusCode, started: Instant) {
    fleet_metrics::get().api.request(
        route_template(path),
        method_label(method),
        status.as_u16(),
        started,
    );
}

/// The standard methods by name; anything else is `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The route template a raw request path falls under. Both API prefixes
/// count as `/fleet/v1`; paths that match nothing are `other`.
pub(super) fn route_template(path: &str) -> &'static str {
    if path == "/metrics" {
        return "/metrics";
    }
    if path == "/ui" || path.starts_with("/ui/") {
        return "/ui/";
    }
    if path == super::BATCH_UNITS_PATH {
        return super::BATCH_UNITS_PATH;
    }
    let Some(rest) = ["/fleet/v1/", "/v1-alpha/"]
        .into_iter()
        .find_map(|prefix| path.strip_prefix(prefix))
    else {
        return "other";
    };
    match rest.split_once('/') {
        None => match rest {
            "units" => "/fleet/v1/units",
            "state" => "/fleet/v1/state",
            "machines" => "/fleet/v1/machines",
            "discovery" => "/fleet/v1/discovery",
            "events" => "/fleet/v1/events",
            _ => "other",
        },
        Some(("units", _)) => "/fleet/v1/units/{name}",
        Some(("state", _)) => "/fleet/v1/state/{name}",
        Some(("logs", _)) => "/fleet/v1/logs/{name}",
        Some(("status", _)) => "/fleet/v1/status/{name}",
        Some(_) => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_bounded_templates() {
        for (path, template) in [
            ("/metrics", "/metrics"),
            ("/fleet/v1/units", "/fleet/v1/units"),
            ("/v1-alpha/units/a.service", "/fleet/v1/units/{name}"),
            ("/fleet/v1/state/x", "/fleet/v1/state/{name}"),
            ("/fleet/v1/machines", "/fleet/v1/machines"),
            ("/fleet/v1/events", "/fleet/v1/events"),
            ("/fleet/x1/units", "/fleet/x1/units"),
            ("/ui/app.js", "/ui/"),
            ("/fleet/v1/nothing", "other"),
            ("/etc/passwd", "other"),
        ] {
            assert_eq!(route_template(path), template, "{path}");
        }
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
