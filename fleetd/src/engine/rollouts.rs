//! The engine's side of rolling updates: it reads the rollouts from etcd,
//! runs the pure [`rollout_driver`](super::rollout_driver) about once a
//! second while one is active, and applies its decisions: the progress (a
//! leader-guarded write), the schedule (targets that started carry the new
//! content; every other placement follows its unit record), the unit records
//! at the end of a successful rollout, and the rollout's content references
//! when it ends.
//!
//! A restart (a rollout to the content the unit has) also holds the target
//! state of the placements it is stopping at `loaded`, and gives them back
//! their unit record's target once their agents report them stopped.
//!
//! Every step is idempotent and starts from what etcd holds, so a new engine
//! continues a rollout a killed engine left half-done.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use fleet_api::rollout::{Phase, RolloutProgress, RolloutSpec, TargetPhase};
use fleet_registry::store::{ScheduleChange, ScheduleReasons};
use fleet_registry::{Leadership, Placement, Registry, RegistryError, TargetState};
use fleet_systemd::unit::{UnitHash, UnitName};

use crate::engine::model::Model;
use crate::engine::rollout_driver::{Observed, PlacementKey, Placements, pins, step, target_pins};

/// One rollout as the engine knows it.
#[derive(Clone, Debug)]
struct Entry {
    spec: RolloutSpec,
    progress: Option<RolloutProgress>,
}

impl Entry {
    /// How many history events of its rollout are already stored (and logged).
    fn n_logged(&self) -> usize {
        self.progress
            .as_ref()
            .filter(|progress| progress.id == self.spec.id)
            .map_or(0, |progress| progress.history.len())
    }

    fn is_active(&self) -> bool {
        !self
            .progress
            .as_ref()
            .is_some_and(|progress| progress.id == self.spec.id && progress.phase.is_terminal())
    }
}

/// Every rollout by name.
#[derive(Clone, Debug, Default)]
pub struct Rollouts {
    entries: BTreeMap<String, Entry>,
}

impl Rollouts {
    /// Reads every rollout (an undecodable one is logged and skipped).
    pub async fn load(registry: &Registry) -> Result<Rollouts, RegistryError> {
        let mut entries = BTreeMap::new();
        for stored in registry.rollouts().await? {
            let Some(spec) = decode_spec(&stored.name, &stored.spec) else {
                continue;
            };
            let progress = stored
                .progress
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            entries.insert(stored.name, Entry { spec, progress });
        }
        Ok(Rollouts { entries })
    }

    /// A spec written by the API (a start or an operator's control).
    pub fn put_spec(&mut self, name: &str, value: &[u8]) {
        let Some(spec) = decode_spec(name, value) else {
            return;
        };
        match self.entries.get_mut(name) {
            Some(entry) => entry.spec = spec,
            None => {
                self.entries.insert(
                    name.to_owned(),
                    Entry {
                        spec,
                        progress: None,
                    },
                );
            }
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// Whether any rollout is still going (the engine then ticks).
    pub fn any_active(&self) -> bool {
        self.entries.values().any(Entry::is_active)
    }

    /// The content every pinned placement must carry, over all rollouts.
    pub fn pinned(&self) -> HashMap<PlacementKey, UnitHash> {
        let mut all = HashMap::new();
        for entry in self.entries.values() {
            for (key, hash) in pins(&entry.spec, entry.progress.as_ref()) {
                if let Ok(hash) = hash.parse() {
                    all.insert(key, hash);
                }
            }
        }
        all
    }

    /// The placements every restart holds at a target state, over all rollouts.
    fn pinned_targets(&self) -> HashMap<PlacementKey, TargetState> {
        self.entries
            .values()
            .flat_map(|entry| target_pins(&entry.spec, entry.progress.as_ref()))
            .collect()
    }

    /// The units of restarts: their placements' target states are the
    /// restart's while it holds them, and their unit records' otherwise.
    fn restarting_units(&self) -> BTreeSet<&str> {
        self.entries
            .values()
            .filter(|entry| entry.spec.restart)
            .flat_map(|entry| entry.spec.units.iter().map(|unit| unit.unit.as_str()))
            .collect()
    }

    /// One step of every active rollout, applied.
    pub async fn tick(
        &mut self,
        registry: &Registry,
        leadership: &Leadership,
        model: &mut Model,
    ) -> Result<(), RegistryError> {
        let names: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.is_active())
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            let Some(entry) = self.entries.get(&name).cloned() else {
                continue;
            };
            let next = advance(registry, &entry, model).await?;
            let changed = entry.progress.as_ref() != Some(&next);
            if changed && !next.phase.is_terminal() {
                // What the step decided is stored before it is acted on: a
                // restart's release of a stopped placement must never reach
                // an agent while the stored progress still says "not stopped
                // yet", or the next engine would stop it a second time.
                self.store_progress(registry, leadership, (&name, entry.n_logged()), &next)
                    .await?;
            }
            self.set_progress(&name, Some(next.clone()));
            let applied = self
                .apply_step(registry, leadership, model, (&name, &entry), &next, changed)
                .await;
            if applied.is_err() && next.phase.is_terminal() && changed {
                // An end is not over until stored: the next tick ends it again.
                self.set_progress(&name, entry.progress.clone());
            }
            applied?;
        }
        Ok(())
    }

