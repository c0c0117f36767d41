//! The registry: fleet's model types and its etcd v3 store.
//!
//! - [`model`]: machines, units, placements (the schedule) and unit states, the
//!   words every other crate uses.
//! - [`keys`]: the etcd key layout. **The only module that formats a key.**
//! - [`store`]: [`Registry`], typed reads and writes, leases, watches.
//!
//! **Architecture invariant:** no other crate names `etcd_client`.
//! **Architecture invariant:** an idle cluster writes nothing: presence and
//! unit states ride on one lease per machine, kept alive without writes.

pub mod keys;
pub mod model;
pub mod store;

pub use model::{
    MachineId, MachineState, Placement, TargetState, Unit, UnitState, InvalidMachineId,
    InvalidTargetState,
};
pub use store::{Registry, RegistryConfig, RegistryError};
