//! The model: machines, units, placements and unit states.
//!
//! These are the domain's words; wire formats (etcd values, API JSON) are
//! separate serde types converted by hand, so a field rename here never
//! silently changes what is stored or served.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use fleet_systemd::unit::{UnitFile, UnitHash, UnitName};

/// A machine's id: the trimmed contents of its `/etc/machine-id`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MachineId(String);

/// A machine id that cannot name a machine (empty, or would break a key).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid machine id {0:?}: expected a non-empty id without '/' or whitespace")]
pub struct InvalidMachineId(pub String);

impl MachineId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 8 characters, as fleetctl shows a machine and as `MachineID=`
    /// may name it (Documentation/compatibility.md, "`[X-Fleet]` options").
    pub fn short(&self) -> &str {
        self.0.get(..8).unwrap_or(&self.0)
    }
}

impl FromStr for MachineId {
    type Err = InvalidMachineId;
    fn from_str(s: &str) -> Result<MachineId, InvalidMachineId> {
        if s.is_empty() || s.contains('/') || s.chars().any(char::is_whitespace) {
            return Err(InvalidMachineId(s.to_owned()));
        }
        Ok(MachineId(s.to_owned()))
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a machine publishes about itself while its lease lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineState {
    pub id: MachineId,
    /// The machine's `primaryIP` (configured or detected); empty when unknown.
    pub public_ip: String,
    /// Configured metadata with the dynamic (API PATCH) metadata merged over it.
    pub metadata: BTreeMap<String, String>,
    /// fleetd's version, without a leading `v`.
    pub version: String,
    /// `disable_engine`: this machine never campaigns for the engine.
    pub disable_engine: bool,
    /// `disable_agent`: this machine runs no agent, so the engine never places
    /// units on it (an engine- or API-only fleetd).
    pub disable_agent: bool,
    /// `api_advertise_url`: where other fleetds reach this machine's API to
    /// read its units' logs and status; empty when not published.
    pub api_url: String,
}

/// The states a unit can be asked to reach, in chain order
/// (Documentation/compatibility.md, "Target states").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetState {
    Inactive,
    Loaded,
    Launched,
}

/// A string that is not one of the three states.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {0:?} for JobState")]
pub struct InvalidTargetState(pub String);

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Inactive => "inactive",
            TargetState::Loaded => "loaded",
            TargetState::Launched => "launched",
        }
    }
}

impl FromStr for TargetState {
    type Err = InvalidTargetState;
    fn from_str(s: &str) -> Result<TargetState, InvalidTargetState> {
        match s {
            "inactive" => Ok(TargetState::Inactive),
            "loaded" => Ok(TargetState::Loaded),
            "launched" => Ok(TargetState::Launched),
            _ => Err(InvalidTargetState(s.to_owned())),
        }
    }
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A unit in the registry: its content (shared by hash) and desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub name: UnitName,
    /// Shared: thousands of instances of one template point at one parsed file.
    pub file: Arc<UnitFile>,
    pub hash: UnitHash,
    pub desired_state: TargetState,
}

/// One decision of the engine: `unit` runs on `machine` and its agent must
/// bring it to `target_state` (`Loaded` or `Launched`; an `Inactive` unit has
/// no placement).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub unit: UnitName,
    pub machine: MachineId,
    pub hash: UnitHash,
    pub target_state: TargetState,
}

/// What an agent reports about one unit on its machine, written only when it
/// changes and kept under the machine's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitState {
    pub unit: UnitName,
    pub machine: MachineId,
    /// Hash of the unit file the agent loaded.
    pub hash: UnitHash,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    /// The target state the agent has brought the unit to (`Loaded` or
    /// `Launched`): the API's `currentState` for a placed unit.
    pub reached: TargetState,
}

/// Go's `strconv.ParseBool`: the words the original's flags and its config
/// file accept for a boolean (`1 t T TRUE true True` and `0 f F FALSE false
/// False`). fleetd's config and fleetctl's flags both read booleans this way.
pub fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}
