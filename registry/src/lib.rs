//! The registry: fleet's model types and its etcd v3 store.
//!
//! - [`model`]: machines, units, placements (the schedule) and unit states, the
//!   words every other crate uses.
//! - [`events`]: the watch of everything, decoded into typed events by revision.
//! - [`keys`]: the etcd key layout. **The only module that formats a key.**
//! - [`store`]: [`Registry`], typed reads and writes, leases, watches, the
//!   engine's snapshot, leader election and leader-guarded schedule writes.
//! - `wire` (private): the JSON values stored in etcd, converted by hand.
//! - [`testing`] (feature `testing`): a real etcd on free loopback ports for tests.
//!
//! **Architecture invariant:** no other crate names `etcd_client`.
//! **Architecture invariant:** an idle cluster writes nothing: presence and
//! unit states ride on one lease per machine, kept alive without writes.

pub mod events;
pub mod keys;
pub mod model;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod wire;

pub use model::{
    InvalidMachineId, InvalidTargetState, MachineId, MachineState, Placement, TargetState, Unit,
    UnitState,
};
pub use store::{
    Leadership, LeaseId, MetadataOp, Registry, RegistryConfig, RegistryError, Revision,
    ScheduleChange, Snapshot, WatchEvent, WatchEventKind, WatchStream,
};
