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
    /// How the unit's run ended, for a run-to-completion unit whose run on
    /// this machine is over; `None` otherwise (every other unit).
    pub run: Option<RunReport>,
}

/// How one run of a run-to-completion unit (`Type=oneshot` without
/// `RemainAfterExit=yes`) ended, as systemd tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunReport {
    /// systemd's `Result` of the service: `success`, `exit-code`, `signal`,
    /// `timeout`, `core-dump`, ...
    pub result: String,
    /// The main process's exit status (the signal's number when killed).
    pub exit_status: i32,
    /// When the main process exited, µs since the Unix epoch (the machine's
    /// clock).
    pub exited_at_usecs: u64,
    /// Which run this was: 1 for the first, 2 for the first retry, ...
    pub attempt: u32,
}

impl RunReport {
    /// Whether the run succeeded (systemd's `Result` is `success`).
    pub fn succeeded(&self) -> bool {
        self.result == "success"
    }
}

/// A finished run of a unit on a machine, kept by that machine in etcd
/// without a lease: unlike its unit states, it outlives the machine's
/// presence, so the engine still knows the unit finished when the machine
/// is lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    pub unit: UnitName,
    pub machine: MachineId,
    /// The content that ran (an outcome of other content is stale).
    pub hash: UnitHash,
    pub report: RunReport,
}

/// The engine's account of a run-to-completion unit's runs, kept while the
/// unit is launched with this content: how many runs were started and which
/// failed runs it has already acted on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAttempts {
    pub unit: UnitName,
    pub hash: UnitHash,
    /// Runs started so far (1 before any retry).
    pub attempts: u32,
    /// The failed runs acted on, oldest first.
    pub failures: Vec<RunFailure>,
}

/// One failed run the engine acted on: where, and when it ended (the pair
/// names the run, so a failure is never counted twice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFailure {
    pub machine: MachineId,
    pub exited_at_usecs: u64,
}

/// `usecs` (µs since the Unix epoch) as RFC 3339 UTC with whole seconds,
/// e.g. `2026-12-07T02:12:18Z`.
pub fn format_utc(usecs: u64) -> String {
    let secs = usecs / 1_000_000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The (year, month, day) of `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_796_609_538_999_999), "2026-12-07T02:12:18Z");
    }
}
