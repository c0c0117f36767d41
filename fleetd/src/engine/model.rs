//! The engine's in-memory model of the cluster, fed by one snapshot at a
//! revision and then by watch events (no full reads on the hot path).
//!
//! It holds what the scheduler needs: live machines (metadata merged), units
//! with their requirements computed once per (unit, hash), and the schedule.
//! The schedule is not watched: the engine is its only writer, so the model
//! applies its own committed changes (and re-lists after a failed commit).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use fleet_registry::store::{ScheduleChange, Snapshot, merge_metadata};
use fleet_registry::{MachineId, MachineState, Placement, TargetState, Unit};
use fleet_systemd::unit::{UnitFile, UnitHash, UnitName};

use crate::engine::scheduler::UnitSpec;

/// One unit record and, when its content is known, its scheduling view.
#[derive(Clone, Debug)]
pub struct UnitRecord {
    pub hash: UnitHash,
    pub desired_state: TargetState,
    /// `None` while the content of `hash` has not been seen yet (the unit
    /// record and its content arrive on different watches).
    pub spec: Option<UnitSpec>,
}

/// See the module docs.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub machines: BTreeMap<MachineId, MachineState>,
    /// Every machine's dynamic metadata (from the snapshot, then from
    /// metadata events): what a presence record from a watch event is
    /// merged with, so that a registration costs no read.
    dynamic_metadata: BTreeMap<MachineId, BTreeMap<String, String>>,
    pub units: BTreeMap<UnitName, UnitRecord>,
    /// Parsed content by hash, shared by every unit with that hash.
    contents: HashMap<UnitHash, Arc<UnitFile>>,
    /// Units waiting for the content of a hash.
    waiting: HashMap<UnitHash, Vec<UnitName>>,
    pub placements: BTreeMap<(UnitName, MachineId), Placement>,
    /// Units whose record or content cannot be used (see
    /// [`Model::hold_unusable`]): their placements are neither kept up nor
    /// removed.
    unusable: BTreeSet<UnitName>,
}

impl Model {
    /// The model at a snapshot.
    pub fn from_snapshot(snapshot: Snapshot) -> Model {
        let mut model = Model::default();
        for machine in snapshot.machines {
            model.machines.insert(machine.id.clone(), machine);
        }
        model.dynamic_metadata = snapshot.dynamic_metadata;
        for unit in snapshot.units {
            model.put_unit(unit);
        }
        for name in snapshot.unusable_units {
            model.hold_unusable(name);
        }
        for placement in snapshot.placements {
            model.placements.insert(
                (placement.unit.clone(), placement.machine.clone()),
                placement,
            );
        }
        model
    }

    /// A machine's presence record from a watch event (configured metadata
    /// only), merged with its known dynamic metadata. `true` when the
    /// machine was not present before.
    pub fn put_machine_record(&mut self, mut record: MachineState) -> bool {
        if let Some(dynamic) = self.dynamic_metadata.get(&record.id) {
            record.metadata = merge_metadata(&record.metadata, dynamic);
        }
        self.machines.insert(record.id.clone(), record).is_none()
    }

    /// A dynamic metadata key set (`Some`) or deleted (`None`). The merged
    /// view of a present machine is not touched here: the caller reads that
    /// machine again (its configured metadata is not kept apart).
    pub fn put_dynamic_metadata(
        &mut self,
        machine: &MachineId,
        key: String,
        value: Option<String>,
    ) {
        match value {
            Some(value) => {
                self.dynamic_metadata
                    .entry(machine.clone())
                    .or_default()
                    .insert(key, value);
            }
            None => {
                if let Some(keys) = self.dynamic_metadata.get_mut(machine) {
                    keys.remove(&key);
                    if keys.is_empty() {
                        self.dynamic_metadata.remove(machine);
                    }
                }
            }
        }
    }

    /// A unit with its content (from a snapshot or a direct read).
    pub fn put_unit(&mut self, unit: Unit) {
        self.contents
            .entry(unit.hash)
            .or_insert_with(|| unit.file.clone());
        self.put_unit_record(unit.name, unit.hash, unit.desired_state);
    }

