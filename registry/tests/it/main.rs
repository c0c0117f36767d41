//! Integration tests of the registry against a real etcd (one binary, one
//! module per area). Every test starts its own etcd and uses a unique prefix.

mod auth;
mod discovery;
mod engine;
mod failover;
mod machines;
mod safety;
mod states;
#[cfg(feature = "tls")]
mod tls;
mod units;
mod util;
