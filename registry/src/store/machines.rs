//! Machines: presence records under each machine's lease, their dynamic
//! metadata (`PATCH /machines`), and the guarded writes that keep two fleetds
//! from claiming one machine id.

#[allow(clippy::wildcard_imports)] // the store's imports, shared by its parts
use super::*;

/// One metadata edit of `PATCH /machines`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataOp {
    /// add/replace: set `key` of `machine` to a non-empty value.
    Set {
        machine: MachineId,
        key: String,
        value: String,
    },
    /// remove: hide `key` of `machine`, configured or dynamic.
    Remove { machine: MachineId, key: String },
}

/// The outcome of a guarded write of our machine record.
pub(super) enum MachineWrite {
    Done,
    /// No record: nobody holds the id.
    Absent,
    /// A record under the given lease.
    Held(LeaseId),
}

/// Merges dynamic metadata over configured metadata: a non-empty value sets,
/// an empty one removes, as in the original.
pub fn merge_metadata(
    configured: &BTreeMap<String, String>,
    dynamic: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut merged = configured.clone();
    for (key, value) in dynamic {
        if value.is_empty() {
            merged.remove(key);
        } else {
            merged.insert(key.clone(), value.clone());
        }
    }
    merged
}

/// The most metadata keys [`Registry::apply_metadata`] writes in one txn (the
/// same etcd limit as above, with room to spare).
pub(super) const METADATA_BATCH: usize = 100;

