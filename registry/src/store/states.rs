//! Unit states: what each agent reports of its units, under its machine's
//! lease (they vanish with the machine).

#[allow(clippy::wildcard_imports)] // the store's imports, shared by its parts
use super::*;

/// The most puts [`Registry::put_unit_states`] puts in one txn (below
/// etcd's default `--max-txn-ops` of 128).
pub const STATE_PUTS_BATCH: usize = 100;

impl Registry {
    pub(super) fn decode_unit_states(&self, kvs: &[KeyValue]) -> Vec<UnitState> {
        let mut states: Vec<UnitState> = kvs
            .iter()
            .filter_map(|kv| self.decode_unit_state(kv.key_str().ok()?, kv.value()))
            .collect();
        states.sort_by(|a, b| (&a.unit, &a.machine).cmp(&(&b.unit, &b.machine)));
        states
    }

    /// All unit states sorted by (unit, machine).
    pub async fn unit_states(&self) -> Result<Vec<UnitState>, RegistryError> {
        let response = self
            .get_prefix("list unit states", self.keys.states(), None)
            .await?;
        Ok(self.decode_unit_states(response.kvs()))
    }

    /// The states live machines reported for one unit, sorted by machine.
    /// States are keyed by machine (each machine may write only its own), so
    /// this reads the live machines' ids (keys only) and then one key per
    /// machine, in txns of `GETS_PER_TXN` gets: the cost grows with the
    /// machines, never with the other units' states. A state outlives its
    /// machine's presence only between a graceful unregister and the lease
    /// revoke that follows it.
    pub async fn states_of_unit(&self, name: &UnitName) -> Result<Vec<UnitState>, RegistryError> {
        const OP: &str = "get unit states";
        let machines = self
            .get(
                OP,
                self.keys.machines(),
                Some(prefix_options().with_keys_only()),
            )
            .await?;
        let ids: Vec<MachineId> = machines
            .kvs()
            .iter()
            .filter_map(|kv| match self.keys.parse(kv.key_str().ok()?)? {
                RegistryKey::Machine(machine) => Some(machine),
                _ => None,
            })
            .collect();
        let mut states = Vec::new();
        for batch in ids.chunks(GETS_PER_TXN) {
            let gets: Vec<TxnOp> = batch
                .iter()
                .map(|machine| TxnOp::get(self.keys.state(name, machine), None))
                .collect();
            let response = self.txn(OP, Txn::new().and_then(gets)).await?;
            for range in txn_ranges(&response) {
                states.extend(self.decode_unit_states(range.kvs()));
            }
        }
        states.sort_by(|a, b| a.machine.cmp(&b.machine));
        Ok(states)
    }

    /// The state `machine` reported for `name`, if any (one get).
    pub async fn unit_state_on(
        &self,
        name: &UnitName,
        machine: &MachineId,
    ) -> Result<Option<UnitState>, RegistryError> {
        let key = self.keys.state(name, machine);
        let response = self.get("get unit state", key, None).await?;
        Ok(self.decode_unit_states(response.kvs()).into_iter().next())
    }

    /// Publishes many unit states under the machine's lease, in txns of
    /// [`STATE_PUTS_BATCH`] puts: one etcd proposal for a burst of states
    /// where one put each was one proposal (and one round trip) per unit.
    pub async fn put_unit_states(
        &self,
        states: &[UnitState],
        lease: LeaseId,
    ) -> Result<(), RegistryError> {
        for batch in states.chunks(STATE_PUTS_BATCH) {
            let puts: Vec<TxnOp> = batch
                .iter()
                .map(|state| {
                    let key = self.keys.state(&state.unit, &state.machine);
                    let options = PutOptions::new().with_lease(lease.get());
                    TxnOp::put(key, wire::encode_unit_state(state), Some(options))
                })
                .collect();
            // Retry-safe: puts of fixed values.
            self.txn("put unit states", Txn::new().and_then(puts))
                .await?;
        }
        Ok(())
    }

    /// Publishes a unit state under the machine's lease.
    pub async fn put_unit_state(
        &self,
        state: &UnitState,
        lease: LeaseId,
    ) -> Result<(), RegistryError> {
        const OP: &str = "put unit state";
        let key = self.keys.state(&state.unit, &state.machine);
        let value = wire::encode_unit_state(state);
        // Retry-safe: a put of a fixed value.
        self.run(OP, |mut clients| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let options = PutOptions::new().with_lease(lease.get());
                clients.kv.put(key, value, Some(options)).await
            }
        })
        .await?;
        Ok(())
    }

    /// Deletes the state `machine` reported for `unit` (only that machine's).
    pub async fn delete_unit_state(
        &self,
        unit: &UnitName,
        machine: &MachineId,
    ) -> Result<(), RegistryError> {
        const OP: &str = "delete unit state";
        let key = self.keys.state(unit, machine);
        // Retry-safe: deleting a key twice leaves it deleted.
        self.run(OP, |mut clients| {
            let key = key.clone();
            async move { clients.kv.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    /// A unit state (a key under `P/machine/states/`).
    pub(crate) fn decode_unit_state(&self, key: &str, value: &[u8]) -> Option<UnitState> {
        let RegistryKey::State { unit, machine } = self.keys.parse(key)? else {
            return None;
        };
        wire::decode_unit_state(unit, machine, value)
            .map_err(|message| warn_undecodable(key, &message))
            .ok()
    }
}
