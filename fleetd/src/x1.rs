//! The operations API beside v1, under `/fleet/x1/` (JSON in [`fleet_api::x1`]):
//! cordon, uncordon and drain machines, and ask the scheduler where units
//! would go and why (`plan`, `why`).
//!
//! It lives in fleetd rather than in `fleet_api::server` because its answers
//! come from the engine's pure scheduler ([`crate::engine::scheduler`]): a
//! plan is a scheduling pass over a fresh snapshot plus the planned units,
//! whose decisions are returned instead of written. Cordons are written here
//! (`P/api/cordon/<machine>`) and acted on by the engine, which reads them.
//!
//! v1 is untouched: these routes are merged beside the v1 router and answer
//! only under `/fleet/x1/`. They answer 503 until fleetd is registered, like v1.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use tracing::{info, warn};

use fleet_api::entities::{ErrorBody, ErrorEntity, UNAVAILABLE_MESSAGE};
use fleet_api::server::{Availability, unit_file_from_options};
use fleet_api::x1;
use fleet_registry::cordon::Cordon;
use fleet_registry::{MachineId, Registry, RegistryError, TargetState};
use fleet_systemd::unit::{UnitName, validate_options};

use crate::engine::model::Model;
use crate::engine::scheduler::{self, Cordons, LossPolicy, UnitSpec, explain, schedule_with};

/// The longest `reason` or `by` a cordon request may carry.
const MAX_NOTE_CHARS: usize = 1024;

#[derive(Clone)]
struct X1 {
    registry: Registry,
    available: Availability,
}

/// The `/fleet/x1/` routes, to merge beside the v1 router.
pub fn router(registry: Registry, available: Availability) -> Router {
    Router::new()
        .route("/fleet/x1/cordons", get(list_cordons))
        .route(
            "/fleet/x1/machines/{machine}/cordon",
            put(put_cordon).delete(delete_cordon),
        )
        .route("/fleet/x1/machines/{machine}/drain", get(drain_status))
        .route("/fleet/x1/plan", post(plan))
        .route("/fleet/x1/why/{unit}", get(why))
        .with_state(X1 {
            registry,
            available,
        })
}

/// An error answer, in the v1 error entity's shape so clients read it alike.
struct X1Error(StatusCode, String);

impl IntoResponse for X1Error {
    fn into_response(self) -> Response {
        let body = ErrorEntity {
            error: ErrorBody {
                code: self.0.as_u16(),
                message: self.1,
            },
        };
        (self.0, Json(body)).into_response()
    }
}

impl From<RegistryError> for X1Error {
    fn from(error: RegistryError) -> X1Error {
        warn!(%error, "An x1 API request failed on etcd.");
        X1Error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("fleet server unable to communicate with etcd: {error}"),
        )
    }
}

type X1Result<T> = Result<Json<T>, X1Error>;

fn bad_request(message: String) -> X1Error {
    X1Error(StatusCode::BAD_REQUEST, message)
}

fn ready(state: &X1) -> Result<(), X1Error> {
    if state.available.is_available() {
        Ok(())
    } else {
        Err(X1Error(
            StatusCode::SERVICE_UNAVAILABLE,
            UNAVAILABLE_MESSAGE.to_owned(),
        ))
    }
}

fn machine_id(raw: &str) -> Result<MachineId, X1Error> {
    raw.parse().map_err(|error| bad_request(format!("{error}")))
}

fn entity(cordon: &Cordon) -> x1::Cordon {
    x1::Cordon {
        machine: cordon.machine.to_string(),
        draining: cordon.draining,
        by: cordon.by.clone(),
        reason: cordon.reason.clone(),
        since: cordon.since,
    }
}

async fn list_cordons(State(state): State<X1>) -> X1Result<x1::CordonList> {
    ready(&state)?;
    let cordons = state.registry.cordons().await?;
    Ok(Json(x1::CordonList {
        cordons: cordons.iter().map(entity).collect(),
    }))
}

async fn put_cordon(
    State(state): State<X1>,
    Path(machine): Path<String>,
    Json(request): Json<x1::CordonRequest>,
) -> X1Result<x1::Cordon> {
    ready(&state)?;
    let machine = machine_id(&machine)?;
    for (what, text) in [("by", &request.by), ("reason", &request.reason)] {
        if text.chars().count() > MAX_NOTE_CHARS || text.chars().any(char::is_control) {
            return Err(bad_request(format!(
                "{what} must be at most {MAX_NOTE_CHARS} characters without control characters"
            )));
        }
    }
    if state.registry.machine(&machine).await?.is_none() {
        return Err(X1Error(
            StatusCode::NOT_FOUND,
            format!("machine {machine} not found"),
        ));
    }
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let cordon = Cordon {
        machine,
        draining: request.draining,
        by: request.by,
        reason: request.reason,
        since,
    };
    state.registry.put_cordon(&cordon).await?;
    let what = if cordon.draining { "drain" } else { "cordon" };
    info!(machine = %cordon.machine, by = %cordon.by, reason = %cordon.reason,
        "API: {what} of machine {} requested by {}: {}", cordon.machine, cordon.by, cordon.reason);
    Ok(Json(entity(&cordon)))
}

