//! The scheduler: a pure function from a cluster snapshot to decisions.
//!
//! [`schedule`] takes the live machines, the units (with their `[X-Fleet]`
//! [`Requirements`] computed once per unit), the current placements and the
//! machine-loss verdict ([`LossPolicy`]), and returns the placements to write
//! or delete ([`Decision`]) plus the units whose constraints cannot be met
//! ([`Unschedulable`]). It does no I/O, reads no clock and draws no random
//! number, so the same snapshot always gives the same answer; the engine
//! (fleetd's `engine`) owns the side effects. As its own crate with no etcd,
//! tokio or I/O dependency, that purity is enforced by the compiler.
//!
//! The rules (the original's, with its bugs fixed: Documentation/compatibility.md,
//! "Quirks of the original"):
//! - Existing placements are stable: nothing is rebalanced when machines join.
//!   A placement is removed only when its unit is destroyed or inactive, its
//!   machine no longer satisfies the unit, a conflict or a moved `MachineOf`
//!   peer forbids it, or its machine is lost (and the policy says so).
//! - New or displaced units go to the least-loaded machine that can run them
//!   (load = units placed there, global ones included), ties broken by machine
//!   id; units are taken in name order, `MachineOf` peers first.
//! - Global units are placed by the engine on every matching machine; of two
//!   conflicting globals the alphabetically first wins on each machine.
//! - `Replaces=X` (one direction, unlike the original): the replacing unit prefers X's machine and
//!   displaces X to another machine that can run X (checked); if X cannot move,
//!   nothing is displaced. X never goes to a machine where a unit replacing it
//!   sits, so nothing ping-pongs. Circular pairs are ignored.
//!
//! It must not: read anything but its arguments, or move a unit that has a
//! valid placement for load reasons.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use fleet_model::{MachineId, MachineState, Placement, TargetState};
use fleet_systemd::unit::{Requirements, UnitFile, UnitHash, UnitName};

mod cordon;
#[cfg(test)]
mod proptests;
pub use cordon::{Cordons, Explanation, MachineVerdict, explain, schedule_with};

/// One unit as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitSpec {
    pub name: UnitName,
    /// Computed once per unit (per hash) by the engine and shared between
    /// passes, because parsing `[X-Fleet]` for 20,000 units each pass is waste.
    pub requirements: Arc<Requirements>,
    pub desired_state: TargetState,
    pub hash: UnitHash,
}

impl UnitSpec {
    /// A unit named `name` with `file` (its requirements resolved for `name`).
    pub fn new(
        name: UnitName,
        file: &UnitFile,
        hash: UnitHash,
        desired_state: TargetState,
    ) -> UnitSpec {
        let requirements = Arc::new(Requirements::of(file, &name));
        UnitSpec {
            name,
            requirements,
            desired_state,
            hash,
        }
    }
}

/// The machine-loss verdict, decided by the engine from its clock so that the
/// scheduler needs none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LossPolicy {
    /// Absent machines that have been gone longer than the grace period.
    pub lost_beyond_grace: BTreeSet<MachineId>,
    /// Absent machines gone so long that they are taken as retired: even
    /// their global units' placements are released (kept until then, so a
    /// returning machine adopts its global units instead of restarting them).
    pub retired: BTreeSet<MachineId>,
    /// The breaker: too many machines vanished at once; move nothing.
    pub breaker_tripped: bool,
}

impl LossPolicy {
    /// Whether the units of the absent machine `machine` may be re-placed now.
    pub fn releases(&self, machine: &MachineId) -> bool {
        !self.breaker_tripped && self.lost_beyond_grace.contains(machine)
    }

    /// Whether the global units' placements on the absent machine `machine`
    /// may be released now.
    pub fn releases_globals(&self, machine: &MachineId) -> bool {
        self.releases(machine) && self.retired.contains(machine)
    }
}

/// One change to the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write (create or rewrite) this placement.
    Place {
        placement: Placement,
        reason: String,
    },
    /// Delete the placement of `unit` on `machine`.
    Unplace {
        unit: UnitName,
        machine: MachineId,
        reason: String,
    },
}

impl Decision {
    pub fn unit(&self) -> &UnitName {
        match self {
            Decision::Place { placement, .. } => &placement.unit,
            Decision::Unplace { unit, .. } => unit,
        }
    }
    pub fn machine(&self) -> &MachineId {
        match self {
            Decision::Place { placement, .. } => &placement.machine,
            Decision::Unplace { machine, .. } => machine,
        }
    }
    pub fn reason(&self) -> &str {
        match self {
            Decision::Place { reason, .. } | Decision::Unplace { reason, .. } => reason,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Place { placement, reason } => write!(
                f,
                "place {} on {} ({}): {reason}",
                placement.unit, placement.machine, placement.target_state
            ),
            Decision::Unplace {
                unit,
                machine,
                reason,
            } => write!(f, "unplace {unit} from {machine}: {reason}"),
        }
    }
}

/// A unit that wants to run but fits nowhere, with the rule that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unschedulable {
    pub unit: UnitName,
    pub reason: String,
}

/// What one pass decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Unplacements first, then placements, each in (unit, machine) order.
    pub decisions: Vec<Decision>,
    /// In unit name order.
    pub unschedulable: Vec<Unschedulable>,
    /// Units this pass moves off draining machines (their new placement).
    pub drain_moves: Vec<Placement>,
    /// Units left on a draining machine because nothing else can take them.
    pub drain_blocked: Vec<Unschedulable>,
    /// Units that can leave a draining machine but wait for the drain budget.
    pub drain_waiting: usize,
}

/// Decides the schedule for one snapshot (see the module docs for the rules).
///
/// `machines` are the live machines; `units` every unit (any order, unique
/// names); `placements` the current schedule, possibly naming destroyed units
/// or absent machines.
pub fn schedule(
    machines: &[MachineState],
    units: &[UnitSpec],
    placements: &[Placement],
    loss: &LossPolicy,
) -> Outcome {
    schedule_with(machines, units, placements, loss, &Cordons::default())
}

/// A unit's position in a pass (units sorted by name). A newtype, not a
/// `usize`, so a unit index can never index the machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct UIdx(usize);

/// A machine's position in a pass (present machines in id order, then
/// absent ones that placements still name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct MIdx(usize);

impl<T> std::ops::Index<UIdx> for Vec<T> {
    type Output = T;
    fn index(&self, idx: UIdx) -> &T {
        &self[idx.0]
    }
}

impl<T> std::ops::IndexMut<UIdx> for Vec<T> {
    fn index_mut(&mut self, idx: UIdx) -> &mut T {
        &mut self[idx.0]
    }
}

impl<T> std::ops::Index<MIdx> for Vec<T> {
    type Output = T;
    fn index(&self, idx: MIdx) -> &T {
        &self[idx.0]
    }
}

impl<T> std::ops::IndexMut<MIdx> for Vec<T> {
    fn index_mut(&mut self, idx: MIdx) -> &mut T {
        &mut self[idx.0]
    }
}

/// A machine during one pass. Absent machines (named only by placements) get
/// a slot too, so that held placements are represented like any other.
struct MachineSlot<'a> {
    id: &'a MachineId,
    /// Units placed here, in placement order.
    units: Vec<UIdx>,
    /// The subset with `Conflicts` patterns: a unit without patterns only needs
    /// checking against these (conflicts are symmetric).
    conflicters: Vec<UIdx>,
    /// The subset with `Replaces` patterns.
    replacers: Vec<UIdx>,
}

/// Why a machine cannot take a unit.
#[derive(Clone, Debug)]
enum Reject {
    Absent,
    MachineId,
    Metadata,
    PeerElsewhere,
    Conflict(UIdx),
    ReplacedBy(UIdx),
    /// The machine is cordoned: it takes no new placement.
    Cordoned,
}

struct Pass<'a> {
    units: Vec<&'a UnitSpec>,
    unit_by_name: HashMap<&'a str, UIdx>,
    /// For each unit, the units that name it in `MachineOf`.
    followers: Vec<Vec<UIdx>>,
    /// For each unit, its `MachineOf` peers resolved (`None`: unknown unit).
    peers: Vec<Vec<Option<UIdx>>>,
    /// For each unit with `MachineMetadata`, the index of its table in `metadata_tables`.
    metadata_class: Vec<Option<usize>>,
    /// One table per distinct `MachineMetadata` requirement: does machine i match.
    metadata_tables: Vec<Vec<bool>>,
    machines: Vec<MachineSlot<'a>>,
    n_present: usize,
    machine_by_id: HashMap<&'a str, MIdx>,
    machines_by_short_id: HashMap<&'a str, Vec<MIdx>>,
    /// Present machines ordered by (load, index): index order is id order.
    by_load: BTreeSet<(usize, MIdx)>,
    /// Where each unit is placed now.
    on: Vec<Vec<MIdx>>,
    /// Units that want a placement and have none, taken in name order.
    pending: BTreeSet<UIdx>,
    /// Non-global units that must not be moved again in this pass (anti ping-pong).
    displaced: HashSet<UIdx>,
    placements: &'a [Placement],
    loss: &'a LossPolicy,
    /// Placements at the start, by (unit, machine).
    initial: HashMap<(UIdx, MIdx), &'a Placement>,
    /// Why a placement went away or appeared (the last event wins).
    unplace_reasons: HashMap<(UIdx, MIdx), String>,
    place_reasons: HashMap<(UIdx, MIdx), String>,
    /// Placements of unknown units: deleted with this reason.
    orphans: Vec<&'a Placement>,
    unschedulable: BTreeMap<UIdx, String>,
    /// Cordons and the drain of this pass (`cordon.rs`).
    drain: DrainPass,
}

