//! `POST /fleet/x1/units`: many units in one request, each answered as v1
//! `PUT /fleet/v1/units/<name>` answers it.
//!
//! A `fleetctl start` of a thousand instances would otherwise send a
//! thousand PUTs and cost etcd a txn each. Here every unit gets PUT's own
//! checks (the functions of [`super::units`]), in PUT's order; the units
//! that are new go to etcd together ([`fleet_registry::Registry::create_new_units`],
//! a txn per few units), and so do desired states given alone
//! ([`fleet_registry::Registry::set_desired_states`]); the rest (an existing
//! unit, a request PUT would refuse or answer otherwise) take PUT's own
//! path, a few at a time. The outcome is that of the PUTs
//! one after another in the body's order: entries of distinct units do not
//! depend on each other, and a unit named twice is created by the first
//! entry and changed by the second.

use std::collections::HashSet;

use axum::response::Response;
use futures_util::future;
use futures_util::stream::{self, StreamExt};
use http::{HeaderValue, StatusCode};

use fleet_registry::TargetState;
use fleet_systemd::unit::{UnitFile, UnitName};

use super::units::{
    check_content_type, check_create, check_put_request, decode_first_json, desired_state_set,
    put_unit, unit_file_from_options, valid_desired_state_only,
};
use super::{ApiError, Shared, json_response};
use crate::entities;
use crate::x1::{MAX_BATCH_UNITS, UnitBatch, UnitBatchResponse, UnitResult};

/// The answer of each entry, filled in as the entries are handled.
type Answers = Vec<Option<Result<StatusCode, ApiError>>>;

/// A new unit waiting to be created with the others: its entry's index.
type NewUnit = (usize, (UnitName, UnitFile, TargetState));

/// `POST /fleet/x1/units`: 415/400 for the body as a whole (nothing is
/// written), else 200 with one result per unit.
pub(super) async fn post(
    shared: &Shared,
    content_types: &[HeaderValue],
    body: &[u8],
) -> Result<Response, ApiError> {
    check_content_type(content_types)?;
    let batch: UnitBatch = decode_first_json(body)
        .map_err(|message| ApiError::bad_request(format!("unable to decode body: {message}")))?;
    if batch.units.len() > MAX_BATCH_UNITS {
        return Err(ApiError::bad_request(format!(
            "{} units in one request; the limit is {MAX_BATCH_UNITS}",
            batch.units.len()
        )));
    }
    let answers = answer_all(shared, &batch.units).await?;
    let results = batch
        .units
        .iter()
        .zip(answers)
        .map(|(unit, answer)| unit_result(&unit.name, answer))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &UnitBatchResponse { results },
    ))
}

/// How many entries that take PUT's own path run at once: they are of
/// distinct units, so their order does not matter, and one after another
/// a thousand desired states would wait a thousand etcd round trips.
const SINGLE_PUTS_IN_FLIGHT: usize = 16;

/// The entries of one round: of distinct units, so they can be written in
/// any order (one unit's entries never share a round).
#[derive(Default)]
struct Round {
    names: HashSet<UnitName>,
    new_units: Vec<NewUnit>,
    /// Entries that only set a valid desired state, with their index.
    desired_states: Vec<(usize, (UnitName, TargetState))>,
    /// Entries that take PUT's own path: an existing unit, or no options
    /// and a desired state PUT refuses or lacks.
    single_puts: Vec<usize>,
}

/// Handles every entry as a PUT of it in order would: entries are gathered
/// into rounds of distinct units; a unit named again starts a new round,
/// after the round before is written. In a round the new units are created
/// together, desired states given alone are set together, and the other
/// entries take PUT's own path.
///
/// # Errors
/// Only the read of which units exist, before anything is written: the
/// request fails as a whole (a 503 when etcd is unreachable).
async fn answer_all(
    shared: &Shared,
    units: &[entities::Unit],
) -> Result<Vec<Result<StatusCode, ApiError>>, ApiError> {
    let mut existing = existing_names(shared, units).await?;
    let mut answers: Answers = units.iter().map(|_| None).collect();
    let mut round = Round::default();
    for (index, unit) in units.iter().enumerate() {
        let name = match check_put_request(&unit.name, unit) {
            Ok(name) => name,
            Err(error) => {
                answers[index] = Some(Err(error));
                continue;
            }
        };
        if round.names.contains(&name) {
            write_round(shared, std::mem::take(&mut round), units, &mut answers).await;
        }
        round.names.insert(name.clone());
        if unit.options.is_empty()
            && let Some(desired_state) = valid_desired_state_only(&name, &unit.desired_state)
        {
            round.desired_states.push((index, (name, desired_state)));
            continue;
        }
        if unit.options.is_empty() || existing.contains(&name) {
            round.single_puts.push(index);
            continue;
        }
        // Step 6 of PUT: a create, with its checks.
        let file = unit_file_from_options(&unit.options);
        match check_create(&name, &file, &unit.desired_state) {
            Ok(desired_state) => {
                existing.insert(name.clone());
                round.new_units.push((index, (name, file, desired_state)));
            }
            Err(error) => answers[index] = Some(Err(error)),
        }
    }
    write_round(shared, round, units, &mut answers).await;
    Ok(answers
        .into_iter()
        .map(|answer| answer.unwrap_or_else(|| Err(unanswered())))
        .collect())
}

