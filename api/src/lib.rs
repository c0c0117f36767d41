//! The fleet HTTP API v1 (Documentation/api.md), both sides of the wire.
//!
//! - [`entities`]: the JSON entities (Unit, UnitState, Machine, pages, the
//!   error entity). A serialized type is a compatibility promise: the original
//!   `fleetctl` reads these bytes.
//! - [`rollout`]: the JSON of rolling updates (new resources beside v1).
//! - [`events`]: the entity of the event stream (an addition beside v1).
//! - [`token`]: pagination tokens (`{uint16 limit, uint16 page}`, URL-safe base64).
//! - `server` (feature `server`): the axum router and its handlers over the
//!   registry, mounted under `/fleet/v1` and `/v1-alpha`.
//! - `client` (feature `client`): the typed client fleetctl uses, over a unix
//!   socket or HTTP.

// Input and I/O paths return errors; unwrap() is for tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod entities;
pub mod events;
pub mod rollout;
pub mod token;
pub mod x1;

#[cfg(feature = "server")]
pub mod server;

#[cfg(feature = "client")]
pub mod client;