/// What a pass knows and decides about cordoned and draining machines.
#[derive(Default)]
struct DrainPass {
    /// Per present machine: cordoned (no new placements).
    cordoned: Vec<bool>,
    /// Draining present machines, in id order.
    draining: Vec<MIdx>,
    /// How many more units the drain may move in this pass.
    budget: usize,
    /// Units moved off a draining machine, with their destination.
    moves: Vec<(UIdx, MIdx)>,
    /// Units that must stay on a draining machine, and why.
    blocked: BTreeMap<UIdx, String>,
    /// Units that could leave a draining machine but wait for the budget.
    waiting: usize,
}

/// The units of a pass in name order, with their `MachineOf` graph resolved.
struct UnitIndex<'a> {
    units: Vec<&'a UnitSpec>,
    unit_by_name: HashMap<&'a str, UIdx>,
    followers: Vec<Vec<UIdx>>,
    peers: Vec<Vec<Option<UIdx>>>,
}

impl<'a> UnitIndex<'a> {
    fn new(units: &'a [UnitSpec]) -> UnitIndex<'a> {
        let mut units: Vec<&UnitSpec> = units.iter().collect();
        units.sort_by(|a, b| a.name.cmp(&b.name));
        let unit_by_name: HashMap<&str, UIdx> = units
            .iter()
            .enumerate()
            .map(|(idx, unit)| (unit.name.as_str(), UIdx(idx)))
            .collect();
        let mut followers = vec![Vec::new(); units.len()];
        let mut peers = Vec::with_capacity(units.len());
        for (idx, unit) in units.iter().enumerate() {
            let idx = UIdx(idx);
            // A unit is always on its own machine: `MachineOf` itself is no constraint.
            let resolved: Vec<Option<UIdx>> = unit
                .requirements
                .machine_of
                .iter()
                .map(|peer| unit_by_name.get(peer.as_str()).copied())
                .filter(|peer| *peer != Some(idx))
                .collect();
            for peer in resolved.iter().flatten() {
                followers[*peer].push(idx);
            }
            peers.push(resolved);
        }
        UnitIndex {
            units,
            unit_by_name,
            followers,
            peers,
        }
    }
}

/// The machines of a pass: present ones in id order, then absent ones that
/// placements still name (so held placements are represented like others).
struct MachineIndex<'a> {
    present: Vec<&'a MachineState>,
    slots: Vec<MachineSlot<'a>>,
    machine_by_id: HashMap<&'a str, MIdx>,
    machines_by_short_id: HashMap<&'a str, Vec<MIdx>>,
}

impl<'a> MachineIndex<'a> {
    fn new(machines: &'a [MachineState], placements: &'a [Placement]) -> MachineIndex<'a> {
        let mut present: Vec<&MachineState> = machines.iter().collect();
        present.sort_by(|a, b| a.id.cmp(&b.id));
        present.dedup_by(|a, b| a.id == b.id);
        let mut slots: Vec<MachineSlot> = present
            .iter()
            .map(|state| MachineSlot::new(&state.id))
            .collect();
        let mut machine_by_id: HashMap<&str, MIdx> = HashMap::new();
        let mut machines_by_short_id: HashMap<&str, Vec<MIdx>> = HashMap::new();
        for (idx, slot) in slots.iter().enumerate() {
            let idx = MIdx(idx);
            machine_by_id.insert(slot.id.as_str(), idx);
            machines_by_short_id
                .entry(slot.id.short())
                .or_default()
                .push(idx);
        }
        let absent: BTreeSet<&MachineId> = placements
            .iter()
            .map(|p| &p.machine)
            .filter(|id| !machine_by_id.contains_key(id.as_str()))
            .collect();
        for id in absent {
            machine_by_id.insert(id.as_str(), MIdx(slots.len()));
            slots.push(MachineSlot::new(id));
        }
        MachineIndex {
            present,
            slots,
            machine_by_id,
            machines_by_short_id,
        }
    }
}

/// One metadata table per distinct `MachineMetadata` requirement (does
/// present machine i match), and each unit's table. Thousands of units share
/// a handful of requirements, and this keeps the per-candidate metadata check
/// a table lookup.
fn metadata_tables(
    units: &[&UnitSpec],
    present: &[&MachineState],
) -> (Vec<Option<usize>>, Vec<Vec<bool>>) {
    let mut metadata_class = vec![None; units.len()];
    let mut tables = Vec::new();
    let mut table_of: HashMap<&BTreeMap<String, BTreeSet<String>>, usize> = HashMap::new();
    for (idx, unit) in units.iter().enumerate() {
        let requirement = &unit.requirements.machine_metadata;
        if requirement.is_empty() {
            continue;
        }
        let table = *table_of.entry(requirement).or_insert_with(|| {
            let table: Vec<bool> = present
                .iter()
                .map(|state| unit.requirements.metadata_matches(&state.metadata))
                .collect();
            tables.push(table);
            tables.len() - 1
        });
        metadata_class[idx] = Some(table);
    }
    (metadata_class, tables)
}

impl<'a> MachineSlot<'a> {
    fn new(id: &'a MachineId) -> MachineSlot<'a> {
        MachineSlot {
            id,
            units: Vec::new(),
            conflicters: Vec::new(),
            replacers: Vec::new(),
        }
    }
}

impl<'a> Pass<'a> {
    fn new(
        machines: &'a [MachineState],
        units: &'a [UnitSpec],
        placements: &'a [Placement],
        loss: &'a LossPolicy,
    ) -> Pass<'a> {
        let UnitIndex {
            units,
            unit_by_name,
            followers,
            peers,
        } = UnitIndex::new(units);
        let MachineIndex {
            present,
            slots,
            machine_by_id,
            machines_by_short_id,
        } = MachineIndex::new(machines, placements);
        let (metadata_class, metadata_tables) = metadata_tables(&units, &present);
        let n_present = present.len();
        let n_units = units.len();
        Pass {
            units,
            unit_by_name,
            followers,
            peers,
            metadata_class,
            metadata_tables,
            machines: slots,
            n_present,
            machine_by_id,
            machines_by_short_id,
            by_load: (0..n_present).map(|idx| (0, MIdx(idx))).collect(),
            on: vec![Vec::new(); n_units],
            pending: BTreeSet::new(),
            displaced: HashSet::new(),
            placements,
            loss,
            initial: HashMap::new(),
            unplace_reasons: HashMap::new(),
            place_reasons: HashMap::new(),
            orphans: Vec::new(),
            unschedulable: BTreeMap::new(),
            drain: DrainPass {
                cordoned: vec![false; n_present],
                ..DrainPass::default()
            },
        }
    }

