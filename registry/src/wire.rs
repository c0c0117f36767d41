//! The JSON values stored in etcd, and their conversion to and from the model.
//!
//! These serde types are a compatibility promise with every fleetd of the
//! cluster (and with data already in etcd), so they are private, spelled out
//! field by field, and converted by hand: renaming a model field never changes
//! what is stored. Keys are not parsed here: the caller passes the names it
//! took from the key (see [`crate::keys`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use fleet_systemd::unit::{UnitHash, UnitName};

use crate::model::{
    MachineId, MachineState, Placement, RunAttempts, RunFailure, RunOutcome, RunReport,
    TargetState, UnitState,
};

/// `P/machine/presence/<machine>`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MachineRecord {
    id: String,
    #[serde(rename = "publicIP", default)]
    public_ip: String,
    /// The configured metadata only; dynamic metadata lives under `P/api/metadata/`.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    version: String,
    #[serde(default)]
    disable_engine: bool,
    #[serde(default)]
    disable_agent: bool,
    /// Optional: absent in records of older fleetds and when not configured.
    #[serde(rename = "apiURL", default, skip_serializing_if = "String::is_empty")]
    api_url: String,
}

/// `P/api/units/<unit>`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UnitRecord {
    pub(crate) hash: String,
    pub(crate) desired_state: String,
}

/// `P/engine/schedule/<machine>/<unit>`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScheduleRecord {
    hash: String,
    target_state: String,
    /// Why the engine wrote it (for the event stream); optional, so older
    /// records and fleetds read it alike.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    reason: String,
}

/// The longest placement reason stored: the scheduler's sentences are
/// short; this keeps a schedule write small whatever they say.
pub(crate) const MAX_REASON_BYTES: usize = 160;

/// `reason` cut to [`MAX_REASON_BYTES`] on a character boundary.
pub(crate) fn short_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// `P/machine/states/<machine>/<unit>`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateRecord {
    hash: String,
    load_state: String,
    active_state: String,
    sub_state: String,
    reached: String,
    /// Only for a run-to-completion unit whose run is over: absent for every
    /// other unit, so their values are what they always were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run: Option<RunRecord>,
}

/// How a run ended: inside a state, and in `P/machine/runs/<machine>/<unit>`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunRecord {
    result: String,
    exit_status: i32,
    /// µs since the Unix epoch.
    exited_at: u64,
    attempt: u32,
}

/// `P/machine/runs/<machine>/<unit>`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunOutcomeRecord {
    hash: String,
    #[serde(flatten)]
    run: RunRecord,
}

/// `P/engine/runs/<unit>`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunAttemptsRecord {
    hash: String,
    attempts: u32,
    #[serde(default)]
    failures: Vec<RunFailureRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunFailureRecord {
    machine: String,
    exited_at: u64,
}

/// Why a stored value could not be decoded (the caller adds the key).
pub(crate) type DecodeResult<T> = Result<T, String>;

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs of strings, bools and string maps cannot
    // fail: serde_json only fails on non-string map keys or failing Serialize impls.
    serde_json::to_vec(value).expect("wire records always serialize")
}

fn from_json<'a, T: Deserialize<'a>>(value: &'a [u8]) -> DecodeResult<T> {
    serde_json::from_slice(value).map_err(|error| error.to_string())
}

fn parse_hash(hash: &str) -> DecodeResult<UnitHash> {
    hash.parse::<UnitHash>().map_err(|error| error.to_string())
}

fn parse_state(state: &str) -> DecodeResult<TargetState> {
    state
        .parse::<TargetState>()
        .map_err(|error| error.to_string())
}

pub(crate) fn encode_machine(machine: &MachineState) -> Vec<u8> {
    to_json(&MachineRecord {
        id: machine.id.to_string(),
        public_ip: machine.public_ip.clone(),
        metadata: machine.metadata.clone(),
        version: machine.version.clone(),
        disable_engine: machine.disable_engine,
        disable_agent: machine.disable_agent,
        api_url: machine.api_url.clone(),
    })
}

/// Decodes a machine record of `machine` (the id from the key wins over the
/// one in the value, which is informative only). Metadata is the configured one.
pub(crate) fn decode_machine(machine: &MachineId, value: &[u8]) -> DecodeResult<MachineState> {
    let record: MachineRecord = from_json(value)?;
    if record.id != machine.as_str() {
        return Err(format!("the record names machine {:?}", record.id));
    }
    Ok(MachineState {
        id: machine.clone(),
        public_ip: record.public_ip,
        metadata: record.metadata,
        version: record.version,
        disable_engine: record.disable_engine,
        disable_agent: record.disable_agent,
        api_url: record.api_url,
    })
}

pub(crate) fn encode_unit(hash: &UnitHash, desired_state: TargetState) -> Vec<u8> {
    to_json(&UnitRecord {
        hash: hash.to_string(),
        desired_state: desired_state.as_str().to_owned(),
    })
}