    /// A unit record event: recomputes the requirements only when the hash
    /// changed (the desired state alone changes nothing else).
    pub fn put_unit_record(&mut self, name: UnitName, hash: UnitHash, desired_state: TargetState) {
        self.unusable.remove(&name);
        if let Some(record) = self.units.get_mut(&name)
            && record.hash == hash
            && record.spec.is_some()
        {
            record.desired_state = desired_state;
            if let Some(spec) = &mut record.spec {
                spec.desired_state = desired_state;
            }
            return;
        }
        let spec = self
            .contents
            .get(&hash)
            .map(|file| UnitSpec::new(name.clone(), file, hash, desired_state));
        if spec.is_none() {
            self.waiting.entry(hash).or_default().push(name.clone());
        }
        self.units.insert(
            name,
            UnitRecord {
                hash,
                desired_state,
                spec,
            },
        );
    }

    pub fn remove_unit(&mut self, name: &UnitName) {
        self.units.remove(name);
        self.unusable.remove(name);
    }

    /// A unit whose record does not decode, or whose content is missing or
    /// does not parse, is not a destroyed unit: unless an older usable record
    /// is known (then that one stays in force), its placements are left as
    /// they are, so it keeps running where it runs, until a usable record
    /// replaces it or it is destroyed.
    pub fn hold_unusable(&mut self, name: UnitName) {
        if !self.units.contains_key(&name) {
            self.unusable.insert(name);
        }
    }

    /// Content seen: completes the units that waited for it.
    pub fn put_content(&mut self, hash: UnitHash, file: UnitFile) {
        let file = Arc::new(file);
        self.contents.insert(hash, file.clone());
        for name in self.waiting.remove(&hash).unwrap_or_default() {
            if let Some(record) = self.units.get_mut(&name)
                && record.hash == hash
                && record.spec.is_none()
            {
                record.spec = Some(UnitSpec::new(
                    name.clone(),
                    &file,
                    hash,
                    record.desired_state,
                ));
            }
        }
    }

    /// Whether a unit is idle: known, desired `inactive` and placed
    /// nowhere. The scheduler has nothing to decide for an idle unit, so a
    /// change that leaves a unit idle needs no pass at once (the engine's
    /// `apply_unit_change`).
    pub fn is_idle(&self, unit: &UnitName) -> bool {
        self.units
            .get(unit)
            .is_some_and(|record| record.desired_state == TargetState::Inactive)
            && !self.is_placed(unit)
            && !self.unusable.contains(unit)
    }

    /// Whether the schedule places `unit` on any machine.
    fn is_placed(&self, unit: &UnitName) -> bool {
        // "\0" sorts before every other machine id (ids are non-empty).
        let first: MachineId = "\0".parse().expect("a non-empty id without / or spaces");
        self.placements
            .range((unit.clone(), first)..)
            .next()
            .is_some_and(|((placed, _), _)| placed == unit)
    }

    /// Whether the content `hash` completes a unit that is not idle (a
    /// pass may then place it); asked before [`Model::put_content`].
    pub fn content_may_decide(&self, hash: &UnitHash) -> bool {
        self.waiting
            .get(hash)
            .is_some_and(|units| units.iter().any(|unit| !self.is_idle(unit)))
    }

    pub fn remove_content(&mut self, hash: &UnitHash) {
        self.contents.remove(hash);
    }

