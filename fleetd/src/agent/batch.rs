//! Loading a burst of new units with a few D-Bus calls instead of a few per unit.
//!
//! Loading one unit costs round trips to systemd: `GetUnitFileState` (and,
//! when the host has no file of that name, `ListUnitsByNames`) to refuse a
//! unit the host already has, then `LinkUnitFiles`. Each install call makes
//! systemd scan its unit directories again, so a pass that loads 200 units
//! spent most of its time there. A unit systemd never had a definition of
//! (the common case in a burst: new instances of a template) needs nothing
//! unit-specific, so the pass does them together:
//!
//! 1. one `ListUnitFilesByPatterns` and one `ListUnitsByNames` for all of
//!    them find the names the host already has (refused, as one by one);
//! 2. the files are written;
//! 3. one `LinkUnitFiles` links them all.
//!
//! If the joint link fails, nothing of the batch is kept (files removed,
//! links undone) and the units go through the one-by-one path, which tells
//! which unit systemd objects to. Units with an `[Install]` section, units
//! systemd knows already and units whose content is not at hand keep the
//! one-by-one path too: they are rare, and each needs its own checks.

use std::collections::BTreeMap;

use fleet_registry::TargetState;
use fleet_systemd::dbus::{DbusError, Manager};
use fleet_systemd::unit::UnitName;
use tracing::debug;

use super::{Agent, Task, TaskError};

/// Below this many new units a pass loads them one by one: a batch saves
/// nothing for one unit.
const BATCH_MIN: usize = 2;

/// Names per `ListUnitFilesByPatterns` call (systemd matches every file of
/// its search path against every pattern).
const PATTERN_CHUNK: usize = 500;

impl Agent {
    /// Loads the new units among `tasks` together (see the module doc).
    /// Returns the outcome of every unit it took on; the pass uses it
    /// instead of running that unit's `Load` task. Units it did not take on
    /// are absent.
    ///
    /// # Errors
    /// The D-Bus connection is lost.
    pub(super) async fn load_fresh_batch(
        &mut self,
        manager: &Manager,
        tasks: &[Task],
    ) -> Result<BTreeMap<UnitName, Result<(), TaskError>>, DbusError> {
        let candidates = self.fresh_candidates(tasks);
        let mut outcomes = BTreeMap::new();
        if candidates.len() < BATCH_MIN {
            return Ok(outcomes);
        }
        let mut loading = candidates;
        if !self.config.allow_host_unit_override {
            let found = match self.host_units(manager, &loading).await {
                Ok(found) => found,
                Err(error) if error.is_connection_lost() => return Err(error),
                Err(error) => {
                    debug!(%error, "Cannot look for host units together; loading one by one.");
                    return Ok(outcomes);
                }
            };
            loading.retain(|unit| match found.get(unit) {
                Some(what) => {
                    let refused = TaskError::HostUnit {
                        unit: unit.clone(),
                        found: what.clone(),
                    };
                    outcomes.insert(unit.clone(), Err(refused));
                    false
                }
                None => true,
            });
        }
        match self.write_and_link(manager, &loading).await {
            Ok(true) => {
                for unit in loading {
                    self.reached.insert(unit.clone(), TargetState::Loaded);
                    self.fresh_loads.insert(unit.clone());
                    outcomes.insert(unit, Ok(()));
                }
            }
            // Undone: the one-by-one path takes them (and names the culprit).
            Ok(false) => {}
            Err(error) => return Err(error),
        }
        Ok(outcomes)
    }

    /// The units of `Load` tasks that systemd never had a definition of,
    /// whose content is at hand and has no `[Install]` section.
    fn fresh_candidates(&self, tasks: &[Task]) -> Vec<UnitName> {
        tasks
            .iter()
            .filter_map(|task| match task {
                Task::Load { unit, hash, .. } => Some((unit, hash)),
                _ => None,
            })
            .filter(|(unit, hash)| {
                let never_defined = !self.on_disk.contains_key(*unit)
                    && self
                        .statuses
                        .get(*unit)
                        .is_none_or(|status| status.load_state == "not-found");
                // A backslash is an escape in an fnmatch pattern: such
                // names get the exact one-by-one look-up.
                never_defined
                    && !unit.as_str().contains('\\')
                    && self
                        .contents
                        .get(*hash)
                        .is_some_and(|file| !file.has_section("Install"))
            })
            .map(|(unit, _)| unit.clone())
            .collect()
    }