    /// Every unit of the pass, in name order.
    fn unit_indexes(&self) -> impl Iterator<Item = UIdx> + use<'a> {
        (0..self.units.len()).map(UIdx)
    }

    /// Every present machine, in id order.
    fn present_machines(&self) -> impl Iterator<Item = MIdx> + use<'a> {
        (0..self.n_present).map(MIdx)
    }

    fn name(&self, unit: UIdx) -> &'a str {
        self.units[unit].name.as_str()
    }

    fn is_present(&self, machine: MIdx) -> bool {
        machine.0 < self.n_present
    }

    fn is_global(&self, unit: UIdx) -> bool {
        self.units[unit].requirements.global
    }

    fn wants_placement(&self, unit: UIdx) -> bool {
        self.units[unit].desired_state != TargetState::Inactive
    }

    // --- bookkeeping ---

    fn attach(&mut self, unit: UIdx, machine: MIdx) {
        let requirements = &self.units[unit].requirements;
        let slot = &mut self.machines[machine];
        if machine.0 < self.n_present {
            self.by_load.remove(&(slot.units.len(), machine));
            self.by_load.insert((slot.units.len() + 1, machine));
        }
        slot.units.push(unit);
        if !requirements.conflicts.is_empty() {
            slot.conflicters.push(unit);
        }
        if !requirements.replaces.is_empty() {
            slot.replacers.push(unit);
        }
        self.on[unit].push(machine);
    }

    fn detach(&mut self, unit: UIdx, machine: MIdx) {
        let slot = &mut self.machines[machine];
        if machine.0 < self.n_present {
            self.by_load.remove(&(slot.units.len(), machine));
            self.by_load.insert((slot.units.len() - 1, machine));
        }
        slot.units.retain(|&other| other != unit);
        slot.conflicters.retain(|&other| other != unit);
        slot.replacers.retain(|&other| other != unit);
        self.on[unit].retain(|&other| other != machine);
    }

    /// Places `unit` on `machine` (a new placement, or a re-placement).
    fn place(&mut self, unit: UIdx, machine: MIdx, reason: String) {
        self.attach(unit, machine);
        self.pending.remove(&unit);
        self.unschedulable.remove(&unit);
        self.place_reasons.insert((unit, machine), reason);
    }

    /// Removes the placement of `unit` on `machine`; its `MachineOf`
    /// followers there lose their reason to be there and go with it. A
    /// non-global unit left without a placement becomes pending.
    fn unplace(&mut self, unit: UIdx, machine: MIdx, reason: String) {
        if !self.on[unit].contains(&machine) {
            return;
        }
        self.detach(unit, machine);
        self.unplace_reasons.insert((unit, machine), reason);
        if !self.is_global(unit) && self.on[unit].is_empty() && self.wants_placement(unit) {
            self.pending.insert(unit);
        }
        let name = self.name(unit);
        for follower in self.followers[unit].clone() {
            if self.on[follower].contains(&machine) {
                self.unplace(
                    follower,
                    machine,
                    format!("MachineOf peer {name} left the machine"),
                );
            }
        }
    }

    // --- checks ---

    /// The checks that depend only on the unit and the machine.
    fn check_static(&self, unit: UIdx, machine: MIdx) -> Result<(), Reject> {
        if !self.is_present(machine) {
            return Err(Reject::Absent);
        }
        let requirements = &self.units[unit].requirements;
        if requirements.machine_id.is_some()
            && !requirements.machine_id_matches(self.machines[machine].id.as_str())
        {
            return Err(Reject::MachineId);
        }
        if let Some(table) = self.metadata_class[unit]
            && !self.metadata_tables[table][machine]
        {
            return Err(Reject::Metadata);
        }
        Ok(())
    }

    fn conflict(&self, unit: UIdx, other: UIdx) -> bool {
        if unit == other {
            return false;
        }
        let (a, b) = (&self.units[unit], &self.units[other]);
        if a.requirements.conflicts.is_empty() && b.requirements.conflicts.is_empty() {
            return false;
        }
        a.requirements
            .conflicts_with(a.name.as_str(), b.name.as_str(), &b.requirements)
    }

    /// Whether `replacer` displaces `unit` (one direction only: circular
    /// pairs are ignored).
    fn displaces(&self, replacer: UIdx, unit: UIdx) -> bool {
        replacer != unit
            && self.units[replacer].requirements.replaces(self.name(unit))
            && !self.units[unit].requirements.replaces(self.name(replacer))
    }

    /// The first unit on `machine` that conflicts with `unit`.
    fn first_conflict(&self, unit: UIdx, machine: MIdx) -> Option<UIdx> {
        let slot = &self.machines[machine];
        let candidates = if self.units[unit].requirements.conflicts.is_empty() {
            &slot.conflicters
        } else {
            &slot.units
        };
        candidates
            .iter()
            .copied()
            .find(|&other| self.conflict(unit, other))
    }

    /// Every check for a non-global unit on a present machine.
    fn check(&self, unit: UIdx, machine: MIdx) -> Result<(), Reject> {
        self.check_static(unit, machine)?;
        if self.drain.cordoned[machine] {
            return Err(Reject::Cordoned);
        }
        for peer in &self.peers[unit] {
            match peer {
                Some(peer) if self.on[*peer].contains(&machine) => {}
                _ => return Err(Reject::PeerElsewhere),
            }
        }
        if let Some(other) = self.first_conflict(unit, machine) {
            return Err(Reject::Conflict(other));
        }
        if let Some(&replacer) = self.machines[machine]
            .replacers
            .iter()
            .find(|&&replacer| self.displaces(replacer, unit))
        {
            return Err(Reject::ReplacedBy(replacer));
        }
        Ok(())
    }

    /// The least-loaded present machine other than `except` that can take `unit`.
    fn least_loaded_fit(&self, unit: UIdx, except: Option<MIdx>) -> Option<MIdx> {
        self.by_load
            .iter()
            .map(|&(_, machine)| machine)
            .filter(|&machine| Some(machine) != except)
            .find(|&machine| self.check(unit, machine).is_ok())
    }

    // --- phase 1 and 2: existing placements ---

    /// Loads the current placements, drops the ones that are no longer valid
    /// and resolves conflicts and `Replaces` among the rest.
    fn validate_existing(&mut self) {
        for placement in self.placements {
            let Some(&unit) = self.unit_by_name.get(placement.unit.as_str()) else {
                self.orphans.push(placement);
                continue;
            };
            // Invariant: every placement's machine got a slot in `new`.
            let machine = self.machine_by_id[placement.machine.as_str()];
            if let std::collections::hash_map::Entry::Vacant(entry) =
                self.initial.entry((unit, machine))
            {
                entry.insert(placement);
                self.attach(unit, machine);
            }
        }

        // Pass over units in name order so that, of two conflicting units on
        // one machine, the alphabetically first stays, as in the original.
        for unit in self.unit_indexes() {
            if !self.wants_placement(unit) {
                for machine in self.on[unit].clone() {
                    self.unplace(unit, machine, "desired state is inactive".to_owned());
                }
                continue;
            }
            // A non-global unit runs once: keep its first present placement.
            if !self.is_global(unit) && self.on[unit].len() > 1 {
                let mut machines = self.on[unit].clone();
                machines.sort_unstable();
                for &machine in &machines[1..] {
                    self.unplace(
                        unit,
                        machine,
                        "unit is placed on more than one machine".to_owned(),
                    );
                }
            }
            for machine in self.on[unit].clone() {
                if !self.is_present(machine) {
                    // A global unit stays placed on a lost machine until it
                    // is retired: no other machine can take it over (it runs
                    // on all of them), and a returning fleetd then adopts it
                    // instead of stopping it and starting it again.
                    let id = self.machines[machine].id;
                    let released = if self.is_global(unit) {
                        self.loss.releases_globals(id)
                    } else {
                        self.loss.releases(id)
                    };
                    if released {
                        self.unplace(
                            unit,
                            machine,
                            format!("machine {} is lost", self.machines[machine].id),
                        );
                    }
                    continue;
                }
                let verdict = self
                    .check_static(unit, machine)
                    .and_then(|()| self.check_peers_placed(unit, machine))
                    .and_then(|()| self.check_earlier_conflicts(unit, machine));
                if let Err(reject) = verdict {
                    let reason =
                        format!("machine no longer fits: {}", self.describe(unit, &reject));
                    self.unplace(unit, machine, reason);
                }
            }
        }

        // Replaces among existing placements: move the replaced unit if it
        // can go elsewhere; otherwise leave both.
        for unit in self.unit_indexes() {
            if self.is_global(unit) || self.on[unit].len() != 1 {
                continue;
            }
            let machine = self.on[unit][0];
            if !self.is_present(machine) {
                continue;
            }
            let replacer = self.machines[machine]
                .replacers
                .iter()
                .copied()
                .find(|&replacer| self.displaces(replacer, unit));
            if let Some(replacer) = replacer {
                self.try_displace(unit, machine, replacer);
            }
        }
    }

    fn check_peers_placed(&self, unit: UIdx, machine: MIdx) -> Result<(), Reject> {
        if self.peers[unit]
            .iter()
            .all(|peer| peer.is_some_and(|peer| self.on[peer].contains(&machine)))
        {
            Ok(())
        } else {
            Err(Reject::PeerElsewhere)
        }
    }

    /// Conflicts with units earlier in name order on the same machine.
    fn check_earlier_conflicts(&self, unit: UIdx, machine: MIdx) -> Result<(), Reject> {
        let slot = &self.machines[machine];
        let candidates = if self.units[unit].requirements.conflicts.is_empty() {
            &slot.conflicters
        } else {
            &slot.units
        };
        match candidates
            .iter()
            .copied()
            .find(|&other| other < unit && self.conflict(unit, other))
        {
            Some(other) => Err(Reject::Conflict(other)),
            None => Ok(()),
        }
    }

    /// Moves `unit` off `machine` (where `replacer` displaces it) to the
    /// least-loaded machine that can run it. Returns whether it moved.
    fn try_displace(&mut self, unit: UIdx, machine: MIdx, replacer: UIdx) -> bool {
        if self.displaced.contains(&unit) {
            return false;
        }
        let Some(destination) = self.least_loaded_fit(unit, Some(machine)) else {
            return false;
        };
        let replacer_name = self.name(replacer);
        self.displaced.insert(unit);
        self.unplace(
            unit,
            machine,
            format!("displaced by {replacer_name} (Replaces)"),
        );
        self.place(
            unit,
            destination,
            format!(
                "displaced from {} by {replacer_name} (Replaces)",
                self.machines[machine].id
            ),
        );
        true
    }

    // --- phase 3: global units ---

    /// Places every global unit on every matching machine where it does not
    /// conflict with a unit that stays (an alphabetically later global gives way).
    fn place_globals(&mut self) {
        for unit in self.unit_indexes() {
            if !self.is_global(unit) || !self.wants_placement(unit) {
                continue;
            }
            let mut matched = 0;
            for machine in self.present_machines() {
                if self.check_static(unit, machine).is_err()
                    || self.check_peers_placed(unit, machine).is_err()
                {
                    continue;
                }
                matched += 1;
                // A cordoned machine keeps the global units it runs and gets no new one.
                if self.on[unit].contains(&machine) || self.drain.cordoned[machine] {
                    continue;
                }
                let slot = &self.machines[machine];
                let candidates = if self.units[unit].requirements.conflicts.is_empty() {
                    &slot.conflicters
                } else {
                    &slot.units
                };
                let conflicting: Vec<UIdx> = candidates
                    .iter()
                    .copied()
                    .filter(|&other| self.conflict(unit, other))
                    .collect();
                if conflicting
                    .iter()
                    .any(|&other| !(self.is_global(other) && other > unit))
                {
                    continue;
                }
                let name = self.name(unit);
                for other in conflicting {
                    self.unplace(
                        other,
                        machine,
                        format!("conflicts with global unit {name}, which comes first"),
                    );
                }
                self.place(
                    unit,
                    machine,
                    "global unit: every matching machine".to_owned(),
                );
            }
            if matched == 0 {
                let reason = if self.n_present == 0 {
                    "no machines are available".to_owned()
                } else {
                    format!("no machine matches {}", self.describe_static(unit))
                };
                self.unschedulable.insert(unit, reason);
            }
        }
    }

    // --- phase 4: pending units ---

    fn place_pending(&mut self) {
        for unit in self.unit_indexes() {
            if !self.is_global(unit) && self.wants_placement(unit) && self.on[unit].is_empty() {
                self.pending.insert(unit);
            }
        }
        let mut visiting = Vec::new();
        while let Some(unit) = self.pending.pop_first() {
            self.place_one(unit, &mut visiting);
        }
    }

    /// Places one pending unit, its pending `MachineOf` peers first.
    fn place_one(&mut self, unit: UIdx, visiting: &mut Vec<UIdx>) {
        self.pending.remove(&unit);
        if !self.on[unit].is_empty() {
            return;
        }
        match self.decide(unit, visiting) {
            Ok((machine, reason)) => self.place(unit, machine, reason),
            Err(reason) => {
                self.unschedulable.insert(unit, reason);
            }
        }
    }

    fn decide(&mut self, unit: UIdx, visiting: &mut Vec<UIdx>) -> Result<(MIdx, String), String> {
        if self.n_present == 0 {
            return Err("no machines are available".to_owned());
        }
        // MachineOf: the unit goes where all its peers are.
        let mut peer_machines: Option<Vec<MIdx>> = None;
        let peer_names = self.units[unit].requirements.machine_of.clone();
        if let Some(missing) = peer_names
            .iter()
            .find(|peer| !self.unit_by_name.contains_key(peer.as_str()))
        {
            return Err(format!(
                "MachineOf peer {missing} is not scheduled (no such unit)"
            ));
        }
        for peer in self.peers[unit].clone().into_iter().flatten() {
            let peer_name = self.name(peer);
            if self.on[peer].is_empty() && self.pending.contains(&peer) && !visiting.contains(&peer)
            {
                visiting.push(unit);
                self.place_one(peer, visiting);
                visiting.pop();
            }
            let present: Vec<MIdx> = self.on[peer]
                .iter()
                .copied()
                .filter(|&machine| self.is_present(machine))
                .collect();
            if present.is_empty() {
                return Err(match self.on[peer].first() {
                    Some(&machine) => format!(
                        "MachineOf peer {peer_name} is on machine {}, which is gone",
                        self.machines[machine].id
                    ),
                    None => format!("MachineOf peer {peer_name} is not scheduled"),
                });
            }
            peer_machines = Some(match peer_machines {
                None => present,
                Some(machines) => machines
                    .into_iter()
                    .filter(|machine| present.contains(machine))
                    .collect(),
            });
        }
        if let Some(machines) = peer_machines {
            if machines.is_empty() {
                return Err(format!(
                    "MachineOf peers {} are on different machines",
                    peer_names.join(", ")
                ));
            }
            let mut machines: Vec<(usize, MIdx)> = machines
                .into_iter()
                .map(|machine| (self.machines[machine].units.len(), machine))
                .collect();
            machines.sort_unstable();
            return self.first_fit(
                unit,
                machines.into_iter().map(|(_, machine)| machine),
                "placed with its MachineOf peers",
            );
        }

        // MachineID: a direct lookup, full id or short id.
        if let Some(machine_id) = self.units[unit].requirements.machine_id.clone() {
            let mut machines: Vec<MIdx> = self
                .machine_by_id
                .get(machine_id.as_str())
                .copied()
                .filter(|&machine| self.is_present(machine))
                .into_iter()
                .collect();
            machines.extend(
                self.machines_by_short_id
                    .get(machine_id.as_str())
                    .into_iter()
                    .flatten()
                    .copied(),
            );
            machines.sort_unstable();
            machines.dedup();
            if machines.is_empty() {
                return Err(format!("no machine matches MachineID={machine_id}"));
            }
            return self.first_fit(unit, machines.into_iter(), "placed on its MachineID");
        }

        // Replaces: prefer the machine of a unit this one displaces, if that
        // unit can move elsewhere.
        if !self.units[unit].requirements.replaces.is_empty()
            && let Some(placed) = self.place_replacing(unit)
        {
            return Ok(placed);
        }

        let machines = self.by_load.iter().map(|&(_, machine)| machine);
        self.first_fit(unit, machines, "least-loaded machine that fits")
    }

    /// The first machine of `machines` (in preference order) that can run
    /// `unit`, or why none can.
    fn first_fit(
        &self,
        unit: UIdx,
        machines: impl Iterator<Item = MIdx> + Clone,
        reason: &str,
    ) -> Result<(MIdx, String), String> {
        // The rejections are only gathered when nothing fits: the common
        // case stops at the first fit without allocating.
        if let Some(machine) = machines
            .clone()
            .find(|&machine| self.check(unit, machine).is_ok())
        {
            return Ok((machine, reason.to_owned()));
        }
        let rejects: Vec<Reject> = machines
            .filter_map(|machine| self.check(unit, machine).err())
            .collect();
        Err(self.explain(unit, &rejects))
    }

    /// Places `unit` on the machine of a unit it replaces and moves that unit
    /// away (checked); `None` when no replaced unit can make room.
    fn place_replacing(&mut self, unit: UIdx) -> Option<(MIdx, String)> {
        let targets: Vec<UIdx> = self
            .unit_indexes()
            .filter(|&other| {
                !self.is_global(other)
                    && self.displaces(unit, other)
                    && self.on[other].len() == 1
                    && self.is_present(self.on[other][0])
            })
            .collect();
        for target in targets {
            let machine = self.on[target][0];
            if self.check(unit, machine).is_err() || self.displaced.contains(&target) {
                continue;
            }
            // Checked before anything changes: the replaced unit must fit elsewhere.
            if self.least_loaded_fit(target, Some(machine)).is_none() {
                continue;
            }
            // Put the replacing unit in place first, so that the replaced
            // unit's move sees it; then move the replaced unit.
            let target_name = self.name(target);
            self.attach(unit, machine);
            let moved = self.try_displace(target, machine, unit);
            self.detach(unit, machine);
            if moved {
                return Some((machine, format!("replaces {target_name}")));
            }
        }
        None
    }

    // --- explanations ---

    fn describe_static(&self, unit: UIdx) -> String {
        let requirements = &self.units[unit].requirements;
        if let Some(machine_id) = &requirements.machine_id
            && !self
                .present_machines()
                .any(|machine| requirements.machine_id_matches(self.machines[machine].id.as_str()))
        {
            return format!("MachineID={machine_id}");
        }
        let parts: Vec<String> = requirements
            .machine_metadata
            .iter()
            .map(|(key, values)| {
                format!(
                    "{key}={}",
                    values.iter().cloned().collect::<Vec<_>>().join("|")
                )
            })
            .collect();
        format!("MachineMetadata {}", parts.join(" "))
    }

    fn describe(&self, unit: UIdx, reject: &Reject) -> String {
        match reject {
            Reject::Absent => "machine is gone".to_owned(),
            Reject::MachineId => format!(
                "MachineID={}",
                self.units[unit]
                    .requirements
                    .machine_id
                    .clone()
                    .unwrap_or_default()
            ),
            Reject::Metadata => format!("does not match {}", self.describe_static(unit)),
            Reject::PeerElsewhere => format!(
                "MachineOf peers {} are not there",
                self.units[unit].requirements.machine_of.join(", ")
            ),
            Reject::Conflict(other) => format!("conflicts with {}", self.name(*other)),
            Reject::ReplacedBy(other) => format!("replaced by {}", self.name(*other)),
            Reject::Cordoned => "machine is cordoned".to_owned(),
        }
    }

    /// Why no machine took `unit`, from the rejection of every candidate.
    fn explain(&self, unit: UIdx, rejects: &[Reject]) -> String {
        let mut n_static = 0;
        let mut conflicts = BTreeSet::new();
        let mut replacers = BTreeSet::new();
        let mut n_peer = 0;
        let mut n_cordoned = 0;
        for reject in rejects {
            match reject {
                Reject::Cordoned => n_cordoned += 1,
                Reject::Absent | Reject::MachineId | Reject::Metadata => n_static += 1,
                Reject::PeerElsewhere => n_peer += 1,
                Reject::Conflict(other) => {
                    conflicts.insert(self.name(*other));
                }
                Reject::ReplacedBy(other) => {
                    replacers.insert(self.name(*other));
                }
            }
        }
        if n_static == rejects.len() {
            return format!("no machine matches {}", self.describe_static(unit));
        }
        if n_static + n_cordoned == rejects.len() {
            return if n_static == 0 {
                format!("every machine is cordoned ({n_cordoned})")
            } else {
                format!(
                    "every machine matching {} is cordoned ({n_cordoned})",
                    self.describe_static(unit)
                )
            };
        }
        let scope = if n_static == 0 {
            "every machine".to_owned()
        } else {
            format!("every machine matching {}", self.describe_static(unit))
        };
        if !conflicts.is_empty() && replacers.is_empty() && n_peer == 0 && n_cordoned == 0 {
            return format!("conflicts with {} on {scope}", list(&conflicts));
        }
        let mut parts = Vec::new();
        if !conflicts.is_empty() {
            parts.push(format!("conflicts with {}", list(&conflicts)));
        }
        if !replacers.is_empty() {
            parts.push(format!("replaced by {}", list(&replacers)));
        }
        if n_peer > 0 {
            parts.push("MachineOf peers elsewhere".to_owned());
        }
        if n_cordoned > 0 {
            parts.push(format!("{n_cordoned} cordoned"));
        }
        format!("no machine fits: {} on {scope}", parts.join("; "))
    }

    // --- output ---

    fn finish(self) -> Outcome {
        let mut unplacements = Vec::new();
        let mut placements = Vec::new();
        for placement in &self.orphans {
            unplacements.push(Decision::Unplace {
                unit: placement.unit.clone(),
                machine: placement.machine.clone(),
                reason: "unit was destroyed".to_owned(),
            });
        }
        for (&(unit, machine), placement) in &self.initial {
            if !self.on[unit].contains(&machine) {
                let reason = self
                    .unplace_reasons
                    .get(&(unit, machine))
                    .cloned()
                    .unwrap_or_else(|| "no longer scheduled".to_owned());
                unplacements.push(Decision::Unplace {
                    unit: placement.unit.clone(),
                    machine: placement.machine.clone(),
                    reason,
                });
            }
        }
        for (unit, machines) in self.on.iter().enumerate() {
            let unit = UIdx(unit);
            let spec = self.units[unit];
            for &machine in machines {
                let reason = match self.initial.get(&(unit, machine)) {
                    None => self
                        .place_reasons
                        .get(&(unit, machine))
                        .cloned()
                        .unwrap_or_else(|| "scheduled".to_owned()),
                    Some(existing) if existing.target_state != spec.desired_state => {
                        format!(
                            "target state changed from {} to {}",
                            existing.target_state, spec.desired_state
                        )
                    }
                    Some(existing) if existing.hash != spec.hash => "unit file changed".to_owned(),
                    Some(_) => continue,
                };
                // Built only for a change: unchanged placements (the
                // steady state) cost no allocation.
                let wanted = Placement {
                    unit: spec.name.clone(),
                    machine: self.machines[machine].id.clone(),
                    hash: spec.hash,
                    target_state: spec.desired_state,
                };
                placements.push(Decision::Place {
                    placement: wanted,
                    reason,
                });
            }
        }
        unplacements.sort_by(|a, b| (a.unit(), a.machine()).cmp(&(b.unit(), b.machine())));
        placements.sort_by(|a, b| (a.unit(), a.machine()).cmp(&(b.unit(), b.machine())));
        unplacements.extend(placements);
        let unschedulable = self
            .unschedulable
            .iter()
            .filter(|(unit, _)| self.on[**unit].is_empty())
            .map(|(&unit, reason)| Unschedulable {
                unit: self.units[unit].name.clone(),
                reason: reason.clone(),
            })
            .collect();
        let drain_moves = self
            .drain
            .moves
            .iter()
            .map(|&(unit, machine)| Placement {
                unit: self.units[unit].name.clone(),
                machine: self.machines[machine].id.clone(),
                hash: self.units[unit].hash,
                target_state: self.units[unit].desired_state,
            })
            .collect();
        let drain_blocked = self
            .drain
            .blocked
            .iter()
            .map(|(&unit, reason)| Unschedulable {
                unit: self.units[unit].name.clone(),
                reason: reason.clone(),
            })
            .collect();
        Outcome {
            decisions: unplacements,
            unschedulable,
            drain_moves,
            drain_blocked,
            drain_waiting: self.drain.waiting,
        }
    }
}

