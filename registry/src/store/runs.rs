//! Runs of run-to-completion units (`Type=oneshot` without
//! `RemainAfterExit=yes`).
//!
//! Two records, each in its writer's range:
//! - `P/machine/runs/<machine>/<unit>` ([`RunOutcome`]): how the unit's run
//!   ended on that machine, written by its agent **without a lease**. Unit
//!   states ride on the machine lease and vanish with it; this record
//!   outlives the machine, so the engine still knows the unit finished when
//!   the machine is lost and does not run it again elsewhere.
//! - `P/engine/runs/<unit>` ([`RunAttempts`]): the engine's count of the
//!   unit's runs and the failed runs it acted on (leader-guarded), so a
//!   retry is decided once, also across an engine failover.

#[allow(clippy::wildcard_imports)] // the store's imports, shared by its parts
use super::*;
use crate::model::{RunAttempts, RunOutcome};

impl Registry {
    /// Writes how `outcome.unit`'s run ended on `outcome.machine`, without a
    /// lease. Retry-safe: a put of a fixed value.
    pub async fn put_run_outcome(&self, outcome: &RunOutcome) -> Result<(), RegistryError> {
        let key = self.keys.run(&outcome.unit, &outcome.machine);
        let value = wire::encode_run_outcome(outcome);
        self.run("put run outcome", |mut clients| {
            let (key, value) = (key.clone(), value.clone());
            async move { clients.kv.put(key, value, None).await }
        })
        .await?;
        Ok(())
    }

    /// Deletes the outcome of `unit`'s run on `machine` (the unit runs again
    /// or left the machine). Retry-safe: deleting twice leaves it deleted.
    pub async fn delete_run_outcome(
        &self,
        unit: &UnitName,
        machine: &MachineId,
    ) -> Result<(), RegistryError> {
        let key = self.keys.run(unit, machine);
        self.run("delete run outcome", |mut clients| {
            let key = key.clone();
            async move { clients.kv.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    /// Every machine's run outcomes, sorted by (unit, machine).
    pub async fn run_outcomes(&self) -> Result<Vec<RunOutcome>, RegistryError> {
        let response = self
            .get_prefix("list run outcomes", self.keys.all_runs(), None)
            .await?;
        Ok(self.decode_run_outcomes(response.kvs()))
    }

    /// The run outcomes `machine` wrote, sorted by unit.
    pub async fn machine_run_outcomes(
        &self,
        machine: &MachineId,
    ) -> Result<Vec<RunOutcome>, RegistryError> {
        let response = self
            .get_prefix("list run outcomes", self.keys.machine_runs(machine), None)
            .await?;
        Ok(self.decode_run_outcomes(response.kvs()))
    }

    fn decode_run_outcomes(&self, kvs: &[KeyValue]) -> Vec<RunOutcome> {
        let mut outcomes: Vec<RunOutcome> = kvs
            .iter()
            .filter_map(|kv| self.decode_run_outcome(kv.key_str().ok()?, kv.value()))
            .collect();
        outcomes.sort_by(|a, b| (&a.unit, &a.machine).cmp(&(&b.unit, &b.machine)));
        outcomes
    }

    /// A run outcome (a key under `P/machine/runs/`).
    pub(crate) fn decode_run_outcome(&self, key: &str, value: &[u8]) -> Option<RunOutcome> {
        let RegistryKey::Run { unit, machine } = self.keys.parse(key)? else {
            return None;
        };
        wire::decode_run_outcome(unit, machine, value)
            .map_err(|message| warn_undecodable(key, &message))
            .ok()
    }

    /// Every run count the engine keeps, sorted by unit.
    pub async fn all_run_attempts(&self) -> Result<Vec<RunAttempts>, RegistryError> {
        let response = self
            .get_prefix("list run attempts", self.keys.all_run_attempts(), None)
            .await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = kv.key_str().ok()?;
                let RegistryKey::RunAttempts(unit) = self.keys.parse(key)? else {
                    return None;
                };
                wire::decode_run_attempts(unit, kv.value())
                    .map_err(|message| warn_undecodable(key, &message))
                    .ok()
            })
            .collect())
    }

    /// The engine's run count of `unit`, if it keeps one.
    pub async fn run_attempts(
        &self,
        unit: &UnitName,
    ) -> Result<Option<RunAttempts>, RegistryError> {
        let key = self.keys.run_attempts(unit);
        let response = self.get("get run attempts", key.clone(), None).await?;
        Ok(response.kvs().first().and_then(|kv| {
            wire::decode_run_attempts(unit.clone(), kv.value())
                .map_err(|message| warn_undecodable(&key, &message))
                .ok()
        }))
    }

    /// Writes the engine's run count of a unit, guarded by `leadership`.
    ///
    /// # Errors
    /// [`RegistryError::NotLeader`] when we no longer lead.
    pub async fn put_run_attempts(
        &self,
        leadership: &Leadership,
        attempts: &RunAttempts,
    ) -> Result<(), RegistryError> {
        let op = TxnOp::put(
            self.keys.run_attempts(&attempts.unit),
            wire::encode_run_attempts(attempts),
            None,
        );
        self.leader_txn("put run attempts", leadership, op).await
    }

    /// Deletes the engine's run count of `unit`, guarded by `leadership`.
    ///
    /// # Errors
    /// [`RegistryError::NotLeader`] when we no longer lead.
    pub async fn delete_run_attempts(
        &self,
        leadership: &Leadership,
        unit: &UnitName,
    ) -> Result<(), RegistryError> {
        let op = TxnOp::delete(self.keys.run_attempts(unit), None);
        self.leader_txn("delete run attempts", leadership, op).await
    }

    /// One operation under the leadership guard. Retry-safe: a put of a
    /// fixed value or a delete.
    async fn leader_txn(
        &self,
        name: &'static str,
        leadership: &Leadership,
        op: TxnOp,
    ) -> Result<(), RegistryError> {
        let leader = self.keys.engine_leader();
        let txn = Txn::new()
            .when([Compare::create_revision(
                leader.as_str(),
                CompareOp::Equal,
                leadership.revision.get(),
            )])
            .and_then([op]);
        if self.txn(name, txn).await?.succeeded() {
            Ok(())
        } else {
            Err(RegistryError::NotLeader)
        }
    }
}
