//! The registry: fleet's model types and its etcd v3 store.
//!
//! - [`model`]: machines, units, placements (the schedule) and unit states, the
//!   words every other crate uses (the `fleet-model` crate, re-exported).
//! - [`auth`]: etcd users and roles, one identity per machine (`fleetd etcd-auth`).
//! - [`changes`]: typed changes of a watch for the engine and the agent
//!   ([`changes::ChangeStream`]): the domain's facts, never raw keys.
//! - [`events`]: the watch of everything, decoded into typed events by revision.
//! - [`keys`]: the etcd key layout. **The only module that formats a key.**
//! - [`store`]: [`Registry`], typed reads and writes, leases, watches, the
//!   engine's snapshot, leader election and leader-guarded schedule writes.
//! - [`rollouts`]: the stored side of rolling updates (spec, progress, content references).
//! - `endpoints` (private): which etcd member a request goes to; routes
//!   around a dead member and probes it until it answers again.
//! - [`discovery`]: the etcd members named by DNS SRV records
//!   (`etcd_discovery_srv`), looked up again while fleetd runs.
//! - `keepalive`: [`LeaseKeepAlive`], one long-lived keep-alive stream per lease.
//! - `wire` (private): the JSON values stored in etcd, converted by hand.
//! - [`survey`]: what each etcd member says about its leader, asked when
//!   this machine's lease cannot be renewed (self-fencing tells a partition
//!   from a leaderless etcd by it).
//! - [`cordon`]: cordoned and draining machines (stored, read by the engine).
//! - [`testing`] (feature `testing`): a real etcd on free loopback ports for tests.
//!
//! **Architecture invariant:** no other crate names `etcd_client`.
//! **Architecture invariant:** an idle cluster writes nothing: presence and
//! unit states ride on one lease per machine, kept alive without writes.

// Input and I/O paths return errors; unwrap() is for tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod auth;
pub mod changes;
pub mod cordon;
pub mod discovery;
mod endpoints;
pub mod events;
mod ids;
mod keepalive;
pub mod keys;
/// The domain model, its own crate (`fleet-model`, no etcd, no tokio) so the API
/// entities and fleetctl share it without linking etcd.
pub use fleet_model as model;
pub mod rollouts;
pub mod store;
pub mod survey;
#[cfg(feature = "testing")]
#[allow(clippy::unwrap_used)] // test support: a broken fixture should stop the test
pub mod testing;
mod wire;

pub use discovery::{DiscoveryError, SrvDiscovery};
pub use keepalive::LeaseKeepAlive;
pub use model::{
    InvalidMachineId, InvalidTargetState, MachineId, MachineState, Placement, RunAttempts,
    RunFailure, RunOutcome, RunReport, TargetState, Unit, UnitState,
};
pub use store::{
    InvalidRevision, Leadership, LeaseId, MetadataOp, Registry, RegistryConfig, RegistryError,
    Revision, ScheduleChange, ScheduleReasons, Snapshot, UNITS_PER_CREATE_TXN, UNITS_PER_STATE_TXN,
    WatchEvent, WatchEventKind, WatchStream,
};