/// `a`, `a and b`, `a, b and c`, `a, b, c and 2 more`.
fn list(names: &BTreeSet<&str>) -> String {
    let names: Vec<&str> = names.iter().copied().collect();
    match names.len() {
        0 => String::new(),
        1 => names[0].to_owned(),
        2..=3 => format!(
            "{} and {}",
            names[..names.len() - 1].join(", "),
            names[names.len() - 1]
        ),
        n => format!("{} and {} more", names[..3].join(", "), n - 3),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A machine with `id` and `metadata` (`key=value` items).
    pub(super) fn machine(id: &str, metadata: &[&str]) -> MachineState {
        MachineState {
            id: id.parse().expect("test machine id"),
            public_ip: String::new(),
            metadata: metadata
                .iter()
                .map(|item| {
                    let (key, value) = item.split_once('=').expect("key=value");
                    (key.to_owned(), value.to_owned())
                })
                .collect(),
            version: "0.1.0".to_owned(),
            disable_engine: false,
            disable_agent: false,
            api_url: String::new(),
        }
    }

    pub(super) fn machines(ids: &[&str]) -> Vec<MachineState> {
        ids.iter().map(|id| machine(id, &[])).collect()
    }

    pub(super) fn name(unit: &str) -> UnitName {
        unit.parse().expect("test unit name")
    }

    /// `[X-Fleet]` options in a compact form: `Conflicts=a b`, `MachineOf=x`,
    /// `MachineMetadata=k=v`, `MachineID=m`, `Global=true`, `Replaces=x`.
    pub(crate) fn requirements(options: &[&str]) -> Requirements {
        let mut requirements = Requirements::default();
        for option in options {
            let (key, value) = option.split_once('=').expect("Option=value");
            match key {
                "Conflicts" => requirements
                    .conflicts
                    .extend(value.split_whitespace().map(str::to_owned)),
                "MachineOf" => requirements.machine_of.push(value.to_owned()),
                "MachineID" => requirements.machine_id = Some(value.to_owned()),
                "Global" => requirements.global = value == "true",
                "Replaces" => requirements.replaces.push(value.to_owned()),
                "MachineMetadata" => {
                    let (key, value) = value.split_once('=').expect("k=v");
                    requirements
                        .machine_metadata
                        .entry(key.to_owned())
                        .or_default()
                        .insert(value.to_owned());
                }
                other => panic!("unknown test option {other}"),
            }
        }
        requirements
    }

    pub(crate) fn hash(n: u8) -> UnitHash {
        UnitHash([n; 20])
    }

    pub(super) fn unit(unit_name: &str, options: &[&str]) -> UnitSpec {
        UnitSpec {
            name: name(unit_name),
            requirements: Arc::new(requirements(options)),
            desired_state: TargetState::Launched,
            hash: hash(1),
        }
    }

    pub(super) fn placement(unit_name: &str, machine_id: &str) -> Placement {
        Placement {
            unit: name(unit_name),
            machine: machine_id.parse().expect("machine id"),
            hash: hash(1),
            target_state: TargetState::Launched,
        }
    }

    /// A cluster under test: runs passes and applies their decisions.
    #[derive(Debug)]
    pub(crate) struct Cluster {
        pub(crate) machines: Vec<MachineState>,
        pub(crate) units: Vec<UnitSpec>,
        pub(crate) placements: Vec<Placement>,
        pub(crate) loss: LossPolicy,
        pub(crate) last: Outcome,
    }

    impl Cluster {
        pub(crate) fn new(machines: Vec<MachineState>, units: Vec<UnitSpec>) -> Cluster {
            Cluster {
                machines,
                units,
                placements: Vec::new(),
                loss: LossPolicy::default(),
                last: Outcome::default(),
            }
        }

        /// One pass, applied; returns its decisions.
        pub(crate) fn pass(&mut self) -> Vec<Decision> {
            let outcome = schedule(&self.machines, &self.units, &self.placements, &self.loss);
            for decision in &outcome.decisions {
                match decision {
                    Decision::Unplace { unit, machine, .. } => {
                        let before = self.placements.len();
                        self.placements
                            .retain(|p| !(&p.unit == unit && &p.machine == machine));
                        assert_eq!(
                            before,
                            self.placements.len() + 1,
                            "unplaced a placement that does not exist: {decision}"
                        );
                    }
                    Decision::Place { placement, .. } => {
                        self.placements.retain(|p| {
                            !(p.unit == placement.unit && p.machine == placement.machine)
                        });
                        self.placements.push(placement.clone());
                    }
                }
            }
            self.last = outcome.clone();
            outcome.decisions
        }

        /// Passes until nothing changes; the schedule must settle in one
        /// pass and the next pass must decide nothing (no ping-pong).
        pub(crate) fn settle(&mut self) {
            self.pass();
            let again = self.pass();
            assert!(
                again.is_empty(),
                "a second pass still changes things: {again:#?}"
            );
            self.check_invariants();
        }

        fn machines_of(&self, unit_name: &str) -> Vec<String> {
            let mut found: Vec<String> = self
                .placements
                .iter()
                .filter(|p| p.unit.as_str() == unit_name)
                .map(|p| p.machine.to_string())
                .collect();
            found.sort();
            found
        }

        fn machine_of(&self, unit_name: &str) -> String {
            let found = self.machines_of(unit_name);
            assert_eq!(
                found.len(),
                1,
                "{unit_name} should be on exactly one machine: {found:?}"
            );
            found[0].clone()
        }

        fn units_on(&self, machine_id: &str) -> Vec<String> {
            let mut found: Vec<String> = self
                .placements
                .iter()
                .filter(|p| p.machine.as_str() == machine_id)
                .map(|p| p.unit.to_string())
                .collect();
            found.sort();
            found
        }

        fn n_placed(&self) -> usize {
            self.placements
                .iter()
                .filter(|p| self.machines.iter().any(|m| m.id == p.machine))
                .count()
        }

        fn unschedulable(&self, unit_name: &str) -> Option<String> {
            self.last
                .unschedulable
                .iter()
                .find(|u| u.unit.as_str() == unit_name)
                .map(|u| u.reason.clone())
        }

        fn add(&mut self, unit: UnitSpec) {
            self.units.retain(|u| u.name != unit.name);
            self.units.push(unit);
        }

        fn remove_machine(&mut self, machine_id: &str) {
            self.machines.retain(|m| m.id.as_str() != machine_id);
        }

        /// No two conflicting units share a machine, and every placement on
        /// a live machine satisfies its unit's constraints.
        pub(crate) fn check_invariants(&self) {
            for m in &self.machines {
                let here: Vec<&UnitSpec> = self
                    .units
                    .iter()
                    .filter(|u| {
                        self.placements
                            .iter()
                            .any(|p| p.unit == u.name && p.machine == m.id)
                    })
                    .collect();
                for (i, a) in here.iter().enumerate() {
                    let req = &a.requirements;
                    assert!(
                        req.machine_id.is_none() || req.machine_id_matches(m.id.as_str()),
                        "{} on {} breaks MachineID",
                        a.name,
                        m.id
                    );
                    assert!(
                        req.metadata_matches(&m.metadata),
                        "{} on {} breaks MachineMetadata",
                        a.name,
                        m.id
                    );
                    for peer in &req.machine_of {
                        assert!(
                            here.iter().any(|u| u.name.as_str() == peer),
                            "{} on {} without its peer {peer}",
                            a.name,
                            m.id
                        );
                    }
                    for b in &here[i + 1..] {
                        assert!(
                            !req.conflicts_with(a.name.as_str(), b.name.as_str(), &b.requirements),
                            "{} and {} conflict on {}",
                            a.name,
                            b.name,
                            m.id
                        );
                    }
                }
            }
            for p in &self.placements {
                let unit = self
                    .units
                    .iter()
                    .find(|u| u.name == p.unit)
                    .expect("placement of a known unit");
                assert_ne!(
                    unit.desired_state,
                    TargetState::Inactive,
                    "{} is inactive but placed",
                    unit.name
                );
                assert_eq!(p.target_state, unit.desired_state);
                assert_eq!(p.hash, unit.hash);
            }
        }
    }

    #[test]
    fn least_loaded_with_ties_broken_by_machine_id() {
        let mut cluster = Cluster::new(
            machines(&["m2", "m1", "m3"]),
            ["a", "b", "c", "d"]
                .iter()
                .map(|n| unit(&format!("{n}.service"), &[]))
                .collect(),
        );
        cluster.settle();
        assert_eq!(cluster.machine_of("a.service"), "m1");
        assert_eq!(cluster.machine_of("b.service"), "m2");
        assert_eq!(cluster.machine_of("c.service"), "m3");
        assert_eq!(cluster.machine_of("d.service"), "m1");
    }

    #[test]
    fn nothing_moves_when_a_machine_joins() {
        let mut cluster = Cluster::new(
            machines(&["m1"]),
            vec![unit("a.service", &[]), unit("b.service", &[])],
        );
        cluster.settle();
        cluster.machines.push(machine("m2", &[]));
        assert!(cluster.pass().is_empty());
        cluster.add(unit("c.service", &[]));
        cluster.settle();
        assert_eq!(cluster.machine_of("c.service"), "m2");
        assert_eq!(cluster.units_on("m1"), ["a.service", "b.service"]);
    }

    #[test]
    fn machine_of_places_peers_together_whatever_the_name_order() {
        let mut units = Vec::new();
        for n in 0..3 {
            units.push(unit(&format!("ping.{n}.service"), &[]));
            units.push(unit(
                &format!("pong.{n}.service"),
                &[&format!("MachineOf=ping.{n}.service")],
            ));
        }
        let mut cluster = Cluster::new(machines(&["m1", "m2", "m3"]), units);
        cluster.settle();
        for n in 0..3 {
            assert_eq!(
                cluster.machine_of(&format!("pong.{n}.service")),
                cluster.machine_of(&format!("ping.{n}.service"))
            );
        }
        let pings: BTreeSet<String> = (0..3)
            .map(|n| cluster.machine_of(&format!("ping.{n}.service")))
            .collect();
        assert_eq!(pings.len(), 3, "pings spread over the machines");

        // A follower named before its leader, and a chain a -> b -> c.
        let units = vec![
            unit("a.service", &["MachineOf=b.service"]),
            unit("b.service", &["MachineOf=c.service"]),
            unit("c.service", &[]),
            unit("0.service", &[]),
        ];
        let mut cluster = Cluster::new(machines(&["m1", "m2"]), units);
        cluster.settle();
        assert_eq!(
            cluster.machine_of("c.service"),
            "m2",
            "0.service took m1 first"
        );
        assert_eq!(
            cluster.machine_of("a.service"),
            cluster.machine_of("c.service")
        );
        assert_eq!(
            cluster.machine_of("b.service"),
            cluster.machine_of("c.service")
        );
    }

    #[test]
    fn machine_of_an_unknown_or_unplaceable_peer_is_unschedulable() {
        let mut cluster = Cluster::new(
            machines(&["m1"]),
            vec![
                unit("a.service", &["MachineOf=ghost.service"]),
                unit("b.service", &["MachineOf=c.service"]),
                unit("c.service", &["MachineMetadata=region=mars"]),
            ],
        );
        cluster.settle();
        assert_eq!(cluster.n_placed(), 0);
        assert_eq!(
            cluster.unschedulable("a.service").as_deref(),
            Some("MachineOf peer ghost.service is not scheduled (no such unit)")
        );
        assert_eq!(
            cluster.unschedulable("b.service").as_deref(),
            Some("MachineOf peer c.service is not scheduled")
        );
        assert_eq!(
            cluster.unschedulable("c.service").as_deref(),
            Some("no machine matches MachineMetadata region=mars")
        );
    }

    #[test]
    fn machine_of_followers_move_with_a_lost_leader_and_nothing_else_moves() {
        let mut units = Vec::new();
        for n in 0..3 {
            units.push(unit(&format!("ping.{n}.service"), &[]));
            units.push(unit(
                &format!("pong.{n}.service"),
                &[&format!("MachineOf=ping.{n}.service")],
            ));
        }
        let mut cluster = Cluster::new(machines(&["m1", "m2", "m3"]), units);
        cluster.settle();
        let before: BTreeMap<String, String> = (0..3)
            .map(|n| {
                (
                    format!("ping.{n}.service"),
                    cluster.machine_of(&format!("ping.{n}.service")),
                )
            })
            .collect();
        let lost = before["ping.1.service"].clone();
        cluster.remove_machine(&lost);
        cluster
            .loss
            .lost_beyond_grace
            .insert(lost.parse().expect("id"));
        cluster.settle();
        assert_ne!(cluster.machine_of("ping.1.service"), lost);
        assert_eq!(
            cluster.machine_of("pong.1.service"),
            cluster.machine_of("ping.1.service")
        );
        for n in [0, 2] {
            assert_eq!(
                cluster.machine_of(&format!("ping.{n}.service")),
                before[&format!("ping.{n}.service")]
            );
            assert_eq!(
                cluster.machine_of(&format!("pong.{n}.service")),
                before[&format!("ping.{n}.service")]
            );
        }
    }

    #[test]
    fn five_mutually_conflicting_units_on_three_machines_place_three() {
        let units = (0..5)
            .map(|n| {
                unit(
                    &format!("conflict.{n}.service"),
                    &["Conflicts=conflict.*.service"],
                )
            })
            .collect();
        let mut cluster = Cluster::new(machines(&["m1", "m2", "m3"]), units);
        cluster.settle();
        assert_eq!(cluster.n_placed(), 3);
        for m in ["m1", "m2", "m3"] {
            assert_eq!(cluster.units_on(m).len(), 1);
        }
        assert_eq!(
            cluster.unschedulable("conflict.3.service").as_deref(),
            Some(
                "conflicts with conflict.0.service, conflict.1.service and conflict.2.service on every machine"
            )
        );
        assert!(cluster.unschedulable("conflict.4.service").is_some());
    }

    #[test]
    fn one_way_conflict_blocks_until_the_conflicting_unit_is_destroyed() {
        let mut cluster = Cluster::new(
            machines(&["m1"]),
            vec![unit(
                "conflicts-with-hello.service",
                &["Conflicts=hello.service"],
            )],
        );
        cluster.settle();
        cluster.add(unit("hello.service", &[]));
        cluster.settle();
        assert_eq!(cluster.units_on("m1"), ["conflicts-with-hello.service"]);
        assert_eq!(
            cluster.unschedulable("hello.service").as_deref(),
            Some("conflicts with conflicts-with-hello.service on every machine")
        );
        cluster
            .units
            .retain(|u| u.name.as_str() != "conflicts-with-hello.service");
        let decisions = cluster.pass();
        assert!(decisions.iter().any(
            |d| matches!(d, Decision::Unplace { reason, .. } if reason == "unit was destroyed")
        ));
        assert_eq!(cluster.units_on("m1"), ["hello.service"]);
        assert!(cluster.pass().is_empty());
    }

    #[test]
    fn multiple_conflicts_in_one_option_spread_units() {
        let units = (0..3)
            .map(|n| {
                let others: Vec<String> = (0..3)
                    .filter(|o| *o != n)
                    .map(|o| format!("conflict.multiple.{o}.service"))
                    .collect();
                unit(
                    &format!("conflict.multiple.{n}.service"),
                    &[&format!("Conflicts={}", others.join(" "))],
                )
            })
            .collect();
        let mut cluster = Cluster::new(machines(&["m1", "m2"]), units);
        cluster.settle();
        assert_eq!(
            cluster.n_placed(),
            2,
            "three mutually conflicting units fit on two machines only twice"
        );
    }

    #[test]
    fn replaces_takes_the_machine_and_moves_the_replaced_unit() {
        let mut cluster = Cluster::new(
            machines(&["m0", "m1"]),
            vec![unit("replace.0.service", &[])],
        );
        cluster.placements = vec![
            placement("replace.0.service", "m0"),
            placement("replace.1.service", "m1"),
            placement("replace.2.service", "m1"),
        ];
        cluster.add(unit("replace.1.service", &[]));
        cluster.add(unit("replace.2.service", &["MachineOf=replace.1.service"]));
        cluster.settle();
        cluster.add(unit(
            "replace-kick0.service",
            &["Replaces=replace.0.service"],
        ));
        cluster.settle();
        assert_eq!(cluster.machine_of("replace-kick0.service"), "m0");
        assert_eq!(cluster.machine_of("replace.0.service"), "m1");
        assert_eq!(
            cluster.units_on("m1"),
            [
                "replace.0.service",
                "replace.1.service",
                "replace.2.service"
            ]
        );
    }

    #[test]
    fn replaces_chain_leaves_no_replacer_with_its_replaced_unit() {
        let mut cluster = Cluster::new(machines(&["m1", "m2", "m3"]), vec![unit("a.service", &[])]);
        cluster.settle();
        cluster.add(unit("b.service", &["Replaces=a.service"]));
        cluster.settle();
        assert_eq!(cluster.machine_of("b.service"), "m1");
        assert_ne!(cluster.machine_of("a.service"), "m1");
        cluster.add(unit("c.service", &["Replaces=b.service"]));
        cluster.settle();
        assert_eq!(cluster.machine_of("c.service"), "m1");
        let b = cluster.machine_of("b.service");
        assert_ne!(b, "m1");
        assert_ne!(
            b,
            cluster.machine_of("a.service"),
            "b must not land on a's machine, which it would displace again"
        );
    }

    #[test]
    fn replaced_unit_that_cannot_move_stays() {
        let mut cluster = Cluster::new(
            machines(&["m1", "m2"]),
            vec![unit("x.service", &["MachineID=m1"])],
        );
        cluster.settle();
        cluster.add(unit("r.service", &["Replaces=x.service"]));
        cluster.settle();
        assert_eq!(cluster.machine_of("x.service"), "m1");
        assert_eq!(
            cluster.machine_of("r.service"),
            "m2",
            "least loaded, since x cannot be displaced"
        );
    }

    #[test]
    fn circular_replaces_is_ignored_and_does_not_ping_pong() {
        let mut cluster = Cluster::new(
            machines(&["m1", "m2"]),
            vec![unit(
                "replace.0.service",
                &["Replaces=replace-kick0.service"],
            )],
        );
        cluster.settle();
        cluster.add(unit(
            "replace-kick0.service",
            &["Replaces=replace.0.service"],
        ));
        cluster.settle();
        assert_eq!(cluster.machine_of("replace.0.service"), "m1");
        assert_eq!(cluster.machine_of("replace-kick0.service"), "m2");
        for _ in 0..3 {
            assert!(cluster.pass().is_empty());
        }
    }

    #[test]
    fn machine_id_full_and_short() {
        let long = [
            "0123456789abcdef0123456789abcdef",
            "fedcba9876543210fedcba9876543210",
            "aaaaaaaa00000000aaaaaaaa00000000",
        ];
        let units = vec![
            unit("full.service", &[&format!("MachineID={}", long[2])]),
            unit("short.service", &["MachineID=fedcba98"]),
            unit("gone.service", &["MachineID=bbbbbbbb"]),
        ];
        let mut cluster = Cluster::new(machines(&long), units);
        cluster.settle();
        assert_eq!(cluster.machine_of("full.service"), long[2]);
        assert_eq!(cluster.machine_of("short.service"), long[1]);
        assert_eq!(
            cluster.unschedulable("gone.service").as_deref(),
            Some("no machine matches MachineID=bbbbbbbb")
        );
    }

    #[test]
    fn metadata_selects_machines_and_explains_failure() {
        let cluster_machines = vec![
            machine("m1", &["region=us-east"]),
            machine("m2", &["region=us-west", "disk=ssd"]),
            machine("m3", &["region=us-west"]),
        ];
        let units = vec![
            unit(
                "a.service",
                &["MachineMetadata=region=us-west", "MachineMetadata=disk=ssd"],
            ),
            unit(
                "b.service",
                &[
                    "MachineMetadata=region=us-west",
                    "MachineMetadata=region=eu",
                ],
            ),
            unit("c.service", &["MachineMetadata=region=eu"]),
        ];
        let mut cluster = Cluster::new(cluster_machines, units);
        cluster.settle();
        assert_eq!(cluster.machine_of("a.service"), "m2");
        assert_eq!(cluster.machine_of("b.service"), "m3");
        assert_eq!(
            cluster.unschedulable("c.service").as_deref(),
            Some("no machine matches MachineMetadata region=eu")
        );
    }

    #[test]
    fn placement_on_a_machine_that_stopped_matching_moves() {
        let mut cluster = Cluster::new(
            vec![machine("m1", &["role=web"]), machine("m2", &["role=web"])],
            vec![unit("a.service", &["MachineMetadata=role=web"])],
        );
        cluster.settle();
        assert_eq!(cluster.machine_of("a.service"), "m1");
        cluster.machines[0]
            .metadata
            .insert("role".to_owned(), "db".to_owned());
        let decisions = cluster.pass();
        assert!(
            decisions[0].reason().starts_with("machine no longer fits"),
            "{decisions:?}"
        );
        assert_eq!(cluster.machine_of("a.service"), "m2");
        assert!(cluster.pass().is_empty());
    }

    #[test]
    fn global_units_go_to_every_matching_machine_and_count_as_load() {
        let cluster_machines = vec![
            machine("m1", &["role=web"]),
            machine("m2", &[]),
            machine("m3", &["role=web"]),
        ];
        let units = vec![
            unit(
                "global.service",
                &["Global=true", "MachineMetadata=role=web"],
            ),
            unit("hello.service", &[]),
            unit("avoid.service", &["Conflicts=global.service"]),
        ];
        let mut cluster = Cluster::new(cluster_machines, units);
        cluster.settle();
        assert_eq!(cluster.machines_of("global.service"), ["m1", "m3"]);
        assert_eq!(cluster.machine_of("avoid.service"), "m2");
        // m1 and m3 carry the global unit; m2 carries avoid: hello goes to m1.
        assert_eq!(cluster.machine_of("hello.service"), "m1");
        cluster.machines.push(machine("m4", &["role=web"]));
        cluster.settle();
        assert_eq!(cluster.machines_of("global.service"), ["m1", "m3", "m4"]);
    }

    #[test]
    fn conflicting_global_units_the_first_name_wins_on_every_machine() {
        let global = |n: u32| {
            unit(
                &format!("conflict-global.{n}.service"),
                &["Global=true", "Conflicts=conflict-global.*.service"],
            )
        };
        let mut cluster = Cluster::new(machines(&["m1", "m2", "m3"]), vec![global(0)]);
        cluster.settle();
        cluster.add(global(1));
        cluster.settle();
        assert_eq!(
            cluster.machines_of("conflict-global.0.service"),
            ["m1", "m2", "m3"]
        );
        assert!(cluster.machines_of("conflict-global.1.service").is_empty());

        // Added in the other order, the first name still wins.
        let mut cluster = Cluster::new(machines(&["m1", "m2", "m3"]), vec![global(1)]);
        cluster.settle();
        cluster.add(global(0));
        cluster.settle();
        assert_eq!(
            cluster.machines_of("conflict-global.0.service"),
            ["m1", "m2", "m3"]
        );
        assert!(cluster.machines_of("conflict-global.1.service").is_empty());
    }

    #[test]
    fn template_instances_with_conflicts_run_one_per_machine() {
        let units = (1..=5)
            .map(|n| unit(&format!("web@{n}.service"), &["Conflicts=web@*.service"]))
            .collect();
        let mut cluster = Cluster::new(machines(&["m1", "m2", "m3"]), units);
        cluster.settle();
        assert_eq!(cluster.n_placed(), 3);
        assert_eq!(cluster.machine_of("web@1.service"), "m1");
        assert_eq!(cluster.machine_of("web@2.service"), "m2");
        assert_eq!(cluster.machine_of("web@3.service"), "m3");
        // A fourth machine takes the next one, and nothing else moves.
        cluster.machines.push(machine("m4", &[]));
        cluster.settle();
        assert_eq!(cluster.machine_of("web@4.service"), "m4");
        assert_eq!(cluster.machine_of("web@1.service"), "m1");
    }

    #[test]
    fn a_lost_machine_keeps_its_global_units_placed_so_a_return_restarts_nothing() {
        let units = vec![
            unit("global.service", &["Global=true"]),
            unit("plain.service", &[]),
        ];
        let mut cluster = Cluster::new(machines(&["m1", "m2"]), units);
        cluster.settle();
        assert_eq!(cluster.machine_of("plain.service"), "m1");
        cluster.remove_machine("m1");
        cluster
            .loss
            .lost_beyond_grace
            .insert("m1".parse().expect("id"));
        let decisions = cluster.pass();
        // Only the plain unit moves; the global unit's placement on m1 stays.
        assert!(
            decisions
                .iter()
                .all(|decision| decision.unit().as_str() == "plain.service"),
            "{decisions:#?}"
        );
        assert_eq!(cluster.machine_of("plain.service"), "m2");
        assert_eq!(cluster.machines_of("global.service"), ["m1", "m2"]);
        assert!(cluster.pass().is_empty());
    }

    #[test]
    fn machine_loss_waits_for_grace_and_breaker_then_moves_only_the_lost_unit() {
        let units = (0..3)
            .map(|n| {
                unit(
                    &format!("conflict.{n}.service"),
                    &["Conflicts=conflict.*.service"],
                )
            })
            .collect();
        let mut cluster = Cluster::new(machines(&["m1", "m2", "m3", "m4"]), units);
        cluster.settle();
        assert_eq!(cluster.machine_of("conflict.1.service"), "m2");
        cluster.remove_machine("m2");
        // Within the grace period: nothing happens.
        assert!(cluster.pass().is_empty());
        // Beyond the grace, but the breaker is tripped: nothing happens.
        cluster
            .loss
            .lost_beyond_grace
            .insert("m2".parse().expect("id"));
        cluster.loss.breaker_tripped = true;
        assert!(cluster.pass().is_empty());
        // Released: conflict.1 goes to the free machine, the others stay.
        cluster.loss.breaker_tripped = false;
        let decisions = cluster.pass();
        assert_eq!(decisions.len(), 2, "{decisions:#?}");
        assert_eq!(decisions[0].reason(), "machine m2 is lost");
        assert_eq!(cluster.machine_of("conflict.1.service"), "m4");
        assert_eq!(cluster.machine_of("conflict.0.service"), "m1");
        assert_eq!(cluster.machine_of("conflict.2.service"), "m3");
        assert!(cluster.pass().is_empty());
    }

    #[test]
    fn desired_state_and_hash_changes_rewrite_in_place() {
        let mut cluster = Cluster::new(
            machines(&["m1", "m2"]),
            vec![unit("a.service", &[]), unit("b.service", &[])],
        );
        cluster.settle();
        cluster.units[0].desired_state = TargetState::Loaded;
        cluster.units[1].hash = hash(2);
        let decisions = cluster.pass();
        assert_eq!(decisions.len(), 2);
        assert_eq!(
            decisions[0].reason(),
            "target state changed from launched to loaded"
        );
        assert_eq!(decisions[1].reason(), "unit file changed");
        assert_eq!(cluster.machine_of("a.service"), "m1");
        assert_eq!(cluster.machine_of("b.service"), "m2");
        cluster.check_invariants();
        cluster.units[0].desired_state = TargetState::Inactive;
        let decisions = cluster.pass();
        assert_eq!(
            decisions,
            vec![Decision::Unplace {
                unit: name("a.service"),
                machine: "m1".parse().expect("id"),
                reason: "desired state is inactive".to_owned()
            }]
        );
        assert!(cluster.pass().is_empty());
    }

    #[test]
    fn inactive_units_are_not_placed_and_no_machines_is_said() {
        let mut inactive = unit("a.service", &[]);
        inactive.desired_state = TargetState::Inactive;
        let mut cluster = Cluster::new(Vec::new(), vec![inactive, unit("b.service", &[])]);
        cluster.settle();
        assert_eq!(cluster.n_placed(), 0);
        assert_eq!(cluster.unschedulable("a.service"), None);
        assert_eq!(
            cluster.unschedulable("b.service").as_deref(),
            Some("no machines are available")
        );
    }

    #[test]
    fn a_unit_placed_twice_keeps_one_placement() {
        let mut cluster = Cluster::new(machines(&["m1", "m2"]), vec![unit("a.service", &[])]);
        cluster.placements = vec![placement("a.service", "m1"), placement("a.service", "m2")];
        cluster.settle();
        assert_eq!(cluster.machines_of("a.service"), ["m1"]);
    }

    /// Invariants over many generated clusters (a deterministic generator,
    /// so a failure reproduces): conflict-free machines, constraints met,
    /// and a settled schedule that a second pass leaves alone.
    #[test]
    fn generated_clusters_keep_the_invariants() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for _round in 0..200 {
            let n_machines = 1 + next(6) as usize;
            let cluster_machines: Vec<MachineState> = (0..n_machines)
                .map(|m| {
                    machine(
                        &format!("m{m}"),
                        if next(2) == 0 {
                            &["zone=a"]
                        } else {
                            &["zone=b"]
                        },
                    )
                })
                .collect();
            let n_units = next(14) as usize;
            let mut units = Vec::new();
            for u in 0..n_units {
                let mut options: Vec<String> = Vec::new();
                match next(8) {
                    0 => options.push("Conflicts=g@*.service".to_owned()),
                    1 => options.push(format!("MachineOf=u{}.service", next(n_units as u64 + 1))),
                    2 => options.push("MachineMetadata=zone=a".to_owned()),
                    3 => options.push(format!("Replaces=u{}.service", next(n_units as u64 + 1))),
                    4 => options
                        .extend(["Global=true".to_owned(), "Conflicts=u*.service".to_owned()]),
                    5 => options.push(format!("MachineID=m{}", next(n_machines as u64 + 1))),
                    _ => {}
                }
                let prefix = if options.iter().any(|o| o.starts_with("Conflicts=g@")) {
                    "g@"
                } else {
                    "u"
                };
                let options: Vec<&str> = options.iter().map(String::as_str).collect();
                let mut spec = unit(&format!("{prefix}{u}.service"), &options);
                if next(6) == 0 {
                    spec.desired_state = TargetState::Loaded;
                }
                units.push(spec);
            }
            let mut cluster = Cluster::new(cluster_machines, units);
            cluster.settle();
            // Lose a machine, release it, and settle again.
            if n_machines > 1 {
                let lost = cluster.machines.remove(next(n_machines as u64) as usize);
                cluster.loss.lost_beyond_grace.insert(lost.id);
                cluster.settle();
            }
        }
    }
}
