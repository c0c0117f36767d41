//! `POST /fleet/x1/units`: many units in one request, each answered as v1
//! `PUT /fleet/v1/units/<name>` answers it.
//!
//! A `fleetctl start` of a thousand instances would otherwise send a
//! thousand PUTs and cost etcd a txn each. Here every unit gets PUT's own
//! checks (the functions of [`super::units`]), in PUT's order; the units
//! that are new go to etcd together ([`fleet_registry::Registry::create_new_units`],
//! a txn per few units); the rest (an existing unit, a desired state alone)
//! take PUT's own path one by one. Units are handled in the body's order, as
//! a client's PUTs one after another would be: a unit named twice is created
//! by the first entry and changed by the second.

use std::collections::HashSet;

use axum::response::Response;
use http::{HeaderValue, StatusCode};

use fleet_registry::TargetState;
use fleet_systemd::unit::{UnitFile, UnitName};

use super::units::{
    check_content_type, check_create, check_put_request, decode_first_json, put_unit,
    unit_file_from_options,
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

/// Handles every entry in order; the new units are created together, and
/// before any entry that must see them (a repeat of their name).
async fn answer_all(
    shared: &Shared,
    units: &[entities::Unit],
) -> Result<Vec<Result<StatusCode, ApiError>>, ApiError> {
    let mut existing = existing_names(shared, units).await?;
    let mut answers: Answers = units.iter().map(|_| None).collect();
    let mut new_units: Vec<NewUnit> = Vec::new();
    for (index, unit) in units.iter().enumerate() {
        let name = match check_put_request(&unit.name, unit) {
            Ok(name) => name,
            Err(error) => {
                answers[index] = Some(Err(error));
                continue;
            }
        };
        if unit.options.is_empty() || existing.contains(&name) {
            create_new(shared, &mut new_units, &mut answers).await;
            answers[index] = Some(single_put(shared, unit).await);
            continue;
        }
        // Step 6 of PUT: a create, with its checks.
        let file = unit_file_from_options(&unit.options);
        match check_create(&name, &file, &unit.desired_state) {
            Ok(desired_state) => {
                existing.insert(name.clone());
                new_units.push((index, (name, file, desired_state)));
            }
            Err(error) => answers[index] = Some(Err(error)),
        }
    }
    create_new(shared, &mut new_units, &mut answers).await;
    Ok(answers
        .into_iter()
        .map(|answer| answer.unwrap_or_else(|| Err(unanswered())))
        .collect())
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

/// Creates the waiting new units together and answers their entries (201,
/// or the registry's error as PUT would give it).
async fn create_new(shared: &Shared, new_units: &mut Vec<NewUnit>, answers: &mut Answers) {
    if new_units.is_empty() {
        return;
    }
    let (indexes, units): (Vec<usize>, Vec<_>) = std::mem::take(new_units).into_iter().unzip();
    let results = shared.api.registry.create_new_units(&units).await;
    shared.units_listing.forget();
    for (index, result) in indexes.into_iter().zip(results) {
        answers[index] = Some(
            result
                .map(|()| StatusCode::CREATED)
                .map_err(|error| ApiError::registry("create unit", error)),
        );
    }
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
