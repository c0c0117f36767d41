//! The typed API client fleetctl uses (feature `client`).
//!
//! [`Client`] speaks HTTP/1.1 to fleetd over a unix socket (`unix:///path`,
//! `file:///path`) or TCP (`http://host:port[/prefix]`, `https://` with client
//! certificates). Connections come from the pluggable [`Dialer`] (the SSH
//! tunnel plugs in there) and are kept for the next request while fresh
//! (`pool`): over TLS a new connection is a full handshake, and bulk work
//! (a listing of 200 pages, a start of 1,000 units) would pay it per request.
//!
//! Behaviour copied from the original Go client (Documentation/compatibility.md,
//! "fleetctl transports"): every request
//! carries `?alt=json`, list calls follow `nextPageToken` until it is absent,
//! and API errors read `googleapi: Error <code>: <message>` (or
//! `googleapi: got HTTP response code <code> with body: <body>` when the body
//! is not an error entity with a message). Transport failures name the
//! endpoint. Unlike the original (which had none), an optional per-request timeout
//! covers connect, request and the whole response body.
//!
//! This module must not know about the CLI: no printing, no exit codes.

mod events;
mod logs;
mod rollouts;

pub use events::{EventReader, SseMessage};
pub use logs::{Caller, LogMessage, LogReader, LogsRequest, ON_BEHALF_OF_HEADER};

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fleet_model::TargetState;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

mod ops;
pub use tls::{ClientTls, TlsError};

use crate::entities::{
    ErrorEntity, Machine, MachinePage, Unit, UnitPage, UnitState, UnitStatePage,
};

mod pool;
mod tls;

/// The default endpoint of fleetctl and fleetd, as in the original.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/fleet.sock";

/// Where the API lives, parsed once from an endpoint URL (`unix://`,
/// `http://` or `https://`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket (`unix:///path` or `file:///path`).
    Unix {
        /// The socket's path.
        path: PathBuf,
        /// The URL as the user gave it, for messages.
        url: String,
    },
    /// HTTP over TCP, or over TLS for `https://` (`tls`).
    Http {
        /// `host:port` (the `Host` header and the address to dial).
        authority: String,
        /// `https://`: speak TLS (see [`ClientTls`]).
        tls: bool,
        /// The URL path the API routes hang off, ending in `/fleet/v1/`.
        base_path: String,
        /// The URL as the user gave it, for messages.
        url: String,
    },
}

/// Why an endpoint URL is unusable. The first two messages are the original's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("URL scheme undefined")]
    SchemeUndefined,
    #[error("unable to connect to host {host:?} with scheme {scheme:?}")]
    HostWithSocketScheme { host: String, scheme: String },
    #[error("unsupported URL scheme {0:?} (expected unix, file, http or https)")]
    UnknownScheme(String),
    #[error("endpoint {0:?} has no host")]
    MissingHost(String),
    #[error("endpoint {0:?} has no socket path")]
    MissingPath(String),
}

impl Endpoint {
    /// Parses one endpoint URL (not a comma-separated list; the caller picks
    /// the first entry of a list).
    ///
    /// # Errors
    /// [`EndpointError`] for a missing or unknown scheme, a host part on a
    /// socket scheme, https, or a missing host or path.
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        let url = url.trim();
        // Go's url.Parse treats a string without "scheme:" as a bare path.
        let Some((scheme, rest)) = url.split_once(':') else {
            return Err(EndpointError::SchemeUndefined);
        };
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        {
            return Err(EndpointError::SchemeUndefined);
        }
        let scheme_lower = scheme.to_ascii_lowercase();
        // Split "//authority/path" from an opaque or path-only remainder.
        let (host, path) = match rest.strip_prefix("//") {
            Some(after) => match after.find(['/', '?', '#']) {
                Some(idx) => (&after[..idx], &after[idx..]),
                None => (after, ""),
            },
            None => ("", rest),
        };
        // Query and fragment are not part of an endpoint.
        let path = path.split(['?', '#']).next().unwrap_or_default();
        match scheme_lower.as_str() {
            "unix" | "file" => {
                if !host.is_empty() {
                    return Err(EndpointError::HostWithSocketScheme {
                        host: host.to_owned(),
                        scheme: scheme.to_owned(),
                    });
                }
                if path.is_empty() {
                    return Err(EndpointError::MissingPath(url.to_owned()));
                }
                Ok(Endpoint::Unix {
                    path: PathBuf::from(path),
                    url: url.to_owned(),
                })
            }
            "http" | "https" => {
                let tls = scheme_lower == "https";
                if host.is_empty() {
                    return Err(EndpointError::MissingHost(url.to_owned()));
                }
                // Userinfo has no meaning for the API; drop it like the Host header does.
                let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
                let authority = if has_port(host) {
                    host.to_owned()
                } else if tls {
                    format!("{host}:443")
                } else {
                    format!("{host}:80")
                };
                let base_path = format!("{}/fleet/v1/", path.trim_end_matches('/'));
                Ok(Endpoint::Http {
                    authority,
                    tls,
                    base_path,
                    url: url.to_owned(),
                })
            }
            _ => Err(EndpointError::UnknownScheme(scheme.to_owned())),
        }
    }

    /// The URL as given, for messages.
    pub fn url(&self) -> &str {
        match self {
            Endpoint::Unix { url, .. } | Endpoint::Http { url, .. } => url,
        }
    }

    fn base_path(&self) -> &str {
        match self {
            Endpoint::Unix { .. } => "/fleet/v1/",
            Endpoint::Http { base_path, .. } => base_path,
        }
    }

    fn host_header(&self) -> &str {
        match self {
            // What the original sent too, as the `Host` of a socket request.
            Endpoint::Unix { .. } => "domain-sock",
            Endpoint::Http { authority, .. } => authority,
        }
    }
}

