//! Everything a request goes through before the registry is asked, as one
//! pure function: the fuzz target `api` (see `Documentation/reliability.md`)
//! drives it with arbitrary methods, paths, queries, headers and bodies.
//!
//! [`precheck`] follows the dispatch of the router (path decoding, the
//! prefixes, resource and item names, the method checks) and then calls the
//! same checks the handlers run on their input, in the same order: the page
//! token, the PUT decision inputs (Content-Type, the unit entity, its name,
//! its options, hash and `[X-Fleet]` validation, the desired state), the
//! machine metadata PATCH operations and the rollout requests. It stops
//! where a handler would first read or write etcd and says which call that
//! is. A rejection is what the client would get, so the fuzzer can check
//! that bad input is a clear 4xx and never a panic or a 5xx.
//!
//! The handlers stay the authority: this walks the same functions, it does
//! not copy their rules.

use std::str::FromStr;

use axum::body::Body;
use axum::extract::Request;
use fleet_systemd::unit::{Requirements, UnitFile, UnitName, validate_options};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde_json::Value;

use super::machines::RawOp;
use super::units::{
    check_content_type, check_template_activation, decode_first_json, parse_desired_state,
};
use super::{ApiError, PREFIXES, Query, item_name, paginate_shared, percent_decode};
use crate::entities;
use crate::rollout::{ActionRequest, RolloutRequest};

/// What the client would get instead of reaching the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub message: String,
}

impl From<ApiError> for Rejection {
    fn from(error: ApiError) -> Rejection {
        Rejection {
            status: error.status,
            message: error.message,
        }
    }
}

/// What a request that passed every check would do next: answer without
/// etcd (`Served`) or make this registry call (`Registry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    Served(&'static str),
    Registry(&'static str),
}

/// Runs the pre-registry part of the request path. `token_limit` is the
/// server's page size.
///
/// # Errors
/// The [`Rejection`] the router would answer with.
pub fn precheck(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    token_limit: u16,
) -> Result<Reached, Rejection> {
    let path = percent_decode(uri.path())
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "invalid URL escape in path"))?;
    if path == "/" {
        return Err(ApiError::empty(StatusCode::METHOD_NOT_ALLOWED).into());
    }
    if path == "/metrics" {
        return Ok(Reached::Served("metrics"));
    }
    for prefix in PREFIXES {
        let Some(rest) = path.strip_prefix(prefix) else {
            continue;
        };
        if rest.is_empty() {
            return Err(ApiError::empty(StatusCode::METHOD_NOT_ALLOWED).into());
        }
        if let Some(resource) = rest.strip_prefix('/') {
            let mut request = Request::new(Body::empty());
            *request.uri_mut() = uri.clone();
            let query = Query::of(&request);
            return resource_precheck(method, resource, &query, headers, body, token_limit);
        }
    }
    Err(ApiError::empty(StatusCode::NOT_FOUND).into())
}

fn resource_precheck(
    method: &Method,
    resource: &str,
    query: &Query,
    headers: &HeaderMap,
    body: &[u8],
    token_limit: u16,
) -> Result<Reached, Rejection> {
    if resource == "rollouts" || resource.starts_with("rollouts/") {
        return rollouts_precheck(method, resource.strip_prefix("rollouts/"), body);
    }
    match (resource, method) {
        ("discovery", &Method::GET) => Ok(Reached::Served("discovery")),
        ("machines", &Method::GET) | ("units", &Method::GET) => {
            listing_precheck(query, token_limit, body.len())
        }
        ("machines", &Method::PATCH) => metadata_precheck(body),
        ("discovery" | "machines" | "units", _) => Err(Rejection {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{method} not supported against {resource}"),
        }),
        _ => {
            if let Some(item) = resource.strip_prefix("units/") {
                let item = item_name(item)?;
                return match *method {
                    Method::GET => Ok(Reached::Registry("get unit")),
                    Method::DELETE => Ok(Reached::Registry("destroy unit")),
                    Method::PUT => {
                        let content_types: Vec<HeaderValue> =
                            headers.get_all(CONTENT_TYPE).iter().cloned().collect();
                        put_precheck(item, &content_types, body)
                    }
                    _ => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "bad method").into()),
                };
            }
            if resource == "state" || resource.starts_with("state/") {
                if method != Method::GET {
                    return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "bad method").into());
                }
                return match resource.strip_prefix("state/") {
                    None => listing_precheck(query, token_limit, body.len()),
                    Some(item) => item_name(item)
                        .map(|_| Reached::Registry("get unit state"))
                        .map_err(Rejection::from),
                };
            }
            Err(ApiError::empty(StatusCode::NOT_FOUND).into())
        }
    }
}

/// A listing: the page token, then one page cut from a listing of
/// `n_items` (the cut is what later pages do without etcd).
fn listing_precheck(query: &Query, token_limit: u16, n_items: usize) -> Result<Reached, Rejection> {
    let page = query.page(token_limit)?;
    let items: Vec<usize> = (0..n_items).collect();
    let _page_and_next_token = paginate_shared(&items, page);
    Ok(Reached::Registry("list"))
}