async fn delete_cordon(
    State(state): State<X1>,
    Path(machine): Path<String>,
) -> Result<StatusCode, X1Error> {
    ready(&state)?;
    let machine = machine_id(&machine)?;
    if !state.registry.delete_cordon(&machine).await? {
        return Err(X1Error(
            StatusCode::NOT_FOUND,
            format!("machine {machine} is not cordoned"),
        ));
    }
    info!(machine = %machine, "API: machine {machine} uncordoned.");
    Ok(StatusCode::NO_CONTENT)
}

/// What the scheduler sees now: a fresh snapshot and the cordons, with a
/// drain budget of 0 (a dry run moves nothing).
struct Now {
    model: Model,
    cordons: Cordons,
}

impl Now {
    async fn read(registry: &Registry) -> Result<Now, RegistryError> {
        let snapshot = registry.snapshot().await?;
        let mut cordons = Cordons::default();
        for cordon in registry.cordons().await? {
            if cordon.draining {
                cordons.draining.insert(cordon.machine.clone());
            }
            cordons.cordoned.insert(cordon.machine);
        }
        Ok(Now {
            model: Model::from_snapshot(snapshot),
            cordons,
        })
    }

    fn explain(&self, extra: Vec<UnitSpec>, wanted: &[UnitName]) -> Vec<x1::Explanation> {
        let (machines, mut units, placements) = self.model.scheduler_input();
        units.retain(|unit| !extra.iter().any(|new| new.name == unit.name));
        units.extend(extra);
        let loss = LossPolicy::default();
        explain(&machines, &units, &placements, &loss, &self.cordons, wanted)
            .into_iter()
            .map(explanation_entity)
            .collect()
    }
}

fn explanation_entity(explanation: scheduler::Explanation) -> x1::Explanation {
    x1::Explanation {
        name: explanation.unit.to_string(),
        placed_on: explanation
            .placed_on
            .iter()
            .map(ToString::to_string)
            .collect(),
        summary: explanation.summary,
        machines: explanation
            .machines
            .into_iter()
            .map(|verdict| x1::MachineVerdict {
                machine: verdict.machine.to_string(),
                chosen: verdict.chosen,
                fits: verdict.fits,
                reason: verdict.reason,
            })
            .collect(),
    }
}

async fn drain_status(
    State(state): State<X1>,
    Path(machine): Path<String>,
) -> X1Result<x1::DrainStatus> {
    ready(&state)?;
    let machine = machine_id(&machine)?;
    let now = Now::read(&state.registry).await?;
    let cordon = state
        .registry
        .cordons()
        .await?
        .into_iter()
        .find(|cordon| cordon.machine == machine);
    let (machines, units, placements) = now.model.scheduler_input();
    let outcome = schedule_with(
        &machines,
        &units,
        &placements,
        &LossPolicy::default(),
        &now.cordons,
    );
    let draining = now.cordons.draining.contains(&machine);
    let units = placements
        .iter()
        .filter(|placement| placement.machine == machine)
        .map(|placement| {
            let global = units
                .iter()
                .any(|unit| unit.name == placement.unit && unit.requirements.global);
            let blocked = outcome
                .drain_blocked
                .iter()
                .find(|entry| entry.unit == placement.unit);
            let (state, reason) = match (global, blocked) {
                (true, _) => (x1::DrainUnitState::Global, "global unit".to_owned()),
                (false, Some(entry)) => (x1::DrainUnitState::Blocked, entry.reason.clone()),
                (false, None) if draining => (x1::DrainUnitState::Waiting, String::new()),
                (false, None) => (
                    x1::DrainUnitState::Waiting,
                    "the machine is not draining".to_owned(),
                ),
            };
            x1::DrainUnit {
                name: placement.unit.to_string(),
                state,
                reason,
            }
        })
        .collect();
    Ok(Json(x1::DrainStatus {
        machine: machine.to_string(),
        cordon: cordon.as_ref().map(entity),
        units,
    }))
}

async fn plan(
    State(state): State<X1>,
    Json(request): Json<x1::PlanRequest>,
) -> X1Result<x1::PlanResponse> {
    ready(&state)?;
    let mut extra = Vec::with_capacity(request.units.len());
    for unit in &request.units {
        let name: UnitName = unit
            .name
            .parse()
            .map_err(|error| bad_request(format!("{error}")))?;
        let file = unit_file_from_options(&unit.options);
        validate_options(&file).map_err(|error| bad_request(format!("{name}: {error}")))?;
        let hash = file.hash();
        extra.push(UnitSpec::new(name, &file, hash, TargetState::Launched));
    }
    let wanted: Vec<UnitName> = extra.iter().map(|unit| unit.name.clone()).collect();
    let now = Now::read(&state.registry).await?;
    Ok(Json(x1::PlanResponse {
        units: now.explain(extra, &wanted),
    }))
}

async fn why(State(state): State<X1>, Path(unit): Path<String>) -> X1Result<x1::Explanation> {
    ready(&state)?;
    let name: UnitName = unit
        .parse()
        .map_err(|error| bad_request(format!("{error}")))?;
    let now = Now::read(&state.registry).await?;
    now.explain(Vec::new(), std::slice::from_ref(&name))
        .pop()
        .map(Json)
        .ok_or_else(|| X1Error(StatusCode::NOT_FOUND, format!("unit {name} not found")))
}
