//! A unit's logs and status through the API, without SSH:
//! `GET /fleet/x1/units/<unit>/logs` and `/status` (JSON and wire format in
//! [`fleet_api::x1`]).
//!
//! The fleetd a user asks finds the machine the unit is placed on. If that
//! is this machine, it runs `journalctl` (or `systemctl status`) itself
//! ([`journal`]); otherwise it forwards the request to that machine's API
//! ([`peer`]), at the address the machine publishes with its presence
//! (`api_advertise_url`), presenting its own client certificate
//! (`api_peer_cert_file`). The other fleetd answers the peer paths
//! (`/fleet/x1/peer/units/<unit>/…`) only for units placed on itself and
//! never forwards them again, so a request makes at most one hop.
//!
//! Who may: the gate ([`crate::access`]) authorises the user here (a unit's
//! logs need `operate`, its status `read`); the machine that reads the
//! journal authorises the forwarding fleetd as a `peer` and logs, in the
//! audit log, on whose behalf it read. Closed until configured: without an
//! advertised address or a peer certificate, forwarding answers 503 naming
//! the option to set.
//!
//! Bounds: at most [`fleet_api::x1::MAX_LOG_LINES`] lines back, at most
//! [`MAX_LOG_STREAMS`] streams open at once on one fleetd, and a forwarded
//! stream ends when the peer sends nothing (not even its ping) for
//! [`peer::PEER_IDLE_TIMEOUT`]. Streams are pulled: a slow reader stops the
//! reading of the journal (the pipe fills), nothing is buffered without end.

pub mod journal;
pub mod peer;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Sse;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::info;

use fleet_api::client::{ClientTls, ON_BEHALF_OF_HEADER};
use fleet_api::entities::UNAVAILABLE_MESSAGE;
use fleet_api::server::Availability;
use fleet_api::x1::{DEFAULT_LOG_LINES, MAX_LOG_LINES};
use fleet_registry::{MachineId, Registry, RegistryError};
use fleet_systemd::unit::UnitName;

use crate::api_gate::{AUDIT_TARGET, CallerIdentity, error_response};

/// The most log streams (local or forwarded) one fleetd serves at once.
pub const MAX_LOG_STREAMS: usize = 64;

/// What the logs routes need besides the registry.
#[derive(Clone, Debug)]
pub struct LogsConfig {
    /// This machine: units placed here are read here.
    pub machine: MachineId,
    /// The client certificate, key and CA for calls to other fleetds
    /// (`api_peer_*`); `None`: forwarding is off.
    pub peer_tls: Option<ClientTls>,
    /// `systemd_user`: units are the user manager's (`--user`).
    pub user_units: bool,
}

#[derive(Clone)]
struct Logs {
    registry: Registry,
    available: Availability,
    config: Arc<LogsConfig>,
    streams: Arc<Semaphore>,
}

/// The logs and status routes, to merge beside the v1 router.
pub fn router(registry: Registry, available: Availability, config: LogsConfig) -> Router {
    Router::new()
        .route("/fleet/x1/units/{unit}/logs", get(user_logs))
        .route("/fleet/x1/units/{unit}/status", get(user_status))
        .route("/fleet/x1/peer/units/{unit}/logs", get(peer_logs))
        .route("/fleet/x1/peer/units/{unit}/status", get(peer_status))
        .with_state(Logs {
            registry,
            available,
            config: Arc::new(config),
            streams: Arc::new(Semaphore::new(MAX_LOG_STREAMS)),
        })
}

/// An error answer: the API's JSON error entity.
#[derive(Debug)]
pub struct LogsError(pub StatusCode, pub String);

impl IntoResponse for LogsError {
    fn into_response(self) -> Response {
        error_response(self.0, &self.1)
    }
}

impl From<RegistryError> for LogsError {
    fn from(error: RegistryError) -> LogsError {
        LogsError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("fleet server unable to communicate with etcd: {error}"),
        )
    }
}

/// The query of the logs and status routes (`alt=json` and others ignored).
#[derive(Debug, Default, Deserialize)]
struct LogsQuery {
    lines: Option<String>,
    follow: Option<String>,
    machine: Option<String>,
}

/// What to read, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub lines: u32,
    pub follow: bool,
}

