//! The API v1 router (Documentation/api.md): one axum service over the registry.
//!
//! [`router`] builds the service fleetd serves on its listeners; [`ApiState`]
//! is what it needs (the registry, the page size, the version for the
//! `Server` header and the [`Availability`] flag the heart flips).
//!
//! Routing is done by hand in [`route`] rather than with axum's path router:
//! the original's Go `ServeMux` has exact, odd rules (a trailing slash is a
//! 404, `units/a/b` is a 404, exactly `/fleet/v1` is a 405, `/machines/x`
//! falls through to the root handler, the state resource checks the method
//! before the path) and matching them in one function keeps them visible.
//!
//! - `units`: `GET/PUT/DELETE /units[/<name>]`, including the PUT decision
//!   procedure (Documentation/compatibility.md, "Creating and replacing a unit (PUT)").
//! - `batch`: `POST /fleet/x1/units`, many PUTs in one request, each
//!   answered as PUT answers it; new units go to etcd together.
//! - `states`: `GET /state[/<name>]`.
//! - `machines`: `GET /machines` and the metadata `PATCH`.
//! - `rollouts`: rolling updates, new resources beside v1 (`GET/POST
//!   /rollouts[/<name>]`).
//! - `worker`: the read-only wrapper a worker's fleetd serves (writes refused).
//!
//! Handlers never hold registry data between requests, with one exception:
//! the pages after the first of `GET /units` and `GET /state` are cut from
//! the full listing read for a recent first page ([`Listing`]). Every other
//! request, and every first page, reads etcd, so two fleetds serving the API
//! agree.

mod batch;
mod events;
mod line_breaks;
mod machines;
mod metrics;
pub mod precheck;
mod rollouts;
mod states;
mod ui;
mod units;
pub mod worker;

pub use units::{entity_options, unit_file_from_options};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use http::header::{CONTENT_TYPE, SERVER};
use http::{HeaderValue, Method, StatusCode};
use serde::Serialize;
use tracing::{debug, error};

use fleet_registry::{Registry, RegistryError, UnitState};

use crate::entities::{ErrorBody, ErrorEntity, UNAVAILABLE_MESSAGE};
use crate::token::PageToken;

/// The discovery document the original served, verbatim.
const DISCOVERY_JSON: &str = include_str!("discovery.json");

/// The largest request body we read (PUT and PATCH): etcd's default request
/// limit (`--max-request-bytes`, 1.5 MiB). A unit's stored text is shorter
/// than its JSON body, so what fits here fits etcd (see
/// `units::MAX_UNIT_FILE_BYTES`); a larger body is a 413 that says the limit.
pub const BODY_LIMIT_BYTES: usize = 1536 * 1024;

/// Many units created or changed in one request: the operations API's
/// batch of v1 PUTs (served here because it is v1's PUT, unit by unit).
pub const BATCH_UNITS_PATH: &str = "/fleet/x1/units";

/// The prefixes the resources are mounted under, with identical behaviour.
const PREFIXES: [&str; 2] = ["/fleet/v1", "/v1-alpha"];

/// Everything the router needs.
#[derive(Clone)]
pub struct ApiState {
    pub registry: Registry,
    /// `token_limit`: the page size of every listing.
    pub token_limit: u16,
    /// fleetd's version, sent as `Server: fleetd/<version>`.
    pub version: String,
    /// Whether fleetd is registered in etcd; every request gets a 503 until it is.
    pub available: Availability,
}

/// A shared on/off flag: whether the API may serve (503 while etcd is unreachable). Cheap to clone;
/// all clones see the same flag. Starts unavailable.
#[derive(Clone, Debug, Default)]
pub struct Availability(Arc<AtomicBool>);

impl Availability {
    /// A new flag, unavailable.
    pub fn new() -> Availability {
        Availability::default()
    }

    pub fn set(&self, available: bool) {
        self.0.store(available, Ordering::Release);
    }

