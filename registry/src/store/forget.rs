//! Forgetting a machine that left the cluster for good (`fleetctl disenrol`).
//!
//! A machine's own keys are the ranges of [`Keys::machine_grants`]: its
//! presence, unit states, health verdicts, clean-stop mark and the unload
//! orders it was given. Presence, states and health vanish with its lease
//! when fleetd stops; the clean-stop mark and unload orders outlive it on
//! purpose (a restart needs them), so a machine that is gone for good must
//! delete them, or the engine keeps giving it the restart grace.
//!
//! The delete is one transaction guarded by "no presence key": a live fleetd
//! (this machine or another host with the same machine id) is never forgotten
//! under its feet. With etcd auth the machine's own credential suffices: the
//! ranges are exactly what its role is granted.

use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};

use super::{Registry, RegistryError};
use crate::keys::KeyRange;
use crate::model::MachineId;

impl Registry {
    /// Deletes every key `machine` writes, unless it is registered (a live
    /// fleetd holds its presence key). Returns how many keys were deleted.
    ///
    /// # Errors
    /// [`RegistryError::MachineExists`] while the machine is registered;
    /// transport errors and timeouts.
    pub async fn forget_machine(&self, machine: &MachineId) -> Result<i64, RegistryError> {
        let presence = self.keys.machine(machine);
        let deletes: Vec<TxnOp> = self
            .keys
            .machine_grants(machine)
            .into_iter()
            .map(|range| match range {
                KeyRange::Key(key) => TxnOp::delete(key, None),
                KeyRange::Prefix(prefix) => {
                    TxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix()))
                }
            })
            .collect();
        let txn = Txn::new()
            .when([Compare::version(presence.as_str(), CompareOp::Equal, 0)])
            .and_then(deletes);
        // Retry-safe: deletes; a repeat finds nothing left to delete.
        let response = self.txn("forget machine", txn).await?;
        if !response.succeeded() {
            return Err(RegistryError::MachineExists(machine.clone()));
        }
        Ok(deleted_keys(&response))
    }

    /// Deletes the dynamic metadata the API stored for `machine` (`PATCH
    /// /machines`), which outlives the machine on purpose (it may be set
    /// before a machine joins). Returns how many keys were deleted. With etcd
    /// auth this needs the API writers' or root's credentials, not the
    /// machine's own.
    ///
    /// # Errors
    /// Transport errors, timeouts, and etcd's refusal without permission.
    pub async fn forget_machine_metadata(&self, machine: &MachineId) -> Result<i64, RegistryError> {
        let prefix = self.keys.machine_metadata(machine);
        let txn = Txn::new().and_then([TxnOp::delete(
            prefix,
            Some(DeleteOptions::new().with_prefix()),
        )]);
        // Retry-safe: a delete; a repeat finds nothing left.
        let response = self.txn("forget machine metadata", txn).await?;
        Ok(deleted_keys(&response))
    }
}

/// How many keys the deletes of a transaction removed.
fn deleted_keys(response: &TxnResponse) -> i64 {
    response
        .op_responses()
        .iter()
        .map(|op| match op {
            TxnOpResponse::Delete(deleted) => deleted.deleted(),
            _ => 0,
        })
        .sum()
}
