//! Rolling updates (new resources beside v1; the original `fleetctl` never
//! asks for them): `GET /rollouts`, `POST /rollouts` (start),
//! `GET /rollouts/<name>` and `POST /rollouts/<name>` (an operator action:
//! pause, resume, abort, promote).
//!
//! The API only records what is asked (the spec, see
//! `fleet_registry::rollouts`); the elected engine drives the rollout and
//! writes its progress.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::Response;
use http::StatusCode;
use tracing::info;

use fleet_registry::rollouts::StoredRollout;
use fleet_registry::{Revision, TargetState};
use fleet_systemd::unit::{UnitFile, UnitHash, UnitName, validate_options};

use super::{ApiError, Shared, json_response};
use crate::rollout::{
    Action, ActionRequest, Control, Rollout, RolloutList, RolloutRequest, RolloutSpec, RolloutUnit,
};

/// `GET /rollouts`: every rollout with its progress, by name.
pub(super) async fn list(shared: &Shared) -> Result<Response, ApiError> {
    let stored = shared
        .api
        .registry
        .rollouts()
        .await
        .map_err(|error| ApiError::registry("list rollouts", error))?;
    let rollouts = stored.iter().filter_map(decode).collect();
    Ok(json_response(StatusCode::OK, &RolloutList { rollouts }))
}

/// `GET /rollouts/<name>`.
pub(super) async fn get(shared: &Shared, name: &str) -> Result<Response, ApiError> {
    let (rollout, _) = read(shared, name).await?;
    Ok(json_response(StatusCode::OK, &rollout))
}

/// `POST /rollouts`: records a new rollout of `request.unit_file` to the
/// unit or the template's instances named `request.name`. A rollout of the
/// same name that is not over is a conflict.
pub(super) async fn start(shared: &Shared, body: &[u8]) -> Result<Response, ApiError> {
    let request: RolloutRequest = serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("invalid rollout request: {error}")))?;
    let name: UnitName = request
        .name
        .parse()
        .map_err(|error| ApiError::bad_request(format!("invalid unit name: {error}")))?;
    if request.restart {
        return start_restart(shared, name, request).await;
    }
    let file = UnitFile::parse(&request.unit_file)
        .map_err(|error| ApiError::bad_request(format!("invalid unit file: {error}")))?;
    validate_options(&file).map_err(ApiError::bad_request)?;
    if request.strategy.max_parallel == 0 {
        return Err(ApiError::bad_request("maxParallel must be at least 1"));
    }
    let new_hash = file.hash();
    let registry = &shared.api.registry;
    let units = registry
        .units()
        .await
        .map_err(|error| ApiError::registry("list units", error))?;
    let targets: BTreeMap<UnitName, UnitHash> = units
        .iter()
        .filter(|unit| unit.name == name || unit.name.template().as_ref() == Some(&name))
        .map(|unit| (unit.name.clone(), unit.hash))
        .collect();
    if targets.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no unit {name} (or instance of it) exists; submit or start it first"),
        ));
    }
    let changing: Vec<RolloutUnit> = targets
        .iter()
        .filter(|(_, hash)| **hash != new_hash)
        .map(|(unit, hash)| RolloutUnit {
            unit: unit.to_string(),
            old_hash: hash.to_string(),
        })
        .collect();
    if changing.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("every unit of {name} has this content already"),
        ));
    }
    let replaces = replaced_revision(shared, &name).await?;
    // One reference per content: etcd refuses a txn that writes a key twice.
    let old_hashes: Vec<UnitHash> = targets
        .values()
        .filter(|hash| **hash != new_hash)
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let spec = RolloutSpec {
        name: name.to_string(),
        id: now_ms(),
        new_hash: new_hash.to_string(),
        units: changing,
        strategy: request.strategy,
        control: Control::Run,
        promoted: false,
        health_check: declares_health_check(&file),
        restart: false,
    };
    let bytes = encode(&spec)?;
    let started = registry
        .start_rollout(name.as_str(), &bytes, replaces, &file, &old_hashes)
        .await
        .map_err(|error| ApiError::registry("start rollout", error))?;
    if !started {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("another rollout of {name} started meanwhile"),
        ));
    }
    info!(rollout = %name, n_units = spec.units.len(), new_hash = %spec.new_hash, "Rollout requested.");
    Ok(json_response(
        StatusCode::CREATED,
        &Rollout {
            spec,
            progress: None,
        },
    ))
}

/// The revision of the ended rollout of `name` a new one replaces (`None`:
/// there is none); a rollout of `name` that is not over is a conflict.
async fn replaced_revision(shared: &Shared, name: &UnitName) -> Result<Option<Revision>, ApiError> {
    let stored = shared
        .api
        .registry
        .rollout(name.as_str())
        .await
        .map_err(|error| ApiError::registry("get rollout", error))?;
    match stored {
        None => Ok(None),
        Some(stored) => match decode(&stored) {
            Some(rollout) if !rollout.is_terminal() => Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "a rollout of {name} is {}; abort it or wait for it to end",
                    rollout.phase_name()
                ),
            )),
            _ => Ok(Some(stored.spec_revision)),
        },
    }
}

