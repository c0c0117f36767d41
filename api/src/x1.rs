//! The JSON of the operations API beside v1, under `/fleet/x1/`.
//!
//! v1 is a compatibility promise with the original `fleetctl`; what fleet
//! adds lives beside it so that nothing an old client sees changes:
//!
//! - `GET /fleet/x1/cordons`: every cordoned machine ([`CordonList`]).
//! - `PUT /fleet/x1/machines/<id>/cordon` with a [`CordonRequest`]: cordon
//!   (or drain, with `draining`) a live machine; answers the [`Cordon`].
//! - `DELETE /fleet/x1/machines/<id>/cordon`: uncordon (ends a drain too).
//! - `GET /fleet/x1/machines/<id>/drain`: what is left on the machine ([`DrainStatus`]).
//! - `POST /fleet/x1/plan` with a [`PlanRequest`]: where the scheduler would
//!   place these units now, and why ([`PlanResponse`]); writes nothing.
//! - `GET /fleet/x1/why/<unit>`: the same for a unit already submitted.
//! - `POST /fleet/x1/units` with a [`UnitBatch`]: create or change many units
//!   in one request, each answered as `PUT /fleet/v1/units/<name>` would
//!   answer it ([`UnitBatchResponse`], one [`UnitResult`] per unit, in order).
//! - `GET /fleet/x1/units/<unit>/logs?lines=N&follow=true&machine=ID`: the
//!   unit's journal on the machine that runs it, as server-sent events
//!   ([`LOG_LINE_EVENT`] per line, [`LOG_PING_EVENT`] while a followed
//!   journal is quiet, [`LOG_ERROR_EVENT`] if it breaks).
//! - `GET /fleet/x1/units/<unit>/status?machine=ID`: `systemctl status` of
//!   the unit there ([`UnitStatus`]).
//! - `GET /fleet/x1/peer/units/<unit>/{logs,status}`: the same, answered only
//!   by the machine that runs the unit; what one fleetd asks another.

use serde::{Deserialize, Serialize};

use crate::entities::Unit;

/// The body of `PUT machines/<id>/cordon`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CordonRequest {
    /// Also move the machine's units away.
    #[serde(default)]
    pub draining: bool,
    /// Who asks (`user@host`, as the client says); logged and stored.
    #[serde(default)]
    pub by: String,
    /// Why, in the operator's words.
    #[serde(default)]
    pub reason: String,
}

/// A cordoned machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cordon {
    pub machine: String,
    pub draining: bool,
    pub by: String,
    pub reason: String,
    /// Seconds since the Unix epoch.
    pub since: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CordonList {
    #[serde(default)]
    pub cordons: Vec<Cordon>,
}

/// Where one unit of a draining machine stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DrainUnitState {
    /// Will move (waits for the drain's budget).
    Waiting,
    /// Cannot move: pinned, or no other machine satisfies it.
    Blocked,
    /// A global unit: stays on every matching machine.
    Global,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainUnit {
    pub name: String,
    pub state: DrainUnitState,
    #[serde(default)]
    pub reason: String,
}

/// The answer of `GET machines/<id>/drain`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    pub machine: String,
    /// `None`: the machine is not cordoned.
    #[serde(default)]
    pub cordon: Option<Cordon>,
    /// The units still placed on the machine.
    #[serde(default)]
    pub units: Vec<DrainUnit>,
}

impl DrainStatus {
    /// Nothing left on the machine that will move.
    pub fn is_done(&self) -> bool {
        self.units
            .iter()
            .all(|unit| unit.state != DrainUnitState::Waiting)
    }
}

/// The body of `POST plan`: unit entities as `PUT units/<name>` takes them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRequest {
    pub units: Vec<Unit>,
}

/// What one machine thinks of one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineVerdict {
    pub machine: String,
    pub chosen: bool,
    pub fits: bool,
    pub reason: String,
}

/// Where a unit is or would be placed, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub name: String,
    #[serde(default)]
    pub placed_on: Vec<String>,
    pub summary: String,
    #[serde(default)]
    pub machines: Vec<MachineVerdict>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanResponse {
    pub units: Vec<Explanation>,
}

/// Journal lines sent when `lines` is not given (as `journalctl -n`).
pub const DEFAULT_LOG_LINES: u32 = 10;
/// The most journal lines one request may ask for.
pub const MAX_LOG_LINES: u32 = 10_000;
/// The SSE event name of one journal line (its `data:` is the line).
pub const LOG_LINE_EVENT: &str = "line";
/// The SSE event sent every few seconds while a followed journal is quiet,
/// so a forwarding fleetd can tell a quiet unit from a dead peer.
pub const LOG_PING_EVENT: &str = "ping";
/// The SSE event that ends a stream that broke (`data:` is the message).
pub const LOG_ERROR_EVENT: &str = "error";

/// The answer of `GET units/<unit>/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitStatus {
    /// The machine that ran `systemctl status`.
    pub machine: String,
    /// What `systemctl status` printed (stdout, cut at a size limit).
    pub output: String,
    /// Its exit status (3 for an inactive unit, as systemctl says).
    pub exit_status: i32,
}

/// The most units one `POST /fleet/x1/units` may carry (the body is also
/// held to v1's 1.5 MiB body limit); a client sends more in several.
pub const MAX_BATCH_UNITS: usize = 1000;

/// The body of `POST /fleet/x1/units`: units in v1's entity shape (name,
/// options, desiredState), each as the body of a v1 `PUT` of its name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitBatch {
    pub units: Vec<Unit>,
}

/// What v1 `PUT /fleet/v1/units/<name>` would have answered for one unit:
/// 201 (created or replaced), 204 (desired state set) or an error's status
/// and message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitResult {
    pub name: String,
    pub code: u16,
    /// The error entity's message; empty on success.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl UnitResult {
    /// Whether the unit's PUT succeeded (201 or 204).
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// The answer of `POST /fleet/x1/units`: one result per unit, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitBatchResponse {
    pub results: Vec<UnitResult>,
}