pub(crate) fn decode_unit(value: &[u8]) -> DecodeResult<(UnitHash, TargetState)> {
    let record: UnitRecord = from_json(value)?;
    Ok((
        parse_hash(&record.hash)?,
        parse_state(&record.desired_state)?,
    ))
}

/// A placement with why the engine made it (empty: none).
pub(crate) fn encode_explained_placement(placement: &Placement, reason: &str) -> Vec<u8> {
    to_json(&ScheduleRecord {
        reason: short_reason(reason).to_owned(),
        hash: placement.hash.to_string(),
        target_state: placement.target_state.as_str().to_owned(),
    })
}

pub(crate) fn decode_placement(
    unit: UnitName,
    machine: MachineId,
    value: &[u8],
) -> DecodeResult<Placement> {
    let record: ScheduleRecord = from_json(value)?;
    Ok(Placement {
        unit,
        machine,
        hash: parse_hash(&record.hash)?,
        target_state: parse_state(&record.target_state)?,
    })
}

/// The reason stored with a placement, if any (for events only; a value
/// that does not decode has none).
pub(crate) fn placement_reason(value: &[u8]) -> Option<String> {
    let record: ScheduleRecord = from_json(value).ok()?;
    (!record.reason.is_empty()).then_some(record.reason)
}

pub(crate) fn encode_unit_state(state: &UnitState) -> Vec<u8> {
    to_json(&StateRecord {
        hash: state.hash.to_string(),
        load_state: state.load_state.clone(),
        active_state: state.active_state.clone(),
        sub_state: state.sub_state.clone(),
        reached: state.reached.as_str().to_owned(),
        run: state.run.as_ref().map(run_record),
    })
}

fn run_record(report: &RunReport) -> RunRecord {
    RunRecord {
        result: report.result.clone(),
        exit_status: report.exit_status,
        exited_at: report.exited_at_usecs,
        attempt: report.attempt,
    }
}

fn run_report(record: RunRecord) -> RunReport {
    RunReport {
        result: record.result,
        exit_status: record.exit_status,
        exited_at_usecs: record.exited_at,
        attempt: record.attempt,
    }
}

pub(crate) fn encode_run_outcome(outcome: &RunOutcome) -> Vec<u8> {
    to_json(&RunOutcomeRecord {
        hash: outcome.hash.to_string(),
        run: run_record(&outcome.report),
    })
}

pub(crate) fn decode_run_outcome(
    unit: UnitName,
    machine: MachineId,
    value: &[u8],
) -> DecodeResult<RunOutcome> {
    let record: RunOutcomeRecord = from_json(value)?;
    Ok(RunOutcome {
        unit,
        machine,
        hash: parse_hash(&record.hash)?,
        report: run_report(record.run),
    })
}

pub(crate) fn encode_run_attempts(attempts: &RunAttempts) -> Vec<u8> {
    to_json(&RunAttemptsRecord {
        hash: attempts.hash.to_string(),
        attempts: attempts.attempts,
        failures: attempts
            .failures
            .iter()
            .map(|failure| RunFailureRecord {
                machine: failure.machine.to_string(),
                exited_at: failure.exited_at_usecs,
            })
            .collect(),
    })
}

pub(crate) fn decode_run_attempts(unit: UnitName, value: &[u8]) -> DecodeResult<RunAttempts> {
    let record: RunAttemptsRecord = from_json(value)?;
    let failures = record
        .failures
        .into_iter()
        .map(|failure| {
            Ok(RunFailure {
                machine: failure
                    .machine
                    .parse()
                    .map_err(|error: crate::model::InvalidMachineId| error.to_string())?,
                exited_at_usecs: failure.exited_at,
            })
        })
        .collect::<DecodeResult<Vec<RunFailure>>>()?;
    Ok(RunAttempts {
        unit,
        hash: parse_hash(&record.hash)?,
        attempts: record.attempts,
        failures,
    })
}