    /// Units whose content has not arrived.
    pub fn units_without_content(&self) -> Vec<UnitName> {
        self.units
            .iter()
            .filter(|(_, record)| record.spec.is_none())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// What the scheduler takes. Units without content are left out, and so
    /// are their placements, so that a pass neither places nor removes them.
    pub fn scheduler_input(&self) -> (Vec<MachineState>, Vec<UnitSpec>, Vec<Placement>) {
        // A machine without an agent would never run what is placed on it.
        let machines = self
            .machines
            .values()
            .filter(|machine| !machine.disable_agent)
            .cloned()
            .collect();
        let units = self
            .units
            .values()
            .filter_map(|record| record.spec.clone())
            .collect();
        let placements = self
            .placements
            .values()
            .filter(|placement| {
                !self.unusable.contains(&placement.unit)
                    && self
                        .units
                        .get(&placement.unit)
                        .is_none_or(|record| record.spec.is_some())
            })
            .cloned()
            .collect();
        (machines, units, placements)
    }

    /// Applies committed schedule changes.
    pub fn apply(&mut self, changes: &[ScheduleChange]) {
        for change in changes {
            match change {
                ScheduleChange::Place(placement) => {
                    self.placements.insert(
                        (placement.unit.clone(), placement.machine.clone()),
                        placement.clone(),
                    );
                }
                ScheduleChange::Unplace { unit, machine } => {
                    self.placements.remove(&(unit.clone(), machine.clone()));
                }
            }
        }
    }

    /// Whether any placement names `machine`.
    pub fn has_placements_on(&self, machine: &MachineId) -> bool {
        self.placements
            .values()
            .any(|placement| &placement.machine == machine)
    }

    /// Machines that placements name but that are not live.
    pub fn absent_placed_machines(&self) -> Vec<MachineId> {
        let mut absent: Vec<MachineId> = self
            .placements
            .values()
            .map(|placement| &placement.machine)
            .filter(|machine| !self.machines.contains_key(*machine))
            .cloned()
            .collect();
        absent.sort();
        absent.dedup();
        absent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(x_fleet: &str) -> UnitFile {
        UnitFile::parse(&format!("[Service]\nExecStart=/bin/true\n{x_fleet}"))
            .expect("test unit file")
    }

    fn name(unit: &str) -> UnitName {
        unit.parse().expect("unit name")
    }

    fn placement(unit: &str, hash: UnitHash) -> Placement {
        Placement {
            unit: name(unit),
            machine: "m1".parse().expect("id"),
            hash,
            target_state: TargetState::Launched,
        }
    }

    #[test]
    fn a_unit_waits_for_its_content_and_keeps_its_placements_meanwhile() {
        let content = file("[X-Fleet]\nConflicts=b.service\n");
        let hash = content.hash();
        let mut model = Model::default();
        model.put_unit_record(name("a.service"), hash, TargetState::Launched);
        model.apply(&[ScheduleChange::Place(placement("a.service", hash))]);
        assert_eq!(model.units_without_content(), vec![name("a.service")]);
        let (_, units, placements) = model.scheduler_input();
        assert!(
            units.is_empty() && placements.is_empty(),
            "neither placed nor unplaced while its content is unknown"
        );

        model.put_content(hash, content);
        assert!(model.units_without_content().is_empty());
        let (_, units, placements) = model.scheduler_input();
        assert_eq!(units.len(), 1);
        assert_eq!(
            units[0].requirements.conflicts,
            vec!["b.service".to_owned()]
        );
        assert_eq!(placements.len(), 1);
    }

    #[test]
    fn a_desired_state_change_keeps_the_requirements_and_a_new_hash_recomputes_them() {
        let first = file("[X-Fleet]\nGlobal=true\n");
        let second = file("");
        let mut model = Model::default();
        model.put_content(first.hash(), first.clone());
        model.put_content(second.hash(), second.clone());
        model.put_unit_record(name("a.service"), first.hash(), TargetState::Launched);
        let before = model.units[&name("a.service")].spec.clone().expect("spec");
        model.put_unit_record(name("a.service"), first.hash(), TargetState::Loaded);
        let after = model.units[&name("a.service")].spec.clone().expect("spec");
        assert!(
            Arc::ptr_eq(&before.requirements, &after.requirements),
            "requirements are not recomputed"
        );
        assert_eq!(after.desired_state, TargetState::Loaded);
        model.put_unit_record(name("a.service"), second.hash(), TargetState::Loaded);
        let spec = model.units[&name("a.service")].spec.clone().expect("spec");
        assert!(!spec.requirements.global);
        assert_eq!(spec.hash, second.hash());
    }

    #[test]
    fn placements_on_absent_machines_are_listed() {
        let mut model = Model::default();
        let hash = file("").hash();
        model.apply(&[ScheduleChange::Place(placement("a.service", hash))]);
        assert_eq!(
            model.absent_placed_machines(),
            vec!["m1".parse::<MachineId>().expect("id")]
        );
        assert!(model.has_placements_on(&"m1".parse().expect("id")));
        model.apply(&[ScheduleChange::Unplace {
            unit: name("a.service"),
            machine: "m1".parse().expect("id"),
        }]);
        assert!(model.absent_placed_machines().is_empty());
    }

    #[test]
    fn a_unit_whose_record_does_not_decode_keeps_its_placements() {
        let content = file("");
        let hash = content.hash();
        let snapshot = Snapshot {
            revision: fleet_registry::Revision::new(7),
            machines: Vec::new(),
            units: Vec::new(),
            placements: vec![placement("bad.service", hash)],
            unusable_units: vec![name("bad.service")],
            dynamic_metadata: BTreeMap::new(),
        };
        let mut model = Model::from_snapshot(snapshot);
        let (_, units, placements) = model.scheduler_input();
        assert!(units.is_empty());
        assert!(
            placements.is_empty(),
            "the scheduler does not see it, so it cannot unplace it"
        );
        assert_eq!(model.placements.len(), 1, "the placement stays");
        // A record that decodes ends the hold; a destroy does too.
        model.put_unit_record(name("bad.service"), hash, TargetState::Launched);
        model.put_content(hash, content);
        assert_eq!(model.scheduler_input().2.len(), 1);
        model.hold_unusable(name("other.service"));
        model.remove_unit(&name("other.service"));
        assert!(model.unusable.is_empty());
    }

    fn machine(id: &str, metadata: &[(&str, &str)]) -> MachineState {
        MachineState {
            id: id.parse().expect("id"),
            public_ip: "10.0.0.1".to_owned(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            version: "0.1.0".to_owned(),
            disable_engine: false,
            disable_agent: false,
            api_url: String::new(),
        }
    }

    #[test]
    fn a_record_from_a_watch_event_is_merged_with_known_dynamic_metadata() {
        let m1: MachineId = "m1".parse().expect("id");
        let snapshot = Snapshot {
            revision: fleet_registry::Revision::new(3),
            machines: Vec::new(),
            units: Vec::new(),
            placements: Vec::new(),
            unusable_units: Vec::new(),
            dynamic_metadata: BTreeMap::from([(
                m1.clone(),
                BTreeMap::from([
                    ("region".to_owned(), "eu".to_owned()),
                    ("disk".to_owned(), String::new()),
                ]),
            )]),
        };
        let mut model = Model::from_snapshot(snapshot);
        let record = machine("m1", &[("region", "us"), ("disk", "ssd"), ("os", "x")]);
        assert!(model.put_machine_record(record.clone()), "newly present");
        assert_eq!(
            model.machines[&m1].metadata,
            BTreeMap::from([
                ("os".to_owned(), "x".to_owned()),
                ("region".to_owned(), "eu".to_owned())
            ])
        );
        // Edits after the snapshot apply to the next record; a deleted key
        // lets the configured value through again.
        model.put_dynamic_metadata(&m1, "region".to_owned(), None);
        model.put_dynamic_metadata(&m1, "disk".to_owned(), None);
        model.put_dynamic_metadata(&m1, "rack".to_owned(), Some("r2".to_owned()));
        assert!(!model.put_machine_record(record), "already present");
        assert_eq!(
            model.machines[&m1].metadata,
            BTreeMap::from([
                ("disk".to_owned(), "ssd".to_owned()),
                ("os".to_owned(), "x".to_owned()),
                ("rack".to_owned(), "r2".to_owned()),
                ("region".to_owned(), "us".to_owned())
            ])
        );
    }

    #[test]
    fn only_an_inactive_unit_placed_nowhere_is_idle() {
        let content = file("");
        let hash = content.hash();
        let mut model = Model::default();
        // Created inactive (its content not seen yet): idle, and its content
        // completes nothing a pass could place.
        model.put_unit_record(name("a.service"), hash, TargetState::Inactive);
        assert!(model.is_idle(&name("a.service")));
        assert!(!model.content_may_decide(&hash));
        // Set launched: no longer idle, and now its content matters.
        model.put_unit_record(name("a.service"), hash, TargetState::Launched);
        assert!(!model.is_idle(&name("a.service")));
        assert!(model.content_may_decide(&hash));
        model.put_content(hash, content);
        // Placed, then set inactive: a pass must unplace it.
        model.apply(&[ScheduleChange::Place(placement("a.service", hash))]);
        model.put_unit_record(name("a.service"), hash, TargetState::Inactive);
        assert!(!model.is_idle(&name("a.service")));
        // A placement of a neighbour in name order does not count.
        model.apply(&[ScheduleChange::Unplace {
            unit: name("a.service"),
            machine: "m1".parse().expect("id"),
        }]);
        model.apply(&[ScheduleChange::Place(placement("a@1.service", hash))]);
        model.apply(&[ScheduleChange::Place(placement("a-b.service", hash))]);
        assert!(model.is_idle(&name("a.service")));
        // Unknown and unusable units are never idle.
        assert!(!model.is_idle(&name("b.service")));
        model.hold_unusable(name("c.service"));
        assert!(!model.is_idle(&name("c.service")));
    }
}
