//! The API's gate: every request on every listener passes [`Gate::handle`]
//! before it reaches the router, and every mutating request leaves one line
//! in the audit log.
//!
//! The gate holds what SIGHUP may replace without closing a socket: the
//! access policy (`api_access_file`) and the TLS acceptor (so renewed
//! certificates are picked up by a reload). The decision itself is the pure
//! `access::decide`; the gate only gathers the facts, answers a refusal
//! with the API's JSON error entity, caps the requests in flight and logs.
//!
//! Audit lines use the target `fleet::audit` at INFO, with the fields
//! `identity`, `role`, `method`, `path` and `status`: one per mutating
//! request (allowed or not), and one per refused request of any method.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::{Context, bail};

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use fleet_api::entities::{ErrorBody, ErrorEntity};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, StatusCode};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{error, info, warn};

use crate::access::{AccessPolicy, Decision, RequestFacts, Transport, decide, is_mutating};
use crate::api_tls::TlsFiles;
use crate::config::Config;
use crate::listeners::{Listener, MAX_IN_FLIGHT};

/// The log target of the audit lines (`journalctl -u fleet` shows them).
pub const AUDIT_TARGET: &str = "fleet::audit";

/// Who the gate let in (as the audit log names them: `cert:<CN>`, ...),
/// put in the request's extensions for handlers that pass it on (a forwarded
/// logs request names it to the machine that reads the journal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerIdentity(pub String);

/// What every listener shares: the swappable policy and TLS acceptor, and the
/// cap on requests in flight across all listeners.
pub struct Gate {
    policy: RwLock<Option<Arc<AccessPolicy>>>,
    tls: RwLock<Option<TlsAcceptor>>,
    in_flight: Semaphore,
}

impl Gate {
    /// A gate with `policy` (`None`: no access file), `tls` (`None`: TCP is
    /// plaintext) and room for `max_in_flight` requests at once.
    pub fn new(
        policy: Option<AccessPolicy>,
        tls: Option<TlsAcceptor>,
        max_in_flight: usize,
    ) -> Arc<Gate> {
        Arc::new(Gate {
            policy: RwLock::new(policy.map(Arc::new)),
            tls: RwLock::new(tls),
            in_flight: Semaphore::new(max_in_flight),
        })
    }

    /// Uses `policy` from the next request on (SIGHUP).
    pub fn replace_policy(&self, policy: Option<AccessPolicy>) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = policy.map(Arc::new);
    }

    /// Uses `tls` for the next TCP connections (SIGHUP, renewed certificates).
    pub fn replace_tls(&self, tls: TlsAcceptor) {
        *self.tls.write().unwrap_or_else(PoisonError::into_inner) = Some(tls);
    }

    /// The TLS acceptor, when TCP listeners speak TLS.
    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.tls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Decides `request` from `transport` and, when allowed, hands it to
    /// `app`. Waits for a free in-flight slot first.
    pub async fn handle(
        &self,
        transport: &Transport,
        mut request: Request<Body>,
        app: Router,
    ) -> Response {
        // The semaphore is never closed, so acquiring only waits.
        let Ok(_slot) = self.in_flight.acquire().await else {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "the API is shutting down");
        };
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let decision = {
            let policy = self
                .policy
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let header = |name: http::header::HeaderName| {
                request
                    .headers()
                    .get(name)
                    .map(|value: &HeaderValue| value.to_str().unwrap_or(""))
            };
            let facts = RequestFacts {
                method: &method,
                path: &path,
                host: header(HOST),
                authorization: header(AUTHORIZATION),
            };
            decide(policy.as_deref(), transport, facts)
        };
        match decision {
            Decision::Allow { identity, role } => {
                request
                    .extensions_mut()
                    .insert(CallerIdentity(identity.to_string()));
                let response = match app.oneshot(request).await {
                    Ok(response) => response,
                    Err(infallible) => match infallible {},
                };
                if is_mutating(&method) {
                    let status = response.status().as_u16();
                    info!(target: AUDIT_TARGET, %identity, %role, %method, path = %path, status, "API request.");
                }
                response
            }
            Decision::Deny {
                status,
                message,
                identity,
            } => {
                let identity = identity.map_or_else(|| "unknown".to_owned(), |i| i.to_string());
                info!(
                    target: AUDIT_TARGET,
                    identity = %identity,
                    role = %"none",
                    %method,
                    path = %path,
                    status = status.as_u16(),
                    reason = %message,
                    "API request refused."
                );
                error_response(status, &message)
            }
        }
    }
}

