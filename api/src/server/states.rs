//! `/state` and `/state/<name>`: the unit states agents report
//! (Documentation/compatibility.md, "Endpoints").
//!
//! A quirk fixed on purpose: the original crashed on `GET /state/<name>` for a unit
//! without a state; we answer 404 "unit state does not exist".
//! See Documentation/compatibility.md, "Quirks of the original".

use std::str::FromStr;

use axum::response::Response;
use http::StatusCode;

use fleet_registry::UnitState;
use fleet_systemd::unit::UnitName;

use super::{ApiError, Query, Shared, json_response, paginate, paginate_shared};
use crate::entities;

/// `GET /state[?machineID=<id>][&unitName=<name>]`: filters are exact
/// matches on the first value of each parameter, applied before paging; the
/// states are sorted by (unit, machine). Without `unitName`, the first page
/// reads every state and the pages after it are cut from that listing while
/// it is recent (see `Listing` in the parent module).
pub(super) async fn list(shared: &Shared, query: &Query) -> Result<Response, ApiError> {
    let page = query.page(shared.api.token_limit)?;
    let registry = &shared.api.registry;
    let machine_filter = query.first("machineID");
    let matches =
        |state: &UnitState| machine_filter.is_none_or(|machine| state.machine.as_str() == machine);
    let (states, next_page_token) = match query.first("unitName") {
        // Only the asked unit's prefix is read. A name that does not
        // validate has no states.
        Some(unit_name) => {
            let unit_states = match UnitName::from_str(unit_name) {
                Ok(name) => registry
                    .states_of_unit(&name)
                    .await
                    .map_err(|error| ApiError::registry("get unit states", error))?,
                Err(_) => Vec::new(),
            };
            let matching: Vec<UnitState> = unit_states.into_iter().filter(matches).collect();
            let (page_states, next_page_token) = paginate(matching, page);
            (
                page_states.iter().map(state_entity).collect(),
                next_page_token,
            )
        }
        None => {
            let all_states = shared
                .states_listing
                .get_or_read(page, async {
                    registry
                        .unit_states()
                        .await
                        .map_err(|error| ApiError::registry("list unit states", error))
                })
                .await?;
            let (page_states, next_page_token) = match machine_filter {
                None => paginate_shared(&all_states, page),
                Some(_) => {
                    let matching: Vec<UnitState> = all_states
                        .iter()
                        .filter(|state| matches(state))
                        .cloned()
                        .collect();
                    paginate(matching, page)
                }
            };
            (
                page_states.iter().map(state_entity).collect(),
                next_page_token,
            )
        }
    };
    Ok(json_response(
        StatusCode::OK,
        &entities::UnitStatePage {
            states,
            next_page_token,
        },
    ))
}

/// `GET /state/<name>`: the first state reported for the unit (by machine).
pub(super) async fn get(shared: &Shared, item: &str) -> Result<Response, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "unit state does not exist");
    let Ok(name) = UnitName::from_str(item) else {
        return Err(not_found());
    };
    let unit_states = shared
        .api
        .registry
        .states_of_unit(&name)
        .await
        .map_err(|error| ApiError::registry("get unit states", error))?;
    let state = unit_states.first().ok_or_else(not_found)?;
    Ok(json_response(StatusCode::OK, &state_entity(state)))
}

fn state_entity(state: &UnitState) -> entities::UnitState {
    entities::UnitState {
        name: state.unit.to_string(),
        hash: state.hash.to_string(),
        machine_id: state.machine.to_string(),
        systemd_load_state: state.load_state.clone(),
        systemd_active_state: state.active_state.clone(),
        systemd_sub_state: state.sub_state.clone(),
        run_result: state.run.as_ref().map(|run| run.result.clone()),
        exit_status: state.run.as_ref().map(|run| run.exit_status),
        exited_at: state
            .run
            .as_ref()
            .map(|run| fleet_registry::model::format_utc(run.exited_at_usecs)),
        attempts: state.run.as_ref().map(|run| run.attempt),
    }
}
