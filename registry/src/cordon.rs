//! Cordoned and draining machines: what operators took out of rotation.
//!
//! A [`Cordon`] record under `P/api/cordon/<machine>` says that the machine takes
//! no new placements; with `draining` set, the engine also moves its units
//! away. The record has no lease: it outlives fleetd restarts and engine
//! failovers, so a drain continues on whichever engine leads, and it stays
//! until someone uncordons the machine (a machine that comes back after
//! maintenance is not silently put back in rotation). The API writes it; the
//! engine reads and watches it. It records who asked and why, for the log and
//! for `fleetctl list-machines`.

use serde::{Deserialize, Serialize};

use crate::keys::RegistryKey;
use crate::model::MachineId;
use crate::store::{Registry, RegistryError};

/// One cordoned machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cordon {
    pub machine: MachineId,
    /// The engine moves the machine's units away.
    pub draining: bool,
    /// Who asked (as the client said: `user@host`).
    pub by: String,
    /// Why, as the operator said it (may be empty).
    pub reason: String,
    /// When, in seconds since the Unix epoch.
    pub since: u64,
}

/// The stored JSON, spelled out so a model rename never changes it.
#[derive(Debug, Serialize, Deserialize)]
struct CordonRecord {
    #[serde(default)]
    draining: bool,
    #[serde(default)]
    by: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    since: u64,
}

impl Registry {
    /// Writes (creates or replaces) the cordon of `cordon.machine`.
    pub async fn put_cordon(&self, cordon: &Cordon) -> Result<(), RegistryError> {
        const OP: &str = "put cordon";
        let key = self.keys().cordon(&cordon.machine);
        let record = CordonRecord {
            draining: cordon.draining,
            by: cordon.by.clone(),
            reason: cordon.reason.clone(),
            since: cordon.since,
        };
        let value = serde_json::to_vec(&record).map_err(|error| RegistryError::Etcd {
            op: OP,
            message: error.to_string(),
        })?;
        // Retry-safe: a put of a fixed value.
        self.run(OP, |mut clients| {
            let (key, value) = (key.clone(), value.clone());
            async move { clients.kv.put(key, value, None).await }
        })
        .await?;
        Ok(())
    }

    /// Removes the cordon of `machine`; whether there was one.
    pub async fn delete_cordon(&self, machine: &MachineId) -> Result<bool, RegistryError> {
        const OP: &str = "delete cordon";
        let key = self.keys().cordon(machine);
        // Retry-safe: a delete (a retry after a lost answer reports "none").
        let response = self
            .run(OP, |mut clients| {
                let key = key.clone();
                async move { clients.kv.delete(key, None).await }
            })
            .await?;
        Ok(response.deleted() > 0)
    }

    /// Every cordon, in machine id order.
    pub async fn cordons(&self) -> Result<Vec<Cordon>, RegistryError> {
        const OP: &str = "list cordons";
        let prefix = self.keys().cordons();
        let response = self.get_prefix(OP, prefix, None).await?;
        let mut cordons: Vec<Cordon> = response
            .kvs()
            .iter()
            .filter_map(|kv| self.decode_cordon(kv.key_str().ok()?, kv.value()))
            .collect();
        cordons.sort_by(|a, b| a.machine.cmp(&b.machine));
        Ok(cordons)
    }

    /// A cordon record (a key under `P/api/cordon/`); `None` for anything else or
    /// an undecodable value (logged), which counts as no cordon.
    pub(crate) fn decode_cordon(&self, key: &str, value: &[u8]) -> Option<Cordon> {
        let RegistryKey::Cordon(machine) = self.keys().parse(key)? else {
            return None;
        };
        match serde_json::from_slice::<CordonRecord>(value) {
            Ok(record) => Some(Cordon {
                machine,
                draining: record.draining,
                by: record.by,
                reason: record.reason,
                since: record.since,
            }),
            Err(error) => {
                tracing::warn!(key, %error, "Ignoring an undecodable cordon record.");
                None
            }
        }
    }
}
