//! The schedule and the engine: placements, one machine's schedule for its
//! agent, the engine's snapshot at one revision, leader election, and
//! leader-guarded schedule writes (a deposed engine's write fails).

#[allow(clippy::wildcard_imports)] // the store's imports, shared by its parts
use super::*;

/// The engine's proof of leadership: the leader key's create revision. Every
/// schedule write compares it, so a deposed engine cannot write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub machine: MachineId,
    /// `create_revision` of `P/engine/leader` when we created it.
    pub revision: Revision,
}

/// One edit of the schedule by the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleChange {
    /// Writes (or rewrites, e.g. a new target state) a placement.
    Place(Placement),
    /// Removes the placement of `unit` on `machine` (absent is fine).
    Unplace { unit: UnitName, machine: MachineId },
}

/// Why the engine made some schedule changes, by (unit, machine): stored
/// with the change in the same transaction (in the schedule record for a
/// placement, in the unload order for an unplacement), so that the event
/// stream, which decodes etcd's watch, can say why. A change without an
/// entry is stored without a reason.
pub type ScheduleReasons = std::collections::HashMap<(UnitName, MachineId), String>;

/// Machines, units and placements, all read at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The revision everything was read at: watch from `revision + 1`.
    pub revision: Revision,
    /// Live machines sorted by id, metadata merged.
    pub machines: Vec<MachineState>,
    /// The dynamic metadata of every machine that has some (live or not):
    /// what a later presence record is merged with (see
    /// [`crate::changes::Change::MachinePresent`]).
    pub dynamic_metadata: BTreeMap<MachineId, BTreeMap<String, String>>,
    /// Units sorted by name.
    pub units: Vec<Unit>,
    /// Placements sorted by (unit, machine).
    pub placements: Vec<Placement>,
    /// Units whose record does not decode or whose content is missing or
    /// does not parse: not destroyed, so their placements must stay.
    pub unusable_units: Vec<UnitName>,
}

/// The most changes [`Registry::commit_schedule`] puts in one transaction.
/// Each change is two operations, and etcd refuses a txn of more than 128
/// operations by default (`--max-txn-ops`).
pub const SCHEDULE_BATCH: usize = 64;

impl Registry {
    pub(super) fn decode_placements(&self, kvs: &[KeyValue]) -> Vec<Placement> {
        let mut placements: Vec<Placement> = kvs
            .iter()
            .filter_map(|kv| self.decode_placement(kv.key_str().ok()?, kv.value()))
            .collect();
        placements.sort_by(|a, b| (&a.unit, &a.machine).cmp(&(&b.unit, &b.machine)));
        placements
    }

    /// Every placement, sorted by (unit, machine).
    pub async fn placements(&self) -> Result<Vec<Placement>, RegistryError> {
        let response = self
            .get_prefix("list placements", self.keys.schedule(), None)
            .await?;
        Ok(self.decode_placements(response.kvs()))
    }

    /// The machines `name` is placed on (one read of its placement prefix).
    pub async fn unit_placements(&self, name: &UnitName) -> Result<Vec<MachineId>, RegistryError> {
        let options = prefix_options().with_keys_only();
        let response = self
            .get(
                "get unit placements",
                self.keys.unit_placements(name),
                Some(options),
            )
            .await?;
        let mut machines: Vec<MachineId> = response
            .kvs()
            .iter()
            .filter_map(|kv| match self.keys.parse(kv.key_str().ok()?)? {
                RegistryKey::Placement { unit, machine } if unit == *name => Some(machine),
                _ => None,
            })
            .collect();
        machines.sort();
        Ok(machines)
    }

    /// This machine's schedule at a revision (to start a watch from `rev + 1`).
    pub async fn machine_schedule(
        &self,
        machine: &MachineId,
    ) -> Result<(Vec<Placement>, Revision), RegistryError> {
        let response = self
            .get_prefix(
                "get machine schedule",
                self.keys.machine_schedule(machine),
                None,
            )
            .await?;
        Ok((self.decode_placements(response.kvs()), response.revision()))
    }

    /// A placement (a key under `P/engine/schedule/`).
    pub(crate) fn decode_placement(&self, key: &str, value: &[u8]) -> Option<Placement> {
        let RegistryKey::Scheduled { machine, unit } = self.keys.parse(key)? else {
            return None;
        };
        wire::decode_placement(unit, machine, value)
            .map_err(|message| warn_undecodable(key, &message))
            .ok()
    }

