//! What this machine's etcd identity may do: control plane or worker.
//!
//! With one etcd identity per machine (`fleetd etcd-auth`, see
//! `Documentation/security.md`), only control-plane machines may write the
//! engine's and the API writers' keys. fleetd learns which it is by asking
//! etcd ([`Registry::may_write`], which writes nothing) and a worker then
//! runs as `disable_engine=true` with a read-only API. etcd enforces the
//! permissions either way; this only keeps a worker from trying.

use fleet_registry::Registry;
use tracing::{info, warn};

use crate::config::Config;

/// What this machine's etcd identity may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcdRole {
    /// The engine's and the API writers' keys (also: etcd without auth).
    ControlPlane,
    /// Only its own keys: no engine, no API writes.
    Worker,
}

/// Asks etcd when fleetd has an etcd credential (`etcd_username` or a client
/// certificate); without one it is the control plane, as without etcd auth.
/// When etcd cannot be asked, fleetd runs as configured and says so.
pub async fn learn(config: &Config, registry: &Registry) -> EtcdRole {
    if config.etcd_username.is_empty() && config.etcd_certfile.is_empty() {
        return EtcdRole::ControlPlane;
    }
    let keys = registry.keys();
    let engine = registry.may_write(keys.engine_probe()).await;
    let api = registry.may_write(keys.api_probe()).await;
    match (engine, api) {
        (Ok(true), Ok(true)) => EtcdRole::ControlPlane,
        (Ok(engine), Ok(api)) => {
            if engine != api {
                warn!(
                    engine,
                    api_writes = api,
                    "This machine's etcd identity holds only one of the engine and API-writer roles; running as a worker. Re-run `fleetd etcd-auth add-machine` for it."
                );
            }
            info!(
                "This machine's etcd identity may write only its own keys: running as a worker (no engine, read-only API)."
            );
            EtcdRole::Worker
        }
        (Err(error), _) | (_, Err(error)) => {
            warn!(%error, "Could not ask etcd what this machine's identity may write; running as configured (etcd refuses what it may not do).");
            EtcdRole::ControlPlane
        }
    }
}
