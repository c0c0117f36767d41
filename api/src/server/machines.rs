//! `/machines`: the machine list and the metadata `PATCH`
//! (Documentation/compatibility.md, "Machine metadata (PATCH)").
//!
//! The PATCH value is accepted in both forms: the original
//! server's `{"value": {"value": "x"}}` (outer key matched case-insensitively,
//! as Go's decoder does, so the functional tests' `"Value"` works) and the
//! documented plain string `{"value": "x"}`.

use std::collections::HashMap;

use axum::response::Response;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};
use serde_json::{Map, Value};

use fleet_registry::store::MetadataOp;
use fleet_registry::{MachineId, MachineState};

use super::units::decode_first_json;
use super::{ApiError, Query, Shared, empty_response, json_response, paginate_shared};
use crate::entities;

/// `GET /machines`: one page of live machines sorted by id, metadata merged.
/// The first page reads every machine (and the cordons); the pages after it
/// are cut from that listing while it is recent (see `Listing` in the parent
/// module): read per page, 10,000 machines in pages of 100 took seconds.
pub(super) async fn list(shared: &Shared, query: &Query) -> Result<Response, ApiError> {
    let page = query.page(shared.api.token_limit)?;
    let all_machines = shared
        .machines_listing
        .get_or_read(page, async {
            let machines = shared
                .api
                .registry
                .machines()
                .await
                .map_err(|error| ApiError::registry("list machines", error))?;
            let cordons = cordons_by_machine(shared).await?;
            Ok(machines
                .into_iter()
                .map(|machine| {
                    let cordon = cordons.get(machine.id.as_str()).copied();
                    entities::Machine {
                        cordon,
                        ..machine_entity(machine)
                    }
                })
                .collect())
        })
        .await?;
    let (machines, next_page_token) = paginate_shared(&all_machines, page);
    Ok(json_response(
        StatusCode::OK,
        &entities::MachinePage {
            machines,
            next_page_token,
        },
    ))
}

/// `PATCH /machines`: validate every op, then apply them in order in one
/// registry transaction. The Content-Type is not checked, as in the original.
pub(super) async fn patch(shared: &Shared, body: &[u8]) -> Result<Response, ApiError> {
    let document: Value = decode_first_json(body).map_err(ApiError::bad_request)?;
    let Value::Array(items) = document else {
        return Err(ApiError::bad_request(format!(
            "cannot unmarshal {} into a list of metadata operations",
            json_kind(&document)
        )));
    };
    let decoded: Vec<RawOp> = items.iter().map(RawOp::decode).collect::<Result<_, _>>()?;
    let ops: Vec<MetadataOp> = decoded
        .into_iter()
        .map(RawOp::validate)
        .collect::<Result<_, _>>()?;
    if !ops.is_empty() {
        shared
            .api
            .registry
            .apply_metadata(&ops)
            .await
            .map_err(|error| ApiError::registry("apply metadata", error))?;
        shared.machines_listing.forget();
    }
    // The functional tests check that this 204 says it is JSON.
    let mut response = empty_response(StatusCode::NO_CONTENT);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// One op as decoded, before validation.
#[derive(Debug, Default)]
pub(super) struct RawOp {
    op: String,
    path: String,
    value: String,
}

impl RawOp {
    /// Decodes one op object. Keys match case-insensitively, as Go's decoder
    /// matches them to struct fields; unknown keys are ignored.
    pub(super) fn decode(item: &Value) -> Result<RawOp, ApiError> {
        let Value::Object(object) = item else {
            return Err(ApiError::bad_request(format!(
                "cannot unmarshal {} into a metadata operation",
                json_kind(item)
            )));
        };
        let mut raw_op = RawOp::default();
        for (key, value) in object {
            if key.eq_ignore_ascii_case("op") {
                raw_op.op = string_field("op", value)?;
            } else if key.eq_ignore_ascii_case("path") {
                raw_op.path = string_field("path", value)?;
            } else if key.eq_ignore_ascii_case("value") {
                raw_op.value = match value {
                    Value::Object(inner) => nested_value(inner)?,
                    other => string_field("value", other)?,
                };
            }
        }
        Ok(raw_op)
    }

    /// The original's checks, in the original's order.
    pub(super) fn validate(self) -> Result<MetadataOp, ApiError> {
        if !matches!(self.op.as_str(), "add" | "remove" | "replace") {
            return Err(ApiError::bad_request(
                "invalid op: expect add, remove, or replace",
            ));
        }
        let Some((machine, key)) = parse_metadata_path(&self.path) else {
            return Err(ApiError::bad_request("machine metadata path invalid"));
        };
        let Ok(machine) = machine.parse::<MachineId>() else {
            return Err(ApiError::bad_request("machine metadata path invalid"));
        };
        let key = key.to_owned();
        if self.op == "remove" {
            return Ok(MetadataOp::Remove { machine, key });
        }
        if self.value.is_empty() {
            return Err(ApiError::bad_request(
                "invalid value: add and replace require a value",
            ));
        }
        Ok(MetadataOp::Set {
            machine,
            key,
            value: self.value,
        })
    }
}

/// The original's wire form `{"value": "x"}` inside the op's value.
fn nested_value(inner: &Map<String, Value>) -> Result<String, ApiError> {
    let mut text = String::new();
    for (key, value) in inner {
        if key.eq_ignore_ascii_case("value") {
            text = string_field("value", value)?;
        }
    }
    Ok(text)
}

/// A string field; `null` reads as empty, as in Go.
fn string_field(field: &str, value: &Value) -> Result<String, ApiError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Null => Ok(String::new()),
        other => Err(ApiError::bad_request(format!(
            "cannot unmarshal {} into the string field {field:?}",
            json_kind(other)
        ))),
    }
}