    /// Machines, units and placements read at one revision (ranges pinned to
    /// the revision of the first), to feed an in-memory model that then
    /// watches from `revision + 1`.
    ///
    /// # Errors
    /// Transport errors and timeouts; [`RegistryError::Etcd`] if etcd
    /// compacted the revision between the reads (rare: list again).
    pub async fn snapshot(&self) -> Result<Snapshot, RegistryError> {
        let machines = self
            .get_prefix("snapshot machines", self.keys.machines(), None)
            .await?;
        let revision = machines.revision();
        let at = Some(revision);
        let metadata = self
            .get_prefix("snapshot metadata", self.keys.all_metadata(), at)
            .await?;
        let units = self
            .get_prefix("snapshot units", self.keys.units(), at)
            .await?;
        let contents = self
            .get_prefix("snapshot unit contents", self.keys.all_content(), at)
            .await?;
        let placements = self
            .get_prefix("snapshot placements", self.keys.schedule(), at)
            .await?;
        let decoded = self.decode_units(units.kvs(), contents.kvs());
        let usable: std::collections::BTreeSet<&UnitName> =
            decoded.iter().map(|unit| &unit.name).collect();
        let unusable_units = units
            .kvs()
            .iter()
            .filter_map(|kv| match self.keys.parse(kv.key_str().ok()?)? {
                RegistryKey::Unit(name) if !usable.contains(&name) => Some(name),
                _ => None,
            })
            .collect();
        let dynamic_metadata = self.decode_dynamic_metadata(metadata.kvs());
        Ok(Snapshot {
            revision,
            machines: self.decode_machines(machines.kvs(), &dynamic_metadata),
            dynamic_metadata,
            units: decoded,
            placements: self.decode_placements(placements.kvs()),
            unusable_units,
        })
    }

