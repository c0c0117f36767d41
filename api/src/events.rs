//! The entity of the event stream `GET /fleet/v1/events` (server-sent
//! events), shared by the server and the client.
//!
//! One SSE message per change: `event:` is the [`EventEntity::kind`]
//! (`unit.placed`, ...), `data:` is the entity as JSON, and the last message of
//! each etcd revision carries `id: <revision>`. A client that reconnects with
//! `Last-Event-ID` (browsers do it by themselves) resumes after that revision
//! and loses nothing; it may see again the start of a revision it had only
//! partly received, so consumers that care compare `revision`.
//!
//! A stream that cannot continue ends with one `event: error` message whose
//! data is an [`EventError`] (for example when etcd compacted the revision
//! the client asked to resume from).

use serde::{Deserialize, Serialize};

/// One change in the cluster. Fields that do not apply to the kind are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventEntity {
    /// The etcd revision of the change.
    pub revision: i64,
    /// `noun.verb`: `unit.submitted`, `unit.replaced`, `unit.target-changed`,
    /// `unit.destroyed`, `unit.placed`, `unit.unplaced`, `unit.state-changed`,
    /// `unit.state-removed`, `machine.joined`, `machine.changed`,
    /// `machine.left`, `engine.leader-changed`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The machine concerned (the new leader for a leader change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// The target state now (submitted, replaced, target-changed, placed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_state: Option<String>,
    /// The target state before (target-changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_target_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_state: Option<String>,
    /// A machine's address (joined, changed).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "publicIP")]
    pub public_ip: Option<String>,
    /// `machine.cordoned`: whether the machine is being drained too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<bool>,
    /// `unit.placed`, `unit.unplaced`: why the engine placed or unplaced the
    /// unit (the scheduler's words, such as "machine m1 was lost" or
    /// "machine m2 is draining"); absent when the engine stored none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The data of the final `event: error` message of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventError {
    /// `compacted` (resume point is gone: start again without one) or
    /// `unavailable` (etcd failed: reconnect with the last id).
    pub error: String,
    pub message: String,
    /// For `compacted`: the oldest revision etcd still holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_revision: Option<i64>,
}