/// The API's error entity, as the router answers errors.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let entity = ErrorEntity {
        error: ErrorBody {
            code: status.as_u16(),
            message: message.to_owned(),
        },
    };
    let body = serde_json::to_string(&entity).unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Builds the gate from the config, refusing plaintext TCP on a listener
/// that is not loopback unless `api_insecure_tcp` accepts the risk.
///
/// # Errors
/// Unusable TLS files, an unusable access file, or a plaintext listener on
/// a non-loopback address; the message names the fix.
pub fn from_config(config: &Config, listeners: &[Listener]) -> anyhow::Result<Arc<Gate>> {
    let tls = tls_acceptor(config)?;
    if tls.is_none() && !config.api_insecure_tcp {
        for listener in listeners {
            if let Listener::Tcp(tcp) = listener {
                let address = tcp.local_addr().context("reading a listener's address")?;
                if !address.ip().is_loopback() {
                    bail!(
                        "refusing to serve the API in plaintext on {address}, which is not a loopback \
                         address: whoever reaches it can run any process as root on every machine. \
                         Configure TLS (api_tls_cert_file and api_tls_key_file, with \
                         api_tls_client_ca_file or tokens in api_access_file), or set \
                         api_insecure_tcp=true to accept the risk"
                    );
                }
            }
        }
    }
    let policy = access_policy(config)?;
    if tls.is_none() && policy.is_some() {
        warn!(
            "api_access_file is set but the API has no TLS (api_tls_cert_file): roles apply only to TLS clients."
        );
    }
    Ok(Gate::new(policy, tls, MAX_IN_FLIGHT))
}

/// Applies a reloaded config to `gate`: the access file is read again and
/// renewed certificates are used. Whatever fails keeps the old value (logged).
pub fn reload(gate: &Gate, config: &Config) {
    match access_policy(config) {
        Ok(policy) => {
            gate.replace_policy(policy);
            info!("Reloaded the API access policy.");
        }
        Err(error) => error!("Keeping the old API access policy: {error:#}"),
    }
    let had_tls = gate.tls().is_some();
    match tls_acceptor(config) {
        Ok(Some(acceptor)) if had_tls => gate.replace_tls(acceptor),
        Ok(tls) if tls.is_some() != had_tls => warn!(
            "Turning TLS on or off for the API takes a restart of fleetd; the listeners keep their mode."
        ),
        Ok(_) => {}
        Err(error) => error!("Keeping the old API TLS certificates: {error:#}"),
    }
}

fn tls_acceptor(config: &Config) -> anyhow::Result<Option<TlsAcceptor>> {
    if config.api_tls_cert_file.is_empty() {
        return Ok(None);
    }
    let client_ca = (!config.api_tls_client_ca_file.is_empty())
        .then(|| Path::new(&config.api_tls_client_ca_file));
    let files = TlsFiles {
        cert: Path::new(&config.api_tls_cert_file),
        key: Path::new(&config.api_tls_key_file),
        client_ca,
    };
    crate::api_tls::acceptor(&files).map(Some)
}

fn access_policy(config: &Config) -> anyhow::Result<Option<AccessPolicy>> {
    if config.api_access_file.is_empty() {
        return Ok(None);
    }
    Ok(Some(AccessPolicy::load(Path::new(
        &config.api_access_file,
    ))?))
}