fn wanted(query: &LogsQuery) -> Result<Wanted, LogsError> {
    let bad = |message: String| LogsError(StatusCode::BAD_REQUEST, message);
    let lines = match query.lines.as_deref() {
        None | Some("") => DEFAULT_LOG_LINES,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|lines| *lines <= MAX_LOG_LINES)
            .ok_or_else(|| bad(format!("lines must be a number from 0 to {MAX_LOG_LINES}")))?,
    };
    let follow = match query.follow.as_deref() {
        None | Some("" | "false" | "0") => false,
        Some("true" | "1") => true,
        Some(other) => return Err(bad(format!("follow must be true or false, not {other:?}"))),
    };
    Ok(Wanted { lines, follow })
}

fn unit_name(raw: &str) -> Result<UnitName, LogsError> {
    raw.parse()
        .map_err(|error| LogsError(StatusCode::BAD_REQUEST, format!("{error}")))
}

/// Where a unit's journal is read.
enum Location {
    Here,
    Peer { machine: MachineId, url: String },
}

impl Logs {
    fn ready(&self) -> Result<(), LogsError> {
        if self.available.is_available() {
            Ok(())
        } else {
            Err(LogsError(
                StatusCode::SERVICE_UNAVAILABLE,
                UNAVAILABLE_MESSAGE.to_owned(),
            ))
        }
    }

    fn stream_permit(&self) -> Result<OwnedSemaphorePermit, LogsError> {
        Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            LogsError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "this fleetd already serves {MAX_LOG_STREAMS} log streams; try again later"
                ),
            )
        })
    }

    /// The machine `unit` runs on (`wanted`, when it is placed on several).
    async fn locate(&self, unit: &UnitName, wanted: Option<&str>) -> Result<Location, LogsError> {
        let placed = self.registry.unit_placements(unit).await?;
        let machine = match (wanted, placed.as_slice()) {
            (_, []) => {
                return Err(LogsError(
                    StatusCode::NOT_FOUND,
                    format!("unit {unit} is not scheduled on any machine"),
                ));
            }
            (Some(wanted), _) => placed
                .iter()
                .find(|machine| machine.as_str() == wanted)
                .cloned()
                .ok_or_else(|| {
                    LogsError(
                        StatusCode::NOT_FOUND,
                        format!("unit {unit} is not scheduled on machine {wanted}"),
                    )
                })?,
            (None, [only]) => only.clone(),
            (None, several) => {
                let names: Vec<&str> = several.iter().map(MachineId::as_str).collect();
                return Err(LogsError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unit {unit} runs on {} machines ({}): choose one with machine=ID",
                        names.len(),
                        names.join(", ")
                    ),
                ));
            }
        };
        if machine == self.config.machine {
            return Ok(Location::Here);
        }
        let url = self.peer_url(&machine).await?;
        Ok(Location::Peer { machine, url })
    }

    /// The advertised API address of `machine`, if forwarding can work.
    async fn peer_url(&self, machine: &MachineId) -> Result<String, LogsError> {
        let unavailable = |message: String| LogsError(StatusCode::SERVICE_UNAVAILABLE, message);
        let Some(state) = self.registry.machine(machine).await? else {
            return Err(unavailable(format!(
                "machine {machine} is not registered (it may be down)"
            )));
        };
        if state.api_url.is_empty() {
            return Err(unavailable(format!(
                "machine {machine} publishes no API address: set api_advertise_url in its fleet.conf \
                 (or use fleetctl journal/status over SSH)"
            )));
        }
        if self.config.peer_tls.is_none() {
            return Err(unavailable(format!(
                "this fleetd cannot forward to machine {machine}: set api_peer_cert_file, \
                 api_peer_key_file and api_peer_ca_file in its fleet.conf"
            )));
        }
        Ok(state.api_url)
    }

    /// The peer paths serve only units placed on this machine.
    async fn check_placed_here(&self, unit: &UnitName) -> Result<(), LogsError> {
        let placed = self.registry.unit_placements(unit).await?;
        if placed.contains(&self.config.machine) {
            return Ok(());
        }
        Err(LogsError(
            StatusCode::NOT_FOUND,
            format!(
                "unit {unit} is not scheduled on machine {}",
                self.config.machine
            ),
        ))
    }
}

fn identity(caller: Option<&Extension<CallerIdentity>>) -> String {
    caller.map_or_else(|| "unknown".to_owned(), |caller| caller.0.0.clone())
}

