//! [`Registry`]: typed reads and writes of the fleet keyspace in etcd v3.
//!
//! One attempt per call, each with the configured deadline; errors are
//! classified ([`RegistryError::is_retriable`]) and the caller owns the retry
//! policy. (Bodies marked `todo!()` are being written.)

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_systemd::unit::{UnitFile, UnitName};

use crate::keys::Keys;
use crate::model::{MachineId, MachineState, Placement, TargetState, Unit, UnitState};

/// An etcd revision.
pub type Revision = i64;
/// An etcd lease id.
pub type LeaseId = i64;

/// How to reach etcd (spec 8.3 `etcd_*` options).
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// etcd v3 endpoints (`http://host:port`), tried in order.
    pub endpoints: Vec<String>,
    /// `etcd_key_prefix`.
    pub key_prefix: String,
    /// `etcd_request_timeout`: the deadline of one request (not of watches).
    pub request_timeout: Duration,
    /// `etcd_username` / `etcd_password` (both or neither).
    pub username: Option<String>,
    pub password: Option<String>,
    /// `etcd_cafile`, `etcd_certfile`, `etcd_keyfile`.
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// What went wrong talking to etcd, or with what it holds.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("etcd {op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("etcd {op} failed: {message}")]
    Etcd { op: &'static str, message: String },
    #[error("cannot decode the value at {key}: {message}")]
    Decode { key: String, message: String },
    #[error("machine {0} is already registered by a live fleetd")]
    MachineExists(MachineId),
    #[error("this engine is not the leader")]
    NotLeader,
    #[error("invalid registry configuration: {0}")]
    Config(String),
}

impl RegistryError {
    /// Whether trying again later may succeed (timeouts and transport errors).
    pub fn is_retriable(&self) -> bool {
        matches!(self, RegistryError::Timeout { .. } | RegistryError::Etcd { .. })
    }
}

/// One metadata edit of `PATCH /machines` (spec 6.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataOp {
    /// add/replace: set `key` of `machine` to a non-empty value.
    Set { machine: String, key: String, value: String },
    /// remove: hide `key` of `machine`, configured or dynamic.
    Remove { machine: String, key: String },
}

/// A handle on the fleet keyspace in etcd. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    keys: Keys,
}

impl Registry {
    /// Connects to etcd. Does not fail when etcd is down: the first request does.
    ///
    /// # Errors
    /// [`RegistryError::Config`] for unusable TLS files or endpoints.
    pub async fn connect(config: &RegistryConfig) -> Result<Registry, RegistryError> {
        let _ = config;
        todo!()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    // --- leases ---

    /// Grants a lease of `ttl` (whole seconds, at least 1).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, RegistryError> {
        let _ = ttl;
        todo!()
    }

    /// Sends one keep-alive for `lease`; returns the remaining TTL, or
    /// `Ok(None)` when the lease has expired (it must be re-granted).
    pub async fn keep_alive_once(&self, lease: LeaseId) -> Result<Option<Duration>, RegistryError> {
        let _ = lease;
        todo!()
    }

    /// Revokes `lease`: every key attached to it is deleted at once.
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<(), RegistryError> {
        let _ = lease;
        todo!()
    }

    // --- machines ---

    /// Publishes `machine` under `lease` only if no live record has its id.
    ///
    /// # Errors
    /// [`RegistryError::MachineExists`] when another lease holds the id.
    pub async fn register_machine(&self, machine: &MachineState, lease: LeaseId) -> Result<(), RegistryError> {
        let _ = (machine, lease);
        todo!()
    }

    /// Rewrites our own machine record (e.g. a new IP) under the same lease,
    /// only if it is still ours.
    pub async fn update_machine(&self, machine: &MachineState, lease: LeaseId) -> Result<(), RegistryError> {
        let _ = (machine, lease);
        todo!()
    }