pub(crate) fn decode_unit_state(
    unit: UnitName,
    machine: MachineId,
    value: &[u8],
) -> DecodeResult<UnitState> {
    let record: StateRecord = from_json(value)?;
    Ok(UnitState {
        unit,
        machine,
        hash: parse_hash(&record.hash)?,
        load_state: record.load_state,
        active_state: record.active_state,
        sub_state: record.sub_state,
        reached: parse_state(&record.reached)?,
        run: record.run.map(run_report),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine_id(id: &str) -> MachineId {
        id.parse().expect("test ids are valid")
    }

    fn hash(byte: u8) -> UnitHash {
        UnitHash([byte; 20])
    }

    #[test]
    fn machine_round_trips_and_is_camel_case() {
        let machine = MachineState {
            id: machine_id("m1"),
            public_ip: "10.0.0.5".to_owned(),
            metadata: BTreeMap::from([("region".to_owned(), "us-west".to_owned())]),
            version: "0.1.0".to_owned(),
            disable_engine: true,
            disable_agent: false,
            api_url: String::new(),
        };
        let bytes = encode_machine(&machine);
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("valid json");
        assert_eq!(
            json,
            serde_json::json!({"id":"m1","publicIP":"10.0.0.5","metadata":{"region":"us-west"},
                "version":"0.1.0","disableEngine":true,"disableAgent":false})
        );
        assert_eq!(decode_machine(&machine_id("m1"), &bytes), Ok(machine));
    }

    #[test]
    fn machine_with_another_id_is_refused() {
        let bytes = br#"{"id":"m2"}"#;
        assert!(decode_machine(&machine_id("m1"), bytes).is_err());
        let minimal = decode_machine(&machine_id("m2"), bytes).expect("optional fields default");
        assert!(minimal.metadata.is_empty() && !minimal.disable_engine);
    }

    #[test]
    fn unit_round_trips() {
        let bytes = encode_unit(&hash(0xab), TargetState::Launched);
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("valid json");
        assert_eq!(
            json,
            serde_json::json!({"hash": "ab".repeat(20), "desiredState": "launched"})
        );
        assert_eq!(decode_unit(&bytes), Ok((hash(0xab), TargetState::Launched)));
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(decode_unit(br#"{"hash":"zz","desiredState":"launched"}"#).is_err());
        assert!(
            decode_unit(
                format!(
                    r#"{{"hash":"{}","desiredState":"running"}}"#,
                    "00".repeat(20)
                )
                .as_bytes()
            )
            .is_err()
        );
        assert!(decode_unit(b"").is_err());
        assert!(decode_unit(b"not json").is_err());
    }

    #[test]
    fn placement_round_trips() {
        let placement = Placement {
            unit: "a.service".parse::<UnitName>().expect("a valid name"),
            machine: machine_id("m1"),
            hash: hash(1),
            target_state: TargetState::Loaded,
        };
        let bytes = encode_explained_placement(&placement, "");
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("valid json");
        assert_eq!(
            json,
            serde_json::json!({"hash": "01".repeat(20), "targetState": "loaded"})
        );
        assert_eq!(
            decode_placement(placement.unit.clone(), placement.machine.clone(), &bytes),
            Ok(placement)
        );
    }

    #[test]
    fn unit_state_round_trips() {
        let state = UnitState {
            unit: "a.service".parse::<UnitName>().expect("a valid name"),
            machine: machine_id("m1"),
            hash: hash(2),
            load_state: "loaded".to_owned(),
            active_state: "active".to_owned(),
            sub_state: "running".to_owned(),
            reached: TargetState::Launched,
            run: None,
        };
        let bytes = encode_unit_state(&state);
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("valid json");
        assert_eq!(
            json,
            serde_json::json!({"hash": "02".repeat(20), "loadState": "loaded", "activeState": "active",
                "subState": "running", "reached": "launched"})
        );
        assert_eq!(
            decode_unit_state(state.unit.clone(), state.machine.clone(), &bytes),
            Ok(state)
        );
    }

    #[test]
    fn runs_round_trip_and_ordinary_states_keep_their_bytes() {
        // An ordinary unit's state is byte for byte what it always was.
        let mut state = UnitState {
            unit: "job.service".parse::<UnitName>().expect("a valid name"),
            machine: machine_id("m1"),
            hash: hash(3),
            load_state: "loaded".to_owned(),
            active_state: "inactive".to_owned(),
            sub_state: "dead".to_owned(),
            reached: TargetState::Launched,
            run: None,
        };
        assert_eq!(
            String::from_utf8(encode_unit_state(&state)).expect("utf-8"),
            format!(
                r#"{{"hash":"{}","loadState":"loaded","activeState":"inactive","subState":"dead","reached":"launched"}}"#,
                "03".repeat(20)
            )
        );
        let report = RunReport {
            result: "exit-code".to_owned(),
            exit_status: 3,
            exited_at_usecs: 1_700_000_000_000_000,
            attempt: 2,
        };
        state.run = Some(report.clone());
        let bytes = encode_unit_state(&state);
        assert_eq!(
            decode_unit_state(state.unit.clone(), state.machine.clone(), &bytes),
            Ok(state.clone())
        );
        let outcome = RunOutcome {
            unit: state.unit.clone(),
            machine: machine_id("m1"),
            hash: hash(3),
            report,
        };
        let bytes = encode_run_outcome(&outcome);
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("valid json");
        assert_eq!(
            json,
            serde_json::json!({"hash": "03".repeat(20), "result": "exit-code", "exitStatus": 3,
                "exitedAt": 1_700_000_000_000_000_u64, "attempt": 2})
        );
        assert_eq!(
            decode_run_outcome(outcome.unit.clone(), machine_id("m1"), &bytes),
            Ok(outcome)
        );
        let attempts = RunAttempts {
            unit: state.unit.clone(),
            hash: hash(3),
            attempts: 2,
            failures: vec![RunFailure {
                machine: machine_id("m1"),
                exited_at_usecs: 5,
            }],
        };
        let bytes = encode_run_attempts(&attempts);
        assert_eq!(
            decode_run_attempts(attempts.unit.clone(), &bytes),
            Ok(attempts)
        );
    }
}