async fn user_logs(
    State(logs): State<Logs>,
    Path(unit): Path<String>,
    Query(query): Query<LogsQuery>,
    caller: Option<Extension<CallerIdentity>>,
) -> Result<Response, LogsError> {
    logs.ready()?;
    let unit = unit_name(&unit)?;
    let wanted = wanted(&query)?;
    let location = logs.locate(&unit, query.machine.as_deref()).await?;
    let permit = logs.stream_permit()?;
    match location {
        Location::Here => {
            let events = journal::stream(&unit, &wanted, logs.config.user_units, permit)?;
            Ok(Sse::new(events).into_response())
        }
        Location::Peer { machine, url } => {
            let target = peer::Target::new(&machine, &url, &logs.config)?;
            let identity = identity(caller.as_ref());
            let events = target.logs(&unit, &wanted, &identity, permit).await?;
            Ok(Sse::new(events).into_response())
        }
    }
}

async fn user_status(
    State(logs): State<Logs>,
    Path(unit): Path<String>,
    Query(query): Query<LogsQuery>,
    caller: Option<Extension<CallerIdentity>>,
) -> Result<Response, LogsError> {
    logs.ready()?;
    let unit = unit_name(&unit)?;
    let status = match logs.locate(&unit, query.machine.as_deref()).await? {
        Location::Here => journal::status(&unit, &logs.config).await?,
        Location::Peer { machine, url } => {
            let target = peer::Target::new(&machine, &url, &logs.config)?;
            target.status(&unit, &identity(caller.as_ref())).await?
        }
    };
    Ok(Json(status).into_response())
}

/// Logs, in the audit log, a peer's read and on whose behalf it asked.
fn audit_peer_read(
    what: &str,
    unit: &UnitName,
    caller: Option<&Extension<CallerIdentity>>,
    headers: &HeaderMap,
) {
    let on_behalf_of = headers
        .get(ON_BEHALF_OF_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("unknown");
    info!(target: AUDIT_TARGET, identity = %identity(caller), on_behalf_of, unit = %unit,
        "Peer read of a unit's {what}.");
}

async fn peer_logs(
    State(logs): State<Logs>,
    Path(unit): Path<String>,
    Query(query): Query<LogsQuery>,
    caller: Option<Extension<CallerIdentity>>,
    headers: HeaderMap,
) -> Result<Response, LogsError> {
    logs.ready()?;
    let unit = unit_name(&unit)?;
    let wanted = wanted(&query)?;
    logs.check_placed_here(&unit).await?;
    let permit = logs.stream_permit()?;
    audit_peer_read("logs", &unit, caller.as_ref(), &headers);
    let events = journal::stream(&unit, &wanted, logs.config.user_units, permit)?;
    Ok(Sse::new(events).into_response())
}

async fn peer_status(
    State(logs): State<Logs>,
    Path(unit): Path<String>,
    caller: Option<Extension<CallerIdentity>>,
    headers: HeaderMap,
) -> Result<Response, LogsError> {
    logs.ready()?;
    let unit = unit_name(&unit)?;
    logs.check_placed_here(&unit).await?;
    audit_peer_read("status", &unit, caller.as_ref(), &headers);
    let status = journal::status(&unit, &logs.config).await?;
    Ok(Json(status).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(lines: Option<&str>, follow: Option<&str>) -> LogsQuery {
        LogsQuery {
            lines: lines.map(str::to_owned),
            follow: follow.map(str::to_owned),
            machine: None,
        }
    }

    #[test]
    fn log_queries_are_bounded_and_checked() {
        let ok = |lines, follow| wanted(&query(lines, follow)).expect("valid query");
        assert_eq!(
            ok(None, None),
            Wanted {
                lines: DEFAULT_LOG_LINES,
                follow: false
            }
        );
        assert_eq!(
            ok(Some("0"), Some("true")),
            Wanted {
                lines: 0,
                follow: true
            }
        );
        assert_eq!(ok(Some("10000"), Some("false")).lines, MAX_LOG_LINES);
        for (lines, follow) in [
            (Some("10001"), None),
            (Some("-1"), None),
            (Some("ten"), None),
            (None, Some("yes")),
        ] {
            let LogsError(status, message) = wanted(&query(lines, follow)).unwrap_err();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
        }
    }
}