/// Writes one round: its new units together, its other entries through
/// PUT's own path, a few at a time.
async fn write_round(
    shared: &Shared,
    round: Round,
    units: &[entities::Unit],
    answers: &mut Answers,
) {
    let singles = stream::iter(round.single_puts)
        .map(|index| async move { (index, single_put(shared, &units[index]).await) })
        .buffered(SINGLE_PUTS_IN_FLIGHT)
        .collect::<Vec<_>>();
    let (created, set, singles) = future::join3(
        create_new(shared, round.new_units),
        set_desired_states(shared, round.desired_states),
        singles,
    )
    .await;
    for (index, answer) in created.into_iter().chain(set).chain(singles) {
        answers[index] = Some(answer);
    }
}

/// The names among `units` (those that are valid, with options) that have
/// a unit now: those go PUT's own way. One read per few names.
async fn existing_names(
    shared: &Shared,
    units: &[entities::Unit],
) -> Result<HashSet<UnitName>, ApiError> {
    let names: Vec<UnitName> = units
        .iter()
        .filter(|unit| !unit.options.is_empty())
        .filter_map(|unit| unit.name.parse().ok())
        .collect();
    shared
        .api
        .registry
        .existing_unit_names(&names)
        .await
        .map_err(|error| ApiError::registry("read unit names", error))
}

/// Creates new units together: each entry's answer (201, or the
/// registry's error as PUT would give it).
async fn create_new(
    shared: &Shared,
    new_units: Vec<NewUnit>,
) -> Vec<(usize, Result<StatusCode, ApiError>)> {
    if new_units.is_empty() {
        return Vec::new();
    }
    let (indexes, units): (Vec<usize>, Vec<_>) = new_units.into_iter().unzip();
    let results = shared.api.registry.create_new_units(&units).await;
    shared.units_listing.forget();
    indexes
        .into_iter()
        .zip(results)
        .map(|(index, result)| {
            let answer = result
                .map(|()| StatusCode::CREATED)
                .map_err(|error| ApiError::registry("create unit", error));
            (index, answer)
        })
        .collect()
}

/// Sets the desired states of entries that carry only one, together:
/// each answered as PUT answers it (204, or 409 for a unit that is gone).
async fn set_desired_states(
    shared: &Shared,
    changes: Vec<(usize, (UnitName, TargetState))>,
) -> Vec<(usize, Result<StatusCode, ApiError>)> {
    if changes.is_empty() {
        return Vec::new();
    }
    let (indexes, changes): (Vec<usize>, Vec<_>) = changes.into_iter().unzip();
    let results = shared.api.registry.set_desired_states(&changes).await;
    indexes
        .into_iter()
        .zip(results)
        .map(|(index, result)| {
            let answer = desired_state_set(shared, result).map(|response| response.status());
            (index, answer)
        })
        .collect()
}

/// One entry through v1 PUT's path (after its body was decoded).
async fn single_put(shared: &Shared, unit: &entities::Unit) -> Result<StatusCode, ApiError> {
    put_unit(shared, &unit.name, unit)
        .await
        .map(|response| response.status())
}

/// An entry the batch lost track of: cannot happen (every entry is
/// answered or queued), but if it does the client must not read success.
fn unanswered() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the unit was not handled",
    )
}

fn unit_result(name: &str, answer: Result<StatusCode, ApiError>) -> UnitResult {
    match answer {
        Ok(status) => UnitResult {
            name: name.to_owned(),
            code: status.as_u16(),
            message: String::new(),
        },
        Err(error) => UnitResult {
            name: name.to_owned(),
            code: error.status.as_u16(),
            message: error.message,
        },
    }
}
