//! Everything fleet knows about systemd.
//!
//! Two halves with one job each:
//! - [`unit`]: unit files as the original fleet understood them: the parser with
//!   go-systemd's exact semantics, the canonical serialization and its SHA1 hash,
//!   unit names and templates, and the `[X-Fleet]` scheduling requirements. Pure
//!   logic, no I/O; fleetctl, the registry and the scheduler all use it.
//! - `dbus` (feature `dbus`): the client that drives a real systemd manager over
//!   D-Bus. Only fleetd enables it, so fleetctl never links zbus.
//!
//! Start reading at [`unit::UnitFile`].

// Input and I/O paths return errors; unwrap() is for tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod unit;

#[cfg(feature = "dbus")]
pub mod dbus;