pub(super) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `^/([^/]+)/metadata/([A-Za-z0-9_.-]+)$` → (machine, key).
fn parse_metadata_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (machine, after) = rest.split_once('/')?;
    let key = after.strip_prefix("metadata/")?;
    let key_ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    (!machine.is_empty() && key_ok).then_some((machine, key))
}

fn machine_entity(machine: MachineState) -> entities::Machine {
    entities::Machine {
        id: machine.id.to_string(),
        primary_ip: machine.public_ip,
        metadata: machine.metadata,
        cordon: None,
    }
}

/// The cordon state of every cordoned machine, by machine id (the machine
/// entity's added `cordon` field).
async fn cordons_by_machine(
    shared: &Shared,
) -> Result<HashMap<String, entities::MachineCordon>, ApiError> {
    let cordons = shared
        .api
        .registry
        .cordons()
        .await
        .map_err(|error| ApiError::registry("list cordons", error))?;
    Ok(cordons
        .into_iter()
        .map(|cordon| {
            let state = if cordon.draining {
                entities::MachineCordon::Draining
            } else {
                entities::MachineCordon::Cordoned
            };
            (cordon.machine.to_string(), state)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_paths() {
        assert_eq!(parse_metadata_path("/m1/metadata/foo"), Some(("m1", "foo")));
        assert_eq!(
            parse_metadata_path("/m1/metadata/a_b.c-D9"),
            Some(("m1", "a_b.c-D9"))
        );
        for bad in [
            "",
            "/",
            "m1/metadata/foo",
            "//metadata/foo",
            "/m1/metadata/",
            "/m1/metadata/a/b",
            "/m1/meta/foo",
            "/m1/x/metadata/foo",
            "/m1/metadata/a b",
        ] {
            assert_eq!(parse_metadata_path(bad), None, "{bad}");
        }
    }

    fn decode(text: &str) -> Result<MetadataOp, String> {
        let value: Value = serde_json::from_str(text).unwrap();
        RawOp::decode(&value)
            .and_then(RawOp::validate)
            .map_err(|error| error.message)
    }

    #[test]
    fn both_value_forms() {
        let set = MetadataOp::Set {
            machine: "m".parse().unwrap(),
            key: "k".into(),
            value: "v".into(),
        };
        assert_eq!(
            decode(r#"{"op":"add","path":"/m/metadata/k","value":{"value":"v"}}"#),
            Ok(set.clone())
        );
        assert_eq!(
            decode(r#"{"op":"add","path":"/m/metadata/k","Value":{"value":"v"}}"#),
            Ok(set.clone())
        );
        assert_eq!(
            decode(r#"{"Op":"replace","PATH":"/m/metadata/k","value":{"Value":"v"}}"#),
            Ok(MetadataOp::Set {
                machine: "m".parse().unwrap(),
                key: "k".into(),
                value: "v".into()
            })
        );
        assert_eq!(
            decode(r#"{"op":"add","path":"/m/metadata/k","value":"v"}"#),
            Ok(set)
        );
        assert_eq!(
            decode(r#"{"op":"remove","path":"/m/metadata/k"}"#),
            Ok(MetadataOp::Remove {
                machine: "m".parse().unwrap(),
                key: "k".into()
            })
        );
    }

    #[test]
    fn errors_in_order() {
        assert_eq!(
            decode(r#"{"op":"ADD","path":"x"}"#),
            Err("invalid op: expect add, remove, or replace".into())
        );
        assert_eq!(
            decode(r#"{"op":"add","path":"x"}"#),
            Err("machine metadata path invalid".into())
        );
        assert_eq!(
            decode(r#"{"op":"add","path":"/m/metadata/k","value":{"value":""}}"#),
            Err("invalid value: add and replace require a value".into())
        );
        assert!(decode(r#"{"op":1}"#).is_err());
        assert!(decode(r#"{"op":"add","path":"/m/metadata/k","value":5}"#).is_err());
    }
}