/// Whether `host` (possibly a bracketed IPv6 literal) carries a `:port`.
fn has_port(host: &str) -> bool {
    match host.rfind(']') {
        Some(close) => host[close..].contains(':'),
        None => host.contains(':'),
    }
}

/// A byte stream the client can speak HTTP over.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Connection for T {}

/// The future a [`Dialer`] returns.
pub type DialFuture<'a> =
    Pin<Box<dyn Future<Output = io::Result<Box<dyn Connection>>> + Send + 'a>>;

/// The future of [`Dialer::explain_failure`].
pub type ExplainFuture<'a> = Pin<Box<dyn Future<Output = Option<String>> + Send + 'a>>;

/// Opens one connection to the API. The default dials the endpoint
/// directly; an SSH tunnel provides its own (`--tunnel`).
pub trait Dialer: Send + Sync {
    /// Opens a new connection for one request.
    fn dial(&self) -> DialFuture<'_>;

    /// Says why a dialed connection broke before the API answered, when the
    /// dialer can find out (a tunnel's far end may refuse its SSH user the
    /// socket, which only shows as a closed connection here). Default: no idea.
    fn explain_failure(&self) -> ExplainFuture<'_> {
        Box::pin(async { None })
    }
}

/// Dials the endpoint's socket or TCP address directly, with TLS for
/// `https://` endpoints.
struct DirectDialer {
    endpoint: Endpoint,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Dialer for DirectDialer {
    fn dial(&self) -> DialFuture<'_> {
        Box::pin(async move {
            match &self.endpoint {
                Endpoint::Unix { path, .. } => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|error| socket_error(path, &error))?;
                    Ok(Box::new(stream) as Box<dyn Connection>)
                }
                Endpoint::Http { authority, .. } => {
                    let host = authority
                        .strip_prefix('[')
                        .and_then(|h| h.split_once("]:"))
                        .map(|(h, p)| format!("{h}:{p}"));
                    let address = host.as_deref().unwrap_or(authority);
                    let stream = match address.rsplit_once(':') {
                        Some((h, p)) if host.is_some() => {
                            let port: u16 = p.parse().map_err(|_| {
                                io::Error::new(io::ErrorKind::InvalidInput, "invalid port")
                            })?;
                            tokio::net::TcpStream::connect((h, port)).await
                        }
                        _ => tokio::net::TcpStream::connect(address).await,
                    }
                    .map_err(|error| {
                        io::Error::new(error.kind(), format!("dial tcp {authority}: {error}"))
                    })?;
                    // Requests are small; do not let Nagle delay them.
                    let _ = stream.set_nodelay(true);
                    match &self.tls {
                        Some(connector) => tls::handshake(connector, authority, stream).await,
                        None => Ok(Box::new(stream) as Box<dyn Connection>),
                    }
                }
            }
        })
    }
}

/// How often an idempotent request answered with a 503 is sent again, and the
/// pauses before (doubling, jittered): about 6 s in all, longer than an etcd
/// leader election.
const UNAVAILABLE_RETRIES: u32 = 5;
const FIRST_UNAVAILABLE_PAUSE: Duration = Duration::from_millis(200);
const MAX_UNAVAILABLE_PAUSE: Duration = Duration::from_secs(2);

