//! `/units` and `/units/<name>`: list, get, the PUT decision procedure of
//! Documentation/compatibility.md ("Creating and replacing a unit (PUT)"), and delete.
//!
//! Where the original had a quirk in PUT we fix it:
//! an invalid `desiredState` is a 400 on every path, a replace (new hash)
//! validates its options, and a template cannot be activated on create either.

use std::collections::HashMap;
use std::str::FromStr;

use axum::response::Response;
use http::{HeaderValue, StatusCode};
use serde::de::DeserializeOwned;

use fleet_registry::{MachineId, TargetState, Unit};
use fleet_systemd::unit::{Requirements, UnitFile, UnitName, UnitOption, validate_options};

use super::{ApiError, Query, Shared, empty_response, json_response, paginate_shared};
use crate::entities;

/// `GET /units`: one page of units sorted by name. The first
/// page reads etcd; the pages after it are cut from that listing while it
/// is recent (see `Listing` in the parent module).
pub(super) async fn list(shared: &Shared, query: &Query) -> Result<Response, ApiError> {
    let page = query.page(shared.api.token_limit)?;
    let all_units = shared
        .units_listing
        .get_or_read(page, read_unit_entities(shared))
        .await?;
    let (units, next_page_token) = paginate_shared(&all_units, page);
    Ok(json_response(
        StatusCode::OK,
        &entities::UnitPage {
            units,
            next_page_token,
        },
    ))
}