fn declares_health_check(file: &UnitFile) -> bool {
    file.options().iter().any(|option| {
        option.section == "X-Fleet"
            && matches!(option.name.as_str(), "HealthCheckExec" | "HealthCheckHTTP")
    })
}

/// `POST /rollouts` with `restart`: a rollout of the unit `name` to the
/// content it has, which the engine drives as a restart (each placement
/// stopped, then started, batch by batch; see the engine's rollout driver).
async fn start_restart(
    shared: &Shared,
    name: UnitName,
    request: RolloutRequest,
) -> Result<Response, ApiError> {
    if request.strategy.max_parallel == 0 {
        return Err(ApiError::bad_request("maxParallel must be at least 1"));
    }
    let registry = &shared.api.registry;
    let unit = registry
        .unit(&name)
        .await
        .map_err(|error| ApiError::registry("get unit", error))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no unit {name} exists; submit or start it first"),
            )
        })?;
    // Only running units restart: a loaded one would never become healthy.
    if unit.desired_state != TargetState::Launched {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "unit {name} is {}, not launched; start it instead",
                unit.desired_state
            ),
        ));
    }
    let replaces = replaced_revision(shared, &name).await?;
    let hash = unit.hash.to_string();
    let spec = RolloutSpec {
        name: name.to_string(),
        id: now_ms(),
        new_hash: hash.clone(),
        units: vec![RolloutUnit {
            unit: name.to_string(),
            old_hash: hash,
        }],
        strategy: request.strategy,
        control: Control::Run,
        promoted: false,
        health_check: declares_health_check(&unit.file),
        restart: true,
    };
    let bytes = encode(&spec)?;
    let started = registry
        .start_rollout(name.as_str(), &bytes, replaces, &unit.file, &[])
        .await
        .map_err(|error| ApiError::registry("start restart", error))?;
    if !started {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("another rollout of {name} started meanwhile"),
        ));
    }
    info!(rollout = %name, "Restart of every placement requested.");
    Ok(json_response(
        StatusCode::CREATED,
        &Rollout {
            spec,
            progress: None,
        },
    ))
}

/// `POST /rollouts/<name>` with `{"action": ...}`.
pub(super) async fn act(shared: &Shared, name: &str, body: &[u8]) -> Result<Response, ApiError> {
    let request: ActionRequest = serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("invalid rollout action: {error}")))?;
    let (rollout, revision) = read(shared, name).await?;
    if rollout.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("the rollout of {name} is {} already", rollout.phase_name()),
        ));
    }
    let mut spec = rollout.spec;
    match request.action {
        Action::Pause => spec.control = Control::Pause,
        Action::Resume => spec.control = Control::Run,
        Action::Abort => spec.control = Control::Abort,
        Action::Promote => spec.promoted = true,
    }
    let written = shared
        .api
        .registry
        .update_rollout_spec(name, &encode(&spec)?, Revision::new(revision))
        .await
        .map_err(|error| ApiError::registry("update rollout", error))?;
    if !written {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("the rollout of {name} changed meanwhile; try again"),
        ));
    }
    // Abort sends every updated unit back: a destructive act, logged.
    info!(rollout = name, action = ?request.action, "Rollout action requested through the API.");
    Ok(json_response(
        StatusCode::OK,
        &Rollout {
            spec,
            progress: rollout.progress,
        },
    ))
}

async fn read(shared: &Shared, name: &str) -> Result<(Rollout, i64), ApiError> {
    let stored = shared
        .api
        .registry
        .rollout(name)
        .await
        .map_err(|error| ApiError::registry("get rollout", error))?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no rollout of {name}")))?;
    let rollout = decode(&stored).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the stored rollout of {name} does not decode"),
        )
    })?;
    Ok((rollout, stored.spec_revision.get()))
}

fn decode(stored: &StoredRollout) -> Option<Rollout> {
    let spec: RolloutSpec = serde_json::from_slice(&stored.spec).ok()?;
    let progress = stored
        .progress
        .as_ref()
        .and_then(|bytes| serde_json::from_slice(bytes).ok());
    Some(Rollout { spec, progress })
}

fn encode(spec: &RolloutSpec) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(spec)
        .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Dispatches `rollouts` (`item` is `None`) and `rollouts/<item>`.
pub(super) async fn route(
    shared: &Shared,
    item: Option<&str>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let method = request.method().clone();
    match (item, method) {
        (None, http::Method::GET) => list(shared).await,
        (None, http::Method::POST) => start(shared, &super::read_body(request).await?).await,
        (Some(item), http::Method::GET) => get(shared, super::item_name(item)?).await,
        (Some(item), http::Method::POST) => {
            let name = super::item_name(item)?.to_owned();
            act(shared, &name, &super::read_body(request).await?).await
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and POST supported against this resource",
        )),
    }
}