    /// Deletes our machine record (graceful shutdown), if it is ours.
    pub async fn unregister_machine(&self, machine: &MachineId, lease: LeaseId) -> Result<(), RegistryError> {
        let _ = (machine, lease);
        todo!()
    }

    /// Live machines sorted by id, dynamic metadata merged over the configured.
    pub async fn machines(&self) -> Result<Vec<MachineState>, RegistryError> {
        todo!()
    }

    /// One live machine, metadata merged.
    pub async fn machine(&self, machine: &MachineId) -> Result<Option<MachineState>, RegistryError> {
        let _ = machine;
        todo!()
    }

    /// Applies metadata edits in order, in one transaction.
    pub async fn apply_metadata(&self, ops: &[MetadataOp]) -> Result<(), RegistryError> {
        let _ = ops;
        todo!()
    }

    // --- units ---

    /// All units sorted by name, each with its content (one read per prefix).
    pub async fn units(&self) -> Result<Vec<Unit>, RegistryError> {
        todo!()
    }

    pub async fn unit(&self, name: &UnitName) -> Result<Option<Unit>, RegistryError> {
        let _ = name;
        todo!()
    }

    /// Creates or replaces `name` with `file` and `desired_state`, storing the
    /// content once per hash; releases the old content when replaced.
    pub async fn create_unit(&self, name: &UnitName, file: &UnitFile, desired_state: TargetState) -> Result<(), RegistryError> {
        let _ = (name, file, desired_state);
        todo!()
    }

    /// Sets the desired state of an existing unit. `Ok(false)` if it is gone.
    pub async fn set_desired_state(&self, name: &UnitName, desired_state: TargetState) -> Result<bool, RegistryError> {
        let _ = (name, desired_state);
        todo!()
    }

    /// Removes a unit and, with its last reference, its content. `Ok(false)`
    /// if it did not exist. Placements are the engine's to remove.
    pub async fn destroy_unit(&self, name: &UnitName) -> Result<bool, RegistryError> {
        let _ = name;
        todo!()
    }

    // --- placements (the schedule) ---

    /// Every placement, sorted by (unit, machine).
    pub async fn placements(&self) -> Result<Vec<Placement>, RegistryError> {
        todo!()
    }

    /// The machines `name` is placed on (one read of its placement prefix).
    pub async fn unit_placements(&self, name: &UnitName) -> Result<Vec<MachineId>, RegistryError> {
        let _ = name;
        todo!()
    }

    /// This machine's schedule at a revision (to start a watch from `rev + 1`).
    pub async fn machine_schedule(&self, machine: &MachineId) -> Result<(Vec<Placement>, Revision), RegistryError> {
        let _ = machine;
        todo!()
    }

    // --- unit states ---

    /// All unit states sorted by (unit, machine).
    pub async fn unit_states(&self) -> Result<Vec<UnitState>, RegistryError> {
        todo!()
    }

    /// The states reported for one unit, sorted by machine.
    pub async fn states_of_unit(&self, name: &UnitName) -> Result<Vec<UnitState>, RegistryError> {
        let _ = name;
        todo!()
    }

    /// Publishes a unit state under the machine's lease.
    pub async fn put_unit_state(&self, state: &UnitState, lease: LeaseId) -> Result<(), RegistryError> {
        let _ = (state, lease);
        todo!()
    }

    /// Deletes the state `machine` reported for `unit` (only that machine's).
    pub async fn delete_unit_state(&self, unit: &UnitName, machine: &MachineId) -> Result<(), RegistryError> {
        let _ = (unit, machine);
        todo!()
    }
}

/// Merges dynamic metadata over configured metadata: a non-empty value sets,
/// an empty one removes (spec 2, read and merge rules).
pub fn merge_metadata(configured: &BTreeMap<String, String>, dynamic: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut merged = configured.clone();
    for (key, value) in dynamic {
        if value.is_empty() {
            merged.remove(key);
        } else {
            merged.insert(key.clone(), value.clone());
        }
    }
    merged
}