impl Registry {
    /// Creates the record if absent; otherwise says who holds it.
    pub(super) async fn create_machine(
        &self,
        key: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> Result<MachineWrite, RegistryError> {
        let absent = Compare::create_revision(key, CompareOp::Equal, 0);
        self.put_machine_if("register machine", absent, key, value, lease)
            .await
    }

    /// Rewrites the record only if it is under `lease`.
    pub(super) async fn update_own_machine(
        &self,
        key: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> Result<MachineWrite, RegistryError> {
        let ours = Compare::lease(key, CompareOp::Equal, lease.get());
        self.put_machine_if("update machine", ours, key, value, lease)
            .await
    }

    /// Puts the record under `lease` if `condition` holds; otherwise says who
    /// holds it (or that it vanished between the compare and the read).
    pub(super) async fn put_machine_if(
        &self,
        op: &'static str,
        condition: Compare,
        key: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> Result<MachineWrite, RegistryError> {
        let txn = Txn::new()
            .when([condition])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease.get())),
            )])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn(op, txn).await?;
        if response.succeeded() {
            return Ok(MachineWrite::Done);
        }
        Ok(
            match txn_ranges(&response)
                .first()
                .and_then(|get| get.kvs().first())
            {
                Some(kv) => MachineWrite::Held(LeaseId::new(kv.lease())),
                None => MachineWrite::Absent,
            },
        )
    }

    /// Publishes `machine` under `lease` only if no live record has its id.
    /// Registering again under the same lease (a retry after a timeout whose
    /// write had landed) succeeds.
    ///
    /// # Errors
    /// [`RegistryError::MachineExists`] when another lease holds the id.
    pub async fn register_machine(
        &self,
        machine: &MachineState,
        lease: LeaseId,
    ) -> Result<(), RegistryError> {
        let key = self.keys.machine(&machine.id);
        let value = wire::encode_machine(machine);
        match self.create_machine(&key, &value, lease).await? {
            MachineWrite::Done => Ok(()),
            MachineWrite::Held(holder) if holder == lease => {
                match self.update_own_machine(&key, &value, lease).await? {
                    MachineWrite::Done => Ok(()),
                    _ => Err(RegistryError::MachineExists(machine.id.clone())),
                }
            }
            MachineWrite::Held(_) | MachineWrite::Absent => {
                Err(RegistryError::MachineExists(machine.id.clone()))
            }
        }
    }

    /// Rewrites our own machine record (e.g. a new IP) under the same lease,
    /// only if it is still ours. A record that vanished (deleted by hand) is
    /// created again.
    ///
    /// # Errors
    /// [`RegistryError::MachineExists`] when another lease holds the id.
    pub async fn update_machine(
        &self,
        machine: &MachineState,
        lease: LeaseId,
    ) -> Result<(), RegistryError> {
        let key = self.keys.machine(&machine.id);
        let value = wire::encode_machine(machine);
        match self.update_own_machine(&key, &value, lease).await? {
            MachineWrite::Done => Ok(()),
            MachineWrite::Held(_) => Err(RegistryError::MachineExists(machine.id.clone())),
            MachineWrite::Absent => match self.create_machine(&key, &value, lease).await? {
                MachineWrite::Done => Ok(()),
                MachineWrite::Held(holder) if holder == lease => Ok(()),
                _ => Err(RegistryError::MachineExists(machine.id.clone())),
            },
        }
    }

    /// Deletes our machine record (graceful shutdown), if it is ours.
    pub async fn unregister_machine(
        &self,
        machine: &MachineId,
        lease: LeaseId,
    ) -> Result<(), RegistryError> {
        let key = self.keys.machine(machine);
        let txn = Txn::new()
            .when([Compare::lease(key.as_str(), CompareOp::Equal, lease.get())])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let response = self.txn("unregister machine", txn).await?;
        if !response.succeeded() {
            debug!(%machine, %lease, "The machine record is not ours; left alone.");
        }
        Ok(())
    }

    /// Dynamic metadata by machine; undecodable keys are skipped with a
    /// warning.
    pub(super) fn decode_dynamic_metadata(
        &self,
        metadata: &[KeyValue],
    ) -> BTreeMap<MachineId, BTreeMap<String, String>> {
        let mut dynamic: BTreeMap<MachineId, BTreeMap<String, String>> = BTreeMap::new();
        for kv in metadata {
            if let Some((machine, key, value)) = self.decode_metadata_kv(kv) {
                dynamic.entry(machine).or_default().insert(key, value);
            }
        }
        dynamic
    }

    /// Machine records merged with the dynamic metadata (decoded by
    /// [`Self::decode_dynamic_metadata`]); undecodable records are skipped
    /// with a warning.
    pub(super) fn decode_machines(
        &self,
        machines: &[KeyValue],
        dynamic: &BTreeMap<MachineId, BTreeMap<String, String>>,
    ) -> Vec<MachineState> {
        let mut states: Vec<MachineState> = machines
            .iter()
            .filter_map(|kv| {
                let mut state = self.decode_machine(kv.key_str().ok()?, kv.value())?;
                if let Some(dynamic) = dynamic.get(&state.id) {
                    state.metadata = merge_metadata(&state.metadata, dynamic);
                }
                Some(state)
            })
            .collect();
        states.sort_by(|a, b| a.id.cmp(&b.id));
        states
    }

    pub(super) fn decode_metadata_kv(&self, kv: &KeyValue) -> Option<(MachineId, String, String)> {
        self.decode_metadata(kv.key_str().ok()?, kv.value())
    }

    /// Live machines sorted by id, dynamic metadata merged over the configured.
    pub async fn machines(&self) -> Result<Vec<MachineState>, RegistryError> {
        let txn = Txn::new().and_then([
            TxnOp::get(self.keys.machines(), Some(prefix_options())),
            TxnOp::get(self.keys.all_metadata(), Some(prefix_options())),
        ]);
        let response = self.txn("list machines", txn).await?;
        let ranges = txn_ranges(&response);
        let (Some(machines), Some(metadata)) = (ranges.first(), ranges.get(1)) else {
            return Err(RegistryError::Etcd {
                op: "list machines",
                message: "short txn response".to_owned(),
            });
        };
        Ok(self.decode_machines(
            machines.kvs(),
            &self.decode_dynamic_metadata(metadata.kvs()),
        ))
    }

    /// One live machine, metadata merged.
    pub async fn machine(
        &self,
        machine: &MachineId,
    ) -> Result<Option<MachineState>, RegistryError> {
        let txn = Txn::new().and_then([
            TxnOp::get(self.keys.machine(machine), None),
            TxnOp::get(self.keys.machine_metadata(machine), Some(prefix_options())),
        ]);
        let response = self.txn("get machine", txn).await?;
        let ranges = txn_ranges(&response);
        let (Some(record), Some(metadata)) = (ranges.first(), ranges.get(1)) else {
            return Err(RegistryError::Etcd {
                op: "get machine",
                message: "short txn response".to_owned(),
            });
        };
        Ok(self
            .decode_machines(record.kvs(), &self.decode_dynamic_metadata(metadata.kvs()))
            .into_iter()
            .next())
    }

    /// Applies metadata edits in order, in one transaction (several for more
    /// than 100 distinct keys; a failure part-way leaves the earlier ones
    /// applied, as the original did).
    pub async fn apply_metadata(&self, ops: &[MetadataOp]) -> Result<(), RegistryError> {
        // etcd refuses two writes of one key in a txn: the last edit wins,
        // which is what applying them in order means.
        let mut writes: BTreeMap<String, &str> = BTreeMap::new();
        for op in ops {
            match op {
                MetadataOp::Set {
                    machine,
                    key,
                    value,
                } => writes.insert(self.keys.metadata(machine, key), value),
                // A tombstone, not a delete: it must hide a configured key too.
                MetadataOp::Remove { machine, key } => {
                    writes.insert(self.keys.metadata(machine, key), "")
                }
            };
        }
        let writes: Vec<(String, &str)> = writes.into_iter().collect();
        for batch in writes.chunks(METADATA_BATCH) {
            let puts: Vec<TxnOp> = batch
                .iter()
                .map(|(key, value)| TxnOp::put(key.as_str(), *value, None))
                .collect();
            self.txn("apply metadata", Txn::new().and_then(puts))
                .await?;
        }
        Ok(())
    }

    /// A machine record (its configured metadata only: merge the dynamic one
    /// with [`merge_metadata`]). `None` for other keys; undecodable values are
    /// logged at WARN and give `None`.
    pub(crate) fn decode_machine(&self, key: &str, value: &[u8]) -> Option<MachineState> {
        let RegistryKey::Machine(machine) = self.keys.parse(key)? else {
            return None;
        };
        wire::decode_machine(&machine, value)
            .map_err(|message| warn_undecodable(key, &message))
            .ok()
    }

    /// A dynamic metadata entry `(machine, key, value)`; an empty value is a
    /// tombstone that hides the key.
    pub(crate) fn decode_metadata(
        &self,
        key: &str,
        value: &[u8],
    ) -> Option<(MachineId, String, String)> {
        let RegistryKey::Metadata { machine, key: name } = self.keys.parse(key)? else {
            return None;
        };
        match std::str::from_utf8(value) {
            Ok(value) => Some((machine, name, value.to_owned())),
            Err(error) => {
                warn_undecodable(key, &error.to_string());
                None
            }
        }
    }
}