    fn set_progress(&mut self, name: &str, progress: Option<RolloutProgress>) {
        if let Some(slot) = self.entries.get_mut(name) {
            slot.progress = progress;
        }
    }

    /// Acts on a step already in memory: the unit records at a successful
    /// end, the placements' contents and targets, and at an end the
    /// contents' release and then the stored progress (stored last: a next
    /// engine that reads a terminal progress does nothing more for it).
    async fn apply_step(
        &self,
        registry: &Registry,
        leadership: &Leadership,
        model: &mut Model,
        (name, entry): (&str, &Entry),
        next: &RolloutProgress,
        changed: bool,
    ) -> Result<(), RegistryError> {
        if next.phase == Phase::Succeeded && changed && !entry.spec.restart {
            switch_records(registry, &entry.spec, model).await?;
        }
        self.follow_pins(registry, leadership, model).await?;
        if next.phase.is_terminal() && changed {
            release(registry, &entry.spec).await?;
            self.store_progress(registry, leadership, (name, entry.n_logged()), next)
                .await?;
        }
        Ok(())
    }

    /// Stores `progress` (leader-guarded) and logs its events after the
    /// first `logged`.
    async fn store_progress(
        &self,
        registry: &Registry,
        leadership: &Leadership,
        (name, logged): (&str, usize),
        progress: &RolloutProgress,
    ) -> Result<(), RegistryError> {
        let bytes = serde_json::to_vec(progress).map_err(|error| RegistryError::Decode {
            key: name.to_owned(),
            message: error.to_string(),
        })?;
        registry
            .put_rollout_progress(leadership, name, &bytes)
            .await?;
        for event in progress.history.iter().skip(logged) {
            info!(rollout = %name, phase = progress.phase.as_str(), "Rollout: {}", event.message);
        }
        Ok(())
    }

    /// Rewrites every placement whose content differs from what the
    /// rollouts pin (or, unpinned, from its unit record).
    async fn follow_pins(
        &self,
        registry: &Registry,
        leadership: &Leadership,
        model: &mut Model,
    ) -> Result<(), RegistryError> {
        let changes = self.corrections(model);
        if changes.is_empty() {
            return Ok(());
        }
        // Every change here is a rolling update's step.
        let reasons: ScheduleReasons = changes
            .iter()
            .filter_map(|change| match change {
                ScheduleChange::Place(placement) => Some((
                    (placement.unit.clone(), placement.machine.clone()),
                    "rolling update".to_owned(),
                )),
                ScheduleChange::Unplace { .. } => None,
            })
            .collect();
        registry
            .commit_explained_schedule(leadership, &changes, &reasons)
            .await?;
        model.apply(&changes);
        Ok(())
    }

    /// The schedule changes that make the placements of every rollout's
    /// units carry the content they should.
    fn corrections(&self, model: &Model) -> Vec<ScheduleChange> {
        let pinned = self.pinned();
        let held = self.pinned_targets();
        let restarting = self.restarting_units();
        let units: BTreeSet<&str> = self
            .entries
            .values()
            .flat_map(|entry| entry.spec.units.iter().map(|unit| unit.unit.as_str()))
            .collect();
        model
            .placements
            .values()
            .filter(|placement| units.contains(placement.unit.as_str()))
            .filter_map(|placement| {
                let key = (
                    placement.unit.as_str().to_owned(),
                    placement.machine.as_str().to_owned(),
                );
                let record = model.units.get(&placement.unit);
                let wanted = match pinned.get(&key) {
                    Some(hash) => *hash,
                    None => record?.hash,
                };
                let target_state = match (held.get(&key), record) {
                    (Some(held), _) => *held,
                    (None, Some(record))
                        if restarting.contains(placement.unit.as_str())
                            && record.desired_state != TargetState::Inactive =>
                    {
                        record.desired_state
                    }
                    _ => placement.target_state,
                };
                (wanted != placement.hash || target_state != placement.target_state).then(|| {
                    ScheduleChange::Place(Placement {
                        hash: wanted,
                        target_state,
                        ..placement.clone()
                    })
                })
            })
            .collect()
    }