    pub fn is_available(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The router's own state: the caller's plus what only the router keeps.
struct Shared {
    api: ApiState,
    /// `Server: fleetd/<version>`, built once.
    server_header: HeaderValue,
    /// The newest full `GET /units` listing (entities with current state).
    units_listing: Listing<crate::entities::Unit>,
    /// The newest full, unfiltered `GET /state` listing.
    states_listing: Listing<UnitState>,
    /// The newest full `GET /machines` listing (with cordons).
    machines_listing: Listing<crate::entities::Machine>,
}

/// How long a full listing may serve the pages after the first. A paging
/// client asks for its next page at once; this only bounds how stale a page
/// can be for a client that pauses between pages.
const LISTING_MAX_AGE: Duration = Duration::from_secs(5);

/// The newest full listing of one collection, kept briefly so that the pages
/// after the first are cut from it. Page tokens carry only a page number
/// (a compatibility promise), so without it every page re-reads the whole collection: n
/// items in pages of L cost n²/L reads, and listing 20,000 units took 40 s
/// (the scale benchmark). Page 1 always reads etcd and replaces the listing,
/// so a client paging through sees one consistent snapshot that is never
/// older than its own first page; a write through this API forgets it.
struct Listing<T> {
    /// When the read started, and what it found, in page order.
    newest: Mutex<Option<(Instant, Arc<Vec<T>>)>>,
}

impl<T> Default for Listing<T> {
    fn default() -> Listing<T> {
        Listing {
            newest: Mutex::new(None),
        }
    }
}

impl<T> Listing<T> {
    /// The kept listing, if it is younger than [`LISTING_MAX_AGE`].
    fn recent(&self) -> Option<Arc<Vec<T>>> {
        let newest = self.newest.lock().unwrap_or_else(PoisonError::into_inner);
        newest
            .as_ref()
            .filter(|(read_at, _)| read_at.elapsed() < LISTING_MAX_AGE)
            .map(|(_, items)| items.clone())
    }

    /// Keeps `items`, read from etcd starting at `read_at`, unless a read that
    /// started later is kept already.
    fn keep(&self, read_at: Instant, items: Arc<Vec<T>>) {
        let mut newest = self.newest.lock().unwrap_or_else(PoisonError::into_inner);
        if newest
            .as_ref()
            .is_none_or(|(kept_at, _)| *kept_at <= read_at)
        {
            *newest = Some((read_at, items));
        }
    }

    /// Drops the kept listing (after a write that changes the collection).
    fn forget(&self) {
        *self.newest.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The full listing for `page`: the kept one for a page after the first,
    /// else what `read` returns (then kept).
    async fn get_or_read<F>(&self, page: PageToken, read: F) -> Result<Arc<Vec<T>>, ApiError>
    where
        F: Future<Output = Result<Vec<T>, ApiError>>,
    {
        if page.page > 1
            && let Some(items) = self.recent()
        {
            return Ok(items);
        }
        let read_at = Instant::now();
        let items = Arc::new(read.await?);
        self.keep(read_at, items.clone());
        Ok(items)
    }
}

/// Builds the API service: every path under `/fleet/v1` and `/v1-alpha`,
/// `/metrics`, and the root handler's 404/405 for the rest.
pub fn router(state: ApiState) -> Router {
    let server_header = HeaderValue::from_str(&format!("fleetd/{}", state.version))
        .unwrap_or_else(|_| HeaderValue::from_static("fleetd"));
    let shared = Arc::new(Shared {
        api: state,
        server_header,
        units_listing: Listing::default(),
        states_listing: Listing::default(),
        machines_listing: Listing::default(),
    });
    Router::new().fallback(handle).with_state(shared)
}

/// The outermost handler: availability, then routing, then the `Server`
/// header and the request counter.
async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    if !shared.api.available.is_available() {
        // The original's "unavailable" handler sits outside the middleware
        // that adds `Server`, so the 503 has no `Server` header, as in the original.
        return error_response(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE_MESSAGE);
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let mut response = match route(&shared, request).await {
        Ok(response) => response,
        Err(api_error) => api_error.into_response(),
    };
    response
        .headers_mut()
        .insert(SERVER, shared.server_header.clone());
    metrics::record(&method, &path, response.status(), started);
    debug!(%method, %path, status = response.status().as_u16(), "Served an API request.");
    response
}

/// Dispatches on the decoded path and the method (Documentation/compatibility.md, "Endpoints").
async fn route(shared: &Shared, request: Request) -> Result<Response, ApiError> {
    let path = percent_decode(request.uri().path())
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "invalid URL escape in path"))?;
    if path == "/" {
        return Err(ApiError::empty(StatusCode::METHOD_NOT_ALLOWED));
    }
    if path == "/metrics" {
        return Ok(metrics::response());
    }
    if path == "/ui" || path.starts_with("/ui/") {
        return ui::serve(&path);
    }
    if path == BATCH_UNITS_PATH {
        return route_batch(shared, request).await;
    }
    for prefix in PREFIXES {
        let Some(rest) = path.strip_prefix(prefix) else {
            continue;
        };
        if rest.is_empty() {
            return Err(ApiError::empty(StatusCode::METHOD_NOT_ALLOWED));
        }
        if let Some(resource) = rest.strip_prefix('/') {
            return route_resource(shared, resource, request).await;
        }
    }
    Err(ApiError::empty(StatusCode::NOT_FOUND))
}

/// `POST /fleet/x1/units` (see [`batch`]).
async fn route_batch(shared: &Shared, request: Request) -> Result<Response, ApiError> {
    if request.method() != Method::POST {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "only POST supported against this resource",
        ));
    }
    let content_types = content_types(&request);
    let body = read_body(request).await?;
    batch::post(shared, &content_types, &body).await
}