    /// Which of `units` the host already has, and how (the same two tests
    /// as `refuse_host_unit`, for all of them at once): a unit file on
    /// systemd's search path, or a loaded and active unit without one.
    async fn host_units(
        &self,
        manager: &Manager,
        units: &[UnitName],
    ) -> Result<BTreeMap<UnitName, String>, DbusError> {
        let by_name: BTreeMap<&str, &UnitName> =
            units.iter().map(|unit| (unit.as_str(), unit)).collect();
        let mut found = BTreeMap::new();
        for chunk in units.chunks(PATTERN_CHUNK) {
            let patterns: Vec<String> = chunk.iter().map(ToString::to_string).collect();
            for (path, state) in manager.unit_files_matching(&patterns).await? {
                let name = path.rsplit('/').next().unwrap_or(&path);
                if let Some(unit) = by_name.get(name) {
                    found.insert((*unit).clone(), format!("unit file state {state}"));
                }
            }
        }
        let rest: Vec<String> = units
            .iter()
            .filter(|unit| !found.contains_key(*unit))
            .map(ToString::to_string)
            .collect();
        if rest.is_empty() {
            return Ok(found);
        }
        for status in manager.list_units_by_names(&rest).await? {
            // Active, not just loaded: a unit we unloaded stays loaded
            // (stopped) until systemd's next reload.
            if status.load_state == "loaded"
                && status.active_state == "active"
                && let Some(unit) = by_name.get(status.name.as_str())
            {
                found.insert(
                    (*unit).clone(),
                    "loaded and active without a unit file".to_owned(),
                );
            }
        }
        Ok(found)
    }

    /// Writes the files of `units` and links them with one call. `Ok(false)`
    /// when that failed and everything was undone.
    async fn write_and_link(
        &mut self,
        manager: &Manager,
        units: &[UnitName],
    ) -> Result<bool, DbusError> {
        let mut paths = Vec::with_capacity(units.len());
        let mut written = Vec::with_capacity(units.len());
        let mut failed = None;
        for unit in units {
            let Some(hash) = self.desired.get(unit).map(|desired| desired.hash) else {
                continue;
            };
            let Some(file) = self.contents.get(&hash).cloned() else {
                continue;
            };
            match self.units.write(unit, &file).await {
                Ok(path) => {
                    self.on_disk.insert(unit.clone(), Some(hash));
                    written.push(unit.clone());
                    paths.push(path.to_string_lossy().into_owned());
                }
                Err(error) => {
                    failed = Some(error.to_string());
                    break;
                }
            }
        }
        if failed.is_none() && written.len() == units.len() {
            match manager.link_unit_files(&paths, true, true).await {
                Ok(_) => return Ok(true),
                Err(error) if error.is_connection_lost() => return Err(error),
                Err(error) => failed = Some(error.to_string()),
            }
        }
        debug!(
            units = units.len(),
            error = failed.as_deref().unwrap_or("a unit's content went missing"),
            "Loading new units together failed; loading them one by one."
        );
        self.undo_writes(manager, &written).await
    }

    /// Removes the links and files of `units` written by a failed batch.
    async fn undo_writes(
        &mut self,
        manager: &Manager,
        units: &[UnitName],
    ) -> Result<bool, DbusError> {
        if units.is_empty() {
            return Ok(false);
        }
        let names: Vec<String> = units.iter().map(ToString::to_string).collect();
        match manager.disable_unit_files(&names, true).await {
            Ok(_) => {}
            Err(error) if error.is_connection_lost() => return Err(error),
            Err(error) => debug!(%error, "Unlinking a failed batch failed."),
        }
        for unit in units {
            match self.units.remove(unit).await {
                Ok(()) => {
                    self.on_disk.remove(unit);
                }
                Err(error) => {
                    debug!(unit = %unit, %error, "Cannot remove a file of a failed batch.");
                }
            }
        }
        Ok(false)
    }
}