/// Every unit's entity with its current state and machine, sorted by name.
/// A unit whose record or content is unusable is listed by name with its
/// `error`, never hidden.
async fn read_unit_entities(shared: &Shared) -> Result<Vec<entities::Unit>, ApiError> {
    let registry = &shared.api.registry;
    let listing = registry
        .unit_listing()
        .await
        .map_err(|error| ApiError::registry("list units", error))?;
    let mut units = read_usable_entities(shared, &listing.units).await?;
    if !listing.unusable.is_empty() {
        units.extend(listing.unusable.iter().map(|unusable| entities::Unit {
            name: unusable.name.to_string(),
            error: unusable.problem.clone(),
            ..entities::Unit::default()
        }));
        units.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(units)
}

/// The entities of `all_units` with their current state and machine.
async fn read_usable_entities(
    shared: &Shared,
    all_units: &[Unit],
) -> Result<Vec<entities::Unit>, ApiError> {
    let registry = &shared.api.registry;
    let mut units = Vec::with_capacity(all_units.len());
    if all_units.is_empty() {
        return Ok(units);
    }
    let placements = registry
        .placements()
        .await
        .map_err(|error| ApiError::registry("list placements", error))?;
    let unit_states = registry
        .unit_states()
        .await
        .map_err(|error| ApiError::registry("list unit states", error))?;
    // A non-global unit has at most one placement; keep the first.
    let mut placed_on: HashMap<&UnitName, &MachineId> = HashMap::new();
    for placement in &placements {
        placed_on
            .entry(&placement.unit)
            .or_insert(&placement.machine);
    }
    let reached: HashMap<(&UnitName, &MachineId), TargetState> = unit_states
        .iter()
        .map(|state| ((&state.unit, &state.machine), state.reached))
        .collect();
    for unit in all_units {
        let mut entity = unit_entity(unit);
        if is_global(unit) {
            // Quirk of the original, kept: the list reports global
            // units as inactive with no machine, while GET of one omits
            // both. Kept: the original fleetctl reads this shape.
            entity.current_state = TargetState::Inactive.as_str().to_owned();
        } else {
            let machine = placed_on.get(&unit.name).copied();
            let current = machine
                .and_then(|machine| reached.get(&(&unit.name, machine)).copied())
                .unwrap_or(TargetState::Inactive);
            entity.current_state = current.as_str().to_owned();
            entity.machine_id = machine.map(ToString::to_string).unwrap_or_default();
        }
        units.push(entity);
    }
    Ok(units)
}

/// `GET /units/<name>`.
pub(super) async fn get(shared: &Shared, item: &str) -> Result<Response, ApiError> {
    let registry = &shared.api.registry;
    // A name that does not validate cannot have been stored.
    let Ok(name) = UnitName::from_str(item) else {
        return Err(unit_not_found());
    };
    let unit = registry
        .unit(&name)
        .await
        .map_err(|error| ApiError::registry("get unit", error))?;
    let Some(unit) = unit else {
        return Err(unit_not_found());
    };
    let mut entity = unit_entity(&unit);
    if !is_global(&unit) {
        let machines = registry
            .unit_placements(&name)
            .await
            .map_err(|error| ApiError::registry("get placements", error))?;
        let mut current = TargetState::Inactive;
        if let Some(machine) = machines.first() {
            let state = registry
                .unit_state_on(&name, machine)
                .await
                .map_err(|error| ApiError::registry("get unit state", error))?;
            if let Some(state) = state {
                current = state.reached;
            }
            entity.machine_id = machine.to_string();
        }
        entity.current_state = current.as_str().to_owned();
    }
    Ok(json_response(StatusCode::OK, &entity))
}

/// `DELETE /units/<name>`: 404 if absent, else 204. The engine removes the
/// placements; agents then unload and their states go.
pub(super) async fn delete(shared: &Shared, item: &str) -> Result<Response, ApiError> {
    let Ok(name) = UnitName::from_str(item) else {
        return Err(unit_not_found());
    };
    let destroyed = shared
        .api
        .registry
        .destroy_unit(&name)
        .await
        .map_err(|error| ApiError::registry("destroy unit", error))?;
    shared.units_listing.forget();
    if !destroyed {
        return Err(unit_not_found());
    }
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// `PUT /units/<name>`: the original's decision procedure, step by step.
pub(super) async fn put(
    shared: &Shared,
    url_name: &str,
    content_types: &[HeaderValue],
    body: &[u8],
) -> Result<Response, ApiError> {
    // Step 1: exactly one Content-Type, and it is JSON.
    check_content_type(content_types)?;
    // Step 2: the body is a Unit.
    let request: entities::Unit = decode_first_json(body)
        .map_err(|message| ApiError::bad_request(format!("unable to decode body: {message}")))?;
    put_unit(shared, url_name, &request).await
}

/// Steps 3 and 4 of PUT and the line-break check: what is refused before
/// anything is read. The unit's name when it passes.
pub(super) fn check_put_request(
    url_name: &str,
    request: &entities::Unit,
) -> Result<UnitName, ApiError> {
    // Step 3: the body's name, if any, is the URL's.
    if !request.name.is_empty() && request.name != url_name {
        return Err(ApiError::bad_request(format!(
            "name in URL \"{url_name}\" differs from unit name in request body \"{}\"",
            request.name
        )));
    }
    // Step 4: ValidateName.
    let name =
        UnitName::from_str(url_name).map_err(|error| ApiError::bad_request(error.to_string()))?;
    // A line break in an option would smuggle more options into the stored
    // text, past validation.
    super::line_breaks::check(&request.options).map_err(ApiError::bad_request)?;
    Ok(name)
}

/// PUT after its body is decoded: steps 3 to 8.
pub(super) async fn put_unit(
    shared: &Shared,
    url_name: &str,
    request: &entities::Unit,
) -> Result<Response, ApiError> {
    let name = check_put_request(url_name, request)?;
    if request.options.is_empty()
        && let Some(answer) = put_desired_state_only(shared, &name, &request.desired_state).await
    {
        return answer;
    }
    // Step 5: the existing unit.
    let registry = &shared.api.registry;
    let existing = registry
        .unit(&name)
        .await
        .map_err(|error| ApiError::registry("get unit", error))?;
    let file = unit_file_from_options(&request.options);
    match existing {
        // Step 6: create.
        None => {
            if request.options.is_empty() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "unit does not exist and options field empty",
                ));
            }
            create(shared, &name, &file, &request.desired_state).await
        }
        // Step 7: replace when the content changed.
        Some(existing) if !request.options.is_empty() && file.hash() != existing.hash => {
            create(shared, &name, &file, &request.desired_state).await
        }
        // Step 8: set the desired state.
        Some(_) => {
            if request.desired_state.is_empty() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "must provide DesiredState to update existing unit",
                ));
            }
            check_template_activation(&name, &request.desired_state)?;
            let desired_state = parse_desired_state(&request.desired_state)?;
            let updated = registry
                .set_desired_state(&name, desired_state)
                .await
                .map_err(|error| ApiError::registry("set desired state", error))?;
            shared.units_listing.forget();
            if !updated {
                // Deleted between our read and our write.
                return Err(unit_not_found());
            }
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
    }
}

/// The common PUT of a batch `fleetctl start`: no options and a valid
/// desired state. The answer is step 8's (or step 6's for a missing unit),
/// but the registry's compare-and-swap of the record is the only read: the
/// full procedure reads the unit and its content first, three etcd reads
/// per PUT instead of one. `None` when the request is not of this kind;
/// the full procedure then answers, with its errors in its order.
async fn put_desired_state_only(
    shared: &Shared,
    name: &UnitName,
    desired_state: &str,
) -> Option<Result<Response, ApiError>> {
    let desired_state = valid_desired_state_only(name, desired_state)?;
    let updated = shared
        .api
        .registry
        .set_desired_state(name, desired_state)
        .await;
    Some(desired_state_set(shared, updated))
}

/// The state of a PUT without options that [`put_desired_state_only`]
/// answers: present and valid for `name`. `None` for any other.
pub(super) fn valid_desired_state_only(
    name: &UnitName,
    desired_state: &str,
) -> Option<TargetState> {
    if desired_state.is_empty() || check_template_activation(name, desired_state).is_err() {
        return None;
    }
    parse_desired_state(desired_state).ok()
}