/// Every `Content-Type` header of `request` (PUT refuses more than one).
fn content_types(request: &Request) -> Vec<HeaderValue> {
    request
        .headers()
        .get_all(CONTENT_TYPE)
        .iter()
        .cloned()
        .collect()
}

/// Routes `resource`, the decoded path after `<prefix>/`.
async fn route_resource(
    shared: &Shared,
    resource: &str,
    request: Request,
) -> Result<Response, ApiError> {
    if resource == "rollouts" || resource.starts_with("rollouts/") {
        return rollouts::route(shared, resource.strip_prefix("rollouts/"), request).await;
    }
    let query = Query::of(&request);
    let method = request.method().clone();
    match resource {
        "discovery" => {
            if method != Method::GET {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "only HTTP GET supported against this resource",
                ));
            }
            Ok(json_text_response(StatusCode::OK, DISCOVERY_JSON))
        }
        "machines" => match method {
            Method::GET => machines::list(shared, &query).await,
            Method::PATCH => {
                let body = read_body(request).await?;
                machines::patch(shared, &body).await
            }
            _ => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and PATCH supported against this resource",
            )),
        },
        "events" if method == Method::GET => {
            events::stream(shared, &query, request.headers()).await
        }
        "units" => match method {
            Method::GET => units::list(shared, &query).await,
            _ => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET supported against this resource",
            )),
        },
        _ => {
            if let Some(item) = resource.strip_prefix("units/") {
                let item = item_name(item)?;
                return match method {
                    Method::GET => units::get(shared, item).await,
                    Method::DELETE => units::delete(shared, item).await,
                    Method::PUT => {
                        let content_types = content_types(&request);
                        let body = read_body(request).await?;
                        units::put(shared, item, &content_types, &body).await
                    }
                    _ => Err(ApiError::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "only GET, PUT and DELETE supported against this resource",
                    )),
                };
            }
            if resource == "state" || resource.starts_with("state/") {
                // The original's state resource checks the method before the path.
                if method != Method::GET {
                    return Err(ApiError::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "only GET supported against this resource",
                    ));
                }
                return match resource.strip_prefix("state/") {
                    None => states::list(shared, &query).await,
                    Some(item) => states::get(shared, item_name(item)?).await,
                };
            }
            Err(ApiError::empty(StatusCode::NOT_FOUND))
        }
    }
}

/// An item path segment: non-empty and without `/` (`units/`, `units/a/b`
/// are 404s).
fn item_name(item: &str) -> Result<&str, ApiError> {
    if item.is_empty() || item.contains('/') {
        return Err(ApiError::empty(StatusCode::NOT_FOUND));
    }
    Ok(item)
}