/// The pauses before each send again of something answered 503: at most
/// [`UNAVAILABLE_RETRIES`], doubling from [`FIRST_UNAVAILABLE_PAUSE`] up to
/// [`MAX_UNAVAILABLE_PAUSE`], jittered so that many clients do not come back
/// in step.
struct UnavailablePauses {
    next: Duration,
    left: u32,
}

impl UnavailablePauses {
    fn new() -> UnavailablePauses {
        UnavailablePauses {
            next: FIRST_UNAVAILABLE_PAUSE,
            left: UNAVAILABLE_RETRIES,
        }
    }

    /// Waits the next pause; `false` (at once) when the retries are used up.
    async fn wait(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        tokio::time::sleep(self.next.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
        self.next = (self.next * 2).min(MAX_UNAVAILABLE_PAUSE);
        true
    }
}
/// The error of a failed unix-socket connect; a permission failure says how
/// to get permission, since the socket is root's and group `fleet`'s only.
fn socket_error(path: &std::path::Path, error: &io::Error) -> io::Error {
    let mut message = format!("dial unix {}: {error}", path.display());
    if error.kind() == io::ErrorKind::PermissionDenied {
        message.push_str(
            " (the API socket is for root and the group fleet: run fleetctl as root, or add \
             your user to the group with `sudo usermod -aG fleet $USER` and log in again)",
        );
    }
    io::Error::new(error.kind(), message)
}

/// An error from one API call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error entity that has a message.
    #[error("googleapi: Error {code}: {message}")]
    Api { code: u16, message: String },
    /// The API answered with a non-2xx status and no usable error message.
    #[error("googleapi: got HTTP response code {code} with body: {body}")]
    Http { code: u16, body: String },
    /// The API could not be reached or the connection broke.
    #[error("cannot reach the fleet API at {endpoint}: {detail}")]
    Transport { endpoint: String, detail: String },
    /// The request did not finish within the request timeout.
    #[error("request to the fleet API at {endpoint} timed out after {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    /// A 2xx answer whose body is not the expected entity.
    #[error("invalid response from the fleet API at {endpoint}: {detail}")]
    Decode { endpoint: String, detail: String },
}

impl ClientError {
    /// The HTTP status of an API error, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { code, .. } | ClientError::Http { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether this is a 404 (e.g. `unit does not exist`).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// The fleet API v1 client. Cheap to clone: clones share the dialer.
#[derive(Clone)]
pub struct Client {
    endpoint: Endpoint,
    dialer: Arc<dyn Dialer>,
    /// Idle connections, shared by clones.
    pool: Arc<pool::Pool>,
    timeout: Option<Duration>,
    /// A bearer token for the API's access policy.
    token: Option<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The query parameters of one request, before `alt=json` is added.
type Query<'a> = Vec<(&'a str, &'a str)>;

impl Client {
    /// A client that dials `endpoint` directly.
    pub fn new(endpoint: Endpoint) -> Client {
        let dialer = Arc::new(DirectDialer {
            endpoint: endpoint.clone(),
            tls: None,
        });
        Client {
            endpoint,
            dialer,
            pool: Arc::default(),
            timeout: None,
            token: None,
        }
    }