    /// Sets the content of the scheduler's placement decisions to what the
    /// rollouts pin, dropping those that then change nothing.
    pub fn apply_pins(&self, changes: Vec<ScheduleChange>, model: &Model) -> Vec<ScheduleChange> {
        let pinned = self.pinned();
        let held = self.pinned_targets();
        if pinned.is_empty() && held.is_empty() {
            return changes;
        }
        changes
            .into_iter()
            .filter_map(|change| match change {
                ScheduleChange::Place(mut placement) => {
                    let key = (
                        placement.unit.as_str().to_owned(),
                        placement.machine.as_str().to_owned(),
                    );
                    if let Some(hash) = pinned.get(&key) {
                        placement.hash = *hash;
                    }
                    if let Some(target_state) = held.get(&key) {
                        placement.target_state = *target_state;
                    }
                    let existing = model
                        .placements
                        .get(&(placement.unit.clone(), placement.machine.clone()));
                    (existing != Some(&placement)).then_some(ScheduleChange::Place(placement))
                }
                unplace => Some(unplace),
            })
            .collect()
    }
}

fn decode_spec(name: &str, value: &[u8]) -> Option<RolloutSpec> {
    match serde_json::from_slice(value) {
        Ok(spec) => Some(spec),
        Err(error) => {
            warn!(rollout = name, %error, "Skipping an undecodable rollout.");
            None
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Reads what the driver needs (the agents' reports for updating targets)
/// and runs one step.
async fn advance(
    registry: &Registry,
    entry: &Entry,
    model: &Model,
) -> Result<RolloutProgress, RegistryError> {
    let units: BTreeSet<&str> = entry.spec.units.iter().map(|u| u.unit.as_str()).collect();
    let mut placements = Placements::default();
    for (unit, machine) in model.placements.keys() {
        if !units.contains(unit.as_str()) {
            continue;
        }
        let key = (unit.as_str().to_owned(), machine.as_str().to_owned());
        // A lost machine keeps its global units' placements; its agent can
        // take part only once it is back.
        if !model.machines.contains_key(machine) {
            placements.absent.insert(key.clone());
        }
        placements.all.insert(key);
    }
    let mut observed = HashMap::new();
    let updating: BTreeSet<&str> = entry
        .progress
        .iter()
        .filter(|progress| progress.id == entry.spec.id)
        .flat_map(|progress| &progress.targets)
        .filter(|target| target.phase == TargetPhase::Updating)
        .map(|target| target.unit.as_str())
        .collect();
    for unit in updating {
        let Ok(name) = unit.parse::<UnitName>() else {
            continue;
        };
        let health: HashMap<String, bool> =
            registry.unit_health(&name).await?.into_iter().collect();
        for state in registry.states_of_unit(&name).await? {
            let verdict = health.get(state.machine.as_str()).copied();
            observed.insert(
                (unit.to_owned(), state.machine.as_str().to_owned()),
                Observed {
                    hash: state.hash.to_string(),
                    active_state: state.active_state,
                    sub_state: state.sub_state,
                    health: verdict,
                },
            );
        }
    }
    Ok(step(
        &entry.spec,
        entry.progress.as_ref(),
        &placements,
        &observed,
        now_ms(),
    ))
}

/// Points every unit record of a successful rollout at the new content, and
/// the model with it (so that no pass sends placements back meanwhile).
async fn switch_records(
    registry: &Registry,
    spec: &RolloutSpec,
    model: &mut Model,
) -> Result<(), RegistryError> {
    let Ok(new) = spec.new_hash.parse::<UnitHash>() else {
        return Ok(());
    };
    for unit in &spec.units {
        let (Ok(name), Ok(old)) = (
            unit.unit.parse::<UnitName>(),
            unit.old_hash.parse::<UnitHash>(),
        ) else {
            continue;
        };
        let outcome = registry.switch_unit_content(&name, &old, &new).await?;
        if outcome == fleet_registry::rollouts::UnitSwitch::Changed {
            warn!(unit = %name, "The unit changed during its rollout; its record was left alone.");
            continue;
        }
        if let Some(record) = model.units.get(&name) {
            let desired_state = record.desired_state;
            model.put_unit_record(name, new, desired_state);
        }
    }
    Ok(())
}

/// Drops the rollout's references on its contents.
async fn release(registry: &Registry, spec: &RolloutSpec) -> Result<(), RegistryError> {
    let mut hashes: Vec<UnitHash> = spec
        .units
        .iter()
        .filter_map(|unit| unit.old_hash.parse().ok())
        .collect();
    hashes.extend(spec.new_hash.parse::<UnitHash>().ok());
    hashes.sort();
    hashes.dedup();
    registry.release_rollout_content(&spec.name, &hashes).await
}