async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > BODY_LIMIT_BYTES as u64) {
        return Err(refuse_declared_too_large(request).await);
    }
    axum::body::to_bytes(request.into_body(), BODY_LIMIT_BYTES)
        .await
        .map_err(|error| {
            if is_length_limit(&error) {
                return body_too_large();
            }
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unable to read body: {error}"),
            )
        })
}

/// How much of a body declared too large is read and thrown away so that its
/// sender gets the 413 rather than a connection reset mid-upload.
const DRAIN_LIMIT_BYTES: u64 = 8 * 1024 * 1024;

/// The 413 for a body whose `Content-Length` is over the limit, delivered so
/// that the client reads it:
/// - a client that waits for `100 Continue` (curl does, for large bodies) has
///   sent nothing yet: the 413 goes out at once and no `100` ever does;
/// - any other client is already writing: the body is read and discarded (up
///   to [`DRAIN_LIMIT_BYTES`]), because a server that answers and closes
///   while the client still writes makes the client fail with a broken pipe
///   instead of reading the answer.
async fn refuse_declared_too_large(request: Request) -> ApiError {
    use http_body_util::BodyExt;
    let waits_for_continue = request
        .headers()
        .get(http::header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !waits_for_continue {
        let mut body = request.into_body();
        let mut drained = 0u64;
        while drained <= DRAIN_LIMIT_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    drained += frame.data_ref().map_or(0, |data| data.len() as u64);
                }
                _ => break,
            }
        }
    }
    body_too_large()
}

fn body_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body is larger than {BODY_LIMIT_BYTES} bytes (1.5 MiB, etcd's request limit)"
        ),
    )
}

/// Whether reading a body failed because it passed [`BODY_LIMIT_BYTES`].
fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// The query parameters of a request, all values of each, in order. Unknown
/// parameters are simply never asked for (clients send `?alt=json`).
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn of(request: &Request) -> Query {
        // A malformed query reads as no parameters, as Go's `URL.Query` does
        // with pairs it cannot decode.
        let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(request.uri())
            .map(|query| query.0)
            .unwrap_or_default();
        Query { pairs }
    }

    fn values(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of `key`; an empty value counts as absent.
    fn first(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The page asked for by `nextPageToken`.
    fn page(&self, token_limit: u16) -> Result<PageToken, ApiError> {
        PageToken::from_query_values(&self.values("nextPageToken"), token_limit)
            .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, error.to_string()))
    }
}

/// One page of `items` and the token of the next page (empty when last).
fn paginate<T>(items: Vec<T>, page: PageToken) -> (Vec<T>, String) {
    let (range, more) = page.window(items.len());
    let next_page_token = if more {
        page.next().encode()
    } else {
        String::new()
    };
    let page_items = items
        .into_iter()
        .skip(range.start)
        .take(range.len())
        .collect();
    (page_items, next_page_token)
}

/// One page of a shared listing, as [`paginate`].
fn paginate_shared<T: Clone>(items: &[T], page: PageToken) -> (Vec<T>, String) {
    let (range, more) = page.window(items.len());
    let next_page_token = if more {
        page.next().encode()
    } else {
        String::new()
    };
    (items[range].to_vec(), next_page_token)
}