    /// A client that dials `endpoint` directly and speaks TLS with `tls`
    /// when the endpoint is `https://`.
    ///
    /// # Errors
    /// [`TlsError`] for unreadable or malformed certificate and key files.
    pub fn with_tls(endpoint: Endpoint, tls: &ClientTls) -> Result<Client, TlsError> {
        let connector = match &endpoint {
            Endpoint::Http { tls: true, .. } => Some(tls::connector(tls)?),
            _ => None,
        };
        let dialer = Arc::new(DirectDialer {
            endpoint: endpoint.clone(),
            tls: connector,
        });
        Ok(Client {
            endpoint,
            dialer,
            pool: Arc::default(),
            timeout: None,
            token: None,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    /// A client that opens its connections through `dialer` (e.g. an SSH
    /// tunnel); `endpoint` still decides the paths and the `Host` header.
    pub fn with_dialer(endpoint: Endpoint, dialer: Arc<dyn Dialer>) -> Client {
        Client {
            endpoint,
            dialer,
            pool: Arc::default(),
            timeout: None,
            token: None,
        }
    }

    /// Sets a deadline for each request (connect, send, whole body). `None`,
    /// the default, waits forever like the original.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// All machines (`GET machines`, every page).
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn machines(&self) -> Result<Vec<Machine>, ClientError> {
        let mut machines = Vec::new();
        let mut token = String::new();
        loop {
            let page: MachinePage = self.get_json("machines", page_query(&token)).await?;
            machines.extend(page.machines);
            if page.next_page_token.is_empty() {
                return Ok(machines);
            }
            token = page.next_page_token;
        }
    }

    /// All units (`GET units`, every page).
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn units(&self) -> Result<Vec<Unit>, ClientError> {
        let mut units = Vec::new();
        let mut token = String::new();
        loop {
            let page: UnitPage = self.get_json("units", page_query(&token)).await?;
            units.extend(page.units);
            if page.next_page_token.is_empty() {
                return Ok(units);
            }
            token = page.next_page_token;
        }
    }

    /// One unit, `None` when the API says 404.
    ///
    /// # Errors
    /// Any [`ClientError`] other than a 404.
    pub async fn unit(&self, name: &str) -> Result<Option<Unit>, ClientError> {
        let path = format!("units/{}", escape_path_segment(name));
        match self.get_json(&path, Vec::new()).await {
            Ok(unit) => Ok(Some(unit)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Creates or replaces a unit (`PUT units/<name>` with the entity).
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn create_unit(&self, unit: &Unit) -> Result<(), ClientError> {
        self.put_unit(&unit.name, unit).await
    }

    /// Sets a unit's desired state (`PUT units/<name>` with only
    /// `desiredState`).
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn set_unit_target_state(
        &self,
        name: &str,
        state: TargetState,
    ) -> Result<(), ClientError> {
        let unit = Unit {
            name: name.to_owned(),
            desired_state: state.to_string(),
            ..Unit::default()
        };
        self.put_unit(name, &unit).await
    }

    /// Deletes a unit (`DELETE units/<name>`); a 404 is an error the caller
    /// can recognise with [`ClientError::is_not_found`].
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn destroy_unit(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("units/{}", escape_path_segment(name));
        self.request(Method::DELETE, &path, Vec::new(), None)
            .await
            .map(drop)
    }

    /// Unit states (`GET state`, every page), optionally filtered by machine
    /// and/or unit name (exact matches, as the original server filters).
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn unit_states(
        &self,
        machine_id: Option<&str>,
        unit_name: Option<&str>,
    ) -> Result<Vec<UnitState>, ClientError> {
        let mut states = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = page_query(&token);
            if let Some(machine_id) = machine_id {
                query.push(("machineID", machine_id));
            }
            if let Some(unit_name) = unit_name {
                query.push(("unitName", unit_name));
            }
            let page: UnitStatePage = self.get_json("state", query).await?;
            states.extend(page.states);
            if page.next_page_token.is_empty() {
                return Ok(states);
            }
            token = page.next_page_token;
        }
    }

    /// The first state of one unit (`GET state/<name>`), `None` on 404.
    ///
    /// # Errors
    /// Any [`ClientError`] other than a 404.
    pub async fn unit_state(&self, name: &str) -> Result<Option<UnitState>, ClientError> {
        let path = format!("state/{}", escape_path_segment(name));
        match self.get_json(&path, Vec::new()).await {
            Ok(state) => Ok(Some(state)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn put_unit(&self, name: &str, unit: &Unit) -> Result<(), ClientError> {
        let path = format!("units/{}", escape_path_segment(name));
        let body = serde_json::to_vec(unit).map_err(|error| ClientError::Decode {
            endpoint: self.endpoint.url().to_owned(),
            detail: error.to_string(),
        })?;
        self.request(Method::PUT, &path, Vec::new(), Some(body))
            .await
            .map(drop)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: Query<'_>,
    ) -> Result<T, ClientError> {
        let body = self.request(Method::GET, path, query, None).await?;
        // The original server answers some empty collections with 204 and no body.
        let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
        serde_json::from_slice(body).map_err(|error| ClientError::Decode {
            endpoint: self.endpoint.url().to_owned(),
            detail: error.to_string(),
        })
    }

    /// One request, with the timeout applied to each attempt; returns the
    /// body of a 2xx answer. A 503 (the server cannot reach etcd for now) to
    /// an idempotent request (GET, PUT of a whole unit or its desired state,
    /// DELETE) is sent again after a backoff with jitter, at most
    /// [`UNAVAILABLE_RETRIES`] times; other methods and errors return at once.
    async fn request(
        &self,
        method: Method,
        path: &str,
        query: Query<'_>,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        self.request_at(self.endpoint.base_path(), method, path, query, body)
            .await
    }

    /// [`Client::request`] under another base path than the v1 API's (the
    /// operations API beside it), with the same retries.
    async fn request_at(
        &self,
        base_path: &str,
        method: Method,
        path: &str,
        query: Query<'_>,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let idempotent = matches!(method, Method::GET | Method::PUT | Method::DELETE);
        self.request_retrying(base_path, method, path, query, body, idempotent)
            .await
    }

    /// [`Client::request_at`], sent again on a 503 when `retry_unavailable`
    /// (a request the server refuses whole when unavailable, so sending it
    /// again cannot apply it twice).
    async fn request_retrying(
        &self,
        base_path: &str,
        method: Method,
        path: &str,
        query: Query<'_>,
        body: Option<Vec<u8>>,
        retry_unavailable: bool,
    ) -> Result<Bytes, ClientError> {
        let mut pauses = UnavailablePauses::new();
        loop {
            let attempt = self
                .request_once(base_path, method.clone(), path, query.clone(), body.clone())
                .await;
            let unavailable = matches!(&attempt, Err(error) if error.status() == Some(503));
            if !(retry_unavailable && unavailable && pauses.wait().await) {
                return attempt;
            }
        }
    }

    /// One attempt of [`Client::request_at`], with the timeout applied.
    async fn request_once(
        &self,
        base_path: &str,
        method: Method,
        path: &str,
        query: Query<'_>,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let exchange = self.exchange(base_path, method, path, query, body, &[]);
        match self.timeout {
            Some(timeout) => tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or_else(|_| {
                    Err(ClientError::Timeout {
                        endpoint: self.endpoint.url().to_owned(),
                        timeout,
                    })
                }),
            None => exchange.await,
        }
    }

    /// One attempt of a bodiless request with extra `headers`, without the
    /// client's timeout (the caller sets its own).
    async fn request_with_headers(
        &self,
        base_path: &str,
        method: Method,
        path: &str,
        query: Query<'_>,
        headers: &[(&'static str, String)],
    ) -> Result<Bytes, ClientError> {
        self.exchange(base_path, method, path, query, None, headers)
            .await
    }

    async fn exchange(
        &self,
        base_path: &str,
        method: Method,
        path: &str,
        query: Query<'_>,
        body: Option<Vec<u8>>,
        headers: &[(&'static str, String)],
    ) -> Result<Bytes, ClientError> {
        let transport = |detail: String| ClientError::Transport {
            endpoint: self.endpoint.url().to_owned(),
            detail,
        };
        let mut uri = format!("{base_path}{path}?alt=json");
        for (key, value) in query {
            uri.push('&');
            uri.push_str(key);
            uri.push('=');
            uri.push_str(&escape_query_value(value));
        }
        let has_body = body.is_some();
        let body = Bytes::from(body.unwrap_or_default());
        let request = |body: Bytes| {
            let mut builder = Request::builder()
                .method(method.clone())
                .uri(&uri)
                .header(http::header::HOST, self.endpoint.host_header())
                .header(http::header::USER_AGENT, "fleetctl")
                .header(http::header::ACCEPT, "application/json");
            if has_body {
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            }
            if let Some(token) = &self.token {
                builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            for (name, value) in headers {
                builder = builder.header(*name, value);
            }
            builder
                .body(Full::new(body))
                .map_err(|error| transport(format!("building {method} {uri}: {error}")))
        };
        // A reused connection the server closed in the meantime fails before
        // it answers: send an idempotent request again on a new connection.
        let (sender, response) = match self.pool.take().await {
            Some(mut sender) => match sender.send_request(request(body.clone())?).await {
                Ok(response) => (sender, response),
                Err(_) if method != Method::POST => {
                    self.send_new(&method, &uri, request(body)?).await?
                }
                Err(error) => return Err(self.broken(&method, &uri, &error).await),
            },
            None => self.send_new(&method, &uri, request(body)?).await?,
        };
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| transport(format!("{method} {uri}: reading body: {error}")))?
            .to_bytes();
        self.pool.put(sender);

        if status.is_success() {
            return Ok(body);
        }
        Err(api_error(status, &body))
    }
}

impl Client {
    /// Sends `request` on a new connection (its connection task ends when the
    /// returned sender is dropped).
    async fn send_new(
        &self,
        method: &Method,
        uri: &str,
        request: Request<Full<Bytes>>,
    ) -> Result<(pool::Sender, hyper::Response<hyper::body::Incoming>), ClientError> {
        let connection = self
            .dialer
            .dial()
            .await
            .map_err(|error| ClientError::Transport {
                endpoint: self.endpoint.url().to_owned(),
                detail: error.to_string(),
            })?;
        let (mut sender, connection) =
            match hyper::client::conn::http1::handshake(TokioIo::new(connection)).await {
                Ok(handshake) => handshake,
                Err(error) => return Err(self.broken(method, uri, &error).await),
            };
        tokio::spawn(connection);
        match sender.send_request(request).await {
            Ok(response) => Ok((sender, response)),
            Err(error) => Err(self.broken(method, uri, &error).await),
        }
    }

    /// The transport error of a connection that broke before an answer,
    /// with the dialer's explanation when it has one.
    async fn broken(&self, method: &Method, uri: &str, error: &hyper::Error) -> ClientError {
        let mut detail = format!("{method} {uri}: {error}");
        // hyper's message is only the kind ("connection error"); the cause (a
        // TLS alert, a reset) is in its sources.
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            detail.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        if let Some(hint) = tls::refusal_hint(error) {
            detail.push_str(": ");
            detail.push_str(hint);
        }
        if let Some(explanation) = self.dialer.explain_failure().await {
            detail.push_str(": ");
            detail.push_str(&explanation);
        }
        ClientError::Transport {
            endpoint: self.endpoint.url().to_owned(),
            detail,
        }
    }
}

/// The googleapi error of a non-2xx answer (Documentation/compatibility.md,
/// "API transport and errors").
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let code = status.as_u16();
    match serde_json::from_slice::<ErrorEntity>(body) {
        Ok(entity) if !entity.error.message.is_empty() => ClientError::Api {
            // googleapi reports the status code of the error entity.
            code: if entity.error.code == 0 {
                code
            } else {
                entity.error.code
            },
            message: entity.error.message,
        },
        _ => ClientError::Http {
            code,
            body: String::from_utf8_lossy(body).into_owned(),
        },
    }
}

fn page_query(token: &str) -> Query<'_> {
    if token.is_empty() {
        Vec::new()
    } else {
        vec![("nextPageToken", token)]
    }
}

/// The bytes a unit name or query value keeps as they are: `@`, `:` and the
/// unreserved characters; `\` (valid in unit names), `=`, `&` and the rest
/// are escaped.
const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@')
    .remove(b':');

/// Percent-encodes a unit name for one path segment.
fn escape_path_segment(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, ESCAPED).to_string()
}

/// Percent-encodes a query value (`=`/`&` and friends escaped).
fn escape_query_value(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, ESCAPED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(path: &str, url: &str) -> Endpoint {
        Endpoint::Unix {
            path: PathBuf::from(path),
            url: url.to_owned(),
        }
    }

    #[test]
    fn parses_endpoints() {
        let cases: &[(&str, Result<Endpoint, EndpointError>)] = &[
            (
                "unix:///var/run/fleet.sock",
                Ok(unix("/var/run/fleet.sock", "unix:///var/run/fleet.sock")),
            ),
            (
                "file:///tmp/f.sock",
                Ok(unix("/tmp/f.sock", "file:///tmp/f.sock")),
            ),
            (
                "http://127.0.0.1:54728",
                Ok(Endpoint::Http {
                    authority: "127.0.0.1:54728".into(),
                    tls: false,
                    base_path: "/fleet/v1/".into(),
                    url: "http://127.0.0.1:54728".into(),
                }),
            ),
            (
                "http://example.com/prefix/",
                Ok(Endpoint::Http {
                    authority: "example.com:80".into(),
                    tls: false,
                    base_path: "/prefix/fleet/v1/".into(),
                    url: "http://example.com/prefix/".into(),
                }),
            ),
            (
                "http://[::1]:8080/",
                Ok(Endpoint::Http {
                    authority: "[::1]:8080".into(),
                    tls: false,
                    base_path: "/fleet/v1/".into(),
                    url: "http://[::1]:8080/".into(),
                }),
            ),
            ("/var/run/fleet.sock", Err(EndpointError::SchemeUndefined)),
            ("", Err(EndpointError::SchemeUndefined)),
            (
                "unix://host/var/run/fleet.sock",
                Err(EndpointError::HostWithSocketScheme {
                    host: "host".into(),
                    scheme: "unix".into(),
                }),
            ),
            (
                "https://example.com",
                Ok(Endpoint::Http {
                    authority: "example.com:443".into(),
                    tls: true,
                    base_path: "/fleet/v1/".into(),
                    url: "https://example.com".into(),
                }),
            ),
            (
                "ftp://example.com",
                Err(EndpointError::UnknownScheme("ftp".into())),
            ),
            (
                "http:///path",
                Err(EndpointError::MissingHost("http:///path".into())),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(&Endpoint::parse(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn endpoint_error_messages_are_the_originals() {
        assert_eq!(
            EndpointError::SchemeUndefined.to_string(),
            "URL scheme undefined"
        );
        assert_eq!(
            Endpoint::parse("unix://foo/bar").unwrap_err().to_string(),
            r#"unable to connect to host "foo" with scheme "unix""#
        );
    }

    #[test]
    fn api_errors_read_like_googleapi() {
        let error = api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error":{"code":503,"message":"fleet server unable to communicate with etcd"}}"#,
        );
        assert_eq!(
            error.to_string(),
            "googleapi: Error 503: fleet server unable to communicate with etcd"
        );
        let error = api_error(
            StatusCode::METHOD_NOT_ALLOWED,
            br#"{"error":{"code":405,"message":""}}"#,
        );
        assert_eq!(
            error.to_string(),
            r#"googleapi: got HTTP response code 405 with body: {"error":{"code":405,"message":""}}"#
        );
        let error = api_error(StatusCode::NOT_FOUND, b"404 page not found\n");
        assert!(error.is_not_found());
        assert_eq!(
            error.to_string(),
            "googleapi: got HTTP response code 404 with body: 404 page not found\n"
        );
    }

    #[test]
    fn escapes_names() {
        assert_eq!(escape_path_segment("foo@bar.service"), "foo@bar.service");
        assert_eq!(escape_path_segment(r"yes@no\.service"), "yes@no%5C.service");
        assert_eq!(escape_query_value("a b&c"), "a%20b%26c");
    }

    #[tokio::test]
    async fn unreachable_socket_is_a_transport_error_naming_the_endpoint() {
        let client = Client::new(Endpoint::parse("unix:///nonexistent/fleet.sock").unwrap());
        let error = client.machines().await.unwrap_err();
        assert!(matches!(error, ClientError::Transport { .. }), "{error:?}");
        let text = error.to_string();
        assert!(text.contains("unix:///nonexistent/fleet.sock"), "{text}");
        assert!(text.contains("dial unix /nonexistent/fleet.sock"), "{text}");
    }

    /// A tiny HTTP server on a unix socket (a std thread, so the test needs
    /// no extra tokio features): for each expected request line, checks it and
    /// answers with the paired body, so paging and `?alt=json` are tested for real.
    fn serve(
        listener: std::os::unix::net::UnixListener,
        exchanges: Vec<(&'static str, &'static str)>,
    ) -> std::thread::JoinHandle<Vec<String>> {
        let exchanges = exchanges
            .into_iter()
            .map(|(line, response)| (line, "200 OK", response))
            .collect();
        serve_statuses(listener, exchanges)
    }

    /// [`serve`] with a status line per answer.
    fn serve_statuses(
        listener: std::os::unix::net::UnixListener,
        exchanges: Vec<(&'static str, &'static str, &'static str)>,
    ) -> std::thread::JoinHandle<Vec<String>> {
        use std::io::{BufRead, BufReader, Write};
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (expect_line, status, response) in exchanges {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header == "\r\n" || header.is_empty() {
                        break;
                    }
                }
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{response}",
                    response.len()
                );
                reader.get_mut().write_all(reply.as_bytes()).unwrap();
                assert_eq!(request_line.trim_end(), expect_line);
                seen.push(request_line.trim_end().to_owned());
            }
            seen
        })
    }

    #[tokio::test]
    async fn list_calls_follow_next_page_token() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = serve(
            listener,
            vec![
                (
                    "GET /fleet/v1/machines?alt=json HTTP/1.1",
                    r#"{"machines":[{"id":"a"}],"nextPageToken":"ZAACAA=="}"#,
                ),
                (
                    "GET /fleet/v1/machines?alt=json&nextPageToken=ZAACAA%3D%3D HTTP/1.1",
                    r#"{"machines":[{"id":"b"}]}"#,
                ),
            ],
        );
        let endpoint = Endpoint::parse(&format!("unix://{}", socket.display())).unwrap();
        let client = Client::new(endpoint).with_timeout(Some(Duration::from_secs(10)));
        let machines = client.machines().await.unwrap();
        let ids: Vec<String> = machines.into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(server.join().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn request_timeout_applies() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("silent.sock");
        // Accepts connections (the kernel backlog does) but never answers.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let endpoint = Endpoint::parse(&format!("unix://{}", socket.display())).unwrap();
        let client = Client::new(endpoint).with_timeout(Some(Duration::from_millis(200)));
        let error = client.units().await.unwrap_err();
        assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
    }

    const UNAVAILABLE: &str = r#"{"error":{"code":503,"message":"fleet server unable to communicate with etcd: etcd list units timed out after 1s"}}"#;

    #[tokio::test]
    async fn unavailable_is_retried_with_backoff_then_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let line = "GET /fleet/v1/units?alt=json HTTP/1.1";
        let server = serve_statuses(
            listener,
            vec![
                (line, "503 Service Unavailable", UNAVAILABLE),
                (line, "503 Service Unavailable", UNAVAILABLE),
                (line, "200 OK", r#"{"units":[{"name":"a.service"}]}"#),
            ],
        );
        let endpoint = Endpoint::parse(&format!("unix://{}", socket.display())).unwrap();
        let client = Client::new(endpoint).with_timeout(Some(Duration::from_secs(10)));
        let units = client.units().await.unwrap();
        assert_eq!(units.len(), 1);
        assert_eq!(server.join().unwrap().len(), 3, "two 503s, then the answer");
    }

    #[tokio::test]
    async fn a_batch_refused_whole_as_unavailable_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let line = "POST /fleet/x1/units?alt=json HTTP/1.1";
        let server = serve_statuses(
            listener,
            vec![
                (line, "503 Service Unavailable", UNAVAILABLE),
                (
                    line,
                    "200 OK",
                    r#"{"results":[{"name":"a.service","code":409,"message":"unit does not exist and options field empty"}]}"#,
                ),
            ],
        );
        let endpoint = Endpoint::parse(&format!("unix://{}", socket.display())).unwrap();
        let client = Client::new(endpoint).with_timeout(Some(Duration::from_secs(10)));
        let unit = Unit {
            name: "a.service".to_owned(),
            desired_state: "launched".to_owned(),
            ..Unit::default()
        };
        let results = client.put_units(&[unit]).await.unwrap();
        assert_eq!(server.join().unwrap().len(), 2, "a 503, then the answer");
        let error = ClientError::of_unit_result(&results[0]).expect("an error");
        assert_eq!(
            error.to_string(),
            "googleapi: Error 409: unit does not exist and options field empty"
        );
    }

    #[tokio::test]
    async fn units_answered_unavailable_inside_a_batch_are_sent_again_alone() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let line = "POST /fleet/x1/units?alt=json HTTP/1.1";
        // The second answer has one result: had both units been sent again, the client
        // would refuse it for a wrong count.
        let server = serve_statuses(
            listener,
            vec![
                (
                    line,
                    "200 OK",
                    r#"{"results":[{"name":"a.service","code":201},{"name":"b.service","code":503,"message":"fleet server unable to communicate with etcd"}]}"#,
                ),
                (
                    line,
                    "200 OK",
                    r#"{"results":[{"name":"b.service","code":201}]}"#,
                ),
            ],
        );
        let endpoint = Endpoint::parse(&format!("unix://{}", socket.display())).unwrap();
        let client = Client::new(endpoint).with_timeout(Some(Duration::from_secs(10)));
        let unit = |name: &str| Unit {
            name: name.to_owned(),
            desired_state: "launched".to_owned(),
            ..Unit::default()
        };
        let results = client
            .put_units(&[unit("a.service"), unit("b.service")])
            .await
            .unwrap();
        assert_eq!(server.join().unwrap().len(), 2, "the batch, then b again");
        let names: Vec<(&str, u16)> = results.iter().map(|r| (r.name.as_str(), r.code)).collect();
        assert_eq!(names, [("a.service", 201), ("b.service", 201)]);
    }

    #[tokio::test]
    async fn unavailable_retries_are_bounded_and_the_reason_reaches_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let line = "GET /fleet/v1/units?alt=json HTTP/1.1";
        let attempts = UNAVAILABLE_RETRIES as usize + 1;
        let server = serve_statuses(
            listener,
            vec![(line, "503 Service Unavailable", UNAVAILABLE); attempts],
        );
        let endpoint = Endpoint::parse(&format!("unix://{}", socket.display())).unwrap();
        let client = Client::new(endpoint).with_timeout(Some(Duration::from_secs(10)));
        let error = client.units().await.unwrap_err();
        assert_eq!(error.status(), Some(503), "{error:?}");
        assert!(error.to_string().contains("timed out"), "{error}");
        assert_eq!(server.join().unwrap().len(), attempts);
    }
}