    /// Tries to become the engine: creates `P/engine/leader` = our id under
    /// `lease` if absent. `Some` when we lead (also when the key already holds
    /// our id under our lease: a campaign retried after a timeout), `None`
    /// when another engine leads.
    pub async fn campaign(
        &self,
        machine: &MachineId,
        lease: LeaseId,
    ) -> Result<Option<Leadership>, RegistryError> {
        let key = self.keys.engine_leader();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(
                    key.as_str(),
                    machine.as_str(),
                    Some(PutOptions::new().with_lease(lease.get())),
                ),
                TxnOp::get(key.as_str(), None),
            ])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let response = self.txn("campaign", txn).await?;
        let ranges = txn_ranges(&response);
        let Some(kv) = ranges.first().and_then(|get| get.kvs().first()) else {
            // The leader's lease expired between the compare and the read.
            return Ok(None);
        };
        let ours = response.succeeded()
            || (kv.value() == machine.as_str().as_bytes() && kv.lease() == lease.get());
        Ok(ours.then(|| Leadership {
            machine: machine.clone(),
            revision: Revision::new(kv.create_revision()),
        }))
    }

    /// Whether our etcd credential may write the range of `probe` (take it
    /// from [`Keys::engine_probe`] or [`Keys::api_probe`]). Writes nothing:
    /// the put sits behind a compare that never holds, and etcd checks the
    /// permission of every operation of a txn before it evaluates compares.
    /// Without etcd auth every credential may.
    pub async fn may_write(&self, probe: String) -> Result<bool, RegistryError> {
        let txn = Txn::new()
            .when([Compare::version(probe.as_str(), CompareOp::Less, 0)])
            .and_then([TxnOp::put(probe.as_str(), "", None)]);
        match self.txn("probe write permission", txn).await {
            Ok(_) => Ok(true),
            Err(RegistryError::Etcd { message, .. }) if message.contains("permission denied") => {
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// The current engine, if any.
    pub async fn leader(&self) -> Result<Option<MachineId>, RegistryError> {
        let key = self.keys.engine_leader();
        let response = self.get("get leader", key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let machine = kv
            .value_str()
            .ok()
            .and_then(|value| value.parse::<MachineId>().ok())
            .ok_or_else(|| RegistryError::Decode {
                key,
                message: "not a machine id".to_owned(),
            })?;
        Ok(Some(machine))
    }

    /// Gives up leadership (deletes the leader key if it is still ours).
    pub async fn resign(&self, leadership: &Leadership) -> Result<(), RegistryError> {
        let key = self.keys.engine_leader();
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                leadership.revision.get(),
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        self.txn("resign", txn).await?;
        Ok(())
    }

    /// Writes schedule changes in txns of at most [`SCHEDULE_BATCH`] changes,
    /// each guarded by our leadership. A `Place` writes the schedule key and
    /// the placement index; an `Unplace` deletes both. Batches before a failed
    /// one stay written. One change per (unit, machine) per call: etcd refuses
    /// a txn that writes a key twice.
    ///
    /// # Errors
    /// [`RegistryError::NotLeader`] when the leader key is not ours any more.
    pub async fn commit_schedule(
        &self,
        leadership: &Leadership,
        changes: &[ScheduleChange],
    ) -> Result<(), RegistryError> {
        self.commit_explained_schedule(leadership, changes, &ScheduleReasons::new())
            .await
    }

    /// [`Registry::commit_schedule`], storing with each change its reason
    /// from `reasons` (no extra operation: the reason rides in values the
    /// transaction writes anyway, cut to a short length).
    ///
    /// # Errors
    /// [`RegistryError::NotLeader`] when the leader key is not ours any more.
    pub async fn commit_explained_schedule(
        &self,
        leadership: &Leadership,
        changes: &[ScheduleChange],
        reasons: &ScheduleReasons,
    ) -> Result<(), RegistryError> {
        let leader = self.keys.engine_leader();
        let mut rest = changes;
        while !rest.is_empty() {
            let (ops, taken) = self.schedule_ops(rest, reasons);
            rest = &rest[taken..];
            let txn = Txn::new()
                .when([Compare::create_revision(
                    leader.as_str(),
                    CompareOp::Equal,
                    leadership.revision.get(),
                )])
                .and_then(ops);
            if !self.txn("commit schedule", txn).await?.succeeded() {
                return Err(RegistryError::NotLeader);
            }
        }
        debug!(n_changes = changes.len(), "Committed schedule changes.");
        Ok(())
    }

    /// The operations of one schedule txn: as many of `changes` as fit in
    /// [`SCHEDULE_BATCH`] × 2 operations. An unplacement also writes its
    /// unload order (`P/unload-order/<machine>/<unit>`: the agent's proof that
    /// the engine ordered the unload). Returns the ops and how many changes
    /// they cover (at least one).
    pub(super) fn schedule_ops(
        &self,
        changes: &[ScheduleChange],
        reasons: &ScheduleReasons,
    ) -> (Vec<TxnOp>, usize) {
        let reason = |unit: &UnitName, machine: &MachineId| {
            reasons
                .get(&(unit.clone(), machine.clone()))
                .map_or("", String::as_str)
        };
        let max_ops = SCHEDULE_BATCH * 2;
        let mut ops = Vec::with_capacity(max_ops);
        let mut taken = 0;
        for change in changes {
            let needed = match change {
                ScheduleChange::Place(_) => 2,
                ScheduleChange::Unplace { .. } => 3,
            };
            if taken > 0 && ops.len() + needed > max_ops {
                break;
            }
            match change {
                ScheduleChange::Place(placement) => {
                    let (unit, machine) = (&placement.unit, &placement.machine);
                    ops.push(TxnOp::put(
                        self.keys.scheduled(machine, unit),
                        wire::encode_explained_placement(placement, reason(unit, machine)),
                        None,
                    ));
                    ops.push(TxnOp::put(self.keys.placement(unit, machine), "", None));
                }
                ScheduleChange::Unplace { unit, machine } => {
                    ops.push(TxnOp::delete(self.keys.scheduled(machine, unit), None));
                    ops.push(TxnOp::delete(self.keys.placement(unit, machine), None));
                    // The order's value is its reason (the agent reads only
                    // its revision).
                    let why = wire::short_reason(reason(unit, machine)).to_owned();
                    ops.push(TxnOp::put(self.keys.unload_order(machine, unit), why, None));
                }
            }
            taken += 1;
        }
        (ops, taken)
    }
}
