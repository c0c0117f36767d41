//! Rolling updates: the JSON of a rollout, shared by the API (which stores
//! the request), the engine (which drives it) and fleetctl (which shows it).
//!
//! A rollout replaces the content of existing units (a template's instances,
//! a global unit on every machine, or a plain unit) batch by batch. It lives
//! in etcd as two values with one writer each:
//!
//! - the [`RolloutSpec`], written by the API: what to roll out (the units and
//!   the content each had, the new content's hash), the [`Strategy`], and the
//!   operator's [`Control`] (run, pause, abort) and canary promotion;
//! - the [`RolloutProgress`], written by the elected engine only: the phase,
//!   one [`Target`] per placement being updated, and the history.
//!
//! Because both are in etcd and the engine's decisions are a pure function of
//! them plus the unit states the agents report, a new engine continues a
//! rollout where a killed one stopped. These types are new resources beside
//! the v1 entities (`/fleet/v1/rollouts`); nothing of v1 changes.
//!
//! Times are wall-clock milliseconds since the Unix epoch, so that they mean
//! the same on every machine an engine may run on.

use serde::{Deserialize, Serialize};

/// How a rollout proceeds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// How many placements are updated at once (at least 1).
    pub max_parallel: u32,
    /// How long an updated unit must stay active (and healthy) to count.
    pub min_healthy_time_ms: u64,
    /// How long an updated unit may take to become healthy before its batch fails.
    pub healthy_deadline_ms: u64,
    /// Update this many placements first, then wait for a promotion.
    pub canary: u32,
    /// Whether a failed batch sends every updated unit back to its old content.
    pub auto_revert: bool,
}

impl Default for Strategy {
    fn default() -> Strategy {
        Strategy {
            max_parallel: 1,
            min_healthy_time_ms: 10_000,
            healthy_deadline_ms: 300_000,
            canary: 0,
            auto_revert: true,
        }
    }
}

/// `POST /fleet/v1/rollouts`: start rolling `unit_file` out to `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRequest {
    /// The unit or template (`web@.service`) whose units get the new content.
    pub name: String,
    /// The new unit file's text.
    pub unit_file: String,
    #[serde(default)]
    pub strategy: Strategy,
    /// A restart instead of an update: `unit_file` is ignored (may be
    /// empty) and every placement of the unit is stopped and started again
    /// on its current content, batch by batch (`fleetctl restart` of a
    /// global unit).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart: bool,
}

/// What the operator asks of a running rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Control {
    #[default]
    Run,
    Pause,
    Abort,
}

/// `POST /fleet/v1/rollouts/<name>`: one operator action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Pause,
    Resume,
    Abort,
    Promote,
}

/// `{"action": ...}`, the body of an operator action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRequest {
    pub action: Action,
}

/// One unit a rollout updates and the content it had when the rollout began.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutUnit {
    pub unit: String,
    pub old_hash: String,
}

/// The rollout as requested (stored by the API at `P/api/rollouts/<name>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    pub name: String,
    /// Identifies this rollout among successive ones of the same name (the
    /// creation time); a progress belongs to the spec with the same id.
    pub id: u64,
    pub new_hash: String,
    pub units: Vec<RolloutUnit>,
    pub strategy: Strategy,
    #[serde(default)]
    pub control: Control,
    /// Set by `--promote`: the canaries were accepted, the rest may follow.
    #[serde(default)]
    pub promoted: bool,
    /// Whether the new content declares a health check (`[X-Fleet]
    /// HealthCheckExec=` or `HealthCheckHTTP=`): then an updated unit is
    /// healthy only once its agent says so.
    #[serde(default)]
    pub health_check: bool,
    /// A restart: `new_hash` is the units' current content, and each target
    /// is stopped (its placement's target state held at `loaded`) until its
    /// agent reports it inactive, then started again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart: bool,
}

/// Where a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    Running,
    Paused,
    /// The canaries are healthy; waiting for `--promote`.
    AwaitingPromotion,
    /// A batch failed and auto-revert is off: the updated units keep the new
    /// content until `--abort` reverts them.
    Failed,
    /// Every unit runs the new content and the unit records say so.
    Succeeded,
    /// A batch failed; every unit went back to its old content.
    Reverted,
    /// The operator aborted; every unit went back to its old content.
    Aborted,
}

impl Phase {
    /// Whether the rollout is over (it no longer holds any placement).
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Reverted | Phase::Aborted)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::AwaitingPromotion => "awaiting-promotion",
            Phase::Failed => "failed",
            Phase::Succeeded => "succeeded",
            Phase::Reverted => "reverted",
            Phase::Aborted => "aborted",
        }
    }
}

/// Where one placement of a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TargetPhase {
    /// Still on the old content.
    Pending,
    /// Scheduled with the new content; waiting for it to be healthy.
    Updating,
    /// Healthy on the new content for the minimum healthy time.
    Healthy,
    /// Not healthy within the deadline.
    Failed,
    /// The placement went away (unit stopped, destroyed or moved).
    Gone,
}

impl TargetPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetPhase::Pending => "pending",
            TargetPhase::Updating => "updating",
            TargetPhase::Healthy => "healthy",
            TargetPhase::Failed => "failed",
            TargetPhase::Gone => "gone",
        }
    }
}

/// One placement (unit on machine) a rollout updates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub unit: String,
    pub machine: String,
    pub phase: TargetPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// In a restart: when the agent was seen to have stopped the unit (it
    /// is started again from then on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_ms: Option<u64>,
}

/// One line of a rollout's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEvent {
    pub at_ms: u64,
    pub message: String,
}

/// The engine's account of a rollout (stored at `P/engine/rollout-progress/<name>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutProgress {
    /// The [`RolloutSpec::id`] this progress belongs to.
    pub id: u64,
    pub phase: Phase,
    pub targets: Vec<Target>,
    pub history: Vec<HistoryEvent>,
}

/// `GET /fleet/v1/rollouts[/<name>]`: a spec with its progress (none until
/// the engine has taken the rollout in).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub spec: RolloutSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RolloutProgress>,
}

impl Rollout {
    /// The phase to show: the progress's, or `pending` before the engine
    /// took the rollout in.
    pub fn phase_name(&self) -> &'static str {
        match &self.progress {
            Some(progress) if progress.id == self.spec.id => progress.phase.as_str(),
            _ => "pending",
        }
    }

    /// Whether the rollout is over.
    pub fn is_terminal(&self) -> bool {
        self.progress
            .as_ref()
            .is_some_and(|progress| progress.id == self.spec.id && progress.phase.is_terminal())
    }
}

/// `GET /fleet/v1/rollouts`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutList {
    pub rollouts: Vec<Rollout>,
}