/// The PUT decision inputs, in the handler's order, for both the create and
/// the update path (which one runs depends on etcd).
fn put_precheck(
    url_name: &str,
    content_types: &[HeaderValue],
    body: &[u8],
) -> Result<Reached, Rejection> {
    check_content_type(content_types)?;
    let request: entities::Unit = decode_first_json(body)
        .map_err(|message| ApiError::bad_request(format!("unable to decode body: {message}")))?;
    if !request.name.is_empty() && request.name != url_name {
        return Err(ApiError::bad_request("name in URL differs from unit name in body").into());
    }
    let name =
        UnitName::from_str(url_name).map_err(|error| ApiError::bad_request(error.to_string()))?;
    let file = super::unit_file_from_options(&request.options);
    let _hash = file.hash();
    let _requirements = Requirements::of(&file, &name);
    if !request.options.is_empty() {
        validate_options(&file).map_err(ApiError::bad_request)?;
    }
    if !request.desired_state.is_empty() {
        check_template_activation(&name, &request.desired_state)?;
        parse_desired_state(&request.desired_state)?;
        if request.options.is_empty() {
            // Only a desired state: the handler goes straight to the write.
            return Ok(Reached::Registry("set desired state"));
        }
    }
    Ok(Reached::Registry("get unit"))
}

/// `PATCH /machines`: every op decoded and validated before any is applied.
fn metadata_precheck(body: &[u8]) -> Result<Reached, Rejection> {
    let document: Value = decode_first_json(body).map_err(ApiError::bad_request)?;
    let Value::Array(items) = document else {
        return Err(ApiError::bad_request("not a list of metadata operations").into());
    };
    for item in &items {
        RawOp::decode(item)?.validate()?;
    }
    if items.is_empty() {
        Ok(Reached::Served("empty metadata patch"))
    } else {
        Ok(Reached::Registry("apply metadata"))
    }
}

/// `rollouts` and `rollouts/<name>`: the request bodies and the unit file a
/// new rollout carries.
fn rollouts_precheck(
    method: &Method,
    item: Option<&str>,
    body: &[u8],
) -> Result<Reached, Rejection> {
    match (item, method) {
        (None, &Method::GET) => Ok(Reached::Registry("list rollouts")),
        (None, &Method::POST) => {
            let request: RolloutRequest = serde_json::from_slice(body)
                .map_err(|error| ApiError::bad_request(format!("invalid rollout: {error}")))?;
            UnitName::from_str(&request.name)
                .map_err(|error| ApiError::bad_request(error.to_string()))?;
            let file = UnitFile::parse(&request.unit_file)
                .map_err(|error| ApiError::bad_request(error.to_string()))?;
            validate_options(&file).map_err(ApiError::bad_request)?;
            if request.strategy.max_parallel == 0 {
                return Err(ApiError::bad_request("maxParallel must be at least 1").into());
            }
            let _hash = file.hash();
            Ok(Reached::Registry("list units"))
        }
        (Some(item), &Method::GET) => item_name(item)
            .map(|_| Reached::Registry("get rollout"))
            .map_err(Rejection::from),
        (Some(item), &Method::POST) => {
            item_name(item)?;
            let _action: ActionRequest = serde_json::from_slice(body)
                .map_err(|error| ApiError::bad_request(format!("invalid action: {error}")))?;
            Ok(Reached::Registry("get rollout"))
        }
        _ => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "bad method").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> Result<Reached, StatusCode> {
        let mut headers = HeaderMap::new();
        if let Some(content_type) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        }
        let uri = Uri::from_str(uri).unwrap();
        precheck(&method, &uri, &headers, body.as_bytes(), 100)
            .map_err(|rejection| rejection.status)
    }

    #[test]
    fn a_valid_put_reaches_the_registry() {
        let body = r#"{"desiredState":"launched","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#;
        let json = Some("application/json");
        assert_eq!(
            check(Method::PUT, "/fleet/v1/units/a.service", json, body),
            Ok(Reached::Registry("get unit"))
        );
        let state_only = r#"{"desiredState":"launched"}"#;
        assert_eq!(
            check(Method::PUT, "/fleet/v1/units/a.service", json, state_only),
            Ok(Reached::Registry("set desired state"))
        );
    }

    #[test]
    fn bad_puts_are_client_errors_in_the_handlers_order() {
        let json = Some("application/json");
        let put = |uri, content_type, body| check(Method::PUT, uri, content_type, body);
        assert_eq!(
            put("/fleet/v1/units/a.service", None, "{}"),
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(
            put("/fleet/v1/units/a.service", json, "{"),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            put("/fleet/v1/units/a.bogus", json, "{}"),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            put(
                "/fleet/v1/units/a.service",
                json,
                r#"{"desiredState":"up"}"#
            ),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            put(
                "/fleet/v1/units/a@.service",
                json,
                r#"{"desiredState":"launched"}"#
            ),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            put("/fleet/v1/units/a/b", json, "{}"),
            Err(StatusCode::NOT_FOUND)
        );
    }

    #[test]
    fn page_tokens_and_metadata_ops_are_checked() {
        assert_eq!(
            check(
                Method::GET,
                "/fleet/v1/units?nextPageToken=ZAACAA==",
                None,
                ""
            ),
            Ok(Reached::Registry("list"))
        );
        assert_eq!(
            check(Method::GET, "/fleet/v1/state?nextPageToken=!!", None, ""),
            Err(StatusCode::BAD_REQUEST)
        );
        let op = r#"[{"op":"add","path":"/m/metadata/k","value":"v"}]"#;
        assert_eq!(
            check(Method::PATCH, "/fleet/v1/machines", None, op),
            Ok(Reached::Registry("apply metadata"))
        );
        let bad = r#"[{"op":"add","path":"/m/metadata/k"}]"#;
        assert_eq!(
            check(Method::PATCH, "/fleet/v1/machines", None, bad),
            Err(StatusCode::BAD_REQUEST)
        );
    }
}
