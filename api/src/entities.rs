//! The API's JSON entities, with the original's field names (Documentation/compatibility.md,
//! "What the original fleetctl needs from our API"). Every field is omitted when empty, as
//! Go's `omitempty` does; an empty page serializes as `{}`.

use fleet_model::TargetState;
use serde::{Deserialize, Serialize};

/// One `Name=Value` line of a unit, with its section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitOption {
    #[serde(default)]
    pub section: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// A unit: its options, desired and current state and machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<UnitOption>,
    #[serde(
        default,
        rename = "desiredState",
        skip_serializing_if = "String::is_empty"
    )]
    pub desired_state: String,
    #[serde(
        default,
        rename = "currentState",
        skip_serializing_if = "String::is_empty"
    )]
    pub current_state: String,
    #[serde(
        default,
        rename = "machineID",
        skip_serializing_if = "String::is_empty"
    )]
    pub machine_id: String,
    /// Not in the original (an optional field it ignores): why the unit's
    /// stored record or content cannot be used. Such a unit is listed with
    /// its name and this error only, never hidden.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl Unit {
    /// `desiredState` as a target state; `None` when empty or a word this
    /// build does not know (the field stays a string so that any server's
    /// JSON round-trips unchanged).
    pub fn desired(&self) -> Option<TargetState> {
        self.desired_state.parse().ok()
    }

    /// `currentState` as a target state: where the engine has placed the
    /// unit (`None`: empty, e.g. unplaced, or unknown).
    pub fn current(&self) -> Option<TargetState> {
        self.current_state.parse().ok()
    }
}

/// The state systemd reports for a unit on one machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    #[serde(
        default,
        rename = "machineID",
        skip_serializing_if = "String::is_empty"
    )]
    pub machine_id: String,
    #[serde(
        default,
        rename = "systemdLoadState",
        skip_serializing_if = "String::is_empty"
    )]
    pub systemd_load_state: String,
    #[serde(
        default,
        rename = "systemdActiveState",
        skip_serializing_if = "String::is_empty"
    )]
    pub systemd_active_state: String,
    #[serde(
        default,
        rename = "systemdSubState",
        skip_serializing_if = "String::is_empty"
    )]
    pub systemd_sub_state: String,
    /// Added fields, present only for a run-to-completion unit whose run on
    /// this machine is over (absent for every other unit, whose JSON is the
    /// original's): systemd's `Result` of the run (`success`, `exit-code`,
    /// `signal`, ...).
    #[serde(default, rename = "runResult", skip_serializing_if = "Option::is_none")]
    pub run_result: Option<String>,
    /// The run's exit status (the signal's number when it was killed).
    #[serde(
        default,
        rename = "exitStatus",
        skip_serializing_if = "Option::is_none"
    )]
    pub exit_status: Option<i32>,
    /// When the run ended, RFC 3339 UTC (`2026-12-07T02:12:18Z`).
    #[serde(default, rename = "exitedAt", skip_serializing_if = "Option::is_none")]
    pub exited_at: Option<String>,
    /// Which run this was: 1 for the first, 2 after one retry (`[X-Fleet] Retries=`).
    #[serde(default, rename = "attempts", skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// A machine: id, primary IP and merged metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(
        default,
        rename = "primaryIP",
        skip_serializing_if = "String::is_empty"
    )]
    pub primary_ip: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Added by fleet (the original has no such field, and its client ignores
    /// unknown fields): `cordoned` or `draining`; absent for a machine in
    /// rotation, so the original's entity is unchanged byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cordon: Option<MachineCordon>,
}

/// Why a machine takes no new units (see Documentation/using-the-client.md,
/// "Taking machines out of rotation, and asking the scheduler").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineCordon {
    /// Gets no new placements; what runs there stays.
    Cordoned,
    /// Cordoned, and its units are being moved away.
    Draining,
}

impl MachineCordon {
    /// The word in the API and in `list-machines`.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineCordon::Cordoned => "cordoned",
            MachineCordon::Draining => "draining",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitPage {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<Unit>,
    #[serde(
        default,
        rename = "nextPageToken",
        skip_serializing_if = "String::is_empty"
    )]
    pub next_page_token: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStatePage {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<UnitState>,
    #[serde(
        default,
        rename = "nextPageToken",
        skip_serializing_if = "String::is_empty"
    )]
    pub next_page_token: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachinePage {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<Machine>,
    #[serde(
        default,
        rename = "nextPageToken",
        skip_serializing_if = "String::is_empty"
    )]
    pub next_page_token: String,
}

/// The error entity: `{"error":{"code":N,"message":"..."}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEntity {
    pub error: ErrorBody,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: u16,
    #[serde(default)]
    pub message: String,
}

/// The 503 message while fleetd is not registered in etcd: the original's text, which its
/// tests and operators' alerts grep (Documentation/compatibility.md, "API transport and errors").
pub const UNAVAILABLE_MESSAGE: &str = "fleet server unable to communicate with etcd";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_page_is_an_empty_object() {
        assert_eq!(serde_json::to_string(&UnitPage::default()).unwrap(), "{}");
    }

    #[test]
    fn unit_field_names_are_the_originals() {
        let unit = Unit {
            name: "a.service".into(),
            desired_state: "launched".into(),
            machine_id: "m".into(),
            ..Unit::default()
        };
        assert_eq!(
            serde_json::to_string(&unit).unwrap(),
            r#"{"name":"a.service","desiredState":"launched","machineID":"m"}"#
        );
    }

    #[test]
    fn a_machine_in_rotation_has_only_the_originals_fields() {
        let mut machine = Machine {
            id: "m1".into(),
            primary_ip: "10.0.0.1".into(),
            metadata: [("region".to_owned(), "east".to_owned())].into(),
            cordon: None,
        };
        assert_eq!(
            serde_json::to_string(&machine).unwrap(),
            r#"{"id":"m1","primaryIP":"10.0.0.1","metadata":{"region":"east"}}"#
        );
        machine.cordon = Some(MachineCordon::Draining);
        let text = serde_json::to_string(&machine).unwrap();
        assert_eq!(
            text,
            r#"{"id":"m1","primaryIP":"10.0.0.1","metadata":{"region":"east"},"cordon":"draining"}"#
        );
        assert_eq!(serde_json::from_str::<Machine>(&text).unwrap(), machine);
    }

    #[test]
    fn an_ordinary_units_state_has_only_the_originals_fields() {
        let mut state = UnitState {
            name: "a.service".into(),
            hash: "ab".into(),
            machine_id: "m1".into(),
            systemd_load_state: "loaded".into(),
            systemd_active_state: "active".into(),
            systemd_sub_state: "running".into(),
            ..UnitState::default()
        };
        assert_eq!(
            serde_json::to_string(&state).unwrap(),
            r#"{"name":"a.service","hash":"ab","machineID":"m1","systemdLoadState":"loaded","systemdActiveState":"active","systemdSubState":"running"}"#
        );
        state.run_result = Some("exit-code".into());
        state.exit_status = Some(3);
        state.exited_at = Some("2026-12-07T02:12:18Z".into());
        state.attempts = Some(2);
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(
            text,
            r#"{"name":"a.service","hash":"ab","machineID":"m1","systemdLoadState":"loaded","systemdActiveState":"active","systemdSubState":"running","runResult":"exit-code","exitStatus":3,"exitedAt":"2026-12-07T02:12:18Z","attempts":2}"#
        );
        assert_eq!(serde_json::from_str::<UnitState>(&text).unwrap(), state);
    }
}