/// The answer of [`put_desired_state_only`] once the registry set the
/// state (`Ok(true)`) or found no unit (`Ok(false)`).
pub(super) fn desired_state_set(
    shared: &Shared,
    updated: Result<bool, fleet_registry::RegistryError>,
) -> Result<Response, ApiError> {
    match updated {
        Ok(true) => {
            shared.units_listing.forget();
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Ok(false) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "unit does not exist and options field empty",
        )),
        Err(error) => Err(ApiError::registry("set desired state", error)),
    }
}

/// Creates or replaces a unit after validating it; 201.
async fn create(
    shared: &Shared,
    name: &UnitName,
    file: &UnitFile,
    desired_state: &str,
) -> Result<Response, ApiError> {
    let desired_state = check_create(name, file, desired_state)?;
    shared
        .api
        .registry
        .create_unit(name, file, desired_state)
        .await
        .map_err(|error| ApiError::registry("create unit", error))?;
    shared.units_listing.forget();
    Ok(empty_response(StatusCode::CREATED))
}

/// The checks of a create or replace (size, options, desired state), in
/// PUT's order; the desired state to store when they pass.
pub(super) fn check_create(
    name: &UnitName,
    file: &UnitFile,
    desired_state: &str,
) -> Result<TargetState, ApiError> {
    check_size(file)?;
    // Fix: the original skipped this on replace.
    validate_options(file).map_err(ApiError::bad_request)?;
    if desired_state.is_empty() {
        return Ok(TargetState::Inactive);
    }
    // Fix: the original let a new template be launched
    // and answered 500 for an invalid state.
    check_template_activation(name, desired_state)?;
    parse_desired_state(desired_state)
}

/// The largest unit text we store: etcd's default request limit (1.5 MiB)
/// less room for the rest of the unit's transaction (record, reference, keys).
pub const MAX_UNIT_FILE_BYTES: usize = 1536 * 1024 - 16 * 1024;

/// A 413 for a unit whose text would not fit one etcd request.
fn check_size(file: &UnitFile) -> Result<(), ApiError> {
    let size = file.serialize().len();
    if size > MAX_UNIT_FILE_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "unit file is {size} bytes; the limit is {MAX_UNIT_FILE_BYTES} bytes (etcd's 1.5 MiB request limit)"
            ),
        ));
    }
    Ok(())
}

pub(super) fn check_template_activation(
    name: &UnitName,
    desired_state: &str,
) -> Result<(), ApiError> {
    if name.is_template() && desired_state != TargetState::Inactive.as_str() {
        return Err(ApiError::bad_request(format!(
            "cannot activate template \"{name}\""
        )));
    }
    Ok(())
}

/// Fix: a string other than the three states is a 400, where
/// the original stored it and the unit then vanished from listings.
pub(super) fn parse_desired_state(text: &str) -> Result<TargetState, ApiError> {
    TargetState::from_str(text).map_err(|error| ApiError::bad_request(error.to_string()))
}

/// Step 1 of PUT: 415 unless exactly one `Content-Type` whose media type
/// is `application/json` (parameters such as `charset` allowed).
pub(super) fn check_content_type(content_types: &[HeaderValue]) -> Result<(), ApiError> {
    let [content_type] = content_types else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected 1 Content-Type, got {}", content_types.len()),
        ));
    };
    let media_type = content_type
        .to_str()
        .ok()
        .and_then(|text| text.split(';').next())
        .map(|media_type| media_type.trim().to_ascii_lowercase());
    if media_type.as_deref() != Some("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only acceptable Content-Type is application/json",
        ));
    }
    Ok(())
}

/// Decodes the first JSON value of `body` as Go's `json.Decoder.Decode` does:
/// trailing data is not read, and an empty body is `EOF`.
pub(super) fn decode_first_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    match serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .next()
    {
        None => Err("EOF".to_owned()),
        Some(Err(error)) => Err(error.to_string()),
        Some(Ok(value)) => Ok(value),
    }
}

fn unit_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unit does not exist")
}

fn is_global(unit: &Unit) -> bool {
    Requirements::of(&unit.file, &unit.name).global
}

/// The entity of a unit without its current state and machine.
fn unit_entity(unit: &Unit) -> entities::Unit {
    entities::Unit {
        name: unit.name.to_string(),
        options: entity_options(&unit.file),
        desired_state: unit.desired_state.as_str().to_owned(),
        current_state: String::new(),
        machine_id: String::new(),
        error: String::new(),
    }
}

/// A unit file from the API's options, in the order given (the hash is of
/// the canonical text, so the order of sections does not change it).
pub fn unit_file_from_options(options: &[entities::UnitOption]) -> UnitFile {
    UnitFile::from_options(
        options
            .iter()
            .map(|option| UnitOption {
                section: option.section.clone(),
                name: option.name.clone(),
                value: option.value.clone(),
            })
            .collect(),
    )
}

/// The API's options of a unit file, in canonical order (sections in order of first
/// appearance, file order within each).
pub fn entity_options(file: &UnitFile) -> Vec<entities::UnitOption> {
    file.canonical_options()
        .into_iter()
        .map(|option| entities::UnitOption {
            section: option.section,
            name: option.name,
            value: option.value,
        })
        .collect()
}
