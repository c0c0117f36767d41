//! The stored side of rolling updates.
//!
//! A rollout is two JSON values with one writer each (the registry stores
//! them as bytes; `fleet_api::rollout` defines them): the spec at
//! `P/api/rollouts/<name>`, written by the API (start, pause, resume, abort,
//! promote), and the progress at `P/engine/rollout-progress/<name>`, written by the
//! elected engine in leader-guarded transactions.
//!
//! A rollout holds a content reference (`rollout:<name>`) on its new content
//! and on every old content, so that neither is deleted while units may still
//! be sent forward or back; the engine releases them when the rollout ends.
//! At the end of a successful rollout the engine switches every unit record
//! to the new content with [`Registry::switch_unit_content`].

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use fleet_systemd::unit::{UnitFile, UnitHash, UnitName};
use tracing::debug;

use crate::store::{Leadership, Registry, RegistryError, Revision, header_revision};
use crate::wire;

/// One stored rollout: the spec (with the revision it was written at, the
/// guard of a compare-and-swap) and the engine's progress, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRollout {
    pub name: String,
    pub spec: Vec<u8>,
    pub spec_revision: Revision,
    pub progress: Option<Vec<u8>>,
}

/// What [`Registry::switch_unit_content`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitSwitch {
    /// The record now names the new content.
    Switched,
    /// It named the new content already (an earlier engine got here).
    AlreadyNew,
    /// It is gone, or names a content other than the old one (someone
    /// replaced it meanwhile): left alone.
    Changed,
}

impl Registry {
    /// Every rollout, specs and progress read at one revision.
    pub async fn rollouts(&self) -> Result<Vec<StoredRollout>, RegistryError> {
        let specs = self
            .get_prefix("list rollouts", self.keys().rollouts(), None)
            .await?;
        let at = Some(specs.revision());
        let progress = self
            .get_prefix(
                "list rollout progress",
                self.keys().all_rollout_progress(),
                at,
            )
            .await?;
        let progress_dir = self.keys().all_rollout_progress();
        let specs_dir = self.keys().rollouts();
        let mut rollouts = Vec::new();
        for kv in specs.kvs() {
            let Some(name) = kv
                .key_str()
                .ok()
                .and_then(|key| self.keys().child(&specs_dir, key))
            else {
                continue;
            };
            let progress = progress
                .kvs()
                .iter()
                .find(|p| {
                    p.key_str()
                        .ok()
                        .and_then(|key| self.keys().child(&progress_dir, key))
                        == Some(name)
                })
                .map(|p| p.value().to_vec());
            rollouts.push(StoredRollout {
                name: name.to_owned(),
                spec: kv.value().to_vec(),
                spec_revision: Revision::new(kv.mod_revision()),
                progress,
            });
        }
        Ok(rollouts)
    }

    /// One rollout by name.
    pub async fn rollout(&self, name: &str) -> Result<Option<StoredRollout>, RegistryError> {
        let spec = self
            .get("get rollout", self.keys().rollout(name), None)
            .await?;
        let Some(kv) = spec.kvs().first() else {
            return Ok(None);
        };
        let at = Some(header_revision(&spec));
        let options =
            at.map(|revision| etcd_client::GetOptions::new().with_revision(revision.get()));
        let progress = self
            .get(
                "get rollout progress",
                self.keys().rollout_progress(name),
                options,
            )
            .await?;
        Ok(Some(StoredRollout {
            name: name.to_owned(),
            spec: kv.value().to_vec(),
            spec_revision: Revision::new(kv.mod_revision()),
            progress: progress.kvs().first().map(|p| p.value().to_vec()),
        }))
    }

    /// Starts a rollout: writes `spec`, stores the new content (once per
    /// hash) and takes the rollout's references on the new and every old
    /// content, in one transaction. `replaces` is the revision of the spec
    /// of a finished rollout of the same name (`None`: there must be none).
    /// `Ok(false)` when the spec changed meanwhile.
    pub async fn start_rollout(
        &self,
        name: &str,
        spec: &[u8],
        replaces: Option<Revision>,
        new_content: &UnitFile,
        old_hashes: &[UnitHash],
    ) -> Result<bool, RegistryError> {
        let keys = self.keys();
        let key = keys.rollout(name);
        let guard = match replaces {
            None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Some(revision) => Compare::mod_revision(key.as_str(), CompareOp::Equal, revision.get()),
        };
        let new_hash = new_content.hash();
        let content_key = keys.content(&new_hash);
        let put_content_if_absent = Txn::new()
            .when([Compare::version(content_key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                content_key.as_str(),
                new_content.serialize(),
                None,
            )]);
        let mut ops = vec![
            TxnOp::put(key.as_str(), spec, None),
            TxnOp::delete(keys.rollout_progress(name), None),
            TxnOp::put(keys.rollout_content_ref(&new_hash, name), "", None),
            TxnOp::txn(put_content_if_absent),
        ];
        for old in old_hashes {
            ops.push(TxnOp::put(keys.rollout_content_ref(old, name), "", None));
        }
        let txn = Txn::new().when([guard]).and_then(ops);
        Ok(self.txn("start rollout", txn).await?.succeeded())
    }

