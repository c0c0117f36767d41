//! The registry's fail-safe markers: the engine's unload orders and the
//! clean-stop marks of machines (the keys' block in `keys.rs`).
//!
//! - `P/engine/unload-order/<machine>/<unit>` is written by
//!   [`Registry::commit_schedule`] in the txn that takes `unit` off `machine`.
//!   Its mod revision is later than the revision at which the agent last saw
//!   the unit scheduled exactly when a live, leader-guarded engine took it
//!   away. A wiped registry, a wrong `etcd_key_prefix` or an old backup has
//!   no such order, so the agent holds a mass unload instead of obeying an
//!   empty schedule. The agent deletes the order once it has unloaded.
//! - `P/machine/stopped/<machine>` says "this machine's fleetd stopped cleanly at T and
//!   left its units running"; the engine gives such a machine the restart
//!   grace instead of the machine-loss grace. Its heart deletes it when it
//!   registers again.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{Registry, RegistryError, Revision};
use fleet_systemd::unit::UnitName;

use crate::model::MachineId;

#[derive(Serialize, Deserialize)]
struct StoppedWire {
    /// Unix seconds of the clean stop.
    at: u64,
}

impl Registry {
    /// The engine's unload orders for `machine`: each unit with the mod
    /// revision of its order.
    ///
    /// # Errors
    /// Transport errors and timeouts.
    pub async fn unload_orders(
        &self,
        machine: &MachineId,
    ) -> Result<BTreeMap<UnitName, Revision>, RegistryError> {
        let prefix = self.keys.unload_orders(machine);
        let response = self
            .get_prefix("list unload orders", prefix.clone(), None)
            .await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let unit = kv.key_str().ok()?.strip_prefix(prefix.as_str())?;
                Some((
                    unit.parse::<UnitName>().ok()?,
                    Revision::new(kv.mod_revision()),
                ))
            })
            .collect())
    }

    /// Deletes the unload order of `unit` on `machine` (it was carried out).
    ///
    /// # Errors
    /// Transport errors and timeouts.
    pub async fn delete_unload_order(
        &self,
        machine: &MachineId,
        unit: &UnitName,
    ) -> Result<(), RegistryError> {
        const OP: &str = "delete unload order";
        let key = self.keys.unload_order(machine, unit);
        // Retry-safe: a delete.
        self.run(OP, |mut clients| {
            let key = key.clone();
            async move { clients.kv.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    /// Records that `machine`'s fleetd stopped cleanly at `at`, units left running.
    ///
    /// # Errors
    /// Transport errors and timeouts.
    pub async fn mark_stopped(
        &self,
        machine: &MachineId,
        at: SystemTime,
    ) -> Result<(), RegistryError> {
        const OP: &str = "mark machine stopped";
        let key = self.keys.stopped(machine);
        let at = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let value = serde_json::to_vec(&StoppedWire { at }).unwrap_or_default();
        // Retry-safe: a put of a fixed value.
        self.run(OP, |mut clients| {
            let (key, value) = (key.clone(), value.clone());
            async move { clients.kv.put(key, value, None).await }
        })
        .await?;
        Ok(())
    }

    /// Removes `machine`'s clean-stop mark (it is back).
    ///
    /// # Errors
    /// Transport errors and timeouts.
    pub async fn clear_stopped(&self, machine: &MachineId) -> Result<(), RegistryError> {
        const OP: &str = "clear machine stopped";
        let key = self.keys.stopped(machine);
        // Retry-safe: a delete.
        self.run(OP, |mut clients| {
            let key = key.clone();
            async move { clients.kv.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    /// Every machine marked as stopped cleanly, with the time of its stop.
    /// A mark that does not decode is skipped with a warning (it then gets
    /// the ordinary machine-loss grace).
    ///
    /// # Errors
    /// Transport errors and timeouts.
    pub async fn stopped_machines(&self) -> Result<BTreeMap<MachineId, SystemTime>, RegistryError> {
        let prefix = self.keys.stopped_machines();
        let response = self
            .get_prefix("list stopped machines", prefix.clone(), None)
            .await?;
        let mut stopped = BTreeMap::new();
        for kv in response.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            let decoded = key
                .strip_prefix(prefix.as_str())
                .and_then(|name| name.parse::<MachineId>().ok())
                .zip(serde_json::from_slice::<StoppedWire>(kv.value()).ok());
            match decoded {
                Some((machine, wire)) => {
                    stopped.insert(machine, UNIX_EPOCH + Duration::from_secs(wire.at));
                }
                None => warn!(key, "Skipping an undecodable clean-stop mark."),
            }
        }
        Ok(stopped)
    }
}