/// Decodes `%XX` escapes as Go's `URL.Path` does; `None` for a bad escape or
/// a result that is not UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    if !path.contains('%') {
        return Some(path.to_owned());
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        if bytes[idx] == b'%' {
            let hex = bytes.get(idx + 1..idx + 3)?;
            let text = std::str::from_utf8(hex).ok()?;
            decoded.push(u8::from_str_radix(text, 16).ok()?);
            idx += 3;
        } else {
            decoded.push(bytes[idx]);
            idx += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// An error response: a status and the error entity's message.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// An error entity with an empty message (the original's `sendError(nil)`).
    fn empty(status: StatusCode) -> ApiError {
        ApiError {
            status,
            message: String::new(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A registry failure, logged with its detail. etcd unreachable or slow
    /// (every member tried) is a 503 whose message names the cause, so a
    /// client knows to try again later; anything else is a 500 that says
    /// what failed. Never an empty message: the caller must learn why.
    fn registry(what: &'static str, error: RegistryError) -> ApiError {
        error!(%error, what, "A registry request of the API failed.");
        if error.is_retriable() {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{UNAVAILABLE_MESSAGE}: {error}"),
            )
        } else {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{what}: {error}"),
            )
        }
    }

    fn into_response(self) -> Response {
        error_response(self.status, &self.message)
    }
}

/// The error entity (`{"error": {"code", "message"}}`) with
/// `Content-Type: application/json`.
fn error_response(status: StatusCode, message: &str) -> Response {
    let entity = ErrorEntity {
        error: ErrorBody {
            code: status.as_u16(),
            message: message.to_owned(),
        },
    };
    json_response(status, &entity)
}

fn json_response<T: Serialize>(status: StatusCode, entity: &T) -> Response {
    match serde_json::to_string(entity) {
        Ok(text) => json_text_response(status, text),
        Err(error) => {
            // Our entities are plain strings and lists; this cannot happen,
            // but if it does the client must not get a half-written body.
            error!(%error, "Cannot serialize an API entity.");
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

fn json_text_response(status: StatusCode, text: impl Into<Body>) -> Response {
    let mut response = Response::new(text.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A response without a body (201, 204).
fn empty_response(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a/b").as_deref(), Some("/a/b"));
        assert_eq!(
            percent_decode("/yes@no%5C.service").as_deref(),
            Some("/yes@no\\.service")
        );
        assert_eq!(percent_decode("/a%2Fb").as_deref(), Some("/a/b"));
        assert_eq!(percent_decode("/a%2"), None);
        assert_eq!(percent_decode("/a%zz"), None);
        assert_eq!(percent_decode("/a%ff"), None);
    }

    #[tokio::test]
    async fn later_pages_come_from_the_first_pages_listing() {
        let listing: Listing<u32> = Listing::default();
        let reads = std::sync::atomic::AtomicUsize::new(0);
        // Counts the reads that run, not the futures made.
        let read = |items: Vec<u32>| {
            let reads = &reads;
            async move {
                reads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ApiError>(items)
            }
        };
        let first = PageToken::first(2);
        let all = listing.get_or_read(first, read(vec![1, 2, 3])).await;
        assert_eq!(all.ok().as_deref(), Some(&vec![1, 2, 3]));
        // Page 2 is cut from the kept listing, not read again.
        let all = listing.get_or_read(first.next(), read(vec![9])).await;
        assert_eq!(all.ok().as_deref(), Some(&vec![1, 2, 3]));
        assert_eq!(
            paginate_shared(&[1, 2, 3], first.next()),
            (vec![3], String::new())
        );
        // A first page always reads.
        let all = listing.get_or_read(first, read(vec![4, 5])).await;
        assert_eq!(all.ok().as_deref(), Some(&vec![4, 5]));
        // After a write, a later page reads too.
        listing.forget();
        let all = listing.get_or_read(first.next(), read(vec![6])).await;
        assert_eq!(all.ok().as_deref(), Some(&vec![6]));
        assert_eq!(reads.load(Ordering::SeqCst), 3);
        // A read that started earlier never replaces a newer one.
        let earlier = Instant::now() - Duration::from_secs(1);
        listing.keep(earlier, Arc::new(vec![7]));
        assert_eq!(listing.recent().as_deref(), Some(&vec![6]));
    }

    #[test]
    fn pagination() {
        let items: Vec<u32> = (0..5).collect();
        let (page, next) = paginate(items.clone(), PageToken::first(2));
        assert_eq!(
            (page, next.as_str()),
            (
                vec![0, 1],
                PageToken { limit: 2, page: 2 }.encode().as_str()
            )
        );
        let (page, next) = paginate(items.clone(), PageToken { limit: 2, page: 3 });
        assert_eq!((page, next.as_str()), (vec![4], ""));
        let (page, next) = paginate(items, PageToken { limit: 2, page: 9 });
        assert_eq!((page, next.as_str()), (vec![], ""));
    }

    #[test]
    fn discovery_document_is_json() {
        let document: serde_json::Value = serde_json::from_str(DISCOVERY_JSON).unwrap();
        assert_eq!(document["id"], "fleet:v1");
        assert_eq!(document["baseUrl"], "$ENDPOINT/fleet/v1/");
    }
}