    /// Rewrites a rollout's spec (an operator's control) if it is still at
    /// `revision`. `Ok(false)` when it changed meanwhile.
    pub async fn update_rollout_spec(
        &self,
        name: &str,
        spec: &[u8],
        revision: Revision,
    ) -> Result<bool, RegistryError> {
        let key = self.keys().rollout(name);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision.get(),
            )])
            .and_then([TxnOp::put(key.as_str(), spec, None)]);
        Ok(self.txn("update rollout", txn).await?.succeeded())
    }

    /// Writes a rollout's progress, guarded by the engine leadership.
    pub async fn put_rollout_progress(
        &self,
        leadership: &Leadership,
        name: &str,
        progress: &[u8],
    ) -> Result<(), RegistryError> {
        let leader = self.keys().engine_leader();
        let txn = Txn::new()
            .when([Compare::create_revision(
                leader.as_str(),
                CompareOp::Equal,
                leadership.revision.get(),
            )])
            .and_then([TxnOp::put(
                self.keys().rollout_progress(name),
                progress,
                None,
            )]);
        if self.txn("put rollout progress", txn).await?.succeeded() {
            Ok(())
        } else {
            Err(RegistryError::NotLeader)
        }
    }

    /// Releases the rollout's references on `hashes`, deleting a content
    /// that no unit refers to any more (each in its own transaction).
    pub async fn release_rollout_content(
        &self,
        name: &str,
        hashes: &[UnitHash],
    ) -> Result<(), RegistryError> {
        for hash in hashes {
            let own = self.keys().rollout_content_ref(hash, name);
            let txn = self.release_content_ref(hash, &own);
            self.txn("release rollout content", txn).await?;
        }
        Ok(())
    }

    /// Points the record of `name` at `new` if it points at `old`, moving
    /// its content reference in the same transaction (the old content goes
    /// with its last reference). The desired state is kept.
    pub async fn switch_unit_content(
        &self,
        name: &UnitName,
        old: &UnitHash,
        new: &UnitHash,
    ) -> Result<UnitSwitch, RegistryError> {
        const OP: &str = "switch unit content";
        let key = self.keys().unit(name);
        let response = self.get(OP, key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(UnitSwitch::Changed);
        };
        let (hash, desired_state) =
            wire::decode_unit(kv.value()).map_err(|message| RegistryError::Decode {
                key: key.clone(),
                message,
            })?;
        if hash == *new {
            return Ok(UnitSwitch::AlreadyNew);
        }
        if hash != *old {
            return Ok(UnitSwitch::Changed);
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([
                TxnOp::put(key.as_str(), wire::encode_unit(new, desired_state), None),
                TxnOp::put(self.keys().content_ref(new, name), "", None),
                TxnOp::txn(self.release_content(old, name)),
            ]);
        if self.txn(OP, txn).await?.succeeded() {
            Ok(UnitSwitch::Switched)
        } else {
            debug!(unit = %name, "The unit record changed while we switched its content.");
            Ok(UnitSwitch::Changed)
        }
    }
}

impl Registry {
    /// Publishes the verdict of `unit`'s health check on `machine`, under
    /// the machine's lease.
    pub async fn put_unit_health(
        &self,
        unit: &UnitName,
        machine: &crate::MachineId,
        healthy: bool,
        lease: crate::LeaseId,
    ) -> Result<(), RegistryError> {
        let key = self.keys().health(unit, machine);
        let value = if healthy { "healthy" } else { "unhealthy" };
        let txn = Txn::new().and_then([TxnOp::put(
            key,
            value,
            Some(etcd_client::PutOptions::new().with_lease(lease.get())),
        )]);
        self.txn("put unit health", txn).await?;
        Ok(())
    }

    /// Withdraws `machine`'s verdict on `unit` (the unit left the machine).
    pub async fn delete_unit_health(
        &self,
        unit: &UnitName,
        machine: &crate::MachineId,
    ) -> Result<(), RegistryError> {
        let key = self.keys().health(unit, machine);
        let txn = Txn::new().and_then([TxnOp::delete(key, None)]);
        self.txn("delete unit health", txn).await?;
        Ok(())
    }

    /// The health verdicts on `unit`, by machine id. Verdicts are keyed
    /// machine first (the agent's own range), so this reads all of them:
    /// there is one per unit that declares a health check and runs, a small
    /// set, read once per rollout step.
    pub async fn unit_health(&self, unit: &UnitName) -> Result<Vec<(String, bool)>, RegistryError> {
        let dir = self.keys().all_health();
        let response = self
            .get_prefix("get unit health", dir.clone(), None)
            .await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let rest = kv.key_str().ok()?.strip_prefix(dir.as_str())?;
                let (machine, name) = rest.split_once('/')?;
                (name == unit.as_str()).then(|| (machine.to_owned(), kv.value() == b"healthy"))
            })
            .collect())
    }
}
